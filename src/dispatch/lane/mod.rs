//! One lane per host: the one place that decides *when* a send to a host may go. Pure: every call takes
//! the clock reading it decides at ([`Now`]), so the whole schedule is unit- and property-tested without
//! sleeping; the async side that parks tasks on these decisions is [`super::delivery`].
//!
//! Asked for a send, [`Lanes::ask`] answers once, in this order:
//! 1. the host is paused as unhealthy for the send's workspace ([`health`], Braze's rule): **simulate 598**;
//! 2. a `Retry-After` hold or the host's rate limit ([`rate`]) asks it to wait: a short wait is **held** in
//!    the process (a rate slot booked), a longer one **requeued** to a retry tier with its reason;
//! 3. a request slot ([`slots`]: the host's cap, its fair share of `max_in_flight`, slow start): **go** with
//!    it, or wait **queued** in the lane until woken; a slow host's full queue **requeues** the send
//!    ([`spill`]), due when the host could take it. A send woken with a slot asks again
//!    ([`Lanes::with_slot`]): the pause and the pace are checked at the time it can really start. So a
//!    rate-limited host at its cap books a second rate slot for a send that queued (the first one is
//!    lost: the cap, not the rate, is what holds that host back then), and a send that must wait for it
//!    keeps its request slot meanwhile, at most `dispatch.max_hold`.
//!
//! After the request, [`Lanes::answer`] tells the lane what the host said, in one step: the unhealthy-host
//! count, a `Retry-After` hold, and the slot given to whoever should have it next.

mod health;
mod rate;
mod slots;
mod spill;
mod waits;

use std::time::Duration;

pub use crate::clock::Now;
pub use health::{HostHealthConfig, Transition};
pub use rate::{HoldReason, RateLimits, RateRules};
pub use slots::QueueLimits;
pub use spill::{Episode, Snapshot, SpillReason, MAX_SPILL_DELAY};
pub use waits::Settle;

use health::HostHealth;
use rate::{Pace, Rates};
use slots::{Slots, Take};
pub use slots::{Wake, Wakeup};

/// A host, and the workspace sending to it: the unhealthy-host pause and `Retry-After` holds are per pair
/// (Braze's rule), rate limits and slots per host.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostKey {
    pub host: String,
    pub workspace: String,
}

/// Why a send went back to a retry tier without an attempt; a metric label, and the dead letter's reason
/// when the tier refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequeueReason {
    /// The host's `[rate_limits]` rule would have it wait longer than `dispatch.max_hold`, or too many wait.
    RateLimit,
    /// The host answered `Retry-After` for this workspace, for longer than can be waited out here.
    RetryAfter,
    /// The slow host's queue was full (`dispatch.max_queued_per_host`).
    QueueFull,
    /// It waited in the slow host's queue for `dispatch.max_queue_wait`.
    QueueWait,
    /// The dispatcher is stopping and the send was waiting for a slow host.
    Stopping,
}

impl RequeueReason {
    pub const ALL: [RequeueReason; 5] = [
        RequeueReason::RateLimit,
        RequeueReason::RetryAfter,
        RequeueReason::QueueFull,
        RequeueReason::QueueWait,
        RequeueReason::Stopping,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RequeueReason::RateLimit => "rate_limit",
            RequeueReason::RetryAfter => "retry_after",
            RequeueReason::QueueFull => "queue_full",
            RequeueReason::QueueWait => "queue_wait",
            RequeueReason::Stopping => "stopping",
        }
    }

    /// Whether the lane spilled it (its host is slow), rather than held it back by a rule or an answer.
    pub fn is_spill(self) -> bool {
        matches!(
            self,
            RequeueReason::QueueFull | RequeueReason::QueueWait | RequeueReason::Stopping
        )
    }

    /// What happened, in words.
    pub fn describe(self) -> &'static str {
        match self {
            RequeueReason::RateLimit => "held back by its host's rate limit",
            RequeueReason::RetryAfter => "held back by its host's Retry-After",
            RequeueReason::QueueFull => "spilled: its slow host's queue was full",
            RequeueReason::QueueWait => {
                "spilled: it waited dispatch.max_queue_wait for its slow host"
            }
            RequeueReason::Stopping => {
                "spilled: the dispatcher stopped while it waited for its slow host"
            }
        }
    }
}

impl From<HoldReason> for RequeueReason {
    fn from(r: HoldReason) -> Self {
        match r {
            HoldReason::RateLimit => RequeueReason::RateLimit,
            HoldReason::RetryAfter => RequeueReason::RetryAfter,
        }
    }
}

