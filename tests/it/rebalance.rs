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
