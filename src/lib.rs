//! hookrelay: a Kafka-native webhook dispatcher. See `DESIGN.md` and the README.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod bench;
pub mod cli;
pub mod config;
pub mod demo;
pub mod dispatch;
pub mod events;
pub mod kafka;
pub mod local;
pub mod produce;
pub mod receiver;
pub mod security;
pub mod shutdown;
pub mod telemetry;
