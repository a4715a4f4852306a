//! Delivering one attempt: the unhealthy-host gate, the per-host and global slots, the HTTP request, and the
//! host-health bookkeeping of its answer. What the answer means is decided by the [plan](super::plan).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::classify::{Attempt, FailureSource};
use super::host_health::{HostHealth, HostKey, Transition};
use super::http::Executor;
use super::pacing::{Admission, Pacing};
use super::retry::parse_retry_after;
use super::slots::{Slot, Slots};
use crate::clock::{now_ms, rfc3339};
use crate::events::ValidSend;
use crate::kafka::consumer::Admission as Admitted;
use crate::telemetry::DispatchMetrics;

pub struct Delivery {
    pub executor: Executor,
    pub metrics: DispatchMetrics,
    /// Request slots: per host, and shared fairly among hosts.
    pub slots: Arc<Slots>,
    pub host_health: Mutex<HostHealth>,
    /// Rate limits and `Retry-After` holds, on a monotonic clock counted from `started`.
    pub pacing: Mutex<Pacing>,
    pub started: tokio::time::Instant,
}

/// What became of a send handed to delivery.
#[derive(Debug)]
pub enum Delivered {
    /// What happened on the wire (or instead of it: a 598 for a paused host), and how long it took.
    Attempted(Attempt, Duration),
    /// Held back longer than can be waited out here, or spilled by its saturated host: requeue it to a
    /// retry tier without an attempt, due at this UNIX ms.
    Requeue { due_ms: i64 },
}

/// Frees a waiting send's place in its host's queue, also when the send is dropped while waiting.
struct Waiting<'a> {
    pacing: &'a Mutex<Pacing>,
    host: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.pacing).woke(self.host);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Delivery {
    /// The HTTP attempt, unless the host is paused: then a simulated 598 without touching the network. The
    /// pause is checked again once the send has its slots, so work queued before a pause does not reach
    /// the host after it. A send is paced (rate limit, `Retry-After`) first; a hold too long to wait out
    /// here hands it back for requeueing, and so does a full queue for its host. While it waits (held or
    /// queued) it gives back its consumer admission slot.
    pub async fn deliver(
        &self,
        host: &HostKey,
        send: &ValidSend,
        admission: &mut Admitted,
    ) -> Delivered {
        if let Err(until_ms) = self.host_gate(host) {
            return paused(until_ms);
        }
        // Paced before it queues for its host's slot: a limited host's backlog then waits (boundedly) here or
        // goes back to a tier, instead of filling the slots every host shares.
        if let Some(due_ms) = self.pace(host, admission).await {
            return Delivered::Requeue { due_ms };
        }
        let _slot = match self.slots.acquire(&host.host, admission).await {
            Slot::Held(slot) => slot,
            Slot::Spill { after, .. } => {
                return Delivered::Requeue {
                    due_ms: now_ms().saturating_add(millis(after)),
                }
            }
        };
        if let Err(until_ms) = self.host_gate(host) {
            return paused(until_ms);
        }
        self.metrics.in_flight.inc();
        let (attempt, duration) = self.executor.execute(send).await;
        self.metrics.in_flight.dec();
        self.metrics
            .request_duration
            .observe(duration.as_secs_f64());
        // Counted before the slots are released: the next send waiting for them sees a pause this began.
        if let Attempt::Response {
            status,
            retry_after,
            ..
        } = &attempt
        {
            self.host_observe(host, *status);
            self.note_retry_after(host, *status, retry_after.as_deref());
        }
        Delivered::Attempted(attempt, duration)
    }

    /// Holds a send back as its host's rate limit and any `Retry-After` on its host for its workspace require:
    /// a short hold is waited out here; for a long one, the UNIX millisecond to requeue it for.
    async fn pace(&self, key: &HostKey, admission: &mut Admitted) -> Option<i64> {
        loop {
            let decision = lock(&self.pacing).admit(key, self.started.elapsed());
            match decision {
                Admission::Go => return None,
                Admission::Wait { wait, reason } => {
                    let _place = Waiting {
                        pacing: &self.pacing,
                        host: &key.host,
                    };
                    self.metrics
                        .held_sends
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    self.metrics
                        .hold_wait
                        .with_label_values(&[reason.as_str()])
                        .observe(wait.as_secs_f64());
                    admission.outside(tokio::time::sleep(wait)).await;
                    // A `Retry-After` that came in meanwhile holds this send too: it is admitted again;
                    // without one, it goes.
                    lock(&self.pacing).held_until(key, self.started.elapsed())?;
                }
                Admission::Requeue { after, reason } => {
                    self.metrics
                        .requeued_sends
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    return Some(now_ms().saturating_add(millis(after)));
                }
            }
        }
    }

    /// The host answered `Retry-After` with a 429 or 503: hold its later sends for this workspace.
    fn note_retry_after(&self, key: &HostKey, status: u16, value: Option<&str>) {
        if !matches!(status, 429 | 503) {
            return;
        }
        let Some(after) = value.and_then(|v| parse_retry_after(v, now_ms())) else {
            return;
        };
        let now = self.started.elapsed();
        let Some(until) = lock(&self.pacing).hold(key, now, after) else {
            return;
        };
        self.metrics.retry_after_holds.inc();
        let until_ms = now_ms().saturating_add(millis(until.saturating_sub(now)));
        tracing::warn!(host = %key.host, workspace = %key.workspace, status, until = %rfc3339(until_ms), "host asked to back off (Retry-After): holding its sends for this workspace");
    }

    /// `Err(until)` while the host is paused; logs and counts pause transitions.
    fn host_gate(&self, key: &HostKey) -> Result<(), i64> {
        let now = now_ms();
        let mut health = lock(&self.host_health);
        let (state, transition) = health.check(key, now);
        if let Some(t) = transition {
            self.note_transition(key, t, health.paused_hosts(now));
        }
        state
    }

    fn host_observe(&self, key: &HostKey, status: u16) {
        let now = now_ms();
        let mut health = lock(&self.host_health);
        if let Some(t) = health.record(key, status, now) {
            self.note_transition(key, t, health.paused_hosts(now));
        }
        if health.take_swept() {
            self.metrics
                .paused_hosts
                .set(health.paused_hosts(now) as i64);
        }
    }

    fn note_transition(&self, key: &HostKey, t: Transition, paused_now: usize) {
        self.metrics.paused_hosts.set(paused_now as i64);
        let label = match t {
            Transition::Paused { until_ms, count } => {
                tracing::warn!(host = %key.host, workspace = %key.workspace, count, until = %rfc3339(until_ms), "host unhealthy: pausing sends (598)");
                "paused"
            }
            Transition::PauseExtended { until_ms, count } => {
                tracing::warn!(host = %key.host, workspace = %key.workspace, count, until = %rfc3339(until_ms), "host still unhealthy: pause extended");
                "extended"
            }
            Transition::Resumed => {
                tracing::info!(host = %key.host, workspace = %key.workspace, "host healthy again: resuming sends");
                "resumed"
            }
        };
        self.metrics.host_pauses.with_label_values(&[label]).inc();
    }
}

fn paused(until_ms: i64) -> Delivered {
    let attempt = Attempt::NoResponse {
        source: FailureSource::UnhealthyHost,
        error: format!("host paused as unhealthy until {}", rfc3339(until_ms)),
    };
    Delivered::Attempted(attempt, Duration::ZERO)
}
