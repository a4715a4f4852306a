//! How a send that cannot have a slot now waits in its lane's queue: without its consumer admission slot
//! (a slow lane's, up to its bound; other lanes', up to `4 × max_in_flight` in all), keeping it, or not at
//! all (spilled). Pure: time is an argument.

use std::time::Duration;

use super::slots::Slots;
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
