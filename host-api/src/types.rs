//! The JSON shapes that cross the boundary. Field names follow Brigade v2's
//! wire format (camelCase), so an event or a job spec reads the same here as
//! in Brigade's `event.json` and job API.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::HostError;

/// Brigade's schema caps an event summary at 4096 characters; a longer one is
/// an error rather than a silent cut, because gateways display it as is.
pub const SUMMARY_MAX_CHARS: usize = 4096;

/// The event a worker handles: the contents of Brigade's `event.json`. Every
/// key is always present, as in Brigade (maps may be `null`, strings `""`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The event's id (a UUID).
    pub id: String,
    /// The project whose worker handles this copy of the event.
    pub project: EventProject,
    /// Who created the event, e.g. `brigade.sh/cli`.
    pub source: String,
    /// What happened, e.g. `exec`; meaning depends on the source.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Qualifiers the subscription matched exactly.
    pub qualifiers: Option<BTreeMap<String, String>>,
    /// Labels the subscription matched.
    pub labels: Option<BTreeMap<String, String>>,
    /// A short title for lists; may be empty.
    pub short_title: String,
    /// A longer title; may be empty.
    pub long_title: String,
    /// The payload, an opaque string (scripts `JSON.parse` it themselves).
    pub payload: String,
    /// The worker's settings for this event.
    pub worker: EventWorker,
}

impl Event {
    /// The event as the script sees it: without the secrets it may not read
    /// and without the list of those it may (borrowed when there is none:
    /// every event is serialised for its script, in the hot path).
    pub fn script_view(&self) -> std::borrow::Cow<'_, Event> {
        let Some(allowed) = &self.project.script_secrets else {
            return std::borrow::Cow::Borrowed(self);
        };
        let mut event = self.clone();
        event.project.script_secrets = None;
        event.project.secrets.retain(|key, _| allowed.contains(key));
        std::borrow::Cow::Owned(event)
    }

    /// An event with Brigade's defaults: no secrets, qualifiers or labels,
    /// empty titles and payload, log level INFO, config files in `.brigade`,
    /// no git settings and no API (a local run has none).
    pub fn new(
        id: impl Into<String>,
        project_id: impl Into<String>,
        source: impl Into<String>,
        event_type: impl Into<String>,
    ) -> Self {
        Self {
            id: id.into(),
            project: EventProject {
                id: project_id.into(),
                kubernetes: ProjectKubernetes::default(),
                secrets: BTreeMap::new(),
                script_secrets: None,
            },
            source: source.into(),
            event_type: event_type.into(),
            qualifiers: None,
            labels: None,
            short_title: String::new(),
            long_title: String::new(),
            payload: String::new(),
            worker: EventWorker {
                api_address: String::new(),
                api_token: String::new(),
                log_level: LogLevel::Info,
                config_files_directory: ".brigade".into(),
                default_config_files: None,
                git: None,
            },
        }
    }
}

/// The project part of an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventProject {
    /// The project's id.
    pub id: String,
    /// Where the project's Kubernetes resources live (empty when it has none).
    pub kubernetes: ProjectKubernetes,
    /// The project's secrets, and only this project's.
    pub secrets: BTreeMap<String, String>,
    /// Which of `secrets` the script may read, when the project restricts
    /// them (`spec.workerTemplate.scriptSecrets`); the others reach its jobs
    /// only by reference. The host's alone: [`Event::script_view`] removes
    /// it, with the secrets the script may not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script_secrets: Option<BTreeSet<String>>,
}

impl EventProject {
    /// Whether the script may read the secret `key`.
    pub fn script_may_read(&self, key: &str) -> bool {
        self.script_secrets
            .as_ref()
            .is_none_or(|allowed| allowed.contains(key))
    }
}

/// The Kubernetes settings of a project, as Brigade exposed them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProjectKubernetes {
    /// The namespace of the project's jobs; empty when no cluster is used.
    pub namespace: String,
}

