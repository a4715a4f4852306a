//! What the aggregator knows about the workspaces it owns, without any I/O: each one's rolling window, the
//! name and breakdown its email shows, and which changed since the last checkpoint. Counting an event,
//! writing a partition's checkpoint records and restoring them all happen here; the service only moves
//! bytes between this and Kafka.
//!
//! Memory: per workspace at most 1,440 buckets (12 bytes) per partition it arrives on, plus `breakdown_size`
//! rows of at most 97 slots (12 bytes) and three strings each — however many distinct URLs its events carry.

use std::collections::{HashMap, HashSet};

use super::breakdown::{Breakdown, Key};
use super::checkpoint::{
    encode, for_display, marker_key, workspace_key, Deltas, Marker, SavedRow, WorkspaceRecord,
};
use super::window::{counted_at, Windows, MINUTE_MS};
use crate::events::failure_view::FailureView;

/// Per-workspace state for the email.
#[derive(Default)]
pub(crate) struct Workspace {
    pub(crate) name: String,
    /// The partition its events arrive on (the last seen): its alert sender stops with it.
    pub(crate) partition: i32,
    pub(crate) breakdown: Breakdown,
}

/// One partition's checkpoint: its records (key, value; no value is a tombstone), then its marker.
pub struct PartitionRecords {
    pub partition: i32,
    pub records: Vec<(String, Option<Vec<u8>>)>,
    pub marker: (String, Vec<u8>),
    /// The workspaces written: marked changed again if the write fails.
    pub workspaces: Vec<String>,
}

pub struct Ledger {
    pub(crate) windows: Windows,
    pub(crate) workspaces: HashMap<String, Workspace>,
    /// Workspaces changed since the last checkpoint, per partition.
    pub(crate) dirty: HashMap<i32, HashSet<String>>,
    span_ms: i64,
    breakdown_size: usize,
    codes: HashSet<i32>,
}

impl Ledger {
    pub fn new(span_ms: i64, breakdown_size: usize, codes: &[i32]) -> Self {
        Self {
            windows: Windows::new(span_ms),
            workspaces: HashMap::new(),
            dirty: HashMap::new(),
            span_ms,
            breakdown_size,
            codes: codes.iter().copied().collect(),
        }
    }

    pub fn workspaces(&self) -> usize {
        self.workspaces.len()
    }

    /// Counts an event of `partition` toward its workspace's window (see [`counted_at`] for events dated in
    /// the future). False if it does not count: a code not alerted on, or older than the window.
    pub fn count(&mut self, v: &FailureView<'_>, partition: i32, now: i64) -> bool {
        let at = counted_at(v.time_ms, now);
        if !v.code.is_some_and(|c| self.codes.contains(&c))
            || !self.windows.add(v.workspace, partition, at, now)
        {
            return false;
        }
        let dirty = self.dirty.entry(partition).or_default();
        if !dirty.contains(v.workspace) {
            dirty.insert(v.workspace.to_string());
        }
        let ws = match self.workspaces.get_mut(v.workspace) {
            Some(ws) => ws,
            None => self.workspaces.entry(v.workspace.to_string()).or_default(),
        };
        ws.partition = partition;
        if let Some(name) = v.workspace_name {
            if ws.name != name {
                ws.name = name.to_string();
            }
        }
        let (kind, id, name) = match (v.campaign_id, v.canvas_id) {
            (Some(c), _) => ("campaign", c, v.campaign_name.unwrap_or(c)),
            (None, Some(c)) => ("canvas", c, v.canvas_name.unwrap_or(c)),
            (None, None) => ("", "", ""),
        };
        let key = Key {
            message_kind: kind,
            message_id: id.to_string(),
            endpoint_url: v.endpoint_url.unwrap_or_default().to_string(),
            code: v.code.unwrap_or_default(),
        };
        let size = self.breakdown_size;
        ws.breakdown.add(key, name, at, now, self.span_ms, size);
        true
    }

    /// The checkpoint of `partition` as of `offset` (the next offset not counted): a record for every
    /// workspace changed since the last one (a tombstone if nothing of it is left), and the marker.
    pub fn checkpoint(&mut self, partition: i32, offset: i64, now: i64) -> PartitionRecords {
        let names: Vec<String> = self
            .dirty
            .remove(&partition)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let records = names
            .iter()
            .map(|ws| {
                let value = self.record(ws, partition, offset, now);
                (workspace_key(partition, ws), value)
            })
            .collect();
        let marker = Marker {
            offset,
            written_at_ms: now,
            span_minutes: (self.span_ms / MINUTE_MS).max(1),
        };
        PartitionRecords {
            partition,
            records,
            marker: (marker_key(partition), encode(&marker)),
            workspaces: names,
        }
    }

    fn record(&mut self, ws: &str, p: i32, offset: i64, now: i64) -> Option<Vec<u8>> {
        let buckets = self.windows.buckets(ws, p);
        if buckets.is_empty() {
            return None;
        }
        let (name, rows) = match self.workspaces.get_mut(ws) {
            Some(w) => {
                w.breakdown.expire(now, self.span_ms);
                let rows = w.breakdown.saved().map(|(k, name, last, slots)| SavedRow {
                    kind: match k.message_kind {
                        "campaign" => 1,
                        "canvas" => 2,
                        _ => 0,
                    },
                    message_id: for_display(&k.message_id),
                    endpoint_url: for_display(&k.endpoint_url),
                    code: k.code,
                    message_name: for_display(name),
                    last_seen_ms: last,
                    slots: Deltas::encode(&slots),
                });
                (for_display(&w.name), rows.collect())
            }
            None => (String::new(), Vec::new()),
        };
        Some(encode(&WorkspaceRecord {
            offset,
            name,
            buckets: Deltas::encode(&buckets),
            rows,
        }))
    }

