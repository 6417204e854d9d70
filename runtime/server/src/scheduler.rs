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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::sandbox_pool::SandboxStage;
use async_trait::async_trait;
use mizzen_host_api::types::{JobResult, LogLevel, Phase};
use mizzen_runtime::WorkerLimits;
use mizzen_runtime::assembly::{ProjectFiles, WorkerPlan};
use mizzen_runtime::executor::{
    EventContext, ExecutorError, JobExecutor, JobRequest, RunningJob, WorkspaceError,
};
use mizzen_runtime::limits::LimitSettings;
use mizzen_runtime::log::{LogRecord, LogSink};
use mizzen_runtime::project::EventDetails;
use mizzen_runtime::redact::{Redactor, StreamId, StreamRedactor, stream_of};
use serde_json::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::metrics::Metrics;
use crate::project_cache::ProjectCache;
use crate::store::{self, EventRecord, JobRecord, LogLine, Store, micros_at, now_micros};

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
        wake: Arc<Notify>,
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
            wake,
            job_slots,
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

    async fn run_worker(&self, event: EventRecord, cancel: Arc<Notify>) {
        let id = event.id.clone();
        let started = std::time::Instant::now();
        let ended = match self.work(&event, cancel).await {
            Ok(ended) => ended,
            Err(message) => {
                self.note(&id, LogLevel::Error, &format!("worker FAILED: {message}"));
                WorkerEnd {
                    phase: Phase::Failed,
                    summary: None,
                }
            }
        };
        self.metrics
            .worker_ended(ended.phase, started.elapsed().as_secs_f64());
        // Whoever sees the event ended reads its whole log: every line the
        // worker and its jobs printed is in the store first.
        self.store.flush_logs().await;
        match self
            .store
            .worker_ended(
                &self.config.replica,
                &id,
                ended.phase,
                ended.summary.as_deref(),
            )
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(event = %id, "the worker ended after its event was taken over")
            }
            Err(e) => tracing::error!(event = %id, error = %e, "recording the worker's end failed"),
        }
    }

    /// Runs one worker.
    async fn work(&self, event: &EventRecord, cancel: Arc<Notify>) -> Result<WorkerEnd, String> {
        let project = self
            .projects
            .parse(&event.project_id, &event.document.project)
            .map_err(|e| e.to_string())?;
        let secrets = self
            .store
            .secrets(&event.project_id)
            .await
            .map_err(|e| e.to_string())?;
        let redactor = self.projects.redactor(&event.project_id, &secrets).await;
        let details = EventDetails {
            source: event.source.clone(),
            event_type: event.event_type.clone(),
            qualifiers: event.document.qualifiers.clone(),
            labels: event.document.labels.clone(),
            short_title: event.document.short_title.clone(),
            long_title: event.document.long_title.clone(),
            payload: event.document.payload.clone(),
        };
        let mut worker_event = project.event(details, secrets);
        worker_event.id = event.id.clone();
        apply_git_overrides(&mut worker_event.worker.git, event.document.git.as_ref());

        self.metrics.worker_started(micros_since(event.created));

        let log = Arc::new(EventLog::new(
            self.store.clone(),
            event.id.clone(),
            redactor.clone(),
        ));
        let (limits, notes) =
            WorkerLimits::for_project(&project.worker.limits, &self.config.limit_ceilings);
        for note in notes {
            log.record(LogRecord::logger(LogLevel::Warn, &note, None));
        }
        // Only a retry, or a run after a crash, can have jobs to inherit.
        let may_inherit = event.attempts > 1 || event.document.labels.contains_key(RETRY_LABEL);
        let earlier_jobs = if may_inherit {
            self.store
                .jobs(&event.id)
                .await
                .map_err(|e| e.to_string())?
        } else {
            Vec::new()
        };
        let inherited = earlier_jobs
            .into_iter()
            .filter(|job| job.phase == Phase::Succeeded && !job.uses_workspace)
            .map(|job| (job.name, job.spec))
            .collect();
        let executor: Result<Arc<dyn JobExecutor>, String> = match &self.executor {
            Some(executor) => Ok(Arc::new(RecordedExecutor {
                inner: executor.clone(),
                store: self.store.clone(),
                slots: self.job_slots.clone(),
                metrics: self.metrics.clone(),
                inherited: Mutex::new(inherited),
                redactor: redactor.clone(),
            })),
            None => Err(
                "this server has no job executor (start `mizzen server` where a container engine answers)".into(),
            ),
        };
        // A project with a repository reads its script from a checkout, as
        // Brigade's worker did; the others carry it inline (no files). A
        // tenant's fetch: its address is checked (projects stored before the
        // rule and every event's override included) and resolved as it runs.
        let files = match worker_event.worker.git.clone() {
            Some(git) if !git.clone_url.is_empty() => ProjectFiles::TenantGit(git),
            _ => ProjectFiles::Inline,
        };
        let prepared = WorkerPlan {
            project,
            event: worker_event,
            files,
            limits,
            executor,
            log: log.clone(),
        }
        .prepare()
        .await
        .map_err(|e| e.to_string())?;
        let context = prepared.context.clone();
        let outcome = tokio::select! {
            outcome = self.sandbox.run(&prepared.script, prepared.request) => outcome,
            _ = cancel.notified() => {
                if let Some(executor) = &self.executor {
                    executor.finish_event(&context).await;
                }
                self.note(&event.id, LogLevel::Warn, "the event was cancelled; its worker and jobs were stopped");
                return Ok(WorkerEnd { phase: Phase::Aborted, summary: None });
            }
        };
        if let Some(failure) = &outcome.failure {
            log.record(LogRecord::logger(
                LogLevel::Error,
                &format!("worker {}: {failure}", outcome.phase),
                None,
            ));
        }
        Ok(WorkerEnd {
            phase: outcome.phase,
            summary: outcome.summary.map(|s| redactor.redact(&s).into_owned()),
        })
    }
}

