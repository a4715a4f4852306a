//! Shared helpers for the integration tests: an embedded broker per test, in-process and child-process
//! dispatchers, send requests with every identifier filled in, and waiting on conditions with a deadline.

pub mod aggregator;
pub mod tansu;

use std::collections::HashMap;
use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hookrelay::config::Config;
use hookrelay::events::SendRequest;
use hookrelay::kafka::EmbeddedBroker;
use hookrelay::tools::examples::ExampleSend;
use hookrelay::tools::harness::local_config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;

/// An embedded broker with hookrelay's topics, and a configuration pointing at it.
pub struct Kafka {
    pub broker: EmbeddedBroker,
    pub config: Config,
}

impl Kafka {
    pub fn start(send_partitions: i32) -> Self {
        Self::start_with(send_partitions, |_| {})
    }

    /// As [`Kafka::start`], with the configuration adjusted before topics are created (retry tiers).
    pub fn start_with(send_partitions: i32, adjust: impl FnOnce(&mut Config)) -> Self {
        let broker = EmbeddedBroker::start(1).expect("embedded broker starts");
        let mut config = test_config(&broker.bootstrap_servers());
        adjust(&mut config);
        broker
            .create_topics(&config.topics, send_partitions, 2)
            .unwrap();
        Self { broker, config }
    }

    /// A producer of send requests to this broker's send topic.
    pub fn producer(&self) -> hookrelay::tools::harness::SendProducer {
        hookrelay::tools::harness::SendProducer::new(&self.config.kafka, &self.config.topics.sends)
            .unwrap()
    }

    /// Every failure final: one failure event per failing send.
    pub fn without_retries(mut self) -> Self {
        self.config.retry.max_retries = 0;
        self.config.retry.unreachable_max_retries = 0;
        self
    }

    /// Partitions a dispatcher group shares: the send topic's and every retry tier's.
    pub fn group_partitions(&self, send_partitions: i32) -> f64 {
        f64::from(send_partitions + 2 * self.config.topics.retry_tiers.len() as i32)
    }

    /// The values of the first `n` records of `topic` (every partition, from the start), as written; panics
    /// at the deadline naming how many it found.
    pub async fn payloads(&self, topic: &str, n: usize, deadline: Duration) -> Vec<Vec<u8>> {
        use rdkafka::Message as _;
        let c = hookrelay::kafka::client::reader_config(&self.config.kafka);
        let topic = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = c.create().unwrap();
            let md = consumer
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            for p in md.topics()[0].partitions() {
                tpl.add_partition_offset(&topic, p.id(), rdkafka::Offset::Beginning)
                    .unwrap();
            }
            consumer.assign(&tpl).unwrap();
            let until = std::time::Instant::now() + deadline;
            let mut out = Vec::new();
            while out.len() < n {
                assert!(
                    std::time::Instant::now() < until,
                    "{topic}: {} of {n} records within {deadline:?}",
                    out.len()
                );
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                    out.push(m.payload().unwrap_or_default().to_vec());
                }
            }
            out
        })
        .await
        .unwrap()
    }

    /// Committed positions of the dispatch group on the send topic, by partition.
    pub async fn committed(&self, partitions: i32) -> HashMap<i32, i64> {
        let mut c = hookrelay::kafka::client::consumer_config(
            &self.config.kafka,
            &self.config.kafka.dispatch_group_id,
        );
        c.remove("group.protocol");
        c.remove("partition.assignment.strategy");
        let topic = self.config.topics.sends.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = c.create().unwrap();
            let mut tpl = TopicPartitionList::new();
            for p in 0..partitions {
                tpl.add_partition(&topic, p);
            }
            let got = consumer
                .committed_offsets(tpl, Duration::from_secs(10))
                .unwrap();
            got.elements()
                .iter()
                .filter_map(|e| {
                    e.offset()
                        .to_raw()
                        .filter(|o| *o >= 0)
                        .map(|o| (e.partition(), o))
                })
                .collect()
        })
        .await
        .unwrap()
    }
}

#[allow(unused_imports)]
pub use hookrelay::tools::harness::LocalDispatcher as Dispatcher;

/// A receiver on an ephemeral loopback port answering 200 unless a request's query says otherwise.
pub async fn receiver() -> hookrelay::tools::receiver::Receiver {
    use hookrelay::tools::receiver::{Receiver, Script};
    Receiver::start("127.0.0.1:0".parse().unwrap(), Script::default())
        .await
        .unwrap()
}

