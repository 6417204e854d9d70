//! Jobs, their containers, and groups of runnables: Brigade's `Job`,
//! `Container`, `SerialGroup` and `ConcurrentGroup`; and services (Mizzen's
//! addition, brigadier.js's `Service`): containers that live as long as the
//! event and that its jobs share.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::pin::Pin;
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::executor::{submit, try_join_all};
use crate::host::{self, HostError, op};
use crate::logger::Logger;

/// A job's default timeout, as in Brigade: 15 minutes.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 900;

/// The phase a job ended in (Brigade's phases).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    /// Accepted, waiting to be scheduled.
    Pending,
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Ended well.
    Succeeded,
    /// The primary container failed.
    Failed,
    /// Stopped while it ran.
    Aborted,
    /// Stopped before it started.
    Canceled,
    /// Ran past its `timeout_seconds`.
    TimedOut,
    /// Could not be scheduled (or its image could not be pulled).
    SchedulingFailed,
    /// Anything else.
    #[serde(other)]
    Unknown,
}

impl Phase {
    /// The upper-case name, as in Brigade: `SUCCEEDED`, `TIMED_OUT`...
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "PENDING",
            Phase::Starting => "STARTING",
            Phase::Running => "RUNNING",
            Phase::Succeeded => "SUCCEEDED",
            Phase::Failed => "FAILED",
            Phase::Aborted => "ABORTED",
            Phase::Canceled => "CANCELED",
            Phase::TimedOut => "TIMED_OUT",
            Phase::SchedulingFailed => "SCHEDULING_FAILED",
            Phase::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When an image is pulled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub enum ImagePullPolicy {
    /// Only when it is not present (the default).
    #[default]
    IfNotPresent,
    /// Every time.
    Always,
}

/// When a sidecar or a service counts as ready (Mizzen's addition to
/// Brigade): the primary container starts once every sidecar that declares
/// readiness is ready, or the job fails after the timeout (60 s unless set);
/// a [`Service`](crate::Service)'s `start` returns once it is, or fails with
/// `not_ready`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Readiness {
    /// Ready once something accepts TCP connections on this port of the job's
    /// localhost (of the service's own container, for a service).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
    /// Ready once the container has exited with 0 (a one-shot setup).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub exited: bool,
    /// How long to wait, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<f64>,
}

impl Readiness {
    /// Ready once `port` accepts connections.
    pub fn tcp_port(port: u16) -> Self {
        Self {
            tcp_port: Some(port),
            ..Self::default()
        }
    }

    /// Ready once the container has exited with 0.
    pub fn exited() -> Self {
        Self {
            exited: true,
            ..Self::default()
        }
    }

    /// With a timeout other than 60 s.
    pub fn timeout_seconds(mut self, seconds: f64) -> Self {
        self.timeout_seconds = Some(seconds);
        self
    }
}

/// One container of a job, or a [`Service`](crate::Service)'s: Brigade's
/// `Container`, field for field, and Mizzen's additions.
///
/// The fields are public, as the JS object's properties are; the methods of
/// the same names set them and return the container, for chaining:
/// `Container::new("redis:7").readiness(Readiness::tcp_port(6379))`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    /// The OCI image reference — or, for a job's primary container, a WASI
    /// preview 1 module that runs in the sandbox instead of a container (a
    /// Wasm job): `wasm:PATH` (a file of the project's source),
    /// `wasm:workspace:PATH` (a file in the event's workspace) or
    /// `wasm:https://HOST/PATH@sha256:HEX` (fetched once, pinned by its
    /// digest). Its `command` + `arguments` are its argv, `environment` its
    /// environment, and the workspace and source mounts the only directories
    /// it may open (see the README's "Wasm jobs").
    pub image: String,
    /// `IfNotPresent` (the default) or `Always`.
    pub image_pull_policy: ImagePullPolicy,
    /// The process's working directory; empty for the image's default.
    pub working_directory: String,
    /// Overrides the image's entrypoint.
    pub command: Vec<String>,
    /// Arguments to the command.
    pub arguments: Vec<String>,
    /// Environment variables. A value that is exactly `${{ secrets.NAME }}`
    /// becomes the project's secret `NAME`.
    pub environment: BTreeMap<String, String>,
    /// A file of `VAR=value` lines (as `.env` tools write them) whose
    /// variables the container gets too, `environment` winning over it:
    /// `PATH` in the project's source, `workspace:PATH` in the event's
    /// workspace; empty for none. An error names the file and line.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub environment_file: String,
    /// Where to mount the event's shared workspace (needs the project's
    /// `useWorkspace`); empty for nowhere.
    pub workspace_mount_path: String,
    /// Where to mount a checkout of the project's source; empty for nowhere.
    pub source_mount_path: String,
    /// Who the process runs as: `root`, `nobody`, `UID` or `UID:GID`;
    /// empty for the default, `nobody` on every executor (`root` needs the
    /// project's `allowRoot`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Run privileged (needs the project's `allowPrivileged`).
    pub privileged: bool,
    /// Mount the host's Docker socket (needs `allowDockerSocketMount`).
    pub use_host_docker_socket: bool,
    /// For a sidecar or a service: when it counts as ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Readiness>,
    /// The containers this one starts after, by name: a sidecar's (or the
    /// primary's) among the job's sidecars, a service's among the event's
    /// services started before it. It starts once each is ready (its
    /// `readiness`, or else up for 3 s without exiting), and is not started
    /// (the job or service fails, naming it) when one is not.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// A service's or a sidecar's ports: `"5432"` declares a container port
    /// (the event's jobs reach it by name without more); `"8080:80"`
    /// publishes it on the host's loopback, `"0.0.0.0:8080:80"` on an
    /// address, `"0:6379"` on a free host port (a service's only), which
    /// [`Service::start`](crate::Service::start) returns and later jobs get
    /// as `MIZZEN_SERVICE_<NAME>_PORT_6379`. Host ports need the project's
    /// `allowHostPorts`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Volumes, as Docker Compose writes them: `"/path"` (the container's
    /// own, fresh each time), `"name:/path"` (shared by the event's jobs and
    /// services and removed when the event ends, or kept between events
    /// when the project declares the name in `spec.workerTemplate.volumes`),
    /// `"/host/path:/path"` (a host directory under the project's
    /// `allowedHostPaths`); `:ro` after any for read-only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
}

