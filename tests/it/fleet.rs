//! Many dispatchers, one policy: what one dispatcher sees of a host reaches the others through the
//! host-state topic, and a topic they cannot use costs precision, never a send.

use std::time::Duration;

use rdkafka::mocking::MockCoordinator;

use crate::support::*;

const A_503: &str = "hookrelay_webhook_attempts_total{class=\"5xx\"}";
const A_598: &str = "hookrelay_webhook_attempts_total{class=\"598\"}";
const ASSIGNED: &str = "hookrelay_assigned_partitions";
const A_2XX: &str = "hookrelay_webhook_attempts_total{class=\"2xx\"}";

async fn both_own_partitions(a: &ChildDispatcher, b: &ChildDispatcher) {
    let owned = "hookrelay_assigned_partitions";
    wait_for(
        "both dispatchers own partitions",
        Duration::from_secs(60),
        || async {
            a.metric(owned).await.unwrap_or(0.0) > 0.0 && b.metric(owned).await.unwrap_or(0.0) > 0.0
        },
    )
    .await;
}

/// The unhealthy-host threshold is 20 here; the host answers 503 to everything. Its errors are shared
/// between two dispatchers, each counting fewer than 20 itself (requests stop once the fleet's count
/// passes 20): both pause the host, and the sends that come next are answered 598 by both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_unhealthy_across_the_fleet_is_paused_by_every_dispatcher() {
    // Eight send partitions beside four of the tiers: each of the two owns some send partitions.
    let kafka = Kafka::start(8);
    paused_by_every_dispatcher(kafka.config.clone()).await;
}

/// The same on tansu, the second broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tansu_a_host_unhealthy_across_the_fleet_is_paused_by_every_dispatcher() {
    // Twelve send partitions beside one of each tier: each of the two owns some send partitions.
    let Some(tansu) = crate::support::tansu::Tansu::start_with(12, 1) else {
        return;
    };
    paused_by_every_dispatcher(tansu.config.clone()).await;
}

async fn paused_by_every_dispatcher(mut config: hookrelay::config::Config) {
    config.retry.max_retries = 0;
    config.retry.unreachable_max_retries = 0;
    config.host_health.threshold = 20;
    let rx = receiver().await;
    let a = ChildDispatcher::spawn_ready(&config, &[]).await;
    let b = ChildDispatcher::spawn_ready(&config, &[]).await;
    both_own_partitions(&a, &b).await;
    let failing = rx.url("/hook?status=503");
    // A few at a time, so that the fleet's count reaches each dispatcher before the host is drowned.
    for wave in 0..8 {
        spread(&config, &format!("w{wave}"), 5, &failing).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    wait_for(
        "both dispatchers pause the host",
        Duration::from_secs(60),
        || async {
            a.metric("hookrelay_paused_hosts").await.unwrap_or(0.0) >= 1.0
                && b.metric("hookrelay_paused_hosts").await.unwrap_or(0.0) >= 1.0
        },
    )
    .await;
    let (a_errors, b_errors) = (
        a.metric(A_503).await.unwrap_or(0.0),
        b.metric(A_503).await.unwrap_or(0.0),
    );
    eprintln!("503s answered: {a_errors} to one dispatcher, {b_errors} to the other");
    assert!(a_errors + b_errors > 20.0, "the fleet passed the threshold");
    assert!(
        a_errors.min(b_errors) <= 20.0,
        "one of them paused with no more than the threshold of its own: it counted the other's"
    );
    spread(&config, "after", 40, &failing).await;
    wait_for(
        "598s from both dispatchers",
        Duration::from_secs(30),
        || async {
            a.metric(A_598).await.unwrap_or(0.0) >= 1.0
                && b.metric(A_598).await.unwrap_or(0.0) >= 1.0
        },
    )
    .await;
    assert!(
        a.metric("hookrelay_host_state_shared").await == Some(1.0)
            && b.metric("hookrelay_host_state_shared").await == Some(1.0)
    );
}

/// Records in the host-state topic that are not reports are skipped and counted; sends go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_in_the_host_state_topic_is_skipped_and_sends_flow() {
    let kafka = Kafka::start(2).without_retries();
    let rx = receiver().await;
    let garbage = hookrelay::tools::harness::SendProducer::new(
        &kafka.config.kafka,
        &kafka.config.topics.host_state,
    )
    .unwrap();
    for payload in [
        &b"not json"[..],
        b"{\"instance\":1}",
        &[0xff; 5000][..],
        b"{}",
    ] {
        garbage.raw(b"k", payload).await.unwrap();
    }
    let d = ChildDispatcher::spawn_ready(&kafka.config, &[]).await;
    spread(&kafka.config, "ok", 20, &rx.url("/hook?status=200")).await;
    wait_for("every send delivered", Duration::from_secs(30), || async {
        rx.count() >= 20
    })
    .await;
    wait_for("the garbage counted", Duration::from_secs(10), || async {
        d.metric("hookrelay_host_state_invalid_records_total")
            .await
            .unwrap_or(0.0)
            >= 4.0
    })
    .await;
    assert_eq!(d.metric("hookrelay_host_state_shared").await, Some(1.0));
}

