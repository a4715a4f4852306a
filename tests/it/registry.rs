//! Speaking the Kafka shop's Avro, end to end with `hookrelay dispatch` as a child process and a registry
//! server in the test (`tools::schema_registry`): each record is read with the writer schema its id names,
//! resolved to hookrelay's; an id the registry does not have is dead-lettered with that reason; a registry
//! that stops costs no send; credentials are sent and a refusal stops start-up; and Braze Currents' Send,
//! Abort and Retry events are written, read back through the registry with Braze's schemas, and always
//! before the offsets of the sends they speak of are committed.

use std::time::Duration;

use apache_avro::types::Value;
use apache_avro::Schema;
use serde_json::Value as Json;

use crate::support::{full_send, receiver, wait_for, ChildDispatcher, Kafka};
use hookrelay::events::SendRequest;
use hookrelay::tools::harness::{OutputReader, SendProducer};
use hookrelay::tools::schema_registry::SchemaRegistry;

const SUBJECT: &str = "webhook-sends-value";

/// hookrelay's send-request schema as JSON, changed by `edit` (its `fields` array).
fn schema_with(edit: impl FnOnce(&mut Vec<Json>)) -> String {
    let mut schema: Json =
        serde_json::from_str(hookrelay::events::SEND_REQUEST_SCHEMA_JSON).unwrap();
    edit(schema["fields"].as_array_mut().unwrap());
    schema.to_string()
}

/// A producer's writer schemas, in the order a team would have registered them.
struct Writers {
    /// An older version, before `campaign_name` (optional) was added.
    older: String,
    ours: String,
    /// Ours and a field added with a default, placed second.
    added: String,
    /// Ours with its fields in reverse order.
    reordered: String,
}

fn writers() -> Writers {
    Writers {
        older: schema_with(|f| f.retain(|f| f["name"] != "campaign_name")),
        ours: schema_with(|_| {}),
        added: schema_with(|f| {
            f.insert(
                1,
                serde_json::json!({"name": "priority", "type": "int", "default": 0}),
            )
        }),
        reordered: schema_with(|f| f.reverse()),
    }
}

/// `send` as a producer with `writer` encodes it, Confluent-framed with `id`: fields it lacks are left
/// out, fields it adds get `priority` 7.
fn framed(send: &SendRequest, writer: &str, id: u32) -> Vec<u8> {
    let schema = Schema::parse_str(writer).unwrap();
    let Value::Record(mut fields) = apache_avro::to_value(send).unwrap() else {
        unreachable!("a send is a record")
    };
    fields.push(("priority".into(), Value::Int(7)));
    let value = Value::Record(fields).resolve(&schema).unwrap();
    let mut out = vec![0];
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&apache_avro::to_avro_datum(&schema, value).unwrap());
    out
}

