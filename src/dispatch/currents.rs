//! Which of Braze Currents' `Send`, `Abort` and `Retry` events a send's [`Outcome`] owes, and writing them.
//! The rules ([`owed`], pure):
//! - **Send**: once per send request, with the first attempt that tried the network — answered, refused,
//!   timed out or broken off; a simulated 598, a blocked destination or a request that could not be built
//!   is not one. `attempt` says which attempt that was (later than 1 only after simulated 598s).
//! - **Abort**: the send will never be attempted, or attempted again, for a reason other than an endpoint's
//!   answer: dead-lettered with a readable send (`abort_type` the dead letter's kind: `invalid_url`,
//!   `invalid_method`, `unpublishable`, …), or given up after an attempt hookrelay made no request for
//!   (`blocked_destination`, `invalid_request`, `unhealthy_host`: its retries ran out while its host was
//!   paused). `abort_log` says why in words.
//! - **Retry**: sent to a retry tier without an attempt (`retry_type`: `rate_limit`, `retry_after`,
//!   `queue_full`, `queue_wait`, `stopping`), with `next_attempt_at`.
//!
//! Event ids are made from the kind, the workspace, the send and the attempt (or due time), so an event
//! written again after a crash has the same id and consumers dedupe on it.

use super::classify::FailureSource;
use super::outcome::{Outcome, Tried};
use super::publish::{Abandoned, PublishError, Publisher};
use crate::events::currents::{CurrentsEvent, CurrentsKind};
use crate::events::SendRequest;

/// What [`owed`] needs to know besides the outcome.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub send: &'a SendRequest,
    /// The webhook's host, when its URL parsed.
    pub host: Option<&'a str>,
    /// An attempt before this pass tried the network.
    pub requested_before: bool,
    /// Attempts made before this pass.
    pub attempts_before: u32,
    /// When the events are made (the pipeline sets it as it derives them).
    pub now_ms: i64,
}

/// The events `outcome` owes, by the rules above.
pub fn owed<'a>(outcome: &Outcome, at: Context<'a>) -> Vec<CurrentsEvent<'a>> {
    let mut out = Vec::new();
    let event = |kind, discriminator: i64| {
        let mut e = CurrentsEvent::new(kind, at.send, discriminator, at.now_ms);
        e.endpoint_url = Some(at.send.webhook.url.as_str());
        e.host = at.host;
        e
    };
    let tried = match outcome {
        Outcome::Delivered(t)
        | Outcome::Retrying { tried: t, .. }
        | Outcome::Failed { tried: t, .. } => Some(*t),
        Outcome::DeadLettered { tried, .. } => *tried,
        Outcome::Requeued { .. } | Outcome::Hopped => None,
    };
    if let Some(t) = tried.filter(|t| !at.requested_before && tried_the_network(t)) {
        let mut e = event(CurrentsKind::Send, 0);
        e.attempt = Some(t.number);
        out.push(e);
    }
    let abort = |type_: &'static str, log: String, attempts: u32| {
        let mut e = event(CurrentsKind::Abort, i64::from(attempts));
        e.type_ = Some(type_);
        e.log = Some(log);
        e.retry_count = Some(attempts);
        e
    };
    match outcome {
        Outcome::DeadLettered {
            kind,
            detail,
            tried,
            ..
        } => {
            let attempts = tried.map_or(at.attempts_before, |t| t.number);
            out.push(abort(kind.as_str(), detail.clone(), attempts));
        }
        Outcome::Failed { tried, give_up } => {
            let type_ = match tried.source {
                Some(FailureSource::BlockedDestination) => Some("blocked_destination"),
                Some(FailureSource::InvalidRequest) => Some("invalid_request"),
                Some(FailureSource::UnhealthyHost) => Some("unhealthy_host"),
                _ => None,
            };
            if let (Some(type_), Some(source)) = (type_, tried.source) {
                let log = format!(
                    "{source} ({}), given up: {}",
                    tried.status,
                    give_up.as_str()
                );
                out.push(abort(type_, log, tried.number));
            }
        }
        Outcome::Requeued { reason, due_ms } => {
            let mut e = event(CurrentsKind::Retry, *due_ms);
            e.type_ = Some(reason.as_str());
            e.log = Some(reason.describe().to_string());
            e.retry_count = Some(at.attempts_before);
            e.next_attempt_at = Some(*due_ms);
            out.push(e);
        }
        _ => {}
    }
    out
}

/// Whether the attempt tried the network (delivered, or failed on the way there or back).
fn tried_the_network(t: &Tried) -> bool {
    t.source.is_none_or(FailureSource::tried_the_network)
}

