//! What an alert email lists: failures by message (campaign or Canvas), endpoint and code, with counts and
//! when each was last seen. Bounded per workspace (top N by count), so memory stays flat however many
//! distinct URLs a workspace's failures carry. Pure.

use std::collections::{HashMap, VecDeque};

use super::window::MINUTE_MS;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// `campaign` or `canvas` (empty when the send named neither).
    pub message_kind: &'static str,
    pub message_id: String,
    pub endpoint_url: String,
    pub code: i32,
}

/// One row of an email: how often, and when last, a (message, endpoint, code) failed within the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub message_name: String,
    pub count: u64,
    pub last_seen_ms: i64,
}

/// Rows count in slots of this many milliseconds, so a row costs at most a day's worth of slots (97).
pub const SLOT_MS: i64 = 15 * 60_000;

#[derive(Debug)]
struct Row {
    message_name: String,
    /// (slot, count), oldest first.
    slots: VecDeque<(i64, u32)>,
    total: u64,
    last_seen_ms: i64,
}

impl Row {
    /// Drops slots that have begun before the window: a row may understate by up to a slot at the window's
    /// edge, never overstate, so no row exceeds the workspace's count.
    fn expire(&mut self, now_ms: i64, span_ms: i64) {
        let first_minute_in = now_ms.div_euclid(MINUTE_MS) - span_ms / MINUTE_MS + 1;
        while let Some(&(slot, c)) = self.slots.front() {
            if (slot * SLOT_MS).div_euclid(MINUTE_MS) >= first_minute_in {
                break;
            }
            self.total -= u64::from(c);
            self.slots.pop_front();
        }
    }

    fn add(&mut self, at_ms: i64) {
        let slot = at_ms.div_euclid(SLOT_MS);
        match self.slots.binary_search_by_key(&slot, |(s, _)| *s) {
            Ok(i) => self.slots[i].1 += 1,
            Err(i) => self.slots.insert(i, (slot, 1)),
        }
        self.total += 1;
        self.last_seen_ms = self.last_seen_ms.max(at_ms);
    }
}

#[derive(Debug, Default)]
pub struct Breakdown {
    rows: HashMap<Key, Row>,
}

impl Breakdown {
    /// Counts one failure at `at_ms` (within the window of `span_ms` ending at `now_ms`). When full, the least
    /// frequent row gives way to the newcomer. Counts are never inflated (an email must not overstate); a row
    /// admitted late counts from its admission.
    pub fn add(
        &mut self,
        key: Key,
        name: &str,
        at_ms: i64,
        now_ms: i64,
        span_ms: i64,
        capacity: usize,
    ) {
        if let Some(row) = self.rows.get_mut(&key) {
            row.expire(now_ms, span_ms);
            row.add(at_ms);
            return;
        }
        if self.rows.len() >= capacity.max(1) {
            self.expire(now_ms, span_ms);
        }
        if self.rows.len() >= capacity.max(1) {
            if let Some(min_key) = self
                .rows
                .iter()
                .min_by_key(|(_, r)| r.total)
                .map(|(k, _)| k.clone())
            {
                self.rows.remove(&min_key);
            }
        }
        let mut row = Row {
            message_name: name.to_string(),
            slots: VecDeque::new(),
            total: 0,
            last_seen_ms: at_ms,
        };
        row.add(at_ms);
        self.rows.insert(key, row);
    }

    /// Every row as it stands, for a checkpoint: key, message name, last seen, and (slot, count) oldest first.
    pub fn saved(&self) -> impl Iterator<Item = (&Key, &str, i64, Vec<(i64, u32)>)> {
        self.rows.iter().map(|(k, r)| {
            let slots = r.slots.iter().copied().collect();
            (k, r.message_name.as_str(), r.last_seen_ms, slots)
        })
    }

    /// Puts back a row from a checkpoint. The slots are foreign bytes and may come in any order. A row
    /// already present (a workspace seen on two partitions) keeps the larger count per slot, so an email
    /// never overstates.
    #[allow(clippy::too_many_arguments)] // the checkpointed row, and the window it must fit
    pub fn restore(
        &mut self,
        key: Key,
        name: &str,
        last_seen_ms: i64,
        slots: &[(i64, u32)],
        now_ms: i64,
        span_ms: i64,
        capacity: usize,
    ) {
        if !self.rows.contains_key(&key) && self.rows.len() >= capacity.max(1) {
            return; // full: the rows already here were restored first and are as good
        }
        let row = self.rows.entry(key).or_insert_with(|| Row {
            message_name: name.to_string(),
            slots: VecDeque::new(),
            total: 0,
            last_seen_ms,
        });
        // Sorted, and only slots of the window, so a hostile record cannot make this quadratic.
        let (first, last) = (
            now_ms.saturating_sub(span_ms).div_euclid(SLOT_MS),
            now_ms.div_euclid(SLOT_MS),
        );
        let mut slots: Vec<(i64, u32)> = slots
            .iter()
            .copied()
            .filter(|(s, _)| (first..=last).contains(s))
            .collect();
        slots.sort_unstable_by_key(|(s, _)| *s);
        for (slot, n) in slots {
            match row.slots.binary_search_by_key(&slot, |(s, _)| *s) {
                Ok(i) if row.slots[i].1 < n => {
                    row.total += u64::from(n - row.slots[i].1);
                    row.slots[i].1 = n;
                }
                Ok(_) => {}
                Err(i) => {
                    row.slots.insert(i, (slot, n));
                    row.total += u64::from(n);
                }
            }
        }
        row.last_seen_ms = row.last_seen_ms.max(last_seen_ms);
        row.expire(now_ms, span_ms);
        self.rows.retain(|_, r| r.total > 0);
    }

