//! Development tools, apart from the product: the demo, the load harness, the scripted receiver, the traffic
//! generator, the in-process harness the tests and tools share, and example send requests. The dispatcher
//! and the aggregator never import anything from here.

// Tools measure and print wall-clock time and read their own environment.
#![allow(clippy::disallowed_methods)]

pub mod bench;
pub mod demo;
pub mod examples;
pub mod harness;
pub mod produce;
pub mod receiver;
pub mod schema_registry;
