//! Fuzzing every decoder of external bytes, on stable Rust: structure-aware mutations of valid inputs (bit
//! flips, cut and spliced ranges, varints claiming huge lengths, repeated blocks) plus plain random bytes,
//! from a fixed seed so a failure reproduces.
//!
//! For each input, no panic (caught and reported with the input in hex), no abort, and no allocation beyond
//! a bound proportional to the input: a counting allocator records the peak bytes live on the fuzzing thread
//! while one input is decoded, and it must stay below `ALLOC_PER_BYTE` × input length + `ALLOC_BASE`.
//!
//! CI runs a short pass (`HOOKRELAY_FUZZ_INPUTS`, default 3,000 per decoder). The long run, a million inputs
//! per decoder:
//!
//! ```sh
//! HOOKRELAY_FUZZ_INPUTS=1000000 cargo test --release --test fuzz -- --nocapture --test-threads 2
//! ```

// The harness times its runs and reads its input count from the environment.
#![allow(clippy::disallowed_methods)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hookrelay::config::Config;
use hookrelay::dispatch::pipeline::{decode_retry, decode_send, decode_written};
use hookrelay::dispatch::retry::{parse_retry_after, RetryPolicy};
use hookrelay::events::failure_view::ViewDecoder;
use hookrelay::events::{FailureEvent, Rules, SendRequest};
use hookrelay::kafka::{Record, TopicPartition};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

// ---- a counting allocator: live and peak bytes of the current thread ----

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

struct Counting;

fn note(delta: isize) {
    // `try_with`: the thread-locals may be gone while a thread shuts down.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are counted, in
// thread-locals with const initialisers (which never allocate). A global allocator cannot be written
// without `unsafe`.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size() as isize);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Peak bytes allocated (above what was live before) while `f` runs on this thread.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(Cell::get) - base;
    (out, peak.max(0) as usize)
}

/// Allowed allocation per input byte (decoders build trees of values and maps, several times the input)…
const ALLOC_PER_BYTE: usize = 256;
/// …plus a fixed allowance (parsed schemas, formatted error messages, the configuration's defaults).
const ALLOC_BASE: usize = 4 << 20;

// ---- the mutator ----

fn inputs_per_decoder() -> usize {
    std::env::var("HOOKRELAY_FUZZ_INPUTS")
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(3_000)
}

/// Varints and other byte runs that decoders meet in malicious input.
const NASTY: &[&[u8]] = &[
    &[0xfe, 0xff, 0xff, 0xff, 0x0f],       // Avro: 2^31-1
    &[0x80, 0x80, 0x80, 0x80, 0x80, 0x02], // Avro: 2^34 (a count)
    &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // Avro: -2^63
    &[0x01],                               // Avro: -1 (a negative block count)
    &[0xC3, 0x01],
    &[0, 0, 0, 0, 1],
    &[0xEF, 0xBB, 0xBF],
    b"\\u0000",
    b"\"\xff\xfe\"",
    b"[[[[[[[[[[[[[[[[",
    b"{\"a\":",
    b"99999999999999999999999",
    b"-1",
    b"\r\n",
    b"NaN",
];

fn mutate(rng: &mut StdRng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    if rng.random_ratio(1, 16) {
        let n = rng.random_range(0..512);
        return (0..n).map(|_| rng.random()).collect();
    }
    for _ in 0..rng.random_range(1..=4) {
        let len = v.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                v[i] = *[0u8, 0xff, 0x7f, 0x80, 0x01, b'"', b'{']
                    .get(rng.random_range(0..7))
                    .unwrap_or(&0);
            }
            2 => {
                let nasty = NASTY[rng.random_range(0..NASTY.len())];
                let i = rng.random_range(0..=len);
                v.splice(i..i, nasty.iter().copied());
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len);
                v.drain(a..b);
            }
            4 if len > 0 => {
                let cut = rng.random_range(0..len);
                v.truncate(cut);
            }
            5 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = rng.random_range(a..=len.min(a + 64));
                let chunk: Vec<u8> = v[a..b].to_vec();
                for _ in 0..rng.random_range(1..8) {
                    let i = rng.random_range(0..=v.len());
                    v.splice(i..i, chunk.iter().copied());
                }
            }
            6 => {
                let i = rng.random_range(0..=len);
                let n = rng.random_range(1..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                v.splice(i..i, bytes);
            }
            _ => {}
        }
    }
    v
}

