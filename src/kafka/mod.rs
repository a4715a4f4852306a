//! Kafka plumbing shared by every subcommand: client settings, offset tracking, the embedded broker.

pub(crate) mod broker;
pub mod client;
pub mod consumer;
pub mod feed;
pub mod finished_ahead;
pub(crate) mod offsets;
pub(crate) mod parking;
pub(crate) mod probe;
pub(crate) mod publish;
pub mod reader;
pub mod record;
pub mod topics;

pub use broker::EmbeddedBroker;
pub use offsets::{Commit, OffsetTracker, Ticket, TopicPartition};
pub use record::Record;
