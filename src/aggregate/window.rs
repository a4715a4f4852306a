//! A rolling 24-hour count per workspace, exact to the minute, by event time. Pure: time is an argument.
//!
//! Buckets are kept sparsely (only minutes that saw events), so a quiet workspace costs a few bytes and a
//! busy one at most 1,440 buckets per partition, whatever its volume.
//!
//! A workspace's events normally all arrive on one partition (failure events are keyed by workspace), but
//! each partition's share is kept apart: when a partition is revoked exactly its events are forgotten, and a
//! checkpoint of one partition holds exactly what that partition contributed.

use std::collections::{HashMap, HashSet, VecDeque};

pub const MINUTE_MS: i64 = 60_000;

/// One partition's share of a workspace's window.
#[derive(Debug, Default, Clone)]
struct Part {
    /// (minute, count), oldest first.
    buckets: VecDeque<(i64, u32)>,
    total: u64,
}

impl Part {
    /// Drops buckets that fell out of the window ending at `now_minute` (exclusive lower bound).
    fn expire(&mut self, now_minute: i64, span_minutes: i64) {
        while let Some(&(m, c)) = self.buckets.front() {
            if m > now_minute - span_minutes {
                break;
            }
            self.total -= u64::from(c);
            self.buckets.pop_front();
        }
    }

    /// Adds `n` events at `minute`. A bucket saturates rather than wraps (only a hostile checkpoint gets
    /// there), and the total follows what the buckets hold, so expiry never underflows.
    fn add(&mut self, minute: i64, n: u32) {
        let bucket = match self.buckets.back() {
            Some((m, _)) if *m == minute => self.buckets.len() - 1,
            Some((m, _)) if *m > minute => {
                // Out of order (late events, or a checkpoint restored): insert in place.
                match self.buckets.binary_search_by_key(&minute, |(m, _)| *m) {
                    Ok(i) => i,
                    Err(i) => {
                        self.buckets.insert(i, (minute, 0));
                        i
                    }
                }
            }
            _ => {
                self.buckets.push_back((minute, 0));
                self.buckets.len() - 1
            }
        };
        let c = &mut self.buckets[bucket].1;
        let added = n.min(u32::MAX - *c);
        *c += added;
        self.total += u64::from(added);
    }
}

#[derive(Debug, Default)]
struct Window {
    /// (partition, share); almost always one entry.
    parts: Vec<(i32, Part)>,
}

impl Window {
    fn part(&mut self, partition: i32) -> &mut Part {
        let i = match self.parts.iter().position(|(p, _)| *p == partition) {
            Some(i) => i,
            None => {
                self.parts.push((partition, Part::default()));
                self.parts.len() - 1
            }
        };
        &mut self.parts[i].1
    }

    fn expire(&mut self, now_minute: i64, span_minutes: i64) -> u64 {
        self.parts
            .iter_mut()
            .for_each(|(_, p)| p.expire(now_minute, span_minutes));
        self.parts.retain(|(_, p)| p.total > 0);
        self.parts.iter().map(|(_, p)| p.total).sum()
    }
}

/// When an event counts: at its own time, or now if it is dated in the future (a producer's clock ahead, or a
/// hostile record) — so it can neither linger past its day nor be lost.
pub fn counted_at(event_ms: i64, now_ms: i64) -> i64 {
    event_ms.min(now_ms)
}

/// Rolling counts for every workspace seen.
#[derive(Debug)]
pub struct Windows {
    span_minutes: i64,
    by_workspace: HashMap<String, Window>,
}

impl Windows {
    pub fn new(span_ms: i64) -> Self {
        Self {
            span_minutes: (span_ms / MINUTE_MS).max(1),
            by_workspace: HashMap::new(),
        }
    }

