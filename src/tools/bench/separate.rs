//! `hookrelay bench --separate`: the dispatcher as a user runs it. The broker is whatever
//! `[kafka].bootstrap_servers` names (a `hookrelay broker` process, or a real cluster), the dispatcher is a
//! `hookrelay dispatch` child process with its own consumer group, and the receiver is `--url` (nginx or any
//! server) or the bench's own. Throughput counts outcomes on the dispatcher's `/metrics`, latency comes from
//! its `hookrelay_send_latency_seconds` histogram, memory from `/proc`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{bench_send, wrk_ceiling_url, BenchArgs};
use crate::config::Config;
use crate::tools::harness::SendProducer;
use crate::tools::receiver::{Receiver, Script};

pub(super) async fn run(mut config: Config, args: &BenchArgs) -> anyhow::Result<String> {
    let own = if args.urls.is_empty() {
        Some(Receiver::start("127.0.0.1:0".parse()?, Script::default()).await?)
    } else {
        None
    };
    let urls: Vec<String> = match &own {
        Some(r) => vec![r.url("/bench")],
        None => args.urls.clone(),
    };
    let ceiling = if args.no_wrk {
        None
    } else {
        let (url, conns, dur) = (
            urls[0].clone(),
            args.wrk_connections,
            args.wrk_duration.clone(),
        );
        tokio::task::spawn_blocking(move || wrk_ceiling_url(&url, conns, &dur)).await?
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    config.kafka.dispatch_group_id = format!("hookrelay-bench-{}-{}", std::process::id(), port);
    config.telemetry.listen = format!("127.0.0.1:{port}");
    config.security.allow_cidrs = vec!["127.0.0.0/8".parse()?, "::1/128".parse()?];
    config.security.any_port = true;
    let producer = SendProducer::new(&config.kafka, &config.topics.sends)?;
    let body = "x".repeat(args.body_bytes);
    let produce = |i: u32| {
        let (producer, send) = (
            producer.clone(),
            bench_send(i, &urls[i as usize % urls.len()], &body),
        );
        async move { producer.json(&send).await }
    };
    let n = args.sends;
    if args.rate.is_none() {
        let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..n)
            .map(produce)
            .buffer_unordered(1024)
            .collect()
            .await;
        results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    }
    let mut child = Dispatcher::start(&config)?;
    child.wait_ready(args.deadline).await?;
    let producing = Instant::now();
    if let Some(rate) = args.rate {
        paced(n, rate, &produce).await?;
    }
    let (first, done, peak, stall) = child.wait_outcomes(u64::from(n), args.deadline).await?;
    let cpu = done.cpu_secs - first.cpu_secs;
    let (mut first, done) = ((first.at, first.outcomes), done.at);
    if args.rate.is_some() {
        // Paced: the sends were produced while the dispatcher ran, so the run starts with the producing.
        first = (producing, 0);
    }
    let metrics = child.metrics().await.unwrap_or_default();
    child.stop();
    let secs = done
        .saturating_duration_since(first.0)
        .as_secs_f64()
        .max(1e-3);
    let rate = (f64::from(n) - first.1 as f64) / secs;
    Ok(report(
        args,
        &urls,
        (rate, secs, stall),
        cpu / (f64::from(n) - first.1 as f64).max(1.0),
        &metrics,
        peak,
        ceiling,
    ))
}

/// The bench's lines: throughput, latency percentiles, memory, and the ratio to the ceiling.
fn report(
    args: &BenchArgs,
    urls: &[String],
    (rate, secs, stall): (f64, f64, Duration),
    cpu_per_send: f64,
    metrics: &str,
    peak: u64,
    ceiling: Option<f64>,
) -> String {
    let n = args.sends;
    let q = |p: f64| quantile_ms(metrics, p).map_or("?".into(), |v| format!("≤ {v}"));
    let mut out = format!(
        "hookrelay bench --separate: {n} sends to {} ({}), {}-byte bodies, a `hookrelay dispatch` process\n\
         end to end: {rate:.0} sends/s ({secs:.2} s; a backlog: from the first outcome to the last; paced: \
         from the first send produced)\n\
         longest pause without a new outcome: {} ms\n\
         latency produced → outcome durable (ms, histogram bucket): p50 {} · p90 {} · p99 {}\n\
         dispatcher peak resident memory: {:.0} MB\n\
         dispatcher CPU (user + system, first outcome to last): {:.1} µs per send, {:.2} cores busy\n",
        urls.join(", "),
        args.rate.map_or("backlog produced first".into(), |r| format!("{r} sends/s")),
        args.body_bytes,
        stall.as_millis(),
        q(0.5),
        q(0.9),
        q(0.99),
        peak as f64 / 1024.0,
        cpu_per_send * 1e6,
        cpu_per_send * rate,
    );
    if let Some(c) = ceiling {
        out += &format!(
            "receiver ceiling (wrk -t1 -c{} -d{} {}): {c:.0} req/s\nratio end-to-end / ceiling: {:.3}\n",
            args.wrk_connections,
            args.wrk_duration,
            urls[0],
            rate / c
        );
    }
    out
}

