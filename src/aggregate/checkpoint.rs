//! Checkpoints of the aggregator's state in a compacted state topic, so that a new owner of a partition
//! restores it and replays only the events after it (the changelog of Kafka Streams' state stores). Pure:
//! record formats, folding the topic's records, and choosing where a partition's replay starts.
//!
//! Two kinds of record, keyed for compaction:
//! - `w/<partition>/<workspace>`: the partition's share of the workspace's window (per-minute buckets), its
//!   name and breakdown rows, and `offset`, the first failure-topic offset of the partition *not* included.
//!   A tombstone (no value) says the workspace's window emptied.
//! - `c/<partition>`: the marker of a complete checkpoint: every workspace with events before `offset` has a
//!   record holding them.
//!
//! Restoring partition p takes the newest marker and the newest record per workspace, replays from the
//! marker's offset, and skips, per workspace, the events below its record's own `offset`. A checkpoint cut
//! short by a rebalance or a crash leaves records newer than the newest marker; their own offsets make the
//! replay skip exactly what they already hold, so a restore counts what a full replay counts.
//!
//! Records are read on a plain log too (the embedded broker does not compact): later records win.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// First byte of every value; a reader skips values of another format rather than misread them.
const FORMAT: u8 = 1;

/// The newest complete checkpoint of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub offset: i64,
    pub written_at_ms: i64,
    /// The window's length when written: a checkpoint of a shorter window lacks older events.
    pub span_minutes: i64,
}

/// One breakdown row of a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedRow {
    /// 0 none, 1 campaign, 2 Canvas.
    pub kind: u8,
    pub message_id: String,
    pub endpoint_url: String,
    pub code: i32,
    pub message_name: String,
    pub last_seen_ms: i64,
    pub slots: Deltas,
}

/// A partition's share of a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    pub offset: i64,
    pub name: String,
    /// Per-minute buckets.
    pub buckets: Deltas,
    pub rows: Vec<SavedRow>,
}

/// Ascending `(position, count)` pairs stored as gaps from the previous position: one or two bytes each
/// instead of eight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deltas {
    first: i64,
    gaps: Vec<(u32, u32)>,
}

impl Deltas {
    pub fn encode(sorted: &[(i64, u32)]) -> Self {
        let first = sorted.first().map_or(0, |(p, _)| *p);
        let mut prev = first;
        let gaps = sorted
            .iter()
            .map(|&(p, n)| {
                let gap = u32::try_from(p.saturating_sub(prev)).unwrap_or(u32::MAX);
                prev = p;
                (gap, n)
            })
            .collect();
        Self { first, gaps }
    }

    pub fn decode(&self) -> Vec<(i64, u32)> {
        let mut at = self.first;
        self.gaps
            .iter()
            .map(|&(gap, n)| {
                at = at.saturating_add(i64::from(gap));
                (at, n)
            })
            .collect()
    }
}

pub fn workspace_key(partition: i32, workspace: &str) -> String {
    format!("w/{partition}/{workspace}")
}

pub fn marker_key(partition: i32) -> String {
    format!("c/{partition}")
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT];
    // Serialising owned plain data into a Vec cannot fail.
    out.extend(postcard::to_allocvec(value).unwrap_or_default());
    out
}

fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    match bytes.split_first() {
        Some((&FORMAT, rest)) => postcard::from_bytes(rest).ok(),
        _ => None,
    }
}

/// What a key names.
enum Keyed<'a> {
    Workspace(i32, &'a str),
    Marker(i32),
}

fn parse_key(key: &[u8]) -> Option<Keyed<'_>> {
    let key = std::str::from_utf8(key).ok()?;
    if let Some(rest) = key.strip_prefix("w/") {
        let (p, ws) = rest.split_once('/')?;
        return Some(Keyed::Workspace(p.parse().ok()?, ws));
    }
    key.strip_prefix("c/")?.parse().ok().map(Keyed::Marker)
}

/// The newest record per key of the wanted partitions, as read in log order; values are decoded only at the
/// end, so versions overwritten on a plain log cost no decoding.
#[derive(Debug, Default)]
pub struct Folder {
    wanted: HashSet<i32>,
    markers: HashMap<i32, Vec<u8>>,
    workspaces: HashMap<i32, HashMap<String, Vec<u8>>>,
}

/// A partition's checkpoint as found.
#[derive(Debug, Default)]
pub struct Found {
    pub marker: Option<Marker>,
    pub workspaces: Vec<(String, WorkspaceRecord)>,
    /// Values present but unreadable (another format, or corrupt).
    pub unreadable: usize,
}

