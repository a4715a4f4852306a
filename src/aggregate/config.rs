//! `[aggregate]`: thresholds, recipients, codes, links and the mail transport.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::email::LinkTemplates;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AggregateConfig {
    /// Consumer group of `hookrelay aggregate` on the failure topic.
    pub group_id: String,
    /// Failures (per workspace, within `window`) at which an alert is sent.
    pub threshold: u64,
    /// Per-workspace thresholds.
    pub thresholds: BTreeMap<String, u64>,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Status codes that count.
    pub codes: Vec<i32>,
    /// Entries (message × endpoint × code) listed in an email, and tracked per workspace.
    pub breakdown_size: usize,
    /// How often owned workspaces' windows are checkpointed to the state topic. A new owner replays about
    /// this much of the failure topic after restoring.
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Workspace id → subscribed addresses.
    pub recipients: BTreeMap<String, Vec<String>>,
    /// Everyone alerted for a workspace without subscribers.
    pub company_admins: Vec<String>,
    pub from: String,
    pub links: LinkTemplates,
    pub smtp: SmtpConfig,
    /// With no `smtp.host`, alerts are written here as `.eml` files.
    pub eml_dir: PathBuf,
}

impl Default for AggregateConfig {
    fn default() -> Self {
        Self {
            group_id: "hookrelay-aggregate".into(),
            threshold: 100_000,
            thresholds: BTreeMap::new(),
            window: Duration::from_secs(24 * 3600),
            codes: vec![
                400, 401, 403, 404, 405, 408, 409, 429, 500, 502, 503, 504, 598, 599,
            ],
            breakdown_size: 20,
            checkpoint_interval: Duration::from_secs(30),
            recipients: BTreeMap::new(),
            company_admins: vec!["admin@example.com".into()],
            from: "hookrelay <hookrelay@localhost>".into(),
            links: LinkTemplates::default(),
            smtp: SmtpConfig::default(),
            eml_dir: PathBuf::from("hookrelay-mail"),
        }
    }
}

impl AggregateConfig {
    pub fn threshold_for(&self, workspace: &str) -> u64 {
        self.thresholds
            .get(workspace)
            .copied()
            .unwrap_or(self.threshold)
    }

    /// Subscribers of the workspace, or every company admin when it has none.
    pub fn recipients_for(&self, workspace: &str) -> Vec<String> {
        match self.recipients.get(workspace) {
            Some(r) if !r.is_empty() => r.clone(),
            _ => self.company_admins.clone(),
        }
    }

    pub fn validate(&self, problems: &mut Vec<String>) {
        if self.threshold == 0 {
            problems.push("aggregate.threshold must be at least 1".into());
        }
        if self.checkpoint_interval < Duration::from_millis(100) {
            problems.push("aggregate.checkpoint_interval must be at least 100ms".into());
        }
        if self.window < Duration::from_secs(60) {
            problems.push("aggregate.window must be at least 1m".into());
        }
        if self.from.parse::<lettre::message::Mailbox>().is_err() {
            problems.push(format!("aggregate.from {:?} is not a mailbox", self.from));
        }
        let mut addresses: Vec<&String> = self.company_admins.iter().collect();
        addresses.extend(self.recipients.values().flatten());
        for a in addresses {
            if a.parse::<lettre::message::Mailbox>().is_err() {
                problems.push(format!("aggregate: {a:?} is not an email address"));
            }
        }
        if self.company_admins.is_empty() {
            problems.push("aggregate.company_admins is empty: workspaces without subscribers would go unalerted".into());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// Plain connection upgraded with STARTTLS (port 587).
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption (local relays, test servers).
    Plain,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Empty: write `.eml` files to `aggregate.eml_dir` instead.
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: String,
    pub password: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 587,
            security: SmtpSecurity::Starttls,
            username: String::new(),
            password: String::new(),
            timeout: Duration::from_secs(30),
        }
    }
}

impl fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}
