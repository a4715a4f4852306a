//! Retry records that have been consumed but are not ready yet. Pure: time is an argument.
//!
//! A tier partition's records are mostly ready in offset order (each waits the tier's fixed delay from when
//! it was written), but not quite: a record due sooner than the tier's delay (a short backoff, a hop, a
//! requeued hold) can sit behind one that waits the whole delay. Handing records on strictly in offset order
//! would make it late by up to the tier's delay, so each is handed on as soon as it is ready, whatever waits
//! before it. To bound memory, a partition parks at most [`READ_AHEAD`] records and is paused beyond that.
//! Parked records hold their offsets uncommitted, so nothing is lost on a crash: they are simply consumed
//! again; what finished behind them is named in each commit (`consume::finished_ahead`) and not redone.

use std::collections::{BTreeMap, HashMap};

use super::Ticket;
use crate::kafka::{Record, TopicPartition};

/// Records one tier partition may have parked before it is paused (it resumes below half). Their bytes also
/// count against the partition's pending bytes.
pub const READ_AHEAD: usize = 256;

/// When a retry record read from a tier with `tier_delay_ms` may be handed on: once the tier's delay has
/// passed since it was written, or once it is due, whichever comes first (a record not due by then hops on
/// to a shorter tier).
pub fn ready_at(written_ms: i64, tier_delay_ms: i64, due_ms: i64) -> i64 {
    due_ms.min(written_ms.saturating_add(tier_delay_ms))
}

#[derive(Debug)]
pub struct Parked {
    pub record: Record,
    pub ticket: Ticket,
    /// UNIX milliseconds from which the record may be handed to the pipeline.
    pub ready_at_ms: i64,
}

/// Parked records per partition, by (ready time, offset).
#[derive(Debug, Default)]
pub struct Parking {
    queues: HashMap<TopicPartition, BTreeMap<(i64, i64), Parked>>,
}

impl Parking {
    /// Parks the record if it is not ready; gives it back otherwise, to be processed now.
    pub fn park_or_pass(&mut self, p: Parked, now_ms: i64) -> Option<Parked> {
        if p.ready_at_ms <= now_ms {
            return Some(p);
        }
        self.queues
            .entry(p.ticket.tp.clone())
            .or_default()
            .insert((p.ready_at_ms, p.ticket.offset), p);
        None
    }

    /// Takes every record that is ready: per partition, the earliest ready first.
    pub fn take_ready(&mut self, now_ms: i64) -> Vec<Parked> {
        let mut ready = Vec::new();
        for queue in self.queues.values_mut() {
            while let Some(entry) = queue.first_entry() {
                if entry.get().ready_at_ms > now_ms {
                    break;
                }
                ready.push(entry.remove());
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
        ready
    }

    /// Forgets a revoked partition's records (uncommitted, so its next owner reads them again).
    pub fn remove(&mut self, tp: &TopicPartition) -> Vec<Parked> {
        self.queues
            .remove(tp)
            .map_or_else(Vec::new, |q| q.into_values().collect())
    }

    /// When the record parked longest was written to its tier (UNIX ms), if any is parked.
    pub fn oldest_written_ms(&self) -> Option<i64> {
        self.queues
            .values()
            .flat_map(BTreeMap::values)
            .filter_map(|p| p.record.timestamp_ms)
            .min()
    }

    pub fn len(&self, tp: &TopicPartition) -> usize {
        self.queues.get(tp).map_or(0, BTreeMap::len)
    }

    pub fn total(&self) -> usize {
        self.queues.values().map(BTreeMap::len).sum()
    }

    /// Whether `tp` has read as far ahead as it may: its partition is to be paused.
    pub fn is_full(&self, tp: &TopicPartition) -> bool {
        self.len(tp) >= READ_AHEAD
    }

    /// Whether `tp` may read ahead again (below half the read-ahead, so pauses do not flap).
    pub fn has_room(&self, tp: &TopicPartition) -> bool {
        self.len(tp) < READ_AHEAD / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parked(offset: i64, ready_at_ms: i64) -> Parked {
        let tp = TopicPartition::new("webhook-retries-1m", 0);
        Parked {
            record: Record {
                tp: tp.clone(),
                offset,
                key: None,
                payload: vec![],
                headers: vec![],
                timestamp_ms: None,
                header_error: None,
            },
            ticket: Ticket {
                tp,
                epoch: 1,
                offset,
            },
            ready_at_ms,
        }
    }

    #[test]
    fn a_record_is_ready_after_its_tier_delay_or_when_due_if_sooner() {
        assert_eq!(ready_at(1_000, 60_000, 500_000), 61_000);
        assert_eq!(ready_at(1_000, 60_000, 20_000), 20_000);
    }

    #[test]
    fn each_record_is_handed_on_when_it_is_ready_whatever_waits_before_it() {
        let mut p = Parking::default();
        assert!(p.park_or_pass(parked(0, 100), 100).is_some(), "ready");
        assert!(p.park_or_pass(parked(1, 500), 100).is_none(), "not ready");
        assert!(
            p.park_or_pass(parked(2, 50), 100).is_some(),
            "ready, though a record before it waits"
        );
        assert!(p.park_or_pass(parked(3, 300), 100).is_none());
        assert!(p.park_or_pass(parked(4, 300), 100).is_none());
        assert!(p.take_ready(299).is_empty());
        let out: Vec<i64> = p.take_ready(300).iter().map(|x| x.ticket.offset).collect();
        assert_eq!(
            out,
            vec![3, 4],
            "before the record ahead of them, in offset order"
        );
        assert_eq!(p.len(&parked(0, 0).ticket.tp), 1);
        let out: Vec<i64> = p.take_ready(500).iter().map(|x| x.ticket.offset).collect();
        assert_eq!(out, vec![1]);
        assert_eq!(p.total(), 0);
    }

    #[test]
    fn a_partition_reads_ahead_up_to_the_limit_and_again_below_half_of_it() {
        let mut p = Parking::default();
        let tp = parked(0, 0).ticket.tp;
        for offset in 0..READ_AHEAD as i64 - 1 {
            assert!(p.park_or_pass(parked(offset, 1_000 + offset), 0).is_none());
        }
        assert!(!p.is_full(&tp));
        assert!(p
            .park_or_pass(parked(READ_AHEAD as i64, 5_000), 0)
            .is_none());
        assert!(p.is_full(&tp) && !p.has_room(&tp));
        let half = (READ_AHEAD / 2) as i64;
        assert_eq!(p.take_ready(1_000 + half - 1).len(), half as usize);
        assert!(!p.has_room(&tp), "exactly half left");
        assert_eq!(p.take_ready(1_000 + half).len(), 1);
        assert!(p.has_room(&tp));
    }
}
