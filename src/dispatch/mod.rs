//! `hookrelay dispatch`: send requests in, webhooks out, failure events and dead letters published, offsets
//! committed only once each outcome is durable.

pub mod classify;
pub mod consume;
mod currents;
mod decode;
pub(crate) mod delivery;
mod host_state;
pub(crate) mod http;
pub mod lane;
mod no_attempt;
pub mod outcome;
pub mod pipeline;
pub mod plan;
pub(crate) mod publish;
pub mod report;
pub mod retry;
mod schemas;
pub mod tiers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, Producer};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::events::currents::CurrentsKind;
use crate::kafka::client::{consumer_config, producer_config};
use crate::telemetry::{DispatchMetrics, Health};
use consume::{DispatchContext, LoopSettings, Shared};
use delivery::Delivery;
use pipeline::Pipeline;
use publish::{CurrentsTopics, Publisher, PublisherParts};
use tiers::Tiers;

/// Runs a dispatcher until `shutdown` is cancelled and its work is drained or handed off.
pub async fn run(
    config: &Config,
    metrics: DispatchMetrics,
    health: Health,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    crate::kafka::topics::require_at_start(&config.kafka, required_topics(config)).await?;
    let group = &config.kafka.dispatch_group_id;
    let config = &crate::kafka::protocol::settled(config, group, &config.topics.sends).await;
    let writers = crate::registry::Writers::connect(&config.schema_registry).await?;
    let producer: FutureProducer = producer_config(&config.kafka)
        .create()
        .context("creating the Kafka producer")?;
    // Cancelled only after the consumer has stopped, so draining sends can still publish their outcomes
    // (and the fleet still hears what this dispatcher sends).
    let publish_stop = CancellationToken::new();
    // And on any early return, so the host-state thread never outlives the dispatcher.
    let _stopped = publish_stop.clone().drop_guard();
    // Cancelled by a fatal producer error: the process drains what it can and exits non-zero.
    let fatal = CancellationToken::new();
    watch(&fatal, &shutdown, &health);
    let parts = PublisherParts {
        producer: producer.clone(),
        topics: config.topics.clone(),
        events: config.events.clone(),
        metrics: metrics.clone(),
        shutdown: publish_stop.clone(),
        fatal,
        health: health.clone(),
        max_message_bytes: crate::kafka::client::max_message_bytes(&config.kafka),
        currents: CurrentsTopics::default(),
        acks: Arc::default(),
        client: producer_config(&config.kafka),
    };
    let publisher = Publisher::new(event_framing(config, writers.as_ref(), parts).await?)
        .context("creating the Currents events' Kafka producer")?;
    let tiers = Tiers::from_config(&config.topics);
    let pipeline = Arc::new(pipeline(
        config,
        publisher,
        &metrics,
        tiers.clone(),
        (&shutdown, &publish_stop),
        writers,
    )?);
    let shared = Arc::new(Shared::new(
        config.dispatch.rebalance_grace,
        metrics.clone(),
        health.clone(),
        &config.topics.sends,
        pipeline.writes_currents.then(|| pipeline.publisher.acks()),
    ));
    let stopping = (shutdown.clone(), shared.clone());
    tokio::spawn(async move {
        stopping.0.cancelled().await;
        stopping.1.stop();
    });
    start_probe(config, &shared, &metrics, &health, &shutdown)?;
    let consumer = subscribe(config, shared, &tiers)?;
    let settings = loop_settings(config, &tiers);
    metrics
        .isolation
        .budget_bytes
        .set(i64::try_from(config.dispatch.memory_budget.as_u64()).unwrap_or(i64::MAX));
    let runtime = tokio::runtime::Handle::current();
    let stop = shutdown.clone();
    let grace_ends = tokio::task::spawn_blocking(move || {
        consume::poll_loop(
            consumer,
            pipeline as Arc<dyn consume::Handler>,
            runtime,
            settings,
            stop,
        )
    })
    .await
    .context("consumer thread panicked")?;
    publish_stop.cancel();
    flush(&producer, grace_ends);
    if let Some(why) = health.fatal() {
        anyhow::bail!("stopped after a fatal error: {why}");
    }
    tracing::info!("dispatcher stopped");
    Ok(())
}

/// What librdkafka may prefetch for the dispatcher: an eighth of `dispatch.memory_budget` (at most its
/// own default, 64 MiB), unless the operator set `queued.max.messages.kbytes`.
fn prefetch_kbytes(config: &Config) -> Option<u64> {
    if crate::kafka::client::operator_set(&config.kafka, "queued.max.messages.kbytes") {
        return None;
    }
    Some((config.dispatch.memory_budget.as_u64() / 8 / 1024).clamp(1024, 65_536))
}

