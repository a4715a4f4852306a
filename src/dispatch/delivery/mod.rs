//! Delivering one attempt: ask the send's [lane](super::lane), send the request, tell the lane the answer
//! ([`Delivery::deliver`]). What the answer means is decided by the [plan](super::plan).
//!
//! The lanes live behind one lock here, with the tasks parked on their decisions: a send asks its lane
//! and gets a slot, a requeue with its reason, or a simulated 598. Queued behind its busy host, it gives
//! back its consumer admission slot (see [`Admission`]) and is woken with its answer, decided by the lane
//! when a slot came free; it goes on without the admission slot, so waiting for one host never holds the
//! capacity other hosts' records need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

mod guards;
mod ticker;

use guards::Holding;

use super::classify::{Attempt, FailureSource};
use super::http::Executor;
use super::lane::{Answer, Ask, HoldReason, HostKey, Lanes, RequeueReason, Woken};
use crate::clock::{rfc3339, Clock, Now};
use crate::events::ValidSend;
use crate::telemetry::DispatchMetrics;

/// How many hosts the metrics name, longest queue first.
pub const TOP_HOSTS: usize = 5;

/// How often a send waiting for its host's rate looks whether its slot has moved.
const REBOOK_EVERY: Duration = Duration::from_millis(250);

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
    waiting: HashMap<u64, oneshot::Sender<Ask>>,
    /// Hosts named in the top-hosts gauge now, to take their series away once they leave it.
    named: Vec<Arc<str>>,
}

impl Inner {
    /// Hands the lanes' answers to the queued tasks; what was handed to a task that is gone goes back (and
    /// may wake others).
    fn hand_out(&mut self, mut woken: Vec<Woken>, now: Now) {
        while !woken.is_empty() {
            let mut unused = false;
            for Woken { ticket, ask, key } in woken {
                let unsent = match self.waiting.remove(&ticket) {
                    Some(tx) => tx.send(ask).err(),
                    None => Some(ask),
                };
                if let Some(ask) = unsent {
                    self.lanes.unused(&key.host, ask, now);
                    unused = true;
                }
            }
            woken = if unused {
                self.lanes.wakes()
            } else {
                Vec::new()
            };
        }
    }

    /// The receiver a send told to queue waits on for its answer, registered under the lock the lane was
    /// asked under: a slot freed the moment after finds its waiter.
    fn waiter(&mut self, ask: &Ask) -> Option<oneshot::Receiver<Ask>> {
        let Ask::Queued { ticket, .. } = ask else {
            return None;
        };
        let (tx, rx) = oneshot::channel();
        self.waiting.insert(*ticket, tx);
        Some(rx)
    }

    /// Hands out what the lanes woke outside an answer (a hold's end, the ticker, a task gone).
    fn woken(&mut self, now: Now) {
        let woken = self.lanes.wakes();
        self.hand_out(woken, now);
    }
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
    pub async fn deliver(&self, send: &ValidSend, admission: &mut Admission) -> Delivered {
        // Its lane: the host's, and the workspace's where a rule is per workspace.
        let key = HostKey {
            host: send.url.host_str().unwrap_or_default().to_string(),
            workspace: send.request.workspace_id.clone(),
        };
        let slot = match self.ask(&key, admission).await {
            Decision::Go(slot) => slot,
            Decision::Requeue { due_ms, reason } => return Delivered::Requeue { due_ms, reason },
            Decision::Unhealthy { until_ms } => return paused(until_ms),
        };
        self.metrics.in_flight.inc();
        let (attempt, duration) = self.executor.execute(send).await;
        self.metrics.in_flight.dec();
        let seconds = duration.as_secs_f64();
        self.metrics.request_duration.observe(seconds);
        match &attempt {
            Attempt::Response {
                status,
                retry_after,
                ..
            } => slot.answer(Some(*status), *retry_after),
            Attempt::NoResponse { .. } => slot.answer(None, None),
        }
        Delivered::Attempted(attempt, duration)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks `key`'s lane whether a send may go, waiting (without the admission slot) as long as it says.
    async fn ask<'a>(&'a self, key: &'a HostKey, admission: &mut Admission) -> Decision<'a> {
        let now = self.clock.now();
        // Asking wakes no one (it frees no slot); what lanes note for hosts is logged by the ticker.
        let (mut ask, mut rx) = {
            let mut inner = self.lock();
            let ask = inner.lanes.ask(key, now, false);
            (ask, inner.waiter(&ask))
        };
        // The request slot, once the send has one (woken with it, or held with it).
        let mut slot: Option<SlotGuard<'a>> = None;
        loop {
            match ask {
                Ask::Go => {
                    // The request's time with its slot starts now: the lane measures how long the host
                    // holds its slots.
                    let now = self.clock.now();
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
                    let due_ms = self.clock.now().due_in(after);
                    return Decision::Requeue { due_ms, reason };
                }
                Ask::Hold {
                    wait,
                    reason,
                    slot: with_slot,
                } => {
                    if with_slot && slot.is_none() {
                        slot = Some(self.slot(key, self.clock.now()));
                    }
                    (ask, rx) = self
                        .hold(key, wait, reason, slot.is_some(), admission)
                        .await;
                }
                Ask::Queued { ticket, release } => {
                    let rx = rx.take().expect("a queued answer comes with its receiver");
                    let mut queued = Queued {
                        delivery: self,
                        host: &key.host,
                        ticket,
                        rx,
                        woke: false,
                    };
                    ask = if release {
                        admission.release();
                        (&mut queued.rx).await.ok()
                    } else {
                        self.wait_keeping_admission(&mut queued, admission).await
                    }
                    .unwrap_or(Ask::Requeue {
                        after: Duration::from_secs(1),
                        reason: RequeueReason::QueueWait,
                    });
                    // Settled here: a slot it was woken with passes to its guard at once.
                    queued.woke = true;
                    if matches!(ask, Ask::Go | Ask::Hold { slot: true, .. }) {
                        slot = Some(self.slot(key, self.clock.now()));
                    }
                }
            }
        }
    }

    /// Waits out a hold without the admission slot, then asks again.
    async fn hold(
        &self,
        key: &HostKey,
        wait: Duration,
        reason: HoldReason,
        with_slot: bool,
        admission: &mut Admission,
    ) -> (Ask, Option<oneshot::Receiver<Ask>>) {
        {
            let _place = Holding {
                delivery: self,
                host: &key.host,
            };
            self.metrics.held(reason.as_str(), wait);
            admission.outside(self.wait_booked(key, wait, reason)).await;
        }
        let now = self.clock.now();
        let mut inner = self.lock();
        let ask = if with_slot {
            inner.lanes.with_slot(key, now)
        } else {
            inner.lanes.ask(key, now, true)
        };
        inner.woken(now);
        (ask, inner.waiter(&ask))
    }

    /// Waits `wait`; for the host's rate, until the slot booked for it, which moves when this dispatcher's
    /// part of the rate changes (looked at every [`REBOOK_EVERY`]): a booked wait that could not follow a
    /// new split kept the old part for seconds after it.
    async fn wait_booked(&self, key: &HostKey, wait: Duration, reason: HoldReason) {
        if reason != HoldReason::RateLimit {
            return tokio::time::sleep(wait).await;
        }
        let now = self.clock.now().mono;
        let booking = self.lock().lanes.booking(&key.host, now, wait);
        let mut left = wait;
        while !left.is_zero() {
            tokio::time::sleep(left.min(REBOOK_EVERY)).await;
            let now = self.clock.now().mono;
            left = self.lock().lanes.rebooked(&key.host, booking, now);
        }
    }

    fn slot<'a>(&'a self, key: &'a HostKey, now: Now) -> SlotGuard<'a> {
        SlotGuard {
            delivery: self,
            key,
            since: now.mono,
            answered: false,
        }
    }
}

/// A request slot; dropped without an answer (its task cancelled), it is given back all the same.
struct SlotGuard<'a> {
    delivery: &'a Delivery,
    key: &'a HostKey,
    /// When the slot was taken, to measure how long the host holds its slots.
    since: Duration,
    answered: bool,
}

