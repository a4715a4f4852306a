//! The dispatcher's consumer thread: polls the send topic and the retry tiers, hands records to a
//! [`Handler`] (the pipeline), parks retries that are not ready, applies backpressure, commits the positions
//! the [`OffsetTracker`] proves safe, and settles revoked partitions before letting them go.
//!
//! It is a plain thread around a `BaseConsumer` so that the rebalance callback may block while revoked
//! partitions finish their work: that callback runs inside `poll`, on this thread, and nothing async waits
//! on it.

// The consumer thread measures the commit interval, the rebalance grace and the shutdown drain.
#![allow(clippy::disallowed_methods)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;

pub mod budget;
pub mod finished_ahead;
mod handoff;
pub(crate) mod offsets;
pub(crate) mod parking;
mod shared;

pub use super::delivery::Admission;
use handoff::{spawn, Work};
pub use handoff::{Handler, Kind};

use shared::{commit_positions, single};
pub use shared::{DispatchContext, Shared};

use crate::clock::now_ms;
use crate::events::retry_record::DUE_HEADER;
use crate::kafka::{Record, TopicPartition};
pub use offsets::{Commit, OffsetTracker, Ticket};
use parking::{ready_at, Parked};

pub struct LoopSettings {
    pub max_pending_per_partition: usize,
    /// Bytes of unfinished records one partition may hold before it is paused, whatever their number.
    pub max_pending_bytes_per_partition: usize,
    /// Records whose handling may be under way at once. The others wait as plain records (a few hundred
    /// bytes) rather than as the handler's futures (kilobytes each), so pending records stay cheap.
    pub max_started: usize,
    /// Retry tier topics and their delays: their records wait (parked) until ready.
    pub tier_delays: HashMap<String, Duration>,
    pub commit_interval: Duration,
    pub shutdown_grace: Duration,
    /// Bytes all unfinished records may cost before records are taken slowly: see [`budget`].
    pub memory_budget: usize,
}

/// How often a record is taken while the memory budget is used up (at most 20 a second past the budget).
pub const SLOW_POLL: Duration = Duration::from_millis(50);

/// The part of the shutdown grace in-flight sends may use: all but the last fifth (at most 5 s), which is kept
/// for the final commit, leaving the group and flushing the producer.
pub fn drain_budget(grace: Duration) -> Duration {
    grace - (grace / 5).min(Duration::from_secs(5))
}

/// Runs until `shutdown`, then drains for up to [`drain_budget`], commits, and closes the consumer. Returns
/// when the whole shutdown grace ends (`None` if the loop ended without a shutdown).
pub fn poll_loop(
    consumer: BaseConsumer<DispatchContext>,
    handler: Arc<dyn Handler>,
    runtime: tokio::runtime::Handle,
    settings: LoopSettings,
    shutdown: CancellationToken,
) -> Option<Instant> {
    let shared = consumer.context().shared.clone();
    shared.lock().budget = budget::MemoryBudget::new(settings.memory_budget);
    let admission = Arc::new(tokio::sync::Semaphore::new(settings.max_started.max(1)));
    let run = Loop {
        consumer: &consumer,
        shared: &shared,
        handler: &handler,
        runtime: &runtime,
        settings: &settings,
        admission: &admission,
    };
    let mut last_commit = Instant::now();
    let mut ticks: u64 = 0;
    let mut drain: Option<(Instant, Instant)> = None; // (drain until, grace ends)
    loop {
        if shutdown.is_cancelled() && drain.is_none() {
            drain = Some(run.begin_drain());
        }
        if let Some((until, _)) = drain {
            if run.drained_or_out_of_time(until) {
                break;
            }
        }
        match run.poll() {
            // While draining, new records are neither started nor committed: the next owner gets them.
            Some(Ok(msg)) if drain.is_none() => run.take(msg),
            Some(Ok(_)) | None => {}
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
        }
        run.release_ready_retries();
        resume_drained(&consumer, &shared, &settings);
        if last_commit.elapsed() >= settings.commit_interval {
            ticks += 1;
            // Now and then every position is sent again, in case a partition-level error went unseen.
            run.commit(ticks % 10 == 0);
            last_commit = Instant::now();
        }
    }
    run.commit(false);
    // Dropping the consumer leaves the group; its revoke callback commits once more, without waiting.
    drop(consumer);
    drain.map(|(_, grace_ends)| grace_ends)
}

