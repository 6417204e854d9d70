//! Mizzen's job executor for a local container engine: Docker Engine, or
//! Podman through its Docker-compatible API.
//!
//! Jobs keep Kubernetes pod semantics on one machine ([`job`]): sidecars share
//! the primary's network namespace and are reachable on `localhost` and by
//! name; the primary's exit code decides the job; the event's workspace and
//! each job's source checkout are host directories mounted where the job asks.
//! An event's services are pods of one container on the event's own network
//! ([`network`]), which every job of the event joins: its jobs reach them by
//! name, and no other event's containers reach them at all.
//!
//! Everything the executor creates carries labels (`sh.mizzen.*`) naming the
//! event, the job and the process that made it. When an event ends its
//! containers are removed and its scratch directory is deleted in the
//! background ([`JobExecutor::cleaned_up`] waits for that); when an executor
//! starts it removes what processes that died (a crash, a kill) left behind.
//!
//! # Layout
//! - [`engine`]: finding and connecting to the engine.
//! - `images`: pulling images, importing the pod helper's image.
//! - `credentials`: the registry credentials a pull sends: the project's
//!   pull secrets, then the host's Docker and Podman credentials.
//! - `job`: running one job or service as a pod, with the project's job
//!   limits, in the order of `after`.
//! - `network`: each event's network.
//! - `isolation`: Mizzen's own firewall rule per event bridge, where the
//!   engine's isolation does not hold.
//! - `scratch`: an event's directory on the host, private to this user and
//!   measured against the event's workspace size.
//! - `volume`: events' and projects' named volumes, and the host paths
//!   containers bind.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bollard::Docker;
use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use mizzen_runtime::executor::{
    EventContext, ExecutorError, JobExecutor, JobRequest, RunningJob, RunningService, StoredVolume,
    WorkspaceError,
};
use mizzen_runtime::limits::parse_quantity;
use tokio::sync::watch;

mod credentials;
pub mod engine;
mod images;
mod isolation;
mod job;
mod kept;
mod network;
mod scratch;
mod volume;

pub use engine::{Engine, EngineNotFound};
pub use scratch::DEFAULT_WORKSPACE_BYTES;

use scratch::{EventScratch, OWNER_FILE};

/// A scratch directory without an owner file younger than this is being
/// created by another process (the file is written just after), not left
/// behind; an older one was left by a process that died in between.
const OWNERLESS_GRACE: Duration = Duration::from_secs(60);

/// Label on everything this executor creates.
const LABEL_MANAGED: &str = "sh.mizzen.managed";
/// The process that created it (`host:pid:start-time`).
const LABEL_OWNER: &str = "sh.mizzen.owner";
const LABEL_EVENT: &str = "sh.mizzen.event";
const LABEL_PROJECT: &str = "sh.mizzen.project";
const LABEL_JOB: &str = "sh.mizzen.job";
const LABEL_CONTAINER: &str = "sh.mizzen.container";

/// How the executor is set up.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Where events' scratch directories (workspaces, checkouts) live, under
    /// `work/`. They are bind-mounted into containers, so the engine must
    /// share this machine's file system.
    pub data_dir: PathBuf,
    /// Where jobs' artifacts and caches are kept; without it, a job that
    /// declares any is refused, saying so.
    pub storage: Option<mizzen_objects::JobStorage>,
}

/// Runs jobs as containers on a local engine.
pub struct DockerExecutor {
    state: Arc<SharedState>,
}

/// What every job of the executor shares.
pub(crate) struct SharedState {
    pub engine: Engine,
    pub owner: String,
    pub work_root: PathBuf,
    /// The scratch directories of events with jobs running here.
    events: Mutex<HashMap<String, Arc<EventScratch>>>,
    /// Clean-ups under way (an ended event's files being deleted).
    cleanups: watch::Sender<usize>,
    /// Events' networks.
    networks: network::EventNetworks,
    /// Volumes being made ready or deleted (see `volume::VolumeLock`).
    volume_locks: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
    /// Where jobs' artifacts and caches are kept.
    pub storage: Option<mizzen_objects::JobStorage>,
}

