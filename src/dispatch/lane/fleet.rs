//! What dispatchers tell each other of hosts, so that Braze's unhealthy-host rule and `Retry-After` holds
//! are the fleet's, not each instance's. Each instance reports, per host and workspace it has counted
//! unhealthy answers from, how many it counted in its current window, a pause it began, and a
//! `Retry-After` hold it was given ([`HostReport`]); the reports travel through a compacted Kafka topic
//! keyed by instance, host and workspace ([`HostReport::key`]), so the latest of each survives and a
//! restart reads them back. [`FleetView`] keeps the other instances' latest reports; the lanes add their
//! counts to their own and take their pauses and holds. Pure: time is an argument, and a report is foreign
//! bytes — bounded, checked, and forgotten once it is older than the window, so a lost or late one costs
//! precision, never a send.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::health::{pause_ms, Window};
use super::{HostKey, Lanes, Now, Transition};

/// A report larger than this is not read (a host name is at most 253 bytes; ids are bounded by validation).
pub const MAX_REPORT_BYTES: usize = 4096;

/// Reports kept at most (instances × hosts × workspaces); beyond, new keys are not recorded.
pub const MAX_REPORTS: usize = 65_536;

/// One instance's view of one host for one workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostReport {
    /// The reporting dispatcher (its `group.instance.id`, or an id made at its start).
    pub instance: String,
    pub host: String,
    pub workspace: String,
    /// Unhealthy answers it counted in the window ending at `at_ms`.
    pub errors: u64,
    /// It paused the host for the workspace until this UNIX ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until_ms: Option<i64>,
    /// The host answered it `Retry-After` for the workspace, holding sends until this UNIX ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold_until_ms: Option<i64>,
    /// Sends a second that asked to go to the host (any workspace: `workspace` is empty) since the last
    /// report, when the host has a rate limit: the fleet's rate is split by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub demand: Option<u64>,
    /// When it was written, UNIX ms.
    pub at_ms: i64,
}

/// Why a record of the host-state topic was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("host-state record of {0} bytes is larger than {MAX_REPORT_BYTES}")]
    TooLarge(usize),
    #[error("host-state record is not a report: {0}")]
    Unreadable(String),
    #[error("host-state record names no instance, host or workspace")]
    Incomplete,
}

impl HostReport {
    /// The record's key: the latest report of each instance, host and workspace is what compaction keeps.
    pub fn key(&self) -> Vec<u8> {
        format!(
            "{}\u{1f}{}\u{1f}{}",
            self.instance, self.host, self.workspace
        )
        .into_bytes()
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a report serialises")
    }

    /// A record's value as a report, or why not. Every byte is foreign.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReportError> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(ReportError::TooLarge(bytes.len()));
        }
        let report: Self =
            serde_json::from_slice(bytes).map_err(|e| ReportError::Unreadable(e.to_string()))?;
        if report.instance.is_empty() || report.host.is_empty() {
            return Err(ReportError::Incomplete);
        }
        Ok(report)
    }

    /// The key as the reporting dispatcher's lanes had it (host names exactly as the URL parser gives
    /// them, as every dispatcher's health windows key them).
    fn host_key(&self) -> HostKey {
        HostKey {
            host: self.host.clone(),
            workspace: self.workspace.clone(),
        }
    }
}

/// What the rest of the fleet says of one host and workspace now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remote {
    /// Unhealthy answers the other instances counted in their windows.
    pub errors: u64,
    /// The latest pause one of them began, if it still runs.
    pub paused_until_ms: Option<i64>,
    /// The latest `Retry-After` hold one of them was given, if it still runs.
    pub hold_until_ms: Option<i64>,
    /// What each of the others asked of a rate-limited host lately, sends a second (reports of the last
    /// few intervals only, so a dispatcher that stops or leaves gives its share back within seconds).
    pub demands: Vec<u64>,
}

/// The other instances' latest reports.
#[derive(Debug)]
pub struct FleetView {
    /// This instance: its own reports, read back from the topic, are not counted twice.
    me: String,
    /// Reports older than this are forgotten (the unhealthy-host window).
    window_ms: i64,
    /// The longest a pause or a hold may run from now (the pause, or `retry.retry_after_cap`): a report
    /// saying longer is cut to it, so no record can pause or hold a host for good.
    max_ahead_ms: i64,
    /// Demand reports older than this no longer count.
    demand_fresh_ms: i64,
    reports: HashMap<HostKey, HashMap<String, HostReport>>,
    len: usize,
}

