//! Retry records that have been consumed but are not ready yet. Pure: time is an argument.
//!
//! A tier partition's records become ready in offset order (each waits the tier's fixed delay from when it
//! was written, or less if it is due sooner), so while the head is not ready the whole partition is paused
//! and its records wait here, in order, holding their offsets uncommitted. Nothing is lost on a crash:
//! parked records are simply consumed again.

use std::collections::{HashMap, VecDeque};

use super::{Record, Ticket, TopicPartition};

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

#[derive(Debug, Default)]
pub struct Parking {
    queues: HashMap<TopicPartition, VecDeque<Parked>>,
}

impl Parking {
    /// Parks the record if its partition already has parked records or it is not ready; gives it back
    /// otherwise, to be processed now.
    pub fn park_or_pass(&mut self, p: Parked, now_ms: i64) -> Option<Parked> {
        let queue = self.queues.get(&p.ticket.tp);
        if queue.is_none_or(VecDeque::is_empty) && p.ready_at_ms <= now_ms {
            return Some(p);
        }
        self.queues
            .entry(p.ticket.tp.clone())
            .or_default()
            .push_back(p);
        None
    }

    /// Takes every record that is ready, in order per partition.
    pub fn take_ready(&mut self, now_ms: i64) -> Vec<Parked> {
        let mut ready = Vec::new();
        for queue in self.queues.values_mut() {
            while queue.front().is_some_and(|p| p.ready_at_ms <= now_ms) {
                ready.extend(queue.pop_front());
            }
        }
        self.queues.retain(|_, q| !q.is_empty());
        ready
    }

    /// Forgets a revoked partition's records (uncommitted, so its next owner reads them again).
    pub fn remove(&mut self, tp: &TopicPartition) -> usize {
        self.queues.remove(tp).map_or(0, |q| q.len())
    }

    pub fn len(&self, tp: &TopicPartition) -> usize {
        self.queues.get(tp).map_or(0, VecDeque::len)
    }

    pub fn total(&self) -> usize {
        self.queues.values().map(VecDeque::len).sum()
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
    fn ready_records_pass_unless_others_wait_before_them() {
        let mut p = Parking::default();
        assert!(
            p.park_or_pass(parked(0, 100), 100).is_some(),
            "ready and nothing ahead"
        );
        assert!(p.park_or_pass(parked(1, 500), 100).is_none(), "not ready");
        assert!(
            p.park_or_pass(parked(2, 50), 100).is_none(),
            "ready, but behind a waiting record"
        );
        assert!(p.take_ready(499).is_empty());
        let out: Vec<i64> = p.take_ready(500).iter().map(|x| x.ticket.offset).collect();
        assert_eq!(out, vec![1, 2], "in offset order");
        assert_eq!(p.total(), 0);
    }
}