fn strings(items: impl IntoIterator<Item = impl Into<String>>) -> Vec<String> {
    items.into_iter().map(Into::into).collect()
}

impl Container {
    /// A container of `image`, with Brigade's defaults.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            ..Self::default()
        }
    }

    /// Sets `image_pull_policy`.
    pub fn image_pull_policy(mut self, policy: ImagePullPolicy) -> Self {
        self.image_pull_policy = policy;
        self
    }

    /// Sets `working_directory`.
    pub fn working_directory(mut self, path: impl Into<String>) -> Self {
        self.working_directory = path.into();
        self
    }

    /// Sets `command`.
    pub fn command(mut self, command: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.command = strings(command);
        self
    }

    /// Sets `arguments`.
    pub fn arguments(mut self, arguments: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.arguments = strings(arguments);
        self
    }

    /// Adds a variable to `environment`.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.environment.insert(name.into(), value.into());
        self
    }

    /// Sets `environment_file`.
    pub fn environment_file(mut self, path: impl Into<String>) -> Self {
        self.environment_file = path.into();
        self
    }

    /// Sets `workspace_mount_path`.
    pub fn workspace_mount_path(mut self, path: impl Into<String>) -> Self {
        self.workspace_mount_path = path.into();
        self
    }

    /// Sets `source_mount_path`.
    pub fn source_mount_path(mut self, path: impl Into<String>) -> Self {
        self.source_mount_path = path.into();
        self
    }

    /// Sets `user`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.user = user.into();
        self
    }

    /// Sets `privileged`.
    pub fn privileged(mut self, privileged: bool) -> Self {
        self.privileged = privileged;
        self
    }

    /// Sets `use_host_docker_socket`.
    pub fn use_host_docker_socket(mut self, mount: bool) -> Self {
        self.use_host_docker_socket = mount;
        self
    }

    /// Sets `readiness` (for a sidecar or a service).
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.readiness = Some(readiness);
        self
    }

    /// Sets `after`: the names this container starts after.
    pub fn after(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.after = strings(names);
        self
    }

    /// Sets `ports` (for a sidecar or a service).
    pub fn ports(mut self, ports: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.ports = strings(ports);
        self
    }

    /// Sets `volumes`.
    pub fn volumes(mut self, volumes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.volumes = strings(volumes);
        self
    }
}

/// Where a job must run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobHost {
    /// `linux` (the default when `None`) or `windows`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub os: Option<String>,
    /// Labels the node must carry.
    pub node_selector: BTreeMap<String, String>,
}

/// A job's artifacts (Mizzen's addition): files its primary container
/// produces, kept with the event for its later jobs (and for people: `mizzen
/// event artifacts`), and files earlier jobs of the event produced, brought
/// back before it starts. Not for a Wasm job, nor yet on the Kubernetes
/// executor.
///
/// The [`Job`] setters [`save_artifact`](Job::save_artifact),
/// [`save_artifact_on_failure`](Job::save_artifact_on_failure),
/// [`restore_artifact`](Job::restore_artifact) and
/// [`restore_artifact_to`](Job::restore_artifact_to) fill it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobArtifacts {
    /// Saved from the primary container when the job ends: when it
    /// succeeds, or also when it fails for those `on_failure`. At most 16.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub save: Vec<SaveArtifact>,
    /// Restored into the primary container before it starts; each must be
    /// saved by a job of the event started before this one (else the host
    /// refuses the job, `not_found`). At most 16.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restore: Vec<RestoreArtifact>,
}

