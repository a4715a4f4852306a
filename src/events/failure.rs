//! The failure event: one Avro record per failed attempt, readable with Braze's `Failure` schema.

use serde::{Deserialize, Serialize};

use super::failure_schema;
use super::framing::{self, Frame};
use crate::config::EventEncoding;

/// Fields in `schemas/failure.avsc` order: first Braze's, then hookrelay's optional additions.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FailureEvent {
    pub http_status_code: Option<i32>,
    pub endpoint_url: Option<String>,
    pub app_group_id: Option<String>,
    pub campaign_id: Option<String>,
    pub canvas_id: Option<String>,
    pub canvas_step_id: Option<String>,
    pub canvas_step_message_variation_id: Option<String>,
    pub canvas_variation_id: Option<String>,
    pub content_length: Option<i32>,
    pub dispatch_id: Option<String>,
    pub external_user_id: Option<String>,
    pub host: Option<String>,
    pub id: String,
    pub message_variation_id: Option<String>,
    pub raw_response: Option<String>,
    pub retry_count: Option<i32>,
    pub send_id: Option<String>,
    pub time: i32,
    pub url_path: Option<String>,
    pub user_id: String,
    pub webhook_duration: Option<i32>,
    pub webhook_failure_source: Option<String>,
    pub is_terminal: Option<bool>,
    pub campaign_name: Option<String>,
    pub canvas_name: Option<String>,
    pub canvas_step_name: Option<String>,
    pub canvas_variation_name: Option<String>,
    pub message_variation_name: Option<String>,
    // hookrelay additions
    pub workspace_name: Option<String>,
    pub attempt: Option<i32>,
    pub next_attempt_at: Option<i64>,
    pub error_reason: Option<String>,
    pub retriable: Option<bool>,
    pub request_method: Option<String>,
    pub time_ms: Option<i64>,
    pub send_created_at: Option<i64>,
    pub hookrelay_version: Option<String>,
    /// String fields were cut so that the event fits in a Kafka record.
    pub truncated: Option<bool>,
    /// Where the send request's original record is, for `hookrelay replay`.
    pub source_topic: Option<String>,
    pub source_partition: Option<i32>,
    pub source_offset: Option<i64>,
}

/// Why a failure event could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("not an Avro failure event: {0}")]
    Avro(#[from] apache_avro::Error),
    #[error("record was JSON, not Avro")]
    NotAvro,
    #[error("single-object record with a foreign schema fingerprint")]
    ForeignSchema,
    #[error(transparent)]
    Malformed(#[from] super::avro_guard::Malformed),
}

impl FailureEvent {
    /// Avro binary, framed per the configured encoding.
    pub fn encode(&self, encoding: EventEncoding, schema_id: Option<u32>) -> Vec<u8> {
        // Serialised straight from the struct by the schema-aware serializer: no intermediate Value tree and
        // no per-record validation (the field list mirrors the schema, and the round-trip tests hold it there).
        let mut body = Vec::with_capacity(512);
        apache_avro::write_avro_datum_ref(failure_schema(), self, &mut body)
            .expect("a FailureEvent always matches schemas/failure.avsc");
        framing::frame(encoding, schema_id, schema_fingerprint(), &body)
    }

    /// Reads any framing hookrelay writes, by this version or an earlier one; bare binary is assumed when
    /// nothing else matches.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let body = match Frame::detect(bytes) {
            Frame::Confluent { body, .. } => body,
            Frame::SingleObject { fingerprint, body } => {
                if !known_fingerprints().contains(&fingerprint) {
                    return Err(DecodeError::ForeignSchema);
                }
                body
            }
            Frame::Unframed(body) => body,
            Frame::Json(_) => return Err(DecodeError::NotAvro),
        };
        // Lengths are checked against the bytes present before apache-avro allocates for them; an event from
        // an earlier version lacks the newest optional fields, read as null.
        let missing = super::avro_guard::missing_trailing_fields(failure_schema(), body)?;
        let body = super::avro_guard::complete(body, missing);
        let value = apache_avro::from_avro_datum(failure_schema(), &mut &body[..], None)?;
        Ok(apache_avro::from_value(&value)?)
    }
}

/// This version's fingerprint and those of earlier versions of the schema.
fn known_fingerprints() -> &'static [[u8; 8]] {
    use std::sync::OnceLock;
    static FPS: OnceLock<Vec<[u8; 8]>> = OnceLock::new();
    FPS.get_or_init(|| super::compatible_fingerprints(super::FAILURE_SCHEMA_JSON))
}

