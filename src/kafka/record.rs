//! An owned copy of a consumed record, so processing can outlive the consumer's poll.

use rdkafka::message::{BorrowedMessage, Headers, Message};

use super::TopicPartition;

#[derive(Debug, Clone)]
pub struct Record {
    pub tp: TopicPartition,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Record timestamp in UNIX milliseconds, when the broker gave one.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    pub fn from_message(msg: &BorrowedMessage<'_>, tp: TopicPartition) -> Self {
        let headers = msg
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_string(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            tp,
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
            timestamp_ms: msg.timestamp().to_millis(),
        }
    }
}
