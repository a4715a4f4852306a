//! Writes what the dispatcher owes Kafka — failure events and dead letters — and waits until the broker has
//! them (acks=all). A produce error is retried with backoff rather than skipped: the input offset must not be
//! committed before its outcome is durable, so giving up would either lose the outcome or stall the partition.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::config::{EventEncoding, EventsConfig, TopicsConfig};
use crate::events::retry_record::DUE_HEADER;
use crate::events::send_request::InvalidSend;
use crate::events::{FailureEvent, RetryRecord};
use crate::kafka::Record;
use crate::telemetry::DispatchMetrics;

/// The record's outcome could not be made durable before shutdown; it stays uncommitted and will be redone.
#[derive(Debug, thiserror::Error)]
#[error("abandoned at shutdown before its outcome was durable")]
pub struct Abandoned;

/// Full Avro name of the failure schema, as written into the `hookrelay-schema` header.
pub const FAILURE_SCHEMA_NAME: &str = "dataexport.S3.inner.users.messages.webhook.Failure";

#[derive(Clone)]
pub struct Publisher {
    producer: FutureProducer,
    topics: TopicsConfig,
    events: EventsConfig,
    metrics: DispatchMetrics,
    shutdown: CancellationToken,
}

impl Publisher {
    pub fn new(
        producer: FutureProducer,
        topics: TopicsConfig,
        events: EventsConfig,
        metrics: DispatchMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            producer,
            topics,
            events,
            metrics,
            shutdown,
        }
    }

    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// Publishes one failure event, keyed by workspace so each workspace's events stay in one partition.
    pub async fn failure(&self, event: &FailureEvent) -> Result<(), Abandoned> {
        let payload = event.encode(self.events.encoding, self.events.schema_id);
        let content_type = match self.events.encoding {
            EventEncoding::SingleObject => {
                "application/vnd.apache.avro+binary; encoding=single-object"
            }
            EventEncoding::Confluent => "application/vnd.apache.avro+binary; encoding=confluent",
            EventEncoding::Binary => "application/vnd.apache.avro+binary",
        };
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "hookrelay-schema",
                value: Some(FAILURE_SCHEMA_NAME),
            })
            .insert(Header {
                key: "content-type",
                value: Some(content_type),
            });
        let key = event.app_group_id.as_deref().unwrap_or_default();
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

    /// Writes a scheduled retry to a tier topic, stamped with the current time: the tier consumer measures
    /// the tier's delay from that timestamp.
    pub async fn retry(&self, topic: &str, record: &RetryRecord) -> Result<(), Abandoned> {
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
        self.produce(
            topic,
            record.send.workspace_id.as_bytes(),
            &record.encode(),
            headers,
        )
        .await
    }

    /// Forwards an undecodable or invalid record unchanged, saying why and where it came from.
    pub async fn dead_letter(&self, record: &Record, why: &InvalidSend) -> Result<(), Abandoned> {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &record.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let reason = why.to_string();
        let partition = record.tp.partition.to_string();
        let offset = record.offset.to_string();
        let failed_at = chrono::Utc::now().to_rfc3339();
        for (k, v) in [
            ("hookrelay-error", reason.as_str()),
            ("hookrelay-error-kind", why.kind.as_str()),
            ("hookrelay-original-topic", &record.tp.topic),
            ("hookrelay-original-partition", &partition),
            ("hookrelay-original-offset", &offset),
            ("hookrelay-failed-at", &failed_at),
        ] {
            headers = headers.insert(Header {
                key: k,
                value: Some(v),
            });
        }
        let key = record.key.as_deref().unwrap_or_default();
        self.produce(&self.topics.dead_letters, key, &record.payload, headers)
            .await?;
        self.metrics
            .dead_letters
            .with_label_values(&[why.kind.as_str()])
            .inc();
        Ok(())
    }

    async fn produce(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), Abandoned> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let rec = FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(headers.clone())
                .timestamp(crate::dispatch::retry::now_ms());
            match self.producer.send(rec, Duration::from_secs(30)).await {
                Ok(_) => return Ok(()),
                Err((e, _)) => {
                    self.metrics.produce_errors.inc();
                    tracing::warn!(topic, error = %e, retry_in = ?backoff, "produce failed; retrying");
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Err(Abandoned),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
