//! How a send that cannot have a slot now waits in its lane's queue: without its consumer admission slot
//! (a slow lane's, up to its bound; other lanes', up to `4 × max_in_flight` in all), keeping it, or not at
//! all (spilled). Pure: time is an argument.

use std::time::Duration;

use super::slots::{Lane, Slots};
use super::spill::SpillReason;

/// What a waiter that keeps its admission slot should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Keep waiting as it is (or it has just been woken: its wake is on its way).
    Wait,
    /// Give the admission slot back and wait on.
    Release,
    Spill {
        after: Duration,
        reason: SpillReason,
    },
}

/// How a queued send waits, and so what it is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Waits {
    /// Keeping its admission slot.
    Keeping,
    /// Without it, counted against its lane's bound (queued while its lane was slow or not yet answered).
    ReleasedSlow,
    /// Without it, counted in `Slots::released_fast`.
    ReleasedFast,
}

impl Slots {
    /// How a send that cannot go now waits in `lane`; `Err`: it is spilled, and why. A slow lane's sends, and
    /// those of a lane not yet answered waiting for its own window, wait without their admission slot up
    /// to the lane's bound; other lanes' sends up to the bound of them all, then keeping their slot. Only
    /// a slow lane spills.
    pub(super) fn how_to_wait(&self, lane: &Lane, now: Duration) -> Result<Waits, SpillReason> {
        let room = lane.released < self.limits.max_queued_per_host;
        if self.draining && lane.slow(now) {
            return Err(SpillReason::Stopping);
        }
        if lane.slow(now) {
            return if room {
                Ok(Waits::ReleasedSlow)
            } else {
                Err(SpillReason::QueueFull)
            };
        }
        if !lane.answered && lane.in_flight >= self.cap(lane) && room {
            return Ok(Waits::ReleasedSlow);
        }
        if self.released_fast < self.max_released {
            return Ok(Waits::ReleasedFast);
        }
        Ok(Waits::Keeping)
    }

    /// A waiter keeping its admission slot asks again whether it may give it back.
    pub fn settle(&mut self, host: &str, ticket: u64, now: Duration) -> Settle {
        let Some((key, lane)) = self.lanes.get_key_value(host.trim_end_matches('.')) else {
            return Settle::Wait;
        };
        let Some(at) = lane.queue.iter().position(|(t, _, _)| *t == ticket) else {
            return Settle::Wait;
        };
        if lane.queue[at].2 != Waits::Keeping {
            return Settle::Wait;
        }
        let key = key.clone();
        let waits = match self.how_to_wait(lane, now) {
            Ok(Waits::Keeping) => return Settle::Wait,
            Ok(waits) => waits,
            Err(reason) => {
                self.remove_at(&key, at);
                return Settle::Spill {
                    after: self.spill_after(&key, now),
                    reason,
                };
            }
        };
        self.lanes.get_mut(&key).expect("present").queue[at].2 = waits;
        self.counted(&key, waits, 1);
        Settle::Release
    }
}
