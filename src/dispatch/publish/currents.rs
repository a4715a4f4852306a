//! Writing Braze Currents' `Send`, `Abort` and `Retry` events, each to its own topic when `[events]` enables
//! it, framed like failure events (with the registry's id for its schema when there is a registry).

use rdkafka::message::{Header, OwnedHeaders};

use rdkafka::producer::{BaseRecord, Producer as _};

use super::acks::{opaque, CurrentsProducer};
use super::{content_type, with_trace, PublishError, Publisher};
use crate::events::currents::{CurrentsEvent, CurrentsKind};

/// Where each enabled kind goes: its topic, and its schema's registry id (Confluent framing).
#[derive(Clone, Default)]
pub struct CurrentsTopics {
    by_kind: [Option<(String, Option<u32>)>; 3],
    /// The producer of their own, once the publisher runs with any kind enabled.
    pub(super) producer: Option<CurrentsProducer>,
}

impl CurrentsTopics {
    /// `kind` is written to `topic`, framed with `schema_id` when there is a registry.
    pub fn enable(&mut self, kind: CurrentsKind, topic: String, schema_id: Option<u32>) {
        self.by_kind[kind as usize] = Some((topic, schema_id));
    }

    fn get(&self, kind: CurrentsKind) -> Option<&(String, Option<u32>)> {
        self.by_kind[kind as usize].as_ref()
    }

    pub(super) fn any(&self) -> bool {
        self.by_kind.iter().any(Option::is_some)
    }
}

impl Publisher {
    /// Whether any Currents event is written at all (most deployments: none, and nothing is built).
    pub fn writes_currents(&self) -> bool {
        self.currents.any()
    }

    /// Writes `event` if its kind is enabled, keyed by workspace. `Rejected` if it is too large for a record
    /// (identifiers are bounded, so only a tiny `message.max.bytes` does that) or the broker refuses it.
    pub async fn currents(&self, event: &CurrentsEvent<'_>) -> Result<(), PublishError> {
        // Both or neither: the producer exists exactly when some kind is enabled.
        let (Some((topic, schema_id)), Some(producer)) =
            (self.currents.get(event.kind), &self.currents.producer)
        else {
            return Ok(());
        };
        let encoding = match schema_id {
            Some(_) => crate::config::EventEncoding::Confluent,
            None => self.events.encoding,
        };
        let schema_name = match event.kind {
            CurrentsKind::Send => "dataexport.S3.inner.users.messages.webhook.Send",
            CurrentsKind::Abort => "dataexport.S3.inner.users.messages.webhook.Abort",
            CurrentsKind::Retry => "dataexport.S3.inner.users.messages.webhook.Retry",
        };
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "hookrelay-schema",
                value: Some(schema_name),
            })
            .insert(Header {
                key: "content-type",
                value: Some(content_type(encoding)),
            });
        let headers = with_trace(headers, crate::telemetry::traces::current_context());
        let key = event.send.workspace_id.as_bytes();
        let payload = event.encode(encoding, *schema_id);
        let room = self.room(key, 160);
        if payload.len() > room {
            return Err(PublishError::Rejected {
                topic: topic.clone(),
                reason: format!("the event takes {} bytes, more than {room}", payload.len()),
            });
        }
        let acks = &producer.context().acks;
        let seq = acks.open();
        let record = BaseRecord::with_opaque_to(topic, opaque(seq, event.kind))
            .key(key)
            .payload(&payload)
            .headers(headers)
            .timestamp(crate::clock::now_ms());
        if let Err((_, refused)) = producer.send(record) {
            // librdkafka's queue is full (or the record refused at once): the slow path, which waits for
            // room and classifies what is refused.
            let headers = refused.headers.unwrap_or_default();
            let written = self.produce(topic, key, &payload, headers).await;
            if !matches!(written, Err(PublishError::Abandoned(_))) {
                acks.close(seq);
            }
            written?;
            self.metrics
                .currents_events
                .with_label_values(&[event.kind.as_str()])
                .inc();
        }
        Ok(())
    }
}
