//! Hot paths of the dispatcher, per record: decode + validate a send, classify, plan an attempt, build +
//! encode the failure event, track the offset. Run: `cargo bench --bench hot_paths`.

use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hookrelay::aggregate::ledger::Ledger;
use hookrelay::aggregate::window::Windows;
use hookrelay::config::EventEncoding;
use hookrelay::dispatch::classify::{classify, Attempt, Verdict};
use hookrelay::dispatch::consume::OffsetTracker;
use hookrelay::dispatch::plan::{plan, Attempted, Circumstances, Policy};
use hookrelay::dispatch::report::failure_event;
use hookrelay::dispatch::retry::RetryPolicy;
use hookrelay::dispatch::tiers::Tiers;
use hookrelay::events::failure_view::ViewDecoder;
use hookrelay::events::{FailureEvent, Rules, SendRequest};
use hookrelay::kafka::TopicPartition;

const SEND: &str = r#"{"id":"send-000042","workspace_id":"ws_acme","workspace_name":"Acme Retail",
"user_id":"user-1","campaign_id":"cmp_welcome","campaign_name":"Welcome Series","message_variation_id":"v_a",
"webhook":{"url":"https://hooks.example.com/acme/welcome?src=braze","request_method":"POST",
"request_headers":{"content-type":"application/json","authorization":"Bearer abc"},
"body":"{\"event\":\"welcome\",\"user\":\"user-1\",\"attributes\":{\"plan\":\"gold\",\"locale\":\"en\"}}"},
"created_at":1763700000000}"#;

fn methods() -> Rules {
    Rules::default()
}

/// A validated send and a 503 failure of it, for the event benchmarks.
fn send_and_failure() -> (
    hookrelay::events::ValidSend,
    hookrelay::dispatch::classify::Failure,
) {
    let send = SendRequest::decode(SEND.as_bytes(), false)
        .unwrap()
        .validate(&methods())
        .unwrap();
    let attempt = Attempt::Response {
        status: 503,
        reason: None,
        body: "upstream unavailable".into(),
        content_length: Some(20),
        retry_after: None,
    };
    let Verdict::Failed(failure) = classify(attempt) else {
        unreachable!()
    };
    (send, failure)
}

fn bench(c: &mut Criterion) {
    let methods = methods();
    let mut g = c.benchmark_group("per_record");
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_validate_json_send", |b| {
        b.iter(|| {
            SendRequest::decode(black_box(SEND.as_bytes()), false)
                .unwrap()
                .validate(&methods)
                .unwrap()
        })
    });
    let avro = {
        let mut v = vec![0, 0, 0, 0, 1];
        v.extend(
            SendRequest::decode(SEND.as_bytes(), false)
                .unwrap()
                .to_avro(),
        );
        v
    };
    g.bench_function("decode_validate_avro_send", |b| {
        b.iter(|| {
            SendRequest::decode(black_box(&avro), false)
                .unwrap()
                .validate(&methods)
                .unwrap()
        })
    });
    let attempt = Attempt::Response {
        status: 503,
        reason: None,
        body: "upstream down".into(),
        content_length: Some(13),
        retry_after: None,
    };
    g.bench_function("classify", |b| {
        b.iter(|| classify(black_box(attempt.clone())))
    });
    let send = SendRequest::decode(SEND.as_bytes(), false)
        .unwrap()
        .validate(&methods)
        .unwrap();
    let Verdict::Failed(failure) = classify(attempt.clone()) else {
        unreachable!()
    };
    g.bench_function("build_and_encode_failure_event", |b| {
        b.iter(|| {
            failure_event(
                &send,
                &failure,
                1,
                Duration::from_millis(12),
                1_763_700_000_000,
                true,
                None,
            )
            .encode(EventEncoding::SingleObject, None)
        })
    });
    let encoded = failure_event(&send, &failure, 1, Duration::from_millis(12), 0, true, None)
        .encode(EventEncoding::SingleObject, None);
    g.bench_function("decode_failure_event", |b| {
        b.iter(|| FailureEvent::decode(black_box(&encoded)).unwrap())
    });
    g.finish();
}

/// Planning an attempt: what most sends cost (delivered) and what a failure costs (a retry record and an event).
fn planning(c: &mut Criterion) {
    let (send, _) = send_and_failure();
    let mut g = c.benchmark_group("per_record");
    g.throughput(Throughput::Elements(1));
    let tiers = Tiers::new(
        [("r-10s", 10), ("r-1m", 60), ("r-5m", 300)]
            .map(|(t, s)| (t.to_string(), Duration::from_secs(s)))
            .to_vec(),
    );
    let retry = RetryPolicy::default();
    let policy = Policy {
        retry: &retry,
        tiers: &tiers,
    };
    let attempted = |wire: Attempt| Attempted {
        send: &send,
        number: 1,
        first_attempt_ms: 1_763_700_000_000,
        wire,
        duration: Duration::from_millis(12),
        source: None,
        requested_before: false,
    };
    let now = || Circumstances {
        now_ms: 1_763_700_000_000,
        jitter: 0.5,
        new_event_id: || uuid::Uuid::new_v4().to_string(),
    };
    let ok = attempted(Attempt::Response {
        status: 200,
        reason: None,
        body: String::new(),
        content_length: Some(0),
        retry_after: None,
    });
    // Nine sends in ten: no event, no record, no random id.
    g.bench_function("plan_delivered_attempt", |b| {
        b.iter(|| plan(black_box(&ok), now(), policy))
    });
    // What every attempt cost before the id was made only for a failure event: a random UUID as a string.
    g.bench_function("plan_delivered_attempt_with_an_eager_event_id", |b| {
        b.iter(|| {
            black_box(uuid::Uuid::new_v4().to_string());
            plan(black_box(&ok), now(), policy)
        })
    });
    let failed = attempted(Attempt::Response {
        status: 503,
        reason: None,
        body: "upstream down".into(),
        content_length: Some(13),
        retry_after: None,
    });
    g.bench_function("plan_503_retry", |b| {
        b.iter(|| plan(black_box(&failed), now(), policy))
    });
    g.finish();
}