impl DockerExecutor {
    /// Connects to the engine (see [`engine::connect`]) and removes what
    /// earlier, dead processes left behind.
    pub async fn connect(config: DockerConfig) -> Result<Self, EngineNotFound> {
        let engine = engine::connect().await?;
        Ok(Self::with_engine(engine, config).await)
    }

    /// An executor on an already connected engine.
    pub async fn with_engine(engine: Engine, config: DockerConfig) -> Self {
        let executor = Self {
            state: Arc::new(SharedState {
                engine,
                owner: owner_of_this_process(),
                work_root: config.data_dir.join("work"),
                events: Mutex::default(),
                cleanups: watch::channel(0).0,
                networks: network::EventNetworks::default(),
                volume_locks: Mutex::default(),
                storage: config.storage,
            }),
        };
        executor.sweep().await;
        executor
    }

    /// Where the engine answered.
    pub fn endpoint(&self) -> &str {
        &self.state.engine.endpoint
    }

    /// The engine.
    pub fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// The engine's client.
    pub fn docker(&self) -> &Docker {
        &self.state.engine.docker
    }

    /// The event's scratch directory, created (marked as this process's, so
    /// that a sweep after a crash finds its owner gone) and measured from
    /// its first use to the event's end.
    fn scratch(&self, event: &EventContext) -> Result<Arc<EventScratch>, WorkspaceError> {
        let mut events = self.state.events.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(scratch) = events.get(&event.event_id) {
            return Ok(scratch.clone());
        }
        let limit = event
            .workspace_size
            .as_deref()
            .and_then(parse_quantity)
            .unwrap_or(DEFAULT_WORKSPACE_BYTES);
        let scratch = EventScratch::create(
            &self.state.work_root,
            &event.event_id,
            &self.state.owner,
            limit,
        )
        .map_err(|source| WorkspaceError::Create {
            path: self.state.work_root.join(&event.event_id),
            source,
        })?;
        let scratch = Arc::new(scratch);
        events.insert(event.event_id.clone(), scratch.clone());
        Ok(scratch)
    }

    /// Deletes `dir` on a blocking thread, counted until it is gone.
    fn delete_in_background(&self, dir: PathBuf) {
        self.state.cleanups.send_modify(|n| *n += 1);
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove an event's scratch directory");
            }
            state.cleanups.send_modify(|n| *n -= 1);
        });
    }

    /// Removes containers and scratch directories whose owner process is no
    /// longer alive on this host.
    async fn sweep(&self) {
        let docker = &self.state.engine.docker;
        let filters = HashMap::from([("label".to_string(), vec![format!("{LABEL_MANAGED}=true")])]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let containers = match list_containers(docker, options).await {
            Ok(containers) => containers,
            Err(e) => {
                tracing::warn!(error = %e, "could not list containers to remove leftovers");
                return;
            }
        };
        let mut leftovers: Vec<(String, bool)> = containers
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                let owner = labels.get(LABEL_OWNER)?;
                let infra = labels.get(LABEL_CONTAINER).map(String::as_str) == Some("pod");
                (!owner_is_alive(owner)).then_some((c.id?, infra))
            })
            .collect();
        // Pods' infra containers last: the others are in their namespaces.
        leftovers.sort_by_key(|(_, infra)| *infra);
        let remove = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        for (id, _) in leftovers {
            tracing::info!(container = %id, "removing a container left behind by a process that ended");
            let _ = docker.remove_container(&id, Some(remove.clone())).await;
        }
        for (event_id, owner) in network::managed(&self.state).await {
            if !owner_is_alive(&owner) {
                tracing::info!(event = %event_id, "removing an event's network left behind by a process that ended");
                // As at an event's end: its isolation rule goes too.
                network::remove(&self.state, &event_id).await;
            }
        }
        volume::sweep(&self.state).await;
        if let Ok(dirs) = std::fs::read_dir(&self.state.work_root) {
            for dir in dirs.flatten() {
                let abandoned = match std::fs::read_to_string(dir.path().join(OWNER_FILE)) {
                    Ok(owner) => !owner_is_alive(owner.trim()),
                    Err(_) => dir
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|modified| SystemTime::now().duration_since(modified).ok())
                        .is_some_and(|age| age > OWNERLESS_GRACE),
                };
                if !abandoned {
                    continue;
                }
                let name = dir.file_name().to_string_lossy().into_owned();
                let trash = if scratch::is_trash(&name) {
                    Some(dir.path())
                } else {
                    scratch::retire(&dir.path()).ok().flatten()
                };
                if let Some(trash) = trash {
                    self.delete_in_background(trash);
                }
            }
        }
    }
}

