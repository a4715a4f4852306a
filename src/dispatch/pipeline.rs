//! One record's journey: decode → deliver (ask the lane, send, tell the lane) → plan → apply → report the
//! [outcome](super::outcome). Returns only once the outcome is durable, which is what allows the caller to
//! mark the offset done.
//!
//! What happens to a send is decided by [`plan`](super::plan::plan), which is pure; this module does the
//! I/O around it and handles what Kafka refuses for good (the outcome then goes to a dead letter, never
//! nowhere).

use std::time::Duration;

use tracing::Instrument;

use super::classify::{Attempt, Failure, FailureSource};
use super::consume::Admission;
use super::currents;
pub use super::decode::{decode_retry, decode_send, decode_written};
use super::delivery::{Delivered, Delivery};
use super::outcome::{GiveUp, Outcome, Tried};
use super::plan::{plan, Attempted, Circumstances, Plan, Policy, Turn};
use super::publish::{Abandoned, PublishError, Publisher};
use super::retry::RetryPolicy;
use super::tiers::Tiers;
use crate::events::send_request::{invalid, InvalidKind, InvalidSend};
use crate::events::{Rules, SourceRef, ValidSend};
use crate::kafka::Record;
use crate::telemetry::DispatchMetrics;

pub struct Pipeline {
    pub delivery: std::sync::Arc<Delivery>,
    /// The clock every decision of the path reads, once per decision.
    pub clock: crate::clock::Clock,
    pub publisher: Publisher,
    pub metrics: DispatchMetrics,
    pub rules: Rules,
    pub accept_plain_avro: bool,
    /// Fresh records as sends through the schema registry, when one is configured.
    pub registry: Option<super::schemas::SendDecoder>,
    /// Whether any Currents event is written (most deployments: none, and nothing is derived).
    pub writes_currents: bool,
    pub retry: RetryPolicy,
    pub tiers: Tiers,
}

impl Pipeline {
    /// A fresh send request from the send topic.
    pub async fn process(
        &self,
        record: &Record,
        admission: &mut Admission,
    ) -> Result<Outcome, Abandoned> {
        let decoded = match &self.registry {
            Some(registry) => {
                let accept = self.accept_plain_avro;
                registry
                    .decode(record, &self.rules, accept, admission)
                    .await?
            }
            None => decode_send(record, &self.rules, self.accept_plain_avro),
        };
        let send = match decoded {
            Ok(send) => send,
            Err(mut why) => {
                let request = why.request.take();
                let mut ended = Box::pin(self.dead_letter(record, why, None, None)).await;
                if let Some(send) = request {
                    let at = currents::Context {
                        send: &send,
                        host: None,
                        requested_before: false,
                        attempts_before: 0,
                        now_ms: 0,
                    };
                    ended = self.tell(ended, at).await;
                }
                return self.report(record, ended);
            }
        };
        let span = send_span(&send, 1, record);
        let first = Turn {
            number: 1,
            first_attempt_ms: None,
            last_status: 0,
            source: Some(SourceRef {
                topic: record.tp.topic.to_string(),
                partition: record.tp.partition,
                offset: record.offset,
            }),
            requested: false,
        };
        async {
            let ended = self.attempt(record, &send, first, admission).await;
            self.report(record, ended)
        }
        .instrument(span)
        .await
    }

