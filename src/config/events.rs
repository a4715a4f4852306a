//! `[events]`: how the events hookrelay writes are framed, and which of Braze Currents' webhook events
//! beyond `Failure` are written.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventEncoding {
    /// Avro single-object encoding (`C3 01`, schema fingerprint, body): self-describing without a registry.
    SingleObject,
    /// Confluent wire format (`00`, 4-byte schema id, body); needs `schema_id`.
    Confluent,
    /// Bare Avro binary; readers must know the schema out of band.
    Binary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    pub encoding: EventEncoding,
    /// Schema-registry id of `schemas/failure.avsc`, for the Confluent encoding.
    pub schema_id: Option<u32>,
    /// Write a Currents `Send` event when a send request's first HTTP request is made (`topics.send_events`).
    pub send_events: bool,
    /// Write a Currents `Abort` event when a send will never be attempted, or attempted again, for a reason
    /// other than an endpoint's answer (`topics.abort_events`).
    pub abort_events: bool,
    /// Write a Currents `Retry` event when a send is deferred to a retry tier without an attempt
    /// (`topics.retry_events`).
    pub retry_events: bool,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            encoding: EventEncoding::SingleObject,
            schema_id: None,
            send_events: false,
            abort_events: false,
            retry_events: false,
        }
    }
}
