//! The aggregator's side of the tests: failure events produced to the embedded broker, an SMTP server to
//! receive the alerts, and waiting until an aggregator has read everything.

use std::time::Duration;

use hookrelay::aggregate::config::SmtpSecurity;
use hookrelay::config::{Config, EventEncoding};
use hookrelay::events::FailureEvent;
use hookrelay::tools::harness::LocalAggregator;
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::{wait_for, Kafka, Mail, SmtpServer};

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A real SMTP server and an embedded broker whose aggregator alerts at `threshold`.
pub async fn with_smtp(threshold: u64) -> (SmtpServer, Kafka) {
    let smtp = SmtpServer::start("127.0.0.1:0".parse().unwrap()).await;
    let mut kafka = Kafka::start(1);
    configure(&mut kafka, smtp.addr.port(), threshold);
    (smtp, kafka)
}

pub fn configure(kafka: &mut Kafka, smtp_port: u16, threshold: u64) {
    configure_config(&mut kafka.config, smtp_port, threshold);
}

/// As [`configure`], for any broker's configuration.
pub fn configure_config(config: &mut Config, smtp_port: u16, threshold: u64) {
    let a = &mut config.aggregate;
    a.threshold = threshold;
    a.smtp.host = "127.0.0.1".into();
    a.smtp.port = smtp_port;
    a.smtp.security = SmtpSecurity::Plain;
    a.company_admins = vec![
        "admin@company.example".into(),
        "second-admin@company.example".into(),
    ];
    a.from = "hookrelay <alerts@company.example>".into();
}

pub fn event(ws: &str, code: i32, at_ms: i64) -> FailureEvent {
    FailureEvent {
        http_status_code: Some(code),
        endpoint_url: Some("https://hooks.example/p?a=1&b=<x>".into()),
        app_group_id: Some(ws.into()),
        campaign_id: Some("cmp_spring".into()),
        campaign_name: Some("<b>Spring</b> sale".into()),
        id: uuid::Uuid::new_v4().to_string(),
        time: (at_ms / 1000) as i32,
        time_ms: Some(at_ms),
        user_id: "u".into(),
        workspace_name: Some(format!("{ws} <&> Co")),
        is_terminal: Some(true),
        ..Default::default()
    }
}

pub async fn produce(config: &Config, events: Vec<FailureEvent>) {
    let producer: FutureProducer = hookrelay::kafka::client::producer_config(&config.kafka)
        .create()
        .unwrap();
    let sends = events.into_iter().map(|e| {
        let producer = producer.clone();
        let topic = config.topics.failures.clone();
        async move {
            let key = e.app_group_id.clone().unwrap();
            let payload = e.encode(EventEncoding::SingleObject, None);
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&payload),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    });
    futures::future::join_all(sends).await;
}

pub fn many(ws: &str, n: usize, code: i32, at_ms: i64) -> Vec<FailureEvent> {
    (0..n).map(|_| event(ws, code, at_ms)).collect()
}

pub fn mails_for(smtp: &SmtpServer, ws: &str) -> Vec<Mail> {
    smtp.received()
        .into_iter()
        .filter(|m| {
            m.data
                .contains(&format!("Subject: [hookrelay] Webhook errors in {ws} "))
        })
        .collect()
}

pub async fn settled(agg: &LocalAggregator, events: u64) {
    let m = agg.metrics.clone();
    let what = format!("the aggregator has read {events} events");
    let read = agg.metrics.clone();
    let _report = Report(move || {
        format!(
            "counted {}, ignored {}, restored {}",
            read.events_counted.get(),
            read.events_ignored.get(),
            read.events_restored.get()
        )
    });
    wait_for(&what, Duration::from_secs(30), || {
        let m = m.clone();
        async move {
            m.events_counted.get() + m.events_ignored.get() + m.events_restored.get() >= events
        }
    })
    .await;
}

/// Prints what an aggregator had done when a wait on it fails (the panic unwinds through this).
pub struct Report<F: Fn() -> String>(pub F);

impl<F: Fn() -> String> Drop for Report<F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("aggregator state: {}", (self.0)());
        }
    }
}
