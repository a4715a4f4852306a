//! Parked retries written back to their tier when their partition is revoked.
//!
//! A tier partition hands each parked record on when it is ready, so records behind a parked one can
//! finish first. Kafka keeps one position per partition: left alone, the position committed on revocation
//! would stop at the first parked record, and the next owner would redo every finished record behind it (a
//! second webhook request, a second failure event, a second retry). So, when finished work waits behind
//! parked records, those are written again at the end of their partition, with the same key, body, headers
//! and timestamp (so the same ready time), and count as finished once acknowledged. A record that could not
//! be written stays unfinished: the next owner reads it, and what follows it, again.

// Writing back waits for the acknowledgements against a deadline.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use futures::FutureExt as _;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use super::super::parking::Parked;
use super::super::Ticket;

/// The longest a revocation waits for parked records to be written back (Kafka unreachable: they stay).
pub const HAND_BACK_WITHIN: Duration = Duration::from_secs(5);

/// Writes `parked` back to their partitions; returns the tickets (and payload bytes) of those acknowledged.
pub fn hand_back(producer: &FutureProducer, parked: Vec<Parked>) -> Vec<(Ticket, usize)> {
    let deadline = Instant::now() + HAND_BACK_WITHIN;
    let mut sent = Vec::with_capacity(parked.len());
    for p in parked {
        let r = &p.record;
        let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
        for (key, value) in &r.headers {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
        let mut record: FutureRecord<'_, Vec<u8>, Vec<u8>> = FutureRecord::to(&r.tp.topic)
            .partition(r.tp.partition)
            .payload(&r.payload)
            .headers(headers);
        if let Some(key) = &r.key {
            record = record.key(key);
        }
        if let Some(ts) = r.timestamp_ms {
            record = record.timestamp(ts);
        }
        match producer.send_result(record) {
            Ok(delivery) => sent.push((p.ticket.clone(), r.payload.len(), delivery)),
            Err((e, _)) => {
                tracing::warn!(error = %e, topic = %r.tp.topic, partition = r.tp.partition, offset = r.offset, "could not write a parked retry back; it is read again by the next owner");
            }
        }
    }
    let _ = producer.flush(Timeout::After(
        deadline.saturating_duration_since(Instant::now()),
    ));
    let mut written = Vec::with_capacity(sent.len());
    let mut pending = sent;
    // Acknowledgements are delivered by the producer's own thread: collect them, until the deadline.
    loop {
        pending.retain_mut(|(ticket, bytes, delivery)| match delivery.now_or_never() {
            Some(Ok(Ok(_))) => {
                written.push((ticket.clone(), *bytes));
                false
            }
            Some(_) => false,
            None => true,
        });
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    written
}
