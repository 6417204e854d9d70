//! Jobs as the server runs them: in its job slots, recorded in the store,
//! and inherited from an earlier run of the same event.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mizzen_host_api::types::{JobResult, Phase, ServiceReady};
use mizzen_runtime::executor::{
    EventContext, ExecutorError, JobExecutor, JobRequest, RunningJob, RunningService,
    WorkspaceError,
};
use mizzen_runtime::redact::Redactor;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::check_runs::TrackedEvent;
use crate::metrics::Metrics;
use crate::store::{self, JobRecord, Store, now_micros};

/// Job capacity of this process: a global semaphore and one per project, so
/// that one project's jobs cannot take every slot.
pub(super) struct JobSlots {
    global: Arc<Semaphore>,
    per_project: usize,
    projects: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl JobSlots {
    pub fn new(global: usize, per_project: usize) -> Self {
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
pub(super) struct RecordedExecutor {
    pub inner: Arc<dyn JobExecutor>,
    pub store: Store,
    pub slots: Arc<JobSlots>,
    pub metrics: Arc<Metrics>,
    /// Jobs that SUCCEEDED in an earlier run of the event, by name: a job
    /// started again with the same spec is answered from here.
    pub inherited: Mutex<BTreeMap<String, Value>>,
    /// The project's secret values, masked in the spec that is stored (and
    /// shown by the API): a script may put them in a command or an image as
    /// well as in the environment.
    pub redactor: Arc<Redactor>,
    /// Told of each job's phases when the event is reported as check runs.
    pub check_runs: Option<TrackedEvent>,
}

impl RecordedExecutor {
    /// Records a job's phase, and tells the check runs' reporter.
    async fn phase(
        &self,
        event_id: &str,
        name: &str,
        phase: Phase,
    ) -> Result<(), store::StoreError> {
        let recorded = self.store.job_phase(event_id, name, phase).await;
        if let Some(tracked) = &self.check_runs {
            tracked.changed();
        }
        recorded
    }

    fn recorded_job(
        &self,
        inner: Arc<dyn RunningJob>,
        event_id: String,
        name: String,
    ) -> RecordedJob {
        RecordedJob {
            inner,
            store: self.store.clone(),
            event_id,
            name,
            check_runs: self.check_runs.clone(),
        }
    }
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
        if let Some(tracked) = &self.check_runs {
            tracked.changed();
        }
        let permits = self.slots.acquire(&job.event.project_id).await;
        self.store
            .job_phase(&event_id, &name, Phase::Starting)
            .await
            .map_err(unavailable)?;
        let running = match self.inner.start(job).await {
            Ok(running) => running,
            Err(e) => {
                let _ = self.phase(&event_id, &name, Phase::Failed).await;
                return Err(e);
            }
        };
        self.phase(&event_id, &name, Phase::Running)
            .await
            .map_err(unavailable)?;
        self.metrics.job_started();
        let recorded = Arc::new(self.recorded_job(running, event_id, name));
        // Record the end even of a job nobody waits for.
        let (watched, metrics) = (recorded.clone(), self.metrics.clone());
        let started = std::time::Instant::now();
        tokio::spawn(async move {
            let result = watched.wait().await;
            drop(permits);
            tracing::info!(
                event = %watched.event_id,
                job = %watched.name,
                phase = %result.phase,
                seconds = format_args!("{:.3}", started.elapsed().as_secs_f64()),
                "job ended"
            );
            metrics.job_ended(result.phase);
        });
        Ok(recorded)
    }

    /// A service is recorded as a job of the event (its phases, its logs),
    /// never inherited from an earlier run (it holds no result, and the
    /// jobs after it need it running), and takes no job slot: it lives as
    /// long as the event, and a project's services holding its slots would
    /// leave its jobs waiting for themselves. The worker's concurrent-jobs
    /// limit bounds them.
    async fn start_service(
        &self,
        service: JobRequest,
    ) -> Result<Arc<dyn RunningService>, ExecutorError> {
        let masked_name = self.redactor.redact(&service.name);
        if masked_name != service.name {
            return Err(ExecutorError::Unsupported(format!(
                "service \"{masked_name}\" was not started: its name holds the value of one of the project's secrets, and names are shown unmasked in the API"
            )));
        }
        self.inherited
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&service.name);
        let event_id = service.event.event_id.clone();
        let name = service.name.clone();
        let record = JobRecord {
            event_id: event_id.clone(),
            name: name.clone(),
            created: now_micros(),
            spec: self
                .redactor
                .redact_json(&serde_json::to_value(&service.spec).unwrap_or_default()),
            phase: Phase::Starting,
            started: None,
            ended: None,
            logs_event_id: event_id.clone(),
            uses_workspace: !service
                .spec
                .primary_container
                .workspace_mount_path
                .is_empty(),
        };
        let unavailable = |e: store::StoreError| {
            ExecutorError::Unavailable(format!("cannot record service \"{name}\": {e}"))
        };
        self.store.create_job(&record).await.map_err(unavailable)?;
        let running = match self.inner.start_service(service).await {
            Ok(running) => running,
            Err(e) => {
                let _ = self.phase(&event_id, &name, Phase::Failed).await;
                return Err(e);
            }
        };
        self.phase(&event_id, &name, Phase::Running)
            .await
            .map_err(unavailable)?;
        let recorded = Arc::new(RecordedService {
            job: self.recorded_job(running.clone(), event_id, name),
            service: running,
        });
        let watched = recorded.clone();
        tokio::spawn(async move {
            watched.wait().await;
        });
        Ok(recorded)
    }

    async fn finish_event(&self, event: &EventContext) {
        self.inner.finish_event(event).await;
    }

    async fn cleaned_up(&self) {
        self.inner.cleaned_up().await;
    }

    async fn workspace_dir(
        &self,
        event: &EventContext,
    ) -> Result<std::path::PathBuf, WorkspaceError> {
        self.inner.workspace_dir(event).await
    }
    async fn artifacts(
        &self,
        event: &EventContext,
    ) -> Result<Vec<mizzen_host_api::types::ArtifactInfo>, ExecutorError> {
        self.inner.artifacts(event).await
    }

    async fn read_artifact(
        &self,
        event: &EventContext,
        name: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, ExecutorError> {
        self.inner.read_artifact(event, name, path, max_bytes).await
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
    check_runs: Option<TrackedEvent>,
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
        if let Some(tracked) = &self.check_runs {
            tracked.changed();
        }
        result
    }

    async fn cancel(&self) {
        self.inner.cancel().await;
    }
}

/// A running service, recorded as [`RecordedJob`] records a job.
struct RecordedService {
    job: RecordedJob,
    service: Arc<dyn RunningService>,
}

#[async_trait]
impl RunningJob for RecordedService {
    async fn wait(&self) -> JobResult {
        self.job.wait().await
    }

    async fn cancel(&self) {
        self.job.cancel().await;
    }
}

#[async_trait]
impl RunningService for RecordedService {
    async fn ready(&self) -> Result<ServiceReady, String> {
        self.service.ready().await
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
