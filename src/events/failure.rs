//! The failure event: one Avro record per failed attempt, readable with Braze's `Failure` schema.

use apache_avro::types::Value;
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
}

fn opt_str(v: &Option<String>) -> Value {
    match v {
        Some(s) => Value::Union(1, Box::new(Value::String(s.clone()))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

fn opt<T: Copy>(v: Option<T>, f: impl Fn(T) -> Value) -> Value {
    match v {
        Some(x) => Value::Union(1, Box::new(f(x))),
        None => Value::Union(0, Box::new(Value::Null)),
    }
}

impl FailureEvent {
    /// Builds the Avro value directly (no serde round trip): this runs once per failed attempt.
    fn to_avro_value(&self) -> Value {
        let fields = vec![
            ("http_status_code", opt(self.http_status_code, Value::Int)),
            ("endpoint_url", opt_str(&self.endpoint_url)),
            ("app_group_id", opt_str(&self.app_group_id)),
            ("campaign_id", opt_str(&self.campaign_id)),
            ("canvas_id", opt_str(&self.canvas_id)),
            ("canvas_step_id", opt_str(&self.canvas_step_id)),
            (
                "canvas_step_message_variation_id",
                opt_str(&self.canvas_step_message_variation_id),
            ),
            ("canvas_variation_id", opt_str(&self.canvas_variation_id)),
            ("content_length", opt(self.content_length, Value::Int)),
            ("dispatch_id", opt_str(&self.dispatch_id)),
            ("external_user_id", opt_str(&self.external_user_id)),
            ("host", opt_str(&self.host)),
            ("id", Value::String(self.id.clone())),
            ("message_variation_id", opt_str(&self.message_variation_id)),
            ("raw_response", opt_str(&self.raw_response)),
            ("retry_count", opt(self.retry_count, Value::Int)),
            ("send_id", opt_str(&self.send_id)),
            ("time", Value::Int(self.time)),
            ("url_path", opt_str(&self.url_path)),
            ("user_id", Value::String(self.user_id.clone())),
            ("webhook_duration", opt(self.webhook_duration, Value::Int)),
            (
                "webhook_failure_source",
                opt_str(&self.webhook_failure_source),
            ),
            ("is_terminal", opt(self.is_terminal, Value::Boolean)),
            ("campaign_name", opt_str(&self.campaign_name)),
            ("canvas_name", opt_str(&self.canvas_name)),
            ("canvas_step_name", opt_str(&self.canvas_step_name)),
            (
                "canvas_variation_name",
                opt_str(&self.canvas_variation_name),
            ),
            (
                "message_variation_name",
                opt_str(&self.message_variation_name),
            ),
            ("workspace_name", opt_str(&self.workspace_name)),
            ("attempt", opt(self.attempt, Value::Int)),
            ("next_attempt_at", opt(self.next_attempt_at, Value::Long)),
            ("error_reason", opt_str(&self.error_reason)),
            ("retriable", opt(self.retriable, Value::Boolean)),
            ("request_method", opt_str(&self.request_method)),
            ("time_ms", opt(self.time_ms, Value::Long)),
            ("send_created_at", opt(self.send_created_at, Value::Long)),
            ("hookrelay_version", opt_str(&self.hookrelay_version)),
        ];
        Value::Record(
            fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    /// Avro binary, framed per the configured encoding.
    pub fn encode(&self, encoding: EventEncoding, schema_id: Option<u32>) -> Vec<u8> {
        let body = apache_avro::to_avro_datum(failure_schema(), self.to_avro_value())
            .expect("a FailureEvent always matches schemas/failure.avsc");
        framing::frame(encoding, schema_id, schema_fingerprint(), &body)
    }

    /// Reads any framing hookrelay writes; bare binary is assumed when nothing else matches.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut body = match Frame::detect(bytes) {
            Frame::Confluent { body, .. } => body,
            Frame::SingleObject { fingerprint, body } => {
                if fingerprint != schema_fingerprint() {
                    return Err(DecodeError::ForeignSchema);
                }
                body
            }
            Frame::Unframed(body) => body,
            Frame::Json(_) => return Err(DecodeError::NotAvro),
        };
        let value = apache_avro::from_avro_datum(failure_schema(), &mut body, None)?;
        Ok(apache_avro::from_value(&value)?)
    }
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

    #[test]
    fn round_trips_in_every_encoding() {
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
