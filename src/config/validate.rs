//! Validation of the whole configuration: every problem is collected and reported together, so an operator
//! fixes a bad deployment in one round trip instead of one per typo.

use std::time::Duration;

use super::{Config, ConfigError, EventEncoding, KNOWN_METHODS};

/// Below this, the budget would pause the consumer for the records of a single large fetch.
const MIN_MEMORY_BUDGET: u64 = 16 * 1024 * 1024;

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut p = Vec::new();
        self.validate_kafka_and_topics(&mut p);
        self.validate_dispatch(&mut p);
        self.validate_http_and_telemetry(&mut p);
        self.retry.validate(&mut p);
        self.aggregate.validate(&mut p);
        self.host_health.validate(&mut p);
        self.schema_registry.validate(&mut p);
        if let Err(problems) = crate::security::signing::Signer::from_config(&self.signing) {
            p.extend(problems);
        }
        if !self.security.ssrf_guard {
            tracing::warn!(
                "security.ssrf_guard is off: webhooks may reach private and loopback addresses"
            );
        }
        if p.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems: p })
        }
    }

    fn validate_kafka_and_topics(&self, p: &mut Vec<String>) {
        if self.kafka.bootstrap_servers.trim().is_empty() {
            p.push("kafka.bootstrap_servers is empty".to_string());
        }
        if self.kafka.dispatch_group_id.trim().is_empty() {
            p.push("kafka.dispatch_group_id is empty".to_string());
        }
        let t = &self.topics;
        for (name, topic) in [
            ("topics.sends", &t.sends),
            ("topics.send_events", &t.send_events),
            ("topics.abort_events", &t.abort_events),
            ("topics.retry_events", &t.retry_events),
            ("topics.failures", &t.failures),
            ("topics.dead_letters", &t.dead_letters),
            ("topics.alerts", &t.alerts),
            ("topics.aggregate_state", &t.aggregate_state),
        ] {
            if let Err(why) = check_topic_name(topic) {
                p.push(format!("{name} {why}"));
            }
        }
        for tier in &t.retry_tiers {
            match humantime::parse_duration(tier) {
                Ok(d) if !d.is_zero() => {
                    if let Err(why) = check_topic_name(&format!("{}-{tier}", t.retry_prefix)) {
                        p.push(format!("retry tier topic for {tier:?} {why}"));
                    }
                }
                _ => p.push(format!(
                    "topics.retry_tiers: {tier:?} is not a positive duration like \"5m\""
                )),
            }
        }
        if t.retry_tiers.is_empty() {
            p.push("topics.retry_tiers is empty".into());
        }
        if t.sends == t.failures || t.sends == t.dead_letters {
            p.push("topics.sends must differ from topics.failures and topics.dead_letters".into());
        }
        if !(1..=16).contains(&self.broker.brokers) {
            p.push("broker.brokers must be between 1 and 16".into());
        }
        if !(1..=1024).contains(&self.broker.partitions) {
            p.push("broker.partitions must be between 1 and 1024".into());
        }
    }

    fn validate_dispatch(&self, p: &mut Vec<String>) {
        let d = &self.dispatch;
        for (name, v) in [
            ("dispatch.max_in_flight", d.max_in_flight),
            ("dispatch.max_in_flight_per_host", d.max_in_flight_per_host),
            (
                "dispatch.max_pending_per_partition",
                d.max_pending_per_partition,
            ),
            (
                "dispatch.max_pending_bytes_per_partition",
                d.max_pending_bytes_per_partition,
            ),
            ("dispatch.max_record_bytes", d.max_record_bytes),
            ("dispatch.max_id_bytes", d.max_id_bytes),
            ("dispatch.max_field_bytes", d.max_field_bytes),
            ("http.max_url_bytes", self.http.max_url_bytes),
            (
                "http.max_request_body_bytes",
                self.http.max_request_body_bytes,
            ),
        ] {
            if v == 0 {
                p.push(format!("{name} must be at least 1"));
            }
        }
        if d.commit_interval.is_zero() {
            p.push("dispatch.commit_interval must be positive".into());
        }
        if d.host_state_interval < Duration::from_millis(10) {
            p.push("dispatch.host_state_interval must be at least 10ms".into());
        }
        if d.max_hold.is_zero() {
            p.push("dispatch.max_hold must be positive".into());
        }
        if d.max_queue_wait.is_zero() {
            p.push("dispatch.max_queue_wait must be positive".into());
        }
        if d.memory_budget.as_u64() < MIN_MEMORY_BUDGET {
            p.push(format!(
                "dispatch.memory_budget must be at least 16 MiB (got {})",
                d.memory_budget.display().iec()
            ));
        }
        self.validate_rate_limits(p);
        if d.allowed_methods.is_empty() {
            p.push("dispatch.allowed_methods is empty".into());
        }
        for m in &d.allowed_methods {
            if !KNOWN_METHODS.contains(&m.as_str()) {
                p.push(format!(
                    "dispatch.allowed_methods: unknown method {m:?} (known: {})",
                    KNOWN_METHODS.join(", ")
                ));
            }
        }
    }

    fn validate_rate_limits(&self, p: &mut Vec<String>) {
        for (name, rate) in &self.rate_limits {
            let host = name.strip_prefix("*.").unwrap_or(name);
            let valid = !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
                && host.bytes().all(|b| !b.is_ascii_uppercase());
            if !valid {
                p.push(format!(
                    "rate_limits: {name:?} is not a lower-case host name or *.suffix (e.g. \"hooks.example.com\" or \"*.example.com\")"
                ));
            }
            if !(rate.is_finite() && *rate >= 0.001 && *rate <= 1_000_000.0) {
                p.push(format!(
                    "rate_limits.{name:?}: {rate} is not a rate between 0.001 and 1,000,000 requests per second"
                ));
            }
        }
    }

    fn validate_http_and_telemetry(&self, p: &mut Vec<String>) {
        let h = &self.http;
        if h.request_timeout.is_zero() {
            p.push("http.request_timeout must be positive".into());
        }
        if h.connect_timeout.is_zero() {
            p.push("http.connect_timeout must be positive".into());
        }
        if h.user_agent.is_empty() || http::HeaderValue::from_str(&h.user_agent).is_err() {
            p.push("http.user_agent must be a non-empty, valid header value".into());
        }
        if self.events.encoding == EventEncoding::Confluent
            && self.events.schema_id.is_none()
            && !self.schema_registry.enabled()
        {
            p.push(
                "events.encoding = \"confluent\" needs events.schema_id, or a [schema_registry] to register it"
                    .into(),
            );
        }
        let e = &self.events;
        if e.encoding == EventEncoding::Confluent
            && !self.schema_registry.enabled()
            && (e.send_events || e.abort_events || e.retry_events)
        {
            p.push(
                "Currents Send/Abort/Retry events with events.encoding = \"confluent\" need a [schema_registry] \
                 (events.schema_id is the failure schema's id only)"
                    .into(),
            );
        }
        let t = &self.telemetry;
        if !t.listen.is_empty() && t.listen_addr().is_none() {
            p.push(format!(
                "telemetry.listen {:?} is not an address like 0.0.0.0:9090 (empty disables it)",
                t.listen
            ));
        }
        if t.probe_interval < Duration::from_millis(100) {
            p.push("telemetry.probe_interval must be at least 100ms".into());
        }
        let otlp = t.otlp_endpoint.trim();
        if !otlp.is_empty()
            && !url::Url::parse(otlp).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
        {
            p.push(format!(
                "telemetry.otlp_endpoint {otlp:?} is not an http(s) URL like http://otel-collector:4318 (empty: no traces)"
            ));
        }
        if t.otlp_service_name.trim().is_empty() {
            p.push("telemetry.otlp_service_name is empty".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&t.log_level).is_err() {
            p.push(format!(
                "telemetry.log_level {:?} is not a valid filter",
                t.log_level
            ));
        }
    }
}

/// Kafka's own rules for topic names.
fn check_topic_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("is empty or reserved");
    }
    if name.len() > 249 {
        return Err("is longer than 249 characters");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("may only contain ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}
