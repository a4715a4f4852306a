//! What an operator sees of host isolation and the memory budget: queued and spilled sends, saturated
//! hosts (the few with the longest queues by name, so the label set stays bounded), the age of the oldest
//! send waiting, and the bytes held against the budget.

use prometheus::{Gauge, GaugeVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use super::metrics::gauge;

/// Why a send was spilled (its host is slow); the `reason` label of `spilled_sends_total`.
pub const SPILL_REASONS: [&str; 3] = ["queue_full", "queue_wait", "stopping"];

/// What the metrics show of the hosts' queues.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub queued: usize,
    pub saturated_hosts: usize,
    /// How long the send waiting longest in a queue has waited.
    pub oldest_queued: std::time::Duration,
    /// The saturated hosts with the longest queues, longest first: `(host, queued, in flight)`.
    pub top: Vec<(std::sync::Arc<str>, usize, usize)>,
}

/// Where a waiting send waits; a label of `oldest_waiting_send_seconds`.
pub const WAITING_STATES: [&str; 2] = ["queued", "parked"];

#[derive(Clone)]
pub struct IsolationMetrics {
    pub queued_sends: IntGauge,
    pub saturated_hosts: IntGauge,
    pub spilled_sends: IntCounterVec,
    pub oldest_waiting: GaugeVec,
    pub top_host_queue: IntGaugeVec,
    pub held_bytes: IntGauge,
    pub paused_send_partitions: IntGauge,
    pub budget_bytes: IntGauge,
    pub budget_reached: prometheus::IntCounter,
}

impl IsolationMetrics {
    pub fn register(r: &Registry) -> Self {
        let spilled_sends = IntCounterVec::new(
            Opts::new(
                "spilled_sends_total",
                "Sends a slow host's lane moved to a retry tier without an attempt: its queue was full \
                 (queue_full), they waited in it for dispatch.max_queue_wait (queue_wait), or the \
                 dispatcher stopped (stopping)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in SPILL_REASONS {
            spilled_sends.with_label_values(&[reason]);
        }
        let oldest_waiting = GaugeVec::new(
            Opts::new(
                "oldest_waiting_send_seconds",
                "Age of the send waiting longest in this process: in a host's queue for a slot (queued), or \
                 read from a retry tier and parked until due (parked: since it was written to the tier; \
                 a spilled or held send waits there)",
            ),
            &["state"],
        )
        .expect("valid metric");
        for state in WAITING_STATES {
            oldest_waiting.with_label_values(&[state]);
        }
        let top_host_queue = IntGaugeVec::new(
            Opts::new(
                "saturated_host_queued_sends",
                "Sends queued for the hosts with the longest queues (at most 5 hosts named at a time)",
            ),
            &["host"],
        )
        .expect("valid metric");
        for m in [
            Box::new(spilled_sends.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(oldest_waiting.clone()),
            Box::new(top_host_queue.clone()),
        ] {
            r.register(m).expect("metric registered once");
        }
        Self {
            queued_sends: gauge(
                r,
                "host_queued_sends",
                "Sends waiting in a host's queue for one of its max_in_flight_per_host slots",
            ),
            saturated_hosts: gauge(
                r,
                "saturated_hosts",
                "Hosts with their slots in use and sends queued or spilled in the last 10 s",
            ),
            held_bytes: gauge(
                r,
                "held_bytes",
                "Bytes of consumed records not yet finished, counted against dispatch.memory_budget",
            ),
            budget_bytes: gauge(r, "memory_budget_bytes", "dispatch.memory_budget"),
            paused_send_partitions: gauge(
                r,
                "paused_send_partitions",
                "Send-topic partitions paused (backpressure or the memory budget); of \
                 hookrelay_paused_partitions, the rest are retry tiers waiting for parked retries",
            ),
            budget_reached: super::metrics::counter(
                r,
                "memory_budget_reached_total",
                "Times what the dispatcher holds reached dispatch.memory_budget (it then takes one record per \
                 50 ms until a sixteenth of the budget is free)",
            ),
            spilled_sends,
            oldest_waiting,
            top_host_queue,
        }
    }

    /// A send spilled, `reason` one of [`SPILL_REASONS`].
    pub fn spilled(&self, reason: &str) {
        self.spilled_sends.with_label_values(&[reason]).inc();
    }

    /// Sets the gauges from a snapshot of the queues; `gone` are hosts no longer among the top ones.
    pub fn show(&self, s: &Snapshot, gone: &[std::sync::Arc<str>]) {
        self.queued_sends.set(s.queued as i64);
        self.saturated_hosts.set(s.saturated_hosts as i64);
        self.waiting("queued").set(s.oldest_queued.as_secs_f64());
        for host in gone {
            let _ = self.top_host_queue.remove_label_values(&[host]);
        }
        for (host, queued, _) in &s.top {
            self.top_host_queue
                .with_label_values(&[host])
                .set(*queued as i64);
        }
    }

    pub fn waiting(&self, state: &str) -> Gauge {
        self.oldest_waiting.with_label_values(&[state])
    }
}
