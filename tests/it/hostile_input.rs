//! Records no well-behaved producer writes, produced from outside to a `hookrelay dispatch` process: each is
//! dead-lettered with its reason (or delivered, when it is in fact a valid send), the process stays up and
//! the partition moves on — no poison pill.

use std::time::Duration;

use crate::support::{send, wait_for, ChildDispatcher, Kafka};
use hookrelay::tools::harness::OutputReader;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Produces one record with the given headers to `topic`.
async fn produce(kafka: &Kafka, topic: &str, payload: &[u8], headers: OwnedHeaders) {
    let producer: FutureProducer = hookrelay::kafka::client::producer_config(&kafka.config.kafka)
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(topic)
                .key("ws")
                .payload(payload)
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
}

/// A hostile record and what must become of it: dead-lettered with this `hookrelay-error-kind`.
struct Case {
    name: &'static str,
    payload: Vec<u8>,
    headers: OwnedHeaders,
    kind: &'static str,
}

fn case(name: &'static str, payload: Vec<u8>, kind: &'static str) -> Case {
    Case {
        name,
        payload,
        headers: OwnedHeaders::new(),
        kind,
    }
}

/// The 31-byte Avro send request that made apache-avro ask for 86 GB: a map of 2^35 request headers.
fn avro_map_bomb(frame: &[u8]) -> Vec<u8> {
    let mut b = frame.to_vec();
    b.extend([2, b'a', 2, b'w']);
    b.extend([0u8; 16]);
    b.extend([2, b'u', 2, b'P', 2]);
    b.extend([0x80, 0x80, 0x80, 0x80, 0x80, 0x02]);
    b
}

