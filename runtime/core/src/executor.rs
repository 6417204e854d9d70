//! Job executors: what runs a worker's jobs (containers on a local engine, Pods
//! on Kubernetes, Wasm modules in-process).
//!
//! The host validates a job against its project's policies before an executor
//! sees it ([`crate::jobs`]); the executor turns it into running containers,
//! sends every line they print to the job's [`JobOutput`], and reports how the
//! job ended. When the event ends the host calls
//! [`JobExecutor::finish_event`], which removes whatever the executor made
//! for it.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use mizzen_host_api::types::{
    ArtifactInfo, ContainerSpec, GitConfig, JobResult, JobSpec, Phase, Readiness, ServiceReady,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::limits::WorkerLimits;
use crate::project::JobPolicies;
use crate::volume::EventVolumes;

/// What an executor needs to know about the event a job belongs to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventContext {
    /// The event's id.
    pub event_id: String,
    /// The project's id.
    pub project_id: String,
    /// Whether jobs may mount the event's shared workspace.
    pub use_workspace: bool,
    /// What `sourceMountPath` mounts, when the project has a source.
    pub source: Option<Source>,
    /// What the project allows its jobs.
    pub policies: JobPolicies,
    /// Registry credentials (names of pre-created Kubernetes Secrets) for
    /// the jobs' images; executors without such secrets ignore them.
    pub image_pull_secrets: Vec<String>,
    /// The same names looked up among the project's own secrets, for an
    /// executor that pulls images itself (the local engine): each holds a
    /// Docker config JSON, as a Kubernetes pull secret's
    /// `.dockerconfigjson` does. Never serialized, so credentials cross no
    /// pipe and reach no file.
    #[serde(skip)]
    pub pull_secrets: Vec<PullSecret>,
    /// The size of the event's workspace (a Kubernetes quantity), when the
    /// project sets one; executors that cannot size it ignore it.
    pub workspace_size: Option<String>,
    /// What each container of the event's jobs may use.
    pub container_limits: ContainerLimits,
    /// What the event's artifacts and the project's caches may hold.
    #[serde(default)]
    pub kept: crate::kept::KeptQuotas,
    /// The project's volumes and the host paths containers may bind.
    #[serde(default)]
    pub volumes: EventVolumes,
}

/// A project secret named in `imagePullSecrets`, as the local engine reads
/// it. Its value is never printed (not even by `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct PullSecret {
    /// The name, as `imagePullSecrets` gives it.
    pub name: String,
    /// The project secret's value, or `None` when the project has no
    /// secret of that name.
    pub value: Option<String>,
}

impl PullSecret {
    /// Each of `names` looked up in `secrets`.
    pub fn lookup(
        names: &[String],
        secrets: &std::collections::BTreeMap<String, String>,
    ) -> Vec<PullSecret> {
        names
            .iter()
            .map(|name| PullSecret {
                name: name.clone(),
                value: secrets.get(name).cloned(),
            })
            .collect()
    }
}

impl std::fmt::Debug for PullSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullSecret")
            .field("name", &self.name)
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// What each container of a job may use: the project's job limits
/// (`jobMemory`, `jobCpu`, `jobProcesses`) under the server's ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerLimits {
    /// Memory, in bytes.
    pub memory_bytes: u64,
    /// CPU, in thousandths of a core.
    pub cpu_millis: u64,
    /// Processes and threads.
    pub processes: u64,
    /// The CPU time a Wasm job may compute: the project's `cpuTime`, the
    /// limit its scripts have (a container is held by `cpu_millis` instead).
    pub cpu_time: std::time::Duration,
    /// The output kept of each job (`jobLogSize`), for where a job's lines
    /// would otherwise cross a pipe before they are cut (a Wasm job in a
    /// sandbox process).
    pub log_bytes: u64,
}

