//! One lane per host: the one place that decides *when* a send may go. Pure (time is an argument), so the
//! schedule is tested without sleeping. This file is the core every question of a send runs through —
//! [`Lanes::ask`]; the hand-over of a freed slot to a queued send, decided for it then (it is woken with its
//! answer, [`Woken`]); [`Lanes::answer`] — over the books of the parts, read and written in place: [`health`],
//! [`rate`], [`slots`], [`waits`]. They keep their rules, the upkeep ([`spill`], [`upkeep`]), the slow paths,
//! and what the fleet shares ([`fleet`]).

pub mod fleet;
mod health;
mod rate;
mod share;
mod slots;
mod spill;
mod types;
mod upkeep;
mod waits;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
pub use types::*;

use health::{pause_ms, HostHealth, Window, BUCKETS};
use rate::{Rates, MAX_HOLDS};
use slots::{Lane, Slots, Take, Wake, Wakeup, SLOW_LATENCY};
use spill::{QUIET_AFTER, RATE_WINDOW};
use waits::Waits;
/// Every host's lane.
#[derive(Debug)]
pub struct Lanes {
    health: HostHealth,
    rates: Rates,
    slots: Slots,
    /// Each queued send's host and workspace, by ticket, to decide for it when a slot comes free.
    queued: HashMap<u64, HostKey>,
    /// Slots freed (or spills decided) and not yet handed over.
    freed: Vec<Wakeup>,
    /// Queued sends woken with their answer, until the caller takes them ([`Lanes::wakes`]).
    woken: Vec<Woken>,
    /// What changed for hosts, until the caller takes it ([`Lanes::notes`]).
    notes: Vec<Note>,
}

