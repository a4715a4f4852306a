//! The data contracts: send requests in, failure events out, and how both are framed on the wire.

pub mod avro_guard;
pub mod failure;
pub mod failure_view;
pub mod framing;
pub mod retry_record;
pub mod send_request;
pub mod validation;

pub use failure::FailureEvent;
pub use framing::Frame;
pub use retry_record::RetryRecord;
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
