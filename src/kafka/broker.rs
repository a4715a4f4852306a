//! `hookrelay broker`: librdkafka's mock cluster, reachable over TCP by any Kafka client.
//!
//! For development and tests only. It keeps about 5 MiB (or 100,000 message sets) per partition and silently
//! drops older data, has no Admin API, no compaction and no `offsets_for_times` (ARCHITECTURE.md, "The
//! embedded broker").

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::config::TopicsConfig;

/// Not `Send`: keep it on the thread that made it, and drop it after the clients that use it.
pub struct EmbeddedBroker {
    cluster: MockCluster<'static, DefaultProducerContext>,
}

#[derive(Debug, thiserror::Error)]
#[error("embedded broker: {0}")]
pub struct BrokerError(#[from] rdkafka::error::KafkaError);

impl EmbeddedBroker {
    pub fn start(brokers: i32) -> Result<Self, BrokerError> {
        Ok(Self {
            cluster: MockCluster::new(brokers)?,
        })
    }

    pub fn bootstrap_servers(&self) -> String {
        self.cluster.bootstrap_servers()
    }

    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<(), BrokerError> {
        Ok(self.cluster.create_topic(name, partitions, 1)?)
    }

    /// Creates every topic the configuration names, retry tiers included: the send topic with
    /// `send_partitions` partitions, every other with `partitions`. The one way topics are made, for
    /// `hookrelay broker`, the tools and the tests.
    pub fn create_topics(
        &self,
        topics: &TopicsConfig,
        send_partitions: i32,
        partitions: i32,
    ) -> Result<Vec<String>, BrokerError> {
        let names = topics.all();
        for name in &names {
            let n = if *name == topics.sends {
                send_partitions
            } else {
                partitions
            };
            self.create_topic(name, n)?;
        }
        Ok(names)
    }

    /// The underlying mock cluster, for fault injection in tests.
    pub fn mock(&self) -> &MockCluster<'static, DefaultProducerContext> {
        &self.cluster
    }
}
