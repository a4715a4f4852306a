//! Which offsets may be committed when records finish out of order. Pure: no Kafka here.
//!
//! Records of one partition run concurrently and finish in any order, but Kafka stores one position per
//! partition. Committing past a record that is still running would lose it on a crash, so the position
//! advances only over the contiguous prefix of finished records. Every assignment gets a new epoch so that a
//! record still finishing from an earlier assignment can never mark work of the current one done.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// A topic-partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

/// Proof that a record was registered; handed back to [`OffsetTracker::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub tp: TopicPartition,
    pub epoch: u64,
    pub offset: i64,
}

#[derive(Debug, Default)]
struct Partition {
    epoch: u64,
    /// Registered records in offset order, with whether each has finished.
    window: VecDeque<(i64, bool)>,
    /// One past the highest offset registered: the position once everything has finished.
    next: Option<i64>,
    /// Last position handed out for commit.
    committed: Option<i64>,
    /// Records in `window` not finished yet (the rest finished behind one that has not).
    unfinished: usize,
}

impl Partition {
    fn position(&self) -> Option<i64> {
        self.window.front().map(|(o, _)| *o).or(self.next)
    }
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<TopicPartition, Partition>,
    epochs: u64,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a partition afresh (new epoch), forgetting anything from an earlier assignment.
    pub fn assign(&mut self, tp: TopicPartition) {
        self.epochs += 1;
        self.partitions.insert(
            tp,
            Partition {
                epoch: self.epochs,
                ..Default::default()
            },
        );
    }

    /// Stops tracking; returns the position that is safe to commit for it, if any record was seen.
    pub fn revoke(&mut self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.remove(tp).and_then(|p| p.position())
    }

    pub fn is_assigned(&self, tp: &TopicPartition) -> bool {
        self.partitions.contains_key(tp)
    }

    pub fn assigned(&self) -> impl Iterator<Item = &TopicPartition> {
        self.partitions.keys()
    }

    /// Registers a record about to be processed. `None` means: not assigned here, or an offset this
    /// assignment has already seen (a redelivery) — skip the record.
    pub fn start(&mut self, tp: &TopicPartition, offset: i64) -> Option<Ticket> {
        let p = self.partitions.get_mut(tp)?;
        if p.next.is_some_and(|n| offset < n) {
            return None;
        }
        p.window.push_back((offset, false));
        p.unfinished += 1;
        p.next = Some(offset + 1);
        Some(Ticket {
            tp: tp.clone(),
            epoch: p.epoch,
            offset,
        })
    }

    /// Marks a record finished (its outcome is durable). Returns false for a ticket of an earlier assignment.
    pub fn finish(&mut self, ticket: &Ticket) -> bool {
        let Some(p) = self.partitions.get_mut(&ticket.tp) else {
            return false;
        };
        if p.epoch != ticket.epoch {
            return false;
        }
        let Ok(i) = p.window.binary_search_by_key(&ticket.offset, |(o, _)| *o) else {
            return false;
        };
        if !std::mem::replace(&mut p.window[i].1, true) {
            p.unfinished -= 1;
        }
        while p.window.front().is_some_and(|(_, done)| *done) {
            p.window.pop_front();
        }
        true
    }

    /// Whether `ticket` belongs to the current assignment of its partition.
    pub fn is_current(&self, ticket: &Ticket) -> bool {
        self.partitions
            .get(&ticket.tp)
            .is_some_and(|p| p.epoch == ticket.epoch)
    }

    /// Records registered but not finished.
    pub fn pending(&self, tp: &TopicPartition) -> usize {
        self.partitions.get(tp).map_or(0, |p| p.window.len())
    }

    pub fn total_pending(&self) -> usize {
        self.partitions.values().map(|p| p.window.len()).sum()
    }

    /// Records registered and not finished: [`OffsetTracker::pending`] less those that finished behind an
    /// unfinished one (and wait only for it to be committed).
    pub fn unfinished(&self, tp: &TopicPartition) -> usize {
        self.partitions.get(tp).map_or(0, |p| p.unfinished)
    }

    pub fn total_unfinished(&self) -> usize {
        self.partitions.values().map(|p| p.unfinished).sum()
    }

