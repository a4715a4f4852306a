//! One slow host slows no one else, end to end with `hookrelay dispatch` as a child process: a host at its
//! `max_in_flight_per_host` queues its own sends and spills the excess to a retry tier, the global slots are
//! shared fairly, and the memory budget holds whatever the backlog.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::{accounted, receiver_on, send, wait_for, ChildDispatcher, Kafka};
use hookrelay::tools::harness::{OutputReader, SendProducer};
use hookrelay::tools::receiver::Receiver;

/// Sends to produce: `(id, url)`.
type Plan = Vec<(String, String)>;

/// `n` sends with ids `<prefix>0…` to `url`.
fn sends(prefix: &str, n: usize, url: &str) -> Plan {
    (0..n)
        .map(|i| (format!("{prefix}{i}"), url.to_string()))
        .collect()
}

/// Takes from each plan in turn, so the hosts' sends share partitions in the order a mixed producer writes.
fn interleave(plans: Vec<Plan>) -> Plan {
    let mut iters: Vec<_> = plans.into_iter().map(Vec::into_iter).collect();
    let mut out = Vec::new();
    loop {
        let before = out.len();
        for it in &mut iters {
            out.extend(it.next());
        }
        if out.len() == before {
            return out;
        }
    }
}

/// Produces every send, in order, 500 a second (a steady producer: the test measures isolation, not how
/// fast the unoptimised test build works off a burst), and returns when the broker acknowledged each (UNIX
/// ms): from then on its latency is the dispatcher's, not a new producer's first metadata request's.
async fn produce(producer: &SendProducer, plan: &Plan) -> HashMap<String, i64> {
    let mut produced = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for chunk in plan.chunks(50) {
        tick.tick().await;
        let futures = chunk.iter().map(|(id, url)| {
            let s = send(id, url);
            async move {
                producer.json(&s).await.expect("produced");
                (id.clone(), hookrelay::clock::now_ms())
            }
        });
        produced.extend(futures::future::join_all(futures).await);
    }
    produced
}

/// The 99th percentile of produce → first arrival at `rx`, in seconds, over the sends `rx` received.
fn p99_latency(rx: &Receiver, produced: &HashMap<String, i64>) -> f64 {
    let mut first: HashMap<String, i64> = HashMap::new();
    for r in rx.requests() {
        if let Some(id) = r.webhook_id {
            let at = first.entry(id).or_insert(r.at_unix_ms);
            *at = (*at).min(r.at_unix_ms);
        }
    }
    let mut lat: Vec<i64> = first
        .iter()
        .filter_map(|(id, at)| produced.get(id).map(|p| at - p))
        .collect();
    lat.sort_unstable();
    let i = (lat.len() * 99 / 100).min(lat.len().saturating_sub(1));
    lat.get(i).copied().unwrap_or_default() as f64 / 1000.0
}

async fn delivered(rx: &Receiver, n: u64, within: Duration, what: &str) {
    wait_for(what, within, || async {
        rx.stats().by_status.get(&200).copied().unwrap_or(0) >= n
    })
    .await;
}

/// The fast host's p99 with nothing else going on: 500 sends alone, measured the same way.
async fn p99_alone(kafka: &Kafka, fast: &Receiver) -> f64 {
    let produced = produce(&kafka.producer(), &sends("alone", 500, &fast.url("/hook"))).await;
    delivered(
        fast,
        500,
        Duration::from_secs(30),
        "the fast sends alone are delivered",
    )
    .await;
    p99_latency(fast, &produced)
}

