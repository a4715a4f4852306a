//! What delivery does beside sends: the ticker (spilling what waited too long, refreshing the
//! queue gauges, logging saturation episodes and what changed for hosts — pauses, `Retry-After` holds —
//! within a tick), and draining at shutdown.

use std::sync::Arc;
use std::time::Duration;

use super::{Delivery, TOP_HOSTS};
use crate::clock::rfc3339;
use crate::dispatch::lane::{Episode, HostKey, Note, Transition};

impl Delivery {
    /// Logs and counts what changed for hosts since the last tick (a pause, a `Retry-After` hold).
    fn notes(&self, notes: Vec<Note>) {
        for note in notes {
            match note {
                Note::Health {
                    key,
                    transition,
                    paused_hosts,
                } => self.transition(&key, transition, paused_hosts),
                Note::PausedHosts(n) => self.metrics.paused_hosts.set(n as i64),
                Note::RetryAfterHold { key, until_ms } => {
                    self.metrics.retry_after_holds.inc();
                    tracing::warn!(host = %key.host, workspace = %key.workspace, until = %rfc3339(until_ms), "host asked to back off (Retry-After): holding its sends for this workspace");
                }
            }
        }
    }

    fn transition(&self, key: &HostKey, t: Transition, paused_now: usize) {
        self.metrics.paused_hosts.set(paused_now as i64);
        match t {
            Transition::Paused { until_ms, count } => {
                tracing::warn!(host = %key.host, workspace = %key.workspace, count, until = %rfc3339(until_ms), "host unhealthy: pausing sends (598)");
            }
            Transition::PauseExtended { until_ms, count } => {
                tracing::warn!(host = %key.host, workspace = %key.workspace, count, until = %rfc3339(until_ms), "host still unhealthy: pause extended");
            }
            Transition::Resumed => {
                tracing::info!(host = %key.host, workspace = %key.workspace, "host healthy again: resuming sends");
            }
        }
        self.metrics.host_pause(t.label());
    }

    /// What this dispatcher tells the fleet of hosts now.
    pub fn seen(&self) -> std::collections::HashMap<HostKey, crate::dispatch::lane::fleet::Seen> {
        let now = self.clock.now();
        self.lock().lanes.seen(now)
    }

    /// Takes what the fleet says of hosts into the lanes.
    pub fn take_fleet(&self, remote: Vec<(HostKey, crate::dispatch::lane::fleet::Remote)>) {
        let now = self.clock.now();
        let mut inner = self.lock();
        for (key, remote) in remote {
            inner.lanes.fleet(&key, remote, now);
        }
        inner.woken(now);
    }

    /// Spills what waited too long, logs saturation episodes and refreshes the gauges, every `every`; spills
    /// what waits for slow hosts once `stop` is cancelled.
    pub fn start_ticking(
        self: &Arc<Self>,
        every: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let delivery = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut drained = false;
            loop {
                tokio::select! {
                    () = stop.cancelled(), if !drained => {
                        drained = true;
                        if let Some(delivery) = delivery.upgrade() {
                            delivery.drain();
                        }
                    }
                    _ = tick.tick() => {}
                }
                let Some(delivery) = delivery.upgrade() else {
                    return;
                };
                delivery.tick();
            }
        });
    }

    /// The dispatcher stops: sends waiting for slow hosts are spilled, so their records finish within the
    /// grace instead of being redone by the next owner.
    fn drain(&self) {
        let now = self.clock.now();
        let mut inner = self.lock();
        inner.lanes.drain(now);
        let before = inner.waiting.len();
        inner.woken(now);
        let n = before.saturating_sub(inner.waiting.len());
        drop(inner);
        if n > 0 {
            tracing::info!(
                spilled = n,
                "stopping: sends waiting for slow hosts spilled to a retry tier"
            );
        }
    }

    fn tick(&self) {
        let now = self.clock.now();
        let (episodes, snapshot, gone, notes) = {
            let mut inner = self.lock();
            let episodes = inner.lanes.tick(now);
            inner.woken(now);
            let notes = inner.lanes.notes();
            let snapshot = inner.lanes.snapshot(now, TOP_HOSTS);
            let named: Vec<Arc<str>> = snapshot.top.iter().map(|(h, _, _)| h.clone()).collect();
            let gone: Vec<Arc<str>> = inner
                .named
                .iter()
                .filter(|h| !named.contains(h))
                .cloned()
                .collect();
            inner.named = named;
            (episodes, snapshot, gone, notes)
        };
        self.notes(notes);
        for e in episodes {
            log_episode(e);
        }
        self.metrics.isolation.show(&snapshot, &gone);
    }
}

fn log_episode(e: Episode) {
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