impl ContainerLimits {
    /// The container limits among a worker's limits.
    pub fn of(limits: &WorkerLimits) -> Self {
        Self {
            memory_bytes: limits.job_memory_bytes,
            cpu_millis: limits.job_cpu_millis,
            processes: limits.job_processes,
            cpu_time: limits.cpu_time,
            log_bytes: limits.job_log_bytes,
        }
    }
}

impl Default for ContainerLimits {
    fn default() -> Self {
        Self::of(&WorkerLimits::default())
    }
}

/// Who a container's process runs as: a numeric user and group, the same
/// on every executor (a name would mean whatever the image's `/etc/passwd`
/// says, and Kubernetes takes numbers only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerUser {
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
}

/// The highest id a container may run as: Kubernetes refuses a
/// `runAsUser` past it (it is a signed 32-bit number there).
pub const MAX_CONTAINER_ID: u32 = i32::MAX as u32;

impl ContainerUser {
    /// `nobody`: every container's user unless it says otherwise, on every
    /// executor, so that a job that passes on one passes on the others.
    pub const NOBODY: ContainerUser = ContainerUser {
        uid: 65534,
        gid: 65534,
    };
    /// `root`: only under the project's `allowRoot` policy (or for a
    /// privileged container, or one given the host's Docker socket).
    pub const ROOT: ContainerUser = ContainerUser { uid: 0, gid: 0 };

    /// Parses a container's `user`: `root`, `nobody`, `UID` (its group the
    /// same number) or `UID:GID`; `None` when it is empty.
    pub fn parse(user: &str) -> Result<Option<Self>, String> {
        let id = |part: &str| {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "user {user:?} must be root, nobody, UID or UID:GID (numbers: a name would depend on the image)"
                ));
            }
            part.parse::<u32>()
                .ok()
                .filter(|id| *id <= MAX_CONTAINER_ID)
                .ok_or_else(|| format!("user {user:?}: an id is at most {MAX_CONTAINER_ID}"))
        };
        Ok(Some(match user {
            "" => return Ok(None),
            "root" => Self::ROOT,
            "nobody" => Self::NOBODY,
            _ => match user.split_once(':') {
                Some((uid, gid)) => Self {
                    uid: id(uid)?,
                    gid: id(gid)?,
                },
                None => {
                    let uid = id(user)?;
                    Self { uid, gid: uid }
                }
            },
        }))
    }

    /// Whom `container` runs as: its `user`, or root when it is privileged
    /// or has the host's Docker socket (which the project's policy allowed,
    /// and which need root), or [`ContainerUser::NOBODY`]. The job's rules
    /// refused a `user` that does not parse before any executor sees it.
    pub fn of(container: &ContainerSpec) -> Self {
        match Self::parse(&container.user) {
            Ok(Some(user)) => user,
            _ if container.privileged || container.use_host_docker_socket => Self::ROOT,
            _ => Self::NOBODY,
        }
    }

    /// Whether this is the superuser.
    pub fn is_root(self) -> bool {
        self.uid == 0
    }
}

impl std::fmt::Display for ContainerUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// How long a container that declares no readiness must have run, without
/// exiting, before what comes `after` it starts: the perp seed's rule for a
/// long-running service ("up for 3 seconds without restarting"), long
/// enough for a program that fails on a bad configuration to have failed.
pub const UP_FOR_READY: std::time::Duration = std::time::Duration::from_secs(3);

/// When a container counts as ready for what comes after it: its declared
/// readiness, or up for [`UP_FOR_READY`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReadyWhen {
    /// Something accepts TCP connections on this port of its network
    /// namespace.
    TcpPort(u16),
    /// It exited with code 0 (a one-shot container).
    Exited,
    /// It has run for [`UP_FOR_READY`] without exiting.
    Up,
}

impl ReadyWhen {
    /// The rule for `readiness` (none: [`ReadyWhen::Up`]).
    pub fn of(readiness: Option<&Readiness>) -> Self {
        match readiness {
            Some(Readiness {
                tcp_port: Some(port),
                ..
            }) => ReadyWhen::TcpPort(*port),
            Some(Readiness { exited: true, .. }) => ReadyWhen::Exited,
            _ => ReadyWhen::Up,
        }
    }
}

