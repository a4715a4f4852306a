//! Holding sends back before they go out: per-host rate limits (`[rate_limits]`) and a host's own
//! `Retry-After`. Pure: time is an argument (a monotonic `Duration` since the dispatcher started), so the
//! schedule is unit- and property-tested without sleeping.
//!
//! A hold is not an attempt: it spends no retry budget and writes no failure event. Short holds are waited
//! out in the process; a longer one (or one more send than a host may have waiting) is requeued to a retry
//! tier with its attempt count unchanged, so sends held for one host never sit in the slots other hosts need.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use super::HostKey;

/// Requeued sends come back this many times as fast as their host's rate (see [`Rates::admit`]).
pub const REQUEUE_PACE: f64 = 2.0;

/// Maps above this many entries are swept of expired ones, keeping memory flat however many hosts appear.
const SWEEP_ABOVE: usize = 4096;
/// `Retry-After` holds kept at most; beyond, a new one is not recorded (the send that got it still honours
/// it through its own retry schedule), so hostile answers cannot grow memory without bound.
pub(super) const MAX_HOLDS: usize = 65_536;

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
pub enum Pace {
    Go,
    /// Wait this long in the process, then go (call [`Rates::woke`] afterwards). A rate slot is booked.
    Wait {
        wait: Duration,
        reason: HoldReason,
    },
    /// Too long to wait here, or too many waiting already: requeue, to come back this much later and be
    /// admitted again. Nothing is booked for it, so a send that comes back late (or a retry record that lies
    /// about when it is due) can never make a host exceed its rate.
    Requeue {
        after: Duration,
        reason: HoldReason,
    },
}

impl Pace {
    /// What the lane answers a send paced so (`None`: go); `slot`: the send holds a request slot.
    pub fn ask(self, slot: bool) -> Option<super::Ask> {
        match self {
            Pace::Go => None,
            Pace::Wait { wait, reason } => Some(super::Ask::Hold { wait, reason, slot }),
            Pace::Requeue { after, reason } => Some(super::Ask::Requeue {
                after,
                reason: reason.into(),
            }),
        }
    }
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
pub struct Rates {
    pub(super) rules: RateRules,
    /// Whether any rule is set: without one and without holds, the core lets every send go unasked.
    pub(super) paced: bool,
    /// The longest wait spent in the process; longer holds are requeued.
    pub(super) max_wait: Duration,
    /// Sends one host may have waiting in the process at once; more are requeued.
    pub(super) max_waiting_per_host: usize,
    /// Sends all hosts together may have waiting; held sends keep the consumer's admission slots, so this
    /// bounds what they can take from everyone else.
    pub(super) max_waiting: usize,
    /// The longest `Retry-After` honoured.
    pub(super) cap: Duration,
    /// Per rate-limited host: when its next request may go (booked by sends waiting in the process).
    pub(super) next_slot: HashMap<String, Duration>,
    /// Per rate-limited host: where the queue of requeued sends ends, so that they come back spread out at
    /// twice the host's (whole) rate instead of all at once.
    pub(super) horizon: HashMap<String, Duration>,
    /// Per host and workspace: no request before this.
    pub(super) holds: HashMap<HostKey, Duration>,
    pub(super) waiting: HashMap<String, usize>,
    pub(super) waiting_total: usize,
    /// Per rate-limited host: sends that asked to go since the fleet was last told (`Lanes::seen`).
    pub(super) demand: HashMap<String, u64>,
    /// When `demand` began counting.
    pub(super) demand_since: Duration,
    /// Per rate-limited host: what this dispatcher asked for in the last report (sends a second), to split
    /// the fleet's rate.
    pub(super) last_demand: HashMap<String, u64>,
    /// Per rate-limited host: this dispatcher's share of its rate, by what each dispatcher asks for (1
    /// without the fleet's reports).
    pub(super) share: HashMap<String, f64>,
    /// Per rate-limited host: how the sends booked in the process were moved when its part changed.
    pub(super) rescales: HashMap<String, Rescales>,
    /// Rate-limited hosts a send was requeued for, for the rate, since the fleet was last told: this
    /// dispatcher has a backlog for them.
    pub(super) requeued: HashSet<String>,
    /// Map size above which expired entries are swept (doubling, so a sweep is amortised).
    pub(super) sweep_at: usize,
}

/// How the limits of [`Rates`] are set.
#[derive(Debug, Clone, Copy)]
pub struct RateLimits {
    pub max_wait: Duration,
    pub max_waiting_per_host: usize,
    pub max_waiting: usize,
    pub retry_after_cap: Duration,
}

impl Rates {
    pub fn new(rules: RateRules, limits: RateLimits) -> Self {
        Self {
            paced: !rules.is_empty(),
            rules,
            max_wait: limits.max_wait,
            max_waiting_per_host: limits.max_waiting_per_host.max(1),
            max_waiting: limits.max_waiting.max(1),
            cap: limits.retry_after_cap,
            next_slot: HashMap::new(),
            horizon: HashMap::new(),
            holds: HashMap::new(),
            waiting: HashMap::new(),
            waiting_total: 0,
            demand: HashMap::new(),
            demand_since: Duration::ZERO,
            last_demand: HashMap::new(),
            share: HashMap::new(),
            requeued: HashSet::new(),
            rescales: HashMap::new(),
            sweep_at: SWEEP_ABOVE,
        }
    }

