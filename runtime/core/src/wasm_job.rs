//! Wasm jobs: a job whose image is `wasm:…` runs as a WASI preview 1 command
//! in the sandbox instead of as a container.
//!
//! [`HostJobExecutor`] stands in front of a container executor. A job whose
//! primary container names a module ([`ModuleRef`]) is resolved here — its
//! module read from a fresh checkout of the project's source or from the
//! event's workspace, or fetched once from a URL and checked against the
//! sha256 it is pinned by ([`ModuleFetcher`]) — and handed to a
//! [`WasmJobRunner`] as a [`WasmJob`]: the module, its argv and environment,
//! the directories it may open and its limits. The runner is the
//! [`crate::Sandbox`], where scripts run: the same engine, pool, limits, CPU
//! slots and tenant charging (`Sandbox::run_job`). Every other job goes to
//! the container executor, and so do the event's workspace and clean-up.
//! Before either, the host reads each container's environment file
//! ([`crate::environment_file`]) from the same places a module comes from,
//! so that every executor gets plain variables.
//!
//! The module runs under wasmtime-wasi's WASI preview 1: its files are the
//! preopened directories (through cap-std), its stdout and stderr become the
//! job's lines ([`JobLines`]), and nothing else — no network, no host API.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use mizzen_host_api::types::{ContainerSpec, JobResult, JobSpec, Phase};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::environment_file::{EnvironmentFileRef, MAX_ENVIRONMENT_FILE_BYTES};
use crate::executor::{
    EventContext, ExecutorError, JobExecutor, JobOutput, JobRequest, RunningJob, RunningService,
    Source, SpawnedJob, WorkspaceError,
};
use crate::module::MAX_MODULE_BYTES;

/// What an image starts with when it names a Wasm module.
pub const IMAGE_PREFIX: &str = "wasm:";

/// A module's own location in the event's workspace: `wasm:workspace:PATH`.
const WORKSPACE_PREFIX: &str = "workspace:";

/// What pins a fetched module: `wasm:https://…/tool.wasm@sha256:HEX`.
const DIGEST_SEPARATOR: &str = "@sha256:";

/// Every function of WASI preview 1 (`wasi_snapshot_preview1.witx`), all of
/// which wasmtime-wasi implements. A job's module may import these and
/// nothing else; the socket functions act only on preopened sockets, of
/// which a job has none.
pub const WASI_FUNCTIONS: [&str; 46] = [
    "args_get",
    "args_sizes_get",
    "environ_get",
    "environ_sizes_get",
    "clock_res_get",
    "clock_time_get",
    "fd_advise",
    "fd_allocate",
    "fd_close",
    "fd_datasync",
    "fd_fdstat_get",
    "fd_fdstat_set_flags",
    "fd_fdstat_set_rights",
    "fd_filestat_get",
    "fd_filestat_set_size",
    "fd_filestat_set_times",
    "fd_pread",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_pwrite",
    "fd_read",
    "fd_readdir",
    "fd_renumber",
    "fd_seek",
    "fd_sync",
    "fd_tell",
    "fd_write",
    "path_create_directory",
    "path_filestat_get",
    "path_filestat_set_times",
    "path_link",
    "path_open",
    "path_readlink",
    "path_remove_directory",
    "path_rename",
    "path_symlink",
    "path_unlink_file",
    "poll_oneoff",
    "proc_exit",
    "proc_raise",
    "sched_yield",
    "random_get",
    "sock_accept",
    "sock_recv",
    "sock_send",
    "sock_shutdown",
];

/// A fetched module is awaited this long in all: a server that trickles
/// bytes must not hold a job for ever (16 MiB at 1 MiB/s fits).
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// Connecting to a module's server is given up after this long.
const FETCH_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Fetched modules kept in the cache directory at most (least recently used
/// first out): a few hundred tools of a few megabytes.
const FETCHED_CACHE_BYTES: u64 = 1024 * 1024 * 1024;

/// A fetched module used this recently is not swept: another process may
/// be about to read it.
const FETCHED_GRACE: Duration = Duration::from_secs(5 * 60);

/// The longest line a job's stdout or stderr passes on whole; longer ones
/// are split, as the container executors split theirs.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What a guest may write in one call before it is told to wait: WASI's
/// usual permit (the host copies this much at most per call).
const WRITE_PERMIT: usize = 64 * 1024;

/// Where a Wasm job's module comes from, as its image says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleRef {
    /// `wasm:PATH`: a file of the project's source (a fresh checkout).
    Source(String),
    /// `wasm:workspace:PATH`: a file in the event's workspace (a module an
    /// earlier job built).
    Workspace(String),
    /// `wasm:https://HOST/PATH@sha256:HEX`: fetched once, checked against
    /// the digest, then kept by it.
    Url {
        /// The URL, without the digest.
        url: url::Url,
        /// The sha256 the module must have.
        sha256: [u8; 32],
    },
}

