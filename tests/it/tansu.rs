//! The end-to-end path on tansu, a second, independent Kafka-compatible broker (see `support::tansu`):
//! consumed, delivered, retried through a tier topic, committed — as on the embedded broker.
//!
//! Where tansu differs from Kafka here: a consumer group's first assignment took from 4 s to 23 s in these
//! runs (the embedded broker: about 3 s), so these tests wait up to 90 s for it.

use std::time::Duration;

use crate::support::tansu::Tansu;
use crate::support::{receiver, send, wait_for, ChildDispatcher};
use hookrelay::tools::harness::SendProducer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tansu_sends_are_delivered_retried_through_a_tier_and_committed() {
    let Some(tansu) = Tansu::start(2) else {
        return;
    };
    let rx = receiver().await;
    let d = ChildDispatcher::spawn_ready(&tansu.config, &[]).await;
    let producer = SendProducer::new(&tansu.config.kafka, &tansu.config.topics.sends).unwrap();
    for i in 0..18 {
        producer
            .json(&send(&format!("ok-{i}"), &rx.url("/ok")))
            .await
            .unwrap();
    }
    for i in 0..2 {
        let s = send(&format!("flaky-{i}"), &rx.url("/flaky?seq=503,200"));
        producer.json(&s).await.unwrap();
    }
    wait_for(
        "every send is delivered, the flaky ones on their retry",
        Duration::from_secs(90),
        || async { rx.stats().by_status.get(&200).copied().unwrap_or(0) >= 20 },
    )
    .await;
    for i in 0..2 {
        let got: Vec<u16> = rx
            .requests_for(&format!("flaky-{i}"))
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(got, [503, 200], "flaky-{i} went through a retry tier once");
    }
    wait_for(
        "the offsets are committed on tansu and nothing is pending",
        Duration::from_secs(30),
        || async {
            d.metric("hookrelay_offset_commits_total{result=\"ok\"}")
                .await
                .unwrap_or(0.0)
                >= 1.0
                && d.metric("hookrelay_pending_records").await == Some(0.0)
                && d.metric("hookrelay_delivered_after_retry_total").await == Some(2.0)
        },
    )
    .await;
}