impl FleetView {
    pub fn new(
        me: impl Into<String>,
        window_ms: i64,
        max_ahead_ms: i64,
        demand_fresh_ms: i64,
    ) -> Self {
        Self {
            me: me.into(),
            window_ms: window_ms.max(1),
            max_ahead_ms: max_ahead_ms.max(0),
            demand_fresh_ms: demand_fresh_ms.max(1),
            reports: HashMap::new(),
            len: 0,
        }
    }

    /// Takes a report; the host and workspace it changes, if any (its own, stale or past the bound: none).
    /// A report dated in the future counts as written now, and its pause and hold are cut to what this
    /// dispatcher would set itself: a clock ahead, or a forged record, costs one window at most.
    pub fn take(&mut self, mut report: HostReport, now_ms: i64) -> Option<HostKey> {
        if report.instance == self.me || report.at_ms <= now_ms.saturating_sub(self.window_ms) {
            return None;
        }
        report.at_ms = report.at_ms.min(now_ms);
        let latest = now_ms.saturating_add(self.max_ahead_ms);
        report.paused_until_ms = report.paused_until_ms.map(|t| t.min(latest));
        report.hold_until_ms = report.hold_until_ms.map(|t| t.min(latest));
        let key = report.host_key();
        let full = self.len >= MAX_REPORTS;
        let by_instance = match self.reports.get_mut(&key) {
            Some(m) => m,
            None if full => return None,
            None => self.reports.entry(key.clone()).or_default(),
        };
        match by_instance.get_mut(&report.instance) {
            // A report older than the one kept (out of order, or a replay) changes nothing.
            Some(kept) if kept.at_ms > report.at_ms => return None,
            Some(kept) => *kept = report,
            None if full => return None,
            None => {
                by_instance.insert(report.instance.clone(), report);
                self.len += 1;
            }
        }
        Some(key)
    }

    /// What the rest of the fleet says of `key` at `now_ms`.
    pub fn remote(&self, key: &HostKey, now_ms: i64) -> Remote {
        let mut remote = Remote::default();
        let Some(by_instance) = self.reports.get(key) else {
            return remote;
        };
        let fresh = now_ms.saturating_sub(self.window_ms);
        for r in by_instance.values().filter(|r| r.at_ms > fresh) {
            remote.errors = remote.errors.saturating_add(r.errors);
            let later = |a: Option<i64>, b: Option<i64>| a.max(b).filter(|t| *t > now_ms);
            remote.paused_until_ms = later(remote.paused_until_ms, r.paused_until_ms);
            remote.hold_until_ms = later(remote.hold_until_ms, r.hold_until_ms);
            if let (true, Some(d)) = (
                r.at_ms > now_ms.saturating_sub(self.demand_fresh_ms),
                r.demand,
            ) {
                remote.demands.push(d);
            }
        }
        remote
    }

    /// Forgets reports older than the window; the keys whose remote view changed by it.
    pub fn expire(&mut self, now_ms: i64) -> Vec<HostKey> {
        let fresh = now_ms.saturating_sub(self.window_ms);
        let mut changed = Vec::new();
        let mut len = 0;
        self.reports.retain(|key, by_instance| {
            let before = by_instance.len();
            by_instance.retain(|_, r| r.at_ms > fresh);
            if by_instance.len() != before {
                changed.push(key.clone());
            }
            len += by_instance.len();
            !by_instance.is_empty()
        });
        self.len = len;
        changed
    }

    /// The keys with a report of demand: what the rest of the fleet asks of them changes as those reports
    /// age (a dispatcher that was killed writes no last one), so they are looked at every interval, not
    /// only when a report arrives.
    pub fn asked(&self) -> Vec<HostKey> {
        self.reports
            .iter()
            .filter(|(_, by_instance)| by_instance.values().any(|r| r.demand.is_some()))
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Reports kept.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What an instance tells the fleet of a host and workspace: unhealthy answers counted in its window, a
/// pause running, a `Retry-After` hold running (until, UNIX ms), and for a rate-limited host (workspace
/// empty) the sends that asked to go there since it last told.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seen {
    pub errors: u64,
    pub paused_until_ms: Option<i64>,
    pub hold_until_ms: Option<i64>,
    pub demand: Option<u64>,
}

impl Lanes {
    /// What this instance tells the fleet now: each host and workspace with unhealthy answers in its window,
    /// a pause or a `Retry-After` hold running.
    pub fn seen(&mut self, now: Now) -> HashMap<HostKey, Seen> {
        let bucket = now.wall_ms.div_euclid(self.health.bucket_ms);
        let mut seen: HashMap<HostKey, Seen> = HashMap::new();
        for (key, w) in &mut self.health.hosts {
            w.advance(bucket);
            let paused = w.paused_until.filter(|until| *until > now.wall_ms);
            if w.total > 0 || paused.is_some() {
                let errors = w.total;
                let paused_until_ms = paused;
                let s = Seen {
                    errors,
                    paused_until_ms,
                    ..Seen::default()
                };
                seen.insert(key.clone(), s);
            }
        }
        for (key, until) in &self.rates.holds {
            if *until > now.mono {
                let until = Some(now.due_in(*until - now.mono));
                seen.entry(key.clone()).or_default().hold_until_ms = until;
            }
        }
        self.demands(now.mono, &mut seen);
        seen
    }

