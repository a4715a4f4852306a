//! Broker reachability and consumer lag, sampled on a timer by a client of its own.
//!
//! Lag is measured the way `kafka-consumer-groups --describe` does it — the log end offset asked of the
//! broker minus the group's committed offset — rather than from librdkafka's statistics, whose high
//! watermark only moves with fetches and so freezes exactly when a partition is paused for backpressure.
//! The probe runs on a plain thread that is never joined: a request stuck until its timeout cannot delay
//! shutdown.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::client::reader_config;
use super::TopicPartition;
use crate::config::{Config, KafkaConfig};
use crate::telemetry::{Health, KafkaGauges};

/// What the broker says about one partition the group owns here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    pub tp: TopicPartition,
    /// The group's committed position, if it ever committed one.
    pub committed: Option<i64>,
    /// The log start offset: where a group without a commit begins (`auto.offset.reset = earliest`).
    pub low: Option<i64>,
    /// The log end offset.
    pub high: i64,
}

impl PartitionOffsets {
    /// Records not yet durably handled: from the committed position (or the log start) to the log end.
    pub fn lag(&self) -> Option<i64> {
        let from = self.committed.or(self.low)?;
        Some((self.high - from).max(0))
    }
}

/// A standalone client (it never joins the group) that asks the broker for the group's offsets.
pub struct Probe {
    client: BaseConsumer,
    /// Every topic the process reads or writes: one missing is reported, never waited on in silence.
    required: Vec<String>,
    timeout: Duration,
}

impl Probe {
    pub fn new(
        kafka: &KafkaConfig,
        group_id: &str,
        required: Vec<String>,
        timeout: Duration,
    ) -> KafkaResult<Self> {
        let mut c = reader_config(kafka);
        c.set("group.id", group_id);
        Ok(Self {
            client: c.create()?,
            required,
            timeout,
        })
    }

    /// The required topics the cluster lacks, or `None` when no broker answered within the timeout.
    pub fn missing_topics(&self) -> Option<Vec<String>> {
        // Serve the client's event queue (errors, logs): nothing else polls this client, and during a long
        // outage its events would pile up.
        let _ = self.client.poll(Duration::ZERO);
        super::topics::missing_topics(&self.client, &self.required, self.timeout).ok()
    }

    /// Committed, start and end offsets of `partitions`: two or three batched requests, whatever the count.
    pub fn offsets(&self, partitions: &[TopicPartition]) -> KafkaResult<Vec<PartitionOffsets>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let committed = self
            .client
            .committed_offsets(list(partitions, Offset::Invalid), self.timeout)?;
        // For offsets-for-times, the "end" and "beginning" offsets stand for the LATEST and EARLIEST queries.
        let high = self
            .client
            .offsets_for_times(list(partitions, Offset::End), self.timeout)?;
        let lookup = |tpl: &TopicPartitionList, tp: &TopicPartition| {
            tpl.find_partition(&tp.topic, tp.partition)
                .and_then(|e| e.offset().to_raw())
                .filter(|o| *o >= 0)
        };
        let uncommitted: Vec<TopicPartition> = partitions
            .iter()
            .filter(|tp| lookup(&committed, tp).is_none())
            .cloned()
            .collect();
        let low = if uncommitted.is_empty() {
            TopicPartitionList::new()
        } else {
            self.client
                .offsets_for_times(list(&uncommitted, Offset::Beginning), self.timeout)?
        };
        Ok(partitions
            .iter()
            .filter_map(|tp| {
                Some(PartitionOffsets {
                    tp: tp.clone(),
                    committed: lookup(&committed, tp),
                    low: lookup(&low, tp),
                    high: lookup(&high, tp)?,
                })
            })
            .collect())
    }
}

fn list(partitions: &[TopicPartition], offset: Offset) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    for tp in partitions {
        let _ = tpl.add_partition_offset(&tp.topic, tp.partition, offset);
    }
    tpl
}

/// What a process reports through its probe.
pub struct Report {
    pub health: Health,
    pub gauges: KafkaGauges,
    /// The partitions whose lag and committed offset are shown (those the process owns now).
    pub owned: Arc<dyn Fn() -> Vec<TopicPartition> + Send + Sync>,
}

/// Probes `group_id`'s offsets every `telemetry.probe_interval` until `stop`: sets the broker-reachable and
/// topics-present parts of the health, and the lag and committed-offset gauges of the owned partitions
/// (series of partitions no longer owned go away). `required` are the topics the process reads or writes.
pub fn start(
    config: &Config,
    group_id: &str,
    required: Vec<String>,
    report: Report,
    stop: CancellationToken,
) -> KafkaResult<()> {
    let t = &config.telemetry;
    let probe = Probe::new(&config.kafka, group_id, required.clone(), t.probe_timeout())?;
    let interval = t.probe_interval;
    let Report {
        health,
        gauges,
        owned,
    } = report;
    std::thread::Builder::new()
        .name("hookrelay-probe".into())
        .spawn(move || {
            let mut shown: HashSet<TopicPartition> = HashSet::new();
            let mut missing_before: Vec<String> = Vec::new();
            while !stop.is_cancelled() {
                let missing = probe.missing_topics();
                let reachable = missing.is_some();
                health.set_broker_reachable(reachable);
                gauges.reachable.set(i64::from(reachable));
                if let Some(missing) = missing {
                    gauges.show_missing(&required, &missing);
                    if missing != missing_before {
                        if missing.is_empty() {
                            tracing::info!("every required topic exists again");
                        } else {
                            tracing::error!(missing = %missing.join(", "), "required Kafka topics are missing: nothing is read from them, and writes to them fail after librdkafka's topic.metadata.propagation.max.ms (30 s) and are dead-lettered (see hookrelay_topic_missing and /readyz)");
                        }
                    }
                    health.set_missing_topics(missing.clone());
                    missing_before = missing;
                }
                if reachable {
                    match probe.offsets(&owned()) {
                        Ok(offsets) => shown = gauges.show(&offsets, &shown),
                        Err(e) => tracing::debug!(error = %e, "consumer lag probe failed"),
                    }
                } else {
                    tracing::warn!("no Kafka broker answered within the probe timeout");
                }
                sleep_unless_stopped(&stop, interval);
            }
        })
        .map_err(|e| {
            tracing::error!(error = %e, "cannot start the probe thread");
            rdkafka::error::KafkaError::Canceled
        })?;
    Ok(())
}

fn sleep_unless_stopped(stop: &CancellationToken, total: Duration) {
    let step = Duration::from_millis(100);
    let mut left = total;
    while !left.is_zero() && !stop.is_cancelled() {
        let nap = left.min(step);
        std::thread::sleep(nap);
        left -= nap;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(committed: Option<i64>, low: Option<i64>, high: i64) -> PartitionOffsets {
        PartitionOffsets {
            tp: TopicPartition::new("t", 0),
            committed,
            low,
            high,
        }
    }

    #[test]
    fn lag_counts_from_the_committed_position_to_the_log_end() {
        assert_eq!(offsets(Some(40), Some(0), 100).lag(), Some(60));
        assert_eq!(offsets(Some(100), Some(0), 100).lag(), Some(0));
    }

    #[test]
    fn a_group_without_a_commit_lags_from_the_log_start() {
        assert_eq!(offsets(None, Some(25), 100).lag(), Some(75));
    }

    #[test]
    fn lag_is_unknown_without_a_commit_or_a_log_start_and_never_negative() {
        assert_eq!(offsets(None, None, 100).lag(), None);
        // A commit can be seen before the end offset that covers it.
        assert_eq!(offsets(Some(120), None, 100).lag(), Some(0));
    }
}
