//! Per-host concurrency limits, so one slow or hanging host cannot take the slots healthy hosts need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Hosts above this many are swept of idle entries, keeping memory flat however many hosts appear.
const SWEEP_ABOVE: usize = 4096;

pub struct HostLimits {
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl HostLimits {
    pub fn new(per_host: usize) -> Self {
        Self {
            per_host,
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a slot for `host`; the slot is given back when the permit is dropped.
    pub async fn acquire(&self, host: &str) -> OwnedSemaphorePermit {
        let sem = {
            let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            if hosts.len() > SWEEP_ABOVE {
                // Only this map holds an idle host's semaphore, and all its permits are free.
                hosts.retain(|_, s| {
                    Arc::strong_count(s) > 1 || s.available_permits() < self.per_host
                });
            }
            hosts
                .entry(host.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
                .clone()
        };
        sem.acquire_owned()
            .await
            .expect("host semaphores are never closed")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_host_at_its_limit_does_not_block_another() {
        let limits = HostLimits::new(2);
        let _a1 = limits.acquire("slow.example").await;
        let _a2 = limits.acquire("slow.example").await;
        let third = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            limits.acquire("slow.example"),
        )
        .await;
        assert!(third.is_err(), "a third slot for the same host waits");
        let other = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            limits.acquire("fast.example"),
        )
        .await;
        assert!(other.is_ok(), "another host is not blocked");
    }
}