/// The host-state topic lost while the dispatcher runs (the broker that leads it goes down; every other
/// topic is on a broker that stays): the metric and a log line say so within a check (10 s), sends keep
/// flowing under the dispatcher's own rules, and sharing resumes once the broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_state_topic_lost_at_runtime_costs_the_sharing_not_the_sends() {
    let broker = hookrelay::kafka::EmbeddedBroker::start(2).unwrap();
    let mut config = test_config(&broker.bootstrap_servers());
    config.retry.max_retries = 0;
    let topics = broker.create_topics(&config.topics, 2, 2).unwrap();
    let mock = broker.mock();
    for topic in &topics {
        let leader = if *topic == config.topics.host_state {
            2
        } else {
            1
        };
        for p in 0..2 {
            mock.partition_leader(topic, p, Some(leader)).unwrap();
        }
    }
    for group in [&config.kafka.dispatch_group_id, &config.aggregate.group_id] {
        mock.coordinator(MockCoordinator::Group(group.clone()), 1)
            .unwrap();
    }
    let rx = receiver().await;
    let d = ChildDispatcher::spawn_logged(&config);
    let shared = |want: f64| {
        let d = &d;
        move || async move { d.metric("hookrelay_host_state_shared").await == Some(want) }
    };
    wait_for(
        "the host state shared",
        Duration::from_secs(60),
        shared(1.0),
    )
    .await;
    broker.mock().broker_down(2).unwrap();
    wait_for("the loss shown", Duration::from_secs(30), shared(0.0)).await;
    assert!(
        d.log().contains("host state cannot be shared"),
        "a log line says so"
    );
    spread(&config, "lost", 30, &rx.url("/hook?status=200")).await;
    wait_for(
        "every send delivered meanwhile",
        Duration::from_secs(30),
        || async { rx.count() >= 30 },
    )
    .await;
    broker.mock().broker_up(2).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(30);
    while !shared(1.0)().await && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = d.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("host state")).collect();
    assert_eq!(
        log.matches("sharing host state with the fleet").count(),
        2,
        "shared, lost, shared again: {lines:#?}"
    );
}

/// A 20/s limit to one host and a backlog spread over two dispatchers: once the first reports have gone
/// round, the host sees the fleet's 20/s, not 20/s from each (the limit is split by what each asks for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_is_the_fleet_s_split_by_what_each_dispatcher_asks_for() {
    let mut kafka = Kafka::start(8).without_retries();
    kafka.config.rate_limits.insert("127.0.0.1".into(), 20.0);
    // Held sends book their slots at most this far ahead, so a new split applies within it.
    kafka.config.dispatch.max_hold = Duration::from_secs(1);
    let rx = receiver().await;
    let a = ChildDispatcher::spawn_ready(&kafka.config, &[]).await;
    let b = ChildDispatcher::spawn_ready(&kafka.config, &[]).await;
    both_own_partitions(&a, &b).await;
    spread(&kafka.config, "r", 240, &rx.url("/hook?status=200")).await;
    wait_for("the backlog delivered", Duration::from_secs(60), || async {
        rx.count() >= 240
    })
    .await;
    let mut at: Vec<_> = rx.requests().iter().map(|r| r.at).collect();
    at.sort();
    let per_second: Vec<usize> = (0..=at[at.len() - 1].duration_since(at[0]).as_secs())
        .map(|s| {
            at.iter()
                .filter(|t| t.duration_since(at[0]).as_secs() == s)
                .count()
        })
        .collect();
    eprintln!("requests per second: {per_second:?}");
    // The first seconds ran before the first reports went round (each dispatcher at the whole limit), and
    // the last ones as one dispatcher ran out of backlog before the other took its share back: in between,
    // the fleet's rate.
    let window = |t: &&std::time::Instant| {
        let since = t.duration_since(at[0]);
        since >= Duration::from_secs(4) && since < Duration::from_secs(8)
    };
    let rate = at.iter().filter(window).count() as f64 / 4.0;
    let (sa, sb) = (
        a.metric("hookrelay_host_state_reports_sent_total").await,
        b.metric("hookrelay_host_state_reports_sent_total").await,
    );
    assert!(
        (17.0..=23.0).contains(&rate),
        "the host got {rate:.1}/s from the fleet, the limit is 20/s (reports sent: {sa:?}, {sb:?})"
    );
}