/// The budget for held records: `dispatch.memory_budget` less what librdkafka's prefetch costs, counted at
/// twice the bytes it may queue (its fetch buffers and per-message structures: a 32 MiB prefetch was seen to
/// take 53 MB of librdkafka's heap at 10,000 in flight).
fn held_budget(config: &Config) -> usize {
    let budget = config.dispatch.memory_budget.as_u64();
    let prefetch = prefetch_kbytes(config).map_or(budget / 8, |kb| kb * 1024);
    usize::try_from(budget.saturating_sub(prefetch.saturating_mul(2))).unwrap_or(usize::MAX)
}

/// A fatal producer error stops the dispatcher; any stop makes it unready.
fn watch(fatal: &CancellationToken, shutdown: &CancellationToken, health: &Health) {
    let (fatal, stop) = (fatal.clone(), shutdown.clone());
    tokio::spawn(async move {
        fatal.cancelled().await;
        stop.cancel();
    });
    let (stop, health) = (shutdown.clone(), health.clone());
    tokio::spawn(async move {
        stop.cancelled().await;
        health.set_stopping();
    });
}

/// How the consumer thread takes records and commits.
fn loop_settings(config: &Config, tiers: &Tiers) -> LoopSettings {
    LoopSettings {
        max_pending_per_partition: config.dispatch.max_pending_per_partition,
        max_pending_bytes_per_partition: config.dispatch.max_pending_bytes_per_partition,
        // An eighth more than the requests in flight, so failure events and retries of finished attempts can
        // be written while the next requests go out; every started record holds its decoded send and the
        // handler's future, so not more.
        max_started: config
            .dispatch
            .max_in_flight
            .saturating_add((config.dispatch.max_in_flight / 8).max(64)),
        tier_delays: tiers.delays(),
        commit_interval: config.dispatch.commit_interval,
        shutdown_grace: config.dispatch.shutdown_grace,
        memory_budget: held_budget(config),
    }
}

/// The topics a dispatcher reads or writes: its own, those of the Currents events it writes, and the shared
/// host state when it shares it.
fn required_topics(config: &Config) -> Vec<String> {
    let mut topics = config.topics.dispatch_topics();
    topics.extend(currents_enabled(config).map(|(_, topic)| topic.clone()));
    if config.dispatch.share_host_state {
        topics.push(config.topics.host_state.clone());
    }
    topics
}

/// The Currents event kinds `[events]` enables, with their topics.
fn currents_enabled(config: &Config) -> impl Iterator<Item = (CurrentsKind, &String)> {
    let (e, t) = (&config.events, &config.topics);
    [
        (CurrentsKind::Send, e.send_events, &t.send_events),
        (CurrentsKind::Abort, e.abort_events, &t.abort_events),
        (CurrentsKind::Retry, e.retry_events, &t.retry_events),
    ]
    .into_iter()
    .filter(|(_, on, _)| *on)
    .map(|(kind, _, topic)| (kind, topic))
}

/// How events are framed: with a registry, Confluent's wire format with the id each schema has under
/// `<topic>-value` (registered or looked up at start-up); without one, as `[events]` says.
async fn event_framing(
    config: &Config,
    writers: Option<&crate::registry::Writers>,
    mut parts: PublisherParts,
) -> anyhow::Result<PublisherParts> {
    let register = config.schema_registry.auto_register;
    let schema_id = |topic: &str, schema: &'static str| {
        let (client, topic) = (
            writers.map(crate::registry::Writers::client),
            topic.to_string(),
        );
        async move {
            match client {
                Some(c) => crate::registry::value_schema_id(c, &topic, schema, register)
                    .await
                    .map(Some),
                None => Ok(None),
            }
        }
    };
    let events = &mut parts.events;
    if let Some(id) = schema_id(&config.topics.failures, crate::events::FAILURE_SCHEMA_JSON).await?
    {
        events.encoding = crate::config::EventEncoding::Confluent;
        events.schema_id = Some(id);
    }
    for (kind, topic) in currents_enabled(config) {
        let id = schema_id(topic, kind.schema_json()).await?;
        parts.currents.enable(kind, topic.clone(), id);
    }
    Ok(parts)
}