impl JobArtifacts {
    /// Whether the job saves and restores nothing.
    pub fn is_empty(&self) -> bool {
        self.save.is_empty() && self.restore.is_empty()
    }
}

/// An artifact a job saves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SaveArtifact {
    /// Unique within the event (another job saving the same name is
    /// refused, `conflict`): letters, digits, `-`, `_` and `.`, not starting
    /// with `.`, at most 63 characters.
    pub name: String,
    /// A file or directory in the primary container, absolute or relative to
    /// its `working_directory`; its last components may be a pattern
    /// (`reports/*.xml`, `out/**/*.json`).
    pub path: String,
    /// Saved when the job fails too (test reports), not only when it
    /// succeeds.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub on_failure: bool,
}

impl SaveArtifact {
    /// The artifact `name`, saved from `path` when the job succeeds.
    pub fn new(name: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            on_failure: false,
        }
    }

    /// Sets `on_failure`: saved when the job fails too.
    pub fn on_failure(mut self, on_failure: bool) -> Self {
        self.on_failure = on_failure;
        self
    }
}

/// An artifact a job restores.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreArtifact {
    /// The name a job of the event started before this one saves it under.
    pub name: String,
    /// Where it goes in the primary container, absolute or relative to its
    /// `working_directory` (not a pattern); empty for where it was saved
    /// from.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
}

impl RestoreArtifact {
    /// The artifact `name`, restored where it was saved from.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            path: String::new(),
        }
    }

    /// Sets `path`: where the artifact goes instead.
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }
}

/// A directory kept between the project's events, by key (Mizzen's
/// addition): a package manager's or a compiler's cache. Before the job
/// starts it is restored from the entry of `key`, or, when `key` has none,
/// from the newest entry whose key starts with the first of `restore_keys`
/// that has one (on a miss it starts empty); after the job succeeds it is
/// saved under `key` when `key` had no entry (entries are never replaced).
/// The project's caches are held to its `cacheSize` limit (default 10 GiB),
/// the least recently used entries evicted. Not for a Wasm job, nor yet on
/// the Kubernetes executor.
///
/// ```no_run
/// use brigadier::{Job, JobCache};
///
/// let build = Job::new("build", "node:22")
///     .working_directory("/src")
///     .caches([JobCache::new("npm-3f2a9c", "/root/.npm").restore_keys(["npm-"])]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobCache {
    /// What the directory's content depends on (`npm-<hash of
    /// package-lock.json>`): 1 to 512 bytes without control characters.
    pub key: String,
    /// Key prefixes tried in order when `key` has no entry (at most 10, each
    /// as a key).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restore_keys: Vec<String>,
    /// The directory in the primary container, absolute or relative to its
    /// `working_directory` (not a pattern).
    pub path: String,
}

impl JobCache {
    /// The cache of directory `path` under `key`, without restore keys.
    pub fn new(key: impl Into<String>, path: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            restore_keys: Vec::new(),
            path: path.into(),
        }
    }

    /// Sets `restore_keys`: the key prefixes tried in order on a miss.
    pub fn restore_keys(mut self, keys: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.restore_keys = strings(keys);
        self
    }
}

/// A job: a primary container whose exit code decides it, and sidecars that
/// run beside it. Brigade's `Job`, field for field.
///
/// ```no_run
/// # async fn f() -> brigadier::Result<()> {
/// use brigadier::Job;
///
/// let test = Job::new("test", "debian:12")
///     .command(["sh", "-c"])
///     .arguments(["make test"])
///     .timeout_seconds(600);
/// test.run().await?;
/// brigadier::info!("output: {}", test.logs().await?);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// Unique within the event: `^[a-z][a-z\d-]*[a-z\d]$`, at most 63
    /// characters.
    pub name: String,
    /// The container whose exit code decides the job.
    pub primary_container: Container,
    /// Containers that run beside the primary, by name; stopped when it exits.
    pub sidecar_containers: BTreeMap<String, Container>,
    /// After this long the job ends `TIMED_OUT` (default 900).
    pub timeout_seconds: u64,
    /// Where the job must run.
    pub host: JobHost,
    /// When true, [`run`](Job::run) succeeds whatever phase the job ends in.
    pub fallible: bool,
    /// What the job keeps for later jobs of its event, and what it brings
    /// back from earlier ones (Mizzen's addition).
    pub artifacts: JobArtifacts,
    /// Directories kept between the project's events, by key (Mizzen's
    /// addition). At most 8, each a different directory.
    pub caches: Vec<JobCache>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobStart<'a> {
    name: &'a str,
    spec: JobSpec<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JobSpec<'a> {
    primary_container: &'a Container,
    sidecar_containers: &'a BTreeMap<String, Container>,
    timeout_seconds: u64,
    host: &'a JobHost,
    fallible: bool,
    #[serde(skip_serializing_if = "no_artifacts")]
    artifacts: &'a JobArtifacts,
    #[serde(skip_serializing_if = "no_caches")]
    caches: &'a [JobCache],
}

