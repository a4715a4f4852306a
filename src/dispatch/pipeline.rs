//! One record's journey: decode → validate → execute → classify → publish what must be published.
//! Returns only once the outcome is durable, which is what allows the caller to mark the offset done.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tracing::Instrument;

use super::classify::{classify, Attempt, Failure, FailureSource, Outcome, NO_RESPONSE};
use super::host_health::{HostHealth, HostKey, Transition};
use super::http::Executor;
use super::limits::HostLimits;
use super::publish::{Abandoned, PublishError, Publisher};
use super::report::{event_for, AttemptFacts, Target};
use super::retry::{now_ms, parse_retry_after, pick_tier, Decision, RetryPolicy};
use crate::events::send_request::{invalid, InvalidKind, InvalidSend};
use crate::events::{RetryRecord, Rules, SendRequest, ValidSend};
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
    DeadLettered,
}

pub struct Pipeline {
    pub executor: Executor,
    pub publisher: Publisher,
    pub metrics: DispatchMetrics,
    pub rules: Rules,
    pub accept_plain_avro: bool,
    /// Global limit on webhook requests in flight.
    pub limiter: Arc<Semaphore>,
    pub host_limits: HostLimits,
    pub host_health: Mutex<HostHealth>,
    pub retry: RetryPolicy,
    /// Retry tier topics and their delays, shortest first.
    pub tiers: Vec<(String, Duration)>,
}

/// What a record is before anything is decoded: refused if its headers cannot be read or it is too large.
fn admit(record: &Record, rules: &Rules) -> Result<(), InvalidSend> {
    if let Some(why) = &record.header_error {
        return Err(invalid(InvalidKind::InvalidHeader, why.clone()));
    }
    if record.payload.len() > rules.max_record_bytes {
        return Err(invalid(
            InvalidKind::TooLarge,
            format!(
                "record of {} bytes is larger than dispatch.max_record_bytes ({})",
                record.payload.len(),
                rules.max_record_bytes
            ),
        ));
    }
    Ok(())
}

/// A record of the send topic as a send that can go out, or why not. Pure: every byte of the record is
/// foreign, and this is what the fuzz harness drives.
pub fn decode_send(
    record: &Record,
    rules: &Rules,
    accept_plain_avro: bool,
) -> Result<ValidSend, InvalidSend> {
    admit(record, rules)?;
    SendRequest::decode(&record.payload, accept_plain_avro)?.validate(rules)
}

/// A record of a retry tier as a retry record, or why not (its send is validated when it is due).
pub fn decode_retry(record: &Record, rules: &Rules) -> Result<RetryRecord, InvalidSend> {
    admit(record, rules)?;
    RetryRecord::decode(&record.payload).map_err(|e| {
        invalid(
            InvalidKind::Undecodable,
            format!("invalid retry record: {e}"),
        )
    })
}

impl Pipeline {
    /// A fresh send request from the send topic.
    pub async fn process(&self, record: &Record) -> Result<Handled, Abandoned> {
        let send = match decode_send(record, &self.rules, self.accept_plain_avro) {
            Ok(send) => send,
            Err(why) => return self.dead_letter(record, &why).await,
        };
        let span = send_span(&send, 1);
        self.attempt(record, &send, 1, now_ms())
            .instrument(span)
            .await
    }

