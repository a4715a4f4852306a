//! Command-line interface. `main.rs` parses and calls [`run`]; each subcommand lives in its own module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::telemetry::{self, DispatchMetrics, Health};
use crate::tools::receiver::{parse_mix, Mix, Receiver, Script};
use crate::tools::{bench, demo};
use crate::{dispatch, kafka, shutdown};

#[derive(Debug, Parser)]
#[command(
    name = "hookrelay",
    version,
    about = "Kafka-native webhook delivery: consume send requests, execute webhooks, publish failure events.",
    long_about = "Kafka-native webhook delivery.\n\n\
        Consumes webhook send requests (JSON or Avro) from Kafka, executes each over HTTP, classifies the outcome \
        as Braze documents it (2xx delivered; 3xx not followed; 408/429/5xx retriable; 599 for connection errors \
        and timeouts) and publishes a Currents-compatible Avro failure event for every failed attempt.\n\n\
        Configuration: a TOML file (--config) and HOOKRELAY_<SECTION>__<KEY> environment variables; see \
        hookrelay.example.toml for every key and its default.",
    after_help = "Quick start:  hookrelay demo\nRun `hookrelay <command> --help` for each command's options."
)]
pub struct Cli {
    /// TOML configuration file; every key can also be set as HOOKRELAY_<SECTION>__<KEY>.
    #[arg(
        long,
        short,
        global = true,
        env = "HOOKRELAY_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Consume send requests and deliver webhooks (one consumer-group member; run as many as partitions).
    ///
    /// Reads [topics].sends, executes each webhook, publishes failure events to [topics].failures and
    /// undecodable input to [topics].dead_letters. Offsets are committed only once each record's outcome is
    /// durable (at least once). At start-up every topic it uses must exist (it waits up to
    /// [kafka].startup_timeout, then exits non-zero naming each missing topic and how to create it).
    /// SIGINT/SIGTERM lets in-flight sends finish, commits, leaves the group and exits 0, all within
    /// [dispatch].shutdown_grace; unfinished sends stay uncommitted and are redone. If Kafka is unreachable
    /// and the stop cannot finish, it exits 1 at the end of the grace, saying so. Serves /metrics, /healthz
    /// and /readyz (ready: partitions assigned and a broker reachable) on [telemetry].listen.
    Dispatch,
    /// Count each workspace's failures over 24 hours and email its admins past the threshold.
    ///
    /// A consumer-group member on [topics].failures: each workspace's events are in one partition, so one
    /// instance owns its count. State is rebuilt from Kafka on every assignment (no database); alert
    /// decisions are recorded in [topics].alerts, so at most one email per workspace per [aggregate].window
    /// goes out, across restarts and rebalances. Mail goes over SMTP ([aggregate.smtp]) or, with no SMTP
    /// host, into .eml files in [aggregate].eml_dir. Serves /metrics, /healthz and /readyz.
    Aggregate,
    /// Run the embedded Kafka-protocol broker (librdkafka's mock cluster), for development and tests.
    ///
    /// Prints `bootstrap.servers=<host:port,...>` as the first line of standard output once it has created
    /// every topic the configuration names (send, failure, dead-letter and alert topics and every retry tier),
    /// and runs until SIGINT/SIGTERM. Any Kafka client (kcat, confluent-kafka) can use it.
    ///
    /// NOT FOR PRODUCTION: it keeps only about 5 MiB (or 100,000 message sets) per partition and silently
    /// drops older data, so give busy topics more partitions. It has no Admin API, no compaction and no
    /// offsets-for-times lookup.
    Broker(BrokerArgs),
    /// Run a scripted HTTP endpoint: a weighted mix of status codes, latency, Retry-After, counters.
    ///
    /// Each request's query can override the script: ?status=503, ?delay=250ms, ?retry_after=2,
    /// ?seq=503,503,200 (per webhook-id), ?hang=1. GET /_stats returns the counters as JSON.
    Receiver(ReceiverArgs),
    /// Run a small in-memory Schema Registry with the Confluent REST endpoints hookrelay uses, for trying
    /// `[schema_registry]` on one machine (not for production: it keeps schemas in memory only).
    ///
    /// GET /subjects, GET /schemas/ids/{id}, POST /subjects/{subject}/versions (with the BACKWARD check),
    /// POST /subjects/{subject}, GET /subjects/{subject}/versions/latest.
    Registry(RegistryArgs),
    /// Run the whole system on this machine: embedded broker, dispatcher, receivers and demo traffic.
    ///
    /// Ends with a table of what happened (sent, delivered, failed by code, dead-lettered, rate, elapsed);
    /// the numbers are read back from Kafka and the receivers and must add up.
    Demo(demo::DemoArgs),
    /// Load harness: N sends through the embedded broker to a receiver, with throughput and latency
    /// percentiles (record produced → request received).
    Bench(bench::BenchArgs),
    /// Produce a steady stream of generated send requests to [topics].sends (traffic for compose or staging).
    ///
    /// Sends are JSON, spread over --workspaces workspaces and the given --url endpoints, with campaign and
    /// Canvas fields filled in. Runs until --count or SIGINT/SIGTERM.
    Produce(crate::tools::produce::ProduceArgs),
    /// Redrive sends that failed, once their endpoint is fixed: re-produce the original send requests.
    ///
    /// Scans [topics].failures for failure events in --since..--until (terminal only unless --all-attempts),
    /// narrowed by --workspace, --campaign, --canvas and --status (404, 4xx, 5xx, 598, 599), finds each
    /// send's original record through the coordinates its failure event carries, and produces that record
    /// again — same key, body and headers, so the same id and webhook-id — to [topics].sends with a
    /// `hookrelay-replay` header. One redrive per original record, however many of its attempts failed.
    /// --dry-run prints how many would be redriven, by workspace and code. If originals were deleted by
    /// retention, it stops before producing anything and says which (--skip-deleted redrives the rest).
    /// The time look-up uses the broker's offsets-for-times (a scan from the start on the embedded broker).
    Replay(crate::replay::ReplayArgs),
    /// Validate the configuration and print the effective values as TOML (credentials redacted).
    ///
    /// Every problem is listed at once, and the exit status is non-zero if there is any. The output is a
    /// complete config file: save it, put the credentials back, and pass it with --config.
    CheckConfig,
}

