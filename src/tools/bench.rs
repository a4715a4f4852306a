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
    /// Instead of the dispatcher: write this many failure events spread over the last 24 hours and time
    /// how long a starting aggregator takes to rebuild its counts from Kafka.
    #[arg(long)]
    pub aggregate_rebuild: Option<u32>,
}

pub fn run(mut config: Config, args: BenchArgs) -> anyhow::Result<()> {
    if let Some(n) = args.max_in_flight {
        config.dispatch.max_in_flight = n;
    }
    let report = match args.aggregate_rebuild {
        Some(n) => with_embedded_broker(config, args.partitions, |config| rebuild(config, n))?,
        None => with_embedded_broker(config, args.partitions, |config| bench(config, args))?,
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

fn bench_send(i: u32, url: &str, body: &str) -> SendRequest {
    ExampleSend::new(format!("bench-{i}"), format!("ws_{}", i % 16), url)
        .user(format!("u{i}"))
        .campaign("cmp_bench", "Bench")
        .body(body)
        .created_at(crate::clock::now_ms())
        .build()
}

/// Requests per second `wrk` gets from the receiver on its own; `None` when wrk is not installed.
fn wrk_ceiling(addr: SocketAddr, connections: u32, duration: &str) -> Option<f64> {
    let out = Command::new("wrk")
        .args([
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{duration}"),
            &format!("http://{addr}/ceiling"),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Time for a starting aggregator to replay a day of failure events.
async fn rebuild(config: Config, events: u32) -> anyhow::Result<String> {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = crate::kafka::client::producer_config(&config.kafka).create()?;
    let now = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    futures::stream::iter(0..events)
        .map(|i| {
            let producer = producer.clone();
            let topic = config.topics.failures.clone();
            async move {
                let at = now - i64::from(i) * 86_400_000 / i64::from(events.max(1));
                let event = crate::events::FailureEvent {
                    http_status_code: Some(503),
                    endpoint_url: Some(format!("https://hooks.example/{}", i % 50)),
                    app_group_id: Some(format!("ws_{}", i % 1000)),
                    campaign_id: Some("cmp".into()),
                    id: format!("e{i}"),
                    time: (at / 1000) as i32,
                    time_ms: Some(at),
                    user_id: "u".into(),
                    ..Default::default()
                };
                let key = event.app_group_id.clone().unwrap_or_default();
                let payload = event.encode(crate::config::EventEncoding::SingleObject, None);
                producer
                    .send(
                        FutureRecord::to(&topic).key(&key).payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("{e}"))
            }
        })
        .buffer_unordered(2048)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    let produced = started.elapsed();
    let mut cfg = config.clone();
    cfg.aggregate.threshold = u64::MAX;
    let started = Instant::now();
    let agg = crate::tools::harness::LocalAggregator::spawn(&cfg);
    let seen =
        |m: &crate::telemetry::AggregateMetrics| m.events_counted.get() + m.events_ignored.get();
    while !(agg.health.is_ready() && seen(&agg.metrics) >= u64::from(events)) {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "rebuild did not finish in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    let counted = seen(&agg.metrics);
    let rebuild_secs = agg.metrics.rebuild_seconds.get();
    agg.stop().await?;
    Ok(format!(
        "aggregator rebuild: {counted} failure events over 24 h (1,000 workspaces)\n\
         start to caught up: {:.2} s (group join included); replay after assignment: {rebuild_secs:.2} s \
         ({:.0} events/s)\nproducing them took {:.2} s",
        took.as_secs_f64(),
        counted as f64 / rebuild_secs.max(1e-3),
        produced.as_secs_f64()
    ))
}