/// A job's sidecars in a start order where each comes after those it names
/// in `after`, and otherwise in the order of `preferred` (every sidecar's
/// name). The job's rules refused cycles and unknown names; one such name
/// is skipped here rather than followed.
pub fn start_order<'a>(
    sidecars: &'a std::collections::BTreeMap<String, ContainerSpec>,
    preferred: impl IntoIterator<Item = &'a str>,
) -> Vec<&'a str> {
    fn visit<'a>(
        name: &'a str,
        sidecars: &'a std::collections::BTreeMap<String, ContainerSpec>,
        order: &mut Vec<&'a str>,
    ) {
        if order.contains(&name) {
            return;
        }
        if let Some(container) = sidecars.get(name) {
            for after in &container.after {
                visit(after, sidecars, order);
            }
            order.push(name);
        }
    }
    let mut order = Vec::with_capacity(sidecars.len());
    for name in preferred {
        visit(name, sidecars, &mut order);
    }
    order
}

/// One of a container's `ports`, parsed: the container port, and where on
/// the host it is published, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    /// The port inside the container.
    pub container_port: u16,
    /// Where it is published on the host.
    pub host: Option<HostPort>,
}

/// A container port published on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostPort {
    /// The host address it listens on: loopback unless the port says
    /// otherwise, so that publishing a port does not open it to the network.
    pub address: std::net::IpAddr,
    /// The host port; 0 for one the engine chooses.
    pub port: u16,
}

impl PortMapping {
    /// Parses `"PORT"`, `"HOSTPORT:PORT"` or `"IP:HOSTPORT:PORT"` (an IPv6
    /// address in brackets).
    pub fn parse(text: &str) -> Result<Self, String> {
        let number = |part: &str, what: &str, zero: bool| {
            part.parse::<u16>()
                .ok()
                .filter(|port| zero || *port != 0)
                .ok_or_else(|| {
                    format!(
                        "port {text:?}: {what} {part:?} must be a number from {} to 65535",
                        u8::from(!zero)
                    )
                })
        };
        let (host, container) = match text.rsplit_once(':') {
            None => (None, text),
            Some((host, container)) => (Some(host), container),
        };
        let container_port = number(container, "the container port", false)?;
        let host = match host {
            None => None,
            Some(host) => {
                let (address, port) = match host.rsplit_once(':') {
                    None => (std::net::IpAddr::from([127, 0, 0, 1]), host),
                    Some((address, port)) => {
                        let bare = address
                            .strip_prefix('[')
                            .and_then(|a| a.strip_suffix(']'))
                            .unwrap_or(address);
                        let address = bare.parse().map_err(|_| {
                            format!("port {text:?}: {address:?} is not an IP address")
                        })?;
                        (address, port)
                    }
                };
                Some(HostPort {
                    address,
                    port: number(port, "the host port", true)?,
                })
            }
        };
        Ok(Self {
            container_port,
            host,
        })
    }

    /// The container's ports; the job's rules refused those that do not
    /// parse before any executor sees them.
    pub fn all(container: &ContainerSpec) -> Vec<Self> {
        container
            .ports
            .iter()
            .filter_map(|port| Self::parse(port).ok())
            .collect()
    }
}

/// The environment variable that tells jobs the host port a service's
/// container port got: `MIZZEN_SERVICE_<NAME>_PORT_<PORT>`, the name upper
/// case with `-` as `_`.
pub fn service_port_variable(service: &str, container_port: &str) -> String {
    format!(
        "MIZZEN_SERVICE_{}_PORT_{container_port}",
        service.to_ascii_uppercase().replace('-', "_")
    )
}

