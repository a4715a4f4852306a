//! What the dispatcher does with each kind of response and each kind of bad input, end to end against the
//! embedded broker and real HTTP servers on 127.0.0.1.

use std::time::Duration;

use crate::support::{
    full_send, produce_one, produce_sends, receiver, rig, slow_receiver, stop, wait_for,
    Dispatcher, Kafka,
};
use apache_avro::Schema;
use hookrelay::events::FailureEvent;
use hookrelay::tools::harness::OutputReader;

const BRAZE_FAILURE: &str =
    include_str!("../../schemas/reference/users.messages.webhook.Failure.avsc");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_2xx_without_a_failure_event_and_commits_its_offset() {
    let (kafka, rx, dispatcher, reader, producer) = rig(Kafka::start(1)).await;
    produce_one(&producer, "ok-1", &rx.url("/hook?status=200")).await;
    produce_one(&producer, "ok-2", &rx.url("/hook?status=204")).await;

    wait_for(
        "both offsets are committed",
        Duration::from_secs(20),
        || async { kafka.committed(1).await.get(&0) == Some(&2) },
    )
    .await;
    assert_eq!(dispatcher.delivered(), 2);
    let requests = rx.requests();
    assert_eq!(requests.len(), 2);
    let ok_1 = rx.requests_for("ok-1");
    let first = ok_1.first().expect("ok-1 arrived");
    assert_eq!(first.method, "POST");
    assert_eq!(first.headers["x-test"], "ok-1");
    assert_eq!(&first.body[..], br#"{"id":"ok-1"}"#);
    dispatcher
        .stop()
        .await
        .expect("the dispatcher stops cleanly");
    assert!(
        reader.snapshot().failures.is_empty(),
        "a 2xx must not produce a failure event"
    );
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failing_status_gives_one_event_with_every_identifier_copied() {
    let (_kafka, rx, dispatcher, reader, producer) = rig(Kafka::start(3).without_retries()).await;
    let codes = [
        302, 400, 401, 403, 404, 405, 408, 409, 429, 500, 502, 503, 504, 529,
    ];
    for (i, code) in codes.iter().enumerate() {
        let s = full_send(
            &format!("s-{code}"),
            &format!("ws-{}", i % 4),
            &rx.url(&format!("/p/{code}?status={code}")),
        );
        if i % 2 == 0 {
            producer.json(&s).await.unwrap();
        } else {
            producer.avro(&s).await.unwrap();
        }
    }
    let seen = reader
        .wait_until(Duration::from_secs(30), |o| o.failures.len() >= codes.len())
        .await;
    assert_eq!(
        seen.failures.len(),
        codes.len(),
        "one event per failing send"
    );
    for code in codes {
        let id = format!("s-{code}");
        let events: Vec<&FailureEvent> = seen
            .failures
            .iter()
            .filter(|e| e.send_id.as_deref() == Some(&format!("send-{id}")[..]))
            .collect();
        assert_eq!(events.len(), 1, "exactly one event for {code}");
        let e = events[0];
        let sent = full_send(&id, "", "");
        assert_eq!(e.http_status_code, Some(code));
        assert_eq!(
            e.webhook_failure_source.as_deref(),
            Some("External Endpoint")
        );
        assert_eq!(e.is_terminal, Some(true));
        assert_eq!(e.retry_count, Some(1));
        assert_eq!(
            e.retriable,
            Some(code == 408 || code == 429 || code >= 500),
            "{code}"
        );
        assert!(e.app_group_id.as_deref().unwrap().starts_with("ws-"));
        assert_eq!(
            e.workspace_name,
            Some(format!(
                "Workspace <{}> & co",
                e.app_group_id.as_deref().unwrap()
            ))
        );
        assert_eq!(e.user_id, sent.user_id.clone().unwrap());
        assert_eq!(e.external_user_id, sent.external_user_id);
        assert_eq!(e.dispatch_id, sent.dispatch_id);
        assert_eq!(e.campaign_id, sent.campaign_id);
        assert_eq!(e.campaign_name, sent.campaign_name);
        assert_eq!(e.message_variation_id, sent.message_variation_id);
        assert_eq!(e.message_variation_name, sent.message_variation_name);
        assert_eq!(e.canvas_id, sent.canvas_id);
        assert_eq!(e.canvas_name, sent.canvas_name);
        assert_eq!(e.canvas_variation_id, sent.canvas_variation_id);
        assert_eq!(e.canvas_variation_name, sent.canvas_variation_name);
        assert_eq!(e.canvas_step_id, sent.canvas_step_id);
        assert_eq!(e.canvas_step_name, sent.canvas_step_name);
        assert_eq!(
            e.canvas_step_message_variation_id,
            sent.canvas_step_message_variation_id
        );
        assert_eq!(
            e.endpoint_url,
            Some(rx.url(&format!("/p/{code}?status={code}")))
        );
        assert_eq!(e.host.as_deref(), Some("127.0.0.1"));
        assert_eq!(e.url_path, Some(format!("/p/{code}")));
        assert_eq!(e.request_method.as_deref(), Some("POST"));
        assert_eq!(e.send_created_at, Some(1_700_000_000_000));
        assert!(
            e.raw_response
                .as_deref()
                .unwrap()
                .contains(&code.to_string()),
            "raw_response keeps the body"
        );
        assert!(!e.error_reason.as_deref().unwrap().is_empty());
    }
    let by_code = |c: i32| {
        seen.failures
            .iter()
            .find(|e| e.http_status_code == Some(c))
            .unwrap()
    };
    assert_eq!(
        by_code(503).error_reason.as_deref(),
        Some("Service Unavailable")
    );
    assert_eq!(
        by_code(529).error_reason.as_deref(),
        Some("Site Is Overloaded")
    );
    assert_eq!(rx.count(), codes.len() as u64, "redirects are not followed");
    stop(dispatcher, reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_and_timeouts_are_599_with_their_source() {
    let mut kafka = Kafka::start(1).without_retries();
    kafka.config.http.request_timeout = Duration::from_millis(500);
    let rx = receiver().await;
    let closed = crate::support::free_port();
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    produce_one(&producer, "refused", &format!("http://{closed}/hook")).await;
    produce_one(&producer, "slow", &rx.url("/hook?delay=5s")).await;
    produce_one(&producer, "hang", &rx.url("/hook?hang=1")).await;

    let seen = reader
        .wait_until(Duration::from_secs(20), |o| o.failures.len() >= 3)
        .await;
    let source = |id: &str| {
        let e = seen
            .failures
            .iter()
            .find(|e| e.dispatch_id == Some(format!("dispatch-{id}")))
            .unwrap();
        assert_eq!(e.http_status_code, Some(599), "{id}");
        assert_eq!(e.retriable, Some(true));
        assert!(e.raw_response.is_none());
        e.webhook_failure_source.clone().unwrap()
    };
    assert_eq!(source("refused"), "Host Unreachable");
    assert_eq!(source("slow"), "Request Timeout");
    assert_eq!(source("hang"), "Request Timeout");
    let refused = seen
        .failures
        .iter()
        .find(|e| e.dispatch_id.as_deref() == Some("dispatch-refused"))
        .unwrap();
    assert!(
        refused
            .error_reason
            .as_deref()
            .unwrap()
            .to_lowercase()
            .contains("refused"),
        "{refused:?}"
    );
    stop(dispatcher, reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input_is_dead_lettered_with_its_reason_and_later_records_still_flow() {
    let mut kafka = Kafka::start(1);
    kafka.config.http.max_request_body_bytes = 1_000;
    let rx = receiver().await;
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let producer = kafka.producer();
    let url = rx.url("/hook");
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("undecodable", b"\x01\x02 definitely not json".to_vec()),
        ("undecodable", b"{\"id\": \"truncated".to_vec()),
        ("missing_field", br#"{"workspace_id":"w","webhook":{"url":"http://x","request_method":"POST"}}"#.to_vec()),
        ("missing_field", br#"{"id":"a","webhook":{"url":"http://x","request_method":"POST"}}"#.to_vec()),
        ("missing_field", br#"{"id":"a","workspace_id":"w","webhook":{"request_method":"POST"}}"#.to_vec()),
        ("invalid_method", br#"{"id":"a","workspace_id":"w","webhook":{"url":"http://x","request_method":"BREW"}}"#.to_vec()),
        ("invalid_url", br#"{"id":"a","workspace_id":"w","webhook":{"url":"http//nope","request_method":"POST"}}"#.to_vec()),
        ("undecodable", vec![0, 0, 0, 0, 1, 0xff, 0xff, 0xff]),
        ("invalid_header", br#"{"id":"a","workspace_id":"w","webhook":{"url":"http://x","request_method":"POST","request_headers":{"Host":"admin.internal"}}}"#.to_vec()),
        ("invalid_header", br#"{"id":"a","workspace_id":"w","webhook":{"url":"http://x","request_method":"POST","request_headers":{"X-Note":"a\r\nX-Injected: 1"}}}"#.to_vec()),
        ("too_large", format!(r#"{{"id":"a","workspace_id":"w","webhook":{{"url":"http://x","request_method":"POST","body":"{}"}}}}"#, "x".repeat(2_000)).into_bytes()),
    ];
    for (_, payload) in &bad {
        producer.raw(b"key-1", payload).await.unwrap();
    }
    produce_one(&producer, "after-the-bad-ones", &url).await;

    let seen = reader
        .wait_until(Duration::from_secs(20), |o| {
            o.dead_letters.len() >= bad.len()
        })
        .await;
    wait_for(
        "the good send after the bad ones is delivered",
        Duration::from_secs(20),
        || async { rx.count() == 1 },
    )
    .await;
    assert_eq!(seen.dead_letters.len(), bad.len());
    for (i, (kind, payload)) in bad.iter().enumerate() {
        // Records run concurrently, so dead letters may be written in any order: match on the source offset.
        let dl = seen
            .dead_letters
            .iter()
            .find(|d| d.headers["hookrelay-original-offset"] == i.to_string())
            .unwrap_or_else(|| panic!("no dead letter for offset {i}"));
        assert_eq!(&dl.payload, payload, "dead letters keep the original bytes");
        assert_eq!(
            dl.headers["hookrelay-error-kind"], *kind,
            "{:?}",
            dl.headers
        );
        assert!(
            dl.headers["hookrelay-error"].len() > kind.len(),
            "the reason explains: {:?}",
            dl.headers
        );
        assert_eq!(
            dl.headers["hookrelay-original-topic"],
            kafka.config.topics.sends
        );
        assert_eq!(dl.headers["hookrelay-original-partition"], "0");
    }
    wait_for(
        "every offset, bad ones included, is committed",
        Duration::from_secs(20),
        || async { kafka.committed(1).await.get(&0) == Some(&(bad.len() as i64 + 1)) },
    )
    .await;
    stop(dispatcher, reader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_events_decode_with_brazes_schema_as_the_reader_schema() {
    let kafka = Kafka::start(1).without_retries();
    let rx = receiver().await;
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let consumer =
        hookrelay::kafka::reader::assign_all(&kafka.config.kafka, &kafka.config.topics.failures)
            .await
            .unwrap();
    let producer = kafka.producer();
    producer
        .json(&full_send("braze", "ws-braze", &rx.url("/x?status=500")))
        .await
        .unwrap();

    use rdkafka::message::{Headers, Message};
    let msg = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .expect("an event")
        .unwrap();
    assert_eq!(msg.key(), Some(&b"ws-braze"[..]), "keyed by workspace");
    let schema_header = msg
        .headers()
        .unwrap()
        .iter()
        .find(|h| h.key == "hookrelay-schema")
        .unwrap();
    assert_eq!(
        schema_header.value,
        Some(&b"dataexport.S3.inner.users.messages.webhook.Failure"[..])
    );
    let payload = msg.payload().unwrap();
    // Default framing is Avro single-object: C3 01, 8-byte fingerprint, then the body.
    assert_eq!(&payload[..2], &[0xC3, 0x01]);
    let mut body = &payload[10..];
    let writer = Schema::parse_str(hookrelay::events::FAILURE_SCHEMA_JSON).unwrap();
    let braze = Schema::parse_str(BRAZE_FAILURE).unwrap();
    let value = apache_avro::from_avro_datum(&writer, &mut body, Some(&braze))
        .expect("Braze's reader schema resolves");
    let apache_avro::types::Value::Record(fields) = value else {
        panic!("a record")
    };
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    let braze_json: serde_json::Value = serde_json::from_str(BRAZE_FAILURE).unwrap();
    let expected: Vec<&str> = braze_json["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, expected, "the reader sees exactly Braze's fields");
    let get = |n: &str| {
        fields
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    use apache_avro::types::Value;
    assert_eq!(
        get("http_status_code"),
        Value::Union(1, Box::new(Value::Int(500)))
    );
    assert_eq!(
        get("app_group_id"),
        Value::Union(1, Box::new(Value::String("ws-braze".into())))
    );
    assert_eq!(get("user_id"), Value::String("user-braze".into()));
    assert_eq!(
        get("is_terminal"),
        Value::Union(1, Box::new(Value::Boolean(true)))
    );
    dispatcher
        .stop()
        .await
        .expect("the dispatcher stops cleanly");
}

#[test]
fn our_failure_schema_is_a_compatible_superset_of_brazes() {
    let ours: serde_json::Value =
        serde_json::from_str(hookrelay::events::FAILURE_SCHEMA_JSON).unwrap();
    let braze: serde_json::Value = serde_json::from_str(BRAZE_FAILURE).unwrap();
    assert_eq!(ours["name"], braze["name"]);
    assert_eq!(ours["namespace"], braze["namespace"]);
    let ours_fields = ours["fields"].as_array().unwrap();
    for bf in braze["fields"].as_array().unwrap() {
        let of = ours_fields
            .iter()
            .find(|f| f["name"] == bf["name"])
            .unwrap_or_else(|| panic!("missing {}", bf["name"]));
        assert_eq!(
            of["type"], bf["type"],
            "field {} keeps Braze's type",
            bf["name"]
        );
    }
    for of in ours_fields {
        if !braze["fields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|bf| bf["name"] == of["name"])
        {
            assert_eq!(of["type"][0], "null", "addition {} is optional", of["name"]);
            assert!(
                of["default"].is_null() && of.get("default").is_some(),
                "addition {} defaults to null",
                of["name"]
            );
        }
    }
    let w = Schema::parse_str(hookrelay::events::FAILURE_SCHEMA_JSON).unwrap();
    let r = Schema::parse_str(BRAZE_FAILURE).unwrap();
    apache_avro::schema_compatibility::SchemaCompatibility::can_read(&w, &r)
        .expect("Braze can read ours");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_many_sends_of_one_partition_at_once() {
    let kafka = Kafka::start(1);
    let rx = slow_receiver(Duration::from_millis(300)).await;
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let producer = kafka.producer();
    produce_sends(&producer, "c", 20, &rx.url("/hook")).await;
    wait_for(
        "all twenty are delivered",
        Duration::from_secs(30),
        || async { dispatcher.delivered() == 20 },
    )
    .await;
    let max = rx.stats().max_concurrent;
    assert!(
        max >= 5,
        "one partition's sends ran concurrently (at most {max} at once)"
    );
    wait_for(
        "the offset reaches the end",
        Duration::from_secs(10),
        || async { kafka.committed(1).await.get(&0) == Some(&20) },
    )
    .await;
    dispatcher
        .stop()
        .await
        .expect("the dispatcher stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_with_too_much_unfinished_work_is_paused_and_resumed() {
    let mut kafka = Kafka::start(1);
    kafka.config.dispatch.max_pending_per_partition = 4;
    paused_and_resumed(kafka, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_holding_too_many_bytes_of_unfinished_work_is_paused_and_resumed() {
    let mut kafka = Kafka::start(1);
    // A generated send is a few hundred bytes as JSON: 2,000 bytes are a handful of records.
    kafka.config.dispatch.max_pending_bytes_per_partition = 2_000;
    paused_and_resumed(kafka, 8).await;
}

/// 40 sends to a receiver taking 200 ms each: the partition pauses, everything is delivered, it resumes, and
/// no more than `at_most` requests were ever in flight together.
async fn paused_and_resumed(kafka: Kafka, at_most: u64) {
    let rx = slow_receiver(Duration::from_millis(200)).await;
    let producer = kafka.producer();
    produce_sends(&producer, "b", 40, &rx.url("/hook")).await;
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let paused = dispatcher.metrics.paused_partitions.clone();
    wait_for("the partition is paused", Duration::from_secs(20), || {
        let paused = paused.clone();
        async move { paused.get() == 1 }
    })
    .await;
    wait_for(
        "everything is delivered after resuming",
        Duration::from_secs(30),
        || async { dispatcher.delivered() == 40 },
    )
    .await;
    wait_for(
        "the partition is resumed once drained",
        Duration::from_secs(10),
        || {
            let paused = paused.clone();
            async move { paused.get() == 0 }
        },
    )
    .await;
    let max = rx.stats().max_concurrent;
    assert!(
        max <= at_most,
        "never more than the pending limit in flight (saw {max})"
    );
    dispatcher
        .stop()
        .await
        .expect("the dispatcher stops cleanly");
}
