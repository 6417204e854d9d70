//! Jobs: `job.start`, `job.wait`, `job.cancel` and `job.logs`. Held by the
//! worker's host: the table of the worker's jobs, their rules ([`rules`]),
//! their output ([`output`]) and their end. A job is refused with an error
//! the script can catch, naming the job, the container and the rule.

mod output;
pub mod rules;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mizzen_host_api::types::{
    EventProject, JobLogs, JobLogsRequest, JobRef, JobResult, LogLevel, Phase,
};
use mizzen_host_api::{ErrorCode, HostError, Op};

use crate::capability::Answer;
use crate::executor::{EventContext, ExecutorError, JobExecutor, JobRequest, RunningJob};
use crate::host::parse;
use crate::limits::{Limit, WorkerLimits};
use crate::log::{LogRecord, LogSink};
use crate::redact::Redactor;
pub(crate) use output::CappedOutput;
use output::JobRecorder;
use rules::resolve_secret_references;
pub use rules::{MAX_JOB_TIMEOUT_SECONDS, MAX_SIDECARS, decode_start, validate_image};

/// The operations this capability answers.
pub const OPS: &[Op] = &[Op::JobStart, Op::JobWait, Op::JobCancel, Op::JobLogs];

/// Answers one of [`OPS`].
pub(crate) async fn call(
    jobs: &tokio::sync::Mutex<WorkerJobs>,
    op: Op,
    request: &[u8],
) -> Result<Answer, HostError> {
    match op {
        Op::JobStart => jobs
            .lock()
            .await
            .start(request)
            .await
            .map(|()| Answer::Now(None)),
        Op::JobWait => {
            let job = parse::<JobRef>(op, request)?;
            let running = jobs.lock().await.running(&job.name)?;
            Ok(Answer::Later(Box::pin(async move {
                serde_json::to_value(running.wait().await).map_err(|e| {
                    HostError::new(
                        ErrorCode::Internal,
                        format!("a job result could not be encoded: {e}"),
                    )
                })
            })))
        }
        Op::JobCancel => {
            let job = parse::<JobRef>(op, request)?;
            // Not under the table's lock: a job stops in its own time.
            let running = jobs.lock().await.running(&job.name)?;
            running.cancel().await;
            Ok(Answer::Now(None))
        }
        _ => {
            let logs = parse::<JobLogsRequest>(op, request)?;
            let logs = jobs
                .lock()
                .await
                .logs(&logs.name, logs.container.as_deref())?;
            let logs = serde_json::to_value(logs).expect("logs serialise");
            Ok(Answer::Later(Box::pin(async move { Ok(logs) })))
        }
    }
}

/// Whether, and on what, a worker's jobs run.
#[derive(Clone)]
pub enum JobCapability {
    /// Jobs run on this executor, for this event.
    Executor {
        /// What runs the containers.
        executor: Arc<dyn JobExecutor>,
        /// The event, its project's policies and source.
        event: Arc<EventContext>,
    },
    /// Jobs cannot run; the text says why and what would configure them.
    Unavailable(String),
}

impl JobCapability {
    /// No executor, with the usual explanation.
    pub fn none() -> Self {
        JobCapability::Unavailable("no job executor is configured for this run".into())
    }
}

/// The jobs of one worker.
pub(crate) struct WorkerJobs {
    capability: JobCapability,
    log: Arc<dyn LogSink>,
    /// The worker's log level: the host's own lines about jobs obey it too.
    level: LogLevel,
    limits: WorkerLimits,
    /// Jobs started and not yet ended, against the concurrent-jobs limit.
    running: Arc<AtomicU64>,
    jobs: HashMap<String, StartedJob>,
    /// The project's id and secrets, for `"${{ secrets.name }}"` references.
    project: EventProject,
    /// The secrets the script may not read, masked in the job output it
    /// reads back; built at the first `job.logs()`, so that a worker that
    /// reads none does not spend time linear in its project's secrets.
    hidden: std::sync::OnceLock<Redactor>,
}

struct StartedJob {
    running: Arc<dyn RunningJob>,
    output: Arc<JobRecorder>,
    /// The task that logs how the job ended.
    ended: tokio::task::JoinHandle<()>,
}

impl WorkerJobs {
    pub fn new(
        capability: JobCapability,
        log: Arc<dyn LogSink>,
        level: LogLevel,
        limits: WorkerLimits,
        project: EventProject,
    ) -> Self {
        Self {
            capability,
            log,
            level,
            limits,
            running: Arc::new(AtomicU64::new(0)),
            jobs: HashMap::new(),
            hidden: std::sync::OnceLock::new(),
            project,
        }
    }

