//! Jobs and services: `job.start`, `service.start`, `job.wait`, `job.cancel`
//! and `job.logs`. Held by the worker's host: the table of the worker's jobs
//! and services (one namespace: a service is a container the event's jobs
//! reach by its name, so no job may take it), their rules ([`rules`]), their
//! output ([`output`]), the start order of services (`after`) and their end.
//! A job or service is refused with an error the script can catch, naming
//! it, the container and the rule.

mod output;
pub mod rules;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::collections::BTreeMap;

use mizzen_host_api::types::{
    ArtifactFileRequest, ArtifactList, EventProject, JobHost, JobLogs, JobLogsRequest, JobRef,
    JobResult, JobSpec, LogLevel, Phase, ServiceReady, WorkspaceFile,
};
use mizzen_host_api::{ErrorCode, HostError, Op};
use tokio::sync::watch;

use crate::capability::Answer;
use crate::executor::{
    EventContext, ExecutorError, JobExecutor, JobRequest, RunningJob, SpawnedJob,
    service_port_variable,
};
use crate::host::parse;
use crate::limits::{Limit, WorkerLimits};
use crate::log::{LogRecord, LogSink};
use crate::redact::Redactor;
pub(crate) use output::CappedOutput;
use output::JobRecorder;
pub use rules::{
    MAX_JOB_TIMEOUT_SECONDS, MAX_PORTS, MAX_SIDECARS, decode_service_start, decode_start,
    validate_image,
};
use rules::{resolve_container_secrets, resolve_secret_references};

/// The operations this capability answers.
pub const OPS: &[Op] = &[
    Op::JobStart,
    Op::ServiceStart,
    Op::JobWait,
    Op::JobCancel,
    Op::JobLogs,
    Op::ArtifactList,
    Op::ArtifactRead,
];

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
        Op::ServiceStart => {
            let mut ready = jobs.lock().await.start_service(request)?;
            Ok(Answer::Later(Box::pin(async move {
                match ready.wait_for(Option::is_some).await {
                    Ok(ready) => match ready.clone() {
                        Some(Ok(ready)) => {
                            Ok(serde_json::to_value(ready).expect("ports serialise"))
                        }
                        Some(Err(why)) => Err(HostError::new(ErrorCode::NotReady, why)),
                        None => unreachable!("waited for a value"),
                    },
                    Err(_) => Err(HostError::new(
                        ErrorCode::NotReady,
                        "the service's task ended without a word",
                    )),
                }
            })))
        }
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
        Op::ArtifactList => {
            let (executor, event) = jobs.lock().await.executor("artifacts")?;
            Ok(Answer::Later(Box::pin(async move {
                let artifacts = executor.artifacts(&event).await.map_err(executor_error)?;
                Ok(serde_json::to_value(ArtifactList { artifacts }).expect("artifacts serialise"))
            })))
        }
        Op::ArtifactRead => {
            let file = parse::<ArtifactFileRequest>(op, request)?;
            let (executor, event, hidden) = {
                let jobs = jobs.lock().await;
                let (executor, event) = jobs.executor("artifacts")?;
                (executor, event, jobs.hidden())
            };
            Ok(Answer::Later(Box::pin(async move {
                let contents = executor
                    .read_artifact(
                        &event,
                        &file.name,
                        &file.path,
                        crate::capability::workspace::MAX_READ_BYTES,
                    )
                    .await
                    .map_err(executor_error)?;
                let contents = hidden.redact_bytes(&contents).into_owned();
                let what = format!("file {:?} of artifact \"{}\"", file.path, file.name);
                let (contents, encoding) =
                    crate::capability::workspace::encode(contents, file.encoding, &what)?;
                Ok(serde_json::to_value(WorkspaceFile {
                    path: file.path,
                    contents,
                    encoding,
                })
                .expect("a file serialises"))
            })))
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
    project: Arc<EventProject>,
    /// The host ports of ready services, by service: the jobs started after
    /// get them as `MIZZEN_SERVICE_<NAME>_PORT_<PORT>`.
    service_ports: Arc<Mutex<BTreeMap<String, BTreeMap<String, u16>>>>,
    /// The secrets the script may not read, masked in the job output it
    /// reads back.
    hidden: Arc<HiddenSecrets>,
    /// The artifacts the event's jobs save, by name: the job that saves each.
    artifacts: HashMap<String, String>,
}

struct StartedJob {
    running: Arc<dyn RunningJob>,
    output: Arc<JobRecorder>,
    /// The task that logs how the job ended.
    ended: tokio::task::JoinHandle<()>,
    /// For a service: whether it is ready (or why it never will be).
    ready: Option<ServiceReadiness>,
}

