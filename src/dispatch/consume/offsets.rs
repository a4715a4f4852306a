//! Which offsets may be committed when records finish out of order. Pure: no Kafka here.
//!
//! Records of one partition run concurrently and finish in any order, but Kafka stores one position per
//! partition. Committing past a record that is still running would lose it on a crash, so the position
//! advances only over the contiguous prefix of finished records. Every assignment gets a new epoch so that a
//! record still finishing from an earlier assignment can never mark work of the current one done.

use std::collections::{HashMap, VecDeque};

use super::finished_ahead;
use crate::kafka::TopicPartition;

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
    /// Last commit handed out.
    committed: Option<Commit>,
    /// Records in `window` not finished yet (the rest finished behind one that has not).
    unfinished: usize,
    /// Offsets not reached yet that an earlier owner finished (from its last commit's metadata): skipped.
    skip: VecDeque<(i64, i64)>,
    /// The committed position `skip` was read with: reading that restarts below it (the log was cut and
    /// its offsets reused, or the topic recreated) makes `skip` meaningless, and it is dropped.
    skip_from: i64,
}

/// What an earlier owner finished beyond its committed position `from` (see [`finished_ahead`]).
#[derive(Debug, Clone, Default)]
pub struct Skip {
    pub from: i64,
    pub ranges: finished_ahead::Ranges,
}

impl Partition {
    fn position(&self) -> Option<i64> {
        self.window.front().map(|(o, _)| *o).or(self.next)
    }

    /// The commit of the current position, naming the offsets beyond it already finished.
    fn commit(&self) -> Option<Commit> {
        let mut offset = self.position()?;
        if self.window.is_empty() {
            // Nothing unfinished: the position moves past what an earlier owner finished right after it.
            for (start, end) in &self.skip {
                if *start != offset {
                    break;
                }
                offset = end + 1;
            }
        }
        let finished = self
            .window
            .iter()
            .filter(|(_, done)| *done)
            .map(|(o, _)| *o);
        let finished = finished_ahead::ranges_of(finished);
        let ahead = finished.into_iter().chain(self.skip.iter().copied());
        Some(Commit {
            offset,
            metadata: finished_ahead::encode(offset, ahead),
        })
    }

    fn pop_finished(&mut self) {
        while self.window.front().is_some_and(|(_, done)| *done) {
            self.window.pop_front();
        }
    }
}

