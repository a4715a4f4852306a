//! The wall clock, read in one place. Pure modules take time as an argument instead (the lints ban
//! `SystemTime::now` and `Instant::now` outside the modules that are allowed to read it), so tests control
//! time, as in linkerd2-proxy.

use std::time::{SystemTime, UNIX_EPOCH};

/// UNIX milliseconds as RFC 3339, for logs and headers (the number itself if it is out of range).
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339())
}

/// UNIX milliseconds now.
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