impl ModuleRef {
    /// The module an image names: `None` for a container image, or what is
    /// wrong with a `wasm:` image.
    pub fn parse(image: &str) -> Option<Result<Self, String>> {
        let location = image.strip_prefix(IMAGE_PREFIX)?;
        Some(Self::parse_location(location))
    }

    fn parse_location(location: &str) -> Result<Self, String> {
        if location.starts_with("https://") || location.starts_with("http://") {
            let Some((url, digest)) = location.rsplit_once(DIGEST_SEPARATOR) else {
                return Err(format!(
                    "a module fetched from a URL must be pinned by its digest: wasm:{location}{DIGEST_SEPARATOR}<64 hex digits> (sha256sum prints it)"
                ));
            };
            let mut sha256 = [0u8; 32];
            hex::decode_to_slice(digest, &mut sha256).map_err(|_| {
                format!("the digest {digest:?} is not a sha256: it must be 64 hex digits")
            })?;
            let url =
                url::Url::parse(url).map_err(|e| format!("the URL {url:?} is not valid: {e}"))?;
            if url.scheme() != "https" && !is_loopback(&url) {
                return Err(format!(
                    "the URL {url} must be https (plain http only to this machine's loopback address)"
                ));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err(format!(
                    "the URL {url} carries credentials; a module is fetched without any"
                ));
            }
            return Ok(ModuleRef::Url { url, sha256 });
        }
        let (path, place) = match location.strip_prefix(WORKSPACE_PREFIX) {
            Some(path) => (path, ModuleRef::Workspace as fn(String) -> ModuleRef),
            None => (location, ModuleRef::Source as fn(String) -> ModuleRef),
        };
        check_relative_path(path)?;
        Ok(place(path.to_string()))
    }

    /// The module's file name, the program name it gets as `argv[0]`.
    pub fn file_name(&self) -> String {
        let path = match self {
            ModuleRef::Source(path) | ModuleRef::Workspace(path) => path.as_str(),
            ModuleRef::Url { url, .. } => url.path(),
        };
        path.rsplit('/')
            .find(|part| !part.is_empty())
            .unwrap_or("module.wasm")
            .to_string()
    }
}

impl std::fmt::Display for ModuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModuleRef::Source(path) => write!(f, "{path} in the project's source"),
            ModuleRef::Workspace(path) => write!(f, "{path} in the event's workspace"),
            ModuleRef::Url { url, .. } => write!(f, "{url}"),
        }
    }
}

/// A path relative to a directory, that stays in it: not empty, not
/// absolute, no `..`, no backslashes or control characters. (cap-std also
/// refuses what a link would take outside; this names the mistake first.)
/// Environment files follow the same rule.
pub(crate) fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.ends_with('/') {
        return Err(format!("{path:?} must name a file"));
    }
    if path.starts_with('/') {
        return Err(format!(
            "{path:?} must be relative (to the project's source, or with workspace: to the event's workspace)"
        ));
    }
    if path.split('/').any(|part| part == "..") {
        return Err(format!("{path:?} must not contain '..'"));
    }
    if path.chars().any(|c| c.is_control() || c == '\\') {
        return Err(format!(
            "{path:?} must not contain control characters or backslashes"
        ));
    }
    Ok(())
}

/// Whether a URL names this machine: plain http is allowed there only.
fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

/// One directory a Wasm job may open, preopened where the job asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preopen {
    /// The directory on this host.
    pub host: PathBuf,
    /// Where the module sees it (`workspaceMountPath`, `sourceMountPath`).
    pub guest: String,
}

/// A Wasm job ready to run: everything a runner needs, and nothing that ties
/// it to the process that resolved it (it may cross to a sandbox process).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WasmJob {
    /// The job's name, for messages.
    pub name: String,
    /// The project, charged for the job's CPU as for its scripts'.
    pub project_id: String,
    /// Where the module came from, for messages.
    pub module_name: String,
    /// The module's bytes, checked against [`crate::module::check_job`]
    /// where it is compiled (shared: the jobs of an event that name one
    /// module share its bytes).
    pub module: Arc<[u8]>,
    /// Their sha256.
    pub sha256: [u8; 32],
    /// `argv`, the program name first.
    pub args: Vec<String>,
    /// The environment.
    pub env: Vec<(String, String)>,
    /// The directories it may open.
    pub preopens: Vec<Preopen>,
    /// The largest its memory may grow, in bytes (`jobMemory`).
    pub memory_bytes: u64,
    /// The CPU time it may use (`cpuTime`, as for a script).
    pub cpu_time: Duration,
    /// When it is stopped, TIMED_OUT (`timeoutSeconds`).
    pub timeout: Duration,
    /// Bytes of its output kept (`jobLogSize`): a sandbox process sends no
    /// more than this (and a line) to the server.
    pub log_bytes: u64,
}

