//! `[schema_registry]`: a Confluent-compatible Schema Registry, for Confluent-framed sends in (their writer
//! schema fetched by id) and, later, events out. Off while `url` is empty.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::REDACTED;

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// Base URL, e.g. `http://schema-registry:8081`; empty: no registry (Confluent-framed sends are read with
    /// hookrelay's own schema, whatever their schema id says).
    pub url: String,
    /// HTTP basic authentication (Confluent Cloud: the API key and secret).
    pub username: String,
    pub password: String,
    /// A bearer token instead of basic authentication.
    pub bearer_token: String,
    /// PEM file of the certificate authorities to trust for an `https` registry, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// The longest one registry request may take.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// How long start-up waits for a registry that does not answer before it gives up.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// Writer schemas kept by id; the least recently used beyond it are fetched again when next seen.
    pub cache_capacity: u64,
    /// The longest pause between attempts to reach a registry that does not answer, while records wait.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Register the event schemas under their topics' `<topic>-value` subjects at start-up; off: only look
    /// them up (for registries where schemas are registered by a pipeline, not by clients).
    pub auto_register: bool,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            username: String::new(),
            password: String::new(),
            bearer_token: String::new(),
            ca_file: None,
            request_timeout: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(30),
            cache_capacity: 1_000,
            max_backoff: Duration::from_secs(30),
            auto_register: true,
        }
    }
}

impl std::fmt::Debug for SchemaRegistryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |s: &str| if s.is_empty() { "" } else { REDACTED };
        f.debug_struct("SchemaRegistryConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &secret(&self.password))
            .field("bearer_token", &secret(&self.bearer_token))
            .field("ca_file", &self.ca_file)
            .field("request_timeout", &self.request_timeout)
            .field("startup_timeout", &self.startup_timeout)
            .field("cache_capacity", &self.cache_capacity)
            .field("max_backoff", &self.max_backoff)
            .field("auto_register", &self.auto_register)
            .finish()
    }
}

impl SchemaRegistryConfig {
    /// Whether a registry is configured.
    pub fn enabled(&self) -> bool {
        !self.url.trim().is_empty()
    }

    /// The credentials replaced by `<redacted>`, for a printed configuration.
    pub fn redact(&mut self) {
        for s in [&mut self.password, &mut self.bearer_token] {
            if !s.is_empty() {
                *s = REDACTED.into();
            }
        }
    }

    pub fn validate(&self, p: &mut Vec<String>) {
        if !self.enabled() {
            return;
        }
        match url::Url::parse(self.url.trim()) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {}
            Ok(u) => p.push(format!(
                "schema_registry.url must be an http or https URL with a host (got scheme {:?})",
                u.scheme()
            )),
            Err(e) => p.push(format!("schema_registry.url is not a URL: {e}")),
        }
        if self.username.is_empty() != self.password.is_empty() {
            p.push("schema_registry.username and schema_registry.password go together".into());
        }
        if !self.username.is_empty() && !self.bearer_token.is_empty() {
            p.push(
                "schema_registry: set basic authentication (username, password) or bearer_token, not both"
                    .into(),
            );
        }
        for (name, s) in [
            ("password", &self.password),
            ("bearer_token", &self.bearer_token),
        ] {
            if s == REDACTED {
                p.push(format!(
                    "schema_registry.{name} was redacted by check-config: put the secret back"
                ));
            }
        }
        if let Some(path) = &self.ca_file {
            match std::fs::read(path) {
                Ok(pem) => {
                    if reqwest::Certificate::from_pem_bundle(&pem).map_or(true, |c| c.is_empty()) {
                        p.push(format!(
                            "schema_registry.ca_file {} holds no PEM certificate",
                            path.display()
                        ));
                    }
                }
                Err(e) => p.push(format!(
                    "schema_registry.ca_file {} cannot be read: {e}",
                    path.display()
                )),
            }
        }
        for (name, d) in [
            ("request_timeout", self.request_timeout),
            ("startup_timeout", self.startup_timeout),
            ("max_backoff", self.max_backoff),
        ] {
            if d.is_zero() {
                p.push(format!("schema_registry.{name} must be positive"));
            }
        }
        if self.cache_capacity == 0 {
            p.push("schema_registry.cache_capacity must be at least 1".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_by_default_and_every_problem_is_named() {
        let mut p = Vec::new();
        SchemaRegistryConfig::default().validate(&mut p);
        assert!(p.is_empty() && !SchemaRegistryConfig::default().enabled());
        let bad = SchemaRegistryConfig {
            url: "ftp://registry".into(),
            username: "key".into(),
            bearer_token: "t".into(),
            ca_file: Some("/nonexistent/ca.pem".into()),
            request_timeout: Duration::ZERO,
            cache_capacity: 0,
            ..Default::default()
        };
        bad.validate(&mut p);
        assert_eq!(p.len(), 6, "{p:#?}");
    }

    #[test]
    fn credentials_never_reach_debug_output() {
        let c = SchemaRegistryConfig {
            url: "https://r".into(),
            username: "key".into(),
            password: "hunter2".into(),
            ..Default::default()
        };
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2") && text.contains("key"));
    }
}
