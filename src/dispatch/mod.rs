//! `hookrelay dispatch`: send requests in, webhooks out, failure events and dead letters published, offsets
//! committed only once each outcome is durable.

pub mod classify;
pub mod consumer;
pub mod http;
pub mod pipeline;
pub mod publish;

use std::sync::Arc;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::kafka::client::{consumer_config, producer_config};
use crate::telemetry::{DispatchMetrics, Health};
use consumer::{DispatchContext, LoopSettings, Shared};
use pipeline::Pipeline;
use publish::Publisher;

/// Runs a dispatcher until `shutdown` is cancelled and its work is drained or handed off.
pub async fn run(
    config: &Config,
    metrics: DispatchMetrics,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let producer: FutureProducer = producer_config(&config.kafka)
        .create()
        .context("creating the Kafka producer")?;
    // Cancelled only after the consumer has stopped, so draining sends can still publish their outcomes.
    let publish_stop = CancellationToken::new();
    let publisher = Publisher::new(
        producer.clone(),
        config.topics.clone(),
        config.events.clone(),
        metrics.clone(),
        publish_stop.clone(),
    );
    let pipeline = Arc::new(Pipeline {
        executor: http::Executor::new(&config.http).context("creating the HTTP client")?,
        publisher,
        metrics: metrics.clone(),
        allowed_methods: config.dispatch.allowed_methods.clone(),
        accept_plain_avro: config.dispatch.accept_plain_avro,
        limiter: Arc::new(Semaphore::new(config.dispatch.max_in_flight)),
    });
    let shared = Arc::new(Shared::new(
        config.dispatch.rebalance_grace,
        metrics.clone(),
        health,
    ));
    let consumer: BaseConsumer<DispatchContext> =
        consumer_config(&config.kafka, &config.kafka.dispatch_group_id)
            .create_with_context(DispatchContext { shared })
            .context("creating the Kafka consumer")?;
    consumer
        .subscribe(&[&config.topics.sends])
        .with_context(|| format!("subscribing to {}", config.topics.sends))?;
    tracing::info!(topic = %config.topics.sends, group = %config.kafka.dispatch_group_id, "dispatcher started");
    let settings = LoopSettings {
        max_pending_per_partition: config.dispatch.max_pending_per_partition,
        commit_interval: config.dispatch.commit_interval,
        shutdown_grace: config.dispatch.shutdown_grace,
    };
    let runtime = tokio::runtime::Handle::current();
    let stop = shutdown.clone();
    tokio::task::spawn_blocking(move || {
        consumer::poll_loop(consumer, pipeline, runtime, settings, stop)
    })
    .await
    .context("consumer thread panicked")?;
    publish_stop.cancel();
    producer
        .flush(std::time::Duration::from_secs(10))
        .context("flushing the producer")?;
    tracing::info!("dispatcher stopped");
    Ok(())
}
