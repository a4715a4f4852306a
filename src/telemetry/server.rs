//! `/metrics`, `/healthz` and `/readyz` on one small listener.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// Readiness: the process has work (partitions assigned, and for the aggregator its state rebuilt), a Kafka
/// broker answers and every topic it needs exists. Liveness: no fatal error has happened. Each part is set by
/// whoever knows it.
#[derive(Clone, Default)]
pub struct Health {
    assigned: Arc<AtomicBool>,
    broker: Arc<AtomicBool>,
    missing_topics: Arc<Mutex<Vec<String>>>,
    /// Set once, by an error the process cannot recover from (it is then ending so that it is restarted).
    fatal: Arc<Mutex<Option<String>>>,
    /// The process is draining after SIGTERM/SIGINT.
    stopping: Arc<AtomicBool>,
}

impl Health {
    /// Set when shutdown begins: new work should go elsewhere.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Set by the probe: the required topics the cluster lacks.
    pub fn set_missing_topics(&self, missing: Vec<String>) {
        *self
            .missing_topics
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = missing;
    }

    /// Marks the process as dead for `/healthz` (the first reason wins).
    pub fn set_fatal(&self, reason: impl Into<String>) {
        let mut f = self.fatal.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_none() {
            *f = Some(reason.into());
        }
    }

    /// The fatal error, if one happened.
    pub fn fatal(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Set by the consumer: partitions are assigned and the process can work on them.
    pub fn set_ready(&self, ready: bool) {
        self.assigned.store(ready, Ordering::Relaxed);
    }

    /// Set by the broker probe.
    pub fn set_broker_reachable(&self, reachable: bool) {
        self.broker.store(reachable, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.not_ready_because().is_empty()
    }

    /// Why `/readyz` fails, in words an operator can act on; empty when ready.
    pub fn not_ready_because(&self) -> Vec<String> {
        let mut why = Vec::new();
        if let Some(f) = self.fatal() {
            why.push(format!("fatal error: {f}"));
        }
        if self.stopping.load(Ordering::Relaxed) {
            why.push("shutting down".to_string());
        }
        if !self.assigned.load(Ordering::Relaxed) {
            why.push("no partitions assigned (or state still being rebuilt)".to_string());
        }
        if !self.broker.load(Ordering::Relaxed) {
            why.push("no Kafka broker reachable".to_string());
        }
        let missing = self
            .missing_topics
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !missing.is_empty() {
            why.push(format!("topics missing: {}", missing.join(", ")));
        }
        why
    }
}

#[derive(Clone)]
struct AppState {
    render: Arc<dyn Fn() -> String + Send + Sync>,
    health: Health,
}

/// Binds and serves until `shutdown`; returns the bound address (useful with port 0).
pub async fn serve(
    addr: SocketAddr,
    render: Arc<dyn Fn() -> String + Send + Sync>,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { render, health });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok(bound)
}

async fn metrics(
    State(s): State<AppState>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        (s.render)(),
    )
}

async fn healthz(State(s): State<AppState>) -> (StatusCode, String) {
    match s.health.fatal() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("fatal error: {why}\n"),
        ),
    }
}

async fn readyz(State(s): State<AppState>) -> (StatusCode, String) {
    let why = s.health.not_ready_because();
    if why.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("; ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_with_partitions_assigned_and_a_broker_reachable() {
        let h = Health::default();
        assert_eq!(h.not_ready_because().len(), 2);
        h.set_ready(true);
        assert_eq!(h.not_ready_because(), ["no Kafka broker reachable"]);
        h.set_broker_reachable(true);
        assert!(h.is_ready());
        h.set_missing_topics(vec!["webhook-retries-1m".into()]);
        assert_eq!(
            h.not_ready_because(),
            ["topics missing: webhook-retries-1m"]
        );
        h.set_missing_topics(vec![]);
        h.set_ready(false);
        assert!(!h.is_ready());
    }

    #[test]
    fn a_fatal_error_is_kept_and_makes_the_process_unready() {
        let h = Health::default();
        h.set_ready(true);
        h.set_broker_reachable(true);
        h.set_fatal("producer fenced");
        h.set_fatal("a later error");
        assert_eq!(h.fatal().as_deref(), Some("producer fenced"));
        assert!(!h.is_ready());
    }
}
