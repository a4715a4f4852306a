//! The guards a waiting or sending task holds, so that whatever ends it — an answer, a wake, or the task
//! being dropped — gives back what it had: its request slot, its place in a queue, its place among the held.

use std::time::Duration;

use tokio::sync::oneshot;

use super::Delivery;
use crate::dispatch::lane::{HostKey, Wake};

/// A request slot; dropped without an answer (its task cancelled), it is given back all the same.
pub(super) struct SlotGuard<'a> {
    pub(super) delivery: &'a Delivery,
    pub(super) key: &'a HostKey,
    /// When the slot was taken, to measure how long the host holds its slots.
    pub(super) since: Duration,
    pub(super) answered: bool,
}

impl SlotGuard<'_> {
    /// The lane has taken the slot back itself.
    pub(super) fn forget(mut self) {
        self.answered = true;
    }

    /// Tells the lane what the host said (`status` `None`: no response) and gives the slot back.
    pub(super) fn answer(mut self, status: Option<u16>, retry_after: Option<Duration>) {
        self.answered = true;
        self.delivery
            .answer(self.key, status, retry_after, self.since);
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.delivery.answer(self.key, None, None, self.since);
        }
    }
}

/// A send waiting in its host's queue; dropped early, it leaves the queue or gives back the slot it got.
pub(super) struct Queued<'a> {
    pub(super) delivery: &'a Delivery,
    pub(super) host: &'a str,
    pub(super) ticket: u64,
    pub(super) rx: oneshot::Receiver<Wake>,
    /// Woken (its wake is settled by whoever took it), or still waiting.
    pub(super) woke: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if self.woke {
            return;
        }
        let now = self.delivery.clock.now();
        let mut inner = self.delivery.lock();
        if !inner.lanes.cancel(self.host, self.ticket, now) {
            // Woken under the lock before this drop: a slot that was granted goes back.
            if let Ok(Wake::Go) = self.rx.try_recv() {
                inner.lanes.give_back(self.host, now);
                let wakes = inner.lanes.wakes();
                inner.wake(wakes);
            }
        }
        inner.waiting.remove(&self.ticket);
    }
}

/// A held send's place among the waiting, freed however its wait ends.
pub(super) struct Holding<'a> {
    pub(super) delivery: &'a Delivery,
    pub(super) host: &'a str,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.delivery.lock().lanes.hold_over(self.host);
    }
}