fn schema_fingerprint() -> [u8; 8] {
    use std::sync::OnceLock;
    static FP: OnceLock<[u8; 8]> = OnceLock::new();
    *FP.get_or_init(|| framing::fingerprint(failure_schema()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> FailureEvent {
        FailureEvent {
            http_status_code: Some(503),
            endpoint_url: Some("https://h/p".into()),
            app_group_id: Some("ws".into()),
            id: "evt".into(),
            time: 1_700_000_000,
            user_id: "u".into(),
            is_terminal: Some(true),
            attempt: Some(1),
            retriable: Some(true),
            ..Default::default()
        }
    }

    fn full() -> FailureEvent {
        let s = |v: &str| Some(v.to_string());
        FailureEvent {
            http_status_code: Some(503),
            endpoint_url: s("https://h/p?q=1"),
            app_group_id: s("ws"),
            campaign_id: s("c"),
            canvas_id: s("cv"),
            canvas_step_id: s("st"),
            canvas_step_message_variation_id: s("smv"),
            canvas_variation_id: s("cvv"),
            content_length: Some(12),
            dispatch_id: s("d"),
            external_user_id: s("e"),
            host: s("h"),
            id: "evt".into(),
            message_variation_id: s("mv"),
            raw_response: s("körper ✓"),
            retry_count: Some(3),
            send_id: s("si"),
            time: 1_700_000_000,
            url_path: s("/p"),
            user_id: "u".into(),
            webhook_duration: Some(90_000),
            webhook_failure_source: s("External Endpoint"),
            is_terminal: Some(false),
            campaign_name: s("C"),
            canvas_name: s("CV"),
            canvas_step_name: s("ST"),
            canvas_variation_name: s("CVV"),
            message_variation_name: s("MV"),
            workspace_name: s("W"),
            attempt: Some(3),
            next_attempt_at: Some(1_700_000_060_000),
            error_reason: s("Service Unavailable"),
            retriable: Some(true),
            request_method: s("POST"),
            time_ms: Some(1_700_000_000_123),
            send_created_at: Some(-1),
            hookrelay_version: s("0.1.0"),
            truncated: Some(true),
            source_topic: s("webhook-sends"),
            source_partition: Some(7),
            source_offset: Some(123_456),
        }
    }

    #[test]
    fn an_event_written_before_the_newest_optional_field_existed_still_reads() {
        // An earlier version of the schema ended before `truncated` and the source fields after it: its binary
        // is this version's without their bytes, and single-object frames carry that version's fingerprint.
        let fps = crate::events::compatible_fingerprints(crate::events::FAILURE_SCHEMA_JSON);
        assert!(fps.len() > 4, "earlier versions are known");
        let event = FailureEvent {
            source_topic: None,
            source_partition: None,
            source_offset: None,
            ..full()
        };
        let mut body = event.encode(EventEncoding::Binary, None);
        // The three source fields are null (branch 0 each); truncated = Some(true) before them: union branch
        // 1 (zig-zag 2), then true (1).
        assert_eq!(
            (body.pop(), body.pop(), body.pop()),
            (Some(0), Some(0), Some(0))
        );
        assert_eq!((body.pop(), body.pop()), (Some(1), Some(2)));
        let mut old = vec![0xC3, 0x01];
        old.extend(fps[4]);
        old.extend(&body);
        let read = FailureEvent::decode(&old).expect("an older event reads");
        assert_eq!(read.truncated, None);
        assert_eq!(read.hookrelay_version, event.hookrelay_version);
        let view = crate::events::failure_view::ViewDecoder::new()
            .decode(&old)
            .expect("the fast reader too");
        assert_eq!(view.code, Some(503));
        assert!(
            FailureEvent::decode(&old[..old.len() - 1]).is_err(),
            "a cut inside a field is not"
        );
    }

    #[test]
    fn direct_encoding_matches_the_generic_validated_path() {
        for event in [full(), sample()] {
            let value = apache_avro::to_value(&event)
                .unwrap()
                .resolve(failure_schema())
                .unwrap();
            let generic = apache_avro::to_avro_datum(failure_schema(), value).unwrap();
            let direct = event.encode(EventEncoding::Binary, None);
            assert_eq!(direct, generic);
        }
    }

    #[test]
    fn round_trips_in_every_encoding() {
        assert_eq!(
            FailureEvent::decode(&full().encode(EventEncoding::SingleObject, None)).unwrap(),
            full()
        );
        for enc in [
            EventEncoding::SingleObject,
            EventEncoding::Confluent,
            EventEncoding::Binary,
        ] {
            let bytes = sample().encode(enc, Some(42));
            assert_eq!(FailureEvent::decode(&bytes).unwrap(), sample(), "{enc:?}");
        }
    }
}
