//! One record's journey: decode → pace → gate → deliver → plan → apply. Returns only once the outcome is durable,
//! which is what allows the caller to mark the offset done.
//!
//! What happens to a send is decided by [`plan`](super::plan::plan), which is pure; this module does the
//! I/O around it and handles what Kafka refuses for good (the outcome then goes to a dead letter, never
//! nowhere).

use std::time::Duration;

use tracing::Instrument;

use super::classify::{Failure, FailureSource, NO_RESPONSE};
pub use super::decode::{decode_retry, decode_send};
use super::delivery::{Delivered, Delivery};
use super::plan::{plan, Attempted, Circumstances, Plan, Policy};
use super::report::{event_for, AttemptFacts, Target};
use super::retry::RetryPolicy;
use super::tiers::Tiers;
use super::turn::{count, host_key, send_span, Turn};
use crate::clock::now_ms;
use crate::events::send_request::{invalid, InvalidKind, InvalidSend};
use crate::events::{FailureEvent, RetryRecord, Rules, SourceRef, ValidSend};
use crate::kafka::consumer::Admission;
use crate::kafka::publish::{Abandoned, PublishError, Publisher};
use crate::kafka::Record;
use crate::telemetry::DispatchMetrics;

/// What became of a record in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Delivered,
    /// Failed; another attempt is scheduled in a retry tier.
    Retrying {
        status: u16,
    },
    /// Failed for good (terminal failure event written).
    Failed {
        status: u16,
    },
    /// A retry that was not yet due, moved on to a shorter tier.
    Hopped,
    /// Held back by a rate limit or `Retry-After` for longer than `dispatch.max_hold`: requeued to a retry
    /// tier without an attempt.
    Requeued,
    DeadLettered,
}

pub struct Pipeline {
    pub delivery: Delivery,
    pub publisher: Publisher,
    pub metrics: DispatchMetrics,
    pub rules: Rules,
    pub accept_plain_avro: bool,
    pub retry: RetryPolicy,
    pub tiers: Tiers,
}

/// `give_ups_total` reasons beside the plan's: a retry the tier refused to hold, and a scheduled retry that
/// no longer passes validation.
const GIVE_UP_RETRY_REFUSED: &str = "retry_refused";
const GIVE_UP_NO_LONGER_VALID: &str = "no_longer_valid";

impl Pipeline {
    /// A fresh send request from the send topic.
    pub async fn process(
        &self,
        record: &Record,
        admission: &mut Admission,
    ) -> Result<Handled, Abandoned> {
        let send = match decode_send(record, &self.rules, self.accept_plain_avro) {
            Ok(send) => send,
            Err(why) => return Box::pin(self.dead_letter(record, &why)).await,
        };
        let span = send_span(&send, 1, record);
        self.attempt(record, &send, Turn::first(record), admission)
            .instrument(span)
            .await
    }

    /// A record from a retry tier, handed over by the consumer once the tier's delay has passed.
    pub async fn process_retry(
        &self,
        record: &Record,
        admission: &mut Admission,
    ) -> Result<Handled, Abandoned> {
        let retry = match decode_retry(record, &self.rules) {
            Ok(r) => r,
            Err(why) => return Box::pin(self.dead_letter(record, &why)).await,
        };
        let now = now_ms();
        if retry.due_ms > now {
            let topic = self.tiers.topic_for(retry.due_ms, now).to_string();
            let trace = crate::telemetry::traces::record_context(&record.headers);
            match Box::pin(self.publisher.retry_traced(&topic, &retry, trace)).await {
                Ok(()) => {
                    self.metrics.retry_hops.inc();
                    return Ok(Handled::Hopped);
                }
                Err(PublishError::Abandoned(a)) => return Err(a),
                // Cannot hop (the tier refuses it): try now rather than never.
                Err(PublishError::Rejected { .. }) => {}
            }
        }
        let send = match retry.send.clone().validate(&self.rules) {
            Ok(send) => send,
            Err(why) => return Box::pin(self.invalid_retry(record, &retry, &why)).await,
        };
        let turn = Turn {
            number: retry.attempts.saturating_add(1),
            first_attempt_ms: retry.first_attempt_ms,
            last_status: retry.last_status,
            source: retry.source,
        };
        let span = send_span(&send, turn.number, record);
        self.attempt(record, &send, turn, admission)
            .instrument(span)
            .await
    }

