//! The integration tests, one binary: each module drives hookrelay from outside — the embedded broker,
//! HTTP and SMTP servers on 127.0.0.1, `hookrelay` child processes — and `support` holds what they share.
// Tests wait on deadlines they measure themselves, and read like the scenarios they are.
#![allow(clippy::disallowed_methods, clippy::too_many_lines)]

mod aggregate;
mod checkpoints;
mod commands;
mod dispatch_outcomes;
mod faults;
mod fleet;
mod hostile_input;
mod isolation;
mod operations;
mod pacing;
mod processes;
mod rebalance;
mod registry;
mod replay;
mod retries;
mod security;
mod support;
mod tansu;
mod traces;
