//! One typed configuration for every subcommand.
//!
//! Sources, later ones winning: built-in defaults, the TOML file given with `--config`, and environment
//! variables `HOOKRELAY_<SECTION>__<KEY>`. Everything is validated once at start-up and *every* problem is
//! reported together, so an operator fixes a bad deployment in one round trip instead of one per typo.

use std::path::Path;
use std::time::Duration;

mod env;
mod events;
mod kafka;
mod registry;
mod telemetry;
mod validate;

pub use events::{EventEncoding, EventsConfig};
pub use kafka::{is_secret_property, KafkaConfig};
pub use registry::SchemaRegistryConfig;
pub use telemetry::{LogFormat, OtlpProtocol, TelemetryConfig};

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::aggregate::config::AggregateConfig;
use crate::dispatch::lane::HostHealthConfig;
use crate::dispatch::retry::RetryPolicy;
use crate::security::{SecurityConfig, SigningConfig};

/// What `check-config` prints instead of a credential.
pub const REDACTED: &str = "<redacted>";

/// HTTP methods hookrelay knows how to send; which of them are accepted is configured.
pub const KNOWN_METHODS: [&str; 5] = ["POST", "PUT", "DELETE", "GET", "PATCH"];

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub dispatch: DispatchConfig,
    pub http: HttpConfig,
    pub events: EventsConfig,
    pub telemetry: TelemetryConfig,
    pub broker: BrokerConfig,
    pub retry: RetryPolicy,
    pub host_health: HostHealthConfig,
    pub security: SecurityConfig,
    pub signing: SigningConfig,
    pub aggregate: AggregateConfig,
    pub schema_registry: SchemaRegistryConfig,
    /// Requests per second per host, for the fleet (split by demand through the shared host state): host
    /// names exact or `*.suffix`.
    pub rate_limits: std::collections::BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    pub sends: String,
    pub failures: String,
    pub dead_letters: String,
    pub alerts: String,
    /// The aggregator's checkpoints (compacted): per-workspace windows, so a new owner of a partition
    /// restores them and replays only what came after.
    pub aggregate_state: String,
    /// Retry tier topics are `<retry_prefix>-<tier>`, e.g. `webhook-retries-5m`.
    pub retry_prefix: String,
    /// Delays of the retry tier topics, shortest first. A retry waits in the longest tier that fits its
    /// remaining delay, hops on to shorter ones, and is sent once due.
    pub retry_tiers: Vec<String>,
    /// Braze Currents' `Send`, `Abort` and `Retry` webhook events, each written when `[events]` enables it.
    pub send_events: String,
    pub abort_events: String,
    pub retry_events: String,
    /// What dispatchers see of hosts, shared (compacted, keyed by instance, host and workspace).
    pub host_state: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            sends: "webhook-sends".into(),
            failures: "webhook-failures".into(),
            dead_letters: "webhook-dead-letters".into(),
            alerts: "webhook-alerts".into(),
            aggregate_state: "webhook-aggregate-state".into(),
            retry_prefix: "webhook-retries".into(),
            retry_tiers: ["10s", "1m", "5m", "30m", "2h"].map(String::from).to_vec(),
            send_events: "webhook-send-events".into(),
            abort_events: "webhook-abort-events".into(),
            retry_events: "webhook-retry-events".into(),
            host_state: "webhook-host-state".into(),
        }
    }
}

impl TopicsConfig {
    /// `(topic, delay)` of each retry tier, shortest first; unparseable tiers are left out (validation
    /// reports them).
    pub fn retry_tier_topics(&self) -> Vec<(String, Duration)> {
        let mut tiers: Vec<(String, Duration)> = self
            .retry_tiers
            .iter()
            .filter_map(|t| {
                humantime::parse_duration(t)
                    .ok()
                    .map(|d| (format!("{}-{t}", self.retry_prefix), d))
            })
            .collect();
        tiers.sort_by_key(|(_, d)| *d);
        tiers
    }