    /// A scheduled retry that no longer passes validation (the rules changed since it was scheduled): its
    /// earlier failure events promised another attempt, so a terminal one closes the story, beside the
    /// dead letter that keeps the send for a human.
    async fn invalid_retry(
        &self,
        record: &Record,
        retry: &RetryRecord,
        why: &InvalidSend,
    ) -> Result<Handled, Abandoned> {
        let failure = Failure {
            status: NO_RESPONSE,
            source: FailureSource::InvalidRequest,
            reason: format!("no longer valid: {why}"),
            retriable: false,
            raw_response: None,
            content_length: None,
            retry_after: None,
        };
        let facts = AttemptFacts {
            attempt: retry.attempts.saturating_add(1),
            duration: Duration::ZERO,
            now_ms: now_ms(),
            terminal: true,
            next_attempt_at_ms: None,
        };
        self.metrics
            .give_ups
            .with_label_values(&[GIVE_UP_NO_LONGER_VALID])
            .inc();
        let id = uuid::Uuid::new_v4().to_string();
        let mut event = event_for(
            &retry.send,
            Target::unparsed(&retry.send),
            &failure,
            facts,
            id,
        );
        SourceRef::stamp(retry.source.as_ref(), &mut event);
        match self.publisher.failure(&event).await {
            Ok(()) | Err(PublishError::Rejected { .. }) => {}
            Err(PublishError::Abandoned(a)) => return Err(a),
        }
        self.dead_letter(record, why).await
    }

    async fn dead_letter(&self, record: &Record, why: &InvalidSend) -> Result<Handled, Abandoned> {
        tracing::warn!(
            topic = %record.tp.topic, partition = record.tp.partition, offset = record.offset,
            reason = %why, "dead-lettering record"
        );
        self.publisher.dead_letter(record, why).await?;
        self.metrics
            .sends
            .with_label_values(&["dead_lettered"])
            .inc();
        Ok(Handled::DeadLettered)
    }

    /// One attempt of a send: delivered (paced, gated), planned, and the plan made durable; or requeued
    /// when it is held back too long.
    async fn attempt(
        &self,
        record: &Record,
        send: &ValidSend,
        turn: Turn,
        admission: &mut Admission,
    ) -> Result<Handled, Abandoned> {
        let host = host_key(send);
        let (wire, duration) = match self.delivery.deliver(&host, send, admission).await {
            Delivered::Attempted(wire, duration) => (wire, duration),
            Delivered::Requeue { due_ms } => {
                return Box::pin(self.requeue(record, send, &turn, due_ms)).await;
            }
        };
        let attempted = Attempted {
            send,
            number: turn.number,
            first_attempt_ms: turn.first_attempt_ms(),
            wire,
            duration,
            source: turn.source.as_ref(),
        };
        self.planned(record, &attempted).await
    }

    /// The attempt planned, counted and the plan made durable.
    async fn planned(
        &self,
        record: &Record,
        attempted: &Attempted<'_>,
    ) -> Result<Handled, Abandoned> {
        let now = Circumstances {
            now_ms: now_ms(),
            jitter: rand::random(),
            new_event_id: || uuid::Uuid::new_v4().to_string(),
        };
        let policy = Policy {
            retry: &self.retry,
            tiers: &self.tiers,
        };
        let plan = plan(attempted, now, policy);
        count(&self.metrics, &plan);
        if crate::telemetry::traces::enabled() {
            let outcome = match &plan {
                Plan::Delivered { .. } => "delivered",
                Plan::Retry { .. } => "retrying",
                Plan::GiveUp { .. } => "failed",
            };
            tracing::Span::current()
                // Signed: the trace layer exports unsigned integers as strings.
                .record("status", i64::from(plan.status()))
                .record("outcome", outcome);
        }
        // Boxed: making a plan durable is the largest state of this future (6 KB), and without the box every
        // request in flight would carry it.
        Box::pin(self.apply(record, plan, attempted.number)).await
    }

    /// A send held back longer than `dispatch.max_hold` goes to a retry tier with its attempt count unchanged:
    /// the hold spends none of its retry budget. If the tier refuses the record, the send is dead-lettered
    /// with that reason (as a retry the tier refuses is).
    async fn requeue(
        &self,
        record: &Record,
        send: &ValidSend,
        turn: &Turn,
        due_ms: i64,
    ) -> Result<Handled, Abandoned> {
        let retry = RetryRecord {
            send: send.request.clone(),
            attempts: turn.number.saturating_sub(1),
            // A send not yet attempted carries the time it was first held, which is where an earlier
            // version would start its retry window (this one starts it at the first real attempt).
            first_attempt_ms: turn.first_attempt_ms(),
            due_ms,
            last_status: turn.last_status,
            source: turn.source.clone(),
        };
        let topic = self.tiers.topic_for(due_ms, now_ms()).to_string();
        match self.publisher.retry(&topic, &retry).await {
            Ok(()) => {
                if crate::telemetry::traces::enabled() {
                    tracing::Span::current().record("outcome", "requeued");
                }
                Ok(Handled::Requeued)
            }
            Err(PublishError::Abandoned(a)) => Err(a),
            Err(PublishError::Rejected { topic, reason }) => {
                let why = invalid(
                    InvalidKind::Unpublishable,
                    format!("held back (rate limit or Retry-After) and {topic} refused the requeue: {reason}"),
                );
                self.dead_letter(record, &why).await
            }
        }
    }

