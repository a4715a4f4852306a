//! What the consumer thread, the pipeline tasks and the rebalance callback share: offset tracking, paused
//! partitions, parked retries; and the rebalance callback itself, which lets revoked partitions finish
//! their work (within the grace) and commits their positions before letting them go.

// A revocation waits for in-flight work against a deadline.
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::budget::MemoryBudget;
use super::finished_ahead;
use super::offsets::{Commit, OffsetTracker, Skip, Ticket};
use super::parking::Parking;
use crate::kafka::TopicPartition;
use crate::telemetry::{DispatchMetrics, Health};

#[derive(Default)]
pub struct State {
    pub tracker: OffsetTracker,
    /// Partitions this thread paused, for backpressure or once enough retry records are parked (librdkafka
    /// forgets pauses on revocation; so do we).
    pub paused: HashSet<TopicPartition>,
    pub parked: Parking,
    /// Records given up at shutdown (their outcome could not be made durable): uncommitted, redone by the
    /// next owner, and no longer worth waiting for.
    pub abandoned: HashMap<TopicPartition, usize>,
    /// Bytes of the records of each partition not finished yet (with `max_pending_bytes_per_partition`).
    pub pending_bytes: HashMap<TopicPartition, usize>,
    /// What every unfinished record costs against `dispatch.memory_budget`. While it is used up records are
    /// taken slowly (the gauges show every partition as paused meanwhile, which in effect they nearly are).
    pub budget: MemoryBudget,
}

impl State {
    /// A record of the current assignment is done with: its bytes no longer count.
    fn release_bytes(&mut self, ticket: &Ticket, (bytes, cost): (usize, usize)) {
        // Held memory is the process's, whichever partition it came from.
        self.budget.release(cost);
        if self.tracker.is_current(ticket) {
            if let Some(b) = self.pending_bytes.get_mut(&ticket.tp) {
                *b = b.saturating_sub(bytes);
            }
        }
    }

    /// Records of `tp` being worked on now (parked ones wait for time, abandoned ones for nothing, and
    /// finished ones behind a parked one only for their commit).
    pub(super) fn in_flight(&self, tp: &TopicPartition) -> usize {
        let idle = self.parked.len(tp) + self.abandoned.get(tp).copied().unwrap_or(0);
        self.tracker.unfinished(tp).saturating_sub(idle)
    }

    pub(super) fn total_in_flight(&self) -> usize {
        let idle = self.parked.total() + self.abandoned.values().sum::<usize>();
        self.tracker.total_unfinished().saturating_sub(idle)
    }
}

/// What the consumer thread, the pipeline tasks and the rebalance callback share.
pub struct Shared {
    pub(super) state: Mutex<State>,
    pub(super) finished: Condvar,
    pub(super) stopping: AtomicBool,
    pub(super) rebalance_grace: Duration,
    pub(super) metrics: DispatchMetrics,
    pub(super) health: Health,
    /// Records handed to the runtime and not done: each also costs
    /// [`STARTED_SEND_COST`](super::budget::STARTED_SEND_COST) against the budget,
    /// started or not. A record waiting for an admission slot may start at any moment (whenever a send
    /// moves to its host's queue and gives its slot back), and the consumer thread cannot see it start; so
    /// the budget grows only where records are taken, where it is checked. An atomic, so that finishing a
    /// send does not take the state's lock twice.
    pub(super) spawned: AtomicUsize,
    /// The send topic, whose paused partitions are shown apart (a tier partition pausing while its
    /// parked retries wait is normal).
    sends_topic: String,
    /// Currents events not yet acknowledged, when any are written: an offset is committed only once the
    /// events written before it are.
    acks: Option<Arc<crate::dispatch::publish::Acks>>,
}

impl Shared {
    pub fn new(
        rebalance_grace: Duration,
        metrics: DispatchMetrics,
        health: Health,
        sends_topic: &str,
        acks: Option<Arc<crate::dispatch::publish::Acks>>,
    ) -> Self {
        Self {
            acks,
            sends_topic: sends_topic.to_string(),
            state: Mutex::new(State::default()),
            finished: Condvar::new(),
            stopping: AtomicBool::new(false),
            spawned: AtomicUsize::new(0),
            rebalance_grace,
            metrics,
            health,
        }
    }

