//! The failure event of one attempt, and cutting it to fit in a Kafka record. Pure: the clock and the event
//! id are arguments, so every field mapping is unit-tested.

use std::time::Duration;

use super::classify::Failure;
use crate::events::{FailureEvent, SendRequest, SourceRef, ValidSend};

/// Where a send was going, as far as it could be parsed.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub url: &'a str,
    pub host: Option<&'a str>,
    pub path: Option<&'a str>,
    pub method: &'a str,
}

impl<'a> Target<'a> {
    pub fn of(send: &'a ValidSend) -> Self {
        Self {
            url: send.url.as_str(),
            host: send.url.host_str(),
            path: Some(send.url.path()),
            method: send.method.as_str(),
        }
    }

    /// A send that no longer passes validation: its URL as written.
    pub fn unparsed(send: &'a SendRequest) -> Self {
        Self {
            url: &send.webhook.url,
            host: None,
            path: None,
            method: &send.webhook.request_method,
        }
    }
}

/// The facts of one attempt that are not in the send or the failure.
#[derive(Debug, Clone, Copy)]
pub struct AttemptFacts<'a> {
    pub attempt: u32,
    pub duration: Duration,
    pub now_ms: i64,
    pub terminal: bool,
    pub next_attempt_at_ms: Option<i64>,
    /// Where the send's original record is (a redrive names it).
    pub source: Option<&'a SourceRef>,
}

/// The Currents-style event for one failed attempt of a validated send, with a fresh id (benchmarks and
/// tests; the dispatcher goes through [`plan`](super::plan::plan)).
pub fn failure_event(
    send: &ValidSend,
    failure: &Failure,
    attempt: u32,
    duration: Duration,
    now_ms: i64,
    terminal: bool,
    next_attempt_at_ms: Option<i64>,
) -> FailureEvent {
    let facts = AttemptFacts {
        attempt,
        duration,
        now_ms,
        terminal,
        next_attempt_at_ms,
        source: None,
    };
    let id = uuid::Uuid::new_v4().to_string();
    event_of(send, failure, facts, id)
}

/// The Currents-style event for one failed attempt of a validated send; `id` is the event's own.
pub fn event_of(
    send: &ValidSend,
    failure: &Failure,
    facts: AttemptFacts<'_>,
    id: String,
) -> FailureEvent {
    event_for(&send.request, Target::of(send), failure, facts, id)
}

/// The Currents-style event for one failed attempt; `id` is the event's own (consumers dedupe on it).
pub fn event_for(
    r: &SendRequest,
    target: Target<'_>,
    failure: &Failure,
    facts: AttemptFacts<'_>,
    id: String,
) -> FailureEvent {
    let clamp = |v: u64| i32::try_from(v).unwrap_or(i32::MAX);
    FailureEvent {
        http_status_code: Some(i32::from(failure.status)),
        endpoint_url: Some(target.url.to_string()),
        app_group_id: Some(r.workspace_id.clone()),
        campaign_id: r.campaign_id.clone(),
        canvas_id: r.canvas_id.clone(),
        canvas_step_id: r.canvas_step_id.clone(),
        canvas_step_message_variation_id: r.canvas_step_message_variation_id.clone(),
        canvas_variation_id: r.canvas_variation_id.clone(),
        content_length: failure.content_length.map(clamp),
        dispatch_id: Some(r.dispatch_id.clone().unwrap_or_else(|| r.id.clone())),
        external_user_id: r.external_user_id.clone(),
        host: target.host.map(str::to_string),
        id,
        message_variation_id: r.message_variation_id.clone(),
        raw_response: failure.raw_response.clone(),
        retry_count: Some(clamp(u64::from(facts.attempt))),
        send_id: r.send_id.clone(),
        time: i32::try_from(facts.now_ms / 1000).unwrap_or(i32::MAX),
        url_path: target.path.map(str::to_string),
        user_id: r
            .user_id
            .clone()
            .or_else(|| r.external_user_id.clone())
            .unwrap_or_default(),
        webhook_duration: Some(clamp(
            u64::try_from(facts.duration.as_millis()).unwrap_or(u64::MAX),
        )),
        webhook_failure_source: Some(failure.source.as_str().to_string()),
        is_terminal: Some(facts.terminal),
        campaign_name: r.campaign_name.clone(),
        canvas_name: r.canvas_name.clone(),
        canvas_step_name: r.canvas_step_name.clone(),
        canvas_variation_name: r.canvas_variation_name.clone(),
        message_variation_name: r.message_variation_name.clone(),
        workspace_name: r.workspace_name.clone(),
        attempt: Some(clamp(u64::from(facts.attempt))),
        next_attempt_at: facts.next_attempt_at_ms,
        error_reason: Some(failure.reason.clone()),
        retriable: Some(failure.retriable),
        request_method: Some(target.method.to_string()),
        time_ms: Some(facts.now_ms),
        send_created_at: r.created_at,
        hookrelay_version: Some(env!("CARGO_PKG_VERSION").to_string()),
        truncated: None,
        source_topic: facts.source.map(|s| s.topic.clone()),
        source_partition: facts.source.map(|s| s.partition),
        source_offset: facts.source.map(|s| s.offset),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::classify::FailureSource;
    use crate::events::Rules;

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
            requested: false,
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
        assert_eq!(e.truncated, None);
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