/// Whether a service is ready: `None` until it is, or until it cannot be.
type ServiceReadiness = watch::Receiver<Option<Result<ServiceReady, String>>>;

/// The secrets of a project that its script may not read, masked in all
/// that the script reads back of what its jobs made (their logs, artifacts,
/// the workspace). Built at the first read, so that a worker that reads
/// nothing back does not spend time linear in its project's secrets.
pub(crate) struct HiddenSecrets {
    project: Arc<EventProject>,
    redactor: std::sync::OnceLock<Arc<Redactor>>,
}

impl HiddenSecrets {
    pub fn new(project: Arc<EventProject>) -> Self {
        Self {
            project,
            redactor: std::sync::OnceLock::new(),
        }
    }

    /// The redactor of the hidden secrets' values.
    pub fn redactor(&self) -> Arc<Redactor> {
        self.redactor
            .get_or_init(|| {
                Arc::new(Redactor::new(
                    self.project
                        .secrets
                        .iter()
                        .filter(|(key, _)| !self.project.script_may_read(key))
                        .map(|(_, value)| value),
                ))
            })
            .clone()
    }
}

impl WorkerJobs {
    pub fn new(
        capability: JobCapability,
        log: Arc<dyn LogSink>,
        level: LogLevel,
        limits: WorkerLimits,
        project: Arc<EventProject>,
        hidden: Arc<HiddenSecrets>,
    ) -> Self {
        Self {
            capability,
            log,
            level,
            limits,
            running: Arc::new(AtomicU64::new(0)),
            jobs: HashMap::new(),
            hidden,
            artifacts: HashMap::new(),
            project,
            service_ports: Arc::default(),
        }
    }

    /// The executor and the event, or why jobs and services cannot run.
    fn executor(&self, what: &str) -> Result<(Arc<dyn JobExecutor>, Arc<EventContext>), HostError> {
        match &self.capability {
            JobCapability::Executor { executor, event } => Ok((executor.clone(), event.clone())),
            JobCapability::Unavailable(why) => Err(HostError::not_configured(format!(
                "{why}, so {what} cannot run"
            ))),
        }
    }

