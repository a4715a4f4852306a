//! Alert emails in flight: each is sent in the background, retried with backoff until it goes through,
//! then recorded as `sent` in the alerts topic.
//!
//! At most one email per workspace per window, also across rebalances: a sender belongs to the partition
//! of its workspace, and when that partition is revoked the sender stops — at once if it is waiting to
//! retry, after its current attempt (and the record of it) otherwise, for which the revocation waits. The
//! next owner then finds either `sent` or a `pending` decision nobody is working on. Before every attempt
//! the sender also reads the alert log: if another instance recorded the email as sent, it stops.

// A revocation waits for a sender against a deadline.
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::producer::FutureProducer;
use tokio_util::sync::CancellationToken;

use super::email::Rendered;
use super::mailer::Mailer;
use super::state::{AlertLog, AlertRecord, AlertStatus};
use crate::clock::now_ms;
use crate::kafka::reader::write_json;
use crate::telemetry::AggregateMetrics;

struct Slot {
    partition: i32,
    /// Which registration this is: a stopped sender whose partition came back is replaced, and the old
    /// task must not then touch its successor's slot.
    generation: u64,
    stop: CancellationToken,
    /// In an SMTP attempt, or recording one that succeeded.
    busy: bool,
}

/// The senders running in this process, by workspace.
pub(crate) struct Senders {
    slots: Mutex<HashMap<String, Slot>>,
    idle: Condvar,
    generations: std::sync::atomic::AtomicU64,
    /// How many are running, for `/metrics`.
    running: prometheus::IntGauge,
}

