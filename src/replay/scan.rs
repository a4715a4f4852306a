//! Reading the failure topic over a time range, and the originals' partitions: the replay's reads.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};

use super::select::{Found, Selection};
use crate::config::Config;
use crate::events::FailureEvent;
use crate::kafka::client::scan_reader_config;
use crate::kafka::reader::{lookup_client, watermarks};

/// Kafka timestamps of failure events from several dispatchers are not strictly ordered; the time look-up
/// starts this much earlier, and the events' own times decide.
const CLOCK_SLACK_MS: i64 = 5 * 60 * 1000;

/// Reads the failure topic over the selected time range.
pub(super) async fn scan(config: &Config, selection: &Selection) -> anyhow::Result<Found> {
    let topic = config.topics.failures.as_str();
    let lookup = lookup_client(&config.kafka)?;
    let mut ranges: Vec<(i32, i64, i64)> = watermarks(&lookup, topic)
        .await
        .with_context(|| format!("reading the offsets of {topic}"))?
        .into_iter()
        .map(|(p, (low, high))| (p, low, high))
        .collect();
    anyhow::ensure!(!ranges.is_empty(), "topic {topic} does not exist");
    ranges.sort_unstable();
    let reader = reader(config)?;
    let mut progress = Progress::new(ranges.iter().map(|(_, l, h)| h - l).sum());
    let mut found = Found::default();
    for (p, low, high) in ranges {
        if high <= low {
            continue;
        }
        let since = selection.since_ms.saturating_sub(CLOCK_SLACK_MS);
        let from = start_offset(&lookup, &reader, topic, p, since, (low, high))?;
        progress.skipped(from - low);
        read_range(&reader, topic, p, from, high, |msg| {
            match msg.payload().map(FailureEvent::decode) {
                Some(Ok(event)) => found.add(selection, &event),
                _ => {
                    found.events_read += 1;
                    found.unreadable += 1;
                }
            }
            progress.read(found.sends.len());
            Ok(())
        })?;
    }
    progress.done();
    Ok(found)
}

/// A reader for the replay's scans: no group, and quick to fetch again.
pub(super) fn reader(config: &Config) -> anyhow::Result<BaseConsumer> {
    scan_reader_config(&config.kafka)
        .create()
        .context("creating the reader")
}

/// Where to start reading a partition for events from `since`: the offset for that time where the broker
/// can look it up (a real cluster), checked against the record before it; else the partition's start (the
/// embedded broker has no such look-up, and a wrong answer must never skip events).
fn start_offset(
    lookup: &BaseConsumer,
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    since: i64,
    (low, high): (i64, i64),
) -> anyhow::Result<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(since))?;
    let found =
        tokio::task::block_in_place(|| lookup.offsets_for_times(tpl, Duration::from_secs(10)))
            .ok()
            .and_then(|t| t.find_partition(topic, partition).map(|e| e.offset()));
    let candidate = match found {
        Some(Offset::Offset(o)) => o.clamp(low, high),
        Some(Offset::End) => high,
        _ => return Ok(low),
    };
    if candidate == low {
        return Ok(low);
    }
    let mut before = None;
    read_range(reader, topic, partition, candidate - 1, candidate, |msg| {
        before = msg.timestamp().to_millis();
        Ok(())
    })?;
    Ok(if before.is_some_and(|t| t < since) {
        candidate
    } else {
        low
    })
}

/// Calls `each` for every record of `[from, to)` of one partition, in order.
pub(super) fn read_range(
    reader: &BaseConsumer,
    topic: &str,
    partition: i32,
    from: i64,
    to: i64,
    mut each: impl FnMut(&rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    reader.assign(&tpl)?;
    let mut quiet = 0;
    let mut next = from;
    while next < to {
        match tokio::task::block_in_place(|| reader.poll(Duration::from_millis(500))) {
            Some(Ok(msg)) => {
                quiet = 0;
                next = msg.offset() + 1;
                if msg.offset() < to {
                    each(&msg)?;
                }
            }
            Some(Err(e)) => anyhow::bail!("reading {topic} partition {partition}: {e}"),
            None => {
                // Transaction markers take offsets but are never handed out; the consumer's position
                // moves past them, so a range that ends in them is done.
                let position = reader
                    .position()
                    .ok()
                    .and_then(|t| t.find_partition(topic, partition).map(|e| e.offset()));
                if matches!(position, Some(Offset::Offset(p)) if p >= to) {
                    break;
                }
                quiet += 1;
                anyhow::ensure!(
                    quiet < 60,
                    "reading {topic} partition {partition}: nothing for 30 s at offset {next} (of {to})"
                );
            }
        }
    }
    Ok(())
}

/// A line on standard error every two seconds while a long run goes on.
pub(super) struct Progress {
    total: i64,
    done: i64,
    started: tokio::time::Instant,
    last: tokio::time::Instant,
    printed: bool,
}

impl Progress {
    pub(super) fn new(total: i64) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            total,
            done: 0,
            started: now,
            last: now,
            printed: false,
        }
    }

    pub(super) fn skipped(&mut self, n: i64) {
        self.done += n;
    }

    pub(super) fn read(&mut self, selected: usize) {
        self.done += 1;
        if self.last.elapsed() >= Duration::from_secs(2) {
            self.last = tokio::time::Instant::now();
            self.printed = true;
            let pct = 100.0 * self.done as f64 / self.total.max(1) as f64;
            eprintln!(
                "… {} of {} ({pct:.0} %) after {:.0} s{}",
                self.done,
                self.total,
                self.started.elapsed().as_secs_f64(),
                if selected > 0 {
                    format!(", {selected} sends selected")
                } else {
                    String::new()
                }
            );
        }
    }

    pub(super) fn done(&self) {
        if self.printed {
            eprintln!("… done in {:.1} s", self.started.elapsed().as_secs_f64());
        }
    }
}