fn json(id: &str, url: &str) -> Vec<u8> {
    serde_json::to_vec(&send(id, url)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_records_are_dead_lettered_with_their_reason_and_the_partition_moves_on() {
    let mut kafka = Kafka::start(1).without_retries();
    kafka.config.dispatch.max_record_bytes = 64 * 1024;
    let rx = crate::support::receiver().await;
    let url = rx.url("/hook");
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let single_object = {
        let mut f = vec![0xC3, 0x01];
        f.extend(hookrelay::events::framing::fingerprint(
            hookrelay::events::send_request_schema(),
        ));
        f
    };
    let mut control_id = send("ctl", &url);
    control_id.id = "bad\u{1}id".into();
    let mut nul_workspace = send("nul-ws", &url);
    nul_workspace.workspace_id = "ws\u{0}".into();
    let mut long_url = send("long-url", &format!("{url}?q={}", "x".repeat(9000)));
    long_url.campaign_id = None;
    let mut long_field = send("long-field", &url);
    long_field.campaign_name = Some("n".repeat(5000));
    let cases = vec![
        case(
            "Avro map count bomb, Confluent frame",
            avro_map_bomb(&[0, 0, 0, 0, 1]),
            "undecodable",
        ),
        case(
            "Avro map count bomb, single-object frame",
            avro_map_bomb(&single_object),
            "undecodable",
        ),
        case(
            "Avro string length past the end",
            vec![0, 0, 0, 0, 1, 0xfe, 0xff, 0xff, 0xff, 0x0f, b'x'],
            "undecodable",
        ),
        case("empty value", vec![], "undecodable"),
        case(
            "JSON nested 50,000 deep",
            {
                let mut v = b"{\"id\":".to_vec();
                v.extend(std::iter::repeat_n(b'[', 50_000));
                v
            },
            "undecodable",
        ),
        case(
            "JSON that is not UTF-8",
            b"{\"id\":\"\xff\xfe\"}".to_vec(),
            "undecodable",
        ),
        case(
            "record over dispatch.max_record_bytes",
            {
                let mut s = send("huge", &url);
                s.webhook.body = Some("b".repeat(70 * 1024));
                serde_json::to_vec(&s).unwrap()
            },
            "too_large",
        ),
        case(
            "id with a control character",
            serde_json::to_vec(&control_id).unwrap(),
            "invalid_field",
        ),
        case(
            "workspace id with NUL",
            serde_json::to_vec(&nul_workspace).unwrap(),
            "invalid_field",
        ),
        case(
            "URL over http.max_url_bytes",
            serde_json::to_vec(&long_url).unwrap(),
            "too_large",
        ),
        case(
            "name over dispatch.max_field_bytes",
            serde_json::to_vec(&long_field).unwrap(),
            "too_large",
        ),
        Case {
            name: "header name that is not UTF-8",
            payload: json("bad-header-name", &url),
            headers: crate::support::headers_with_raw_name(b"trace\xff\xfeid", b"1"),
            kind: "invalid_header",
        },
    ];
    let sends = kafka.config.topics.sends.clone();
    produce(&kafka, &sends, &json("before", &url), OwnedHeaders::new()).await;
    for c in &cases {
        produce(&kafka, &sends, &c.payload, c.headers.clone()).await;
    }
    // Valid sends in awkward clothes: a byte-order mark, and a header value that is not UTF-8.
    let mut bom = vec![0xEF, 0xBB, 0xBF];
    bom.extend(json("with-bom", &url));
    produce(&kafka, &sends, &bom, OwnedHeaders::new()).await;
    let odd_value = OwnedHeaders::new().insert(Header {
        key: "x-odd",
        value: Some(&b"\xff\x00\xfe"[..]),
    });
    produce(&kafka, &sends, &json("odd-header-value", &url), odd_value).await;
    produce(&kafka, &sends, &json("after", &url), OwnedHeaders::new()).await;
    // Garbage in a retry tier is dead-lettered the same way.
    let tier = kafka.config.topics.retry_tier_topics()[0].0.clone();
    produce(&kafka, &tier, b"not a retry record", OwnedHeaders::new()).await;
    produce(
        &kafka,
        &tier,
        &avro_map_bomb(&[0, 0, 0, 0, 1]),
        OwnedHeaders::new(),
    )
    .await;
    // A retry whose send no longer passes validation (PATCH is not allowed): its earlier events promised
    // another attempt, so a terminal failure event closes the story beside the dead letter.
    let mut patch = send("retry-patch", &url);
    patch.webhook.request_method = "PATCH".into();
    let retry = hookrelay::events::RetryRecord {
        send: patch,
        attempts: u32::MAX,
        first_attempt_ms: 0,
        due_ms: 0,
        last_status: 503,
        source: None,
        requested: Some(true),
    };
    produce(&kafka, &tier, &retry.encode(), OwnedHeaders::new()).await;

    let mut d = ChildDispatcher::spawn(&kafka.config);
    wait_for(
        "every hostile record is dead-lettered, every valid one delivered, and the invalid retry's failure event written",
        Duration::from_secs(60),
        || async {
            let seen = reader.snapshot();
            seen.dead_letters.len() == cases.len() + 3
                && !seen.failures.is_empty()
                && ["before", "with-bom", "odd-header-value", "after"]
                    .iter()
                    .all(|id| !rx.requests_for(id).is_empty())
        },
    )
    .await;
    let observed = reader.snapshot();
    for c in &cases {
        let dl = observed
            .dead_letters
            .iter()
            .find(|dl| {
                dl.payload == c.payload
                    && dl.headers.get("hookrelay-original-topic") == Some(&sends)
            })
            .unwrap_or_else(|| panic!("{}: no dead letter", c.name));
        assert_eq!(
            dl.headers.get("hookrelay-error-kind").map(String::as_str),
            Some(c.kind),
            "{}: {:?}",
            c.name,
            dl.headers.get("hookrelay-error")
        );
        assert!(!dl.headers["hookrelay-error"].is_empty(), "{}", c.name);
    }
    let [event] = &observed.failures[..] else {
        panic!(
            "one failure event, for the invalid retry: {:?}",
            observed.failures
        )
    };
    assert_eq!(event.dispatch_id.as_deref(), Some("dispatch-retry-patch"));
    assert_eq!(event.is_terminal, Some(true));
    assert_eq!(
        event.webhook_failure_source.as_deref(),
        Some("Invalid Request")
    );
    assert_eq!(
        event.attempt,
        Some(i32::MAX),
        "the attempt count saturates instead of overflowing"
    );
    assert!(observed.dead_letters.iter().any(|dl| dl
        .headers
        .get("hookrelay-error-kind")
        .map(String::as_str)
        == Some("invalid_method")));
    assert_eq!(
        rx.count(),
        4,
        "only the four valid sends reached the receiver"
    );
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "the dispatcher is still running"
    );
    wait_for(
        "every offset is committed",
        Duration::from_secs(30),
        || async { kafka.committed(1).await.values().sum::<i64>() == (cases.len() + 4) as i64 },
    )
    .await;
    d.kill();
    reader.stop();
}
