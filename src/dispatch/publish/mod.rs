//! Writes what the dispatcher owes Kafka — failure events, retry records and dead letters — and waits until
//! the broker has them (acks=all).
//!
//! Produce errors come in three kinds. *Transient* ones (broker down, leader moving, timeouts) are retried
//! with backoff: the input offset must not be committed before its outcome is durable. *Permanent* ones
//! (record too large, unknown topic, not authorised) would fail forever, so they are handed back to the
//! caller, which writes something smaller or elsewhere (a dead letter) and lets the partition move on. A
//! *fatal* error of the idempotent producer fails `/healthz` and ends the process, to be restarted.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio_util::sync::CancellationToken;

use crate::config::{EventEncoding, EventsConfig, TopicsConfig};
mod acks;
mod currents;
mod fault;
mod letter;

pub use acks::Acks;
pub use currents::CurrentsTopics;
pub use fault::{produce_fault, ProduceFault};
use letter::{why_headers, Letter};

use crate::events::fitting::fit_event;
use crate::events::retry_record::DUE_HEADER;
use crate::events::send_request::InvalidSend;
use crate::events::{FailureEvent, RetryRecord};
use crate::kafka::Record;
use crate::telemetry::{DispatchMetrics, Health};

/// The record's outcome could not be made durable before shutdown; it stays uncommitted and will be redone.
#[derive(Debug, thiserror::Error)]
#[error("abandoned at shutdown before its outcome was durable")]
pub struct Abandoned;

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Abandoned(#[from] Abandoned),
    /// The broker (or librdkafka) refused the record for good; retrying it unchanged cannot help.
    #[error("{topic} refused the record: {reason}")]
    Rejected { topic: String, reason: String },
}

/// Full Avro name of the failure schema, as written into the `hookrelay-schema` header.
pub const FAILURE_SCHEMA_NAME: &str = "dataexport.S3.inner.users.messages.webhook.Failure";

/// Bytes a record's framing may take beyond its key, value and headers (librdkafka counts them against
/// `message.max.bytes` too).
const RECORD_OVERHEAD: usize = 512;

#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topics: TopicsConfig,
    events: EventsConfig,
    metrics: DispatchMetrics,
    shutdown: CancellationToken,
    /// Cancelled on a fatal producer error, which ends the process.
    fatal: CancellationToken,
    health: Health,
    /// The producer's `message.max.bytes`: nothing larger is produced.
    max_message_bytes: usize,
    currents: CurrentsTopics,
    acks: std::sync::Arc<Acks>,
}

pub struct PublisherParts {
    pub producer: FutureProducer,
    pub topics: TopicsConfig,
    pub events: EventsConfig,
    pub metrics: DispatchMetrics,
    pub shutdown: CancellationToken,
    pub fatal: CancellationToken,
    pub health: Health,
    pub max_message_bytes: usize,
    pub currents: CurrentsTopics,
    /// Currents events handed over and not yet acknowledged; commits wait for them.
    pub acks: std::sync::Arc<Acks>,
    /// Settings of the Currents events' own producer (librdkafka's), created when any kind is enabled.
    pub client: rdkafka::ClientConfig,
}

impl Publisher {
    /// The publisher; with any Currents event enabled, their own producer too, and the task that writes
    /// again what it gives up on (in the runtime this is called from).
    pub fn new(p: PublisherParts) -> Result<Self, rdkafka::error::KafkaError> {
        let mut currents = p.currents;
        let (undelivered, rewrites) = tokio::sync::mpsc::unbounded_channel();
        if currents.any() {
            let context = acks::CurrentsContext {
                acks: p.acks.clone(),
                metrics: p.metrics.clone(),
                undelivered,
            };
            currents.producer = Some(p.client.create_with_context(context)?);
        }
        let publisher = Self {
            producer: p.producer,
            topics: p.topics,
            events: p.events,
            metrics: p.metrics,
            shutdown: p.shutdown,
            fatal: p.fatal,
            health: p.health,
            max_message_bytes: p.max_message_bytes,
            currents,
            acks: p.acks,
        };
        if publisher.currents.producer.is_some() {
            tokio::spawn(acks::rewrite(publisher.clone(), rewrites));
        }
        Ok(publisher)
    }

