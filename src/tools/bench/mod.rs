//! `hookrelay bench`: the end-to-end load harness.
//!
//! N sends go through the embedded broker and a real dispatcher to a receiver; latency is measured from the
//! moment each record is produced (its `created_at`) to the moment the receiver gets the request. The
//! receiver's own ceiling is measured with `wrk` against the same receiver in the same run, so the report is a
//! ratio that survives noisy machines.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Args;

mod aggregator;
mod client_floor;
mod separate;
use futures::StreamExt;
use hdrhistogram::Histogram;

use crate::config::Config;
use crate::events::SendRequest;
use crate::tools::examples::ExampleSend;
use crate::tools::harness::{with_embedded_broker, LocalDispatcher, SendProducer};
use crate::tools::receiver::{Receiver, Script};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Sends to push through.
    #[arg(long, default_value_t = 20_000)]
    pub sends: u32,
    /// Partitions of the send topic.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Webhook body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub body_bytes: usize,
    /// Dispatcher's global in-flight limit (overrides [dispatch].max_in_flight).
    #[arg(long)]
    pub max_in_flight: Option<usize>,
    /// Skip the wrk ceiling measurement.
    #[arg(long)]
    pub no_wrk: bool,
    /// wrk connections for the ceiling measurement.
    #[arg(long, default_value_t = 64)]
    pub wrk_connections: u32,
    /// wrk duration for the ceiling measurement.
    #[arg(long, default_value = "5s")]
    pub wrk_duration: String,
    /// Give up after this long.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub deadline: Duration,
    /// What a user runs: the broker named by [kafka].bootstrap_servers (e.g. a `hookrelay broker` process)
    /// and the dispatcher as a `hookrelay dispatch` child process; reports its peak resident memory.
    #[arg(long)]
    pub separate: bool,
    /// With `--separate`: the receiver (nginx or any server), instead of the bench's own; repeat for several
    /// (sends take turns, e.g. nine to a 200 path and one to a 503 path). The ceiling is measured on the first.
    #[arg(long = "url")]
    pub urls: Vec<String>,
    /// With `--separate`: produce at this many sends per second after the dispatcher is ready (latency at a
    /// steady rate) instead of a backlog produced first (throughput).
    #[arg(long)]
    pub rate: Option<u32>,
    /// Instead of the dispatcher: write this many failure events spread over the last 24 hours and time
    /// how long a starting aggregator takes to rebuild its counts from Kafka (no checkpoint: a full replay).
    #[arg(long)]
    pub aggregate_rebuild: Option<u32>,
    /// With `--aggregate-rebuild`: alert every workspace (threshold 1, emails as `.eml` files in a temporary
    /// directory) and time the decisions made once the rebuild is done.
    #[arg(long)]
    pub alert_all: bool,
    /// Instead of the dispatcher: simulate a day of this many failure events (too many for the embedded
    /// broker to hold), write the checkpoints an aggregator would have written, add `--tail` events after
    /// them, and time a `hookrelay aggregate` process from start to ready; reports its resident memory.
    #[arg(long)]
    pub aggregate_restore: Option<u64>,
    /// Workspaces of the simulated day (`--aggregate-restore`).
    #[arg(long, default_value_t = 100_000)]
    pub workspaces: u32,
    /// Failure events after the checkpoints, replayed by the restoring aggregator (`--aggregate-restore`).
    #[arg(long, default_value_t = 20_000)]
    pub tail: u32,
    /// Instead of the dispatcher: only its HTTP client, keeping this many requests in flight to the first
    /// `--url` for `--duration`; reports the resident memory per request in flight in the steady state (the
    /// client's floor, which the memory budget does not count).
    #[arg(long, requires = "urls")]
    pub client_floor: Option<usize>,
    /// With `--client-floor`: how long to keep the requests going (the second half is measured).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

pub fn run(mut config: Config, args: BenchArgs) -> anyhow::Result<()> {
    if let Some(n) = args.max_in_flight {
        config.dispatch.max_in_flight = n;
    }
    let p = args.partitions;
    if let (Some(n), Some(url)) = (args.client_floor, args.urls.first()) {
        let report = tokio::runtime::Runtime::new()?.block_on(client_floor::run(
            &config,
            n,
            url,
            args.body_bytes,
            args.duration,
        ))?;
        println!("{report}");
        return Ok(());
    }
    if args.separate {
        let report = tokio::runtime::Runtime::new()?.block_on(separate::run(config, &args))?;
        println!("{report}");
        return Ok(());
    }
    let report = match (args.aggregate_rebuild, args.aggregate_restore) {
        (Some(n), _) => with_embedded_broker(config, p, |config| {
            aggregator::rebuild(config, n, args.alert_all)
        })?,
        (None, Some(n)) => with_embedded_broker(config, p, |config| {
            aggregator::restore(config, n, args.workspaces, args.tail)
        })?,
        (None, None) => with_embedded_broker(config, p, |config| bench(config, args))?,
    };
    println!("{report}");
    Ok(())
}

