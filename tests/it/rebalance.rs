//! Rebalances that are quick: a dispatcher joining the group, or leaving it on SIGTERM, moves partitions in
//! seconds. Where the broker speaks KIP-848 the group does (`kafka::protocol` probes for it at start-up);
//! elsewhere it stays classic.

use std::time::{Duration, Instant};

use hookrelay::kafka::protocol::{probe, GroupProtocol};

use crate::support::tansu::Tansu;
use crate::support::*;

const OWNED: &str = "hookrelay_assigned_partitions";

async fn probed(config: &hookrelay::config::Config) -> GroupProtocol {
    let (kafka, topic) = (config.kafka.clone(), config.topics.sends.clone());
    tokio::task::spawn_blocking(move || {
        probe(&kafka, "probe-test", &topic, Duration::from_secs(10))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_speaks_kip_848_where_the_broker_does_and_classic_where_it_does_not() {
    let kafka = Kafka::start(2);
    assert_eq!(probed(&kafka.config).await, GroupProtocol::Consumer);
    let Some(tansu) = Tansu::start(2) else {
        return;
    };
    let started = Instant::now();
    assert_eq!(probed(&tansu.config).await, GroupProtocol::Classic);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "tansu's refusal is known at once, not at the probe's deadline: {:?}",
        started.elapsed()
    );
}

async fn owned(d: &ChildDispatcher) -> u32 {
    d.metric(OWNED).await.unwrap_or(0.0) as u32
}

/// Two dispatchers that chose their protocol by probing, on the embedded broker (KIP-848): the second
/// takes its share within 10 s of starting, and on SIGTERM gives it back within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_joining_or_leaving_on_sigterm_moves_partitions_within_10_s() {
    let kafka = Kafka::start(12);
    joining_and_leaving(&kafka.config, Duration::from_secs(10)).await;
}

/// The same on tansu, which speaks the classic protocol only. A difference from Kafka: tansu holds each
/// round of a classic rebalance for about half the session timeout (10 s here, hookrelay's default), and a
/// cooperative join takes two rounds, so a join takes 15–20 s there (measured: 18.3 s; 82 s with
/// librdkafka's default 45 s session). Leaving takes one round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tansu_a_dispatcher_joining_or_leaving_on_sigterm_moves_partitions_within_10_s() {
    let Some(tansu) = Tansu::start_with(12, 2) else {
        return;
    };
    joining_and_leaving(&tansu.config, Duration::from_secs(30)).await;
}

/// The send topic has 12 partitions and every retry tier 2: the second dispatcher owns some within
/// `join_within` of starting, and the first all again within 10 s of the second's SIGTERM.
async fn joining_and_leaving(config: &hookrelay::config::Config, join_within: Duration) {
    let all = 12 + 2 * config.topics.retry_tiers.len() as u32;
    let a = ChildDispatcher::spawn_probing(config);
    wait_for(
        "the first owns every partition",
        Duration::from_secs(90),
        || async { owned(&a).await == all },
    )
    .await;
    let started = Instant::now();
    let mut b = ChildDispatcher::spawn_probing(config);
    wait_for(
        "the second owns partitions and the two own every one",
        join_within,
        || async {
            let (x, y) = (owned(&a).await, owned(&b).await);
            y > 0 && x + y == all
        },
    )
    .await;
    let joined = started.elapsed();
    let stopping = Instant::now();
    assert!(b.terminate().success());
    wait_for(
        "the first owns every partition again",
        Duration::from_secs(10),
        || async { owned(&a).await == all },
    )
    .await;
    eprintln!(
        "join: partitions shared {joined:?} after the second started (its start-up included); \
         leave: back {:?} after SIGTERM",
        stopping.elapsed()
    );
}

/// Static membership as README's Kubernetes recipe sets it (`group.instance.id` from an environment
/// variable): a dispatcher with one delivers, reports its host state under that id, is stopped with SIGTERM
/// (a static member does not leave the group: its partitions wait for it, up to the session timeout), and
/// one started under the same id takes them and delivers the rest — nothing lost. That a returning static
/// member gets its partitions back without a rebalance is the broker's part, and neither test broker does
/// it (both match members by member id), so it is not asserted here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_stopped_and_started_again_under_its_id_delivers_everything() {
    let kafka = Kafka::start(4).without_retries();
    static_member_restarts(&kafka.config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tansu_a_static_member_stopped_and_started_again_under_its_id_delivers_everything() {
    let Some(tansu) = Tansu::start(4) else {
        return;
    };
    static_member_restarts(&tansu.config).await;
}

async fn static_member_restarts(config: &hookrelay::config::Config) {
    let rx = receiver().await;
    let id = [(
        "HOOKRELAY_KAFKA__CONSUMER_PROPERTIES__GROUP_INSTANCE_ID",
        "pod-0",
    )];
    let mut first = ChildDispatcher::spawn_logged_with(config, &id);
    wait_for("it owns partitions", Duration::from_secs(90), || async {
        owned(&first).await > 0
    })
    .await;
    spread(config, "before", 20, &rx.url("/hook?status=200")).await;
    wait_for(
        "the first sends delivered",
        Duration::from_secs(30),
        || async { rx.stats().delivered_ids >= 20 },
    )
    .await;
    wait_for(
        "its host state shared under its id",
        Duration::from_secs(10),
        || async { first.log().contains("instance=pod-0") },
    )
    .await;
    assert!(first.terminate().success(), "a clean stop");
    spread(config, "after", 20, &rx.url("/hook?status=200")).await;
    let second = ChildDispatcher::spawn_ready(config, &id).await;
    wait_for("every send delivered", Duration::from_secs(60), || async {
        rx.stats().delivered_ids >= 40
    })
    .await;
    drop(second);
    assert_eq!(
        rx.stats().delivered_ids,
        40,
        "every send, once each at least"
    );
}
