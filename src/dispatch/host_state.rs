//! Sharing host state with the fleet through `topics.host_state` (compacted, keyed by instance, host and
//! workspace): a thread that writes what this dispatcher sees of hosts every `dispatch.host_state_interval`
//! and reads what every other one wrote, from the start of the topic, so a restart has the fleet's view at
//! once ([`lane::fleet`](super::lane::fleet) says what is shared and how it counts). What it cannot read or
//! write costs precision, never a send: the lanes then keep to this dispatcher's own counts, and
//! `hookrelay_host_state_shared` and a log line say so.

// An I/O thread: it measures its own intervals and read deadlines.
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::delivery::Delivery;
use super::lane::fleet::{FleetView, HostReport, Seen};
use super::lane::HostKey;
use crate::config::Config;
use crate::kafka::client::{consumer_property, producer_config, reader_config};
use crate::telemetry::FleetMetrics;

/// How often a topic that could not be read is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(10);
/// How long a partition's leader has to answer the reachability check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// The id this dispatcher reports under: its `group.instance.id` when it has one (static membership, so a
/// restart replaces its own reports), else one made now.
pub fn instance_id(config: &Config) -> String {
    consumer_property(&config.kafka, "group.instance.id")
        .cloned()
        .unwrap_or_else(|| format!("dispatch-{}", uuid::Uuid::new_v4()))
}

/// Starts the thread; it ends when `stop` is cancelled.
pub fn start(
    config: &Config,
    delivery: Arc<Delivery>,
    metrics: FleetMetrics,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let producer: BaseProducer = producer_config(&config.kafka).create()?;
    let consumer: BaseConsumer = reader_config(&config.kafka).create()?;
    let checks = spawn_check(
        reader_config(&config.kafka).create()?,
        config.topics.host_state.clone(),
        stop.clone(),
    )?;
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    let window_ms = ms(config.host_health.window);
    let max_ahead_ms = ms(config.host_health.pause.max(config.retry.retry_after_cap));
    let me = instance_id(config);
    let sync = Sync {
        topic: config.topics.host_state.clone(),
        view: FleetView::new(
            me.clone(),
            window_ms,
            max_ahead_ms,
            ms(config.dispatch.host_state_interval * 3),
        ),
        me,
        every: config.dispatch.host_state_interval,
        sent: HashMap::new(),
        changed: HashSet::new(),
        metrics,
        delivery,
        invalid_logged: None,
        shared: None,
    };
    std::thread::Builder::new()
        .name("host-state".into())
        .spawn(move || sync.run(&producer, &consumer, &checks, &stop))?;
    Ok(())
}

