//! `hookrelay demo`: the whole system on one machine, with realistic traffic and a table that adds up.

mod registry;
mod report;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use clap::Args;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::Config;
use crate::events::SendRequest;
use crate::tools::examples::ExampleSend;
use crate::tools::harness::{
    with_embedded_broker, LocalAggregator, LocalDispatcher, OutputReader, SendProducer,
};
use crate::tools::receiver::{Receiver, Script};
use report::Report;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Send requests to produce.
    #[arg(long, default_value_t = 3000)]
    pub sends: u32,
    /// Partitions of the send topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Give up waiting for every outcome after this long.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
    /// Seed of the traffic generator (same seed, same traffic).
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// The endpoints the demo traffic goes to.
struct Endpoints {
    healthy: Receiver,
    flaky: Receiver,
    auth: Receiver,
    /// Always 503, reached as `localhost` so its host pause does not touch the others (127.0.0.1).
    overloaded: Receiver,
    unreachable: SocketAddr,
}

pub fn run(mut config: Config, args: DemoArgs) -> anyhow::Result<()> {
    demo_timings(&mut config);
    config.http.connect_timeout = Duration::from_secs(1);
    let partitions = args.partitions;
    let (table, adds_up) = with_embedded_broker(config, partitions, |config| {
        eprintln!(
            "embedded broker at {}; topic {} has {partitions} partitions",
            config.kafka.bootstrap_servers, config.topics.sends
        );
        demo(config, args)
    })?;
    println!("{table}");
    anyhow::ensure!(
        adds_up,
        "the demo's numbers do not add up (see the table above)"
    );
    Ok(())
}

/// Braze's policy squeezed into seconds, so retries, budgets and host pauses all happen while you watch.
fn demo_timings(config: &mut Config) {
    config.http.request_timeout = Duration::from_secs(1);
    config.http.connect_timeout = Duration::from_secs(1);
    config.topics.retry_tiers = vec!["1s".into(), "4s".into()];
    config.retry.initial_backoff = Duration::from_millis(300);
    config.retry.max_backoff = Duration::from_secs(3);
    config.retry.max_retries = 3;
    config.retry.window = Duration::from_secs(20);
    config.retry.unreachable_max_retries = 2;
    config.retry.unreachable_window = Duration::from_secs(10);
    config.host_health.threshold = 150;
    config.host_health.window = Duration::from_secs(2);
    config.host_health.pause = Duration::from_secs(2);
    config.aggregate.threshold = 300;
    config.aggregate.eml_dir = "demo-out/mail".into();
}

async fn demo(mut config: Config, args: DemoArgs) -> anyhow::Result<(String, bool)> {
    let endpoints = Endpoints::start().await?;
    let registry = registry::DemoRegistry::start(&config).await?;
    config.schema_registry.url = registry.url();
    config.events.send_events = true;
    config.events.abort_events = true;
    config.events.retry_events = true;
    // The overloaded host takes 40 requests a second and no send waits longer than half a second for it:
    // bursts to it are deferred to the retry tiers (Currents Retry events).
    config.rate_limits.insert("localhost".into(), 40.0);
    config.dispatch.max_hold = Duration::from_millis(500);
    let dispatcher = LocalDispatcher::spawn(&config);
    let aggregator = LocalAggregator::spawn(&config);
    let metrics = dispatcher.metrics.clone();
    let reader = OutputReader::start(&config).await?;
    let started = Instant::now();
    let started_wall = std::time::SystemTime::now();
    let progress = show_progress(metrics.clone(), reader.clone(), args.sends, started);
    let (sent, framed) = produce_traffic(&config, &args, &endpoints, &registry).await?;
    let observed = reader
        .wait_until(args.deadline, |o| {
            metrics.sends.with_label_values(&["delivered"]).get()
                + o.terminal_failures() as u64
                + o.dead_letters.len() as u64
                >= sent
        })
        .await;
    let elapsed = started.elapsed();
    progress.abort();
    dispatcher.stop().await?;
    reader.stop();
    let alerts = settle_aggregator(&aggregator, observed.failures.len() as u64).await;
    let currents = registry.read_back(&config).await?;
    aggregator.stop().await?;
    let report = Report {
        sent,
        delivered: metrics.sends.with_label_values(&["delivered"]).get(),
        delivered_after_retry: metrics.delivered_after_retry.get(),
        host_pauses: metrics.host_pauses.with_label_values(&["paused"]).get()
            + metrics.host_pauses.with_label_values(&["extended"]).get(),
        observed,
        elapsed,
        receivers: [
            ("healthy", endpoints.healthy.count()),
            ("flaky", endpoints.flaky.count()),
            ("auth", endpoints.auth.count()),
            ("overloaded", endpoints.overloaded.count()),
        ],
    };
    let mut text = report.render();
    let [send, abort, retry] = currents.read;
    text.push_str(&format!(
        "\n  schema registry {}: {framed} sends produced Confluent-framed with a producer's own schema \
         (id {}: ours and a field added with a default), each read with it\n  Braze Currents events read \
         back through the registry with Braze's schemas: Send {send} · Abort {abort} · Retry {retry}\n",
        registry.url(),
        registry.writer_id,
    ));
    text.push_str(&alert_summary(&config, alerts, started_wall));
    Ok((text, report.adds_up() && currents.undecodable == 0))
}

