//! Metrics, health endpoints and logging.

pub mod logging;
pub mod metrics;
pub mod server;

pub use metrics::DispatchMetrics;
pub use server::{serve, Health};
