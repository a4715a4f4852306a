//! The lanes' paths off a send's usual way: asking again after a hold, a queued send given up, a waiter
//! keeping its admission slot, the ticker's spills and episodes, draining at shutdown, a pause ending, and
//! what the gauges show. Pure, like the core ([`super`]) they extend.

use super::{Ask, Episode, HostKey, Lanes, Note, Now, Settle, Snapshot, Transition, Wakeup};

impl Lanes {
    /// A send that held its request slot through a hold ([`Ask::Hold`] with `slot`) asks to go: a pause or
    /// a `Retry-After` that came meanwhile still stops it (the slot is then given back).
    pub fn with_slot(&mut self, key: &HostKey, now: Now) -> Ask {
        let ask = self.decide_with_slot(key, now, true);
        self.hand_over(now);
        ask
    }

    /// A slot handed to a send that will not use it (its task was dropped) goes back without counting as
    /// an answer of the host's.
    pub fn give_back(&mut self, host: &str, now: Now) {
        self.free(host, std::time::Duration::ZERO, now);
        self.hand_over(now);
    }

    /// An answer handed to a send whose task is gone: a request slot in it goes back, and a hold's place
    /// among the waiting is freed.
    pub fn unused(&mut self, host: &str, ask: Ask, now: Now) {
        if let Ask::Hold { slot: true, .. } = ask {
            self.hold_over(host);
        }
        if let Ask::Go | Ask::Hold { slot: true, .. } = ask {
            self.give_back(host, now);
        }
    }

    /// A held send's wait has ended (or it was dropped while waiting): its place among the waiting is free.
    pub fn hold_over(&mut self, host: &str) {
        self.rates.woke(host);
    }

    /// A queued send gave up waiting (its task was dropped). `false` if it had already been woken.
    pub fn cancel(&mut self, host: &str, ticket: u64, now: Now) -> bool {
        let cancelled = self.slots.cancel(host, ticket, now.mono);
        if cancelled {
            self.queued.remove(&ticket);
        }
        cancelled
    }

    /// A waiter keeping its admission slot asks again whether it may give it back.
    pub fn settle(&mut self, host: &str, ticket: u64, now: Now) -> Settle {
        let settle = self.slots.settle(host, ticket, now.mono);
        if let Settle::Spill { .. } = settle {
            self.queued.remove(&ticket);
        }
        settle
    }

    /// Spills what waited too long, notes saturation episodes, hands out slots; a few times a second.
    pub fn tick(&mut self, now: Now) -> Vec<Episode> {
        if self.health.sweep(now.wall_ms) {
            self.note_swept(now);
        }
        let (wakes, episodes) = self.slots.tick(now.mono);
        self.freed.extend(wakes);
        self.hand_over(now);
        episodes
    }

    /// The dispatcher stops: what waits for slow hosts is spilled, and so is what comes for them later.
    pub fn drain(&mut self, now: Now) {
        let wakes: Vec<Wakeup> = self.slots.drain(now.mono);
        self.freed.extend(wakes);
        self.hand_over(now);
    }

    /// What the metrics show of the queues: the `top` saturated hosts by queue.
    pub fn snapshot(&self, now: Now, top: usize) -> Snapshot {
        self.slots.snapshot(now.mono, top)
    }

    /// Requests in flight to `host`.
    pub fn in_flight(&self, host: &str) -> usize {
        self.slots.in_flight(host)
    }

    /// Requests in flight to every host.
    pub fn in_use(&self) -> usize {
        self.slots.in_use()
    }

    /// A paused host's gate: paused still, or the pause over (resumed, or extended if still unhealthy).
    pub(super) fn paused(&mut self, key: &HostKey, now: Now) -> Result<(), i64> {
        let (state, transition) = self.health.check(key, now.wall_ms);
        if let Some(transition) = transition {
            self.note_health(key, transition, now);
        }
        state
    }

    /// A `Retry-After` hold on `key` was set or lengthened until `until` (monotonic).
    pub(super) fn note_hold(&mut self, key: &HostKey, until: std::time::Duration, now: Now) {
        let ahead = i64::try_from(until.saturating_sub(now.mono).as_millis()).unwrap_or(i64::MAX);
        let until_ms = now.wall_ms.saturating_add(ahead);
        self.notes.push(Note::RetryAfterHold {
            key: key.clone(),
            until_ms,
        });
    }

    /// Idle hosts were swept out of the health windows: the paused-hosts gauge is refreshed.
    pub(super) fn note_swept(&mut self, now: Now) {
        let paused = self.health.paused_hosts(now.wall_ms);
        self.notes.push(Note::PausedHosts(paused));
    }

    pub(super) fn note_health(&mut self, key: &HostKey, transition: Transition, now: Now) {
        let paused_hosts = self.health.paused_hosts(now.wall_ms);
        self.notes.push(Note::Health {
            key: key.clone(),
            transition,
            paused_hosts,
        });
    }
}
