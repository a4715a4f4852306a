//! Typed metrics. Label values come from small fixed sets (status classes, reasons, booleans), never from
//! URLs or workspace ids, so the series count stays bounded however much traffic flows.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use super::KafkaGauges;
use crate::events::send_request::InvalidKind;

#[derive(Clone)]
pub struct DispatchMetrics {
    pub registry: Registry,
    /// Records by final result of this pass: delivered, failed, dead_lettered.
    pub sends: IntCounterVec,
    /// HTTP attempts by status class: 2xx, 3xx, 4xx, 5xx, 598, 599.
    pub attempts: IntCounterVec,
    /// `sends{result="delivered"}` and `attempts{class="2xx"}`, looked up once: most sends count only these,
    /// and a labelled lookup hashes the label and takes a lock every time.
    pub delivered: IntCounter,
    pub attempts_2xx: IntCounter,
    pub failure_events: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub request_duration: Histogram,
    /// From a send request's Kafka timestamp to its outcome being durable (delivered, or its failure event
    /// and retry written): what a producer waits, queueing included.
    pub send_latency: Histogram,
    pub in_flight: IntGauge,
    pub pending_records: IntGauge,
    pub paused_partitions: IntGauge,
    pub assigned_partitions: IntGauge,
    /// Failed produce attempts by kind: transient (retried), permanent (written smaller or elsewhere), fatal.
    pub produce_errors: IntCounterVec,
    /// Outcomes waiting on Kafka after a failed produce: a value that stays up means a stalled partition.
    pub stalled_outcomes: IntGauge,
    /// Failure events cut to fit in a Kafka record.
    pub truncated_events: IntCounter,
    pub commits: IntCounterVec,
    /// Retries written to a tier topic, by tier (labels come from the configured tiers).
    pub retries_scheduled: IntCounterVec,
    /// Retries moved to a shorter tier because they were not yet due.
    pub retry_hops: IntCounter,
    /// Sends delivered on an attempt after the first.
    pub delivered_after_retry: IntCounter,
    /// Host pause transitions: paused, extended, resumed.
    pub host_pauses: IntCounterVec,
    pub paused_hosts: IntGauge,
    /// Retry records held until due (their partitions paused meanwhile).
    pub parked_records: IntGauge,
    /// Sends refused by the SSRF guard or port policy (never sent).
    pub blocked_destinations: IntCounter,
    /// Braze Currents events written, by kind: send, abort, retry.
    pub currents_events: IntCounterVec,
    /// Failed requests to the schema registry for a writer schema while records waited for it.
    pub registry_unavailable: IntCounter,
    /// Records waiting for the schema registry to answer (their partitions move on up to their bounds).
    pub registry_waiting: IntGauge,
    /// Sends given up, by reason: not retriable, retries exhausted, window exhausted.
    pub give_ups: IntCounterVec,
    /// Sends held back before going out and waited for in the process, by reason: rate_limit, retry_after.
    pub held_sends: IntCounterVec,
    /// Held sends requeued to a retry tier (the hold was longer than `dispatch.max_hold`), by reason.
    pub requeued_sends: IntCounterVec,
    /// How long held sends waited in the process, by reason.
    pub hold_wait: HistogramVec,
    /// `Retry-After` answers that set or lengthened a hold on a host for a workspace.
    pub retry_after_holds: IntCounter,
    /// Reachability, and lag and committed offset per owned partition.
    pub kafka: KafkaGauges,
    pub isolation: super::IsolationMetrics,
    pub fleet: super::FleetMetrics,
}

pub const HOLD_REASONS: [&str; 2] = ["rate_limit", "retry_after"];

fn counter_vec(
    r: &Registry,
    name: &str,
    help: &str,
    label: &str,
    values: &[&str],
) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    for v in values {
        c.with_label_values(&[v]);
    }
    c
}

pub(super) fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

pub(super) fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    r.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

/// A registry's metrics in Prometheus text format.
pub(super) fn render(registry: &Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_default()
}

pub const STATUS_CLASSES: [&str; 6] = ["2xx", "3xx", "4xx", "5xx", "598", "599"];

