//! Prometheus metrics of the server, served at `/metrics`.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use mizzen_forwarding::ForwardingStats;
use mizzen_host_api::types::Phase;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

type Labels = Vec<(String, String)>;

/// Projects that get their own series in the per-project metrics; the rest
/// share `project="_other"`. Each project adds a series per phase to each
/// such metric: a few hundred keep a scrape small while covering the
/// projects of any one platform team; past that a dashboard wants the
/// store's numbers, not a time series per tenant.
const MAX_PROJECT_SERIES: usize = 200;

/// The label value of projects past [`MAX_PROJECT_SERIES`].
const OTHER_PROJECTS: &str = "_other";

/// The server's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    events_accepted: Family<Labels, Counter>,
    workers_ended: Family<Labels, Counter>,
    jobs_started: Counter,
    jobs_ended: Family<Labels, Counter>,
    worker_seconds: Histogram,
    wait_seconds: Histogram,
    queue_depth: Family<Labels, Gauge>,
    requests: Family<Labels, Counter>,
    request_seconds: Family<Labels, Histogram>,
    gateway_deliveries: Family<Labels, Counter>,
    sandbox_restarts: Counter,
    sandbox_revived: OnceLock<watch::Receiver<u64>>,
    forwarding: Arc<ForwardingStats>,
    forwarded_queue: Family<Labels, Gauge>,
    forwarded_delivered: Family<Labels, Counter>,
    forwarded_retried: Family<Labels, Counter>,
    forwarded_dropped: Family<Labels, Counter>,
    /// Projects with their own series.
    projects: Mutex<HashSet<String>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Request and step durations: 1 ms to ~33 s in factors of 2, fine enough