/// Where a job's source checkout comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// A git repository, checked out fresh for each job.
    Git(GitConfig),
    /// A git repository a server fetches for a tenant, checked out fresh for
    /// each job: only from git hosts, its name resolved when it is fetched
    /// and refused if it reaches the server itself or its cloud's metadata
    /// service, and the address checked is the one git connects to
    /// (`source::checkout`).
    TenantGit(GitConfig),
    /// A directory (a local project standing for its repository), copied
    /// fresh for each job.
    Directory(PathBuf),
}

/// Where a job's containers' output goes, line by line.
pub trait JobOutput: Send + Sync {
    /// One line (without its newline) printed by `container`: the job's name
    /// for the primary container, the sidecar's name otherwise.
    fn line(&self, container: &str, line: &str);

    /// The rest of `container`'s output could not be read; `why` says why.
    /// What keeps the job's log says so there: output is never cut without
    /// a word.
    fn lost(&self, container: &str, why: &str) {
        tracing::warn!(container, why, "a job container's output was cut");
    }
}

/// A job to start: validated, with its event and its output.
pub struct JobRequest {
    /// The event the job belongs to.
    pub event: Arc<EventContext>,
    /// The job's name, unique within the event.
    pub name: String,
    /// What to run.
    pub spec: JobSpec,
    /// Where its output goes.
    pub output: Arc<dyn JobOutput>,
}

/// Runs jobs. One executor serves every worker of a process.
#[async_trait]
pub trait JobExecutor: Send + Sync {
    /// Starts a job and returns as soon as the executor has accepted it; the
    /// job then runs on its own. An error here means the job was refused (it
    /// never ran); failures while it runs end it FAILED instead.
    async fn start(&self, job: JobRequest) -> Result<Arc<dyn RunningJob>, ExecutorError>;

    /// Removes everything the executor made for `event` (containers,
    /// networks, workspace, checkouts), or hands what takes long to the
    /// background (see [`JobExecutor::cleaned_up`]): the event's end does
    /// not wait for it. Called once, when the event ends, however it ended.
    async fn finish_event(&self, event: &EventContext);

    /// The event's workspace as a directory on this host, created if need
    /// be, for the script's workspace operations. Called only for projects
    /// that use a workspace. An executor whose workspace is not on this
    /// host (a Kubernetes volume claim) says so.
    async fn workspace_dir(&self, event: &EventContext) -> Result<PathBuf, WorkspaceError> {
        let _ = event;
        Err(WorkspaceError::JobsOnly(
            "this executor keeps the workspace where only the event's jobs reach it",
        ))
    }

    /// The artifacts the event's jobs saved so far (`artifact.list`). An
    /// executor that keeps none says so.
    async fn artifacts(&self, event: &EventContext) -> Result<Vec<ArtifactInfo>, ExecutorError> {
        let _ = event;
        Err(ExecutorError::Unsupported(
            "this executor keeps no artifacts".into(),
        ))
    }