/// Runs `decode` on `inputs_per_decoder()` mutations of `seeds`; fails on a panic or an allocation over the
/// bound, naming the input. Prints the inputs tried and the largest allocation ratio seen.
fn fuzz(name: &str, seed: u64, seeds: &[Vec<u8>], mut decode: impl FnMut(&[u8])) {
    let n = inputs_per_decoder();
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let mut worst = (0usize, 0usize); // (peak, input length)
    for i in 0..n {
        let input = if i < seeds.len() {
            seeds[i].clone()
        } else {
            let pick = rng.random_range(0..seeds.len());
            mutate(&mut rng, &seeds[pick])
        };
        let (result, peak) = peak_during(|| catch_unwind(AssertUnwindSafe(|| decode(&input))));
        if result.is_err() {
            panic!("{name}: panicked on input {i}: {}", hex(&input));
        }
        let bound = ALLOC_PER_BYTE * input.len() + ALLOC_BASE;
        if peak > bound {
            panic!(
                "{name}: allocated {peak} bytes for a {}-byte input (bound {bound}): {}",
                input.len(),
                hex(&input)
            );
        }
        if peak > worst.0 {
            worst = (peak, input.len());
        }
    }
    eprintln!(
        "fuzz {name}: {n} inputs in {:.1?}, no panic; largest allocation {} bytes (for {} input bytes)",
        started.elapsed(),
        worst.0,
        worst.1
    );
}

fn hex(b: &[u8]) -> String {
    let shown: String = b.iter().take(512).map(|x| format!("{x:02x}")).collect();
    if b.len() > 512 {
        format!("{shown}… ({} bytes)", b.len())
    } else {
        shown
    }
}

// ---- seeds: valid inputs of every framing ----

fn sample_send() -> SendRequest {
    let json = br#"{"id":"s-1","workspace_id":"ws","workspace_name":"Acme","campaign_id":"c","canvas_name":"Spring",
        "webhook":{"url":"https://hooks.example.com/a/b?x=1","request_method":"POST",
        "request_headers":{"content-type":"application/json","x-a":"1"},"body":"{\"k\":\"v\"}"},
        "created_at":"2026-01-02T03:04:05Z"}"#;
    SendRequest::decode(json, false).expect("the seed decodes")
}

fn send_seeds() -> Vec<Vec<u8>> {
    let send = sample_send();
    let avro = send.to_avro();
    let mut confluent = vec![0, 0, 0, 0, 1];
    confluent.extend(&avro);
    let single = hookrelay::events::framing::frame(
        hookrelay::config::EventEncoding::SingleObject,
        None,
        hookrelay::events::framing::fingerprint(hookrelay::events::send_request_schema()),
        &avro,
    );
    let mut bom = vec![0xEF, 0xBB, 0xBF];
    bom.extend(serde_json::to_vec(&send).unwrap());
    vec![
        serde_json::to_vec(&send).unwrap(),
        confluent,
        single,
        avro,
        bom,
    ]
}

fn record(payload: &[u8], headers: Vec<(String, Vec<u8>)>) -> Record {
    Record {
        tp: TopicPartition::new("webhook-sends", 0),
        offset: 0,
        key: None,
        payload: payload.to_vec(),
        headers,
        timestamp_ms: Some(0),
        header_error: None,
    }
}

// ---- one test per decoder ----

#[test]
fn send_requests_in_every_framing() {
    let rules = Rules::default();
    fuzz("send request", 1, &send_seeds(), |b| {
        let _ = decode_send(&record(b, vec![]), &rules, true);
        let _ = decode_send(&record(b, vec![]), &rules, false);
    });
}

/// A producer's writer schema as the registry would hand it over: ours with a field added with a default,
/// its fields in reverse order, and its `webhook` record named once and referred to again by name.
fn registered_writer() -> hookrelay::registry::Writer {
    let mut schema: serde_json::Value =
        serde_json::from_str(hookrelay::events::SEND_REQUEST_SCHEMA_JSON).unwrap();
    let fields = schema["fields"].as_array_mut().unwrap();
    fields.insert(
        1,
        serde_json::json!({"name": "priority", "type": "int", "default": 0}),
    );
    let webhook = fields.iter().find(|f| f["name"] == "webhook").unwrap()["type"]["name"].clone();
    fields.reverse();
    fields.push(serde_json::json!({"name": "spare", "type": ["null", webhook], "default": null}));
    let registered = hookrelay::registry::Registered {
        schema: schema.to_string(),
        schema_type: None,
        references: vec![],
    };
    hookrelay::registry::writer(7, &registered, hookrelay::events::send_request_schema())
        .expect("the writer reads as a send")
}

