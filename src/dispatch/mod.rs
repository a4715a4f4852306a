//! `hookrelay dispatch`: send requests in, webhooks out, failure events and dead letters published, offsets
//! committed only once each outcome is durable.

pub mod classify;
pub mod consumer;
pub mod delivery;
pub mod host_health;
pub mod http;
pub mod limits;
pub mod parking;
pub mod pipeline;
pub mod plan;
pub mod report;
pub mod retry;
pub mod tiers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::client::{consumer_config, producer_config};
use crate::kafka::publish::{Publisher, PublisherParts};
use crate::telemetry::{DispatchMetrics, Health};
use consumer::{DispatchContext, LoopSettings, Shared};
use delivery::Delivery;
use pipeline::Pipeline;
use tiers::Tiers;

/// Runs a dispatcher until `shutdown` is cancelled and its work is drained or handed off.
pub async fn run(
    config: &Config,
    metrics: DispatchMetrics,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (kafka, required) = (config.kafka.clone(), config.topics.dispatch_topics());
    tokio::task::spawn_blocking(move || {
        crate::kafka::topics::require(&kafka, &required, kafka.startup_timeout)
    })
    .await
    .context("topic check panicked")??;
    let producer: FutureProducer = producer_config(&config.kafka)
        .create()
        .context("creating the Kafka producer")?;
    // Cancelled only after the consumer has stopped, so draining sends can still publish their outcomes.
    let publish_stop = CancellationToken::new();
    // Cancelled by a fatal producer error: the process drains what it can and exits non-zero.
    let fatal = CancellationToken::new();
    let publisher = Publisher::new(PublisherParts {
        producer: producer.clone(),
        topics: config.topics.clone(),
        events: config.events.clone(),
        metrics: metrics.clone(),
        shutdown: publish_stop.clone(),
        fatal: fatal.clone(),
        health: health.clone(),
        max_message_bytes: crate::kafka::client::max_message_bytes(&config.kafka),
    });
    let (on_fatal, stopping) = (
        (fatal.clone(), shutdown.clone()),
        (shutdown.clone(), health.clone()),
    );
    tokio::spawn(async move {
        on_fatal.0.cancelled().await;
        on_fatal.1.cancel();
    });
    tokio::spawn(async move {
        stopping.0.cancelled().await;
        stopping.1.set_stopping();
    });
    let signer = crate::security::signing::Signer::from_config(&config.signing)
        .map_err(|p| anyhow::anyhow!("signing secrets: {}", p.join("; ")))?;
    let tiers = Tiers::from_config(&config.topics);
    let pipeline = Arc::new(Pipeline {
        delivery: Delivery {
            executor: http::Executor::new(&config.http, &config.security, signer)
                .context("creating the HTTP client")?,
            metrics: metrics.clone(),
            limiter: Arc::new(Semaphore::new(config.dispatch.max_in_flight)),
            host_limits: limits::HostLimits::new(config.dispatch.max_in_flight_per_host),
            host_health: std::sync::Mutex::new(host_health::HostHealth::new(
                config.host_health.clone(),
            )),
        },
        publisher,
        metrics: metrics.clone(),
        rules: crate::events::Rules::from_config(config),
        accept_plain_avro: config.dispatch.accept_plain_avro,
        retry: config.retry.clone(),
        tiers: tiers.clone(),
    });
    let shared = Arc::new(Shared::new(
        config.dispatch.rebalance_grace,
        metrics.clone(),
        health.clone(),
    ));
    let owned = shared.clone();
    let report = crate::kafka::probe::Report {
        health: health.clone(),
        gauges: metrics.kafka.clone(),
        owned: Arc::new(move || owned.assigned()),
    };
    crate::kafka::probe::start(
        config,
        &config.kafka.dispatch_group_id,
        config.topics.dispatch_topics(),
        report,
        shutdown.clone(),
    )
    .context("starting the Kafka probe")?;
    let consumer: BaseConsumer<DispatchContext> =
        consumer_config(&config.kafka, &config.kafka.dispatch_group_id)
            .create_with_context(DispatchContext { shared })
            .context("creating the Kafka consumer")?;
    let mut topics: Vec<&str> = vec![&config.topics.sends];
    topics.extend(tiers.topics());
    consumer
        .subscribe(&topics)
        .with_context(|| format!("subscribing to {}", topics.join(", ")))?;
    tracing::info!(topic = %config.topics.sends, group = %config.kafka.dispatch_group_id, "dispatcher started");
    let settings = LoopSettings {
        max_pending_per_partition: config.dispatch.max_pending_per_partition,
        tiers,
        commit_interval: config.dispatch.commit_interval,
        shutdown_grace: config.dispatch.shutdown_grace,
    };
    let runtime = tokio::runtime::Handle::current();
    let stop = shutdown.clone();
    let grace_ends = tokio::task::spawn_blocking(move || {
        consumer::poll_loop(consumer, pipeline, runtime, settings, stop)
    })
    .await
    .context("consumer thread panicked")?;
    publish_stop.cancel();
    // Outcomes not yet acknowledged belong to uncommitted records, which the next owner redoes; the flush
    // only has to fit in what is left of the grace.
    let flush_for = grace_ends.map_or(Duration::from_secs(10), |t| {
        t.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(500))
    });
    if let Err(e) = producer.flush(flush_for) {
        tracing::warn!(error = %e, "producer not flushed within the shutdown grace; unacknowledged outcomes will be redone");
    }
    if let Some(why) = health.fatal() {
        anyhow::bail!("stopped after a fatal error: {why}");
    }
    tracing::info!("dispatcher stopped");
    Ok(())
}
