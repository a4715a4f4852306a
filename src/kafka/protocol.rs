//! Which consumer-group protocol hookrelay's groups speak, unless the operator chose one.
//!
//! A group's rebalance decides how long partitions sit unowned when a dispatcher joins or leaves. With the
//! classic protocol every member stops and rejoins, and the broker waits for all of them (librdkafka's
//! embedded broker waits a session timeout, 45 s by default, twice for a cooperative assignor). With
//! KIP-848's `consumer` protocol the broker assigns, member by member, in well under a second. Apache Kafka
//! 4.0 speaks it, as does the embedded broker; older brokers and several compatible ones (tansu among them)
//! do not, and a librdkafka consumer set to it never gets partitions there (it retries for ever). So, at
//! start-up, a probe joins a group of its own (`<group>-protocol-probe`) with KIP-848 and the group speaks it
//! if the probe is given partitions; otherwise classic. `group.protocol` in `[kafka.properties]` or
//! `[kafka.consumer_properties]` skips the probe, as does a classic-only setting ([`CLASSIC_ONLY`]).

// The probe waits for the broker against a deadline: I/O.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::ClientContext;

use super::client::{consumer_property, operator_set, reader_config};
use crate::config::{Config, KafkaConfig};

/// How long the probe waits for an answer before settling on classic: a KIP-848 broker assigns within a
/// second; one without it is usually known at once (see [`ProbeContext`]).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// librdkafka properties of the classic protocol only (a KIP-848 consumer refuses to start with them): an
/// operator who set one chose classic.
pub const CLASSIC_ONLY: [&str; 3] = [
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
];

/// A consumer-group protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    Classic,
    /// KIP-848.
    Consumer,
}

impl GroupProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupProtocol::Classic => "classic",
            GroupProtocol::Consumer => "consumer",
        }
    }
}

/// `config` with `group.protocol` set for a group of `group_id` reading `topic` (which exists): the
/// operator's choice, else what the probe found.
pub async fn settled(config: &Config, group_id: &str, topic: &str) -> Config {
    Config {
        kafka: settle(&config.kafka, group_id, topic).await,
        ..config.clone()
    }
}

/// The Kafka part of [`settled`].
pub async fn settle(kafka: &KafkaConfig, group_id: &str, topic: &str) -> KafkaConfig {
    let mut kafka = kafka.clone();
    if let Some(chosen) = consumer_property(&kafka, "group.protocol") {
        tracing::info!(group.protocol = %chosen, "consumer-group protocol as configured");
        return kafka;
    }
    if let Some(setting) = CLASSIC_ONLY.iter().find(|k| operator_set(&kafka, k)) {
        tracing::info!(
            group.protocol = "classic",
            %setting,
            "consumer-group protocol: classic, which the configured setting belongs to"
        );
        kafka
            .consumer_properties
            .insert("group.protocol".into(), "classic".into());
        return kafka;
    }
    let (probe_kafka, group, topic) = (
        kafka.clone(),
        format!("{group_id}-protocol-probe"),
        topic.to_string(),
    );
    let found =
        tokio::task::spawn_blocking(move || probe(&probe_kafka, &group, &topic, PROBE_TIMEOUT))
            .await
            .unwrap_or(GroupProtocol::Classic);
    tracing::info!(
        group.protocol = found.as_str(),
        "consumer-group protocol chosen by probing the broker (set group.protocol to choose)"
    );
    kafka
        .consumer_properties
        .insert("group.protocol".into(), found.as_str().into());
    kafka
}

/// Whether a KIP-848 member of a group of its own is given partitions of `topic` within `timeout`.
pub fn probe(kafka: &KafkaConfig, group: &str, topic: &str, timeout: Duration) -> GroupProtocol {
    let mut c = reader_config(kafka);
    c.set("group.id", group)
        .set("group.protocol", "consumer")
        .set("debug", "cgrp")
        .set_log_level(RDKafkaLogLevel::Debug);
    let context = ProbeContext::default();
    let Ok(consumer) = c.create_with_context::<_, BaseConsumer<ProbeContext>>(context) else {
        return GroupProtocol::Classic;
    };
    if consumer.subscribe(&[topic]).is_err() {
        return GroupProtocol::Classic;
    }
    let until = Instant::now() + timeout;
    let found = loop {
        // Errors on the way (a broker not yet reachable) are not the answer.
        let _ = consumer.poll(Duration::from_millis(20));
        if consumer.context().refused.load(Ordering::Relaxed)
            || consumer.client().fatal_error().is_some()
        {
            break GroupProtocol::Classic;
        }
        if consumer.assignment().is_ok_and(|a| a.count() > 0) {
            break GroupProtocol::Consumer;
        }
        if Instant::now() >= until {
            tracing::warn!(
                ?timeout,
                "no answer to a KIP-848 member: the classic protocol (set group.protocol to choose)"
            );
            break GroupProtocol::Classic;
        }
    };
    // Leaving the probe's group may wait on the broker; nothing waits for it.
    std::thread::spawn(move || drop(consumer));
    found
}

/// The probe's client context. A broker without KIP-848 does not fail the consumer: librdkafka marks the
/// coordinator dead, logs why ("ConsumerGroupHeartbeatRequest not supported by broker", with `debug=cgrp`)
/// and tries again for ever. The context reads that line, so such a broker is known in milliseconds rather
/// than at the probe's deadline; the probe's other logs are dropped.
#[derive(Default)]
pub struct ProbeContext {
    refused: AtomicBool,
}

impl ClientContext for ProbeContext {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, message: &str) {
        if message.contains("ConsumerGroupHeartbeatRequest not supported") {
            self.refused.store(true, Ordering::Relaxed);
        }
    }
}

impl ConsumerContext for ProbeContext {}