/// Runs Wasm jobs: the sandbox, in this process or in a sandbox process.
#[async_trait]
pub trait WasmJobRunner: Send + Sync {
    /// Runs `job` to its end, its lines to `output`, and says how it ended;
    /// `cancel` turning true stops it (ABORTED).
    async fn run_job(
        &self,
        job: WasmJob,
        output: Arc<dyn JobOutput>,
        cancel: watch::Receiver<bool>,
    ) -> JobResult;
}

/// The host's own part of every job: reads its containers' environment
/// files, and resolves a Wasm job and hands it to a runner; every other
/// job, and the event's workspace and clean-up, are the container
/// executor's.
pub struct HostJobExecutor {
    containers: Arc<dyn JobExecutor>,
    runner: Arc<dyn WasmJobRunner>,
    fetcher: Arc<ModuleFetcher>,
    /// Each running event's checkout of its project's source, made at its
    /// first job that reads a module or an environment file from there and
    /// removed when the event ends: a pipeline of a hundred Wasm jobs checks
    /// out once.
    sources: Mutex<HashMap<String, Arc<EventSource>>>,
}

/// An event's source, for reading Wasm jobs' modules and environment files
/// from.
#[derive(Default)]
struct EventSource {
    checkout: tokio::sync::OnceCell<Result<tempfile::TempDir, String>>,
    /// Modules read from it, by path, up to [`SOURCE_MODULES_BYTES`].
    modules: Mutex<HashMap<String, HashedModule>>,
}

impl EventSource {
    /// The event's checkout, made by the first caller.
    async fn checkout(&self, source: &Source) -> Result<&Path, String> {
        self.checkout
            .get_or_init(|| fresh_checkout(source))
            .await
            .as_ref()
            .map(|dir| dir.path())
            .map_err(Clone::clone)
    }
}

/// A module's bytes and their sha256.
type HashedModule = (Arc<[u8]>, [u8; 32]);

/// Module bytes kept per event: the tools of a pipeline, read and hashed
/// once each (past it, a module is read again for each job).
const SOURCE_MODULES_BYTES: usize = 64 * 1024 * 1024;

impl HostJobExecutor {
    /// Wasm jobs on `runner`, their fetched modules through `fetcher`, the
    /// rest on `containers`.
    pub fn new(
        containers: Arc<dyn JobExecutor>,
        runner: Arc<dyn WasmJobRunner>,
        fetcher: Arc<ModuleFetcher>,
    ) -> Self {
        Self {
            containers,
            runner,
            fetcher,
            sources: Mutex::default(),
        }
    }

    /// The event's source checkout (made by the first caller).
    fn source_of(&self, event: &EventContext) -> Arc<EventSource> {
        self.sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(event.event_id.clone())
            .or_default()
            .clone()
    }
}

#[async_trait]
impl JobExecutor for HostJobExecutor {
    async fn start(&self, job: JobRequest) -> Result<Arc<dyn RunningJob>, ExecutorError> {
        let module = match ModuleRef::parse(&job.spec.primary_container.image) {
            None => None,
            Some(module) => Some(module.map_err(|e| {
                ExecutorError::Unsupported(format!("job \"{}\": image: {e}", job.name))
            })?),
        };
        let environment_files: Vec<_> = std::iter::once(&job.spec.primary_container)
            .chain(job.spec.sidecar_containers.values())
            .filter(|container| !container.environment_file.is_empty())
            .map(|container| EnvironmentFileRef::parse(&container.environment_file))
            .collect();
        if module.is_none() && environment_files.is_empty() {
            return self.containers.start(job).await;
        }
        let reads_source = matches!(module, Some(ModuleRef::Source(_)))
            || environment_files
                .iter()
                .any(|file| matches!(file, Ok(EnvironmentFileRef::Source(_))));
        let (containers, runner, fetcher) = (
            self.containers.clone(),
            self.runner.clone(),
            self.fetcher.clone(),
        );
        let source = reads_source.then(|| self.source_of(&job.event));
        Ok(SpawnedJob::spawn(move |cancel| async move {
            let JobRequest {
                event,
                name,
                mut spec,
                output,
            } = job;
            let places = Places {
                containers: containers.as_ref(),
                fetcher: &fetcher,
                source: source.as_deref(),
            };
            let owner = format!("job \"{name}\"");
            if let Err(reason) = read_environment_files(&owner, &mut spec, &event, &places).await {
                return JobResult::ended(Phase::Failed, None, reason);
            }
            let Some(module) = module else {
                let request = JobRequest {
                    event,
                    name,
                    spec,
                    output,
                };
                return run_container_job(containers.as_ref(), request, cancel).await;
            };
            // The job's own source checkout lives as long as the job.
            let mut checkout = None;
            let prepared = prepare(
                &name,
                &module,
                &spec.primary_container,
                &event,
                places,
                &mut checkout,
            )
            .await;
            let job = match prepared {
                Ok(mut job) => {
                    job.timeout = Duration::from_secs_f64(spec.timeout_seconds);
                    job
                }
                Err(reason) => return JobResult::ended(Phase::Failed, None, reason),
            };
            let result = runner.run_job(job, output, cancel).await;
            drop(checkout);
            result
        }))
    }