impl Endpoints {
    /// The scripted receivers: healthy, flaky, failing auth, overloaded; and a closed port.
    async fn start() -> anyhow::Result<Self> {
        let latency = |ms| Script {
            mix: vec![(200, 1)],
            latency: Duration::from_millis(ms),
            latency_jitter: Duration::from_millis(ms * 2),
            record_requests: false,
            ..Script::default()
        };
        let receiver = |mix: Vec<(u16, u32)>, ms| {
            Receiver::start(
                "127.0.0.1:0".parse().expect("an address"),
                Script { mix, ..latency(ms) },
            )
        };
        let flaky = vec![
            (200, 70),
            (503, 6),
            (429, 3),
            (404, 6),
            (400, 6),
            (302, 5),
            (502, 4),
        ];
        Ok(Self {
            healthy: receiver(vec![(200, 97), (500, 3)], 5).await?,
            flaky: receiver(flaky, 10).await?,
            auth: receiver(vec![(401, 2), (403, 1)], 3).await?,
            overloaded: receiver(vec![(503, 1)], 5).await?,
            unreachable: closed_port().await?,
        })
    }
}

/// A progress line a second until aborted.
fn show_progress(
    metrics: crate::telemetry::DispatchMetrics,
    reader: OutputReader,
    total: u32,
    started: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let o = reader.snapshot();
            eprintln!(
                "[{:>5.1}s] of {total} sends: delivered {} · failure events {} · dead-lettered {} · in flight {}",
                started.elapsed().as_secs_f64(),
                metrics.sends.with_label_values(&["delivered"]).get(),
                o.failures.len(),
                o.dead_letters.len(),
                metrics.pending_records.get(),
            );
        }
    })
}

/// Produces the planned traffic; returns how many records went out, and how many of them registry-framed.
async fn produce_traffic(
    config: &Config,
    args: &DemoArgs,
    endpoints: &Endpoints,
    registry: &registry::DemoRegistry,
) -> anyhow::Result<(u64, u64)> {
    let producer = SendProducer::new(&config.kafka, &config.topics.sends)?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let planned: Vec<Traffic> = (0..args.sends)
        .map(|i| traffic(i, &mut rng, endpoints))
        .collect();
    let framed = planned
        .iter()
        .filter(|t| matches!(t, Traffic::Avro(_)))
        .count() as u64;
    let sent = futures::stream::iter(planned)
        .map(|t| {
            let producer = producer.clone();
            async move {
                match t {
                    Traffic::Json(send) => producer.json(&send).await,
                    Traffic::Avro(send) => {
                        let bytes = registry.framed(&send)?;
                        producer.raw(send.workspace_id.as_bytes(), &bytes).await
                    }
                    Traffic::Garbage(bytes) => producer.raw(b"unknown", &bytes).await,
                }
            }
        })
        .buffer_unordered(512)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?
        .len();
    Ok((sent as u64, framed))
}

/// The aggregator reads the same failure events: gives it until it has counted them all and mailed (30 s
/// at most). Returns the alerts it sent.
async fn settle_aggregator(aggregator: &LocalAggregator, failures: u64) -> u64 {
    let am = aggregator.metrics.clone();
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while (am.events_counted.get() + am.events_ignored.get() < failures
        || am.alerts_sent.get() == 0)
        && tokio::time::Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    am.alerts_sent.get()
}

