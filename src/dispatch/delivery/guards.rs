//! The slower ways of waiting in a lane: a send queued keeping its admission slot (the dispatcher's own
//! capacity is what it waits for), a queued send given up, a held send's place among the waiting.

use std::time::Duration;

use super::{Admission, Delivery, Queued};
use crate::dispatch::lane::{Ask, Settle};

/// How often a send waiting with its admission slot asks whether its host has turned slow.
const SETTLE_EVERY: Duration = Duration::from_millis(200);

impl Delivery {
    /// A send that waits keeping its admission slot asks again now and then, and gives the slot back once
    /// it may. `None`: its answer was lost (the dispatcher is going away).
    pub(super) async fn wait_keeping_admission(
        &self,
        queued: &mut Queued<'_>,
        admission: &mut Admission,
    ) -> Option<Ask> {
        loop {
            match tokio::time::timeout(SETTLE_EVERY, &mut queued.rx).await {
                Ok(ask) => return ask.ok(),
                Err(_) => {
                    let now = self.clock.now();
                    let settle = self.lock().lanes.settle(queued.host, queued.ticket, now);
                    match settle {
                        Settle::Wait => {}
                        Settle::Release => {
                            admission.release();
                            return (&mut queued.rx).await.ok();
                        }
                        Settle::Spill { after, reason } => {
                            self.lock().waiting.remove(&queued.ticket);
                            let reason = reason.into();
                            return Some(Ask::Requeue { after, reason });
                        }
                    }
                }
            }
        }
    }

    /// A queued send's task was dropped: it leaves the queue, or gives back what it was woken with.
    pub(super) fn left_queue(&self, queued: &mut Queued<'_>) {
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.waiting.remove(&queued.ticket);
        if !inner.lanes.cancel(queued.host, queued.ticket, now) {
            // Woken under the lock before this drop: what it was handed goes back.
            if let Ok(ask) = queued.rx.try_recv() {
                inner.lanes.unused(queued.host, ask, now);
            }
        }
        inner.woken(now);
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