struct WorkerEnd {
    phase: Phase,
    summary: Option<String>,
}

/// The label Brigade puts on a retry, naming the event it retries.
pub const RETRY_LABEL: &str = "brigade.sh/retryOf";

/// The container name of the worker's own log.
pub const WORKER_CONTAINER: &str = mizzen_runtime::redact::WORKER_STREAM;

/// An event's `git` (from the event creator) overrides the project's
/// `cloneURL`, `commit` and `ref` where non-empty, as in Brigade.
fn apply_git_overrides(
    git: &mut Option<mizzen_host_api::types::GitConfig>,
    overrides: Option<&Value>,
) {
    let Some(overrides) = overrides else { return };
    let field = |name: &str| {
        overrides
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let (url, commit, git_ref) = (field("cloneURL"), field("commit"), field("ref"));
    if url.is_none() && commit.is_none() && git_ref.is_none() {
        return;
    }
    let git = git.get_or_insert_with(Default::default);
    if let Some(url) = url {
        git.clone_url = url;
    }
    if let Some(commit) = commit {
        git.commit = commit;
    }
    if let Some(git_ref) = git_ref {
        git.git_ref = git_ref;
    }
}

fn micros_since(then: i64) -> f64 {
    (now_micros() - then).max(0) as f64 / 1e6
}

/// An event's log: every record of its worker and jobs goes to the store,
/// with the project's secret values replaced by `***`.
struct EventLog {
    store: Store,
    event_id: String,
    /// Each stream (job and container) read as one text, so that a value
    /// split across a stream's lines is masked.
    streams: Mutex<StreamRedactor<i64>>,
}

impl EventLog {
    fn new(store: Store, event_id: String, redactor: Arc<Redactor>) -> Self {
        Self {
            store,
            event_id,
            streams: Mutex::new(StreamRedactor::new(redactor)),
        }
    }

    fn append(&self, (job, container): &StreamId, time: i64, message: String) {
        self.store.append_log(LogLine {
            seq: 0,
            event_id: self.event_id.clone(),
            job: job.clone(),
            container: container.clone(),
            time,
            message,
        });
    }
}

/// The last holder of the log is gone, so is every writer of its streams:
/// the lines they still hold back are stored, masked as the stream ended.
impl Drop for EventLog {
    fn drop(&mut self) {
        let held = self
            .streams
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .finish();
        for (stream, message, time) in held {
            self.append(&stream, time, message);
        }
    }
}

impl LogSink for EventLog {
    fn record(&self, record: LogRecord) {
        let (stream, text) = stream_of(&record);
        let released = self.streams.lock().unwrap_or_else(|e| e.into_inner()).push(
            &stream,
            text,
            micros_at(record.time),
        );
        for (message, time) in released {
            self.append(&stream, time, message);
        }
    }
}

/// Job capacity of this process: a global semaphore and one per project, so
/// that one project's jobs cannot take every slot.
struct JobSlots {
    global: Arc<Semaphore>,
    per_project: usize,
    projects: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl JobSlots {
    fn new(global: usize, per_project: usize) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global.max(1))),
            per_project: per_project.max(1),
            projects: Mutex::default(),
        }
    }

    /// Waits for a slot of the project and a global one (in that order, so
    /// that a project at its limit does not hold global slots).
    async fn acquire(&self, project: &str) -> (OwnedSemaphorePermit, OwnedSemaphorePermit) {
        let semaphore = self
            .projects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(project.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_project)))
            .clone();
        // The semaphores are never closed, so acquiring cannot fail.
        let project = semaphore
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("job semaphores are never closed"));
        let global = self
            .global
            .clone()
            .acquire_owned()
            .await
            .unwrap_or_else(|_| unreachable!("job semaphores are never closed"));
        (project, global)
    }
}

