//! `hookrelay produce`: a steady stream of send requests to [topics].sends of any Kafka cluster — traffic for
//! docker-compose, a staging cluster or a soak test.

use futures::StreamExt as _;
use std::time::{Duration, Instant};

use clap::Args;

use crate::config::Config;
use crate::events::SendRequest;
use crate::shutdown;
use crate::tools::examples::ExampleSend;
use crate::tools::harness::SendProducer;

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Endpoint the webhooks go to; repeat for several (sends take turns).
    #[arg(long = "url", required = true, value_name = "URL")]
    pub urls: Vec<String>,
    /// Send requests per second.
    #[arg(long, default_value_t = 50)]
    pub rate: u32,
    /// Stop after this many (0: until SIGINT/SIGTERM).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Workspaces the sends are spread over (ws_1 … ws_N).
    #[arg(long, default_value_t = 3)]
    pub workspaces: u32,
    /// The record key: `workspace` (a workspace's sends stay in order on one partition) or `id` (spread
    /// over every partition, for load whatever the workspaces).
    #[arg(long, value_enum, default_value_t = KeyBy::Workspace)]
    pub key_by: KeyBy,
}

/// What a produced record is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyBy {
    Workspace,
    Id,
}

/// The n-th generated send: workspaces, campaigns and canvases rotate so failure events and alert emails
/// have something to name.
pub fn generated_send(n: u64, args: &ProduceArgs) -> SendRequest {
    let ws = n % u64::from(args.workspaces.max(1)) + 1;
    let url = &args.urls[(n % args.urls.len() as u64) as usize];
    let send = ExampleSend::new(
        format!("gen-{}-{n}", std::process::id()),
        format!("ws_{ws}"),
        url,
    )
    .workspace_name(format!("Workspace {ws}"))
    .user(format!("user-{}", n % 10_000))
    .dispatch_id(format!("dispatch-{}", n / 100))
    .json_body(format!(r#"{{"event":"generated","n":{n}}}"#))
    .created_at(crate::clock::now_ms());
    let send = if n % 2 == 0 {
        let c = format!("cmp_{}", n % 5);
        send.campaign(&c, format!("Campaign {c}"))
    } else {
        let c = format!("cnv_{}", n % 3);
        send.canvas(&c, format!("Canvas {c}"))
    };
    send.build()
}

/// Records produced and not yet acknowledged, at most.
const MAX_PENDING: usize = 1024;

pub async fn run(config: Config, args: ProduceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate > 0, "--rate must be at least 1");
    for u in &args.urls {
        url::Url::parse(u).map_err(|e| anyhow::anyhow!("--url {u:?}: {e}"))?;
    }
    let producer = SendProducer::new(&config.kafka, &config.topics.sends)?;
    let stop = shutdown::on_signal();
    // The timer ticks at most every millisecond: above 1,000/s each tick produces a batch.
    let batch = args.rate.div_ceil(1000);
    let mut tick = tokio::time::interval(Duration::from_secs(1) * batch / args.rate);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (started, mut last_report) = (Instant::now(), Instant::now());
    let mut n: u64 = 0;
    // Up to this many records awaiting their acknowledgement at once, so the rate is not bounded by one
    // round trip per record; each still fails the run if the broker refuses it.
    let mut pending = futures::stream::FuturesUnordered::new();
    while args.count == 0 || n < args.count {
        // Polling what is pending is what hands each record to the producer, so it is polled while the
        // tick is awaited, not only once 1,024 are pending.
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(done) = pending.next(), if !pending.is_empty() => {
                done?;
                continue;
            }
            _ = tick.tick() => {}
        }
        for _ in 0..batch {
            if args.count != 0 && n >= args.count {
                break;
            }
            while pending.len() >= MAX_PENDING {
                if let Some(done) = pending.next().await {
                    done?;
                }
            }
            let send = generated_send(n, &args);
            let producer = &producer;
            let key = match args.key_by {
                KeyBy::Workspace => send.workspace_id.clone(),
                KeyBy::Id => send.id.clone(),
            };
            let bytes = serde_json::to_vec(&send)?;
            pending.push(async move { producer.raw(key.as_bytes(), &bytes).await });
            n += 1;
        }
        if last_report.elapsed() >= Duration::from_secs(10) {
            eprintln!("produced {n} send requests to {}", config.topics.sends);
            last_report = Instant::now();
        }
    }
    while let Some(done) = pending.next().await {
        done?;
    }
    println!(
        "produced {n} send requests to {} in {:.1}s",
        config.topics.sends,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_sends_are_valid_and_rotate_workspaces_and_endpoints() {
        let args = ProduceArgs {
            urls: vec!["https://a.example/h".into(), "https://b.example/h".into()],
            rate: 1,
            count: 0,
            workspaces: 3,
            key_by: KeyBy::Workspace,
        };
        let rules = crate::events::Rules::from_config(&Config::default());
        let sends: Vec<SendRequest> = (0..6).map(|n| generated_send(n, &args)).collect();
        for s in &sends {
            s.clone().validate(&rules).expect("a valid send request");
        }
        let ws: Vec<&str> = sends.iter().map(|s| s.workspace_id.as_str()).collect();
        assert_eq!(ws, ["ws_1", "ws_2", "ws_3", "ws_1", "ws_2", "ws_3"]);
        assert_eq!(sends[1].webhook.url, "https://b.example/h");
    }
}
