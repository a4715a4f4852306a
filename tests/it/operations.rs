//! hookrelay as an operator sees it: `/metrics` values after real traffic, `/readyz` following assignment
//! and the broker, and SIGTERM under load.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::support::{
    accounted, all_accounted, produce_one, produce_sends, slow_receiver, wait_for, ChildDispatcher,
    Kafka,
};
use hookrelay::tools::harness::OutputReader;

const SECONDS_30: Duration = Duration::from_secs(30);

/// Sum of a per-partition gauge over `partitions` of `topic`; `None` if any series is missing.
async fn per_partition(
    d: &ChildDispatcher,
    name: &str,
    topic: &str,
    partitions: i32,
) -> Option<f64> {
    let mut sum = 0.0;
    for p in 0..partitions {
        sum += d
            .metric(&format!("{name}{{partition=\"{p}\",topic=\"{topic}\"}}"))
            .await?;
    }
    Some(sum)
}

async fn readyz_says(d: &ChildDispatcher, status: u16, words: &str) -> bool {
    matches!(d.readyz().await, Some((s, body)) if s == status && body.contains(words))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_readiness_follow_assignment_traffic_and_the_broker() {
    let mut kafka = Kafka::start(2).without_retries();
    // Topics that do not exist yet: the dispatcher refuses to start, naming each one and how to create it.
    kafka.config.topics.sends = "late-sends".into();
    kafka.config.topics.retry_prefix = "late-retries".into();
    kafka.config.dispatch.max_in_flight = 4;
    let (status, stderr) = ChildDispatcher::run_to_end(
        "dispatch",
        &kafka.config,
        &[("HOOKRELAY_KAFKA__STARTUP_TIMEOUT", "1s")],
        SECONDS_30,
    );
    assert!(!status.success(), "exits non-zero without its topics");
    for topic in ["late-sends", "late-retries-1s", "late-retries-5s"] {
        assert!(
            stderr.contains(&format!("--create --topic {topic} ")),
            "names {topic} and how to create it: {stderr}"
        );
    }
    assert!(!stderr.contains("--topic webhook-failures"), "{stderr}");

    kafka
        .broker
        .create_topic(&kafka.config.topics.sends, 2)
        .unwrap();
    for (tier, _) in kafka.config.topics.retry_tier_topics() {
        kafka.broker.create_topic(&tier, 2).unwrap();
    }
    let rx = crate::support::receiver().await;
    let d = ChildDispatcher::spawn(&kafka.config);
    wait_for("/readyz turns ready once assigned", SECONDS_30, || async {
        readyz_says(&d, 200, "ready").await
    })
    .await;
    assert_eq!(d.metric("hookrelay_kafka_reachable").await, Some(1.0));
    assert_eq!(
        d.metric("hookrelay_assigned_partitions").await,
        Some(kafka.group_partitions(2))
    );

    // 12 sends (every fourth answered 500, final without retries) and 2 records that are not send requests.
    let producer = kafka.producer();
    for i in 0..12 {
        let status = if i % 4 == 0 { 500 } else { 200 };
        let url = rx.url(&format!("/hook?status={status}"));
        produce_one(&producer, &format!("m{i}"), &url).await;
    }
    producer.raw(b"k1", b"not json").await.unwrap();
    producer.raw(b"k2", b"\x00\x01").await.unwrap();
    wait_for("every record has a result", SECONDS_30, || async {
        d.metric("hookrelay_sends_total{result=\"delivered\"}")
            .await
            == Some(9.0)
            && d.metric("hookrelay_sends_total{result=\"failed\"}").await == Some(3.0)
            && d.metric("hookrelay_sends_total{result=\"dead_lettered\"}")
                .await
                == Some(2.0)
    })
    .await;
    let expected = [
        ("hookrelay_webhook_attempts_total{class=\"2xx\"}", 9.0),
        ("hookrelay_webhook_attempts_total{class=\"5xx\"}", 3.0),
        ("hookrelay_webhook_attempts_total{class=\"599\"}", 0.0),
        ("hookrelay_failure_events_total{terminal=\"true\"}", 3.0),
        ("hookrelay_failure_events_total{terminal=\"false\"}", 0.0),
        ("hookrelay_dead_letters_total{reason=\"undecodable\"}", 2.0),
        ("hookrelay_webhook_request_duration_seconds_count", 12.0),
        ("hookrelay_webhook_requests_in_flight", 0.0),
        ("hookrelay_produce_errors_total{kind=\"transient\"}", 0.0),
        ("hookrelay_produce_errors_total{kind=\"permanent\"}", 0.0),
        ("hookrelay_stalled_outcomes", 0.0),
        ("hookrelay_paused_hosts", 0.0),
    ];
    for (series, value) in expected {
        assert_eq!(d.metric(series).await, Some(value), "{series}");
    }
    let sends = kafka.config.topics.sends.clone();
    wait_for(
        "committed offsets cover all 14 records and the lag is gone",
        SECONDS_30,
        || async {
            per_partition(&d, "hookrelay_committed_offset", &sends, 2).await == Some(14.0)
                && per_partition(&d, "hookrelay_consumer_lag", &sends, 2).await == Some(0.0)
        },
    )
    .await;
    assert!(
        d.metric("hookrelay_offset_commits_total{result=\"ok\"}")
            .await
            >= Some(1.0)
    );

    // A backlog behind a slow endpoint shows as lag while it lasts.
    produce_sends(&producer, "b", 60, &rx.url("/slow?delay=200ms")).await;
    wait_for("the backlog shows as consumer lag", SECONDS_30, || async {
        per_partition(&d, "hookrelay_consumer_lag", &sends, 2).await > Some(0.0)
    })
    .await;
    wait_for(
        "the backlog drains and the lag returns to 0",
        SECONDS_30,
        || async {
            per_partition(&d, "hookrelay_committed_offset", &sends, 2).await == Some(74.0)
                && per_partition(&d, "hookrelay_consumer_lag", &sends, 2).await == Some(0.0)
        },
    )
    .await;

    kafka.broker.mock().broker_down(1).unwrap();
    wait_for(
        "/readyz fails while no broker answers",
        SECONDS_30,
        || async {
            readyz_says(&d, 503, "no Kafka broker reachable").await
                && d.metric("hookrelay_kafka_reachable").await == Some(0.0)
        },
    )
    .await;
    kafka.broker.mock().broker_up(1).unwrap();
    wait_for("/readyz recovers with the broker", SECONDS_30, || async {
        readyz_says(&d, 200, "ready").await
    })
    .await;

    // A topic that goes missing later (the embedded broker's stand-in for a deleted topic: its metadata
    // answers "unknown topic") is reported on /readyz and a gauge, never waited on in silence.
    use rdkafka::types::RDKafkaRespErr;
    let failures = kafka.config.topics.failures.clone();
    let gauge = format!("hookrelay_topic_missing{{topic=\"{failures}\"}}");
    assert_eq!(d.metric(&gauge).await, Some(0.0));
    let mock = kafka.broker.mock();
    mock.topic_error(
        &failures,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART,
    )
    .unwrap();
    wait_for("the missing topic is reported", SECONDS_30, || async {
        readyz_says(&d, 503, &format!("topics missing: {failures}")).await
            && d.metric(&gauge).await == Some(1.0)
    })
    .await;
    mock.topic_error(&failures, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
        .unwrap();
    wait_for("ready again once the topic is back", SECONDS_30, || async {
        readyz_says(&d, 200, "ready").await && d.metric(&gauge).await == Some(0.0)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_0_within_the_grace_and_a_restart_finishes_the_rest() {
    let mut kafka = Kafka::start(4).without_retries();
    kafka.config.dispatch.max_in_flight = 32;
    let grace = Duration::from_secs(3);
    kafka.config.dispatch.shutdown_grace = grace;
    // Each request takes a second, so the drain cannot finish everything already started.
    let rx = slow_receiver(Duration::from_secs(1)).await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    let ids: Vec<String> = (0..300).map(|i| format!("t{i:03}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let status = if i % 5 == 0 { 503 } else { 200 };
        let url = rx.url(&format!("/hook?status={status}"));
        produce_one(&producer, id, &url).await;
    }

    let mut first = ChildDispatcher::spawn(&kafka.config);
    wait_for("the dispatcher is under load", SECONDS_30, || async {
        rx.count() >= 64 && first.metric("hookrelay_webhook_requests_in_flight").await >= Some(16.0)
    })
    .await;
    let asked = Instant::now();
    let status = first.terminate();
    let took = asked.elapsed();
    assert!(status.success(), "SIGTERM exits 0, got {status:?}");
    assert!(
        took <= grace + Duration::from_millis(750),
        "exited {took:?} after SIGTERM; the grace is {grace:?}"
    );
    let (done_before, _) = accounted(&rx, &reader.snapshot());
    assert!(
        done_before.len() < ids.len(),
        "stopped before finishing ({} of {} done)",
        done_before.len(),
        ids.len()
    );

    let _second = ChildDispatcher::spawn(&kafka.config);
    let redone = all_accounted(&rx, &reader, &ids).await;
    eprintln!(
        "SIGTERM test: exit after {took:?} (grace {grace:?}); {} of {} sends done before, {redone} requests redone after the restart",
        done_before.len(),
        ids.len()
    );
    wait_for("every offset is committed", SECONDS_30, || async {
        kafka.committed(4).await.values().sum::<i64>() == ids.len() as i64
    })
    .await;
    reader.stop();
}

/// With the cluster gone, the commit on the way out blocks inside librdkafka (for the session timeout and
/// longer); the stop still ends within the grace, with status 1 and a line that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_down_still_ends_within_the_grace_and_says_why() {
    let mut kafka = Kafka::start(2).without_retries();
    let grace = Duration::from_secs(3);
    kafka.config.dispatch.shutdown_grace = grace;
    let rx = slow_receiver(Duration::from_millis(500)).await;
    let producer = kafka.producer();
    for i in 0..40 {
        produce_one(&producer, &format!("b{i}"), &rx.url("/hook")).await;
    }
    let mut dispatcher = ChildDispatcher::spawn_logged(&kafka.config);
    wait_for("requests are under way", SECONDS_30, || async {
        rx.count() >= 8
    })
    .await;
    kafka.broker.mock().broker_down(1).unwrap();
    let asked = Instant::now();
    let status = dispatcher.terminate();
    let took = asked.elapsed();
    assert!(
        took <= grace + Duration::from_millis(1_750),
        "exited {took:?} after SIGTERM with the broker down; the grace is {grace:?}"
    );
    assert_eq!(
        status.code(),
        Some(1),
        "an unfinished stop is not a clean one"
    );
    let log = dispatcher.log();
    assert!(
        log.contains("did not stop within its shutdown grace"),
        "the log says why: {log}"
    );
}

/// Every `hookrelay_…` name in `text`.
fn metric_names(text: &str) -> HashSet<String> {
    text.match_indices("hookrelay_")
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect::<String>()
        })
        .collect()
}

#[test]
fn dashboards_and_alert_rules_use_only_metrics_hookrelay_exposes() {
    let dispatch = hookrelay::telemetry::DispatchMetrics::new();
    // Labelled series appear once they have a label value.
    dispatch.kafka.lag.with_label_values(&["t", "0"]).set(0);
    dispatch
        .kafka
        .committed
        .with_label_values(&["t", "0"])
        .set(0);
    dispatch.retries_scheduled.with_label_values(&["10s"]).inc();
    dispatch.request_duration.observe(0.1);
    dispatch.kafka.show_missing(&["t".into()], &[]);
    let aggregate = hookrelay::telemetry::AggregateMetrics::new();
    aggregate.kafka.show_missing(&["t".into()], &[]);
    let exposed: HashSet<String> = metric_names(&dispatch.render())
        .into_iter()
        .chain(metric_names(&aggregate.render()))
        .collect();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "compose/prometheus/alerts.yml",
        "compose/prometheus/alerts.test.yml",
        "compose/grafana/dashboards/hookrelay.json",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let used = metric_names(&text);
        assert!(!used.is_empty(), "{file} uses no hookrelay metric");
        let unknown: Vec<&String> = used.difference(&exposed).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics hookrelay does not expose: {unknown:?}"
        );
    }
}

#[test]
fn the_shipped_compose_and_kubernetes_configurations_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["compose/hookrelay.toml", "deploy/base/hookrelay.toml"] {
        // The signing secrets are mounted next to the config in Kubernetes; here they are in deploy/base.
        let text = std::fs::read_to_string(root.join(file)).unwrap().replace(
            "/etc/hookrelay/signing/",
            &format!("{}/", root.join("deploy/base").display()),
        );
        let local = std::env::temp_dir().join(format!(
            "hookrelay-{}-{}",
            std::process::id(),
            file.replace('/', "-")
        ));
        std::fs::write(&local, text).unwrap();
        let config =
            hookrelay::config::Config::load(Some(&local)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let _ = std::fs::remove_file(&local);
        assert!(
            config.telemetry.listen_addr().is_some(),
            "{file} serves /metrics"
        );
    }
}

#[test]
fn the_topic_script_creates_every_topic_the_default_configuration_uses() {
    use std::os::unix::fs::PermissionsExt;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    // A stand-in for kafka-topics.sh that prints its arguments.
    let fake = std::env::temp_dir().join(format!("hookrelay-fake-kt-{}.sh", std::process::id()));
    std::fs::write(&fake, "#!/bin/sh\necho \"$@\"\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = std::process::Command::new("bash")
        .arg(root.join("deploy/create-topics.sh"))
        .env("BOOTSTRAP", "kafka:9092")
        .env("KAFKA_TOPICS", &fake)
        .output();
    let _ = std::fs::remove_file(&fake);
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: HashSet<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("--topic ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(String::from)
        .collect();
    let c = hookrelay::config::Config::default();
    for topic in c.topics.all() {
        assert!(created.contains(&topic), "create-topics.sh misses {topic}");
    }
}