    /// Counts one event of `partition` at `event_ms`; events already older than the window are ignored
    /// (returns false).
    pub fn add(&mut self, workspace: &str, partition: i32, event_ms: i64, now_ms: i64) -> bool {
        let minute = event_ms.div_euclid(MINUTE_MS);
        let now_minute = now_ms.div_euclid(MINUTE_MS);
        let span = self.span_minutes;
        if minute <= now_minute - span {
            return false;
        }
        // Not `entry`, which would allocate the key for every event.
        let w = match self.by_workspace.get_mut(workspace) {
            Some(w) => w,
            None => self.by_workspace.entry(workspace.to_string()).or_default(),
        };
        let part = w.part(partition);
        part.expire(now_minute, span);
        part.add(minute, 1);
        true
    }

    /// Events of `workspace` within the window ending now.
    pub fn count(&mut self, workspace: &str, now_ms: i64) -> u64 {
        let span = self.span_minutes;
        self.by_workspace
            .get_mut(workspace)
            .map_or(0, |w| w.expire(now_ms.div_euclid(MINUTE_MS), span))
    }

    /// Forgets workspaces whose window is empty (memory follows the active set).
    pub fn evict_empty(&mut self, now_ms: i64) {
        let (now_minute, span) = (now_ms.div_euclid(MINUTE_MS), self.span_minutes);
        self.by_workspace
            .retain(|_, w| w.expire(now_minute, span) > 0);
    }

    pub fn contains(&self, workspace: &str) -> bool {
        self.by_workspace.contains_key(workspace)
    }

    pub fn workspaces(&self) -> usize {
        self.by_workspace.len()
    }

    /// Forgets what revoked partitions contributed; workspaces left with nothing are dropped.
    pub fn drop_partitions(&mut self, gone: &HashSet<i32>) {
        self.by_workspace.retain(|_, w| {
            w.parts.retain(|(p, _)| !gone.contains(p));
            !w.parts.is_empty()
        });
    }

    /// Partitions that contributed to `workspace`'s window.
    pub fn partitions_of(&self, workspace: &str) -> Vec<i32> {
        self.by_workspace
            .get(workspace)
            .map(|w| w.parts.iter().map(|(p, _)| *p).collect())
            .unwrap_or_default()
    }

