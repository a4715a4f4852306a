//! `hookrelay bench --client-floor N --url U`: the HTTP client alone, built as the dispatcher builds it,
//! keeping N requests in flight to a receiver for `--duration`, and the resident memory that costs per
//! request in flight.
//!
//! The memory budget bounds what hookrelay holds; the client's own state is beside it. HTTP/1.1 needs a
//! connection per concurrent request, and each connection's buffers, channel and driving task belong to the
//! client. This measures that floor in the steady state (responses read, connections reused from the pool),
//! which is higher than the first request's: a connection's read buffer grows when its first response
//! arrives and stays for the connection's life.

// The probe measures its own run time and samples memory once a second.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::aggregator::resident_kb;
use super::bench_send;
use crate::config::Config;
use crate::dispatch::http::Executor;
use crate::events::Rules;
use crate::security::signing::Signer;

pub async fn run(
    config: &Config,
    in_flight: usize,
    url: &str,
    body_bytes: usize,
    duration: Duration,
) -> anyhow::Result<String> {
    let signer = Signer::from_config(&config.signing)
        .map_err(|p| anyhow::anyhow!("signing secrets: {}", p.join("; ")))?;
    let executor = Arc::new(
        Executor::new(&config.http, &config.security, signer)
            .context("creating the HTTP client")?,
    );
    let send = Arc::new(
        bench_send(0, url, &"x".repeat(body_bytes))
            .validate(&Rules::from_config(config))
            .map_err(|e| anyhow::anyhow!("the probe's send to {url} is not valid: {e}"))?,
    );
    let before_kb = resident_kb("self");
    let until = Instant::now() + duration;
    let (done, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers: Vec<_> = (0..in_flight.max(1))
        .map(|_| {
            let (executor, send, done, failed) =
                (executor.clone(), send.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    let (attempt, _) = executor.execute(&send).await;
                    let answered_2xx = matches!(
                        attempt,
                        crate::dispatch::classify::Attempt::Response {
                            status: 200..=299,
                            ..
                        }
                    );
                    let counter = if answered_2xx { &done } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let started = Instant::now();
    let mut samples = Vec::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        samples.push((started.elapsed(), resident_kb("self")));
    }
    for w in workers {
        let _ = w.await;
    }
    let secs = started.elapsed().as_secs_f64();
    // The first half is warm-up (connections opened, buffers grown); the second half is the floor.
    let steady: Vec<u64> = samples
        .iter()
        .filter(|(at, _)| *at >= duration / 2)
        .map(|&(_, kb)| kb)
        .collect();
    anyhow::ensure!(
        !steady.is_empty(),
        "--duration {duration:?} is too short to sample"
    );
    let mean_kb = steady.iter().sum::<u64>() / steady.len() as u64;
    let peak_kb = samples.iter().map(|&(_, kb)| kb).max().unwrap_or(0);
    let per_request = (mean_kb.saturating_sub(before_kb)) as f64 * 1024.0 / in_flight.max(1) as f64;
    let (ok, bad) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    Ok(format!(
        "hookrelay bench --client-floor: {in_flight} requests in flight to {url} for {secs:.0} s, \
         {body_bytes}-byte bodies\n\
         requests: {ok} answered 2xx, {bad} otherwise ({:.0}/s)\n\
         resident memory: {:.0} MB before, steady {:.0} MB (mean of the last half), peak {:.0} MB\n\
         client floor: {:.1} KB per request in flight\n",
        (ok + bad) as f64 / secs,
        before_kb as f64 / 1024.0,
        mean_kb as f64 / 1024.0,
        peak_kb as f64 / 1024.0,
        per_request / 1000.0,
    ))
}
