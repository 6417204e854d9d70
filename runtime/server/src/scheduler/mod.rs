//! The scheduler: claims PENDING events from the store within the limits,
//! runs each one's worker in the sandbox of this process, records its jobs,
//! logs and outcome, and keeps its lease alive so that another replica (or
//! this one after a restart) takes the event over if this process dies.
//!
//! Delivery is at least once: an event whose worker was cut short by a crash
//! runs again from the start, inheriting the jobs that had SUCCEEDED without
//! a workspace (the rule Brigade applied to retries); after
//! [`SchedulerConfig::max_attempts`] workers it ends FAILED, so nothing
//! stays non-terminal forever.

mod event_log;
mod recording;
mod worker;

pub use worker::{RETRY_LABEL, WORKER_CONTAINER};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mizzen_host_api::types::LogLevel;
use mizzen_runtime::executor::JobExecutor;
use mizzen_runtime::limits::LimitSettings;
use mizzen_runtime::log::{LogRecord, LogSink};
use mizzen_runtime::redact::Redactor;
use tokio::sync::{Notify, watch};

use crate::metrics::Metrics;
use crate::project_cache::ProjectCache;
use crate::sandbox_pool::SandboxStage;
use crate::store::{self, Store};
use event_log::EventLog;
use recording::JobSlots;

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// This replica's name in leases.
    pub replica: String,
    /// How long a claim lasts without renewal. A crashed replica's events
    /// wait this long before another replica takes them.
    pub lease: Duration,
    /// Workers running at once: across replicas, and per project.
    pub workers: store::ClaimLimits,
    /// Workers this process runs at once (its sandbox's capacity).
    pub local_workers: usize,
    /// Jobs running at once in this process, and per project.
    pub jobs: usize,
    /// Jobs of one project running at once in this process.
    pub jobs_per_project: usize,
    /// Workers started for one event at most (crash recovery re-runs).
    pub max_attempts: i64,
    /// The most any project's workers may have of each limit; projects that
    /// ask for more are refused, and defaults above a ceiling come down.
    pub limit_ceilings: LimitSettings,
    /// Whether containers may never bind host paths, whatever a project's
    /// `allowedHostPaths` says (a multi-tenant server's choice).
    pub forbid_host_paths: bool,
}

/// Workers and jobs running in this process, and what wakes the scheduler.
pub struct Scheduler {
    store: Store,
    projects: Arc<ProjectCache>,
    sandbox: Arc<dyn SandboxStage>,
    executor: Option<Arc<dyn JobExecutor>>,
    config: SchedulerConfig,
    metrics: Arc<Metrics>,
    running: Mutex<HashMap<String, Arc<Notify>>>,
    /// Wakes the scheduler: new events, freed capacity.
    wake: Arc<Notify>,
    job_slots: Arc<JobSlots>,
    /// Where workers' and jobs' lines, and events' spans, go.
    forwarding: Forwarding,
}

/// Where workers' and jobs' lines are forwarded, events' spans exported,
/// and tracked events reported (GitHub's check runs, Slack's replies), when
/// they are.
#[derive(Default)]
pub struct Forwarding {
    /// Log lines.
    pub lines: Option<Arc<mizzen_forwarding::Forwarder>>,
    /// Spans.
    pub traces: Option<Arc<mizzen_forwarding::Forwarder<mizzen_forwarding::TraceSpan>>>,
    /// Tracked GitHub events' jobs, as check runs.
    pub check_runs: Option<Arc<crate::check_runs::CheckRunReporter>>,
    /// Slack commands' events, answered in their channel when they end.
    pub slack_replies: Option<Arc<crate::slack_replies::SlackReplies>>,
}

/// Claims are retried this often even when nothing woke the scheduler:
/// events other replicas accepted, and leases to check.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

impl Scheduler {
    /// A scheduler over `store`, running workers in `sandbox` and their jobs
    /// on `executor` (none: jobs fail with a message saying so).
    pub fn new(
        store: Store,
        projects: Arc<ProjectCache>,
        sandbox: Arc<dyn SandboxStage>,
        executor: Option<Arc<dyn JobExecutor>>,
        config: SchedulerConfig,
        metrics: Arc<Metrics>,
        forwarding: Forwarding,
    ) -> Arc<Self> {
        let job_slots = Arc::new(JobSlots::new(config.jobs, config.jobs_per_project));
        Arc::new(Self {
            store,
            projects,
            sandbox,
            executor,
            config,
            metrics,
            running: Mutex::default(),
            wake: Arc::new(Notify::new()),
            job_slots,
            forwarding,
        })
    }