/// Produces `plan` (its fast sends to `fast`, 1,000 of them), waits until every fast one is delivered and
/// asserts the fast host's p99 is within 1 s of `alone`.
async fn assert_fast_beside(kafka: &Kafka, fast: &Receiver, plan: &Plan, alone: f64, what: &str) {
    let produced = produce(&kafka.producer(), plan).await;
    delivered(
        fast,
        1_500,
        Duration::from_secs(30),
        "every fast send is delivered",
    )
    .await;
    let p99 = p99_latency(fast, &produced);
    eprintln!("isolation: {what}: fast host p99 {p99:.3} s, alone {alone:.3} s");
    assert!(
        p99 <= alone + 1.0,
        "{what}: the fast host's p99 is {p99:.3} s, {alone:.3} s alone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_answering_in_3_s_does_not_slow_a_fast_host_in_the_same_partitions() {
    let kafka = Kafka::start(4);
    let fast = receiver_on("127.0.0.1").await;
    let slow = receiver_on("127.0.0.2").await;
    let d =
        ChildDispatcher::spawn_ready(&kafka.config, &[("HOOKRELAY_HTTP__REQUEST_TIMEOUT", "4s")])
            .await;
    let alone = p99_alone(&kafka, &fast).await;
    let plan = interleave(vec![
        sends("slow", 1_500, &slow.url("/hook?delay=3s")),
        sends("fast", 1_000, &fast.url("/hook")),
    ]);
    assert_fast_beside(&kafka, &fast, &plan, alone, "beside one 3 s host").await;
    // A new host starts with a quarter of its slots and gains one per answer: 32, 64, then 128 at once.
    wait_for(
        "the slow host has reached its max_in_flight_per_host",
        Duration::from_secs(60),
        || async { slow.stats().max_concurrent >= 128 },
    )
    .await;
    wait_for(
        "the slow host has had all its slots in use for a round",
        Duration::from_secs(30),
        || async { slow.count() >= 32 + 64 + 128 + 128 },
    )
    .await;
    assert_eq!(
        slow.stats().max_concurrent,
        128,
        "the slow host gets max_in_flight_per_host requests at a time, never more"
    );
    let spilled = d
        .metric("hookrelay_spilled_sends_total{reason=\"queue_full\"}")
        .await
        .unwrap_or(0.0);
    assert!(
        spilled > 0.0,
        "1,500 sends at 128 in flight and 512 queued spill some"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_slow_hosts_do_not_slow_a_fast_host() {
    let kafka = Kafka::start(4);
    let fast = receiver_on("127.0.0.1").await;
    let mut slow = Vec::new();
    for i in 2..10 {
        slow.push(receiver_on(&format!("127.0.0.{i}")).await);
    }
    let _d =
        ChildDispatcher::spawn_ready(&kafka.config, &[("HOOKRELAY_HTTP__REQUEST_TIMEOUT", "4s")])
            .await;
    let alone = p99_alone(&kafka, &fast).await;
    let mut plans: Vec<Plan> = slow
        .iter()
        .enumerate()
        .map(|(i, rx)| sends(&format!("slow{i}-"), 300, &rx.url("/hook?delay=3s")))
        .collect();
    plans.push(sends("fast", 1_000, &fast.url("/hook")));
    let plan = interleave(plans);
    assert_fast_beside(&kafka, &fast, &plan, alone, "beside eight 3 s hosts").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_never_answers_delays_no_one_and_each_of_its_sends_ends_as_the_rules_say() {
    let mut kafka = Kafka::start(4);
    kafka.config.retry.max_retries = 1;
    kafka.config.retry.unreachable_max_retries = 1;
    let fast = receiver_on("127.0.0.1").await;
    let hanging = receiver_on("127.0.0.2").await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let d =
        ChildDispatcher::spawn_ready(&kafka.config, &[("HOOKRELAY_HTTP__REQUEST_TIMEOUT", "2s")])
            .await;
    let alone = p99_alone(&kafka, &fast).await;
    let hang_ids = sends("hang", 1_000, &hanging.url("/hook?hang=1"));
    let plan = interleave(vec![
        hang_ids.clone(),
        sends("fast", 1_000, &fast.url("/hook")),
    ]);
    assert_fast_beside(
        &kafka,
        &fast,
        &plan,
        alone,
        "beside a host that never answers",
    )
    .await;
    wait_for(
        "every send-topic offset is committed: no partition waits for the hanging host",
        Duration::from_secs(30),
        || async { kafka.committed(4).await.values().sum::<i64>() == plan.len() as i64 + 500 },
    )
    .await;
    let terminal = |o: &hookrelay::tools::harness::Observed| {
        o.failures
            .iter()
            .filter(|e| e.is_terminal == Some(true))
            .filter_map(|e| e.dispatch_id.clone())
            .collect::<std::collections::HashSet<_>>()
    };
    let seen = reader
        .wait_until(Duration::from_secs(120), |o| {
            terminal(o).len() >= hang_ids.len()
        })
        .await;
    let ends = terminal(&seen);
    let missing: Vec<&String> = hang_ids
        .iter()
        .map(|(id, _)| id)
        .filter(|id| !ends.contains(&format!("dispatch-{id}")) && !ends.contains(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "hanging sends without a terminal failure event: {}",
        missing.len()
    );
    let timeouts: usize = seen
        .failures
        .iter()
        .filter(|e| e.http_status_code == Some(599))
        .count();
    assert!(
        timeouts >= 2 * hang_ids.len(),
        "each hanging send timed out (599) and was retried once: {timeouts} 599 events for {}",
        hang_ids.len()
    );
    assert!(
        d.metric("hookrelay_spilled_sends_total{reason=\"queue_wait\"}")
            .await
            .unwrap_or(0.0)
            + d.metric("hookrelay_spilled_sends_total{reason=\"queue_full\"}")
                .await
                .unwrap_or(0.0)
            > 0.0,
        "the hanging host's excess was spilled"
    );
    reader.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unlimited_host_is_done_before_a_rate_limited_host_s_backlog_of_5000() {
    let mut kafka = Kafka::start(4);
    kafka.config.rate_limits.insert("127.0.0.2".into(), 20.0);
    let free = receiver_on("127.0.0.1").await;
    let limited = receiver_on("127.0.0.2").await;
    let plan = interleave(vec![
        sends("limited", 5_000, &limited.url("/hook")),
        sends("free", 500, &free.url("/hook")),
    ]);
    produce(&kafka.producer(), &plan).await;
    let _d = ChildDispatcher::spawn(&kafka.config);
    delivered(
        &free,
        500,
        Duration::from_secs(60),
        "every unlimited send is delivered",
    )
    .await;
    let limited_so_far = limited.count();
    assert!(
        limited_so_far < 1_000,
        "the unlimited host waited for the limited one ({limited_so_far} limited requests first)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_killed_while_a_slow_host_spills_loses_no_send_after_a_restart() {
    let kafka = Kafka::start(4);
    let fast = receiver_on("127.0.0.1").await;
    let slow = receiver_on("127.0.0.2").await;
    let reader = OutputReader::start(&kafka.config).await.unwrap();
    let extra = [
        ("HOOKRELAY_HTTP__REQUEST_TIMEOUT", "4s"),
        ("HOOKRELAY_DISPATCH__MAX_IN_FLIGHT_PER_HOST", "64"),
        ("HOOKRELAY_DISPATCH__MAX_QUEUED_PER_HOST", "64"),
    ];
    let mut first = ChildDispatcher::spawn_ready(&kafka.config, &extra).await;
    let plan = interleave(vec![
        sends("slow", 800, &slow.url("/hook?delay=1s")),
        sends("fast", 400, &fast.url("/hook")),
    ]);
    produce(&kafka.producer(), &plan).await;
    wait_for("the slow host spills", Duration::from_secs(30), || async {
        first
            .metric("hookrelay_spilled_sends_total{reason=\"queue_full\"}")
            .await
            .unwrap_or(0.0)
            >= 100.0
            && slow.count() >= 64
    })
    .await;
    first.kill();
    let _second = ChildDispatcher::spawn_with(&kafka.config, &extra);
    let ids: Vec<String> = plan.iter().map(|(id, _)| id.clone()).collect();
    wait_for(
        "every send is delivered at one receiver or the other",
        Duration::from_secs(120),
        || async {
            let (a, _) = accounted(&fast, &reader.snapshot());
            let (b, _) = accounted(&slow, &reader.snapshot());
            a.len() + b.len() >= ids.len()
        },
    )
    .await;
    let (a, _) = accounted(&fast, &reader.snapshot());
    let (b, _) = accounted(&slow, &reader.snapshot());
    let missing: Vec<&String> = ids
        .iter()
        .filter(|id| !a.contains(*id) && !b.contains(*id))
        .collect();
    assert!(missing.is_empty(), "lost sends: {missing:?}");
    reader.stop();
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_far_over_the_memory_budget_is_taken_only_as_sends_finish_and_stays_within_it() {
    let kafka = Kafka::start(8);
    let rx = receiver_on("127.0.0.1").await;
    let extra = [
        ("HOOKRELAY_DISPATCH__MEMORY_BUDGET", "16MiB"),
        ("HOOKRELAY_DISPATCH__MAX_IN_FLIGHT", "500"),
        ("HOOKRELAY_DISPATCH__MAX_IN_FLIGHT_PER_HOST", "500"),
    ];
    // 12,000 sends of about 4 KB, which cost ~120 MB held at once: far over 16 MiB.
    let body = "x".repeat(4_000);
    let producer = kafka.producer();
    for chunk in 0..24 {
        let futures = (0..500).map(|i| {
            let mut s = send(&format!("m{chunk}-{i}"), &rx.url("/hook?delay=500ms"));
            s.webhook.body = Some(body.clone());
            let producer = &producer;
            async move { producer.json(&s).await }
        });
        for r in futures::future::join_all(futures).await {
            r.unwrap();
        }
    }
    let d = ChildDispatcher::spawn_with(&kafka.config, &extra);
    let pid = d.child.id();
    let peaks = std::sync::Mutex::new((0.0f64, 0u64));
    wait_for(
        "the backlog is delivered",
        Duration::from_secs(120),
        || async {
            let held = d.metric("hookrelay_held_bytes").await.unwrap_or(0.0);
            let mut p = peaks.lock().unwrap();
            *p = (p.0.max(held), p.1.max(rss(pid)));
            rx.count() >= 12_000
        },
    )
    .await;
    let (peak_held, peak_rss) = *peaks.lock().unwrap();
    let pauses = d
        .metric("hookrelay_memory_budget_reached_total")
        .await
        .unwrap_or(0.0);
    eprintln!(
        "memory budget test: peak held {peak_held} B, peak RSS {} MB, {pauses} pauses",
        peak_rss >> 20
    );
    assert!(
        pauses >= 1.0,
        "the budget was reached and slowed the consumer"
    );
    // The held records never pass the budget by more than one fetch's worth of records in transit.
    assert!(
        peak_held <= 16.0 * 1024.0 * 1024.0 * 1.25,
        "held {peak_held} bytes"
    );
    // Budget + 25 KB per request in flight (the HTTP client's floor) + the process itself.
    let bound = (16 << 20) + 500 * 25_000 + (96 << 20);
    assert!(
        peak_rss <= bound,
        "resident memory {} MB over {} MB",
        peak_rss >> 20,
        bound >> 20
    );
}
