//! `[telemetry]`: the metrics and health listener, logs, and OpenTelemetry traces.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// How spans go to the OTLP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OtlpProtocol {
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`; empty disables the listener.
    pub listen: String,
    pub log_format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `hookrelay=debug,rdkafka=warn`.
    pub log_level: String,
    /// How often the broker is probed for `/readyz` and the consumer-lag gauges (timeout: the lesser of
    /// this and 5 s).
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
    /// OpenTelemetry traces over OTLP/HTTP to this base URL (`/v1/traces` is appended), e.g.
    /// `http://otel-collector:4318`; empty: no traces.
    pub otlp_endpoint: String,
    pub otlp_protocol: OtlpProtocol,
    /// `service.name` of the exported spans.
    pub otlp_service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9090".into(),
            log_format: LogFormat::Human,
            log_level: "info".into(),
            probe_interval: Duration::from_secs(10),
            otlp_endpoint: String::new(),
            otlp_protocol: OtlpProtocol::HttpProtobuf,
            otlp_service_name: "hookrelay".into(),
        }
    }
}

impl TelemetryConfig {
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.parse().ok()
    }

    pub fn probe_timeout(&self) -> Duration {
        self.probe_interval.min(Duration::from_secs(5))
    }
}
