//! The fault battery: hookrelay processes against the embedded broker's fault injection (broker down, request
//! errors on Produce / Fetch / OffsetCommit, leader moves), SIGKILL loops, and an SMTP server that refuses and
//! flaps. Each test prints one `RELIABILITY |` row — what was injected, sends produced, delivered plus
//! reported, lost (must be 0), duplicate deliveries, duplicate emails (must be 0) — which RELIABILITY.md
//! collects:
//!
//! ```sh
//! cargo nextest run --test it faults:: --no-capture 2>&1 | grep '^RELIABILITY'
//! ```

use std::collections::HashMap;
use std::time::Duration;

use crate::support::{produce_sends, wait_for, ChildDispatcher, Kafka, SmtpServer};
use hookrelay::tools::harness::{Observed, OutputReader};
use hookrelay::tools::receiver::Receiver;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const MINUTES_3: Duration = Duration::from_secs(180);

/// A `subcommand` child whose killed predecessor's partitions move on within about four seconds (the
/// embedded broker delays a first join by 3 s, so a shorter session would expire while joining).
fn child(subcommand: &str, kafka: &Kafka) -> ChildDispatcher {
    ChildDispatcher::spawn_command(
        subcommand,
        &kafka.config,
        &[
            (
                "HOOKRELAY_KAFKA__CONSUMER_PROPERTIES__SESSION_TIMEOUT_MS",
                "4000",
            ),
            (
                "HOOKRELAY_KAFKA__CONSUMER_PROPERTIES__HEARTBEAT_INTERVAL_MS",
                "300",
            ),
            ("HOOKRELAY_TELEMETRY__LOG_LEVEL", "warn"),
        ],
    )
}

fn dispatcher(kafka: &Kafka) -> ChildDispatcher {
    child("dispatch", kafka)
}

/// Produces `n` sends: every fifth answered 503 once and then 200 (a retry delivers it), every seventh 404
/// (a terminal failure event), the rest 200 after `delay_ms`. Returns their ids.
async fn produce_mix(kafka: &Kafka, rx: &Receiver, n: usize, delay_ms: u64) -> Vec<String> {
    let producer = kafka.producer();
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("f{i:05}");
        let url = if i % 5 == 0 {
            rx.url(&format!("/hook?seq=503,200&delay={delay_ms}ms"))
        } else if i % 7 == 0 {
            rx.url("/hook?status=404")
        } else {
            rx.url(&format!("/hook?delay={delay_ms}ms"))
        };
        let mut s = crate::support::send(&id, &url);
        s.workspace_id = format!("ws{}", i % 5);
        producer.json(&s).await.unwrap();
        ids.push(id);
    }
    ids
}

/// An embedded broker (4 send partitions) with `n` sends of the mix waiting, a receiver, and a reader of
/// the failure and dead-letter topics; dispatchers get 8 requests in flight.
async fn backlog(n: usize, delay_ms: u64) -> (Kafka, Receiver, OutputReader, Vec<String>) {
    let mut kafka = Kafka::start(4);
    kafka.config.dispatch.max_in_flight = 8;
    let rx = crate::support::receiver().await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let ids = produce_mix(&kafka, &rx, n, delay_ms).await;
    (kafka, rx, reader, ids)
}

async fn under_way(rx: &Receiver, requests: u64) {
    wait_for(
        "the stream is under way",
        Duration::from_secs(60),
        || async { rx.count() >= requests },
    )
    .await;
}

/// What became of the sends.
#[derive(Debug)]
struct Tally {
    produced: usize,
    /// Delivered (a 2xx) or reported (a terminal failure event).
    accounted: usize,
    lost: usize,
    /// 2xx responses beyond the first, per send (at least once allows them; receivers dedupe on webhook-id).
    duplicate_deliveries: usize,
}

fn tally(rx: &Receiver, observed: &Observed, ids: &[String]) -> Tally {
    let mut delivered: HashMap<String, usize> = HashMap::new();
    for r in rx.requests() {
        if let (Some(id), true) = (r.webhook_id, (200..300).contains(&r.status)) {
            *delivered.entry(id).or_default() += 1;
        }
    }
    let reported: std::collections::HashSet<String> = observed
        .failures
        .iter()
        .filter(|e| e.is_terminal == Some(true))
        .filter_map(|e| e.dispatch_id.as_deref())
        .map(|d| d.trim_start_matches("dispatch-").to_string())
        .collect();
    let accounted = ids
        .iter()
        .filter(|id| delivered.contains_key(*id) || reported.contains(*id))
        .count();
    Tally {
        produced: ids.len(),
        accounted,
        lost: ids.len() - accounted,
        duplicate_deliveries: delivered.values().map(|n| n - 1).sum(),
    }
}

