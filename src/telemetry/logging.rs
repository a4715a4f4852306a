//! `tracing` set-up: human or JSON lines on stderr, so stdout stays for program output (the broker's
//! `bootstrap.servers=` line, the demo's table); and, when configured, the attempt spans exported over OTLP.

use std::io::IsTerminal as _;

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber; a second call (tests, demo) is a no-op. `RUST_LOG` wins over config.
/// Returns the trace exporter, to be shut down at exit, when `telemetry.otlp_endpoint` is set.
pub fn init(
    cfg: &TelemetryConfig,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: a file, a pipe or an orchestrator's log gets plain text.
    let colour = std::io::stderr().is_terminal();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let fmt = match cfg.log_format {
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
        LogFormat::Human => fmt.boxed(),
    };
    let provider = super::traces::provider(cfg)?;
    // Only the attempt spans are exported: they carry the workspace, host, status and outcome.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(super::traces::tracer(p))
            .with_filter(filter_fn(|m| m.is_span() && m.name() == "send"))
    });
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init();
    Ok(provider)
}