    /// Runs until `shutdown` turns true, then lets running workers finish
    /// for up to `grace` and gives the rest back to the queue.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>, grace: Duration) {
        // A SQLite store belongs to this process alone: whatever it shows as
        // running was cut short when the previous process stopped.
        let everything = self.store.backend() == store::Backend::Sqlite;
        self.recover(everything).await;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = poll.tick() => {
                    if last_renewal.elapsed() >= self.config.lease / 3 {
                        last_renewal = tokio::time::Instant::now();
                        self.housekeeping().await;
                    }
                }
                _ = shutdown.changed() => break,
            }
            self.claim().await;
        }
        self.drain(grace).await;
    }

    async fn claim(self: &Arc<Self>) {
        let room = self
            .config
            .local_workers
            .saturating_sub(self.running_count());
        let claimed = match self
            .store
            .claim(
                &self.config.replica,
                self.config.lease,
                self.config.workers,
                room,
            )
            .await
        {
            Ok(claimed) => claimed,
            Err(e) => {
                tracing::error!(error = %e, "claiming events failed; retrying");
                return;
            }
        };
        for event in claimed {
            let cancel = Arc::new(Notify::new());
            self.lock_running().insert(event.id.clone(), cancel.clone());
            let scheduler = self.clone();
            tokio::spawn(async move {
                let id = event.id.clone();
                scheduler.run_worker(event, cancel).await;
                scheduler.lock_running().remove(&id);
                scheduler.wake.notify_one();
            });
        }
    }

    /// Renews this replica's leases, takes over events whose replica
    /// stopped, and aborts events cancelled through another replica.
    async fn housekeeping(&self) {
        if let Err(e) = self
            .store
            .renew_leases(&self.config.replica, self.config.lease)
            .await
        {
            tracing::error!(error = %e, "renewing leases failed");
        }
        self.recover(false).await;
        match self.store.cancel_requests(&self.config.replica).await {
            Ok(ids) => {
                for id in ids {
                    self.abort_local(&id);
                }
            }
            Err(e) => tracing::error!(error = %e, "reading cancellations failed"),
        }
    }

    async fn recover(&self, everything: bool) {
        match self
            .store
            .recover(&self.config.replica, everything, self.config.max_attempts)
            .await
        {
            Ok((requeued, failed)) => {
                for id in &requeued {
                    tracing::warn!(event = %id, "worker was cut short (its replica stopped); running it again");
                    self.note(id, LogLevel::Warn, "the worker was cut short because its server stopped; the event runs again (jobs that succeeded without a workspace are kept)");
                }
                for id in &failed {
                    tracing::warn!(event = %id, "worker was cut short too often; FAILED");
                    self.note(id, LogLevel::Error, &format!(
                        "the worker was cut short by a stopping server {} times; the event is FAILED",
                        self.config.max_attempts
                    ));
                }
                if !requeued.is_empty() {
                    self.wake.notify_one();
                }
            }
            Err(e) => tracing::error!(error = %e, "recovering events failed"),
        }
    }

    /// A line in an event's worker log from the host.
    fn note(&self, event_id: &str, level: LogLevel, message: &str) {
        // The host's own words hold no secrets: nothing to redact.
        let log = EventLog::new(
            self.store.clone(),
            event_id.to_string(),
            Arc::new(Redactor::default()),
        );
        log.record(LogRecord::logger(level, message, None));
    }

    /// Aborts a worker running in this process; `false` when it runs
    /// elsewhere or not at all.
    pub fn abort_local(&self, event_id: &str) -> bool {
        match self.lock_running().get(event_id) {
            Some(cancel) => {
                cancel.notify_one();
                true
            }
            None => false,
        }
    }

    /// What runs jobs, when this server has an executor.
    pub fn executor(&self) -> Option<&Arc<dyn JobExecutor>> {
        self.executor.as_ref()
    }

    /// The server's ceilings on every project's worker limits.
    pub fn limit_ceilings(&self) -> &LimitSettings {
        &self.config.limit_ceilings
    }

    /// Wakes the claim loop (new events were stored).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn running_count(&self) -> usize {
        self.lock_running().len()
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Notify>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Graceful shutdown: waits for running workers up to `grace`, then
    /// puts the rest back in the queue for the next replica.
    async fn drain(&self, grace: Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        while self.running_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left: Vec<String> = self.lock_running().keys().cloned().collect();
        for id in left {
            tracing::info!(event = %id, "shutting down: handing the event back to the queue");
            self.note(
                &id,
                LogLevel::Warn,
                "the server is shutting down; the event goes back to the queue and runs again",
            );
            if let Err(e) = self.store.release(&self.config.replica, &id).await {
                tracing::error!(event = %id, error = %e, "could not hand the event back; its lease will run out");
            }
        }
    }
}