#[async_trait]
impl JobExecutor for DockerExecutor {
    async fn start(&self, job: JobRequest) -> Result<Arc<dyn RunningJob>, ExecutorError> {
        if job.spec.host.os.as_deref() == Some("windows") {
            return Err(ExecutorError::Unsupported(format!(
                "job \"{}\" asks for a Windows host; this executor runs Linux containers on {}",
                job.name, self.state.engine.endpoint
            )));
        }
        let containers = std::iter::once(&job.spec.primary_container)
            .chain(job.spec.sidecar_containers.values());
        if containers.into_iter().any(|c| c.use_host_docker_socket)
            && self.state.engine.socket.is_none()
        {
            return Err(ExecutorError::Unsupported(format!(
                "job \"{}\" mounts the host's Docker socket, but the engine at {} is not a local socket",
                job.name, self.state.engine.endpoint
            )));
        }
        if self.state.storage.is_none()
            && (!job.spec.artifacts.is_empty() || !job.spec.caches.is_empty())
        {
            return Err(ExecutorError::Unsupported(format!(
                "job \"{}\" declares artifacts or caches, and this executor was given no storage for them",
                job.name
            )));
        }
        let scratch = self
            .scratch(&job.event)
            .map_err(|e| ExecutorError::Unavailable(e.to_string()))?;
        Ok(job::spawn(job::JobContext {
            request: job,
            state: self.state.clone(),
            scratch,
        }))
    }

    async fn start_service(
        &self,
        service: JobRequest,
    ) -> Result<Arc<dyn RunningService>, ExecutorError> {
        let scratch = self
            .scratch(&service.event)
            .map_err(|e| ExecutorError::Unavailable(e.to_string()))?;
        Ok(job::spawn_service(job::JobContext {
            request: service,
            state: self.state.clone(),
            scratch,
        }))
    }

    async fn workspace_dir(&self, event: &EventContext) -> Result<PathBuf, WorkspaceError> {
        let workspace = job::workspace_dir(self.scratch(event)?.dir());
        job::create_shared_dir(&workspace).map_err(|source| WorkspaceError::Create {
            path: workspace.clone(),
            source,
        })?;
        Ok(workspace)
    }