    async fn start_service(
        &self,
        mut service: JobRequest,
    ) -> Result<Arc<dyn RunningService>, ExecutorError> {
        let file = &service.spec.primary_container.environment_file;
        if !file.is_empty() {
            let reads_source = matches!(
                EnvironmentFileRef::parse(file),
                Ok(EnvironmentFileRef::Source(_))
            );
            let source = reads_source.then(|| self.source_of(&service.event));
            let places = Places {
                containers: self.containers.as_ref(),
                fetcher: &self.fetcher,
                source: source.as_deref(),
            };
            let owner = format!("service \"{}\"", service.name);
            read_environment_files(&owner, &mut service.spec, &service.event, &places)
                .await
                .map_err(ExecutorError::Unsupported)?;
        }
        self.containers.start_service(service).await
    }

    async fn finish_event(&self, event: &EventContext) {
        let source = self
            .sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&event.event_id);
        // Deleting a checkout is blocking work.
        if let Some(source) = source {
            tokio::task::spawn_blocking(move || drop(source));
        }
        self.containers.finish_event(event).await;
    }

    async fn workspace_dir(&self, event: &EventContext) -> Result<PathBuf, WorkspaceError> {
        self.containers.workspace_dir(event).await
    }

    async fn cleaned_up(&self) {
        self.containers.cleaned_up().await;
    }

    async fn artifacts(
        &self,
        event: &EventContext,
    ) -> Result<Vec<mizzen_host_api::types::ArtifactInfo>, ExecutorError> {
        self.containers.artifacts(event).await
    }

    async fn read_artifact(
        &self,
        event: &EventContext,
        name: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, ExecutorError> {
        self.containers
            .read_artifact(event, name, path, max_bytes)
            .await
    }

    async fn project_volumes(
        &self,
        project_id: &str,
        measure_up_to: u64,
    ) -> Result<Vec<crate::executor::StoredVolume>, ExecutorError> {
        self.containers
            .project_volumes(project_id, measure_up_to)
            .await
    }

    async fn delete_project_volume(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<(), ExecutorError> {
        self.containers
            .delete_project_volume(project_id, name)
            .await
    }
}

/// Where a Wasm job's module and directories come from.
struct Places<'a> {
    containers: &'a dyn JobExecutor,
    fetcher: &'a ModuleFetcher,
    /// The event's source, when the module is read from there.
    source: Option<&'a EventSource>,
}

/// Reads each container's environment file and adds its variables to the
/// container's environment (where `environment` does not set them); every
/// error names the job, the container, the file and, for what is in it,
/// its line.
async fn read_environment_files(
    owner: &str,
    spec: &mut JobSpec,
    event: &EventContext,
    places: &Places<'_>,
) -> Result<(), String> {
    // A service is one container: its name says which.
    let primary = if owner.starts_with("service") {
        owner.to_string()
    } else {
        format!("{owner}: primaryContainer")
    };
    let containers = std::iter::once((primary, &mut spec.primary_container)).chain(
        spec.sidecar_containers
            .iter_mut()
            .map(|(sidecar, container)| (format!("{owner}: sidecar \"{sidecar}\""), container)),
    );
    for (place, container) in containers {
        if container.environment_file.is_empty() {
            continue;
        }
        let at = |problem: String| {
            format!(
                "{place}: environmentFile {:?}: {problem}",
                container.environment_file
            )
        };
        let file = EnvironmentFileRef::parse(&container.environment_file).map_err(&at)?;
        let root = match &file {
            EnvironmentFileRef::Source(_) => {
                let source = event.source.as_ref().ok_or_else(|| {
                    at("the project has no source (spec.workerTemplate.git)".into())
                })?;
                let event_source = places.source.expect("given for a file of the source");
                event_source
                    .checkout(source)
                    .await
                    .map_err(&at)?
                    .to_path_buf()
            }
            EnvironmentFileRef::Workspace(_) => places
                .containers
                .workspace_dir(event)
                .await
                .map_err(|e| at(format!("the event's workspace cannot be read here: {e}")))?,
        };
        let bytes = read_file_beneath(Some(&root), file.path(), MAX_ENVIRONMENT_FILE_BYTES)
            .await
            .map_err(&at)?;
        let text = String::from_utf8(bytes).map_err(|e| {
            at(format!(
                "not UTF-8 text (at byte {})",
                e.utf8_error().valid_up_to()
            ))
        })?;
        let file_name = file.path().rsplit('/').next().unwrap_or_default();
        let variables = crate::environment_file::parse(file_name, &text).map_err(&at)?;
        for (key, value) in variables {
            container.environment.entry(key).or_insert(value);
        }
        container.environment_file.clear();
    }
    Ok(())
}

