//! The aggregator's metrics; label-free, so bounded by construction. (It commits no offsets, so of the
//! Kafka gauges only `kafka_reachable` is set.)

use prometheus::{Gauge, IntCounter, IntGauge, Registry};

use super::metrics::{counter, gauge};
use super::KafkaGauges;

#[derive(Clone)]
pub struct AggregateMetrics {
    pub registry: Registry,
    /// Failure events counted toward a workspace's window.
    pub events_counted: IntCounter,
    /// Events not counted: code not in the list, or older than the window.
    pub events_ignored: IntCounter,
    pub undecodable: IntCounter,
    pub workspaces: IntGauge,
    pub alerts_sent: IntCounter,
    pub send_errors: IntCounter,
    /// Alert emails owed and being sent (retried until the SMTP server takes them).
    pub alerts_sending: IntGauge,
    /// Duration of the last rebuild (checkpoint restore and replay after an assignment).
    pub rebuild_seconds: Gauge,
    /// Workspaces restored from checkpoints, and partitions replayed in full instead (no usable checkpoint).
    pub restored_workspaces: IntCounter,
    /// Events within the window held by the restored checkpoints (so not replayed).
    pub events_restored: IntCounter,
    pub full_replays: IntCounter,
    /// Checkpoints whose every record and marker the state topic acknowledged, and those it did not.
    pub checkpoints: IntCounter,
    pub checkpoint_failures: IntCounter,
    /// Records (workspaces and markers) in the last checkpoint.
    pub checkpoint_records: IntGauge,
    pub kafka: KafkaGauges,
}

impl AggregateMetrics {
    pub fn new() -> Self {
        let r =
            Registry::new_custom(Some("hookrelay_aggregate".into()), None).expect("valid registry");
        let rebuild_seconds =
            Gauge::new("rebuild_seconds", "Duration of the last rebuild from Kafka")
                .expect("valid metric");
        r.register(Box::new(rebuild_seconds.clone()))
            .expect("metric registered once");
        Self {
            events_counted: counter(
                &r,
                "events_counted_total",
                "Failure events counted toward a workspace's window",
            ),
            events_ignored: counter(
                &r,
                "events_ignored_total",
                "Failure events with a code not alerted on, or too old",
            ),
            undecodable: counter(
                &r,
                "undecodable_events_total",
                "Records on the failure topic that did not decode",
            ),
            workspaces: gauge(
                &r,
                "workspaces_tracked",
                "Workspaces with failures in the window",
            ),
            alerts_sent: counter(&r, "alerts_sent_total", "Alert emails sent"),
            send_errors: counter(
                &r,
                "alert_send_errors_total",
                "Alert email attempts that failed (retried)",
            ),
            alerts_sending: gauge(
                &r,
                "alerts_sending",
                "Alert emails owed and being sent now (retried until the SMTP server takes them)",
            ),
            rebuild_seconds,
            restored_workspaces: counter(
                &r,
                "restored_workspaces_total",
                "Workspaces restored from the state topic's checkpoints",
            ),
            events_restored: counter(
                &r,
                "events_restored_total",
                "Events within the window restored from checkpoints instead of replayed",
            ),
            full_replays: counter(
                &r,
                "full_replays_total",
                "Partitions assigned without a usable checkpoint, so replayed over the whole window",
            ),
            checkpoints: counter(
                &r,
                "checkpoints_total",
                "Checkpoints written to the state topic and acknowledged",
            ),
            checkpoint_failures: counter(
                &r,
                "checkpoint_failures_total",
                "Checkpoints the state topic did not fully acknowledge (retried at the next interval)",
            ),
            checkpoint_records: gauge(
                &r,
                "checkpoint_records",
                "Records (changed workspaces and partition markers) written by the last checkpoint",
            ),
            kafka: KafkaGauges::register(&r),
            registry: r,
        }
    }

    pub fn render(&self) -> String {
        super::metrics::render(&self.registry)
    }
}

impl Default for AggregateMetrics {
    fn default() -> Self {
        Self::new()
    }
}
