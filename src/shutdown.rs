//! SIGINT/SIGTERM become a cancellation token every long-running task watches.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT or SIGTERM. Must be called inside a Tokio runtime; the handlers are
/// installed before it returns, so a signal sent right afterwards is never lost to the default action.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    let signals = install();
    tokio::spawn(async move {
        signals.await;
        tracing::info!("signal received; shutting down");
        t.cancel();
    });
    token
}

/// Once `stop` is cancelled, gives the process `grace`, and a second more for its last bounded steps, to
/// end; then ends it with status 1. A call into librdkafka with the cluster unreachable (the synchronous
/// commit of revoked partitions, leaving the group) can block for the session timeout, 45 s, and longer:
/// without this a stop would outlast its grace and end in the orchestrator's SIGKILL with no word of why.
/// Nothing is lost: what was not committed is redone by the partitions' next owner.
pub fn exit_after_grace(stop: &CancellationToken, grace: Duration, process: &'static str) {
    let stop = stop.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        // A thread of its own: the runtime may be waiting on the very call that blocks.
        std::thread::spawn(move || {
            std::thread::sleep(grace + Duration::from_secs(1));
            tracing::error!(
                ?grace,
                "{process} did not stop within its shutdown grace (is Kafka reachable?): exiting with status 1; \
                 records not committed are redone by their partitions' next owner"
            );
            std::process::exit(1);
        });
    });
}

#[cfg(unix)]
fn install() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        match (term, int) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                tracing::warn!("could not install signal handlers; falling back to Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
}

#[cfg(not(unix))]
fn install() -> impl std::future::Future<Output = ()> {
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
