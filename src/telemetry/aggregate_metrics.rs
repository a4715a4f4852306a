//! The aggregator's metrics; label-free, so bounded by construction. (It commits no offsets, so of the
//! Kafka gauges only `kafka_reachable` is set.)

use prometheus::{Gauge, IntCounter, IntGauge, Registry};

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
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            r.register(Box::new(c.clone()))
                .expect("metric registered once");
            c
        };
        let events_counted = counter(
            "events_counted_total",
            "Failure events counted toward a workspace's window",
        );
        let events_ignored = counter(
            "events_ignored_total",
            "Failure events with a code not alerted on, or too old",
        );
        let undecodable = counter(
            "undecodable_events_total",
            "Records on the failure topic that did not decode",
        );
        let alerts_sent = counter("alerts_sent_total", "Alert emails sent");
        let send_errors = counter(
            "alert_send_errors_total",
            "Alert email attempts that failed (retried)",
        );
        let workspaces = IntGauge::new(
            "workspaces_tracked",
            "Workspaces with failures in the window",
        )
        .expect("valid metric");
        r.register(Box::new(workspaces.clone()))
            .expect("metric registered once");
        let alerts_sending = IntGauge::new(
            "alerts_sending",
            "Alert emails owed and being sent now (retried until the SMTP server takes them)",
        )
        .expect("valid metric");
        r.register(Box::new(alerts_sending.clone()))
            .expect("metric registered once");
        let rebuild_seconds =
            Gauge::new("rebuild_seconds", "Duration of the last rebuild from Kafka")
                .expect("valid metric");
        r.register(Box::new(rebuild_seconds.clone()))
            .expect("metric registered once");
        Self {
            kafka: KafkaGauges::register(&r),
            registry: r,
            events_counted,
            events_ignored,
            undecodable,
            workspaces,
            alerts_sent,
            send_errors,
            alerts_sending,
            rebuild_seconds,
        }
    }

    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for AggregateMetrics {
    fn default() -> Self {
        Self::new()
    }
}
