//! Helpers for running hookrelay on one machine: producing send requests and reading the output topics
//! back. Used by `demo`, `bench` and the integration tests, so all three count outcomes the same way.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, KafkaConfig};
use crate::events::{FailureEvent, SendRequest};
use crate::kafka::client::producer_config;
use crate::kafka::EmbeddedBroker;
use crate::telemetry::{DispatchMetrics, Health};

/// A configuration for a system on this machine, against `bootstrap` (usually the embedded broker).
pub fn local_config(bootstrap: &str) -> Config {
    let mut c = Config::default();
    c.kafka.bootstrap_servers = bootstrap.to_string();
    // KIP-848 groups join in ~0.1 s on the embedded broker instead of 3 s.
    c.kafka
        .consumer_properties
        .insert("group.protocol".into(), "consumer".into());
    c.telemetry.listen = String::new();
    // Everything runs on this machine: let the SSRF guard admit loopback, on any port.
    c.security.allow_cidrs = vec![
        "127.0.0.0/8".parse().expect("valid CIDR"),
        "::1/128".parse().expect("valid CIDR"),
    ];
    c.security.any_port = true;
    c.dispatch.commit_interval = Duration::from_millis(200);
    c.dispatch.rebalance_grace = Duration::from_secs(5);
    c.dispatch.shutdown_grace = Duration::from_secs(10);
    c
}

/// Runs `body` on a fresh runtime beside an embedded broker that has hookrelay's topics (the send topic with
/// `send_partitions` partitions). `config` is pointed at the broker; its other settings are kept. The broker
/// is not `Send`, so it stays on this thread and is dropped after the runtime and every client in it.
pub fn with_embedded_broker<T, F, Fut>(
    mut config: Config,
    send_partitions: i32,
    body: F,
) -> anyhow::Result<T>
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let broker = EmbeddedBroker::start(1)?;
    let topics = &config.topics;
    broker.create_topics(topics, send_partitions, send_partitions.max(3))?;
    let local = local_config(&broker.bootstrap_servers());
    config.kafka = local.kafka;
    config.telemetry.listen = local.telemetry.listen;
    config.dispatch.commit_interval = local.dispatch.commit_interval;
    config.security = local.security;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(body(config));
    drop(rt);
    drop(broker);
    result
}

