//! Where a replay starts and ends: which partitions are behind, and whether to seek to the window's start
//! or scan. Pure; the Kafka calls are in [`kafka::reader`](crate::kafka::reader).

use std::collections::HashMap;

/// Partitions whose end is past what has been read: `(partition, end offset)`.
pub(super) fn behind(
    marks: &HashMap<i32, (i64, i64)>,
    read_up_to: &HashMap<i32, i64>,
) -> HashMap<i32, i64> {
    marks
        .iter()
        .filter(|(p, (lo, hi))| hi > read_up_to.get(p).unwrap_or(lo))
        .map(|(p, (_, hi))| (*p, *hi))
        .collect()
}

/// How a newly assigned partition set is replayed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Rebuild {
    /// Start each partition at the first offset of the window.
    Seek(Vec<(i32, i64)>),
    /// Read from the beginning of retention and filter by event time.
    Scan,
}

/// Trusts an offsets-for-times answer unless it puts *every* partition at its end: that is what brokers
/// without the lookup answer (librdkafka's mock cluster), and on a real cluster it means nothing happened
/// in the window, where scanning is merely slower. Either way the counts are right, as events are filtered
/// by event time.
pub(super) fn choose_rebuild(
    found: &[(i32, Option<i64>)],
    marks: &HashMap<i32, (i64, i64)>,
) -> Rebuild {
    let starts: Vec<(i32, i64)> = found
        .iter()
        .filter_map(|(p, o)| o.filter(|o| *o >= 0).map(|o| (*p, o)))
        .collect();
    let all_at_end = starts
        .iter()
        .all(|(p, o)| marks.get(p).is_some_and(|(_, hi)| o >= hi));
    if starts.is_empty() || starts.len() < found.len() || all_at_end {
        Rebuild::Scan
    } else {
        Rebuild::Seek(starts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeks_when_the_broker_knows_where_the_window_starts() {
        let marks: HashMap<i32, (i64, i64)> = [(0, (0, 100)), (1, (5, 50))].into();
        assert_eq!(
            choose_rebuild(&[(0, Some(40)), (1, Some(50))], &marks),
            Rebuild::Seek(vec![(0, 40), (1, 50)])
        );
    }

    #[test]
    fn scans_when_the_lookup_is_missing_or_puts_everything_at_the_end() {
        let marks: HashMap<i32, (i64, i64)> = [(0, (0, 100)), (1, (5, 50))].into();
        assert_eq!(
            choose_rebuild(&[(0, Some(100)), (1, Some(50))], &marks),
            Rebuild::Scan,
            "the mock cluster's answer"
        );
        assert_eq!(
            choose_rebuild(&[(0, None), (1, Some(10))], &marks),
            Rebuild::Scan
        );
        assert_eq!(
            choose_rebuild(&[(0, Some(-1)), (1, Some(10))], &marks),
            Rebuild::Scan
        );
        assert_eq!(choose_rebuild(&[], &marks), Rebuild::Scan);
    }
}
