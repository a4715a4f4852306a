//! `hookrelay replay` from outside: a dispatcher child process fails sends for good, the receiver is fixed,
//! and the replay command redrives exactly the selected ones, each delivered once.

use std::time::Duration;

use crate::support::{
    child_config, config_file, free_port, full_send, hookrelay_command, produce_one, receiver,
    wait_for, ChildDispatcher, Kafka,
};
use hookrelay::config::Config;
use hookrelay::tools::harness::OutputReader;
use hookrelay::tools::receiver::Receiver;

/// `hookrelay replay <args>` run to its end: whether it succeeded, standard output and standard error.
async fn replay(config: &Config, args: &[&str]) -> (bool, String, String) {
    let file = config_file(&child_config(config, free_port()));
    let mut cmd = hookrelay_command("replay", &file, &[]);
    cmd.args(args);
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::task::spawn_blocking(move || {
            let out = cmd.output().expect("hookrelay replay runs");
            drop(file);
            out
        }),
    )
    .await
    .expect("hookrelay replay ends within a minute")
    .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn statuses_for(rx: &Receiver, id: &str) -> Vec<u16> {
    rx.requests_for(id).iter().map(|r| r.status).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_since_redrives_exactly_the_sends_that_failed_for_good_and_each_is_delivered_once() {
    let kafka = Kafka::start(2);
    let rx = receiver().await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    // A 404 is final; `seq` makes the endpoint answer 200 from its second request on: the fix.
    for i in 0..4 {
        produce_one(
            &producer,
            &format!("broken{i}"),
            &rx.url("/hook?seq=404,200"),
        )
        .await;
    }
    for i in 0..3 {
        produce_one(&producer, &format!("fine{i}"), &rx.url("/ok")).await;
    }
    for i in 0..2 {
        let send = full_send(&format!("other{i}"), "other", &rx.url("/hook?seq=410,200"));
        producer.json(&send).await.unwrap();
    }
    let dispatcher = ChildDispatcher::spawn(&kafka.config);
    wait_for(
        "six sends have failed for good",
        Duration::from_secs(30),
        || async { reader.snapshot().terminal_failures() == 6 },
    )
    .await;
    let failures = reader.snapshot().failures;
    assert!(
        failures.iter().all(|e| e.source_topic.as_deref()
            == Some(kafka.config.topics.sends.as_str())
            && e.source_offset.is_some()),
        "failure events name their original record"
    );

    let (ok, out, err) = replay(
        &kafka.config,
        &["--since", "10m", "--workspace", "ws", "--dry-run"],
    )
    .await;
    assert!(ok, "dry run: {err}");
    assert!(out.contains("4 sends to redrive"), "{out}");
    assert!(out.contains(" 404 "), "by code: {out}");
    assert_eq!(rx.count(), 9, "a dry run produces nothing");

    let (ok, out, err) = replay(&kafka.config, &["--since", "10m", "--workspace", "ws"]).await;
    assert!(ok, "replay: {err}");
    assert!(out.contains("redriven 4 sends"), "{out}");
    wait_for(
        "the four redriven sends are delivered",
        Duration::from_secs(30),
        || async {
            dispatcher
                .metric("hookrelay_sends_total{result=\"delivered\"}")
                .await
                == Some(7.0)
        },
    )
    .await;
    for i in 0..4 {
        assert_eq!(
            statuses_for(&rx, &format!("broken{i}")),
            vec![404, 200],
            "broken{i}: once more, delivered"
        );
    }
    for i in 0..3 {
        assert_eq!(
            statuses_for(&rx, &format!("fine{i}")),
            vec![200],
            "fine{i} is not redriven"
        );
    }
    for i in 0..2 {
        assert_eq!(
            statuses_for(&rx, &format!("other{i}")),
            vec![410],
            "other{i}: another workspace"
        );
    }

    let (ok, out, _) = replay(
        &kafka.config,
        &["--since", "10m", "--status", "5xx", "--dry-run"],
    )
    .await;
    assert!(
        ok && out.contains("0 sends to redrive"),
        "no 5xx failed: {out}"
    );
    let (ok, _, err) = replay(&kafka.config, &["--since", "yesterday-ish"]).await;
    assert!(
        !ok && err.contains("RFC 3339"),
        "a bad time is explained: {err}"
    );
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn originals_deleted_by_retention_stop_the_replay_before_anything_is_produced() {
    let kafka = Kafka::start(1);
    let rx = receiver().await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    produce_one(&producer, "gone", &rx.url("/hook?status=404")).await;
    let mut dispatcher = ChildDispatcher::spawn(&kafka.config);
    wait_for(
        "the send has failed for good",
        Duration::from_secs(30),
        || async { reader.snapshot().terminal_failures() == 1 },
    )
    .await;
    dispatcher.terminate();
    // The embedded broker keeps about 5 MiB per partition: 8 MiB more pushes the original out, as
    // retention would on a real cluster (random bytes: the producer compresses).
    for _ in 0..16 {
        let filler: Vec<u8> = (0..512 * 1024).map(|_| rand::random::<u8>()).collect();
        producer.raw(b"filler", &filler).await.unwrap();
    }
    let (ok, _, err) = replay(&kafka.config, &["--since", "10m"]).await;
    assert!(!ok, "the replay stops");
    assert!(
        err.contains("deleted by retention") && err.contains("Nothing was produced"),
        "and says why: {err}"
    );
    let (ok, out, err) = replay(&kafka.config, &["--since", "10m", "--skip-deleted"]).await;
    assert!(ok, "--skip-deleted redrives the rest: {err}");
    assert!(err.contains("skipping 1 sends"), "{err}");
    assert!(out.contains("redriven 0 sends"), "{out}");
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_events_naming_records_that_do_not_exist_or_another_topic_are_skipped() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let kafka = Kafka::start(1);
    let producer: FutureProducer = hookrelay::kafka::client::producer_config(&kafka.config.kafka)
        .create()
        .unwrap();
    let now_ms = hookrelay::clock::now_ms();
    let topics = &kafka.config.topics;
    for (topic, partition, offset) in [
        (topics.sends.as_str(), 99, 0),
        (topics.sends.as_str(), 0, 1_000_000),
        (topics.dead_letters.as_str(), 0, 0),
    ] {
        let event = hookrelay::events::FailureEvent {
            http_status_code: Some(404),
            app_group_id: Some("ws".into()),
            id: format!("forged-{partition}-{offset}"),
            time: i32::try_from(now_ms / 1000).unwrap(),
            time_ms: Some(now_ms),
            is_terminal: Some(true),
            source_topic: Some(topic.into()),
            source_partition: Some(partition),
            source_offset: Some(offset),
            ..Default::default()
        };
        let payload = event.encode(hookrelay::config::EventEncoding::SingleObject, None);
        producer
            .send(
                FutureRecord::to(&topics.failures)
                    .key("ws")
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    let (ok, out, err) = replay(&kafka.config, &["--since", "10m"]).await;
    assert!(ok, "forged coordinates do not stop a replay: {err}");
    assert!(
        out.contains("1 selected events name an original outside the send topic"),
        "{out}"
    );
    assert!(
        err.contains("skipping 2 sends whose failure events name no record"),
        "{err}"
    );
    assert!(out.contains("redriven 0 sends"), "{out}");
}