impl Senders {
    pub fn new(running: prometheus::IntGauge) -> Self {
        Self {
            slots: Mutex::default(),
            idle: Condvar::new(),
            generations: std::sync::atomic::AtomicU64::new(0),
            running,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn is_sending(&self, workspace: &str) -> bool {
        self.lock().contains_key(workspace)
    }

    /// Registers a sender; `None` if one already runs for the workspace (a stopped one is replaced).
    fn register(&self, workspace: &str, partition: i32) -> Option<(CancellationToken, u64)> {
        let mut slots = self.lock();
        if slots.get(workspace).is_some_and(|s| !s.stop.is_cancelled()) {
            return None;
        }
        let stop = CancellationToken::new();
        let generation = self
            .generations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let slot = Slot {
            partition,
            generation,
            stop: stop.clone(),
            busy: false,
        };
        if slots.insert(workspace.to_string(), slot).is_none() {
            self.running.inc();
        }
        Some((stop, generation))
    }

    /// Marks the start (`true`) or end of an attempt; starting fails once the sender was stopped or replaced.
    fn set_busy(&self, workspace: &str, generation: u64, busy: bool) -> bool {
        let mut slots = self.lock();
        let Some(slot) = slots
            .get_mut(workspace)
            .filter(|s| s.generation == generation)
        else {
            return false;
        };
        if busy && slot.stop.is_cancelled() {
            return false;
        }
        slot.busy = busy;
        drop(slots);
        self.idle.notify_all();
        true
    }

    fn unregister(&self, workspace: &str, generation: u64) {
        let mut slots = self.lock();
        if slots
            .get(workspace)
            .is_some_and(|s| s.generation == generation)
        {
            slots.remove(workspace);
            self.running.dec();
        }
        drop(slots);
        self.idle.notify_all();
    }

    /// Stops the senders of workspaces in `partitions` and waits up to `grace` for those mid-attempt.
    /// Returns how many were still busy when the grace ran out.
    pub fn stop_partitions(&self, partitions: &HashSet<i32>, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut slots = self.lock();
        for slot in slots.values().filter(|s| partitions.contains(&s.partition)) {
            slot.stop.cancel();
        }
        loop {
            let busy = slots
                .values()
                .filter(|s| partitions.contains(&s.partition) && s.busy)
                .count();
            let left = deadline.saturating_duration_since(Instant::now());
            if busy == 0 || left.is_zero() {
                return busy;
            }
            slots = self
                .idle
                .wait_timeout(slots, left)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

/// Everything a sender needs.
pub(super) struct Job {
    pub record: AlertRecord,
    pub partition: i32,
    pub email: Rendered,
    pub from: String,
    pub alerts_topic: String,
    pub senders: Arc<Senders>,
    pub log: Arc<Mutex<AlertLog>>,
    pub mailer: Arc<Mailer>,
    pub producer: FutureProducer,
    pub metrics: AggregateMetrics,
}

/// Whether the log already holds this decision (or a later one) as sent.
fn already_sent(log: &Mutex<AlertLog>, record: &AlertRecord) -> bool {
    let log = log.lock().unwrap_or_else(|p| p.into_inner());
    log.get(&record.workspace_id)
        .is_some_and(|r| r.status == AlertStatus::Sent && r.decided_at_ms >= record.decided_at_ms)
}

/// Starts a sender for the job's workspace unless one runs already.
pub(super) fn spawn(job: Job) {
    let ws = job.record.workspace_id.clone();
    let Some((stop, generation)) = job.senders.register(&ws, job.partition) else {
        return;
    };
    tokio::spawn(async move {
        run(&job, &stop, generation).await;
        job.senders.unregister(&ws, generation);
    });
}

async fn run(job: &Job, stop: &CancellationToken, generation: u64) {
    let ws = job.record.workspace_id.as_str();
    let mut backoff = Duration::from_secs(1);
    loop {
        if already_sent(&job.log, &job.record) {
            tracing::info!(workspace = ws, "alert already sent by another instance");
            return;
        }
        if !job.senders.set_busy(ws, generation, true) {
            tracing::info!(
                workspace = ws,
                "partition revoked: its new owner sends the alert"
            );
            return;
        }
        match job
            .mailer
            .send(&job.from, &job.record.recipients, &job.email)
            .await
        {
            Ok(to) => {
                job.metrics.alerts_sent.inc();
                tracing::info!(workspace = ws, delivered_to = %to, "alert email sent");
                let sent = AlertRecord {
                    status: AlertStatus::Sent,
                    sent_at_ms: Some(now_ms()),
                    delivered_to: Some(to),
                    ..job.record.clone()
                };
                while let Err(e) =
                    write_json(&job.producer, &job.alerts_topic, &sent.workspace_id, &sent).await
                {
                    tracing::warn!(error = %e, "recording the sent alert failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                job.log
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .apply(sent);
                job.senders.set_busy(ws, generation, false);
                return;
            }
            Err(e) => {
                job.senders.set_busy(ws, generation, false);
                job.metrics.send_errors.inc();
                tracing::warn!(workspace = ws, error = %e, retry_in = ?backoff, "alert email not sent; retrying");
                tokio::select! {
                    _ = stop.cancelled() => {
                        tracing::info!(workspace = ws, "partition revoked: its new owner sends the alert");
                        return;
                    }
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(300));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn senders() -> Senders {
        Senders::new(prometheus::IntGauge::new("g", "g").unwrap())
    }

    #[test]
    fn stopping_a_partition_stops_only_its_senders_and_waits_for_a_busy_one() {
        let s = Arc::new(senders());
        let (a, ga) = s.register("a", 0).unwrap();
        let (b, gb) = s.register("b", 1).unwrap();
        assert!(s.register("a", 0).is_none(), "one sender per workspace");
        assert!(s.set_busy("a", ga, true));
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s2.set_busy("a", ga, false);
        });
        let still_busy = s.stop_partitions(&[0].into(), Duration::from_secs(5));
        t.join().unwrap();
        assert_eq!(still_busy, 0, "waited for the attempt to end");
        assert!(a.is_cancelled() && !b.is_cancelled());
        assert!(
            !s.set_busy("a", ga, true),
            "a stopped sender starts no new attempt"
        );
        assert!(s.set_busy("b", gb, true));
    }

    #[test]
    fn a_stopped_sender_is_replaced_when_its_partition_comes_back_and_leaves_its_successor_alone() {
        let s = senders();
        let (_, old) = s.register("a", 0).unwrap();
        s.stop_partitions(&[0].into(), Duration::ZERO);
        let (_, new) = s.register("a", 0).expect("a stopped sender is replaced");
        assert!(!s.set_busy("a", old, true), "the old task cannot act");
        s.unregister("a", old);
        assert!(s.is_sending("a"), "nor remove its successor");
        assert_eq!(s.running.get(), 1);
        s.unregister("a", new);
        assert_eq!(s.running.get(), 0);
    }

    #[test]
    fn the_wait_is_bounded() {
        let s = senders();
        let (_, g) = s.register("a", 0).unwrap();
        s.set_busy("a", g, true);
        assert_eq!(s.stop_partitions(&[0].into(), Duration::from_millis(20)), 1);
    }
}