    async fn finish_event(&self, event: &EventContext) {
        let docker = &self.state.engine.docker;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("{LABEL_EVENT}={}", event.event_id)],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        if let Ok(containers) = list_containers(docker, options).await {
            let remove = RemoveContainerOptionsBuilder::default()
                .force(true)
                .v(true)
                .build();
            let mut ids: Vec<(String, bool)> = containers
                .into_iter()
                .filter_map(|c| {
                    let infra = c
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(LABEL_CONTAINER))
                        .map(String::as_str)
                        == Some("pod");
                    Some((c.id?, infra))
                })
                .collect();
            ids.sort_by_key(|(_, infra)| *infra);
            for (id, _) in ids {
                let _ = docker.remove_container(&id, Some(remove.clone())).await;
            }
        }
        network::remove(&self.state, &event.event_id).await;
        volume::remove_event_volumes(&self.state, &event.event_id).await;
        // The files go in the background: a big pipeline's checkouts take
        // seconds to delete, and the event's end must not wait for them.
        let scratch = self
            .state
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&event.event_id);
        let retired = match scratch {
            Some(scratch) => scratch.retire(),
            None => scratch::retire(&self.state.work_root.join(&event.event_id)),
        };
        match retired {
            Ok(Some(trash)) => self.delete_in_background(trash),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(event = %event.event_id, error = %e, "could not remove an event's scratch directory")
            }
        }
    }

    async fn cleaned_up(&self) {
        let mut cleanups = self.state.cleanups.subscribe();
        let _ = cleanups.wait_for(|n| *n == 0).await;
    }

    async fn artifacts(
        &self,
        event: &EventContext,
    ) -> Result<Vec<mizzen_host_api::types::ArtifactInfo>, ExecutorError> {
        kept::list(self.state.storage.as_ref(), event).await
    }

    async fn read_artifact(
        &self,
        event: &EventContext,
        name: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, ExecutorError> {
        kept::read(self.state.storage.as_ref(), event, name, path, max_bytes).await
    }

    async fn project_volumes(
        &self,
        project_id: &str,
        measure_up_to: u64,
    ) -> Result<Vec<StoredVolume>, ExecutorError> {
        volume::list_project(&self.state, project_id, measure_up_to).await
    }

    async fn delete_project_volume(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<(), ExecutorError> {
        volume::delete_project(&self.state, project_id, name).await
    }
}

/// How many times a listing of containers is asked for again when the
/// engine names a state the client does not know: Podman reports a
/// container between its stop and its exit as `stopped`, which Docker's API
/// (and so bollard) does not have, and a listing that meets one fails whole.
/// The state lasts milliseconds.
const LISTING_ATTEMPTS: u32 = 20;

/// Lists containers, asking again while one of them is in a state only
/// Podman has (see [`LISTING_ATTEMPTS`]); a clean-up that gave up on the
/// first such listing would leave the event's containers behind.
pub async fn list_containers(
    docker: &Docker,
    options: bollard::query_parameters::ListContainersOptions,
) -> Result<Vec<bollard::models::ContainerSummary>, bollard::errors::Error> {
    let mut attempt = 1;
    loop {
        match docker.list_containers(Some(options.clone())).await {
            Err(bollard::errors::Error::JsonDataError { .. }) if attempt < LISTING_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            listed => return listed,
        }
    }
}

/// The labels of a job's containers.
pub(crate) struct Labels {
    common: HashMap<String, String>,
}

impl Labels {
    pub fn new(state: &SharedState, event: &EventContext, job: &str) -> Self {
        let common = HashMap::from([
            (LABEL_MANAGED.to_string(), "true".to_string()),
            (LABEL_OWNER.to_string(), state.owner.clone()),
            (LABEL_EVENT.to_string(), event.event_id.clone()),
            (LABEL_PROJECT.to_string(), event.project_id.clone()),
            (LABEL_JOB.to_string(), job.to_string()),
        ]);
        Self { common }
    }

    pub fn for_container(&self, container: &str) -> HashMap<String, String> {
        let mut labels = self.common.clone();
        labels.insert(LABEL_CONTAINER.to_string(), container.to_string());
        labels
    }
}

/// `host:pid:start-time`: unique to this process even after its pid is reused.
fn owner_of_this_process() -> String {
    let pid = std::process::id();
    format!(
        "{}:{pid}:{}",
        host_name(),
        start_time(pid).unwrap_or_default()
    )
}

/// Whether the process an owner label names is still running. Owners on
/// other hosts are assumed alive: only their host can tell.
pub(crate) fn owner_is_alive(owner: &str) -> bool {
    let mut parts = owner.rsplitn(3, ':');
    let (Some(start), Some(pid), Some(host)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    if host != host_name() {
        return true;
    }
    let Ok(pid) = pid.parse::<u32>() else {
        return false;
    };
    start_time(pid).as_deref() == Some(start)
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// The process's start time in clock ticks since boot (field 22 of
/// /proc/PID/stat), which tells a live process from a later one that reused
/// its pid.
fn start_time(pid: u32) -> Option<String> {
    let stat =
        std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19).map(str::to_string)
}

/// A Docker executor that connects on the first job: a worker that starts
/// no job never touches the engine, and one that does learns why none
/// answered from the job's error.
pub struct LazyDockerExecutor {
    config: DockerConfig,
    executor: tokio::sync::OnceCell<Result<DockerExecutor, EngineNotFound>>,
}

impl LazyDockerExecutor {
    /// An executor that will connect with `config` when first needed.
    pub fn new(config: DockerConfig) -> Self {
        Self {
            config,
            executor: tokio::sync::OnceCell::new(),
        }
    }

    async fn connected(&self) -> &Result<DockerExecutor, EngineNotFound> {
        self.executor
            .get_or_init(|| DockerExecutor::connect(self.config.clone()))
            .await
    }
}

#[async_trait]
impl JobExecutor for LazyDockerExecutor {
    async fn start(&self, job: JobRequest) -> Result<Arc<dyn RunningJob>, ExecutorError> {
        match self.connected().await {
            Ok(executor) => executor.start(job).await,
            Err(e) => Err(ExecutorError::Unavailable(e.to_string())),
        }
    }

    async fn start_service(
        &self,
        service: JobRequest,
    ) -> Result<Arc<dyn RunningService>, ExecutorError> {
        match self.connected().await {
            Ok(executor) => executor.start_service(service).await,
            Err(e) => Err(ExecutorError::Unavailable(e.to_string())),
        }
    }

    async fn finish_event(&self, event: &EventContext) {
        if let Some(Ok(executor)) = self.executor.get() {
            executor.finish_event(event).await;
        }
    }

    async fn workspace_dir(&self, event: &EventContext) -> Result<PathBuf, WorkspaceError> {
        match self.connected().await {
            Ok(executor) => executor.workspace_dir(event).await,
            Err(e) => Err(WorkspaceError::Unavailable(Box::new(e.clone()))),
        }
    }

    async fn cleaned_up(&self) {
        if let Some(Ok(executor)) = self.executor.get() {
            executor.cleaned_up().await;
        }
    }

    async fn artifacts(
        &self,
        event: &EventContext,
    ) -> Result<Vec<mizzen_host_api::types::ArtifactInfo>, ExecutorError> {
        match self.connected().await {
            Ok(executor) => executor.artifacts(event).await,
            Err(e) => Err(ExecutorError::Unavailable(e.to_string())),
        }
    }

    async fn read_artifact(
        &self,
        event: &EventContext,
        name: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, ExecutorError> {
        match self.connected().await {
            Ok(executor) => executor.read_artifact(event, name, path, max_bytes).await,
            Err(e) => Err(ExecutorError::Unavailable(e.to_string())),
        }
    }

    async fn project_volumes(
        &self,
        project_id: &str,
        measure_up_to: u64,
    ) -> Result<Vec<StoredVolume>, ExecutorError> {
        match self.connected().await {
            Ok(executor) => executor.project_volumes(project_id, measure_up_to).await,
            Err(e) => Err(ExecutorError::Unavailable(e.to_string())),
        }
    }

    async fn delete_project_volume(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<(), ExecutorError> {
        match self.connected().await {
            Ok(executor) => executor.delete_project_volume(project_id, name).await,
            Err(e) => Err(ExecutorError::Unavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_dead_one_is_not() {
        let me = owner_of_this_process();
        assert!(owner_is_alive(&me), "{me}");
        let host = host_name();
        assert!(!owner_is_alive(&format!("{host}:999999999:1")));
        let pid = std::process::id();
        assert!(
            !owner_is_alive(&format!("{host}:{pid}:0")),
            "same pid, another start time"
        );
        assert!(
            owner_is_alive("another-host:1:1"),
            "other hosts are not judged here"
        );
        assert!(!owner_is_alive("garbage"));
    }
}