/// The bounded label for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        598 => "598",
        599 => "599",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl DispatchMetrics {
    // One registration per metric: a flat list reads better than the same list cut into pieces.
    #[allow(clippy::too_many_lines)]
    pub fn new() -> Self {
        let r = Registry::new_custom(Some("hookrelay".into()), None).expect("valid registry");
        let kinds: Vec<&str> = InvalidKind::ALL.iter().map(|k| k.as_str()).collect();
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "webhook_request_duration_seconds",
                "Duration of webhook HTTP attempts",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 90.0,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(request_duration.clone()))
            .expect("metric registered once");
        let send_latency = Histogram::with_opts(
            HistogramOpts::new(
                "send_latency_seconds",
                "From a send request's Kafka timestamp to its outcome being durable",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 300.0,
            ]),
        )
        .expect("valid metric");
        r.register(Box::new(send_latency.clone()))
            .expect("metric registered once");
        let produce_errors = counter_vec(
            &r,
            "produce_errors_total",
            "Kafka produce attempts that failed, by kind: transient (retried), permanent (written smaller \
             or as a dead letter), fatal (the process ends)",
            "kind",
            &["transient", "permanent", "fatal"],
        );
        let hold_wait = HistogramVec::new(
            HistogramOpts::new(
                "hold_wait_seconds",
                "How long sends held back by a rate limit or a Retry-After waited before going out",
            )
            .buckets(vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ]),
            &["reason"],
        )
        .expect("valid metric");
        r.register(Box::new(hold_wait.clone()))
            .expect("metric registered once");
        for reason in HOLD_REASONS {
            hold_wait.with_label_values(&[reason]);
        }
        let sends = counter_vec(
            &r,
            "sends_total",
            "Send requests by result",
            "result",
            &["delivered", "failed", "dead_lettered"],
        );
        let attempts = counter_vec(
            &r,
            "webhook_attempts_total",
            "Webhook attempts by status class",
            "class",
            &STATUS_CLASSES,
        );
        Self {
            held_sends: counter_vec(
                &r,
                "held_sends_total",
                "Sends held back by a rate limit or a Retry-After and waited for in the process, by reason",
                "reason",
                &HOLD_REASONS,
            ),
            requeued_sends: counter_vec(
                &r,
                "requeued_held_sends_total",
                "Held sends requeued to a retry tier because the hold outlasts dispatch.max_hold, by reason",
                "reason",
                &HOLD_REASONS,
            ),
            retry_after_holds: counter(
                &r,
                "retry_after_holds_total",
                "Retry-After answers (429, 503) that set or lengthened a hold on a host for a workspace",
            ),
            hold_wait,
            delivered: sends.with_label_values(&["delivered"]),
            attempts_2xx: attempts.with_label_values(&["2xx"]),
            sends,
            attempts,
            failure_events: counter_vec(
                &r,
                "failure_events_total",
                "Failure events published",
                "terminal",
                &["true", "false"],
            ),
            dead_letters: counter_vec(
                &r,
                "dead_letters_total",
                "Records sent to the dead-letter topic",
                "reason",
                &kinds,
            ),
            in_flight: gauge(
                &r,
                "webhook_requests_in_flight",
                "Webhook HTTP requests in flight",
            ),
            pending_records: gauge(
                &r,
                "pending_records",
                "Consumed records whose outcome is not yet durable",
            ),
            paused_partitions: gauge(
                &r,
                "paused_partitions",
                "Partitions paused for backpressure",
            ),
            assigned_partitions: gauge(
                &r,
                "assigned_partitions",
                "Partitions assigned to this instance",
            ),
            commits: counter_vec(
                &r,
                "offset_commits_total",
                "Offset commits by result",
                "result",
                &["ok", "error"],
            ),
            // Labels come from the configured tiers, so none is created up front.
            retries_scheduled: counter_vec(
                &r,
                "retries_scheduled_total",
                "Retries scheduled, by tier",
                "tier",
                &[],
            ),
            retry_hops: counter(
                &r,
                "retry_hops_total",
                "Retries moved to a shorter tier before they were due",
            ),
            delivered_after_retry: counter(
                &r,
                "delivered_after_retry_total",
                "Sends delivered on a retry",
            ),
            host_pauses: counter_vec(
                &r,
                "host_pause_transitions_total",
                "Unhealthy-host transitions",
                "transition",
                &["paused", "extended", "resumed"],
            ),
            paused_hosts: gauge(
                &r,
                "paused_hosts",
                "(host, workspace) pairs currently paused as unhealthy",
            ),
            parked_records: gauge(
                &r,
                "parked_retry_records",
                "Retry records held until they are due",
            ),
            stalled_outcomes: gauge(
                &r,
                "stalled_outcomes",
                "Outcomes waiting on Kafka after a failed produce (a value that stays up is a stalled partition)",
            ),
            truncated_events: counter(
                &r,
                "truncated_failure_events_total",
                "Failure events whose strings were cut to fit in a Kafka record",
            ),
            blocked_destinations: counter(
                &r,
                "blocked_destinations_total",
                "Sends refused by the SSRF guard or port policy (never sent)",
            ),
            currents_events: counter_vec(
                &r,
                "currents_events_total",
                "Braze Currents Send, Abort and Retry events written, by kind",
                "kind",
                &["send", "abort", "retry"],
            ),
            registry_unavailable: counter(
                &r,
                "schema_registry_unavailable_total",
                "Failed schema registry requests for a writer schema while records waited for it",
            ),
            registry_waiting: gauge(
                &r,
                "schema_registry_waiting_records",
                "Records waiting for the schema registry to answer with their writer schema",
            ),
            give_ups: counter_vec(
                &r,
                "give_ups_total",
                "Sends given up after a failed attempt, by reason",
                "reason",
                // `dispatch::retry::GiveUpReason::as_str` of each (a test there keeps them in step), and the
                // pipeline's own two.
                &[
                    "not_retriable",
                    "retries_exhausted",
                    "window_exhausted",
                    "retry_refused",
                    "no_longer_valid",
                ],
            ),
            request_duration,
            send_latency,
            produce_errors,
            kafka: KafkaGauges::register(&r),
            isolation: super::IsolationMetrics::register(&r),
            fleet: super::FleetMetrics::register(&r),
            registry: r,
        }
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

impl Default for DispatchMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl DispatchMetrics {
    /// A send held back in the process for `wait`, `reason` one of [`HOLD_REASONS`].
    pub fn held(&self, reason: &str, wait: std::time::Duration) {
        self.held_sends.with_label_values(&[reason]).inc();
        self.hold_wait
            .with_label_values(&[reason])
            .observe(wait.as_secs_f64());
    }

    /// A host's pause began, was extended, or ended (`paused`, `extended`, `resumed`).
    pub fn host_pause(&self, transition: &str) {
        self.host_pauses.with_label_values(&[transition]).inc();
    }
}