    /// `partition`'s buckets of `workspace`, oldest first, for a checkpoint.
    pub fn buckets(&self, workspace: &str, partition: i32) -> Vec<(i64, u32)> {
        self.by_workspace
            .get(workspace)
            .and_then(|w| w.parts.iter().find(|(p, _)| *p == partition))
            .map(|(_, part)| part.buckets.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Puts back `partition`'s share of `workspace` from a checkpoint, replacing what was there. The buckets
    /// are foreign bytes: any order and duplicate minutes are accepted, and what is already outside the
    /// window ending `now_ms` is dropped.
    pub fn restore(
        &mut self,
        workspace: &str,
        partition: i32,
        buckets: &[(i64, u32)],
        now_ms: i64,
    ) {
        let (now_minute, span) = (now_ms.div_euclid(MINUTE_MS), self.span_minutes);
        // Sorted first, so each bucket appends (a hostile record of a million unsorted buckets must not
        // cost a million insertions in the middle).
        let mut inside: Vec<(i64, u32)> = buckets
            .iter()
            .filter(|(minute, n)| *n > 0 && *minute > now_minute.saturating_sub(span))
            .map(|&(minute, n)| (minute.min(now_minute), n))
            .collect();
        inside.sort_unstable_by_key(|(minute, _)| *minute);
        let mut part = Part::default();
        for (minute, n) in inside {
            part.add(minute, n);
        }
        let w = self.by_workspace.entry(workspace.to_string()).or_default();
        w.parts.retain(|(p, _)| *p != partition);
        if part.total > 0 {
            w.parts.push((partition, part));
        }
        if w.parts.is_empty() {
            self.by_workspace.remove(workspace);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY: i64 = 24 * 60 * MINUTE_MS;
    const T0: i64 = 1_763_700_000_000;

    #[test]
    fn counts_by_event_time_and_forgets_after_a_day() {
        let mut w = Windows::new(DAY);
        assert!(w.add("ws", 0, T0, T0));
        assert!(
            w.add("ws", 0, T0 - DAY / 2, T0),
            "half a day old still counts"
        );
        assert!(
            !w.add("ws", 0, T0 - DAY - MINUTE_MS, T0),
            "older than a day is ignored"
        );
        assert_eq!(w.count("ws", T0), 2);
        assert_eq!(
            w.count("ws", T0 + DAY / 2 + MINUTE_MS),
            1,
            "the older event expired"
        );
        assert_eq!(w.count("ws", T0 + DAY + MINUTE_MS), 0);
        assert_eq!(w.count("other", T0), 0);
        w.evict_empty(T0 + DAY + MINUTE_MS);
        assert_eq!(w.workspaces(), 0);
    }

    #[test]
    fn an_event_from_the_future_counts_now_and_expires_a_day_later() {
        let mut w = Windows::new(DAY);
        let year_3000 = 32_503_680_000_000;
        assert!(w.add("ws", 0, counted_at(year_3000, T0), T0));
        assert_eq!(w.count("ws", T0), 1);
        assert_eq!(
            w.count("ws", T0 + DAY),
            0,
            "gone after a day, not in the year 3000"
        );
        assert_eq!(
            counted_at(T0 - 5, T0),
            T0 - 5,
            "past events keep their time"
        );
    }

    #[test]
    fn a_revoked_partition_takes_exactly_its_share_along() {
        let mut w = Windows::new(DAY);
        w.add("ws", 0, T0, T0);
        w.add("ws", 3, T0, T0);
        w.add("ws", 3, T0 - MINUTE_MS, T0);
        w.add("only-3", 3, T0, T0);
        assert_eq!(w.count("ws", T0), 3);
        w.drop_partitions(&HashSet::from([3]));
        assert_eq!(w.count("ws", T0), 1);
        assert!(!w.contains("only-3"));
        assert_eq!(w.partitions_of("ws"), vec![0]);
    }

    #[test]
    fn restored_buckets_count_as_the_originals_whatever_their_order() {
        let mut live = Windows::new(DAY);
        for o in [5, 1, 1, 700, 3] {
            live.add("ws", 2, T0 - o * MINUTE_MS, T0);
        }
        let mut saved = live.buckets("ws", 2);
        saved.reverse();
        saved.push((saved[0].0, 0));
        saved.push((T0 / MINUTE_MS - 2 * 1440, 9)); // already outside the window
        let mut restored = Windows::new(DAY);
        restored.restore("ws", 2, &saved, T0);
        assert_eq!(restored.buckets("ws", 2), live.buckets("ws", 2));
        for later in [T0, T0 + DAY - 4 * MINUTE_MS, T0 + DAY] {
            assert_eq!(restored.count("ws", later), live.count("ws", later));
        }
        restored.restore("ws", 2, &[], T0);
        assert!(
            !restored.contains("ws"),
            "an empty checkpoint leaves nothing"
        );
    }

    proptest! {
        /// Whatever the arrival order, the count is exactly the events of the last 24 hours, to the minute.
        #[test]
        fn equals_a_brute_force_count(
            offsets in proptest::collection::vec(0i64..(2 * DAY), 1..300),
            probe in 0i64..(3 * DAY),
        ) {
            let mut w = Windows::new(DAY);
            let now = T0 + 2 * DAY;
            for o in &offsets {
                w.add("ws", 0, T0 + o, now);
            }
            let at = now + probe;
            let minute = |t: i64| t.div_euclid(MINUTE_MS);
            let expected = offsets.iter().filter(|o| {
                let m = minute(T0 + **o);
                m > minute(now) - 1440 && m > minute(at) - 1440
            }).count() as u64;
            prop_assert_eq!(w.count("ws", at), expected);
        }
    }
}
