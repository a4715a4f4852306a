//! Checkpoints: an aggregator that restores its state from the state topic and replays only the tail must
//! decide exactly as one that replayed everything — counts, alert or no alert — also for events that
//! crossed the window's edge meanwhile, and for checkpoints written while partitions moved between
//! instances.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::aggregator::{configure, many, now_ms, produce, settled};
use crate::support::{wait_for, Kafka, SmtpServer};
use hookrelay::config::Config;
use hookrelay::tools::harness::LocalAggregator;

/// Long enough that events of the test's start stay inside however slow a loaded machine runs it; only the
/// events placed at the edge leave.
const WINDOW: Duration = Duration::from_secs(600);

fn short_window(kafka: &mut Kafka) {
    let a = &mut kafka.config.aggregate;
    a.window = WINDOW;
    a.checkpoint_interval = Duration::from_millis(200);
}

/// An aggregator that only counts and checkpoints: it alerts no one.
fn counting_only(kafka: &Kafka) -> Config {
    let mut c = kafka.config.clone();
    c.aggregate.threshold = u64::MAX;
    c
}

/// The count in each alert email received, by workspace.
fn alerted(smtp: &SmtpServer) -> BTreeMap<String, u64> {
    smtp.received()
        .iter()
        .filter_map(|m| {
            // Long header lines are folded.
            let unfolded = m.data.replace("\r\n ", " ").replace("\n ", " ");
            let subject = unfolded.lines().find(|l| l.starts_with("Subject: "))?;
            let rest = subject.strip_prefix("Subject: [hookrelay] Webhook errors in ")?;
            let ws = rest.split_whitespace().next()?.to_string();
            let (before, _) = rest.split_once(" failures in the last")?;
            let count = before.rsplit(' ').next()?.replace(',', "").parse().ok()?;
            Some((ws, count))
        })
        .collect()
}