    /// A record from a retry tier, handed over by the consumer once the tier's delay has passed.
    pub async fn process_retry(&self, record: &Record) -> Result<Handled, Abandoned> {
        let retry = match decode_retry(record, &self.rules) {
            Ok(r) => r,
            Err(why) => return self.dead_letter(record, &why).await,
        };
        let now = now_ms();
        if retry.due_ms > now {
            let topic = self.tier_topic(retry.due_ms, now).to_string();
            match self.publisher.retry(&topic, &retry).await {
                Ok(()) => {
                    self.metrics.retry_hops.inc();
                    return Ok(Handled::Hopped);
                }
                Err(PublishError::Abandoned(a)) => return Err(a),
                // Cannot hop (the tier refuses it): try now rather than never.
                Err(PublishError::Rejected { .. }) => {}
            }
        }
        let attempt = retry.attempts.saturating_add(1);
        let send = match retry.send.clone().validate(&self.rules) {
            Ok(send) => send,
            Err(why) => return self.invalid_retry(record, &retry, &why).await,
        };
        self.attempt(record, &send, attempt, retry.first_attempt_ms)
            .instrument(send_span(&send, attempt))
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
        let event = event_for(&retry.send, Target::unparsed(&retry.send), &failure, facts);
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

    /// The tier topic a retry due at `due_ms` waits in (see [`pick_tier`]).
    fn tier_topic(&self, due_ms: i64, now_ms: i64) -> &str {
        let remaining = Duration::from_millis(u64::try_from(due_ms - now_ms).unwrap_or(0));
        &self.tiers[pick_tier(self.tiers.iter().map(|(_, d)| *d), remaining)].0
    }

    /// One attempt of a send: unless its host is paused, an HTTP request; then the outcome made durable.
    async fn attempt(
        &self,
        record: &Record,
        send: &ValidSend,
        attempt_no: u32,
        first_attempt_ms: i64,
    ) -> Result<Handled, Abandoned> {
        let host = HostKey {
            host: send.url.host_str().unwrap_or_default().to_string(),
            workspace: send.request.workspace_id.clone(),
        };
        let (attempt, duration) = self.deliver(&host, send).await;
        let outcome = classify(attempt);
        self.metrics.record_outcome(&outcome);
        if matches!(&outcome, Outcome::Failed(f) if f.source == FailureSource::BlockedDestination) {
            self.metrics.blocked_destinations.inc();
        }
        let failure = match outcome {
            Outcome::Delivered { status } => {
                tracing::debug!(status, attempt = attempt_no, "delivered");
                self.metrics.sends.with_label_values(&["delivered"]).inc();
                if attempt_no > 1 {
                    self.metrics.delivered_after_retry.inc();
                }
                return Ok(Handled::Delivered);
            }
            Outcome::Failed(f) => f,
        };
        let now = now_ms();
        let retry_after = failure
            .retry_after
            .as_deref()
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let decision = self.retry.decide(
            &failure,
            attempt_no,
            first_attempt_ms,
            now,
            retry_after,
            rand::random(),
        );
        tracing::debug!(status = failure.status, source = %failure.source, reason = %failure.reason, ?decision, "webhook failed");
        let facts = AttemptFacts {
            attempt: attempt_no,
            duration,
            now_ms: now,
            terminal: true,
            next_attempt_at_ms: None,
        };
        let Decision::RetryAt(due_ms) = decision else {
            return self.give_up(record, send, &failure, facts).await;
        };
        let retry = RetryRecord {
            send: send.request.clone(),
            attempts: attempt_no,
            first_attempt_ms,
            due_ms,
            last_status: failure.status,
        };
        let topic = self.tier_topic(due_ms, now).to_string();
        // The retry record first: the failure event then tells the truth about whether one is scheduled.
        match self.publisher.retry(&topic, &retry).await {
            Ok(()) => {}
            Err(PublishError::Abandoned(a)) => return Err(a),
            Err(PublishError::Rejected { topic, reason }) => {
                let mut failure = failure;
                failure.reason =
                    format!("{}; no retry: {topic} refused it: {reason}", failure.reason);
                let why = invalid(
                    InvalidKind::Unpublishable,
                    format!("retry record refused by {topic}: {reason}"),
                );
                // The dead letter keeps the send whether or not the terminal event went through.
                let _refused = self.publish_failure(record, send, &failure, facts).await?;
                return self.dead_letter(record, &why).await;
            }
        }
        self.metrics
            .retries_scheduled
            .with_label_values(&[topic.as_str()])
            .inc();
        let facts = AttemptFacts {
            terminal: false,
            next_attempt_at_ms: Some(due_ms),
            ..facts
        };
        if let Err(mut why) = self.publish_failure(record, send, &failure, facts).await? {
            // The retry is durable, so the send goes on; the dead letter only keeps the event's news.
            why.detail
                .push_str("; the retry is scheduled: do not redrive this record");
            self.publisher.dead_letter(record, &why).await?;
        }
        Ok(Handled::Retrying {
            status: failure.status,
        })
    }

    /// The last attempt failed: a terminal failure event (or, if the broker refuses it, a dead letter).
    async fn give_up(
        &self,
        record: &Record,
        send: &ValidSend,
        failure: &Failure,
        facts: AttemptFacts,
    ) -> Result<Handled, Abandoned> {
        if let Err(why) = self.publish_failure(record, send, failure, facts).await? {
            return self.dead_letter(record, &why).await;
        }
        self.metrics.sends.with_label_values(&["failed"]).inc();
        Ok(Handled::Failed {
            status: failure.status,
        })
    }

    /// Publishes the attempt's failure event; `Ok(Err(why))` when the broker refused it for good, for the
    /// caller to dead-letter the record with that reason.
    async fn publish_failure(
        &self,
        record: &Record,
        send: &ValidSend,
        failure: &Failure,
        facts: AttemptFacts,
    ) -> Result<Result<(), InvalidSend>, Abandoned> {
        let event = event_for(&send.request, Target::of(send), failure, facts);
        match self.publisher.failure(&event).await {
            Ok(()) => Ok(Ok(())),
            Err(PublishError::Abandoned(a)) => Err(a),
            Err(PublishError::Rejected { topic, reason }) => {
                tracing::error!(%topic, %reason, offset = record.offset, "failure event refused; dead-lettering the send instead");
                Ok(Err(invalid(
                    InvalidKind::Unpublishable,
                    format!(
                        "failure event ({} {}, attempt {}) refused by {topic}: {reason}",
                        failure.status, failure.source, facts.attempt
                    ),
                )))
            }
        }
    }

    /// The HTTP attempt, unless the host is paused: then a simulated 598 without touching the network. The
    /// pause is checked again once the send has its slots, so work queued before a pause does not reach
    /// the host after it.
    async fn deliver(&self, host: &HostKey, send: &ValidSend) -> (Attempt, Duration) {
        if let Err(until_ms) = self.host_gate(host) {
            return paused(until_ms);
        }
        let _host_slot = self.host_limits.acquire(&host.host).await;
        let _slot = self
            .limiter
            .acquire()
            .await
            .expect("limiter is never closed");
        if let Err(until_ms) = self.host_gate(host) {
            return paused(until_ms);
        }
        self.metrics.in_flight.inc();
        let result = self.executor.execute(send).await;
        self.metrics.in_flight.dec();
        self.metrics
            .request_duration
            .observe(result.1.as_secs_f64());
        // Counted before the slots are released: the next send waiting for them sees a pause this began.
        if let Attempt::Response { status, .. } = &result.0 {
            self.host_observe(host, *status);
        }
        result
    }

    /// `Err(until)` while the host is paused; logs and counts pause transitions.
    fn host_gate(&self, key: &HostKey) -> Result<(), i64> {
        let now = now_ms();
        let mut health = self.host_health.lock().unwrap_or_else(|p| p.into_inner());
        let (state, transition) = health.check(key, now);
        if let Some(t) = transition {
            self.note_transition(key, t, health.paused_hosts(now));
        }
        state
    }

    fn host_observe(&self, key: &HostKey, status: u16) {
        let now = now_ms();
        let mut health = self.host_health.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = health.record(key, status, now) {
            self.note_transition(key, t, health.paused_hosts(now));
        }
        if health.take_swept() {
            self.metrics
                .paused_hosts
                .set(health.paused_hosts(now) as i64);
        }
    }

    fn note_transition(&self, key: &HostKey, t: Transition, paused_now: usize) {
        self.metrics.paused_hosts.set(paused_now as i64);
        let label = match t {
            Transition::Paused { until_ms, count } => {
                tracing::warn!(host = %key.host, workspace = %key.workspace, count, until = %rfc3339(until_ms), "host unhealthy: pausing sends (598)");
                "paused"
            }
            Transition::PauseExtended { until_ms, count } => {
                tracing::warn!(host = %key.host, workspace = %key.workspace, count, until = %rfc3339(until_ms), "host still unhealthy: pause extended");
                "extended"
            }
            Transition::Resumed => {
                tracing::info!(host = %key.host, workspace = %key.workspace, "host healthy again: resuming sends");
                "resumed"
            }
        };
        self.metrics.host_pauses.with_label_values(&[label]).inc();
    }
}

fn send_span(send: &ValidSend, attempt: u32) -> tracing::Span {
    tracing::info_span!(
        "send",
        id = %send.request.id,
        workspace = %send.request.workspace_id,
        host = send.url.host_str().unwrap_or_default(),
        attempt
    )
}

fn paused(until_ms: i64) -> (Attempt, Duration) {
    let attempt = Attempt::NoResponse {
        source: FailureSource::UnhealthyHost,
        error: format!("host paused as unhealthy until {}", rfc3339(until_ms)),
    };
    (attempt, Duration::ZERO)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339())
}
