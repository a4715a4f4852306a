//! A rebalance callback for an async consumer loop (the aggregator's): it records what changed, for the
//! loop to act on — the replay after an assignment is async work that cannot run inside librdkafka's
//! callback — and, before revoked partitions go to another member, runs a caller's hook that may block
//! (bounded) until the work tied to them has stopped.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;

use super::TopicPartition;

/// Assignment changes, handed from the rebalance callback to the main loop.
#[derive(Default)]
pub struct Changes {
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

/// Called with the partition numbers about to be revoked; it may block, up to a bound of its own.
pub type OnRevoke = Box<dyn Fn(&HashSet<i32>) + Send + Sync>;

pub struct RecordingContext {
    pub changes: Arc<Mutex<Changes>>,
    pub on_revoke: OnRevoke,
}

impl ClientContext for RecordingContext {}

impl ConsumerContext for RecordingContext {
    /// Runs the revoke hook before the partitions are given up, so whoever gets them next does not find work
    /// this member is still doing. It blocks the consumer's poll, which the group waits for anyway.
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(tpl) = rebalance else {
            return;
        };
        let partitions: HashSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let wait = || (self.on_revoke)(&partitions);
        // Inside the async runtime, let its other tasks run on other threads meanwhile.
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(wait);
            }
            _ => wait(),
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