    /// When the send for `key` may go. Books a rate slot only for a send that waits here for it.
    pub fn admit(&mut self, key: &HostKey, now: Duration) -> Pace {
        if self.holds.is_empty() && self.rules.is_empty() {
            // The common case, without hashing the key.
            return Pace::Go;
        }
        self.sweep(now);
        let host = key.host.trim_end_matches('.');
        let held = match self.holds.get(key) {
            Some(until) if *until > now => Some(*until),
            Some(_) => {
                // Over: forgotten, so that the fast path above comes back once no hold is left.
                self.holds.remove(key);
                None
            }
            None => None,
        };
        let earliest = held.unwrap_or(now);
        let share = self.share.get(host).copied().unwrap_or(1.0);
        let rate = self.rules.rate_for(host);
        let interval = rate.map(|rate| Duration::from_secs_f64(1.0 / (rate * share).max(1e-3)));
        if interval.is_some() {
            *self.demand.entry(host.to_string()).or_default() += 1;
        }
        let start = match interval {
            Some(_) => self
                .next_slot
                .get(host)
                .copied()
                .unwrap_or(now)
                .max(earliest),
            None => earliest,
        };
        let wait = start.saturating_sub(now);
        let reason = if held == Some(start) {
            HoldReason::RetryAfter
        } else {
            HoldReason::RateLimit
        };
        let waiting = self.waiting.get(host).copied().unwrap_or(0);
        let room = waiting < self.max_waiting_per_host && self.waiting_total < self.max_waiting;
        if wait.is_zero() || (wait <= self.max_wait && room) {
            if let Some(interval) = interval {
                self.next_slot.insert(host.to_string(), start + interval);
            }
            if wait.is_zero() {
                return Pace::Go;
            }
            *self.waiting.entry(host.to_string()).or_insert(0) += 1;
            self.waiting_total += 1;
            return Pace::Wait { wait, reason };
        }
        let after = match rate {
            Some(rate) => {
                if reason == HoldReason::RateLimit {
                    self.requeued.insert(host.to_string());
                }
                // Spaced at twice the host's whole rate, not at this dispatcher's share of it: the sends
                // come back faster than the fleet can take them, so every dispatcher has some to send when
                // its slot comes (the retry tiers' partitions, and so the sends coming back, are spread
                // unevenly among dispatchers), and what comes back in excess is requeued again, further on.
                let spacing = Duration::from_secs_f64(1.0 / (rate * REQUEUE_PACE).max(1e-3));
                // After the sends waiting here (the next slot), but never more than the in-process wait
                // beyond now, unless a hold says so: a slot booked far ahead while this dispatcher's share
                // was small must not send its backlog minutes away.
                let from = start.min(now + self.max_wait + spacing).max(earliest);
                let end = self.horizon.get(host).copied().unwrap_or(now).max(from);
                self.horizon.insert(host.to_string(), end + spacing);
                // Back half an in-process wait before its turn, to wait for it here; never at once.
                end.saturating_sub(now)
                    .saturating_sub(self.max_wait / 2)
                    .max(spacing)
                    .max(Duration::from_millis(100))
            }
            None => wait,
        };
        Pace::Requeue { after, reason }
    }

