//! Every subcommand of the built binary as a separate process, with the arguments the README and
//! docker-compose.yml give it, and the README's kcat walk-through step for step: what a newcomer runs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::{free_port, hookrelay_bin, wait_for};
use hookrelay::config::TopicsConfig;
use rdkafka::consumer::BaseConsumer;

const SECONDS_60: Duration = Duration::from_secs(60);

/// A long-running `hookrelay` process, stopped with SIGTERM (and reaped) when dropped.
struct Process {
    name: String,
    child: Child,
}

impl Process {
    fn start(name: &str, args: &[&str], env: &[(&str, &str)], dir: &Path) -> Self {
        let child = Command::new(hookrelay_bin())
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        Self {
            name: name.to_string(),
            child,
        }
    }

    /// The first line the process prints on standard output.
    fn first_line(&mut self) -> String {
        let mut line = String::new();
        BufReader::new(self.child.stdout.as_mut().expect("piped"))
            .read_line(&mut line)
            .expect("a first line");
        line.trim().to_string()
    }

    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "{} exited early",
            self.name
        );
    }

    /// SIGTERM, then the exit status (SIGKILL after 20 s).
    fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let until = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            if std::time::Instant::now() > until {
                let _ = self.child.kill();
                panic!("{} did not stop within 20 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_status(url: &str) -> Option<u16> {
    reqwest::get(url).await.ok().map(|r| r.status().as_u16())
}

async fn get_text(url: &str) -> String {
    match reqwest::get(url).await {
        Ok(r) => r.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

fn run(args: &[&str], env: &[(&str, &str)], dir: &Path) -> std::process::Output {
    Command::new(hookrelay_bin())
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(dir)
        .output()
        .unwrap()
}

/// Starts `hookrelay broker` and returns it with its bootstrap address.
fn broker(dir: &Path, args: &[&str]) -> (Process, String) {
    let mut all = vec!["broker"];
    all.extend_from_slice(args);
    let mut b = Process::start("broker", &all, &[], dir);
    let line = b.first_line();
    let bootstrap = line
        .strip_prefix("bootstrap.servers=")
        .unwrap_or_else(|| panic!("the broker's first line names its address, got {line:?}"))
        .to_string();
    (b, bootstrap)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_runs_as_a_process_with_the_documented_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let repo = env!("CARGO_MANIFEST_DIR");

    // check-config on every shipped configuration.
    // The Kubernetes config reads its signing secrets from a mounted Secret; here, from the repository's copy.
    let secrets = format!("{repo}/deploy/base/signing-secrets.toml");
    let env = [("HOOKRELAY_SIGNING__SECRETS_FILE", secrets.as_str())];
    for file in [
        "hookrelay.example.toml",
        "compose/hookrelay.toml",
        "deploy/base/hookrelay.toml",
    ] {
        let out = run(
            &["check-config", "--config", &format!("{repo}/{file}")],
            &env,
            dir.path(),
        );
        assert!(
            out.status.success(),
            "check-config {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(printed.starts_with("# configuration is valid"), "{printed}");
        // What it prints is a config file: saved and read back, it is valid and prints the same.
        let saved = dir.path().join("effective.toml");
        std::fs::write(&saved, &printed).unwrap();
        let again = run(
            &["check-config", "--config", saved.to_str().unwrap()],
            &env,
            dir.path(),
        );
        assert!(
            again.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&again.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&again.stdout), printed, "{file}");
    }

    // broker: first line, and every topic the configuration names exists — retry tiers included.
    let (mut broker, bootstrap) = broker(dir.path(), &["--partitions", "2"]);
    let kafka = hookrelay::config::KafkaConfig {
        bootstrap_servers: bootstrap.clone(),
        ..Default::default()
    };
    let client: BaseConsumer = hookrelay::kafka::client::reader_config(&kafka)
        .create()
        .unwrap();
    let missing = hookrelay::kafka::topics::missing_topics(
        &client,
        &TopicsConfig::default().all(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert!(missing.is_empty(), "the broker lacks {missing:?}");

    // aggregate (like dispatch, tested in operations.rs) refuses to start without its topics, naming them.
    let out = run(
        &["aggregate"],
        &[
            ("HOOKRELAY_KAFKA__BOOTSTRAP_SERVERS", &bootstrap),
            ("HOOKRELAY_KAFKA__STARTUP_TIMEOUT", "1s"),
            ("HOOKRELAY_TOPICS__ALERTS", "no-such-alerts"),
            ("HOOKRELAY_TELEMETRY__LISTEN", ""),
        ],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "aggregate exits non-zero without its topics"
    );
    assert!(err.contains("--create --topic no-such-alerts "), "{err}");

    // receiver: as docker-compose.yml runs it, and as the README does.
    let compose_rx = free_port().to_string();
    let mut receiver_compose = Process::start(
        "receiver (compose)",
        &[
            "receiver",
            &format!("--listen={compose_rx}"),
            "--mix=200:84,500:5,503:4,429:3,404:2,410:2",
            "--latency=20ms",
            "--latency-jitter=80ms",
            "--retry-after=5",
        ],
        &[],
        dir.path(),
    );
    assert!(receiver_compose.first_line().contains(&compose_rx));
    let readme_rx = free_port().to_string();
    let mut receiver = Process::start(
        "receiver (README)",
        &["receiver", "--mix", "200:90,503:10", "--listen", &readme_rx],
        &[],
        dir.path(),
    );
    assert!(receiver.first_line().contains(&readme_rx));
    let registry_addr = free_port().to_string();
    let mut registry = Process::start(
        "registry (README)",
        &["registry", "--listen", &registry_addr],
        &[],
        dir.path(),
    );
    assert!(registry.first_line().contains(&registry_addr));
    assert_eq!(
        http_status(&format!("http://{registry_addr}/subjects")).await,
        Some(200)
    );
    assert_eq!(
        http_status(&format!("http://{readme_rx}/_stats")).await,
        Some(200)
    );
    let answered = reqwest::Client::new()
        .post(format!("http://{compose_rx}/hook"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    assert!(
        [200, 500, 503, 429, 404, 410].contains(&answered),
        "{answered}"
    );

    // dispatch and aggregate: ready (partitions assigned, broker reachable, topics present).
    let dispatch_metrics = free_port();
    let agg_metrics = free_port();
    let eml = dir.path().join("mail");
    let common = |listen: SocketAddr| -> Vec<(String, String)> {
        vec![
            (
                "HOOKRELAY_KAFKA__BOOTSTRAP_SERVERS".into(),
                bootstrap.clone(),
            ),
            ("HOOKRELAY_TELEMETRY__LISTEN".into(), listen.to_string()),
            (
                "HOOKRELAY_SECURITY__ALLOW_CIDRS".into(),
                r#"["127.0.0.0/8"]"#.into(),
            ),
            ("HOOKRELAY_SECURITY__ANY_PORT".into(), "true".into()),
            (
                "HOOKRELAY_AGGREGATE__EML_DIR".into(),
                eml.display().to_string(),
            ),
        ]
    };
    let d_env = common(dispatch_metrics);
    let a_env = common(agg_metrics);
    let d_refs: Vec<(&str, &str)> = d_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let a_refs: Vec<(&str, &str)> = a_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut dispatch = Process::start("dispatch", &["dispatch"], &d_refs, dir.path());
    let mut aggregate = Process::start("aggregate", &["aggregate"], &a_refs, dir.path());
    for (name, addr) in [("dispatch", dispatch_metrics), ("aggregate", agg_metrics)] {
        wait_for(&format!("{name} is ready"), SECONDS_60, || async {
            http_status(&format!("http://{addr}/readyz")).await == Some(200)
        })
        .await;
        assert_eq!(
            http_status(&format!("http://{addr}/healthz")).await,
            Some(200)
        );
    }

    // produce, with docker-compose.yml's arguments and a count: the dispatcher delivers or reports them all.
    let url_a = format!("--url=http://{compose_rx}/orders/created");
    let url_b = format!("--url=http://{compose_rx}/crm/events");
    let out = run(
        &[
            "produce",
            "--rate=40",
            "--workspaces=3",
            &url_a,
            &url_b,
            "--count=20",
        ],
        &[("HOOKRELAY_KAFKA__BOOTSTRAP_SERVERS", &bootstrap)],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "produce: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the dispatcher handles all 20 generated sends",
        SECONDS_60,
        || async {
            let m = get_text(&format!("http://{dispatch_metrics}/metrics")).await;
            let done = ["delivered", "failed"]
                .iter()
                .filter_map(|r| metric(&m, &format!("hookrelay_sends_total{{result=\"{r}\"}}")))
                .sum::<f64>()
                + metric(
                    &m,
                    "hookrelay_retries_scheduled_total{tier=\"webhook-retries-10s\"}",
                )
                .unwrap_or(0.0);
            done >= 20.0
        },
    )
    .await;

    for p in [
        &mut broker,
        &mut receiver_compose,
        &mut receiver,
        &mut dispatch,
        &mut aggregate,
    ] {
        p.assert_running();
    }
    for p in [
        &mut dispatch,
        &mut aggregate,
        &mut receiver,
        &mut receiver_compose,
        &mut broker,
    ] {
        let status = p.terminate();
        assert!(
            status.success(),
            "{} exits 0 on SIGTERM, got {status:?}",
            p.name
        );
    }

    // The self-contained commands finish cleanly.
    let out = run(&["bench", "--sends", "300", "--no-wrk"], &[], dir.path());
    assert!(
        out.status.success(),
        "bench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["demo", "--sends", "300"], &[], dir.path());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("adds up"), "{text}");
}

/// The README's "Trying it by hand with kcat", one step after another, with the ports swapped for free ones.
/// kcat produces and consumes when it is installed (CI installs it); without it the same records are
/// produced and read by this test's own Kafka client, and everything else is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_kcat_walk_through_retries_a_503_to_delivery() {
    let readme = include_str!("../../README.md");
    let block = readme
        .split("### Trying it by hand with kcat")
        .nth(1)
        .and_then(|s| s.split("```sh\n").nth(1))
        .and_then(|s| s.split("```").next())
        .expect("the README has the walk-through");
    // The steps this test takes, as the README writes them.
    for step in [
        "hookrelay broker > broker.txt &",
        "hookrelay receiver --mix 200:90,503:10 --listen 127.0.0.1:8080 &",
        "export HOOKRELAY_TELEMETRY__LISTEN=127.0.0.1:9090",
        r#"export HOOKRELAY_SECURITY__ALLOW_CIDRS='["127.0.0.0/8"]' HOOKRELAY_SECURITY__ANY_PORT=true"#,
        "export HOOKRELAY_RETRY__INITIAL_BACKOFF=5s",
        "hookrelay dispatch &",
        "for i in $(seq 1 100); do",
        r#"  echo '{"id":"s'$i'","workspace_id":"ws","webhook":{"url":"http://127.0.0.1:8080/hook","request_method":"POST","body":"{}"}}'"#,
        "done | kcat -P -b $HOOKRELAY_KAFKA__BOOTSTRAP_SERVERS -t webhook-sends -k ws",
        "kcat -C -b $HOOKRELAY_KAFKA__BOOTSTRAP_SERVERS -t webhook-failures -e -f '%k %h\\n'",
        "curl -s 127.0.0.1:9090/metrics | grep -E '^hookrelay_(sends_total|delivered_after_retry_total)'",
    ] {
        assert!(block.contains(step), "the README's walk-through no longer says: {step}");
    }

    let dir = tempfile::tempdir().unwrap();
    let (mut broker, bootstrap) = broker(dir.path(), &[]);
    let rx_addr = free_port().to_string();
    let mut receiver = Process::start(
        "receiver",
        &["receiver", "--mix", "200:90,503:10", "--listen", &rx_addr],
        &[],
        dir.path(),
    );
    receiver.first_line();
    let metrics = free_port().to_string();
    let env = [
        ("HOOKRELAY_KAFKA__BOOTSTRAP_SERVERS", bootstrap.as_str()),
        ("HOOKRELAY_TELEMETRY__LISTEN", metrics.as_str()),
        ("HOOKRELAY_SECURITY__ALLOW_CIDRS", r#"["127.0.0.0/8"]"#),
        ("HOOKRELAY_SECURITY__ANY_PORT", "true"),
        ("HOOKRELAY_RETRY__INITIAL_BACKOFF", "5s"),
    ];
    let mut dispatch = Process::start("dispatch", &["dispatch"], &env, dir.path());
    let lines: String = (1..=100)
        .map(|i| {
            format!(
                r#"{{"id":"s{i}","workspace_id":"ws","webhook":{{"url":"http://{rx_addr}/hook","request_method":"POST","body":"{{}}"}}}}"#
            ) + "\n"
        })
        .collect();
    let kcat = Command::new("kcat")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if kcat {
        let mut p = Command::new("kcat")
            .args(["-P", "-b", &bootstrap, "-t", "webhook-sends", "-k", "ws"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write as _;
        p.stdin.take().unwrap().write_all(lines.as_bytes()).unwrap();
        assert!(p.wait().unwrap().success(), "kcat -P");
    } else {
        eprintln!(
            "kcat is not installed: producing the README's 100 lines with this test's Kafka client"
        );
        let mut c = hookrelay::config::Config::default();
        c.kafka.bootstrap_servers = bootstrap.clone();
        let producer =
            hookrelay::tools::harness::SendProducer::new(&c.kafka, "webhook-sends").unwrap();
        for line in lines.lines() {
            producer.raw(b"ws", line.as_bytes()).await.unwrap();
        }
    }

    let metrics_url = format!("http://{metrics}/metrics");
    wait_for(
        "all 100 sends are delivered, some after a retry of a 503",
        Duration::from_secs(120),
        || async {
            let m = get_text(&metrics_url).await;
            metric(&m, "hookrelay_sends_total{result=\"delivered\"}") == Some(100.0)
                && metric(&m, "hookrelay_delivered_after_retry_total") >= Some(1.0)
        },
    )
    .await;
    let m = get_text(&metrics_url).await;
    assert_eq!(
        metric(&m, "hookrelay_sends_total{result=\"failed\"}"),
        Some(0.0)
    );
    let retried = metric(&m, "hookrelay_failure_events_total{terminal=\"false\"}").unwrap();
    assert!(retried >= 1.0);
    if kcat {
        let out = Command::new("kcat")
            .args([
                "-C",
                "-b",
                &bootstrap,
                "-t",
                "webhook-failures",
                "-e",
                "-f",
                "%k %h\\n",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.lines().filter(|l| l.starts_with("ws ")).count() as f64,
            retried,
            "one failure event per 503, keyed by workspace: {text}"
        );
    }
    for p in [&mut dispatch, &mut receiver, &mut broker] {
        assert!(p.terminate().success(), "{} exits 0", p.name);
    }
}