fn no_artifacts(artifacts: &&JobArtifacts) -> bool {
    artifacts.is_empty()
}

fn no_caches(caches: &&[JobCache]) -> bool {
    caches.is_empty()
}

#[derive(Serialize)]
struct JobRef<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct JobLogsRequest<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<&'a str>,
}

/// How a job or a service ended: what `job.wait` answers
/// ([`Service::wait`](crate::Service::wait) returns it).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct JobResult {
    /// The phase it ended in: `Succeeded`, `Failed`, `Aborted` (stopped while
    /// it ran), `Canceled`, `TimedOut` or `SchedulingFailed`.
    pub phase: Phase,
    /// The (primary) container's exit code, when it exited.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Why, when the phase does not say (a failed pull, the timeout).
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Deserialize)]
struct JobLogs {
    lines: Vec<String>,
}

impl Job {
    /// A job named `name` whose primary container runs `image`, with
    /// Brigade's defaults (900 s timeout, not fallible).
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            primary_container: Container::new(image),
            sidecar_containers: BTreeMap::new(),
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            host: JobHost::default(),
            fallible: false,
            artifacts: JobArtifacts::default(),
            caches: Vec::new(),
        }
    }

    /// Sets the primary container's `command`.
    pub fn command(mut self, command: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.primary_container.command = strings(command);
        self
    }

    /// Sets the primary container's `arguments`.
    pub fn arguments(mut self, arguments: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.primary_container.arguments = strings(arguments);
        self
    }

    /// Adds a variable to the primary container's `environment`.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.primary_container
            .environment
            .insert(name.into(), value.into());
        self
    }

    /// Sets the primary container's `working_directory`.
    pub fn working_directory(mut self, path: impl Into<String>) -> Self {
        self.primary_container.working_directory = path.into();
        self
    }

    /// Sets the primary container's `environment_file`.
    pub fn environment_file(mut self, path: impl Into<String>) -> Self {
        self.primary_container.environment_file = path.into();
        self
    }

    /// Sets the primary container's `workspace_mount_path`.
    pub fn workspace_mount_path(mut self, path: impl Into<String>) -> Self {
        self.primary_container.workspace_mount_path = path.into();
        self
    }

    /// Sets the primary container's `source_mount_path`.
    pub fn source_mount_path(mut self, path: impl Into<String>) -> Self {
        self.primary_container.source_mount_path = path.into();
        self
    }

    /// Replaces the primary container.
    pub fn primary_container(mut self, container: Container) -> Self {
        self.primary_container = container;
        self
    }

    /// Adds a sidecar container.
    pub fn sidecar(mut self, name: impl Into<String>, container: Container) -> Self {
        self.sidecar_containers.insert(name.into(), container);
        self
    }

    /// Sets `timeout_seconds`.
    pub fn timeout_seconds(mut self, seconds: u64) -> Self {
        self.timeout_seconds = seconds;
        self
    }

    /// Sets `fallible`.
    pub fn fallible(mut self, fallible: bool) -> Self {
        self.fallible = fallible;
        self
    }

    /// Sets `host`.
    pub fn host(mut self, host: JobHost) -> Self {
        self.host = host;
        self
    }

    /// Saves the artifact `name` from `path` of the primary container when
    /// the job succeeds, for later jobs of the event
    /// ([`restore_artifact`](Job::restore_artifact)) and for people.
    /// `path` is absolute or relative to the primary container's
    /// `working_directory`, and its last components may be a pattern
    /// (`reports/*.xml`). `name` is unique within the event: letters,
    /// digits, `-`, `_` and `.`, not starting with `.`, at most 63
    /// characters. The event's artifacts are held to the project's
    /// `artifactSize` limit (default 10 GiB). Not for a Wasm job.
    pub fn save_artifact(mut self, name: impl Into<String>, path: impl Into<String>) -> Self {
        self.artifacts.save.push(SaveArtifact::new(name, path));
        self
    }

    /// As [`save_artifact`](Job::save_artifact), but saved when the job
    /// fails too, not only when it succeeds (test reports, logs).
    pub fn save_artifact_on_failure(
        mut self,
        name: impl Into<String>,
        path: impl Into<String>,
    ) -> Self {
        self.artifacts
            .save
            .push(SaveArtifact::new(name, path).on_failure(true));
        self
    }

    /// Restores the artifact `name`, which a job of the event started
    /// before this one saves, into the primary container before it starts,
    /// where it was saved from. The host refuses the job (`not_found`) when
    /// no earlier job saves it.
    pub fn restore_artifact(mut self, name: impl Into<String>) -> Self {
        self.artifacts.restore.push(RestoreArtifact::new(name));
        self
    }

    /// As [`restore_artifact`](Job::restore_artifact), into `path` instead
    /// (absolute or relative to the primary container's
    /// `working_directory`; not a pattern).
    pub fn restore_artifact_to(mut self, name: impl Into<String>, path: impl Into<String>) -> Self {
        self.artifacts
            .restore
            .push(RestoreArtifact::new(name).path(path));
        self
    }

    /// Keeps the directory `path` of the primary container between the
    /// project's events under `key` (see [`JobCache`]): restored before the
    /// job starts from the entry of `key`, else from the newest entry whose
    /// key starts with the first of `restore_keys` that has one (empty on a
    /// miss), and saved after the job succeeds when `key` had no entry. At
    /// most 8 per job; a cache without restore keys is
    /// `job.caches.push(JobCache::new(key, path))`, or
    /// [`caches`](Job::caches).
    ///
    /// ```no_run
    /// # let lock_hash = "3f2a9c";
    /// let build = brigadier::Job::new("build", "node:22")
    ///     .working_directory("/src")
    ///     .cache(format!("npm-{lock_hash}"), ["npm-"], "/root/.npm")
    ///     .save_artifact("dist", "dist");
    /// ```
    pub fn cache(
        mut self,
        key: impl Into<String>,
        restore_keys: impl IntoIterator<Item = impl Into<String>>,
        path: impl Into<String>,
    ) -> Self {
        self.caches
            .push(JobCache::new(key, path).restore_keys(restore_keys));
        self
    }

    /// Sets `caches` (for caches built as [`JobCache`]s).
    pub fn caches(mut self, caches: impl IntoIterator<Item = JobCache>) -> Self {
        self.caches = caches.into_iter().collect();
        self
    }

    /// Sets `artifacts`.
    pub fn artifacts(mut self, artifacts: JobArtifacts) -> Self {
        self.artifacts = artifacts;
        self
    }

    /// A logger whose lines carry `[job: <name>]`.
    pub fn logger(&self) -> Logger {
        crate::logger().child(self.name.clone())
    }

    /// Runs the job: logs `Creating job <name>`, starts it (`job.start`) and
    /// waits for it to end (`job.wait`). `Ok` when it succeeded, or whatever
    /// its phase when it is `fallible`; otherwise an error whose message is
    /// brigadier.js's (`Job "<name>" failed`, `timed out`, `was aborted`,
    /// `was canceled before starting`, `scheduling failed`) and which gives
    /// the [`phase`](Error::phase), [`exit_code`](Error::exit_code) and
    /// [`reason`](Error::reason). A job the host refuses to start is an
    /// error `Error creating job "<name>": ...` with the host's
    /// [`code`](Error::code).
    ///
    /// Like every future, it does nothing until it is awaited (or run in a
    /// group); jobs awaited together, in a [`concurrent`] group or with
    /// [`try_join_all`](crate::try_join_all), run at the same time.
    #[track_caller]
    pub fn run(&self) -> impl Future<Output = Result<()>> + '_ {
        let at = Location::caller();
        async move { self.execute().await.map_err(|e| e.located(at)) }
    }

    async fn execute(&self) -> Result<()> {
        let logger = self.logger();
        logger.info(format_args!("Creating job {}", self.name));
        let start = JobStart {
            name: &self.name,
            spec: JobSpec {
                primary_container: &self.primary_container,
                sidecar_containers: &self.sidecar_containers,
                timeout_seconds: self.timeout_seconds,
                host: &self.host,
                fallible: self.fallible,
                artifacts: &self.artifacts,
                caches: &self.caches,
            },
        };
        if let Err(e) = host::call_unit(op::JOB_START, &start) {
            let message = format!("Error creating job \"{}\": {}", self.name, e.message);
            return Err(Error::host(e, None).with_message(message));
        }
        let ticket =
            submit(op::JOB_WAIT, &JobRef { name: &self.name }).map_err(|e| Error::host(e, None))?;
        let result = ticket.await.map_err(|e| Error::host(e, None))?;
        let result: JobResult = serde_json::from_value(result).map_err(|e| {
            Error::internal(format!(
                "the result of job \"{}\" could not be read: {e}",
                self.name
            ))
        })?;
        // The host logs how the job ended (with its exit code), once.
        if self.fallible || result.phase == Phase::Succeeded {
            return Ok(());
        }
        Err(Error::job(
            &self.name,
            result.phase,
            result.exit_code,
            result.reason.filter(|r| !r.is_empty()),
        ))
    }

    /// The primary container's output so far, its lines joined with `"\n"`
    /// (`job.logs`): wait for the job first to read all of it.
    #[track_caller]
    pub fn logs(&self) -> impl Future<Output = Result<String>> + '_ {
        read_logs(&self.name, None, Location::caller())
    }

    /// A sidecar's output so far, its lines joined with `"\n"`.
    #[track_caller]
    pub fn sidecar_logs<'a>(
        &'a self,
        container: &'a str,
    ) -> impl Future<Output = Result<String>> + 'a {
        read_logs(&self.name, Some(container), Location::caller())
    }

    /// Stops the job (`job.cancel`): a running job ends `ABORTED`, one not
    /// started yet `CANCELED`, one that has ended is left as it is.
    #[track_caller]
    pub fn cancel(&self) -> Result<()> {
        let at = Location::caller();
        host::call_unit(op::JOB_CANCEL, &JobRef { name: &self.name })
            .map_err(|e| Error::host(e, Some(at)))
    }
}

