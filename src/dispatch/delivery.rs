//! Delivering one attempt: the unhealthy-host gate, the per-host and global slots, the HTTP request, and the
//! host-health bookkeeping of its answer. What the answer means is decided by the [plan](super::plan).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::classify::{Attempt, FailureSource};
use super::host_health::{HostHealth, HostKey, Transition};
use super::http::Executor;
use super::limits::HostLimits;
use crate::clock::{now_ms, rfc3339};
use crate::events::ValidSend;
use crate::telemetry::DispatchMetrics;

pub struct Delivery {
    pub executor: Executor,
    pub metrics: DispatchMetrics,
    /// Global limit on webhook requests in flight.
    pub limiter: Arc<Semaphore>,
    pub host_limits: HostLimits,
    pub host_health: Mutex<HostHealth>,
}

impl Delivery {
    /// The HTTP attempt, unless the host is paused: then a simulated 598 without touching the network. The
    /// pause is checked again once the send has its slots, so work queued before a pause does not reach
    /// the host after it.
    pub async fn deliver(&self, host: &HostKey, send: &ValidSend) -> (Attempt, Duration) {
        if let Err(until_ms) = self.host_gate(host) {
            return paused(until_ms);
        }
        let _host_slot = self.host_limits.acquire(&host.host).await;
        let _slot = self
            .limiter
            .acquire()
            .await
            .expect("limiter is never closed");
        if let Err(until_ms) = self.host_gate(host) {
            return paused(until_ms);
        }
        self.metrics.in_flight.inc();
        let result = self.executor.execute(send).await;
        self.metrics.in_flight.dec();
        self.metrics
            .request_duration
            .observe(result.1.as_secs_f64());
        // Counted before the slots are released: the next send waiting for them sees a pause this began.
        if let Attempt::Response { status, .. } = &result.0 {
            self.host_observe(host, *status);
        }
        result
    }

    /// `Err(until)` while the host is paused; logs and counts pause transitions.
    fn host_gate(&self, key: &HostKey) -> Result<(), i64> {
        let now = now_ms();
        let mut health = self.host_health.lock().unwrap_or_else(|p| p.into_inner());
        let (state, transition) = health.check(key, now);
        if let Some(t) = transition {
            self.note_transition(key, t, health.paused_hosts(now));
        }
        state
    }

    fn host_observe(&self, key: &HostKey, status: u16) {
        let now = now_ms();
        let mut health = self.host_health.lock().unwrap_or_else(|p| p.into_inner());
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

fn paused(until_ms: i64) -> (Attempt, Duration) {
    let attempt = Attempt::NoResponse {
        source: FailureSource::UnhealthyHost,
        error: format!("host paused as unhealthy until {}", rfc3339(until_ms)),
    };
    (attempt, Duration::ZERO)
}
