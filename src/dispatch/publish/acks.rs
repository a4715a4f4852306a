//! Currents events are written without the send waiting for each one: a send's task hands its event to a
//! producer of their own (`ThreadedProducer`, whose thread takes the delivery reports) and moves on; each
//! report closes the event's number in the [`Ledger`] right there, with no task woken; and an offset is
//! committed only once every event handed over before the commit was taken is acknowledged
//! ([`Acks::wait_settled`]). So the events stay at least once — written before the offsets of the sends they
//! speak of are committed — without a suspension and a wake-up per send, which cost more than a third of the
//! throughput when each send awaited its event (BENCHMARKS.md).
//!
//! An event librdkafka gives up on is written again the slow way ([`Publisher::produce`]: transient faults
//! retried until shutdown), and one the broker refuses for good is logged and counted: news about the send,
//! never the send's undoing.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::{OwnedHeaders, OwnedMessage};
use rdkafka::producer::{DeliveryResult, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio::sync::mpsc;

use super::{PublishError, Publisher};
use crate::events::currents::CurrentsKind;
use crate::telemetry::DispatchMetrics;

/// Sequence numbers of events handed over and not yet acknowledged. Pure.
#[derive(Debug, Default)]
pub struct Ledger {
    next: u64,
    outstanding: BTreeSet<u64>,
}

impl Ledger {
    /// An event is handed over: its number.
    pub fn open(&mut self) -> u64 {
        let seq = self.next;
        self.next += 1;
        self.outstanding.insert(seq);
        seq
    }

    /// The event is acknowledged (or dropped for good).
    pub fn close(&mut self, seq: u64) {
        self.outstanding.remove(&seq);
    }

    /// The number the next event will get: every event handed over so far is below it.
    pub fn mark(&self) -> u64 {
        self.next
    }

    /// Whether every event below `mark` is acknowledged.
    pub fn settled(&self, mark: u64) -> bool {
        self.outstanding.first().is_none_or(|first| *first >= mark)
    }
}

/// The ledger, shared by the senders, the acker and the consumer thread's commits.
#[derive(Debug, Default)]
pub struct Acks {
    ledger: Mutex<Ledger>,
    closed: Condvar,
}

impl Acks {
    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn open(&self) -> u64 {
        self.ledger().open()
    }

    pub(super) fn close(&self, seq: u64) {
        self.ledger().close(seq);
        self.closed.notify_all();
    }

    /// Blocks (the consumer thread, before a commit) until every event handed over so far is acknowledged;
    /// `false` if `timeout` passed first.
    #[allow(clippy::disallowed_methods)] // a deadline, measured where it is waited for
    pub fn wait_settled(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut ledger = self.ledger();
        let mark = ledger.mark();
        while !ledger.settled(mark) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            ledger = self
                .closed
                .wait_timeout(ledger, left)
                .map(|(l, _)| l)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }
}

/// What the delivery report of an event needs: its number and kind, packed in the opaque word librdkafka
/// carries (no allocation per event).
pub(super) fn opaque(seq: u64, kind: CurrentsKind) -> usize {
    usize::try_from(seq).unwrap_or(usize::MAX) << 2 | kind as usize
}

fn unpack(opaque: usize) -> (u64, CurrentsKind) {
    let kind = match opaque & 3 {
        0 => CurrentsKind::Send,
        1 => CurrentsKind::Abort,
        _ => CurrentsKind::Retry,
    };
    (opaque as u64 >> 2, kind)
}

/// An event librdkafka gave up on, to be written again.
pub(super) struct Undelivered {
    seq: u64,
    kind: CurrentsKind,
    message: OwnedMessage,
}

/// The Currents producer's context: delivery reports close events in the ledger on the producer's thread.
pub(super) struct CurrentsContext {
    pub(super) acks: Arc<Acks>,
    pub(super) metrics: DispatchMetrics,
    pub(super) undelivered: mpsc::UnboundedSender<Undelivered>,
}

impl ClientContext for CurrentsContext {}

impl ProducerContext for CurrentsContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (seq, kind) = unpack(opaque);
        match result {
            Ok(_) => {
                self.metrics
                    .currents_events
                    .with_label_values(&[kind.as_str()])
                    .inc();
                self.acks.close(seq);
            }
            Err((_, message)) => {
                let undelivered = Undelivered {
                    seq,
                    kind,
                    message: message.detach(),
                };
                if self.undelivered.send(undelivered).is_err() {
                    // The process is ending: the event stays open, so no commit passes its send.
                }
            }
        }
    }
}

/// The producer Currents events go through.
pub(super) type CurrentsProducer = ThreadedProducer<CurrentsContext>;

/// Writes again, the slow way, what librdkafka gave up on, until every sender is gone.
pub(super) async fn rewrite(publisher: Publisher, mut rx: mpsc::UnboundedReceiver<Undelivered>) {
    while let Some(u) = rx.recv().await {
        let publisher = publisher.clone();
        tokio::spawn(async move { publisher.write_again(u).await });
    }
}

impl Publisher {
    /// `u` is written again, transient faults retried until shutdown.
    async fn write_again(&self, u: Undelivered) {
        use rdkafka::Message as _;
        let key = u.message.key().unwrap_or_default();
        let payload = u.message.payload().unwrap_or_default();
        let headers = u
            .message
            .headers()
            .cloned()
            .unwrap_or_else(OwnedHeaders::new);
        let close = || {
            if let Some(c) = &self.currents.producer {
                c.context().acks.close(u.seq);
            }
        };
        match self.produce(u.message.topic(), key, payload, headers).await {
            Ok(()) => {
                self.metrics
                    .currents_events
                    .with_label_values(&[u.kind.as_str()])
                    .inc();
                close();
            }
            Err(PublishError::Rejected { topic, reason }) => {
                tracing::error!(%topic, %reason, kind = u.kind.as_str(),
                    "Currents event refused for good; the send goes on without it");
                close();
            }
            // Shutdown: the event stays open, so no commit passes the send it speaks of.
            Err(PublishError::Abandoned(_)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_waits_only_for_the_events_handed_over_before_it() {
        let mut l = Ledger::default();
        let a = l.open();
        let b = l.open();
        let mark = l.mark();
        let c = l.open();
        assert!(!l.settled(mark));
        l.close(b);
        assert!(!l.settled(mark), "a is still out");
        l.close(a);
        assert!(l.settled(mark), "c came after the mark");
        assert!(!l.settled(l.mark()));
        l.close(c);
        assert!(l.settled(l.mark()));
    }

    #[test]
    fn an_event_s_number_and_kind_travel_in_one_word() {
        for kind in CurrentsKind::ALL {
            assert_eq!(unpack(opaque(123_456, kind)), (123_456, kind));
        }
    }

    #[test]
    fn waiting_ends_when_the_last_earlier_event_is_acknowledged_or_at_the_timeout() {
        let acks = Arc::new(Acks::default());
        assert!(acks.wait_settled(Duration::ZERO), "nothing out");
        let seq = acks.open();
        assert!(!acks.wait_settled(Duration::from_millis(20)));
        let closer = acks.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            closer.close(seq);
        });
        assert!(acks.wait_settled(Duration::from_secs(10)));
        t.join().unwrap();
    }
}