enum Traffic {
    Json(SendRequest),
    Avro(SendRequest),
    Garbage(Vec<u8>),
}

const WORKSPACES: [(&str, &str); 4] = [
    ("ws_acme", "Acme Retail"),
    ("ws_globex", "Globex"),
    ("ws_initech", "Initech"),
    ("ws_umbrella", "Umbrella Health"),
];

fn traffic(i: u32, rng: &mut StdRng, e: &Endpoints) -> Traffic {
    let roll: u32 = rng.random_range(0..1000);
    if roll < 10 {
        let bad: &[u8] = match i % 4 {
            0 => b"\x07\x07 not a send request",
            1 => br#"{"id":"x","webhook":{"url":"https://example.com","request_method":"POST"}}"#,
            2 => br#"{"id":"x","workspace_id":"ws_acme","webhook":{"url":"not a url","request_method":"POST"}}"#,
            _ => br#"{"id":"x","workspace_id":"ws_acme","webhook":{"url":"https://example.com","request_method":"BREW"}}"#,
        };
        return Traffic::Garbage(bad.to_vec());
    }
    let (ws, url, campaign, canvas) = match roll {
        10..=449 => (
            0,
            e.healthy.url("/acme/welcome"),
            Some("Welcome Series"),
            None,
        ),
        450..=799 => (
            1,
            e.flaky.url("/globex/crm/events"),
            None,
            Some("Onboarding Journey"),
        ),
        800..=849 => (2, e.auth.url("/initech/hook"), Some("Password Reset"), None),
        850..=949 => (
            2,
            format!(
                "http://localhost:{}/initech/ingest",
                e.overloaded.addr.port()
            ),
            Some("Usage Sync"),
            None,
        ),
        950..=979 => (
            3,
            e.healthy.url("/umbrella/slow?delay=3s"),
            None,
            Some("Win-back"),
        ),
        _ => (
            3,
            format!("http://{}/umbrella/gone", e.unreachable),
            None,
            Some("Win-back"),
        ),
    };
    let (ws_id, ws_name) = WORKSPACES[ws];
    let slug = |name: &str| name.to_lowercase().replace(' ', "_");
    let mut send = ExampleSend::new(format!("send-{i:06}"), ws_id, url)
        .workspace_name(ws_name)
        .user(format!("user-{}", rng.random_range(1..5000)))
        .dispatch_id(format!("dispatch-{}", i / 100))
        .json_body(format!(r#"{{"event":"demo","n":{i}}}"#))
        .created_at(crate::clock::now_ms());
    if let Some(c) = campaign {
        send = send.campaign(format!("cmp_{}", slug(c)), c);
    }
    if let Some(c) = canvas {
        send = send.canvas(format!("cnv_{}", slug(c)), c);
    }
    let send = send.build();
    if i % 5 == 0 {
        Traffic::Avro(send)
    } else {
        Traffic::Json(send)
    }
}

/// The alert emails this run wrote, with their subjects.
fn alert_summary(config: &Config, sent: u64, since: std::time::SystemTime) -> String {
    let mut files: Vec<(std::path::PathBuf, String)> = std::fs::read_dir(&config.aggregate.eml_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            // The header may be folded over several lines.
            let mut lines = text.lines().skip_while(|l| !l.starts_with("Subject: "));
            let mut subject = lines
                .next()
                .unwrap_or_default()
                .trim_start_matches("Subject: ")
                .to_string();
            for more in lines.take_while(|l| l.starts_with(' ') || l.starts_with('\t')) {
                subject.push(' ');
                subject.push_str(more.trim());
            }
            (e.path(), subject)
        })
        .collect();
    files.sort();
    let mut out = format!(
        "\n  alerts (threshold {} failures per workspace in {} h): {sent} email(s), written as .eml files\n",
        config.aggregate.threshold,
        config.aggregate.window.as_secs() / 3600
    );
    for (path, subject) in files {
        out.push_str(&format!("    {}\n      {subject}\n", path.display()));
    }
    out
}

/// An address where nothing listens: connection refused, reported as 599.
async fn closed_port() -> std::io::Result<SocketAddr> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    l.local_addr()
}
