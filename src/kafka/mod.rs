//! Kafka plumbing every subcommand shares: client settings, records (headers read safely), the start-up
//! topic check, the probe, the choice of group protocol, the feeder, readers, the embedded broker. The
//! dispatcher's own consumer thread and publisher live beside it, in `dispatch::consume` and
//! `dispatch::publish`.

pub(crate) mod broker;
pub mod client;
pub mod feed;
pub(crate) mod probe;
pub mod protocol;
pub mod reader;
pub mod record;
pub mod topics;

pub use broker::EmbeddedBroker;
pub use record::{Record, TopicPartition};
