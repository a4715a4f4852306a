//! The aggregator process: consume failure events in a group, keep each owned workspace's rolling count,
//! and alert once per quiet period. There is no database: on every assignment the owned partitions are read
//! again from the start of retention (older events fall outside the window by event time), and no alert
//! decision is made until that replay has caught up. Decisions live in the alerts topic.

// The service loop times its rebuild and its housekeeping.
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::breakdown::{Breakdown, Key};
use super::mailer::Mailer;
use super::replay::{behind, choose_rebuild, Rebuild};
use super::sender::Senders;
use super::state::{AlertLog, AlertRecord};
use super::window::{counted_at, Windows};
use crate::clock::now_ms;
use crate::config::Config;
use crate::events::failure_view::ViewDecoder;
use crate::kafka::client::{consumer_config, producer_config};
use crate::kafka::reader::{assign_all, watermarks};
use crate::kafka::rebalance::{Changes, RecordingContext};
use crate::kafka::TopicPartition;
use crate::telemetry::{AggregateMetrics, Health};

/// Per-workspace state for the email.
#[derive(Default)]
pub(super) struct Workspace {
    pub(super) name: String,
    pub(super) partition: i32,
    pub(super) breakdown: Breakdown,
}

pub(super) struct Aggregator {
    pub(super) config: Config,
    pub(super) windows: Windows,
    pub(super) workspaces: HashMap<String, Workspace>,
    /// Shared with the senders, which read it before every attempt.
    pub(super) log: Arc<Mutex<AlertLog>>,
    /// Partitions still replaying, with the offset that ends their replay.
    pub(super) replay_until: HashMap<TopicPartition, i64>,
    /// Partitions of the failure topic this instance owns.
    pub(super) owned: HashSet<TopicPartition>,
    /// Alerts-topic partitions not yet read up to the end they had when last checked.
    pub(super) alerts_until: HashMap<i32, i64>,
    /// Next offset to read per alerts-topic partition.
    pub(super) alerts_read: HashMap<i32, i64>,
    pub(super) replay_started: Option<Instant>,
    pub(super) senders: Arc<Senders>,
    /// Assignment changes recorded by the rebalance callback.
    pub(super) changes: Arc<Mutex<Changes>>,
    /// Workspaces whose decision could not be recorded (Kafka refused the write): decided again on a tick.
    pub(super) undecided: HashSet<String>,
    pub(super) last_eviction: Instant,
    pub(super) producer: FutureProducer,
    pub(super) mailer: Arc<Mailer>,
    pub(super) metrics: AggregateMetrics,
}

pub async fn run(
    config: &Config,
    metrics: AggregateMetrics,
    health: Health,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    crate::kafka::topics::require_at_start(&config.kafka, config.topics.aggregate_topics()).await?;
    // The alerts topic is tailed for as long as the aggregator runs: another instance's decisions must be
    // known before this one decides for a workspace it takes over.
    let alerts = assign_all(&config.kafka, &config.topics.alerts).await?;
    // Nothing is committed here (state is rebuilt by replaying), so only reachability is probed.
    let report = crate::kafka::probe::Report {
        health: health.clone(),
        gauges: metrics.kafka.clone(),
        owned: Arc::new(Vec::new),
    };
    crate::kafka::probe::start(
        config,
        &config.aggregate.group_id,
        config.topics.aggregate_topics(),
        report,
        stop.clone(),
    )
    .context("starting the Kafka probe")?;
    let mut agg = Aggregator::new(config, metrics, &alerts).await?;
    let consumer = agg.subscribe()?;
    let decoder = ViewDecoder::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut stream = consumer.stream();
    let mut alerts_stream = alerts.stream();
    tracing::info!(topic = %config.topics.failures, group = %config.aggregate.group_id, "aggregator started");
    let stopping = (stop.clone(), health.clone());
    tokio::spawn(async move {
        stopping.0.cancelled().await;
        stopping.1.set_stopping();
    });
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => agg.on_tick().await,
            Some(Ok(m)) = alerts_stream.next() => agg.on_alert_record(&m),
            msg = stream.next() => match msg {
                Some(Ok(m)) => agg.on_failure_event(&m, &decoder).await,
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                None => break,
            },
        }
        agg.apply_revocations();
        let assigned = Changes::take_assigned(&agg.changes);
        if !assigned.is_empty() {
            agg.assign(&consumer, assigned).await;
            let marks = watermarks(&alerts, &config.topics.alerts)
                .await
                .unwrap_or_default();
            agg.alerts_until.extend(behind(&marks, &agg.alerts_read));
        }
        // Tracked from rebalance events: asking librdkafka for the assignment is a round trip per call.
        health.set_ready(!agg.owned.is_empty() && agg.caught_up());
        agg.finish_replay_if_done().await;
    }
    tracing::info!("aggregator stopped");
    Ok(())
}

