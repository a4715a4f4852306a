//! The SSRF guard, port policy, signatures and hard limits, end to end. Every destination here is on
//! loopback: the guard's job is to refuse it, and if it failed nothing would leave the machine.

use std::time::Duration;

use crate::support::{
    produce_one, raw_http_server, receiver, rig, stop, wait_for, Dispatcher, Kafka, RawBehaviour,
};
use hookrelay::security::signing::{parse_secret, sign};
use hookrelay::security::SecurityConfig;
use hookrelay::tools::harness::OutputReader;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_in_every_form_is_refused_by_default_without_a_request() {
    let kafka = Kafka::start_with(1, |c| {
        c.security = SecurityConfig {
            any_port: true,
            ..SecurityConfig::default()
        };
    });
    let rx = receiver().await;
    let port = rx.addr.port();
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    let urls = [
        format!("http://127.0.0.1:{port}/v4"),
        format!("http://[::1]:{port}/v6"),
        format!("http://[::ffff:127.0.0.1]:{port}/mapped"),
        format!("http://[::ffff:7f00:1]:{port}/mapped-hex"),
        format!("http://localhost:{port}/name"),
    ];
    for (i, url) in urls.iter().enumerate() {
        produce_one(&producer, &format!("b{i}"), url).await;
    }
    let seen = reader
        .wait_until(Duration::from_secs(20), |o| o.failures.len() >= urls.len())
        .await;
    assert_eq!(seen.failures.len(), urls.len());
    for e in &seen.failures {
        assert_eq!(
            e.webhook_failure_source.as_deref(),
            Some("Blocked Destination"),
            "{e:?}"
        );
        assert_eq!(
            (e.is_terminal, e.retriable, e.http_status_code),
            (Some(true), Some(false), Some(599))
        );
        assert!(
            e.error_reason
                .as_deref()
                .unwrap()
                .contains("not a public address")
                || e.error_reason.as_deref().unwrap().contains("non-public"),
            "{e:?}"
        );
    }
    assert_eq!(rx.count(), 0, "nothing reached the receiver");
    assert_eq!(
        dispatcher.metrics.blocked_destinations.get(),
        urls.len() as u64
    );
    stop(dispatcher, reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_lists_admit_exactly_the_listed_addresses_and_ports() {
    let rx = receiver().await;
    let port = rx.addr.port();
    let kafka = Kafka::start_with(1, |c| {
        c.security = SecurityConfig {
            allow_cidrs: vec!["127.0.0.1/32".parse().unwrap()],
            allowed_ports: vec![80, 443, port],
            ..SecurityConfig::default()
        };
    });
    let other = receiver().await;
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    produce_one(&producer, "listed", &rx.url("/ok")).await;
    produce_one(&producer, "other-port", &other.url("/ok")).await;
    produce_one(
        &producer,
        "other-address",
        &format!("http://127.0.0.2:{port}/ok"),
    )
    .await;
    wait_for(
        "the listed destination is delivered",
        Duration::from_secs(20),
        || async { dispatcher.delivered() == 1 },
    )
    .await;
    let seen = reader
        .wait_until(Duration::from_secs(20), |o| o.failures.len() >= 2)
        .await;
    let reasons: Vec<String> = seen
        .failures
        .iter()
        .map(|e| e.error_reason.clone().unwrap())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&format!("port {}", other.addr.port()))),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("127.0.0.2")),
        "{reasons:?}"
    );
    assert_eq!((rx.count(), other.count()), (1, 0));
    stop(dispatcher, reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_with_every_active_secret() {
    let secrets = [
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_bmV4dC1zZWNyZXQtZm9yLXJvdGF0aW9u",
    ];
    let kafka = Kafka::start_with(1, |c| {
        c.signing
            .secrets
            .insert("ws".into(), secrets.map(String::from).to_vec());
    });
    let rx = receiver().await;
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let producer = kafka.producer();
    produce_one(&producer, "signed-1", &rx.url("/hook")).await;
    wait_for("the webhook arrives", Duration::from_secs(20), || async {
        rx.count() == 1
    })
    .await;
    let r = &rx.requests()[0];
    let header = |n: &str| r.headers.get(n).unwrap().to_str().unwrap().to_string();
    assert_eq!(header("webhook-id"), "signed-1");
    let ts: i64 = header("webhook-timestamp").parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
    let expected: Vec<String> = secrets
        .iter()
        .map(|s| sign(&parse_secret(s).unwrap(), "signed-1", ts, &r.body))
        .collect();
    assert_eq!(header("webhook-signature"), expected.join(" "));
    dispatcher.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_response_body_is_read_only_up_to_the_cap() {
    let kafka = Kafka::start_with(1, |c| c.http.request_timeout = Duration::from_secs(60))
        .without_retries();
    let failing = raw_http_server(RawBehaviour::EndlessBody { status: 500 }).await;
    let fine = raw_http_server(RawBehaviour::EndlessBody { status: 200 }).await;
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    produce_one(&producer, "endless-500", &format!("http://{failing}/")).await;
    produce_one(&producer, "endless-200", &format!("http://{fine}/")).await;
    // Well before the 60 s timeout: the body is not waited for beyond the cap.
    let seen = reader
        .wait_until(Duration::from_secs(15), |o| !o.failures.is_empty())
        .await;
    let e = seen.failures.first().expect("a failure event for the 500");
    assert_eq!(e.http_status_code, Some(500));
    assert_eq!(
        e.raw_response.as_ref().unwrap().len(),
        1024,
        "raw_response is capped at 1 KiB"
    );
    wait_for(
        "the 200 with an endless body counts as delivered",
        Duration::from_secs(15),
        || async { dispatcher.delivered() == 1 },
    )
    .await;
    stop(dispatcher, reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_sent_slowly_hit_the_request_timeout() {
    let kafka =
        Kafka::start_with(1, |c| c.http.request_timeout = Duration::from_secs(2)).without_retries();
    let slow = raw_http_server(RawBehaviour::DribbledHeaders {
        every: Duration::from_millis(300),
    })
    .await;
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    produce_one(&producer, "dribble", &format!("http://{slow}/")).await;
    let seen = reader
        .wait_until(Duration::from_secs(20), |o| !o.failures.is_empty())
        .await;
    let e = seen.failures.first().expect("a failure event");
    assert_eq!(e.http_status_code, Some(599));
    assert_eq!(e.webhook_failure_source.as_deref(), Some("Request Timeout"));
    assert!(
        e.webhook_duration.unwrap() >= 2_000 && e.webhook_duration.unwrap() < 5_000,
        "{e:?}"
    );
    stop(dispatcher, reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_never_followed() {
    let (_kafka, rx, dispatcher, reader, producer) = rig(Kafka::start(1).without_retries()).await;
    let target = rx.url("/elsewhere");
    produce_one(
        &producer,
        "moved",
        &rx.url(&format!("/old?status=307&location={target}")),
    )
    .await;
    let seen = reader
        .wait_until(Duration::from_secs(20), |o| !o.failures.is_empty())
        .await;
    assert_eq!(seen.failures[0].http_status_code, Some(307));
    assert_eq!(
        rx.requests()
            .iter()
            .map(|r| r.path.clone())
            .collect::<Vec<_>>(),
        vec!["/old".to_string()]
    );
    stop(dispatcher, reader).await;
}