fn pipeline(
    config: &Config,
    publisher: Publisher,
    metrics: &DispatchMetrics,
    tiers: Tiers,
    (shutdown, stopped): (&CancellationToken, &CancellationToken),
    writers: Option<crate::registry::Writers>,
) -> anyhow::Result<Pipeline> {
    let signer = crate::security::signing::Signer::from_config(&config.signing)
        .map_err(|p| anyhow::anyhow!("signing secrets: {}", p.join("; ")))?;
    let executor = http::Executor::new(&config.http, &config.security, signer)
        .context("creating the HTTP client")?;
    let clock = crate::clock::Clock::start();
    let rules = crate::events::Rules::from_config(config);
    let registry = writers.map(|writers| {
        schemas::SendDecoder::new(
            writers,
            config.schema_registry.max_backoff,
            shutdown.clone(),
            metrics.clone(),
        )
    });
    Ok(Pipeline {
        writes_currents: publisher.writes_currents(),
        delivery: delivery(config, executor, metrics, clock, (shutdown, stopped))?,
        clock,
        publisher,
        metrics: metrics.clone(),
        rules,
        accept_plain_avro: config.dispatch.accept_plain_avro,
        registry,
        retry: config.retry.clone(),
        tiers,
    })
}

/// Delivery, with every host's lane.
fn delivery(
    config: &Config,
    executor: http::Executor,
    metrics: &DispatchMetrics,
    clock: crate::clock::Clock,
    (shutdown, stopped): (&CancellationToken, &CancellationToken),
) -> anyhow::Result<Arc<Delivery>> {
    let d = &config.dispatch;
    let settings = lane::LaneSettings {
        health: config.host_health.clone(),
        rules: lane::RateRules::new(&config.rate_limits),
        rate: lane::RateLimits {
            max_wait: d.max_hold,
            max_waiting_per_host: d.max_in_flight_per_host,
            // Held sends give back their admission slots while they wait, but each keeps its task.
            max_waiting: d.max_in_flight / 2,
            retry_after_cap: config.retry.retry_after_cap,
        },
        slots: lane::QueueLimits {
            max_in_flight: d.max_in_flight,
            max_in_flight_per_host: d.max_in_flight_per_host,
            max_queued_per_host: d.max_queued_per_host,
            max_queue_wait: d.max_queue_wait,
            request_timeout: config.http.request_timeout,
        },
    };
    let delivery = Arc::new(Delivery::new(
        lane::Lanes::new(settings),
        executor,
        clock,
        metrics.clone(),
    ));
    delivery.start_ticking(Duration::from_millis(250), shutdown.clone());
    if d.share_host_state {
        let fleet = metrics.fleet.clone();
        // Sharing goes on while in-flight sends drain after a SIGTERM: the others keep counting this
        // dispatcher's part of a rate it still sends at, and take it over once it has stopped.
        host_state::start(config, delivery.clone(), fleet, stopped.clone())
            .context("starting the host-state thread")?;
    }
    Ok(delivery)
}

fn start_probe(
    config: &Config,
    shared: &Arc<Shared>,
    metrics: &DispatchMetrics,
    health: &Health,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
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
    .context("starting the Kafka probe")
}

fn subscribe(
    config: &Config,
    shared: Arc<Shared>,
    tiers: &Tiers,
) -> anyhow::Result<BaseConsumer<DispatchContext>> {
    let mut settings = consumer_config(&config.kafka, &config.kafka.dispatch_group_id);
    if let Some(kb) = prefetch_kbytes(config) {
        settings.set("queued.max.messages.kbytes", kb.to_string());
    }
    let consumer: BaseConsumer<DispatchContext> = settings
        .create_with_context(DispatchContext { shared })
        .context("creating the Kafka consumer")?;
    let mut topics: Vec<&str> = vec![&config.topics.sends];
    topics.extend(tiers.topics());
    consumer
        .subscribe(&topics)
        .with_context(|| format!("subscribing to {}", topics.join(", ")))?;
    tracing::info!(topic = %config.topics.sends, group = %config.kafka.dispatch_group_id, "dispatcher started");
    Ok(consumer)
}

/// Outcomes not yet acknowledged belong to uncommitted records, which the next owner redoes; the flush only
/// has to fit in what is left of the grace.
#[allow(clippy::disallowed_methods)] // what is left of a deadline
fn flush(producer: &FutureProducer, grace_ends: Option<Instant>) {
    let flush_for = grace_ends.map_or(Duration::from_secs(10), |t| {
        t.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(500))
    });
    if let Err(e) = producer.flush(flush_for) {
        tracing::warn!(error = %e, "producer not flushed within the shutdown grace; unacknowledged outcomes will be redone");
    }
}