/// The worker part of an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EventWorker {
    /// The API server's address; empty in a local run, which has none.
    pub api_address: String,
    /// The worker's API token; empty in a local run.
    pub api_token: String,
    /// The level below which `logger.*` lines are dropped.
    pub log_level: LogLevel,
    /// Where the project's config files live, relative to its source.
    pub config_files_directory: String,
    /// Config files given inline in the project definition.
    pub default_config_files: Option<BTreeMap<String, String>>,
    /// The project's git settings, with the event's overrides applied.
    pub git: Option<GitConfig>,
}

/// Where a project's source lives.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GitConfig {
    /// The repository URL.
    #[serde(rename = "cloneURL")]
    pub clone_url: String,
    /// A commit to check out; wins over `ref`.
    pub commit: String,
    /// A branch or tag (`refs/heads/x`, `refs/tags/x` or a short name).
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Whether to check out submodules too.
    pub init_submodules: bool,
}

/// Log levels, ordered from most to least severe. Upper case on the wire (as
/// Brigade's `worker.logLevel`); lower case is accepted too.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    /// Something failed.
    #[serde(alias = "error")]
    Error,
    /// Something looks wrong.
    #[serde(alias = "warn")]
    Warn,
    /// The default.
    #[default]
    #[serde(alias = "info")]
    Info,
    /// Details for whoever debugs the script.
    #[serde(alias = "debug")]
    Debug,
}

impl LogLevel {
    /// The upper-case name, as printed in log lines.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "ERROR",
            LogLevel::Warn => "WARN",
            LogLevel::Info => "INFO",
            LogLevel::Debug => "DEBUG",
        }
    }

    /// Parses a level in any case (`info`, `INFO`, `Info`).
    pub fn parse(text: &str) -> Option<LogLevel> {
        match text.to_ascii_uppercase().as_str() {
            "ERROR" => Some(LogLevel::Error),
            "WARN" => Some(LogLevel::Warn),
            "INFO" => Some(LogLevel::Info),
            "DEBUG" => Some(LogLevel::Debug),
            _ => None,
        }
    }

    /// Whether a line at `self` passes a filter set at `threshold`.
    pub fn passes(self, threshold: LogLevel) -> bool {
        self <= threshold
    }
}

/// Request of [`crate::Op::Log`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LogRequest {
    /// The line's level.
    pub level: LogLevel,
    /// The text, one line or several.
    pub message: String,
    /// Set when the line is about a job (Brigade's `[job: name]` prefix).
    #[serde(default)]
    pub job: Option<String>,
    /// True for `console.*` output: printed as is and never filtered by level,
    /// as in Brigade's worker. False for `logger.*`: timestamped, levelled and
    /// filtered.
    #[serde(default)]
    pub console: bool,
}

/// Request of [`crate::Op::SummarySet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SummaryRequest {
    /// The summary text.
    pub text: String,
}

/// Request of [`crate::Op::Exit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExitRequest {
    /// 0 for success.
    pub code: i32,
}

/// Request of [`crate::Op::ScriptError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScriptError {
    /// How the error escaped.
    pub kind: ScriptErrorKind,
    /// The error, led by its location when known: `brigade.js:3:9: Error: boom`.
    pub message: String,
    /// The JavaScript stack, when there is one.
    #[serde(default)]
    pub stack: Option<String>,
}

/// How a script error escaped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptErrorKind {
    /// Thrown while the script's top level ran.
    Uncaught,
    /// A promise rejected and nothing handled it (including a handler that
    /// threw or rejected).
    UnhandledRejection,
}

/// Request of [`crate::Op::SecretGet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRequest {
    /// The secret's key.
    pub key: String,
}

/// Reply of [`crate::Op::SecretGet`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretValue {
    /// The secret's value.
    pub value: String,
}

/// Request of [`crate::Op::JobStart`]: Brigade's job body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobStartRequest {
    /// Unique within the event; `^[a-z][a-z\d-]*[a-z\d]$`, at most 63
    /// characters.
    pub name: String,
    /// What to run.
    pub spec: JobSpec,
}

