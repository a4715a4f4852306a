//! Holding sends back, end to end with `hookrelay dispatch` as a child process: per-host rate limits and a
//! host's own `Retry-After`. A hold is not an attempt: it spends no retry budget and writes no failure event.

use std::time::Duration;

use crate::support::{
    full_send, produce_one, produce_sends, receiver_on, wait_for, ChildDispatcher, Kafka,
};
use hookrelay::tools::harness::{OutputReader, SendProducer};
use hookrelay::tools::receiver::{Received, Receiver};

/// Requests per second between the first and the last request, which must be within 10 % of `limit`.
fn assert_rate_near(requests: &[Received], limit: f64) {
    let first = requests.iter().map(|r| r.at).min().unwrap();
    let last = requests.iter().map(|r| r.at).max().unwrap();
    let rate = (requests.len() - 1) as f64 / last.duration_since(first).as_secs_f64();
    let mut times: Vec<_> = requests
        .iter()
        .map(|r| r.at.duration_since(first))
        .collect();
    times.sort();
    let gaps: Vec<String> = times
        .windows(2)
        .filter(|w| w[1] - w[0] > Duration::from_secs_f64(2.0 / limit))
        .map(|w| format!("{:.2}s..{:.2}s", w[0].as_secs_f64(), w[1].as_secs_f64()))
        .collect();
    assert!(
        (limit * 0.9..=limit * 1.1).contains(&rate),
        "requests per second at the limited host: {rate:.1}, the limit is {limit}; gaps over two intervals: {gaps:?}"
    );
}