/// Asks every [`RETRY_EVERY`] whether every partition's leader of `topic` answers (a fetch that fails is
/// retried by librdkafka in silence, so this asks), on a thread of its own: each question may take seconds,
/// and the reports must keep flowing meanwhile (a check on the reporting thread held it for seconds every
/// ten, the others' reports aged out meanwhile, and each dispatcher took the whole of a shared rate).
fn spawn_check(
    consumer: BaseConsumer,
    topic: String,
    stop: CancellationToken,
) -> std::io::Result<mpsc::Receiver<Result<(), String>>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("host-state-check".into())
        .spawn(move || {
            while !stop.is_cancelled() {
                if tx.send(leaders_answer(&consumer, &topic)).is_err() {
                    return;
                }
                let asked = Instant::now();
                while asked.elapsed() < RETRY_EVERY && !stop.is_cancelled() {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })?;
    Ok(rx)
}

fn leaders_answer(consumer: &BaseConsumer, topic: &str) -> Result<(), String> {
    let metadata = consumer
        .fetch_metadata(Some(topic), CHECK_TIMEOUT)
        .map_err(|e| e.to_string())?;
    let t = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or("the topic is not in the metadata")?;
    if let Some(e) = t.error() {
        return Err(format!("{e:?}"));
    }
    for p in t.partitions() {
        consumer
            .fetch_watermarks(topic, p.id(), CHECK_TIMEOUT)
            .map_err(|e| format!("partition {}: {e}", p.id()))?;
    }
    Ok(())
}

struct Sync {
    topic: String,
    me: String,
    every: Duration,
    view: FleetView,
    /// What was last written for each host and workspace.
    sent: HashMap<HostKey, Seen>,
    /// Keys whose remote view changed since the lanes were last told.
    changed: HashSet<HostKey>,
    metrics: FleetMetrics,
    delivery: Arc<Delivery>,
    /// When an unreadable record was last logged (one line a minute at most).
    invalid_logged: Option<Instant>,
    /// Whether the topic was last found usable (`None`: not yet known).
    shared: Option<bool>,
}

impl Sync {
    fn run(
        mut self,
        producer: &BaseProducer,
        consumer: &BaseConsumer,
        checks: &mpsc::Receiver<Result<(), String>>,
        stop: &CancellationToken,
    ) {
        let mut reading = false;
        let mut tried: Option<Instant> = None;
        let mut synced = Instant::now();
        while !stop.is_cancelled() {
            if !reading && tried.is_none_or(|t| t.elapsed() >= RETRY_EVERY) {
                tried = Some(Instant::now());
                reading = self.assign(consumer);
            }
            // The latest answer of the check, while the topic is read.
            if let (true, Some(answer)) = (reading, checks.try_iter().last()) {
                match answer {
                    Ok(()) => self.set_shared(true, ""),
                    Err(why) => self.set_shared(false, &why),
                }
            }
            if reading {
                self.read(consumer);
            } else {
                std::thread::sleep(Duration::from_millis(100));
            }
            producer.poll(Duration::ZERO);
            if synced.elapsed() >= self.every {
                synced = Instant::now();
                self.write(producer);
                self.tell_lanes();
            }
        }
        let _ = producer.flush(Duration::from_secs(1));
    }

    /// Reads every partition of the topic from its start.
    fn assign(&mut self, consumer: &BaseConsumer) -> bool {
        let partitions = consumer
            .fetch_metadata(Some(&self.topic), Duration::from_secs(5))
            .ok()
            .and_then(|m| {
                let t = m.topics().iter().find(|t| t.name() == self.topic)?;
                (t.error().is_none() && !t.partitions().is_empty())
                    .then(|| t.partitions().iter().map(|p| p.id()).collect::<Vec<_>>())
            });
        let Some(partitions) = partitions else {
            self.set_shared(false, "the topic cannot be read");
            return false;
        };
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            let _ = tpl.add_partition_offset(&self.topic, p, Offset::Beginning);
        }
        match consumer.assign(&tpl) {
            Ok(()) => true,
            Err(e) => {
                self.set_shared(false, &e.to_string());
                false
            }
        }
    }

    /// Sets `hookrelay_host_state_shared`, and logs when it changes.
    fn set_shared(&mut self, shared: bool, why: &str) {
        let was = self.shared.replace(shared);
        self.metrics.up.set(i64::from(shared));
        match (was, shared) {
            (Some(true), true) | (Some(false), false) => {}
            (_, true) => {
                tracing::info!(topic = %self.topic, instance = %self.me, "sharing host state with the fleet")
            }
            (_, false) => tracing::warn!(
                topic = %self.topic,
                %why,
                "host state cannot be shared; keeping to this dispatcher's own counts, pauses and holds \
                 (trying again every 10 s)"
            ),
        }
    }

    /// Takes what arrived within 100 ms into the view.
    fn read(&mut self, consumer: &BaseConsumer) {
        let deadline = Instant::now() + Duration::from_millis(100);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match consumer.poll(left) {
                None => return,
                Some(Ok(msg)) => {
                    self.set_shared(true, "");
                    let Some(payload) = msg.payload() else {
                        continue; // a tombstone
                    };
                    match HostReport::decode(payload) {
                        Ok(report) => {
                            let now = crate::clock::now_ms();
                            if let Some(key) = self.view.take(report, now) {
                                self.metrics.reports_received.inc();
                                self.changed.insert(key);
                            }
                        }
                        Err(why) => {
                            self.metrics.invalid.inc();
                            if self
                                .invalid_logged
                                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
                            {
                                self.invalid_logged = Some(Instant::now());
                                tracing::warn!(topic = %self.topic, partition = msg.partition(), offset = msg.offset(), %why, "skipping a record of the host-state topic that is not a host report");
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    // Transport errors come here and librdkafka recovers from them by itself; whether the
                    // topic is usable is what the check (every 10 s) finds.
                    tracing::debug!(topic = %self.topic, error = %e, "host-state topic");
                    return;
                }
            }
        }
    }

    /// Writes what changed of what this dispatcher sees; a host no longer seen is written once with
    /// nothing, so the others drop it before it ages out.
    fn write(&mut self, producer: &BaseProducer) {
        let mut seen = self.delivery.seen();
        let gone: Vec<HostKey> = self
            .sent
            .keys()
            .filter(|k| !seen.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.sent.remove(&key);
            seen.insert(key, Seen::default());
        }
        let now = crate::clock::now_ms();
        for (key, state) in seen {
            // Demand is written every time: it is fresh for a few intervals only.
            if self.sent.get(&key) == Some(&state) && state.demand.is_none() {
                continue;
            }
            let report = HostReport {
                instance: self.me.clone(),
                host: key.host.clone(),
                workspace: key.workspace.clone(),
                errors: state.errors,
                paused_until_ms: state.paused_until_ms,
                hold_until_ms: state.hold_until_ms,
                demand: state.demand,
                at_ms: now,
            };
            let (k, v) = (report.key(), report.encode());
            match producer.send(BaseRecord::to(&self.topic).key(&k).payload(&v)) {
                Ok(()) => self.metrics.reports_sent.inc(),
                Err(_) => self.metrics.send_errors.inc(),
            }
            if state != Seen::default() {
                self.sent.insert(key, state);
            }
        }
    }

    /// Tells the lanes what changed of the fleet's view, reports that aged out included.
    fn tell_lanes(&mut self) {
        let now = crate::clock::now_ms();
        self.changed.extend(self.view.expire(now));
        self.changed.extend(self.view.asked());
        if self.changed.is_empty() {
            return;
        }
        let remote = self
            .changed
            .drain()
            .map(|key| {
                let r = self.view.remote(&key, now);
                (key, r)
            })
            .collect();
        self.delivery.take_fleet(remote);
    }
}