/// Default job timeout, as in Brigade's brigadier: 15 minutes.
pub const DEFAULT_JOB_TIMEOUT_SECONDS: f64 = 900.0;

fn default_job_timeout() -> f64 {
    DEFAULT_JOB_TIMEOUT_SECONDS
}

/// A job: a primary container that decides the outcome, and sidecars that are
/// stopped when it exits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSpec {
    /// The container whose exit code decides the job.
    pub primary_container: ContainerSpec,
    /// Containers that run beside the primary, by name.
    #[serde(default)]
    pub sidecar_containers: BTreeMap<String, ContainerSpec>,
    /// After this long the job ends TIMED_OUT.
    #[serde(default = "default_job_timeout")]
    pub timeout_seconds: f64,
    /// Where the job must run.
    #[serde(default)]
    pub host: JobHost,
    /// When true, the job's failure does not fail `run()`.
    #[serde(default)]
    pub fallible: bool,
    /// What the job keeps for later jobs of its event, and what it brings
    /// back from earlier ones. (Mizzen's addition.)
    #[serde(default, skip_serializing_if = "JobArtifacts::is_empty")]
    pub artifacts: JobArtifacts,
    /// Directories kept between the project's events, by key. (Mizzen's
    /// addition.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caches: Vec<JobCache>,
}

/// A job's artifacts: files it produces, kept with its event, and files
/// earlier jobs of the event produced, restored before it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobArtifacts {
    /// Saved from the primary container when the job ends.
    #[serde(default)]
    pub save: Vec<SaveArtifact>,
    /// Restored into the primary container before it starts.
    #[serde(default)]
    pub restore: Vec<RestoreArtifact>,
}

impl JobArtifacts {
    /// Whether the job saves and restores nothing.
    pub fn is_empty(&self) -> bool {
        self.save.is_empty() && self.restore.is_empty()
    }
}

/// An artifact a job saves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SaveArtifact {
    /// Its name, unique within the event.
    pub name: String,
    /// A file or directory in the primary container (absolute, or relative
    /// to its working directory); its last components may be a pattern
    /// (`reports/*.xml`, `out/**/*.json`).
    pub path: String,
    /// Saved when the job fails too (test reports), not only when it
    /// succeeds.
    #[serde(default)]
    pub on_failure: bool,
}

/// An artifact a job restores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RestoreArtifact {
    /// The name an earlier job of the event saved it under.
    pub name: String,
    /// Where it goes in the primary container; empty for where it was
    /// saved from.
    #[serde(default)]
    pub path: String,
}

/// A directory kept between the project's events: restored before the job
/// starts from the entry of its key (or, on a miss, the newest entry whose
/// key starts with one of its restore keys, tried in order), and saved
/// under its key when the job succeeds after a miss.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobCache {
    /// The entry's key: what the directory's content depends on
    /// (`npm-<hash of package-lock.json>`).
    pub key: String,
    /// Key prefixes tried in order when `key` has no entry.
    #[serde(default)]
    pub restore_keys: Vec<String>,
    /// The directory in the primary container (absolute, or relative to
    /// its working directory).
    pub path: String,
}