impl SlotGuard<'_> {
    /// The lane has taken the slot back itself.
    fn forget(mut self) {
        self.answered = true;
    }

    /// Tells the lane what the host said (`status` `None`: no response) and gives the slot back.
    fn answer(mut self, status: Option<u16>, retry_after: Option<Duration>) {
        self.tell(status, retry_after);
    }

    fn tell(&mut self, status: Option<u16>, retry_after: Option<Duration>) {
        self.answered = true;
        let now = self.delivery.clock.now();
        let took = now.mono.saturating_sub(self.since);
        let answer = Answer {
            status,
            retry_after,
            took,
        };
        let mut inner = self.delivery.lock();
        let woken = inner.lanes.answer(self.key, answer, now);
        inner.hand_out(woken, now);
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if !self.answered {
            self.tell(None, None);
        }
    }
}

/// A send waiting in its host's queue; dropped early, it leaves the queue or gives back the slot it got.
struct Queued<'a> {
    delivery: &'a Delivery,
    host: &'a str,
    ticket: u64,
    rx: oneshot::Receiver<Ask>,
    /// Woken (its answer is settled by whoever took it), or still waiting.
    woke: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        if !self.woke {
            self.delivery.left_queue(self);
        }
    }
}

/// A record's consumer admission slot, held while its work is under way: the slots bound how many records
/// are under way at once as the handler's futures (kilobytes each) rather than as plain records. A record
/// waiting for something that is not its own work (its host's queue, a rate limit, the schema registry)
/// gives its slot back meanwhile, so waiting for one host never keeps other hosts' records from starting.
pub struct Admission {
    slots: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// Waits for a slot.
    pub async fn acquire(slots: Arc<Semaphore>) -> Self {
        let mut a = Self {
            slots,
            permit: None,
        };
        a.reacquire().await;
        a
    }

    /// Gives the slot back while the record waits.
    pub fn release(&mut self) {
        self.permit = None;
    }

    /// Takes a slot again once the wait is over (a no-op if it holds one).
    pub async fn reacquire(&mut self) {
        if self.permit.is_none() {
            // Closed never: the semaphore lives as long as the consumer's tasks.
            self.permit = self.slots.clone().acquire_owned().await.ok();
        }
    }

    /// Runs `wait` without holding the slot.
    pub async fn outside<F: std::future::Future>(&mut self, wait: F) -> F::Output {
        self.release();
        let out = wait.await;
        self.reacquire().await;
        out
    }
}

fn paused(until_ms: i64) -> Delivered {
    let attempt = Attempt::NoResponse {
        source: FailureSource::UnhealthyHost,
        error: format!("host paused as unhealthy until {}", rfc3339(until_ms)),
    };
    Delivered::Attempted(attempt, Duration::ZERO)
}
