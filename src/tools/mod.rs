//! Development tools, apart from the product: the demo, the load harness, the scripted receiver, the traffic
//! generator, the in-process harness the tests and tools share, and example send requests. The dispatcher
//! and the aggregator never import anything from here.

pub mod bench;
pub mod demo;
pub mod examples;
pub mod harness;
pub mod produce;
pub mod receiver;