/// Produces `n` sends to `url`, keyed by their ids so that they spread over every partition (and so over
/// every dispatcher of the group).
pub async fn spread(config: &hookrelay::config::Config, prefix: &str, n: usize, url: &str) {
    let producer =
        hookrelay::tools::harness::SendProducer::new(&config.kafka, &config.topics.sends).unwrap();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let bytes = serde_json::to_vec(&send(&id, url)).unwrap();
        producer.raw(id.as_bytes(), &bytes).await.unwrap();
    }
}

/// A receiver like [`receiver`] on another loopback address (`127.0.0.2`: another host to hookrelay).
pub async fn receiver_on(ip: &str) -> hookrelay::tools::receiver::Receiver {
    use hookrelay::tools::receiver::{Receiver, Script};
    Receiver::start(format!("{ip}:0").parse().unwrap(), Script::default())
        .await
        .unwrap()
}

/// A receiver like [`receiver`] that takes `latency` over every answer.
pub async fn slow_receiver(latency: Duration) -> hookrelay::tools::receiver::Receiver {
    use hookrelay::tools::receiver::{Receiver, Script};
    let script = Script {
        latency,
        ..Script::default()
    };
    Receiver::start("127.0.0.1:0".parse().unwrap(), script)
        .await
        .unwrap()
}

/// Polls `cond` until it holds; panics naming `what` at the deadline. No sleeping-and-hoping.
pub async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "timed out after {deadline:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A send request with every identifier filled in, derived from `id`.
pub fn full_send(id: &str, workspace: &str, url: &str) -> SendRequest {
    ExampleSend::new(id, workspace, url)
        .every_identifier()
        .header("x-test", id)
        .body(format!(r#"{{"id":"{id}"}}"#))
        .created_at(1_700_000_000_000)
        .build()
}

/// Produces one send (`send(id, url)`).
pub async fn produce_one(producer: &hookrelay::tools::harness::SendProducer, id: &str, url: &str) {
    producer.json(&send(id, url)).await.unwrap();
}

/// An embedded broker, a receiver, an in-process dispatcher, a reader of what it publishes and a producer:
/// the stage most tests play on.
pub async fn rig(
    kafka: Kafka,
) -> (
    Kafka,
    hookrelay::tools::receiver::Receiver,
    Dispatcher,
    hookrelay::tools::harness::OutputReader,
    hookrelay::tools::harness::SendProducer,
) {
    let rx = receiver().await;
    let dispatcher = Dispatcher::spawn(&kafka.config);
    let reader = hookrelay::tools::harness::OutputReader::start(&kafka.config)
        .await
        .unwrap();
    let producer = kafka.producer();
    (kafka, rx, dispatcher, reader, producer)
}

/// Stops the in-process dispatcher (it must stop cleanly) and the reader.
pub async fn stop(dispatcher: Dispatcher, reader: hookrelay::tools::harness::OutputReader) {
    dispatcher
        .stop()
        .await
        .expect("the dispatcher stops cleanly");
    reader.stop();
}

/// Produces `n` sends with ids `<prefix>0`, `<prefix>1`, …, all to `url`.
pub async fn produce_sends(
    producer: &hookrelay::tools::harness::SendProducer,
    prefix: &str,
    n: usize,
    url: &str,
) {
    for i in 0..n {
        producer
            .json(&send(&format!("{prefix}{i}"), url))
            .await
            .unwrap();
    }
}

/// A send of workspace `ws` with every identifier but the workspace name.
pub fn send(id: &str, url: &str) -> SendRequest {
    let mut s = full_send(id, "ws", url);
    s.workspace_name = None;
    s
}

/// The tests' configuration for a broker at `bootstrap`: fast retries, two short tiers, quick probes.
pub fn test_config(bootstrap: &str) -> Config {
    let mut config = local_config(bootstrap);
    config.http.request_timeout = Duration::from_secs(5);
    config.retry.initial_backoff = Duration::from_millis(200);
    config.retry.max_backoff = Duration::from_secs(2);
    config.retry.jitter = 0.0;
    config.topics.retry_tiers = vec!["1s".into(), "5s".into()];
    config.telemetry.probe_interval = Duration::from_millis(300);
    config
}

/// A free loopback port (bound and released; fine for tests on one machine).
pub fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn hookrelay_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hookrelay"))
}

/// A `hookrelay` child process (`dispatch` unless said otherwise), configured by a TOML file written from
/// the test's [`Config`] — the same file an operator would pass with `--config`.
pub struct ChildDispatcher {
    pub child: Child,
    pub metrics_addr: SocketAddr,
    _config_file: tempfile::NamedTempFile,
    /// Standard error, when kept (see [`ChildDispatcher::spawn_logged`]).
    log: Option<tempfile::NamedTempFile>,
}

/// The configuration a child process runs with: the test's, with a telemetry listener of its own, the
/// classic group protocol with a short session (a killed member's partitions move on in seconds, where a
/// KIP-848 group waits for the broker's session timeout) and loopback receivers allowed.
pub fn child_config(config: &Config, metrics_addr: SocketAddr) -> Config {
    let mut c = config.clone();
    c.kafka
        .consumer_properties
        .insert("group.protocol".into(), "classic".into());
    c.kafka
        .consumer_properties
        .insert("session.timeout.ms".into(), "6000".into());
    c.kafka
        .consumer_properties
        .insert("heartbeat.interval.ms".into(), "500".into());
    c.kafka.startup_timeout = Duration::from_secs(10);
    c.security.allow_cidrs = vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()];
    c.security.any_port = true;
    c.dispatch.commit_interval = Duration::from_millis(200);
    c.http.request_timeout = Duration::from_secs(10);
    c.telemetry.listen = metrics_addr.to_string();
    c.telemetry.log_level = "info".into();
    c
}