/// to tell a 5 ms answer from a 20 ms one.
fn request_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.001, 2.0, 16)
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mizzen");
        registry.register(
            "build",
            "The server's version and commit",
            Info::new(vec![
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                (
                    "commit".to_string(),
                    option_env!("MIZZEN_COMMIT")
                        .unwrap_or("unknown")
                        .to_string(),
                ),
            ]),
        );
        let events_accepted = Family::<Labels, Counter>::default();
        registry.register(
            "events_accepted",
            "Events durably stored (one per subscribed project), by project",
            events_accepted.clone(),
        );
        let workers_ended = Family::<Labels, Counter>::default();
        registry.register(
            "workers_ended",
            "Workers that ended, by phase and project",
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
        // 1 ms to ~9 h in factors of 2.
        let worker_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 25));
        registry.register(
            "worker_duration_seconds",
            "How long workers ran",
            worker_seconds.clone(),
        );
        // 100 µs to ~14 min in factors of 2.
        let wait_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 24));
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
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, route and status",
            requests.clone(),
        );
        let request_seconds =
            Family::<Labels, Histogram>::new_with_constructor(|| Histogram::new(request_buckets()));
        registry.register(
            "http_request_duration_seconds",
            "From a request's arrival to its answer's headers, by method and route",
            request_seconds.clone(),
        );
        let gateway_deliveries = Family::<Labels, Counter>::default();
        registry.register(
            "gateway_deliveries",
            "Webhook deliveries, by gateway, outcome (accepted, duplicate, ignored, refused) and reason",
            gateway_deliveries.clone(),
        );
        let sandbox_restarts = Counter::default();
        registry.register(
            "sandbox_process_restarts",
            "Sandbox processes started again after one died",
            sandbox_restarts.clone(),
        );
        let forwarded_queue = Family::<Labels, Gauge>::default();
        registry.register(
            "forwarding_spool",
            "Log lines waiting in the forwarding spool (unit=lines) and their size (unit=bytes)",
            forwarded_queue.clone(),
        );
        let forwarded_delivered = Family::<Labels, Counter>::default();
        registry.register(
            "forwarding_lines_delivered",
            "Log lines a collector acknowledged, by sink",
            forwarded_delivered.clone(),
        );
        let forwarded_retried = Family::<Labels, Counter>::default();
        registry.register(
            "forwarding_lines_retried",
            "Log lines of batches that failed and were sent again, by sink",
            forwarded_retried.clone(),
        );
        let forwarded_dropped = Family::<Labels, Counter>::default();
        registry.register(
            "forwarding_lines_dropped",
            "Log lines not forwarded, by reason (spool_full, writer_behind, rejected, spool_error)",
            forwarded_dropped.clone(),
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
            requests,
            request_seconds,
            gateway_deliveries,
            sandbox_restarts,
            sandbox_revived: OnceLock::new(),
            forwarding: Arc::default(),
            forwarded_queue,
            forwarded_delivered,
            forwarded_retried,
            forwarded_dropped,
            projects: Mutex::default(),
        }
    }

    /// The project's label value: its id while fewer than
    /// [`MAX_PROJECT_SERIES`] projects have their own series.
    fn project_label(&self, project: &str) -> String {
        let mut projects = self.projects.lock().unwrap_or_else(|e| e.into_inner());
        if projects.contains(project) {
            return project.to_string();
        }
        if projects.len() < MAX_PROJECT_SERIES {
            projects.insert(project.to_string());
            return project.to_string();
        }
        OTHER_PROJECTS.to_string()
    }

    /// An event was stored for `project`.
    pub fn event_accepted(&self, project: &str) {
        let project = self.project_label(project);
        self.events_accepted
            .get_or_create(&vec![("project".to_string(), project)])
            .inc();
    }

    /// A worker started running, `waited` seconds after its event was accepted.
    pub fn worker_started(&self, waited: f64) {
        self.wait_seconds.observe(waited);
    }

    /// A worker of `project` ended.
    pub fn worker_ended(&self, project: &str, phase: Phase, seconds: f64) {
        let project = self.project_label(project);
        self.workers_ended
            .get_or_create(&vec![
                ("phase".to_string(), phase.as_str().to_string()),
                ("project".to_string(), project),
            ])
            .inc();
        self.worker_seconds.observe(seconds);
    }

    /// A job started.
    pub fn job_started(&self) {
        self.jobs_started.inc();
    }

    /// A job ended.
    pub fn job_ended(&self, phase: Phase) {
        self.jobs_ended
            .get_or_create(&vec![("phase".to_string(), phase.as_str().to_string())])
            .inc();
    }

    /// A request was answered. `route` is the route's template (never the
    /// path itself, which would make a series per event).
    pub fn request(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&vec![
                ("method".to_string(), method.to_string()),
                ("route".to_string(), route.to_string()),
                ("status".to_string(), status.to_string()),
            ])
            .inc();
        self.request_seconds
            .get_or_create(&vec![
                ("method".to_string(), method.to_string()),
                ("route".to_string(), route.to_string()),
            ])
            .observe(seconds);
    }

    /// A webhook delivery to `gateway` ended with `outcome`, for `reason`
    /// (empty when accepted).
    pub fn gateway_delivery(&self, gateway: &str, outcome: &str, reason: &str) {
        self.gateway_deliveries
            .get_or_create(&vec![
                ("gateway".to_string(), gateway.to_string()),
                ("outcome".to_string(), outcome.to_string()),
                ("reason".to_string(), reason.to_string()),
            ])
            .inc();
    }

    /// Counts the sandbox pool's restarts (it counts them itself).
    pub fn watch_sandbox_restarts(&self, revived: watch::Receiver<u64>) {
        let _ = self.sandbox_revived.set(revived);
    }

    /// What log forwarding counts, for the forwarder to count into.
    pub fn forwarding_stats(&self) -> &Arc<ForwardingStats> {
        &self.forwarding
    }

    /// The text exposition, with the queue depth just read from the store.
    pub fn render(&self, phases: &BTreeMap<String, i64>) -> String {
        // Held throughout: two scrapes at once must not both catch a
        // counter up.
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        for phase in ["PENDING", "STARTING", "RUNNING"] {
            let n = phases.get(phase).copied().unwrap_or(0);
            self.queue_depth
                .get_or_create(&vec![("phase".to_string(), phase.to_string())])
                .set(n);
        }
        if let Some(revived) = self.sandbox_revived.get() {
            catch_up(&self.sandbox_restarts, *revived.borrow());
        }
        self.render_forwarding();
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &registry);
        text
    }

    fn render_forwarding(&self) {
        let stats = &self.forwarding;
        let label = |name: &str, value: &str| vec![(name.to_string(), value.to_string())];
        self.forwarded_queue
            .get_or_create(&label("unit", "lines"))
            .set(stats.spool_lines.load(Ordering::Relaxed) as i64);
        self.forwarded_queue
            .get_or_create(&label("unit", "bytes"))
            .set(stats.spool_bytes.load(Ordering::Relaxed) as i64);
        for (reason, count) in [
            ("spool_full", &stats.dropped_spool_full),
            ("writer_behind", &stats.dropped_writer_behind),
            ("rejected", &stats.dropped_rejected),
            ("spool_error", &stats.dropped_spool_error),
        ] {
            catch_up(
                &self
                    .forwarded_dropped
                    .get_or_create(&label("reason", reason)),
                count.load(Ordering::Relaxed),
            );
        }
        for (sink, counts) in stats.sinks() {
            catch_up(
                &self.forwarded_delivered.get_or_create(&label("sink", sink)),
                counts.delivered,
            );
            catch_up(
                &self.forwarded_retried.get_or_create(&label("sink", sink)),
                counts.retried,
            );
        }
    }
}

/// Brings a counter up to a total counted elsewhere.
fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}