    /// The Currents events not yet acknowledged, for the consumer's commits to wait on.
    pub fn acks(&self) -> std::sync::Arc<Acks> {
        self.acks.clone()
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Room for a value next to `key` and headers of `header_bytes`.
    fn room(&self, key: &[u8], header_bytes: usize) -> usize {
        self.max_message_bytes
            .saturating_sub(RECORD_OVERHEAD + key.len() + header_bytes)
    }

    /// Publishes one failure event, keyed by workspace so each workspace's events stay in one partition.
    /// An event too large for a record is cut to fit (marked `truncated`); `Rejected` if it cannot be.
    pub async fn failure(&self, event: &FailureEvent) -> Result<(), PublishError> {
        let (encoding, schema_id) = (self.events.encoding, self.events.schema_id);
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "hookrelay-schema",
                value: Some(FAILURE_SCHEMA_NAME),
            })
            .insert(Header {
                key: "content-type",
                value: Some(content_type(encoding)),
            });
        let headers = with_trace(headers, crate::telemetry::traces::current_context());
        let key = event.app_group_id.as_deref().unwrap_or_default();
        let room = self.room(key.as_bytes(), 160);
        let mut payload = event.encode(encoding, schema_id);
        if payload.len() > room {
            let Some(fitted) = fit_event(event, room, |e| e.encode(encoding, schema_id).len())
            else {
                return Err(PublishError::Rejected {
                    topic: self.topics.failures.clone(),
                    reason: format!("the failure event cannot be cut to fit in {room} bytes"),
                });
            };
            self.metrics.truncated_events.inc();
            payload = fitted.encode(encoding, schema_id);
        }
        self.produce(&self.topics.failures, key.as_bytes(), &payload, headers)
            .await?;
        let terminal = if event.is_terminal == Some(false) {
            "false"
        } else {
            "true"
        };
        self.metrics
            .failure_events
            .with_label_values(&[terminal])
            .inc();
        Ok(())
    }

    /// Publishes a failure event; `Ok(Err(why))` when the broker refused it for good, for the caller to
    /// dead-letter the record with that reason.
    pub async fn failure_or_why(
        &self,
        record: &Record,
        failure: &crate::dispatch::classify::Failure,
        event: &FailureEvent,
    ) -> Result<Result<(), InvalidSend>, Abandoned> {
        match self.failure(event).await {
            Ok(()) => Ok(Ok(())),
            Err(PublishError::Abandoned(a)) => Err(a),
            Err(PublishError::Rejected { topic, reason }) => {
                tracing::error!(%topic, %reason, offset = record.offset, "failure event refused; dead-lettering the send instead");
                Ok(Err(crate::events::send_request::invalid(
                    crate::events::send_request::InvalidKind::Unpublishable,
                    format!(
                        "failure event ({} {}, attempt {}) refused by {topic}: {reason}",
                        failure.status,
                        failure.source,
                        event.attempt.unwrap_or_default()
                    ),
                )))
            }
        }
    }

    /// Writes a scheduled retry to a tier topic, stamped with the current time: the tier consumer measures
    /// the tier's delay from that timestamp. `Rejected` when it is too large to be a record at all.
    pub async fn retry(&self, topic: &str, record: &RetryRecord) -> Result<(), PublishError> {
        let trace = crate::telemetry::traces::current_context();
        self.retry_traced(topic, record, trace).await
    }

    /// As [`Publisher::retry`], with the given trace context instead of the current span's: a hop keeps the
    /// context its record came with.
    pub async fn retry_traced(
        &self,
        topic: &str,
        record: &RetryRecord,
        trace: Vec<(String, String)>,
    ) -> Result<(), PublishError> {
        let due = record.due_ms.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: DUE_HEADER,
                value: Some(&due),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            });
        let headers = with_trace(headers, trace);
        let key = record.send.workspace_id.as_bytes();
        let payload = record.encode();
        let room = self.room(key, 80);
        if payload.len() > room {
            return Err(PublishError::Rejected {
                topic: topic.to_string(),
                reason: format!(
                    "the retry record takes {} bytes, more than the {room} a record may hold \
                     (producer message.max.bytes {})",
                    payload.len(),
                    self.max_message_bytes
                ),
            });
        }
        self.produce(topic, key, &payload, headers).await
    }

    /// Forwards an undecodable or invalid record unchanged, saying why and where it came from. The last
    /// resort, so it never gives up: a record too large for a record of its own, or refused by the broker,
    /// is forwarded bare — without key, value and original headers, `hookrelay-dropped` saying what was left
    /// out (its coordinates find the original). A bare letter refused too (the topic is gone, no
    /// authorisation) is retried, visibly (`hookrelay_stalled_outcomes`, an error log), until it goes through.
    pub async fn dead_letter(&self, record: &Record, why: &InvalidSend) -> Result<(), Abandoned> {
        let ours = why_headers(record, why);
        let key = record.key.as_deref().unwrap_or_default();
        let size = |h: &[(String, Vec<u8>)]| -> usize {
            h.iter().map(|(k, v)| k.len() + v.len() + 8).sum()
        };
        let ours_len: usize = ours.iter().map(|(k, v)| k.len() + v.len() + 8).sum();
        let fits = key.len() + record.payload.len() + size(&record.headers)
            <= self.room(&[], ours_len + 200);
        let mut dropped = (!fits).then(|| "too large for a Kafka record".to_string());
        let mut wait = Duration::from_secs(1);
        let mut stalled = false;
        let result = loop {
            let letter = Letter::of(record, &ours, dropped.as_deref());
            match self
                .produce(
                    &self.topics.dead_letters,
                    letter.key,
                    letter.payload,
                    letter.headers,
                )
                .await
            {
                Ok(()) => break Ok(()),
                Err(PublishError::Abandoned(a)) => break Err(a),
                Err(PublishError::Rejected { reason, .. }) if dropped.is_none() => {
                    dropped = Some(format!("the whole record was refused: {reason}"));
                }
                Err(PublishError::Rejected { topic, reason }) => {
                    if !stalled {
                        stalled = true;
                        self.metrics.stalled_outcomes.inc();
                    }
                    tracing::error!(
                        %topic, %reason, original_topic = %record.tp.topic, original_partition = record.tp.partition,
                        original_offset = record.offset, retry_in = ?wait,
                        "cannot write a dead letter; the partition waits until the topic accepts it"
                    );
                    if self.sleep_or_stop(wait).await.is_err() {
                        break Err(Abandoned);
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                }
            }
        };
        if stalled {
            self.metrics.stalled_outcomes.dec();
        }
        result?;
        self.metrics
            .dead_letters
            .with_label_values(&[why.kind.as_str()])
            .inc();
        Ok(())
    }

    async fn sleep_or_stop(&self, d: Duration) -> Result<(), Abandoned> {
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(Abandoned),
            _ = self.fatal.cancelled() => Err(Abandoned),
            _ = tokio::time::sleep(d) => Ok(()),
        }
    }

    /// Produces until acknowledged; transient errors are retried with backoff (shown as a stalled outcome
    /// while they last), permanent ones returned, a fatal one ends the process.
    async fn produce(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), PublishError> {
        let mut backoff = Duration::from_millis(100);
        let mut stalled = false;
        let result = loop {
            let rec = FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers.clone())
                .timestamp(crate::clock::now_ms());
            let e = match self.producer.send(rec, Duration::from_secs(30)).await {
                Ok(_) => break Ok(()),
                Err((e, _)) => e,
            };
            let fatal = self.producer.client().fatal_error();
            let fault = produce_fault(&e, fatal.is_some());
            self.metrics
                .produce_errors
                .with_label_values(&[fault.label()])
                .inc();
            match fault {
                ProduceFault::Permanent => {
                    tracing::warn!(topic, error = %e, "produce refused for good");
                    break Err(PublishError::Rejected {
                        topic: topic.to_string(),
                        reason: e.to_string(),
                    });
                }
                ProduceFault::Fatal => {
                    let why = fatal
                        .map_or_else(|| e.to_string(), |(code, msg)| format!("{code:?}: {msg}"));
                    tracing::error!(topic, error = %why, "fatal Kafka producer error: the process ends so that it is restarted");
                    self.health.set_fatal(format!("Kafka producer: {why}"));
                    self.fatal.cancel();
                    break Err(Abandoned.into());
                }
                ProduceFault::Transient => {
                    if !stalled {
                        stalled = true;
                        self.metrics.stalled_outcomes.inc();
                    }
                    tracing::warn!(topic, error = %e, retry_in = ?backoff, "produce failed; retrying");
                }
            }
            if self.sleep_or_stop(backoff).await.is_err() {
                break Err(Abandoned.into());
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        };
        if stalled {
            self.metrics.stalled_outcomes.dec();
        }
        result
    }
}

/// A W3C trace context (`traceparent`), when traces are on, so a consumer of the failure event (or the next
/// attempt, for a retry) continues the send's trace.
/// The `content-type` header of an Avro event framed as `encoding`.
fn content_type(encoding: EventEncoding) -> &'static str {
    match encoding {
        EventEncoding::SingleObject => "application/vnd.apache.avro+binary; encoding=single-object",
        EventEncoding::Confluent => "application/vnd.apache.avro+binary; encoding=confluent",
        EventEncoding::Binary => "application/vnd.apache.avro+binary",
    }
}

fn with_trace(mut headers: OwnedHeaders, trace: Vec<(String, String)>) -> OwnedHeaders {
    for (key, value) in trace {
        headers = headers.insert(Header {
            key: &key,
            value: Some(&value),
        });
    }
    headers
}
