//! A Confluent-compatible Schema Registry: writer schemas of Confluent-framed sends fetched by id and kept in
//! a bounded cache ([`Writers`]), and event schemas registered at start-up ([`Client::register`]).
//!
//! What a failure means decides what happens to a record, so the errors say it: a schema the registry says
//! does not exist, or one that cannot be read as a send, is the record's fault (dead-lettered with that
//! reason); a registry that cannot answer is nobody's record's fault (the record waits, and so does its
//! partition once enough wait behind it).

mod client;

use std::sync::Arc;
use std::time::Duration;

use apache_avro::schema::ResolvedSchema;
use apache_avro::Schema;

pub use client::{backoff, Client, Registered, MAX_ANSWER_BYTES};

use crate::events::avro_guard::Names;

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    /// The registry says no schema has this id (error code 40403).
    #[error("schema id {id} is not in the schema registry: {message}")]
    NotFound { id: u32, message: String },
    /// The schema exists but cannot be used: not Avro, not parseable, or not readable as what is expected.
    #[error("schema id {id} cannot be used: {reason}")]
    Unusable { id: u32, reason: String },
    /// The registry cannot answer now: not reachable, timing out, a 5xx, a refused credential, or a URL
    /// that leads somewhere else. Transient: whoever waits for it asks again later.
    #[error("the schema registry at {url} cannot answer: {reason}")]
    Unavailable { url: String, reason: String },
    /// The registry refused to register (or find) a schema under a subject, e.g. as incompatible with the
    /// subject's earlier versions.
    #[error("the schema registry refused the schema for subject {subject}: {message} (HTTP {status}{})", code.map(|c| format!(", error code {c}")).unwrap_or_default())]
    Refused {
        subject: String,
        status: u16,
        code: Option<i64>,
        message: String,
    },
}

impl RegistryError {
    /// Whether asking again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, RegistryError::Unavailable { .. })
    }
}

/// A producer's writer schema, parsed and checked to read as the reader schema.
#[derive(Debug)]
pub struct Writer {
    pub id: u32,
    pub schema: Schema,
    /// Its named types, for the bounds check of foreign bytes ([`crate::events::avro_guard::check_datum`]).
    pub names: Names,
}

/// How long a schema id the registry does not know is remembered as missing, so a stream of records with
/// that id does not turn into a stream of registry requests.
const MISSING_FOR: Duration = Duration::from_secs(60);

/// Writer schemas by id, fetched once however many records ask at the same time, the least recently used
/// dropped beyond the capacity. Only answers are cached: an unavailable registry is asked again.
pub struct Writers {
    client: Client,
    reader: &'static Schema,
    found: moka::future::Cache<u32, Arc<Writer>>,
    missing: moka::future::Cache<u32, RegistryError>,
}

impl Writers {
    /// Writer schemas that must read as `reader`.
    pub fn new(client: Client, reader: &'static Schema, capacity: u64) -> Self {
        Self {
            client,
            reader,
            found: moka::future::Cache::new(capacity),
            missing: moka::future::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(MISSING_FOR)
                .build(),
        }
    }

    /// Writer schemas of sends from the configured registry once it answers (`None` without one).
    pub async fn connect(
        config: &crate::config::SchemaRegistryConfig,
    ) -> Result<Option<Self>, RegistryError> {
        let reader = crate::events::send_request_schema();
        Ok(connect(config)
            .await?
            .map(|client| Self::new(client, reader, config.cache_capacity)))
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The writer schema of `id`: cached, or fetched once for every concurrent asker.
    pub async fn get(&self, id: u32) -> Result<Arc<Writer>, RegistryError> {
        if let Some(w) = self.found.get(&id).await {
            return Ok(w);
        }
        if let Some(e) = self.missing.get(&id).await {
            return Err(e);
        }
        let fetched = self
            .found
            .try_get_with(id, async {
                let registered = self.client.schema_by_id(id).await?;
                writer(id, &registered, self.reader).map(Arc::new)
            })
            .await;
        match fetched {
            Ok(w) => Ok(w),
            Err(e) => {
                let e = RegistryError::clone(&e);
                if !e.is_transient() {
                    self.missing.insert(id, e.clone()).await;
                }
                Err(e)
            }
        }
    }
}

/// Parses what the registry holds under `id` as an Avro writer schema that reads as `reader`.
pub fn writer(id: u32, registered: &Registered, reader: &Schema) -> Result<Writer, RegistryError> {
    let unusable = |reason: String| RegistryError::Unusable { id, reason };
    if let Some(t) = registered.schema_type.as_deref() {
        if !t.eq_ignore_ascii_case("AVRO") {
            return Err(unusable(format!("a {t} schema, not Avro")));
        }
    }
    if !registered.references.is_empty() {
        return Err(unusable(
            "it refers to other registered schemas (schema references are not supported)".into(),
        ));
    }
    let schema = Schema::parse_str(&registered.schema)
        .map_err(|e| unusable(format!("not an Avro schema: {e}")))?;
    apache_avro::schema_compatibility::SchemaCompatibility::can_read(&schema, reader).map_err(
        |e| {
            unusable(format!(
                "records written with it cannot be read as a send request: {e}"
            ))
        },
    )?;
    let names = ResolvedSchema::try_from(&schema)
        .map_err(|e| unusable(format!("its named types do not resolve: {e}")))?
        .get_names()
        .iter()
        .map(|(name, s)| (name.clone(), (*s).clone()))
        .collect();
    Ok(Writer { id, schema, names })
}

/// The id of `schema` under the topic-name subject `<topic>-value`: registered (`register`), or looked up.
/// A registry that refuses it (incompatible with the subject's earlier versions, or not registered when only
/// looking up) is a start-up error with the registry's own message.
pub async fn value_schema_id(
    client: &Client,
    topic: &str,
    schema: &str,
    register: bool,
) -> Result<u32, RegistryError> {
    let subject = format!("{topic}-value");
    let id = if register {
        client.register(&subject, schema).await?
    } else {
        client.lookup(&subject, schema).await?
    };
    tracing::info!(
        subject,
        id,
        registered = register,
        "event schema in the registry"
    );
    Ok(id)
}

/// The configured registry's client once it answers, or `None` without one. A registry that does not answer
/// within `startup_timeout` is a start-up error naming it.
pub async fn connect(
    config: &crate::config::SchemaRegistryConfig,
) -> Result<Option<Client>, RegistryError> {
    if !config.enabled() {
        return Ok(None);
    }
    let client = Client::new(config)?;
    let deadline = tokio::time::Instant::now() + config.startup_timeout;
    let mut failures = 0;
    loop {
        match client.ping().await {
            Ok(()) => {
                tracing::info!(url = client.url(), "schema registry answers");
                return Ok(Some(client));
            }
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(RegistryError::Unavailable {
                    url: client.url().to_string(),
                    reason: format!(
                        "no answer within schema_registry.startup_timeout ({}): {e}",
                        humantime::format_duration(config.startup_timeout)
                    ),
                })
            }
            Err(e) => {
                tracing::warn!(error = %e, "waiting for the schema registry");
                let pause = backoff(failures, Duration::from_secs(2));
                tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + pause)).await;
                failures += 1;
            }
        }
    }
}
