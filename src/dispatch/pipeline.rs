//! One record's journey: decode → validate → execute → classify → publish what must be published.
//! Returns only once the outcome is durable, which is what allows the caller to mark the offset done.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::Semaphore;
use tracing::Instrument;

use super::classify::{classify, Attempt, Failure, FailureSource, Outcome};
use super::host_health::{HostHealth, HostKey, Transition};
use super::http::Executor;
use super::limits::HostLimits;
use super::publish::{Abandoned, Publisher};
use super::retry::{now_ms, parse_retry_after, pick_tier, Decision, RetryPolicy};
use crate::events::send_request::{InvalidKind, InvalidSend};
use crate::events::{FailureEvent, RetryRecord, Rules, SendRequest, ValidSend};
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

impl Pipeline {
    /// A fresh send request from the send topic.
    pub async fn process(&self, record: &Record) -> Result<Handled, Abandoned> {
        let send = match SendRequest::decode(&record.payload, self.accept_plain_avro)
            .and_then(|s| s.validate(&self.rules))
        {
            Ok(send) => send,
            Err(why) => return self.dead_letter(record, &why).await,
        };
        let span = send_span(&send, 1);
        self.attempt(&send, 1, now_ms()).instrument(span).await
    }

    /// A record from a retry tier, handed over by the consumer once the tier's delay has passed.
    pub async fn process_retry(&self, record: &Record) -> Result<Handled, Abandoned> {
        let retry = match RetryRecord::decode(&record.payload) {
            Ok(r) => r,
            Err(e) => {
                let why = InvalidSend {
                    kind: InvalidKind::Undecodable,
                    detail: format!("invalid retry record: {e}"),
                };
                return self.dead_letter(record, &why).await;
            }
        };
        let now = now_ms();
        if retry.due_ms > now {
            self.publisher
                .retry(self.tier_topic(retry.due_ms, now), &retry)
                .await?;
            self.metrics.retry_hops.inc();
            return Ok(Handled::Hopped);
        }
        let send = match retry.send.validate(&self.rules) {
            Ok(send) => send,
            Err(why) => return self.dead_letter(record, &why).await,
        };
        let attempt = retry.attempts + 1;
        self.attempt(&send, attempt, retry.first_attempt_ms)
            .instrument(send_span(&send, attempt))
            .await
    }