fn report(fault: &str, injected: &str, t: &Tally, duplicate_emails: &str) {
    println!(
        "RELIABILITY | {fault} | {injected} | {} | {} | {} | {} | {duplicate_emails} |",
        t.produced, t.accounted, t.lost, t.duplicate_deliveries
    );
}

/// Waits until every send is delivered or reported and every send-topic offset is committed.
async fn settle(
    kafka: &Kafka,
    rx: &Receiver,
    reader: &OutputReader,
    ids: &[String],
    partitions: i32,
) {
    wait_for("every send is delivered or reported", MINUTES_3, || async {
        tally(rx, &reader.snapshot(), ids).lost == 0
    })
    .await;
    wait_for(
        "every offset of the send topic is committed",
        MINUTES_3,
        || async { kafka.committed(partitions).await.values().sum::<i64>() == ids.len() as i64 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_sigkills_of_a_dispatcher_mid_stream_lose_nothing() {
    let (kafka, rx, reader, ids) = backlog(2_000, 40).await;
    for i in 0..20u64 {
        let mut d = dispatcher(&kafka);
        let before = rx.count();
        wait_for(
            "the dispatcher makes progress",
            Duration::from_secs(60),
            || async { rx.count() >= before + 20 },
        )
        .await;
        // The kill lands at a different point of the stream each time.
        tokio::time::sleep(Duration::from_millis(50 + 71 * (i % 7))).await;
        d.kill();
    }
    let _last = dispatcher(&kafka);
    settle(&kafka, &rx, &reader, &ids, 4).await;
    let t = tally(&rx, &reader.snapshot(), &ids);
    report(
        "dispatcher SIGKILLed 20 times mid-stream, retries in play",
        "SIGKILL after ≥ 20 new requests + 50–476 ms, 20 times; then one clean run",
        &t,
        "—",
    );
    assert_eq!(t.lost, 0);
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_down_for_ten_seconds_mid_stream_loses_nothing() {
    let (kafka, rx, reader, ids) = backlog(1_500, 20).await;
    // librdkafka's default session (45 s) outlives the outage, as it would in production; with a session
    // shorter than the outage the group is rebuilt and every uncommitted send is redone (at least once).
    let _d = ChildDispatcher::spawn_with(
        &kafka.config,
        &[
            (
                "HOOKRELAY_KAFKA__CONSUMER_PROPERTIES__SESSION_TIMEOUT_MS",
                "45000",
            ),
            (
                "HOOKRELAY_KAFKA__CONSUMER_PROPERTIES__HEARTBEAT_INTERVAL_MS",
                "3000",
            ),
            ("HOOKRELAY_TELEMETRY__LOG_LEVEL", "warn"),
        ],
    );
    under_way(&rx, 200).await;
    kafka.broker.mock().broker_down(1).unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    kafka.broker.mock().broker_up(1).unwrap();
    settle(&kafka, &rx, &reader, &ids, 4).await;
    let t = tally(&rx, &reader.snapshot(), &ids);
    report(
        "broker down mid-stream",
        "`broker_down` for 10 s after 200 requests",
        &t,
        "—",
    );
    assert_eq!(t.lost, 0);
    reader.stop();
}

/// Injects `err` on the next `count` requests of `api` and clears it after `for_how_long`.
async fn request_errors_for(
    kafka: &Kafka,
    api: RDKafkaApiKey,
    err: RDKafkaRespErr,
    count: usize,
    how_long: Duration,
) {
    kafka.broker.mock().request_errors(api, &vec![err; count]);
    tokio::time::sleep(how_long).await;
    kafka.broker.mock().clear_request_errors(api);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_errors_for_ten_seconds_lose_nothing() {
    let (kafka, rx, reader, ids) = backlog(1_500, 20).await;
    let d = dispatcher(&kafka);
    under_way(&rx, 200).await;
    // Every Produce request (failure events, retry records, dead letters) fails for 10 s.
    request_errors_for(
        &kafka,
        RDKafkaApiKey::Produce,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        100_000,
        Duration::from_secs(10),
    )
    .await;
    settle(&kafka, &rx, &reader, &ids, 4).await;
    let observed = reader.snapshot();
    let t = tally(&rx, &observed, &ids);
    let mut events: HashMap<&str, usize> = HashMap::new();
    for e in &observed.failures {
        *events.entry(e.id.as_str()).or_default() += 1;
    }
    let duplicate_events: usize = events.values().map(|n| n - 1).sum();
    report(
        "produce errors on the failure topic",
        &format!("every Produce answered NOT_ENOUGH_REPLICAS for 10 s; {duplicate_events} duplicate failure events"),
        &t,
        "—",
    );
    assert_eq!(t.lost, 0);
    assert_eq!(
        d.metric("hookrelay_stalled_outcomes").await,
        Some(0.0),
        "nothing waits any more"
    );
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_and_commit_errors_and_leader_moves_lose_nothing() {
    let (kafka, rx, reader, ids) = backlog(1_200, 20).await;
    let d = dispatcher(&kafka);
    under_way(&rx, 100).await;
    let errs = [
        (
            RDKafkaApiKey::Fetch,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ),
        (
            RDKafkaApiKey::OffsetCommit,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        ),
    ];
    for (api, err) in errs {
        request_errors_for(&kafka, api, err, 50, Duration::from_secs(3)).await;
    }
    settle(&kafka, &rx, &reader, &ids, 4).await;
    let t = tally(&rx, &reader.snapshot(), &ids);
    report(
        "fetch and offset-commit errors",
        "50 Fetch errors (NOT_LEADER) for 3 s, then 50 OffsetCommit errors (REQUEST_TIMED_OUT) for 3 s",
        &t,
        "—",
    );
    assert_eq!(t.lost, 0);
    assert!(
        d.metric("hookrelay_offset_commits_total{result=\"error\"}")
            .await
            >= Some(1.0)
    );
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_event_the_broker_refuses_for_good_becomes_a_dead_letter() {
    let kafka = Kafka::start(1).without_retries();
    let rx = crate::support::receiver().await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    // The dispatcher's first two Produce requests — the failure event of this 404, then its dead letter in
    // full — are refused as too large (the embedded broker's request errors hit whichever client asks next,
    // so the dispatcher starts after); the dead letter then goes bare.
    produce_sends(&producer, "refused", 1, &rx.url("/hook?status=404")).await;
    kafka.broker.mock().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 2],
    );
    let d = dispatcher(&kafka);
    reader
        .wait_until(Duration::from_secs(60), |o| o.dead_letters.len() == 1)
        .await;
    produce_sends(&producer, "next", 5, &rx.url("/hook?status=404")).await;
    let seen = reader
        .wait_until(Duration::from_secs(60), |o| {
            o.dead_letters.len() == 1 && o.terminal_failures() == 5
        })
        .await;
    let dl = &seen.dead_letters[0];
    assert_eq!(
        dl.headers["hookrelay-error-kind"], "unpublishable",
        "{:?}",
        dl.headers
    );
    assert!(
        dl.headers["hookrelay-error"].contains("refused"),
        "{:?}",
        dl.headers
    );
    assert!(
        dl.payload.is_empty()
            && dl.headers["hookrelay-dropped"].contains("the whole record was refused"),
        "a dead letter refused in full goes bare: {:?}",
        dl.headers
    );
    assert_eq!(
        d.metric("hookrelay_produce_errors_total{kind=\"permanent\"}")
            .await,
        Some(2.0)
    );
    wait_for(
        "every offset is committed",
        Duration::from_secs(30),
        || async { kafka.committed(1).await.values().sum::<i64>() == 6 },
    )
    .await;
    let t = Tally {
        produced: 6,
        accounted: 1 + 5,
        lost: 0,
        duplicate_deliveries: 0,
    };
    report(
        "a failure event refused for good",
        "two Produce requests answered MESSAGE_TOO_LARGE: the failure event is replaced by a dead letter (`unpublishable`), which goes bare when refused in full; the partition moves on",
        &t,
        "—",
    );
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_fails_healthz_ends_the_process_and_a_restart_finishes() {
    let kafka = Kafka::start(1).without_retries();
    let rx = crate::support::receiver().await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let mut d = dispatcher(&kafka);
    let producer = kafka.producer();
    produce_sends(&producer, "before", 3, &rx.url("/hook?status=404")).await;
    reader
        .wait_until(Duration::from_secs(60), |o| o.terminal_failures() == 3)
        .await;
    // Five more sends whose requests take 2 s: while the first is on the wire, the broker is told to reject
    // the next Produce request — the dispatcher's — with an error an idempotent producer cannot survive.
    produce_sends(&producer, "after", 5, &rx.url("/hook?status=404&delay=2s")).await;
    let mut ids: Vec<String> = (0..3).map(|i| format!("before{i}")).collect();
    ids.extend((0..5).map(|i| format!("after{i}")));
    wait_for(
        "a request is on the wire",
        Duration::from_secs(60),
        || async { d.metric("hookrelay_webhook_requests_in_flight").await >= Some(1.0) },
    )
    .await;
    kafka.broker.mock().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );
    let saw_unhealthy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addr = d.metrics_addr;
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < until,
            "the process did not end after the fatal error"
        );
        if let Ok(r) = reqwest::get(format!("http://{addr}/healthz")).await {
            if r.status() == 503 {
                saw_unhealthy.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(
        !status.success(),
        "a fatal error exits non-zero, got {status:?}"
    );
    assert!(
        saw_unhealthy.load(std::sync::atomic::Ordering::SeqCst),
        "/healthz answered 503 before the process ended"
    );
    let _restarted = dispatcher(&kafka);
    settle(&kafka, &rx, &reader, &ids, 1).await;
    let t = tally(&rx, &reader.snapshot(), &ids);
    report(
        "fatal idempotent-producer error",
        "one Produce answered OUT_OF_ORDER_SEQUENCE_NUMBER: /healthz 503, exit 2, restart",
        &t,
        "—",
    );
    assert_eq!(t.lost, 0);
    reader.stop();
}

// ---- the aggregator ----

fn aggregator_config(kafka: &mut Kafka, smtp: &SmtpServer) {
    let a = &mut kafka.config.aggregate;
    a.threshold = 5;
    a.smtp.host = "127.0.0.1".into();
    a.smtp.port = smtp.addr.port();
    a.smtp.security = hookrelay::aggregate::config::SmtpSecurity::Plain;
    a.smtp.timeout = Duration::from_secs(2);
    a.company_admins = vec!["oncall@example.com".into()];
}

/// Six failure events for each of `workspaces` workspaces (threshold 5).
async fn over_threshold(kafka: &Kafka, workspaces: &[String]) {
    let producer: rdkafka::producer::FutureProducer =
        hookrelay::kafka::client::producer_config(&kafka.config.kafka)
            .create()
            .unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    for ws in workspaces {
        for _ in 0..6 {
            let e = hookrelay::events::FailureEvent {
                http_status_code: Some(503),
                app_group_id: Some(ws.clone()),
                id: uuid::Uuid::new_v4().to_string(),
                time: (now / 1000) as i32,
                time_ms: Some(now),
                user_id: "u".into(),
                ..Default::default()
            };
            let payload = e.encode(hookrelay::config::EventEncoding::SingleObject, None);
            producer
                .send(
                    rdkafka::producer::FutureRecord::to(&kafka.config.topics.failures)
                        .key(ws)
                        .payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
}

fn emails_per_workspace(smtp: &SmtpServer, workspaces: &[String]) -> Vec<usize> {
    let mails = smtp.received();
    workspaces
        .iter()
        .map(|ws| {
            mails
                .iter()
                .filter(|m| m.data.contains(&format!("Webhook errors in {ws}:")))
                .count()
        })
        .collect()
}

fn aggregator(kafka: &Kafka) -> ChildDispatcher {
    child("aggregate", kafka)
}

async fn metric_sum(procs: &[&ChildDispatcher], series: &str) -> f64 {
    let mut sum = 0.0;
    for p in procs {
        sum += p.metric(series).await.unwrap_or(0.0);
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregators_rebalanced_and_killed_while_smtp_refuses_and_flaps_email_each_workspace_once()
{
    let smtp = SmtpServer::start("127.0.0.1:0".parse().unwrap()).await;
    smtp.set_refusing(true);
    let mut kafka = Kafka::start(1);
    aggregator_config(&mut kafka, &smtp);
    let workspaces: Vec<String> = (0..8).map(|i| format!("agg-ws-{i}")).collect();
    over_threshold(&kafka, &workspaces).await;

    // One aggregator decides all eight alerts while SMTP refuses them.
    let a = aggregator(&kafka);
    wait_for(
        "A owes all eight emails and SMTP refuses them",
        MINUTES_3,
        || async {
            a.metric("hookrelay_aggregate_alerts_sending").await == Some(8.0)
                && a.metric("hookrelay_aggregate_alert_send_errors_total")
                    .await
                    >= Some(8.0)
        },
    )
    .await;
    // A second one joins: the failure topic's partitions are shared, and so are the owed emails.
    let b = aggregator(&kafka);
    wait_for("B took over some workspaces", MINUTES_3, || async {
        b.readyz().await.is_some_and(|(s, _)| s == 200)
            && b.metric("hookrelay_aggregate_alerts_sending").await >= Some(1.0)
            && a.metric("hookrelay_aggregate_alerts_sending").await <= Some(7.0)
    })
    .await;
    // SMTP flaps for a while, then recovers.
    for i in 0..10 {
        smtp.set_refusing(i % 2 == 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    smtp.set_refusing(false);
    wait_for(
        "every owed email is sent and nothing is owed",
        MINUTES_3,
        || async {
            metric_sum(&[&a, &b], "hookrelay_aggregate_alerts_sending").await == 0.0
                && smtp.received().len() >= 8
        },
    )
    .await;
    let first = emails_per_workspace(&smtp, &workspaces);
    assert_eq!(
        first,
        vec![1; 8],
        "one email per workspace after a rebalance and a flapping SMTP"
    );

    // Again with a kill: eight new workspaces owed by A, which is SIGKILLed while SMTP refuses.
    drop(b);
    smtp.set_refusing(true);
    let more: Vec<String> = (0..8).map(|i| format!("agg-kill-{i}")).collect();
    over_threshold(&kafka, &more).await;
    let mut a = a;
    wait_for("A owes the eight new emails", MINUTES_3, || async {
        a.metric("hookrelay_aggregate_alerts_sending").await == Some(8.0)
    })
    .await;
    a.kill();
    let c = aggregator(&kafka);
    wait_for("C rebuilt and owes all eight", MINUTES_3, || async {
        c.metric("hookrelay_aggregate_alerts_sending").await == Some(8.0)
    })
    .await;
    smtp.set_refusing(false);
    wait_for("C sends them", MINUTES_3, || async {
        c.metric("hookrelay_aggregate_alerts_sending").await == Some(0.0)
    })
    .await;
    let second = emails_per_workspace(&smtp, &more);
    assert_eq!(
        second,
        vec![1; 8],
        "one email per workspace after a SIGKILL"
    );
    assert_eq!(
        emails_per_workspace(&smtp, &workspaces),
        vec![1; 8],
        "no repeat of the first eight"
    );
    let t = Tally {
        produced: 16,
        accounted: 16,
        lost: 0,
        duplicate_deliveries: 0,
    };
    report(
        "aggregators rebalanced and killed while SMTP is down",
        "8 workspaces owed while SMTP answers 451, a second aggregator joins, SMTP flaps 3 s then recovers; \
         8 more owed, the owner SIGKILLed, a new one takes over (rows count workspaces, not sends)",
        &t,
        &format!("{}", first.iter().chain(&second).map(|n| n - 1).sum::<usize>()),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_whose_alert_record_is_refused_stays_up_and_alerts_once_kafka_takes_it() {
    let smtp = SmtpServer::start("127.0.0.1:0".parse().unwrap()).await;
    let mut kafka = Kafka::start(1);
    aggregator_config(&mut kafka, &smtp);
    let ws = vec!["agg-refused".to_string()];
    over_threshold(&kafka, &ws).await;
    // The aggregator's first three Produce requests (its `pending` decision) are refused.
    kafka.broker.mock().request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 3],
    );
    let mut a = aggregator(&kafka);
    wait_for(
        "the alert goes out once the decision is recorded",
        MINUTES_3,
        || async {
            smtp.received().len() == 1
                && a.metric("hookrelay_aggregate_alerts_sending").await == Some(0.0)
        },
    )
    .await;
    assert!(
        a.child.try_wait().unwrap().is_none(),
        "the aggregator is still running"
    );
    assert_eq!(emails_per_workspace(&smtp, &ws), vec![1]);
    a.kill();
    report(
        "alert decision writes refused",
        "the aggregator's first 3 Produce requests answered MESSAGE_TOO_LARGE: it stays up, decides again, emails once",
        &Tally {
            produced: 1,
            accounted: 1,
            lost: 0,
            duplicate_deliveries: 0,
        },
        "0",
    );
}
