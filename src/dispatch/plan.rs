//! The delivery plan: after an attempt, what happens next — delivered; a retry (its tier, due time, record
//! and non-terminal failure event); or giving up (the reason and the terminal failure event).
//!
//! This is the one place that decides what becomes of a send. It is pure: the clock value, the jitter draw
//! and the event id are arguments, so every row of Braze's table and every retry rule is a table test below.
//! The pipeline around it is: decode → deliver (ask the lane, send, tell the lane) → **plan** → apply → report.

use std::time::Duration;

use super::classify::{classify, Attempt, Failure, Verdict};
use super::report::{event_of, AttemptFacts};
use super::retry::{Decision, GiveUpReason, RetryPolicy};
use super::tiers::Tiers;
use crate::events::{FailureEvent, RetryRecord, SourceRef, ValidSend};

/// Where a send stands before an attempt.
#[derive(Debug, Clone)]
pub(super) struct Turn {
    /// This attempt's number, from 1.
    pub(super) number: u32,
    /// When the first attempt was made; `None` before it (retry windows count from the first attempt
    /// actually made, not from a hold before it).
    pub(super) first_attempt_ms: Option<i64>,
    pub(super) last_status: u16,
    /// Where the send's original record is.
    pub(super) source: Option<SourceRef>,
    /// An attempt before this one tried the network.
    pub(super) requested: bool,
}

/// One attempt of a send, as it happened.
#[derive(Debug, Clone)]
pub struct Attempted<'a> {
    pub send: &'a ValidSend,
    /// This attempt's number: 1 for the first.
    pub number: u32,
    /// UNIX milliseconds of the first attempt: retry windows count from here.
    pub first_attempt_ms: i64,
    /// What happened on the wire (or instead of it).
    pub wire: Attempt,
    pub duration: Duration,
    /// Where the send's original record is, carried into its failure events and retries.
    pub source: Option<&'a SourceRef>,
    /// An earlier attempt tried the network.
    pub requested_before: bool,
}

/// What the plan may not find out by itself.
#[derive(Debug, Clone)]
pub struct Circumstances {
    pub now_ms: i64,
    /// A uniform draw in `[0, 1)` for the backoff's jitter.
    pub jitter: f64,
    /// Makes the id of the failure event this attempt may produce: called only when there is one, so the nine
    /// sends in ten that are delivered cost no random id.
    pub new_event_id: fn() -> String,
}

/// The rules the plan follows.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub retry: &'a RetryPolicy,
    pub tiers: &'a Tiers,
}

// One plan per attempt, built and consumed in place: boxing the large variants would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    Delivered {
        status: u16,
    },
    /// Write `record` to `topic`, then publish the non-terminal `event`.
    Retry {
        failure: Failure,
        topic: String,
        record: RetryRecord,
        event: FailureEvent,
    },
    /// Publish the terminal `event`.
    GiveUp {
        failure: Failure,
        reason: GiveUpReason,
        event: FailureEvent,
    },
}

impl Plan {
    /// The status code of the attempt (real or simulated).
    pub fn status(&self) -> u16 {
        match self {
            Plan::Delivered { status } => *status,
            Plan::Retry { failure, .. } | Plan::GiveUp { failure, .. } => failure.status,
        }
    }
}

