//! Holding sends back before they go out: per-host rate limits (`[rate_limits]`) and a host's own
//! `Retry-After`. Pure: time is an argument (a monotonic `Duration` since the dispatcher started), so the
//! schedule is unit- and property-tested without sleeping.
//!
//! A hold is not an attempt: it spends no retry budget and writes no failure event. Short holds are waited
//! out in the process; a longer one (or one more send than a host may have waiting) is requeued to a retry
//! tier with its attempt count unchanged, so sends held for one host never sit in the slots other hosts need.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::host_health::HostKey;

/// Maps above this many entries are swept of expired ones, keeping memory flat however many hosts appear.
const SWEEP_ABOVE: usize = 4096;
/// `Retry-After` holds kept at most; beyond, a new one is not recorded (the send that got it still honours
/// it through its own retry schedule), so hostile answers cannot grow memory without bound.
const MAX_HOLDS: usize = 65_536;

/// Why a send was held back; a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    RateLimit,
    RetryAfter,
}

impl HoldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::RateLimit => "rate_limit",
            HoldReason::RetryAfter => "retry_after",
        }
    }
}

/// What to do with a send about to go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Go,
    /// Wait this long in the process, then go (call [`Pacing::woke`] afterwards).
    Wait {
        wait: Duration,
        reason: HoldReason,
    },
    /// Too long to wait in the process: requeue, to go this much later. `booked`: a rate slot is booked at
    /// that time, so the send comes back a little before it and waits for it in the process, without being
    /// paced again (unless a `Retry-After` holds its host then).
    Requeue {
        after: Duration,
        booked: bool,
        reason: HoldReason,
    },
}

/// `[rate_limits]`: host names, exact or `*.suffix`, to requests per second. An exact name wins over a
/// suffix, a longer suffix over a shorter one. Each host gets its own budget, also under a suffix rule.
#[derive(Debug, Clone, Default)]
pub struct RateRules {
    exact: HashMap<String, f64>,
    /// `(".example.com", rate)`, longest first.
    suffixes: Vec<(String, f64)>,
}

impl RateRules {
    /// Rules as configured (already validated: names non-empty, rates finite and positive).
    pub fn new(rules: &BTreeMap<String, f64>) -> Self {
        let mut out = Self::default();
        for (name, rate) in rules {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix('*') {
                Some(suffix) => out.suffixes.push((suffix.to_string(), *rate)),
                None => {
                    out.exact.insert(name, *rate);
                }
            }
        }
        out.suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        out
    }

    /// Requests per second allowed to `host`, if a rule names it.
    pub fn rate_for(&self, host: &str) -> Option<f64> {
        let host = host.trim_end_matches('.');
        if let Some(rate) = self.exact.get(host) {
            return Some(*rate);
        }
        self.suffixes
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && ends_with_ignore_case(host, suffix))
            .map(|(_, rate)| *rate)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.suffixes.is_empty()
    }
}

fn ends_with_ignore_case(host: &str, suffix: &str) -> bool {
    host.len() >= suffix.len()
        && host.as_bytes()[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

/// The schedule of every paced host and every `Retry-After` hold.
#[derive(Debug)]
pub struct Pacing {
    rules: RateRules,
    /// The longest wait spent in the process; longer holds are requeued.
    max_wait: Duration,
    /// Sends one host may have waiting in the process at once; more are requeued.
    max_waiting_per_host: usize,
    /// The longest `Retry-After` honoured.
    cap: Duration,
    /// Per rate-limited host: when its next request may go.
    next_slot: HashMap<String, Duration>,
    /// Per host and workspace: no request before this.
    holds: HashMap<HostKey, Duration>,
    waiting: HashMap<String, usize>,
}

impl Pacing {
    pub fn new(
        rules: RateRules,
        max_wait: Duration,
        max_waiting_per_host: usize,
        cap: Duration,
    ) -> Self {
        Self {
            rules,
            max_wait,
            max_waiting_per_host: max_waiting_per_host.max(1),
            cap,
            next_slot: HashMap::new(),
            holds: HashMap::new(),
            waiting: HashMap::new(),
        }
    }

    /// When the send for `key` may go; books a rate slot if its host has a limit.
    pub fn admit(&mut self, key: &HostKey, now: Duration) -> Admission {
        if self.holds.is_empty() && self.rules.is_empty() {
            // The common case, without hashing the key.
            return Admission::Go;
        }
        let held = self.held_until(key, now);
        let earliest = held.unwrap_or(now);
        let rate = self.rules.rate_for(&key.host);
        let start = match rate {
            Some(rate) => self.book(&key.host, earliest, now, rate),
            None => earliest,
        };
        let Some(wait) = start.checked_sub(now).filter(|w| !w.is_zero()) else {
            return Admission::Go;
        };
        let reason = if held == Some(start) {
            HoldReason::RetryAfter
        } else {
            HoldReason::RateLimit
        };
        let waiting = self.waiting.entry(key.host.clone()).or_insert(0);
        if wait <= self.max_wait && *waiting < self.max_waiting_per_host {
            *waiting += 1;
            return Admission::Wait { wait, reason };
        }
        if *waiting == 0 {
            self.waiting.remove(&key.host);
        }
        Admission::Requeue {
            after: wait,
            booked: rate.is_some(),
            reason,
        }
    }

    /// When a `Retry-After` hold on `key` ends, if one is in force.
    pub fn held_until(&self, key: &HostKey, now: Duration) -> Option<Duration> {
        self.holds.get(key).copied().filter(|until| *until > now)
    }

    /// The longest wait spent in the process.
    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// A send that was told to wait has woken (or was dropped while waiting).
    pub fn woke(&mut self, host: &str) {
        if let Some(n) = self.waiting.get_mut(host) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.waiting.remove(host);
            }
        }
    }

    /// Books the first free slot of a rate-limited host at or after `earliest`.
    fn book(&mut self, host: &str, earliest: Duration, now: Duration, rate: f64) -> Duration {
        if self.next_slot.len() > SWEEP_ABOVE {
            self.next_slot.retain(|_, next| *next > now);
        }
        let interval = Duration::from_secs_f64(1.0 / rate);
        let next = self.next_slot.entry(host.to_string()).or_insert(now);
        let start = (*next).max(earliest);
        *next = start + interval;
        start
    }

    /// The host answered `Retry-After: after`: hold its sends for this workspace until then (capped).
    /// Returns when the hold ends if it was set or lengthened.
    pub fn hold(&mut self, key: &HostKey, now: Duration, after: Duration) -> Option<Duration> {
        if after.is_zero() {
            return None;
        }
        let until = now + after.min(self.cap);
        if self.holds.len() > SWEEP_ABOVE {
            self.holds.retain(|_, u| *u > now);
        }
        let full = self.holds.len() >= MAX_HOLDS;
        match self.holds.get_mut(key) {
            Some(u) if *u >= until => None,
            Some(u) => {
                *u = until;
                Some(until)
            }
            None if full => None,
            None => {
                self.holds.insert(key.clone(), until);
                Some(until)
            }
        }
    }

    /// Hosts and workspaces held by a `Retry-After` right now; a gauge.
    pub fn holds_active(&self, now: Duration) -> usize {
        self.holds.values().filter(|u| **u > now).count()
    }
}

#[cfg(test)]
#[path = "pacing_tests.rs"]
mod tests;