/// Runs a container job on the container executor once its environment
/// files are read, passing on a cancel.
async fn run_container_job(
    containers: &dyn JobExecutor,
    request: JobRequest,
    mut cancel: watch::Receiver<bool>,
) -> JobResult {
    if *cancel.borrow() {
        return JobResult::ended(Phase::Canceled, None, "canceled before it started");
    }
    let running = match containers.start(request).await {
        Ok(running) => running,
        Err(e) => return JobResult::ended(Phase::Failed, None, e.to_string()),
    };
    let cancelled = tokio::select! {
        result = running.wait() => return result,
        cancelled = cancel.wait_for(|cancelled| *cancelled) => cancelled.is_ok(),
    };
    if cancelled {
        running.cancel().await;
    }
    running.wait().await
}

/// Reads or fetches the module and gathers the job's directories; every
/// error names the job and what is wrong. A fresh source checkout made for
/// the job (`sourceMountPath`) is left in `checkout`, to be removed when the
/// job ends.
async fn prepare(
    name: &str,
    module: &ModuleRef,
    container: &ContainerSpec,
    event: &EventContext,
    places: Places<'_>,
    checkout: &mut Option<tempfile::TempDir>,
) -> Result<WasmJob, String> {
    let job = format!("job \"{name}\"");
    let mut preopens = Vec::new();
    let no_source =
        || format!("{job}: the project has no source to check out (spec.workerTemplate.git)");
    if !container.source_mount_path.is_empty() {
        let source = event.source.as_ref().ok_or_else(no_source)?;
        let dir = fresh_checkout(source)
            .await
            .map_err(|e| format!("{job}: {e}"))?;
        preopens.push(Preopen {
            host: dir.path().to_path_buf(),
            guest: container.source_mount_path.clone(),
        });
        *checkout = Some(dir);
    }
    let needs_workspace =
        !container.workspace_mount_path.is_empty() || matches!(module, ModuleRef::Workspace(_));
    let workspace = if needs_workspace {
        let dir = places.containers.workspace_dir(event).await.map_err(|e| match e {
            WorkspaceError::JobsOnly(why) => format!(
                "{job}: a Wasm job runs in the sandbox, where this executor's workspace is not ({why}); mount it in a container job instead"
            ),
            e => format!("{job}: the event's workspace is not available: {e}"),
        })?;
        if !container.workspace_mount_path.is_empty() {
            preopens.push(Preopen {
                host: dir.clone(),
                guest: container.workspace_mount_path.clone(),
            });
        }
        Some(dir)
    } else {
        None
    };
    let hashed = |bytes: Vec<u8>| {
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        (Arc::<[u8]>::from(bytes), sha256)
    };
    let (bytes, sha256) = match module {
        ModuleRef::Source(path) => {
            let source = event.source.as_ref().ok_or_else(no_source)?;
            let event_source = places.source.expect("given for a module from the source");
            source_module(event_source, source, path).await
        }
        ModuleRef::Workspace(path) => {
            read_file_beneath(workspace.as_deref(), path, MAX_MODULE_BYTES)
                .await
                .map(hashed)
        }
        ModuleRef::Url { url, sha256 } => places.fetcher.fetch(url, sha256).await.map(hashed),
    }
    .map_err(|e| format!("{job}: module {module}: {e}"))?;
    let mut args = if container.command.is_empty() {
        vec![module.file_name()]
    } else {
        container.command.clone()
    };
    args.extend(container.arguments.iter().cloned());
    Ok(WasmJob {
        name: name.to_string(),
        project_id: event.project_id.clone(),
        module_name: module.to_string(),
        module: bytes,
        sha256,
        args,
        env: container
            .environment
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        preopens,
        memory_bytes: event.container_limits.memory_bytes,
        cpu_time: event.container_limits.cpu_time,
        timeout: Duration::ZERO,
        log_bytes: event.container_limits.log_bytes,
    })
}

/// A fresh checkout of `source` in a directory of its own.
async fn fresh_checkout(source: &Source) -> Result<tempfile::TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix("mizzen-wasm-source-")
        .tempdir()
        .map_err(|e| format!("cannot make a directory for a source checkout: {e}"))?;
    crate::source::checkout(source, dir.path())
        .await
        .map_err(|e| format!("checking out the project's source failed: {e}"))?;
    Ok(dir)
}

/// A module of the event's source: checked out once per event, read and
/// hashed once per path (within [`SOURCE_MODULES_BYTES`]).
async fn source_module(
    event_source: &EventSource,
    source: &Source,
    path: &str,
) -> Result<HashedModule, String> {
    if let Some(found) = event_source
        .modules
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(path)
    {
        return Ok(found.clone());
    }
    let checkout = event_source.checkout(source).await?;
    let bytes = read_file_beneath(Some(checkout), path, MAX_MODULE_BYTES).await?;
    let sha256: [u8; 32] = Sha256::digest(&bytes).into();
    let found = (Arc::<[u8]>::from(bytes), sha256);
    let mut modules = event_source
        .modules
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let kept: usize = modules.values().map(|(bytes, _)| bytes.len()).sum();
    if kept + found.0.len() <= SOURCE_MODULES_BYTES {
        modules.insert(path.to_string(), found.clone());
    }
    Ok(found)
}

