//! SIGINT/SIGTERM become a cancellation token every long-running task watches; a watchdog bounds the stop.

// The watchdog measures its deadline.
#![allow(clippy::disallowed_methods)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// When the watchdog of [`exit_after_grace`] ends the process: `None` until a signal, and again once the
/// stop is over.
static DEADLINE: Mutex<Option<Instant>> = Mutex::new(None);

fn deadline() -> std::sync::MutexGuard<'static, Option<Instant>> {
    DEADLINE.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the last bounded steps of a stop may take past its grace (the producer's last flush, at least
/// half a second, among them).
const OVERRUN: Duration = Duration::from_secs(1);

/// Once `stop` is cancelled, gives the process `grace` (or until [`stop_ends_at`] says, if later) and a
/// second more to end; then ends it with status 1. A call into librdkafka with the cluster unreachable (the
/// synchronous commit of revoked partitions, leaving the group) can block for the session timeout, 45 s,
/// and longer: without this a stop would outlast its grace and end in the orchestrator's SIGKILL with no
/// word of why. Nothing is lost: what was not committed is redone by the partitions' next owner.
pub fn exit_after_grace(stop: &CancellationToken, grace: Duration, process: &'static str) {
    let stop = stop.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        move_deadline(Instant::now() + grace + OVERRUN);
        // A thread of its own: the runtime may be waiting on the very call that blocks.
        std::thread::spawn(move || loop {
            let Some(at) = *deadline() else {
                return; // the stop is over
            };
            let now = Instant::now();
            if now < at {
                std::thread::sleep(at - now);
                continue;
            }
            tracing::error!(
                ?grace,
                "{process} did not stop within its shutdown grace (is Kafka reachable?): exiting with status 1; \
                 records not committed are redone by their partitions' next owner"
            );
            std::process::exit(1);
        });
    });
}

/// The stop's own deadline, counted from when it really began (the consumer may have been inside a
/// rebalance when the signal came): the watchdog waits for it too.
pub fn stop_ends_at(at: Instant) {
    move_deadline(at + OVERRUN);
}

/// The stop is over: the watchdog stands down (what follows, such as the last trace export, is bounded
/// by its own timeouts).
pub fn stopped() {
    *deadline() = None;
}

fn move_deadline(to: Instant) {
    let mut d = deadline();
    *d = Some(d.map_or(to, |at| at.max(to)));
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
