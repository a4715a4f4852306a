//! The send request as producers write it, decoded from JSON or Avro. What may be sent is decided in
//! [`validation`](super::validation); anything refused is an [`InvalidSend`], which the dispatcher turns into
//! a dead letter: the reason travels with the original bytes so a human can fix the producer and replay.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::framing::Frame;
use super::send_request_schema;
pub use super::validation::{invalid, shorten, InvalidKind, InvalidSend, Rules, ValidSend};

/// A send request as producers write it (README, "Send requests"; `schemas/send_request.avsc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    pub id: String,
    pub workspace_id: String,
    #[serde(default)]
    pub workspace_name: Option<String>,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub external_user_id: Option<String>,
    #[serde(default)]
    pub dispatch_id: Option<String>,
    #[serde(default)]
    pub send_id: Option<String>,
    #[serde(default)]
    pub campaign_id: Option<String>,
    #[serde(default)]
    pub campaign_name: Option<String>,
    #[serde(default)]
    pub message_variation_id: Option<String>,
    #[serde(default)]
    pub message_variation_name: Option<String>,
    #[serde(default)]
    pub canvas_id: Option<String>,
    #[serde(default)]
    pub canvas_name: Option<String>,
    #[serde(default)]
    pub canvas_variation_id: Option<String>,
    #[serde(default)]
    pub canvas_variation_name: Option<String>,
    #[serde(default)]
    pub canvas_step_id: Option<String>,
    #[serde(default)]
    pub canvas_step_name: Option<String>,
    #[serde(default)]
    pub canvas_step_message_variation_id: Option<String>,
    pub webhook: Webhook,
    /// UNIX milliseconds; JSON producers may give an RFC 3339 string instead.
    #[serde(default, deserialize_with = "created_at")]
    pub created_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    pub request_method: String,
    #[serde(default)]
    pub request_headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub body: Option<String>,
}

impl SendRequest {
    /// Decodes JSON or Avro (Confluent-framed, single-object, or bare when `accept_plain_avro`).
    pub fn decode(bytes: &[u8], accept_plain_avro: bool) -> Result<Self, InvalidSend> {
        match Frame::detect(bytes) {
            Frame::Json(json) => serde_json::from_slice(strip_bom(json)).map_err(|e| {
                let kind = if e.to_string().starts_with("missing field") {
                    InvalidKind::MissingField
                } else {
                    InvalidKind::Undecodable
                };
                invalid(kind, format!("invalid JSON send request: {e}"))
            }),
            Frame::Confluent { body, .. } => Self::from_avro(body),
            Frame::SingleObject { fingerprint, body } => {
                if !known_fingerprints().contains(&fingerprint) {
                    return Err(invalid(
                        InvalidKind::Undecodable,
                        "Avro single-object record with an unknown schema fingerprint",
                    ));
                }
                Self::from_avro(body)
            }
            Frame::Unframed(body) if accept_plain_avro => Self::from_avro(body),
            Frame::Unframed(_) => Err(invalid(
                InvalidKind::Undecodable,
                "neither a JSON object nor framed Avro (enable dispatch.accept_plain_avro for bare Avro)",
            )),
        }
    }

    fn from_avro(body: &[u8]) -> Result<Self, InvalidSend> {
        let undecodable = |e: &dyn fmt::Display| {
            invalid(
                InvalidKind::Undecodable,
                format!("invalid Avro send request: {e}"),
            )
        };
        // Lengths and counts are checked against the bytes present before apache-avro allocates for them; a
        // record from a producer with an earlier schema lacks the newest optional fields, read as null.
        let missing = super::avro_guard::missing_trailing_fields(send_request_schema(), body)
            .map_err(|e| undecodable(&e))?;
        let body = super::avro_guard::complete(body, missing);
        let value = apache_avro::from_avro_datum(send_request_schema(), &mut &body[..], None)
            .map_err(|e| undecodable(&e))?;
        apache_avro::from_value(&value).map_err(|e| undecodable(&e))
    }