/// The output of the job or service `name` so far (of its sidecar
/// `container`, when given), its lines joined with `"\n"` (`job.logs`).
async fn read_logs(
    name: &str,
    container: Option<&str>,
    at: &'static Location<'static>,
) -> Result<String> {
    let request = JobLogsRequest { name, container };
    let ticket = submit(op::JOB_LOGS, &request).map_err(|e| Error::host(e, Some(at)))?;
    let result = ticket.await.map_err(|e| Error::host(e, Some(at)))?;
    let logs: JobLogs = serde_json::from_value(result).map_err(|e| {
        Error::internal(format!("the logs of \"{name}\" could not be read: {e}")).located(at)
    })?;
    Ok(logs.lines.join("\n"))
}

/// A container that lives as long as the event (or until
/// [`stop`](Service::stop)), started once and reached by its name from every
/// job of the event, on the event's own network, where no other event's
/// containers reach it: one database for a sequence of jobs instead of a
/// sidecar in each. Its container has a job's fields (not a Wasm image).
///
/// A service is named like a job: the two share the event's names, and its
/// [`wait`](Service::wait), [`stop`](Service::stop) and
/// [`logs`](Service::logs) are `job.wait`, `job.cancel` and `job.logs`.
///
/// ```no_run
/// # async fn f() -> brigadier::Result<()> {
/// use brigadier::{Job, Readiness, Service};
///
/// let db = Service::new("db", "postgres:16")
///     .env("POSTGRES_PASSWORD", "test")
///     .readiness(Readiness::tcp_port(5432))
///     .ports(["0:5432"]);
/// let ready = db.start().await?; // once db accepts connections
/// brigadier::info!("db is on the host's port {:?}", ready.port(5432));
/// Job::new("test", "python:3").run().await?; // reaches db:5432
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Unique among the event's jobs and services, and the host name its jobs
    /// reach it by: `^[a-z][a-z\d-]*[a-z\d]$`, at most 63 characters.
    pub name: String,
    /// What it runs.
    pub container: Container,
}

