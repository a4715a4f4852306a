//! Which failure events a `hookrelay replay` selects, and what it says about them. Pure: the events are
//! arguments, time is an argument.

use std::collections::BTreeMap;
use std::str::FromStr;

use crate::events::{FailureEvent, SourceRef};

/// A status the operator asked for: an exact code or a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusFilter {
    Code(u16),
    /// `4xx` or `5xx`: every code in the hundred (598 and 599 are in `5xx` too).
    Class(u16),
}

impl FromStr for StatusFilter {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        if let Some(class) = s.strip_suffix("xx") {
            return match class.parse::<u16>() {
                Ok(c @ 1..=5) => Ok(StatusFilter::Class(c)),
                _ => Err(format!("{s:?} is not a status class (1xx … 5xx)")),
            };
        }
        match s.parse::<u16>() {
            Ok(code @ 100..=599) => Ok(StatusFilter::Code(code)),
            _ => Err(format!(
                "{s:?} is not a status code (100 … 599) or class (4xx, 5xx)"
            )),
        }
    }
}

impl StatusFilter {
    fn matches(self, code: i32) -> bool {
        match self {
            StatusFilter::Code(c) => code == i32::from(c),
            StatusFilter::Class(c) => code / 100 == i32::from(c),
        }
    }
}

/// The operator's selection. Empty lists select everything.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// UNIX milliseconds, inclusive.
    pub since_ms: i64,
    /// UNIX milliseconds, exclusive.
    pub until_ms: i64,
    pub workspaces: Vec<String>,
    pub campaigns: Vec<String>,
    pub canvases: Vec<String>,
    pub statuses: Vec<StatusFilter>,
    /// Also attempts that were retried (by default only sends that failed for good).
    pub all_attempts: bool,
    /// The send topic: the only topic originals are read from (a failure event is foreign bytes, and one
    /// naming another topic must not copy that topic's records into the send topic).
    pub sends_topic: String,
}

fn any_or<T: PartialEq>(wanted: &[T], value: Option<&T>) -> bool {
    wanted.is_empty() || value.is_some_and(|v| wanted.contains(v))
}

impl Selection {
    pub fn matches(&self, e: &FailureEvent) -> bool {
        let at = event_ms(e);
        (self.since_ms..self.until_ms).contains(&at)
            && (self.all_attempts || e.is_terminal == Some(true))
            && any_or(&self.workspaces, e.app_group_id.as_ref())
            && any_or(&self.campaigns, e.campaign_id.as_ref())
            && any_or(&self.canvases, e.canvas_id.as_ref())
            && (self.statuses.is_empty()
                || e.http_status_code
                    .is_some_and(|c| self.statuses.iter().any(|s| s.matches(c))))
    }
}

/// When the attempt finished, in UNIX milliseconds.
pub fn event_ms(e: &FailureEvent) -> i64 {
    e.time_ms
        .unwrap_or_else(|| i64::from(e.time).saturating_mul(1000))
}

/// What a scan found: the originals to redrive (one per record, the newest failure each), and counts.
#[derive(Debug, Default)]
pub struct Found {
    /// Original record → (event time, workspace, code) of its newest selected failure.
    pub sends: BTreeMap<SourceRef, (i64, String, i32)>,
    /// Selected events without a recorded source (written before hookrelay recorded it).
    pub without_source: u64,
    /// Selected events naming an original in another topic than the send topic: not redriven.
    pub foreign_source: u64,
    pub events_read: u64,
    pub unreadable: u64,
}

impl Found {
    /// Takes note of one event of the failure topic.
    pub fn add(&mut self, selection: &Selection, event: &FailureEvent) {
        self.events_read += 1;
        if !selection.matches(event) {
            return;
        }
        let Some(source) = SourceRef::of_event(event) else {
            self.without_source += 1;
            return;
        };
        if source.topic != selection.sends_topic {
            self.foreign_source += 1;
            return;
        }
        let at = event_ms(event);
        let entry = (
            at,
            event.app_group_id.clone().unwrap_or_default(),
            event.http_status_code.unwrap_or_default(),
        );
        match self.sends.get(&source) {
            Some((seen, ..)) if *seen >= at => {}
            _ => {
                self.sends.insert(source, entry);
            }
        }
    }

    /// Sends by workspace and status code, for the summary.
    pub fn tally(&self) -> BTreeMap<(String, i32), u64> {
        let mut t = BTreeMap::new();
        for (_, ws, code) in self.sends.values() {
            *t.entry((ws.clone(), *code)).or_default() += 1;
        }
        t
    }
}

/// The originals sorted out against their partitions' logs, before anything is produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sorted {
    /// Still in their partition: to redrive.
    pub in_log: Vec<SourceRef>,
    /// Below the log's first offset, deleted by retention: per partition, how many and that first offset.
    pub deleted: BTreeMap<(String, i32), (u64, i64)>,
    /// Naming no record at all — a partition that does not exist, an offset past the log's end: foreign
    /// bytes in a failure event, not retention.
    pub nowhere: u64,
}

/// Sorts `sends` out by `logs`: each partition's (first offset, end offset), `None` when it could not be
/// read (it does not exist).
pub fn sort_out(
    sends: impl IntoIterator<Item = SourceRef>,
    logs: &BTreeMap<(String, i32), Option<(i64, i64)>>,
) -> Sorted {
    let mut out = Sorted::default();
    for s in sends {
        let key = (s.topic.clone(), s.partition);
        match logs.get(&key).copied().flatten() {
            Some((low, high)) if (low..high).contains(&s.offset) => out.in_log.push(s),
            Some((low, _)) if (0..low).contains(&s.offset) => {
                out.deleted.entry(key).or_insert((0, low)).0 += 1;
            }
            _ => out.nowhere += 1,
        }
    }
    out
}

