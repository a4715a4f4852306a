//! Reading a topic from outside any group, and writing small JSON records: what the aggregator needs to tail
//! the alerts topic and to know where its replay ends, and what the tools use to read outputs back.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use super::client::reader_config;
use crate::config::KafkaConfig;

/// How many partitions `topic` has, from one metadata request (blocking); an error if it has none.
pub fn partition_count<X: Consumer<C>, C: ConsumerContext>(
    client: &X,
    topic: &str,
) -> anyhow::Result<i32> {
    let md = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading metadata of {topic}"))?;
    let n = md.topics().first().map_or(0, |t| t.partitions().len());
    anyhow::ensure!(n > 0, "topic {topic} does not exist");
    Ok(i32::try_from(n).unwrap_or(i32::MAX))
}

/// A group-less consumer assigned every partition of `topic` from the beginning.
pub async fn assign_all(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = reader_config(kafka).create().context("creating reader")?;
    let topic_owned = topic.to_string();
    let (consumer, partitions) = tokio::task::spawn_blocking(move || {
        let n = partition_count(&consumer, &topic_owned);
        (consumer, n)
    })
    .await?;
    let partitions = partitions?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// A group-less client for metadata and watermark look-ups. Keep it apart from any client that fetches:
/// a look-up queues behind that client's long-polling fetch on the same connection (about half a second
/// each on the embedded broker, which made a 12-partition look-up take 5 s).
pub fn lookup_client(kafka: &KafkaConfig) -> anyhow::Result<BaseConsumer> {
    reader_config(kafka)
        .create()
        .context("creating the look-up client")
}

/// The low and high watermark of every partition of `topic`.
pub async fn watermarks<X: Consumer<C>, C: ConsumerContext + 'static>(
    consumer: &X,
    topic: &str,
) -> anyhow::Result<HashMap<i32, (i64, i64)>> {
    let md = tokio::task::block_in_place(|| {
        consumer.fetch_metadata(Some(topic), Duration::from_secs(10))
    })?;
    let mut out = HashMap::new();
    for p in md
        .topics()
        .first()
        .map(|t| t.partitions())
        .unwrap_or_default()
    {
        let wm = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))
        })?;
        out.insert(p.id(), wm);
    }
    Ok(out)
}

/// Writes `value` as JSON under `key` and waits for the broker's acknowledgement.
pub async fn write_json(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    value: &impl serde::Serialize,
) -> anyhow::Result<()> {
    let payload = serde_json::to_vec(value)?;
    producer
        .send(
            FutureRecord::to(topic)
                .key(key.as_bytes())
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("writing to {topic}: {e}"))?;
    Ok(())
}
