//! Unhealthy-host detection, as Braze documents it (ARCHITECTURE.md, "Unhealthy hosts"). Pure: time is an
//! argument.
//!
//! Per (host, workspace) — not per path — responses with a "drowning" status (408, 429, 502, 503, 504, 529)
//! are counted in a moving window. Above the threshold the host is paused: attempts get a simulated 598
//! without a request and are retried later. When the pause ends the window is looked at again: still
//! unhealthy (responses from requests that were in flight keep arriving) means another pause.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::HostKey;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostHealthConfig {
    pub enabled: bool,
    /// Moving window over which unhealthy responses are counted.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// More unhealthy responses than this within the window pause the host.
    pub threshold: u32,
    #[serde(with = "humantime_serde")]
    pub pause: Duration,
    /// Status codes that count as unhealthy.
    pub codes: Vec<u16>,
}

impl Default for HostHealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            window: Duration::from_secs(60),
            threshold: 3000,
            pause: Duration::from_secs(60),
            codes: vec![408, 429, 502, 503, 504, 529],
        }
    }
}

impl HostHealthConfig {
    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.window < Duration::from_millis(BUCKETS as u64) {
            problems.push(format!("host_health.window must be at least {BUCKETS} ms"));
        }
        if self.pause.is_zero() {
            problems.push("host_health.pause must be positive".into());
        }
    }
}

/// Idle hosts are swept out (by the lanes' ticker) at most this often, so memory follows the active host
/// set without a sweep on any send's path.
pub(super) const SWEEP_EVERY_MS: i64 = 1_000;

/// Buckets per window: the count is exact to 1/60 of the window.
pub(super) const BUCKETS: usize = 60;

#[derive(Debug)]
pub(super) struct Window {
    pub(super) counts: [u32; BUCKETS],
    /// Absolute bucket index (time / bucket width) of the newest bucket written.
    pub(super) head: i64,
    /// The sum of `counts`.
    pub(super) total: u64,
    /// What the rest of the fleet counted in its windows (`fleet`), added to this instance's own.
    pub(super) remote: u64,
    pub(super) paused_until: Option<i64>,
}

impl Window {
    pub(super) fn new() -> Self {
        Self {
            counts: [0; BUCKETS],
            head: 0,
            total: 0,
            remote: 0,
            paused_until: None,
        }
    }
}

/// What changed for a host, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Paused { until_ms: i64, count: u64 },
    PauseExtended { until_ms: i64, count: u64 },
    Resumed,
}

impl Transition {
    /// The `transition` label of `host_pauses_total`.
    pub fn label(self) -> &'static str {
        match self {
            Transition::Paused { .. } => "paused",
            Transition::PauseExtended { .. } => "extended",
            Transition::Resumed => "resumed",
        }
    }
}

#[derive(Debug)]
pub struct HostHealth {
    pub(super) cfg: HostHealthConfig,
    pub(super) bucket_ms: i64,
    pub(super) hosts: HashMap<HostKey, Window>,
    /// When idle hosts were last swept out (UNIX ms).
    pub(super) swept_at_ms: i64,
}

impl HostHealth {
    pub fn new(cfg: HostHealthConfig) -> Self {
        let bucket_ms =
            (i64::try_from(cfg.window.as_millis()).unwrap_or(i64::MAX) / BUCKETS as i64).max(1);
        Self {
            cfg,
            bucket_ms,
            hosts: HashMap::new(),
            swept_at_ms: i64::MIN,
        }
    }

    /// Whether an attempt to this host may go out now; `Err(until)` while it is paused. A pause that has run
    /// out is re-evaluated here: resumed if the window is healthy, extended otherwise.
    pub fn check(&mut self, key: &HostKey, now_ms: i64) -> (Result<(), i64>, Option<Transition>) {
        if !self.cfg.enabled {
            return (Ok(()), None);
        }
        let Some(w) = self.hosts.get_mut(key) else {
            return (Ok(()), None);
        };
        let Some(until) = w.paused_until else {
            return (Ok(()), None);
        };
        if now_ms < until {
            return (Err(until), None);
        }
        w.advance(now_ms.div_euclid(self.bucket_ms));
        let count = w.total.saturating_add(w.remote);
        if count > u64::from(self.cfg.threshold) {
            let until = now_ms + pause_ms(&self.cfg);
            w.paused_until = Some(until);
            (
                Err(until),
                Some(Transition::PauseExtended {
                    until_ms: until,
                    count,
                }),
            )
        } else {
            w.paused_until = None;
            (Ok(()), Some(Transition::Resumed))
        }
    }

    /// Unhealthy responses counted for `key` in the window ending at `now_ms`.
    #[cfg(test)]
    pub fn count(&mut self, key: &HostKey, now_ms: i64) -> u64 {
        let bucket = now_ms.div_euclid(self.bucket_ms);
        self.hosts.get_mut(key).map_or(0, |w| {
            w.advance(bucket);
            w.total
        })
    }

    pub fn paused_hosts(&self, now_ms: i64) -> usize {
        self.hosts
            .values()
            .filter(|w| w.paused_until.is_some_and(|u| u > now_ms))
            .count()
    }

    /// Sweeps idle hosts out if the last sweep is [`SWEEP_EVERY_MS`] old; `true` if it did.
    pub fn sweep(&mut self, now_ms: i64) -> bool {
        if now_ms.saturating_sub(self.swept_at_ms) < SWEEP_EVERY_MS {
            return false;
        }
        self.swept_at_ms = now_ms;
        self.evict_idle(now_ms);
        true
    }