/// What [`Service::start`] returns once the service is ready.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct ServiceReady {
    /// The host port each published container port got, by container port
    /// as text (`"5432": 49153`), as the host sends it.
    pub ports: BTreeMap<String, u16>,
}

impl ServiceReady {
    /// The host port `container_port` was published on, if it was.
    pub fn port(&self, container_port: u16) -> Option<u16> {
        self.ports.get(&container_port.to_string()).copied()
    }
}

#[derive(Serialize)]
struct ServiceStart<'a> {
    name: &'a str,
    container: &'a Container,
}

impl Service {
    /// A service named `name` that runs `image`, with Brigade's defaults for
    /// its container.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            container: Container::new(image),
        }
    }

    /// Sets the container's `command`.
    pub fn command(mut self, command: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.container.command = strings(command);
        self
    }

    /// Sets the container's `arguments`.
    pub fn arguments(mut self, arguments: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.container.arguments = strings(arguments);
        self
    }

    /// Adds a variable to the container's `environment`.
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.container.environment.insert(name.into(), value.into());
        self
    }

    /// Sets the container's `working_directory`.
    pub fn working_directory(mut self, path: impl Into<String>) -> Self {
        self.container.working_directory = path.into();
        self
    }

    /// Sets the container's `environment_file`.
    pub fn environment_file(mut self, path: impl Into<String>) -> Self {
        self.container.environment_file = path.into();
        self
    }

    /// Sets the container's `workspace_mount_path`.
    pub fn workspace_mount_path(mut self, path: impl Into<String>) -> Self {
        self.container.workspace_mount_path = path.into();
        self
    }

    /// Sets the container's `source_mount_path`.
    pub fn source_mount_path(mut self, path: impl Into<String>) -> Self {
        self.container.source_mount_path = path.into();
        self
    }

    /// Sets the container's `user`.
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.container.user = user.into();
        self
    }

    /// Sets the container's `readiness`: when [`start`](Service::start)
    /// returns.
    pub fn readiness(mut self, readiness: Readiness) -> Self {
        self.container.readiness = Some(readiness);
        self
    }

    /// Sets the container's `after`: the services, started before this one,
    /// that must be ready before it starts.
    pub fn after(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.container.after = strings(names);
        self
    }

    /// Sets the container's `ports`.
    pub fn ports(mut self, ports: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.container.ports = strings(ports);
        self
    }

    /// Sets the container's `volumes` (a named one is how a service keeps
    /// its data where the event's jobs, or later events, find it).
    pub fn volumes(mut self, volumes: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.container.volumes = strings(volumes);
        self
    }

    /// Replaces the container (for the fields without a setter here).
    pub fn container(mut self, container: Container) -> Self {
        self.container = container;
        self
    }

    /// A logger whose lines carry `[job: <name>]`, as a job's do: the host
    /// lists a service among the event's jobs.
    pub fn logger(&self) -> Logger {
        crate::logger().child(self.name.clone())
    }

    /// Starts the service (`service.start`): logs `Starting service <name>`
    /// and waits until it is ready, once the services it comes `after` are
    /// ready and then its `readiness` (without one, up for 3 s without
    /// exiting). Returns the host port each published container port got;
    /// jobs started from then on get each as
    /// `MIZZEN_SERVICE_<NAME>_PORT_<PORT>`. Other futures go on meanwhile.
    ///
    /// A service that ends, fails or times out first, or one whose `after`
    /// service was not ready, is an error `Error starting service "<name>":
    /// ...` with [`code`](Error::code) `not_ready`; one the host refuses (a
    /// policy, a name used twice) has that refusal's code.
    #[track_caller]
    pub fn start(&self) -> impl Future<Output = Result<ServiceReady>> + '_ {
        let at = Location::caller();
        async move { self.begin().await.map_err(|e| e.located(at)) }
    }

    async fn begin(&self) -> Result<ServiceReady> {
        self.logger()
            .info(format_args!("Starting service {}", self.name));
        // The host's message, led by the service's name as brigadier.js's
        // is, keeping the host's code.
        let not_started = |e: HostError| {
            let message = format!("Error starting service \"{}\": {}", self.name, e.message);
            Error::host(e, None).with_message(message)
        };
        let request = ServiceStart {
            name: &self.name,
            container: &self.container,
        };
        let ticket = submit(op::SERVICE_START, &request).map_err(not_started)?;
        let ready = ticket.await.map_err(not_started)?;
        serde_json::from_value(ready).map_err(|e| {
            Error::internal(format!(
                "the readiness of service \"{}\" could not be read: {e}",
                self.name
            ))
        })
    }

    /// Stops the service (`job.cancel`); it would otherwise run until the
    /// event ends. It then ends `ABORTED` (`CANCELED` when it had not
    /// started yet).
    #[track_caller]
    pub fn stop(&self) -> Result<()> {
        let at = Location::caller();
        host::call_unit(op::JOB_CANCEL, &JobRef { name: &self.name })
            .map_err(|e| Error::host(e, Some(at)))
    }

    /// Waits until the service ends and says how (`job.wait`): `Aborted`
    /// once stopped. A service that did not succeed is not an error here;
    /// only the host's refusal is (`not_found` for one never started).
    #[track_caller]
    pub fn wait(&self) -> impl Future<Output = Result<JobResult>> + '_ {
        let at = Location::caller();
        async move {
            let ticket = submit(op::JOB_WAIT, &JobRef { name: &self.name })
                .map_err(|e| Error::host(e, Some(at)))?;
            let result = ticket.await.map_err(|e| Error::host(e, Some(at)))?;
            let mut result: JobResult = serde_json::from_value(result).map_err(|e| {
                Error::internal(format!(
                    "the result of service \"{}\" could not be read: {e}",
                    self.name
                ))
                .located(at)
            })?;
            // As a job's error does: an empty reason is none.
            result.reason = result.reason.filter(|r| !r.is_empty());
            Ok(result)
        }
    }

    /// The service's output so far, its lines joined with `"\n"`
    /// (`job.logs`).
    #[track_caller]
    pub fn logs(&self) -> impl Future<Output = Result<String>> + '_ {
        read_logs(&self.name, None, Location::caller())
    }
}

