//! Delivering one attempt: ask the send's [lane](super::lane), send the request, tell the lane the answer
//! ([`Delivery::deliver`]). What the answer means is decided by the [plan](super::plan).
//!
//! The lanes live behind one lock here, with the tasks parked on their decisions: a send asks its lane
//! and gets a slot, a requeue with its reason, or a simulated 598. While it waits — held by a rate limit or
//! `Retry-After`, or queued behind its busy host — it gives back its consumer admission slot (see
//! [`Admission`]), and goes on without it once woken, so waiting for one host never holds the capacity
//! other hosts' records need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

mod guards;
mod ticker;

use guards::{Holding, Queued, SlotGuard};

use super::classify::{Attempt, FailureSource};
use super::http::Executor;
use super::lane::{Answer, Ask, HostKey, Lanes, RequeueReason, Settle, SpillReason, Wake, Wakeup};
use super::retry::parse_retry_after;
use crate::clock::{rfc3339, Clock, Now};
use crate::dispatch::consume::Admission;
use crate::events::ValidSend;
use crate::telemetry::DispatchMetrics;

/// How often a send waiting with its admission slot asks whether its host has turned slow.
const SETTLE_EVERY: Duration = Duration::from_millis(200);

/// How many hosts the metrics name, longest queue first.
pub const TOP_HOSTS: usize = 5;

pub struct Delivery {
    inner: Mutex<Inner>,
    executor: Executor,
    clock: Clock,
    metrics: DispatchMetrics,
}

/// What became of a send handed to delivery.
#[derive(Debug)]
pub enum Delivered {
    /// What happened on the wire (or instead of it: a 598 for a paused host), and how long it took.
    Attempted(Attempt, Duration),
    /// Its lane sent it back to a retry tier without an attempt, due at this UNIX ms.
    Requeue { due_ms: i64, reason: RequeueReason },
}

struct Inner {
    lanes: Lanes,
    waiting: HashMap<u64, oneshot::Sender<Wake>>,
    /// Hosts named in the top-hosts gauge now, to take their series away once they leave it.
    named: Vec<Arc<str>>,
}

/// What a send's lane decided.
enum Decision<'a> {
    /// Go: the slot is given back, with the host's answer, by `SlotGuard::answer` (or when dropped).
    Go(SlotGuard<'a>),
    /// To a retry tier without an attempt, due at this UNIX ms.
    Requeue { due_ms: i64, reason: RequeueReason },
    /// The host is paused as unhealthy for this workspace until this UNIX ms: a simulated 598.
    Unhealthy { until_ms: i64 },
}

fn due(now: Now, after: Duration) -> i64 {
    now.wall_ms
        .saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX))
}

impl Inner {
    fn wake(&mut self, wakes: Vec<Wakeup>) {
        for w in wakes {
            if let Some(tx) = self.waiting.remove(&w.ticket) {
                // A receiver gone means its task is being dropped; its guard's drop settles the slot.
                let _ = tx.send(w.wake);
            }
        }
    }
}

impl Delivery {
    pub fn new(lanes: Lanes, executor: Executor, clock: Clock, metrics: DispatchMetrics) -> Self {
        Self {
            inner: Mutex::new(Inner {
                lanes,
                waiting: HashMap::new(),
                named: Vec::new(),
            }),
            executor,
            clock,
            metrics,
        }
    }

