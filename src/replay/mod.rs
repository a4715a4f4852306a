//! `hookrelay replay`: redrive sends that failed, once the customer has fixed their endpoint. It scans the
//! failure topic for the selected events, finds each send's original record through the coordinates the
//! event carries (`source_topic`, `source_partition`, `source_offset`) and produces that very record again
//! — same key, same body, same headers, so the same `id` (receivers dedupe on `webhook-id`) — to the send
//! topic, with a `hookrelay-replay` header marking it.

pub mod select;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::clock::{now_ms, rfc3339};
use crate::config::Config;
use crate::events::{FailureEvent, SourceRef};
use crate::kafka::client::{producer_config, reader_config};
use crate::kafka::reader::{lookup_client, partition_count};
use select::{Found, Selection, StatusFilter};

/// The header that marks a redriven record; its value says which replay wrote it.
pub const REPLAY_HEADER: &str = "hookrelay-replay";

/// Kafka timestamps of failure events from several dispatchers are not strictly ordered; the time look-up
/// starts this much earlier, and the events' own times decide.
const CLOCK_SLACK_MS: i64 = 5 * 60 * 1000;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Start of the time range: an RFC 3339 time (`2026-11-30T12:00:00Z`) or how long ago (`2h`, `30m`).
    #[arg(long, value_parser = parse_when)]
    pub since: When,
    /// End of the time range, exclusive, in the same forms. Default: now.
    #[arg(long, value_parser = parse_when)]
    pub until: Option<When>,
    /// Only this workspace (`app_group_id`); repeat for several.
    #[arg(long = "workspace", value_name = "ID")]
    pub workspaces: Vec<String>,
    /// Only this campaign; repeat for several.
    #[arg(long = "campaign", value_name = "ID")]
    pub campaigns: Vec<String>,
    /// Only this Canvas; repeat for several.
    #[arg(long = "canvas", value_name = "ID")]
    pub canvases: Vec<String>,
    /// Only this status code or class: `404`, `4xx`, `5xx`, `598`, `599`; repeat for several.
    #[arg(long = "status", value_name = "CODE")]
    pub statuses: Vec<StatusFilter>,
    /// Also failed attempts that were retried, not only sends that failed for good (terminal).
    #[arg(long)]
    pub all_attempts: bool,
    /// Print how many sends would be redriven, by workspace and code, and produce nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// When some originals were deleted by retention, redrive the others instead of stopping.
    #[arg(long)]
    pub skip_deleted: bool,
}

/// A point in time as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    At(i64),
    Ago(Duration),
}

fn parse_when(s: &str) -> Result<When, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(When::At(t.timestamp_millis()));
    }
    humantime::parse_duration(s.trim())
        .map(When::Ago)
        .map_err(|_| {
            format!(
                "{s:?} is neither an RFC 3339 time (2026-11-30T12:00:00Z) nor a duration ago (2h)"
            )
        })
}

