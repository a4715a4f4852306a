//! The demo's Schema Registry (in memory, `tools::schema_registry`): its Avro traffic is produced the way a
//! registry-backed producer writes it — Confluent-framed, with the producer's own version of the send
//! schema (ours and a field added with a default) — and Braze Currents' Send, Abort and Retry events are read
//! back through the registry, with Braze's published schemas as reader schemas.

use std::time::{Duration, Instant};

use apache_avro::types::Value;
use apache_avro::Schema;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::Message;

use crate::config::Config;
use crate::events::currents::CurrentsKind;
use crate::events::SendRequest;
use crate::tools::schema_registry::SchemaRegistry;

/// Braze's published schemas, the reader schemas a Currents consumer has.
fn braze(kind: CurrentsKind) -> &'static str {
    match kind {
        CurrentsKind::Send => {
            include_str!("../../../schemas/reference/users.messages.webhook.Send.avsc")
        }
        CurrentsKind::Abort => {
            include_str!("../../../schemas/reference/users.messages.webhook.Abort.avsc")
        }
        CurrentsKind::Retry => {
            include_str!("../../../schemas/reference/users.messages.webhook.Retry.avsc")
        }
    }
}

pub struct DemoRegistry {
    registry: SchemaRegistry,
    /// The producer's writer schema, and the id the registry gave it.
    writer: Schema,
    pub writer_id: u32,
}

/// What was read back of each Currents topic.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadBack {
    /// `[send, abort, retry]` events decoded with Braze's schemas.
    pub read: [u64; 3],
    /// Records that did not decode (should stay zero).
    pub undecodable: u64,
}

impl DemoRegistry {
    /// Starts the registry and registers the producer's schema under `<sends topic>-value`.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let registry = SchemaRegistry::start("127.0.0.1:0".parse()?).await?;
        let mut schema: serde_json::Value =
            serde_json::from_str(crate::events::SEND_REQUEST_SCHEMA_JSON)?;
        if let Some(fields) = schema["fields"].as_array_mut() {
            fields.insert(
                1,
                serde_json::json!({"name": "priority", "type": "int", "default": 0}),
            );
        }
        let text = schema.to_string();
        let writer_id = registry
            .register(&format!("{}-value", config.topics.sends), &text)
            .map_err(anyhow::Error::msg)?;
        Ok(Self {
            writer: Schema::parse_str(&text)?,
            registry,
            writer_id,
        })
    }

    pub fn url(&self) -> String {
        self.registry.url()
    }

    /// `send` as the producer writes it: Confluent-framed with its own schema's id.
    pub fn framed(&self, send: &SendRequest) -> anyhow::Result<Vec<u8>> {
        let Value::Record(mut fields) = apache_avro::to_value(send)? else {
            anyhow::bail!("a send is a record");
        };
        fields.push(("priority".into(), Value::Int(1)));
        let value = Value::Record(fields)
            .resolve(&self.writer)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut out = vec![0];
        out.extend_from_slice(&self.writer_id.to_be_bytes());
        out.extend(apache_avro::to_avro_datum(&self.writer, value)?);
        Ok(out)
    }

    /// Reads every record of the Currents topics (until none comes for a second), each decoded with the
    /// schema its id names in the registry, resolved to Braze's.
    pub async fn read_back(&self, config: &Config) -> anyhow::Result<ReadBack> {
        let client = crate::registry::Client::new(&crate::config::SchemaRegistryConfig {
            url: self.url(),
            ..Default::default()
        })?;
        let mut out = ReadBack::default();
        for kind in CurrentsKind::ALL {
            let topic = match kind {
                CurrentsKind::Send => &config.topics.send_events,
                CurrentsKind::Abort => &config.topics.abort_events,
                CurrentsKind::Retry => &config.topics.retry_events,
            };
            let reader = Schema::parse_str(braze(kind))?;
            for payload in payloads(config, topic).await? {
                let decoded = match payload.as_slice() {
                    [0, a, b, c, d, body @ ..] => {
                        let id = u32::from_be_bytes([*a, *b, *c, *d]);
                        let writer = Schema::parse_str(&client.schema_by_id(id).await?.schema)?;
                        apache_avro::from_avro_datum(&writer, &mut &body[..], Some(&reader)).is_ok()
                    }
                    _ => false,
                };
                if decoded {
                    out.read[kind as usize] += 1;
                } else {
                    out.undecodable += 1;
                }
            }
        }
        Ok(out)
    }
}

/// Every record of `topic` from the start, until none comes for a second.
async fn payloads(config: &Config, topic: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let c = crate::kafka::client::reader_config(&config.kafka);
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Vec<u8>>> {
        let consumer: BaseConsumer = c.create()?;
        let md = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(&topic, p.id(), rdkafka::Offset::Beginning)?;
            }
        }
        consumer.assign(&tpl)?;
        let mut out = Vec::new();
        let mut last = Instant::now();
        while last.elapsed() < Duration::from_secs(1) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(m.payload().unwrap_or_default().to_vec());
                last = Instant::now();
            }
        }
        Ok(out)
    })
    .await?
}
