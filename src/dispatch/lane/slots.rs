//! A lane's request slots: its requests in flight (at most `max_in_flight_per_host`, reached by slow start:
//! a quarter of it, at least 4, and a slot more per answer) and its queue of sends waiting for one. Free
//! global slots (`max_in_flight`) go to the waiting lane with the fewest requests in flight first; a *slow*
//! lane (nothing finished for a second with requests in flight, or requests lately over a second on
//! average), or one not yet answered, may not take the last eighth of them. A slow lane's sends wait
//! without their consumer admission slot up to `max_queued_per_host`; more, or one waiting
//! `max_queue_wait`, are *spilled* ([`super::spill`]). Sends of lanes that are not slow wait without their
//! admission slot up to `4 × max_in_flight` in all (then the dispatcher itself is the bottleneck, and
//! further ones keep it, asking again with [`Slots::settle`]); they are never spilled, since moving them
//! aside would not make them go sooner. Pure: time is an argument.

use super::spill::{EpisodeState, SpillReason};
pub(super) use super::waits::Waits;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// Requests that take longer than this make their host slow.
pub const SLOW_LATENCY: Duration = Duration::from_secs(1);

/// How the lanes are bounded.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub max_in_flight: usize,
    pub max_in_flight_per_host: usize,
    /// Sends a slow host may have waiting for a slot; more are spilled.
    pub max_queued_per_host: usize,
    /// The longest a send waits in a slow host's queue before it is spilled.
    pub max_queue_wait: Duration,
    /// Every request ends by then, so a host with its cap in use absorbs at least
    /// `max_in_flight_per_host / request_timeout` requests a second, even one that never answers.
    pub request_timeout: Duration,
}

/// What a send asking for a slot is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A slot is its own now: give it back with [`Slots::release`].
    Go,
    /// Wait in the host's queue under this ticket for a [`Wake`]; `release`: without holding an admission
    /// slot (else keep it, and re-ask with [`Slots::settle`] now and then).
    Queued { ticket: u64, release: bool },
    /// Go to a retry tier, to come back this much later.
    Spill {
        after: Duration,
        reason: SpillReason,
    },
}

/// What a queued send is woken with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// It has a slot (already counted as in use).
    Go,
    Spill {
        after: Duration,
        reason: SpillReason,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wakeup {
    pub ticket: u64,
    pub wake: Wake,
}

#[derive(Debug, Default)]
pub(super) struct Lane {
    pub(super) in_flight: usize,
    /// Requests it may have in flight now (slow start, up to `max_in_flight_per_host`).
    pub(super) window: usize,
    /// A request of it has ended.
    pub(super) answered: bool,
    /// `(ticket, queued at, how it waits)`, oldest first.
    pub(super) queue: VecDeque<(u64, Duration, Waits)>,
    /// Queued sends that wait without an admission slot.
    pub(super) released: usize,
    /// When a request of this lane last finished, or it last went from idle to busy.
    pub(super) last_done: Duration,
    /// Smoothed duration of its requests, in seconds.
    pub(super) latency: f64,
    /// Where the spilled sends' return times end, so they come back spread at the host's rate.
    pub(super) horizon: Duration,
    /// The rate (sends a second) the horizon was spread at.
    pub(super) horizon_rate: f64,
    pub(super) window_start: Duration,
    pub(super) window_done: u32,
    /// Requests a second the host was seen to finish (smoothed), once a window has passed.
    pub(super) rate: Option<f64>,
    pub(super) episode: Option<EpisodeState>,
    pub(super) spilled_since_tick: bool,
    /// When a request last began or ended: an idle lane is kept a while, for what was measured of it.
    pub(super) last_active: Duration,
}

impl Lane {
    pub(super) fn new(now: Duration, window: usize) -> Self {
        Self {
            window,
            last_done: now,
            window_start: now,
            last_active: now,
            ..Self::default()
        }
    }
}

/// The lanes of every host with work in flight, queued or recently measured.
#[derive(Debug)]
pub struct Slots {
    pub(super) limits: QueueLimits,
    /// Global slots slow lanes may not take.
    pub(super) reserve: usize,
    /// Sends of lanes that are not slow that may wait without an admission slot, in all.
    pub(super) max_released: usize,
    pub(super) in_use: usize,
    pub(super) queued: usize,
    /// Queued sends of lanes that are not slow waiting without an admission slot.
    pub(super) released_fast: usize,
    pub(super) lanes: HashMap<Arc<str>, Lane>,
    /// Set once the dispatcher stops: slow lanes spill instead of queueing.
    pub(super) draining: bool,
    /// Lanes with a queue and room under their cap, by (in flight, ticket of the queue's head).
    pub(super) ready: BTreeSet<(usize, u64, Arc<str>)>,
    pub(super) next_ticket: u64,
}

impl Slots {
    pub fn new(limits: QueueLimits) -> Self {
        let limits = QueueLimits {
            max_in_flight: limits.max_in_flight.max(1),
            max_in_flight_per_host: limits.max_in_flight_per_host.max(1),
            ..limits
        };
        Self {
            reserve: limits.max_in_flight / 8,
            max_released: limits.max_in_flight.saturating_mul(4),
            limits,
            in_use: 0,
            queued: 0,
            released_fast: 0,
            draining: false,
            lanes: HashMap::new(),
            ready: BTreeSet::new(),
            next_ticket: 0,
        }
    }

    /// A queued send gave up waiting (its task was dropped). `false` if it had already been woken.
    pub fn cancel(&mut self, host: &str, ticket: u64, now: Duration) -> bool {
        let Some((key, lane)) = self.lanes.get_key_value(host.trim_end_matches('.')) else {
            return false;
        };
        let Some(at) = lane.queue.iter().position(|(t, _, _)| *t == ticket) else {
            return false;
        };
        let key = key.clone();
        self.remove_at(&key, at);
        self.forget_if_idle(&key, now);
        true
    }

    /// The lane of `host`, made now (it had none).
    pub(super) fn new_lane(&mut self, host: &str, now: Duration) -> Arc<str> {
        let key: Arc<str> = Arc::from(host.trim_end_matches('.'));
        let lane = Lane::new(now, self.initial_window());
        self.lanes.insert(key.clone(), lane);
        key
    }

    /// What a new lane may have in flight: a quarter of its cap, at least 4 (or the whole cap if smaller).
    pub(super) fn initial_window(&self) -> usize {
        let cap = self.limits.max_in_flight_per_host;
        (cap / 4).max(cap.min(4))
    }

    /// Takes the waiter at `at` out of `key`'s queue.
    pub(super) fn remove_at(&mut self, key: &Arc<str>, at: usize) {
        self.unready(key);
        let lane = self.lanes.get_mut(key).expect("present");
        if let Some((_, _, waits)) = lane.queue.remove(at) {
            self.counted(key, waits, -1);
            self.queued -= 1;
        }
        self.reready(key);
    }
}

#[cfg(test)]
#[path = "slots_tests.rs"]
mod tests;
