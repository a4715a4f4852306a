//! Request slots for the tasks that send: [`HostQueues`] decides, this parks and wakes the tasks. A send
//! queued behind its busy host gives its consumer admission slot back (see [`Admission`]) and goes on
//! without it once woken, so a slow host's queue never holds the capacity other hosts' records need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::host_queues::{
    Episode, HostQueues, QueueLimits, Settle, SpillReason, Take, Wake, Wakeup,
};
use crate::kafka::consumer::Admission;
use crate::telemetry::IsolationMetrics;

/// How often a send waiting with its admission slot asks whether its host has turned slow.
const SETTLE_EVERY: Duration = Duration::from_millis(200);

/// How many hosts the metrics name, longest queue first.
pub const TOP_HOSTS: usize = 5;

pub struct Slots {
    inner: Mutex<Inner>,
    started: tokio::time::Instant,
    metrics: IsolationMetrics,
}

struct Inner {
    queues: HostQueues,
    waiting: HashMap<u64, oneshot::Sender<Wake>>,
    /// Hosts named in the top-hosts gauge now, to take their series away once they leave it.
    named: Vec<Arc<str>>,
}

/// What a send got.
pub enum Slot<'a> {
    /// A slot, given back when dropped.
    Held(SlotGuard<'a>),
    /// Its host cannot take it soon: to a retry tier, back this much later.
    Spill {
        after: Duration,
        reason: SpillReason,
    },
}

pub struct SlotGuard<'a> {
    slots: &'a Slots,
    host: &'a str,
    /// When the slot was taken, to measure how long the host holds its slots.
    since: Duration,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let took = self.slots.now().saturating_sub(self.since);
        self.slots.release(self.host, took);
    }
}

/// A send waiting in its host's queue; dropped early, it leaves the queue or gives back the slot it got.
struct Queued<'a> {
    slots: &'a Slots,
    host: &'a str,
    ticket: u64,
    rx: oneshot::Receiver<Wake>,
    /// What it was woken with; `None` while it waits.
    woke: Option<Wake>,
    /// The slot it was woken with has passed to a [`SlotGuard`], which gives it back.
    handed_over: bool,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        match self.woke {
            _ if self.handed_over => {}
            Some(Wake::Go) => self.slots.release(self.host, Duration::ZERO),
            Some(Wake::Spill { .. }) => {}
            None => {
                let mut inner = self.slots.lock();
                let now = self.slots.now();
                if !inner.queues.cancel(self.host, self.ticket, now) {
                    // Woken under the lock before this drop: a slot that was granted goes back.
                    if let Ok(Wake::Go) = self.rx.try_recv() {
                        let wakes = inner.queues.release(self.host, Duration::ZERO, now);
                        inner.wake(wakes);
                    }
                }
                inner.waiting.remove(&self.ticket);
            }
        }
    }
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

impl Slots {
    pub fn new(limits: QueueLimits, metrics: IsolationMetrics) -> Self {
        Self {
            inner: Mutex::new(Inner {
                queues: HostQueues::new(limits),
                waiting: HashMap::new(),
                named: Vec::new(),
            }),
            started: tokio::time::Instant::now(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// A slot for a request to `host`: at once, after waiting in the host's queue (without holding the
    /// consumer's admission slot), or not at all (spilled).
    pub async fn acquire<'a>(&'a self, host: &'a str, admission: &mut Admission) -> Slot<'a> {
        let (ticket, release, rx) = {
            let mut inner = self.lock();
            let now = self.now();
            match inner.queues.take(host, now) {
                Take::Go => {
                    return Slot::Held(SlotGuard {
                        slots: self,
                        host,
                        since: now,
                    })
                }
                Take::Spill { after, reason } => {
                    drop(inner);
                    self.metrics.spilled(reason);
                    return Slot::Spill { after, reason };
                }
                Take::Queued { ticket, release } => {
                    let (tx, rx) = oneshot::channel();
                    inner.waiting.insert(ticket, tx);
                    (ticket, release, rx)
                }
            }
        };
        let mut queued = Queued {
            slots: self,
            host,
            ticket,
            rx,
            woke: None,
            handed_over: false,
        };
        let wake = if release {
            admission.release();
            (&mut queued.rx).await
        } else {
            self.wait_keeping_admission(&mut queued, admission).await
        };
        let wake = wake.unwrap_or(Wake::Spill {
            after: Duration::from_secs(1),
            reason: SpillReason::QueueWait,
        });
        queued.woke = Some(wake);
        // A send given back its admission slot goes on without it: one that holds a request slot must not
        // wait for an admission slot held by sends waiting for request slots. What runs on this way is
        // bounded all the same: by the slots, and by the queues it waited in.
        match wake {
            Wake::Go => {
                // The slot passes to the guard.
                queued.handed_over = true;
                Slot::Held(SlotGuard {
                    slots: self,
                    host,
                    since: self.now(),
                })
            }
            Wake::Spill { after, reason } => {
                self.metrics.spilled(reason);
                Slot::Spill { after, reason }
            }
        }
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
                    let settle = self
                        .lock()
                        .queues
                        .settle(queued.host, queued.ticket, self.now());
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

    fn release(&self, host: &str, took: Duration) {
        let mut inner = self.lock();
        let wakes = inner.queues.release(host, took, self.now());
        inner.wake(wakes);
    }

    /// Spills what waited too long, logs saturation episodes and refreshes the gauges, every `every`.
    pub fn start_ticking(
        self: &Arc<Self>,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let slots = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut drained = false;
            loop {
                tokio::select! {
                    () = stop.cancelled(), if !drained => {
                        drained = true;
                        if let Some(slots) = slots.upgrade() {
                            slots.drain();
                        }
                    }
                    _ = tick.tick() => {}
                }
                let Some(slots) = slots.upgrade() else { return };
                slots.tick();
            }
        });
    }

    /// The dispatcher stops: sends waiting for slow hosts are spilled, so their records finish within the
    /// grace instead of being redone by the next owner.
    fn drain(&self) {
        let mut inner = self.lock();
        let wakes = inner.queues.drain(self.now());
        let n = wakes.len();
        inner.wake(wakes);
        drop(inner);
        if n > 0 {
            tracing::info!(
                spilled = n,
                "stopping: sends waiting for slow hosts spilled to a retry tier"
            );
        }
    }

    fn tick(&self) {
        let now = self.now();
        let (episodes, snapshot, gone) = {
            let mut inner = self.lock();
            let (wakes, episodes) = inner.queues.tick(now);
            inner.wake(wakes);
            let snapshot = inner.queues.snapshot(now, TOP_HOSTS);
            let named: Vec<Arc<str>> = snapshot.top.iter().map(|(h, _, _)| h.clone()).collect();
            let gone: Vec<Arc<str>> = inner
                .named
                .iter()
                .filter(|h| !named.contains(h))
                .cloned()
                .collect();
            inner.named = named;
            (episodes, snapshot, gone)
        };
        for e in episodes {
            match e {
                Episode::Began {
                    host,
                    in_flight,
                    queued,
                } => {
                    tracing::warn!(%host, in_flight, queued, "host saturated: its sends queue behind its max_in_flight_per_host slots, and spill to a retry tier beyond dispatch.max_queued_per_host or dispatch.max_queue_wait")
                }
                Episode::Ended {
                    host,
                    lasted,
                    spilled,
                    peak_queued,
                } => {
                    tracing::info!(%host, lasted = %humantime::format_duration(Duration::from_secs(lasted.as_secs())), spilled, peak_queued, "host no longer saturated")
                }
            }
        }
        self.metrics.show(&snapshot, &gone);
    }
}
