//! How one pass over a record ended, as one value, and the one place it becomes a log line, the metrics
//! and the span's fields. Every way a send ends — delivered; failed and retried; failed for good; requeued
//! without an attempt; hopped to a shorter tier; dead-lettered — is an [`Outcome`], built once by the
//! pipeline and reported once by [`Outcome::report`].

use super::classify::FailureSource;
use super::lane::RequeueReason;
use super::retry::GiveUpReason;
use crate::events::send_request::InvalidKind;
use crate::kafka::Record;
use crate::telemetry::metrics::status_class;
use crate::telemetry::DispatchMetrics;

/// What an attempt got (a real response, a connection error, or a simulated 598).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tried {
    /// The attempt's number, from 1.
    pub number: u32,
    pub status: u16,
    /// Why it failed; `None` when it was delivered.
    pub source: Option<FailureSource>,
}

/// Why a send was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The retry policy's reason.
    Policy(GiveUpReason),
    /// Its retry record was refused by the tier.
    RetryRefused,
    /// A scheduled retry no longer passes validation.
    NoLongerValid,
}

impl GiveUp {
    /// The `reason` label of `give_ups_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUp::Policy(r) => r.as_str(),
            GiveUp::RetryRefused => "retry_refused",
            GiveUp::NoLongerValid => "no_longer_valid",
        }
    }
}

/// How a record's pass ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered(Tried),
    /// Failed; another attempt is scheduled in `tier`.
    Retrying {
        tried: Tried,
        tier: String,
    },
    /// Failed for good; the terminal failure event is written.
    Failed {
        tried: Tried,
        give_up: GiveUp,
    },
    /// Sent back to a retry tier by its lane without an attempt.
    Requeued {
        reason: RequeueReason,
        due_ms: i64,
    },
    /// A retry not yet due, moved on to a shorter tier.
    Hopped,
    /// Written to the dead-letter topic, with why; after an attempt (`tried`) when what the attempt
    /// produced could not be written.
    DeadLettered {
        kind: InvalidKind,
        detail: String,
        tried: Option<Tried>,
        give_up: Option<GiveUp>,
    },
}

impl Outcome {
    /// The `outcome` field of the send's span.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Delivered(_) => "delivered",
            Outcome::Retrying { .. } => "retrying",
            Outcome::Failed { .. } => "failed",
            Outcome::Requeued { .. } => "requeued",
            Outcome::Hopped => "hopped",
            Outcome::DeadLettered { .. } => "dead_lettered",
        }
    }

    fn tried(&self) -> Option<Tried> {
        match self {
            Outcome::Delivered(t)
            | Outcome::Retrying { tried: t, .. }
            | Outcome::Failed { tried: t, .. } => Some(*t),
            Outcome::DeadLettered { tried, .. } => *tried,
            Outcome::Requeued { .. } | Outcome::Hopped => None,
        }
    }

    fn give_up(&self) -> Option<GiveUp> {
        match self {
            Outcome::Failed { give_up, .. } => Some(*give_up),
            Outcome::DeadLettered { give_up, .. } => *give_up,
            _ => None,
        }
    }

    /// The log line, the metrics and the span's fields of this outcome of `record`.
    pub fn report(&self, record: &Record, metrics: &DispatchMetrics) {
        self.count(metrics);
        self.log(record);
        if crate::telemetry::traces::enabled() {
            let span = tracing::Span::current();
            if let Some(t) = self.tried() {
                // Signed: the trace layer exports unsigned integers as strings.
                span.record("status", i64::from(t.status));
            }
            span.record("outcome", self.label());
        }
    }

    fn count(&self, m: &DispatchMetrics) {
        if let Some(t) = self.tried() {
            match t.status {
                200..=299 => m.attempts_2xx.inc(),
                status => m.attempts.with_label_values(&[status_class(status)]).inc(),
            }
        }
        if let Some(give_up) = self.give_up() {
            m.give_ups.with_label_values(&[give_up.as_str()]).inc();
            if self.tried().and_then(|t| t.source) == Some(FailureSource::BlockedDestination) {
                m.blocked_destinations.inc();
            }
        }
        match self {
            Outcome::Delivered(t) => {
                m.delivered.inc();
                if t.number > 1 {
                    m.delivered_after_retry.inc();
                }
            }
            Outcome::Retrying { tier, .. } => {
                m.retries_scheduled.with_label_values(&[tier]).inc();
            }
            Outcome::Failed { .. } => m.sends.with_label_values(&["failed"]).inc(),
            Outcome::Requeued { reason, .. } if reason.is_spill() => {
                m.isolation.spilled(reason.as_str());
            }
            Outcome::Requeued { reason, .. } => {
                m.requeued_sends.with_label_values(&[reason.as_str()]).inc();
            }
            Outcome::Hopped => m.retry_hops.inc(),
            Outcome::DeadLettered { .. } => m.sends.with_label_values(&["dead_lettered"]).inc(),
        }
    }

    fn log(&self, record: &Record) {
        let (topic, partition, offset) = (&record.tp.topic, record.tp.partition, record.offset);
        match self {
            Outcome::Delivered(t) => {
                tracing::debug!(status = t.status, attempt = t.number, "delivered")
            }
            Outcome::Retrying { tried, tier } => {
                tracing::debug!(status = tried.status, attempt = tried.number, source = ?tried.source, %tier, "webhook failed; retry scheduled")
            }
            Outcome::Failed { tried, give_up } => {
                tracing::debug!(status = tried.status, attempt = tried.number, source = ?tried.source, give_up = give_up.as_str(), "webhook failed for good")
            }
            Outcome::Requeued { reason, due_ms } => {
                tracing::debug!(reason = reason.as_str(), due = %crate::clock::rfc3339(*due_ms), "requeued without an attempt: {}", reason.describe())
            }
            Outcome::Hopped => {
                tracing::debug!(%topic, partition, offset, "retry not yet due: moved to a shorter tier")
            }
            Outcome::DeadLettered { kind, detail, .. } => {
                tracing::warn!(%topic, partition, offset, kind = kind.as_str(), reason = %detail, "dead-lettering record")
            }
        }
    }
}