/// What one turn of the consumer loop works with.
struct Loop<'a> {
    consumer: &'a BaseConsumer<DispatchContext>,
    shared: &'a Arc<Shared>,
    handler: &'a Arc<dyn Handler>,
    runtime: &'a tokio::runtime::Handle,
    settings: &'a LoopSettings,
    admission: &'a Arc<tokio::sync::Semaphore>,
}

impl Loop<'_> {
    /// Stops taking records and pauses everything; returns when the drain and the whole grace end.
    fn begin_drain(&self) -> (Instant, Instant) {
        // The grace counts from the signal: the loop may have been inside a rebalance when it came.
        let now = crate::shutdown::signalled_at().unwrap_or_else(Instant::now);
        self.shared.stop();
        if let Ok(assignment) = self.consumer.assignment() {
            let _ = self.consumer.pause(&assignment);
        }
        tracing::info!(
            pending = self.shared.lock().total_in_flight(),
            "stopping: draining in-flight sends"
        );
        let grace = self.settings.shutdown_grace;
        (now + drain_budget(grace), now + grace)
    }

    /// Whether the drain is over: nothing in flight, or out of time (parked retries are not waited for:
    /// they stay uncommitted and are read again).
    fn drained_or_out_of_time(&self, until: Instant) -> bool {
        let pending = self.shared.lock().total_in_flight();
        let over = pending == 0 || Instant::now() >= until;
        if over && pending > 0 {
            tracing::warn!(pending, "shutdown grace expired; unfinished sends stay uncommitted and will be redone by the next owner");
        }
        over
    }

    /// Registers a consumed record and starts its work, or parks it if it is a retry not ready yet (pausing
    /// its partition once [`super::parking::READ_AHEAD`] records are parked).
    fn take(&self, msg: rdkafka::message::BorrowedMessage<'_>) {
        let (shared, consumer) = (self.shared, self.consumer);
        let tp = TopicPartition::new(msg.topic(), msg.partition());
        let record = Record::from_message(&msg, tp.clone());
        drop(msg);
        let cost = record.cost();
        let ticket = {
            let mut state = shared.lock();
            let Some(ticket) = state.tracker.start(&tp, record.offset) else {
                return;
            };
            let bytes = state.pending_bytes.entry(tp.clone()).or_default();
            *bytes = bytes.saturating_add(record.payload.len());
            let too_many_bytes = *bytes >= self.settings.max_pending_bytes_per_partition;
            if (state.tracker.pending(&tp) >= self.settings.max_pending_per_partition
                || too_many_bytes)
                && state.paused.insert(tp.clone())
            {
                let _ = consumer.pause(&single(&tp));
                shared.update_gauges(&state);
            }
            let crossing = state.budget.hold(cost, shared.handed_over());
            self.budget_crossed(&mut state, crossing);
            ticket
        };
        let Some(&delay) = self.settings.tier_delays.get(&*record.tp.topic) else {
            return spawn(
                (self.runtime, self.admission),
                self.handler,
                shared,
                Work::Fresh(record, ticket),
            );
        };
        let now = now_ms();
        let due = header_i64(&record, DUE_HEADER).unwrap_or(now);
        let written = record.timestamp_ms.unwrap_or(now);
        let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        let tp = record.tp.clone();
        let parked = Parked {
            ready_at_ms: ready_at(written, delay_ms, due),
            record,
            ticket,
        };
        let mut state = shared.lock();
        match state.parked.park_or_pass(parked, now) {
            Some(p) => {
                drop(state);
                spawn(
                    (self.runtime, self.admission),
                    self.handler,
                    shared,
                    Work::Retry(p.record, p.ticket),
                );
            }
            None => {
                shared.metrics.parked_records.inc();
                if state.parked.is_full(&tp) && state.paused.insert(tp.clone()) {
                    let _ = consumer.pause(&single(&tp));
                    shared.update_gauges(&state);
                }
            }
        }
    }

    /// Takes the next record, or an event. At the memory budget records are taken slowly instead of not at
    /// all: pausing would make librdkafka drop its prefetch and fetch it again on resume, and the held bytes
    /// would swing between the budget and the resume mark. Taken at most one per [`SLOW_POLL`],
    /// records pass the budget by a trickle at worst, and rebalances and other events are still served.
    fn poll(&self) -> Option<rdkafka::error::KafkaResult<rdkafka::message::BorrowedMessage<'_>>> {
        if self.shared.lock().budget.is_over() {
            std::thread::sleep(SLOW_POLL);
            return self.consumer.poll(Duration::ZERO);
        }
        self.consumer.poll(Duration::from_millis(50))
    }

    /// The budget was reached: [`Loop::poll`] then takes records slowly until [`resume_drained`] sees room.
    fn budget_crossed(&self, state: &mut shared::State, crossing: Option<budget::Crossing>) {
        let Some(budget::Crossing::Reached { used }) = crossing else {
            return;
        };
        self.shared.metrics.isolation.budget_reached.inc();
        // Debug, not info: under a steady backlog the budget is met every few seconds, and
        // `hookrelay_memory_budget_reached_total` and `hookrelay_held_bytes` show it without a log line each.
        tracing::debug!(
            held_bytes = used,
            budget = self.settings.memory_budget,
            "memory budget reached: one record taken per 50 ms until a sixteenth of it is free"
        );
        self.shared.update_gauges(state);
    }

    /// Hands on parked retries that have become ready (they are held already; handed over, each counts as a
    /// send being handled, which may reach the budget).
    fn release_ready_retries(&self) {
        let ready = self.shared.lock().parked.take_ready(now_ms());
        let any = !ready.is_empty();
        for p in ready {
            self.shared.metrics.parked_records.dec();
            spawn(
                (self.runtime, self.admission),
                self.handler,
                self.shared,
                Work::Retry(p.record, p.ticket),
            );
        }
        if any {
            let mut state = self.shared.lock();
            let crossing = state.budget.check(self.shared.handed_over());
            self.budget_crossed(&mut state, crossing);
        }
    }

    fn commit(&self, everything: bool) {
        let positions = {
            let mut state = self.shared.lock();
            let oldest = state.parked.oldest_written_ms();
            let age = oldest.map_or(0, |at| now_ms().saturating_sub(at).max(0));
            self.shared
                .metrics
                .isolation
                .waiting("parked")
                .set(age as f64 / 1000.0);
            if everything {
                state.tracker.recommit_all();
            }
            state.tracker.take_commits()
        };
        commit_positions(self.consumer, self.shared, &positions);
    }
}

