//! One record's journey: decode → validate → execute → classify → publish what must be published.
//! Returns only once the outcome is durable, which is what allows the caller to mark the offset done.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::Instrument;

use super::classify::{classify, Failure, Outcome};
use super::http::Executor;
use super::publish::{Abandoned, Publisher};
use crate::events::{FailureEvent, SendRequest, ValidSend};
use crate::kafka::Record;
use crate::telemetry::DispatchMetrics;

/// What became of a record in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handled {
    Delivered,
    Failed { status: u16, terminal: bool },
    DeadLettered,
}

pub struct Pipeline {
    pub executor: Executor,
    pub publisher: Publisher,
    pub metrics: DispatchMetrics,
    pub allowed_methods: Vec<String>,
    pub accept_plain_avro: bool,
    /// Global limit on webhook requests in flight.
    pub limiter: Arc<Semaphore>,
}

impl Pipeline {
    pub async fn process(&self, record: &Record) -> Result<Handled, Abandoned> {
        let send = match SendRequest::decode(&record.payload, self.accept_plain_avro)
            .and_then(|s| s.validate(&self.allowed_methods))
        {
            Ok(send) => send,
            Err(why) => {
                tracing::warn!(
                    topic = %record.tp.topic, partition = record.tp.partition, offset = record.offset,
                    reason = %why, "dead-lettering invalid send request"
                );
                self.publisher.dead_letter(record, &why).await?;
                self.metrics
                    .sends
                    .with_label_values(&["dead_lettered"])
                    .inc();
                return Ok(Handled::DeadLettered);
            }
        };
        let span = tracing::info_span!(
            "send",
            id = %send.request.id,
            workspace = %send.request.workspace_id,
            host = send.url.host_str().unwrap_or_default()
        );
        self.dispatch(&send).instrument(span).await
    }

    async fn dispatch(&self, send: &ValidSend) -> Result<Handled, Abandoned> {
        let attempt_no = 1;
        let (attempt, duration) = {
            let _permit = self
                .limiter
                .acquire()
                .await
                .expect("limiter is never closed");
            self.metrics.in_flight.inc();
            let result = self.executor.execute(send).await;
            self.metrics.in_flight.dec();
            result
        };
        self.metrics
            .request_duration
            .observe(duration.as_secs_f64());
        let outcome = classify(attempt);
        self.metrics.record_outcome(&outcome);
        match outcome {
            Outcome::Delivered { status } => {
                tracing::debug!(status, "delivered");
                self.metrics.sends.with_label_values(&["delivered"]).inc();
                Ok(Handled::Delivered)
            }
            Outcome::Failed(failure) => {
                // Retries arrive with the retry issue; until then every failure is final.
                let terminal = true;
                tracing::debug!(status = failure.status, source = %failure.source, reason = %failure.reason, "webhook failed");
                let event = failure_event(
                    send,
                    &failure,
                    attempt_no,
                    duration,
                    now_ms(),
                    terminal,
                    None,
                );
                self.publisher.failure(&event).await?;
                self.metrics.sends.with_label_values(&["failed"]).inc();
                Ok(Handled::Failed {
                    status: failure.status,
                    terminal,
                })
            }
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
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
    use crate::dispatch::classify::FailureSource;

    fn send(json: &str) -> ValidSend {
        SendRequest::decode(json.as_bytes(), false)
            .unwrap()
            .validate(&["POST".to_string()])
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