#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Partitions per default topic (overrides [broker].partitions).
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Brokers in the cluster (overrides [broker].brokers).
    #[arg(long)]
    pub brokers: Option<i32>,
}

#[derive(Debug, Args)]
pub struct RegistryArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
}

#[derive(Debug, Args)]
pub struct ReceiverArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Status codes by weight, e.g. `200:90,503:5,404:5` (a bare code has weight 1).
    #[arg(long, default_value = "200", value_parser = parse_mix)]
    pub mix: Mix,
    /// Fixed latency before answering, e.g. `20ms`.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Extra random latency up to this much.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency_jitter: Duration,
    /// Retry-After value sent with 429 and 503 answers (seconds or an HTTP date).
    #[arg(long)]
    pub retry_after: Option<String>,
}

/// Loads and validates the configuration, printing every problem on failure.
pub fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    Ok(Config::load(cli.config.as_deref())?)
}

// Whether the operator asked for a log level: the demo's and the harness's quiet default yields to it.
#[allow(clippy::disallowed_methods)]
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let mut config = load_config(&cli)?;
    // The demo and the harness print their own progress; per-record logs would drown it unless asked for.
    if matches!(cli.command, Command::Demo(_) | Command::Bench(_))
        && std::env::var_os("HOOKRELAY_TELEMETRY__LOG_LEVEL").is_none()
    {
        config.telemetry.log_level = "error".into();
    }
    let traces = telemetry::logging::init(&config.telemetry)
        .context("setting up the OTLP trace exporter (telemetry.otlp_endpoint)")?;
    let result = run_command(cli.command, config);
    if let Some(provider) = traces {
        if let Err(e) = provider.shutdown() {
            eprintln!("the last spans could not be exported: {e}");
        }
    }
    result
}

