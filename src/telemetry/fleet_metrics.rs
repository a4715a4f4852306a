//! What an operator sees of the host state dispatchers share: whether this instance reads the fleet's
//! reports, and how many go each way or are refused.

use prometheus::{IntCounter, IntGauge, Registry};

use super::metrics::{counter, gauge};

#[derive(Clone)]
pub struct FleetMetrics {
    /// 1 while the host-state topic is read; 0 while this instance keeps to its own counts.
    pub up: IntGauge,
    pub reports_sent: IntCounter,
    pub reports_received: IntCounter,
    /// Records of the host-state topic that are not reports (or too large), skipped.
    pub invalid: IntCounter,
    /// Reports the producer could not write (each costs precision, never a send).
    pub send_errors: IntCounter,
}

impl FleetMetrics {
    pub fn register(r: &Registry) -> Self {
        Self {
            up: gauge(
                r,
                "host_state_shared",
                "1 while this dispatcher reads the host state its fleet shares (topics.host_state); 0 while \
                 it keeps to its own counts, pauses and holds",
            ),
            reports_sent: counter(
                r,
                "host_state_reports_sent_total",
                "Host reports written for the fleet (unhealthy answers counted, pauses, Retry-After holds)",
            ),
            reports_received: counter(
                r,
                "host_state_reports_received_total",
                "Host reports of other dispatchers taken into this one's lanes",
            ),
            invalid: counter(
                r,
                "host_state_invalid_records_total",
                "Records of the host-state topic that are not host reports, skipped",
            ),
            send_errors: counter(
                r,
                "host_state_send_errors_total",
                "Host reports that could not be written (the fleet's view is less precise; no send is lost)",
            ),
        }
    }
}