    /// The Avro body of a Confluent-framed record written with a producer's own `writer` schema (fetched
    /// from the registry by the record's schema id; `names` its named types), resolved to hookrelay's: fields
    /// added with defaults, removed optional fields, reordering and promotions all read as Avro's schema
    /// resolution says. The bytes are bounds-checked against the writer's schema first.
    pub fn from_writer(
        body: &[u8],
        writer: &apache_avro::Schema,
        names: &super::avro_guard::Names,
    ) -> Result<Self, InvalidSend> {
        let undecodable = |e: &dyn fmt::Display| {
            invalid(
                InvalidKind::Undecodable,
                format!("invalid Avro send request: {e}"),
            )
        };
        super::avro_guard::check_datum(writer, names, body).map_err(|e| undecodable(&e))?;
        let value =
            apache_avro::from_avro_datum(writer, &mut &body[..], Some(send_request_schema()))
                .map_err(|e| undecodable(&e))?;
        apache_avro::from_value(&value).map_err(|e| undecodable(&e))
    }

    /// Encodes as bare Avro binary with `schemas/send_request.avsc` (producers, tests, the load harness).
    pub fn to_avro(&self) -> Vec<u8> {
        let value = apache_avro::to_value(self).expect("send request serialises");
        let value = value
            .resolve(send_request_schema())
            .expect("send request fits its schema");
        apache_avro::to_avro_datum(send_request_schema(), value).expect("send request encodes")
    }
}
/// A UTF-8 byte-order mark some producers put before JSON.
fn strip_bom(json: &[u8]) -> &[u8] {
    json.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(json)
}

/// Fingerprints of the send-request schema and its earlier versions.
fn known_fingerprints() -> &'static [[u8; 8]] {
    use std::sync::OnceLock;
    static FPS: OnceLock<Vec<[u8; 8]>> = OnceLock::new();
    FPS.get_or_init(|| super::compatible_fingerprints(super::SEND_REQUEST_SCHEMA_JSON))
}

