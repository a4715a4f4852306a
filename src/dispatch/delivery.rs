//! Delivering one attempt: ask the send's [lane](super::lane) (through the [gate](super::gate)), send the
//! request, tell the lane the answer. What the answer means is decided by the [plan](super::plan).

use std::time::Duration;

use super::classify::{Attempt, FailureSource};
use super::gate::{Decision, Gate};
use super::http::Executor;
use super::lane::{HostKey, RequeueReason};
use super::retry::parse_retry_after;
use crate::clock::{rfc3339, Clock};
use crate::dispatch::consume::Admission;
use crate::events::ValidSend;
use crate::telemetry::DispatchMetrics;

pub struct Delivery {
    pub executor: Executor,
    pub metrics: DispatchMetrics,
    /// Every host's lane: when a send may go.
    pub gate: std::sync::Arc<Gate>,
    pub clock: Clock,
}

/// What became of a send handed to delivery.
#[derive(Debug)]
pub enum Delivered {
    /// What happened on the wire (or instead of it: a 598 for a paused host), and how long it took.
    Attempted(Attempt, Duration),
    /// Its lane sent it back to a retry tier without an attempt, due at this UNIX ms.
    Requeue { due_ms: i64, reason: RequeueReason },
}

impl Delivery {
    /// Asks the lane, sends, tells the lane the answer. While the send waits (held or queued) it gives
    /// back its consumer admission slot.
    pub async fn deliver(
        &self,
        host: &HostKey,
        send: &ValidSend,
        admission: &mut Admission,
    ) -> Delivered {
        let slot = match self.gate.ask(host, admission).await {
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
                let wall_ms = self.clock.now().wall_ms;
                let after = retry_after
                    .as_deref()
                    .and_then(|v| parse_retry_after(v, wall_ms));
                slot.answer(Some(*status), after);
            }
            Attempt::NoResponse { .. } => slot.answer(None, None),
        }
        Delivered::Attempted(attempt, duration)
    }
}

fn paused(until_ms: i64) -> Delivered {
    let attempt = Attempt::NoResponse {
        source: FailureSource::UnhealthyHost,
        error: format!("host paused as unhealthy until {}", rfc3339(until_ms)),
    };
    Delivered::Attempted(attempt, Duration::ZERO)
}