    async fn dead_letter(&self, record: &Record, why: &InvalidSend) -> Result<Handled, Abandoned> {
        tracing::warn!(
            topic = %record.tp.topic, partition = record.tp.partition, offset = record.offset,
            reason = %why, "dead-lettering invalid record"
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
        send: &ValidSend,
        attempt_no: u32,
        first_attempt_ms: i64,
    ) -> Result<Handled, Abandoned> {
        let host = HostKey {
            host: send.url.host_str().unwrap_or_default().to_string(),
            workspace: send.request.workspace_id.clone(),
        };
        let (attempt, duration) = match self.host_gate(&host) {
            Err(until_ms) => (
                Attempt::NoResponse {
                    source: FailureSource::UnhealthyHost,
                    error: format!("host paused as unhealthy until {}", rfc3339(until_ms)),
                },
                Duration::ZERO,
            ),
            Ok(()) => {
                let _host_slot = self.host_limits.acquire(&host.host).await;
                let _slot = self
                    .limiter
                    .acquire()
                    .await
                    .expect("limiter is never closed");
                self.metrics.in_flight.inc();
                let result = self.executor.execute(send).await;
                self.metrics.in_flight.dec();
                self.metrics
                    .request_duration
                    .observe(result.1.as_secs_f64());
                result
            }
        };
        if let Attempt::Response { status, .. } = &attempt {
            self.host_observe(&host, *status);
        }
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
        match decision {
            Decision::RetryAt(due_ms) => {
                let retry = RetryRecord {
                    send: send.request.clone(),
                    attempts: attempt_no,
                    first_attempt_ms,
                    due_ms,
                    last_status: failure.status,
                };
                let topic = self.tier_topic(due_ms, now);
                let event = failure_event(
                    send,
                    &failure,
                    attempt_no,
                    duration,
                    now,
                    false,
                    Some(due_ms),
                );
                // Both must be durable before the record counts as done; neither depends on the other.
                let (scheduled, reported) = tokio::join!(
                    self.publisher.retry(topic, &retry),
                    self.publisher.failure(&event)
                );
                scheduled?;
                reported?;
                self.metrics
                    .retries_scheduled
                    .with_label_values(&[topic])
                    .inc();
                Ok(Handled::Retrying {
                    status: failure.status,
                })
            }
            Decision::GiveUp(_) => {
                let event = failure_event(send, &failure, attempt_no, duration, now, true, None);
                self.publisher.failure(&event).await?;
                self.metrics.sends.with_label_values(&["failed"]).inc();
                Ok(Handled::Failed {
                    status: failure.status,
                })
            }
        }
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

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339())
}

/// The Currents-style event for one failed attempt. Pure, so every field mapping is unit-tested.
pub fn failure_event(
    send: &ValidSend,
    failure: &Failure,
    attempt: u32,
    duration: Duration,
    now_ms: i64,
    terminal: bool,
    next_attempt_at_ms: Option<i64>,
) -> FailureEvent {
    let r = &send.request;
    let clamp = |v: u64| i32::try_from(v).unwrap_or(i32::MAX);
    FailureEvent {
        http_status_code: Some(i32::from(failure.status)),
        endpoint_url: Some(send.url.to_string()),
        app_group_id: Some(r.workspace_id.clone()),
        campaign_id: r.campaign_id.clone(),
        canvas_id: r.canvas_id.clone(),
        canvas_step_id: r.canvas_step_id.clone(),
        canvas_step_message_variation_id: r.canvas_step_message_variation_id.clone(),
        canvas_variation_id: r.canvas_variation_id.clone(),
        content_length: failure.content_length.map(clamp),
        dispatch_id: Some(r.dispatch_id.clone().unwrap_or_else(|| r.id.clone())),
        external_user_id: r.external_user_id.clone(),
        host: send.url.host_str().map(str::to_string),
        id: uuid::Uuid::new_v4().to_string(),
        message_variation_id: r.message_variation_id.clone(),
        raw_response: failure.raw_response.clone(),
        retry_count: Some(clamp(u64::from(attempt))),
        send_id: r.send_id.clone(),
        time: i32::try_from(now_ms / 1000).unwrap_or(i32::MAX),
        url_path: Some(send.url.path().to_string()),
        user_id: r
            .user_id
            .clone()
            .or_else(|| r.external_user_id.clone())
            .unwrap_or_default(),
        webhook_duration: Some(clamp(duration.as_millis() as u64)),
        webhook_failure_source: Some(failure.source.as_str().to_string()),
        is_terminal: Some(terminal),
        campaign_name: r.campaign_name.clone(),
        canvas_name: r.canvas_name.clone(),
        canvas_step_name: r.canvas_step_name.clone(),
        canvas_variation_name: r.canvas_variation_name.clone(),
        message_variation_name: r.message_variation_name.clone(),
        workspace_name: r.workspace_name.clone(),
        attempt: Some(clamp(u64::from(attempt))),
        next_attempt_at: next_attempt_at_ms,
        error_reason: Some(failure.reason.clone()),
        retriable: Some(failure.retriable),
        request_method: Some(send.method.to_string()),
        time_ms: Some(now_ms),
        send_created_at: r.created_at,
        hookrelay_version: Some(env!("CARGO_PKG_VERSION").to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(json: &str) -> ValidSend {
        SendRequest::decode(json.as_bytes(), false)
            .unwrap()
            .validate(&Rules::default())
            .unwrap()
    }

    fn failure() -> Failure {
        Failure {
            status: 503,
            source: FailureSource::ExternalEndpoint,
            reason: "Service Unavailable".into(),
            retriable: true,
            raw_response: Some("down".into()),
            content_length: Some(4),
            retry_after: None,
        }
    }

    #[test]
    fn copies_identifiers_and_derives_url_parts() {
        let s = send(
            r#"{"id":"s1","workspace_id":"ws","external_user_id":"ext","campaign_id":"c","canvas_name":"cv",
            "webhook":{"url":"https://api.example.com:8443/v1/hook?x=1","request_method":"POST"}}"#,
        );
        let e = failure_event(
            &s,
            &failure(),
            1,
            Duration::from_millis(1234),
            1_700_000_000_500,
            true,
            None,
        );
        assert_eq!(e.app_group_id.as_deref(), Some("ws"));
        assert_eq!(
            e.dispatch_id.as_deref(),
            Some("s1"),
            "dispatch_id falls back to the send id"
        );
        assert_eq!(e.user_id, "ext", "user_id falls back to external_user_id");
        assert_eq!(e.host.as_deref(), Some("api.example.com"));
        assert_eq!(e.url_path.as_deref(), Some("/v1/hook"));
        assert_eq!(e.time, 1_700_000_000);
        assert_eq!(e.webhook_duration, Some(1234));
        assert_eq!(
            e.webhook_failure_source.as_deref(),
            Some("External Endpoint")
        );
        assert_eq!(
            (e.campaign_id.as_deref(), e.canvas_name.as_deref()),
            (Some("c"), Some("cv"))
        );
    }

    #[test]
    fn user_id_is_empty_when_the_send_names_no_user() {
        let s = send(
            r#"{"id":"s1","workspace_id":"ws","dispatch_id":"d","webhook":{"url":"http://h/","request_method":"POST"}}"#,
        );
        let e = failure_event(&s, &failure(), 1, Duration::ZERO, 0, true, None);
        assert_eq!(e.user_id, "");
        assert_eq!(e.dispatch_id.as_deref(), Some("d"));
    }
}
