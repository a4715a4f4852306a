//! A group consumer on a thread of its own, handing records to an async loop in batches.
//!
//! An async loop that takes one message per wake-up from a `StreamConsumer` spends its time waiting between
//! messages: the aggregator replayed a day of failure events at about 1 % of its decoder's speed that way.
//! Here a `BaseConsumer` is polled on a dedicated thread that drains whatever librdkafka has fetched into
//! batches, and the loop handles a batch without yielding.
//!
//! Assignments travel in order with the records. The rebalance callback runs on the feeder thread: it asks
//! the owner where each new partition starts ([`Hooks::on_assign`], which may block, e.g. to restore a
//! checkpoint), sends the owner's announcement down the channel, and only then assigns, so no record of a
//! new partition can overtake it. A revocation runs [`Hooks::on_revoke`] first (it may wait, bounded, for
//! work tied to those partitions), and is recorded in [`Changes`] for the loop to see at once.

// The feeder polls against a deadline of its own.
#![allow(clippy::disallowed_methods)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::TopicPartition;

/// Records handed over at once, at most: enough to amortise a wake-up, small enough to keep the loop
/// responsive to its timers.
const BATCH: usize = 2_048;

/// Revocations, handed from the rebalance callback to the loop.
#[derive(Default)]
pub struct Changes {
    pub revoked: Vec<TopicPartition>,
}

impl Changes {
    /// Partitions revoked since the last call.
    pub fn take_revoked(changes: &Mutex<Changes>) -> Vec<TopicPartition> {
        std::mem::take(&mut changes.lock().unwrap_or_else(|p| p.into_inner()).revoked)
    }
}

/// Called with the partition numbers about to be revoked; it may block, up to a bound of its own.
pub type OnRevoke = Box<dyn Fn(&HashSet<i32>) + Send + Sync>;

/// One record, detached from librdkafka's buffers.
#[derive(Debug)]
pub struct Fetched {
    pub partition: i32,
    pub offset: i64,
    pub payload: Option<Vec<u8>>,
}

/// What the loop receives, in order.
#[derive(Debug)]
pub enum Feed<A> {
    /// Partitions were assigned; the owner's announcement, sent before any of their records.
    Assigned(A),
    Records(Vec<Fetched>),
}

/// Called on the feeder thread with newly assigned partitions: what to announce to the loop, and where each
/// partition starts (partitions left out start where the consumer's settings say).
pub type OnAssign<A> = Box<dyn Fn(&[i32]) -> (A, Vec<(i32, Offset)>) + Send + Sync>;

pub struct Hooks<A> {
    pub on_assign: OnAssign<A>,
    pub on_revoke: OnRevoke,
}

struct FeedContext<A> {
    topic: String,
    hooks: Hooks<A>,
    changes: Arc<Mutex<Changes>>,
    tx: mpsc::Sender<Feed<A>>,
}

impl<A: Send + 'static> ClientContext for FeedContext<A> {}

impl<A: Send + 'static> ConsumerContext for FeedContext<A> {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let result = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let (announce, starts) = (self.hooks.on_assign)(&partitions);
                for (p, offset) in starts {
                    if let Err(e) = tpl.set_partition_offset(&self.topic, p, offset) {
                        tracing::warn!(partition = p, error = %e, "cannot set a start offset");
                    }
                }
                // If the loop is gone the process is stopping; assigning anyway keeps librdkafka consistent.
                let _ = self.tx.blocking_send(Feed::Assigned(announce));
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                (self.hooks.on_revoke)(&partitions.iter().copied().collect::<HashSet<i32>>());
                let r = unassign(consumer, tpl, cooperative);
                record_revoked(&self.changes, &self.topic, &partitions);
                r
            }
            other => {
                tracing::error!(error = ?other, "rebalance failed; giving up the assignment");
                let r = unassign(consumer, tpl, cooperative);
                record_revoked(&self.changes, &self.topic, &partitions);
                r
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying a rebalance failed");
        }
    }
}

fn unassign<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tpl: &TopicPartitionList,
    cooperative: bool,
) -> KafkaResult<()> {
    if cooperative {
        consumer.incremental_unassign(tpl)
    } else {
        consumer.unassign()
    }
}

fn record_revoked(changes: &Mutex<Changes>, topic: &str, partitions: &[i32]) {
    let mut c = changes.lock().unwrap_or_else(|p| p.into_inner());
    c.revoked
        .extend(partitions.iter().map(|p| TopicPartition::new(topic, *p)));
}

/// The running feeder: its channel, and the thread to join when stopping.
pub struct Feeder<A> {
    pub rx: mpsc::Receiver<Feed<A>>,
    pub changes: Arc<Mutex<Changes>>,
    stop: CancellationToken,
    thread: Option<JoinHandle<()>>,
}

impl<A: Send + 'static> Feeder<A> {
    /// Subscribes a consumer made from `config` to `topic` and starts polling it on a new thread.
    pub fn start(config: &ClientConfig, topic: &str, hooks: Hooks<A>) -> KafkaResult<Self> {
        // A few batches in the channel keep the thread fetching while the loop counts.
        let (tx, rx) = mpsc::channel(8);
        let changes = Arc::new(Mutex::new(Changes::default()));
        let consumer: BaseConsumer<FeedContext<A>> = config.create_with_context(FeedContext {
            topic: topic.to_string(),
            hooks,
            changes: changes.clone(),
            tx: tx.clone(),
        })?;
        consumer.subscribe(&[topic])?;
        let stop = CancellationToken::new();
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("feeder".into())
            .spawn(move || poll_loop(&consumer, &tx, &stopping))
            .map_err(|e| {
                rdkafka::error::KafkaError::ClientCreation(format!(
                    "starting the feeder thread: {e}"
                ))
            })?;
        Ok(Self {
            rx,
            changes,
            stop,
            thread: Some(thread),
        })
    }

    /// Leaves the group (revoking, so the revoke hook runs) and waits for the thread to end.
    pub async fn stop(mut self) {
        self.stop.cancel();
        // The thread may be blocked handing over a batch: keep draining until it ends.
        let thread = self.thread.take();
        let join = tokio::task::spawn_blocking(move || thread.map(JoinHandle::join));
        tokio::pin!(join);
        loop {
            tokio::select! {
                _ = &mut join => break,
                _ = self.rx.recv() => {}
            }
        }
    }
}

impl<A> Drop for Feeder<A> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn poll_loop<A, C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    tx: &mpsc::Sender<Feed<A>>,
    stop: &CancellationToken,
) {
    while !stop.is_cancelled() {
        let mut batch = Vec::new();
        let mut wait = Duration::from_millis(100);
        while batch.len() < BATCH {
            match consumer.poll(wait) {
                Some(Ok(m)) => batch.push(Fetched {
                    partition: m.partition(),
                    offset: m.offset(),
                    payload: m.payload().map(<[u8]>::to_vec),
                }),
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => break,
            }
            wait = Duration::ZERO;
        }
        if !batch.is_empty() && tx.blocking_send(Feed::Records(batch)).is_err() {
            break;
        }
    }
    // Dropping the consumer closes it: the group is left and the revoke hook runs here, on this thread.
}
