//! Writing checkpoints: every `checkpoint_interval`, each caught-up partition's changed workspaces go to the
//! state topic, then — once all of them are acknowledged — the partition's marker. The write runs in the
//! background; the next starts only when it is done, so markers never overtake each other.
//!
//! A revoked partition's checkpoint must not land after its next owner's: the revoke hook marks the
//! partition and waits (bounded) for a write in progress, which then leaves that partition's marker out.
//! What it already wrote is a checkpoint cut short, which a restore handles exactly (see
//! [`checkpoint`](super::checkpoint)).

// Checkpoints run on wall-clock intervals, and the revoke hook waits against a deadline.
#![allow(clippy::disallowed_methods)]

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::ledger::PartitionRecords;
use super::service::Aggregator;
use crate::clock::now_ms;
use crate::telemetry::AggregateMetrics;

/// What a clean stop spends on its last checkpoint, the one in progress included.
const LAST_CHECKPOINT: Duration = Duration::from_secs(15);

/// Partitions being written, and partitions revoked meanwhile; shared with the revoke hook.
#[derive(Default)]
pub(super) struct Gate {
    state: Mutex<(HashSet<i32>, HashSet<i32>)>,
    idle: Condvar,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, (HashSet<i32>, HashSet<i32>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `partitions` as being written until the returned guard drops: when the write ends, or when it
    /// is given up (the last checkpoint's deadline), so that a revocation never waits for a write that is
    /// no longer going on.
    fn begin(&self, partitions: impl IntoIterator<Item = i32>) -> Writing<'_> {
        self.lock().0.extend(partitions);
        Writing(self)
    }

    fn still_owned(&self, partition: i32) -> bool {
        !self.lock().1.contains(&partition)
    }

    fn end(&self) {
        self.lock().0.clear();
        self.idle.notify_all();
    }

    /// Partitions (re)assigned: their checkpoints may be written again.
    pub fn assigned(&self, partitions: impl IntoIterator<Item = i32>) {
        let mut s = self.lock();
        for p in partitions {
            s.1.remove(&p);
        }
    }

