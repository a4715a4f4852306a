//! Retry tiers: the delayed topics a scheduled retry waits in. Pure: time is an argument.
//!
//! Each tier is a topic with a fixed delay (`<retry_prefix>-<delay>`, e.g. `webhook-retries-5m`). A retry is
//! written to the longest tier whose delay fits its remaining wait, read back once the tier's delay has
//! passed since it was written (or once it is due, if sooner), and then either sent — when due — or hopped
//! on to a shorter tier. So it is never sent early, and late only when the consumer's read-ahead is full
//! (`dispatch::consume::parking`), by at most the shortest tier's delay. Records carry their due time in the
//! `hookrelay-due-ms` header, so the consumer thread (`dispatch::consume`) knows it without decoding them.

use std::time::Duration;

/// The configured tiers, shortest first. Never empty (configuration validation refuses that).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tiers {
    tiers: Vec<(String, Duration)>,
}

impl Tiers {
    pub fn new(mut tiers: Vec<(String, Duration)>) -> Self {
        tiers.sort_by_key(|(_, d)| *d);
        Self { tiers }
    }

    pub fn from_config(topics: &crate::config::TopicsConfig) -> Self {
        Self::new(topics.retry_tier_topics())
    }

    /// The tier topic a retry due at `due_ms` waits in: the longest whose delay fits the time left (so it
    /// never waits past its due time), or the shortest when none fits.
    pub fn topic_for(&self, due_ms: i64, now_ms: i64) -> &str {
        let remaining =
            Duration::from_millis(u64::try_from(due_ms.saturating_sub(now_ms)).unwrap_or(0));
        let i = self
            .tiers
            .iter()
            .rposition(|(_, d)| *d <= remaining)
            .unwrap_or(0);
        self.tiers.get(i).map_or("", |(t, _)| t.as_str())
    }

    /// The delay of `topic`, if it is a tier.
    pub fn delay_of(&self, topic: &str) -> Option<Duration> {
        self.tiers.iter().find(|(t, _)| t == topic).map(|(_, d)| *d)
    }

    pub fn topics(&self) -> impl Iterator<Item = &str> {
        self.tiers.iter().map(|(t, _)| t.as_str())
    }

    /// Each tier topic with its delay.
    pub fn delays(&self) -> std::collections::HashMap<String, Duration> {
        self.tiers.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers() -> Tiers {
        Tiers::new(
            [("t-5m", 300), ("t-10s", 10), ("t-1m", 60)]
                .map(|(t, s)| (t.to_string(), Duration::from_secs(s)))
                .to_vec(),
        )
    }

    #[test]
    fn a_retry_waits_in_the_longest_tier_that_fits() {
        let t = tiers();
        let at = |secs: i64| t.topic_for(1_000 + secs * 1_000, 1_000);
        assert_eq!(at(5), "t-10s", "nothing fits: the shortest");
        assert_eq!(at(10), "t-10s");
        assert_eq!(at(59), "t-10s");
        assert_eq!(at(61), "t-1m");
        assert_eq!(at(7_200), "t-5m");
        assert_eq!(t.topic_for(0, 5_000), "t-10s", "already due");
        assert_eq!(t.topic_for(i64::MAX, i64::MIN), "t-5m", "no overflow");
    }

    #[test]
    fn knows_each_tiers_delay() {
        assert_eq!(tiers().delay_of("t-1m"), Some(Duration::from_secs(60)));
        assert_eq!(tiers().delay_of("webhook-sends"), None);
        assert_eq!(
            tiers().topics().collect::<Vec<_>>(),
            ["t-10s", "t-1m", "t-5m"]
        );
    }
}
