//! What an alert email lists: failures by message (campaign or Canvas), endpoint and code, with counts and
//! when each was last seen. Bounded per workspace (top N by count), so memory stays flat however many
//! distinct URLs a workspace's failures carry. Pure.

use std::collections::HashMap;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// `campaign` or `canvas` (empty when the send named neither).
    pub message_kind: &'static str,
    pub message_id: String,
    pub endpoint_url: String,
    pub code: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub message_name: String,
    pub count: u64,
    pub last_seen_ms: i64,
}

#[derive(Debug, Default)]
pub struct Breakdown {
    entries: HashMap<Key, Entry>,
}

impl Breakdown {
    /// Counts one failure. When full, the least frequent entry gives way to the newcomer. Counts are never
    /// inflated (an email must not overstate); an entry admitted late counts from its admission.
    pub fn add(&mut self, key: Key, name: &str, at_ms: i64, capacity: usize) {
        if let Some(e) = self.entries.get_mut(&key) {
            e.count += 1;
            e.last_seen_ms = e.last_seen_ms.max(at_ms);
            return;
        }
        if self.entries.len() >= capacity.max(1) {
            if let Some(min_key) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.count)
                .map(|(k, _)| k.clone())
            {
                self.entries.remove(&min_key);
            }
        }
        self.entries.insert(
            key,
            Entry {
                message_name: name.to_string(),
                count: 1,
                last_seen_ms: at_ms,
            },
        );
    }

    /// Entries by count, largest first.
    pub fn top(&self) -> Vec<(Key, Entry)> {
        let mut v: Vec<(Key, Entry)> = self
            .entries
            .iter()
            .map(|(k, e)| (k.clone(), e.clone()))
            .collect();
        v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
        v
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(url: &str, code: i32) -> Key {
        Key {
            message_kind: "campaign",
            message_id: "c1".into(),
            endpoint_url: url.into(),
            code,
        }
    }

    #[test]
    fn counts_and_remembers_the_last_time_seen() {
        let mut b = Breakdown::default();
        b.add(key("https://a", 503), "Spring", 10, 10);
        b.add(key("https://a", 503), "Spring", 5, 10);
        b.add(key("https://a", 404), "Spring", 7, 10);
        let top = b.top();
        assert_eq!(
            top[0].1,
            Entry {
                message_name: "Spring".into(),
                count: 2,
                last_seen_ms: 10
            }
        );
        assert_eq!(top[1].0.code, 404);
    }

    #[test]
    fn stays_bounded_and_keeps_the_heavy_hitters() {
        let mut b = Breakdown::default();
        for _ in 0..100 {
            b.add(key("https://heavy", 500), "C", 1, 5);
        }
        for i in 0..10_000 {
            b.add(key(&format!("https://unique/{i}"), 500), "C", 1, 5);
        }
        assert_eq!(b.len(), 5);
        assert_eq!(b.top()[0].0.endpoint_url, "https://heavy");
        assert_eq!(b.top()[0].1.count, 100);
    }
}