/// Before revoked partitions go to another instance, their alert senders stop: the new owner must not find a
/// `pending` alert that this instance is still about to send.
fn stop_senders(senders: Arc<Senders>, grace: Duration) -> crate::kafka::rebalance::OnRevoke {
    Box::new(move |partitions| {
        let still_busy = senders.stop_partitions(partitions, grace);
        if still_busy > 0 {
            tracing::warn!(
                still_busy,
                "alert senders of revoked partitions did not finish within the grace"
            );
        }
    })
}

impl Aggregator {
    async fn new(
        config: &Config,
        metrics: AggregateMetrics,
        alerts: &StreamConsumer,
    ) -> anyhow::Result<Self> {
        let alerts_until = behind(
            &watermarks(alerts, &config.topics.alerts).await?,
            &HashMap::new(),
        );
        Ok(Aggregator {
            windows: Windows::new(
                i64::try_from(config.aggregate.window.as_millis()).unwrap_or(i64::MAX),
            ),
            config: config.clone(),
            workspaces: HashMap::new(),
            log: Arc::new(Mutex::new(AlertLog::default())),
            alerts_until,
            alerts_read: HashMap::new(),
            owned: HashSet::new(),
            replay_until: HashMap::new(),
            replay_started: None,
            senders: Arc::new(Senders::new(metrics.alerts_sending.clone())),
            changes: Arc::new(Mutex::new(Changes::default())),
            undecided: HashSet::new(),
            last_eviction: Instant::now(),
            producer: producer_config(&config.kafka)
                .create()
                .context("creating the alerts producer")?,
            mailer: Arc::new(Mailer::new(&config.aggregate).context("setting up mail")?),
            metrics,
        })
    }

    /// The group consumer of the failure topic, whose rebalance callback stops the senders of revoked
    /// partitions.
    fn subscribe(&self) -> anyhow::Result<StreamConsumer<RecordingContext>> {
        let config = &self.config;
        let mut cc = consumer_config(&config.kafka, &config.aggregate.group_id);
        // State is rebuilt by replaying; nothing is committed, so every assignment starts from the beginning.
        cc.set("auto.offset.reset", "earliest");
        let consumer: StreamConsumer<RecordingContext> = cc
            .create_with_context(RecordingContext {
                changes: self.changes.clone(),
                on_revoke: stop_senders(
                    self.senders.clone(),
                    // An SMTP attempt and the record of it: what a revoked sender may need to finish.
                    config.aggregate.smtp.timeout + Duration::from_secs(10),
                ),
            })
            .context("creating the consumer")?;
        consumer
            .subscribe(&[&config.topics.failures])
            .context("subscribing to the failure topic")?;
        Ok(consumer)
    }

    /// A decision read from the alerts topic (this instance's or another's).
    fn on_alert_record(&mut self, m: &BorrowedMessage<'_>) {
        if let Some(Ok(rec)) = m.payload().map(serde_json::from_slice::<AlertRecord>) {
            self.log().apply(rec);
        }
        self.alerts_read.insert(m.partition(), m.offset() + 1);
        if self
            .alerts_until
            .get(&m.partition())
            .is_some_and(|end| m.offset() + 1 >= *end)
        {
            self.alerts_until.remove(&m.partition());
        }
    }

    /// A failure event: counted, and once caught up, decided on.
    async fn on_failure_event(&mut self, m: &BorrowedMessage<'_>, decoder: &ViewDecoder) {
        let tp = TopicPartition::new(m.topic(), m.partition());
        let workspace = match m.payload().map(|b| decoder.decode(b)) {
            Some(Ok(view)) => {
                self.count(&view, tp.partition);
                Some(view.workspace.to_string())
            }
            Some(Err(e)) => {
                self.metrics.undecodable.inc();
                tracing::warn!(offset = m.offset(), error = %e, "skipping undecodable failure event");
                None
            }
            None => None,
        };
        self.replayed(&tp, m.offset());
        if let (true, Some(ws)) = (self.caught_up(), workspace) {
            self.decide(&ws).await;
        }
    }
}

impl Aggregator {
    pub(super) fn log(&self) -> std::sync::MutexGuard<'_, AlertLog> {
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn span_ms(&self) -> i64 {
        i64::try_from(self.config.aggregate.window.as_millis()).unwrap_or(i64::MAX)
    }

