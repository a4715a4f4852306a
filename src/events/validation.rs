//! What a send must satisfy to be dispatched: whatever passes can be sent as an HTTP request and reported in
//! a failure event that fits in a Kafka record. Pure.

use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use url::Url;

use super::SendRequest;

/// A send request that passed validation, with its URL, method and headers parsed once.
#[derive(Debug, Clone)]
pub struct ValidSend {
    pub request: SendRequest,
    pub url: Url,
    pub method: Method,
    pub headers: HeaderMap,
    /// Why its destination (port, or address written in the URL) is refused by the SSRF policy: it fails
    /// for good without a request, and without waiting for its host's lane. Host names are checked again
    /// by the resolver, at every connection.
    pub blocked: Option<String>,
}

/// Why a record cannot be dispatched. `kind` is a bounded label for metrics; `detail` is for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSend {
    pub kind: InvalidKind,
    pub detail: String,
    /// The send, when it decoded and its identifiers are fit to travel (so a Currents `Abort` can name it).
    pub request: Option<Box<SendRequest>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvalidKind {
    Undecodable,
    /// A Confluent-framed record whose schema id the registry does not have, or whose schema cannot be read
    /// as a send request.
    UnknownSchema,
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
    /// The SSRF policy's ports and addresses, for what a URL says of its destination.
    pub destination: std::sync::Arc<crate::security::ssrf::AddressPolicy>,
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
            destination: std::sync::Arc::new(crate::security::ssrf::AddressPolicy::new(
                &c.security,
            )),
        }
    }
}

impl Default for Rules {
    fn default() -> Self {
        Self::from_config(&crate::config::Config::default())
    }
}

impl InvalidKind {
    pub const ALL: [InvalidKind; 9] = [
        InvalidKind::Undecodable,
        InvalidKind::UnknownSchema,
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
            InvalidKind::UnknownSchema => "unknown_schema",
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

pub fn invalid(kind: InvalidKind, detail: impl Into<String>) -> InvalidSend {
    InvalidSend {
        kind,
        detail: detail.into(),
        request: None,
    }
}

impl SendRequest {
    /// Checks everything the dispatcher relies on: whatever passes can be sent as an HTTP request and
    /// reported in a failure event that fits in Kafka.
    pub fn validate(self, rules: &Rules) -> Result<ValidSend, InvalidSend> {
        self.check_identifiers(rules)?;
        match self.check_request(rules) {
            Ok((url, method, headers)) => Ok(ValidSend {
                blocked: rules.destination.check_url(&url).err().map(|b| b.0),
                request: self,
                url,
                method,
                headers,
            }),
            Err(mut why) => {
                why.request = Some(Box::new(self));
                Err(why)
            }
        }
    }

    /// What is sent: the URL, the method, the body's size and the headers.
    fn check_request(&self, rules: &Rules) -> Result<(Url, Method, HeaderMap), InvalidSend> {
        let url = self.check_url(rules)?;
        let method = self.check_method(rules)?;
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
        Ok((url, method, self.check_headers(rules)?))
    }

    /// An http(s) URL with a host, within the length limit, that the HTTP client can send.
    fn check_url(&self, rules: &Rules) -> Result<Url, InvalidSend> {
        let text = &self.webhook.url;
        if text.trim().is_empty() {
            return Err(invalid(InvalidKind::MissingField, "webhook.url is empty"));
        }
        if text.len() > rules.max_url_bytes {
            return Err(invalid(
                InvalidKind::TooLarge,
                format!(
                    "webhook.url of {} bytes is longer than {}",
                    text.len(),
                    rules.max_url_bytes
                ),
            ));
        }
        let url = Url::parse(text).map_err(|e| {
            invalid(
                InvalidKind::InvalidUrl,
                format!("webhook.url {:?}: {e}", shorten(text)),
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
        Ok(url)
    }

    fn check_method(&self, rules: &Rules) -> Result<Method, InvalidSend> {
        let name = self.webhook.request_method.to_ascii_uppercase();
        if !rules.allowed_methods.contains(&name) {
            return Err(invalid(
                InvalidKind::InvalidMethod,
                format!(
                    "webhook.request_method {:?} is not one of {}",
                    self.webhook.request_method,
                    rules.allowed_methods.join(", ")
                ),
            ));
        }
        Method::from_bytes(name.as_bytes())
            .map_err(|_| invalid(InvalidKind::InvalidMethod, "unparseable method"))
    }

    /// Within the count and size limits, none that hookrelay sets itself, every name and value valid.
    fn check_headers(&self, rules: &Rules) -> Result<HeaderMap, InvalidSend> {
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
        Ok(headers)
    }

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
            check_field(name, value, rules.max_id_bytes)?;
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
            if let Some(value) = value {
                check_field(name, value, rules.max_field_bytes)?;
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

/// A field no longer than `max` bytes and free of control characters.
fn check_field(name: &str, value: &str, max: usize) -> Result<(), InvalidSend> {
    if value.len() > max {
        return Err(invalid(
            InvalidKind::TooLarge,
            format!("{name} of {} bytes is longer than {max}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            InvalidKind::InvalidField,
            format!("{name} {:?} contains control characters", shorten(value)),
        ));
    }
    Ok(())
}

/// At most 100 characters of a value, for error messages (the record itself goes to the dead letter).
pub fn shorten(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}
