//! A zero-copy reader of the failure-event fields the aggregator needs, for ingest at hundreds of thousands
//! of events per second. The generic Avro reader builds a value tree per record; this walks the binary once,
//! borrowing strings from the record, guided by a field table derived from `schemas/failure.avsc`.

use apache_avro::schema::{RecordSchema, Schema};

use super::avro_guard::Cursor;
use super::failure_schema;
use super::framing::Frame;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Long,
    Str,
    Bool,
    Optional(Inner),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Inner {
    Int,
    Long,
    Str,
    Bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Code,
    Workspace,
    WorkspaceName,
    Url,
    CampaignId,
    CampaignName,
    CanvasId,
    CanvasName,
    Time,
    TimeMs,
}

/// The fields of one failure event the aggregator uses, borrowed from the record bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FailureView<'a> {
    pub code: Option<i32>,
    pub workspace: &'a str,
    pub workspace_name: Option<&'a str>,
    pub endpoint_url: Option<&'a str>,
    pub campaign_id: Option<&'a str>,
    pub campaign_name: Option<&'a str>,
    pub canvas_id: Option<&'a str>,
    pub canvas_name: Option<&'a str>,
    /// Event time in UNIX milliseconds (`time_ms`, else `time` × 1000).
    pub time_ms: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed failure event: {0}")]
pub struct Malformed(&'static str);

pub struct ViewDecoder {
    fields: Vec<(Kind, Option<Slot>)>,
}

impl ViewDecoder {
    pub fn new() -> Self {
        let Schema::Record(RecordSchema { fields, .. }) = failure_schema() else {
            unreachable!("the failure schema is a record")
        };
        let fields = fields
            .iter()
            .map(|f| {
                let kind = match &f.schema {
                    Schema::Int => Kind::Int,
                    Schema::Long => Kind::Long,
                    Schema::String => Kind::Str,
                    Schema::Boolean => Kind::Bool,
                    Schema::Union(u) => Kind::Optional(match u.variants().get(1) {
                        Some(Schema::Int) => Inner::Int,
                        Some(Schema::Long) => Inner::Long,
                        Some(Schema::Boolean) => Inner::Bool,
                        _ => Inner::Str,
                    }),
                    other => {
                        unreachable!("failure schema has only primitive fields, found {other:?}")
                    }
                };
                let slot = match f.name.as_str() {
                    "http_status_code" => Some(Slot::Code),
                    "app_group_id" => Some(Slot::Workspace),
                    "workspace_name" => Some(Slot::WorkspaceName),
                    "endpoint_url" => Some(Slot::Url),
                    "campaign_id" => Some(Slot::CampaignId),
                    "campaign_name" => Some(Slot::CampaignName),
                    "canvas_id" => Some(Slot::CanvasId),
                    "canvas_name" => Some(Slot::CanvasName),
                    "time" => Some(Slot::Time),
                    "time_ms" => Some(Slot::TimeMs),
                    _ => None,
                };
                (kind, slot)
            })
            .collect();
        Self { fields }
    }

    /// Reads a framed failure event (single-object, Confluent or bare). Never panics on any input.
    pub fn decode<'a>(&self, bytes: &'a [u8]) -> Result<FailureView<'a>, Malformed> {
        let body = match Frame::detect(bytes) {
            Frame::SingleObject { body, .. }
            | Frame::Confluent { body, .. }
            | Frame::Unframed(body) => body,
            Frame::Json(_) => return Err(Malformed("JSON, not Avro")),
        };
        let mut r = Cursor::new(body);
        let mut v = FailureView::default();
        let mut time_s = None;
        let mut time_ms = None;
        for (i, (kind, slot)) in self.fields.iter().enumerate() {
            // An event from an earlier version ends before the newest optional fields: they are null.
            if r.is_at_end()
                && i > 0
                && self.fields[i..]
                    .iter()
                    .all(|(k, _)| matches!(k, Kind::Optional(_)))
            {
                break;
            }
            let value = match kind {
                Kind::Int | Kind::Long => Value::Num(r.long()?),
                Kind::Str => Value::Str(r.str()?),
                Kind::Bool => Value::Num(i64::from(r.byte()?)),
                Kind::Optional(inner) => match r.long()? {
                    0 => Value::Null,
                    1 => match inner {
                        Inner::Int | Inner::Long => Value::Num(r.long()?),
                        Inner::Str => Value::Str(r.str()?),
                        Inner::Bool => Value::Num(i64::from(r.byte()?)),
                    },
                    _ => return Err(Malformed("bad union branch")),
                },
            };
            let Some(slot) = slot else { continue };
            match (slot, value) {
                (Slot::Code, Value::Num(n)) => v.code = i32::try_from(n).ok(),
                (Slot::Workspace, Value::Str(s)) => v.workspace = s,
                (Slot::WorkspaceName, Value::Str(s)) => v.workspace_name = Some(s),
                (Slot::Url, Value::Str(s)) => v.endpoint_url = Some(s),
                (Slot::CampaignId, Value::Str(s)) => v.campaign_id = Some(s),
                (Slot::CampaignName, Value::Str(s)) => v.campaign_name = Some(s),
                (Slot::CanvasId, Value::Str(s)) => v.canvas_id = Some(s),
                (Slot::CanvasName, Value::Str(s)) => v.canvas_name = Some(s),
                (Slot::Time, Value::Num(n)) => time_s = Some(n),
                (Slot::TimeMs, Value::Num(n)) => time_ms = Some(n),
                _ => {}
            }
        }
        v.time_ms = time_ms
            .or(time_s.map(|s| s.saturating_mul(1000)))
            .ok_or(Malformed("no time"))?;
        Ok(v)
    }
}

