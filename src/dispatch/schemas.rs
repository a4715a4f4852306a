//! A fresh record as a send, with the schema registry when one is configured: a Confluent-framed record is
//! read with the writer schema its id names, resolved to hookrelay's own.
//!
//! A registry that cannot answer is a transient fault, never the record's: the record waits for it, asking
//! again with a doubling backoff (up to `schema_registry.max_backoff`), counted in
//! `schema_registry_unavailable_total` and logged once per outage. It waits without its admission slot, so
//! records whose schemas are cached — and other partitions — keep flowing; its own partition stops taking
//! records once enough wait behind it (the partition's pending bounds and the memory budget). An id the
//! registry says does not exist, or a schema that cannot be read as a send, dead-letters the record with
//! that reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::consume::Admission;
use super::decode::{decode_send, decode_written, registry_schema_id};
use super::publish::Abandoned;
use crate::events::send_request::{invalid, InvalidKind, InvalidSend};
use crate::events::{Rules, ValidSend};
use crate::kafka::Record;
use crate::registry::{backoff, RegistryError, Writer, Writers};
use crate::telemetry::DispatchMetrics;

/// Fresh records decoded through the registry.
pub struct SendDecoder {
    /// The registry's writer schemas.
    pub writers: Writers,
    pub max_backoff: Duration,
    /// Cancelled when the dispatcher stops: a record still waiting is left unfinished, to be redone.
    pub stop: CancellationToken,
    pub metrics: DispatchMetrics,
    /// An outage is under way (logged once, when it begins and when it ends).
    outage: AtomicBool,
}

impl SendDecoder {
    pub fn new(
        writers: Writers,
        max_backoff: Duration,
        stop: CancellationToken,
        metrics: DispatchMetrics,
    ) -> Self {
        Self {
            writers,
            max_backoff,
            stop,
            metrics,
            outage: AtomicBool::new(false),
        }
    }

    /// The record as a send that can go out under `rules`, or why not; `Err(Abandoned)` if the dispatcher
    /// stopped while it waited for the registry. A record that is not Confluent-framed is decoded as without
    /// a registry.
    pub async fn decode(
        &self,
        record: &Record,
        rules: &Rules,
        accept_plain_avro: bool,
        admission: &mut Admission,
    ) -> Result<Result<ValidSend, InvalidSend>, Abandoned> {
        let Some(id) = registry_schema_id(record, rules) else {
            return Ok(decode_send(record, rules, accept_plain_avro));
        };
        let writers = &self.writers;
        let fetched = match writers.get(id).await {
            Err(e) if e.is_transient() => {
                let _waiting = Waiting::new(&self.metrics.registry_waiting);
                let waited = admission.outside(self.wait(writers, id, e)).await;
                waited.ok_or(Abandoned)?
            }
            answer => answer,
        };
        Ok(match fetched {
            Ok(w) => decode_written(record, rules, &w),
            Err(e) => Err(invalid(InvalidKind::UnknownSchema, e.to_string())),
        })
    }

    /// Asks again until the registry answers; `None` once the dispatcher stops.
    async fn wait(
        &self,
        writers: &Writers,
        id: u32,
        mut last: RegistryError,
    ) -> Option<Result<Arc<Writer>, RegistryError>> {
        let mut failures = 0u32;
        loop {
            self.metrics.registry_unavailable.inc();
            if !self.outage.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    error = %last,
                    "schema registry unavailable: records with schema ids not yet cached wait for it"
                );
            }
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                _ = tokio::time::sleep(backoff(failures, self.max_backoff)) => {}
            }
            failures = failures.saturating_add(1);
            match writers.get(id).await {
                Err(e) if e.is_transient() => last = e,
                answer => {
                    if self.outage.swap(false, Ordering::Relaxed) {
                        tracing::info!("schema registry answers again");
                    }
                    return Some(answer);
                }
            }
        }
    }
}

/// Counts a record in `schema_registry_waiting_records` for as long as it lives, however its wait ends.
struct Waiting<'a>(&'a prometheus::IntGauge);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}
