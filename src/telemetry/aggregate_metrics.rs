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
    /// Duration of the last rebuild (replay after an assignment).
    pub rebuild_seconds: Gauge,
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