/// Aggregator ingest: read the fields it needs and count the event in its workspace's 24 h window.
fn aggregate_ingest(c: &mut Criterion) {
    let (send, failure) = send_and_failure();
    let mut g = c.benchmark_group("aggregate_ingest");
    const EVENTS: usize = 10_000;
    g.throughput(Throughput::Elements(EVENTS as u64));
    let now = 1_763_700_000_000i64;
    let events: Vec<Vec<u8>> = (0..EVENTS)
        .map(|i| {
            let mut e = failure_event(
                &send,
                &failure,
                1,
                Duration::from_millis(12),
                now - (i as i64 * 997) % 86_400_000,
                true,
                None,
            );
            e.app_group_id = Some(format!("ws_{}", i % 500));
            e.encode(EventEncoding::SingleObject, None)
        })
        .collect();
    let decoder = ViewDecoder::new();
    // What the aggregator does per event: decode, count in the window, the email's breakdown, and note the
    // workspace as changed for the next checkpoint.
    let codes = hookrelay::config::Config::default().aggregate.codes;
    g.bench_function("decode_view_and_count_10k", |b| {
        b.iter_batched(
            || Ledger::new(86_400_000, 20, &codes),
            |mut ledger| {
                for bytes in &events {
                    let v = decoder.decode(bytes).unwrap();
                    ledger.count(&v, 0, now);
                }
                ledger
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("generic_decode_and_count_10k", |b| {
        b.iter_batched(
            || Windows::new(86_400_000),
            |mut windows| {
                for bytes in &events {
                    let e = FailureEvent::decode(bytes).unwrap();
                    windows.add(
                        e.app_group_id.as_deref().unwrap(),
                        0,
                        e.time_ms.unwrap(),
                        now,
                    );
                }
                windows
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn offset_tracking(c: &mut Criterion) {
    let mut g = c.benchmark_group("offset_tracking");
    const N: i64 = 10_000;
    g.throughput(Throughput::Elements(N as u64));
    let tp = TopicPartition::new("webhook-sends", 0);
    g.bench_function("start_then_finish_out_of_order_10k", |b| {
        b.iter_batched(
            || {
                let mut t = OffsetTracker::new();
                t.assign(tp.clone());
                t
            },
            |mut t| {
                let tickets: Vec<_> = (0..N).map(|o| t.start(&tp, o).unwrap()).collect();
                // finish in a scrambled but deterministic order
                for i in 0..N {
                    let j = (i * 7919) % N;
                    t.finish(&tickets[j as usize]);
                }
                assert_eq!(t.position(&tp), Some(N));
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// What a lane costs a send: asked and answered for a host with no rules (the common case), and a send that
/// queues behind its host's cap and is woken, with its answer, by the answer that frees a slot.
fn lanes(c: &mut Criterion) {
    use hookrelay::dispatch::lane::{
        Answer, Ask, HostHealthConfig, HostKey, LaneSettings, Lanes, Now, QueueLimits, RateLimits,
        RateRules,
    };
    use std::time::Duration;
    let settings = |per_host: usize| LaneSettings {
        health: HostHealthConfig::default(),
        rules: RateRules::default(),
        rate: RateLimits {
            max_wait: Duration::from_secs(10),
            max_waiting_per_host: 128,
            max_waiting: 256,
            retry_after_cap: Duration::from_secs(3600),
        },
        slots: QueueLimits {
            max_in_flight: 512,
            max_in_flight_per_host: per_host,
            max_queued_per_host: 512,
            max_queue_wait: Duration::from_secs(30),
            request_timeout: Duration::from_secs(90),
        },
    };
    let key = HostKey {
        host: "hooks.example.com".into(),
        workspace: "workspace-1".into(),
    };
    let ok = Answer {
        status: Some(200),
        retry_after: None,
        took: Duration::from_millis(5),
    };
    let at = |ms: u64| Now {
        mono: Duration::from_millis(ms),
        wall_ms: 1_700_000_000_000 + ms as i64,
    };
    let mut g = c.benchmark_group("lane");
    g.throughput(Throughput::Elements(1));
    let mut lanes = Lanes::new(settings(128));
    let mut ms: u64 = 1_000;
    g.bench_function("ask_then_answer_no_rules", |b| {
        b.iter(|| {
            ms += 1;
            let now = at(ms);
            let ask = lanes.ask(black_box(&key), now, false);
            assert_eq!(ask, Ask::Go);
            black_box(lanes.answer(&key, ok, now));
        })
    });
    // One host at its cap of 4: each send queues, the answer of the oldest request wakes it with its slot.
    let mut lanes = Lanes::new(settings(4));
    for _ in 0..4 {
        assert_eq!(lanes.ask(&key, at(ms), false), Ask::Go);
    }
    g.bench_function("queued_and_woken_with_its_slot", |b| {
        b.iter(|| {
            ms += 1;
            let now = at(ms);
            let Ask::Queued { .. } = lanes.ask(black_box(&key), now, false) else {
                panic!("the host is at its cap")
            };
            let wakes = lanes.answer(&key, ok, now);
            assert!(matches!(&wakes[..], [w] if w.ask == Ask::Go));
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    bench,
    planning,
    aggregate_ingest,
    offset_tracking,
    lanes
);
criterion_main!(benches);
