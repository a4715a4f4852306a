//! The consumer's admission slots: how many records may be under way at once as the handler's futures
//! (kilobytes each) rather than as plain records. A record waiting for something that is not its own work —
//! its host's queue, a rate limit — gives its slot back meanwhile, so waiting for one host never keeps other
//! hosts' records from starting.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A record's admission slot, held while its work is under way.
pub struct Admission {
    slots: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// Waits for a slot.
    pub async fn acquire(slots: Arc<Semaphore>) -> Self {
        let mut a = Self {
            slots,
            permit: None,
        };
        a.reacquire().await;
        a
    }

    /// Gives the slot back while the record waits.
    pub fn release(&mut self) {
        self.permit = None;
    }

    /// Takes a slot again once the wait is over (a no-op if it holds one).
    pub async fn reacquire(&mut self) {
        if self.permit.is_none() {
            // Closed never: the semaphore lives as long as the consumer's tasks.
            self.permit = self.slots.clone().acquire_owned().await.ok();
        }
    }

    /// Runs `wait` without holding the slot.
    pub async fn outside<F: std::future::Future>(&mut self, wait: F) -> F::Output {
        self.release();
        let out = wait.await;
        self.reacquire().await;
        out
    }
}