#[test]
fn send_requests_written_with_a_registered_writer_schema() {
    let rules = Rules::default();
    let writer = registered_writer();
    let send = sample_send();
    let apache_avro::types::Value::Record(mut fields) = apache_avro::to_value(&send).unwrap()
    else {
        unreachable!("a send is a record")
    };
    fields.push(("priority".into(), apache_avro::types::Value::Int(3)));
    let mut with_spare = fields.clone();
    fields.push((
        "spare".into(),
        apache_avro::types::Value::Union(0, Box::new(apache_avro::types::Value::Null)),
    ));
    let webhook = apache_avro::to_value(&send.webhook).unwrap();
    with_spare.push((
        "spare".into(),
        apache_avro::types::Value::Union(1, Box::new(webhook)),
    ));
    let seeds: Vec<Vec<u8>> = [fields, with_spare]
        .into_iter()
        .map(|f| {
            let value = apache_avro::types::Value::Record(f)
                .resolve(&writer.schema)
                .unwrap();
            let mut framed = vec![0, 0, 0, 0, 7];
            framed.extend(apache_avro::to_avro_datum(&writer.schema, value).unwrap());
            framed
        })
        .collect();
    assert_eq!(
        decode_written(&record(&seeds[1], vec![]), &rules, &writer)
            .unwrap()
            .request,
        send,
        "the seed decodes"
    );
    fuzz("send request (registered writer)", 10, &seeds, |b| {
        let _ = decode_written(&record(b, vec![]), &rules, &writer);
    });
}

#[test]
fn retry_records() {
    let rules = Rules::default();
    let retry = hookrelay::events::RetryRecord {
        send: sample_send(),
        attempts: 3,
        first_attempt_ms: 1_700_000_000_000,
        due_ms: 1_700_000_060_000,
        last_status: 503,
        source: None,
        requested: Some(true),
    };
    fuzz("retry record", 2, &[retry.encode()], |b| {
        if let Ok(r) = decode_retry(&record(b, vec![]), &rules) {
            let _ = r.send.validate(&rules);
        }
    });
}

#[test]
fn failure_events_with_the_full_and_the_fast_reader() {
    let event = FailureEvent {
        http_status_code: Some(503),
        endpoint_url: Some("https://h/p".into()),
        app_group_id: Some("ws".into()),
        campaign_name: Some("Spring".into()),
        id: "e".into(),
        time: 1_700_000_000,
        time_ms: Some(1_700_000_000_123),
        raw_response: Some("busy".into()),
        is_terminal: Some(false),
        ..Default::default()
    };
    let seeds: Vec<Vec<u8>> = [
        hookrelay::config::EventEncoding::SingleObject,
        hookrelay::config::EventEncoding::Confluent,
        hookrelay::config::EventEncoding::Binary,
    ]
    .into_iter()
    .map(|e| event.encode(e, Some(7)))
    .collect();
    let view = ViewDecoder::new();
    fuzz("failure event", 3, &seeds, |b| {
        let _ = FailureEvent::decode(b);
        let _ = view.decode(b);
    });
}

#[test]
fn kafka_headers() {
    let rules = Rules::default();
    let seeds = vec![
        b"hookrelay-due-ms\x001700000000000".to_vec(),
        b"traceparent\x0000-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec(),
    ];
    let payload = serde_json::to_vec(&sample_send()).unwrap();
    fuzz("Kafka header", 4, &seeds, |b| {
        // A header as it arrives: name and value split at the first NUL (librdkafka NUL-terminates names).
        let (name, value) = match b.iter().position(|x| *x == 0) {
            Some(i) => (&b[..i], &b[i + 1..]),
            None => (b, &b[..0]),
        };
        let (name, error) = hookrelay::kafka::record::header_name(name, 0);
        let mut r = record(&payload, vec![(name, value.to_vec())]);
        r.header_error = error;
        let _ = hookrelay::dispatch::consume::parse_i64(value);
        let _ = decode_send(&r, &rules, false);
        let _ = decode_retry(&r, &rules);
    });
}

