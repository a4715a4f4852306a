//! Where newly assigned partitions start: restore their checkpoints from the state topic, or, without a
//! usable one, replay the whole window. Runs on the feeder thread inside the rebalance callback, before the
//! partitions are assigned, so their first record cannot overtake the restored state.

// Restoring reads the state topic against a deadline.
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::checkpoint::{choose_start, Folder, Start, WorkspaceRecord};
use super::replay::{choose_rebuild, Rebuild};
use crate::clock::now_ms;
use crate::config::Config;
use crate::kafka::client::reader_config;
use crate::kafka::reader::partition_count;

/// How a partition's replay starts, announced to the loop before any of its records.
#[derive(Debug)]
pub(super) struct PartitionStart {
    pub partition: i32,
    /// First offset the replay reads.
    pub from: i64,
    /// The partition's end when assigned: the rebuild is over once read up to here.
    pub end: i64,
    pub restored: Vec<(String, WorkspaceRecord)>,
    /// Why the whole window is replayed; `None` when `restored` is the partition's checkpoint.
    pub full_replay: Option<&'static str>,
}

/// An assignment, restored.
#[derive(Debug)]
pub(super) struct Assignment {
    pub partitions: Vec<PartitionStart>,
    pub restore_took: Duration,
}

/// Longest a restore may read the state topic before giving up on checkpoints (and replaying in full).
const READ_LIMIT: Duration = Duration::from_secs(60);
const CALL: Duration = Duration::from_secs(10);

pub(super) struct Restorer {
    reader: BaseConsumer,
    failures: String,
    state: String,
    span_minutes: i64,
}

impl Restorer {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            reader: reader_config(&config.kafka).create()?,
            failures: config.topics.failures.clone(),
            state: config.topics.aggregate_state.clone(),
            span_minutes: (i64::try_from(config.aggregate.window.as_secs()).unwrap_or(i64::MAX)
                / 60)
                .max(1),
        })
    }

    /// Blocking: the start of each partition, and what the loop restores.
    pub fn restore(&self, partitions: &[i32]) -> (Assignment, Vec<(i32, Offset)>) {
        let started = Instant::now();
        let now = now_ms();
        let marks: HashMap<i32, (i64, i64)> = partitions
            .iter()
            .map(|&p| {
                let wm = self.reader.fetch_watermarks(&self.failures, p, CALL);
                (p, wm.unwrap_or((0, 0)))
            })
            .collect();
        let mut found = match self.read_state(partitions) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read checkpoints; replaying the whole window");
                HashMap::new()
            }
        };
        let mut starts = Vec::new();
        let mut full = Vec::new();
        for &p in partitions {
            let (lo, hi) = marks[&p];
            let f = found.remove(&p).unwrap_or_default();
            match choose_start(&f, lo, hi, now, self.span_minutes) {
                Start::Checkpoint { from } => starts.push(PartitionStart {
                    partition: p,
                    from,
                    end: hi,
                    restored: f.workspaces,
                    full_replay: None,
                }),
                Start::Full(why) => full.push((p, why)),
            }
        }
        starts.extend(self.full_replays(&full, &marks, now));
        let offsets = starts
            .iter()
            .map(|s| (s.partition, Offset::Offset(s.from)))
            .collect();
        let assignment = Assignment {
            partitions: starts,
            restore_took: started.elapsed(),
        };
        (assignment, offsets)
    }

    /// Partitions without a usable checkpoint start at the window's first event when the broker can say where
    /// that is (offsets for times), at the beginning of retention otherwise.
    fn full_replays(
        &self,
        full: &[(i32, &'static str)],
        marks: &HashMap<i32, (i64, i64)>,
        now: i64,
    ) -> Vec<PartitionStart> {
        let window_start = now.saturating_sub(self.span_minutes.saturating_mul(60_000));
        let mut query = TopicPartitionList::new();
        for (p, _) in full.iter().filter(|(p, _)| marks[p].1 > marks[p].0) {
            let _ = query.add_partition_offset(&self.failures, *p, Offset::Offset(window_start));
        }
        let found: Vec<(i32, Option<i64>)> = if query.count() == 0 {
            Vec::new()
        } else {
            match self.reader.offsets_for_times(query, CALL) {
                Ok(tpl) => tpl
                    .elements()
                    .iter()
                    .map(|e| (e.partition(), e.offset().to_raw()))
                    .collect(),
                Err(_) => Vec::new(),
            }
        };
        let seek: HashMap<i32, i64> = match choose_rebuild(&found, marks) {
            Rebuild::Seek(starts) => starts.into_iter().collect(),
            Rebuild::Scan => HashMap::new(),
        };
        full.iter()
            .map(|&(p, why)| {
                let (lo, hi) = marks[&p];
                PartitionStart {
                    partition: p,
                    from: seek.get(&p).copied().unwrap_or(lo).clamp(lo, hi.max(lo)),
                    end: hi,
                    restored: Vec::new(),
                    full_replay: Some(why),
                }
            })
            .collect()
    }

    /// Reads the state topic's partitions holding `partitions`' checkpoints up to their current end.
    fn read_state(
        &self,
        partitions: &[i32],
    ) -> anyhow::Result<HashMap<i32, super::checkpoint::Found>> {
        let n = partition_count(&self.reader, &self.state)?;
        let wanted: HashSet<i32> = partitions.iter().map(|p| p % n).collect();
        let mut ends = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for &sp in &wanted {
            let (lo, hi) = self.reader.fetch_watermarks(&self.state, sp, CALL)?;
            if hi > lo {
                ends.insert(sp, hi);
                tpl.add_partition_offset(&self.state, sp, Offset::Beginning)?;
            }
        }
        let mut folder = Folder::new(partitions.iter().copied());
        if ends.is_empty() {
            return Ok(folder.finish());
        }
        self.reader.assign(&tpl)?;
        let deadline = Instant::now() + READ_LIMIT;
        while !ends.is_empty() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "reading {} took longer than {READ_LIMIT:?}",
                self.state
            );
            match self.reader.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    folder.apply(m.key().unwrap_or_default(), m.payload());
                    if ends
                        .get(&m.partition())
                        .is_some_and(|e| m.offset() + 1 >= *e)
                    {
                        ends.remove(&m.partition());
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "reading checkpoints"),
                None => {}
            }
        }
        self.reader.unassign()?;
        Ok(folder.finish())
    }
}
