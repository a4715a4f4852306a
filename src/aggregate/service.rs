//! The aggregator process: consume failure events in a group, keep each owned workspace's rolling count,
//! and alert once per quiet period. There is no database: the state of each partition is checkpointed to a
//! compacted state topic; a new owner restores the checkpoint and replays the events after it (the whole
//! window when there is no usable checkpoint), and decides nothing until that has caught up. Decisions live
//! in the alerts topic.

// The service loop times its rebuild and its housekeeping.
#![allow(clippy::disallowed_methods)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::checkpoint::Skips;
use super::checkpointing::{Gate, Unwritten};
use super::ledger::Ledger;
use super::mailer::Mailer;
use super::replay::behind;
use super::restore::{Assignment, Restorer};
use super::sender::Senders;
use super::state::{AlertLog, AlertRecord};
use crate::clock::now_ms;
use crate::config::Config;
use crate::events::failure_view::{FailureView, ViewDecoder};
use crate::kafka::client::{producer_config, replay_consumer_config};
use crate::kafka::feed::{Changes, Feed, Feeder, Fetched, Hooks, OnRevoke};
use crate::kafka::reader::{assign_all, lookup_client, partition_count, watermarks};
use crate::telemetry::{AggregateMetrics, Health};

pub(super) struct Aggregator {
    pub(super) config: Config,
    pub(super) ledger: Ledger,
    /// Shared with the senders, which read it before every attempt.
    pub(super) log: Arc<Mutex<AlertLog>>,
    /// Partitions of the failure topic this instance owns.
    pub(super) owned: HashSet<i32>,
    /// Partitions still rebuilding, with the offset that ends their replay.
    pub(super) replay_until: HashMap<i32, i64>,
    /// Next offset to read per owned partition: what a checkpoint covers.
    pub(super) position: HashMap<i32, i64>,
    /// Per partition restored from a checkpoint cut short, the events its workspaces already hold.
    pub(super) skips: HashMap<i32, Skips>,
    pub(super) checkpoint: Option<JoinHandle<Unwritten>>,
    pub(super) last_checkpoint: Instant,
    pub(super) gate: Arc<Gate>,
    /// For watermark look-ups, apart from the clients that fetch.
    pub(super) lookup: BaseConsumer,
    pub(super) state_partitions: i32,
    /// Alerts-topic partitions not yet read up to the end they had when last checked.
    pub(super) alerts_until: HashMap<i32, i64>,
    /// Next offset to read per alerts-topic partition.
    pub(super) alerts_read: HashMap<i32, i64>,
    pub(super) replay_started: Option<Instant>,
    pub(super) senders: Arc<Senders>,
    /// Revocations recorded by the rebalance callback.
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
    let group = &config.aggregate.group_id;
    let config = &crate::kafka::protocol::settled(config, group, &config.topics.failures).await;
    // The alerts topic is tailed for as long as the aggregator runs: another instance's decisions must be
    // known before this one decides for a workspace it takes over.
    let alerts = assign_all(&config.kafka, &config.topics.alerts).await?;
    // Nothing is committed here (state is checkpointed and replayed), so only reachability is probed.
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
    let mut agg = Aggregator::new(config, metrics).await?;
    let mut feeder = agg.subscribe()?;
    agg.changes = feeder.changes.clone();
    let decoder = ViewDecoder::new();
    let mut tick = tokio::time::interval(Duration::from_millis(200));
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
            _ = tick.tick() => {
                agg.on_tick().await;
                agg.checkpoint_if_due();
            }
            Some(Ok(m)) = alerts_stream.next() => agg.on_alert_record(&m),
            feed = feeder.rx.recv() => match feed {
                Some(Feed::Records(batch)) => agg.on_records(batch, &decoder).await,
                Some(Feed::Assigned(a)) => {
                    agg.install(a);
                    let marks = watermarks(&agg.lookup, &config.topics.alerts)
                        .await
                        .unwrap_or_default();
                    agg.alerts_until.extend(behind(&marks, &agg.alerts_read));
                }
                None => break,
            },
        }
        agg.apply_revocations();
        // Tracked from rebalance events: asking librdkafka for the assignment is a round trip per call.
        health.set_ready(!agg.owned.is_empty() && agg.caught_up());
        agg.finish_replay_if_done().await;
    }
    agg.final_checkpoint().await;
    feeder.stop().await;
    tracing::info!("aggregator stopped");
    Ok(())
}

