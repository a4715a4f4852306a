//! Handing records to the pipeline: what a record is to its handler, and the task that runs it, counted
//! against the memory budget from the moment it is handed over until it is done.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures::future::BoxFuture;

use super::{Admission, Shared, Ticket};
use crate::clock::now_ms;
use crate::kafka::Record;

/// What a consumed record is to its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// From the send topic.
    Fresh,
    /// From a retry tier, handed over once the tier's delay has passed.
    Retry,
}

/// What the consumer thread hands records to (the dispatcher's pipeline). The future resolves once the
/// record's outcome is durable (`true`: its offset may be committed) or abandoned (`false`: it stays
/// uncommitted and is redone by the partition's next owner).
/// The record's admission slot comes along, for the handler to give back while the record waits.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        self: Arc<Self>,
        kind: Kind,
        record: Record,
        admission: Admission,
    ) -> BoxFuture<'static, bool>;
}

pub(super) fn spawn(
    (runtime, admission): (&tokio::runtime::Handle, &Arc<tokio::sync::Semaphore>),
    handler: &Arc<dyn Handler>,
    shared: &Arc<Shared>,
    work: Work,
) {
    let (handler, admission) = (handler.clone(), admission.clone());
    // Counted here, on the consumer thread, so the next budget check already sees it.
    let spawned = Spawned::begin(shared.clone());
    runtime.spawn(async move {
        let shared = &spawned.0;
        let admitted = Admission::acquire(admission).await;
        let bytes = match &work {
            Work::Fresh(r, _) | Work::Retry(r, _) => (r.payload.len(), r.cost()),
        };
        let (ticket, result, produced_ms) = match work {
            Work::Fresh(record, ticket) => {
                let produced_ms = record.timestamp_ms;
                let done = handler.handle(Kind::Fresh, record, admitted).await;
                (ticket, done, produced_ms)
            }
            Work::Retry(record, ticket) => (
                ticket,
                handler.handle(Kind::Retry, record, admitted).await,
                None,
            ),
        };
        if result {
            if let Some(at) = produced_ms {
                let secs = (now_ms().saturating_sub(at)).max(0) as f64 / 1000.0;
                shared.metrics.send_latency.observe(secs);
            }
            shared.finish(&ticket, bytes);
        } else {
            shared.abandon(&ticket, bytes);
        }
        drop(spawned);
    });
}

/// A record handed to the runtime and not done, counted in `Shared::spawned` and the `pending_records`
/// gauge together for as long as it lives (a panicking handler's included).
struct Spawned(Arc<Shared>);

impl Spawned {
    fn begin(shared: Arc<Shared>) -> Self {
        shared.spawned.fetch_add(1, Ordering::Relaxed);
        shared.metrics.pending_records.inc();
        Self(shared)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        self.0.spawned.fetch_sub(1, Ordering::Relaxed);
        self.0.metrics.pending_records.dec();
    }
}

/// A record on its way to the pipeline.
pub(super) enum Work {
    Fresh(Record, Ticket),
    Retry(Record, Ticket),
}
