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
        *lock(&SIGNALLED) = Some(Instant::now());
        t.cancel();
    });
    token
}

/// When the first signal came, if one has: a stop's grace counts from then.
static SIGNALLED: Mutex<Option<Instant>> = Mutex::new(None);

/// When the stop began: the signal's time (a stop asked for in-process, as tests do, has none).
pub fn signalled_at() -> Option<Instant> {
    *lock(&SIGNALLED)
}

fn lock<T>(m: &'static Mutex<T>) -> std::sync::MutexGuard<'static, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The watchdog of [`exit_after_grace`]: idle until a signal, then armed, and done for good once the stop is
/// over (a late arming cannot undo that).
#[derive(Clone, Copy)]
enum Watch {
    Idle,
    Armed,
    Done,
}

static WATCH: Mutex<Watch> = Mutex::new(Watch::Idle);

/// What the last bounded steps of a stop may take past its grace (the producer's last flush, at least
/// half a second, among them).
const OVERRUN: Duration = Duration::from_secs(1);

/// Once `stop` is cancelled, gives the process `grace` from the signal, and a second more, to end; then ends
/// it with status 1. A call into librdkafka with the cluster unreachable (the synchronous commit of revoked
/// partitions, leaving the group) can block for the session timeout, 45 s, and longer: without this a stop
/// would outlast its grace and end in the orchestrator's SIGKILL with no word of why. Nothing is lost: what
/// was not committed is redone by the partitions' next owner.
pub fn exit_after_grace(stop: &CancellationToken, grace: Duration, process: &'static str) {
    let stop = stop.clone();
    tokio::spawn(async move {
        stop.cancelled().await;
        let at = signalled_at().unwrap_or_else(Instant::now) + grace + OVERRUN;
        {
            let mut watch = lock(&WATCH);
            if !matches!(*watch, Watch::Idle) {
                return;
            }
            *watch = Watch::Armed;
        }
        // A thread of its own: the runtime may be waiting on the very call that blocks.
        std::thread::spawn(move || {
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            if !matches!(*lock(&WATCH), Watch::Armed) {
                return; // the stop is over
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

/// The stop is over: the watchdog stands down for good (what follows, such as the last trace export, is
/// bounded by its own timeouts).
pub fn stopped() {
    *lock(&WATCH) = Watch::Done;
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
