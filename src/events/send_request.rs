//! The send request: decoding from JSON or Avro and validation into something that can be sent.
//!
//! Anything that fails here is an [`InvalidSend`], which the dispatcher turns into a dead letter: the reason
//! travels with the original bytes so a human can fix the producer and replay.

use std::collections::BTreeMap;
use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde::{Deserialize, Deserializer, Serialize};
use url::Url;

use super::framing::Frame;
use super::send_request_schema;

/// A send request as producers write it (DESIGN §2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Webhook {
    pub url: String,
    pub request_method: String,
    #[serde(default)]
    pub request_headers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub body: Option<String>,
}

/// A send request that passed validation, with its URL, method and headers parsed once.
#[derive(Debug, Clone)]
pub struct ValidSend {
    pub request: SendRequest,
    pub url: Url,
    pub method: Method,
    pub headers: HeaderMap,
}

/// Why a record cannot be dispatched. `kind` is a bounded label for metrics; `detail` is for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSend {
    pub kind: InvalidKind,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidKind {
    Undecodable,
    MissingField,
    /// An identifier that cannot travel where it must go (`id` is the `webhook-id` header).
    InvalidField,
    InvalidUrl,
    InvalidMethod,
    InvalidHeader,
    TooLarge,
    /// The outcome could not be written where it belongs (the broker refused it for good).
    Unpublishable,
}

/// What a send must satisfy to be dispatched.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Upper case.
    pub allowed_methods: Vec<String>,
    pub max_body_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_url_bytes: usize,
    /// Largest record (as consumed) that is decoded at all.
    pub max_record_bytes: usize,
    /// Longest `id` and `workspace_id`.
    pub max_id_bytes: usize,
    /// Longest optional identifier or name (campaign, Canvas, user…).
    pub max_field_bytes: usize,
}

impl Rules {
    pub fn from_config(c: &crate::config::Config) -> Self {
        Self {
            allowed_methods: c.dispatch.allowed_methods.clone(),
            max_body_bytes: c.http.max_request_body_bytes,
            max_headers: c.http.max_request_headers,
            max_header_bytes: c.http.max_request_header_bytes,
            max_url_bytes: c.http.max_url_bytes,
            max_record_bytes: c.dispatch.max_record_bytes,
            max_id_bytes: c.dispatch.max_id_bytes,
            max_field_bytes: c.dispatch.max_field_bytes,
        }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Self::from_config(&crate::config::Config::default())
    }
}

