//! Metrics, health endpoints and logging.

pub mod aggregate_metrics;
pub mod kafka_gauges;
pub mod logging;
pub mod metrics;
pub mod server;

pub use aggregate_metrics::AggregateMetrics;
pub use kafka_gauges::KafkaGauges;
pub use metrics::DispatchMetrics;
pub use server::{serve, Health};
