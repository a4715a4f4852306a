//! Durable retries, Retry-After, unhealthy-host pauses and per-host isolation, end to end against the
//! embedded broker and scripted receivers. Durations are shortened through config; nothing sleeps and hopes.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use crate::support::{
    free_port, produce_one, produce_sends, receiver, receiver_on, rig, stop, wait_for,
    ChildDispatcher, Dispatcher, Kafka,
};
use hookrelay::events::FailureEvent;
use hookrelay::tools::harness::OutputReader;
use hookrelay::tools::receiver::Receiver;

fn events_for<'a>(events: &'a [FailureEvent], id: &str) -> Vec<&'a FailureEvent> {
    let mut v: Vec<&FailureEvent> = events
        .iter()
        .filter(|e| e.dispatch_id.as_deref() == Some(&format!("dispatch-{id}")[..]))
        .collect();
    v.sort_by_key(|e| e.attempt);
    v
}

fn arrivals(rx: &Receiver, id: &str) -> Vec<i64> {
    rx.requests_for(id).iter().map(|r| r.at_unix_ms).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_503_with_backoff_until_delivered_on_the_third_attempt() {
    let (_kafka, rx, dispatcher, reader, producer) = rig(Kafka::start(1)).await;
    produce_one(&producer, "flaky", &rx.url("/hook?seq=503,503,200")).await;

    wait_for("the send is delivered", Duration::from_secs(30), || async {
        dispatcher.delivered() == 1
    })
    .await;
    let seen = reader
        .wait_until(Duration::from_secs(10), |o| o.failures.len() >= 2)
        .await;
    let events = events_for(&seen.failures, "flaky");
    assert_eq!(events.len(), 2, "exactly two failure events");
    for (i, e) in events.iter().enumerate() {
        let n = i as i32 + 1;
        assert_eq!(e.http_status_code, Some(503));
        assert_eq!(e.is_terminal, Some(false), "attempt {n} was retried");
        assert_eq!(e.retry_count, Some(n));
        assert_eq!(e.attempt, Some(n));
        assert!(
            e.next_attempt_at.unwrap() > e.time_ms.unwrap(),
            "the next attempt is in the future"
        );
    }
    let times = arrivals(&rx, "flaky");
    assert_eq!(times.len(), 3);
    assert!(
        times[1] - times[0] >= 200 && times[2] - times[1] >= 400,
        "exponential backoff: {times:?}"
    );
    assert_eq!(dispatcher.metrics.delivered_after_retry.get(), 1);
    stop(dispatcher, reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_is_reported_once_as_terminal_and_never_retried() {
    let (kafka, rx, dispatcher, reader, producer) = rig(Kafka::start(1)).await;
    produce_one(&producer, "gone", &rx.url("/hook?status=404")).await;

    let seen = reader
        .wait_until(Duration::from_secs(20), |o| !o.failures.is_empty())
        .await;
    let events = events_for(&seen.failures, "gone");
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].is_terminal,
            events[0].retry_count,
            events[0].retriable
        ),
        (Some(true), Some(1), Some(false))
    );
    wait_for(
        "its offset is committed",
        Duration::from_secs(10),
        || async { kafka.committed(1).await.get(&0) == Some(&1) },
    )
    .await;
    // Nothing was written to a retry tier, so no second request can ever come.
    let scheduled: u64 = kafka
        .config
        .topics
        .retry_tier_topics()
        .iter()
        .map(|(t, _)| {
            dispatcher
                .metrics
                .retries_scheduled
                .with_label_values(&[t])
                .get()
        })
        .sum();
    assert_eq!(scheduled, 0);
    assert_eq!(rx.count(), 1);
    stop(dispatcher, reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_in_seconds_or_as_an_http_date_sets_the_earliest_next_attempt() {
    let kafka = Kafka::start(1);
    let rx = receiver().await;
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let producer = kafka.producer();
    let date_target = SystemTime::now() + Duration::from_secs(4);
    let date = httpdate::fmt_http_date(date_target);
    let date_ms = httpdate::parse_http_date(&date)
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    produce_one(
        &producer,
        "ra-secs",
        &rx.url("/hook?seq=429,200&retry_after=2"),
    )
    .await;
    let query = format!(
        "/hook?seq=503,200&retry_after={}",
        date.replace(' ', "%20").replace(',', "%2C")
    );
    produce_one(&producer, "ra-date", &rx.url(&query)).await;

    wait_for(
        "both are delivered on their second attempt",
        Duration::from_secs(30),
        || async { dispatcher.delivered() == 2 },
    )
    .await;
    let secs = arrivals(&rx, "ra-secs");
    assert_eq!(secs.len(), 2);
    assert!(
        secs[1] - secs[0] >= 2_000,
        "Retry-After: 2 honoured: {secs:?}"
    );
    let dated = arrivals(&rx, "ra-date");
    assert_eq!(dated.len(), 2);
    assert!(
        dated[1] >= date_ms,
        "not before the HTTP date {date}: {dated:?}"
    );
    dispatcher.stop().await.unwrap();
}

/// One 3 s tier, a send whose retry waits there the whole 3 s (`later`, Retry-After 8), and then `n` sends
/// to another host of the same workspace (so in the same tier partition, behind it) that fail once with a
/// 503, so that their retries, due 200 ms on, are written behind it.
async fn retries_behind_a_long_one(
    kafka: &Kafka,
    dispatcher: &ChildDispatcher,
    n: usize,
) -> (Receiver, Receiver) {
    let slow_host = receiver().await;
    let other_host = receiver_on("127.0.0.2").await;
    let producer = kafka.producer();
    produce_one(
        &producer,
        "later",
        &slow_host.url("/hook?seq=429,200&retry_after=8"),
    )
    .await;
    wait_for("its retry is written", Duration::from_secs(20), || async {
        dispatcher
            .metric("hookrelay_retries_scheduled_total{tier=\"webhook-retries-3s\"}")
            .await
            >= Some(1.0)
    })
    .await;
    for i in 0..n {
        produce_one(
            &producer,
            &format!("soon{i}"),
            &other_host.url("/hook?seq=503,200"),
        )
        .await;
    }
    (slow_host, other_host)
}

fn one_long_tier(config: &mut hookrelay::config::Config) {
    config.topics.retry_tiers = vec!["3s".into()];
}

/// A tier partition hands each retry on when it is ready, not after the records before it: a retry due in
/// 200 ms, written to the 3 s tier just behind one that waits the whole 3 s, is not held up by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_due_soon_is_not_held_behind_one_waiting_the_tier_s_whole_delay() {
    let kafka = Kafka::start_with(1, one_long_tier);
    let dispatcher = ChildDispatcher::spawn(&kafka.config);
    let (slow_host, other_host) = retries_behind_a_long_one(&kafka, &dispatcher, 1).await;
    wait_for(
        "the retry due soon is delivered",
        Duration::from_secs(20),
        || async { arrivals(&other_host, "soon0").len() == 2 },
    )
    .await;
    let soon = arrivals(&other_host, "soon0");
    assert!(
        soon[1] - soon[0] < 1_500,
        "the retry due 200 ms on came {} ms on: held behind the record before it",
        soon[1] - soon[0]
    );
    assert_eq!(
        arrivals(&slow_host, "later").len(),
        1,
        "and that one still waits"
    );
}

/// Retries that finished behind a parked one are not redone after a clean stop: the commit names them, the
/// next dispatcher skips them, and the parked one is still delivered, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_redoes_no_retry_that_finished_behind_a_parked_one() {
    finished_retries_are_not_redone_after(|d| assert!(d.terminate().success(), "a clean stop"))
        .await;
}