/// The future a [`Runnable`] returns.
pub type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<()>> + 'a>>;

/// Anything that can be run: jobs, groups, or types of your own.
pub trait Runnable {
    /// Runs it to completion. (Jobs and groups have an inherent `run` of
    /// their own, which is what `job.run()` calls: the same, located.)
    fn run(&self) -> RunFuture<'_>;
}

impl Runnable for Job {
    fn run(&self) -> RunFuture<'_> {
        Box::pin(self.execute())
    }
}

impl<T: Runnable + ?Sized> Runnable for &T {
    fn run(&self) -> RunFuture<'_> {
        Runnable::run(&**self)
    }
}

impl<T: Runnable + ?Sized> Runnable for Box<T> {
    fn run(&self) -> RunFuture<'_> {
        Runnable::run(&**self)
    }
}

impl<T: Runnable + ?Sized> Runnable for Rc<T> {
    fn run(&self) -> RunFuture<'_> {
        Runnable::run(&**self)
    }
}

/// Runnables run one after another, stopping at the first failure: Brigade's
/// `SerialGroup`. Made by [`sequence`] or [`sequence!`](crate::sequence!).
#[derive(Default)]
pub struct SerialGroup<'a> {
    runnables: Vec<Box<dyn Runnable + 'a>>,
}