/// Reads `path` beneath `root` (cap-std: a link out of it is refused), at
/// most `limit` bytes.
async fn read_file_beneath(
    root: Option<&Path>,
    path: &str,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let root = root
        .ok_or_else(|| "no directory to read it from".to_string())?
        .to_path_buf();
    let path = path.to_string();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let dir = cap_std::fs::Dir::open_ambient_dir(&root, cap_std::ambient_authority())
            .map_err(|e| format!("cannot open {}: {e}", root.display()))?;
        let file = dir.open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => "not found".to_string(),
            std::io::ErrorKind::PermissionDenied => {
                "refused: it leads outside its directory (a link or '..')".to_string()
            }
            _ => format!("cannot open it: {e}"),
        })?;
        let size = file
            .metadata()
            .map_err(|e| format!("cannot read it: {e}"))?
            .len();
        if size > limit as u64 {
            return Err(format!("it is {size} bytes; the limit is {limit} bytes"));
        }
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(limit as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("cannot read it: {e}"))?;
        if bytes.len() > limit {
            return Err(format!(
                "it grew past the limit of {limit} bytes while it was read"
            ));
        }
        Ok(bytes)
    })
    .await
    .unwrap_or_else(|e| Err(format!("reading it failed: {e}")))
}

/// Fetches modules pinned by their digest, once per digest: kept in the
/// cache directory (`wasm-jobs/<sha256>.wasm`) and checked again when read.
pub struct ModuleFetcher {
    cache_dir: Option<PathBuf>,
    /// Fetching for tenants (a server): https only, and never from an
    /// address of the server itself or its cloud's metadata service, by
    /// name, by address or through a redirect.
    for_tenants: bool,
    client: std::sync::OnceLock<Result<reqwest::Client, String>>,
    /// One fetch per digest at a time: the jobs of a pipeline that name the
    /// same tool wait for one download.
    fetching: Mutex<HashMap<[u8; 32], Weak<tokio::sync::Mutex<()>>>>,
}

impl ModuleFetcher {
    /// Keeps fetched modules under `cache_dir` (in memory only when `None`:
    /// each job then fetches its module again).
    pub fn new(cache_dir: Option<PathBuf>) -> Self {
        Self {
            for_tenants: false,
            cache_dir: cache_dir.map(|dir| dir.join("wasm-jobs")),
            client: std::sync::OnceLock::new(),
            fetching: Mutex::default(),
        }
    }

    /// A fetcher for a server's tenants: as [`ModuleFetcher::new`], but
    /// https only and never to an internal address
    /// ([`crate::project::is_internal_address`]: the server itself, its
    /// cloud's metadata service), checked for every name resolved and every
    /// redirect followed. A tenant learns a module's digest from a refusal,
    /// so an internal response must never be fetched at all.
    pub fn for_tenants(cache_dir: Option<PathBuf>) -> Self {
        Self {
            for_tenants: true,
            ..Self::new(cache_dir)
        }
    }

    /// The module `url` pinned by `sha256`: from the cache, or fetched,
    /// checked and kept. A module whose digest differs is refused, naming
    /// both digests.
    pub async fn fetch(&self, url: &url::Url, sha256: &[u8; 32]) -> Result<Vec<u8>, String> {
        let lock = {
            let mut fetching = self.fetching.lock().unwrap_or_else(|e| e.into_inner());
            fetching.retain(|_, lock| lock.strong_count() > 0);
            match fetching.get(sha256).and_then(Weak::upgrade) {
                Some(lock) => lock,
                None => {
                    let lock = Arc::new(tokio::sync::Mutex::new(()));
                    fetching.insert(*sha256, Arc::downgrade(&lock));
                    lock
                }
            }
        };
        let _one = lock.lock().await;
        if self.for_tenants
            && let Some(problem) = tenant_url_problem(url)
        {
            return Err(problem);
        }
        let cached = self
            .cache_dir
            .as_ref()
            .map(|dir| dir.join(format!("{}.wasm", hex::encode(sha256))));
        if let Some(path) = &cached
            && let Ok(bytes) = std::fs::read(path)
        {
            if Sha256::digest(&bytes).as_slice() == sha256 {
                crate::cache_files::touch(path);
                return Ok(bytes);
            }
            // Damaged on disk: fetched again below.
            let _ = std::fs::remove_file(path);
        }
        let bytes = self.download(url).await?;
        let actual: [u8; 32] = Sha256::digest(&bytes).into();
        if &actual != sha256 {
            return Err(format!(
                "digest mismatch: the module fetched has sha256:{}, but the image pins sha256:{}; refused",
                hex::encode(actual),
                hex::encode(sha256)
            ));
        }
        if let (Some(path), Some(dir)) = (&cached, &self.cache_dir) {
            if let Err(e) = crate::cache_files::write_whole(path, &[&bytes]) {
                tracing::warn!(path = %path.display(), error = %e, "could not keep a fetched module");
            }
            crate::cache_files::sweep(
                dir,
                "wasm",
                FETCHED_CACHE_BYTES,
                FETCHED_GRACE,
                crate::cache_files::file_size,
            );
        }
        Ok(bytes)
    }