    /// Counts an event toward its workspace's window (see [`counted_at`] for events dated in the future).
    fn count(&mut self, v: &crate::events::failure_view::FailureView<'_>, partition: i32) {
        let now = now_ms();
        let at = counted_at(v.time_ms, now);
        if !v
            .code
            .is_some_and(|c| self.config.aggregate.codes.contains(&c))
            || !self.windows.add(v.workspace, at, now)
        {
            self.metrics.events_ignored.inc();
            return;
        }
        self.metrics.events_counted.inc();
        let (span, size) = (self.span_ms(), self.config.aggregate.breakdown_size);
        let ws = match self.workspaces.get_mut(v.workspace) {
            Some(ws) => ws,
            None => self.workspaces.entry(v.workspace.to_string()).or_default(),
        };
        ws.partition = partition;
        if let Some(name) = v.workspace_name {
            if ws.name != name {
                ws.name = name.to_string();
            }
        }
        let (kind, id, name) = match (v.campaign_id, v.canvas_id) {
            (Some(c), _) => ("campaign", c, v.campaign_name.unwrap_or(c)),
            (None, Some(c)) => ("canvas", c, v.canvas_name.unwrap_or(c)),
            (None, None) => ("", "", ""),
        };
        let key = Key {
            message_kind: kind,
            message_id: id.to_string(),
            endpoint_url: v.endpoint_url.unwrap_or_default().to_string(),
            code: v.code.unwrap_or_default(),
        };
        ws.breakdown.add(key, name, at, now, span, size);
        self.metrics.workspaces.set(self.workspaces.len() as i64);
    }

    fn replayed(&mut self, tp: &TopicPartition, offset: i64) {
        if self
            .replay_until
            .get(tp)
            .is_some_and(|end| offset + 1 >= *end)
        {
            self.replay_until.remove(tp);
        }
    }

    /// Starts the replay of newly assigned partitions: from the first event of the window when the broker
    /// can say where that is (offsets for times), from the beginning of retention otherwise.
    async fn assign(
        &mut self,
        consumer: &StreamConsumer<RecordingContext>,
        tps: Vec<TopicPartition>,
    ) {
        let topic = self.config.topics.failures.clone();
        self.owned.extend(tps.iter().cloned());
        let marks = watermarks(consumer, &topic).await.unwrap_or_default();
        let with_data: Vec<TopicPartition> = tps
            .into_iter()
            .filter(|tp| marks.get(&tp.partition).is_some_and(|(lo, hi)| hi > lo))
            .collect();
        for tp in &with_data {
            self.replay_until.insert(tp.clone(), marks[&tp.partition].1);
        }
        let window_start =
            now_ms() - i64::try_from(self.config.aggregate.window.as_millis()).unwrap_or(i64::MAX);
        let mut query = TopicPartitionList::new();
        for tp in &with_data {
            let _ = query.add_partition_offset(&topic, tp.partition, Offset::Offset(window_start));
        }
        let found: Vec<(i32, Option<i64>)> = if with_data.is_empty() {
            Vec::new()
        } else {
            match tokio::task::block_in_place(|| {
                consumer.offsets_for_times(query, Duration::from_secs(10))
            }) {
                Ok(tpl) => tpl
                    .elements()
                    .iter()
                    .map(|e| (e.partition(), e.offset().to_raw()))
                    .collect(),
                Err(_) => Vec::new(),
            }
        };
        let mode = match choose_rebuild(&found, &marks) {
            Rebuild::Seek(starts) => {
                for (p, offset) in &starts {
                    if let Err(e) =
                        consumer.seek(&topic, *p, Offset::Offset(*offset), Duration::from_secs(5))
                    {
                        tracing::info!(partition = p, error = %e, "seek to the window start failed; replaying from the beginning");
                    }
                }
                "offsets-for-times"
            }
            Rebuild::Scan => "scan",
        };
        self.replay_started.get_or_insert_with(Instant::now);
        tracing::info!(
            replaying = self.replay_until.len(),
            mode,
            "partitions assigned; rebuilding counts from Kafka"
        );
    }

    /// Forgets the workspaces of partitions revoked since the last call. Called before anything decides: a
    /// revocation may have happened inside any poll of the consumer, and nothing may be decided or sent for
    /// a workspace another instance now owns.
    pub(super) fn apply_revocations(&mut self) {
        let revoked = Changes::take_revoked(&self.changes);
        if revoked.is_empty() {
            return;
        }
        let gone: HashSet<i32> = revoked.iter().map(|tp| tp.partition).collect();
        for tp in &revoked {
            self.replay_until.remove(tp);
            self.owned.remove(tp);
        }
        self.workspaces.retain(|_, w| !gone.contains(&w.partition));
        let keep: HashSet<String> = self.workspaces.keys().cloned().collect();
        self.windows.retain(|ws| keep.contains(ws));
        self.undecided.retain(|ws| keep.contains(ws));
        self.metrics.workspaces.set(self.workspaces.len() as i64);
    }

    /// Decisions wait until owned partitions are replayed and every decision recorded so far is known.
    pub(super) fn caught_up(&self) -> bool {
        self.replay_until.is_empty() && self.alerts_until.is_empty()
    }
}