impl InvalidKind {
    pub const ALL: [InvalidKind; 8] = [
        InvalidKind::Undecodable,
        InvalidKind::MissingField,
        InvalidKind::InvalidField,
        InvalidKind::InvalidUrl,
        InvalidKind::InvalidMethod,
        InvalidKind::InvalidHeader,
        InvalidKind::TooLarge,
        InvalidKind::Unpublishable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            InvalidKind::Undecodable => "undecodable",
            InvalidKind::MissingField => "missing_field",
            InvalidKind::InvalidField => "invalid_field",
            InvalidKind::Unpublishable => "unpublishable",
            InvalidKind::InvalidUrl => "invalid_url",
            InvalidKind::InvalidMethod => "invalid_method",
            InvalidKind::InvalidHeader => "invalid_header",
            InvalidKind::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for InvalidSend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

impl std::error::Error for InvalidSend {}

pub(crate) fn invalid(kind: InvalidKind, detail: impl Into<String>) -> InvalidSend {
    InvalidSend {
        kind,
        detail: detail.into(),
    }
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
                if fingerprint != super::framing::fingerprint(send_request_schema()) {
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

    fn from_avro(mut body: &[u8]) -> Result<Self, InvalidSend> {
        // Lengths and counts are checked against the bytes present before apache-avro allocates for them.
        super::avro_guard::check(send_request_schema(), body).map_err(|e| {
            invalid(
                InvalidKind::Undecodable,
                format!("invalid Avro send request: {e}"),
            )
        })?;
        let value =
            apache_avro::from_avro_datum(send_request_schema(), &mut body, None).map_err(|e| {
                invalid(
                    InvalidKind::Undecodable,
                    format!("invalid Avro send request: {e}"),
                )
            })?;
        if !body.is_empty() {
            return Err(invalid(
                InvalidKind::Undecodable,
                format!("invalid Avro send request: {} trailing bytes", body.len()),
            ));
        }
        apache_avro::from_value(&value).map_err(|e| {
            invalid(
                InvalidKind::Undecodable,
                format!("invalid Avro send request: {e}"),
            )
        })
    }

    /// Encodes as bare Avro binary with `schemas/send_request.avsc` (producers, tests, the load harness).
    pub fn to_avro(&self) -> Vec<u8> {
        let value = apache_avro::to_value(self).expect("send request serialises");
        let value = value
            .resolve(send_request_schema())
            .expect("send request fits its schema");
        apache_avro::to_avro_datum(send_request_schema(), value).expect("send request encodes")
    }

    /// Checks everything the dispatcher relies on: whatever passes can be sent as an HTTP request and
    /// reported in a failure event that fits in Kafka.
    pub fn validate(self, rules: &Rules) -> Result<ValidSend, InvalidSend> {
        let allowed_methods = &rules.allowed_methods;
        self.check_identifiers(rules)?;
        if self.webhook.url.trim().is_empty() {
            return Err(invalid(InvalidKind::MissingField, "webhook.url is empty"));
        }
        if self.webhook.url.len() > rules.max_url_bytes {
            return Err(invalid(
                InvalidKind::TooLarge,
                format!(
                    "webhook.url of {} bytes is longer than {}",
                    self.webhook.url.len(),
                    rules.max_url_bytes
                ),
            ));
        }
        let url = Url::parse(&self.webhook.url).map_err(|e| {
            invalid(
                InvalidKind::InvalidUrl,
                format!("webhook.url {:?}: {e}", shorten(&self.webhook.url)),
            )
        })?;
        // The HTTP client sends an `http::Uri`, which refuses some URLs the WHATWG parser accepts.
        if let Err(e) = http::Uri::try_from(url.as_str()) {
            return Err(invalid(
                InvalidKind::InvalidUrl,
                format!(
                    "webhook.url {:?} cannot be sent: {e}",
                    shorten(url.as_str())
                ),
            ));
        }
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(
                InvalidKind::InvalidUrl,
                format!("webhook.url scheme {:?} is not http or https", url.scheme()),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid(InvalidKind::InvalidUrl, "webhook.url has no host"));
        }
        let method_name = self.webhook.request_method.to_ascii_uppercase();
        if !allowed_methods.contains(&method_name) {
            return Err(invalid(
                InvalidKind::InvalidMethod,
                format!(
                    "webhook.request_method {:?} is not one of {}",
                    self.webhook.request_method,
                    allowed_methods.join(", ")
                ),
            ));
        }
        let method = Method::from_bytes(method_name.as_bytes())
            .map_err(|_| invalid(InvalidKind::InvalidMethod, "unparseable method"))?;
        let given = self.webhook.request_headers.iter().flatten();
        if given.clone().count() > rules.max_headers {
            return Err(invalid(
                InvalidKind::TooLarge,
                format!("more than {} request headers", rules.max_headers),
            ));
        }
        let header_bytes: usize = given.clone().map(|(k, v)| k.len() + v.len()).sum();
        if header_bytes > rules.max_header_bytes {
            return Err(invalid(
                InvalidKind::TooLarge,
                format!(
                    "request headers take {header_bytes} bytes, more than {}",
                    rules.max_header_bytes
                ),
            ));
        }
        let body_len = self.webhook.body.as_ref().map_or(0, String::len);
        if body_len > rules.max_body_bytes {
            return Err(invalid(
                InvalidKind::TooLarge,
                format!(
                    "body of {body_len} bytes is larger than {}",
                    rules.max_body_bytes
                ),
            ));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in given {
            if let Some(why) = crate::security::headers::refused(name) {
                return Err(invalid(
                    InvalidKind::InvalidHeader,
                    format!("header {name:?} {why}"),
                ));
            }
            let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                invalid(
                    InvalidKind::InvalidHeader,
                    format!("header name {name:?} is not valid"),
                )
            })?;
            let v = HeaderValue::from_str(value).map_err(|_| {
                invalid(
                    InvalidKind::InvalidHeader,
                    format!(
                        "header {name:?} has an invalid value (control characters such as CR/LF?)"
                    ),
                )
            })?;
            headers.append(n, v);
        }
        Ok(ValidSend {
            request: self,
            url,
            method,
            headers,
        })
    }
}

impl SendRequest {
    /// `id` and `workspace_id` are required and short; `id` travels as the `webhook-id` header, so it must be
    /// a valid header value; no identifier may carry control characters (they end up in headers, keys, logs
    /// and emails); optional identifiers and names are bounded so that a failure event always fits.
    fn check_identifiers(&self, rules: &Rules) -> Result<(), InvalidSend> {
        for (name, value) in [("id", &self.id), ("workspace_id", &self.workspace_id)] {
            if value.trim().is_empty() {
                return Err(invalid(
                    InvalidKind::MissingField,
                    format!("{name} is empty"),
                ));
            }
            if value.len() > rules.max_id_bytes {
                return Err(invalid(
                    InvalidKind::TooLarge,
                    format!(
                        "{name} of {} bytes is longer than {}",
                        value.len(),
                        rules.max_id_bytes
                    ),
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(invalid(
                    InvalidKind::InvalidField,
                    format!("{name} {:?} contains control characters", shorten(value)),
                ));
            }
        }
        if HeaderValue::from_str(&self.id).is_err() {
            return Err(invalid(
                InvalidKind::InvalidField,
                format!(
                    "id {:?} is not a valid HTTP header value",
                    shorten(&self.id)
                ),
            ));
        }
        for (name, value) in self.optional_fields() {
            let Some(value) = value else { continue };
            if value.len() > rules.max_field_bytes {
                return Err(invalid(
                    InvalidKind::TooLarge,
                    format!(
                        "{name} of {} bytes is longer than {}",
                        value.len(),
                        rules.max_field_bytes
                    ),
                ));
            }
            if value.chars().any(char::is_control) {
                return Err(invalid(
                    InvalidKind::InvalidField,
                    format!("{name} {:?} contains control characters", shorten(value)),
                ));
            }
        }
        Ok(())
    }

    /// The optional identifiers and names copied onto failure events.
    fn optional_fields(&self) -> [(&'static str, Option<&String>); 16] {
        [
            ("workspace_name", self.workspace_name.as_ref()),
            ("user_id", self.user_id.as_ref()),
            ("external_user_id", self.external_user_id.as_ref()),
            ("dispatch_id", self.dispatch_id.as_ref()),
            ("send_id", self.send_id.as_ref()),
            ("campaign_id", self.campaign_id.as_ref()),
            ("campaign_name", self.campaign_name.as_ref()),
            ("message_variation_id", self.message_variation_id.as_ref()),
            (
                "message_variation_name",
                self.message_variation_name.as_ref(),
            ),
            ("canvas_id", self.canvas_id.as_ref()),
            ("canvas_name", self.canvas_name.as_ref()),
            ("canvas_variation_id", self.canvas_variation_id.as_ref()),
            ("canvas_variation_name", self.canvas_variation_name.as_ref()),
            ("canvas_step_id", self.canvas_step_id.as_ref()),
            ("canvas_step_name", self.canvas_step_name.as_ref()),
            (
                "canvas_step_message_variation_id",
                self.canvas_step_message_variation_id.as_ref(),
            ),
        ]
    }
}

/// A UTF-8 byte-order mark some producers put before JSON.
fn strip_bom(json: &[u8]) -> &[u8] {
    json.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(json)
}

/// At most 100 characters of a value, for error messages (the record itself goes to the dead letter).
pub fn shorten(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
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
        assert_eq!(v.method, Method::POST);
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