impl When {
    fn resolve(self, now: i64) -> i64 {
        match self {
            When::At(ms) => ms,
            When::Ago(d) => now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

pub async fn run(config: Config, args: ReplayArgs) -> anyhow::Result<()> {
    let now = now_ms();
    let selection = Selection {
        since_ms: args.since.resolve(now),
        until_ms: args.until.map_or(now, |u| u.resolve(now)),
        workspaces: args.workspaces,
        campaigns: args.campaigns,
        canvases: args.canvases,
        statuses: args.statuses,
        all_attempts: args.all_attempts,
    };
    anyhow::ensure!(
        selection.since_ms < selection.until_ms,
        "--since ({}) is not before --until ({})",
        rfc3339(selection.since_ms),
        rfc3339(selection.until_ms)
    );
    let found = scan(&config, &selection).await?;
    print!("{}", summary(&selection, &found, &config.topics.failures));
    if args.dry_run || found.sends.is_empty() {
        return Ok(());
    }
    let mut sends: Vec<SourceRef> = found.sends.keys().cloned().collect();
    let gone = deleted_originals(&config, &sends).await?;
    if !gone.is_empty() {
        let (n, text) = describe_deleted(&gone);
        anyhow::ensure!(
            args.skip_deleted,
            "{n} of {} sends can no longer be redriven: their original records were deleted by retention \
             ({text}). Nothing was produced; re-run with --skip-deleted to redrive the other {}.",
            sends.len(),
            sends.len() as u64 - n
        );
        eprintln!("skipping {n} sends whose originals were deleted by retention ({text})");
        sends.retain(|s| {
            gone.get(&(s.topic.clone(), s.partition))
                .is_none_or(|(_, start)| s.offset >= *start)
        });
    }
    let replay_id = format!("replay-{}-{now}", std::process::id());
    let redriven = redrive(&config, &sends, &replay_id).await?;
    println!(
        "redriven {} sends to {} ({REPLAY_HEADER}: {replay_id}){}",
        redriven.produced,
        config.topics.sends,
        if redriven.missing > 0 {
            format!(
                "; {} originals were no longer in their partition (deleted or compacted)",
                redriven.missing
            )
        } else {
            String::new()
        }
    );
    anyhow::ensure!(
        redriven.missing == 0 || args.skip_deleted,
        "{} originals could not be read",
        redriven.missing
    );
    Ok(())
}

fn summary(selection: &Selection, found: &Found, topic: &str) -> String {
    let what = if selection.all_attempts {
        "failed attempts"
    } else {
        "sends that failed for good"
    };
    let mut out = format!(
        "{} sends to redrive: {what} from {} to {} ({} events of {topic} read)\n",
        found.sends.len(),
        rfc3339(selection.since_ms),
        rfc3339(selection.until_ms),
        found.events_read
    );
    if !found.sends.is_empty() {
        out += &select::render_tally(&found.tally());
    }
    if found.without_source > 0 {
        out += &format!(
            "{} selected events name no original record (written before hookrelay recorded it) and cannot be redriven\n",
            found.without_source
        );
    }
    if found.unreadable > 0 {
        out += &format!(
            "{} records of {topic} could not be read as failure events\n",
            found.unreadable
        );
    }
    out
}

fn describe_deleted(gone: &BTreeMap<(String, i32), (u64, i64)>) -> (u64, String) {
    let n = gone.values().map(|(n, _)| n).sum();
    let text = gone
        .iter()
        .map(|((t, p), (n, start))| {
            format!("{t} partition {p}: {n}, the log now starts at offset {start}")
        })
        .collect::<Vec<_>>()
        .join("; ");
    (n, text)
}

/// Originals below their partition's first offset, per partition: (how many, the first offset).
async fn deleted_originals(
    config: &Config,
    sends: &[SourceRef],
) -> anyhow::Result<BTreeMap<(String, i32), (u64, i64)>> {
    let lookup = lookup_client(&config.kafka)?;
    let mut starts = BTreeMap::new();
    for s in sends {
        if let std::collections::btree_map::Entry::Vacant(e) =
            starts.entry((s.topic.clone(), s.partition))
        {
            let (low, _) = tokio::task::block_in_place(|| {
                lookup.fetch_watermarks(&s.topic, s.partition, Duration::from_secs(10))
            })
            .with_context(|| {
                format!("reading where {} partition {} starts", s.topic, s.partition)
            })?;
            e.insert(low);
        }
    }
    Ok(select::deleted(sends, &starts))
}

/// Reads the failure topic over the selected time range.
async fn scan(config: &Config, selection: &Selection) -> anyhow::Result<Found> {
    let topic = config.topics.failures.as_str();
    let lookup = lookup_client(&config.kafka)?;
    let n = tokio::task::block_in_place(|| partition_count(&lookup, topic))?;
    let mut ranges = Vec::new();
    for p in 0..n {
        let (low, high) = tokio::task::block_in_place(|| {
            lookup.fetch_watermarks(topic, p, Duration::from_secs(10))
        })
        .with_context(|| format!("reading the offsets of {topic} partition {p}"))?;
        ranges.push((p, low, high));
    }
    let reader: BaseConsumer = reader_config(&config.kafka)
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .context("creating the reader")?;
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
fn read_range(
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

struct Redriven {
    produced: u64,
    missing: u64,
}

/// Reads each original and produces it again to the send topic. Originals close together are read in one
/// pass; a gap of more than this many offsets is skipped by a new assignment.
const SKIP_ABOVE: i64 = 1_000;
/// Deliveries awaited at once, below librdkafka's queue bound.
const IN_FLIGHT: usize = 10_000;

async fn redrive(
    config: &Config,
    sends: &[SourceRef],
    replay_id: &str,
) -> anyhow::Result<Redriven> {
    let producer: FutureProducer = producer_config(&config.kafka)
        .create()
        .context("creating the producer")?;
    let reader: BaseConsumer = reader_config(&config.kafka)
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .context("creating the reader")?;
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
    for ((topic, partition), mut offsets) in by_partition {
        offsets.sort_unstable();
        for run in offsets.chunk_by(|a, b| b - a <= SKIP_ABOVE) {
            let (first, last) = (run[0], run[run.len() - 1]);
            let mut originals = Vec::new();
            read_range(&reader, &topic, partition, first, last + 1, |msg| {
                if run.binary_search(&msg.offset()).is_ok() {
                    originals.push(redriven_record(msg, replay_id));
                }
                Ok(())
            })?;
            out.missing += (run.len() - originals.len()) as u64;
            for (key, payload, headers) in originals {
                let record = FutureRecord::to(&config.topics.sends)
                    .payload(&payload)
                    .headers(headers);
                let record = match &key {
                    Some(k) => record.key(k),
                    None => record,
                };
                let delivery = producer.send_result(record).map_err(|(e, _)| {
                    anyhow::anyhow!("producing to {}: {e}", config.topics.sends)
                })?;
                pending.push(delivery);
                progress.read(0);
                if pending.len() >= IN_FLIGHT {
                    out.produced += acknowledged(&mut pending, &config.topics.sends).await?;
                }
            }
        }
    }
    out.produced += acknowledged(&mut pending, &config.topics.sends).await?;
    progress.done();
    Ok(out)
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

/// A line on standard error every two seconds while a long run goes on.
struct Progress {
    total: i64,
    done: i64,
    started: tokio::time::Instant,
    last: tokio::time::Instant,
    printed: bool,
}

impl Progress {
    fn new(total: i64) -> Self {
        let now = tokio::time::Instant::now();
        Self {
            total,
            done: 0,
            started: now,
            last: now,
            printed: false,
        }
    }

    fn skipped(&mut self, n: i64) {
        self.done += n;
    }

    fn read(&mut self, selected: usize) {
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

    fn done(&self) {
        if self.printed {
            eprintln!("… done in {:.1} s", self.started.elapsed().as_secs_f64());
        }
    }
}