/// Writes `config` as a TOML file for `--config`.
pub fn config_file(config: &Config) -> tempfile::NamedTempFile {
    use std::io::Write as _;
    let mut f = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    let text = toml::to_string(config).expect("config serialises as TOML");
    f.write_all(text.as_bytes()).expect("config written");
    f
}

/// `hookrelay <subcommand> --config <file>` with a clean environment plus `extra` variables.
pub fn hookrelay_command(
    subcommand: &str,
    file: &tempfile::NamedTempFile,
    extra: &[(&str, &str)],
) -> Command {
    let mut cmd = Command::new(hookrelay_bin());
    cmd.arg(subcommand)
        .arg("--config")
        .arg(file.path())
        .env_clear()
        .envs(extra.iter().copied());
    cmd
}

impl ChildDispatcher {
    pub fn spawn(config: &Config) -> Self {
        Self::spawn_with(config, &[])
    }

    /// As [`ChildDispatcher::spawn`], with `HOOKRELAY_*` variables on top of the file.
    pub fn spawn_with(config: &Config, extra: &[(&str, &str)]) -> Self {
        Self::spawn_command("dispatch", config, extra)
    }

    /// As [`ChildDispatcher::spawn_with`], returning once it owns partitions, so that what is produced after
    /// is taken at once (up to 90 s: a first assignment on tansu has taken 23 s).
    pub async fn spawn_ready(config: &Config, extra: &[(&str, &str)]) -> Self {
        let d = Self::spawn_with(config, extra);
        wait_for(
            "the dispatcher owns partitions",
            Duration::from_secs(90),
            || async {
                d.metric("hookrelay_assigned_partitions")
                    .await
                    .unwrap_or(0.0)
                    > 0.0
            },
        )
        .await;
        d
    }

    /// Any long-running subcommand (`dispatch`, `aggregate`) as a child.
    pub fn spawn_command(subcommand: &str, config: &Config, extra: &[(&str, &str)]) -> Self {
        Self::spawn_to(subcommand, config, extra, None, false)
    }

    /// A dispatcher that chooses its group protocol as an operator's does when none is set: by probing
    /// the broker (KIP-848 where it speaks it), with librdkafka's own session settings.
    pub fn spawn_probing(config: &Config) -> Self {
        Self::spawn_to("dispatch", config, &[], None, true)
    }

    /// A dispatcher whose standard error is kept, to be read with [`ChildDispatcher::log`].
    pub fn spawn_logged(config: &Config) -> Self {
        Self::spawn_logged_with(config, &[])
    }

    /// As [`ChildDispatcher::spawn_logged`], with `HOOKRELAY_*` variables on top of the file.
    pub fn spawn_logged_with(config: &Config, extra: &[(&str, &str)]) -> Self {
        let log = tempfile::NamedTempFile::new().expect("log file");
        Self::spawn_to("dispatch", config, extra, Some(log), false)
    }

