//! Where a send stands before an attempt, and its tracing span.

use super::lane::HostKey;
use crate::events::{SourceRef, ValidSend};
use crate::kafka::Record;

/// Where a send stands before an attempt.
#[derive(Debug, Clone)]
pub(super) struct Turn {
    /// This attempt's number, from 1.
    pub(super) number: u32,
    pub(super) first_attempt_ms: i64,
    pub(super) last_status: u16,
    /// Where the send's original record is.
    pub(super) source: Option<SourceRef>,
    /// An attempt before this one tried the network.
    pub(super) requested: bool,
}

impl Turn {
    /// A send's first attempt: `record` is its original.
    pub(super) fn first(record: &Record) -> Self {
        Self {
            number: 1,
            first_attempt_ms: 0,
            last_status: 0,
            source: Some(SourceRef {
                topic: record.tp.topic.to_string(),
                partition: record.tp.partition,
                offset: record.offset,
            }),
            requested: false,
        }
    }

    /// Retry windows count from the first attempt actually made, not from a hold before it: `now_ms` for
    /// a first attempt.
    pub(super) fn first_attempt_ms(&self, now_ms: i64) -> i64 {
        if self.number == 1 {
            now_ms
        } else {
            self.first_attempt_ms
        }
    }
}

pub(super) fn host_key(send: &ValidSend) -> HostKey {
    HostKey {
        host: send.url.host_str().unwrap_or_default().to_string(),
        workspace: send.request.workspace_id.clone(),
    }
}

/// The span of one attempt, parented by the trace context `record` came with (when traces are on).
pub(super) fn send_span(send: &ValidSend, attempt: u32, record: &Record) -> tracing::Span {
    let span = tracing::info_span!(
        "send",
        id = %send.request.id,
        workspace = %send.request.workspace_id,
        host = send.url.host_str().unwrap_or_default(),
        attempt = i64::from(attempt),
        status = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    crate::telemetry::traces::adopt_parent(&span, &record.headers);
    span
}
