//! Alert decisions, as recorded in the alerts topic (key = workspace). Pure.
//!
//! A decision is written as `pending` before the email goes out and as `sent` after, so a restarted or
//! newly assigned aggregator neither sends twice within the window nor forgets an email it owed.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    Pending,
    Sent,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecord {
    pub workspace_id: String,
    pub status: AlertStatus,
    /// When the threshold was found crossed (UNIX ms): the 24-hour quiet period counts from here.
    pub decided_at_ms: i64,
    pub count: u64,
    pub threshold: u64,
    pub recipients: Vec<String>,
    pub sent_at_ms: Option<i64>,
    /// Where the email went (SMTP, or the `.eml` path).
    pub delivered_to: Option<String>,
}

/// What to do about a workspace now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Threshold crossed and no alert in the quiet period: decide and send.
    Alert,
    /// An alert was decided but not confirmed sent: send it (again).
    Resend,
}

#[derive(Debug, Default)]
pub struct AlertLog {
    latest: HashMap<String, AlertRecord>,
}

impl AlertLog {
    /// Folds a record read from (or written to) the alerts topic; the latest decision per workspace wins, and
    /// for the same decision `sent` wins over `pending` (a sender may record `sent` before the alerts tail
    /// has delivered its own `pending`: the log must never step back).
    pub fn apply(&mut self, record: AlertRecord) {
        let rank = |r: &AlertRecord| (r.decided_at_ms, r.status == AlertStatus::Sent);
        match self.latest.get(&record.workspace_id) {
            Some(cur) if rank(cur) >= rank(&record) => {}
            _ => {
                self.latest.insert(record.workspace_id.clone(), record);
            }
        }
    }

    pub fn get(&self, workspace: &str) -> Option<&AlertRecord> {
        self.latest.get(workspace)
    }

    pub fn action(
        &self,
        workspace: &str,
        count: u64,
        threshold: u64,
        now_ms: i64,
        quiet_ms: i64,
    ) -> Action {
        // A decision dated more than a quiet period ahead (a hostile or corrupt record) cannot silence a
        // workspace for ever: it is ignored.
        let current = |r: &&AlertRecord| {
            let age = now_ms.saturating_sub(r.decided_at_ms);
            age < quiet_ms && age > quiet_ms.saturating_neg()
        };
        match self.latest.get(workspace).filter(current) {
            Some(r) => match r.status {
                AlertStatus::Pending => Action::Resend,
                AlertStatus::Sent => Action::Nothing,
            },
            _ if count >= threshold => Action::Alert,
            _ => Action::Nothing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn record(status: AlertStatus, at: i64) -> AlertRecord {
        AlertRecord {
            workspace_id: "ws".into(),
            status,
            decided_at_ms: at,
            count: 10,
            threshold: 10,
            recipients: vec![],
            sent_at_ms: None,
            delivered_to: None,
        }
    }

    #[test]
    fn alerts_once_per_quiet_period_and_finishes_what_was_pending() {
        let mut log = AlertLog::default();
        assert_eq!(log.action("ws", 9, 10, 0, DAY), Action::Nothing);
        assert_eq!(log.action("ws", 10, 10, 0, DAY), Action::Alert);
        log.apply(record(AlertStatus::Pending, 100));
        assert_eq!(log.action("ws", 50, 10, 200, DAY), Action::Resend);
        log.apply(record(AlertStatus::Sent, 100));
        assert_eq!(log.action("ws", 50, 10, 200, DAY), Action::Nothing);
        assert_eq!(
            log.action("ws", 50, 10, 100 + DAY, DAY),
            Action::Alert,
            "a day later it may alert again"
        );
        assert_eq!(log.action("ws", 5, 10, 100 + DAY, DAY), Action::Nothing);
    }

    #[test]
    fn a_pending_record_read_after_its_sent_record_does_not_step_back() {
        let mut log = AlertLog::default();
        log.apply(record(AlertStatus::Sent, 100));
        log.apply(record(AlertStatus::Pending, 100));
        assert_eq!(log.get("ws").unwrap().status, AlertStatus::Sent);
        assert_eq!(log.action("ws", 50, 10, 200, DAY), Action::Nothing);
    }

    #[test]
    fn records_dated_absurdly_never_panic_nor_silence_a_workspace() {
        let mut log = AlertLog::default();
        log.apply(record(AlertStatus::Sent, i64::MAX));
        assert_eq!(log.action("ws", 50, 10, 1_000, DAY), Action::Alert);
        let mut log = AlertLog::default();
        log.apply(record(AlertStatus::Sent, i64::MIN));
        assert_eq!(log.action("ws", 50, 10, i64::MAX, DAY), Action::Alert);
    }

    #[test]
    fn an_older_record_never_overrides_a_newer_one() {
        let mut log = AlertLog::default();
        log.apply(record(AlertStatus::Sent, 500));
        log.apply(record(AlertStatus::Pending, 100));
        assert_eq!(log.get("ws").unwrap().status, AlertStatus::Sent);
    }
}
