//! When to try a failed send again (README, "Retries"). Pure: the clock and the random draw are arguments.
//!
//! Braze retries 408, 429 and 5xx up to 5 times within 30 minutes with exponential backoff; when the endpoint
//! cannot be reached at all (599, or 598 while the host is paused) it keeps trying for up to 24 hours.
//! `Retry-After` on a retriable response sets the earliest next attempt (capped), and never turns a
//! non-retriable response into a retriable one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::classify::{Failure, FailureSource};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    /// Retries (attempts after the first) for endpoints that answered: 408, 429, 5xx.
    pub max_retries: u32,
    /// No retry of an answering endpoint is scheduled later than this after the first attempt.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Retries when the endpoint could not be reached (599) or its host is paused (598).
    pub unreachable_max_retries: u32,
    #[serde(with = "humantime_serde")]
    pub unreachable_window: Duration,
    /// Delay before the first retry; doubled for each further one.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Fraction of each delay drawn at random, up or down (0.2 = ±20 %), so retries of a burst spread out.
    pub jitter: f64,
    /// The longest `Retry-After` honoured; longer values are cut to this.
    #[serde(with = "humantime_serde")]
    pub retry_after_cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 5,
            window: Duration::from_secs(30 * 60),
            unreachable_max_retries: 16,
            unreachable_window: Duration::from_secs(24 * 3600),
            initial_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(2 * 3600),
            jitter: 0.2,
            retry_after_cap: Duration::from_secs(3600),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again at this UNIX millisecond.
    RetryAt(i64),
    /// This was the last attempt.
    GiveUp(GiveUpReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    NotRetriable,
    RetriesExhausted,
    WindowExhausted,
}

impl GiveUpReason {
    pub const ALL: [GiveUpReason; 3] = [
        GiveUpReason::NotRetriable,
        GiveUpReason::RetriesExhausted,
        GiveUpReason::WindowExhausted,
    ];

    /// A bounded label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::NotRetriable => "not_retriable",
            GiveUpReason::RetriesExhausted => "retries_exhausted",
            GiveUpReason::WindowExhausted => "window_exhausted",
        }
    }
}

impl RetryPolicy {
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.initial_backoff.is_zero() {
            problems.push("retry.initial_backoff must be positive".into());
        }
        if self.max_backoff < self.initial_backoff {
            problems.push("retry.max_backoff must be at least retry.initial_backoff".into());
        }
        if !(0.0..1.0).contains(&self.jitter) {
            problems.push("retry.jitter must be in [0, 1)".into());
        }
    }

    /// The delay before retry number `retry` (1-based), before jitter: initial × 2^(retry−1), capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(31));
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }

    /// `attempts` is how many attempts have been made (this one included); `first_attempt_ms` when the first
    /// was; `u` a uniform draw in `[0, 1)` for jitter.
    pub fn decide(
        &self,
        failure: &Failure,
        attempts: u32,
        first_attempt_ms: i64,
        now_ms: i64,
        retry_after: Option<Duration>,
        u: f64,
    ) -> Decision {
        if !failure.retriable {
            return Decision::GiveUp(GiveUpReason::NotRetriable);
        }
        // The long budget is for endpoints that could not be reached (599) or were not tried (598). A 598 or
        // 599 *answered* by an endpoint is an answer like any 5xx: the ordinary budget.
        let unreachable = failure.source != FailureSource::ExternalEndpoint;
        let (max_retries, window) = if unreachable {
            (self.unreachable_max_retries, self.unreachable_window)
        } else {
            (self.max_retries, self.window)
        };
        let retry = attempts; // the next attempt is retry number `attempts`
        if retry > max_retries {
            return Decision::GiveUp(GiveUpReason::RetriesExhausted);
        }
        let base = self.backoff(retry);
        let spread = (u.clamp(0.0, 1.0) * 2.0 - 1.0) * self.jitter;
        let delay = base.mul_f64((1.0 + spread).max(0.0));
        let at = now_ms.saturating_add(millis(delay));
        let deadline = first_attempt_ms.saturating_add(millis(window));
        // The window decides *whether* another attempt is due, by the backoff schedule. A Retry-After may then
        // push that attempt later — past the window's end too, up to the cap — because the endpoint asked for
        // exactly that; giving up on the spot would turn a polite "come back later" into a final failure.
        if at > deadline {
            return Decision::GiveUp(GiveUpReason::WindowExhausted);
        }
        match retry_after {
            Some(ra) => Decision::RetryAt(
                at.max(now_ms.saturating_add(millis(ra.min(self.retry_after_cap)))),
            ),
            None => Decision::RetryAt(at),
        }
    }
}