    /// Makes a plan durable. What Kafka refuses for good ends in a dead letter that says so.
    async fn apply(&self, record: &Record, plan: Plan, number: u32) -> Result<Handled, Abandoned> {
        match plan {
            Plan::Delivered { status } => {
                tracing::debug!(status, attempt = number, "delivered");
                self.metrics.delivered.inc();
                if number > 1 {
                    self.metrics.delivered_after_retry.inc();
                }
                Ok(Handled::Delivered)
            }
            Plan::GiveUp {
                failure,
                reason,
                event,
            } => {
                tracing::debug!(status = failure.status, source = %failure.source, reason = %failure.reason, give_up = reason.as_str(), "webhook failed for good");
                self.give_up(record, &failure, &event).await
            }
            Plan::Retry {
                failure,
                topic,
                record: retry,
                mut event,
            } => {
                tracing::debug!(status = failure.status, source = %failure.source, reason = %failure.reason, due_ms = retry.due_ms, "webhook failed; retry scheduled");
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
                        let _refused = self.publish(record, &failure, &event).await?;
                        let why = invalid(
                            InvalidKind::Unpublishable,
                            format!("retry record refused by {topic}: {reason}"),
                        );
                        self.metrics
                            .give_ups
                            .with_label_values(&[GIVE_UP_RETRY_REFUSED])
                            .inc();
                        return self.dead_letter(record, &why).await;
                    }
                }
                self.metrics
                    .retries_scheduled
                    .with_label_values(&[topic.as_str()])
                    .inc();
                if let Err(mut why) = self.publish(record, &failure, &event).await? {
                    // The retry is durable, so the send goes on; the dead letter only keeps the event's news.
                    why.detail
                        .push_str("; the retry is scheduled: do not redrive this record");
                    self.publisher.dead_letter(record, &why).await?;
                }
                Ok(Handled::Retrying {
                    status: failure.status,
                })
            }
        }
    }

    /// The last attempt failed: a terminal failure event (or, if the broker refuses it, a dead letter).
    async fn give_up(
        &self,
        record: &Record,
        failure: &Failure,
        event: &FailureEvent,
    ) -> Result<Handled, Abandoned> {
        if let Err(why) = self.publish(record, failure, event).await? {
            return self.dead_letter(record, &why).await;
        }
        self.metrics.sends.with_label_values(&["failed"]).inc();
        Ok(Handled::Failed {
            status: failure.status,
        })
    }

    /// Publishes a failure event; `Ok(Err(why))` when the broker refused it for good, for the caller to
    /// dead-letter the record with that reason.
    async fn publish(
        &self,
        record: &Record,
        failure: &Failure,
        event: &FailureEvent,
    ) -> Result<Result<(), InvalidSend>, Abandoned> {
        match self.publisher.failure(event).await {
            Ok(()) => Ok(Ok(())),
            Err(PublishError::Abandoned(a)) => Err(a),
            Err(PublishError::Rejected { topic, reason }) => {
                tracing::error!(%topic, %reason, offset = record.offset, "failure event refused; dead-lettering the send instead");
                Ok(Err(invalid(
                    InvalidKind::Unpublishable,
                    format!(
                        "failure event ({} {}, attempt {}) refused by {topic}: {reason}",
                        failure.status,
                        failure.source,
                        event.attempt.unwrap_or_default()
                    ),
                )))
            }
        }
    }
}

/// The consumer thread hands its records here.
impl crate::kafka::consumer::Handler for Pipeline {
    fn handle(
        self: std::sync::Arc<Self>,
        kind: crate::kafka::consumer::Kind,
        record: Record,
        mut admission: Admission,
    ) -> futures::future::BoxFuture<'static, bool> {
        Box::pin(async move {
            let result = match kind {
                crate::kafka::consumer::Kind::Fresh => self.process(&record, &mut admission).await,
                crate::kafka::consumer::Kind::Retry => {
                    self.process_retry(&record, &mut admission).await
                }
            };
            result.is_ok()
        })
    }
}