    /// What the rest of the fleet says of `key`: its unhealthy answers count with this instance's own
    /// (crossing the threshold pauses the host here too), a pause one of them began runs here, and so does
    /// a `Retry-After` hold one of them was given.
    pub fn fleet(&mut self, key: &HostKey, remote: Remote, now: Now) {
        let cfg = &self.health.cfg;
        let (threshold, pause) = (u64::from(cfg.threshold), pause_ms(cfg));
        let known = self.health.hosts.contains_key(key);
        if cfg.enabled && (known || remote.errors > 0 || remote.paused_until_ms.is_some()) {
            let w = self
                .health
                .hosts
                .entry(key.clone())
                .or_insert_with(Window::new);
            w.remote = remote.errors;
            let count = w.total.saturating_add(w.remote);
            let transition = match (w.paused_until, remote.paused_until_ms) {
                (None, Some(until_ms)) => Some(Transition::Paused { until_ms, count }),
                (Some(mine), Some(until_ms)) if mine < until_ms => {
                    Some(Transition::PauseExtended { until_ms, count })
                }
                (None, None) if count > threshold => {
                    let until_ms = now.wall_ms.saturating_add(pause);
                    Some(Transition::Paused { until_ms, count })
                }
                _ => None,
            };
            if let Some(t) = transition {
                if let Transition::Paused { until_ms, .. }
                | Transition::PauseExtended { until_ms, .. } = t
                {
                    w.paused_until = Some(until_ms);
                }
                self.note_health(key, t, now);
            }
        }
        if let Some(until_ms) = remote.hold_until_ms {
            let after = u64::try_from(until_ms.saturating_sub(now.wall_ms)).unwrap_or(0);
            self.rates.hold(key, now.mono, Duration::from_millis(after));
        }
        if key.workspace.is_empty() {
            self.split(&key.host, &remote.demands, now.mono);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_700_000_000_000;
    const WINDOW: i64 = 60_000;

    fn report(instance: &str, errors: u64, at_ms: i64) -> HostReport {
        HostReport {
            instance: instance.into(),
            host: "h.example".into(),
            workspace: "ws".into(),
            errors,
            paused_until_ms: None,
            hold_until_ms: None,
            demand: None,
            at_ms,
        }
    }

    fn key() -> HostKey {
        HostKey {
            host: "h.example".into(),
            workspace: "ws".into(),
        }
    }

    #[test]
    fn a_demand_stops_counting_after_three_intervals_and_its_key_is_looked_at_until_then() {
        let mut v = FleetView::new("me", WINDOW, WINDOW, 1_500);
        let mut r = report("killed", 0, T0);
        r.workspace = String::new();
        r.demand = Some(50);
        let key = v.take(r, T0).expect("taken");
        assert!(v.take(report("a", 3, T0), T0).is_some());
        assert_eq!(v.asked(), vec![key.clone()], "only the key with a demand");
        assert_eq!(v.remote(&key, T0 + 1_000).demands, vec![50]);
        assert_eq!(
            v.remote(&key, T0 + 1_600).demands,
            Vec::<u64>::new(),
            "no report since: its part goes back to the others"
        );
    }

    #[test]
    fn the_fleet_s_errors_are_the_latest_report_of_each_other_instance() {
        let mut v = FleetView::new("me", WINDOW, WINDOW, 1_500);
        assert_eq!(v.take(report("a", 100, T0), T0), Some(key()));
        assert_eq!(v.take(report("a", 1_200, T0 + 500), T0 + 500), Some(key()));
        assert_eq!(v.take(report("b", 1_300, T0 + 600), T0 + 600), Some(key()));
        assert_eq!(
            v.take(report("me", 5_000, T0 + 600), T0 + 600),
            None,
            "its own"
        );
        assert_eq!(
            v.take(report("a", 7, T0 + 100), T0 + 700),
            None,
            "older than kept"
        );
        assert_eq!(v.remote(&key(), T0 + 700).errors, 2_500);
    }

    #[test]
    fn pauses_and_holds_count_while_they_run_and_old_reports_are_forgotten() {
        let mut v = FleetView::new("me", WINDOW, WINDOW, 1_500);
        let mut r = report("a", 3_001, T0);
        r.paused_until_ms = Some(T0 + 60_000);
        r.hold_until_ms = Some(T0 + 5_000);
        v.take(r, T0);
        let now = v.remote(&key(), T0 + 1_000);
        assert_eq!(now.paused_until_ms, Some(T0 + 60_000));
        assert_eq!(now.hold_until_ms, Some(T0 + 5_000));
        assert_eq!(
            v.remote(&key(), T0 + 6_000).hold_until_ms,
            None,
            "the hold ran out"
        );
        assert_eq!(v.expire(T0 + WINDOW + 1), vec![key()]);
        assert_eq!(v.remote(&key(), T0 + WINDOW + 1), Remote::default());
        assert!(v.is_empty());
        assert_eq!(
            v.take(report("b", 9, T0), T0 + WINDOW + 1),
            None,
            "stale on arrival"
        );
    }

    #[test]
    fn a_report_from_the_future_or_with_an_endless_pause_costs_one_window_at_most() {
        let mut v = FleetView::new("me", WINDOW, 60_000, 1_500);
        let mut r = report("evil", u64::MAX, i64::MAX);
        r.paused_until_ms = Some(i64::MAX);
        r.hold_until_ms = Some(i64::MAX);
        assert_eq!(v.take(r, T0), Some(key()));
        let now = v.remote(&key(), T0);
        assert_eq!(now.errors, u64::MAX);
        assert_eq!(now.paused_until_ms, Some(T0 + 60_000));
        assert_eq!(now.hold_until_ms, Some(T0 + 60_000));
        v.expire(T0 + WINDOW + 1);
        assert_eq!(v.remote(&key(), T0 + WINDOW + 1), Remote::default());
    }

    #[test]
    fn host_names_are_matched_exactly_as_the_health_windows_key_them() {
        let mut v = FleetView::new("me", WINDOW, WINDOW, 1_500);
        let mut r = report("a", 4, T0);
        r.host = "h.example.".into();
        let dotted = HostKey {
            host: "h.example.".into(),
            workspace: "ws".into(),
        };
        assert_eq!(v.take(r, T0), Some(dotted.clone()));
        assert_eq!(v.remote(&dotted, T0).errors, 4);
        assert_eq!(
            v.remote(&key(), T0).errors,
            0,
            "another host to the lanes' health windows"
        );
    }

    #[test]
    fn records_that_are_not_reports_say_why() {
        assert!(matches!(
            HostReport::decode(&vec![b' '; MAX_REPORT_BYTES + 1]),
            Err(ReportError::TooLarge(_))
        ));
        assert!(matches!(
            HostReport::decode(br#"{"instance":1}"#),
            Err(ReportError::Unreadable(_))
        ));
        let mut r = report("", 1, T0);
        assert_eq!(
            HostReport::decode(&r.encode()),
            Err(ReportError::Incomplete)
        );
        r.instance = "a".into();
        assert_eq!(HostReport::decode(&r.encode()), Ok(r));
    }

    proptest! {
        /// Any bytes: a report or a reason, never a panic; what decodes re-encodes to itself.
        #[test]
        fn any_bytes_decode_to_a_report_or_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(r) = HostReport::decode(&bytes) {
                prop_assert_eq!(HostReport::decode(&r.encode()), Ok(r));
            }
        }

        /// However many reports arrive, the view keeps at most one per instance and key, never its own.
        #[test]
        fn the_view_is_bounded_by_instances_and_keys(ops in proptest::collection::vec((0..5usize, 0..4usize, 0..10_000u64, 0..120_000i64), 1..200)) {
            let mut v = FleetView::new("i0", WINDOW, WINDOW, 1_500);
            for (i, h, errors, at) in ops {
                let mut r = report(&format!("i{i}"), errors, T0 + at);
                r.host = format!("h{h}");
                v.take(r, T0 + at);
            }
            prop_assert!(v.len() <= 4 * 4);
        }
    }
}
