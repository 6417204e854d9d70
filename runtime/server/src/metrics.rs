//! Prometheus metrics of the server, served at `/metrics`.

use std::sync::Mutex;

use mizzen_host_api::types::Phase;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// The server's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    events_accepted: Counter,
    workers_ended: Family<Labels, Counter>,
    jobs_started: Counter,
    jobs_ended: Family<Labels, Counter>,
    worker_seconds: Histogram,
    wait_seconds: Histogram,
    queue_depth: Family<Labels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mizzen");
        let events_accepted = Counter::default();
        registry.register(
            "events_accepted",
            "Events durably stored (one per subscribed project)",
            events_accepted.clone(),
        );
        let workers_ended = Family::<Labels, Counter>::default();
        registry.register(
            "workers_ended",
            "Workers that ended, by phase",
            workers_ended.clone(),
        );
        let jobs_started = Counter::default();
        registry.register("jobs_started", "Jobs started", jobs_started.clone());
        let jobs_ended = Family::<Labels, Counter>::default();
        registry.register(
            "jobs_ended",
            "Jobs that ended, by phase",
            jobs_ended.clone(),
        );
        // 1 ms to ~4.5 h in factors of 4.
        let worker_seconds = Histogram::new(exponential_buckets(0.001, 4.0, 12));
        registry.register(
            "worker_duration_seconds",
            "How long workers ran",
            worker_seconds.clone(),
        );
        // 100 µs to ~7 min in factors of 4.
        let wait_seconds = Histogram::new(exponential_buckets(0.0001, 4.0, 12));
        registry.register(
            "event_wait_seconds",
            "From an event's acceptance to its worker running",
            wait_seconds.clone(),
        );
        let queue_depth = Family::<Labels, Gauge>::default();
        registry.register(
            "events_by_phase",
            "Events whose worker is PENDING, STARTING or RUNNING (all replicas)",
            queue_depth.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            events_accepted,
            workers_ended,
            jobs_started,
            jobs_ended,
            worker_seconds,
            wait_seconds,
            queue_depth,
        }
    }

    /// `n` events were stored.
    pub fn events_accepted(&self, n: usize) {
        self.events_accepted.inc_by(n as u64);
    }

    /// A worker started running, `waited` seconds after its event was accepted.
    pub fn worker_started(&self, waited: f64) {
        self.wait_seconds.observe(waited);
    }

    /// A worker ended.
    pub fn worker_ended(&self, phase: Phase, seconds: f64) {
        self.workers_ended.get_or_create(&phase_label(phase)).inc();
        self.worker_seconds.observe(seconds);
    }

    /// A job started.
    pub fn job_started(&self) {
        self.jobs_started.inc();
    }

    /// A job ended.
    pub fn job_ended(&self, phase: Phase) {
        self.jobs_ended.get_or_create(&phase_label(phase)).inc();
    }

    /// The text exposition, with the queue depth just read from the store.
    pub fn render(&self, phases: &std::collections::BTreeMap<String, i64>) -> String {
        for phase in ["PENDING", "STARTING", "RUNNING"] {
            let n = phases.get(phase).copied().unwrap_or(0);
            self.queue_depth
                .get_or_create(&vec![("phase".to_string(), phase.to_string())])
                .set(n);
        }
        let mut text = String::new();
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }
}

fn phase_label(phase: Phase) -> Labels {
    vec![("phase".to_string(), phase.as_str().to_string())]
}
