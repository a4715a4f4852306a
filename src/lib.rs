//! hookrelay: a Kafka-native webhook dispatcher. The README says what it does and how to run it;
//! `ARCHITECTURE.md` follows one send and one failure event through this code.
//!
//! # Layout
//!
//! A line per module: what it owns, and what of hookrelay it may import (every module may use `clock`
//! and `config`). Pure modules — no I/O, no clock, no randomness: time and draws are arguments — are marked
//! *pure*; the lints ban reading the clock outside `clock`.
//!
//! - [`events`]: the data contracts. Send requests (decoding, validation), failure events (Avro writer, the
//!   full and the fast reader, cutting to fit), the Currents `Send`/`Abort`/`Retry` events, retry records,
//!   framing, the Avro length guard. *Pure.*
//!   Imports `security` (header rules; the SSRF policy's look at a URL, which validation takes).
//! - [`dispatch`]: `hookrelay dispatch`. Classification, retry policy, tiers, the **lanes** (one per host, a
//!   core over the parts' books: the unhealthy-host pause, rate limits, `Retry-After` holds, slots, queues
//!   and spills), the **plan** (what happens after an attempt), the **outcome** of a send and the Currents
//!   events it owes — *pure*; delivery (ask the lane → send → tell the lane; the tasks parked on the lanes'
//!   decisions and the admission slots they give back while they wait), the pipeline (decode → deliver →
//!   plan → apply → report the outcome), and the dispatcher's own Kafka adapters: the consumer thread
//!   (`consume`: offset tracking, the memory budget, parked retries) and the publisher of outcomes and
//!   Currents events (`publish`). Imports `events`, `kafka`, `registry`, `security`, `telemetry`.
//! - [`aggregate`]: `hookrelay aggregate`. Windows, breakdown, the ledger (counting, checkpoint records,
//!   restore), the checkpoint format and its fold, alert log, email rendering — *pure*; the mailer, alert
//!   senders, decisions, checkpoint writing and restoring, and the service loop. Imports `events`, `kafka`,
//!   `telemetry`.
//! - [`kafka`]: what every subcommand shares of librdkafka, behind a small surface: client settings, the
//!   start-up topic check, the probe, records (headers read safely), the feeder (a group consumer on its
//!   own thread handing batches, and assignments in order, to an async loop), readers, the embedded broker.
//!   Imports `events`, `telemetry` — never `dispatch` or `aggregate`.
//! - [`registry`]: a Confluent-compatible Schema Registry: its REST client (bounded answers, errors that
//!   tell a missing schema from an outage), the bounded cache of writer schemas by id, event schema
//!   registration. Imports `events` (the reader schema, the Avro guard) and `dispatch::http`'s error text.
//! - [`replay`]: `hookrelay replay`. The selection of failure events and its summaries — *pure*; the scan of
//!   the failure topic and the redrive of the original records. Imports `events`, `kafka`.
//! - [`security`]: the SSRF guard (with its resolver), webhook signatures, request-header rules.
//! - [`telemetry`]: typed metrics (their bounded label values declared beside them), `/metrics` `/healthz`
//!   `/readyz`, logging. Imports plain data types only (`events`' dead-letter kinds, `kafka`'s
//!   topic-partitions) — never `dispatch` or `aggregate`.
//! - [`config`]: one typed configuration, loaded from TOML and the environment and validated at once. Imports
//!   each section's type from the module that owns it.
//! - [`clock`]: the wall clock, read in one place, and the dispatcher's clock handle (one reading of the wall
//!   and monotonic clocks per decision).
//! - [`shutdown`]: SIGINT/SIGTERM as a cancellation token.
//! - [`cli`]: the subcommands, parsing and wiring; `main.rs` only calls it.
//! - [`tools`]: development tools — demo, load harness, scripted receiver, traffic generator, in-process
//!   harness, example sends. Imports anything; **nothing in the product imports it**.
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
pub mod registry;
pub mod replay;
pub mod security;
pub mod shutdown;
pub mod telemetry;
pub mod tools;
