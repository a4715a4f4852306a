//! Whether the topics a process needs exist: checked once at start-up (bounded wait) and again by the probe.
//!
//! hookrelay never creates topics on a real cluster, and librdkafka does not fail a produce to a missing topic
//! quickly: it waits for metadata that never comes. A process that starts without its topics would sit
//! silently with records half done, so it refuses to start instead, naming each missing topic and how to
//! create it; a topic deleted later shows in the log, a gauge and `/readyz`.

// The start-up check waits against a deadline.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use super::client::reader_config;
use crate::config::KafkaConfig;

/// Why a process cannot start on this cluster.
#[derive(Debug, thiserror::Error)]
pub enum TopicCheckError {
    #[error(
        "no Kafka broker at {bootstrap} answered within {waited:?} ({error}); check \
         kafka.bootstrap_servers and that the cluster is up"
    )]
    Unreachable {
        bootstrap: String,
        waited: Duration,
        error: String,
    },
    #[error("{}", missing_message(.bootstrap, .missing))]
    Missing {
        bootstrap: String,
        missing: Vec<String>,
    },
    #[error("creating the metadata client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
}

fn missing_message(bootstrap: &str, missing: &[String]) -> String {
    let mut m = format!(
        "{} topic(s) missing on {bootstrap}: {}\nCreate them before starting hookrelay:\n  \
         - on a real cluster: BOOTSTRAP={bootstrap} deploy/create-topics.sh (edit its names if you changed \
         [topics]), or for each one:",
        missing.len(),
        missing.join(", ")
    );
    for t in missing {
        m.push_str(&format!(
            "\n      kafka-topics.sh --bootstrap-server {bootstrap} --create --topic {t} --partitions 12"
        ));
    }
    m.push_str(
        "\n  - on the embedded broker: `hookrelay broker` creates every topic the configuration names; start it \
         with the same configuration (--config / HOOKRELAY_TOPICS__*)",
    );
    m
}

/// The topics of `required` that the cluster does not have, from one metadata request for all topics (a
/// request naming a topic could make a broker with auto-creation create it).
pub fn missing_topics(
    client: &BaseConsumer,
    required: &[String],
    timeout: Duration,
) -> rdkafka::error::KafkaResult<Vec<String>> {
    let md = client.fetch_metadata(None, timeout)?;
    let present: BTreeSet<&str> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name())
        .collect();
    Ok(required
        .iter()
        .filter(|t| !present.contains(t.as_str()))
        .cloned()
        .collect())
}

/// Waits up to `wait` for a broker to answer and every topic of `required` to exist (topics may still be
/// being created when a deployment starts). Errors name every missing topic and how to create it.
pub fn require(
    kafka: &KafkaConfig,
    required: &[String],
    wait: Duration,
) -> Result<(), TopicCheckError> {
    let client: BaseConsumer = reader_config(kafka).create()?;
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let attempt = missing_topics(
            &client,
            required,
            left.clamp(Duration::from_millis(200), Duration::from_secs(5)),
        );
        let err = match attempt {
            Ok(missing) if missing.is_empty() => return Ok(()),
            Ok(missing) => TopicCheckError::Missing {
                bootstrap: kafka.bootstrap_servers.clone(),
                missing,
            },
            Err(e) => TopicCheckError::Unreachable {
                bootstrap: kafka.bootstrap_servers.clone(),
                waited: wait,
                error: e.to_string(),
            },
        };
        if Instant::now() >= deadline {
            return Err(err);
        }
        if let TopicCheckError::Missing { missing, .. } = &err {
            tracing::info!(missing = %missing.join(", "), "waiting for topics to be created");
        }
        std::thread::sleep(Duration::from_millis(250).min(deadline - Instant::now()));
    }
}

/// [`require`], on a blocking thread (it waits on metadata requests), for the processes' async start-up.
pub async fn require_at_start(kafka: &KafkaConfig, required: Vec<String>) -> anyhow::Result<()> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || require(&kafka, &required, kafka.startup_timeout))
        .await
        .map_err(|e| anyhow::anyhow!("topic check panicked: {e}"))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_every_missing_topic_and_how_to_create_it() {
        let m = missing_message("k:9092", &["a".into(), "webhook-retries-1m".into()]);
        assert!(
            m.starts_with("2 topic(s) missing on k:9092: a, webhook-retries-1m"),
            "{m}"
        );
        assert!(m.contains("--create --topic webhook-retries-1m"), "{m}");
        assert!(m.contains("hookrelay broker"), "{m}");
    }
}
