//! hookrelay: a Kafka-native webhook dispatcher. See `DESIGN.md` and the README.
#![forbid(unsafe_code)]

pub mod config;
pub mod dispatch;
pub mod events;
pub mod kafka;
pub mod receiver;
pub mod telemetry;
pub mod bench;
pub mod cli;
pub mod demo;
pub mod local;
pub mod shutdown;
