//! What an HTTP attempt means, exactly as Braze documents it (README, "Delivery semantics"). Pure: no I/O,
//! no clock.

use std::fmt;
use std::time::Duration;

/// Braze's simulated code while a host is marked unhealthy: no request is sent.
pub const UNHEALTHY_HOST: u16 = 598;
/// Braze's code for attempts that got no status at all: connection errors and timeouts.
pub const NO_RESPONSE: u16 = 599;

/// Who produced a failure's status code (`webhook_failure_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureSource {
    /// The endpoint answered with this code.
    ExternalEndpoint,
    /// No connection could be made (refused, DNS, TLS handshake, unreachable).
    HostUnreachable,
    /// The request did not complete within the timeout.
    Timeout,
    /// A connection was made but broke before a response arrived.
    ConnectionError,
    /// hookrelay did not send because the host is paused (598).
    UnhealthyHost,
    /// hookrelay refused to send: the destination is not allowed (SSRF guard, port policy). Final.
    BlockedDestination,
    /// The request could not be built (the HTTP client refused it before sending any byte), or a scheduled
    /// retry no longer passes validation. Final: the same request would be refused again.
    InvalidRequest,
}

impl FailureSource {
    /// Whether hookrelay tried the network for it (a request went out, or a connection was tried), as
    /// opposed to refusing or simulating the attempt itself.
    pub fn tried_the_network(self) -> bool {
        matches!(
            self,
            FailureSource::ExternalEndpoint
                | FailureSource::HostUnreachable
                | FailureSource::Timeout
                | FailureSource::ConnectionError
        )
    }

    pub const ALL: [FailureSource; 7] = [
        FailureSource::ExternalEndpoint,
        FailureSource::HostUnreachable,
        FailureSource::Timeout,
        FailureSource::ConnectionError,
        FailureSource::UnhealthyHost,
        FailureSource::BlockedDestination,
        FailureSource::InvalidRequest,
    ];

    /// The text written into failure events; `External Endpoint` and `Host Unreachable` are Braze's own words.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureSource::ExternalEndpoint => "External Endpoint",
            FailureSource::HostUnreachable => "Host Unreachable",
            FailureSource::Timeout => "Request Timeout",
            FailureSource::ConnectionError => "Connection Error",
            FailureSource::UnhealthyHost => "Unhealthy Host",
            FailureSource::BlockedDestination => "Blocked Destination",
            FailureSource::InvalidRequest => "Invalid Request",
        }
    }
}

impl fmt::Display for FailureSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened on the wire, before interpretation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Response {
        status: u16,
        /// The reason phrase the server sent, if it differed from the canonical one (HTTP/1.x only).
        reason: Option<String>,
        body: String,
        content_length: Option<u64>,
        /// The `Retry-After` header, read when the answer came (a value that is neither seconds nor an HTTP
        /// date is ignored).
        retry_after: Option<Duration>,
    },
    NoResponse {
        source: FailureSource,
        error: String,
    },
}

/// The meaning of an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered { status: u16 },
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub status: u16,
    pub source: FailureSource,
    /// Reason phrase (or the error, for 598/599).
    pub reason: String,
    pub retriable: bool,
    pub raw_response: Option<String>,
    pub content_length: Option<u64>,
    /// The endpoint's `Retry-After` (the retry policy reads it only for retriable codes).
    pub retry_after: Option<Duration>,
    /// Whether the network was tried for it (see [`FailureSource::tried_the_network`]).
    pub requested: bool,
}

/// 408, 429, 5xx (529 included), 598 and 599 deserve another try; 3xx and other 4xx never do.
pub fn is_retriable(status: u16) -> bool {
    matches!(status, 408 | 429 | 500..=599)
}

/// Canonical reason phrase, including the non-standard codes webhook senders meet.
pub fn canonical_reason(status: u16) -> &'static str {
    match status {
        529 => "Site Is Overloaded",
        UNHEALTHY_HOST => "Host Unhealthy",
        NO_RESPONSE => "No Response",
        _ => http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Unknown Status"),
    }
}