/// A dispatcher killed with its share of a rate writes no last report: the one left takes the whole rate
/// back once the killed one's reports are three intervals old (it looks every interval, not only when a
/// report arrives; it used to keep half the rate until the reports left the minute's window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dispatcher_s_part_of_a_rate_goes_back_to_the_one_left() {
    let mut kafka = Kafka::start(8).without_retries();
    kafka.config.rate_limits.insert("127.0.0.1".into(), 20.0);
    kafka.config.dispatch.max_hold = Duration::from_secs(1);
    let rx = receiver().await;
    let a = ChildDispatcher::spawn_ready(&kafka.config, &[]).await;
    let mut b = ChildDispatcher::spawn_ready(&kafka.config, &[]).await;
    both_own_partitions(&a, &b).await;
    spread(&kafka.config, "r", 800, &rx.url("/hook?status=200")).await;
    wait_for("both sending", Duration::from_secs(30), || async {
        b.metric(A_2XX).await.unwrap_or(0.0) >= 20.0 && a.metric(A_2XX).await.unwrap_or(0.0) >= 20.0
    })
    .await;
    let owned = a.metric(ASSIGNED).await.unwrap_or(0.0);
    b.kill();
    // Its partitions move once its session (6 s) is over; the sends it requeued wait there till then.
    wait_for(
        "the one left owns every partition",
        Duration::from_secs(30),
        || async { a.metric(ASSIGNED).await.unwrap_or(0.0) > owned },
    )
    .await;
    let from = std::time::Instant::now() + Duration::from_secs(3);
    let to = from + Duration::from_secs(5);
    wait_for("the window over", Duration::from_secs(10), || async {
        std::time::Instant::now() >= to
    })
    .await;
    let sent = rx
        .requests()
        .iter()
        .filter(|r| r.at >= from && r.at < to)
        .count();
    let rate = sent as f64 / 5.0;
    assert!(
        (16.0..=24.0).contains(&rate),
        "the dispatcher left sent {rate:.1}/s; the fleet's limit is 20/s and it is alone"
    );
}

/// A host answers one dispatcher 429 with `Retry-After: 5`. Once the reports have gone round (a second
/// and a half here), sends to that host for that workspace reach it from neither dispatcher before the
/// five seconds are over: both held them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_answered_to_one_dispatcher_holds_the_host_for_every_one() {
    let kafka = Kafka::start(8).without_retries();
    let rx = receiver().await;
    let a = ChildDispatcher::spawn_ready(&kafka.config, &[]).await;
    let b = ChildDispatcher::spawn_ready(&kafka.config, &[]).await;
    both_own_partitions(&a, &b).await;
    spread(
        &kafka.config,
        "asks",
        1,
        &rx.url("/hook?seq=429&retry_after=5"),
    )
    .await;
    wait_for(
        "the host asks to back off",
        Duration::from_secs(30),
        || async { rx.count() == 1 },
    )
    .await;
    let asked_at = rx.requests()[0].at;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    spread(&kafka.config, "later", 20, &rx.url("/hook?status=200")).await;
    wait_for(
        "the later sends delivered",
        Duration::from_secs(30),
        || async { rx.count() == 21 },
    )
    .await;
    let earliest = rx
        .requests()
        .iter()
        .filter(|r| r.webhook_id.as_deref() != Some("asks-0"))
        .map(|r| r.at.duration_since(asked_at))
        .min()
        .unwrap();
    assert!(
        earliest >= Duration::from_millis(4_900),
        "a later send reached the host {earliest:?} after its Retry-After: 5"
    );
    let held = "hookrelay_held_sends_total{reason=\"retry_after\"}";
    let (ha, hb) = (a.metric(held).await, b.metric(held).await);
    assert!(
        ha.unwrap_or(0.0) >= 1.0 && hb.unwrap_or(0.0) >= 1.0,
        "both dispatchers held sends: {ha:?}, {hb:?}"
    );
}