    /// A record from a retry tier, handed over by the consumer once the tier's delay has passed.
    pub async fn process_retry(
        &self,
        record: &Record,
        admission: &mut Admission,
    ) -> Result<Outcome, Abandoned> {
        let retry = match decode_retry(record, &self.rules) {
            Ok(r) => r,
            Err(why) => {
                let ended = Box::pin(self.dead_letter(record, why, None, None)).await;
                return self.report(record, ended);
            }
        };
        let now = self.clock.wall_ms();
        if retry.due_ms > now {
            let topic = self.tiers.topic_for(retry.due_ms, now).to_string();
            let trace = crate::telemetry::traces::record_context(&record.headers);
            match Box::pin(self.publisher.retry_traced(&topic, &retry, trace)).await {
                Ok(()) => return self.report(record, Ok(Outcome::Hopped)),
                Err(PublishError::Abandoned(a)) => return Err(a),
                // Cannot hop (the tier refuses it): try now rather than never.
                Err(PublishError::Rejected { .. }) => {}
            }
        }
        let send = match retry.send.clone().validate(&self.rules) {
            Ok(send) => send,
            Err(why) => {
                let ended = Box::pin(self.invalid_retry(record, &retry, why)).await;
                return self.report(record, ended);
            }
        };
        let turn = Turn {
            number: retry.attempts.saturating_add(1),
            first_attempt_ms: Some(retry.first_attempt_ms),
            last_status: retry.last_status,
            source: retry.source,
            // A record from before the field: assume a request unless every attempt could have been a 598.
            requested: retry
                .requested
                .unwrap_or(retry.attempts > 0 && retry.last_status != 598),
        };
        let span = send_span(&send, turn.number, record);
        async {
            let ended = self.attempt(record, &send, turn, admission).await;
            self.report(record, ended)
        }
        .instrument(span)
        .await
    }

    /// Reports how the pass ended (once it is durable; an abandoned pass is redone, and reported then).
    fn report(
        &self,
        record: &Record,
        ended: Result<Outcome, Abandoned>,
    ) -> Result<Outcome, Abandoned> {
        if let Ok(outcome) = &ended {
            outcome.report(record, &self.metrics);
        }
        ended
    }

    /// Writes the record to the dead-letter topic with why; `tried` and `give_up` when it ends an attempt.
    pub(super) async fn dead_letter(
        &self,
        record: &Record,
        why: InvalidSend,
        tried: Option<Tried>,
        give_up: Option<GiveUp>,
    ) -> Result<Outcome, Abandoned> {
        self.publisher.dead_letter(record, &why).await?;
        Ok(Outcome::DeadLettered {
            kind: why.kind,
            detail: why.detail,
            tried,
            give_up,
        })
    }

    /// One attempt of a send: delivered (as its lane allows), planned, and the plan made durable; or requeued
    /// when its lane sends it back without an attempt.
    async fn attempt(
        &self,
        record: &Record,
        send: &ValidSend,
        turn: Turn,
        admission: &mut Admission,
    ) -> Result<Outcome, Abandoned> {
        let at = currents::Context {
            send: &send.request,
            host: send.url.host_str(),
            requested_before: turn.requested,
            attempts_before: turn.number - 1,
            now_ms: 0,
        };
        let delivered = match &send.blocked {
            // Refused by the SSRF policy: no request, and no place in its host's lane.
            Some(why) => Delivered::Attempted(blocked(why), Duration::ZERO),
            None => self.delivery.deliver(send, admission).await,
        };
        let (wire, duration) = match delivered {
            Delivered::Attempted(wire, duration) => (wire, duration),
            Delivered::Requeue { due_ms, reason } => {
                let ended = Box::pin(self.requeue(record, send, &turn, due_ms, reason)).await;
                return self.tell(ended, at).await;
            }
        };
        let now_ms = self.clock.wall_ms();
        let attempted = Attempted {
            send,
            number: turn.number,
            first_attempt_ms: turn.first_attempt_ms.unwrap_or(now_ms),
            wire,
            duration,
            source: turn.source.as_ref(),
            requested_before: turn.requested,
        };
        let ended = self.planned(record, &attempted, now_ms).await;
        self.tell(ended, at).await
    }

    /// Writes the Currents events an outcome owes (when `[events]` enables them), before it is reported.
    pub(super) async fn tell(
        &self,
        ended: Result<Outcome, Abandoned>,
        at: currents::Context<'_>,
    ) -> Result<Outcome, Abandoned> {
        let outcome = ended?;
        if !self.writes_currents {
            return Ok(outcome);
        }
        let at = currents::Context {
            now_ms: self.clock.wall_ms(),
            ..at
        };
        currents::emit(&self.publisher, &outcome, at).await?;
        Ok(outcome)
    }

