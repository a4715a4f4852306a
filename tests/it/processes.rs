//! The `hookrelay` binary as operators run it: killed mid-stream, sharing a consumer group, stopped with
//! SIGTERM, and its command-line contract (broker line, config errors).

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{
    all_accounted, hookrelay_bin, send, slow_receiver, wait_for, ChildDispatcher, Kafka,
};
use hookrelay::tools::harness::OutputReader;
use hookrelay::tools::receiver::Receiver;

/// Produces `n` sends (every fifth fails with 500) and returns their ids.
async fn produce(kafka: &Kafka, rx: &Receiver, n: usize) -> Vec<String> {
    let producer = kafka.producer();
    let mut ids = Vec::new();
    for i in 0..n {
        let id = format!("s{i:05}");
        let status = if i % 5 == 0 { 500 } else { 200 };
        let mut s = send(&id, &rx.url(&format!("/hook?status={status}")));
        s.workspace_id = format!("ws{}", i % 7);
        producer.json(&s).await.unwrap();
        ids.push(id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_mid_stream_loses_nothing_after_a_restart() {
    let mut kafka = Kafka::start(4);
    kafka.config.dispatch.max_in_flight = 32;
    let rx = slow_receiver(Duration::from_millis(150)).await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let ids = produce(&kafka, &rx, 600).await;

    let mut first = ChildDispatcher::spawn(&kafka.config);
    wait_for(
        "the first dispatcher is mid-stream",
        Duration::from_secs(30),
        || async { rx.count() >= 150 },
    )
    .await;
    first.kill();
    let before_restart = rx.count();
    assert!(
        before_restart < ids.len() as u64,
        "killed before finishing ({before_restart} requests)"
    );

    let _second = ChildDispatcher::spawn(&kafka.config);
    let duplicates = all_accounted(&rx, &reader, &ids).await;
    eprintln!("crash test: {} sends, {before_restart} requests before SIGKILL, {duplicates} duplicate requests after restart", ids.len());
    wait_for(
        "the restarted dispatcher commits every offset",
        Duration::from_secs(30),
        || async { kafka.committed(4).await.values().sum::<i64>() == ids.len() as i64 },
    )
    .await;
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dispatchers_share_partitions_and_a_stopped_one_hands_over_with_nothing_lost() {
    let mut kafka = Kafka::start(4);
    kafka.config.dispatch.max_in_flight = 16;
    let rx = slow_receiver(Duration::from_millis(100)).await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let mut a = ChildDispatcher::spawn(&kafka.config);
    let b = ChildDispatcher::spawn(&kafka.config);
    wait_for(
        "both dispatchers own partitions, all of them between them",
        Duration::from_secs(30),
        || async {
            let (pa, pb) = (
                a.metric("hookrelay_assigned_partitions").await,
                b.metric("hookrelay_assigned_partitions").await,
            );
            matches!((pa, pb), (Some(x), Some(y)) if x > 0.0 && y > 0.0 && x + y == kafka.group_partitions(4))
        },
    )
    .await;

    let ids = produce(&kafka, &rx, 400).await;
    wait_for("work is under way", Duration::from_secs(30), || async {
        rx.count() >= 60
    })
    .await;
    let status = a.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    wait_for(
        "the survivor owns every partition",
        Duration::from_secs(30),
        || async { b.metric("hookrelay_assigned_partitions").await == Some(4.0) },
    )
    .await;
    let duplicates = all_accounted(&rx, &reader, &ids).await;
    eprintln!(
        "hand-over test: {} sends, {duplicates} duplicate requests",
        ids.len()
    );
    wait_for(
        "all offsets are committed",
        Duration::from_secs(30),
        || async { kafka.committed(4).await.values().sum::<i64>() == ids.len() as i64 },
    )
    .await;
    reader.stop();
}

#[test]
fn the_broker_prints_its_bootstrap_line_first_and_stops_on_sigterm() {
    let mut child = Command::new(hookrelay_bin())
        .args(["broker", "--partitions", "2"])
        .env("HOOKRELAY_TELEMETRY__LOG_LEVEL", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let servers = first
        .trim()
        .strip_prefix("bootstrap.servers=")
        .expect("first line names the servers");
    assert!(servers.contains(':'), "{first}");
    // The default topics exist: a metadata request for one answers with its two partitions.
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", servers)
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some("webhook-failures"), Duration::from_secs(10))
        .unwrap();
    assert_eq!(md.topics()[0].partitions().len(), 2);
    drop(consumer);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn bad_configuration_fails_at_start_up_listing_every_problem() {
    let out = Command::new(hookrelay_bin())
        .arg("dispatch")
        .env("HOOKRELAY_DISPATCH__MAX_IN_FLIGHT", "0")
        .env("HOOKRELAY_HTTP__REQUEST_TIMEOUT", "0s")
        .env("HOOKRELAY_TOPICS__SENDS", "no spaces allowed")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in ["max_in_flight", "request_timeout", "topics.sends"] {
        assert!(err.contains(needle), "{needle} missing from: {err}");
    }
}

#[test]
fn every_subcommand_has_help() {
    for sub in [
        "dispatch",
        "aggregate",
        "produce",
        "broker",
        "receiver",
        "registry",
        "demo",
        "bench",
        "check-config",
    ] {
        let out = Command::new(hookrelay_bin())
            .args([sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sub} --help");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{sub}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_generates_sends_a_dispatcher_delivers() {
    let kafka = Kafka::start(2);
    let rx = crate::support::receiver().await;
    let d = crate::support::Dispatcher::spawn(&kafka.config);
    let status = Command::new(hookrelay_bin())
        .args(["produce", "--count", "20", "--rate", "500", "--url"])
        .arg(rx.url("/generated"))
        .env_clear()
        .env(
            "HOOKRELAY_KAFKA__BOOTSTRAP_SERVERS",
            &kafka.config.kafka.bootstrap_servers,
        )
        .env("HOOKRELAY_TOPICS__SENDS", &kafka.config.topics.sends)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    wait_for(
        "all 20 generated sends are delivered",
        Duration::from_secs(30),
        || async { d.delivered() == 20 },
    )
    .await;
    let ids: HashSet<String> = rx
        .requests()
        .iter()
        .filter_map(|r| r.webhook_id.clone())
        .collect();
    assert_eq!(ids.len(), 20, "every send has its own id");
    d.stop().await.unwrap();
}
