//! A record's bytes as a send, or why not. Pure: every byte of a record is foreign, and this is what the
//! fuzz harness drives.

use crate::events::framing::Frame;
use crate::events::send_request::{invalid, InvalidKind, InvalidSend};
use crate::events::{RetryRecord, Rules, SendRequest, ValidSend};
use crate::kafka::Record;
use crate::registry::Writer;

/// What a record is before anything is decoded: refused if its headers cannot be read or it is too large.
fn admit(record: &Record, rules: &Rules) -> Result<(), InvalidSend> {
    if let Some(why) = &record.header_error {
        return Err(invalid(InvalidKind::InvalidHeader, why.clone()));
    }
    if record.payload.len() > rules.max_record_bytes {
        return Err(invalid(
            InvalidKind::TooLarge,
            format!(
                "record of {} bytes is larger than dispatch.max_record_bytes ({})",
                record.payload.len(),
                rules.max_record_bytes
            ),
        ));
    }
    Ok(())
}

/// A record of the send topic as a send that can go out, or why not. Pure: every byte of the record is
/// foreign, and this is what the fuzz harness drives.
pub fn decode_send(
    record: &Record,
    rules: &Rules,
    accept_plain_avro: bool,
) -> Result<ValidSend, InvalidSend> {
    admit(record, rules)?;
    SendRequest::decode(&record.payload, accept_plain_avro)?.validate(rules)
}

/// The schema id of a Confluent-framed record that may be decoded at all: the one the registry is asked for.
pub fn registry_schema_id(record: &Record, rules: &Rules) -> Option<u32> {
    admit(record, rules).ok()?;
    match Frame::detect(&record.payload) {
        Frame::Confluent { schema_id, .. } => Some(schema_id),
        _ => None,
    }
}

/// A Confluent-framed record of the send topic, written with `writer` (its schema id's), as a send that can
/// go out, or why not.
pub fn decode_written(
    record: &Record,
    rules: &Rules,
    writer: &Writer,
) -> Result<ValidSend, InvalidSend> {
    admit(record, rules)?;
    let Frame::Confluent { body, .. } = Frame::detect(&record.payload) else {
        return Err(invalid(
            InvalidKind::Undecodable,
            "not a Confluent-framed record",
        ));
    };
    SendRequest::from_writer(body, &writer.schema, &writer.names)?.validate(rules)
}

/// A record of a retry tier as a retry record, or why not (its send is validated when it is due).
pub fn decode_retry(record: &Record, rules: &Rules) -> Result<RetryRecord, InvalidSend> {
    admit(record, rules)?;
    RetryRecord::decode(&record.payload).map_err(|e| {
        invalid(
            InvalidKind::Undecodable,
            format!("invalid retry record: {e}"),
        )
    })
}
