//! hookrelay: a Kafka-native webhook dispatcher. See `DESIGN.md` and the README.
// `deny`, not `forbid`: one module (`kafka::record`) reads Kafka header names through librdkafka's C API,
// because rdkafka's safe accessors panic on names that are not UTF-8. Everything else is safe code.
#![deny(unsafe_code)]

pub mod aggregate;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dispatch;
pub mod events;
pub mod kafka;
pub mod security;
pub mod shutdown;
pub mod telemetry;
pub mod tools;