    /// Asks the lane, sends, tells the lane the answer. While the send waits (held or queued) it gives
    /// back its consumer admission slot.
    pub async fn deliver(
        &self,
        host: &HostKey,
        send: &ValidSend,
        admission: &mut Admission,
    ) -> Delivered {
        let slot = match self.ask(host, admission).await {
            Decision::Go(slot) => slot,
            Decision::Requeue { due_ms, reason } => return Delivered::Requeue { due_ms, reason },
            Decision::Unhealthy { until_ms } => return paused(until_ms),
        };
        self.metrics.in_flight.inc();
        let (attempt, duration) = self.executor.execute(send).await;
        self.metrics.in_flight.dec();
        self.metrics
            .request_duration
            .observe(duration.as_secs_f64());
        match &attempt {
            Attempt::Response {
                status,
                retry_after,
                ..
            } => {
                let after = retry_after
                    .as_deref()
                    .and_then(|v| parse_retry_after(v, self.clock.wall_ms()));
                slot.answer(Some(*status), after);
            }
            Attempt::NoResponse { .. } => slot.answer(None, None),
        }
        Delivered::Attempted(attempt, duration)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks `key`'s lane whether a send may go, waiting (without the admission slot) as long as it says.
    async fn ask<'a>(&'a self, key: &'a HostKey, admission: &mut Admission) -> Decision<'a> {
        let mut held = false;
        // The request slot, once the send has one and asks again with it.
        let mut slot: Option<SlotGuard<'a>> = None;
        let mut notes = Vec::new();
        // The reading a send woken with a slot was woken at, for its next ask.
        let mut woke: Option<Now> = None;
        loop {
            let now = woke.take().unwrap_or_else(|| self.clock.now());
            let (ask, rx) = self.decide(key, now, slot.is_some(), held, &mut notes);
            self.notes(key, &mut notes);
            held = false;
            match ask {
                Ask::Go => {
                    // The request's time with its slot starts now, not when a hold with it began: the lane
                    // measures how long the host holds its slots.
                    let mut slot = slot.unwrap_or_else(|| self.slot(key, now));
                    slot.since = now.mono;
                    return Decision::Go(slot);
                }
                Ask::Unhealthy { until_ms } => {
                    // The lane took back a slot the send held.
                    if let Some(s) = slot {
                        s.forget();
                    }
                    return Decision::Unhealthy { until_ms };
                }
                Ask::Requeue { after, reason } => {
                    if let Some(s) = slot {
                        s.forget();
                    }
                    return Decision::Requeue {
                        due_ms: due(now, after),
                        reason,
                    };
                }
                Ask::Hold {
                    wait,
                    reason,
                    slot: with_slot,
                } => {
                    if with_slot && slot.is_none() {
                        slot = Some(self.slot(key, now));
                    }
                    let _place = Holding {
                        delivery: self,
                        host: &key.host,
                    };
                    self.metrics.held(reason.as_str(), wait);
                    admission.outside(tokio::time::sleep(wait)).await;
                    held = true;
                }
                Ask::Queued { ticket, release } => {
                    let queued = Queued {
                        delivery: self,
                        host: &key.host,
                        ticket,
                        rx: rx.expect("made for a queued send"),
                        woke: false,
                    };
                    match self.queued(queued, release, admission).await {
                        Wake::Go => {
                            let now = self.clock.now();
                            slot = Some(self.slot(key, now));
                            woke = Some(now);
                        }
                        Wake::Spill { after, reason } => {
                            return Decision::Requeue {
                                due_ms: due(self.clock.now(), after),
                                reason: reason.into(),
                            }
                        }
                    }
                }
            }
        }
    }

    /// One question to the lane, under the lock: with the slot the send holds, or without one. A queued
    /// send gets the receiver of its wake.
    fn decide(
        &self,
        key: &HostKey,
        now: Now,
        with_slot: bool,
        held: bool,
        notes: &mut Vec<super::lane::Note>,
    ) -> (Ask, Option<oneshot::Receiver<Wake>>) {
        let mut inner = self.lock();
        let ask = if with_slot {
            inner.lanes.with_slot(key, now, held, notes)
        } else {
            inner.lanes.ask(key, now, held, notes)
        };
        let wakes = inner.lanes.wakes();
        inner.wake(wakes);
        let rx = match ask {
            Ask::Queued { ticket, .. } => {
                let (tx, rx) = oneshot::channel();
                inner.waiting.insert(ticket, tx);
                Some(rx)
            }
            _ => None,
        };
        (ask, rx)
    }

    fn slot<'a>(&'a self, key: &'a HostKey, now: Now) -> SlotGuard<'a> {
        SlotGuard {
            delivery: self,
            key,
            since: now.mono,
            answered: false,
        }
    }

    /// Waits in the lane's queue for a slot. A send given back its admission slot goes on without it: one
    /// that holds a request slot must not wait for an admission slot held by sends waiting for request
    /// slots. What runs on this way is bounded all the same: by the slots, and by the queues it waited in.
    async fn queued(
        &self,
        mut queued: Queued<'_>,
        release: bool,
        admission: &mut Admission,
    ) -> Wake {
        let wake = if release {
            admission.release();
            (&mut queued.rx).await
        } else {
            self.wait_keeping_admission(&mut queued, admission).await
        };
        // Settled here: a slot it was woken with passes to the caller's guard at once.
        queued.woke = true;
        wake.unwrap_or(Wake::Spill {
            after: Duration::from_secs(1),
            reason: SpillReason::QueueWait,
        })
    }

    /// A send that waits keeping its admission slot (the dispatcher's own capacity is what it waits for)
    /// asks again now and then, and gives the slot back once it may.
    async fn wait_keeping_admission(
        &self,
        queued: &mut Queued<'_>,
        admission: &mut Admission,
    ) -> Result<Wake, oneshot::error::RecvError> {
        loop {
            match tokio::time::timeout(SETTLE_EVERY, &mut queued.rx).await {
                Ok(wake) => return wake,
                Err(_) => {
                    let now = self.clock.now();
                    let settle = self.lock().lanes.settle(queued.host, queued.ticket, now);
                    match settle {
                        Settle::Wait => {}
                        Settle::Release => {
                            admission.release();
                            return (&mut queued.rx).await;
                        }
                        Settle::Spill { after, reason } => {
                            self.lock().waiting.remove(&queued.ticket);
                            return Ok(Wake::Spill { after, reason });
                        }
                    }
                }
            }
        }
    }

    fn answer(
        &self,
        key: &HostKey,
        status: Option<u16>,
        retry_after: Option<Duration>,
        since: Duration,
    ) {
        let now = self.clock.now();
        let answer = Answer {
            status,
            retry_after,
            took: now.mono.saturating_sub(since),
        };
        let mut notes = Vec::new();
        {
            let mut inner = self.lock();
            let wakes = inner.lanes.answer(key, answer, now, &mut notes);
            inner.wake(wakes);
        }
        self.notes(key, &mut notes);
    }
}

fn paused(until_ms: i64) -> Delivered {
    let attempt = Attempt::NoResponse {
        source: FailureSource::UnhealthyHost,
        error: format!("host paused as unhealthy until {}", rfc3339(until_ms)),
    };
    Delivered::Attempted(attempt, Duration::ZERO)
}
