//! How a record's bytes say what they are: JSON, Confluent-framed Avro, Avro single-object, or bare Avro.
//!
//! Detection is per record so one topic may carry producers of every kind during a migration.

use apache_avro::rabin::Rabin;
use apache_avro::Schema;

use crate::config::EventEncoding;

const CONFLUENT_MAGIC: u8 = 0;
const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// What a record's payload looks like, with the Avro body split from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    Json(&'a [u8]),
    Confluent {
        schema_id: u32,
        body: &'a [u8],
    },
    SingleObject {
        fingerprint: [u8; 8],
        body: &'a [u8],
    },
    /// Nothing recognisable: bare Avro binary if the reader accepts that, garbage otherwise.
    Unframed(&'a [u8]),
}

impl<'a> Frame<'a> {
    pub fn detect(bytes: &'a [u8]) -> Self {
        match bytes {
            [CONFLUENT_MAGIC, a, b, c, d, body @ ..] => Frame::Confluent {
                schema_id: u32::from_be_bytes([*a, *b, *c, *d]),
                body,
            },
            [0xC3, 0x01, rest @ ..] if rest.len() >= 8 => {
                let mut fingerprint = [0u8; 8];
                fingerprint.copy_from_slice(&rest[..8]);
                Frame::SingleObject {
                    fingerprint,
                    body: &rest[8..],
                }
            }
            _ if first_non_space(bytes) == Some(b'{') => Frame::Json(bytes),
            _ => Frame::Unframed(bytes),
        }
    }
}

fn first_non_space(bytes: &[u8]) -> Option<u8> {
    // A UTF-8 byte-order mark is tolerated before JSON.
    let bytes = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
    bytes.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// The 8-byte CRC-64-AVRO fingerprint that single-object encoding puts in front of the body.
pub fn fingerprint(schema: &Schema) -> [u8; 8] {
    let fp = schema.fingerprint::<Rabin>();
    let mut out = [0u8; 8];
    out.copy_from_slice(&fp.bytes[..8]);
    out
}

/// Frames an Avro body per the configured encoding.
pub fn frame(
    encoding: EventEncoding,
    schema_id: Option<u32>,
    fingerprint: [u8; 8],
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 10);
    match encoding {
        EventEncoding::Confluent => {
            out.push(CONFLUENT_MAGIC);
            out.extend_from_slice(&schema_id.unwrap_or(0).to_be_bytes());
        }
        EventEncoding::SingleObject => {
            out.extend_from_slice(&SINGLE_OBJECT_MAGIC);
            out.extend_from_slice(&fingerprint);
        }
        EventEncoding::Binary => {}
    }
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_frame() {
        assert_eq!(
            Frame::detect(&[0, 0, 0, 1, 2, 9, 9]),
            Frame::Confluent {
                schema_id: 258,
                body: &[9, 9]
            }
        );
        let so = [0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 42];
        assert!(matches!(
            Frame::detect(&so),
            Frame::SingleObject { body: [42], .. }
        ));
        assert!(matches!(Frame::detect(b"  {\"id\":1}"), Frame::Json(_)));
        assert!(matches!(Frame::detect(b"\xEF\xBB\xBF{}"), Frame::Json(_)));
        assert!(matches!(Frame::detect(b"hello"), Frame::Unframed(_)));
        assert!(matches!(Frame::detect(&[]), Frame::Unframed(_)));
    }

    #[test]
    fn framing_round_trips_through_detection() {
        let fp = [1, 2, 3, 4, 5, 6, 7, 8];
        let c = frame(EventEncoding::Confluent, Some(7), fp, b"\x02x");
        assert_eq!(
            Frame::detect(&c),
            Frame::Confluent {
                schema_id: 7,
                body: b"\x02x"
            }
        );
        let s = frame(EventEncoding::SingleObject, None, fp, b"\x02x");
        assert_eq!(
            Frame::detect(&s),
            Frame::SingleObject {
                fingerprint: fp,
                body: b"\x02x"
            }
        );
    }
}
