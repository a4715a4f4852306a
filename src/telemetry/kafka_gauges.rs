//! Gauges about this process's Kafka connection: reachability, and per owned partition the committed
//! offset and the lag behind the log end. Labels are a configured topic name and a partition number, so the
//! series count is bounded by the partitions a process can own.

use std::collections::HashSet;

use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

use crate::kafka::probe::PartitionOffsets;
use crate::kafka::TopicPartition;

#[derive(Clone)]
pub struct KafkaGauges {
    /// 1 while a broker answers the probe, 0 otherwise.
    pub reachable: IntGauge,
    pub lag: IntGaugeVec,
    pub committed: IntGaugeVec,
    /// 1 for each required topic (a configured name) the cluster does not have, 0 for the others.
    pub topic_missing: IntGaugeVec,
}

impl KafkaGauges {
    pub fn register(r: &Registry) -> Self {
        let reachable = IntGauge::new(
            "kafka_reachable",
            "1 while a Kafka broker answers the periodic probe",
        )
        .expect("valid metric");
        let lag = IntGaugeVec::new(
            Opts::new(
                "consumer_lag",
                "Records between the group's committed offset and the log end, per owned partition",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let committed = IntGaugeVec::new(
            Opts::new(
                "committed_offset",
                "The group's committed offset, per owned partition",
            ),
            &["topic", "partition"],
        )
        .expect("valid metric");
        let topic_missing = IntGaugeVec::new(
            Opts::new(
                "topic_missing",
                "1 while a topic this process reads or writes does not exist on the cluster",
            ),
            &["topic"],
        )
        .expect("valid metric");
        for m in [
            Box::new(reachable.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(lag.clone()),
            Box::new(committed.clone()),
            Box::new(topic_missing.clone()),
        ] {
            r.register(m).expect("metric registered once");
        }
        Self {
            reachable,
            lag,
            committed,
            topic_missing,
        }
    }

    /// Sets the missing-topic gauge of every required topic.
    pub fn show_missing(&self, required: &[String], missing: &[String]) {
        for t in required {
            self.topic_missing
                .with_label_values(&[t.as_str()])
                .set(i64::from(missing.contains(t)));
        }
    }

    /// Shows `offsets`, removes the series of partitions in `before` that are no longer there, and returns
    /// the partitions now shown.
    pub fn show(
        &self,
        offsets: &[PartitionOffsets],
        before: &HashSet<TopicPartition>,
    ) -> HashSet<TopicPartition> {
        let mut now = HashSet::new();
        for o in offsets {
            let partition = o.tp.partition.to_string();
            let labels = [&*o.tp.topic, partition.as_str()];
            match o.lag() {
                Some(lag) => self.lag.with_label_values(&labels).set(lag),
                None => {
                    let _ = self.lag.remove_label_values(&labels);
                }
            }
            match o.committed {
                Some(c) => self.committed.with_label_values(&labels).set(c),
                None => {
                    let _ = self.committed.remove_label_values(&labels);
                }
            }
            now.insert(o.tp.clone());
        }
        for gone in before.difference(&now) {
            let partition = gone.partition.to_string();
            let labels = [&*gone.topic, partition.as_str()];
            let _ = self.lag.remove_label_values(&labels);
            let _ = self.committed.remove_label_values(&labels);
        }
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(partition: i32, committed: Option<i64>, high: i64) -> PartitionOffsets {
        PartitionOffsets {
            tp: TopicPartition::new("sends", partition),
            committed,
            low: Some(0),
            high,
        }
    }

    #[test]
    fn partitions_no_longer_owned_lose_their_series() {
        let r = Registry::new();
        let g = KafkaGauges::register(&r);
        let shown = g.show(
            &[offsets(0, Some(5), 9), offsets(1, None, 4)],
            &HashSet::new(),
        );
        assert_eq!(g.lag.with_label_values(&["sends", "0"]).get(), 4);
        assert_eq!(g.lag.with_label_values(&["sends", "1"]).get(), 4);
        assert_eq!(g.committed.with_label_values(&["sends", "0"]).get(), 5);
        g.show(&[offsets(1, Some(4), 4)], &shown);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&r.gather())
            .unwrap();
        assert!(!text.contains("partition=\"0\""), "{text}");
        assert!(
            text.contains("consumer_lag{partition=\"1\",topic=\"sends\"} 0"),
            "{text}"
        );
    }
}
