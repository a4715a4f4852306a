//! Producing the originals again: each read from its partition, the replay header put in, delivered.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use super::scan::{read_range, Progress};
use super::REPLAY_HEADER;
use crate::config::Config;
use crate::events::SourceRef;
use crate::kafka::client::producer_config;
use crate::kafka::reader::lookup_client;

/// Each partition's log of the originals: (first offset, end offset), or `None` when it cannot be read.
pub(super) async fn logs_of(
    config: &Config,
    sends: &[SourceRef],
) -> anyhow::Result<BTreeMap<(String, i32), Option<(i64, i64)>>> {
    let lookup = lookup_client(&config.kafka)?;
    let mut logs = BTreeMap::new();
    for s in sends {
        if let std::collections::btree_map::Entry::Vacant(e) =
            logs.entry((s.topic.clone(), s.partition))
        {
            let watermarks = tokio::task::block_in_place(|| {
                lookup.fetch_watermarks(&s.topic, s.partition, Duration::from_secs(10))
            });
            e.insert(watermarks.ok());
        }
    }
    Ok(logs)
}

pub(super) struct Redriven {
    pub produced: u64,
    pub missing: u64,
}

/// Reads each original and produces it again to the send topic. Originals close together are read in one
/// pass; a gap of more than this many offsets is skipped by a new assignment.
const SKIP_ABOVE: i64 = 1_000;
/// Deliveries awaited at once, below librdkafka's queue bound.
const IN_FLIGHT: usize = 10_000;

pub(super) async fn redrive(
    config: &Config,
    sends: &[SourceRef],
    replay_id: &str,
) -> anyhow::Result<Redriven> {
    let producer: FutureProducer = producer_config(&config.kafka)
        .create()
        .context("creating the producer")?;
    let reader = super::scan::reader(config)?;
    let mut by_partition: BTreeMap<(String, i32), Vec<i64>> = BTreeMap::new();
    for s in sends {
        by_partition
            .entry((s.topic.clone(), s.partition))
            .or_default()
            .push(s.offset);
    }
    let mut out = Redriven {
        produced: 0,
        missing: 0,
    };
    let mut progress = Progress::new(sends.len() as i64);
    let mut pending = Vec::new();
    let result = produce_all(
        (&producer, &reader, config),
        by_partition,
        replay_id,
        (&mut out, &mut pending, &mut progress),
    )
    .await;
    // What was handed to the producer is delivered (or known to have failed) before any error is
    // reported, so the count printed is what the send topic holds.
    let acked = acknowledged(&mut pending, &config.topics.sends).await;
    match (result, acked) {
        (Ok(()), Ok(n)) => {
            out.produced += n;
            progress.done();
            Ok(out)
        }
        (result, acked) => {
            let produced = out.produced + acked.as_ref().map_or(0, |n| *n);
            let error = match (result, acked) {
                (Err(e), _) | (_, Err(e)) => e,
                (Ok(()), Ok(_)) => unreachable!("handled above"),
            };
            Err(error.context(format!(
                "the replay stopped after producing at least {produced} sends; a new run would produce those again"
            )))
        }
    }
}

type Pending = Vec<rdkafka::producer::DeliveryFuture>;

async fn produce_all(
    (producer, reader, config): (&FutureProducer, &BaseConsumer, &Config),
    by_partition: BTreeMap<(String, i32), Vec<i64>>,
    replay_id: &str,
    (out, pending, progress): (&mut Redriven, &mut Pending, &mut Progress),
) -> anyhow::Result<()> {
    let topic_out = &config.topics.sends;
    for ((topic, partition), mut offsets) in by_partition {
        offsets.sort_unstable();
        for run in offsets.chunk_by(|a, b| b - a <= SKIP_ABOVE) {
            let (first, last) = (run[0], run[run.len() - 1]);
            let mut originals = Vec::new();
            read_range(reader, &topic, partition, first, last + 1, |msg| {
                if run.binary_search(&msg.offset()).is_ok() {
                    originals.push(redriven_record(msg, replay_id));
                }
                Ok(())
            })?;
            out.missing += (run.len() - originals.len()) as u64;
            for (key, payload, headers) in originals {
                let record = FutureRecord::to(topic_out)
                    .payload(&payload)
                    .headers(headers);
                let record = match &key {
                    Some(k) => record.key(k),
                    None => record,
                };
                let delivery = producer
                    .send_result(record)
                    .map_err(|(e, _)| anyhow::anyhow!("producing to {topic_out}: {e}"))?;
                pending.push(delivery);
                progress.read(0);
                if pending.len() >= IN_FLIGHT {
                    out.produced += acknowledged(pending, topic_out).await?;
                }
            }
        }
    }
    Ok(())
}

/// Waits for every delivery in `pending`; how many there were.
async fn acknowledged(
    pending: &mut Vec<rdkafka::producer::DeliveryFuture>,
    topic: &str,
) -> anyhow::Result<u64> {
    let n = pending.len() as u64;
    for delivery in pending.drain(..) {
        delivery
            .await
            .context("the producer went away")?
            .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    }
    Ok(n)
}

/// The original's key, value and headers, with the replay header in place of any earlier one.
fn redriven_record(
    msg: &rdkafka::message::BorrowedMessage<'_>,
    replay_id: &str,
) -> (Option<Vec<u8>>, Vec<u8>, OwnedHeaders) {
    let record = crate::kafka::Record::from_message(
        msg,
        crate::kafka::TopicPartition::new(msg.topic(), msg.partition()),
    );
    let mut headers = OwnedHeaders::new();
    for (name, value) in record.headers.iter().filter(|(n, _)| n != REPLAY_HEADER) {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    headers = headers.insert(Header {
        key: REPLAY_HEADER,
        value: Some(replay_id),
    });
    (record.key, record.payload, headers)
}
