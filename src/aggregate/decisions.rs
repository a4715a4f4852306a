//! Alert decisions: once a workspace's count is known, whether to alert, record the decision (`pending`
//! before any email), and hand the email to a sender; plus the housekeeping that keeps state bounded.

// Housekeeping runs on wall-clock intervals.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

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
                workspaces = self.workspaces.len(),
                "rebuild done"
            );
            let all: Vec<String> = self.workspaces.keys().cloned().collect();
            for ws in all {
                self.decide(&ws).await;
            }
        }
    }

    /// Every 200 ms: decisions that could not be recorded are tried again; once a minute, workspaces whose
    /// window emptied are forgotten (memory follows the active set).
    pub(super) async fn on_tick(&mut self) {
        if self.caught_up() && !self.undecided.is_empty() {
            let again: Vec<String> = self.undecided.drain().collect();
            for ws in again {
                self.decide(&ws).await;
            }
        }
        if self.last_eviction.elapsed() >= Duration::from_millis(MINUTE_MS as u64) {
            self.last_eviction = Instant::now();
            self.evict_idle();
        }
    }

    fn evict_idle(&mut self) {
        let (now, span) = (now_ms(), self.span_ms());
        self.windows.evict_empty(now);
        let (windows, senders) = (&self.windows, &self.senders);
        self.workspaces.retain(|ws, w| {
            w.breakdown.expire(now, span);
            windows.contains(ws) || senders.is_sending(ws)
        });
        self.metrics.workspaces.set(self.workspaces.len() as i64);
    }

    /// Decides for one workspace. A decision that cannot be recorded now (Kafka down) is not acted on —
    /// `pending` must be durable before an email goes out — and is tried again on a later tick.
    pub(super) async fn decide(&mut self, workspace: &str) {
        self.apply_revocations();
        if !self.workspaces.contains_key(workspace) {
            return; // not ours (any more)
        }
        let now = now_ms();
        let threshold = self.config.aggregate.threshold_for(workspace);
        let count = self.windows.count(workspace, now);
        let quiet = self.span_ms();
        let action = self.log().action(workspace, count, threshold, now, quiet);
        match action {
            Action::Nothing => {}
            Action::Alert => {
                let record = AlertRecord {
                    workspace_id: workspace.to_string(),
                    status: AlertStatus::Pending,
                    decided_at_ms: now,
                    count,
                    threshold,
                    recipients: self.config.aggregate.recipients_for(workspace),
                    sent_at_ms: None,
                    delivered_to: None,
                };
                if let Err(e) = write_json(
                    &self.producer,
                    &self.config.topics.alerts,
                    workspace,
                    &record,
                )
                .await
                {
                    tracing::warn!(workspace, error = %e, "cannot record the alert decision yet; deciding again shortly");
                    self.undecided.insert(workspace.to_string());
                    return;
                }
                tracing::warn!(
                    workspace,
                    count,
                    threshold,
                    "failure threshold crossed; alerting"
                );
                self.log().apply(record.clone());
                self.spawn_send(record, count);
            }
            Action::Resend => {
                let pending = self.log().get(workspace).cloned();
                if let Some(record) = pending {
                    self.spawn_send(record, count);
                }
            }
        }
    }

    /// Sends in the background, retrying with backoff until it goes through; then records it as sent.
    fn spawn_send(&mut self, record: AlertRecord, count: u64) {
        if self.senders.is_sending(&record.workspace_id) {
            return;
        }
        let (now, span) = (now_ms(), self.span_ms());
        // Only for a workspace this instance owns: its sender must stop with the partition.
        let Some(ws) = self.workspaces.get_mut(&record.workspace_id) else {
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
