//! One worker, from its claim to its end: the event and project put
//! together ([`mizzen_runtime::assembly`]), run in the sandbox stage, its
//! outcome recorded.

use std::sync::{Arc, Mutex};

use mizzen_host_api::types::{LogLevel, Phase};
use mizzen_runtime::WorkerLimits;
use mizzen_runtime::assembly::{PrepareError, ProjectFiles, WorkerPlan};
use mizzen_runtime::executor::JobExecutor;
use mizzen_runtime::log::{LogRecord, LogSink};
use mizzen_runtime::project::{EventDetails, ProjectError};
use serde_json::Value;
use tokio::sync::Notify;

use super::Scheduler;
use super::event_log::EventLog;
use super::recording::RecordedExecutor;
use crate::check_runs::TrackedEvent;
use crate::store::{EventRecord, StoreError, now_micros};
use crate::traces::{EventTrace, event_spans};

impl Scheduler {
    pub(super) async fn run_worker(&self, event: EventRecord, cancel: Arc<Notify>) {
        let id = event.id.clone();
        let started = std::time::Instant::now();
        tracing::info!(
            event = %id,
            project = %event.project_id,
            source = %event.source,
            r#type = %event.event_type,
            attempt = event.attempts,
            "worker started"
        );
        let check_runs = self.check_runs_of(&event);
        if let Some(tracked) = &check_runs {
            tracked.changed();
        }
        let ended = match self.work(&event, cancel, check_runs.clone()).await {
            Ok(ended) => ended,
            Err(error) => {
                self.note(&id, LogLevel::Error, &format!("worker FAILED: {error}"));
                WorkerEnd {
                    phase: Phase::Failed,
                    summary: None,
                }
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            event = %id,
            project = %event.project_id,
            phase = %ended.phase,
            seconds = format_args!("{seconds:.3}"),
            "worker ended"
        );
        self.metrics
            .worker_ended(&event.project_id, ended.phase, seconds);
        // Whoever sees the event ended reads its whole log: every line the
        // worker and its jobs printed is in the store first.
        self.store.flush_logs().await;
        if let Some(forwarder) = &self.forwarding.lines {
            forwarder.flush().await;
        }
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
            Ok(true) => {
                if let Some(tracked) = &check_runs {
                    tracked.changed();
                }
                if let Some(replies) = &self.forwarding.slack_replies {
                    replies.event_ended(&event, ended.phase, ended.summary.as_deref());
                }
                self.export_trace(&event, ended.phase).await
            }
            Ok(false) => {
                if let Some(tracked) = &check_runs {
                    tracked.forget();
                }
                tracing::warn!(event = %id, "the worker ended after its event was taken over")
            }
            Err(e) => tracing::error!(event = %id, error = %e, "recording the worker's end failed"),
        }
    }

    /// The check runs' reporter, when the event is reported to GitHub.
    fn check_runs_of(&self, event: &EventRecord) -> Option<TrackedEvent> {
        self.forwarding
            .check_runs
            .as_ref()
            .and_then(|reporter| reporter.track(event))
    }

    /// The event's spans, to the traces' export when there is one.
    async fn export_trace(&self, event: &EventRecord, phase: Phase) {
        let Some(traces) = &self.forwarding.traces else {
            return;
        };
        let jobs = match self.store.jobs(&event.id).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(event = %event.id, error = %e, "the event's jobs could not be read for its trace");
                Vec::new()
            }
        };
        // As recorded now: when the worker started and ended.
        let event = match self.store.event(&event.id).await {
            Ok(Some(stored)) => stored,
            _ => event.clone(),
        };
        // Events accepted before traces were kept have none: a trace of
        // their own.
        let trace = event
            .document
            .trace
            .clone()
            .unwrap_or_else(|| EventTrace::start(None));
        let ended = event.ended.unwrap_or_else(now_micros);
        for span in event_spans(&event, &trace, &jobs, phase, ended) {
            traces.offer(span);
        }
    }

    /// Runs one worker; its jobs' phases go to `check_runs` when the event
    /// is reported to GitHub.
    async fn work(
        &self,
        event: &EventRecord,
        cancel: Arc<Notify>,
        check_runs: Option<TrackedEvent>,
    ) -> Result<WorkerEnd, WorkError> {
        let snapshot = &event.document.project;
        let project = match self.projects.cached_snapshot(&event.project_id, snapshot) {
            Some(project) => project,
            None => {
                let module = match crate::project_cache::module_hash(snapshot) {
                    None => None,
                    Some(hash) => Some(self.store.script(hash).await?.ok_or_else(|| {
                        ProjectError::NoScript(format!(
                            "the compiled script {hash} this event's project names is not stored"
                        ))
                    })?),
                };
                self.projects
                    .parse_snapshot(&event.project_id, snapshot, module)?
            }
        };
        let secrets = self.store.secrets(&event.project_id).await?;
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

        let mut log = EventLog::new(self.store.clone(), event.id.clone(), redactor.clone());
        if let Some(forwarder) = &self.forwarding.lines
            && project.worker.log_forwarding.enabled
        {
            log = log.forwarding_to(
                forwarder.clone(),
                mizzen_forwarding::ForwardedLine {
                    time_nanos: 0,
                    project: event.project_id.clone(),
                    event: event.id.clone(),
                    source: event.source.clone(),
                    event_type: event.event_type.clone(),
                    job: String::new(),
                    container: String::new(),
                    message: String::new(),
                    labels: project.worker.log_forwarding.labels.clone(),
                },
            );
        }
        let log = Arc::new(log);
        let (limits, notes) =
            WorkerLimits::for_project(&project.worker.limits, &self.config.limit_ceilings);
        for note in notes {
            log.record(LogRecord::logger(LogLevel::Warn, &note, None));
        }
        // Only a retry, or a run after a crash, can have jobs to inherit.
        let may_inherit = event.attempts > 1 || event.document.labels.contains_key(RETRY_LABEL);
        let earlier_jobs = if may_inherit {
            self.store.jobs(&event.id).await?
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
                check_runs,
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
            dependencies: self.projects.dependencies().clone(),
            forbid_host_paths: self.config.forbid_host_paths,
        }
        .prepare()
        .await?;
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

/// Why a claimed event's worker could not run.
#[derive(Debug, thiserror::Error)]
enum WorkError {
    /// The project stored with the event no longer parses.
    #[error(transparent)]
    Project(#[from] ProjectError),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The worker could not be put together (its repository, its script).
    #[error(transparent)]
    Prepare(#[from] PrepareError),
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