/// A position to commit, and the offsets beyond it already finished (see [`finished_ahead`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Commit {
    pub offset: i64,
    pub metadata: String,
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
        self.assign_skipping(tp, Skip::default());
    }

    /// As [`OffsetTracker::assign`], with the offsets an earlier owner finished beyond its last commit.
    pub fn assign_skipping(&mut self, tp: TopicPartition, skip: Skip) {
        self.epochs += 1;
        self.partitions.insert(
            tp,
            Partition {
                epoch: self.epochs,
                skip: skip.ranges.into(),
                skip_from: skip.from,
                ..Default::default()
            },
        );
    }

    /// Stops tracking; returns the commit that is safe for it, if any record was seen.
    pub fn revoke(&mut self, tp: &TopicPartition) -> Option<Commit> {
        self.partitions.remove(tp).and_then(|p| p.commit())
    }

    pub fn is_assigned(&self, tp: &TopicPartition) -> bool {
        self.partitions.contains_key(tp)
    }

    pub fn assigned(&self) -> impl Iterator<Item = &TopicPartition> {
        self.partitions.keys()
    }

    /// Registers a record about to be processed. `None` means: not assigned here, an offset this
    /// assignment has already seen (a redelivery), or one an earlier owner finished — skip the record.
    pub fn start(&mut self, tp: &TopicPartition, offset: i64) -> Option<Ticket> {
        let p = self.partitions.get_mut(tp)?;
        if p.next.is_some_and(|n| offset < n) {
            return None;
        }
        if p.next.is_none() && offset < p.skip_from {
            p.skip.clear(); // not reading from the position the skips were committed with
        }
        while p.skip.front().is_some_and(|(_, end)| *end < offset) {
            p.skip.pop_front(); // passed over (compacted away, or transaction markers)
        }
        if let Some(range) = p.skip.front_mut().filter(|(start, _)| *start <= offset) {
            if range.1 == offset {
                p.skip.pop_front();
            } else {
                range.0 = offset + 1;
            }
            p.window.push_back((offset, true));
            p.next = Some(offset + 1);
            p.pop_finished();
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
        p.pop_finished();
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

    /// A commit failed: hand it out again on the next [`OffsetTracker::take_commits`].
    pub fn commit_failed(&mut self, tp: &TopicPartition, commit: &Commit) {
        if let Some(p) = self.partitions.get_mut(tp) {
            if p.committed.as_ref() == Some(commit) {
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

    /// Commits that changed since the last call (the position, or what is finished beyond it), marked as
    /// handed out.
    pub fn take_commits(&mut self) -> Vec<(TopicPartition, Commit)> {
        let mut out = Vec::new();
        for (tp, p) in &mut self.partitions {
            if let Some(commit) = p.commit() {
                if p.committed.as_ref() != Some(&commit) {
                    p.committed = Some(commit.clone());
                    out.push((tp.clone(), commit));
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

    fn at(offset: i64) -> Commit {
        Commit {
            offset,
            metadata: String::new(),
        }
    }

    #[test]
    fn a_commit_names_what_finished_beyond_it_and_the_next_owner_skips_that() {
        let mut t = OffsetTracker::new();
        t.assign(tp());
        let tickets: Vec<Ticket> = (10..16).map(|o| t.start(&tp(), o).unwrap()).collect();
        for i in [1, 2, 4] {
            t.finish(&tickets[i]); // 11, 12, 14 finish behind 10
        }
        let commits = t.take_commits();
        assert_eq!(
            commits[0].1,
            Commit {
                offset: 10,
                metadata: "hookrelay.done:1-2,4".into()
            }
        );
        t.finish(&tickets[5]);
        assert_eq!(
            t.take_commits()[0].1.metadata,
            "hookrelay.done:1-2,4-5",
            "more finished beyond the same position is committed again"
        );

        // The next owner reads from 10 and skips 11, 12, 14 and 15.
        let done = finished_ahead::decode(10, b"hookrelay.done:1-2,4-5");
        let mut next = OffsetTracker::new();
        next.assign_skipping(
            tp(),
            Skip {
                from: 10,
                ranges: done,
            },
        );
        let ten = next.start(&tp(), 10).expect("10 is redone");
        assert!(next.start(&tp(), 11).is_none() && next.start(&tp(), 12).is_none());
        let thirteen = next.start(&tp(), 13).expect("13 is redone");
        assert!(next.start(&tp(), 14).is_none());
        assert_eq!(
            next.take_commits()[0].1,
            Commit {
                offset: 10,
                metadata: "hookrelay.done:1-2,4-5".into()
            },
            "what is finished but not reached yet is carried on"
        );
        next.finish(&thirteen);
        next.finish(&ten);
        assert_eq!(next.position(&tp()), Some(15));
        assert!(next.start(&tp(), 15).is_none(), "15 as well");
        assert_eq!(next.position(&tp()), Some(16));
        assert_eq!(next.unfinished(&tp()), 0);
    }

    #[test]
    fn skips_are_dropped_when_reading_restarts_below_the_position_they_were_committed_with() {
        let mut t = OffsetTracker::new();
        let ranges = vec![(12, 13)];
        t.assign_skipping(tp(), Skip { from: 10, ranges });
        assert!(t.start(&tp(), 0).is_some(), "the log was reset below 10");
        for o in 1..14 {
            assert!(t.start(&tp(), o).is_some(), "{o} is a record of its own");
        }
    }

    #[test]
    fn with_nothing_unfinished_the_position_moves_past_skips_right_after_it() {
        let mut t = OffsetTracker::new();
        let ranges = vec![(11, 12), (14, 14)];
        t.assign_skipping(tp(), Skip { from: 10, ranges });
        let ten = t.start(&tp(), 10).unwrap();
        t.finish(&ten);
        assert_eq!(
            t.take_commits()[0].1,
            Commit {
                offset: 13,
                metadata: "hookrelay.done:1".into()
            }
        );
    }

    #[test]
    fn skipped_offsets_passed_over_are_forgotten() {
        let mut t = OffsetTracker::new();
        t.assign_skipping(
            tp(),
            Skip {
                from: 0,
                ranges: vec![(3, 3), (5, 5), (9, 9)],
            },
        );
        assert!(t.start(&tp(), 6).is_some(), "3 and 5 were compacted away");
        assert_eq!(
            t.take_commits()[0].1.metadata,
            "hookrelay.done:3",
            "only 9 is left (6 + 3)"
        );
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
        assert_eq!(t.take_commits(), vec![(tp(), at(14))]);
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
        assert_eq!(t.take_commits(), vec![(tp(), at(1))]);
        t.commit_failed(&tp(), &at(1));
        assert_eq!(
            t.take_commits(),
            vec![(tp(), at(1))],
            "retried although nothing moved"
        );
        t.commit_failed(&tp(), &at(0));
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
        assert_eq!(t.revoke(&tp()), Some(at(5)));
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
        /// Whatever finished, a successor assigned with the last commit (its metadata read back) redoes
        /// every unfinished record, and nothing finished unless the metadata had no room for it.
        #[test]
        fn a_successor_redoes_every_unfinished_record_and_only_those_that_fit(
            n in 1usize..400,
            done in proptest::collection::vec(any::<bool>(), 400),
        ) {
            let mut t = OffsetTracker::new();
            t.assign(tp());
            let tickets: Vec<Ticket> = (0..n as i64).map(|o| t.start(&tp(), 100 + o).unwrap()).collect();
            for (ticket, d) in tickets.iter().zip(&done) {
                if *d {
                    t.finish(ticket);
                }
            }
            let Some((_, commit)) = t.take_commits().pop() else { return Ok(()) };
            let ranges = finished_ahead::decode(commit.offset, commit.metadata.as_bytes());
            let mut next = OffsetTracker::new();
            next.assign_skipping(tp(), Skip { from: commit.offset, ranges });
            let mut redone_finished = 0;
            for o in commit.offset..100 + n as i64 {
                let finished = done[(o - 100) as usize];
                let redone = next.start(&tp(), o).is_some();
                prop_assert!(finished || redone, "unfinished {} skipped", o);
                redone_finished += usize::from(finished && redone);
            }
            if commit.metadata.len() < finished_ahead::MAX_METADATA - 20 {
                prop_assert_eq!(redone_finished, 0);
            }
        }

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