    /// File `path` of artifact `name` of the event (`artifact.read`),
    /// checked against its SHA-256; a file of more than `max_bytes` is
    /// refused, naming its size.
    async fn read_artifact(
        &self,
        event: &EventContext,
        name: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, ExecutorError> {
        let _ = (event, name, path, max_bytes);
        Err(ExecutorError::Unsupported(
            "this executor keeps no artifacts".into(),
        ))
    }

    /// Starts a service of the event: `service.spec`'s primary container,
    /// reachable by `service.name` from the event's jobs until the event
    /// ends or the service is cancelled. It may take as long as it needs
    /// (it runs on the service's own task); an error means it never ran.
    async fn start_service(
        &self,
        service: JobRequest,
    ) -> Result<Arc<dyn RunningService>, ExecutorError> {
        Err(ExecutorError::Unsupported(format!(
            "service \"{}\": this executor cannot run services",
            service.name
        )))
    }

    /// Waits until what [`JobExecutor::finish_event`] left to do in the
    /// background (deleting an ended event's files) is done: a process
    /// calls it before it exits.
    async fn cleaned_up(&self) {}

    /// The project's volumes that this executor keeps (those its events
    /// have mounted and nobody deleted), each measured up to just past
    /// `measure_up_to` bytes.
    async fn project_volumes(
        &self,
        project_id: &str,
        measure_up_to: u64,
    ) -> Result<Vec<StoredVolume>, ExecutorError> {
        let _ = (project_id, measure_up_to);
        Err(ExecutorError::Unsupported(
            "this executor keeps no project volumes".into(),
        ))
    }

    /// Deletes the project's volume `name` and what it holds; refused
    /// ([`ExecutorError::InUse`]) while a running job mounts it.
    async fn delete_project_volume(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<(), ExecutorError> {
        let _ = (project_id, name);
        Err(ExecutorError::Unsupported(
            "this executor keeps no project volumes".into(),
        ))
    }
}

/// A project's volume as an executor keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredVolume {
    /// Its name, as containers mount it.
    pub name: String,
    /// What it holds, when the executor can tell (measured up to a bound:
    /// more than that reads as just past it).
    pub used_bytes: Option<u64>,
}

/// A job that was accepted.
#[async_trait]
pub trait RunningJob: Send + Sync {
    /// Waits for the job to end; any number of callers get the same result.
    async fn wait(&self) -> JobResult;

    /// Stops the job: ABORTED when it had started, CANCELED when it had not.
    /// Does nothing to a job that has ended.
    async fn cancel(&self);
}

/// A service that was started: a job that also says when it is ready.
#[async_trait]
pub trait RunningService: RunningJob {
    /// Waits until the service is ready, with the host ports it got; the
    /// reason when it ended, failed or timed out first.
    async fn ready(&self) -> Result<ServiceReady, String>;
}

/// Where a service's task says it is ready (or why it never will be).
pub type ReadySender = watch::Sender<Option<Result<ServiceReady, String>>>;

/// A service run by a task of its own, as [`SpawnedJob`] runs a job.
pub struct SpawnedService {
    job: Arc<SpawnedJob>,
    ready: watch::Receiver<Option<Result<ServiceReady, String>>>,
}

impl SpawnedService {
    /// Runs `service` on a new task; it says on the [`ReadySender`] when
    /// the service is ready.
    pub fn spawn<F, Fut>(service: F) -> Arc<Self>
    where
        F: FnOnce(watch::Receiver<bool>, ReadySender) -> Fut,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        let (sender, ready) = watch::channel(None);
        let job = SpawnedJob::spawn(|cancelled| service(cancelled, sender));
        Arc::new(Self { job, ready })
    }
}

#[async_trait]
impl RunningJob for SpawnedService {
    async fn wait(&self) -> JobResult {
        self.job.wait().await
    }

    async fn cancel(&self) {
        self.job.cancel().await
    }
}

#[async_trait]
impl RunningService for SpawnedService {
    async fn ready(&self) -> Result<ServiceReady, String> {
        let mut ready = self.ready.clone();
        if let Ok(ready) = ready.wait_for(Option::is_some).await
            && let Some(ready) = ready.clone()
        {
            return ready;
        }
        // The task ended without a word: its end says why.
        let ended = self.wait().await;
        Err(ended_before_ready(&ended))
    }
}

/// Why a service that ended was never ready.
pub fn ended_before_ready(ended: &JobResult) -> String {
    match (&ended.reason, ended.exit_code) {
        (Some(reason), _) => format!("it ended {}: {reason}", ended.phase),
        (None, Some(code)) => format!("it ended {} with exit code {code}", ended.phase),
        (None, None) => format!("it ended {}", ended.phase),
    }
}

/// A job run by a task of its own: what executors return from `start`.
/// The task gets a receiver that turns true when the job is to stop, and
/// its result is the job's.
pub struct SpawnedJob {
    result: watch::Receiver<Option<JobResult>>,
    cancel: watch::Sender<bool>,
}