pub fn classify(attempt: Attempt) -> Verdict {
    match attempt {
        Attempt::Response { status, .. } if (200..300).contains(&status) => {
            Verdict::Delivered { status }
        }
        Attempt::Response {
            status,
            reason,
            body,
            content_length,
            retry_after,
        } => Verdict::Failed(Failure {
            status,
            source: FailureSource::ExternalEndpoint,
            reason: reason.unwrap_or_else(|| canonical_reason(status).to_string()),
            retriable: is_retriable(status),
            raw_response: Some(body),
            content_length,
            retry_after,
            requested: true,
        }),
        Attempt::NoResponse { source, error } => Verdict::Failed(Failure {
            status: if source == FailureSource::UnhealthyHost {
                UNHEALTHY_HOST
            } else {
                NO_RESPONSE
            },
            source,
            reason: error,
            // A refused destination or request stays refused: retrying would only repeat the refusal.
            retriable: !matches!(
                source,
                FailureSource::BlockedDestination | FailureSource::InvalidRequest
            ),
            raw_response: None,
            content_length: None,
            retry_after: None,
            requested: source.tried_the_network(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn response(status: u16) -> Attempt {
        Attempt::Response {
            status,
            reason: None,
            body: "b".into(),
            content_length: Some(1),
            retry_after: None,
        }
    }

    #[test]
    fn follows_brazes_table() {
        for s in [200, 201, 204, 299] {
            assert_eq!(classify(response(s)), Verdict::Delivered { status: s });
        }
        let failed = |s| match classify(response(s)) {
            Verdict::Failed(f) => f,
            o => panic!("{s} gave {o:?}"),
        };
        for s in [
            300, 301, 302, 307, 308, 400, 401, 403, 404, 405, 409, 410, 422,
        ] {
            assert!(!failed(s).retriable, "{s}");
        }
        for s in [408, 429, 500, 502, 503, 504, 529] {
            assert!(failed(s).retriable, "{s}");
            assert_eq!(failed(s).source, FailureSource::ExternalEndpoint);
        }
        assert_eq!(failed(503).reason, "Service Unavailable");
        assert_eq!(failed(529).reason, "Site Is Overloaded");
    }

    #[test]
    fn no_response_is_599_and_unhealthy_is_598() {
        for source in [
            FailureSource::HostUnreachable,
            FailureSource::Timeout,
            FailureSource::ConnectionError,
        ] {
            let Verdict::Failed(f) = classify(Attempt::NoResponse {
                source,
                error: "x".into(),
            }) else {
                panic!()
            };
            assert_eq!((f.status, f.retriable, f.source), (599, true, source));
        }
        let Verdict::Failed(f) = classify(Attempt::NoResponse {
            source: FailureSource::UnhealthyHost,
            error: "paused".into(),
        }) else {
            panic!()
        };
        assert_eq!(f.status, 598);
    }

    #[test]
    fn a_request_refused_before_sending_or_blocked_is_final() {
        for source in [
            FailureSource::InvalidRequest,
            FailureSource::BlockedDestination,
        ] {
            let Verdict::Failed(f) = classify(Attempt::NoResponse {
                source,
                error: "x".into(),
            }) else {
                panic!()
            };
            assert_eq!((f.status, f.retriable), (599, false), "{source}");
        }
    }

    #[test]
    fn a_servers_own_reason_phrase_is_kept() {
        let Verdict::Failed(f) = classify(Attempt::Response {
            status: 500,
            reason: Some("Database On Fire".into()),
            body: String::new(),
            content_length: None,
            retry_after: None,
        }) else {
            panic!()
        };
        assert_eq!(f.reason, "Database On Fire");
    }

    proptest! {
        #[test]
        fn every_status_has_exactly_one_meaning(status in 100u16..1000) {
            match classify(response(status)) {
                Verdict::Delivered { .. } => prop_assert!((200..300).contains(&status)),
                Verdict::Failed(f) => {
                    prop_assert!(!(200..300).contains(&status));
                    prop_assert_eq!(f.retriable, status == 408 || status == 429 || (500..600).contains(&status));
                    prop_assert!(!f.reason.is_empty());
                }
            }
        }
    }
}