    /// Records handed to the pipeline and not done, which count against the budget too.
    pub(super) fn handed_over(&self) -> usize {
        self.spawned.load(Ordering::Relaxed)
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not stop offsets being tracked; the state stays consistent per operation.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The process stops: a revocation no longer waits for in-flight work (the drain does, within the
    /// shutdown grace), and one waiting now stops waiting.
    pub fn stop(&self) {
        // Under the lock, so that a revocation between its check and its wait cannot miss the wake-up.
        let state = self.lock();
        self.stopping.store(true, Ordering::Relaxed);
        drop(state);
        self.finished.notify_all();
    }

    /// Called by a pipeline task once the record's outcome is durable.
    pub fn finish(&self, ticket: &Ticket, bytes: (usize, usize)) {
        let mut state = self.lock();
        state.release_bytes(ticket, bytes);
        state.tracker.finish(ticket);
        drop(state);
        self.finished.notify_all();
    }

    /// Called by a pipeline task whose outcome could not be made durable (shutdown, a fatal producer error).
    pub fn abandon(&self, ticket: &Ticket, bytes: (usize, usize)) {
        let mut state = self.lock();
        state.release_bytes(ticket, bytes);
        // A ticket of an earlier assignment no longer counts among the partition's pending records.
        if state.tracker.is_current(ticket) {
            *state.abandoned.entry(ticket.tp.clone()).or_default() += 1;
        }
        drop(state);
        self.finished.notify_all();
    }

    /// Partitions assigned here now.
    pub fn assigned(&self) -> Vec<TopicPartition> {
        self.lock().tracker.assigned().cloned().collect()
    }

    pub(super) fn update_gauges(&self, state: &State) {
        let assigned = state.tracker.assigned().count();
        self.metrics.assigned_partitions.set(assigned as i64);
        let paused = if state.budget.is_over() {
            assigned
        } else {
            state.paused.len()
        };
        self.metrics.paused_partitions.set(paused as i64);
        let sends = |tp: &&TopicPartition| *tp.topic == *self.sends_topic;
        let paused_sends = if state.budget.is_over() {
            state.tracker.assigned().filter(sends).count()
        } else {
            state.paused.iter().filter(sends).count()
        };
        self.metrics
            .isolation
            .paused_send_partitions
            .set(paused_sends as i64);
        let used = state.budget.used(self.handed_over());
        self.metrics.isolation.held_bytes.set(used as i64);
        self.health.set_ready(assigned > 0);
    }
}

pub struct DispatchContext {
    pub shared: Arc<Shared>,
}

impl ClientContext for DispatchContext {}

impl ConsumerContext for DispatchContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let revoked: Vec<TopicPartition> = tpl
            .elements()
            .iter()
            .map(|e| TopicPartition::new(e.topic(), e.partition()))
            .collect();
        let shared = &self.shared;
        let mut state = shared.lock();
        // Give in-flight work on the revoked partitions a chance to finish, so the next owner redoes little.
        // Not once the process stops: a signal that comes meanwhile ends the wait.
        if !shared.stopping.load(Ordering::Relaxed) {
            let deadline = Instant::now() + shared.rebalance_grace;
            while !shared.stopping.load(Ordering::Relaxed)
                && revoked.iter().any(|tp| state.in_flight(tp) > 0)
            {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = shared
                    .finished
                    .wait_timeout(state, left)
                    .map(|(s, _)| s)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
        }
        let mut positions = Vec::new();
        let mut unfinished = 0;
        for tp in &revoked {
            unfinished += state.tracker.unfinished(tp);
            let dropped = state.parked.remove(tp);
            shared.metrics.parked_records.sub(dropped.len() as i64);
            let cost: usize = dropped.iter().map(|p| p.record.cost()).sum();
            state.budget.release(cost);
            if let Some(pos) = state.tracker.revoke(tp) {
                positions.push((tp.clone(), pos));
            }
            state.paused.remove(tp);
            state.abandoned.remove(tp);
            state.pending_bytes.remove(tp);
        }
        shared.update_gauges(&state);
        drop(state);
        tracing::info!(partitions = revoked.len(), unfinished, "partitions revoked");
        if !consumer.assignment_lost() {
            commit_positions(consumer, shared, &positions);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let finished = finished_by_earlier_owners(consumer, tpl);
            let skipped: i64 = finished
                .values()
                .flat_map(|skip| skip.ranges.iter().map(|(s, e)| e - s + 1))
                .sum();
            let mut state = self.shared.lock();
            for e in tpl.elements() {
                let tp = TopicPartition::new(e.topic(), e.partition());
                let skip = finished.get(&tp).cloned().unwrap_or_default();
                state.tracker.assign_skipping(tp, skip);
            }
            self.shared.update_gauges(&state);
            drop(state);
            // Per topic, what this dispatcher now owns: a member owning only idle topics (the send topic
            // drained, the long tiers) is idle however many partitions it has.
            let owned = consumer
                .assignment()
                .map(|a| per_topic(&a))
                .unwrap_or_default();
            tracing::info!(
                partitions = tpl.count(),
                finished_ahead = skipped,
                %owned,
                "partitions assigned"
            );
        }
    }
}

/// `topic=count` for each topic of `tpl`, by name.
fn per_topic(tpl: &TopicPartitionList) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for e in tpl.elements() {
        *counts.entry(e.topic().to_string()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(t, n)| format!("{t}={n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The offsets beyond each assigned partition's committed position that its earlier owner finished, from
/// the commit's metadata (see [`finished_ahead`]). Without an answer, none: they are redone.
fn finished_by_earlier_owners(
    consumer: &BaseConsumer<DispatchContext>,
    assigned: &TopicPartitionList,
) -> HashMap<TopicPartition, Skip> {
    let mut finished = HashMap::new();
    let committed = match consumer.committed_offsets(assigned.clone(), READ_COMMITTED_WITHIN) {
        Ok(committed) => committed,
        Err(e) => {
            tracing::warn!(error = %e, "could not read the committed positions' metadata; records finished beyond them are redone");
            return finished;
        }
    };
    for c in crate::kafka::record::committed_metadata(&committed) {
        if c.metadata.is_empty() || c.offset < 0 || c.error {
            continue;
        }
        let done = finished_ahead::decode(c.offset, &c.metadata);
        if !done.is_empty() {
            let skip = Skip {
                from: c.offset,
                ranges: done,
            };
            finished.insert(TopicPartition::new(&c.topic, c.partition), skip);
        }
    }
    finished
}

/// How long an assignment waits for its committed positions' metadata (one round trip to the coordinator).
const READ_COMMITTED_WITHIN: Duration = Duration::from_secs(5);

/// Commits synchronously so that a failure is seen: the positions are then handed out again next tick
/// (with nothing else moving they would otherwise never be sent again). One round trip per interval.
/// How long a commit waits for the Currents events written before it to be acknowledged.
const EVENTS_SETTLE: Duration = Duration::from_secs(5);

pub(super) fn commit_positions(
    consumer: &BaseConsumer<DispatchContext>,
    shared: &Shared,
    positions: &[(TopicPartition, Commit)],
) {
    if positions.is_empty() {
        return;
    }
    // The sends of these offsets have finished, so their Currents events were handed over before now.
    let settled = shared
        .acks
        .as_ref()
        .is_none_or(|acks| acks.wait_settled(EVENTS_SETTLE));
    let committed = if settled {
        consumer.commit(&to_tpl(positions), CommitMode::Sync)
    } else {
        Err(rdkafka::error::KafkaError::Canceled)
    };
    match committed {
        Ok(()) => shared.metrics.commits.with_label_values(&["ok"]).inc(),
        Err(e) => {
            shared.metrics.commits.with_label_values(&["error"]).inc();
            if settled {
                tracing::warn!(error = %e, partitions = positions.len(), "offset commit failed; retrying next interval");
            } else {
                tracing::warn!(
                    partitions = positions.len(),
                    "Currents events not yet acknowledged; the commit waits for the next interval"
                );
            }
            let mut state = shared.lock();
            for (tp, commit) in positions {
                state.tracker.commit_failed(tp, commit);
            }
        }
    }
}

fn to_tpl(positions: &[(TopicPartition, Commit)]) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for (tp, commit) in positions {
        let mut e = tpl.add_partition(&tp.topic, tp.partition);
        let _ = e.set_offset(Offset::Offset(commit.offset));
        e.set_metadata(&commit.metadata);
    }
    tpl
}

pub(super) fn single(tp: &TopicPartition) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.topic, tp.partition);
    tpl
}
