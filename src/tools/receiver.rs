//! `hookrelay receiver`: a scripted webhook endpoint for demos, benchmarks and tests.
//!
//! Behaviour comes from the default script (a weighted mix of status codes, latency, `Retry-After`) unless a
//! request's query overrides it, so one receiver can play many endpoints:
//! `?status=503`, `?delay=250ms`, `?retry_after=2`, `?seq=503,503,200` (the n-th request carrying the same
//! `webhook-id` gets the n-th status; the last one repeats), `?hang=1` (never answers).
//! `GET /_stats` returns the counters as JSON.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use rand::Rng;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// The receiver's default behaviour.
#[derive(Debug, Clone)]
pub struct Script {
    /// `(status, weight)`; empty means always 200.
    pub mix: Vec<(u16, u32)>,
    pub latency: Duration,
    /// Extra latency drawn uniformly from `0..=latency_jitter`.
    pub latency_jitter: Duration,
    /// `Retry-After` value sent with 429 and 503 responses.
    pub retry_after: Option<String>,
    /// Keep every request in memory (tests, the load harness); off for long-running use.
    pub record_requests: bool,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            mix: vec![(200, 1)],
            latency: Duration::ZERO,
            latency_jitter: Duration::ZERO,
            retry_after: None,
            record_requests: true,
        }
    }
}

/// A weighted mix of status codes, as one command-line value. A newtype, because clap reads a bare `Vec`
/// argument as "many values of the element type" and then panics when the parser returns the whole list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix(pub Vec<(u16, u32)>);

/// Parses `200:90,503:5,404:5` (a bare code means weight 1).
pub fn parse_mix(text: &str) -> Result<Mix, String> {
    let mix: Vec<(u16, u32)> = text
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|part| {
            let (code, weight) = part.trim().split_once(':').unwrap_or((part.trim(), "1"));
            let code: u16 = code
                .parse()
                .map_err(|_| format!("bad status code {code:?}"))?;
            if !(100..=999).contains(&code) {
                return Err(format!("status code {code} is outside 100..=999"));
            }
            let weight: u32 = weight
                .parse()
                .map_err(|_| format!("bad weight {weight:?}"))?;
            Ok((code, weight))
        })
        .collect::<Result<_, String>>()?;
    if mix.is_empty() || mix.iter().all(|(_, w)| *w == 0) {
        return Err("the mix needs at least one status code with a positive weight".into());
    }
    Ok(Mix(mix))
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub webhook_id: Option<String>,
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub status: u16,
    pub at: Instant,
    /// UNIX milliseconds at arrival (for end-to-end latency against producer timestamps).
    pub at_unix_ms: i64,
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub total: u64,
    /// Requests that carried a `webhook-id` header (hookrelay's, not a load tool's).
    pub with_webhook_id: u64,
    /// Most requests being handled at the same moment.
    pub max_concurrent: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Distinct `webhook-id`s answered 2xx: the sends delivered, however often each came.
    pub delivered_ids: u64,
    /// 2xx answers to a `webhook-id` already answered 2xx: sends delivered again (after a crash, a
    /// rebalance), which at-least-once delivery allows and receivers dedupe on the id.
    pub redelivered: u64,
}

struct Inner {
    script: Script,
    stats: Mutex<Stats>,
    log: Mutex<Vec<Received>>,
    seq_seen: Mutex<HashMap<String, usize>>,
    delivered: Mutex<std::collections::HashSet<String>>,
    concurrent: AtomicU64,
}

/// Counts a request as in progress for as long as it lives (also when the client gives up and it is dropped).
struct InProgress<'a>(&'a Inner);

impl<'a> InProgress<'a> {
    fn enter(inner: &'a Inner) -> Self {
        let now = inner.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
        let mut st = inner.stats.lock().expect("stats lock");
        st.max_concurrent = st.max_concurrent.max(now);
        Self(inner)
    }
}