/// The table printed by a dry run and after a real one.
pub fn render_tally(tally: &BTreeMap<(String, i32), u64>) -> String {
    let width = tally
        .keys()
        .map(|(ws, _)| ws.len())
        .max()
        .unwrap_or(0)
        .max(9);
    let mut out = format!("{:<width$}  code  sends\n", "workspace");
    for ((ws, code), n) in tally {
        out += &format!("{ws:<width$}  {code:>4}  {n:>5}\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ws: &str, code: i32, at_ms: i64, terminal: bool, offset: Option<i64>) -> FailureEvent {
        FailureEvent {
            http_status_code: Some(code),
            app_group_id: Some(ws.into()),
            campaign_id: Some("camp".into()),
            time: i32::try_from(at_ms / 1000).unwrap(),
            time_ms: Some(at_ms),
            is_terminal: Some(terminal),
            source_topic: offset.map(|_| "webhook-sends".into()),
            source_partition: offset.map(|_| 0),
            source_offset: offset,
            ..Default::default()
        }
    }

    fn window() -> Selection {
        Selection {
            since_ms: 1_000,
            until_ms: 2_000,
            sends_topic: "webhook-sends".into(),
            ..Default::default()
        }
    }

    #[test]
    fn statuses_parse_as_codes_or_classes_and_nonsense_is_refused() {
        assert_eq!("404".parse(), Ok(StatusFilter::Code(404)));
        assert_eq!("5XX".parse(), Ok(StatusFilter::Class(5)));
        assert_eq!("598".parse(), Ok(StatusFilter::Code(598)));
        assert!("6xx".parse::<StatusFilter>().is_err());
        assert!("42".parse::<StatusFilter>().is_err());
        assert!("abc".parse::<StatusFilter>().is_err());
        assert!(StatusFilter::Class(5).matches(599));
        assert!(!StatusFilter::Class(4).matches(503));
    }

    #[test]
    fn by_default_only_terminal_failures_in_the_time_range_are_selected() {
        let s = window();
        assert!(s.matches(&event("w", 404, 1_000, true, Some(1))));
        assert!(
            !s.matches(&event("w", 404, 2_000, true, Some(1))),
            "until is exclusive"
        );
        assert!(!s.matches(&event("w", 404, 999, true, Some(1))));
        assert!(
            !s.matches(&event("w", 503, 1_500, false, Some(1))),
            "a retried attempt"
        );
        let all = Selection {
            all_attempts: true,
            ..window()
        };
        assert!(all.matches(&event("w", 503, 1_500, false, Some(1))));
    }

    #[test]
    fn workspace_campaign_canvas_and_status_narrow_the_selection() {
        let s = Selection {
            workspaces: vec!["a".into()],
            statuses: vec![StatusFilter::Class(4)],
            ..window()
        };
        assert!(s.matches(&event("a", 410, 1_500, true, Some(1))));
        assert!(!s.matches(&event("b", 410, 1_500, true, Some(1))));
        assert!(!s.matches(&event("a", 500, 1_500, true, Some(1))));
        let c = Selection {
            canvases: vec!["cv".into()],
            ..window()
        };
        assert!(
            !c.matches(&event("a", 410, 1_500, true, Some(1))),
            "no canvas"
        );
        let camp = Selection {
            campaigns: vec!["camp".into()],
            ..window()
        };
        assert!(camp.matches(&event("a", 410, 1_500, true, Some(1))));
    }

    #[test]
    fn one_redrive_per_original_record_and_events_without_a_source_are_counted_apart() {
        let s = Selection {
            all_attempts: true,
            ..window()
        };
        let mut found = Found::default();
        found.add(&s, &event("a", 503, 1_100, false, Some(7)));
        found.add(&s, &event("a", 404, 1_200, true, Some(7)));
        found.add(&s, &event("a", 404, 1_300, true, None));
        found.add(&s, &event("b", 500, 1_400, true, Some(8)));
        found.add(&s, &event("b", 500, 5_000, true, Some(9)));
        let mut elsewhere = event("c", 500, 1_500, true, Some(1));
        elsewhere.source_topic = Some("payroll".into());
        found.add(&s, &elsewhere);
        assert_eq!(found.sends.len(), 2);
        assert_eq!(found.without_source, 1);
        assert_eq!(
            found.foreign_source, 1,
            "an event naming another topic is not redriven"
        );
        assert_eq!(found.events_read, 6);
        let tally = found.tally();
        assert_eq!(
            tally[&("a".to_string(), 404)],
            1,
            "the newest failure of a record counts"
        );
        assert_eq!(tally[&("b".to_string(), 500)], 1);
        let table = render_tally(&tally);
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().eq(["a", "404", "1"])),
            "{table}"
        );
    }

    #[test]
    fn originals_are_sorted_out_into_in_the_log_deleted_and_naming_no_record() {
        let at = |partition, offset| SourceRef {
            topic: "webhook-sends".into(),
            partition,
            offset,
        };
        let logs = BTreeMap::from([
            (("webhook-sends".to_string(), 0), Some((5, 20))),
            (("webhook-sends".to_string(), 1), None),
        ]);
        let sorted = sort_out(
            [
                at(0, 3),
                at(0, 4),
                at(0, 10),
                at(0, 20),
                at(0, -1),
                at(1, 0),
            ],
            &logs,
        );
        assert_eq!(sorted.in_log, vec![at(0, 10)]);
        assert_eq!(sorted.deleted[&("webhook-sends".to_string(), 0)], (2, 5));
        assert_eq!(
            sorted.nowhere, 3,
            "past the end, negative, a partition that does not exist"
        );
    }
}
