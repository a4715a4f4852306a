//! The aggregator's benchmarks: a full replay of a day of failure events through the embedded broker, and a
//! restore from checkpoints of a simulated day too large for it, timed as a separate `hookrelay aggregate`
//! process.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::aggregate::ledger::Ledger;
use crate::config::Config;
use crate::events::failure_view::FailureView;
use crate::events::FailureEvent;
use crate::kafka::reader::partition_count;

const DAY_MS: i64 = 86_400_000;
const CODES: [i32; 4] = [503, 503, 503, 500];

/// A simulated day: `events` failures spread evenly over the last 24 hours, over `workspaces` workspaces
/// (each on partition `index % partitions`, with one endpoint answering 503 or 500 to two campaigns: four
/// breakdown rows), counted by the same
/// ledger the aggregator uses; then each partition's checkpoint written to the state topic, as of offset 0
/// of an empty failure topic. Then `tail` more events on the failure topic, and a `hookrelay aggregate`
/// process timed from start to ready.
pub(super) async fn restore(
    config: Config,
    events: u64,
    workspaces: u32,
    tail: u32,
) -> anyhow::Result<String> {
    let lookup = crate::kafka::reader::lookup_client(&config.kafka)?;
    let partitions = partition_count(&lookup, &config.topics.failures)?;
    let state_partitions = partition_count(&lookup, &config.topics.aggregate_state)?;
    let names: Vec<String> = (0..workspaces).map(|i| format!("ws_{i:06}")).collect();
    let urls: Vec<String> = names
        .iter()
        .map(|ws| format!("https://hooks.example.com/{ws}/events"))
        .collect();
    let span = i64::try_from(config.aggregate.window.as_millis()).unwrap_or(DAY_MS);
    let mut ledger = Ledger::new(
        span,
        config.aggregate.breakdown_size,
        &config.aggregate.codes,
    );
    let now = crate::clock::now_ms();
    let rss_before = resident_kb("self");
    let started = Instant::now();
    for i in 0..events {
        let w = (i % u64::from(workspaces.max(1))) as usize;
        let view = FailureView {
            code: Some(CODES[(i / 7 % 4) as usize]),
            workspace: &names[w],
            workspace_name: Some("Acme Inc."),
            endpoint_url: Some(&urls[w]),
            campaign_id: Some(["cmp_spring", "cmp_summer"][(i / 13 % 2) as usize]),
            campaign_name: Some("Seasonal sale"),
            canvas_id: None,
            canvas_name: None,
            time_ms: now - DAY_MS + 60_000 + (i as i64).wrapping_mul(7_919) % (DAY_MS - 60_000),
        };
        ledger.count(&view, w as i32 % partitions, now);
    }
    let ingest = started.elapsed();
    let ledger_kb = resident_kb("self").saturating_sub(rss_before);
    let producer: FutureProducer = crate::kafka::client::producer_config(&config.kafka).create()?;
    let started = Instant::now();
    let (mut records, mut bytes) = (0usize, 0usize);
    for p in 0..partitions {
        let cp = ledger.checkpoint(p, 0, now);
        let mut all: Vec<(String, Vec<u8>)> = cp
            .records
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
        all.push(cp.marker);
        records += all.len();
        bytes += all.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>();
        let topic = &config.topics.aggregate_state;
        let sp = p % state_partitions;
        let results: Vec<_> = futures::stream::iter(all.iter().map(|(k, v)| {
            producer.send(
                FutureRecord::to(topic).partition(sp).key(k).payload(v),
                Duration::from_secs(30),
            )
        }))
        .buffer_unordered(4_096)
        .collect()
        .await;
        for r in results {
            r.map_err(|(e, _)| anyhow::anyhow!("writing a checkpoint: {e}"))?;
        }
    }
    let checkpointed = started.elapsed();
    drop(ledger);
    produce_tail(&producer, &config, &names, partitions, tail, now).await?;
    let child = run_child(&config)?;
    Ok(format!(
        "aggregator restore: a simulated day of {events} failure events over {workspaces} workspaces \
         ({partitions} partitions)\n\
         counting the day in-process: {:.2} s ({:.0} events/s on one core); the counts take {:.0} MB\n\
         checkpoint: {records} records, {:.1} MB, written in {:.2} s\n{child}\n",
        ingest.as_secs_f64(),
        events as f64 / ingest.as_secs_f64().max(1e-9),
        ledger_kb as f64 / 1e3,
        bytes as f64 / 1e6,
        checkpointed.as_secs_f64(),
    ))
}