impl Lanes {
    pub fn new(settings: LaneSettings) -> Self {
        Self {
            health: HostHealth::new(settings.health),
            rates: Rates::new(settings.rules, settings.rate),
            slots: Slots::new(settings.slots),
            queued: HashMap::new(),
            freed: Vec::new(),
            woken: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A send to `key` asks to go. `held`: it has waited out an [`Ask::Hold`] (its rate slot is booked).
    pub fn ask(&mut self, key: &HostKey, now: Now, held: bool) -> Ask {
        if let Err(until_ms) = self.gate(key, now) {
            return Ask::Unhealthy { until_ms };
        }
        if let Some(ask) = self.pace(key, now, held, false) {
            return ask;
        }
        match self.slots.take(&key.host, now.mono) {
            Take::Go => Ask::Go,
            Take::Queued { ticket, release } => {
                self.queued.insert(ticket, key.clone());
                Ask::Queued { ticket, release }
            }
            Take::Spill { after, reason } => Ask::Requeue {
                after,
                reason: reason.into(),
            },
        }
    }

    /// The request of a send that had a slot has ended (`answer.status` `None`: no response): the host's
    /// health and `Retry-After` are noted before its slot is handed over, so the send woken with it sees a
    /// pause this answer began. Returns the queued sends woken (other calls leave them for [`Lanes::wakes`]).
    pub fn answer(&mut self, key: &HostKey, answer: Answer, now: Now) -> Vec<Woken> {
        if let Some(status) = answer.status {
            if let Some(transition) = self.health.record(key, status, now.wall_ms) {
                self.note_health(key, transition, now);
            }
            if let (429 | 503, Some(after)) = (status, answer.retry_after) {
                if let Some(until) = self.rates.hold(key, now.mono, after) {
                    self.note_hold(key, until, now);
                }
            }
        }
        self.free(&key.host, answer.took, now);
        self.hand_over(now);
        std::mem::take(&mut self.woken)
    }

    /// Queued sends woken since the last call, each with its answer.
    pub fn wakes(&mut self) -> Vec<Woken> {
        std::mem::take(&mut self.woken)
    }

    /// What changed for hosts since the last call, for the logs and gauges.
    pub fn notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    /// Decides for the queued sends whose slot came free (or that were spilled); a slot a woken send
    /// cannot use (paused, requeued) goes on to the next.
    fn hand_over(&mut self, now: Now) {
        while let Some(Wakeup { ticket, wake }) = self.freed.pop() {
            // Every queued ticket is recorded when it queues, and leaves only here or when cancelled.
            let Some(key) = self.queued.remove(&ticket) else {
                continue;
            };
            let ask = match wake {
                Wake::Go => self.decide_with_slot(&key, now, false),
                Wake::Spill { after, reason } => Ask::Requeue {
                    after,
                    reason: reason.into(),
                },
            };
            self.woken.push(Woken { ticket, ask, key });
        }
    }

    /// A send holding a request slot: go, hold with it, or give it back (paused, requeued).
    fn decide_with_slot(&mut self, key: &HostKey, now: Now, held: bool) -> Ask {
        let ask = match self.gate(key, now) {
            Err(until_ms) => Ask::Unhealthy { until_ms },
            Ok(()) => self.pace(key, now, held, true).unwrap_or(Ask::Go),
        };
        if let Ask::Unhealthy { .. } | Ask::Requeue { .. } = ask {
            self.free(&key.host, Duration::ZERO, now);
        }
        ask
    }

    /// A slot of `host` comes free after `took` (zero: given back unused).
    fn free(&mut self, host: &str, took: Duration, now: Now) {
        let freed = self.slots.release(host, took, now.mono);
        self.freed.extend(freed);
    }

    /// The rate limit and `Retry-After` step (`None`: go; `slot`: the send holds a request slot), read in
    /// place without rules or holds. A send that waited out its hold has its rate slot booked.
    fn pace(&mut self, key: &HostKey, now: Now, held: bool, slot: bool) -> Option<Ask> {
        let r = &self.rates;
        if (r.holds.is_empty() && !r.paced) || (held && r.held_until(key, now.mono).is_none()) {
            return None;
        }
        self.rates.admit(key, now.mono).ask(slot)
    }

    /// `Err(until)` while `key` is paused; a host never paused is read in place.
    fn gate(&mut self, key: &HostKey, now: Now) -> Result<(), i64> {
        let h = &self.health;
        if !h.cfg.enabled || h.hosts.get(key).is_none_or(|w| w.paused_until.is_none()) {
            return Ok(());
        }
        self.paused(key, now)
    }
}

impl Slots {
    /// A send for `host` asks for a slot.
    pub fn take(&mut self, host: &str, now: Duration) -> Take {
        let key = match self.lanes.get_key_value(host.trim_end_matches('.')) {
            Some((key, _)) => key.clone(),
            None => self.new_lane(host, now),
        };
        let lane = &self.lanes[&key];
        if lane.queue.is_empty() && self.may_go(lane, now) {
            self.lanes.get_mut(&key).expect("present").start(now);
            self.in_use += 1;
            return Take::Go;
        }
        let waits = match self.how_to_wait(lane, now) {
            Ok(waits) => waits,
            Err(reason) => return self.spill(&key, now, reason),
        };
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.unready(&key);
        let lane = self.lanes.get_mut(&key).expect("present");
        lane.queue.push_back((ticket, now, waits));
        self.counted(&key, waits, 1);
        self.queued += 1;
        self.reready(&key);
        let release = waits != Waits::Keeping;
        Take::Queued { ticket, release }
    }

    /// Adds (`+1`) or takes away (`-1`) a waiter of `key` from the counts of how it waits.
    fn counted(&mut self, key: &Arc<str>, waits: Waits, sign: i8) {
        let step = |n: usize| n.saturating_add_signed(isize::from(sign));
        let lane = self.lanes.get_mut(key).expect("present");
        if waits != Waits::Keeping {
            lane.released = step(lane.released);
        }
        if waits == Waits::ReleasedFast {
            self.released_fast = step(self.released_fast);
        }
    }

    /// A request to `host` has ended after `took`: its slot goes to whoever should have it next.
    pub fn release(&mut self, host: &str, took: Duration, now: Duration) -> Vec<Wakeup> {
        let Some((key, _)) = self.lanes.get_key_value(host.trim_end_matches('.')) else {
            return Vec::new();
        };
        let key = key.clone();
        self.unready(&key);
        let max = self.limits.max_in_flight_per_host;
        let lane = self.lanes.get_mut(&key).expect("present");
        lane.in_flight = lane.in_flight.saturating_sub(1);
        lane.window_done = lane.window_done.saturating_add(1);
        lane.window = lane.window.saturating_add(1).min(max);
        lane.answered = true;
        lane.last_done = now;
        lane.last_active = now;
        lane.latency = 0.8 * lane.latency + 0.2 * took.as_secs_f64();
        lane.close_window(now);
        self.in_use = self.in_use.saturating_sub(1);
        self.reready(&key);
        self.forget_if_idle(&key, now);
        self.fill(now)
    }

    /// Requests `lane` may have in flight now.
    fn cap(&self, lane: &Lane) -> usize {
        lane.window.min(self.limits.max_in_flight_per_host)
    }

    /// Whether `lane` may take a free slot.
    fn may_go(&self, lane: &Lane, now: Duration) -> bool {
        let global = self.limits.max_in_flight;
        lane.in_flight < self.cap(lane)
            && self.in_use < global
            && (self.in_use < global - self.reserve || (lane.answered && !lane.slow(now)))
    }

    /// Hands free slots to queued sends, the lane with the fewest in flight first (slow lanes skipped
    /// once only the reserve is left).
    fn fill(&mut self, now: Duration) -> Vec<Wakeup> {
        let mut wakes = Vec::new();
        while self.in_use < self.limits.max_in_flight {
            let mut ready = self.ready.iter().map(|(_, _, key)| key);
            let Some(key) = ready.find(|k| self.may_go(&self.lanes[*k], now)).cloned() else {
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
            let wake = Wake::Go;
            wakes.push(Wakeup { ticket, wake });
        }
        wakes
    }

    /// Takes `key` out of the index of lanes ready for a slot (its head and in-flight count change).
    fn unready(&mut self, key: &Arc<str>) {
        let lane = &self.lanes[key];
        if let Some((ticket, _, _)) = lane.queue.front() {
            self.ready.remove(&(lane.in_flight, *ticket, key.clone()));
        }
    }

    /// Puts `key` back in the index if it has a queue and room under its cap.
    fn reready(&mut self, key: &Arc<str>) {
        let lane = &self.lanes[key];
        match lane.queue.front() {
            Some((ticket, _, _)) if lane.in_flight < self.cap(lane) => {
                self.ready.insert((lane.in_flight, *ticket, key.clone()));
            }
            _ => {}
        }
    }

    /// Drops a lane with nothing in flight, queued, spilled ahead or measured lately.
    fn forget_if_idle(&mut self, key: &Arc<str>, now: Duration) {
        let lane = &self.lanes[key];
        let quiet = now.saturating_sub(lane.last_active) >= QUIET_AFTER && lane.horizon <= now;
        if quiet && lane.in_flight == 0 && lane.queue.is_empty() && lane.episode.is_none() {
            self.lanes.remove(key);
        }
    }

    /// How a send that cannot go now waits in `lane`; `Err`: it is spilled, and why. A slow lane's sends,
    /// and those of a lane not yet answered at its window, wait without their admission slot up to the
    /// lane's bound; other lanes' up to the bound of them all, then keeping it. Only a slow lane spills.
    fn how_to_wait(&self, lane: &Lane, now: Duration) -> Result<Waits, SpillReason> {
        let room = lane.released < self.limits.max_queued_per_host;
        let slow = lane.slow(now);
        match () {
            () if slow && self.draining => Err(SpillReason::Stopping),
            () if slow && !room => Err(SpillReason::QueueFull),
            () if slow => Ok(Waits::ReleasedSlow),
            () if !lane.answered && lane.in_flight >= self.cap(lane) && room => {
                Ok(Waits::ReleasedSlow)
            }
            () if self.released_fast < self.max_released => Ok(Waits::ReleasedFast),
            () => Ok(Waits::Keeping),
        }
    }
}

impl Lane {
    /// A request of this lane begins.
    fn start(&mut self, now: Duration) {
        if self.in_flight == 0 {
            // Idle until now: nothing was owed, so nothing is overdue.
            self.last_done = now;
        }
        self.in_flight += 1;
        self.last_active = now;
    }

    /// Nothing finished for a second with requests in flight, or requests lately over a second on average
    /// (a host never answered is suspect after a quarter second: most answer well within it).
    fn slow(&self, now: Duration) -> bool {
        let overdue = SLOW_LATENCY / if self.answered { 1 } else { 4 };
        self.in_flight > 0
            && (now.saturating_sub(self.last_done) > overdue
                || self.latency > SLOW_LATENCY.as_secs_f64())
    }

    /// Re-estimates the host's absorption rate once a window has passed, smoothed so one quiet half
    /// second does not forget what the host was absorbing.
    fn close_window(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.window_start);
        if elapsed < RATE_WINDOW {
            return;
        }
        if self.window_done > 0 || self.in_flight > 0 {
            let rate = f64::from(self.window_done) / elapsed.as_secs_f64();
            self.rate = Some(self.rate.map_or(rate, |r| (r + rate) / 2.0));
        }
        self.window_start = now;
        self.window_done = 0;
    }
}

impl HostHealth {
    /// Records a response; pauses the host when it crosses the threshold.
    pub fn record(&mut self, key: &HostKey, status: u16, now_ms: i64) -> Option<Transition> {
        if !self.cfg.enabled || !self.cfg.codes.contains(&status) {
            return None;
        }
        let bucket = now_ms.div_euclid(self.bucket_ms);
        let w = self.hosts.entry(key.clone()).or_insert_with(Window::new);
        w.advance(bucket);
        if bucket > w.head - BUCKETS as i64 {
            w.counts[bucket.rem_euclid(BUCKETS as i64) as usize] += 1;
            w.total += 1;
        }
        let count = w.total.saturating_add(w.remote);
        if w.paused_until.is_some() || count <= u64::from(self.cfg.threshold) {
            return None;
        }
        let until_ms = now_ms + pause_ms(&self.cfg);
        w.paused_until = Some(until_ms);
        Some(Transition::Paused { until_ms, count })
    }
}

impl Window {
    /// Moves the window to `bucket`, clearing (and taking off the total) the buckets it slid past.
    fn advance(&mut self, bucket: i64) {
        let steps = (bucket - self.head).clamp(0, BUCKETS as i64);
        for i in 1..=steps {
            let at = (self.head + i).rem_euclid(BUCKETS as i64) as usize;
            self.total -= u64::from(std::mem::take(&mut self.counts[at]));
        }
        self.head = self.head.max(bucket);
    }
}

impl Rates {
    /// The host answered `Retry-After: after`: hold its sends for this workspace until then (capped).
    /// Returns when the hold ends if it was set or lengthened.
    pub fn hold(&mut self, key: &HostKey, now: Duration, after: Duration) -> Option<Duration> {
        let until = now + after.min(self.cap);
        if self.holds.len() > self.sweep_at {
            self.sweep(now);
        }
        let kept = match self.holds.get(key) {
            Some(held) => *held >= until,
            None => self.holds.len() >= MAX_HOLDS,
        };
        if after.is_zero() || kept {
            return None;
        }
        self.holds.insert(key.clone(), until);
        Some(until)
    }
}

#[cfg(test)]
#[path = "lane_tests.rs"]
mod tests;
