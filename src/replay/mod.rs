//! `hookrelay replay`: redrive sends that failed, once the customer has fixed their endpoint. It scans the
//! failure topic for the selected events, finds each send's original record through the coordinates the
//! event carries (`source_topic`, `source_partition`, `source_offset`) and produces that very record again
//! — same key, same body, same headers, so the same `id` (receivers dedupe on `webhook-id`) — to the send
//! topic, with a `hookrelay-replay` header marking it.

mod redrive;
mod scan;
pub mod select;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;

use crate::clock::{now_ms, rfc3339};
use crate::config::Config;
use crate::events::SourceRef;
use redrive::{logs_of, redrive};
use scan::scan;
use select::{Found, Selection, StatusFilter};

/// The header that marks a redriven record; its value says which replay wrote it.
pub const REPLAY_HEADER: &str = "hookrelay-replay";

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Start of the time range: an RFC 3339 time (`2026-11-30T12:00:00Z`) or how long ago (`2h`, `30m`).
    #[arg(long, value_parser = parse_when)]
    pub since: When,
    /// End of the time range, exclusive, in the same forms. Default: now.
    #[arg(long, value_parser = parse_when)]
    pub until: Option<When>,
    /// Only this workspace (`app_group_id`); repeat for several.
    #[arg(long = "workspace", value_name = "ID")]
    pub workspaces: Vec<String>,
    /// Only this campaign; repeat for several.
    #[arg(long = "campaign", value_name = "ID")]
    pub campaigns: Vec<String>,
    /// Only this Canvas; repeat for several.
    #[arg(long = "canvas", value_name = "ID")]
    pub canvases: Vec<String>,
    /// Only this status code or class: `404`, `4xx`, `5xx`, `598`, `599`; repeat for several.
    #[arg(long = "status", value_name = "CODE")]
    pub statuses: Vec<StatusFilter>,
    /// Also failed attempts that were retried, not only sends that failed for good (terminal).
    #[arg(long)]
    pub all_attempts: bool,
    /// Print how many sends would be redriven, by workspace and code, and produce nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// When some originals were deleted by retention, redrive the others instead of stopping.
    #[arg(long)]
    pub skip_deleted: bool,
}

/// A point in time as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    At(i64),
    Ago(Duration),
}

fn parse_when(s: &str) -> Result<When, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s.trim()) {
        return Ok(When::At(t.timestamp_millis()));
    }
    humantime::parse_duration(s.trim())
        .map(When::Ago)
        .map_err(|_| {
            format!(
                "{s:?} is neither an RFC 3339 time (2026-11-30T12:00:00Z) nor a duration ago (2h)"
            )
        })
}

impl When {
    fn resolve(self, now: i64) -> i64 {
        match self {
            When::At(ms) => ms,
            When::Ago(d) => now.saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }
    }
}

pub async fn run(config: Config, args: ReplayArgs) -> anyhow::Result<()> {
    let now = now_ms();
    let selection = Selection {
        since_ms: args.since.resolve(now),
        until_ms: args.until.map_or(now, |u| u.resolve(now)),
        workspaces: args.workspaces,
        campaigns: args.campaigns,
        canvases: args.canvases,
        statuses: args.statuses,
        all_attempts: args.all_attempts,
        sends_topic: config.topics.sends.clone(),
    };
    anyhow::ensure!(
        selection.since_ms < selection.until_ms,
        "--since ({}) is not before --until ({})",
        rfc3339(selection.since_ms),
        rfc3339(selection.until_ms)
    );
    let found = scan(&config, &selection).await?;
    print!("{}", summary(&selection, &found, &config.topics.failures));
    if args.dry_run || found.sends.is_empty() {
        return Ok(());
    }
    let originals: Vec<SourceRef> = found.sends.keys().cloned().collect();
    let logs = logs_of(&config, &originals).await?;
    let sorted = select::sort_out(originals, &logs);
    if sorted.nowhere > 0 {
        eprintln!(
            "skipping {} sends whose failure events name no record (a partition that does not exist or an \
             offset past the end of its log)",
            sorted.nowhere
        );
    }
    if !sorted.deleted.is_empty() {
        let (n, text) = describe_deleted(&sorted.deleted);
        anyhow::ensure!(
            args.skip_deleted,
            "{n} of {} sends can no longer be redriven: their original records were deleted by retention \
             ({text}). Nothing was produced; re-run with --skip-deleted to redrive the other {}.",
            sorted.in_log.len() as u64 + n,
            sorted.in_log.len()
        );
        eprintln!("skipping {n} sends whose originals were deleted by retention ({text})");
    }
    let sends = sorted.in_log;
    let replay_id = format!("replay-{}-{now}", std::process::id());
    let redriven = redrive(&config, &sends, &replay_id).await?;
    println!(
        "redriven {} sends to {} ({REPLAY_HEADER}: {replay_id}){}",
        redriven.produced,
        config.topics.sends,
        if redriven.missing > 0 {
            format!(
                "; {} originals were no longer in their partition (deleted or compacted)",
                redriven.missing
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

fn summary(selection: &Selection, found: &Found, topic: &str) -> String {
    let what = if selection.all_attempts {
        "failed attempts"
    } else {
        "sends that failed for good"
    };
    let mut out = format!(
        "{} sends to redrive: {what} from {} to {} ({} events of {topic} read)\n",
        found.sends.len(),
        rfc3339(selection.since_ms),
        rfc3339(selection.until_ms),
        found.events_read
    );
    if !found.sends.is_empty() {
        out += &select::render_tally(&found.tally());
    }
    if found.without_source > 0 {
        out += &format!(
            "{} selected events name no original record (written before hookrelay recorded it) and cannot be redriven\n",
            found.without_source
        );
    }
    if found.foreign_source > 0 {
        out += &format!(
            "{} selected events name an original outside the send topic and are not redriven\n",
            found.foreign_source
        );
    }
    if found.unreadable > 0 {
        out += &format!(
            "{} records of {topic} could not be read as failure events\n",
            found.unreadable
        );
    }
    out
}

fn describe_deleted(gone: &BTreeMap<(String, i32), (u64, i64)>) -> (u64, String) {
    let n = gone.values().map(|(n, _)| n).sum();
    let text = gone
        .iter()
        .map(|((t, p), (n, start))| {
            format!("{t} partition {p}: {n}, the log now starts at offset {start}")
        })
        .collect::<Vec<_>>()
        .join("; ");
    (n, text)
}
