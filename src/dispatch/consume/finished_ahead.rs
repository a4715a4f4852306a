//! The offsets finished beyond a committed position, carried in the commit's metadata. Pure: no Kafka here.
//!
//! Kafka keeps one position per partition: the first record not finished. Records run concurrently, and a
//! retry tier hands each record on when it is ready, so records beyond that position are often finished
//! already. Without more, the partition's next owner (after a rebalance, a stop or a crash) would redo them
//! all: a second webhook request, a second failure event, a second retry. So every commit says which
//! offsets beyond its position are finished, in the metadata string Kafka stores with it, and the next owner
//! skips them. (The same idea as Confluent's parallel consumer.)
//!
//! Format: `hookrelay.done:` then comma-separated ranges relative to the position, `3-5,9` for position + 3
//! to position + 5 and position + 9. The string is cut at [`MAX_METADATA`] bytes, below the broker's
//! default limit (`offset.metadata.max.bytes`, 4 KiB): what does not fit is simply redone. Metadata is read
//! as foreign bytes (any client may commit to the group): anything that does not parse cleanly, within
//! bounds, is ignored, which again only means redoing.

const PREFIX: &str = "hookrelay.done:";

/// The longest metadata written.
pub const MAX_METADATA: usize = 2_048;

/// The furthest beyond its position an offset read back may be.
const MAX_AHEAD: i64 = 10_000_000;

/// Inclusive ranges of offsets, ascending and apart. Ranges rather than offsets, so that what a metadata
/// string costs in memory is bounded by its length.
pub type Ranges = Vec<(i64, i64)>;

/// Consecutive offsets (ascending) as ranges.
pub fn ranges_of(offsets: impl IntoIterator<Item = i64>) -> Ranges {
    let mut out: Ranges = Vec::new();
    for o in offsets {
        match out.last_mut() {
            Some((_, end)) if o == *end + 1 => *end = o,
            _ => out.push((o, o)),
        }
    }
    out
}

/// The metadata for `position`, given the finished ranges beyond it in ascending order (adjacent ones are
/// merged; whatever is not beyond the position is left out).
pub fn encode(position: i64, finished: impl IntoIterator<Item = (i64, i64)>) -> String {
    let mut merged: Ranges = Vec::new();
    for (start, end) in finished {
        let start = start.max(position.saturating_add(1));
        if end < start {
            continue;
        }
        match merged.last_mut() {
            Some((_, last)) if start <= last.saturating_add(1) => *last = (*last).max(end),
            _ => merged.push((start, end)),
        }
    }
    let mut out = String::new();
    for (start, end) in merged {
        let (a, b) = (start - position, end - position);
        let range = if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        };
        let len = if out.is_empty() {
            PREFIX.len()
        } else {
            out.len() + 1
        };
        if len + range.len() > MAX_METADATA {
            break;
        }
        out.push_str(if out.is_empty() { PREFIX } else { "," });
        out.push_str(&range);
    }
    out
}

/// The finished ranges beyond `position` that `metadata` names; none unless it parses cleanly.
pub fn decode(position: i64, metadata: &[u8]) -> Ranges {
    parse(position, metadata).unwrap_or_default()
}

fn parse(position: i64, metadata: &[u8]) -> Option<Ranges> {
    if metadata.len() > 4 * MAX_METADATA {
        return None;
    }
    let text = std::str::from_utf8(metadata).ok()?.strip_prefix(PREFIX)?;
    let mut ranges: Ranges = Vec::new();
    for range in text.split(',') {
        let (start, end) = match range.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(range)?, number(range)?),
        };
        let after_last = ranges.last().map_or(1, |(_, e)| e - position + 2);
        if start < after_last || end < start || end > MAX_AHEAD {
            return None; // out of order, overlapping, touching or too far
        }
        ranges.push((position.checked_add(start)?, position.checked_add(end)?));
    }
    Some(ranges)
}

fn number(s: &str) -> Option<i64> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_are_written_relative_to_the_position() {
        let finished = ranges_of([103, 104, 105, 109]);
        assert_eq!(finished, vec![(103, 105), (109, 109)]);
        assert_eq!(encode(100, finished.clone()), "hookrelay.done:3-5,9");
        assert_eq!(encode(100, []), "");
        assert_eq!(
            encode(100, [(90, 100)]),
            "",
            "only offsets beyond the position"
        );
        assert_eq!(encode(100, [(98, 102), (103, 103)]), "hookrelay.done:1-3");
        assert_eq!(decode(100, b"hookrelay.done:3-5,9"), finished);
    }

    #[test]
    fn anything_else_is_ignored_whole() {
        for bad in [
            &b""[..],
            b"hookrelay.done:",
            b"other:3",
            b"hookrelay.done:0",
            b"hookrelay.done:5-3",
            b"hookrelay.done:3,,4",
            b"hookrelay.done:3,3",
            b"hookrelay.done:3-5,5",
            b"hookrelay.done:3-5,6",
            b"hookrelay.done:9,3",
            b"hookrelay.done:+3",
            b"hookrelay.done:3-99999999999",
            b"hookrelay.done:\xff",
        ] {
            assert!(
                decode(0, bad).is_empty(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(
            decode(i64::MAX - 1, b"hookrelay.done:5").is_empty(),
            "no overflow"
        );
        assert_eq!(
            decode(0, b"hookrelay.done:1-9999999"),
            vec![(1, 9_999_999)],
            "a wide range costs one entry"
        );
    }

    #[test]
    fn what_does_not_fit_is_left_out() {
        let every_other: Vec<i64> = (1..5_000).map(|i| i * 2).collect();
        let m = encode(0, ranges_of(every_other.iter().copied()));
        assert!(m.len() <= MAX_METADATA);
        let back = decode(0, m.as_bytes());
        assert!(!back.is_empty() && back.len() < every_other.len());
        assert!(
            back.iter().all(|(s, e)| s == e && every_other.contains(s)),
            "a prefix of them"
        );
    }

    proptest! {
        #[test]
        fn what_is_written_reads_back_as_a_subset_and_whole_when_it_fits(
            position in -1_000i64..1_000_000,
            gaps in proptest::collection::vec(1i64..5, 0..300),
        ) {
            let mut offset = position;
            let finished: Vec<i64> = gaps.iter().map(|g| { offset += g; offset }).collect();
            let m = encode(position, ranges_of(finished.iter().copied()));
            prop_assert!(m.len() <= MAX_METADATA);
            let back: Vec<i64> = decode(position, m.as_bytes())
                .into_iter()
                .flat_map(|(s, e)| s..=e)
                .collect();
            prop_assert!(back.iter().all(|o| finished.contains(o)));
            if m.len() < MAX_METADATA - 20 {
                prop_assert_eq!(back, finished);
            }
        }

        #[test]
        fn any_bytes_decode_without_panicking_into_at_most_one_range_per_two_bytes(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut m = PREFIX.as_bytes().to_vec();
            m.extend(bytes);
            prop_assert!(decode(7, &m).len() <= m.len() / 2);
        }
    }
}