impl SpawnedJob {
    /// Runs `job` on a new task.
    pub fn spawn<F, Fut>(job: F) -> Arc<Self>
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        let (result_sender, result) = watch::channel(None);
        let (cancel, cancelled) = watch::channel(false);
        let task = job(cancelled);
        tokio::spawn(async move {
            let _ = result_sender.send(Some(task.await));
        });
        Arc::new(Self { result, cancel })
    }
}

/// The job's result once `result` holds one; UNKNOWN with `lost` when its
/// sender went away without one.
pub(crate) async fn result_of(
    result: &watch::Receiver<Option<JobResult>>,
    lost: &str,
) -> JobResult {
    let mut result = result.clone();
    match result.wait_for(Option::is_some).await {
        Ok(result) if let Some(result) = result.clone() => result,
        _ => JobResult::ended(Phase::Unknown, None, lost),
    }
}

#[async_trait]
impl RunningJob for SpawnedJob {
    async fn wait(&self) -> JobResult {
        // Lost only when the task panicked.
        result_of(&self.result, "the job's task ended without a result").await
    }

    async fn cancel(&self) {
        let _ = self.cancel.send(true);
        // The task ends once whatever ran the job is gone.
        self.wait().await;
    }
}

/// Why the script cannot have its event's workspace.
#[derive(Debug, thiserror::Error)]
pub enum WorkspaceError {
    /// The executor keeps the workspace where only the event's jobs reach
    /// it (a Kubernetes volume claim); the text says so in its terms.
    #[error("{0}")]
    JobsOnly(&'static str),
    /// The directory could not be made.
    #[error("cannot create the event's workspace {}: {source}", path.display())]
    Create {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The executor's backend (a container engine) cannot be reached.
    #[error(transparent)]
    Unavailable(crate::BoxError),
}

/// Why an executor refused a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ExecutorError {
    /// The executor cannot run jobs of this kind (e.g. Windows containers).
    #[error("{0}")]
    Unsupported(String),
    /// The executor's backend (container engine, cluster) cannot be reached.
    #[error("{0}")]
    Unavailable(String),
    /// What was asked for does not exist (a project volume).
    #[error("{0}")]
    NotFound(String),
    /// What was asked for is in use and was left alone (a project volume
    /// that a running job mounts).
    #[error("{0}")]
    InUse(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_as_declared_or_published() {
        let loopback = std::net::IpAddr::from([127, 0, 0, 1]);
        let cases = [
            ("5432", 5432, None),
            (
                "8080:80",
                80,
                Some(HostPort {
                    address: loopback,
                    port: 8080,
                }),
            ),
            (
                "0:6379",
                6379,
                Some(HostPort {
                    address: loopback,
                    port: 0,
                }),
            ),
            (
                "0.0.0.0:8080:80",
                80,
                Some(HostPort {
                    address: std::net::IpAddr::from([0, 0, 0, 0]),
                    port: 8080,
                }),
            ),
            (
                "[::1]:0:80",
                80,
                Some(HostPort {
                    address: "::1".parse().unwrap(),
                    port: 0,
                }),
            ),
        ];
        for (text, container_port, host) in cases {
            assert_eq!(
                PortMapping::parse(text),
                Ok(PortMapping {
                    container_port,
                    host
                }),
                "{text}"
            );
        }
        for (text, error) in [
            (
                "0",
                "the container port \"0\" must be a number from 1 to 65535",
            ),
            ("http", "the container port \"http\""),
            ("70000", "the container port \"70000\""),
            (
                "x:80",
                "the host port \"x\" must be a number from 0 to 65535",
            ),
            ("localhost:1:80", "\"localhost\" is not an IP address"),
            ("", "the container port \"\""),
        ] {
            let got = PortMapping::parse(text).unwrap_err();
            assert!(got.contains(error), "{text}: {got}");
        }
    }

    #[test]
    fn port_variables_name_the_service_and_the_port() {
        assert_eq!(
            service_port_variable("my-redis", "6379"),
            "MIZZEN_SERVICE_MY_REDIS_PORT_6379"
        );
    }
}