    /// The position that is safe to commit: the first unfinished offset, or one past the last seen.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.get(tp).and_then(Partition::position)
    }

    /// A commit of `position` failed: hand it out again on the next [`OffsetTracker::take_commits`].
    pub fn commit_failed(&mut self, tp: &TopicPartition, position: i64) {
        if let Some(p) = self.partitions.get_mut(tp) {
            if p.committed == Some(position) {
                p.committed = None;
            }
        }
    }

    /// Makes the next [`OffsetTracker::take_commits`] return every known position.
    pub fn recommit_all(&mut self) {
        for p in self.partitions.values_mut() {
            p.committed = None;
        }
    }

    /// Positions that moved since the last call, marked as handed out.
    pub fn take_commits(&mut self) -> Vec<(TopicPartition, i64)> {
        let mut out = Vec::new();
        for (tp, p) in &mut self.partitions {
            if let Some(pos) = p.position() {
                if p.committed != Some(pos) {
                    p.committed = Some(pos);
                    out.push((tp.clone(), pos));
                }
            }
        }
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tp() -> TopicPartition {
        TopicPartition::new("t", 0)
    }

    #[test]
    fn commits_only_the_contiguous_finished_prefix() {
        let mut t = OffsetTracker::new();
        t.assign(tp());
        let a = t.start(&tp(), 10).unwrap();
        let b = t.start(&tp(), 11).unwrap();
        let c = t.start(&tp(), 13).unwrap(); // gaps happen (compaction, transaction markers)
        assert_eq!(t.position(&tp()), Some(10));
        t.finish(&c);
        t.finish(&b);
        assert_eq!(t.position(&tp()), Some(10), "10 still runs");
        t.finish(&a);
        assert_eq!(t.position(&tp()), Some(14));
        assert_eq!(t.take_commits(), vec![(tp(), 14)]);
        assert!(
            t.take_commits().is_empty(),
            "unchanged positions are not committed again"
        );
    }

    #[test]
    fn a_failed_commit_is_handed_out_again() {
        let mut t = OffsetTracker::new();
        t.assign(tp());
        let a = t.start(&tp(), 0).unwrap();
        t.finish(&a);
        assert_eq!(t.take_commits(), vec![(tp(), 1)]);
        t.commit_failed(&tp(), 1);
        assert_eq!(
            t.take_commits(),
            vec![(tp(), 1)],
            "retried although nothing moved"
        );
        t.commit_failed(&tp(), 0);
        assert!(
            t.take_commits().is_empty(),
            "a stale failure does not trigger a re-commit"
        );
    }

    #[test]
    fn a_ticket_from_an_earlier_assignment_is_ignored() {
        let mut t = OffsetTracker::new();
        t.assign(tp());
        let old = t.start(&tp(), 5).unwrap();
        assert_eq!(t.revoke(&tp()), Some(5));
        t.assign(tp());
        let new = t.start(&tp(), 5).unwrap();
        assert!(!t.finish(&old));
        assert_eq!(t.position(&tp()), Some(5));
        assert!(t.finish(&new));
        assert_eq!(t.position(&tp()), Some(6));
    }

    #[test]
    fn redeliveries_and_unassigned_partitions_are_skipped() {
        let mut t = OffsetTracker::new();
        assert!(t.start(&tp(), 0).is_none());
        t.assign(tp());
        t.start(&tp(), 3).unwrap();
        assert!(t.start(&tp(), 3).is_none());
        assert!(t.start(&tp(), 2).is_none());
        assert_eq!(t.pending(&tp()), 1);
    }

    proptest! {
        /// Whatever the completion order, the committable position never passes an unfinished record,
        /// and once everything has finished it is one past the last record.
        #[test]
        fn never_commits_past_an_unfinished_record(
            gaps in proptest::collection::vec(1i64..4, 1..60),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 1..60),
        ) {
            let mut t = OffsetTracker::new();
            t.assign(tp());
            let mut offset = 0;
            let mut unfinished = Vec::new();
            for g in gaps {
                offset += g;
                unfinished.push(t.start(&tp(), offset).unwrap());
            }
            let last = offset;
            for idx in order {
                if unfinished.is_empty() { break; }
                let ticket = unfinished.remove(idx.index(unfinished.len()));
                prop_assert!(t.finish(&ticket));
                t.finish(&ticket); // twice: counted once
                prop_assert_eq!(t.unfinished(&tp()), unfinished.len());
                let pos = t.position(&tp()).unwrap();
                for u in &unfinished {
                    prop_assert!(pos <= u.offset, "position {} passed unfinished {}", pos, u.offset);
                }
                if let Some(min) = unfinished.iter().map(|u| u.offset).min() {
                    prop_assert_eq!(pos, min);
                }
            }
            for ticket in unfinished.drain(..) {
                t.finish(&ticket);
            }
            prop_assert_eq!(t.position(&tp()), Some(last + 1));
            prop_assert_eq!(t.pending(&tp()), 0);
        }
    }
}