    /// When a `Retry-After` hold on `key` ends, if one is in force.
    pub fn held_until(&self, key: &HostKey, now: Duration) -> Option<Duration> {
        self.holds.get(key).copied().filter(|until| *until > now)
    }

    /// A send that was told to wait has woken (or was dropped while waiting).
    pub fn woke(&mut self, host: &str) {
        let host = host.trim_end_matches('.');
        if let Some(n) = self.waiting.get_mut(host) {
            *n = n.saturating_sub(1);
            self.waiting_total = self.waiting_total.saturating_sub(1);
            if *n == 0 {
                self.waiting.remove(host);
            }
        }
    }

    /// Drops expired slots, horizons and holds once the maps grow, at doubling sizes.
    pub(super) fn sweep(&mut self, now: Duration) {
        let largest = self
            .next_slot
            .len()
            .max(self.horizon.len())
            .max(self.holds.len())
            .max(self.demand.len());
        if largest <= self.sweep_at {
            return;
        }
        // Counts for the fleet's next report (nothing reads them when the state is not shared): past the
        // bound, that report goes without them.
        if self.demand.len() > self.sweep_at {
            self.demand.clear();
            self.requeued.clear();
        }
        self.next_slot.retain(|_, next| *next > now);
        self.horizon.retain(|_, end| *end > now);
        self.holds.retain(|_, until| *until > now);
        let next_slot = &self.next_slot;
        self.rescales.retain(|host, _| next_slot.contains_key(host));
        let left = self
            .next_slot
            .len()
            .max(self.horizon.len())
            .max(self.holds.len());
        self.sweep_at = (2 * left).max(SWEEP_ABOVE);
    }
}

/// Changes of a host's part kept for the sends still waiting for their slots; older ones are forgotten (a
/// send booked before them goes at the time it was given).
const RESCALES_KEPT: usize = 64;

/// A slot booked for a send waiting in the process: when, as of which change of the host's part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Booking {
    pub at: Duration,
    epoch: u64,
}

/// The changes of one host's part: at each, booked times after it were scaled towards it by a factor.
#[derive(Debug, Default)]
pub(super) struct Rescales {
    /// The epoch of the first change kept.
    first: u64,
    changes: VecDeque<(Duration, f64)>,
}

impl Rates {
    /// Books the slot at `at` for a send about to wait for it.
    pub fn booking(&self, host: &str, at: Duration) -> Booking {
        let epoch = self
            .rescales
            .get(host.trim_end_matches('.'))
            .map_or(0, |r| r.first + r.changes.len() as u64);
        Booking { at, epoch }
    }

    /// The host's part changed at `now` by `factor` (the old part over the new): the next free slot, and the
    /// slots of the sends waiting for theirs ([`Rates::rebooked`]), move towards `now` by it, so what was
    /// booked counts at the new part.
    pub(super) fn rescale(&mut self, host: &str, now: Duration, factor: f64) {
        let Some(next) = self.next_slot.get_mut(host) else {
            return;
        };
        if *next <= now {
            return;
        }
        *next = moved(*next, now, factor);
        let r = self.rescales.entry(host.to_string()).or_default();
        r.changes.push_back((now, factor));
        if r.changes.len() > RESCALES_KEPT {
            r.changes.pop_front();
            r.first += 1;
        }
    }

    /// When the send booked so may go now, every change of the host's part since its booking applied, but
    /// never more than an in-process wait later than booked: a part that shrank a lot (to a send a second)
    /// must not keep a send, and its partition's commits, waiting for minutes.
    pub fn rebooked(&self, host: &str, booking: Booking) -> Duration {
        let Some(r) = self.rescales.get(host.trim_end_matches('.')) else {
            return booking.at;
        };
        let skip = booking.epoch.saturating_sub(r.first);
        let skip = usize::try_from(skip).unwrap_or(usize::MAX);
        let at = r
            .changes
            .iter()
            .skip(skip)
            .fold(booking.at, |at, (when, factor)| moved(at, *when, *factor));
        at.min(booking.at + self.max_wait)
    }
}

/// A time booked at `at`, after a change of the part at `when` by `factor`: as far from the change, scaled.
fn moved(at: Duration, when: Duration, factor: f64) -> Duration {
    if at > when {
        when + (at - when).mul_f64(factor)
    } else {
        at
    }
}

#[cfg(test)]
#[path = "rate_tests.rs"]
mod tests;