/// A long-running task of this process that stops on request, and also when dropped (a failed assertion,
/// an early return): a consumer thread left running would keep the runtime from shutting down.
struct Background {
    stop: CancellationToken,
    join: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Background {
    fn spawn<F, Fut>(run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let join = tokio::spawn(run(stop.clone()));
        Self {
            stop,
            join: Some(join),
        }
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        match self.join.take() {
            Some(join) => join.await.context("background task")?,
            None => Ok(()),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A dispatcher running inside this process (demo, harness, tests).
pub struct LocalDispatcher {
    pub metrics: DispatchMetrics,
    pub health: Health,
    task: Background,
}

impl LocalDispatcher {
    pub fn spawn(config: &Config) -> Self {
        let (metrics, health) = (DispatchMetrics::new(), Health::default());
        let (c, m, h) = (config.clone(), metrics.clone(), health.clone());
        let task =
            Background::spawn(|stop| async move { crate::dispatch::run(&c, m, h, stop).await });
        Self {
            metrics,
            health,
            task,
        }
    }

    /// Waits until the dispatcher owns partitions.
    pub async fn wait_ready(&self, deadline: Duration) -> anyhow::Result<()> {
        let until = tokio::time::Instant::now() + deadline;
        while !self.health.is_ready() {
            anyhow::ensure!(
                tokio::time::Instant::now() < until,
                "dispatcher got no partitions within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub fn delivered(&self) -> u64 {
        self.metrics.sends.with_label_values(&["delivered"]).get()
    }

    /// Stops consuming, drains, commits, and returns the dispatcher's own result.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.task.stop().await
    }
}

/// An aggregator running inside this process (demo, harness, tests).
pub struct LocalAggregator {
    pub metrics: crate::telemetry::AggregateMetrics,
    pub health: Health,
    task: Background,
}

impl LocalAggregator {
    pub fn spawn(config: &Config) -> Self {
        let (metrics, health) = (crate::telemetry::AggregateMetrics::new(), Health::default());
        let (c, m, h) = (config.clone(), metrics.clone(), health.clone());
        let task =
            Background::spawn(|stop| async move { crate::aggregate::run(&c, m, h, stop).await });
        Self {
            metrics,
            health,
            task,
        }
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.task.stop().await
    }
}

/// Produces send requests and waits for each acknowledgement.
#[derive(Clone)]
pub struct SendProducer {
    producer: FutureProducer,
    topic: String,
}

impl SendProducer {
    pub fn new(kafka: &KafkaConfig, topic: &str) -> anyhow::Result<Self> {
        Ok(Self {
            producer: producer_config(kafka)
                .create()
                .context("creating producer")?,
            topic: topic.to_string(),
        })
    }

    /// Produces a send as JSON, keyed by workspace.
    pub async fn json(&self, send: &SendRequest) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(send)?;
        self.raw(send.workspace_id.as_bytes(), &bytes).await
    }

    /// Produces a send as Confluent-framed Avro (schema id 1).
    pub async fn avro(&self, send: &SendRequest) -> anyhow::Result<()> {
        let mut bytes = vec![0, 0, 0, 0, 1];
        bytes.extend_from_slice(&send.to_avro());
        self.raw(send.workspace_id.as_bytes(), &bytes).await
    }

    pub async fn raw(&self, key: &[u8], payload: &[u8]) -> anyhow::Result<()> {
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(key).payload(payload),
                Duration::from_secs(30),
            )
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing to {}: {e}", self.topic))?;
        Ok(())
    }
}

/// A dead-lettered record as read back.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Everything read back from the failure and dead-letter topics so far.
#[derive(Debug, Default, Clone)]
pub struct Observed {
    pub failures: Vec<FailureEvent>,
    pub dead_letters: Vec<DeadLetter>,
    /// Records on the failure topic that did not decode (should stay zero).
    pub undecodable_failures: u64,
}

impl Observed {
    /// Failure events after which no further attempt was made.
    pub fn terminal_failures(&self) -> usize {
        self.failures
            .iter()
            .filter(|f| f.is_terminal != Some(false))
            .count()
    }

    /// Failure events by (status code, source), terminal ones or retried ones.
    pub fn failures_by_code(&self, terminal: bool) -> BTreeMap<(i32, String), u64> {
        let mut m = BTreeMap::new();
        for f in self
            .failures
            .iter()
            .filter(|f| (f.is_terminal != Some(false)) == terminal)
        {
            let key = (
                f.http_status_code.unwrap_or_default(),
                f.webhook_failure_source.clone().unwrap_or_default(),
            );
            *m.entry(key).or_default() += 1;
        }
        m
    }
}

/// Reads the failure and dead-letter topics from the beginning, in the background, until cancelled.
#[derive(Clone)]
pub struct OutputReader {
    observed: Arc<Mutex<Observed>>,
    stop: CancellationToken,
}

impl OutputReader {
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        let observed = Arc::new(Mutex::new(Observed::default()));
        let stop = CancellationToken::new();
        for (topic, is_failures) in [
            (&config.topics.failures, true),
            (&config.topics.dead_letters, false),
        ] {
            let consumer = crate::kafka::reader::assign_all(&config.kafka, topic).await?;
            let observed = observed.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut stream = consumer.stream();
                loop {
                    let msg = tokio::select! {
                        _ = stop.cancelled() => break,
                        m = stream.next() => m,
                    };
                    let Some(Ok(msg)) = msg else { continue };
                    let payload = msg.payload().unwrap_or_default();
                    let mut o = observed.lock().expect("observed lock");
                    if is_failures {
                        match FailureEvent::decode(payload) {
                            Ok(e) => o.failures.push(e),
                            Err(_) => o.undecodable_failures += 1,
                        }
                    } else {
                        let tp = crate::kafka::TopicPartition::new(msg.topic(), msg.partition());
                        let headers = crate::kafka::Record::from_message(&msg, tp)
                            .headers
                            .into_iter()
                            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                            .collect();
                        o.dead_letters.push(DeadLetter {
                            payload: payload.to_vec(),
                            headers,
                        });
                    }
                }
            });
        }
        Ok(Self { observed, stop })
    }

    pub fn snapshot(&self) -> Observed {
        self.observed.lock().expect("observed lock").clone()
    }

    /// Waits until `done` holds for what has been read, or the deadline passes; returns the last snapshot.
    pub async fn wait_until(
        &self,
        deadline: Duration,
        done: impl Fn(&Observed) -> bool,
    ) -> Observed {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let snap = self.snapshot();
            if done(&snap) || tokio::time::Instant::now() >= until {
                return snap;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}