/// Before revoked partitions go to another instance, their alert senders stop — the new owner must not find
/// a `pending` alert that this instance is still about to send — and their checkpoint write, if one is in
/// progress, ends.
fn revoke_hook(senders: Arc<Senders>, gate: Arc<Gate>, grace: Duration) -> OnRevoke {
    Box::new(move |partitions| {
        let still_busy = senders.stop_partitions(partitions, grace);
        if still_busy > 0 {
            tracing::warn!(
                still_busy,
                "alert senders of revoked partitions did not finish within the grace"
            );
        }
        if !gate.revoke(partitions, Duration::from_secs(35)) {
            tracing::warn!("a checkpoint of revoked partitions was still being written after 35 s");
        }
    })
}

impl Aggregator {
    async fn new(config: &Config, metrics: AggregateMetrics) -> anyhow::Result<Self> {
        let lookup = lookup_client(&config.kafka)?;
        let alerts_until = behind(
            &watermarks(&lookup, &config.topics.alerts).await?,
            &HashMap::new(),
        );
        let state_partitions = tokio::task::block_in_place(|| {
            partition_count(&lookup, &config.topics.aggregate_state)
        })?;
        Ok(Aggregator {
            ledger: Ledger::new(
                i64::try_from(config.aggregate.window.as_millis()).unwrap_or(i64::MAX),
                config.aggregate.breakdown_size,
                &config.aggregate.codes,
            ),
            config: config.clone(),
            log: Arc::new(Mutex::new(AlertLog::default())),
            alerts_until,
            alerts_read: HashMap::new(),
            owned: HashSet::new(),
            replay_until: HashMap::new(),
            position: HashMap::new(),
            skips: HashMap::new(),
            checkpoint: None,
            last_checkpoint: Instant::now(),
            gate: Arc::new(Gate::default()),
            lookup,
            state_partitions,
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

    /// The group consumer of the failure topic, on a thread of its own: each assignment is restored there
    /// before its first record, and each revocation stops the partitions' senders and checkpoint first.
    fn subscribe(&self) -> anyhow::Result<Feeder<Assignment>> {
        let config = &self.config;
        let cc = replay_consumer_config(&config.kafka, &config.aggregate.group_id);
        let restorer = Restorer::new(config).context("creating the checkpoint reader")?;
        let hooks = Hooks {
            on_assign: Box::new(move |partitions| restorer.restore(partitions)),
            on_revoke: revoke_hook(
                self.senders.clone(),
                self.gate.clone(),
                // An SMTP attempt and the record of it: what a revoked sender may need to finish.
                config.aggregate.smtp.timeout + Duration::from_secs(10),
            ),
        };
        Feeder::start(&cc, &config.topics.failures, hooks)
            .context("subscribing to the failure topic")
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

    /// Newly assigned partitions: their restored workspaces, and where their replay ends.
    fn install(&mut self, a: Assignment) {
        self.apply_revocations();
        let now = now_ms();
        self.gate.assigned(a.partitions.iter().map(|s| s.partition));
        let mut restored = 0;
        for s in a.partitions {
            let p = s.partition;
            self.owned.insert(p);
            self.position.insert(p, s.from);
            if s.end > s.from {
                self.replay_until.insert(p, s.end);
            }
            match s.full_replay {
                None => {
                    let skips = Skips::new(s.from, &s.restored);
                    if !skips.done(s.from) {
                        self.skips.insert(p, skips);
                    }
                }
                Some(why) => {
                    self.metrics.full_replays.inc();
                    tracing::info!(partition = p, reason = why, "replaying the whole window");
                }
            }
            restored += s.restored.len();
            let events = self.ledger.restore(p, s.restored, now);
            self.metrics.events_restored.inc_by(events);
        }
        self.metrics.restored_workspaces.inc_by(restored as u64);
        self.metrics.workspaces.set(self.ledger.workspaces() as i64);
        // The rebuild counts from the start of the restore.
        self.replay_started.get_or_insert_with(|| {
            Instant::now()
                .checked_sub(a.restore_took)
                .unwrap_or_else(Instant::now)
        });
        tracing::info!(
            restored_workspaces = restored,
            restore_seconds = a.restore_took.as_secs_f64(),
            replaying = self.replay_until.len(),
            "partitions assigned; replaying the failure events after their checkpoints"
        );
    }

    /// A batch of failure events: counted, and once caught up, decided on.
    async fn on_records(&mut self, batch: Vec<Fetched>, decoder: &ViewDecoder) {
        self.apply_revocations();
        for r in batch {
            let p = r.partition;
            if !self.owned.contains(&p) {
                continue; // fetched before its partition was revoked
            }
            self.position.insert(p, r.offset + 1);
            let decide = match r.payload.as_deref().map(|b| decoder.decode(b)) {
                Some(Ok(view)) => {
                    if !self
                        .skips
                        .get(&p)
                        .is_some_and(|s| s.already_counted(view.workspace, r.offset))
                    {
                        self.count(&view, p);
                    }
                    self.caught_up().then(|| view.workspace.to_string())
                }
                Some(Err(e)) => {
                    self.metrics.undecodable.inc();
                    tracing::warn!(offset = r.offset, error = %e, "skipping undecodable failure event");
                    None
                }
                None => None,
            };
            self.replayed(p, r.offset);
            if let Some(ws) = decide {
                self.decide(&ws).await;
            }
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

    /// Counts an event toward its workspace's window.
    fn count(&mut self, v: &FailureView<'_>, partition: i32) {
        if self.ledger.count(v, partition, now_ms()) {
            self.metrics.events_counted.inc();
            self.metrics.workspaces.set(self.ledger.workspaces() as i64);
        } else {
            self.metrics.events_ignored.inc();
        }
    }

    fn replayed(&mut self, partition: i32, offset: i64) {
        if self
            .replay_until
            .get(&partition)
            .is_some_and(|end| offset + 1 >= *end)
        {
            self.replay_until.remove(&partition);
        }
        if self
            .skips
            .get(&partition)
            .is_some_and(|s| s.done(offset + 1))
        {
            self.skips.remove(&partition);
        }
    }

    /// Forgets what partitions revoked since the last call contributed. Called before anything decides: a
    /// revocation may have happened at any moment on the feeder thread, and nothing may be decided or sent
    /// for a workspace another instance now owns.
    pub(super) fn apply_revocations(&mut self) {
        let revoked = Changes::take_revoked(&self.changes);
        if revoked.is_empty() {
            return;
        }
        let gone: HashSet<i32> = revoked.iter().map(|tp| tp.partition).collect();
        for p in &gone {
            self.replay_until.remove(p);
            self.owned.remove(p);
            self.position.remove(p);
            self.skips.remove(p);
        }
        self.ledger.drop_partitions(&gone);
        let keep = &self.ledger.workspaces;
        self.undecided.retain(|ws| keep.contains_key(ws));
        self.metrics.workspaces.set(self.ledger.workspaces() as i64);
    }

    /// Decisions wait until owned partitions are replayed and every decision recorded so far is known.
    pub(super) fn caught_up(&self) -> bool {
        self.replay_until.is_empty() && self.alerts_until.is_empty()
    }
}
