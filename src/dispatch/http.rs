//! Executes one webhook over HTTP and reports what happened on the wire, never an `Err`:
//! a failed webhook is data for [`classify`](super::classify).

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use reqwest::redirect::Policy;

use super::classify::{Attempt, FailureSource};
use crate::config::HttpConfig;
use crate::events::ValidSend;
use crate::security::signing::Signer;
use crate::security::ssrf::{AddressPolicy, Blocked, GuardedResolver};
use crate::security::SecurityConfig;

/// One shared client: connection pooling across every send to the same host.
pub struct Executor {
    client: reqwest::Client,
    max_response_bytes: usize,
    /// `None` without any signing secret: a send then costs no signing step at all.
    signer: Option<Signer>,
}

impl Executor {
    pub fn new(
        cfg: &HttpConfig,
        security: &SecurityConfig,
        signer: Signer,
    ) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(AddressPolicy::new(security));
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver { policy }))
            .no_proxy()
            .redirect(Policy::none())
            .timeout(cfg.request_timeout)
            .connect_timeout(cfg.connect_timeout)
            .pool_max_idle_per_host(cfg.pool_max_idle_per_host)
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .user_agent(cfg.user_agent.clone())
            .build()?;
        Ok(Self {
            client,
            max_response_bytes: cfg.max_response_bytes,
            signer: (!signer.is_empty()).then_some(signer),
        })
    }

    /// Sends the webhook; returns the attempt and how long it took. Its URL's port and address were
    /// checked when it was validated; a host name's addresses are checked by the resolver.
    // An attempt's duration is measured here, around the request.
    #[allow(clippy::disallowed_methods)]
    pub async fn execute(&self, send: &ValidSend) -> (Attempt, Duration) {
        let started = Instant::now();
        let body: &[u8] = match (&send.method, &send.request.webhook.body) {
            (&http::Method::GET, _) | (_, None) => b"",
            (_, Some(b)) => b.as_bytes(),
        };
        let mut req = self
            .client
            .request(send.method.clone(), send.url.clone())
            .headers(send.headers.clone())
            .header("webhook-id", &send.request.id);
        let trace = crate::telemetry::traces::current_context();
        if !trace.is_empty() {
            // In place of any trace headers the send itself carries, not beside them.
            let mut headers = http::HeaderMap::new();
            for (name, value) in trace {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::try_from(name),
                    http::HeaderValue::try_from(value),
                ) {
                    headers.insert(n, v);
                }
            }
            req = req.headers(headers);
        }
        let timestamp = crate::clock::now_ms() / 1000;
        let request = &send.request;
        let signature = self.signer.as_ref().and_then(|signer| {
            signer.signature(&request.workspace_id, &request.id, timestamp, body)
        });
        if let Some(sig) = signature {
            req = req
                .header("webhook-timestamp", timestamp)
                .header("webhook-signature", sig);
        }
        if send.method != http::Method::GET && send.request.webhook.body.is_some() {
            req = req.body(body.to_vec());
        }
        let attempt = match req.send().await {
            Ok(resp) => self.read_response(resp).await,
            Err(e) => no_response(&e),
        };
        (attempt, started.elapsed())
    }

    /// Reads at most `max_response_bytes` of the body: a huge or endless response costs nothing more.
    async fn read_response(&self, mut resp: reqwest::Response) -> Attempt {
        let status = resp.status().as_u16();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).trim().to_string())
            // hyper servers write `<none>` for codes without a canonical phrase (529, 598…): not a real phrase.
            .filter(|r| !r.is_empty() && r != "<none>");
        let content_length = resp.content_length();
        // Read now: an HTTP date is relative to the moment the answer came.
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, crate::clock::now_ms()));
        let mut body = Vec::new();
        while body.len() < self.max_response_bytes {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    let room = self.max_response_bytes - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                // The status already arrived; a body that breaks off or times out is kept as far as it got.
                Ok(None) | Err(_) => break,
            }
        }
        Attempt::Response {
            status,
            reason,
            content_length: content_length.or(Some(body.len() as u64)),
            retry_after,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    }
}

/// Parses `Retry-After`: delta-seconds (`120`) or an HTTP date, relative to `now_ms` (UNIX milliseconds).
/// Dates in the past mean 0.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let now = UNIX_EPOCH + Duration::from_millis(u64::try_from(now_ms).unwrap_or(0));
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

fn no_response(e: &reqwest::Error) -> Attempt {
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(blocked) = c.downcast_ref::<Blocked>() {
            return Attempt::NoResponse {
                source: FailureSource::BlockedDestination,
                error: blocked.0.clone(),
            };
        }
        cause = c.source();
    }
    let source = if e.is_builder() {
        FailureSource::InvalidRequest
    } else if e.is_timeout() {
        FailureSource::Timeout
    } else if e.is_connect() {
        FailureSource::HostUnreachable
    } else {
        FailureSource::ConnectionError
    };
    Attempt::NoResponse {
        source,
        error: error_chain(e),
    }
}

/// `error sending request: connection refused` is more useful than the outermost message alone.
/// The URL is left out: it may carry credentials in its query string and the event has it already.
pub(crate) fn error_chain(e: &reqwest::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = s.source();
    }
    let joined = parts.join(": ");
    match e.url() {
        Some(u) => joined.replace(&format!(" for url ({u})"), ""),
        None => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_retry_after_in_both_forms() {
        let now = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn a_request_the_client_cannot_build_is_an_invalid_request_not_a_connection_error() {
        let e = reqwest::Client::new()
            .get("http://[::1")
            .build()
            .expect_err("an unparseable URL cannot be built");
        assert!(e.is_builder());
        let Attempt::NoResponse { source, .. } = no_response(&e) else {
            panic!("no response expected")
        };
        assert_eq!(source, FailureSource::InvalidRequest);
    }
}
