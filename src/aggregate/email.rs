//! The alert email: a subject naming the workspace and the count, a plain-text part and an HTML part.
//! Pure. Everything taken from failure events is untrusted: it is escaped in HTML and percent-encoded in
//! links.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::breakdown::{Entry, Key};

/// Link templates; `{workspace_id}`, `{campaign_id}` and `{canvas_id}` are replaced (percent-encoded).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkTemplates {
    pub campaign: String,
    pub canvas: String,
    pub activity_log: String,
    pub docs: String,
}

impl Default for LinkTemplates {
    fn default() -> Self {
        Self {
            campaign:
                "https://dashboard.example.com/workspaces/{workspace_id}/campaigns/{campaign_id}"
                    .into(),
            canvas: "https://dashboard.example.com/workspaces/{workspace_id}/canvas/{canvas_id}"
                .into(),
            activity_log:
                "https://dashboard.example.com/workspaces/{workspace_id}/message-activity-log"
                    .into(),
            docs: "https://www.braze.com/docs/help/help_articles/api/webhook_errors/".into(),
        }
    }
}

/// Everything an alert email says.
#[derive(Debug, Clone)]
pub struct AlertContent {
    pub workspace_id: String,
    pub workspace_name: String,
    pub count: u64,
    pub threshold: u64,
    pub window_hours: u64,
    pub breakdown: Vec<(Key, Entry)>,
}

pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn fill(template: &str, workspace: &str, key: Option<&Key>) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let (campaign, canvas) = match key {
        Some(k) if k.message_kind == "campaign" => (k.message_id.as_str(), ""),
        Some(k) if k.message_kind == "canvas" => ("", k.message_id.as_str()),
        _ => ("", ""),
    };
    template
        .replace("{workspace_id}", &enc(workspace))
        .replace("{campaign_id}", &enc(campaign))
        .replace("{canvas_id}", &enc(canvas))
}

fn when(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.format("%Y-%m-%d %H:%M UTC").to_string(),
    )
}

impl AlertContent {
    fn message_link(&self, links: &LinkTemplates, k: &Key) -> Option<String> {
        match k.message_kind {
            "campaign" => Some(fill(&links.campaign, &self.workspace_id, Some(k))),
            "canvas" => Some(fill(&links.canvas, &self.workspace_id, Some(k))),
            _ => None,
        }
    }

    fn display_name(&self) -> &str {
        if self.workspace_name.is_empty() {
            &self.workspace_id
        } else {
            &self.workspace_name
        }
    }

    pub fn render(&self, links: &LinkTemplates) -> Rendered {
        let subject = format!(
            "[hookrelay] Webhook errors in {}: {} failures in the last {} hours",
            self.display_name(),
            self.count,
            self.window_hours
        );
        let activity = fill(&links.activity_log, &self.workspace_id, None);
        Rendered {
            subject,
            text: self.text(links, &activity),
            html: self.html(links, &activity),
        }
    }

    fn text(&self, links: &LinkTemplates, activity: &str) -> String {
        let mut text = format!(
            "Webhooks of workspace {} ({}) failed {} times in the last {} hours (alert threshold {}).\n\n",
            self.display_name(), self.workspace_id, self.count, self.window_hours, self.threshold
        );
        let _ = writeln!(text, "Most frequent errors:");
        for (k, e) in &self.breakdown {
            let kind = if k.message_kind.is_empty() {
                "message"
            } else {
                k.message_kind
            };
            let _ = writeln!(
                text,
                "- {} × HTTP {} from {}\n  {kind}: {} ({}){}\n  last seen {}",
                e.count,
                k.code,
                k.endpoint_url,
                e.message_name,
                k.message_id,
                self.message_link(links, k)
                    .map(|l| format!("\n  {l}"))
                    .unwrap_or_default(),
                when(e.last_seen_ms)
            );
        }
        let _ = write!(
            text,
            "\nMessage activity log: {activity}\nWhat these errors mean: {}\n\n\
             You get at most one of these emails per workspace per day.\n",
            links.docs
        );
        text
    }

    /// The same in HTML, every value from a failure event escaped.
    fn html(&self, links: &LinkTemplates, activity: &str) -> String {
        let h = escape_html;
        let name = self.display_name();
        let mut rows = String::new();
        for (k, e) in &self.breakdown {
            let message = match self.message_link(links, k) {
                Some(l) => format!("<a href=\"{}\">{}</a>", h(&l), h(&e.message_name)),
                None => h(&e.message_name),
            };
            let _ = write!(
                rows,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                message,
                h(&k.endpoint_url),
                k.code,
                e.count,
                h(&when(e.last_seen_ms))
            );
        }
        format!(
            "<!doctype html><html><body>\
             <h2>Webhook errors in {}</h2>\
             <p>Webhooks of workspace <b>{}</b> ({}) failed <b>{}</b> times in the last {} hours \
             (alert threshold {}).</p>\
             <table border=\"1\" cellpadding=\"4\"><tr><th>Campaign / Canvas</th><th>Endpoint</th>\
             <th>Error code</th><th>Count</th><th>Last seen</th></tr>{rows}</table>\
             <p><a href=\"{}\">Message activity log</a> · <a href=\"{}\">What these errors mean</a></p>\
             <p>You get at most one of these emails per workspace per day.</p></body></html>",
            h(name),
            h(name),
            h(&self.workspace_id),
            self.count,
            self.window_hours,
            self.threshold,
            h(activity),
            h(&links.docs)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content() -> AlertContent {
        AlertContent {
            workspace_id: "ws<1>".into(),
            workspace_name: "Acme & <Sons>".into(),
            count: 100_000,
            threshold: 100_000,
            window_hours: 24,
            breakdown: vec![(
                Key {
                    message_kind: "campaign",
                    message_id: "cmp \"x\"".into(),
                    endpoint_url: "https://h.example/p?a=1&b=<script>".into(),
                    code: 503,
                },
                Entry {
                    message_name: "<img src=x onerror=alert(1)>".into(),
                    count: 99_000,
                    last_seen_ms: 1_763_700_000_000,
                },
            )],
        }
    }

    #[test]
    fn names_everything_an_admin_needs() {
        let r = content().render(&LinkTemplates::default());
        assert!(r.subject.contains("Acme & <Sons>") && r.subject.contains("100000"));
        for part in [&r.text, &r.html] {
            assert!(part.contains("503"));
            assert!(part.contains("99000"));
            assert!(part.contains("2025-11-21 04:40 UTC"), "last seen time");
            assert!(part.contains("message-activity-log"));
            assert!(part.contains("webhook_errors"));
            assert!(
                part.contains("campaigns/cmp+%22x%22"),
                "campaign link, percent-encoded"
            );
        }
    }

    #[test]
    fn nothing_from_an_event_reaches_html_unescaped() {
        let r = content().render(&LinkTemplates::default());
        assert!(!r.html.contains("<img"), "{}", r.html);
        assert!(!r.html.contains("<script>"));
        assert!(!r.html.contains("<Sons>"));
        assert!(r.html.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(r.html.contains("Acme &amp; &lt;Sons&gt;"));
        assert!(r.html.contains("a=1&amp;b=&lt;script&gt;"));
    }
}