/// Decides what happens after `attempted`.
pub fn plan(attempted: &Attempted<'_>, now: Circumstances, policy: Policy<'_>) -> Plan {
    let failure = match classify(attempted.wire.clone()) {
        Verdict::Delivered { status } => return Plan::Delivered { status },
        Verdict::Failed(f) => f,
    };
    let retry_after = failure.retry_after;
    let decision = policy.retry.decide(
        &failure,
        attempted.number,
        attempted.first_attempt_ms,
        now.now_ms,
        retry_after,
        now.jitter,
    );
    let facts = |due: Option<i64>| AttemptFacts {
        attempt: attempted.number,
        duration: attempted.duration,
        now_ms: now.now_ms,
        terminal: due.is_none(),
        next_attempt_at_ms: due,
        source: attempted.source,
    };
    let send = attempted.send;
    let event = |facts| event_of(send, &failure, facts, (now.new_event_id)());
    match decision {
        Decision::RetryAt(due_ms) => Plan::Retry {
            topic: policy.tiers.topic_for(due_ms, now.now_ms).to_string(),
            record: RetryRecord {
                send: send.request.clone(),
                attempts: attempted.number,
                first_attempt_ms: attempted.first_attempt_ms,
                due_ms,
                last_status: failure.status,
                source: attempted.source.cloned(),
                requested: Some(attempted.requested_before || failure.requested),
            },
            event: event(facts(Some(due_ms))),
            failure,
        },
        Decision::GiveUp(reason) => Plan::GiveUp {
            event: event(facts(None)),
            failure,
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::classify::FailureSource;
    use crate::events::{Rules, SendRequest};

    const T0: i64 = 1_700_000_000_000;
    const SEC: i64 = 1_000;
    const MIN: i64 = 60 * SEC;

    fn send() -> ValidSend {
        let json = br#"{"id":"s1","workspace_id":"ws","webhook":{"url":"https://h.example/p","request_method":"POST"}}"#;
        SendRequest::decode(json, false)
            .unwrap()
            .validate(&Rules::default())
            .unwrap()
    }

    fn tiers() -> Tiers {
        Tiers::new(
            [
                ("r-10s", 10),
                ("r-1m", 60),
                ("r-5m", 300),
                ("r-30m", 1800),
                ("r-2h", 7200),
            ]
            .map(|(t, s)| (t.to_string(), Duration::from_secs(s)))
            .to_vec(),
        )
    }

    fn response(status: u16, retry_after: Option<&str>) -> Attempt {
        Attempt::Response {
            status,
            reason: None,
            body: "b".into(),
            content_length: Some(1),
            retry_after: retry_after.and_then(|v| crate::dispatch::retry::parse_retry_after(v, T0)),
        }
    }

    fn no_response(source: FailureSource) -> Attempt {
        Attempt::NoResponse {
            source,
            error: "e".into(),
        }
    }

    /// Plans attempt `number` (first made at T0) of `wire`, now, with the default policy and no jitter.
    fn plan_at(wire: Attempt, number: u32, now_ms: i64) -> Plan {
        let send = send();
        let a = Attempted {
            send: &send,
            number,
            first_attempt_ms: T0,
            wire,
            duration: Duration::from_millis(12),
            source: None,
            requested_before: false,
        };
        let now = Circumstances {
            now_ms,
            jitter: 0.5,
            new_event_id: || "evt".into(),
        };
        let (retry, tiers) = (RetryPolicy::default(), tiers());
        plan(
            &a,
            now,
            Policy {
                retry: &retry,
                tiers: &tiers,
            },
        )
    }

    /// `Some((status, delay_ms, tier))` for a retry, `None` for giving up; panics on delivery.
    fn retry_of(p: &Plan, now_ms: i64) -> Option<(u16, i64, String)> {
        match p {
            Plan::Retry {
                failure,
                record,
                event,
                topic,
            } => {
                assert_eq!(event.is_terminal, Some(false));
                assert_eq!(event.next_attempt_at, Some(record.due_ms));
                Some((failure.status, record.due_ms - now_ms, topic.clone()))
            }
            Plan::GiveUp { event, .. } => {
                assert_eq!(event.is_terminal, Some(true));
                assert_eq!(event.next_attempt_at, None);
                None
            }
            Plan::Delivered { status } => panic!("delivered {status}"),
        }
    }

    #[test]
    fn brazes_table_row_by_row_on_a_first_attempt() {
        use FailureSource::*;
        // (what happened, retried?, status, source) — the README's delivery table.
        let rows: Vec<(Attempt, bool, u16, FailureSource)> = vec![
            (response(301, None), false, 301, ExternalEndpoint),
            (response(302, None), false, 302, ExternalEndpoint),
            (response(400, None), false, 400, ExternalEndpoint),
            (response(401, None), false, 401, ExternalEndpoint),
            (response(404, None), false, 404, ExternalEndpoint),
            (response(409, None), false, 409, ExternalEndpoint),
            (response(410, None), false, 410, ExternalEndpoint),
            (response(408, None), true, 408, ExternalEndpoint),
            (response(429, None), true, 429, ExternalEndpoint),
            (response(500, None), true, 500, ExternalEndpoint),
            (response(502, None), true, 502, ExternalEndpoint),
            (response(503, None), true, 503, ExternalEndpoint),
            (response(504, None), true, 504, ExternalEndpoint),
            (response(529, None), true, 529, ExternalEndpoint),
            (no_response(HostUnreachable), true, 599, HostUnreachable),
            (no_response(Timeout), true, 599, Timeout),
            (no_response(ConnectionError), true, 599, ConnectionError),
            (no_response(UnhealthyHost), true, 598, UnhealthyHost),
            (
                no_response(BlockedDestination),
                false,
                599,
                BlockedDestination,
            ),
            (no_response(InvalidRequest), false, 599, InvalidRequest),
        ];
        for (wire, retried, status, source) in rows {
            let p = plan_at(wire.clone(), 1, T0);
            assert_eq!(p.status(), status, "{wire:?}");
            assert_eq!(retry_of(&p, T0).is_some(), retried, "{wire:?}");
            let (Plan::Retry { failure, event, .. } | Plan::GiveUp { failure, event, .. }) = &p
            else {
                unreachable!()
            };
            assert_eq!(failure.source, source);
            assert_eq!(event.http_status_code, Some(i32::from(status)));
            assert_eq!(
                event.webhook_failure_source.as_deref(),
                Some(source.as_str())
            );
            assert_eq!((event.id.as_str(), event.attempt), ("evt", Some(1)));
        }
        for status in [200, 201, 204, 299] {
            assert_eq!(
                plan_at(response(status, None), 1, T0),
                Plan::Delivered { status }
            );
        }
    }

    #[test]
    fn not_retriable_answers_give_up_for_that_reason_even_with_retry_after() {
        for status in [301, 404, 422] {
            let Plan::GiveUp { reason, .. } = plan_at(response(status, Some("1")), 1, T0) else {
                panic!("{status} is final")
            };
            assert_eq!(reason, GiveUpReason::NotRetriable);
        }
    }

    #[test]
    fn an_answering_endpoint_gets_five_retries_with_doubling_backoff_in_the_longest_fitting_tier() {
        // Backoff 30 s, 1 m, 2 m, 4 m, 8 m (no jitter at 0.5), each in the longest tier not past it.
        let expected = [
            (30 * SEC, "r-10s"),
            (MIN, "r-1m"),
            (2 * MIN, "r-1m"),
            (4 * MIN, "r-1m"),
            (8 * MIN, "r-5m"),
        ];
        let mut now = T0;
        for (i, (delay, tier)) in expected.iter().enumerate() {
            let p = plan_at(response(503, None), i as u32 + 1, now);
            assert_eq!(
                retry_of(&p, now),
                Some((503, *delay, tier.to_string())),
                "retry {}",
                i + 1
            );
            now += delay;
        }
        let Plan::GiveUp { reason, .. } = plan_at(response(503, None), 6, now) else {
            panic!("the sixth failure is final")
        };
        assert_eq!(reason, GiveUpReason::RetriesExhausted);
    }

    #[test]
    fn unreachable_endpoints_get_the_long_budget_and_answered_598_or_599_the_ordinary_one() {
        let unreachable = plan_at(no_response(FailureSource::Timeout), 10, T0 + 3 * 60 * MIN);
        assert!(
            retry_of(&unreachable, T0 + 3 * 60 * MIN).is_some(),
            "still retrying after 3 h"
        );
        let Plan::GiveUp { reason, .. } =
            plan_at(no_response(FailureSource::HostUnreachable), 17, T0 + MIN)
        else {
            panic!("16 retries at most")
        };
        assert_eq!(reason, GiveUpReason::RetriesExhausted);
        let Plan::GiveUp { reason, .. } = plan_at(response(599, None), 6, T0 + MIN) else {
            panic!("a 599 answered by the endpoint has five retries")
        };
        assert_eq!(reason, GiveUpReason::RetriesExhausted);
        assert!(retry_of(&plan_at(response(598, None), 5, T0 + MIN), T0 + MIN).is_some());
    }

    #[test]
    fn the_window_ends_retries_by_the_backoff_schedule() {
        let now = T0 + 29 * MIN;
        assert!(
            retry_of(&plan_at(response(503, None), 2, now), now).is_some(),
            "1 min: at the window's end"
        );
        let Plan::GiveUp { reason, .. } = plan_at(response(503, None), 3, now) else {
            panic!("a 2-minute backoff from 29 minutes is past the 30-minute window")
        };
        assert_eq!(reason, GiveUpReason::WindowExhausted);
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date_sets_the_earliest_next_attempt_within_the_cap() {
        let later = |v: &str| {
            retry_of(&plan_at(response(429, Some(v)), 1, T0), T0)
                .unwrap()
                .1
        };
        assert_eq!(
            later("120"),
            120 * SEC,
            "seconds, later than the 30 s backoff"
        );
        assert_eq!(later("5"), 30 * SEC, "never earlier than the backoff");
        assert_eq!(later("36000"), 60 * MIN, "capped at retry_after_cap (1 h)");
        let date = httpdate::fmt_http_date(
            std::time::UNIX_EPOCH + Duration::from_millis((T0 + 10 * MIN) as u64),
        );
        assert_eq!(later(&date), 10 * MIN, "an HTTP date");
        assert_eq!(later("soon"), 30 * SEC, "unreadable: the backoff");
    }

    #[test]
    fn a_retry_after_past_the_window_is_honoured_when_the_backoff_is_due_within_it() {
        let now = T0 + 20 * MIN;
        let p = plan_at(response(503, Some("2700")), 2, now);
        assert_eq!(retry_of(&p, now), Some((503, 45 * MIN, "r-30m".into())));
    }

    #[test]
    fn a_retry_record_carries_the_send_and_its_history() {
        let Plan::Retry { record, event, .. } = plan_at(response(500, None), 3, T0 + 5 * MIN)
        else {
            panic!("retried")
        };
        assert_eq!(
            (record.attempts, record.first_attempt_ms, record.last_status),
            (3, T0, 500)
        );
        assert_eq!(record.send.id, "s1");
        assert_eq!(
            (event.retry_count, event.time_ms),
            (Some(3), Some(T0 + 5 * MIN))
        );
        assert_eq!(event.webhook_duration, Some(12));
    }
}
