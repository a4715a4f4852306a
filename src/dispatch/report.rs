//! The failure event of one attempt, and cutting it to fit in a Kafka record. Pure: the clock and the event
//! id are arguments, so every field mapping is unit-tested.

use std::time::Duration;

use super::classify::Failure;
use crate::events::{FailureEvent, SendRequest, ValidSend};

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
pub struct AttemptFacts {
    pub attempt: u32,
    pub duration: Duration,
    pub now_ms: i64,
    pub terminal: bool,
    pub next_attempt_at_ms: Option<i64>,
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
    };
    let id = uuid::Uuid::new_v4().to_string();
    event_for(&send.request, Target::of(send), failure, facts, id)
}

/// The Currents-style event for one failed attempt; `id` is the event's own (consumers dedupe on it).
pub fn event_for(
    r: &SendRequest,
    target: Target<'_>,
    failure: &Failure,
    facts: AttemptFacts,
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
    }
}

/// Shortest any field is cut to before giving up on the event.
const FLOOR: usize = 256;

/// The event, or a copy cut to fit `room` bytes as measured by `size` (the framed encoding): the response
/// body first, then the URL, the error and the names, each marked by `truncated`. `None` if even that is too
/// large (only with a `room` far below any real broker's limit: identifiers are bounded by validation).
pub fn fit_event(
    event: &FailureEvent,
    room: usize,
    size: impl Fn(&FailureEvent) -> usize,
) -> Option<FailureEvent> {
    let mut e = event.clone();
    if size(&e) <= room {
        return Some(e);
    }
    e.truncated = Some(true);
    // First only the response body may shrink to nothing, the other fields to FLOOR bytes; then anything.
    for floor in [FLOOR, 0] {
        for pick in 0..CUTTABLE {
            let excess = size(&e).saturating_sub(room);
            if excess == 0 {
                return Some(e);
            }
            let floor = if pick == 0 { 0 } else { floor };
            if let Some(field) = cuttable(&mut e, pick) {
                let keep = field.len().saturating_sub(excess + 3).max(floor);
                cut(field, keep);
            }
        }
    }
    (size(&e) <= room).then_some(e)
}

const CUTTABLE: usize = 10;

/// The string fields that may be cut, in the order they are given up.
fn cuttable(e: &mut FailureEvent, i: usize) -> Option<&mut String> {
    match i {
        0 => e.raw_response.as_mut(),
        1 => e.endpoint_url.as_mut(),
        2 => e.url_path.as_mut(),
        3 => e.error_reason.as_mut(),
        4 => e.campaign_name.as_mut(),
        5 => e.canvas_name.as_mut(),
        6 => e.canvas_step_name.as_mut(),
        7 => e.canvas_variation_name.as_mut(),
        8 => e.message_variation_name.as_mut(),
        _ => e.workspace_name.as_mut(),
    }
}

/// Cuts `s` to at most `keep` bytes on a character boundary, marking the cut with an ellipsis.
fn cut(s: &mut String, keep: usize) {
    if s.len() <= keep {
        return;
    }
    let mut at = keep.saturating_sub(3);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    s.truncate(at);
    s.push('…');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EventEncoding;
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

    fn encoded(e: &FailureEvent) -> usize {
        e.encode(EventEncoding::SingleObject, None).len()
    }

    #[test]
    fn an_event_too_large_for_a_record_is_cut_response_first_and_marked() {
        let s = send(
            r#"{"id":"s1","workspace_id":"ws","webhook":{"url":"http://h/p","request_method":"POST"}}"#,
        );
        let mut f = failure();
        f.raw_response = Some("é".repeat(300_000));
        let e = failure_event(&s, &f, 1, Duration::ZERO, 0, false, Some(5));
        assert!(encoded(&e) > 500_000);
        let fitted = fit_event(&e, 100_000, encoded).expect("fits");
        assert!(encoded(&fitted) <= 100_000);
        assert!(encoded(&fitted) > 90_000, "only as much is cut as needed");
        assert_eq!(fitted.truncated, Some(true));
        assert_eq!(
            fitted.endpoint_url.as_deref(),
            Some("http://h/p"),
            "the URL is kept"
        );
        assert!(fitted.raw_response.unwrap().ends_with('…'));
        assert_eq!(fit_event(&e, 10, encoded), None, "nothing fits in 10 bytes");
    }

    #[test]
    fn an_event_that_fits_is_left_alone() {
        let s = send(
            r#"{"id":"s1","workspace_id":"ws","webhook":{"url":"http://h/p","request_method":"POST"}}"#,
        );
        let e = failure_event(&s, &failure(), 1, Duration::ZERO, 0, true, None);
        assert_eq!(fit_event(&e, 1_000_000, encoded), Some(e));
    }

    proptest::proptest! {
        #[test]
        fn a_fitted_event_always_fits_or_is_refused(body in 0usize..20_000, url in 0usize..6_000, room in 300usize..30_000) {
            let s = send(&format!(
                r#"{{"id":"s1","workspace_id":"ws","campaign_name":"{}","webhook":{{"url":"http://h/{}","request_method":"POST"}}}}"#,
                "n".repeat(url / 2), "p".repeat(url)
            ));
            let mut f = failure();
            f.raw_response = Some("ü".repeat(body));
            let e = failure_event(&s, &f, 1, Duration::ZERO, 0, true, None);
            if let Some(fitted) = fit_event(&e, room, encoded) {
                proptest::prop_assert!(encoded(&fitted) <= room);
            }
        }
    }
}