impl Drop for InProgress<'_> {
    fn drop(&mut self) {
        self.0.concurrent.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running receiver.
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl Receiver {
    /// Binds `addr` (port 0 for an ephemeral port) and serves until [`Receiver::stop`] or drop of all clones.
    pub async fn start(addr: SocketAddr, script: Script) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            script,
            stats: Mutex::default(),
            log: Mutex::default(),
            seq_seen: Mutex::default(),
            delivered: Mutex::default(),
            concurrent: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/_stats", get(stats))
            .fallback(any(handle))
            .with_state(inner.clone());
        let token = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Ok(Self { addr, inner, stop })
    }

    /// A URL on this receiver, e.g. `url("/hooks/a?status=503")`.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn stats(&self) -> Stats {
        self.inner.snapshot()
    }

    pub fn requests(&self) -> Vec<Received> {
        self.inner.log.lock().expect("log lock").clone()
    }

    /// The requests that carried `webhook-id: id`, in arrival order.
    pub fn requests_for(&self, id: &str) -> Vec<Received> {
        let log = self.inner.log.lock().expect("log lock");
        log.iter()
            .filter(|r| r.webhook_id.as_deref() == Some(id))
            .cloned()
            .collect()
    }

    pub fn count(&self) -> u64 {
        self.inner.stats.lock().expect("stats lock").total
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

async fn stats(State(inner): State<Arc<Inner>>) -> Json<Stats> {
    Json(inner.snapshot())
}

impl Inner {
    /// The counters now, with the delivered ids counted from their set.
    fn snapshot(&self) -> Stats {
        let mut stats = self.stats.lock().expect("stats lock").clone();
        stats.delivered_ids = self.delivered.lock().expect("ids lock").len() as u64;
        stats
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let _in_progress = InProgress::enter(&inner);
    let webhook_id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if q.contains_key("hang") {
        std::future::pending::<()>().await;
    }
    let status = choose_status(&inner, &q, webhook_id.as_deref());
    let delay = q
        .get("delay")
        .and_then(|d| humantime::parse_duration(d).ok())
        .unwrap_or_else(|| {
            let s = &inner.script;
            let jitter = if s.latency_jitter.is_zero() {
                Duration::ZERO
            } else {
                rand::rng().random_range(Duration::ZERO..=s.latency_jitter)
            };
            s.latency + jitter
        });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    {
        let mut st = inner.stats.lock().expect("stats lock");
        st.total += 1;
        st.with_webhook_id += u64::from(webhook_id.is_some());
        *st.by_status.entry(status).or_default() += 1;
        if let (Some(id), true) = (&webhook_id, (200..300).contains(&status)) {
            if !inner.delivered.lock().expect("ids lock").insert(id.clone()) {
                st.redelivered += 1;
            }
        }
    }
    if inner.script.record_requests {
        inner.log.lock().expect("log lock").push(Received {
            webhook_id,
            method: method.to_string(),
            path: uri.path().to_string(),
            headers,
            body,
            status,
            at: Instant::now(),
            at_unix_ms: chrono::Utc::now().timestamp_millis(),
        });
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry_after = q.get("retry_after").cloned().or_else(|| {
        matches!(status, 429 | 503)
            .then(|| inner.script.retry_after.clone())
            .flatten()
    });
    let text = format!("hookrelay receiver: {status}\n");
    if let Some(location) = q.get("location") {
        return (code, [("location", location.clone())], text).into_response();
    }
    match retry_after {
        Some(ra) => (code, [("retry-after", ra)], text).into_response(),
        None => (code, text).into_response(),
    }
}

fn choose_status(inner: &Inner, q: &HashMap<String, String>, webhook_id: Option<&str>) -> u16 {
    if let Some(seq) = q.get("seq") {
        let codes: Vec<u16> = seq
            .split(',')
            .filter_map(|c| c.trim().parse().ok())
            .collect();
        if !codes.is_empty() {
            let key = webhook_id.unwrap_or_default().to_string();
            let mut seen = inner.seq_seen.lock().expect("seq lock");
            let n = seen.entry(key).or_default();
            let code = codes[(*n).min(codes.len() - 1)];
            *n += 1;
            return code;
        }
    }
    if let Some(code) = q.get("status").and_then(|s| s.parse().ok()) {
        return code;
    }
    pick_weighted(&inner.script.mix, rand::rng().random::<f64>())
}

/// Picks a status from a weighted mix given `u` in `[0, 1)`.
pub fn pick_weighted(mix: &[(u16, u32)], u: f64) -> u16 {
    let total: u64 = mix.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return 200;
    }
    let mut target = (u * total as f64) as u64;
    for (code, w) in mix {
        if target < u64::from(*w) {
            return *code;
        }
        target -= u64::from(*w);
    }
    mix.last().map_or(200, |(c, _)| *c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mixes_and_rejects_nonsense() {
        assert_eq!(
            parse_mix("200:90, 503:5,404").unwrap(),
            Mix(vec![(200, 90), (503, 5), (404, 1)])
        );
        assert!(parse_mix("").is_err(), "an empty mix answers nothing");
        assert!(parse_mix("200:0").is_err(), "weights cannot all be zero");
        assert!(parse_mix("abc:1").is_err());
        assert!(parse_mix("200:x").is_err());
        assert!(parse_mix("42").is_err());
    }

    #[test]
    fn weighted_pick_respects_weights() {
        let mix = [(200, 3), (500, 1)];
        assert_eq!(pick_weighted(&mix, 0.0), 200);
        assert_eq!(pick_weighted(&mix, 0.74), 200);
        assert_eq!(pick_weighted(&mix, 0.76), 500);
        assert_eq!(pick_weighted(&[], 0.5), 200);
    }
}