/// A Confluent-framed event read as a consumer of the topic would: its writer schema fetched from the registry
/// by the id in its frame, resolved to `reader` (one of Braze's published schemas).
async fn read_back(
    registry: &SchemaRegistry,
    payload: &[u8],
    reader: &str,
) -> Vec<(String, Value)> {
    assert!(payload.len() > 5 && payload[0] == 0, "Confluent-framed");
    let id = u32::from_be_bytes(payload[1..5].try_into().unwrap());
    let answer = reqwest::get(format!("{}/schemas/ids/{id}", registry.url()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let answer: Json = serde_json::from_slice(&answer).unwrap();
    let writer = Schema::parse_str(answer["schema"].as_str().unwrap()).unwrap();
    let reader = Schema::parse_str(reader).unwrap();
    match apache_avro::from_avro_datum(&writer, &mut &payload[5..], Some(&reader)).unwrap() {
        Value::Record(fields) => fields,
        other => panic!("not a record: {other:?}"),
    }
}

/// A string field of a read-back record.
fn field(record: &[(String, Value)], name: &str) -> Option<String> {
    record
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| match v {
            Value::String(s) => Some(s.clone()),
            Value::Union(_, v) => match v.as_ref() {
                Value::String(s) => Some(s.clone()),
                Value::Int(i) => Some(i.to_string()),
                _ => None,
            },
            _ => None,
        })
}

const BRAZE_FAILURE: &str =
    include_str!("../../schemas/reference/users.messages.webhook.Failure.avsc");

/// Runs `hookrelay dispatch` with `config` as a process, which must exit non-zero: its standard error.
async fn dispatch_fails_to_start(config: &hookrelay::config::Config) -> String {
    let file = crate::support::config_file(config);
    let out = tokio::task::spawn_blocking(move || {
        crate::support::hookrelay_command("dispatch", &file, &[])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "start-up fails: {err}");
    err
}

async fn produce(producer: &SendProducer, send: &SendRequest, writer: &str, id: u32) {
    producer
        .raw(send.workspace_id.as_bytes(), &framed(send, writer, id))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_written_with_older_newer_and_reordered_schemas_deliver_with_their_fields_and_an_unknown_id_is_dead_lettered(
) {
    let mut kafka = Kafka::start(2).without_retries();
    let registry = SchemaRegistry::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let w = writers();
    let ids: Vec<(&str, &String, u32)> = [
        ("older", &w.older),
        ("ours", &w.ours),
        ("added", &w.added),
        ("reordered", &w.reordered),
    ]
    .into_iter()
    .map(|(name, schema)| (name, schema, registry.register(SUBJECT, schema).unwrap()))
    .collect();
    kafka.config.schema_registry.url = registry.url();
    let rx = receiver().await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let _d = ChildDispatcher::spawn(&kafka.config);
    let producer = kafka.producer();
    for (name, schema, id) in &ids {
        let ok = full_send(&format!("{name}-ok"), "ws", &rx.url("/ok"));
        produce(&producer, &ok, schema, *id).await;
        let gone = full_send(&format!("{name}-gone"), "ws", &rx.url("/gone?status=410"));
        produce(&producer, &gone, schema, *id).await;
    }
    let unknown = full_send("unknown-id", "ws", &rx.url("/ok"));
    produce(&producer, &unknown, &w.ours, 9_999).await;

    wait_for(
        "every send reached the receiver",
        Duration::from_secs(60),
        || async { rx.count() >= 8 },
    )
    .await;
    for (name, _, _) in &ids {
        let id = format!("{name}-ok");
        let got = rx.requests_for(&id);
        assert_eq!(got.len(), 1, "{id} delivered once");
        assert_eq!(got[0].path, "/ok");
        assert_eq!(got[0].method, "POST");
        assert_eq!(got[0].headers["x-test"], id.as_str());
        assert_eq!(got[0].body, format!(r#"{{"id":"{id}"}}"#));
    }
    let seen = reader
        .wait_until(Duration::from_secs(60), |o| {
            o.failures.len() >= 4 && !o.dead_letters.is_empty()
        })
        .await;
    for (name, _, _) in &ids {
        let id = format!("{name}-gone");
        let event = seen
            .failures
            .iter()
            .find(|e| e.dispatch_id.as_deref() == Some(&format!("dispatch-{id}")))
            .unwrap_or_else(|| panic!("a failure event for {id}"));
        assert_eq!(event.http_status_code, Some(410));
        assert_eq!(event.campaign_id, Some(format!("campaign-{id}")));
        assert_eq!(event.canvas_step_name, Some(format!("Step name-{id}")));
        let campaign_name = (*name != "older").then(|| format!("Campaign name-{id}"));
        assert_eq!(
            event.campaign_name, campaign_name,
            "{name}: a field the writer lacks reads as its default"
        );
    }
    assert_eq!(
        seen.dead_letters.len(),
        1,
        "only the unknown id is dead-lettered"
    );
    let dl = &seen.dead_letters[0];
    assert_eq!(dl.headers["hookrelay-error-kind"], "unknown_schema");
    assert!(
        dl.headers["hookrelay-error"].contains("9999")
            && dl.headers["hookrelay-error"].contains("not in the schema registry"),
        "the dead letter says why: {}",
        dl.headers["hookrelay-error"]
    );
    assert!(rx.requests_for("unknown-id").is_empty());

    let subject = format!("{}-value", kafka.config.topics.failures);
    assert_eq!(
        registry.versions(&subject).len(),
        1,
        "failure events' schema registered under {subject}"
    );
    for payload in kafka
        .payloads(&kafka.config.topics.failures, 4, Duration::from_secs(30))
        .await
    {
        let event = read_back(&registry, &payload, BRAZE_FAILURE).await;
        assert_eq!(field(&event, "http_status_code").as_deref(), Some("410"));
        let dispatch_id = field(&event, "dispatch_id").unwrap();
        assert!(dispatch_id.ends_with("-gone"), "{dispatch_id}");
        assert_eq!(field(&event, "app_group_id").as_deref(), Some("ws"));
    }
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_stopped_mid_run_dead_letters_nothing_and_its_sends_go_once_it_returns() {
    let mut kafka = Kafka::start(4);
    let registry = SchemaRegistry::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let w = writers();
    let ours = registry.register(SUBJECT, &w.ours).unwrap();
    kafka.config.schema_registry.url = registry.url();
    let rx = receiver().await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let d = ChildDispatcher::spawn_with(
        &kafka.config,
        &[("HOOKRELAY_SCHEMA_REGISTRY__MAX_BACKOFF", "500ms")],
    );
    let producer = kafka.producer();
    let send = |id: String| full_send(&id, "ws", &rx.url("/ok"));
    produce(&producer, &send("before".into()), &w.ours, ours).await;
    wait_for(
        "the first send is delivered",
        Duration::from_secs(60),
        || async { rx.count() >= 1 },
    )
    .await;

    registry.stop();
    // A producer registered a new version before the registry went away; hookrelay has not seen it yet.
    let added = registry.register(SUBJECT, &w.added).unwrap();
    for i in 0..100 {
        produce(&producer, &send(format!("new-{i}")), &w.added, added).await;
        produce(&producer, &send(format!("cached-{i}")), &w.ours, ours).await;
    }
    wait_for(
        "sends whose schema is cached are delivered while the registry is down",
        Duration::from_secs(60),
        || async { (0..100).all(|i| !rx.requests_for(&format!("cached-{i}")).is_empty()) },
    )
    .await;
    wait_for(
        "the dispatcher shows records waiting for the registry",
        Duration::from_secs(30),
        || async {
            d.metric("hookrelay_schema_registry_waiting_records")
                .await
                .unwrap_or(0.0)
                > 0.0
                && d.metric("hookrelay_schema_registry_unavailable_total")
                    .await
                    .unwrap_or(0.0)
                    > 0.0
        },
    )
    .await;
    assert!(
        (0..100).all(|i| rx.requests_for(&format!("new-{i}")).is_empty()),
        "no send of the unseen schema went out without it"
    );

    registry.restart().await.unwrap();
    wait_for(
        "every send of the new schema is delivered once the registry answers",
        Duration::from_secs(60),
        || async { (0..100).all(|i| !rx.requests_for(&format!("new-{i}")).is_empty()) },
    )
    .await;
    let seen = reader.snapshot();
    assert!(
        seen.dead_letters.is_empty(),
        "an outage dead-letters nothing: {:?}",
        seen.dead_letters.first().map(|d| &d.headers)
    );
    assert_eq!(rx.count(), 201, "each send delivered once");
    wait_for(
        "nothing waits for the registry any more",
        Duration::from_secs(10),
        || async {
            d.metric("hookrelay_schema_registry_waiting_records")
                .await
                .unwrap_or(1.0)
                == 0.0
        },
    )
    .await;
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_registry_that_does_not_answer_fails_start_up_naming_it_after_startup_timeout()
{
    let mut kafka = Kafka::start(1);
    // A port nothing listens on: bound, then let go.
    let closed = crate::support::free_port();
    kafka.config.schema_registry.url = format!("http://{closed}");
    kafka.config.schema_registry.startup_timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let err = dispatch_fails_to_start(&kafka.config).await;
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "it waited schema_registry.startup_timeout first"
    );
    assert!(
        err.contains(&closed.to_string()) && err.contains("schema_registry.startup_timeout"),
        "the error names the registry and the setting: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_schema_the_registry_refuses_as_incompatible_fails_start_up_with_its_message() {
    let mut kafka = Kafka::start(1);
    let registry = SchemaRegistry::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let earlier = r#"{"type":"record","name":"Failure","fields":[{"name":"x","type":"int"}]}"#;
    let subject = format!("{}-value", kafka.config.topics.failures);
    registry.register(&subject, earlier).unwrap();
    kafka.config.schema_registry.url = registry.url();
    let err = dispatch_fails_to_start(&kafka.config).await;
    assert!(
        err.contains(&subject) && err.contains("incompatible with an earlier schema"),
        "the error carries the registry's message: {err}"
    );
    assert_eq!(
        registry.versions(&subject).len(),
        1,
        "nothing was registered"
    );
}

const BRAZE_SEND: &str = include_str!("../../schemas/reference/users.messages.webhook.Send.avsc");
const BRAZE_ABORT: &str = include_str!("../../schemas/reference/users.messages.webhook.Abort.avsc");
const BRAZE_RETRY: &str = include_str!("../../schemas/reference/users.messages.webhook.Retry.avsc");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_abort_and_retry_events_read_back_through_the_registry_and_with_braze_s_schemas() {
    let mut kafka = Kafka::start(2);
    let registry = SchemaRegistry::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let ours = registry.register(SUBJECT, &writers().ours).unwrap();
    let c = &mut kafka.config;
    c.schema_registry.url = registry.url();
    c.events.send_events = true;
    c.events.abort_events = true;
    c.events.retry_events = true;
    // A host at 2 requests a second, and no send held in the process for longer than 100 ms: a burst to it
    // is deferred to the retry tiers without attempts.
    c.rate_limits.insert("127.0.0.2".into(), 2.0);
    c.dispatch.max_hold = Duration::from_millis(100);
    let rx = receiver().await;
    let limited = crate::support::receiver_on("127.0.0.2").await;
    let d = ChildDispatcher::spawn(&kafka.config);
    let producer = kafka.producer();
    let mut sends = vec![
        full_send("plain", "ws", &rx.url("/ok")),
        full_send("flaky", "ws", &rx.url("/flaky?seq=503,200")),
    ];
    for i in 0..4 {
        sends.push(full_send(
            &format!("limited-{i}"),
            "ws",
            &limited.url("/ok"),
        ));
    }
    for s in &sends {
        produce(&producer, s, &writers().ours, ours).await;
    }
    let mut brew = full_send("brew", "ws", &rx.url("/ok"));
    brew.webhook.request_method = "BREW".into();
    produce(&producer, &brew, &writers().ours, ours).await;

    wait_for(
        "every valid send is delivered",
        Duration::from_secs(60),
        || async {
            sends.iter().all(|s| {
                [&rx, &limited]
                    .iter()
                    .any(|r| r.requests_for(&s.id).iter().any(|q| q.status == 200))
            })
        },
    )
    .await;
    let topics = &kafka.config.topics;
    let send_events = kafka
        .payloads(&topics.send_events, sends.len(), Duration::from_secs(30))
        .await;
    let mut sent = Vec::new();
    for p in &send_events {
        let e = read_back(&registry, p, BRAZE_SEND).await;
        assert_eq!(field(&e, "app_group_id").as_deref(), Some("ws"));
        assert!(field(&e, "campaign_name").is_some_and(|n| n.starts_with("Campaign name-")));
        sent.push(field(&e, "dispatch_id").unwrap());
    }
    sent.sort();
    let mut expected: Vec<String> = sends.iter().map(|s| format!("dispatch-{}", s.id)).collect();
    expected.sort();
    assert_eq!(
        sent, expected,
        "one Send per send request, the flaky one's retry included"
    );
    wait_for(
        "no second Send is written for any send",
        Duration::from_secs(10),
        || async {
            d.metric("hookrelay_currents_events_total{kind=\"send\"}")
                .await
                .is_some_and(|n| n == sends.len() as f64)
        },
    )
    .await;

    let abort = kafka
        .payloads(&topics.abort_events, 1, Duration::from_secs(30))
        .await;
    let abort = read_back(&registry, &abort[0], BRAZE_ABORT).await;
    assert_eq!(
        field(&abort, "dispatch_id").as_deref(),
        Some("dispatch-brew")
    );
    assert_eq!(
        field(&abort, "abort_type").as_deref(),
        Some("invalid_method")
    );
    assert!(field(&abort, "abort_log").is_some_and(|l| l.contains("BREW")));

    let retries = kafka
        .payloads(&topics.retry_events, 1, Duration::from_secs(30))
        .await;
    let retry = read_back(&registry, &retries[0], BRAZE_RETRY).await;
    assert!(field(&retry, "dispatch_id").is_some_and(|id| id.starts_with("dispatch-limited-")));
    assert_eq!(field(&retry, "retry_type").as_deref(), Some("rate_limit"));
    assert!(field(&retry, "retry_log").is_some_and(|l| l.contains("rate limit")));
    for kind in ["send", "abort", "retry"] {
        let subject = format!("webhook-{kind}-events-value");
        assert_eq!(registry.versions(&subject).len(), 1, "{subject} registered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_credentials_are_sent_and_a_registry_refusing_them_stops_start_up() {
    let mut kafka = Kafka::start(1);
    // `key:secret`, as HTTP basic authentication carries it.
    let registry = SchemaRegistry::start_with(
        "127.0.0.1:0".parse().unwrap(),
        Some("Basic a2V5OnNlY3JldA=="),
    )
    .await
    .unwrap();
    let ours = registry.register(SUBJECT, &writers().ours).unwrap();
    let c = &mut kafka.config.schema_registry;
    c.url = registry.url();
    c.username = "key".into();
    c.password = "wrong".into();
    c.startup_timeout = Duration::from_secs(1);
    let err = dispatch_fails_to_start(&kafka.config).await;
    assert!(
        err.contains("HTTP 401") && err.contains("Unauthorized"),
        "the refusal is named: {err}"
    );
    assert!(!err.contains("wrong"), "the password is not printed: {err}");

    kafka.config.schema_registry.password = "secret".into();
    let rx = receiver().await;
    let _d = ChildDispatcher::spawn(&kafka.config);
    let send = full_send("authorised", "ws", &rx.url("/ok"));
    produce(&kafka.producer(), &send, &writers().ours, ours).await;
    wait_for(
        "a send read through the registry with the credentials is delivered",
        Duration::from_secs(60),
        || async { !rx.requests_for("authorised").is_empty() },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_offset_is_committed_before_the_send_events_of_its_sends_are_acknowledged() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    let mut kafka = Kafka::start(2);
    kafka.config.events.send_events = true;
    let rx = receiver().await;
    let d = ChildDispatcher::spawn_ready(&kafka.config, &[]).await;
    // Every send waits 2 s for its answer; meanwhile every Produce request starts failing, so the Send
    // events its delivery owes cannot be written.
    crate::support::produce_sends(&kafka.producer(), "held", 50, &rx.url("/ok?delay=2s")).await;
    kafka.broker.mock().request_errors(
        RDKafkaApiKey::Produce,
        &vec![RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS; 100_000],
    );
    wait_for(
        "every send is delivered",
        Duration::from_secs(30),
        || async {
            d.metric("hookrelay_sends_total{result=\"delivered\"}")
                .await
                .unwrap_or(0.0)
                >= 50.0
        },
    )
    .await;
    wait_for(
        "a commit held back for unacknowledged events",
        Duration::from_secs(30),
        || async {
            d.metric("hookrelay_offset_commits_total{result=\"error\"}")
                .await
                .unwrap_or(0.0)
                >= 1.0
        },
    )
    .await;
    assert_eq!(
        kafka.committed(2).await.values().sum::<i64>(),
        0,
        "the sends are delivered, but their Send events are not written: nothing is committed"
    );
    kafka
        .broker
        .mock()
        .clear_request_errors(RDKafkaApiKey::Produce);
    wait_for(
        "every offset is committed once the events are written",
        Duration::from_secs(60),
        || async { kafka.committed(2).await.values().sum::<i64>() == 50 },
    )
    .await;
    let events = kafka
        .payloads(
            &kafka.config.topics.send_events,
            50,
            Duration::from_secs(30),
        )
        .await;
    assert!(events.len() >= 50);
}