impl From<SpillReason> for RequeueReason {
    fn from(r: SpillReason) -> Self {
        match r {
            SpillReason::QueueFull => RequeueReason::QueueFull,
            SpillReason::QueueWait => RequeueReason::QueueWait,
            SpillReason::Stopping => RequeueReason::Stopping,
        }
    }
}

/// What a lane answers a send that asks to go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// A request slot is the send's: tell the lane the answer with [`Lanes::answer`].
    Go,
    /// Wait this long in the process, then ask again with `held` set: [`Lanes::with_slot`] if `slot` (the
    /// send holds its request slot meanwhile), else [`Lanes::ask`]. A rate slot is booked for it; call
    /// [`Lanes::hold_over`] when the wait ends, however it ends.
    Hold {
        wait: Duration,
        reason: HoldReason,
        slot: bool,
    },
    /// Wait in the lane's queue under this ticket for a [`Wake`]; `release`: without the consumer
    /// admission slot (else keep it, and ask [`Lanes::settle`] now and then). Woken with a slot, ask
    /// [`Lanes::with_slot`].
    Queued { ticket: u64, release: bool },
    /// To a retry tier without an attempt, back this much later.
    Requeue {
        after: Duration,
        reason: RequeueReason,
    },
    /// The host is paused as unhealthy for this workspace: a simulated 598, no request.
    Unhealthy { until_ms: i64 },
}

/// What the host said to a request, for its lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The status, when there was a response.
    pub status: Option<u16>,
    /// `Retry-After`, as a duration from now, when the response had one.
    pub retry_after: Option<Duration>,
    /// How long the request held its slot.
    pub took: Duration,
}

/// Something that changed for a host, for the logs and gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    Health {
        transition: Transition,
        paused_hosts: usize,
    },
    /// Idle hosts were swept: the paused-hosts gauge is refreshed.
    PausedHosts(usize),
    /// A `Retry-After` hold was set or lengthened until this UNIX millisecond.
    RetryAfterHold { until_ms: i64 },
}

/// How the lanes are set up.
#[derive(Debug, Clone)]
pub struct LaneSettings {
    pub health: HostHealthConfig,
    pub rules: RateRules,
    pub rate: RateLimits,
    pub slots: QueueLimits,
}

/// Every host's lane.
#[derive(Debug)]
pub struct Lanes {
    health: HostHealth,
    rates: Rates,
    slots: Slots,
    /// Sends woken by slots given back inside the lanes, until the caller takes them.
    woken: Vec<Wakeup>,
}

impl Lanes {
    pub fn new(settings: LaneSettings) -> Self {
        Self {
            health: HostHealth::new(settings.health),
            rates: Rates::new(settings.rules, settings.rate),
            slots: Slots::new(settings.slots),
            woken: Vec::new(),
        }
    }

    /// A send to `key` asks to go. `held`: it has waited out a [`Ask::Hold`] (its rate slot is booked, so
    /// only a `Retry-After` that came meanwhile holds it again).
    pub fn ask(&mut self, key: &HostKey, now: Now, held: bool, notes: &mut Vec<Note>) -> Ask {
        if let Err(until_ms) = self.gate(key, now, notes) {
            return Ask::Unhealthy { until_ms };
        }
        let pace = self.pace(key, now, held);
        match pace {
            Pace::Go => {}
            Pace::Wait { wait, reason } => {
                return Ask::Hold {
                    wait,
                    reason,
                    slot: false,
                }
            }
            Pace::Requeue { after, reason } => {
                return Ask::Requeue {
                    after,
                    reason: reason.into(),
                }
            }
        }
        match self.slots.take(&key.host, now.mono) {
            Take::Go => Ask::Go,
            Take::Queued { ticket, release } => Ask::Queued { ticket, release },
            Take::Spill { after, reason } => Ask::Requeue {
                after,
                reason: reason.into(),
            },
        }
    }

    /// A held send's wait has ended (or it was dropped while waiting): its place among the waiting is free.
    pub fn hold_over(&mut self, host: &str) {
        self.rates.woke(host);
    }

    /// A send that holds a slot — woken with one from its lane's queue, or held with it — asks to go. The
    /// pause is checked again (a queued send must not reach a host paused while it waited), and so is the
    /// pace: a send woken from the queue books its rate slot now, when it can actually start, so sends
    /// released together by the slots still start at the host's rate. `held`: it has waited out a hold
    /// with its slot. A requeue or a pause gives the slot back (wakes in [`Lanes::wakes`]).
    pub fn with_slot(&mut self, key: &HostKey, now: Now, held: bool, notes: &mut Vec<Note>) -> Ask {
        if let Err(until_ms) = self.gate(key, now, notes) {
            self.give_back(&key.host, now);
            return Ask::Unhealthy { until_ms };
        }
        let pace = self.pace(key, now, held);
        match pace {
            Pace::Go => Ask::Go,
            Pace::Wait { wait, reason } => Ask::Hold {
                wait,
                reason,
                slot: true,
            },
            Pace::Requeue { after, reason } => {
                self.give_back(&key.host, now);
                Ask::Requeue {
                    after,
                    reason: reason.into(),
                }
            }
        }
    }

