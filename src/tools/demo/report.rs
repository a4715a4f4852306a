//! The demo's closing table. Pure: it only formats what was observed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::dispatch::classify::canonical_reason;
use crate::tools::harness::Observed;

pub struct Report {
    pub sent: u64,
    pub delivered: u64,
    pub delivered_after_retry: u64,
    pub host_pauses: u64,
    pub observed: Observed,
    pub elapsed: Duration,
    pub receivers: [(&'static str, u64); 4],
}

impl Report {
    fn failed(&self) -> u64 {
        self.observed.terminal_failures() as u64
    }

    fn dead(&self) -> u64 {
        self.observed.dead_letters.len() as u64
    }

    /// Every send ended exactly one way: delivered, failed for good, or dead-lettered.
    pub fn adds_up(&self) -> bool {
        self.delivered + self.failed() + self.dead() == self.sent
            && self.observed.undecodable_failures == 0
    }

    pub fn render(&self) -> String {
        let mut t = String::new();
        let row = |t: &mut String, indent: usize, label: &str, n: u64| {
            let _ = writeln!(t, "{:indent$}{label:<w$}{n:>8}", "", w = 46 - indent);
        };
        let _ = writeln!(t, "\nhookrelay demo — results");
        row(&mut t, 2, "sent (produced to the send topic)", self.sent);
        row(&mut t, 2, "delivered (2xx)", self.delivered);
        row(
            &mut t,
            4,
            "of which after one or more retries",
            self.delivered_after_retry,
        );
        row(
            &mut t,
            2,
            "failed for good (terminal failure events)",
            self.failed(),
        );
        for ((code, source), n) in self.observed.failures_by_code(true) {
            row(&mut t, 4, &label(code, &source), n);
        }
        row(
            &mut t,
            2,
            "dead-lettered (undecodable or invalid)",
            self.dead(),
        );
        for (reason, n) in self.dead_letters_by_reason() {
            row(&mut t, 4, &reason, n);
        }
        let retried = self.observed.failures.len() as u64 - self.failed();
        row(
            &mut t,
            2,
            "attempts retried (non-terminal failure events)",
            retried,
        );
        for ((code, source), n) in self.observed.failures_by_code(false) {
            row(&mut t, 4, &label(code, &source), n);
        }
        row(
            &mut t,
            2,
            "host pauses (unhealthy host, 598 while paused)",
            self.host_pauses,
        );
        self.footer(&mut t);
        t
    }
}

impl Report {
    fn dead_letters_by_reason(&self) -> BTreeMap<String, u64> {
        let mut reasons = BTreeMap::<String, u64>::new();
        for d in &self.observed.dead_letters {
            let kind = d
                .headers
                .get("hookrelay-error-kind")
                .cloned()
                .unwrap_or_default();
            *reasons.entry(kind).or_default() += 1;
        }
        reasons
    }

    /// Elapsed time, rate, what the receivers saw, and whether the numbers add up.
    fn footer(&self, t: &mut String) {
        let _ = writeln!(
            t,
            "  {:<44}{:>8.1}",
            "elapsed (s)",
            self.elapsed.as_secs_f64()
        );
        let rate = self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9);
        let _ = writeln!(t, "  {:<44}{:>8.0}", "rate (sends/s)", rate);
        let seen: Vec<String> = self
            .receivers
            .iter()
            .map(|(n, c)| format!("{n} {c}"))
            .collect();
        let _ = writeln!(t, "  receivers saw (requests): {}", seen.join(" · "));
        let verdict = if self.adds_up() {
            "adds up"
        } else {
            "DOES NOT ADD UP"
        };
        let _ = writeln!(
            t,
            "\n  {} delivered + {} failed + {} dead-lettered = {} of {} sent: {verdict}",
            self.delivered,
            self.failed(),
            self.dead(),
            self.delivered + self.failed() + self.dead(),
            self.sent
        );
    }
}

fn label(code: i32, source: &str) -> String {
    if code >= 598 {
        format!("{code} ({source})")
    } else {
        format!(
            "{code} {}",
            canonical_reason(u16::try_from(code).unwrap_or(0))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::FailureEvent;

    fn event(code: i32, terminal: bool) -> FailureEvent {
        FailureEvent {
            http_status_code: Some(code),
            is_terminal: Some(terminal),
            webhook_failure_source: Some("External Endpoint".into()),
            ..Default::default()
        }
    }

    #[test]
    fn counts_only_terminal_events_as_failed_sends() {
        let report = Report {
            sent: 4,
            delivered: 2,
            delivered_after_retry: 1,
            host_pauses: 0,
            observed: Observed {
                failures: vec![event(503, false), event(503, false), event(404, true)],
                dead_letters: vec![crate::tools::harness::DeadLetter {
                    payload: vec![],
                    headers: Default::default(),
                }],
                undecodable_failures: 0,
            },
            elapsed: Duration::from_secs(1),
            receivers: [("a", 1), ("b", 2), ("c", 3), ("d", 4)],
        };
        assert!(report.adds_up());
        let text = report.render();
        assert!(
            text.contains("2 delivered + 1 failed + 1 dead-lettered = 4 of 4 sent: adds up"),
            "{text}"
        );
        assert!(text.contains("503 Service Unavailable"));
    }
}