/// A counter of the dispatcher's, which must have reached `at_least`.
async fn assert_counted(dispatcher: &ChildDispatcher, series: &str, at_least: f64) {
    let value = dispatcher.metric(series).await.unwrap_or_default();
    assert!(
        value >= at_least,
        "{series} is {value}, expected at least {at_least}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_host_gets_its_limit_under_a_backlog_without_holding_up_other_hosts() {
    let mut kafka = Kafka::start(2);
    kafka.config.rate_limits.insert("127.0.0.1".into(), 20.0);
    let limited = receiver_on("127.0.0.1").await;
    let free = receiver_on("127.0.0.2").await;
    let producer = kafka.producer();
    for i in 0..60 {
        produce_one(&producer, &format!("limited{i}"), &limited.url("/hook")).await;
        produce_one(&producer, &format!("free{i}"), &free.url("/hook")).await;
    }
    let dispatcher = ChildDispatcher::spawn(&kafka.config);
    wait_for(
        "every send to the unlimited host is delivered",
        Duration::from_secs(30),
        || async { free.count() == 60 },
    )
    .await;
    let limited_so_far = limited.count();
    assert!(
        limited_so_far < 50,
        "the unlimited host did not wait for the limited one ({limited_so_far} of 60 limited sends went first)"
    );
    wait_for(
        "every send to the limited host is delivered",
        Duration::from_secs(30),
        || async { limited.count() == 60 },
    )
    .await;
    assert_rate_near(&limited.requests(), 20.0);
    assert_counted(
        &dispatcher,
        "hookrelay_held_sends_total{reason=\"rate_limit\"}",
        50.0,
    )
    .await;
}

/// A dispatcher child, and a send whose host answers `code` with `Retry-After: secs` (then 200); once it has
/// answered, five more sends to the same host for the same workspace (`later0` … `later4`).
async fn backed_off(
    kafka: &Kafka,
    code: u16,
    secs: u32,
) -> (Receiver, OutputReader, SendProducer, ChildDispatcher) {
    let rx = receiver_on("127.0.0.1").await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    let dispatcher = ChildDispatcher::spawn(&kafka.config);
    let url = rx.url(&format!("/hook?seq={code},200&retry_after={secs}"));
    produce_one(&producer, "asks", &url).await;
    wait_for(
        "the host asks to back off",
        Duration::from_secs(30),
        || async { rx.count() == 1 },
    )
    .await;
    produce_sends(&producer, "later", 5, &rx.url("/hook")).await;
    (rx, reader, producer, dispatcher)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_retry_after_2_no_request_reaches_the_host_for_2_s_and_no_retry_budget_is_spent() {
    let kafka = Kafka::start(2);
    let (rx, reader, producer, dispatcher) = backed_off(&kafka, 429, 2).await;
    producer
        .json(&full_send("other-workspace", "other", &rx.url("/hook")))
        .await
        .unwrap();
    wait_for(
        "every send is delivered",
        Duration::from_secs(30),
        || async { rx.requests().iter().filter(|r| r.status == 200).count() == 7 },
    )
    .await;
    let requests = rx.requests();
    let asked = requests.iter().find(|r| r.status == 429).unwrap().at;
    for r in &requests {
        let after = r.at.duration_since(asked);
        let id = r.webhook_id.clone().unwrap_or_default();
        if id.contains("other-workspace") {
            assert!(
                after < Duration::from_secs(2),
                "another workspace is not held ({after:?})"
            );
        } else if r.status != 429 {
            assert!(
                after >= Duration::from_secs(2),
                "{id} reached the host {after:?} after Retry-After: 2"
            );
        }
    }
    let failures = reader.snapshot().failures;
    assert_eq!(
        failures.len(),
        1,
        "only the 429 wrote a failure event; the held sends were delivered on their first attempt"
    );
    assert_counted(
        &dispatcher,
        "hookrelay_held_sends_total{reason=\"retry_after\"}",
        5.0,
    )
    .await;
    let retried = dispatcher
        .metric("hookrelay_delivered_after_retry_total")
        .await
        .unwrap_or_default();
    assert!(
        (retried - 1.0).abs() < f64::EPSILON,
        "only the send that got the 429 was retried ({retried})"
    );
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_longer_than_max_hold_requeues_sends_without_an_attempt() {
    let mut kafka = Kafka::start(2);
    kafka.config.dispatch.max_hold = Duration::from_millis(500);
    let (rx, reader, _producer, dispatcher) = backed_off(&kafka, 503, 3).await;
    wait_for(
        "every send is delivered",
        Duration::from_secs(30),
        || async { rx.requests().iter().filter(|r| r.status == 200).count() == 6 },
    )
    .await;
    let requests = rx.requests();
    let asked = requests.iter().find(|r| r.status == 503).unwrap().at;
    assert!(
        requests
            .iter()
            .filter(|r| r.status == 200)
            .all(|r| r.at.duration_since(asked) >= Duration::from_secs(3)),
        "no request within the 3 s the host asked for"
    );
    assert_eq!(
        reader.snapshot().failures.len(),
        1,
        "the requeued sends made no attempt"
    );
    assert_counted(
        &dispatcher,
        "hookrelay_requeued_held_sends_total{reason=\"retry_after\"}",
        5.0,
    )
    .await;
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_longer_than_max_hold_keeps_the_rate_through_the_retry_tiers() {
    let mut kafka = Kafka::start(2);
    kafka.config.rate_limits.insert("127.0.0.1".into(), 20.0);
    kafka.config.dispatch.max_hold = Duration::from_secs(1);
    let rx = receiver_on("127.0.0.1").await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    produce_sends(&producer, "s", 100, &rx.url("/hook")).await;
    let dispatcher = ChildDispatcher::spawn(&kafka.config);
    wait_for(
        "every send is delivered",
        Duration::from_secs(60),
        || async { rx.count() == 100 },
    )
    .await;
    assert_rate_near(&rx.requests(), 20.0);
    // Most of the backlog was requeued, to come back at the host's rate.
    assert_counted(
        &dispatcher,
        "hookrelay_requeued_held_sends_total{reason=\"rate_limit\"}",
        50.0,
    )
    .await;
    assert!(
        reader.snapshot().failures.is_empty(),
        "a hold writes no failure event"
    );
    reader.stop();
}