    /// Forgets hosts with nothing in their window and no pause still running (an expired pause whose host
    /// was never tried again is dropped too), so memory follows the active host set.
    pub fn evict_idle(&mut self, now_ms: i64) {
        let bucket = now_ms.div_euclid(self.bucket_ms);
        self.hosts.retain(|_, w| {
            w.advance(bucket);
            w.paused_until.is_some_and(|u| u > now_ms) || w.total > 0 || w.remote > 0
        });
    }

    #[cfg(test)]
    pub fn tracked(&self) -> usize {
        self.hosts.len()
    }
}

pub(super) fn pause_ms(cfg: &HostHealthConfig) -> i64 {
    i64::try_from(cfg.pause.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(h: &str) -> HostKey {
        HostKey {
            host: h.into(),
            workspace: "ws".into(),
        }
    }

    fn cfg(threshold: u32) -> HostHealthConfig {
        HostHealthConfig {
            threshold,
            ..HostHealthConfig::default()
        }
    }

    const T0: i64 = 1_700_000_000_000;

    #[test]
    fn pauses_above_the_threshold_then_resumes_after_the_pause_when_healthy() {
        let mut h = HostHealth::new(cfg(3));
        for i in 0..3 {
            assert_eq!(h.record(&key("a"), 503, T0 + i), None);
        }
        assert_eq!(
            h.check(&key("a"), T0 + 10).0,
            Ok(()),
            "three is not above three"
        );
        let t = h.record(&key("a"), 429, T0 + 20);
        assert_eq!(
            t,
            Some(Transition::Paused {
                until_ms: T0 + 20 + 60_000,
                count: 4
            })
        );
        assert_eq!(h.check(&key("a"), T0 + 30_000).0, Err(T0 + 60_020));
        assert_eq!(
            h.check(&key("b"), T0 + 30_000).0,
            Ok(()),
            "other hosts are not affected"
        );
        let (ok, t) = h.check(&key("a"), T0 + 61_100);
        assert_eq!((ok, t), (Ok(()), Some(Transition::Resumed)));
    }

    #[test]
    fn a_still_unhealthy_host_waits_another_pause() {
        let mut h = HostHealth::new(cfg(3));
        for i in 0..4 {
            h.record(&key("a"), 503, T0 + i);
        }
        // responses from requests already in flight keep arriving during the pause
        for i in 0..4 {
            h.record(&key("a"), 502, T0 + 50_000 + i);
        }
        let (state, t) = h.check(&key("a"), T0 + 60_010);
        assert!(matches!(t, Some(Transition::PauseExtended { .. })), "{t:?}");
        assert_eq!(state, Err(T0 + 120_010));
    }

    #[test]
    fn only_the_configured_codes_count_and_the_key_includes_the_workspace() {
        let mut h = HostHealth::new(cfg(1));
        for s in [500, 404, 200, 501] {
            h.record(&key("a"), s, T0);
        }
        assert_eq!(h.count(&key("a"), T0), 0);
        h.record(&key("a"), 504, T0);
        let other_ws = HostKey {
            host: "a".into(),
            workspace: "other".into(),
        };
        assert_eq!(h.count(&other_ws, T0), 0);
    }

    #[test]
    fn idle_hosts_are_forgotten() {
        let mut h = HostHealth::new(cfg(100));
        h.record(&key("a"), 503, T0);
        h.evict_idle(T0 + 1_000);
        assert_eq!(h.tracked(), 1);
        h.evict_idle(T0 + 61_000);
        assert_eq!(h.tracked(), 0);
    }

    #[test]
    fn an_expired_pause_of_a_host_never_tried_again_is_dropped() {
        let mut h = HostHealth::new(cfg(1));
        h.record(&key("a"), 503, T0);
        assert!(h.record(&key("a"), 503, T0).is_some(), "paused");
        h.evict_idle(T0 + 30_000);
        assert_eq!(h.tracked(), 1, "the pause still runs");
        h.evict_idle(T0 + 121_000);
        assert_eq!(h.tracked(), 0, "pause over and window empty");
        assert_eq!(h.paused_hosts(T0 + 121_000), 0);
    }

    #[test]
    fn idle_hosts_are_swept_at_most_once_a_second() {
        let mut h = HostHealth::new(cfg(u32::MAX));
        for i in 0..100 {
            h.record(&key(&format!("h{i}")), 503, T0);
        }
        assert!(h.sweep(T0), "the first sweep is due");
        assert_eq!(h.tracked(), 100, "nothing is idle yet");
        h.record(&key("late"), 503, T0 + 120_000);
        assert!(!h.sweep(T0 + 500), "not again within a second");
        assert!(h.sweep(T0 + 120_000));
        assert_eq!(
            h.tracked(),
            1,
            "hosts idle for a whole window were forgotten"
        );
    }

    proptest! {
        /// The moving window counts exactly the events of the last window, to bucket precision.
        #[test]
        fn the_window_counts_what_happened_in_the_last_minute(
            gaps in proptest::collection::vec(0i64..5_000, 1..200),
            probe_after in 0i64..120_000,
        ) {
            let mut h = HostHealth::new(cfg(u32::MAX));
            let mut t = T0;
            let mut times = Vec::new();
            for g in gaps {
                t += g;
                h.record(&key("a"), 503, t);
                times.push(t);
            }
            let now = t + probe_after;
            let bucket = 1_000; // 60 s / 60 buckets
            let exact_lo = times.iter().filter(|&&x| x > now - 60_000 + bucket).count() as u64;
            let exact_hi = times.iter().filter(|&&x| x > now - 60_000 - bucket).count() as u64;
            let c = h.count(&key("a"), now);
            prop_assert!(c >= exact_lo && c <= exact_hi, "count {} not in [{}, {}]", c, exact_lo, exact_hi);
        }
    }
}