/// Produces `n` sends at `rate` per second, in 10 ms steps. Acknowledgements are awaited alongside, not
/// step by step, so a slow acknowledgement does not lower the rate (it did: 10,000/s fell to 2,000/s).
async fn paced<F, Fut>(n: u32, rate: u32, produce: &F) -> anyhow::Result<()>
where
    F: Fn(u32) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let per_tick = (rate / 100).max(1);
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut next = 0;
    while next < n || !acks.is_empty() {
        tokio::select! {
            _ = tick.tick(), if next < n => {
                let end = (next + per_tick).min(n);
                acks.extend((next..end).map(produce));
                next = end;
            }
            Some(sent) = acks.next() => sent?,
        }
    }
    Ok(())
}

/// The upper bound (ms) of the histogram bucket holding quantile `p` of `hookrelay_send_latency_seconds`.
fn quantile_ms(metrics: &str, p: f64) -> Option<u64> {
    let buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("hookrelay_send_latency_seconds_bucket{le=\""))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            Some((le.parse().ok()?, rest.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last()?.1;
    let (le, _) = buckets.iter().find(|(_, c)| *c >= p * total)?;
    le.is_finite().then(|| (le * 1000.0).round() as u64)
}

struct Dispatcher {
    child: Child,
    port: u16,
    file: std::path::PathBuf,
}

impl Dispatcher {
    fn start(config: &Config) -> anyhow::Result<Self> {
        let port = config
            .telemetry
            .listen
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let file = std::env::temp_dir().join(format!("hookrelay-bench-{port}.toml"));
        std::fs::write(&file, toml::to_string(config)?)?;
        let child = Command::new(std::env::current_exe()?)
            .arg("dispatch")
            .arg("--config")
            .arg(&file)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?;
        Ok(Self { child, port, file })
    }

    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let port = self.port;
        let path = path.to_string();
        tokio::task::spawn_blocking(move || super::aggregator::http_get(port, &path))
            .await
            .ok()?
    }

    async fn metrics(&self) -> Option<String> {
        self.get("/metrics").await.map(|(_, body)| body)
    }

    async fn wait_ready(&mut self, deadline: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        while !matches!(self.get("/readyz").await, Some((200, _))) {
            anyhow::ensure!(self.child.try_wait()?.is_none(), "the dispatcher exited");
            anyhow::ensure!(
                started.elapsed() < deadline,
                "the dispatcher was not ready in time"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Waits until `n` sends have an outcome; returns the moment the first had one, the moment the n-th did,
    /// the peak resident memory (kB) sampled meanwhile, and the longest time between the first and the last
    /// outcome without a new one (a stall, e.g. a rebalance, shows there rather than as noise).
    async fn wait_outcomes(
        &mut self,
        n: u64,
        deadline: Duration,
    ) -> anyhow::Result<(Moment, Moment, u64, Duration)> {
        let started = Instant::now();
        let mut first = None;
        let mut peak = 0;
        let (mut last, mut progressed, mut stall) = (0, Instant::now(), Duration::ZERO);
        loop {
            let outcomes = self
                .metrics()
                .await
                .map_or(0, |m| sum(&m, "hookrelay_sends_total"));
            let pid = self.child.id().to_string();
            peak = peak.max(super::aggregator::resident_kb(&pid));
            let now = Moment {
                at: Instant::now(),
                outcomes,
                cpu_secs: cpu_secs(&pid),
            };
            if outcomes > 0 && first.is_none() {
                first = Some(now);
            }
            if outcomes > last {
                if last > 0 {
                    stall = stall.max(now.at - progressed);
                }
                (last, progressed) = (outcomes, now.at);
            }
            if outcomes >= n {
                return Ok((first.unwrap_or(now), now, peak, stall));
            }
            anyhow::ensure!(self.child.try_wait()?.is_none(), "the dispatcher exited");
            anyhow::ensure!(
                started.elapsed() < deadline,
                "only {outcomes} of {n} outcomes before the deadline"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The dispatcher as sampled at one moment of the run.
#[derive(Clone, Copy)]
struct Moment {
    at: Instant,
    outcomes: u64,
    cpu_secs: f64,
}

/// User plus system CPU a process has used, in seconds (0 when /proc cannot tell).
fn cpu_secs(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces: fields are counted after its closing parenthesis.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(11) // state is field 3; utime and stime are fields 14 and 15
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks_per_sec()
}

/// The kernel's clock tick (`getconf CLK_TCK`), 100 on every common Linux build.
fn clock_ticks_per_sec() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// The sum of every series of a counter in a Prometheus text page.
fn sum(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}