/// One container of a job: Brigade's `Container` class, field for field.
/// Unknown fields are rejected, as Brigade's schema did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerSpec {
    /// The OCI image reference.
    pub image: String,
    /// When to pull the image.
    #[serde(default)]
    pub image_pull_policy: ImagePullPolicy,
    /// The process's working directory; empty for the image's default.
    #[serde(default)]
    pub working_directory: String,
    /// Overrides the image's entrypoint.
    #[serde(default)]
    pub command: Vec<String>,
    /// Arguments to the command.
    #[serde(default)]
    pub arguments: Vec<String>,
    /// Environment variables.
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// A file of `VAR=value` lines whose variables the container gets too
    /// (`environment` wins over it): `PATH` in the project's source,
    /// `workspace:PATH` in the event's workspace; empty for none. (Mizzen's
    /// addition.)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub environment_file: String,
    /// Where to mount the event's shared workspace; empty for nowhere.
    #[serde(default)]
    pub workspace_mount_path: String,
    /// Where to mount a checkout of the project's source; empty for nowhere.
    #[serde(default)]
    pub source_mount_path: String,
    /// Who the container's process runs as: `root`, `nobody`, `UID` or
    /// `UID:GID`; empty for the default, `nobody` (root, or UID 0, needs the
    /// project's `allowRoot` policy). (Mizzen's addition: Brigade ran the
    /// image's user.)
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// Whether the container runs privileged (needs the project's policy).
    #[serde(default)]
    pub privileged: bool,
    /// Whether to mount the host's Docker socket (needs the project's policy).
    #[serde(default)]
    pub use_host_docker_socket: bool,
    /// For a sidecar: when it counts as ready. The primary container starts
    /// only once every sidecar that declares readiness is ready. (Mizzen's
    /// addition; Brigade left start-up ordering to the script.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness: Option<Readiness>,
    /// The containers this one starts after, by name: a sidecar's among its
    /// job's sidecars (the primary's too), a service's among the event's
    /// services started before it. It starts once each is ready: its
    /// `readiness` when it declares one, else up for 3 seconds without
    /// exiting (the perp seed's rule). (Mizzen's addition.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    /// Ports of a service or a sidecar: `"PORT"` declares a container port;
    /// `"HOSTPORT:PORT"` and `"IP:HOSTPORT:PORT"` publish it on the host
    /// (loopback unless an address is given; needs the project's
    /// `allowHostPorts`), `0` for HOSTPORT choosing a free one, told as
    /// `MIZZEN_SERVICE_<NAME>_PORT_<PORT>`. (Mizzen's addition.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Volumes, as Docker Compose writes them: `"/path"` (anonymous: the
    /// container's own, fresh each time), `"name:/path"` (named: shared by
    /// the event's jobs and services and removed when the event ends, or
    /// kept between events when the project declares the name in
    /// `spec.workerTemplate.volumes`), `"/host/path:/path"` (a host
    /// directory, under the project's `allowedHostPaths` policy); `:ro`
    /// after any for read-only. (Mizzen's addition.)
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
}

/// How long a sidecar may take to become ready when it does not say, in
/// seconds: long enough for a database to initialise its files.
pub const DEFAULT_READINESS_TIMEOUT_SECONDS: f64 = 60.0;

/// When a sidecar is ready: exactly one of `tcpPort` and `exited`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Readiness {
    /// Ready once something accepts TCP connections on this port of the
    /// job's localhost (a service such as a database).
    #[serde(default)]
    pub tcp_port: Option<u16>,
    /// Ready once the container has exited with code 0 (a one-shot setup
    /// container); a non-zero exit fails the job.
    #[serde(default)]
    pub exited: bool,
    /// How long to wait before the job fails, in seconds (default 60).
    #[serde(default)]
    pub timeout_seconds: Option<f64>,
}

/// Request of [`crate::Op::ServiceStart`]: a container that lives as long
/// as the event (or until `job.cancel` stops it), reachable by its name from
/// every job of the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceStartRequest {
    /// Unique among the event's jobs and services, and the host name its
    /// jobs reach it by; the rule of job names.
    pub name: String,
    /// What to run.
    pub container: ContainerSpec,
}

/// The completion of a [`crate::Op::ServiceStart`] ticket: the service is
/// ready.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReady {
    /// The host port each published container port got, by container port
    /// (as text, a JSON object's key).
    pub ports: BTreeMap<String, u16>,
}

/// When an image is pulled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImagePullPolicy {
    /// Pull only when the image is not present (Brigade's default; `""` means
    /// this too).
    #[default]
    #[serde(alias = "")]
    IfNotPresent,
    /// Pull every time.
    Always,
}

