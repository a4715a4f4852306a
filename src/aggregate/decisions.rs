//! Alert decisions: once a workspace's count is known, whether to alert, record the decision (`pending`
//! before any email), and hand the email to a sender; plus the housekeeping that keeps state bounded.

// Housekeeping runs on wall-clock intervals.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::email::AlertContent;
use super::sender;
use super::service::Aggregator;
use super::state::{Action, AlertRecord, AlertStatus};
use super::window::MINUTE_MS;
use crate::clock::now_ms;
use crate::kafka::reader::write_json;

impl Aggregator {
    /// Once caught up after an assignment, every owned workspace gets a decision.
    pub(super) async fn finish_replay_if_done(&mut self) {
        if !self.caught_up() {
            return;
        }
        if let Some(started) = self.replay_started.take() {
            self.metrics
                .rebuild_seconds
                .set(started.elapsed().as_secs_f64());
            tracing::info!(
                seconds = started.elapsed().as_secs_f64(),
                workspaces = self.ledger.workspaces(),
                "rebuild done"
            );
            let all: Vec<String> = self.ledger.workspaces.keys().cloned().collect();
            self.decide_many(all).await;
        }
    }

    /// Every 200 ms: decisions that could not be recorded are tried again; once a minute, workspaces whose
    /// window emptied are forgotten (memory follows the active set).
    pub(super) async fn on_tick(&mut self) {
        if self.caught_up() && !self.undecided.is_empty() {
            let again: Vec<String> = self.undecided.drain().collect();
            self.decide_many(again).await;
        }
        if self.last_eviction.elapsed() >= Duration::from_millis(MINUTE_MS as u64) {
            self.last_eviction = Instant::now();
            self.evict_idle();
        }
    }

    fn evict_idle(&mut self) {
        let now = now_ms();
        let senders = &self.senders;
        self.ledger.evict_idle(now, |ws| senders.is_sending(ws));
        self.metrics.workspaces.set(self.ledger.workspaces() as i64);
    }

    /// Decides for one workspace.
    pub(super) async fn decide(&mut self, workspace: &str) {
        self.apply_revocations();
        if !self.ledger.workspaces.contains_key(workspace) {
            return; // not ours (any more)
        }
        let now = now_ms();
        let count = self.ledger.windows.count(workspace, now);
        let action = self.log().action(
            workspace,
            count,
            self.config.aggregate.threshold_for(workspace),
            now,
            self.span_ms(),
        );
        if action != Action::Nothing {
            self.decide_many(vec![workspace.to_string()]).await;
        }
    }

    /// Decides for many workspaces at once (after a rebuild, thousands may be over the threshold): every
    /// `pending` record is written, concurrently, and only those the alerts topic acknowledged get an email.
    /// A decision that cannot be recorded now (Kafka down) is not acted on — `pending` must be durable
    /// before an email goes out — and is tried again on a later tick.
    pub(super) async fn decide_many(&mut self, workspaces: Vec<String>) {
        self.apply_revocations();
        let now = now_ms();
        let mut new = Vec::new();
        for ws in workspaces {
            if !self.ledger.workspaces.contains_key(&ws) {
                continue; // not ours (any more)
            }
            let threshold = self.config.aggregate.threshold_for(&ws);
            let count = self.ledger.windows.count(&ws, now);
            let action = self
                .log()
                .action(&ws, count, threshold, now, self.span_ms());
            match action {
                Action::Nothing => {}
                Action::Alert => new.push(AlertRecord {
                    recipients: self.config.aggregate.recipients_for(&ws),
                    workspace_id: ws,
                    status: AlertStatus::Pending,
                    decided_at_ms: now,
                    count,
                    threshold,
                    sent_at_ms: None,
                    delivered_to: None,
                }),
                Action::Resend => {
                    let pending = self.log().get(&ws).cloned();
                    if let Some(record) = pending {
                        self.spawn_send(record, count);
                    }
                }
            }
        }
        let (producer, topic) = (&self.producer, self.config.topics.alerts.as_str());
        let written: Vec<(AlertRecord, bool)> = futures::stream::iter(new)
            .map(|record| async move {
                let r = write_json(producer, topic, &record.workspace_id, &record).await;
                if let Err(e) = &r {
                    tracing::warn!(workspace = %record.workspace_id, error = %e, "cannot record the alert decision yet; deciding again shortly");
                }
                (record, r.is_ok())
            })
            .buffer_unordered(1_024)
            .collect()
            .await;
        // Revocations that happened while writing: nothing is sent for a workspace no longer ours.
        self.apply_revocations();
        for (record, ok) in written {
            if !ok {
                self.undecided.insert(record.workspace_id);
                continue;
            }
            tracing::warn!(
                workspace = %record.workspace_id,
                count = record.count,
                threshold = record.threshold,
                "failure threshold crossed; alerting"
            );
            self.log().apply(record.clone());
            let count = record.count;
            self.spawn_send(record, count);
        }
    }

    /// Sends in the background, retrying with backoff until it goes through; then records it as sent.
    fn spawn_send(&mut self, record: AlertRecord, count: u64) {
        if self.senders.is_sending(&record.workspace_id) {
            return;
        }
        let (now, span) = (now_ms(), self.span_ms());
        // Only for a workspace this instance owns: its sender must stop with the partition.
        let Some(ws) = self.ledger.workspaces.get_mut(&record.workspace_id) else {
            return;
        };
        let partition = ws.partition;
        let (workspace_name, breakdown) = (ws.name.clone(), ws.breakdown.top(now, span));
        let content = AlertContent {
            workspace_id: record.workspace_id.clone(),
            workspace_name,
            count,
            threshold: record.threshold,
            window_hours: self.config.aggregate.window.as_secs() / 3600,
            breakdown,
        };
        sender::spawn(sender::Job {
            email: content.render(&self.config.aggregate.links),
            record,
            partition,
            from: self.config.aggregate.from.clone(),
            alerts_topic: self.config.topics.alerts.clone(),
            senders: self.senders.clone(),
            log: self.log.clone(),
            mailer: self.mailer.clone(),
            producer: self.producer.clone(),
            metrics: self.metrics.clone(),
        });
    }
}
