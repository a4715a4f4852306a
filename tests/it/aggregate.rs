//! The aggregator end to end: failure events in the embedded broker, a real SMTP server inside the test.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::aggregator::{
    configure, configure_config, mails_for, many, now_ms, produce, settled, with_smtp,
};
use crate::support::{free_port, wait_for, Kafka, SmtpServer};
use hookrelay::tools::harness::LocalAggregator;

const HOUR: i64 = 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_once_at_the_threshold_per_workspace_and_never_below_it() {
    let (smtp, mut kafka) = with_smtp(20).await;
    kafka.config.aggregate.thresholds.insert("ws-low".into(), 5);
    kafka
        .config
        .aggregate
        .recipients
        .insert("ws-over".into(), vec!["ops@over.example".into()]);
    let now = now_ms();
    let mut events = many("ws-over", 25, 503, now - HOUR);
    events.extend(many("ws-below", 19, 500, now - HOUR));
    events.extend(many("ws-low", 6, 404, now));
    events.extend(many("ws-other-codes", 30, 418, now));
    events.extend(many("ws-other-codes", 30, 302, now));
    events.extend(many("ws-stale", 30, 503, now - 25 * HOUR));
    let total = events.len() as u64;
    produce(&kafka.config, events).await;

    let agg = LocalAggregator::spawn(&kafka.config);
    settled(&agg, total).await;
    wait_for("two alerts are sent", Duration::from_secs(20), || async {
        agg.metrics.alerts_sent.get() == 2
    })
    .await;
    assert_eq!(
        agg.metrics.events_counted.get(),
        25 + 19 + 6,
        "codes outside the list and stale events do not count"
    );
    // More failures for an alerted workspace do not send again.
    produce(&kafka.config, many("ws-over", 10, 503, now)).await;
    settled(&agg, total + 10).await;
    assert_eq!(mails_for(&smtp, "ws-over").len(), 1);
    assert_eq!(
        mails_for(&smtp, "ws-low").len(),
        1,
        "a per-workspace override works"
    );
    for ws in ["ws-below", "ws-other-codes", "ws-stale"] {
        assert!(mails_for(&smtp, ws).is_empty(), "{ws} must not be alerted");
    }
    assert_eq!(
        mails_for(&smtp, "ws-over")[0].to,
        vec!["ops@over.example"],
        "subscribers get it"
    );
    assert_eq!(
        mails_for(&smtp, "ws-low")[0].to,
        vec!["admin@company.example", "second-admin@company.example"],
        "without subscribers, every company admin does"
    );
    assert_eq!(
        mails_for(&smtp, "ws-low")[0].from,
        "<alerts@company.example>",
        "from aggregate.from"
    );
    agg.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_email_names_everything_and_escapes_html() {
    let (smtp, kafka) = with_smtp(3).await;
    let at = now_ms() - 2 * HOUR;
    produce(&kafka.config, many("ws-html", 3, 503, at)).await;
    let agg = LocalAggregator::spawn(&kafka.config);
    wait_for("the email arrives", Duration::from_secs(30), || async {
        smtp.received().len() == 1
    })
    .await;
    let raw = smtp.received()[0].data.clone();
    let parsed = mailparse::parse_mail(raw.as_bytes()).unwrap();
    let subject = parsed
        .headers
        .iter()
        .find(|h| h.get_key() == "Subject")
        .unwrap()
        .get_value();
    assert!(
        subject.contains("ws-html <&> Co") && subject.contains("3 failures"),
        "{subject}"
    );
    let body = |mime: &str| {
        parsed
            .subparts
            .iter()
            .find(|p| p.ctype.mimetype == mime)
            .unwrap_or_else(|| panic!("{mime} part"))
            .get_body()
            .unwrap()
    };
    let (text, html) = (body("text/plain"), body("text/html"));
    let last_seen = chrono::DateTime::from_timestamp_millis(at)
        .unwrap()
        .format("%Y-%m-%d %H:%M UTC")
        .to_string();
    for part in [&text, &html] {
        assert!(part.contains("503"), "error code");
        assert!(part.contains(&last_seen), "last seen time");
        assert!(
            part.contains("campaigns/cmp_spring"),
            "link to the campaign"
        );
        assert!(part.contains("message-activity-log"), "activity log link");
        assert!(part.contains("webhook_errors"), "documentation link");
    }
    assert!(
        text.contains("https://hooks.example/p?a=1&b=<x>") && text.contains("<b>Spring</b> sale")
    );
    assert!(
        html.contains("https://hooks.example/p?a=1&amp;b=&lt;x&gt;"),
        "{html}"
    );
    assert!(html.contains("&lt;b&gt;Spring&lt;/b&gt; sale") && !html.contains("<b>Spring"));
    assert!(html.contains("ws-html &lt;&amp;&gt; Co"));
    agg.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_an_alert_does_not_alert_again_and_a_restart_before_rebuilds_the_count() {
    let (smtp, kafka) = with_smtp(20).await;
    let now = now_ms();
    produce(&kafka.config, many("ws-alerted", 20, 503, now)).await;
    produce(&kafka.config, many("ws-pending", 15, 503, now)).await;
    let first = LocalAggregator::spawn(&kafka.config);
    wait_for("the first alert", Duration::from_secs(30), || async {
        smtp.received().len() == 1
    })
    .await;
    settled(&first, 35).await;
    first.stop().await.unwrap();

    let second = LocalAggregator::spawn(&kafka.config);
    settled(&second, 35).await;
    wait_for(
        "the new instance has rebuilt its state",
        Duration::from_secs(20),
        || async { second.health.is_ready() },
    )
    .await;
    produce(&kafka.config, many("ws-alerted", 5, 503, now)).await;
    produce(&kafka.config, many("ws-pending", 4, 503, now)).await;
    settled(&second, 44).await;
    assert!(
        mails_for(&smtp, "ws-pending").is_empty(),
        "19 of 20 after the restart: the count was rebuilt, no alert"
    );
    produce(&kafka.config, many("ws-pending", 1, 503, now)).await;
    wait_for(
        "the rebuilt count fires at the 20th event",
        Duration::from_secs(20),
        || async { mails_for(&smtp, "ws-pending").len() == 1 },
    )
    .await;
    assert!(mails_for(&smtp, "ws-pending")[0]
        .data
        .contains("20 failures"));
    assert_eq!(
        mails_for(&smtp, "ws-alerted").len(),
        1,
        "no second email within 24 hours"
    );
    second.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_alert_each_workspace_once_also_after_one_stops() {
    let (smtp, kafka) = with_smtp(10).await;
    two_instances_hand_over(&kafka.config, &smtp).await;
}

/// The same on tansu, the second broker (classic group protocol).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tansu_two_instances_alert_each_workspace_once_also_after_one_stops() {
    let Some(mut tansu) = crate::support::tansu::Tansu::start(2) else {
        return;
    };
    let smtp = SmtpServer::start("127.0.0.1:0".parse().unwrap()).await;
    configure_config(&mut tansu.config, smtp.addr.port(), 10);
    two_instances_hand_over(&tansu.config, &smtp).await;
}

/// Two aggregators alert each of six workspaces once; one stops, the other takes its partitions over,
/// rebuilds their counts and sends no second email when more events come.
async fn two_instances_hand_over(config: &hookrelay::config::Config, smtp: &SmtpServer) {
    let now = now_ms();
    let workspaces: Vec<String> = (0..6).map(|i| format!("ws-{i}")).collect();
    let a = LocalAggregator::spawn(config);
    let b = LocalAggregator::spawn(config);
    wait_for(
        "both instances own partitions",
        // A first assignment on tansu has taken 23 s.
        Duration::from_secs(90),
        || async { a.health.is_ready() && b.health.is_ready() },
    )
    .await;
    for ws in &workspaces {
        produce(config, many(ws, 12, 503, now)).await;
    }
    wait_for(
        "every workspace alerted",
        Duration::from_secs(30),
        || async { smtp.received().len() == workspaces.len() },
    )
    .await;
    a.stop().await.unwrap();
    wait_for(
        "the survivor has taken over and rebuilt",
        Duration::from_secs(30),
        || async {
            b.metrics.events_counted.get() + b.metrics.events_restored.get() >= 72
                && b.health.is_ready()
        },
    )
    .await;
    for ws in &workspaces {
        produce(config, many(ws, 1, 503, now)).await;
    }
    wait_for(
        "the survivor reads the new events",
        Duration::from_secs(30),
        || async { b.metrics.events_counted.get() + b.metrics.events_restored.get() >= 78 },
    )
    .await;
    let mut per_ws = BTreeMap::new();
    for ws in &workspaces {
        per_ws.insert(ws.clone(), mails_for(smtp, ws).len());
    }
    assert!(
        per_ws.values().all(|n| *n == 1),
        "each workspace exactly once: {per_ws:?}"
    );
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_owed_while_smtp_is_down_arrives_once_it_is_back() {
    let smtp_addr = free_port();
    let mut kafka = Kafka::start(1);
    configure(&mut kafka, smtp_addr.port(), 5);
    produce(&kafka.config, many("ws-down", 6, 503, now_ms())).await;
    let agg = LocalAggregator::spawn(&kafka.config);
    wait_for("sending has failed", Duration::from_secs(30), || async {
        agg.metrics.send_errors.get() >= 1
    })
    .await;
    let smtp = SmtpServer::start(smtp_addr).await;
    wait_for(
        "the email arrives once SMTP is back",
        Duration::from_secs(30),
        || async { smtp.received().len() == 1 },
    )
    .await;
    wait_for(
        "it is recorded as sent",
        Duration::from_secs(10),
        || async { agg.metrics.alerts_sent.get() == 1 },
    )
    .await;
    assert_eq!(mails_for(&smtp, "ws-down").len(), 1);
    agg.stop().await.unwrap();
}

/// `hookrelay aggregate` as a separate process, configured through the environment; returns it and the
/// address of its `/metrics`.
fn aggregator_process(
    kafka: &Kafka,
    smtp_port: u16,
) -> (std::process::Child, std::net::SocketAddr) {
    let c = &kafka.config;
    let listen = free_port();
    let child = std::process::Command::new(crate::support::hookrelay_bin())
        .arg("aggregate")
        .env_clear()
        .env(
            "HOOKRELAY_KAFKA__BOOTSTRAP_SERVERS",
            &c.kafka.bootstrap_servers,
        )
        .env(
            "HOOKRELAY_KAFKA__CONSUMER_PROPERTIES__GROUP_PROTOCOL",
            "consumer",
        )
        .env("HOOKRELAY_TOPICS__FAILURES", &c.topics.failures)
        .env("HOOKRELAY_TOPICS__ALERTS", &c.topics.alerts)
        .env(
            "HOOKRELAY_AGGREGATE__THRESHOLD",
            c.aggregate.threshold.to_string(),
        )
        .env("HOOKRELAY_AGGREGATE__SMTP__HOST", "127.0.0.1")
        .env("HOOKRELAY_AGGREGATE__SMTP__PORT", smtp_port.to_string())
        .env("HOOKRELAY_AGGREGATE__SMTP__SECURITY", "plain")
        .env("HOOKRELAY_TELEMETRY__LISTEN", listen.to_string())
        .env("HOOKRELAY_TELEMETRY__LOG_LEVEL", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("hookrelay aggregate starts");
    (child, listen)
}

async fn scrape(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_aggregator_process_after_an_alert_sends_no_second_email() {
    let (smtp, kafka) = with_smtp(10).await;
    produce(&kafka.config, many("ws-proc", 10, 503, now_ms())).await;
    let (mut first, first_metrics) = aggregator_process(&kafka, smtp.addr.port());
    wait_for(
        "the first process alerts and records it",
        Duration::from_secs(30),
        || async {
            smtp.received().len() == 1
                && scrape(first_metrics, "hookrelay_aggregate_alerts_sent_total").await == Some(1.0)
        },
    )
    .await;
    // The "sent" record is written right after the email; give it a moment by waiting on the log itself.
    wait_for(
        "the decision is in the alerts topic",
        Duration::from_secs(20),
        || async {
            let reader = hookrelay::kafka::reader::assign_all(
                &kafka.config.kafka,
                &kafka.config.topics.alerts,
            )
            .await
            .unwrap();
            let marks = tokio::task::block_in_place(|| {
                use rdkafka::consumer::Consumer;
                (0..2)
                    .map(|p| {
                        reader
                            .fetch_watermarks(
                                &kafka.config.topics.alerts,
                                p,
                                Duration::from_secs(5),
                            )
                            .unwrap()
                            .1
                    })
                    .sum::<i64>()
            });
            marks >= 2
        },
    )
    .await;
    // A clean stop (SIGTERM) leaves the group at once; a killed member would hold its partitions until the
    // broker's session timeout.
    std::process::Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    assert!(first.wait().unwrap().success(), "SIGTERM exits 0");

    let (mut second, second_metrics) = aggregator_process(&kafka, smtp.addr.port());
    produce(&kafka.config, many("ws-proc", 5, 503, now_ms())).await;
    wait_for(
        "the new process has rebuilt all 15 events",
        Duration::from_secs(30),
        || async {
            let counted = scrape(second_metrics, "hookrelay_aggregate_events_counted_total").await;
            let restored =
                scrape(second_metrics, "hookrelay_aggregate_events_restored_total").await;
            counted.unwrap_or(0.0) + restored.unwrap_or(0.0) == 15.0
        },
    )
    .await;
    second.kill().unwrap();
    second.wait().unwrap();
    assert_eq!(
        mails_for(&smtp, "ws-proc").len(),
        1,
        "no second email within 24 hours"
    );
}