/// The same after SIGKILL: every periodic commit names what finished beyond its position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_dispatcher_s_successor_redoes_no_retry_that_finished_behind_a_parked_one() {
    finished_retries_are_not_redone_after(ChildDispatcher::kill).await;
}

async fn finished_retries_are_not_redone_after(stop: impl FnOnce(&mut ChildDispatcher)) {
    let kafka = Kafka::start_with(1, one_long_tier);
    let mut first = ChildDispatcher::spawn(&kafka.config);
    let (slow_host, other_host) = retries_behind_a_long_one(&kafka, &first, 5).await;
    wait_for(
        "the five retries are delivered",
        Duration::from_secs(20),
        || async {
            first
                .metric("hookrelay_sends_total{result=\"delivered\"}")
                .await
                >= Some(5.0)
        },
    )
    .await;
    let commits = first
        .metric("hookrelay_offset_commits_total{result=\"ok\"}")
        .await
        .unwrap_or_default();
    wait_for("two more commits", Duration::from_secs(10), || async {
        first
            .metric("hookrelay_offset_commits_total{result=\"ok\"}")
            .await
            >= Some(commits + 2.0)
    })
    .await;
    assert_eq!(arrivals(&slow_host, "later").len(), 1, "still parked");
    stop(&mut first);
    let second = ChildDispatcher::spawn_logged(&kafka.config);
    wait_for(
        "the parked retry is delivered by the next dispatcher",
        Duration::from_secs(30),
        || async { arrivals(&slow_host, "later").len() >= 2 },
    )
    .await;
    assert_eq!(arrivals(&slow_host, "later").len(), 2, "once");
    for i in 0..5 {
        assert_eq!(
            arrivals(&other_host, &format!("soon{i}")).len(),
            2,
            "soon{i}: a 503 and its retry, not redone"
        );
    }
    assert!(
        second.log().contains("finished_ahead=5"),
        "the next dispatcher read what its predecessor finished: {}",
        second.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_retries_end_terminal_and_unreachable_endpoints_get_the_longer_budget() {
    let kafka = Kafka::start_with(2, |c| {
        c.retry.max_retries = 2;
        c.retry.unreachable_max_retries = 4;
        c.http.connect_timeout = Duration::from_millis(500);
    });
    let rx = receiver().await;
    let closed = free_port();
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    produce_one(&producer, "down", &rx.url("/hook?status=503")).await;
    produce_one(&producer, "nowhere", &format!("http://{closed}/hook")).await;

    let seen = reader
        .wait_until(Duration::from_secs(60), |o| {
            o.failures
                .iter()
                .filter(|e| e.is_terminal == Some(true))
                .count()
                == 2
        })
        .await;
    let down = events_for(&seen.failures, "down");
    assert_eq!(down.len(), 3, "first attempt + 2 retries");
    let nowhere = events_for(&seen.failures, "nowhere");
    assert_eq!(
        nowhere.len(),
        5,
        "first attempt + 4 retries for an unreachable endpoint"
    );
    for (events, last) in [(&down, 3), (&nowhere, 5)] {
        let (final_event, earlier) = events.split_last().unwrap();
        assert_eq!(final_event.is_terminal, Some(true));
        assert_eq!(final_event.retry_count, Some(last));
        assert_eq!(final_event.next_attempt_at, None);
        assert!(earlier.iter().all(|e| e.is_terminal == Some(false)));
    }
    assert!(nowhere.iter().all(|e| e.http_status_code == Some(599)));
    stop(dispatcher, reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_retries_survive_a_killed_dispatcher() {
    let kafka = Kafka::start_with(2, |c| {
        c.retry.initial_backoff = Duration::from_secs(3);
        c.retry.max_backoff = Duration::from_secs(3);
    });
    let rx = receiver().await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    let ids: Vec<String> = (0..60).map(|i| format!("r{i:03}")).collect();
    for id in &ids {
        produce_one(&producer, id, &rx.url("/hook?seq=503,200")).await;
    }
    let mut first = ChildDispatcher::spawn(&kafka.config);
    wait_for(
        "every send has failed once and has a retry scheduled",
        Duration::from_secs(30),
        || async {
            let o = reader.snapshot();
            o.failures
                .iter()
                .filter(|e| e.is_terminal == Some(false))
                .map(|e| e.dispatch_id.clone())
                .collect::<HashSet<_>>()
                .len()
                == ids.len()
        },
    )
    .await;
    let delivered_before = rx.requests().iter().filter(|r| r.status == 200).count();
    first.kill();
    assert!(
        delivered_before < ids.len(),
        "killed with retries pending ({delivered_before} delivered)"
    );

    let _second = ChildDispatcher::spawn(&kafka.config);
    wait_for(
        "every pending retry happens after the restart",
        Duration::from_secs(60),
        || async {
            let delivered: HashSet<String> = rx
                .requests()
                .into_iter()
                .filter(|r| r.status == 200)
                .filter_map(|r| r.webhook_id)
                .collect();
            ids.iter().all(|id| delivered.contains(id))
        },
    )
    .await;
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drowning_host_is_paused_with_598s_and_resumes_after_the_pause() {
    let kafka = Kafka::start_with(1, |c| {
        c.host_health.threshold = 5;
        c.host_health.window = Duration::from_secs(1);
        c.host_health.pause = Duration::from_secs(2);
        c.retry.max_retries = 8;
        c.retry.unreachable_max_retries = 8;
    });
    let rx = receiver().await;
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    produce_sends(&producer, "d", 12, &rx.url("/hook?status=503")).await;
    let seen = reader
        .wait_until(Duration::from_secs(30), |o| {
            o.failures.iter().any(|e| e.http_status_code == Some(598))
        })
        .await;
    let first_598 = seen
        .failures
        .iter()
        .find(|e| e.http_status_code == Some(598))
        .expect("a simulated 598");
    assert_eq!(
        first_598.webhook_failure_source.as_deref(),
        Some("Unhealthy Host")
    );
    assert_eq!(first_598.is_terminal, Some(false), "598 is retried");
    let reason = first_598.error_reason.clone().unwrap();
    let until = chrono::DateTime::parse_from_rfc3339(reason.rsplit(' ').next().unwrap())
        .unwrap()
        .timestamp_millis();
    let paused_from = until - 2_000;
    wait_for(
        "traffic resumes after the pause",
        Duration::from_secs(30),
        || async { rx.requests().iter().any(|r| r.at_unix_ms >= until) },
    )
    .await;
    let during: Vec<i64> = rx
        .requests()
        .iter()
        .map(|r| r.at_unix_ms)
        .filter(|t| *t > paused_from + 100 && *t < until)
        .collect();
    assert!(during.is_empty(), "the receiver got requests while the host was paused: {during:?} (pause {paused_from}..{until})");
    assert!(
        dispatcher
            .metrics
            .host_pauses
            .with_label_values(&["paused"])
            .get()
            >= 1
    );
    stop(dispatcher, reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_queued_for_a_host_that_gets_paused_get_598_without_reaching_it() {
    let kafka = Kafka::start_with(1, |c| {
        c.host_health.threshold = 5;
        c.host_health.window = Duration::from_secs(60);
        c.host_health.pause = Duration::from_secs(60);
        c.dispatch.max_in_flight_per_host = 1;
    })
    .without_retries();
    let rx = receiver().await;
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    produce_sends(
        &kafka.producer(),
        "q",
        40,
        &rx.url("/slow?status=503&delay=50ms"),
    )
    .await;
    let seen = reader
        .wait_until(Duration::from_secs(30), |o| o.terminal_failures() == 40)
        .await;
    let paused = seen
        .failures
        .iter()
        .filter(|e| e.http_status_code == Some(598))
        .count();
    assert_eq!(
        rx.count(),
        6,
        "the host got the requests up to the one that paused it, and no queued one after"
    );
    assert_eq!(
        paused, 34,
        "every queued send was answered with a simulated 598"
    );
    stop(dispatcher, reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_host_does_not_hold_up_a_healthy_one() {
    let kafka = Kafka::start_with(1, |c| {
        c.dispatch.max_in_flight = 4;
        c.dispatch.max_in_flight_per_host = 2;
        c.dispatch.shutdown_grace = Duration::from_secs(1);
        c.http.request_timeout = Duration::from_secs(10);
    })
    .without_retries();
    let rx = receiver().await;
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    let hanging = format!("http://localhost:{}/hang?hang=1", rx.addr.port());
    produce_sends(&producer, "hang", 6, &hanging).await;
    produce_sends(&producer, "ok", 20, &rx.url("/ok")).await;
    wait_for(
        "all twenty healthy sends are delivered",
        Duration::from_secs(8),
        || async { dispatcher.delivered() == 20 },
    )
    .await;
    assert!(
        reader.snapshot().failures.is_empty(),
        "the hanging requests have not even timed out yet"
    );
    assert_eq!(
        dispatcher.metrics.in_flight.get(),
        2,
        "the hanging host holds only its own two slots"
    );
    stop(dispatcher, reader).await;
}