#[test]
fn retry_after_values() {
    let now = 1_700_000_000_000;
    let policy = RetryPolicy::default();
    let failure = hookrelay::dispatch::classify::Failure {
        status: 503,
        source: hookrelay::dispatch::classify::FailureSource::ExternalEndpoint,
        reason: String::new(),
        retriable: true,
        raw_response: None,
        content_length: None,
        retry_after: None,
        requested: false,
    };
    let seeds = vec![
        b"120".to_vec(),
        b"Wed, 21 Oct 2015 07:28:00 GMT".to_vec(),
        b"Sun, 06 Nov 1994 08:49:37 GMT".to_vec(),
        b"18446744073709551615".to_vec(),
    ];
    fuzz("Retry-After", 5, &seeds, |b| {
        let text = String::from_utf8_lossy(b);
        if let Some(d) = parse_retry_after(&text, now) {
            let _ = policy.decide(
                &failure,
                1,
                1_700_000_000_000,
                1_700_000_000_000,
                Some(d),
                0.5,
            );
        }
        let _ = parse_retry_after(&text, hookrelay::clock::now_ms());
    });
}

#[test]
fn configuration_files_and_environment() {
    let seeds = vec![
        include_bytes!("../hookrelay.example.toml").to_vec(),
        include_bytes!("../compose/hookrelay.toml").to_vec(),
        b"[kafka]\nbootstrap_servers = \"k:9092\"\n[dispatch]\nmax_in_flight = 0\n".to_vec(),
    ];
    // Config files are small: a tenth of the inputs keeps the long run under a few minutes.
    let env_seeds = vec![
        b"HOOKRELAY_HTTP__REQUEST_TIMEOUT=30s".to_vec(),
        b"HOOKRELAY_DISPATCH__ALLOWED_METHODS=[\"POST\"]".to_vec(),
    ];
    fuzz("configuration (TOML)", 6, &seeds, |b| {
        let _ = Config::load_str(&String::from_utf8_lossy(b), Vec::<(String, String)>::new());
    });
    fuzz("configuration (environment)", 7, &env_seeds, |b| {
        let text = String::from_utf8_lossy(b);
        let (k, v) = text.split_once('=').unwrap_or((&text, ""));
        let _ = Config::load_str("", [(k.to_string(), v.to_string())]);
    });
}

#[test]
fn alert_records_read_back_by_the_aggregator() {
    let seeds = vec![br#"{"workspace_id":"ws","status":"pending","decided_at_ms":1,"count":5,"threshold":3,"recipients":["a@b.c"],"sent_at_ms":null,"delivered_to":null}"#.to_vec()];
    fuzz("alert record", 8, &seeds, |b| {
        let _ = serde_json::from_slice::<hookrelay::aggregate::state::AlertRecord>(b);
    });
}

#[test]
fn checkpoint_records_restored_by_the_aggregator() {
    use hookrelay::aggregate::checkpoint::{
        choose_start, encode, Deltas, Folder, Marker, SavedRow, WorkspaceRecord,
    };
    use hookrelay::aggregate::ledger::Ledger;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let minute = now / 60_000;
    let record = WorkspaceRecord {
        offset: 3,
        name: "Acme".into(),
        buckets: Deltas::encode(&[(minute - 5, 2), (minute, 1)]),
        rows: vec![SavedRow {
            kind: 1,
            message_id: "cmp".into(),
            endpoint_url: "https://hooks.example/a".into(),
            code: 503,
            message_name: "Spring".into(),
            last_seen_ms: now,
            slots: Deltas::encode(&[(now / 900_000, 3)]),
        }],
    };
    let marker = Marker {
        offset: 3,
        written_at_ms: now,
        span_minutes: 1440,
    };
    let seeds = vec![encode(&record), encode(&marker)];
    fuzz("checkpoint record", 9, &seeds, |b| {
        let mut folder = Folder::new([0]);
        folder.apply(b"w/0/ws", Some(b));
        folder.apply(b"c/0", Some(b));
        folder.apply(b, Some(b));
        let found = folder.finish().remove(&0).unwrap_or_default();
        let _ = choose_start(&found, 0, 10, now, 1440);
        let mut ledger = Ledger::new(86_400_000, 20, &[503]);
        ledger.restore(0, found.workspaces, now);
    });
}

#[test]
fn commit_metadata_read_back_by_a_partition_s_next_owner() {
    use hookrelay::dispatch::consume::finished_ahead::{decode, encode, ranges_of};
    let seeds = vec![
        encode(1_000, ranges_of([1_003, 1_004, 1_005, 1_009, 1_200])).into_bytes(),
        encode(0, ranges_of((1..400).map(|i| i * 3))).into_bytes(),
    ];
    fuzz("commit metadata", 9, &seeds, |b| {
        let _ = decode(42, b);
    });
}
