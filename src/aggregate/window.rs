//! A rolling 24-hour count per workspace, exact to the minute, by event time. Pure: time is an argument.
//!
//! Buckets are kept sparsely (only minutes that saw events), so a quiet workspace costs a few bytes and a
//! busy one at most 1,440 buckets, whatever its volume.

use std::collections::{HashMap, VecDeque};

pub const MINUTE_MS: i64 = 60_000;

#[derive(Debug, Default)]
pub struct Window {
    /// (minute, count), oldest first.
    buckets: VecDeque<(i64, u32)>,
    total: u64,
}

impl Window {
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

    fn add(&mut self, minute: i64) {
        match self.buckets.back_mut() {
            Some((m, c)) if *m == minute => *c += 1,
            Some((m, _)) if *m > minute => {
                // Out of order (events of several partitions interleave): insert in place.
                match self.buckets.binary_search_by_key(&minute, |(m, _)| *m) {
                    Ok(i) => self.buckets[i].1 += 1,
                    Err(i) => self.buckets.insert(i, (minute, 1)),
                }
            }
            _ => self.buckets.push_back((minute, 1)),
        }
        self.total += 1;
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

    /// Counts one event at `event_ms`; events already older than the window are ignored (returns false).
    pub fn add(&mut self, workspace: &str, event_ms: i64, now_ms: i64) -> bool {
        let minute = event_ms.div_euclid(MINUTE_MS);
        let now_minute = now_ms.div_euclid(MINUTE_MS);
        if minute <= now_minute - self.span_minutes {
            return false;
        }
        let w = match self.by_workspace.get_mut(workspace) {
            Some(w) => w,
            None => self.by_workspace.entry(workspace.to_string()).or_default(),
        };
        w.expire(now_minute, self.span_minutes);
        w.add(minute);
        true
    }

    /// Events of `workspace` within the window ending now.
    pub fn count(&mut self, workspace: &str, now_ms: i64) -> u64 {
        let span = self.span_minutes;
        self.by_workspace.get_mut(workspace).map_or(0, |w| {
            w.expire(now_ms.div_euclid(MINUTE_MS), span);
            w.total
        })
    }

    /// Forgets workspaces whose window is empty (memory follows the active set).
    pub fn evict_empty(&mut self, now_ms: i64) {
        let (now_minute, span) = (now_ms.div_euclid(MINUTE_MS), self.span_minutes);
        self.by_workspace.retain(|_, w| {
            w.expire(now_minute, span);
            w.total > 0
        });
    }

    pub fn contains(&self, workspace: &str) -> bool {
        self.by_workspace.contains_key(workspace)
    }

    pub fn workspaces(&self) -> usize {
        self.by_workspace.len()
    }

    /// Drops every workspace for which `keep` is false (partitions revoked).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.by_workspace.retain(|ws, _| keep(ws));
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
        assert!(w.add("ws", T0, T0));
        assert!(w.add("ws", T0 - DAY / 2, T0), "half a day old still counts");
        assert!(
            !w.add("ws", T0 - DAY - MINUTE_MS, T0),
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
        assert!(w.add("ws", counted_at(year_3000, T0), T0));
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
                w.add("ws", T0 + o, now);
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