/// Runnables run at the same time: Brigade's `ConcurrentGroup`. It fails as
/// soon as one fails (the others' results are then not waited for). Made by
/// [`concurrent`] or [`concurrent!`](crate::concurrent!).
#[derive(Default)]
pub struct ConcurrentGroup<'a> {
    runnables: Vec<Box<dyn Runnable + 'a>>,
}

macro_rules! group {
    ($group:ident) => {
        impl<'a> $group<'a> {
            /// An empty group.
            pub fn new() -> Self {
                Self {
                    runnables: Vec::new(),
                }
            }

            /// Adds a runnable (a job, `&job`, a group, a `Box<dyn Runnable>`...).
            pub fn add(&mut self, runnable: impl Runnable + 'a) -> &mut Self {
                self.runnables.push(Box::new(runnable));
                self
            }

            /// Adds a runnable and returns the group.
            pub fn with(mut self, runnable: impl Runnable + 'a) -> Self {
                self.runnables.push(Box::new(runnable));
                self
            }

            /// How many runnables the group holds.
            pub fn len(&self) -> usize {
                self.runnables.len()
            }

            /// Whether the group holds none.
            pub fn is_empty(&self) -> bool {
                self.runnables.is_empty()
            }

            /// Runs the group to completion.
            #[track_caller]
            pub fn run(&self) -> impl Future<Output = Result<()>> + '_ {
                let at = Location::caller();
                async move { Runnable::run(self).await.map_err(|e| e.located(at)) }
            }
        }

        impl<'a, R: Runnable + 'a> FromIterator<R> for $group<'a> {
            fn from_iter<I: IntoIterator<Item = R>>(runnables: I) -> Self {
                Self {
                    runnables: runnables
                        .into_iter()
                        .map(|r| Box::new(r) as Box<dyn Runnable + 'a>)
                        .collect(),
                }
            }
        }
    };
}

group!(SerialGroup);
group!(ConcurrentGroup);

impl Runnable for SerialGroup<'_> {
    fn run(&self) -> RunFuture<'_> {
        Box::pin(async move {
            for runnable in &self.runnables {
                Runnable::run(&**runnable).await?;
            }
            Ok(())
        })
    }
}

impl Runnable for ConcurrentGroup<'_> {
    fn run(&self) -> RunFuture<'_> {
        Box::pin(async move {
            try_join_all(self.runnables.iter().map(|r| Runnable::run(&**r)))
                .await
                .map(drop)
        })
    }
}

/// A group that runs `runnables` one after another, stopping at the first
/// failure. The runnables are of one type (`[&build, &test]`, a `Vec` of
/// groups...); [`sequence!`](crate::sequence!) takes runnables of any types.
pub fn sequence<'a, R: Runnable + 'a>(runnables: impl IntoIterator<Item = R>) -> SerialGroup<'a> {
    runnables.into_iter().collect()
}

/// A group that runs `runnables` at the same time. The runnables are of one
/// type; [`concurrent!`](crate::concurrent!) takes runnables of any types.
pub fn concurrent<'a, R: Runnable + 'a>(
    runnables: impl IntoIterator<Item = R>,
) -> ConcurrentGroup<'a> {
    runnables.into_iter().collect()
}

/// A [`SerialGroup`] of runnables of any types: `sequence![&build, tests]`.
#[macro_export]
macro_rules! sequence {
    ($($runnable:expr),* $(,)?) => {
        $crate::SerialGroup::new()$(.with($runnable))*
    };
}

/// A [`ConcurrentGroup`] of runnables of any types:
/// `concurrent![sequence![&a, &b], &c]`.
#[macro_export]
macro_rules! concurrent {
    ($($runnable:expr),* $(,)?) => {
        $crate::ConcurrentGroup::new()$(.with($runnable))*
    };
}