/// Wraps the process's executor for one event: records each job's phases in
/// the store, waits for job capacity, and answers a job inherited from an
/// earlier run (same name, same spec) without running it again.
struct RecordedExecutor {
    inner: Arc<dyn JobExecutor>,
    store: Store,
    slots: Arc<JobSlots>,
    metrics: Arc<Metrics>,
    inherited: Mutex<BTreeMap<String, Value>>,
    /// The project's secret values, masked in the spec that is stored (and
    /// shown by the API): a script may put them in a command or an image as
    /// well as in the environment.
    redactor: Arc<Redactor>,
}

#[async_trait]
impl JobExecutor for RecordedExecutor {
    async fn start(&self, job: JobRequest) -> Result<Arc<dyn RunningJob>, ExecutorError> {
        // A job's name is its key in the store and the API, where it cannot
        // be masked and still tell jobs apart: a name holding a secret's
        // value is refused.
        let masked_name = self.redactor.redact(&job.name);
        if masked_name != job.name {
            return Err(ExecutorError::Unsupported(format!(
                "job \"{masked_name}\" was not started: its name holds the value of one of the project's secrets, and job names are shown unmasked in the API"
            )));
        }
        // Stored masked, and compared masked with an earlier run's.
        let spec = self
            .redactor
            .redact_json(&serde_json::to_value(&job.spec).unwrap_or_default());
        let inherited = self
            .inherited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&job.name);
        if inherited.as_ref() == Some(&spec) {
            return Ok(Arc::new(InheritedJob));
        }
        let event_id = job.event.event_id.clone();
        let name = job.name.clone();
        let uses_workspace = !job.spec.primary_container.workspace_mount_path.is_empty()
            || job
                .spec
                .sidecar_containers
                .values()
                .any(|c| !c.workspace_mount_path.is_empty());
        let record = JobRecord {
            event_id: event_id.clone(),
            name: name.clone(),
            created: now_micros(),
            spec,
            phase: Phase::Pending,
            started: None,
            ended: None,
            logs_event_id: event_id.clone(),
            uses_workspace,
        };
        let unavailable = |e: store::StoreError| {
            ExecutorError::Unavailable(format!("cannot record job \"{name}\": {e}"))
        };
        self.store.create_job(&record).await.map_err(unavailable)?;
        let permits = self.slots.acquire(&job.event.project_id).await;
        self.store
            .job_phase(&event_id, &name, Phase::Starting)
            .await
            .map_err(unavailable)?;
        let running = match self.inner.start(job).await {
            Ok(running) => running,
            Err(e) => {
                let _ = self.store.job_phase(&event_id, &name, Phase::Failed).await;
                return Err(e);
            }
        };
        self.store
            .job_phase(&event_id, &name, Phase::Running)
            .await
            .map_err(unavailable)?;
        self.metrics.job_started();
        let recorded = Arc::new(RecordedJob {
            inner: running,
            store: self.store.clone(),
            event_id,
            name,
        });
        // Record the end even of a job nobody waits for.
        let (watched, metrics) = (recorded.clone(), self.metrics.clone());
        tokio::spawn(async move {
            let result = watched.wait().await;
            drop(permits);
            metrics.job_ended(result.phase);
        });
        Ok(recorded)
    }

    async fn finish_event(&self, event: &EventContext) {
        self.inner.finish_event(event).await;
    }

    async fn workspace_dir(
        &self,
        event: &EventContext,
    ) -> Result<std::path::PathBuf, WorkspaceError> {
        self.inner.workspace_dir(event).await
    }
}

/// A running job whose end is in the store before the script hears of it,
/// so that the worker cannot end (and sweep its unfinished jobs) between
/// the two.
struct RecordedJob {
    inner: Arc<dyn RunningJob>,
    store: Store,
    event_id: String,
    name: String,
}

#[async_trait]
impl RunningJob for RecordedJob {
    async fn wait(&self) -> JobResult {
        let result = self.inner.wait().await;
        // Whoever follows the job's log reads every line it printed before
        // it sees the job ended: the executor passed them on before it
        // reported the end, and they are stored first.
        self.store.flush_logs().await;
        // The first terminal phase wins, so recording twice is harmless.
        if let Err(e) = self
            .store
            .job_phase(&self.event_id, &self.name, result.phase)
            .await
        {
            tracing::error!(event = %self.event_id, job = %self.name, error = %e, "recording the job's end failed");
        }
        result
    }

    async fn cancel(&self) {
        self.inner.cancel().await;
    }
}

/// A job that SUCCEEDED in an earlier run of the event, with the same spec.
struct InheritedJob;

#[async_trait]
impl RunningJob for InheritedJob {
    async fn wait(&self) -> JobResult {
        JobResult {
            phase: Phase::Succeeded,
            exit_code: Some(0),
            reason: Some("inherited from an earlier run of this event".into()),
        }
    }

    async fn cancel(&self) {}
}
