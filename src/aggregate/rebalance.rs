//! The aggregator's rebalance callback: it only records what changed, for the main loop to act on (the
//! replay after an assignment is async work that cannot run inside librdkafka's callback).

use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::ClientContext;

use crate::kafka::TopicPartition;

/// Assignment changes, handed from the rebalance callback to the main loop.
#[derive(Default)]
pub(super) struct Changes {
    pub assigned: Vec<TopicPartition>,
    pub revoked: Vec<TopicPartition>,
}

pub(super) struct AggContext {
    pub changes: Arc<Mutex<Changes>>,
}

impl ClientContext for AggContext {}

impl ConsumerContext for AggContext {
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
