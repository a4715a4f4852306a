//! Metrics, health endpoints and logging.

pub(crate) mod aggregate_metrics;
pub mod fleet_metrics;
pub mod isolation_metrics;
pub(crate) mod kafka_gauges;
pub(crate) mod logging;
pub mod metrics;
pub(crate) mod server;
pub mod traces;

pub use aggregate_metrics::AggregateMetrics;
pub use fleet_metrics::FleetMetrics;
pub use isolation_metrics::IsolationMetrics;
pub use kafka_gauges::KafkaGauges;
pub use metrics::DispatchMetrics;
pub use server::{serve, Health};
