//! OpenTelemetry traces from a `hookrelay dispatch` child process, received by an OTLP/HTTP (JSON) span
//! collector in the test: the incoming record's `traceparent` parents the attempt span, and the attempt's
//! context goes on to the webhook request and the failure event.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

use crate::support::{receiver, send, wait_for, ChildDispatcher, Kafka};
use hookrelay::config::OtlpProtocol;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP collector on loopback keeping every span it receives.
async fn collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let kept = spans.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let export: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                let found = export["resourceSpans"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|r| r["scopeSpans"].as_array().into_iter().flatten())
                    .flat_map(|s| s["spans"].as_array().into_iter().flatten())
                    .cloned();
                kept.lock().unwrap().extend(found);
                "{}"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, spans)
}

/// Produces send `id` to `url` with a `traceparent` header naming `TRACE_ID` and `PARENT_ID`.
async fn produce_traced(kafka: &Kafka, id: &str, url: &str) {
    let producer: FutureProducer = hookrelay::kafka::client::producer_config(&kafka.config.kafka)
        .create()
        .unwrap();
    let payload = serde_json::to_vec(&send(id, url)).unwrap();
    let traceparent = format!("00-{TRACE_ID}-{PARENT_ID}-01");
    producer
        .send(
            FutureRecord::to(&kafka.config.topics.sends)
                .key("ws")
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some(&traceparent),
                })),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

fn attribute<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_span_is_parented_by_the_record_s_traceparent_and_passes_its_context_on() {
    let (endpoint, spans) = collector().await;
    let mut kafka = Kafka::start(1).without_retries();
    kafka.config.telemetry.otlp_endpoint = endpoint;
    kafka.config.telemetry.otlp_protocol = OtlpProtocol::HttpJson;
    let rx = receiver().await;
    let failures =
        hookrelay::kafka::reader::assign_all(&kafka.config.kafka, &kafka.config.topics.failures)
            .await
            .unwrap();
    let _dispatcher = ChildDispatcher::spawn(&kafka.config);
    produce_traced(&kafka, "traced", &rx.url("/hook?status=503")).await;

    wait_for(
        "the attempt span is exported",
        Duration::from_secs(30),
        || async { !spans.lock().unwrap().is_empty() },
    )
    .await;
    let span = spans.lock().unwrap()[0].clone();
    assert_eq!(span["name"], "send");
    assert_eq!(span["traceId"], TRACE_ID, "the record's trace: {span}");
    assert_eq!(
        span["parentSpanId"], PARENT_ID,
        "parented by the record's span: {span}"
    );
    assert_eq!(attribute(&span, "workspace").unwrap()["stringValue"], "ws");
    assert_eq!(
        attribute(&span, "host").unwrap()["stringValue"],
        "127.0.0.1"
    );
    // OTLP/JSON writes 64-bit integers as strings.
    assert_eq!(
        attribute(&span, "status").unwrap()["intValue"],
        "503",
        "{span}"
    );
    assert_eq!(
        attribute(&span, "attempt").unwrap()["intValue"],
        "1",
        "{span}"
    );
    assert_eq!(
        attribute(&span, "outcome").unwrap()["stringValue"],
        "failed"
    );
    let span_id = span["spanId"].as_str().unwrap().to_string();
    let ours = format!("00-{TRACE_ID}-{span_id}-01");

    let request = rx
        .requests()
        .into_iter()
        .next()
        .expect("the webhook went out");
    assert_eq!(
        request
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
        Some(ours.as_str()),
        "the webhook request carries the attempt's context"
    );
    let event = tokio::time::timeout(Duration::from_secs(20), failures.recv())
        .await
        .expect("a failure event")
        .unwrap();
    let header = event
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == "traceparent")
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned());
    assert_eq!(
        header.as_deref(),
        Some(ours.as_str()),
        "so does the failure event"
    );
    assert_eq!(event.key(), Some(&b"ws"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_hops_between_tiers_stays_in_the_send_s_trace() {
    let (endpoint, spans) = collector().await;
    // A 3 s backoff waits in the 1 s tier and hops at least once before it is due.
    let mut kafka = Kafka::start_with(1, |c| {
        c.retry.initial_backoff = Duration::from_secs(3);
        c.retry.max_backoff = Duration::from_secs(3);
    });
    kafka.config.telemetry.otlp_endpoint = endpoint;
    kafka.config.telemetry.otlp_protocol = OtlpProtocol::HttpJson;
    let rx = receiver().await;
    let dispatcher = ChildDispatcher::spawn(&kafka.config);
    produce_traced(&kafka, "retried", &rx.url("/hook?seq=503,200")).await;
    wait_for(
        "both attempts' spans are exported",
        Duration::from_secs(30),
        || async { spans.lock().unwrap().len() >= 2 },
    )
    .await;
    let hops = dispatcher
        .metric("hookrelay_retry_hops_total")
        .await
        .unwrap_or_default();
    assert!(hops >= 1.0, "the retry hopped ({hops})");
    let spans = spans.lock().unwrap().clone();
    let first = spans
        .iter()
        .find(|s| attribute(s, "attempt").unwrap()["intValue"] == "1")
        .unwrap();
    let second = spans
        .iter()
        .find(|s| attribute(s, "attempt").unwrap()["intValue"] == "2")
        .unwrap();
    assert_eq!(first["traceId"], TRACE_ID);
    assert_eq!(
        second["traceId"], TRACE_ID,
        "the second attempt is in the same trace: {second}"
    );
    assert_eq!(
        second["parentSpanId"], first["spanId"],
        "and follows the first"
    );
    assert_eq!(
        attribute(second, "outcome").unwrap()["stringValue"],
        "delivered"
    );
}