    /// Validates and starts a job (`Op::JobStart`).
    async fn start(&mut self, request: &[u8]) -> Result<(), HostError> {
        let (executor, event) = match &self.capability {
            JobCapability::Executor { executor, event } => (executor.clone(), event.clone()),
            JobCapability::Unavailable(why) => {
                return Err(HostError::not_configured(format!(
                    "{why}, so jobs cannot run"
                )));
            }
        };
        let mut job = decode_start(request, &event)?;
        resolve_secret_references(&mut job, &self.project)?;
        if self.jobs.contains_key(&job.name) {
            return Err(HostError::new(
                ErrorCode::Conflict,
                format!(
                    "a job named \"{}\" already exists in this event (job names are unique within an event, and a job runs once)",
                    job.name
                ),
            ));
        }
        let concurrent = self.limits.concurrent_jobs;
        if self.running.load(Ordering::SeqCst) >= concurrent {
            return Err(HostError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "job \"{}\" was not started: {concurrent} jobs of this worker are already running, its limit ({})",
                    job.name,
                    Limit::ConcurrentJobs.project_field()
                ),
            ));
        }
        let recorder = Arc::new(JobRecorder {
            job: job.name.clone(),
            log: self.log.clone(),
            lines: Mutex::default(),
        });
        let output = Arc::new(CappedOutput::new(
            &job.name,
            self.limits.job_log_bytes,
            recorder.clone(),
            self.log.clone(),
        ));
        let running = executor
            .start(JobRequest {
                event,
                name: job.name.clone(),
                spec: job.spec,
                output: output.clone(),
            })
            .await
            .map_err(|e| match e {
                ExecutorError::Unsupported(m) => HostError::invalid(m),
                ExecutorError::Unavailable(m) => HostError::new(ErrorCode::Unavailable, m),
            })?;
        // Say how the job ended, with its reason: the script only learns the
        // phase.
        let (watched, log, name, level, counter) = (
            running.clone(),
            self.log.clone(),
            job.name.clone(),
            self.level,
            self.running.clone(),
        );
        counter.fetch_add(1, Ordering::SeqCst);
        let ended = tokio::spawn(async move {
            let result = watched.wait().await;
            counter.fetch_sub(1, Ordering::SeqCst);
            // The executor has passed on every line by now.
            output.finish();
            let record = end_record(&name, &result);
            if record.level.passes(level) {
                log.record(record);
            }
        });
        self.jobs.insert(
            job.name,
            StartedJob {
                running,
                output: recorder,
                ended,
            },
        );
        Ok(())
    }

    /// The job named `name`, for `Op::JobWait` and `Op::JobCancel`.
    fn running(&self, name: &str) -> Result<Arc<dyn RunningJob>, HostError> {
        self.jobs
            .get(name)
            .map(|job| job.running.clone())
            .ok_or_else(|| not_found(name))
    }

    /// A container's output so far (`Op::JobLogs`); the primary's by default.
    fn logs(&self, name: &str, container: Option<&str>) -> Result<JobLogs, HostError> {
        let job = self.jobs.get(name).ok_or_else(|| not_found(name))?;
        let container = container.unwrap_or(name);
        // A secret the script may not read stays out of what it reads back
        // from its jobs, when a job prints it as it is.
        let hidden = self.hidden.get_or_init(|| {
            Redactor::new(
                self.project
                    .secrets
                    .iter()
                    .filter(|(key, _)| !self.project.script_may_read(key))
                    .map(|(_, value)| value),
            )
        });
        let kept = job.output.lines.lock().unwrap_or_else(|e| e.into_inner());
        let lines = kept
            .get(container)
            .map(|lines| {
                lines
                    .iter()
                    .map(|line| hidden.redact(line).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        Ok(JobLogs { lines })
    }

    /// Ends the worker's jobs: stops those still running (ABORTED) and has
    /// the executor remove everything it made for the event.
    pub async fn finish(&mut self) {
        let JobCapability::Executor { executor, event } = &self.capability else {
            return;
        };
        // All at once: stopping a job's containers takes a moment, and a
        // worker may end with dozens running.
        let mut cancels = tokio::task::JoinSet::new();
        for job in self.jobs.values() {
            let running = job.running.clone();
            cancels.spawn(async move { running.cancel().await });
        }
        while cancels.join_next().await.is_some() {}
        // Every job's end is in the log before the worker's is.
        for (_, job) in self.jobs.drain() {
            let _ = job.ended.await;
        }
        executor.finish_event(event).await;
    }
}

fn not_found(name: &str) -> HostError {
    HostError::new(
        ErrorCode::NotFound,
        format!("this event has no job named \"{name}\""),
    )
}

fn end_record(name: &str, result: &JobResult) -> LogRecord {
    let mut message = format!("job {name} ended {}", result.phase);
    if let Some(code) = result.exit_code {
        message.push_str(&format!(" (exit code {code})"));
    }
    if let Some(reason) = &result.reason {
        message.push_str(&format!(": {reason}"));
    }
    let level = if result.phase == Phase::Succeeded {
        LogLevel::Debug
    } else {
        LogLevel::Warn
    };
    LogRecord::logger(level, &message, Some(name.to_string()))
}