    /// Called by the revoke hook: no marker of `partitions` is written from now on, and a write in progress
    /// is waited for, up to `grace`. Returns whether it finished.
    pub fn revoke(&self, partitions: &HashSet<i32>, grace: Duration) -> bool {
        let deadline = Instant::now() + grace;
        let mut s = self.lock();
        s.1.extend(partitions.iter().copied());
        while s.0.iter().any(|p| partitions.contains(p)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .idle
                .wait_timeout(s, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// A checkpoint write under way; see [`Gate::begin`].
struct Writing<'a>(&'a Gate);

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// The partitions whose checkpoint failed, to be written again next time.
pub(super) type Unwritten = Vec<(i32, Vec<String>)>;

impl Aggregator {
    /// Starts a checkpoint when one is due and the last one is done.
    pub(super) fn checkpoint_if_due(&mut self) {
        if let Some(h) = &self.checkpoint {
            if !h.is_finished() {
                return;
            }
        }
        if self.last_checkpoint.elapsed() < self.config.aggregate.checkpoint_interval {
            return;
        }
        self.last_checkpoint = Instant::now();
        self.collect_checkpoint();
        let snapshot = self.snapshot();
        if snapshot.is_empty() {
            return;
        }
        self.checkpoint = Some(tokio::spawn(self.writer(snapshot)));
    }

    /// Takes the result of a finished write: what failed is marked changed again.
    fn collect_checkpoint(&mut self) {
        let Some(h) = self.checkpoint.take_if(|h| h.is_finished()) else {
            return;
        };
        if let Some(Ok(unwritten)) = futures::FutureExt::now_or_never(h) {
            self.mark_unwritten(unwritten);
        }
    }

    fn mark_unwritten(&mut self, unwritten: Unwritten) {
        for (p, names) in unwritten {
            if self.owned.contains(&p) {
                self.ledger.dirty.entry(p).or_default().extend(names);
            }
        }
    }

    /// On a clean stop: waits for the write in progress, then writes a last checkpoint (bounded), so that
    /// the next owner replays almost nothing.
    pub(super) async fn final_checkpoint(&mut self) {
        let deadline = tokio::time::Instant::now() + LAST_CHECKPOINT;
        if let Some(mut h) = self.checkpoint.take() {
            match tokio::time::timeout_at(deadline, &mut h).await {
                Ok(Ok(unwritten)) => self.mark_unwritten(unwritten),
                Ok(Err(_)) => {}
                Err(_) => {
                    h.abort();
                    tracing::warn!("a checkpoint was still being written after 15 s (is Kafka reachable?); the next owner replays more");
                    return;
                }
            }
        }
        let snapshot = self.snapshot();
        if tokio::time::timeout_at(deadline, self.writer(snapshot))
            .await
            .is_err()
        {
            tracing::warn!(
                "the last checkpoint did not finish in 15 s (is Kafka reachable?); the next owner replays more"
            );
        }
    }

    /// The write of `snapshot` to the state topic, to run in the background or to wait for.
    fn writer(
        &self,
        snapshot: Vec<PartitionRecords>,
    ) -> impl std::future::Future<Output = Unwritten> + Send + 'static {
        write(
            self.producer.clone(),
            self.config.topics.aggregate_state.clone(),
            self.state_partitions,
            snapshot,
            self.gate.clone(),
            self.metrics.clone(),
        )
    }

    /// The changed workspaces of every caught-up partition, with a marker each, as of the events read so
    /// far (a partition still replaying is left for a later checkpoint).
    fn snapshot(&mut self) -> Vec<PartitionRecords> {
        let now = now_ms();
        let ready: Vec<(i32, i64)> = self
            .owned
            .iter()
            .filter(|p| !self.replay_until.contains_key(p) && !self.skips.contains_key(p))
            .filter_map(|p| self.position.get(p).map(|o| (*p, *o)))
            .collect();
        ready
            .into_iter()
            .map(|(p, offset)| self.ledger.checkpoint(p, offset, now))
            .collect()
    }
}

/// Writes the records, then the marker of every partition whose records were all acknowledged and which
/// is still owned. Returns the partitions to write again.
async fn write(
    producer: FutureProducer,
    topic: String,
    state_partitions: i32,
    snapshot: Vec<PartitionRecords>,
    gate: Arc<Gate>,
    metrics: AggregateMetrics,
) -> Unwritten {
    let writing = gate.begin(snapshot.iter().map(|s| s.partition));
    let n = state_partitions.max(1);
    let (producer, topic) = (&producer, topic.as_str());
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut results: Vec<(i32, bool)> = Vec::new();
    for s in &snapshot {
        for (k, v) in &s.records {
            if in_flight.len() >= 4_096 {
                results.extend(in_flight.next().await);
            }
            let p = s.partition;
            in_flight.push(async move { (p, put(producer, topic, p % n, k, v.as_deref()).await) });
        }
    }
    while let Some(r) = in_flight.next().await {
        results.push(r);
    }
    drop(in_flight);
    let failed: HashSet<i32> = results
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(p, _)| *p)
        .collect();
    let mut written = results.len();
    let mut unwritten = Vec::new();
    for s in snapshot {
        if !gate.still_owned(s.partition) {
            continue; // revoked meanwhile: its next owner checkpoints it
        }
        let ok = !failed.contains(&s.partition)
            && put(
                producer,
                topic,
                s.partition % n,
                &s.marker.0,
                Some(&s.marker.1),
            )
            .await;
        written += usize::from(ok);
        if !ok {
            unwritten.push((s.partition, s.workspaces));
        }
    }
    drop(writing);
    metrics.checkpoint_records.set(written as i64);
    if unwritten.is_empty() {
        metrics.checkpoints.inc();
    } else {
        metrics.checkpoint_failures.inc();
        tracing::warn!(
            partitions = unwritten.len(),
            "checkpoint not fully written; those partitions are written again next time"
        );
    }
    unwritten
}

async fn put(
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
    key: &str,
    value: Option<&[u8]>,
) -> bool {
    let record = FutureRecord::<str, [u8]>::to(topic)
        .partition(partition)
        .key(key);
    let record = match value {
        Some(v) => record.payload(v),
        None => record,
    };
    match producer.send(record, Duration::from_secs(30)).await {
        Ok(_) => true,
        Err((e, _)) => {
            tracing::debug!(error = %e, key, "checkpoint record not written");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_waits_for_a_write_only_while_it_goes_on() {
        let gate = Gate::default();
        let revoked: HashSet<i32> = [1].into();
        let writing = gate.begin([1, 2]);
        assert!(
            !gate.revoke(&revoked, Duration::from_millis(20)),
            "waits for the write"
        );
        drop(writing);
        assert!(
            gate.revoke(&revoked, Duration::ZERO),
            "a write given up (its future dropped) is not waited for"
        );
        assert!(!gate.still_owned(1) && gate.still_owned(2));
    }
}
