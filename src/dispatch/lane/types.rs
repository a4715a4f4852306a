//! What the lanes are asked and answer: plain data, shared by the lane core ([`super`]), its upkeep and
//! delivery.

use std::time::Duration;

pub use super::health::{HostHealthConfig, Transition};
pub use super::rate::{Booking, HoldReason, RateLimits, RateRules};
pub use super::slots::QueueLimits;
pub use super::spill::{Episode, Snapshot, SpillReason, MAX_SPILL_DELAY};
pub use super::waits::Settle;
pub use crate::clock::Now;

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

/// What a lane answers a send that asks to go, and what a queued send is woken with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// A request slot is the send's: tell the lane the answer with [`super::Lanes::answer`].
    Go,
    /// Wait this long in the process, then ask again with `held` set: [`super::Lanes::with_slot`] if
    /// `slot` (the send holds its request slot meanwhile), else [`super::Lanes::ask`]. A rate slot is
    /// booked for it; call [`super::Lanes::hold_over`] when the wait ends, however it ends.
    Hold {
        wait: Duration,
        reason: HoldReason,
        slot: bool,
    },
    /// Wait in the lane's queue under this ticket until woken ([`Woken`]) with one of the other answers,
    /// decided when its slot came free; `release`: without the consumer admission slot (else keep it, and
    /// ask [`super::Lanes::settle`] now and then).
    Queued { ticket: u64, release: bool },
    /// To a retry tier without an attempt, back this much later (a slot the send held is given back).
    Requeue {
        after: Duration,
        reason: RequeueReason,
    },
    /// The host is paused as unhealthy for this workspace: a simulated 598, no request (a slot the send
    /// held is given back).
    Unhealthy { until_ms: i64 },
}

/// A queued send's answer, decided by the lane when a slot came free for it (or it was spilled): the
/// pause and the pace are checked then, so the send goes on without asking again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Woken {
    pub ticket: u64,
    /// Never [`Ask::Queued`]; [`Ask::Go`] and [`Ask::Hold`] (with `slot`) hand the send a request slot.
    pub ask: Ask,
    pub key: HostKey,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    Health {
        key: HostKey,
        transition: Transition,
        paused_hosts: usize,
    },
    /// Idle hosts were swept: the paused-hosts gauge is refreshed.
    PausedHosts(usize),
    /// A `Retry-After` hold on `key` was set or lengthened until this UNIX millisecond.
    RetryAfterHold { key: HostKey, until_ms: i64 },
}

/// How the lanes are set up.
#[derive(Debug, Clone)]
pub struct LaneSettings {
    pub health: HostHealthConfig,
    pub rules: RateRules,
    pub rate: RateLimits,
    pub slots: QueueLimits,
}