    fn spawn_to(
        subcommand: &str,
        config: &Config,
        extra: &[(&str, &str)],
        log: Option<tempfile::NamedTempFile>,
        probing: bool,
    ) -> Self {
        let metrics_addr = free_port();
        let mut c = child_config(config, metrics_addr);
        if probing {
            c.kafka.consumer_properties.remove("group.protocol");
            c.kafka.consumer_properties.remove("session.timeout.ms");
            c.kafka.consumer_properties.remove("heartbeat.interval.ms");
        }
        let file = config_file(&c);
        let stderr = match &log {
            Some(f) => Stdio::from(f.reopen().expect("log file reopens")),
            None => Stdio::inherit(),
        };
        let child = hookrelay_command(subcommand, &file, extra)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("hookrelay starts");
        Self {
            child,
            metrics_addr,
            _config_file: file,
            log,
        }
    }

    /// What a child from [`ChildDispatcher::spawn_logged`] has written to standard error so far.
    pub fn log(&self) -> String {
        let path = self.log.as_ref().expect("spawned with spawn_logged").path();
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Runs `subcommand` to its end (it must end within `deadline`): exit status and standard error.
    pub fn run_to_end(
        subcommand: &str,
        config: &Config,
        extra: &[(&str, &str)],
        deadline: Duration,
    ) -> (std::process::ExitStatus, String) {
        let file = config_file(&child_config(config, free_port()));
        let mut child = hookrelay_command(subcommand, &file, extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("hookrelay starts");
        let until = std::time::Instant::now() + deadline;
        let status = loop {
            if let Some(status) = child.try_wait().expect("waits") {
                break status;
            }
            if std::time::Instant::now() > until {
                let _ = child.kill();
                panic!("hookrelay {subcommand} did not end within {deadline:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut err = String::new();
        use std::io::Read as _;
        child
            .stderr
            .take()
            .expect("piped")
            .read_to_string(&mut err)
            .expect("stderr read");
        (status, err)
    }

    /// `/metrics` text, or empty while the listener is not up yet.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        match reqwest::get(url).await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// `/readyz` status and body, or `None` while the listener is not up yet.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        let r = reqwest::get(format!("http://{}/readyz", self.metrics_addr))
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.unwrap_or_default()))
    }

    /// The value of one series: a bare name such as `hookrelay_assigned_partitions`, or with its labels in
    /// the exposition's (alphabetical) order, such as `hookrelay_sends_total{result="delivered"}`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        self.child.wait().expect("exit status")
    }
}

impl Drop for ChildDispatcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw TCP endpoint for what a well-behaved HTTP server would never do (endless bodies, dribbled headers).
pub async fn raw_http_server(behaviour: RawBehaviour) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let _ = sock.read(&mut buf).await;
                match behaviour {
                    RawBehaviour::EndlessBody { status } => {
                        let head = format!(
                            "HTTP/1.1 {status} Whatever\r\ntransfer-encoding: chunked\r\n\r\n"
                        );
                        if sock.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let chunk = format!("{:x}\r\n{}\r\n", 4096, "z".repeat(4096));
                        // Bounded in time: stops after 30 s or as soon as the client goes away.
                        let until = tokio::time::Instant::now() + Duration::from_secs(30);
                        while tokio::time::Instant::now() < until {
                            if sock.write_all(chunk.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                    RawBehaviour::DribbledHeaders { every } => {
                        for b in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" {
                            tokio::time::sleep(every).await;
                            if sock.write_all(&[*b]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[derive(Debug, Clone, Copy)]
pub enum RawBehaviour {
    /// Answers `status` with a chunked body that never ends.
    EndlessBody { status: u16 },
    /// Sends the status line and headers one byte at a time.
    DribbledHeaders { every: Duration },
}

/// One email as the test SMTP server received it.
#[derive(Debug, Clone)]
pub struct Mail {
    pub from: String,
    pub to: Vec<String>,
    pub data: String,
}

/// A real (minimal) SMTP server on 127.0.0.1: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT. While
/// refusing, it answers MAIL with `451` (try again later), as a server under maintenance does.
#[derive(Clone)]
pub struct SmtpServer {
    pub addr: SocketAddr,
    pub mails: std::sync::Arc<std::sync::Mutex<Vec<Mail>>>,
    refusing: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SmtpServer {
    pub async fn start(addr: SocketAddr) -> Self {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mails = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let refusing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let store = mails.clone();
        let refuse = refusing.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let store = store.clone();
                let refuse = refuse.clone();
                tokio::spawn(async move {
                    let (r, mut w) = sock.into_split();
                    let mut lines = BufReader::new(r).lines();
                    let _ = w.write_all(b"220 test-smtp ready\r\n").await;
                    let (mut from, mut to) = (String::new(), Vec::new());
                    while let Ok(Some(line)) = lines.next_line().await {
                        let upper = line.to_ascii_uppercase();
                        let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO")
                        {
                            b"250-test-smtp\r\n250 8BITMIME\r\n"
                        } else if upper.starts_with("MAIL FROM:") {
                            if refuse.load(std::sync::atomic::Ordering::SeqCst) {
                                b"451 4.3.0 try again later\r\n"
                            } else {
                                from = line[10..].trim().to_string();
                                b"250 ok\r\n"
                            }
                        } else if upper.starts_with("RCPT TO:") {
                            to.push(
                                line[8..]
                                    .trim()
                                    .trim_matches(|c| c == '<' || c == '>')
                                    .to_string(),
                            );
                            b"250 ok\r\n"
                        } else if upper == "DATA" {
                            let _ = w.write_all(b"354 end with .\r\n").await;
                            let mut data = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                data.push_str(l.strip_prefix('.').unwrap_or(&l));
                                data.push('\n');
                            }
                            store.lock().unwrap().push(Mail {
                                from: from.clone(),
                                to: std::mem::take(&mut to),
                                data,
                            });
                            b"250 queued\r\n"
                        } else if upper == "QUIT" {
                            let _ = w.write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            b"250 ok\r\n"
                        };
                        if w.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            mails,
            refusing,
        }
    }

    /// Refuses (451) or accepts mail from now on.
    pub fn set_refusing(&self, refusing: bool) {
        self.refusing
            .store(refusing, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Mail> {
        self.mails.lock().unwrap().clone()
    }
}

/// Waits (90 s at most) until every send of `ids` is delivered or reported, asserts none is missing, and
/// returns how many requests repeated an earlier one.
pub async fn all_accounted(
    rx: &hookrelay::tools::receiver::Receiver,
    reader: &hookrelay::tools::harness::OutputReader,
    ids: &[String],
) -> usize {
    wait_for(
        "every send is delivered or reported",
        Duration::from_secs(90),
        || async { accounted(rx, &reader.snapshot()).0.len() == ids.len() },
    )
    .await;
    let (done, duplicates) = accounted(rx, &reader.snapshot());
    let missing: Vec<&String> = ids.iter().filter(|id| !done.contains(*id)).collect();
    assert!(missing.is_empty(), "missing sends: {missing:?}");
    duplicates
}

/// Which sends are accounted for — delivered (the receiver answered 2xx) or reported (a failure event) — and
/// how many requests repeated an earlier one.
pub fn accounted(
    rx: &hookrelay::tools::receiver::Receiver,
    observed: &hookrelay::tools::harness::Observed,
) -> (std::collections::HashSet<String>, usize) {
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut done = std::collections::HashSet::new();
    for r in rx.requests() {
        if let Some(id) = r.webhook_id {
            *by_id.entry(id.clone()).or_default() += 1;
            if (200..300).contains(&r.status) {
                done.insert(id);
            }
        }
    }
    for e in &observed.failures {
        if let Some(d) = &e.dispatch_id {
            done.insert(d.trim_start_matches("dispatch-").to_string());
        }
    }
    let duplicates = by_id.values().map(|n| n - 1).sum();
    (done, duplicates)
}

/// Headers holding one header whose name is `name` exactly, bytes that are not UTF-8 included: what any
/// client can put on the wire, and what rdkafka's safe API cannot write.
// Unsafe: librdkafka's C API is the only way to write a header name that is not UTF-8.
#[allow(unsafe_code)]
pub fn headers_with_raw_name(name: &[u8], value: &[u8]) -> rdkafka::message::OwnedHeaders {
    use rdkafka::bindings as rdsys;
    let headers = rdkafka::message::OwnedHeaders::new();
    // A `&BorrowedHeaders` is the address of librdkafka's headers object (rdkafka casts it the same way).
    let ptr = headers.as_borrowed() as *const rdkafka::message::BorrowedHeaders
        as *mut rdsys::rd_kafka_headers_t;
    // SAFETY: `ptr` is the live headers object owned by `headers`; name and value are copied by librdkafka.
    let err = unsafe {
        rdsys::rd_kafka_header_add(
            ptr,
            name.as_ptr().cast(),
            name.len() as isize,
            value.as_ptr().cast(),
            value.len() as isize,
        )
    };
    assert_eq!(err, rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR);
    headers
}