    /// Sends woken by slots given back inside the lanes ([`Lanes::with_slot`]), for the caller to wake.
    pub fn wakes(&mut self) -> Vec<Wakeup> {
        std::mem::take(&mut self.woken)
    }

    /// A slot handed to a send that will not use it (a pause or a requeue found after it was woken, or its
    /// task dropped) goes back without counting as an answer of the host's; wakes in [`Lanes::wakes`].
    pub fn give_back(&mut self, host: &str, now: Now) {
        let wakes = self.slots.release(host, Duration::ZERO, now.mono);
        self.woken.extend(wakes);
    }

    /// The request of a send that had a slot has ended (`answer.status` is `None` when there was no
    /// response, or no request): the host's health and `Retry-After` are noted before its slot goes to
    /// whoever should have it next, so a send woken with it sees a pause this answer began.
    pub fn answer(
        &mut self,
        key: &HostKey,
        answer: Answer,
        now: Now,
        notes: &mut Vec<Note>,
    ) -> Vec<Wakeup> {
        if let Some(status) = answer.status {
            if let Some(transition) = self.health.record(key, status, now.wall_ms) {
                let paused_hosts = self.health.paused_hosts(now.wall_ms);
                notes.push(Note::Health {
                    transition,
                    paused_hosts,
                });
            }
            if self.health.take_swept() {
                notes.push(Note::PausedHosts(self.health.paused_hosts(now.wall_ms)));
            }
            if let (429 | 503, Some(after)) = (status, answer.retry_after) {
                if let Some(until) = self.rates.hold(key, now.mono, after) {
                    let ahead = i64::try_from(until.saturating_sub(now.mono).as_millis())
                        .unwrap_or(i64::MAX);
                    notes.push(Note::RetryAfterHold {
                        until_ms: now.wall_ms.saturating_add(ahead),
                    });
                }
            }
        }
        self.slots.release(&key.host, answer.took, now.mono)
    }

    /// A queued send gave up waiting (its task was dropped). `false` if it had already been woken.
    pub fn cancel(&mut self, host: &str, ticket: u64, now: Now) -> bool {
        self.slots.cancel(host, ticket, now.mono)
    }

    /// A waiter keeping its admission slot asks again whether it may give it back.
    pub fn settle(&mut self, host: &str, ticket: u64, now: Now) -> Settle {
        self.slots.settle(host, ticket, now.mono)
    }

    /// Spills what waited too long, notes saturation episodes, hands out slots; a few times a second.
    pub fn tick(&mut self, now: Now) -> (Vec<Wakeup>, Vec<Episode>) {
        self.slots.tick(now.mono)
    }

    /// The dispatcher stops: what waits for slow hosts is spilled, and so is what comes for them later.
    pub fn drain(&mut self, now: Now) -> Vec<Wakeup> {
        self.slots.drain(now.mono)
    }

    /// What the metrics show of the queues: the `top` saturated hosts by queue.
    pub fn snapshot(&self, now: Now, top: usize) -> Snapshot {
        self.slots.snapshot(now.mono, top)
    }

    /// Requests in flight to `host`.
    pub fn in_flight(&self, host: &str) -> usize {
        self.slots.in_flight(host)
    }

    /// Requests in flight to every host.
    pub fn in_use(&self) -> usize {
        self.slots.in_use()
    }

    /// The rate limit and `Retry-After` step. A send that waited out its hold has its rate slot booked: only
    /// a `Retry-After` that came meanwhile holds it again.
    fn pace(&mut self, key: &HostKey, now: Now, held: bool) -> Pace {
        if held && self.rates.held_until(key, now.mono).is_none() {
            Pace::Go
        } else {
            self.rates.admit(key, now.mono)
        }
    }

    /// `Err(until)` while `key` is paused; pause transitions go to `notes`.
    fn gate(&mut self, key: &HostKey, now: Now, notes: &mut Vec<Note>) -> Result<(), i64> {
        let (state, transition) = self.health.check(key, now.wall_ms);
        if let Some(transition) = transition {
            let paused_hosts = self.health.paused_hosts(now.wall_ms);
            notes.push(Note::Health {
                transition,
                paused_hosts,
            });
        }
        state
    }
}

#[cfg(test)]
#[path = "lane_tests.rs"]
mod tests;
