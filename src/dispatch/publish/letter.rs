//! A dead letter as written: the original record with headers saying why and where it came from, or bare
//! when the record cannot be forwarded whole.

use rdkafka::message::{Header, OwnedHeaders};

use crate::events::send_request::InvalidSend;
use crate::kafka::Record;

/// The headers that say why a record is a dead letter and where it came from.
pub(super) fn why_headers(record: &Record, why: &InvalidSend) -> Vec<(&'static str, String)> {
    let failed_at = crate::clock::rfc3339(crate::clock::now_ms());
    vec![
        ("hookrelay-error", why.to_string()),
        ("hookrelay-error-kind", why.kind.as_str().to_string()),
        ("hookrelay-original-topic", record.tp.topic.to_string()),
        (
            "hookrelay-original-partition",
            record.tp.partition.to_string(),
        ),
        ("hookrelay-original-offset", record.offset.to_string()),
        ("hookrelay-failed-at", failed_at),
    ]
}

/// A dead letter as written: the record with its headers and ours, or bare — without the original key,
/// value and headers — with `hookrelay-dropped` saying what was left out and why.
pub(super) struct Letter<'a> {
    pub key: &'a [u8],
    pub payload: &'a [u8],
    pub headers: OwnedHeaders,
}

impl<'a> Letter<'a> {
    pub fn of(record: &'a Record, ours: &[(&str, String)], dropped: Option<&str>) -> Self {
        let mut headers = OwnedHeaders::new();
        if dropped.is_none() {
            for (k, v) in &record.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
        }
        for (k, v) in ours {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let Some(because) = dropped else {
            return Self {
                key: record.key.as_deref().unwrap_or_default(),
                payload: &record.payload,
                headers,
            };
        };
        let note = format!(
            "{} key bytes, {} value bytes and {} headers not forwarded: {because}",
            record.key.as_ref().map_or(0, Vec::len),
            record.payload.len(),
            record.headers.len()
        );
        Self {
            key: &[],
            payload: &[],
            headers: headers.insert(Header {
                key: "hookrelay-dropped",
                value: Some(&note),
            }),
        }
    }
}
