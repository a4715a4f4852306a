//! What a retry tier topic holds: the send, how many attempts it has had, and when it is due.
//!
//! JSON, because it is hookrelay's own internal format and an operator inspecting a tier with kcat should be
//! able to read it.

use serde::{Deserialize, Serialize};

use super::SendRequest;

/// Header carrying `due_ms`, so a tier consumer knows when a record is due without decoding it.
pub const DUE_HEADER: &str = "hookrelay-due-ms";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetryRecord {
    pub send: SendRequest,
    /// Attempts made so far.
    pub attempts: u32,
    /// UNIX milliseconds of the first attempt: retry windows count from here.
    pub first_attempt_ms: i64,
    /// UNIX milliseconds before which the next attempt must not be made.
    pub due_ms: i64,
    /// Status of the last attempt (0: none yet, a send requeued by a hold before its first attempt).
    pub last_status: u16,
    /// Where the send's original record is (absent in records written before this field existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRef>,
    /// Whether an attempt so far tried the network (absent in records written before this field existed):
    /// a Currents `Send` event is written with the first attempt that does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested: Option<bool>,
}

/// Where a send request's original record is: failure events carry it so that `hookrelay replay` can
/// re-produce the very record, body and headers included.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl SourceRef {
    /// Read back from a failure event, if it has all three fields.
    pub fn of_event(event: &super::FailureEvent) -> Option<SourceRef> {
        Some(SourceRef {
            topic: event.source_topic.clone()?,
            partition: event.source_partition?,
            offset: event.source_offset?,
        })
    }
}

impl RetryRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("retry record serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}