impl Default for ViewDecoder {
    fn default() -> Self {
        Self::new()
    }
}

enum Value<'a> {
    Null,
    Num(i64),
    Str(&'a str),
}

impl From<super::avro_guard::Malformed> for Malformed {
    fn from(m: super::avro_guard::Malformed) -> Self {
        Malformed(m.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EventEncoding;
    use crate::events::FailureEvent;
    use proptest::prelude::*;

    fn event() -> FailureEvent {
        FailureEvent {
            http_status_code: Some(503),
            endpoint_url: Some("https://h/p".into()),
            app_group_id: Some("ws_é".into()),
            campaign_id: Some("c".into()),
            campaign_name: Some("Spring".into()),
            canvas_name: None,
            id: "e".into(),
            time: 1_700_000_000,
            time_ms: Some(1_700_000_000_123),
            user_id: "u".into(),
            workspace_name: Some("Acme".into()),
            raw_response: Some("x".repeat(1000)),
            retriable: Some(true),
            is_terminal: Some(false),
            ..Default::default()
        }
    }

    #[test]
    fn reads_what_the_full_decoder_reads() {
        let d = ViewDecoder::new();
        for enc in [
            EventEncoding::SingleObject,
            EventEncoding::Confluent,
            EventEncoding::Binary,
        ] {
            let bytes = event().encode(enc, Some(3));
            let v = d.decode(&bytes).unwrap();
            assert_eq!(v.code, Some(503));
            assert_eq!(v.workspace, "ws_é");
            assert_eq!(v.workspace_name, Some("Acme"));
            assert_eq!(v.endpoint_url, Some("https://h/p"));
            assert_eq!(
                (v.campaign_id, v.campaign_name, v.canvas_id),
                (Some("c"), Some("Spring"), None)
            );
            assert_eq!(v.time_ms, 1_700_000_000_123);
        }
        let mut no_ms = event();
        no_ms.time_ms = None;
        assert_eq!(
            d.decode(&no_ms.encode(EventEncoding::Binary, None))
                .unwrap()
                .time_ms,
            1_700_000_000_000
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_garbage_or_truncation(bytes in proptest::collection::vec(any::<u8>(), 0..400), cut in 0usize..400) {
            let d = ViewDecoder::new();
            let _ = d.decode(&bytes);
            let good = event().encode(EventEncoding::SingleObject, None);
            let _ = d.decode(&good[..cut.min(good.len())]);
        }
    }
}