impl Folder {
    pub fn new(wanted: impl IntoIterator<Item = i32>) -> Self {
        Self {
            wanted: wanted.into_iter().collect(),
            ..Self::default()
        }
    }

    /// One record of the state topic; keys of other partitions or of no known kind are skipped.
    pub fn apply(&mut self, key: &[u8], value: Option<&[u8]>) {
        match parse_key(key) {
            Some(Keyed::Workspace(p, ws)) if self.wanted.contains(&p) => {
                let of_p = self.workspaces.entry(p).or_default();
                match value {
                    Some(v) => {
                        of_p.insert(ws.to_string(), v.to_vec());
                    }
                    None => {
                        of_p.remove(ws);
                    }
                }
            }
            Some(Keyed::Marker(p)) if self.wanted.contains(&p) => match value {
                Some(v) => {
                    self.markers.insert(p, v.to_vec());
                }
                None => {
                    self.markers.remove(&p);
                }
            },
            _ => {}
        }
    }

    pub fn finish(mut self) -> HashMap<i32, Found> {
        let mut out: HashMap<i32, Found> = HashMap::new();
        for p in self.wanted.clone() {
            let mut found = Found::default();
            if let Some(bytes) = self.markers.remove(&p) {
                found.marker = decode(&bytes);
                found.unreadable += usize::from(found.marker.is_none());
            }
            for (ws, bytes) in self.workspaces.remove(&p).unwrap_or_default() {
                match decode::<WorkspaceRecord>(&bytes) {
                    Some(rec) => found.workspaces.push((ws, rec)),
                    None => found.unreadable += 1,
                }
            }
            out.insert(p, found);
        }
        out
    }
}

/// Where a partition's replay starts.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// Restore the checkpoint's workspaces, replay from `from`.
    Checkpoint { from: i64 },
    /// Replay the whole window, for the reason given.
    Full(&'static str),
}

/// Whether `found` can stand for the partition's events before its marker, given the partition's low and
/// high watermarks now. Anything doubtful falls back to the full replay, which is always exact.
pub fn choose_start(found: &Found, lo: i64, hi: i64, now_ms: i64, span_minutes: i64) -> Start {
    if found.unreadable > 0 {
        return Start::Full("checkpoint unreadable");
    }
    let Some(m) = found.marker else {
        return Start::Full("no checkpoint");
    };
    if m.span_minutes != span_minutes {
        return Start::Full("checkpoint of another window length");
    }
    if now_ms.saturating_sub(m.written_at_ms) >= span_minutes.saturating_mul(60_000) {
        return Start::Full("checkpoint older than the window");
    }
    let beyond = |o: i64| o > hi || o < 0;
    if beyond(m.offset) || found.workspaces.iter().any(|(_, r)| beyond(r.offset)) {
        return Start::Full("checkpoint beyond the partition's end (topic recreated?)");
    }
    // Events between the marker and the low watermark were deleted by retention: a full replay could not
    // read them either, and the checkpoint still holds what it counted of them.
    Start::Checkpoint {
        from: m.offset.max(lo),
    }
}

/// During a replay after a restore: per workspace, the offset below which its events are already in its
/// restored record (only workspaces whose record is newer than the replay's start need one).
#[derive(Debug, Default)]
pub struct Skips {
    below: HashMap<String, i64>,
    until: i64,
}

impl Skips {
    pub fn new(from: i64, workspaces: &[(String, WorkspaceRecord)]) -> Self {
        let below: HashMap<String, i64> = workspaces
            .iter()
            .filter(|(_, r)| r.offset > from)
            .map(|(ws, r)| (ws.clone(), r.offset))
            .collect();
        let until = below.values().copied().max().unwrap_or(from);
        Self { below, until }
    }

    pub fn already_counted(&self, workspace: &str, offset: i64) -> bool {
        self.below.get(workspace).is_some_and(|b| offset < *b)
    }

    /// Nothing left to skip once the replay has read up to `position`.
    pub fn done(&self, position: i64) -> bool {
        position >= self.until
    }
}

/// Cuts a string kept only for display (breakdown rows) so that no checkpoint record outgrows a Kafka
/// message, whatever a hostile failure event carried.
pub fn for_display(s: &str) -> String {
    const MAX: usize = 2_048;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
#[path = "checkpoint_tests.rs"]
mod tests;