    /// The attempt, planned at `now_ms`, and the plan made durable.
    async fn planned(
        &self,
        record: &Record,
        attempted: &Attempted<'_>,
        now_ms: i64,
    ) -> Result<Outcome, Abandoned> {
        let now = Circumstances {
            now_ms,
            jitter: rand::random(),
            new_event_id: || uuid::Uuid::new_v4().to_string(),
        };
        let policy = Policy {
            retry: &self.retry,
            tiers: &self.tiers,
        };
        let plan = plan(attempted, now, policy);
        // Boxed: making a plan durable is the largest state of this future (6 KB), and without the box every
        // request in flight would carry it.
        Box::pin(self.apply(record, plan, attempted.number)).await
    }

    /// Makes a plan durable. What Kafka refuses for good ends in a dead letter that says so.
    async fn apply(&self, record: &Record, plan: Plan, number: u32) -> Result<Outcome, Abandoned> {
        match plan {
            Plan::Delivered { status } => Ok(Outcome::Delivered(Tried {
                number,
                status,
                source: None,
            })),
            Plan::GiveUp {
                failure,
                reason,
                event,
            } => {
                let tried = tried(number, &failure);
                let give_up = GiveUp::Policy(reason);
                if let Err(why) = self
                    .publisher
                    .failure_or_why(record, &failure, &event)
                    .await?
                {
                    return self
                        .dead_letter(record, why, Some(tried), Some(give_up))
                        .await;
                }
                Ok(Outcome::Failed { tried, give_up })
            }
            Plan::Retry {
                failure,
                topic,
                record: retry,
                mut event,
            } => {
                let tried = tried(number, &failure);
                // The retry record first: the failure event then tells the truth about whether one is scheduled.
                match self.publisher.retry(&topic, &retry).await {
                    Ok(()) => {}
                    Err(PublishError::Abandoned(a)) => return Err(a),
                    Err(PublishError::Rejected { topic, reason }) => {
                        let no_retry = format!("no retry: {topic} refused it: {reason}");
                        event.is_terminal = Some(true);
                        event.next_attempt_at = None;
                        event.error_reason = Some(format!("{}; {no_retry}", failure.reason));
                        // The dead letter keeps the send whether or not the terminal event went through.
                        let _refused = self
                            .publisher
                            .failure_or_why(record, &failure, &event)
                            .await?;
                        let why = invalid(
                            InvalidKind::Unpublishable,
                            format!("retry record refused by {topic}: {reason}"),
                        );
                        return self
                            .dead_letter(record, why, Some(tried), Some(GiveUp::RetryRefused))
                            .await;
                    }
                }
                if let Err(mut why) = self
                    .publisher
                    .failure_or_why(record, &failure, &event)
                    .await?
                {
                    // The retry is durable, so the send goes on; the dead letter only keeps the event's news.
                    why.detail
                        .push_str("; the retry is scheduled: do not redrive this record");
                    self.publisher.dead_letter(record, &why).await?;
                }
                Ok(Outcome::Retrying { tried, tier: topic })
            }
        }
    }
}

/// The consumer thread hands its records here.
impl super::consume::Handler for Pipeline {
    fn handle(
        self: std::sync::Arc<Self>,
        kind: super::consume::Kind,
        record: Record,
        mut admission: Admission,
    ) -> futures::future::BoxFuture<'static, bool> {
        Box::pin(async move {
            let result = match kind {
                super::consume::Kind::Fresh => self.process(&record, &mut admission).await,
                super::consume::Kind::Retry => self.process_retry(&record, &mut admission).await,
            };
            result.is_ok()
        })
    }
}

/// The span of one attempt, parented by the trace context `record` came with (when traces are on).
fn send_span(send: &ValidSend, attempt: u32, record: &Record) -> tracing::Span {
    let (id, workspace) = (&send.request.id, &send.request.workspace_id);
    let host = send.url.host_str().unwrap_or_default();
    crate::telemetry::traces::send_span(id, workspace, host, attempt, &record.headers)
}

/// What a send refused by the SSRF policy gets instead of a request.
fn blocked(why: &str) -> Attempt {
    Attempt::NoResponse {
        source: FailureSource::BlockedDestination,
        error: why.to_string(),
    }
}

/// What an attempt that failed with `failure` got.
fn tried(number: u32, failure: &Failure) -> Tried {
    Tried {
        number,
        status: failure.status,
        source: Some(failure.source),
    }
}
