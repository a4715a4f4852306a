//! `/metrics`, `/healthz` and `/readyz` on one small listener.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

/// Readiness: the process has work (partitions assigned, and for the aggregator its state rebuilt) and a
/// Kafka broker answers. Each half is set by whoever knows it.
#[derive(Clone, Default)]
pub struct Health {
    assigned: Arc<AtomicBool>,
    broker: Arc<AtomicBool>,
}

impl Health {
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
    pub fn not_ready_because(&self) -> Vec<&'static str> {
        let mut why = Vec::new();
        if !self.assigned.load(Ordering::Relaxed) {
            why.push("no partitions assigned (or state still being rebuilt)");
        }
        if !self.broker.load(Ordering::Relaxed) {
            why.push("no Kafka broker reachable");
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
        .route("/healthz", get(|| async { "ok\n" }))
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
        h.set_ready(false);
        assert!(!h.is_ready());
    }
}