    /// Topics `hookrelay dispatch` reads or writes: sends and retry tiers in, failures, dead letters and
    /// retry tiers out.
    pub fn dispatch_topics(&self) -> Vec<String> {
        let mut t = vec![
            self.sends.clone(),
            self.failures.clone(),
            self.dead_letters.clone(),
        ];
        t.extend(self.retry_tier_topics().into_iter().map(|(t, _)| t));
        t
    }

    /// Topics `hookrelay aggregate` reads or writes.
    pub fn aggregate_topics(&self) -> Vec<String> {
        vec![
            self.failures.clone(),
            self.alerts.clone(),
            self.aggregate_state.clone(),
        ]
    }

    /// Every topic hookrelay writes or reads.
    pub fn all(&self) -> Vec<String> {
        let mut all = vec![
            self.sends.clone(),
            self.failures.clone(),
            self.dead_letters.clone(),
            self.alerts.clone(),
            self.aggregate_state.clone(),
            self.send_events.clone(),
            self.abort_events.clone(),
            self.retry_events.clone(),
            self.host_state.clone(),
        ];
        all.extend(self.retry_tier_topics().into_iter().map(|(t, _)| t));
        all
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DispatchConfig {
    /// Webhook requests in flight at once, across all partitions.
    pub max_in_flight: usize,
    /// Webhook requests in flight at once to one host, so a slow host cannot take every slot.
    pub max_in_flight_per_host: usize,
    /// Unfinished records one partition may hold before it is paused (backpressure). Pausing is not free:
    /// librdkafka drops what it prefetched and fetches it again on resume, so the bound is generous; records
    /// beyond twice `max_in_flight` wait as plain records (about 0.7 KB each plus their body).
    pub max_pending_per_partition: usize,
    /// Bytes of unfinished records (their Kafka values) one partition may hold before it is paused, whatever
    /// their number: large bodies pause a partition long before `max_pending_per_partition` would.
    pub max_pending_bytes_per_partition: usize,
    /// How often finished offsets are committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How long revoked partitions may keep working before their offsets are committed and they are let go.
    #[serde(with = "humantime_serde")]
    pub rebalance_grace: Duration,
    /// How long SIGTERM/SIGINT may take in all: in-flight sends get all but the last fifth (at most 5 s), which
    /// is kept for the final commit, leaving the group and flushing.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Methods a send request may use.
    pub allowed_methods: Vec<String>,
    /// Accept records that are neither JSON nor framed Avro as plain Avro binary send requests.
    pub accept_plain_avro: bool,
    /// Records larger than this are dead-lettered without being decoded.
    pub max_record_bytes: usize,
    /// Longest `id` and `workspace_id`.
    pub max_id_bytes: usize,
    /// Longest optional identifier or name, so that failure events stay small.
    pub max_field_bytes: usize,
    /// The longest a send held back by a rate limit or a `Retry-After` waits in the process; a longer hold
    /// is requeued to a retry tier (its attempt count unchanged), so held sends never fill the slots.
    #[serde(with = "humantime_serde")]
    pub max_hold: Duration,
    /// Sends one host may have queued for its `max_in_flight_per_host` slots; more are spilled to a retry
    /// tier without an attempt, to come back at the rate the host absorbs.
    pub max_queued_per_host: usize,
    /// The longest a send waits in its host's queue before it is spilled.
    #[serde(with = "humantime_serde")]
    pub max_queue_wait: Duration,
    /// Bytes of consumed records not yet finished (bodies, copies, bookkeeping) and of librdkafka's prefetch,
    /// across every partition and queue; at the budget records are taken one per 50 ms until a sixteenth of
    /// it is free again.
    pub memory_budget: bytesize::ByteSize,
    /// Share what this dispatcher sees of hosts (unhealthy answers, pauses, `Retry-After` holds) with the
    /// others through `topics.host_state`, so the unhealthy-host threshold and the holds are the fleet's.
    pub share_host_state: bool,
    /// How often what it sees is written and what the others wrote taken into its lanes.
    #[serde(with = "humantime_serde")]
    pub host_state_interval: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 512,
            max_in_flight_per_host: 128,
            max_pending_per_partition: 10_000,
            max_pending_bytes_per_partition: 32 * 1024 * 1024,
            commit_interval: Duration::from_secs(1),
            rebalance_grace: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            allowed_methods: ["POST", "PUT", "DELETE", "GET"].map(String::from).to_vec(),
            accept_plain_avro: false,
            max_record_bytes: 4 * 1024 * 1024,
            max_id_bytes: 1024,
            max_field_bytes: 4096,
            max_hold: Duration::from_secs(10),
            share_host_state: true,
            host_state_interval: Duration::from_millis(500),
            max_queued_per_host: 512,
            max_queue_wait: Duration::from_secs(30),
            memory_budget: bytesize::ByteSize::mib(256),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Whole-request timeout, connection included (Braze: 90 s).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Response bytes read and kept as `raw_response`; the rest is never read.
    pub max_response_bytes: usize,
    pub pool_max_idle_per_host: usize,
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    pub user_agent: String,
    /// Largest request body a send may carry; larger sends are dead-lettered.
    pub max_request_body_bytes: usize,
    /// Most headers a send may carry.
    pub max_request_headers: usize,
    /// Most bytes of header names and values a send may carry.
    pub max_request_header_bytes: usize,
    /// Longest webhook URL a send may carry.
    pub max_url_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(90),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 1024,
            pool_max_idle_per_host: 512,
            pool_idle_timeout: Duration::from_secs(90),
            user_agent: concat!("hookrelay/", env!("CARGO_PKG_VERSION")).into(),
            max_request_body_bytes: 1024 * 1024,
            max_request_headers: 64,
            max_request_header_bytes: 16 * 1024,
            max_url_bytes: 8 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Brokers in the embedded cluster.
    pub brokers: i32,
    /// Partitions of each default topic the embedded broker creates.
    pub partitions: i32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            brokers: 1,
            partitions: 6,
        }
    }
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .problems.join("\n  - "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl Config {
    /// Defaults, then the TOML file, then `HOOKRELAY_<SECTION>__<KEY>` variables; then validation.
    // The one place the process environment is read.
    #[allow(clippy::disallowed_methods)]
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// As [`Config::load`], with the environment given explicitly (tests).
    pub fn load_from(
        file: Option<&Path>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError {
                    problems: vec![format!("config file {} does not exist", path.display())],
                });
            }
            fig = fig.merge(Toml::file(path));
        }
        Self::extract(fig, vars)
    }

    /// The effective configuration as TOML that can be saved and used as a config file, with every
    /// credential (secret-looking librdkafka properties, signing secrets, the SMTP password) replaced by
    /// `<redacted>`.
    pub fn to_toml_redacted(&self) -> Result<String, toml::ser::Error> {
        let mut c = self.clone();
        let redact = |m: &mut std::collections::BTreeMap<String, String>| {
            for (k, v) in m.iter_mut() {
                if is_secret_property(k) {
                    *v = REDACTED.into();
                }
            }
        };
        redact(&mut c.kafka.properties);
        redact(&mut c.kafka.consumer_properties);
        redact(&mut c.kafka.producer_properties);
        for secrets in c.signing.secrets.values_mut() {
            for s in secrets.iter_mut() {
                *s = REDACTED.into();
            }
        }
        if !c.aggregate.smtp.password.is_empty() {
            c.aggregate.smtp.password = REDACTED.into();
        }
        c.schema_registry.redact();
        toml::to_string(&c)
    }

    /// As [`Config::load_from`], with the file's text given (tests, fuzzing).
    pub fn load_str(
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let fig = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
        Self::extract(fig, vars)
    }

    fn extract(
        mut fig: Figment,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let env_toml = env::env_overrides(vars);
        fig = fig.merge(Toml::string(&env_toml));
        let mut config: Config = fig.extract_lossy().map_err(|e| ConfigError {
            problems: e.into_iter().map(|e| e.to_string()).collect(),
        })?;
        config.dispatch.allowed_methods = config
            .dispatch
            .allowed_methods
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn environment_overrides_nested_keys_and_parses_values() {
        let c = Config::load_from(
            None,
            vars(&[
                ("HOOKRELAY_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092"),
                ("HOOKRELAY_HTTP__REQUEST_TIMEOUT", "2m"),
                ("HOOKRELAY_DISPATCH__MAX_IN_FLIGHT", "7"),
                ("HOOKRELAY_KAFKA__PROPERTIES__SASL_MECHANISM", "PLAIN"),
                ("HOOKRELAY_KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "6000"),
                ("HOOKRELAY_KAFKA__DISPATCH_GROUP_ID", "123"),
                ("HOOKRELAY_DISPATCH__ACCEPT_PLAIN_AVRO", "true"),
                (
                    "HOOKRELAY_DISPATCH__ALLOWED_METHODS",
                    "[\"post\", \"PATCH\"]",
                ),
                ("HOOKRELAY_CONFIG", "/ignored/not/a/section"),
            ]),
        )
        .unwrap();
        assert_eq!(c.kafka.bootstrap_servers, "k1:9092,k2:9092");
        assert_eq!(c.http.request_timeout, Duration::from_secs(120));
        assert_eq!(c.dispatch.max_in_flight, 7);
        assert_eq!(c.kafka.properties["sasl.mechanism"], "PLAIN");
        assert_eq!(c.kafka.properties["session.timeout.ms"], "6000");
        assert_eq!(c.kafka.dispatch_group_id, "123");
        assert!(c.dispatch.accept_plain_avro);
        assert_eq!(c.dispatch.allowed_methods, ["POST", "PATCH"]);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let err = Config::load_from(
            None,
            vars(&[
                ("HOOKRELAY_DISPATCH__MAX_IN_FLIGHT", "0"),
                ("HOOKRELAY_TOPICS__FAILURES", "bad topic!"),
                (
                    "HOOKRELAY_DISPATCH__ALLOWED_METHODS",
                    "[\"POST\", \"BREW\"]",
                ),
                ("HOOKRELAY_EVENTS__ENCODING", "confluent"),
            ]),
        )
        .unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
        let text = err.to_string();
        assert!(text.contains("max_in_flight") && text.contains("BREW"));
    }

    #[test]
    fn unknown_keys_and_bad_durations_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[http]\nrequest_timeout = \"soon\"\n").unwrap();
        assert!(Config::load_from(Some(&path), vec![]).is_err());
        std::fs::write(&path, "[dispatch]\nmax_inflight = 3\n").unwrap();
        let err = Config::load_from(Some(&path), vec![]).unwrap_err();
        assert!(err.to_string().contains("max_inflight"), "{err}");
    }

    #[test]
    fn secrets_are_redacted_in_debug_output() {
        let mut c = Config::default();
        c.kafka
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        c.kafka
            .consumer_properties
            .insert("ssl.key.password".into(), "swordfish".into());
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("swordfish"),
            "{shown}"
        );
    }

    #[test]
    fn the_printed_configuration_redacts_credentials_and_loads_back_once_they_are_put_back() {
        let mut c = Config::default();
        c.kafka
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        c.kafka
            .properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        c.aggregate.smtp.password = "swordfish".into();
        c.dispatch.max_in_flight = 7;
        c.signing.secrets.insert(
            "ws".into(),
            vec!["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into()],
        );
        let text = c.to_toml_redacted().unwrap();
        assert!(
            !text.contains("hunter2") && !text.contains("swordfish"),
            "{text}"
        );
        assert!(!text.contains("MfKQ9r8G"), "{text}");
        let refused = Config::load_str(&text, Vec::<(String, String)>::new()).unwrap_err();
        assert!(
            refused
                .to_string()
                .contains("redacted by check-config: put the secret back"),
            "{refused}"
        );
        let text = text.replace(REDACTED, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let back = Config::load_str(&text, Vec::<(String, String)>::new()).expect("loads back");
        assert_eq!(back.dispatch.max_in_flight, 7);
        assert_eq!(
            back.kafka.properties["sasl.password"],
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        );
        assert_eq!(back.kafka.properties["security.protocol"], "SASL_SSL");
    }

    #[test]
    fn example_config_matches_the_defaults() {
        let text = include_str!("../../hookrelay.example.toml");
        let from_file: Config = toml::from_str(text).expect("example parses");
        assert_eq!(
            toml::to_string(&from_file).unwrap(),
            toml::to_string(&Config::default()).unwrap(),
            "hookrelay.example.toml must document exactly the defaults"
        );
    }
}