/// Accepts epoch milliseconds (number) or an RFC 3339 string.
fn created_at<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("epoch milliseconds or an RFC 3339 timestamp")
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            i64::try_from(v).map(Some).map_err(E::custom)
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Ok(Some(v as i64))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| Some(t.timestamp_millis()))
                .map_err(|e| E::custom(format!("created_at {v:?}: {e}")))
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(V)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn methods() -> Rules {
        Rules::default()
    }

    const GOOD: &str = r#"{"id":"s1","workspace_id":"ws","campaign_name":"Spring <sale>",
        "webhook":{"url":"https://example.com/hook?a=1","request_method":"post",
        "request_headers":{"X-Trace":"t"},"body":"{}"},"created_at":"2026-01-02T03:04:05+01:00"}"#;

    #[test]
    fn decodes_and_validates_json() {
        let send = SendRequest::decode(GOOD.as_bytes(), false).unwrap();
        assert_eq!(send.created_at, Some(1_767_319_445_000));
        let v = send.validate(&methods()).unwrap();
        assert_eq!(v.method, http::Method::POST);
        assert_eq!(v.headers["x-trace"], "t");
    }

    #[test]
    fn avro_round_trips_in_every_frame() {
        let send = SendRequest::decode(GOOD.as_bytes(), false).unwrap();
        let body = send.to_avro();
        assert_eq!(SendRequest::decode(&body, true).unwrap(), send);
        let mut confluent = vec![0, 0, 0, 0, 5];
        confluent.extend_from_slice(&body);
        assert_eq!(SendRequest::decode(&confluent, false).unwrap(), send);
        let so = super::super::framing::frame(
            crate::config::EventEncoding::SingleObject,
            None,
            super::super::framing::fingerprint(send_request_schema()),
            &body,
        );
        assert_eq!(SendRequest::decode(&so, false).unwrap(), send);
    }

    #[test]
    fn each_kind_of_invalid_input_has_a_reason() {
        let cases: &[(&[u8], InvalidKind)] = &[
            (b"not json", InvalidKind::Undecodable),
            (b"{\"id\":", InvalidKind::Undecodable),
            (br#"{"workspace_id":"w","webhook":{"url":"http://a","request_method":"POST"}}"#, InvalidKind::MissingField),
            (br#"{"id":"1","webhook":{"url":"http://a","request_method":"POST"}}"#, InvalidKind::MissingField),
            (br#"{"id":"1","workspace_id":"w","webhook":{"request_method":"POST"}}"#, InvalidKind::MissingField),
            (br#"{"id":"1","workspace_id":"w","webhook":{"url":"::nope","request_method":"POST"}}"#, InvalidKind::InvalidUrl),
            (br#"{"id":"1","workspace_id":"w","webhook":{"url":"ftp://a/b","request_method":"POST"}}"#, InvalidKind::InvalidUrl),
            (br#"{"id":"1","workspace_id":"w","webhook":{"url":"http://a","request_method":"BREW"}}"#, InvalidKind::InvalidMethod),
            (br#"{"id":"1","workspace_id":"w","webhook":{"url":"http://a","request_method":"PATCH"}}"#, InvalidKind::InvalidMethod),
            (br#"{"id":"1","workspace_id":"w","webhook":{"url":"http://a","request_method":"POST","request_headers":{"X":"a\nb"}}}"#, InvalidKind::InvalidHeader),
            (&[0, 0, 0, 0, 1, 0xFF, 0xFF], InvalidKind::Undecodable),
            (br#"{"id":"1","workspace_id":"w","webhook":{"url":"http://a","request_method":"POST","request_headers":{"Host":"internal"}}}"#, InvalidKind::InvalidHeader),
            (br#"{"id":"1","workspace_id":"w","webhook":{"url":"http://a","request_method":"POST","request_headers":{"Transfer-Encoding":"chunked"}}}"#, InvalidKind::InvalidHeader),
            (br#"{"id":"1","workspace_id":"w","webhook":{"url":"http://a","request_method":"POST","request_headers":{"webhook-signature":"v1,forged"}}}"#, InvalidKind::InvalidHeader),
            (br#"{"id":"1","workspace_id":"w","webhook":{"url":"http://a","request_method":"POST","request_headers":{"X\r\nInjected":"1"}}}"#, InvalidKind::InvalidHeader),
        ];
        for (bytes, kind) in cases {
            let got = SendRequest::decode(bytes, false).and_then(|s| s.validate(&methods()));
            let err = got.expect_err(&String::from_utf8_lossy(bytes));
            assert_eq!(err.kind, *kind, "{err}");
            assert!(!err.detail.is_empty());
        }
    }

    #[test]
    fn oversized_bodies_and_header_sets_are_refused() {
        let rules = Rules {
            max_body_bytes: 10,
            max_headers: 2,
            max_header_bytes: 20,
            ..Rules::default()
        };
        let send = |body: &str, headers: &str| {
            let json = format!(
                r#"{{"id":"1","workspace_id":"w","webhook":{{"url":"http://a","request_method":"POST","body":"{body}","request_headers":{{{headers}}}}}}}"#
            );
            SendRequest::decode(json.as_bytes(), false)
                .unwrap()
                .validate(&rules)
        };
        assert!(send("short", r#""a":"1""#).is_ok());
        assert_eq!(
            send("this body is too long", "").unwrap_err().kind,
            InvalidKind::TooLarge
        );
        assert_eq!(
            send("", r#""a":"1","b":"2","c":"3""#).unwrap_err().kind,
            InvalidKind::TooLarge
        );
        assert_eq!(
            send("", r#""a":"0123456789012345678901""#)
                .unwrap_err()
                .kind,
            InvalidKind::TooLarge
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = SendRequest::decode(&bytes, true).map(|s| s.validate(&methods()));
        }
    }
}
