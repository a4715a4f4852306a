//! Kafka connection settings, with credentials kept out of debug output.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// Consumer group of `hookrelay dispatch`.
    pub dispatch_group_id: String,
    /// librdkafka properties passed through to every client (SASL, TLS, tuning).
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties for consumers only (e.g. `session.timeout.ms`), applied after `properties`.
    pub consumer_properties: BTreeMap<String, String>,
    /// librdkafka properties for producers only (e.g. `linger.ms`), applied after `properties`.
    pub producer_properties: BTreeMap<String, String>,
    /// How long `dispatch` and `aggregate` wait at start-up for a broker to answer and every topic they use
    /// to exist, before exiting with the list of what is missing.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: "localhost:9092".into(),
            dispatch_group_id: "hookrelay-dispatch".into(),
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
            startup_timeout: Duration::from_secs(30),
        }
    }
}

/// Hand-written so that credentials in pass-through properties never reach a log line.
impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |m: &BTreeMap<String, String>| -> BTreeMap<String, String> {
            m.iter()
                .map(|(k, v)| {
                    let shown = if is_secret_property(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    };
                    (k.clone(), shown.to_string())
                })
                .collect()
        };
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("dispatch_group_id", &self.dispatch_group_id)
            .field("properties", &redacted(&self.properties))
            .field("consumer_properties", &redacted(&self.consumer_properties))
            .field("producer_properties", &redacted(&self.producer_properties))
            .field("startup_timeout", &self.startup_timeout)
            .finish()
    }
}

/// Property names whose values are credentials.
pub fn is_secret_property(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["password", "secret", "key.pem", "token", "jaas"]
        .iter()
        .any(|s| n.contains(s))
}
