//! The end-to-end path on tansu, a second, independent Kafka-compatible broker (see `support::tansu`):
//! consumed, delivered, retried through a tier topic, failed for good with its failure event, dead-lettered with
//! its reason, committed — as on the embedded broker.
//!
//! Where tansu differs from Kafka here: a consumer group's first assignment took from 4 s to 23 s in these
//! runs (the embedded broker: about 3 s), so these tests wait up to 90 s for it.

use std::time::Duration;

use crate::support::tansu::Tansu;
use crate::support::{receiver, send, wait_for, ChildDispatcher};
use hookrelay::tools::harness::{OutputReader, SendProducer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tansu_sends_are_delivered_retried_failed_dead_lettered_and_committed() {
    let Some(tansu) = Tansu::start(2) else {
        return;
    };
    let rx = receiver().await;
    let d = ChildDispatcher::spawn_ready(&tansu.config, &[]).await;
    let reader = OutputReader::start(&tansu.config).await.unwrap();
    let producer = SendProducer::new(&tansu.config.kafka, &tansu.config.topics.sends).unwrap();
    producer
        .raw(b"ws", b"\x07 not a send request")
        .await
        .unwrap();
    producer
        .json(&send("gone", &rx.url("/gone?status=404")))
        .await
        .unwrap();
    for i in 0..18 {
        producer
            .json(&send(&format!("ok-{i}"), &rx.url("/ok")))
            .await
            .unwrap();
    }
    for i in 0..2 {
        let s = send(&format!("flaky-{i}"), &rx.url("/flaky?seq=503,200"));
        producer.json(&s).await.unwrap();
    }
    wait_for(
        "every send is delivered, the flaky ones on their retry",
        Duration::from_secs(90),
        || async { rx.stats().by_status.get(&200).copied().unwrap_or(0) >= 20 },
    )
    .await;
    for i in 0..2 {
        let got: Vec<u16> = rx
            .requests_for(&format!("flaky-{i}"))
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(got, [503, 200], "flaky-{i} went through a retry tier once");
    }
    let seen = reader
        .wait_until(Duration::from_secs(60), |o| {
            !o.dead_letters.is_empty() && o.terminal_failures() >= 1
        })
        .await;
    assert_eq!(seen.dead_letters.len(), 1, "the undecodable record");
    assert_eq!(
        seen.dead_letters[0].headers["hookrelay-error-kind"],
        "undecodable"
    );
    let gone: Vec<_> = seen
        .failures
        .iter()
        .filter(|e| e.http_status_code == Some(404))
        .collect();
    assert_eq!(gone.len(), 1, "one terminal failure event for the 404");
    assert_eq!(gone[0].is_terminal, Some(true));
    reader.stop();
    wait_for(
        "the offsets are committed on tansu and nothing is pending",
        Duration::from_secs(30),
        || async {
            d.metric("hookrelay_offset_commits_total{result=\"ok\"}")
                .await
                .unwrap_or(0.0)
                >= 1.0
                && d.metric("hookrelay_pending_records").await == Some(0.0)
                && d.metric("hookrelay_delivered_after_retry_total").await == Some(2.0)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tansu_a_dispatcher_killed_mid_stream_loses_nothing_after_a_restart() {
    let Some(tansu) = Tansu::start(2) else {
        return;
    };
    let rx = receiver().await;
    let producer = SendProducer::new(&tansu.config.kafka, &tansu.config.topics.sends).unwrap();
    crate::support::produce_sends(&producer, "k", 400, &rx.url("/slow?delay=20ms")).await;
    let mut first = ChildDispatcher::spawn_ready(&tansu.config, &[]).await;
    wait_for(
        "a part of the sends is delivered",
        Duration::from_secs(60),
        || async { rx.count() >= 100 },
    )
    .await;
    first.kill();
    let before = rx.count();
    let _second = ChildDispatcher::spawn_ready(&tansu.config, &[]).await;
    let missing = || {
        (0..400)
            .filter(|i| rx.requests_for(&format!("k{i}")).is_empty())
            .count()
    };
    wait_for(
        "every send is delivered after the restart",
        Duration::from_secs(120),
        || async { missing() == 0 },
    )
    .await;
    eprintln!(
        "tansu: killed after {before} requests; {} requests in all for 400 sends (the redone ones are \
         at-least-once duplicates)",
        rx.count()
    );
}
