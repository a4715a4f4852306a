use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::aggregate::window::{Windows, MINUTE_MS};

const SPAN: i64 = 60; // minutes
const T0: i64 = 1_763_700_000_000;

fn marker(offset: i64, at: i64) -> Marker {
    Marker {
        offset,
        written_at_ms: at,
        span_minutes: SPAN,
    }
}

fn record(offset: i64, buckets: &[(i64, u32)]) -> WorkspaceRecord {
    WorkspaceRecord {
        offset,
        name: "Acme".into(),
        buckets: Deltas::encode(buckets),
        rows: vec![],
    }
}

#[test]
fn deltas_round_trip_in_a_few_bytes() {
    let buckets: Vec<(i64, u32)> = (0..100).map(|i| (29_395_000 + i * 3, 7)).collect();
    let d = Deltas::encode(&buckets);
    assert_eq!(d.decode(), buckets);
    let bytes = encode(&record(5, &buckets));
    assert!(bytes.len() < 250, "{} bytes for 100 buckets", bytes.len());
    assert_eq!(Deltas::encode(&[]).decode(), vec![]);
}

#[test]
fn the_newest_record_per_key_wins_and_tombstones_forget() {
    let mut f = Folder::new([0, 1]);
    f.apply(b"w/0/a", Some(&encode(&record(1, &[(10, 1)]))));
    f.apply(b"w/0/a", Some(&encode(&record(2, &[(10, 2)]))));
    f.apply(b"w/0/b", Some(&encode(&record(2, &[(10, 2)]))));
    f.apply(b"w/0/b", None);
    f.apply(b"w/7/c", Some(&encode(&record(2, &[(10, 2)]))));
    f.apply(b"c/0", Some(&encode(&marker(1, T0))));
    f.apply(b"c/0", Some(&encode(&marker(2, T0))));
    f.apply(b"c/7", Some(&encode(&marker(9, T0))));
    f.apply(b"junk", Some(b"\xff"));
    f.apply(b"w/x/y", Some(b""));
    let found = f.finish();
    let p0 = &found[&0];
    assert_eq!(p0.marker, Some(marker(2, T0)));
    assert_eq!(p0.workspaces.len(), 1);
    assert_eq!(p0.workspaces[0].1.offset, 2);
    assert!(found[&1].marker.is_none());
    assert!(
        !found.contains_key(&7),
        "partitions not asked for are left out"
    );
}

#[test]
fn falls_back_to_the_full_replay_whenever_the_checkpoint_is_doubtful() {
    let now = T0 + 10 * MINUTE_MS;
    let ok = Found {
        marker: Some(marker(50, T0)),
        ..Found::default()
    };
    assert_eq!(
        choose_start(&ok, 0, 80, now, SPAN),
        Start::Checkpoint { from: 50 }
    );
    assert_eq!(
        choose_start(&ok, 60, 80, now, SPAN),
        Start::Checkpoint { from: 60 },
        "events deleted by retention are skipped, not waited for"
    );
    assert_eq!(
        choose_start(&Found::default(), 0, 80, now, SPAN),
        Start::Full("no checkpoint")
    );
    assert!(
        matches!(
            choose_start(&ok, 0, 80, T0 + SPAN * MINUTE_MS, SPAN),
            Start::Full(_)
        ),
        "stale"
    );
    assert!(
        matches!(choose_start(&ok, 0, 80, now, SPAN * 2), Start::Full(_)),
        "other window"
    );
    assert!(
        matches!(choose_start(&ok, 0, 40, now, SPAN), Start::Full(_)),
        "topic recreated"
    );
    let newer_record = Found {
        marker: Some(marker(50, T0)),
        workspaces: vec![("a".into(), record(90, &[]))],
        unreadable: 0,
    };
    assert!(matches!(
        choose_start(&newer_record, 0, 80, now, SPAN),
        Start::Full(_)
    ));
    let unreadable = Found {
        marker: Some(marker(50, T0)),
        workspaces: vec![],
        unreadable: 1,
    };
    assert_eq!(
        choose_start(&unreadable, 0, 80, now, SPAN),
        Start::Full("checkpoint unreadable")
    );
    let garbage_marker = Found {
        marker: None,
        workspaces: vec![],
        unreadable: 1,
    };
    assert_eq!(
        choose_start(&garbage_marker, 0, 80, now, SPAN),
        Start::Full("checkpoint unreadable"),
        "a marker that does not decode is reported as such, not as missing"
    );
}

