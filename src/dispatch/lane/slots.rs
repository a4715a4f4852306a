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

use super::spill::{close_window, EpisodeState, SpillReason, QUIET_AFTER};
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
    fn new(now: Duration, window: usize) -> Self {
        Self {
            window,
            last_done: now,
            window_start: now,
            last_active: now,
            ..Self::default()
        }
    }

    /// A request of this lane begins.
    pub(super) fn start(&mut self, now: Duration) {
        if self.in_flight == 0 {
            // Idle until now: nothing was owed, so nothing is overdue.
            self.last_done = now;
        }
        self.in_flight += 1;
        self.last_active = now;
    }

    pub(super) fn slow(&self, now: Duration) -> bool {
        // A host that has never answered is suspect sooner: most answer well within a quarter second.
        let overdue = if self.answered {
            SLOW_LATENCY
        } else {
            SLOW_LATENCY / 4
        };
        self.in_flight > 0
            && (now.saturating_sub(self.last_done) > overdue
                || self.latency > SLOW_LATENCY.as_secs_f64())
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

    /// A send for `host` asks for a slot.
    pub fn take(&mut self, host: &str, now: Duration) -> Take {
        let key = self.lane_key(host, now);
        let lane = &self.lanes[&key];
        if lane.queue.is_empty() && self.may_go(lane, now) {
            self.lanes.get_mut(&key).expect("present").start(now);
            self.in_use += 1;
            return Take::Go;
        }
        let waits = match self.how_to_wait(lane, now) {
            Ok(waits) => waits,
            Err(reason) => {
                return Take::Spill {
                    after: self.spill_after(&key, now),
                    reason,
                }
            }
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.unready(&key);
        let lane = self.lanes.get_mut(&key).expect("present");
        lane.queue.push_back((ticket, now, waits));
        self.counted(&key, waits, 1);
        self.queued += 1;
        self.reready(&key);
        Take::Queued {
            ticket,
            release: waits != Waits::Keeping,
        }
    }

    /// Adds (`+1`) or takes away (`-1`) a waiter of `key` from the counts of how it waits.
    pub(super) fn counted(&mut self, key: &Arc<str>, waits: Waits, sign: i8) {
        let lane = self.lanes.get_mut(key).expect("present");
        let step = |n: &mut usize| {
            *n = if sign > 0 {
                *n + 1
            } else {
                n.saturating_sub(1)
            };
        };
        if waits != Waits::Keeping {
            step(&mut lane.released);
        }
        if waits == Waits::ReleasedFast {
            step(&mut self.released_fast);
        }
    }

    /// A request to `host` has ended after `took`: its slot goes to whoever should have it next.
    pub fn release(&mut self, host: &str, took: Duration, now: Duration) -> Vec<Wakeup> {
        let Some((key, _)) = self.lanes.get_key_value(host.trim_end_matches('.')) else {
            return Vec::new();
        };
        let key = key.clone();
        self.unready(&key);
        let lane = self.lanes.get_mut(&key).expect("present");
        lane.in_flight = lane.in_flight.saturating_sub(1);
        self.in_use = self.in_use.saturating_sub(1);
        lane.window_done = lane.window_done.saturating_add(1);
        lane.window = lane
            .window
            .saturating_add(1)
            .min(self.limits.max_in_flight_per_host);
        lane.answered = true;
        lane.last_done = now;
        lane.last_active = now;
        lane.latency = 0.8 * lane.latency + 0.2 * took.as_secs_f64();
        close_window(lane, now);
        self.reready(&key);
        self.forget_if_idle(&key, now);
        self.fill(now)
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

    /// The lane of `host`, made if it has none.
    pub(super) fn lane_key(&mut self, host: &str, now: Duration) -> Arc<str> {
        let host = host.trim_end_matches('.');
        if let Some((key, _)) = self.lanes.get_key_value(host) {
            return key.clone();
        }
        let key: Arc<str> = Arc::from(host);
        let window = self.initial_window();
        self.lanes.insert(key.clone(), Lane::new(now, window));
        key
    }

    /// Requests `lane` may have in flight now.
    pub(super) fn cap(&self, lane: &Lane) -> usize {
        lane.window.min(self.limits.max_in_flight_per_host)
    }

    /// What a new lane may have in flight: a quarter of its cap, at least 4 (or the whole cap if smaller).
    pub(super) fn initial_window(&self) -> usize {
        let cap = self.limits.max_in_flight_per_host;
        (cap / 4).max(cap.min(4))
    }

    /// Whether `lane` may take a free slot.
    fn may_go(&self, lane: &Lane, now: Duration) -> bool {
        lane.in_flight < self.cap(lane)
            && self.in_use < self.limits.max_in_flight
            && (self.in_use < self.limits.max_in_flight - self.reserve
                || (lane.answered && !lane.slow(now)))
    }

    /// Hands free slots to queued sends, the lane with the fewest in flight first (slow lanes skipped
    /// once only the reserve is left).
    pub(super) fn fill(&mut self, now: Duration) -> Vec<Wakeup> {
        let mut wakes = Vec::new();
        while self.in_use < self.limits.max_in_flight {
            let Some(key) = self
                .ready
                .iter()
                .find(|(_, _, key)| self.may_go(&self.lanes[key], now))
                .map(|(_, _, key)| key.clone())
            else {
                break;
            };
            self.unready(&key);
            let lane = self.lanes.get_mut(&key).expect("ready lanes exist");
            let (ticket, _, waits) = lane.queue.pop_front().expect("ready lanes have a queue");
            lane.start(now);
            self.counted(&key, waits, -1);
            self.in_use += 1;
            self.queued -= 1;
            self.reready(&key);
            wakes.push(Wakeup {
                ticket,
                wake: Wake::Go,
            });
        }
        wakes
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

    pub(super) fn unready(&mut self, key: &Arc<str>) {
        let lane = &self.lanes[key];
        if let Some((ticket, _, _)) = lane.queue.front() {
            self.ready.remove(&(lane.in_flight, *ticket, key.clone()));
        }
    }

    pub(super) fn reready(&mut self, key: &Arc<str>) {
        let lane = &self.lanes[key];
        if let Some((ticket, _, _)) = lane.queue.front() {
            if lane.in_flight < self.cap(lane) {
                self.ready.insert((lane.in_flight, *ticket, key.clone()));
            }
        }
    }

    pub(super) fn forget_if_idle(&mut self, key: &Arc<str>, now: Duration) {
        let lane = &self.lanes[key];
        if lane.in_flight == 0
            && lane.queue.is_empty()
            && lane.episode.is_none()
            && lane.horizon <= now
            && now.saturating_sub(lane.last_active) >= QUIET_AFTER
        {
            self.lanes.remove(key);
        }
    }
}

#[cfg(test)]
#[path = "slots_tests.rs"]
mod tests;