/// Starts a deciding aggregator with its own group, alerts topic and SMTP server, reading the state topic
/// `state` (a fresh one: no checkpoint, so a full replay), and returns what it alerted once it has read
/// `events` and sent `expected` emails.
async fn decisions(
    kafka: &Kafka,
    name: &str,
    state: Option<&str>,
    thresholds: &BTreeMap<String, u64>,
    events: u64,
    expected: usize,
) -> (
    BTreeMap<String, u64>,
    hookrelay::telemetry::AggregateMetrics,
) {
    let smtp = SmtpServer::start("127.0.0.1:0".parse().unwrap()).await;
    let mut config = kafka.config.clone();
    let port = smtp.addr.port();
    let a = &mut config.aggregate;
    (a.smtp.port, a.group_id, a.thresholds) = (port, format!("agg-{name}"), thresholds.clone());
    config.topics.alerts = format!("alerts-{name}");
    kafka.broker.create_topic(&config.topics.alerts, 2).unwrap();
    if let Some(state) = state {
        config.topics.aggregate_state = state.to_string();
        kafka.broker.create_topic(state, 2).unwrap();
    }
    let agg = LocalAggregator::spawn(&config);
    let m = agg.metrics.clone();
    let (h, mails) = (agg.health.clone(), smtp.clone());
    let _report = crate::support::aggregator::Report(move || {
        format!(
            "{name}: ready {}, counted {}, restored {} ({} workspaces), full replays {}, sent {}, sending {}, \
             send errors {}, emails {:?}",
            h.is_ready(),
            m.events_counted.get(),
            m.events_restored.get(),
            m.restored_workspaces.get(),
            m.full_replays.get(),
            m.alerts_sent.get(),
            m.alerts_sending.get(),
            m.send_errors.get(),
            alerted(&mails),
        )
    });
    settled(&agg, events).await;
    wait_for(
        &format!("{name}: {expected} alerts"),
        Duration::from_secs(30),
        || async {
            agg.health.is_ready()
                && agg.metrics.alerts_sent.get() >= expected as u64
                && agg.metrics.alerts_sending.get() == 0
        },
    )
    .await;
    let metrics = agg.metrics.clone();
    agg.stop().await.unwrap();
    (alerted(&smtp), metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_aggregator_decides_exactly_as_one_that_replayed_everything() {
    let mut kafka = Kafka::start(1);
    configure(&mut kafka, 0, u64::MAX);
    short_window(&mut kafka);
    let now = now_ms();
    // Inside the window while the first instance counts and checkpoints (at least 25 s more), outside it by
    // the time of the restore: the window counts whole minutes, so an event leaves it when its minute does.
    let minute = 60_000;
    let span = WINDOW.as_millis() as i64 / minute;
    let edge_minute = (now + 25_000 + minute - 1).div_euclid(minute) - span;
    let edge = edge_minute * minute + 1;
    let edge_passed = (edge_minute + span) * minute;
    let mut before = many("ws-edge", 5, 503, edge);
    before.extend(many("ws-edge", 5, 503, now));
    before.extend(many("ws-at", 3, 503, now));
    before.extend(many("ws-below", 7, 503, now));
    produce(&kafka.config, before).await;

    let first = LocalAggregator::spawn(&counting_only(&kafka));
    settled(&first, 20).await;
    assert_eq!(
        first.metrics.events_counted.get(),
        20,
        "the edge events count while inside"
    );
    let checkpoints = first.metrics.checkpoints.clone();
    wait_for("a checkpoint", Duration::from_secs(20), || async {
        checkpoints.get() >= 1
    })
    .await;
    first.stop().await.unwrap();

    // The tail, after the last checkpoint.
    let mut tail = many("ws-at", 5, 503, now_ms());
    tail.extend(many("ws-tail-only", 8, 503, now_ms()));
    produce(&kafka.config, tail).await;
    wait_for(
        "the edge events leave the window",
        Duration::from_secs(90),
        || async { now_ms() >= edge_passed },
    )
    .await;

    let thresholds: BTreeMap<String, u64> = ["ws-edge", "ws-at", "ws-below", "ws-tail-only"]
        .map(|w| (w.to_string(), 8))
        .into();
    let expected: BTreeMap<String, u64> =
        [("ws-at".to_string(), 8), ("ws-tail-only".to_string(), 8)].into();
    let (restored, rm) = decisions(&kafka, "restored", None, &thresholds, 13, 2).await;
    let (replayed, fm) =
        decisions(&kafka, "replayed", Some("state-empty"), &thresholds, 33, 2).await;
    assert!(rm.events_restored.get() > 0, "the checkpoint was used");
    assert_eq!(rm.full_replays.get(), 0);
    assert_eq!(rm.events_counted.get(), 13, "only the tail was replayed");
    assert_eq!(
        fm.full_replays.get(),
        2,
        "no checkpoint: both partitions replayed in full"
    );
    assert_eq!(restored, expected, "ws-edge lost its 5 old events: 5 < 8");
    assert_eq!(replayed, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_written_while_partitions_move_between_instances_restore_exactly() {
    let mut kafka = Kafka::start(1);
    configure(&mut kafka, 0, u64::MAX);
    short_window(&mut kafka);
    kafka.config.aggregate.checkpoint_interval = Duration::from_millis(100);
    let config = counting_only(&kafka);
    let workspaces: Vec<String> = (0..12).map(|i| format!("ws-{i}")).collect();
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut round = |n: usize| {
        let mut events = Vec::new();
        for (i, ws) in workspaces.iter().enumerate() {
            let k = (i + n) % 4 + 1;
            events.extend(many(ws, k, 503, now_ms()));
            *counts.entry(ws.clone()).or_default() += k as u64;
        }
        events
    };
    let a = LocalAggregator::spawn(&config);
    wait_for(
        "the first instance owns everything",
        Duration::from_secs(30),
        || async { a.health.is_ready() },
    )
    .await;
    for n in 0..5 {
        produce(&kafka.config, round(n)).await;
    }
    // A second member joins while the first checkpoints every 100 ms and events keep coming.
    let b = LocalAggregator::spawn(&config);
    for n in 5..15 {
        produce(&kafka.config, round(n)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for(
        "both instances own partitions",
        Duration::from_secs(30),
        || async { a.health.is_ready() && b.health.is_ready() },
    )
    .await;
    for n in 15..20 {
        produce(&kafka.config, round(n)).await;
    }
    let total: u64 = counts.values().sum();
    let (am, bm) = (a.metrics.clone(), b.metrics.clone());
    let known = |m: &hookrelay::telemetry::AggregateMetrics| {
        m.events_counted.get() + m.events_restored.get()
    };
    wait_for(
        "both have read everything",
        Duration::from_secs(30),
        || async {
            am.checkpoints.get() > 0 && bm.checkpoints.get() > 0 && known(&am) + known(&bm) >= total
        },
    )
    .await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();

    // Half the workspaces exactly at their threshold, half one below.
    let thresholds: BTreeMap<String, u64> = counts
        .iter()
        .enumerate()
        .map(|(i, (ws, c))| (ws.clone(), c + (i % 2) as u64))
        .collect();
    let expected: BTreeMap<String, u64> = counts
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(_, (ws, c))| (ws.clone(), *c))
        .collect();
    let (restored, rm) = decisions(&kafka, "restored", None, &thresholds, 0, expected.len()).await;
    let (replayed, _) = decisions(
        &kafka,
        "replayed",
        Some("state-empty"),
        &thresholds,
        total,
        expected.len(),
    )
    .await;
    assert!(rm.events_restored.get() > 0, "the checkpoints were used");
    assert_eq!(restored, expected);
    assert_eq!(replayed, expected);
}