/// The events after the checkpoints: recent, spread over the workspaces.
async fn produce_tail(
    producer: &FutureProducer,
    config: &Config,
    names: &[String],
    partitions: i32,
    tail: u32,
    now: i64,
) -> anyhow::Result<()> {
    let results: Vec<_> = futures::stream::iter(0..tail)
        .map(|i| {
            let w = i as usize * 7 % names.len().max(1);
            let event = FailureEvent {
                http_status_code: Some(503),
                endpoint_url: Some(format!("https://hooks.example.com/{}/events", names[w])),
                app_group_id: Some(names[w].clone()),
                campaign_id: Some("cmp_spring".into()),
                id: format!("tail-{i}"),
                time: (now / 1000) as i32,
                time_ms: Some(now),
                user_id: "u".into(),
                ..Default::default()
            };
            let payload = event.encode(crate::config::EventEncoding::SingleObject, None);
            let topic = config.topics.failures.clone();
            let key = names[w].clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(&topic)
                            .partition(w as i32 % partitions)
                            .key(&key)
                            .payload(&payload),
                        Duration::from_secs(30),
                    )
                    .await
            }
        })
        .buffer_unordered(4_096)
        .collect()
        .await;
    for r in results {
        r.map_err(|(e, _)| anyhow::anyhow!("writing the tail: {e}"))?;
    }
    Ok(())
}

/// Starts `hookrelay aggregate` against the embedded broker, waits for `/readyz`, and reports how long that
/// took, what it restored and replayed, and its peak resident memory.
fn run_child(config: &Config) -> anyhow::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut c = config.clone();
    c.telemetry.listen = format!("127.0.0.1:{port}");
    // Counting only (TOML integers stop at i64::MAX).
    c.aggregate.threshold = i64::MAX as u64;
    let file = std::env::temp_dir().join(format!("hookrelay-bench-{}.toml", std::process::id()));
    std::fs::write(&file, toml::to_string(&c)?)?;
    let started = Instant::now();
    let mut child = Command::new(std::env::current_exe()?)
        .arg("aggregate")
        .arg("--config")
        .arg(&file)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()?;
    let pid = child.id();
    let get = |path: &str| http_get(port, path);
    let ready = loop {
        if let Some((200, _)) = get("/readyz") {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(300) || child.try_wait()?.is_some() {
            let _ = child.kill();
            anyhow::bail!("the aggregator did not become ready in 5 minutes");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let metrics = get("/metrics").map(|(_, body)| body).unwrap_or_default();
    let metric = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mem = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map_or("?".into(), |v| v.trim().to_string())
    };
    let report = format!(
        "hookrelay aggregate: ready {:.2} s after start (group join included); restore and tail replay \
         {:.2} s\nrestored {} workspaces holding {} events; replayed {} tail events\n\
         resident memory when ready: {} (peak {})",
        ready.as_secs_f64(),
        metric("hookrelay_aggregate_rebuild_seconds"),
        metric("hookrelay_aggregate_restored_workspaces_total"),
        metric("hookrelay_aggregate_events_restored_total"),
        metric("hookrelay_aggregate_events_counted_total"),
        mem("VmRSS:"),
        mem("VmHWM:"),
    );
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let _ = std::fs::remove_file(&file);
    Ok(report)
}

/// A process's resident memory in kB (`pid` or "self").
pub(super) fn resident_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub(super) fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Some((status, body))
}

/// Time for a starting aggregator to replay a day of failure events.
pub(super) async fn rebuild(
    config: Config,
    events: u32,
    alert_all: bool,
) -> anyhow::Result<String> {
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
    cfg.aggregate.threshold = if alert_all { 1 } else { u64::MAX };
    let mail = std::env::temp_dir().join(format!("hookrelay-bench-mail-{}", std::process::id()));
    cfg.aggregate.eml_dir = mail.clone();
    cfg.aggregate.smtp.host = String::new();
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
    let alerts = if alert_all {
        time_alerts(&agg, started, took).await?
    } else {
        String::new()
    };
    agg.stop().await?;
    let _ = std::fs::remove_dir_all(&mail);
    Ok(format!(
        "aggregator rebuild: {counted} failure events over 24 h (1,000 workspaces)\n\
         start to caught up: {:.2} s (group join included); replay after assignment: {rebuild_secs:.2} s \
         ({:.0} events/s)\nproducing them took {:.2} s",
        took.as_secs_f64(),
        counted as f64 / rebuild_secs.max(1e-3),
        produced.as_secs_f64()
    ) + &alerts)
}

/// Waits until every workspace's alert is sent and says how long after ready that was.
async fn time_alerts(
    agg: &crate::tools::harness::LocalAggregator,
    started: Instant,
    ready: Duration,
) -> anyhow::Result<String> {
    while agg.metrics.alerts_sent.get() < 1_000 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "alerts not sent in 5 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(format!(
        "\nall 1,000 workspaces over the threshold: decisions recorded (pending), emails written (.eml) and \
         recorded (sent) {:.2} s after ready",
        (started.elapsed() - ready).as_secs_f64()
    ))
}
