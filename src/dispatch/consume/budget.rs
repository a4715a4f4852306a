//! `dispatch.memory_budget`: what the consumer may hold before it slows down. Pure: the consumer thread
//! tells it what it takes and what finishes, and asks it how fast to take records.
//!
//! What counts: every record taken and not finished (`Record::cost`: its bytes and a fixed share for its
//! copy and bookkeeping), and [`STARTED_SEND_COST`] for every record handed to the pipeline, started or
//! not. Once the budget is reached the consumer thread takes **one record per
//! [`SLOW_POLL`](super::SLOW_POLL) at most** (20 a second) instead of polling freely, until what is held
//! falls a sixteenth below the budget. Nothing is paused: pausing would make librdkafka drop its prefetch
//! and fetch it again on resume, and rebalances must still be served. So the budget bounds what is held to
//! itself plus a trickle, not to a hard ceiling.

/// What a record handed to the pipeline costs against the budget beyond its own cost, started or not: once
/// started, the handler's future, the built request and the pipeline's bookkeeping (about 13 KB per request
/// in flight, measured in BENCHMARKS.md). The HTTP client's own share (its connection and buffers) is not
/// counted.
pub const STARTED_SEND_COST: usize = 12 * 1024;

/// The budget crossed a mark: logged once per episode and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Crossing {
    /// What is held reached the budget: records are now taken slowly.
    Reached { used: usize },
    /// What is held fell a sixteenth below the budget: records are taken at full speed again.
    Room { used: usize },
}

#[derive(Debug, Clone, Default)]
pub struct MemoryBudget {
    limit: usize,
    /// What every unfinished record costs.
    held: usize,
    /// The budget is used up: records are taken slowly.
    over: bool,
}

impl MemoryBudget {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            held: 0,
            over: false,
        }
    }

    /// A record costing `cost` was taken, with `handed_over` records handed to the pipeline and not done:
    /// `Reached` if that used the budget up.
    pub fn hold(&mut self, cost: usize, handed_over: usize) -> Option<Crossing> {
        self.held = self.held.saturating_add(cost);
        self.check(handed_over)
    }

    /// A record costing `cost` is done with.
    pub fn release(&mut self, cost: usize) {
        self.held = self.held.saturating_sub(cost);
    }

    /// What counts now, with `handed_over` records handed to the pipeline and not done.
    pub fn used(&self, handed_over: usize) -> usize {
        self.held
            .saturating_add(handed_over.saturating_mul(STARTED_SEND_COST))
    }

    /// Whether records are to be taken slowly.
    pub fn is_over(&self) -> bool {
        self.over
    }

    /// Where records are taken: `Reached` once what is held reaches the budget.
    pub fn check(&mut self, handed_over: usize) -> Option<Crossing> {
        let used = self.used(handed_over);
        if self.over || used < self.limit {
            return None;
        }
        self.over = true;
        Some(Crossing::Reached { used })
    }

    /// Where records finish: `Room` once what is held is a sixteenth below the budget, so that a budget met
    /// over and over is logged and counted once per episode, not once per finished send.
    pub fn recheck(&mut self, handed_over: usize) -> Option<Crossing> {
        let used = self.used(handed_over);
        if !self.over || used >= self.limit / 16 * 15 {
            return None;
        }
        self.over = false;
        Some(Crossing::Room { used })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_held_records_and_each_record_handed_to_the_pipeline() {
        let mut b = MemoryBudget::new(1 << 30);
        b.hold(1_000, 0);
        assert_eq!(b.used(0), 1_000);
        assert_eq!(b.used(3), 1_000 + 3 * STARTED_SEND_COST);
        b.release(400);
        assert_eq!(b.used(0), 600);
        b.release(10_000);
        assert_eq!(b.used(0), 0, "never below nothing");
    }

    #[test]
    fn reaching_the_budget_is_reported_once_and_room_only_a_sixteenth_below_it() {
        let mut b = MemoryBudget::new(16_000);
        assert_eq!(b.hold(15_999, 0), None);
        assert_eq!(b.hold(1, 0), Some(Crossing::Reached { used: 16_000 }));
        assert!(b.is_over());
        assert_eq!(b.hold(5_000, 0), None, "once per episode");
        b.release(5_000 + 1_000);
        assert_eq!(b.recheck(0), None, "15,000 is not below 15,000");
        b.release(1);
        assert_eq!(b.recheck(0), Some(Crossing::Room { used: 14_999 }));
        assert!(!b.is_over());
        assert_eq!(b.recheck(0), None);
    }

    #[test]
    fn sends_handed_over_alone_can_reach_the_budget() {
        let mut b = MemoryBudget::new(100 * STARTED_SEND_COST);
        assert_eq!(b.check(99), None);
        assert!(matches!(b.check(100), Some(Crossing::Reached { .. })));
        assert!(matches!(b.recheck(50), Some(Crossing::Room { .. })));
    }
}