fn run_command(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Broker(args) => run_broker(config, args),
        Command::CheckConfig => {
            let text = config
                .to_toml_redacted()
                .context("printing the configuration as TOML")?;
            println!(
                "# configuration is valid; the effective values follow (credentials redacted)\n{text}"
            );
            Ok(())
        }
        Command::Dispatch => runtime()?.block_on(run_dispatch(config)),
        Command::Aggregate => runtime()?.block_on(run_aggregate(config)),
        Command::Receiver(args) => runtime()?.block_on(run_receiver(args)),
        Command::Registry(args) => runtime()?.block_on(run_registry(args)),
        Command::Demo(args) => demo::run(config, args),
        Command::Bench(args) => bench::run(config, args),
        Command::Produce(args) => runtime()?.block_on(crate::tools::produce::run(config, args)),
        Command::Replay(args) => runtime()?.block_on(crate::replay::run(config, args)),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn run_dispatch(config: Config) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    shutdown::exit_after_grace(&stop, config.dispatch.shutdown_grace, "the dispatcher");
    let metrics = DispatchMetrics::new();
    let health = Health::default();
    let m = metrics.clone();
    let listener = serve_telemetry(&config, Arc::new(move || m.render()), &health).await?;
    let result = dispatch::run(&config, metrics, health, stop).await;
    shutdown::stopped();
    listener.cancel();
    result
}

async fn run_aggregate(config: Config) -> anyhow::Result<()> {
    let stop = shutdown::on_signal();
    let metrics = crate::telemetry::AggregateMetrics::new();
    let health = Health::default();
    let m = metrics.clone();
    let listener = serve_telemetry(&config, Arc::new(move || m.render()), &health).await?;
    let result = crate::aggregate::run(&config, metrics, health, stop).await;
    listener.cancel();
    result
}

/// `/metrics`, `/healthz` and `/readyz` on `telemetry.listen`, unless it is empty, until the returned token
/// is cancelled: they keep answering while the process drains, so an orchestrator sees why it stops.
async fn serve_telemetry(
    config: &Config,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    health: &Health,
) -> anyhow::Result<tokio_util::sync::CancellationToken> {
    let stop = tokio_util::sync::CancellationToken::new();
    if let Some(addr) = config.telemetry.listen_addr() {
        let bound = telemetry::serve(addr, render, health.clone(), stop.clone())
            .await
            .with_context(|| format!("binding telemetry listener {addr}"))?;
        tracing::info!(%bound, "serving /metrics, /healthz, /readyz");
    }
    Ok(stop)
}

async fn run_receiver(args: ReceiverArgs) -> anyhow::Result<()> {
    let script = Script {
        mix: args.mix.0,
        latency: args.latency,
        latency_jitter: args.latency_jitter,
        retry_after: args.retry_after,
        record_requests: false,
    };
    let receiver = Receiver::start(args.listen, script)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("receiver listening on http://{}", receiver.addr);
    shutdown::on_signal().cancelled().await;
    let stats = receiver.stats();
    println!("received {} requests: {:?}", stats.total, stats.by_status);
    Ok(())
}

async fn run_registry(args: RegistryArgs) -> anyhow::Result<()> {
    let registry = crate::tools::schema_registry::SchemaRegistry::start(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    println!("schema registry listening on {}", registry.url());
    shutdown::on_signal().cancelled().await;
    registry.stop();
    Ok(())
}

fn run_broker(mut config: Config, args: BrokerArgs) -> anyhow::Result<()> {
    if let Some(p) = args.partitions {
        config.broker.partitions = p;
    }
    if let Some(b) = args.brokers {
        config.broker.brokers = b;
    }
    config.validate()?;
    // The mock cluster is not Send: it stays on this thread while a small runtime waits for a signal.
    let broker = kafka::EmbeddedBroker::start(config.broker.brokers)?;
    let p = config.broker.partitions;
    let topics = broker.create_topics(&config.topics, p, p)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // The line is printed once topics exist and signals are handled, so a reader can rely on it.
        let stop = shutdown::on_signal();
        println!("bootstrap.servers={}", broker.bootstrap_servers());
        use std::io::Write as _;
        std::io::stdout().flush()?;
        tracing::info!(
            ?topics,
            partitions = config.broker.partitions,
            "embedded broker ready"
        );
        stop.cancelled().await;
        anyhow::Ok(())
    })?;
    drop(broker);
    Ok(())
}