    async fn download(&self, url: &url::Url) -> Result<Vec<u8>, String> {
        let client = self
            .client
            .get_or_init(|| {
                // reqwest is built without a TLS provider of its own; ring is
                // the one the rest of the host installs (twice is harmless).
                let _ = rustls::crypto::ring::default_provider().install_default();
                let builder = reqwest::Client::builder()
                    .connect_timeout(FETCH_CONNECT_TIMEOUT)
                    .timeout(FETCH_TIMEOUT);
                let builder = if self.for_tenants {
                    builder.dns_resolver(CheckedResolver).redirect(
                        reqwest::redirect::Policy::custom(|attempt| {
                            if attempt.previous().len() >= MAX_REDIRECTS {
                                return attempt.error("too many redirects");
                            }
                            match tenant_url_problem(attempt.url()) {
                                Some(problem) => attempt.error(problem),
                                None => attempt.follow(),
                            }
                        }),
                    )
                } else {
                    builder
                };
                builder
                    .build()
                    .map_err(|e| format!("cannot set up an HTTP client: {e}"))
            })
            .clone()?;
        let mut response = client
            .get(url.clone())
            .send()
            .await
            .map_err(|e| format!("fetching it failed: {}", crate::npm::causes(&e)))?;
        if !response.status().is_success() {
            return Err(format!(
                "fetching it failed: the server answered {}",
                response.status()
            ));
        }
        if let Some(length) = response.content_length()
            && length > MAX_MODULE_BYTES as u64
        {
            return Err(format!(
                "it is {length} bytes; the limit is {MAX_MODULE_BYTES} bytes (16 MiB)"
            ));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("fetching it failed: {}", crate::npm::causes(&e)))?
        {
            if bytes.len() + chunk.len() > MAX_MODULE_BYTES {
                return Err(format!(
                    "it is more than {MAX_MODULE_BYTES} bytes (16 MiB), the limit"
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    }
}

/// Redirects followed when fetching a module (release downloads redirect
/// once or twice to their storage).
const MAX_REDIRECTS: usize = 5;

/// Why a server must not fetch `url` for a tenant: not https, or a literal
/// internal address (names are checked when they are resolved).
fn tenant_url_problem(url: &url::Url) -> Option<String> {
    if url.scheme() != "https" {
        return Some(format!(
            "{url} is not https; a server fetches modules over https only"
        ));
    }
    let internal = match url.host() {
        Some(url::Host::Ipv4(ip)) => crate::project::is_internal_address(ip.into()),
        Some(url::Host::Ipv6(ip)) => crate::project::is_internal_address(ip.into()),
        Some(url::Host::Domain(_)) => false,
        None => true,
    };
    internal.then(|| {
        format!("{url} reaches the server itself or its cloud's metadata service; refused")
    })
}

/// Resolves names as the system does and refuses any that leads to an
/// internal address: what a tenant's fetch connects to is what was checked.
struct CheckedResolver;

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let name = name.as_str().to_string();
        Box::pin(async move {
            let addresses: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if addresses
                .iter()
                .any(|a| crate::project::is_internal_address(a.ip()))
            {
                return Err(format!(
                    "{name} resolves to the server itself or its cloud's metadata service; refused"
                )
                .into());
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// A job's stdout or stderr, cut into lines for its [`JobOutput`] as the
/// guest writes (a line longer than [`MAX_LINE_BYTES`] in pieces). Clones
/// share the stream, as WASI's handles to one stream must.
#[derive(Clone)]
pub(crate) struct JobLines {
    inner: Arc<Mutex<LineState>>,
}

struct LineState {
    output: Arc<dyn JobOutput>,
    container: String,
    partial: Vec<u8>,
}

impl JobLines {
    /// Lines of `container` (the job's name) to `output`.
    pub fn new(output: Arc<dyn JobOutput>, container: &str) -> Self {
        Self {
            inner: Arc::new(Mutex::new(LineState {
                output,
                container: container.to_string(),
                partial: Vec::new(),
            })),
        }
    }

    /// Passes on every complete line of `bytes` (with what came before).
    fn write(&self, mut bytes: &[u8]) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            let (line, rest) = (&bytes[..newline], &bytes[newline + 1..]);
            if state.partial.is_empty() {
                state.emit(line);
            } else {
                let mut whole = std::mem::take(&mut state.partial);
                whole.extend_from_slice(line);
                state.emit(&whole);
            }
            bytes = rest;
        }
        state.partial.extend_from_slice(bytes);
        while state.partial.len() >= MAX_LINE_BYTES {
            // At a character's boundary, so that no piece ends in half of
            // one (bytes that are not UTF-8 at all are cut where they are).
            let cut = match std::str::from_utf8(&state.partial[..MAX_LINE_BYTES]) {
                Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
                _ => MAX_LINE_BYTES,
            };
            let rest = state.partial.split_off(cut);
            let line = std::mem::replace(&mut state.partial, rest);
            state.emit(&line);
        }
    }

    /// Passes on the last line when it had no newline.
    pub fn finish(&self) {
        let mut state = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let line = std::mem::take(&mut state.partial);
        if !line.is_empty() {
            state.emit(&line);
        }
    }
}

impl LineState {
    fn emit(&self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        self.output
            .line(&self.container, &String::from_utf8_lossy(line));
    }
}

impl wasmtime_wasi::cli::IsTerminal for JobLines {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for JobLines {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn wasmtime_wasi::p2::OutputStream> {
        Box::new(self.clone())
    }
}

#[async_trait]
impl wasmtime_wasi::p2::OutputStream for JobLines {
    fn write(&mut self, bytes: bytes::Bytes) -> wasmtime_wasi::p2::StreamResult<()> {
        JobLines::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> wasmtime_wasi::p2::StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> wasmtime_wasi::p2::StreamResult<usize> {
        Ok(WRITE_PERMIT)
    }
}

#[async_trait]
impl wasmtime_wasi::p2::Pollable for JobLines {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for JobLines {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        JobLines::write(&self, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_name_a_module_in_the_source_the_workspace_or_at_a_pinned_url() {
        assert_eq!(ModuleRef::parse("debian:12"), None);
        assert_eq!(
            ModuleRef::parse("wasm:tools/lint.wasm"),
            Some(Ok(ModuleRef::Source("tools/lint.wasm".into())))
        );
        assert_eq!(
            ModuleRef::parse("wasm:workspace:out/tool.wasm"),
            Some(Ok(ModuleRef::Workspace("out/tool.wasm".into())))
        );
        let digest = "ab".repeat(32);
        let Some(Ok(ModuleRef::Url { url, sha256 })) =
            ModuleRef::parse(&format!("wasm:https://example.com/t.wasm@sha256:{digest}"))
        else {
            panic!("a pinned URL parses");
        };
        assert_eq!(url.as_str(), "https://example.com/t.wasm");
        assert_eq!(sha256, [0xab; 32]);
        for (bad, says) in [
            ("wasm:https://example.com/t.wasm", "pinned by its digest"),
            (
                "wasm:https://example.com/t.wasm@sha256:abc",
                "64 hex digits",
            ),
            (
                &format!("wasm:http://example.com/t.wasm@sha256:{digest}"),
                "must be https",
            ),
            ("wasm:/etc/passwd", "must be relative"),
            ("wasm:../x.wasm", "'..'"),
            ("wasm:workspace:a/../../x.wasm", "'..'"),
            ("wasm:", "must name a file"),
            ("wasm:dir/", "must name a file"),
        ] {
            let err = ModuleRef::parse(bad).unwrap().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(
            ModuleRef::parse(&format!(
                "wasm:http://127.0.0.1:8080/t.wasm@sha256:{digest}"
            ))
            .unwrap()
            .is_ok()
        );
    }

    struct Collected(Mutex<Vec<String>>);

    impl JobOutput for Collected {
        fn line(&self, _: &str, line: &str) {
            self.0.lock().unwrap().push(line.to_string());
        }
    }

    #[test]
    fn output_is_cut_into_lines_across_writes_and_long_lines_into_pieces() {
        let collected = Arc::new(Collected(Mutex::default()));
        let lines = JobLines::new(collected.clone(), "job");
        lines.write(b"one\ntw");
        lines.write(b"o\r\nthree");
        lines.write(&vec![b'x'; MAX_LINE_BYTES * 2 + 1]);
        lines.finish();
        let got = collected.0.lock().unwrap().clone();
        assert_eq!(&got[..2], ["one", "two"]);
        assert_eq!(got[2].len(), MAX_LINE_BYTES);
        assert!(got[2].starts_with("threexx"));
        assert_eq!(got.len(), 5, "three, two full pieces, the rest");
        assert_eq!(
            got.iter().map(String::len).sum::<usize>(),
            5 + MAX_LINE_BYTES * 2 + 1 + 6
        );
        // A character across the cut stays whole, in the next piece.
        let collected = Arc::new(Collected(Mutex::default()));
        let lines = JobLines::new(collected.clone(), "job");
        let mut long = vec![b'x'; MAX_LINE_BYTES - 1];
        long.extend_from_slice("é".as_bytes());
        lines.write(&long);
        lines.finish();
        let got = collected.0.lock().unwrap().clone();
        assert_eq!(got, ["x".repeat(MAX_LINE_BYTES - 1), "é".to_string()]);
    }
}
