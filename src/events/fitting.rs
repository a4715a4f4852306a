//! Cutting a failure event to fit in a Kafka record: the response body first, then the URL, the error and
//! the names, each cut marked by `truncated`. Pure.

use super::FailureEvent;

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

    fn encoded(e: &FailureEvent) -> usize {
        e.encode(EventEncoding::SingleObject, None).len()
    }

    fn event(body: usize, url: usize) -> FailureEvent {
        FailureEvent {
            http_status_code: Some(503),
            endpoint_url: Some(format!("http://h/{}", "p".repeat(url))),
            url_path: Some(format!("/{}", "p".repeat(url))),
            campaign_name: Some("n".repeat(url / 2)),
            app_group_id: Some("ws".into()),
            id: "e".into(),
            raw_response: Some("é".repeat(body)),
            error_reason: Some("Service Unavailable".into()),
            ..Default::default()
        }
    }

    #[test]
    fn an_event_too_large_for_a_record_is_cut_response_first_and_marked() {
        let e = event(300_000, 3);
        assert!(encoded(&e) > 500_000);
        let fitted = fit_event(&e, 100_000, encoded).expect("fits");
        assert!(encoded(&fitted) <= 100_000);
        assert!(encoded(&fitted) > 90_000, "only as much is cut as needed");
        assert_eq!(fitted.truncated, Some(true));
        assert_eq!(fitted.endpoint_url, e.endpoint_url, "the URL is kept");
        assert!(fitted.raw_response.unwrap().ends_with('…'));
        assert_eq!(fit_event(&e, 10, encoded), None, "nothing fits in 10 bytes");
    }

    #[test]
    fn an_event_that_fits_is_left_alone() {
        let e = event(10, 3);
        assert_eq!(fit_event(&e, 1_000_000, encoded), Some(e));
    }

    proptest::proptest! {
        #[test]
        fn a_fitted_event_always_fits_or_is_refused(body in 0usize..20_000, url in 0usize..6_000, room in 300usize..30_000) {
            let e = event(body, url);
            if let Some(fitted) = fit_event(&e, room, encoded) {
                proptest::prop_assert!(encoded(&fitted) <= room);
            }
        }
    }
}
