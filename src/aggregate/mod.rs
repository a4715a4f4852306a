//! `hookrelay aggregate`: rolling 24-hour failure counts per workspace and alert emails.

pub(crate) mod breakdown;
pub mod checkpoint;
mod checkpointing;
pub mod config;
mod decisions;
pub(crate) mod email;
pub mod ledger;
pub(crate) mod mailer;
mod replay;
mod restore;
mod sender;
pub mod service;
pub mod state;
pub mod window;

pub use service::run;
