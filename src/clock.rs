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

/// One reading of both clocks: the wall clock for what is written down (UNIX ms), the monotonic one for
/// what is scheduled (time since the dispatcher started, which no clock step can move).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub mono: std::time::Duration,
    pub wall_ms: i64,
}

impl Now {
    /// The UNIX millisecond `after` this reading.
    pub fn due_in(&self, after: std::time::Duration) -> i64 {
        let after = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
        self.wall_ms.saturating_add(after)
    }
}

/// The clock handle the dispatcher's send path is given: read it once per decision, pass the reading on.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: tokio::time::Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self::start()
    }
}

impl Clock {
    /// A clock whose monotonic readings count from now.
    pub fn start() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }

    /// The wall clock alone, for what is written down (one read instead of two).
    pub fn wall_ms(&self) -> i64 {
        now_ms()
    }

    pub fn now(&self) -> Now {
        Now {
            mono: self.origin.elapsed(),
            wall_ms: now_ms(),
        }
    }
}