/// Where a job must run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobHost {
    /// `linux` or `windows`; empty for linux.
    #[serde(default)]
    pub os: Option<String>,
    /// Labels the node must carry.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
}

/// Request naming a job of this worker's event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRef {
    /// The job's name.
    pub name: String,
}

/// How a job ended: the completion of a [`crate::Op::JobWait`] ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    /// A terminal phase.
    pub phase: Phase,
    /// The primary container's exit code, when it exited.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Why, when the phase alone does not say (the engine's reason for a
    /// failed start, the timeout...).
    #[serde(default)]
    pub reason: Option<String>,
}

impl JobResult {
    /// A job that ended in `phase`, saying why.
    pub fn ended(phase: Phase, exit_code: Option<i64>, reason: impl Into<String>) -> Self {
        Self {
            phase,
            exit_code,
            reason: Some(reason.into()),
        }
    }
}

/// Request of [`crate::Op::JobLogs`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobLogsRequest {
    /// The job's name.
    pub name: String,
    /// The container; the primary when absent.
    #[serde(default)]
    pub container: Option<String>,
}

/// The completion of a [`crate::Op::JobLogs`] ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLogs {
    /// The container's output, one entry per line, oldest first.
    pub lines: Vec<String>,
}

/// Request of [`crate::Op::Sleep`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SleepRequest {
    /// How long, in milliseconds.
    pub ms: f64,
}

/// A pending result: the reply of every operation that takes time, and the
/// request of [`crate::Op::TicketCancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ticket {
    /// Unique within a worker.
    pub ticket: u64,
}

/// Reply of [`crate::Op::WaitAny`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum WaitAnyReply {
    /// No ticket is outstanding: nothing will ever complete.
    Idle,
    /// A ticket completed with a result.
    Completed {
        /// Which ticket.
        ticket: u64,
        /// The operation's result (its type depends on the operation).
        result: serde_json::Value,
    },
    /// A ticket's operation failed.
    Failed {
        /// Which ticket.
        ticket: u64,
        /// Why.
        error: HostError,
    },
}

/// Worker and job phases, as in Brigade (the same set for both).
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
    /// Ended badly.
    Failed,
    /// Stopped while starting or running.
    Aborted,
    /// Stopped while pending.
    Canceled,
    /// Ran past its deadline.
    TimedOut,
    /// Could not be scheduled.
    SchedulingFailed,
    /// The state could not be determined.
    Unknown,
}

impl Phase {
    /// The upper-case name, as in Brigade.
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

    /// Whether the phase is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Phase::Succeeded
                | Phase::Failed
                | Phase::Aborted
                | Phase::Canceled
                | Phase::TimedOut
                | Phase::SchedulingFailed
        )
    }
}

/// A text that names no [`Phase`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a phase (PENDING, STARTING, RUNNING, SUCCEEDED, FAILED, ABORTED, CANCELED, TIMED_OUT, SCHEDULING_FAILED, UNKNOWN)"
)]
pub struct UnknownPhase(pub String);

impl std::str::FromStr for Phase {
    type Err = UnknownPhase;

    /// Parses the upper-case name (`PENDING`, `TIMED_OUT`...).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(text.to_string()))
            .map_err(|_| UnknownPhase(text.to_string()))
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Request naming a path in the event's workspace: relative, `/`-separated,
/// without `..`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspacePath {
    /// The path.
    pub path: String,
    /// For [`crate::Op::WorkspaceRead`]: how the reply carries the contents.
    /// By default as UTF-8 text when they are, else in base64; asked for
    /// UTF-8, contents that are not are an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<ContentEncoding>,
}

/// A workspace file: the reply of [`crate::Op::WorkspaceRead`] and the
/// request of [`crate::Op::WorkspaceWrite`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceFile {
    /// The path, as in [`WorkspacePath`].
    pub path: String,
    /// The contents, in `encoding`.
    pub contents: String,
    /// How `contents` is encoded.
    #[serde(default)]
    pub encoding: ContentEncoding,
}