/// One partition's log: `(workspace, event minute)` at offsets 0, 1, 2, …
type Log = Vec<(u8, i64)>;

/// What the live aggregator writes: at each checkpoint, a record for every workspace counted since the last
/// one, then the marker; a checkpoint cut short writes only some of the records and no marker.
fn live_run(
    log: &Log,
    cuts: &[usize],
    partial: Option<(usize, usize)>,
    now: i64,
) -> Vec<(String, Vec<u8>)> {
    let mut w = Windows::new(SPAN * MINUTE_MS);
    let mut out = Vec::new();
    let mut dirty: BTreeMap<String, ()> = BTreeMap::new();
    let write =
        |w: &Windows, dirty: &BTreeMap<String, ()>, upto: i64, limit: usize, out: &mut Vec<_>| {
            for ws in dirty.keys().take(limit) {
                let r = record(upto, &w.buckets(ws, 0));
                out.push((workspace_key(0, ws), encode(&r)));
            }
        };
    for (offset, (ws, minute)) in log.iter().enumerate() {
        if cuts.contains(&offset) {
            write(&w, &dirty, offset as i64, usize::MAX, &mut out);
            out.push((marker_key(0), encode(&marker(offset as i64, now))));
            dirty.clear();
        }
        if let Some((at, limit)) = partial {
            if at == offset {
                write(&w, &dirty, offset as i64, limit, &mut out);
            }
        }
        let ws = format!("ws{ws}");
        if w.add(&ws, 0, minute * MINUTE_MS, now) {
            dirty.insert(ws, ());
        }
    }
    out
}

proptest! {
    /// Whatever the checkpoints, the cut-short one and the events after them, restoring then replaying the
    /// tail counts exactly what replaying everything counts, also for events that crossed the window's edge
    /// between the checkpoint and the restore.
    #[test]
    fn a_restore_counts_exactly_what_a_full_replay_counts(
        log in proptest::collection::vec((0u8..6, 0i64..(2 * SPAN)), 1..300),
        cuts in proptest::collection::vec(0usize..300, 0..4),
        partial in proptest::option::of((0usize..300, 0usize..6)),
        later in 0i64..(SPAN * 2),
    ) {
        let written_at = T0 + SPAN * MINUTE_MS;
        let log: Log = log.into_iter().map(|(ws, m)| (ws, T0 / MINUTE_MS + m)).collect();
        let state = live_run(&log, &cuts, partial, written_at);
        let now = written_at + later * MINUTE_MS / 2;

        let mut folder = Folder::new([0]);
        for (k, v) in &state {
            folder.apply(k.as_bytes(), Some(v));
        }
        let found = folder.finish().remove(&0).unwrap();
        let mut restored = Windows::new(SPAN * MINUTE_MS);
        let (from, skips) = match choose_start(&found, 0, log.len() as i64, now, SPAN) {
            Start::Checkpoint { from } => {
                for (ws, r) in &found.workspaces {
                    restored.restore(ws, 0, &r.buckets.decode(), now);
                }
                (from, Skips::new(from, &found.workspaces))
            }
            Start::Full(_) => (0, Skips::default()),
        };
        let mut full = Windows::new(SPAN * MINUTE_MS);
        for (offset, (ws, minute)) in log.iter().enumerate() {
            let ws = format!("ws{ws}");
            full.add(&ws, 0, minute * MINUTE_MS, now);
            let offset = offset as i64;
            if offset >= from && !skips.already_counted(&ws, offset) {
                restored.add(&ws, 0, minute * MINUTE_MS, now);
            }
        }
        for ws in 0..6 {
            let ws = format!("ws{ws}");
            prop_assert_eq!(restored.count(&ws, now), full.count(&ws, now), "{}", ws);
        }
    }

    /// Foreign bytes in the state topic never panic, and never restore something unreadable.
    #[test]
    fn any_bytes_fold_without_panic(key in proptest::collection::vec(any::<u8>(), 0..20),
                                     value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200))) {
        let mut f = Folder::new([0, 1, 2]);
        f.apply(&key, value.as_deref());
        f.apply(b"w/0/x", value.as_deref());
        f.apply(b"c/1", value.as_deref());
        let _ = f.finish();
    }
}