fn resume_drained(
    consumer: &BaseConsumer<DispatchContext>,
    shared: &Shared,
    settings: &LoopSettings,
) {
    let (resume_below, resume_below_bytes) = (
        (settings.max_pending_per_partition / 2).max(1),
        (settings.max_pending_bytes_per_partition / 2).max(1),
    );
    let mut state = shared.lock();
    if let Some(budget::Crossing::Room { used }) = state.budget.recheck(shared.handed_over()) {
        tracing::debug!(
            held_bytes = used,
            "memory budget has room again: records are taken at full speed"
        );
        shared.update_gauges(&state);
    }
    let used = state.budget.used(shared.handed_over());
    if state.paused.is_empty() {
        shared.metrics.isolation.held_bytes.set(used as i64);
        return;
    }
    let ready: Vec<TopicPartition> = state
        .paused
        .iter()
        .filter(|tp| {
            state.tracker.pending(tp) < resume_below
                && state.pending_bytes.get(*tp).copied().unwrap_or(0) < resume_below_bytes
                && state.parked.has_room(tp)
        })
        .cloned()
        .collect();
    for tp in ready {
        let _ = consumer.resume(&single(&tp));
        state.paused.remove(&tp);
    }
    shared.update_gauges(&state);
}

fn header_i64(record: &Record, name: &str) -> Option<i64> {
    record.header(name).and_then(parse_i64)
}

/// A decimal integer header value; anything else (not UTF-8, not a number, out of range) is `None`.
pub fn parse_i64(value: &[u8]) -> Option<i64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draining_leaves_a_fifth_of_the_grace_at_most_five_seconds_for_closing() {
        assert_eq!(
            drain_budget(Duration::from_secs(10)),
            Duration::from_secs(8)
        );
        assert_eq!(
            drain_budget(Duration::from_secs(60)),
            Duration::from_secs(55)
        );
        assert_eq!(drain_budget(Duration::ZERO), Duration::ZERO);
    }
}
