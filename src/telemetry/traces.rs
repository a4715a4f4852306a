//! OpenTelemetry traces, off unless `telemetry.otlp_endpoint` is set: a span per webhook attempt (`send`),
//! exported over OTLP/HTTP. The W3C `traceparent` of an incoming Kafka record becomes the span's parent, and
//! the attempt's own context goes out on the webhook request and on the Kafka records it writes (failure
//! event, retry), so a trace follows a send from its producer through every attempt.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::config::{OtlpProtocol, TelemetryConfig};

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported; when not, nothing here costs more than this load.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The exporter, if configured: its tracer goes into a `tracing` layer, and the provider must be shut
/// down at exit so the last spans are sent.
pub fn provider(cfg: &TelemetryConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    if cfg.otlp_endpoint.trim().is_empty() {
        return Ok(None);
    }
    let endpoint = format!(
        "{}/v1/traces",
        cfg.otlp_endpoint.trim().trim_end_matches('/')
    );
    let protocol = match cfg.otlp_protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(Http(client))
        .with_protocol(protocol)
        .with_endpoint(endpoint)
        .build()?;
    let batches = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_scheduled_delay(Duration::from_secs(1))
                .build(),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(batches)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(cfg.otlp_service_name.clone())
                .build(),
        )
        .build();
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(provider))
}

/// The tracer spans are exported with.
pub fn tracer(provider: &SdkTracerProvider) -> opentelemetry_sdk::trace::Tracer {
    provider.tracer("hookrelay")
}

/// Makes the W3C trace context of a Kafka record's headers the parent of `span`.
pub fn adopt_parent(span: &tracing::Span, headers: &[(String, Vec<u8>)]) {
    if !enabled() {
        return;
    }
    let parent = TraceContextPropagator::new().extract(&RecordHeaders(headers));
    // Without a valid parent in the headers the span starts a trace of its own.
    let _ = span.set_parent(parent);
}

/// The current span's W3C trace context as header pairs (`traceparent`, maybe `tracestate`); empty when
/// traces are off.
pub fn current_context() -> Vec<(String, String)> {
    if !enabled() {
        return Vec::new();
    }
    let mut out = Fields::default();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut out);
    out.sendable()
}

/// The W3C trace context a Kafka record came with, to pass on unchanged; empty when traces are off.
pub fn record_context(headers: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    if !enabled() {
        return Vec::new();
    }
    passed_on(headers)
}

/// The trace context of `headers` as it would be passed on.
fn passed_on(headers: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    let parent = TraceContextPropagator::new().extract(&RecordHeaders(headers));
    let mut out = Fields::default();
    TraceContextPropagator::new().inject_context(&parent, &mut out);
    out.sendable()
}

struct RecordHeaders<'a>(&'a [(String, Vec<u8>)]);

impl Extractor for RecordHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

#[derive(Default)]
struct Fields(HashMap<String, String>);

impl Fields {
    /// Non-empty values that are valid HTTP header values. `tracestate` is copied from a record's headers
    /// (foreign bytes) and the propagator accepts control characters in it; one that an HTTP client would
    /// refuse is dropped rather than failing the webhook request.
    fn sendable(self) -> Vec<(String, String)> {
        self.0
            .into_iter()
            .filter(|(_, v)| !v.is_empty() && v.bytes().all(|b| (0x20..0x7f).contains(&b)))
            .collect()
    }
}

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

/// The exporter's HTTP client: reqwest's blocking client, because the SDK's batch processor exports from a
/// thread of its own, outside any async runtime.
#[derive(Debug)]
struct Http(reqwest::blocking::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Http {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(body.to_vec())
            .send()?;
        let mut out = http::Response::builder().status(response.status());
        for (k, v) in response.headers() {
            out = out.header(k, v);
        }
        let body = response.bytes()?;
        Ok(out.body(body)?)
    }
}

/// The span of one attempt of send `id`, parented by the trace context its record came with (when traces
/// are on).
pub fn send_span(
    id: &str,
    workspace: &str,
    host: &str,
    attempt: u32,
    headers: &[(String, Vec<u8>)],
) -> tracing::Span {
    let span = tracing::info_span!(
        "send",
        id = %id,
        workspace = %workspace,
        host = host,
        attempt = i64::from(attempt),
        status = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    adopt_parent(&span, headers);
    span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_header_is_read_whatever_its_case_and_garbage_is_ignored() {
        let headers = vec![(
            "TraceParent".to_string(),
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
        )];
        let cx = TraceContextPropagator::new().extract(&RecordHeaders(&headers));
        use opentelemetry::trace::TraceContextExt as _;
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let hostile_state = vec![
            headers[0].clone(),
            ("tracestate".to_string(), b"a=x\x01y".to_vec()),
        ];
        assert_eq!(
            passed_on(&hostile_state),
            vec![(
                "traceparent".to_string(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_string()
            )],
            "a tracestate an HTTP client would refuse is not passed on"
        );
        let garbage = vec![("traceparent".to_string(), vec![0xff, 0x00, b'-'])];
        let cx = TraceContextPropagator::new().extract(&RecordHeaders(&garbage));
        assert!(!cx.span().span_context().is_valid());
    }
}
