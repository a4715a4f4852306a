//! The aggregator's rebalance callback: it only records what changed, for the main loop to act on (the
//! replay after an assignment is async work that cannot run inside librdkafka's callback).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;

use crate::kafka::TopicPartition;

/// Assignment changes, handed from the rebalance callback to the main loop.
#[derive(Default)]
pub(super) struct Changes {
    pub assigned: Vec<TopicPartition>,
    pub revoked: Vec<TopicPartition>,
}

impl Changes {
    /// Partitions assigned since the last call.
    pub fn take_assigned(changes: &Mutex<Changes>) -> Vec<TopicPartition> {
        std::mem::take(&mut changes.lock().unwrap_or_else(|p| p.into_inner()).assigned)
    }

    /// Partitions revoked since the last call.
    pub fn take_revoked(changes: &Mutex<Changes>) -> Vec<TopicPartition> {
        std::mem::take(&mut changes.lock().unwrap_or_else(|p| p.into_inner()).revoked)
    }
}

pub(super) struct AggContext {
    pub changes: Arc<Mutex<Changes>>,
    pub senders: Arc<super::sender::Senders>,
    /// How long a revocation waits for a sender in the middle of an attempt.
    pub revoke_grace: Duration,
}

impl ClientContext for AggContext {}

impl ConsumerContext for AggContext {
    /// Before revoked partitions go to another instance, their alert senders stop: the new owner must not
    /// find a `pending` alert that this instance is still about to send. This blocks the consumer's poll for
    /// at most `revoke_grace`, which is what the group waits for anyway.
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let partitions: HashSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let wait = || self.senders.stop_partitions(&partitions, self.revoke_grace);
        // Inside the async runtime, let its other tasks (the senders among them) run on other threads.
        let still_busy = match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait)
            }
            _ => wait(),
        };
        if still_busy > 0 {
            tracing::warn!(
                still_busy,
                "alert senders of revoked partitions did not finish within the grace"
            );
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut changes = self.changes.lock().unwrap_or_else(|p| p.into_inner());
        match rebalance {
            Rebalance::Assign(tpl) => changes.assigned.extend(
                tpl.elements()
                    .iter()
                    .map(|e| TopicPartition::new(e.topic(), e.partition())),
            ),
            Rebalance::Revoke(tpl) => changes.revoked.extend(
                tpl.elements()
                    .iter()
                    .map(|e| TopicPartition::new(e.topic(), e.partition())),
            ),
            Rebalance::Error(_) => {}
        }
    }
}