    /// Puts back a partition's workspaces from its checkpoint; returns the events they hold within the
    /// window.
    pub fn restore(
        &mut self,
        partition: i32,
        restored: Vec<(String, WorkspaceRecord)>,
        now: i64,
    ) -> u64 {
        let (span, size) = (self.span_ms, self.breakdown_size);
        let mut events = 0;
        for (ws, rec) in restored {
            let before = self.windows.count(&ws, now);
            self.windows
                .restore(&ws, partition, &rec.buckets.decode(), now);
            let after = self.windows.count(&ws, now);
            events += after.saturating_sub(before);
            if after == 0 {
                continue; // all of it expired
            }
            let w = self.workspaces.entry(ws).or_default();
            w.partition = partition;
            if !rec.name.is_empty() {
                w.name = rec.name;
            }
            for row in rec.rows {
                let key = Key {
                    message_kind: match row.kind {
                        1 => "campaign",
                        2 => "canvas",
                        _ => "",
                    },
                    message_id: row.message_id,
                    endpoint_url: row.endpoint_url,
                    code: row.code,
                };
                let slots = row.slots.decode();
                w.breakdown.restore(
                    key,
                    &row.message_name,
                    row.last_seen_ms,
                    &slots,
                    now,
                    span,
                    size,
                );
            }
        }
        events
    }

    /// Forgets what revoked partitions contributed.
    pub fn drop_partitions(&mut self, gone: &HashSet<i32>) {
        for p in gone {
            self.dirty.remove(p);
        }
        self.windows.drop_partitions(gone);
        let windows = &self.windows;
        self.workspaces.retain(|ws, w| {
            if gone.contains(&w.partition) {
                match windows.partitions_of(ws).first() {
                    Some(p) => w.partition = *p,
                    None => return false,
                }
            }
            true
        });
    }

    /// Forgets workspaces whose window emptied, unless `busy` (an email still going out); their checkpoint
    /// records become tombstones at the next checkpoint.
    pub fn evict_idle(&mut self, now: i64, busy: impl Fn(&str) -> bool) {
        self.windows.evict_empty(now);
        let (windows, dirty, span) = (&self.windows, &mut self.dirty, self.span_ms);
        self.workspaces.retain(|ws, w| {
            w.breakdown.expire(now, span);
            let keep = windows.contains(ws) || busy(ws);
            if !keep {
                dirty.entry(w.partition).or_default().insert(ws.clone());
            }
            keep
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::checkpoint::Folder;

    const DAY: i64 = 86_400_000;
    const T0: i64 = 1_763_700_000_000;

    fn view<'a>(ws: &'a str, url: &'a str, at: i64) -> FailureView<'a> {
        FailureView {
            code: Some(503),
            workspace: ws,
            workspace_name: Some("Acme"),
            endpoint_url: Some(url),
            campaign_id: Some("c1"),
            campaign_name: Some("Spring"),
            canvas_id: None,
            canvas_name: None,
            time_ms: at,
        }
    }

    fn restore_from(records: &PartitionRecords, now: i64) -> Ledger {
        let mut folder = Folder::new([records.partition]);
        for (k, v) in &records.records {
            folder.apply(k.as_bytes(), v.as_deref());
        }
        folder.apply(records.marker.0.as_bytes(), Some(&records.marker.1));
        let found = folder.finish().remove(&records.partition).unwrap();
        assert!(found.marker.is_some());
        let mut restored = Ledger::new(DAY, 5, &[503]);
        restored.restore(records.partition, found.workspaces, now);
        restored
    }

    #[test]
    fn a_checkpoint_restores_the_same_counts_names_and_breakdown() {
        let mut live = Ledger::new(DAY, 5, &[503]);
        for i in 0..300 {
            let url = format!("https://hooks.example/{}", i % 3);
            assert!(live.count(&view(&format!("ws{}", i % 7), &url, T0 - i * 60_000), 4, T0));
        }
        assert!(!live.count(
            &FailureView {
                code: Some(200),
                ..view("ws0", "u", T0)
            },
            4,
            T0
        ));
        let records = live.checkpoint(4, 300, T0);
        assert_eq!(records.workspaces.len(), 7);
        let mut restored = restore_from(&records, T0);
        for i in 0..7 {
            let ws = format!("ws{i}");
            assert_eq!(restored.windows.count(&ws, T0), live.windows.count(&ws, T0));
            let top = restored
                .workspaces
                .get_mut(&ws)
                .unwrap()
                .breakdown
                .top(T0, DAY);
            assert_eq!(
                top,
                live.workspaces.get_mut(&ws).unwrap().breakdown.top(T0, DAY)
            );
            assert_eq!(restored.workspaces[&ws].name, "Acme");
        }
        assert!(
            live.checkpoint(4, 300, T0).records.is_empty(),
            "nothing changed since"
        );
    }

    #[test]
    fn an_evicted_workspace_becomes_a_tombstone() {
        let mut live = Ledger::new(DAY, 5, &[503]);
        live.count(&view("ws", "u", T0), 1, T0);
        let _ = live.checkpoint(1, 1, T0);
        live.evict_idle(T0 + DAY + 60_000, |_| false);
        assert_eq!(live.workspaces(), 0);
        let records = live.checkpoint(1, 1, T0 + DAY + 60_000);
        assert_eq!(records.records, vec![("w/1/ws".to_string(), None)]);
    }
}