async fn bench(config: Config, args: BenchArgs) -> anyhow::Result<String> {
    let receiver = Receiver::start("127.0.0.1:0".parse()?, Script::default()).await?;
    let url = receiver.url("/bench");
    let ceiling = if args.no_wrk {
        None
    } else {
        let (addr, conns, dur) = (
            receiver.addr,
            args.wrk_connections,
            args.wrk_duration.clone(),
        );
        tokio::task::spawn_blocking(move || wrk_ceiling(addr, conns, &dur)).await?
    };
    let dispatcher = LocalDispatcher::spawn(&config);
    dispatcher.wait_ready(Duration::from_secs(30)).await?;
    let producer = SendProducer::new(&config.kafka, &config.topics.sends)?;
    let body = "x".repeat(args.body_bytes);
    let started = Instant::now();
    let started_ms = chrono::Utc::now().timestamp_millis();
    let produced: HashMap<String, i64> = futures::stream::iter(0..args.sends)
        .map(|i| {
            let send = bench_send(i, &url, &body);
            let producer = producer.clone();
            async move {
                producer.json(&send).await?;
                anyhow::Ok((send.id, send.created_at.unwrap_or_default()))
            }
        })
        .buffer_unordered(1024)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let produce_secs = started.elapsed().as_secs_f64();
    let until = Instant::now() + args.deadline;
    while received_ids(&receiver) < produced.len() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    dispatcher.stop().await?;
    let (latency, last_ms, seen) = latencies(&receiver, &produced, started_ms)?;
    anyhow::ensure!(
        seen >= u64::from(args.sends),
        "only {seen} of {} sends arrived before the deadline",
        args.sends
    );
    let secs = ((last_ms - started_ms) as f64 / 1000.0).max(1e-3);
    let rate = f64::from(args.sends) / secs;
    let mut out = format!(
        "hookrelay bench: {} sends, {} partitions, {}-byte bodies, max_in_flight {}\n\
         end to end:  {:.0} sends/s over {:.2} s (producing took {:.2} s)\n\
         latency produced → received (ms): p50 {} · p90 {} · p99 {} · max {}\n\
         duplicates delivered: {}\n",
        args.sends,
        args.partitions,
        args.body_bytes,
        config.dispatch.max_in_flight,
        rate,
        secs,
        produce_secs,
        latency.value_at_quantile(0.5),
        latency.value_at_quantile(0.9),
        latency.value_at_quantile(0.99),
        latency.max(),
        seen - produced.len() as u64,
    );
    match ceiling {
        Some(c) => out += &format!(
            "receiver ceiling (wrk -t1 -c{} -d{}): {:.0} req/s\nratio end-to-end / ceiling: {:.3}\n",
            args.wrk_connections,
            args.wrk_duration,
            c,
            rate / c
        ),
        None => out += "receiver ceiling: not measured (wrk not installed, or --no-wrk)\n",
    }
    Ok(out)
}

/// Latency from produced to received per send, the last arrival, and how many requests arrived.
fn latencies(
    receiver: &Receiver,
    produced: &HashMap<String, i64>,
    started_ms: i64,
) -> anyhow::Result<(Histogram<u64>, i64, u64)> {
    let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3)?;
    let mut last_ms = started_ms;
    let mut seen = 0u64;
    for r in receiver.requests() {
        let Some(created) = r.webhook_id.as_ref().and_then(|id| produced.get(id)) else {
            continue;
        };
        latency.saturating_record(u64::try_from(r.at_unix_ms - created).unwrap_or(0).max(1));
        last_ms = last_ms.max(r.at_unix_ms);
        seen += 1;
    }
    Ok((latency, last_ms, seen))
}

fn received_ids(r: &Receiver) -> usize {
    r.stats().with_webhook_id as usize
}

pub(super) fn bench_send(i: u32, url: &str, body: &str) -> SendRequest {
    ExampleSend::new(format!("bench-{i}"), format!("ws_{}", i % 16), url)
        .user(format!("u{i}"))
        .campaign("cmp_bench", "Bench")
        .body(body)
        .created_at(crate::clock::now_ms())
        .build()
}

/// Requests per second `wrk` gets from the receiver on its own; `None` when wrk is not installed.
fn wrk_ceiling(addr: SocketAddr, connections: u32, duration: &str) -> Option<f64> {
    wrk_ceiling_url(&format!("http://{addr}/ceiling"), connections, duration)
}

/// Requests per second `wrk -t1` reaches against `url`, if wrk is installed.
fn wrk_ceiling_url(url: &str, connections: u32, duration: &str) -> Option<f64> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{duration}"),
            url,
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}
