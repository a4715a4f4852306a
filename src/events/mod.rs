//! The data contracts: send requests in, failure events out, and how both are framed on the wire.

pub mod avro_guard;
pub mod currents;
mod currents_wire;
pub mod failure;
pub mod failure_view;
pub mod fitting;
pub mod framing;
pub mod retry_record;
pub mod send_request;
pub mod validation;

#[cfg(test)]
mod resolution_tests;

pub use failure::FailureEvent;
pub use framing::Frame;
pub use retry_record::{RetryRecord, SourceRef};
pub use send_request::{InvalidSend, Rules, SendRequest, ValidSend};

/// `schemas/failure.avsc`, a superset of Braze Currents' `users.messages.webhook.Failure`.
pub const FAILURE_SCHEMA_JSON: &str = include_str!("../../schemas/failure.avsc");
/// `schemas/send_request.avsc`, the Avro form of a send request.
pub const SEND_REQUEST_SCHEMA_JSON: &str = include_str!("../../schemas/send_request.avsc");

use std::sync::OnceLock;

/// The failure schema, parsed once.
pub fn failure_schema() -> &'static apache_avro::Schema {
    static S: OnceLock<apache_avro::Schema> = OnceLock::new();
    S.get_or_init(|| {
        apache_avro::Schema::parse_str(FAILURE_SCHEMA_JSON).expect("schemas/failure.avsc is valid")
    })
}

/// The send-request schema, parsed once.
pub fn send_request_schema() -> &'static apache_avro::Schema {
    static S: OnceLock<apache_avro::Schema> = OnceLock::new();
    S.get_or_init(|| {
        apache_avro::Schema::parse_str(SEND_REQUEST_SCHEMA_JSON)
            .expect("schemas/send_request.avsc is valid")
    })
}

/// Fingerprints of `schema_json` and of each older version of it, i.e. without one or more of its trailing
/// optional fields (schemas here only grow by appending optional fields), so that single-object records
/// written before an upgrade still read.
pub fn compatible_fingerprints(schema_json: &str) -> Vec<[u8; 8]> {
    let mut out = Vec::new();
    let Ok(mut json) = serde_json::from_str::<serde_json::Value>(schema_json) else {
        return out;
    };
    loop {
        let Ok(schema) = apache_avro::Schema::parse(&json) else {
            return out;
        };
        out.push(framing::fingerprint(&schema));
        let Some(fields) = json.get_mut("fields").and_then(|f| f.as_array_mut()) else {
            return out;
        };
        let optional_last = fields.last().is_some_and(|f| {
            f.get("type")
                .and_then(|t| t.as_array())
                .and_then(|t| t.first())
                .is_some_and(|t| t == "null")
        });
        if fields.len() < 2 || !optional_last {
            return out;
        }
        fields.pop();
    }
}