/// Read from the response by the executor, where the header arrives.
pub use super::http::parse_retry_after;

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch::classify::FailureSource;
    use proptest::prelude::*;

    fn failure(status: u16) -> Failure {
        Failure {
            status,
            source: if status >= 598 {
                FailureSource::HostUnreachable
            } else {
                FailureSource::ExternalEndpoint
            },
            reason: String::new(),
            retriable: crate::dispatch::classify::is_retriable(status),
            raw_response: None,
            content_length: None,
            retry_after: None,
            requested: false,
        }
    }

    const MIN: i64 = 60_000;

    #[test]
    fn non_retriable_codes_are_never_retried_even_with_retry_after() {
        let p = RetryPolicy::default();
        for s in [301, 400, 404, 409] {
            let d = p.decide(&failure(s), 1, 0, 0, Some(Duration::from_secs(1)), 0.5);
            assert_eq!(d, Decision::GiveUp(GiveUpReason::NotRetriable), "{s}");
        }
    }

    #[test]
    fn answering_endpoints_get_five_retries_within_thirty_minutes() {
        let p = RetryPolicy::default();
        let mut now = 0;
        let mut retries = 0;
        for attempts in 1.. {
            match p.decide(&failure(503), attempts, 0, now, None, 0.5) {
                Decision::RetryAt(at) => {
                    assert!(at > now && at <= 30 * MIN);
                    now = at;
                    retries += 1;
                }
                Decision::GiveUp(r) => {
                    assert_eq!(r, GiveUpReason::RetriesExhausted);
                    break;
                }
            }
        }
        assert_eq!(retries, 5);
    }

    #[test]
    fn unreachable_endpoints_use_the_longer_budget() {
        let p = RetryPolicy::default();
        let d = p.decide(&failure(599), 8, 0, 3 * 3600 * 1000, None, 0.5);
        assert!(
            matches!(d, Decision::RetryAt(_)),
            "still retrying after 3 h: {d:?}"
        );
        let d = p.decide(&failure(503), 2, 0, 31 * MIN, None, 0.5);
        assert_eq!(d, Decision::GiveUp(GiveUpReason::WindowExhausted));
        let d = p.decide(&failure(598), 17, 0, MIN, None, 0.5);
        assert_eq!(d, Decision::GiveUp(GiveUpReason::RetriesExhausted));
    }

    #[test]
    fn retry_after_sets_the_earliest_next_attempt_within_a_cap() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        assert_eq!(
            p.decide(&failure(429), 1, 0, 0, Some(Duration::from_secs(120)), 0.5),
            Decision::RetryAt(120_000)
        );
        let capped = p.decide(
            &failure(503),
            1,
            0,
            0,
            Some(Duration::from_secs(10 * 3600)),
            0.5,
        );
        assert_eq!(
            capped,
            Decision::RetryAt(3_600_000),
            "capped at 1 h, and honoured although that is past the 30 min window"
        );
        let p = RetryPolicy {
            retry_after_cap: Duration::from_secs(60),
            ..p
        };
        assert_eq!(
            p.decide(&failure(503), 1, 0, 0, Some(Duration::from_secs(3600)), 0.5),
            Decision::RetryAt(60_000)
        );
    }

    #[test]
    fn a_retry_after_past_the_window_still_gets_its_retry_when_the_backoff_is_due_within_it() {
        let p = RetryPolicy::default();
        let min = 60_000;
        // 20 minutes into a 30-minute window, the next backoff (1 min) is due within it; the endpoint asks
        // for 45 minutes: the retry happens then, not never.
        let d = p.decide(
            &failure(503),
            2,
            0,
            20 * min,
            Some(Duration::from_secs(45 * 60)),
            0.5,
        );
        assert_eq!(d, Decision::RetryAt(65 * min));
        // Once the backoff itself falls outside the window, Retry-After does not extend it.
        let d = p.decide(
            &failure(503),
            2,
            0,
            29 * min + 30_000,
            Some(Duration::from_secs(60)),
            0.5,
        );
        assert_eq!(d, Decision::GiveUp(GiveUpReason::WindowExhausted));
    }

    #[test]
    fn a_598_or_599_answered_by_an_endpoint_gets_the_ordinary_budget() {
        let p = RetryPolicy::default();
        let mut answered = failure(599);
        answered.source = FailureSource::ExternalEndpoint;
        assert_eq!(
            p.decide(&answered, 6, 0, 60_000, None, 0.5),
            Decision::GiveUp(GiveUpReason::RetriesExhausted)
        );
        let unreachable = failure(599);
        assert!(matches!(
            p.decide(&unreachable, 6, 0, 60_000, None, 0.5),
            Decision::RetryAt(_)
        ));
        let mut paused = failure(598);
        paused.source = FailureSource::UnhealthyHost;
        assert!(matches!(
            p.decide(&paused, 6, 0, 60_000, None, 0.5),
            Decision::RetryAt(_)
        ));
    }

    #[test]
    fn every_give_up_reason_has_its_metric_label() {
        let m = crate::telemetry::DispatchMetrics::new();
        let text = m.render();
        for r in GiveUpReason::ALL {
            assert!(
                text.contains(&format!("reason=\"{}\"", r.as_str())),
                "{r:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn backoff_grows_and_stays_within_jitter_bounds(retry in 1u32..40, u in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            let base = p.backoff(retry);
            prop_assert!(base <= p.max_backoff);
            prop_assert!(base >= p.backoff(retry.saturating_sub(1).max(1)));
            let f = failure(599);
            if let Decision::RetryAt(at) = p.decide(&f, retry, 0, 0, None, u) {
                let lo = base.mul_f64(1.0 - p.jitter).as_millis() as i64;
                let hi = base.mul_f64(1.0 + p.jitter).as_millis() as i64;
                prop_assert!(at >= lo - 1 && at <= hi + 1, "{} not in [{}, {}]", at, lo, hi);
            }
        }

        #[test]
        fn a_retry_is_due_within_its_window_unless_retry_after_says_later(
            status in prop::sample::select(vec![408u16, 429, 500, 502, 503, 504, 529, 598, 599]),
            attempts in 1u32..20, first in 0i64..1_000_000, elapsed in 0i64..100_000_000,
            ra in proptest::option::of(0u64..10_000), u in 0.0f64..1.0,
        ) {
            let p = RetryPolicy::default();
            let now = first + elapsed;
            let ra = ra.map(Duration::from_secs);
            if let Decision::RetryAt(at) = p.decide(&failure(status), attempts, first, now, ra, u) {
                let window = if status >= 598 { p.unreachable_window } else { p.window };
                let ra_at = ra.map(|ra| now + ra.min(p.retry_after_cap).as_millis() as i64);
                prop_assert!(at <= (first + window.as_millis() as i64).max(ra_at.unwrap_or(0)));
                prop_assert!(at > now);
                if let Some(ra_at) = ra_at {
                    prop_assert!(at >= ra_at);
                }
            }
        }
    }
}
