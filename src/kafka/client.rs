//! librdkafka client settings: safe defaults first, the operator's pass-through properties last.

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

fn base(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers);
    c
}

fn with_overrides<'a>(
    mut c: ClientConfig,
    common: &'a std::collections::BTreeMap<String, String>,
    specific: &'a std::collections::BTreeMap<String, String>,
) -> ClientConfig {
    for (k, v) in common.iter().chain(specific) {
        c.set(k, v);
    }
    c
}

/// A producer whose acknowledgement means the record is durable: acks from all in-sync replicas, idempotent
/// so librdkafka's own retries never duplicate or reorder.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = base(kafka);
    // A delivery that cannot complete in 30 s fails then (and is retried by hookrelay, visibly) instead of
    // after librdkafka's five-minute default, so an outage shows on the metrics while it lasts.
    c.set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", "30000");
    with_overrides(c, &kafka.properties, &kafka.producer_properties)
}

/// The producer's `message.max.bytes` (librdkafka's default 1,000,000 unless the operator set it): the
/// largest record hookrelay tries to write.
pub fn max_message_bytes(kafka: &KafkaConfig) -> usize {
    kafka
        .producer_properties
        .get("message.max.bytes")
        .or_else(|| kafka.properties.get("message.max.bytes"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(1_000_000)
}

/// A classic group's session timeout unless the operator set one: how long a SIGKILLed member's partitions
/// stay unowned.
pub const CLASSIC_SESSION_TIMEOUT_MS: &str = "10000";

/// A group consumer that never commits on its own: the dispatcher commits positions it has proven safe.
pub fn consumer_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    let mut c = base(kafka);
    c.set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // A fetch with nothing new waits at most 100 ms instead of 500: a real broker answers as soon as data
        // arrives anyway, but the embedded broker answers only when the wait ends, which added ~250 ms to
        // every send at a steady rate. 10 idle fetches a second per broker cost nothing.
        .set("fetch.wait.max.ms", "100");
    // Incremental rebalances: a member joining or leaving does not take partitions from the others, so
    // their in-flight work is neither interrupted nor redone. KIP-848 groups assign on the broker instead,
    // and keep their session settings there.
    if group_protocol(kafka) != "consumer" {
        // A member that stops heartbeating (SIGKILL, a lost host) is out after 10 s, not librdkafka's
        // 45 s, and a heartbeat every second lets a rebalance (one round per heartbeat) finish in seconds.
        c.set("partition.assignment.strategy", "cooperative-sticky")
            .set("session.timeout.ms", CLASSIC_SESSION_TIMEOUT_MS)
            .set("heartbeat.interval.ms", "1000");
    }
    with_overrides(c, &kafka.properties, &kafka.consumer_properties)
}

/// The aggregator's group consumer, which replays partitions from far behind: as [`consumer_config`], with
/// [`fast_refetch`].
pub fn replay_consumer_config(kafka: &KafkaConfig, group_id: &str) -> ClientConfig {
    fast_refetch(consumer_config(kafka, group_id), kafka)
}

/// A standalone reader that reads a topic from far behind (`hookrelay replay`): as [`reader_config`], with
/// [`fast_refetch`].
pub fn scan_reader_config(kafka: &KafkaConfig) -> ClientConfig {
    fast_refetch(reader_config(kafka), kafka)
}

/// When its local queue is full, a reader fetches again after 10 ms instead of librdkafka's 1 s
/// (`fetch.queue.backoff.ms`), unless the operator set it. A reader that drains the queue at once waits
/// otherwise: the default left a 200,000-event replay idle for 1 s of its 1.1 s.
fn fast_refetch(mut c: ClientConfig, kafka: &KafkaConfig) -> ClientConfig {
    let key = "fetch.queue.backoff.ms";
    if !operator_set(kafka, key) {
        c.set(key, "10");
    }
    c
}

/// Whether the operator passed the librdkafka consumer property `key` through (common or consumer).
pub fn operator_set(kafka: &KafkaConfig, key: &str) -> bool {
    kafka.properties.contains_key(key) || kafka.consumer_properties.contains_key(key)
}

/// The librdkafka consumer property `key` as the operator set it: consumer-only first, then common.
pub fn consumer_property<'a>(kafka: &'a KafkaConfig, key: &str) -> Option<&'a String> {
    kafka
        .consumer_properties
        .get(key)
        .or_else(|| kafka.properties.get(key))
}

fn group_protocol(kafka: &KafkaConfig) -> &str {
    consumer_property(kafka, "group.protocol").map_or("classic", String::as_str)
}

/// A standalone reader (no group) for tools, the demo's tallies and tests.
pub fn reader_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = base(kafka);
    c.set(
        "group.id",
        format!("hookrelay-reader-{}", uuid::Uuid::new_v4()),
    )
    .set("enable.auto.commit", "false")
    .set("auto.offset.reset", "earliest");
    with_overrides(c, &kafka.properties, &kafka.consumer_properties)
}