/// The artifacts an event's jobs saved so far: the reply of
/// [`crate::Op::ArtifactList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactList {
    /// By name.
    pub artifacts: Vec<ArtifactInfo>,
}

/// One artifact of the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactInfo {
    /// Its name.
    pub name: String,
    /// The job that saved it.
    pub job: String,
    /// The path in that job's container it was saved from.
    pub path: String,
    /// The bytes its files hold.
    pub size_bytes: u64,
    /// How many files it holds.
    pub files: u64,
}

/// The request of [`crate::Op::ArtifactRead`]: a file of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactFileRequest {
    /// The artifact's name.
    pub name: String,
    /// The file's path within the artifact; empty for an artifact that is a
    /// single file.
    #[serde(default)]
    pub path: String,
    /// How the reply carries the contents, as for
    /// [`crate::Op::WorkspaceRead`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoding: Option<ContentEncoding>,
}

/// How file contents travel in JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentEncoding {
    /// UTF-8 text.
    #[default]
    Utf8,
    /// Base64 (standard alphabet, padded), for binary contents.
    Base64,
}

/// Reply of [`crate::Op::WorkspaceList`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceListing {
    /// The directory's entries, sorted by name.
    pub entries: Vec<WorkspaceEntry>,
}

/// One entry of a [`WorkspaceListing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceEntry {
    /// The entry's name (not its path).
    pub name: String,
    /// Whether it is a directory.
    pub directory: bool,
    /// Size in bytes (0 for directories).
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_reject_unknown_fields_by_name() {
        let err = serde_json::from_str::<ContainerSpec>(r#"{"image":"debian","env":{}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `env`"), "{err}");
    }

    #[test]
    fn brigade_defaults_apply_to_a_bare_job() {
        let job: JobSpec =
            serde_json::from_str(r#"{"primaryContainer":{"image":"debian"}}"#).unwrap();
        assert_eq!(job.timeout_seconds, 900.0);
        assert_eq!(
            job.primary_container.image_pull_policy,
            ImagePullPolicy::IfNotPresent
        );
        assert!(!job.fallible);
    }

    #[test]
    fn sidecars_may_declare_readiness() {
        let c: ContainerSpec =
            serde_json::from_str(r#"{"image":"redis","readiness":{"tcpPort":6379}}"#).unwrap();
        assert_eq!(c.readiness.and_then(|r| r.tcp_port), Some(6379));
        let err = serde_json::from_str::<ContainerSpec>(r#"{"image":"x","readiness":{"port":1}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `port`"), "{err}");
    }

    #[test]
    fn an_empty_pull_policy_means_if_not_present() {
        let c: ContainerSpec =
            serde_json::from_str(r#"{"image":"x","imagePullPolicy":""}"#).unwrap();
        assert_eq!(c.image_pull_policy, ImagePullPolicy::IfNotPresent);
    }

    #[test]
    fn log_levels_accept_either_case_and_order_by_severity() {
        let lower: LogRequest = serde_json::from_str(r#"{"level":"debug","message":"m"}"#).unwrap();
        assert_eq!(lower.level, LogLevel::Debug);
        assert!(LogLevel::Error.passes(LogLevel::Info));
        assert!(!LogLevel::Debug.passes(LogLevel::Info));
        assert_eq!(LogLevel::parse("Warn"), Some(LogLevel::Warn));
    }

    #[test]
    fn wait_any_replies_are_tagged_by_status() {
        let idle = serde_json::to_string(&WaitAnyReply::Idle).unwrap();
        assert_eq!(idle, r#"{"status":"idle"}"#);
        let done = WaitAnyReply::Completed {
            ticket: 3,
            result: serde_json::Value::Null,
        };
        assert_eq!(
            serde_json::to_string(&done).unwrap(),
            r#"{"status":"completed","ticket":3,"result":null}"#
        );
    }
}
