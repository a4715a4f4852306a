//! An owned copy of a consumed record, so processing can outlive the consumer's poll.
//!
//! Header names are read through librdkafka's C API directly: rdkafka's own accessors (`Headers::get`,
//! `iter`, `try_get`) `unwrap` the name as UTF-8 and would panic the consumer thread on a record any
//! producer can write. Here a bad name is kept (lossily) and reported, and the record is dead-lettered.
//! Commit metadata is read the same way, for the same reason: rdkafka's `metadata()` expects UTF-8 and any
//! client can commit anything to the group.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::sync::Arc;

use rdkafka::bindings as rdsys;
use rdkafka::message::{BorrowedMessage, Message};

/// Bytes a held record costs beyond its own: the struct, its offset's bookkeeping, and the share of a
/// started task (a decoded send is about its JSON's size again, counted by doubling the payload).
pub const RECORD_OVERHEAD: usize = 1024;

/// A topic-partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Record {
    pub tp: TopicPartition,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// Header names (invalid UTF-8 replaced by U+FFFD) and values as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Record timestamp in UNIX milliseconds, when the broker gave one.
    pub timestamp_ms: Option<i64>,
    /// Why the headers cannot be trusted (a name that is not UTF-8), if so.
    pub header_error: Option<String>,
}

impl Record {
    pub fn from_message(msg: &BorrowedMessage<'_>, tp: TopicPartition) -> Self {
        let (headers, header_error) = read_headers(msg);
        Self {
            tp,
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
            timestamp_ms: msg.timestamp().to_millis(),
            header_error,
        }
    }

    /// What holding this record costs against `dispatch.memory_budget`: its bytes, and a fixed share for
    /// the copy, its bookkeeping and, once started, its decoded send and task (measured, not exact).
    pub fn cost(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len() + 48)
            .sum();
        RECORD_OVERHEAD
            .saturating_add(self.payload.len().saturating_mul(2))
            .saturating_add(self.key.as_ref().map_or(0, Vec::len))
            .saturating_add(headers)
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// A header name as text; one that is not UTF-8 is converted lossily and described as an error.
pub fn header_name(raw: &[u8], idx: usize) -> (String, Option<String>) {
    match std::str::from_utf8(raw) {
        Ok(n) => (n.to_string(), None),
        Err(_) => {
            let lossy = String::from_utf8_lossy(raw).into_owned();
            let why = format!(
                "Kafka header name {:?} (header {idx}) is not valid UTF-8",
                crate::events::send_request::shorten(&lossy)
            );
            (lossy, Some(why))
        }
    }
}

/// One partition of a committed-offsets answer.
pub struct Committed {
    pub topic: String,
    pub partition: i32,
    /// Negative if nothing was committed.
    pub offset: i64,
    /// The commit's metadata, as raw bytes.
    pub metadata: Vec<u8>,
    /// The broker reported an error for this partition.
    pub error: bool,
}

/// Each partition of a committed-offsets answer, never panicking.
pub fn committed_metadata(tpl: &rdkafka::TopicPartitionList) -> Vec<Committed> {
    let mut out = Vec::new();
    let list = tpl.ptr();
    if list.is_null() {
        return out;
    }
    // SAFETY: `tpl` owns `list` for the borrow; `elems` points at `cnt` initialised entries.
    let elems = unsafe {
        let list = &*list;
        if list.elems.is_null() || list.cnt <= 0 {
            return out;
        }
        std::slice::from_raw_parts(list.elems, usize::try_from(list.cnt).unwrap_or(0))
    };
    for e in elems {
        if e.topic.is_null() {
            continue;
        }
        // SAFETY: topic names are NUL-terminated strings owned by the list.
        let topic = unsafe { CStr::from_ptr(e.topic) }
            .to_string_lossy()
            .into_owned();
        let metadata = if e.metadata.is_null() || e.metadata_size == 0 {
            Vec::new()
        } else {
            // SAFETY: `metadata` points at `metadata_size` bytes owned by the list.
            unsafe { std::slice::from_raw_parts(e.metadata.cast::<u8>(), e.metadata_size) }.to_vec()
        };
        out.push(Committed {
            topic,
            partition: e.partition,
            offset: e.offset,
            metadata,
            error: e.err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
        });
    }
    out
}

/// Every header of `msg`, never panicking: names that are not UTF-8 are converted lossily and reported.
fn read_headers(msg: &BorrowedMessage<'_>) -> (Vec<(String, Vec<u8>)>, Option<String>) {
    let mut out = Vec::new();
    let mut error = None;
    let mut hdrs: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `msg.ptr()` is a live message for the borrow of `msg`; librdkafka stores into `hdrs` a pointer
    // to headers owned by that message (or leaves it null and returns an error when there are none).
    let err = unsafe { rdsys::rd_kafka_message_headers(msg.ptr(), &mut hdrs) };
    if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || hdrs.is_null() {
        return (out, None);
    }
    for idx in 0.. {
        let mut name: *const std::os::raw::c_char = std::ptr::null();
        let mut value: *const std::os::raw::c_void = std::ptr::null();
        let mut size: usize = 0;
        // SAFETY: `hdrs` is valid while `msg` is borrowed; an index past the end returns an error and
        // writes nothing.
        let err =
            unsafe { rdsys::rd_kafka_header_get_all(hdrs, idx, &mut name, &mut value, &mut size) };
        if err != rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
            break;
        }
        // SAFETY: librdkafka NUL-terminates header names; the name lives as long as the message.
        let raw_name = unsafe { CStr::from_ptr(name) }.to_bytes();
        let value = if value.is_null() || size == 0 {
            Vec::new()
        } else {
            // SAFETY: `value` points at `size` bytes owned by the message.
            unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec()
        };
        let (name, bad) = header_name(raw_name, idx);
        if let Some(bad) = bad {
            error.get_or_insert(bad);
        }
        out.push((name, value));
    }
    (out, error)
}