    /// Drops what fell out of the window, and rows left empty.
    pub fn expire(&mut self, now_ms: i64, span_ms: i64) {
        self.rows.retain(|_, r| {
            r.expire(now_ms, span_ms);
            r.total > 0
        });
    }

    /// Rows within the window ending at `now_ms`, largest first.
    pub fn top(&mut self, now_ms: i64, span_ms: i64) -> Vec<(Key, Entry)> {
        self.expire(now_ms, span_ms);
        let mut v: Vec<(Key, Entry)> = self
            .rows
            .iter()
            .map(|(k, r)| {
                let e = Entry {
                    message_name: r.message_name.clone(),
                    count: r.total,
                    last_seen_ms: r.last_seen_ms,
                };
                (k.clone(), e)
            })
            .collect();
        v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(url: &str, code: i32) -> Key {
        Key {
            message_kind: "campaign",
            message_id: "c1".into(),
            endpoint_url: url.into(),
            code,
        }
    }

    const DAY: i64 = 24 * 60 * MINUTE_MS;
    const T0: i64 = 1_763_700_000_000;

    #[test]
    fn counts_and_remembers_the_last_time_seen() {
        let mut b = Breakdown::default();
        b.add(key("https://a", 503), "Spring", 10, 10, DAY, 10);
        b.add(key("https://a", 503), "Spring", 5, 10, DAY, 10);
        b.add(key("https://a", 404), "Spring", 7, 10, DAY, 10);
        let top = b.top(10, DAY);
        assert_eq!(
            top[0].1,
            Entry {
                message_name: "Spring".into(),
                count: 2,
                last_seen_ms: 10
            }
        );
        assert_eq!(top[1].0.code, 404);
    }

    #[test]
    fn stays_bounded_and_keeps_the_heavy_hitters() {
        let mut b = Breakdown::default();
        for _ in 0..100 {
            b.add(key("https://heavy", 500), "C", 1, 1, DAY, 5);
        }
        for i in 0..10_000 {
            b.add(key(&format!("https://unique/{i}"), 500), "C", 1, 1, DAY, 5);
        }
        assert_eq!(b.top(1, DAY).len(), 5);
        assert_eq!(b.top(1, DAY)[0].0.endpoint_url, "https://heavy");
        assert_eq!(b.top(1, DAY)[0].1.count, 100);
    }

    #[test]
    fn rows_expire_with_the_window() {
        let mut b = Breakdown::default();
        for i in 0..50 {
            b.add(key("https://old", 500), "C", T0 + i, T0 + i, DAY, 5);
        }
        b.add(
            key("https://new", 500),
            "C",
            T0 + DAY / 2,
            T0 + DAY / 2,
            DAY,
            5,
        );
        assert_eq!(b.top(T0 + DAY / 2, DAY)[0].1.count, 50);
        let later = b.top(T0 + DAY + SLOT_MS, DAY);
        assert_eq!(later.len(), 1, "the old row is gone: {later:?}");
        assert_eq!(later[0].0.endpoint_url, "https://new");
    }

    #[test]
    fn a_saved_row_restores_to_the_same_entry() {
        let mut b = Breakdown::default();
        for i in 0..30 {
            b.add(
                key("https://a", 503),
                "Spring",
                T0 + i * 60_000,
                T0 + DAY / 2,
                DAY,
                5,
            );
        }
        b.add(key("https://b", 404), "Spring", T0, T0 + DAY / 2, DAY, 5);
        let mut restored = Breakdown::default();
        for (k, name, last, mut slots) in b.saved() {
            slots.reverse();
            restored.restore(k.clone(), name, last, &slots, T0 + DAY / 2, DAY, 5);
        }
        assert_eq!(restored.top(T0 + DAY / 2, DAY), b.top(T0 + DAY / 2, DAY));
        let (k, name, last, slots) = {
            let (k, n, l, s) = b.saved().next().unwrap();
            (k.clone(), n.to_string(), l, s)
        };
        restored.restore(k.clone(), &name, last, &slots, T0 + DAY / 2, DAY, 5);
        assert_eq!(
            restored.top(T0 + DAY / 2, DAY),
            b.top(T0 + DAY / 2, DAY),
            "restoring the same row twice does not double it"
        );
    }

    proptest::proptest! {
        /// A row never exceeds what the window itself counts for the same events.
        #[test]
        fn no_row_exceeds_the_windows_count(
            offsets in proptest::collection::vec(0i64..(2 * DAY), 1..200),
            probe in 0i64..(2 * DAY),
        ) {
            let now = T0 + 2 * DAY;
            let mut w = super::super::window::Windows::new(DAY);
            let mut b = Breakdown::default();
            for o in &offsets {
                if w.add("ws", 0, T0 + o, now) {
                    b.add(key("https://a", 500), "C", T0 + o, now, DAY, 5);
                }
            }
            let at = now + probe;
            let total = w.count("ws", at);
            for (_, e) in b.top(at, DAY) {
                proptest::prop_assert!(e.count <= total, "{} > {}", e.count, total);
            }
        }
    }
}