/// Writes the events `outcome` owes that `[events]` enables (the pipeline calls it only when some kind is). A
/// Currents event the broker refuses for good is logged and counted, never the send's undoing: it is news about
/// the send, not the send.
pub async fn emit(
    publisher: &Publisher,
    outcome: &Outcome,
    at: Context<'_>,
) -> Result<(), Abandoned> {
    for event in owed(outcome, at) {
        match publisher.currents(&event).await {
            Ok(()) => {}
            Err(PublishError::Abandoned(a)) => return Err(a),
            Err(PublishError::Rejected { topic, reason }) => {
                tracing::error!(%topic, %reason, kind = event.kind.as_str(), id = %at.send.id,
                    "Currents event refused for good; the send goes on without it");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::lane::RequeueReason;
    use crate::dispatch::outcome::GiveUp;
    use crate::dispatch::retry::GiveUpReason;
    use crate::events::send_request::InvalidKind;

    fn context<'a>(
        send: &'a SendRequest,
        host: Option<&'a str>,
        attempts_before: u32,
    ) -> Context<'a> {
        Context {
            send,
            host,
            requested_before: false,
            attempts_before,
            now_ms: 0,
        }
    }

    fn send() -> SendRequest {
        crate::tools::examples::ExampleSend::new("s1", "ws", "https://h.example/p").build()
    }

    fn tried(number: u32, status: u16, source: Option<FailureSource>) -> Tried {
        Tried {
            number,
            status,
            source,
        }
    }

    fn kinds(
        outcome: &Outcome,
        requested_before: bool,
        attempts_before: u32,
    ) -> Vec<(CurrentsKind, Option<&'static str>)> {
        let send = send();
        let at = Context {
            requested_before,
            ..context(&send, Some("h.example"), attempts_before)
        };
        owed(outcome, at)
            .into_iter()
            .map(|e| (e.kind, e.type_))
            .collect()
    }

    #[test]
    fn send_is_owed_once_with_the_first_attempt_that_tried_the_network() {
        use CurrentsKind::*;
        let endpoint = Some(FailureSource::ExternalEndpoint);
        assert_eq!(
            kinds(&Outcome::Delivered(tried(1, 200, None)), false, 0),
            [(Send, None)]
        );
        let retrying = Outcome::Retrying {
            tried: tried(1, 503, endpoint),
            tier: "t".into(),
        };
        assert_eq!(kinds(&retrying, false, 0), [(Send, None)]);
        assert!(
            kinds(&Outcome::Delivered(tried(2, 200, None)), true, 1).is_empty(),
            "not again"
        );
        let paused = Outcome::Retrying {
            tried: tried(1, 598, Some(FailureSource::UnhealthyHost)),
            tier: "t".into(),
        };
        assert!(
            kinds(&paused, false, 0).is_empty(),
            "a simulated 598 is no request"
        );
        assert_eq!(
            kinds(&Outcome::Delivered(tried(2, 200, None)), false, 1),
            [(Send, None)],
            "the first request after a 598"
        );
        let timeout = Outcome::Retrying {
            tried: tried(1, 599, Some(FailureSource::Timeout)),
            tier: "t".into(),
        };
        assert_eq!(kinds(&timeout, false, 0), [(Send, None)]);
    }

    #[test]
    fn abort_is_owed_for_every_end_that_is_not_an_endpoint_s_answer() {
        use CurrentsKind::*;
        let dead = Outcome::DeadLettered {
            kind: InvalidKind::InvalidMethod,
            detail: "BREW".into(),
            tried: None,
            give_up: None,
        };
        assert_eq!(kinds(&dead, false, 0), [(Abort, Some("invalid_method"))]);
        for (source, type_) in [
            (FailureSource::BlockedDestination, "blocked_destination"),
            (FailureSource::InvalidRequest, "invalid_request"),
            (FailureSource::UnhealthyHost, "unhealthy_host"),
        ] {
            let failed = Outcome::Failed {
                tried: tried(3, 599, Some(source)),
                give_up: GiveUp::Policy(GiveUpReason::WindowExhausted),
            };
            assert_eq!(kinds(&failed, true, 2), [(Abort, Some(type_))]);
        }
        let answered = Outcome::Failed {
            tried: tried(3, 404, Some(FailureSource::ExternalEndpoint)),
            give_up: GiveUp::Policy(GiveUpReason::NotRetriable),
        };
        assert!(
            kinds(&answered, true, 2).is_empty(),
            "an endpoint's answer is a Failure"
        );
        let refused_after_a_request = Outcome::DeadLettered {
            kind: InvalidKind::Unpublishable,
            detail: "refused".into(),
            tried: Some(tried(1, 503, Some(FailureSource::ExternalEndpoint))),
            give_up: Some(GiveUp::RetryRefused),
        };
        assert_eq!(
            kinds(&refused_after_a_request, false, 0),
            [(Send, None), (Abort, Some("unpublishable"))]
        );
    }

    #[test]
    fn retry_is_owed_for_a_requeue_with_its_reason_and_due_time() {
        let send = send();
        let requeued = Outcome::Requeued {
            reason: RequeueReason::QueueFull,
            due_ms: 1_767_000_030_000,
        };
        let events = owed(&requeued, context(&send, None, 2));
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.kind, CurrentsKind::Retry);
        assert_eq!(e.type_, Some("queue_full"));
        assert_eq!(e.next_attempt_at, Some(1_767_000_030_000));
        assert_eq!(e.retry_count, Some(2));
        assert!(owed(&Outcome::Hopped, context(&send, None, 2)).is_empty());
    }

    #[test]
    fn the_same_event_written_again_has_the_same_id() {
        let send = send();
        let d = Outcome::Delivered(tried(1, 200, None));
        let once = owed(&d, context(&send, None, 0));
        let again = owed(
            &d,
            Context {
                now_ms: 99_000,
                ..context(&send, None, 0)
            },
        );
        assert_eq!(once[0].id, again[0].id);
    }
}