    /// Refuses a name the event's jobs or services already have, and a
    /// start past the concurrent-jobs limit.
    fn check_room(&self, what: &str, name: &str) -> Result<(), HostError> {
        if self.jobs.contains_key(name) {
            return Err(HostError::new(
                ErrorCode::Conflict,
                format!(
                    "a job or service named \"{name}\" already exists in this event (names are unique within an event, and each runs once)"
                ),
            ));
        }
        let concurrent = self.limits.concurrent_jobs;
        if self.running.load(Ordering::SeqCst) >= concurrent {
            return Err(HostError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "{what} \"{name}\" was not started: {concurrent} jobs and services of this worker are already running, its limit ({})",
                    Limit::ConcurrentJobs.project_field()
                ),
            ));
        }
        Ok(())
    }

    /// The output of a job or service: kept for `job.logs`, capped, and in
    /// the worker's log.
    fn output_for(&self, name: &str) -> (Arc<JobRecorder>, Arc<CappedOutput>) {
        let recorder = Arc::new(JobRecorder {
            job: name.to_string(),
            log: self.log.clone(),
            lines: Mutex::default(),
        });
        let output = Arc::new(CappedOutput::new(
            name,
            self.limits.job_log_bytes,
            recorder.clone(),
            self.log.clone(),
        ));
        (recorder, output)
    }

    /// Puts a started job or service in the table, with the task that says
    /// how it ended.
    fn track(
        &mut self,
        name: String,
        kind: Kind,
        running: Arc<dyn RunningJob>,
        recorder: Arc<JobRecorder>,
        output: Arc<CappedOutput>,
        ready: Option<ServiceReadiness>,
    ) {
        // Say how it ended, with its reason: the script only learns the
        // phase.
        let (watched, log, level, counter) = (
            running.clone(),
            self.log.clone(),
            self.level,
            self.running.clone(),
        );
        counter.fetch_add(1, Ordering::SeqCst);
        let label = name.clone();
        let ended = tokio::spawn(async move {
            let result = watched.wait().await;
            counter.fetch_sub(1, Ordering::SeqCst);
            // The executor has passed on every line by now.
            output.finish();
            let record = end_record(kind, &label, &result);
            if record.level.passes(level) {
                log.record(record);
            }
        });
        self.jobs.insert(
            name,
            StartedJob {
                running,
                output: recorder,
                ended,
                ready,
            },
        );
    }

    /// Validates a service and starts it on its own task once the services
    /// it comes after are ready (`Op::ServiceStart`); the receiver says when
    /// it is ready, or why it never will be.
    fn start_service(&mut self, request: &[u8]) -> Result<ServiceReadiness, HostError> {
        let (executor, event) = self.executor("services")?;
        let mut service = decode_service_start(request, &event)?;
        let name = service.name.clone();
        resolve_container_secrets(
            &format!("service \"{name}\""),
            &mut service.container,
            &self.project,
        )?;
        self.check_room("service", &name)?;
        // Those it comes after must have been started before it, so no
        // services can wait for each other in a cycle.
        let mut before = Vec::new();
        for after in &service.container.after {
            match self.jobs.get(after) {
                Some(StartedJob {
                    ready: Some(ready), ..
                }) => before.push((after.clone(), ready.clone())),
                Some(_) => {
                    return Err(HostError::invalid(format!(
                        "service \"{name}\" comes after \"{after}\", which is a job; a service comes after services"
                    )));
                }
                None => {
                    return Err(HostError::new(
                        ErrorCode::NotFound,
                        format!(
                            "service \"{name}\" comes after \"{after}\", which is not a service of this event (start the services it comes after first)"
                        ),
                    ));
                }
            }
        }
        self.add_service_ports(&mut service.container.environment);
        let (recorder, output) = self.output_for(&name);
        let request = JobRequest {
            event,
            name: name.clone(),
            spec: JobSpec {
                primary_container: service.container,
                sidecar_containers: BTreeMap::new(),
                // A service lives as long as its event: the worker's
                // lifetime bounds it.
                timeout_seconds: MAX_JOB_TIMEOUT_SECONDS,
                host: JobHost::default(),
                fallible: false,
                artifacts: Default::default(),
                caches: Vec::new(),
            },
            output: output.clone(),
        };
        let (ready_sender, ready) = watch::channel(None);
        let ports = self.service_ports.clone();
        let running = SpawnedJob::spawn(move |cancelled| {
            run_service(executor, request, before, ready_sender, ports, cancelled)
        });
        self.track(
            name,
            Kind::Service,
            running,
            recorder,
            output,
            Some(ready.clone()),
        );
        Ok(ready)
    }

    /// Tells a container the host ports of the services ready so far,
    /// unless it sets the variable itself.
    fn add_service_ports(&self, environment: &mut BTreeMap<String, String>) {
        let ports = self.service_ports.lock().unwrap_or_else(|e| e.into_inner());
        for (service, ports) in ports.iter() {
            for (container_port, host_port) in ports {
                environment
                    .entry(service_port_variable(service, container_port))
                    .or_insert_with(|| host_port.to_string());
            }
        }
    }

    /// Validates and starts a job (`Op::JobStart`).
    async fn start(&mut self, request: &[u8]) -> Result<(), HostError> {
        let (executor, event) = self.executor("jobs")?;
        let mut job = decode_start(request, &event)?;
        resolve_secret_references(&mut job, &self.project)?;
        self.check_room("job", &job.name)?;
        self.check_artifacts(&job.name, &job.spec)?;
        for container in std::iter::once(&mut job.spec.primary_container)
            .chain(job.spec.sidecar_containers.values_mut())
        {
            self.add_service_ports(&mut container.environment);
        }
        let (recorder, output) = self.output_for(&job.name);
        let saved: Vec<String> = job
            .spec
            .artifacts
            .save
            .iter()
            .map(|a| a.name.clone())
            .collect();
        let running = executor
            .start(JobRequest {
                event,
                name: job.name.clone(),
                spec: job.spec,
                output: output.clone(),
            })
            .await
            .map_err(executor_error)?;
        for artifact in &saved {
            self.artifacts.insert(artifact.clone(), job.name.clone());
        }
        self.track(job.name, Kind::Job, running, recorder, output, None);
        Ok(())
    }

    /// Refuses an artifact name another job of the event saves, and one to
    /// restore that no job started before saves: a job restores what an
    /// earlier one produced (the script runs the producer first).
    fn check_artifacts(&self, job: &str, spec: &JobSpec) -> Result<(), HostError> {
        for artifact in &spec.artifacts.save {
            if let Some(other) = self.artifacts.get(&artifact.name) {
                return Err(HostError::new(
                    ErrorCode::Conflict,
                    format!(
                        "job \"{job}\": artifact \"{}\" is saved by job \"{other}\" already; artifact names are unique within an event",
                        artifact.name
                    ),
                ));
            }
        }
        for artifact in &spec.artifacts.restore {
            if !self.artifacts.contains_key(&artifact.name) {
                let mut known: Vec<&str> = self.artifacts.keys().map(String::as_str).collect();
                known.sort_unstable();
                return Err(HostError::new(
                    ErrorCode::NotFound,
                    format!(
                        "job \"{job}\": artifact \"{}\" is not saved by any job started before it in this event (saved: {})",
                        artifact.name,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The job named `name`, for `Op::JobWait` and `Op::JobCancel`.
    fn running(&self, name: &str) -> Result<Arc<dyn RunningJob>, HostError> {
        self.jobs
            .get(name)
            .map(|job| job.running.clone())
            .ok_or_else(|| not_found(name))
    }

    /// What masks the secrets the script may not read: a job can print such
    /// a secret, or write it into an artifact, and what the script reads
    /// back from its jobs must not carry it.
    fn hidden(&self) -> Arc<Redactor> {
        self.hidden.redactor()
    }

    /// A container's output so far (`Op::JobLogs`); the primary's by default.
    fn logs(&self, name: &str, container: Option<&str>) -> Result<JobLogs, HostError> {
        let job = self.jobs.get(name).ok_or_else(|| not_found(name))?;
        let container = container.unwrap_or(name);
        let hidden = self.hidden();
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
        format!("this event has no job or service named \"{name}\""),
    )
}

fn executor_error(error: ExecutorError) -> HostError {
    match error {
        ExecutorError::Unsupported(m) => HostError::invalid(m),
        ExecutorError::Unavailable(m) => HostError::new(ErrorCode::Unavailable, m),
        ExecutorError::NotFound(m) => HostError::new(ErrorCode::NotFound, m),
        ExecutorError::InUse(m) => HostError::new(ErrorCode::Conflict, m),
    }
}

/// What is in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Job,
    Service,
}

/// A service's life on its task: waits for the services it comes after,
/// has the executor start it, says when it is ready, and ends when it
/// ends, or when it is stopped (the script's `job.cancel`, the event's end).
async fn run_service(
    executor: Arc<dyn JobExecutor>,
    request: JobRequest,
    before: Vec<(String, ServiceReadiness)>,
    ready: watch::Sender<Option<Result<ServiceReady, String>>>,
    ports: Arc<Mutex<BTreeMap<String, BTreeMap<String, u16>>>>,
    mut cancelled: watch::Receiver<bool>,
) -> JobResult {
    let name = request.name.clone();
    let not_ready = |why: String| {
        let _ = ready.send(Some(Err(format!("service \"{name}\" {why}"))));
    };
    for (after, mut before) in before {
        tokio::select! {
            outcome = before.wait_for(Option::is_some) => {
                if let Ok(outcome) = outcome
                    && let Some(Err(why)) = outcome.clone()
                {
                    let why = format!("was not started: \"{after}\", which it comes after, was not ready ({why})");
                    not_ready(why.clone());
                    return JobResult::ended(Phase::Failed, None, format!("it {why}"));
                }
            }
            () = stopped(&mut cancelled) => {
                not_ready("was stopped before it started".into());
                return JobResult::ended(Phase::Canceled, None, "the service was stopped before it started");
            }
        }
    }
    let service = tokio::select! {
        started = executor.start_service(request) => match started {
            Ok(service) => service,
            Err(e) => {
                let why = executor_error(e).message;
                not_ready(format!("was not started: {why}"));
                return JobResult::ended(Phase::Failed, None, why);
            }
        },
        () = stopped(&mut cancelled) => {
            not_ready("was stopped before it started".into());
            return JobResult::ended(Phase::Canceled, None, "the service was stopped before it started");
        }
    };
    tokio::select! {
        outcome = service.ready() => {
            match &outcome {
                Ok(ServiceReady { ports: published }) if !published.is_empty() => {
                    ports
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name.clone(), published.clone());
                }
                _ => {}
            }
            let _ = ready.send(Some(outcome.map_err(|why| format!("service \"{name}\" was not ready: {why}"))));
        }
        () = stopped(&mut cancelled) => {
            not_ready("was stopped before it was ready".into());
            service.cancel().await;
            return service.wait().await;
        }
    }
    tokio::select! {
        result = service.wait() => result,
        () = stopped(&mut cancelled) => {
            service.cancel().await;
            service.wait().await
        }
    }
}

/// Resolves once `cancelled` turns true (or its sender is gone).
async fn stopped(cancelled: &mut watch::Receiver<bool>) {
    let _ = cancelled.wait_for(|stop| *stop).await;
}

fn end_record(kind: Kind, name: &str, result: &JobResult) -> LogRecord {
    if kind == Kind::Service && result.phase == Phase::Aborted {
        // Stopped by the script or at the event's end: how a service ends.
        return LogRecord::logger(
            LogLevel::Debug,
            &format!("service {name} stopped"),
            Some(name.to_string()),
        );
    }
    let what = match kind {
        Kind::Job => "job",
        Kind::Service => "service",
    };
    let mut message = format!("{what} {name} ended {}", result.phase);
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
