//! Brigade v2 projects (`apiVersion: brigade.sh/v2`, `kind: Project`): parsing,
//! validation, subscriptions, the script to run and the events it gets.
//!
//! A project directory holds `project.yaml` and, unless the script is inline
//! (`spec.workerTemplate.defaultConfigFiles`), the config files directory
//! (`.brigade` by default) with `brigade.wasm`, `brigade.ts` or `brigade.js`.
//! In a local run the directory stands for the project's repository.
//!
//! A compiled script given inline (`defaultConfigFiles["brigade.wasm"]`) is
//! the module's bytes in base64 (standard alphabet, padded): YAML and JSON
//! hold text. It is checked ([`crate::module::check`]) when the project is
//! parsed, so a server refuses a bad module when the project is saved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use mizzen_host_api::types::{Event, GitConfig, LogLevel};
use serde::{Deserialize, Serialize};

use crate::duration::parse_go_duration;
use crate::executor::Source;
use crate::limits::{Limit, LimitError, LimitSettings, LimitValue};
use crate::schedule::{CRON_SOURCE, MAX_SCHEDULES_PER_PROJECT, Schedule, TICK_LABEL};
use crate::script::{MAX_SCRIPT_BYTES, ScriptSource};
use crate::volume::{
    DEFAULT_PROJECT_VOLUME_BYTES, MAX_PROJECT_VOLUMES, MAX_VOLUME_NAME, ProjectVolume,
    is_volume_name, validate_allowed_host_path,
};

/// A compiled script's file name, in the config files directory or inline.
pub const MODULE_SCRIPT: &str = "brigade.wasm";

/// The scripts a project may have, in the order one is picked: a compiled
/// module first (a project that ships one means it), then Brigade's order,
/// `brigade.ts` before `brigade.js`.
pub const SCRIPT_NAMES: [&str; 3] = [MODULE_SCRIPT, "brigade.ts", "brigade.js"];

/// The project file's name inside a project directory.
pub const PROJECT_FILE: &str = "project.yaml";

/// A project file holds settings and perhaps a few inline scripts; a file
/// larger than this is refused before it is parsed (YAML parsing of hostile
/// input is where memory blows up).
pub const MAX_PROJECT_FILE_BYTES: u64 = 1024 * 1024;

/// Brigade's default for `configFilesDirectory`.
pub const DEFAULT_CONFIG_FILES_DIRECTORY: &str = ".brigade";

/// Why a project could not be loaded or run. Every message names the file and
/// the field or rule at fault.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// The file could not be read.
    #[error("{}: cannot read the project", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML of a project's shape.
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with the field and the line.
        message: String,
    },
    /// A field breaks one of the schema's rules.
    #[error("{}: {field}: {problem}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The field, e.g. `metadata.id`.
        field: String,
        /// The rule it breaks.
        problem: String,
    },
    /// Neither `brigade.ts` nor `brigade.js` could be found.
    #[error("found nothing to run: {0}")]
    NoScript(String),
    /// A compiled script the host will not run.
    #[error(transparent)]
    Module(#[from] crate::module::ModuleProblem),
    /// The script file exists but cannot be read.
    #[error("{}: cannot read the script", path.display())]
    ScriptUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A validated project.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    /// `metadata.id`.
    pub id: String,
    /// `description`.
    pub description: String,
    /// `spec.eventSubscriptions`.
    pub event_subscriptions: Vec<EventSubscription>,
    /// `spec.workerTemplate`.
    pub worker: WorkerTemplate,
}

/// Events a project wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSubscription {
    /// The source, e.g. `brigade.sh/cli`.
    pub source: String,
    /// The types, or `*` for all.
    pub types: Vec<String>,
    /// Qualifiers an event must match exactly.
    pub qualifiers: BTreeMap<String, String>,
    /// Labels an event must carry.
    pub labels: BTreeMap<String, String>,
    /// When the server fires each of the types itself (`schedule` and
    /// `timeZone`, Mizzen's addition; `brigade.sh/cron` only).
    pub schedule: Option<Schedule>,
}

/// How the project's workers run.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerTemplate {
    /// Whether each event gets a workspace shared by its jobs.
    pub use_workspace: bool,
    /// The workspace's size (a Kubernetes quantity), when set.
    pub workspace_size: Option<String>,
    /// Where the project's source lives.
    pub git: Option<GitConfig>,
    /// Image pull secrets for job pods.
    pub image_pull_secrets: Vec<String>,
    /// What jobs may do.
    pub job_policies: JobPolicies,
    /// The log level of the worker's `logger`.
    pub log_level: LogLevel,
    /// Where config files live, relative to the source.
    pub config_files_directory: String,
    /// Config files given inline.
    pub default_config_files: BTreeMap<String, String>,
    /// `defaultConfigFiles["brigade.wasm"]`, decoded and checked once, when
    /// the project was parsed (a server hands it to every event).
    pub inline_module: Option<ScriptSource>,
    /// The worker's limits the project sets: `spec.workerTemplate.limits`
    /// (Mizzen's addition), `timeoutDuration` and `workspaceSize`.
    pub limits: LimitSettings,
    /// The secrets the script may read (`spec.workerTemplate.scriptSecrets`,
    /// Mizzen's addition); `None`, all of them. The others reach jobs only
    /// by reference (`"${{ secrets.name }}"` as an environment value), so a
    /// third-party script never holds them.
    pub script_secrets: Option<BTreeSet<String>>,
    /// The project's volumes (`spec.workerTemplate.volumes`, Mizzen's
    /// addition): named volumes kept between events.
    pub volumes: Vec<ProjectVolume>,
    /// The host directories under which containers may bind host paths
    /// (`spec.workerTemplate.jobPolicies.allowedHostPaths`, Mizzen's
    /// addition); none by default.
    pub allowed_host_paths: Vec<PathBuf>,
    /// Whether the project's lines go to the server's log forwarding, and
    /// with which extra labels (`spec.workerTemplate.logForwarding`,
    /// Mizzen's addition).
    pub log_forwarding: LogForwarding,
}

/// A project's part in log forwarding: its lines are forwarded unless it
/// opts out, with its own labels added to each. Where they go is the
/// server's choice alone, and the project, event, job and container each
/// line carries are the host's: a label cannot take their names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogForwarding {
    /// `enabled` (default true).
    pub enabled: bool,
    /// `labels`.
    pub labels: BTreeMap<String, String>,
}

impl Default for LogForwarding {
    fn default() -> Self {
        Self {
            enabled: true,
            labels: BTreeMap::new(),
        }
    }
}

/// The names each forwarded line carries from the host; a project's labels
/// may not use them.
pub const LOG_FORWARDING_RESERVED: &[&str] = &[
    "message",
    "project",
    "event",
    "source",
    "type",
    "job",
    "container",
];

/// Labels a project may add to its forwarded lines: each is sent with
/// every line, so a few short ones.
pub const MAX_LOG_FORWARDING_LABELS: usize = 16;

/// A label's value at most, in bytes (as a Kubernetes label's 63 and an
/// annotation's more: room for a team or a cost centre, not a document).
pub const MAX_LOG_FORWARDING_LABEL_VALUE: usize = 256;

impl WorkerTemplate {
    /// What the project's volumes declare in all, against its quota (the
    /// `volumeSize` limit).
    pub fn declared_volume_bytes(&self) -> u64 {
        self.volumes
            .iter()
            .fold(0, |sum, v| sum.saturating_add(v.size_bytes))
    }
}

/// What a project allows its jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPolicies {
    /// Privileged containers.
    pub allow_privileged: bool,
    /// Mounting the host's Docker socket.
    pub allow_docker_socket_mount: bool,
    /// Containers that ask to run as root (`user: "root"` or UID 0); every
    /// other container runs as `nobody` or the user it names. (Mizzen's
    /// addition.)
    #[serde(default)]
    pub allow_root: bool,
    /// Publishing services' and sidecars' ports on the host (`ports:
    /// ["HOSTPORT:PORT"]`); declared ports need nothing. (Mizzen's
    /// addition.)
    #[serde(default)]
    pub allow_host_ports: bool,
}

/// What an event says about itself, before it is given to a project.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventDetails {
    /// The source.
    pub source: String,
    /// The type.
    pub event_type: String,
    /// Qualifiers.
    pub qualifiers: BTreeMap<String, String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// A short title.
    pub short_title: String,
    /// A long title.
    pub long_title: String,
    /// The payload.
    pub payload: String,
}

impl Project {
    /// Parses and validates a project definition; `path` is used in errors.
    pub fn parse(path: &Path, yaml: &str) -> Result<Self, ProjectError> {
        let file: ProjectFile = serde_norway::from_str(yaml).map_err(|e| ProjectError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Validator { path }.project(file)
    }

    /// Whether the project subscribes to an event (Brigade's rule: same
    /// source; the type listed or `*`; qualifiers exactly equal; every
    /// subscription label present on the event with the same value).
    pub fn subscribes_to(&self, event: &EventDetails) -> bool {
        self.event_subscriptions.iter().any(|s| {
            s.source == event.source
                && s.types.iter().any(|t| t == "*" || *t == event.event_type)
                && s.qualifiers == event.qualifiers
                && s.labels.iter().all(|(k, v)| event.labels.get(k) == Some(v))
        })
    }

    /// The types the project's schedules fire, each with its subscription
    /// (whose qualifiers and labels its events carry) and schedule.
    pub fn schedules(&self) -> impl Iterator<Item = (&str, &EventSubscription, &Schedule)> {
        self.event_subscriptions.iter().flat_map(|s| {
            s.schedule
                .iter()
                .flat_map(move |schedule| s.types.iter().map(move |t| (t.as_str(), s, schedule)))
        })
    }

    /// The event this project's worker receives, with a new id and the
    /// project's secrets (only this project's).
    pub fn event(&self, details: EventDetails, secrets: BTreeMap<String, String>) -> Event {
        let optional = |map: BTreeMap<String, String>| (!map.is_empty()).then_some(map);
        let mut event = Event::new(
            uuid::Uuid::new_v4().to_string(),
            &self.id,
            details.source,
            details.event_type,
        );
        event.project.secrets = secrets;
        event.project.script_secrets = self.worker.script_secrets.clone();
        event.qualifiers = optional(details.qualifiers);
        event.labels = optional(details.labels);
        event.short_title = details.short_title;
        event.long_title = details.long_title;
        event.payload = details.payload;
        event.worker.log_level = self.worker.log_level;
        event.worker.config_files_directory = self.worker.config_files_directory.clone();
        // A compiled script is megabytes of base64 that no guest reads from
        // its event; the other files are Brigade's.
        let mut files = self.worker.default_config_files.clone();
        files.remove(MODULE_SCRIPT);
        event.worker.default_config_files = optional(files);
        event.worker.git = self.worker.git.clone();
        event
    }
}

impl Project {
    /// The script given inline in `defaultConfigFiles` under `name`
    /// (`brigade.wasm`, `brigade.ts` or `brigade.js`), or with no name the
    /// first of [`SCRIPT_NAMES`] there is.
    pub fn inline_script(&self, name: &str) -> Option<ScriptSource> {
        let files = &self.worker.default_config_files;
        let names: &[&str] = if name.is_empty() {
            &SCRIPT_NAMES
        } else {
            &[name]
        };
        names.iter().find_map(|n| {
            if *n == MODULE_SCRIPT {
                return self.worker.inline_module.clone();
            }
            Some(ScriptSource::new(*n, files.get(*n)?.clone()))
        })
    }
}

/// A project loaded from a directory.
#[derive(Debug, Clone)]
pub struct ProjectDir {
    /// The project.
    pub project: Project,
    /// The directory that stands for the project's repository.
    pub root: PathBuf,
    /// The project file.
    pub file: PathBuf,
}

impl ProjectDir {
    /// Loads `path`: a project file, or a directory holding `project.yaml`.
    pub fn load(path: &Path) -> Result<Self, ProjectError> {
        let file = if path.is_dir() {
            path.join(PROJECT_FILE)
        } else {
            path.to_path_buf()
        };
        let read_error = |source| ProjectError::Read {
            path: file.clone(),
            source,
        };
        let size = std::fs::metadata(&file).map_err(read_error)?.len();
        if size > MAX_PROJECT_FILE_BYTES {
            return Err(ProjectError::Invalid {
                path: file,
                field: "(file)".into(),
                problem: format!(
                    "the file is {size} bytes; the limit is {MAX_PROJECT_FILE_BYTES} bytes"
                ),
            });
        }
        let yaml = std::fs::read_to_string(&file).map_err(read_error)?;
        let project = Project::parse(&file, &yaml)?;
        let root = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf();
        Ok(Self {
            project,
            root,
            file,
        })
    }

    /// Where jobs' `sourceMountPath` checkouts come from: the project's git
    /// settings when it has a `cloneURL`, otherwise this directory, which
    /// stands for the repository in a local run.
    pub fn source(&self) -> Source {
        match &self.project.worker.git {
            Some(git) if !git.clone_url.is_empty() => Source::Git(git.clone()),
            _ => Source::Directory(self.root.clone()),
        }
    }

    /// The script to run: the first of [`SCRIPT_NAMES`] found, a file in
    /// the config files directory before an inline one of the same name (as
    /// Brigade's worker chose `brigade.ts` before `brigade.js`). A module is
    /// checked before it is returned.
    pub fn script(&self) -> Result<ScriptSource, ProjectError> {
        let worker = &self.project.worker;
        let dir = self.root.join(&worker.config_files_directory);
        for name in SCRIPT_NAMES {
            let path = dir.join(name);
            if path.is_file() {
                let limit = if name == MODULE_SCRIPT {
                    crate::module::MAX_MODULE_BYTES
                } else {
                    MAX_SCRIPT_BYTES
                };
                let too_big = std::fs::metadata(&path).map(|m| m.len() > limit as u64);
                if let Ok(true) = too_big {
                    return Err(ProjectError::ScriptUnreadable {
                        path,
                        source: std::io::Error::other(format!(
                            "the script is larger than {limit} bytes"
                        )),
                    });
                }
                if name == MODULE_SCRIPT {
                    let bytes =
                        std::fs::read(&path).map_err(|source| ProjectError::ScriptUnreadable {
                            path: path.clone(),
                            source,
                        })?;
                    crate::module::check(&path.display().to_string(), &bytes)?;
                    return Ok(ScriptSource::module(name, bytes));
                }
                let text = std::fs::read_to_string(&path)
                    .map_err(|source| ProjectError::ScriptUnreadable { path, source })?;
                return Ok(ScriptSource::new(name, text));
            }
            if let Some(script) = self.project.inline_script(name) {
                return Ok(script);
            }
        }
        Err(ProjectError::NoScript(format!(
            "none of brigade.wasm, brigade.ts and brigade.js is in {} or in spec.workerTemplate.defaultConfigFiles of {}",
            dir.display(),
            self.file.display()
        )))
    }
}

/// An inline module's bytes from its base64 text (line breaks, which YAML
/// block scalars and `base64 -w76` add, are ignored).
fn decode_module(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::Engine as _;
    let compact: String = text.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(compact)
}

/// The longest value a secret may have, in bytes: GitHub Actions' limit for
/// one secret (48 KB). Credentials (tokens, private keys, kubeconfigs) are a
/// few KB; every value is matched in every log line of its project, and an
/// unbounded one (20 MB was accepted) is a cost its tenant puts on the server.
pub const MAX_SECRET_VALUE_BYTES: usize = 48 * 1024;

/// The most a project's secrets may hold together, keys and values, in
/// bytes: Brigade kept a project's secrets in one Kubernetes Secret, which
/// holds at most 1 MiB. It bounds what one project's redactor holds.
pub const MAX_PROJECT_SECRETS_BYTES: usize = 1024 * 1024;

/// A secret's value, or a project's secrets together, past their limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretLimitError {
    /// One value is too long.
    #[error(
        "secret {key:?} has a value of {len} bytes; a secret's value may hold at most {limit} bytes (48 KiB)"
    )]
    ValueTooLong {
        /// The secret's key.
        key: String,
        /// Its value's length.
        len: usize,
        /// [`MAX_SECRET_VALUE_BYTES`].
        limit: usize,
    },
    /// The project's secrets together are too large.
    #[error(
        "with secret {key:?} the project's secrets would hold {total} bytes; a project's secrets (keys and values) may hold at most {limit} bytes (1 MiB) together"
    )]
    TooMuchInAll {
        /// The secret that went past the limit.
        key: String,
        /// What they would hold.
        total: usize,
        /// [`MAX_PROJECT_SECRETS_BYTES`].
        limit: usize,
    },
}

/// Checks a secret's value against [`MAX_SECRET_VALUE_BYTES`].
pub fn validate_secret_value(key: &str, value: &str) -> Result<(), SecretLimitError> {
    if value.len() > MAX_SECRET_VALUE_BYTES {
        return Err(SecretLimitError::ValueTooLong {
            key: key.to_string(),
            len: value.len(),
            limit: MAX_SECRET_VALUE_BYTES,
        });
    }
    Ok(())
}

/// Checks a project's secrets, each value and all together, against
/// [`MAX_SECRET_VALUE_BYTES`] and [`MAX_PROJECT_SECRETS_BYTES`].
pub fn validate_secrets<'a>(
    secrets: impl IntoIterator<Item = (&'a String, &'a String)>,
) -> Result<(), SecretLimitError> {
    let mut total = 0;
    for (key, value) in secrets {
        validate_secret_value(key, value)?;
        total += key.len() + value.len();
        if total > MAX_PROJECT_SECRETS_BYTES {
            return Err(SecretLimitError::TooMuchInAll {
                key: key.clone(),
                total,
                limit: MAX_PROJECT_SECRETS_BYTES,
            });
        }
    }
    Ok(())
}

/// A secret key that breaks Brigade's rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "secret key {0:?} must start with a letter, hold only letters, digits and '_' (^[a-zA-Z]\\w*$) and be at most 50 characters"
)]
pub struct InvalidSecretKey(pub String);

/// `^[a-zA-Z]\w*$`, at most 50 characters: Brigade's rule for secret keys.
pub fn validate_secret_key(key: &str) -> Result<(), InvalidSecretKey> {
    let mut chars = key.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') || key.len() > 50 {
        return Err(InvalidSecretKey(key.to_string()));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The file's shape. Unknown fields are errors, as in Brigade's JSON schema.

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProjectFile {
    // Both may be left out (as `mizzen project create` always allowed);
    // given, they must be Brigade's.
    #[serde(default = "brigade_api_version")]
    api_version: String,
    #[serde(default = "project_kind")]
    kind: String,
    metadata: Metadata,
    #[serde(default)]
    description: String,
    spec: Spec,
}

fn brigade_api_version() -> String {
    "brigade.sh/v2".into()
}

fn project_kind() -> String {
    "Project".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Metadata {
    id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Spec {
    #[serde(default)]
    event_subscriptions: Option<Vec<SubscriptionFile>>,
    worker_template: WorkerTemplateFile,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubscriptionFile {
    source: String,
    types: Vec<String>,
    #[serde(default)]
    qualifiers: Option<BTreeMap<String, String>>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    /// Mizzen's addition: see [`EventSubscription::schedule`].
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WorkerTemplateFile {
    #[serde(default)]
    container: Option<serde_norway::Value>,
    #[serde(default)]
    use_workspace: bool,
    #[serde(default)]
    workspace_size: Option<String>,
    #[serde(default)]
    git: Option<GitFile>,
    #[serde(default)]
    kubernetes: Option<KubernetesFile>,
    #[serde(default)]
    job_policies: Option<JobPoliciesFile>,
    #[serde(default)]
    log_level: Option<String>,
    #[serde(default)]
    config_files_directory: Option<String>,
    #[serde(default)]
    default_config_files: Option<BTreeMap<String, String>>,
    #[serde(default)]
    timeout_duration: Option<String>,
    /// Mizzen's addition: the worker's limits (see [`crate::limits`]).
    #[serde(default)]
    limits: Option<BTreeMap<String, serde_norway::Value>>,
    /// Mizzen's addition: the secrets the script may read (see
    /// [`WorkerTemplate::script_secrets`]).
    #[serde(default)]
    script_secrets: Option<Vec<String>>,
    /// Mizzen's addition: volumes kept between events (see
    /// [`WorkerTemplate::volumes`]).
    #[serde(default)]
    volumes: Option<Vec<ProjectVolumeFile>>,
    /// Mizzen's addition: see [`WorkerTemplate::log_forwarding`].
    #[serde(default)]
    log_forwarding: Option<LogForwardingFile>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LogForwardingFile {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ProjectVolumeFile {
    name: String,
    #[serde(default)]
    size: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GitFile {
    #[serde(rename = "cloneURL", default)]
    clone_url: String,
    #[serde(default)]
    commit: String,
    #[serde(rename = "ref", default)]
    git_ref: String,
    #[serde(default)]
    init_submodules: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct KubernetesFile {
    #[serde(default)]
    image_pull_secrets: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct JobPoliciesFile {
    #[serde(default)]
    allow_privileged: bool,
    #[serde(default)]
    allow_docker_socket_mount: bool,
    #[serde(default)]
    allow_root: bool,
    #[serde(default)]
    allow_host_ports: bool,
    #[serde(default)]
    allowed_host_paths: Vec<String>,
    /// Accepted for compatibility; Brigade ignored it too.
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "schema-only field that Brigade accepted and ignored"
    )]
    kubernetes: Option<serde_norway::Value>,
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn invalid(&self, field: impl Into<String>, problem: impl Into<String>) -> ProjectError {
        ProjectError::Invalid {
            path: self.path.to_path_buf(),
            field: field.into(),
            problem: problem.into(),
        }
    }

    fn project(&self, file: ProjectFile) -> Result<Project, ProjectError> {
        if file.api_version != "brigade.sh/v2" {
            return Err(self.invalid(
                "apiVersion",
                format!("must be \"brigade.sh/v2\", found {:?}", file.api_version),
            ));
        }
        if file.kind != "Project" {
            return Err(self.invalid(
                "kind",
                format!("must be \"Project\", found {:?}", file.kind),
            ));
        }
        let id = file.metadata.id;
        if !is_dns_label(&id) || !(3..=63).contains(&id.len()) {
            return Err(self.invalid(
                "metadata.id",
                format!("{id:?} must match ^[a-z][a-z\\d-]*[a-z\\d]$ and be 3 to 63 characters"),
            ));
        }
        let description = file.description;
        if !description.is_empty() && !(3..=80).contains(&description.chars().count()) {
            return Err(self.invalid("description", "must be empty or 3 to 80 characters"));
        }
        let mut event_subscriptions = Vec::new();
        for (i, s) in file
            .spec
            .event_subscriptions
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            event_subscriptions.push(self.subscription(i, s)?);
        }
        self.schedules(&event_subscriptions)?;
        let worker = self.worker(file.spec.worker_template)?;
        Ok(Project {
            id,
            description,
            event_subscriptions,
            worker,
        })
    }

    fn subscription(
        &self,
        i: usize,
        s: SubscriptionFile,
    ) -> Result<EventSubscription, ProjectError> {
        let field = |name: &str| format!("spec.eventSubscriptions[{i}].{name}");
        if !(5..=63).contains(&s.source.len()) || !s.source.chars().all(is_event_source_char) {
            return Err(self.invalid(
                field("source"),
                format!(
                    "{:?} must match ^[\\w:/\\-\\.\\?=@]*$ and be 5 to 63 characters",
                    s.source
                ),
            ));
        }
        if s.types.is_empty() {
            return Err(self.invalid(
                field("types"),
                "must list at least one type (\"*\" for all)",
            ));
        }
        for (j, t) in s.types.iter().enumerate() {
            if !(1..=MAX_LABEL_LEN).contains(&t.len()) || !t.chars().all(is_label_char) {
                return Err(self.invalid(
                    format!("{}[{j}]", field("types")),
                    format!("{t:?} must match ^[\\w:/\\-\\.\\?=\\*]*$ and be 1 to 255 characters"),
                ));
            }
        }
        let qualifiers = s.qualifiers.unwrap_or_default();
        let labels = s.labels.unwrap_or_default();
        for (what, map) in [("qualifiers", &qualifiers), ("labels", &labels)] {
            for (key, value) in map {
                if !is_label_key(key) {
                    return Err(self.invalid(
                        format!("{}.{key}", field(what)),
                        "keys must match ^[a-zA-Z][a-zA-Z\\d-]*[a-zA-Z\\d]$",
                    ));
                }
                if value.len() > MAX_LABEL_LEN {
                    return Err(self.invalid(
                        format!("{}.{key}", field(what)),
                        "values must be at most 255 characters",
                    ));
                }
            }
        }
        let schedule = self.schedule(i, &s.source, &s.types, &labels, s.schedule, s.time_zone)?;
        Ok(EventSubscription {
            source: s.source,
            types: s.types,
            qualifiers,
            labels,
            schedule,
        })
    }

    /// A subscription's `schedule` and `timeZone`: only on the cron source,
    /// for named types.
    fn schedule(
        &self,
        i: usize,
        source: &str,
        types: &[String],
        labels: &BTreeMap<String, String>,
        expression: Option<String>,
        time_zone: Option<String>,
    ) -> Result<Option<Schedule>, ProjectError> {
        let field = |name: &str| format!("spec.eventSubscriptions[{i}].{name}");
        let Some(expression) = expression else {
            if time_zone.is_some() {
                return Err(self.invalid(field("timeZone"), "is given without a schedule"));
            }
            return Ok(None);
        };
        if source != CRON_SOURCE {
            return Err(self.invalid(
                field("schedule"),
                format!(
                    "only a subscription of source {CRON_SOURCE:?} may have a schedule (this one is {source:?})"
                ),
            ));
        }
        if let Some(j) = types.iter().position(|t| t == "*") {
            return Err(self.invalid(
                format!("{}[{j}]", field("types")),
                "\"*\" cannot fire on a schedule: list the types the schedule fires",
            ));
        }
        if labels.contains_key(TICK_LABEL) {
            return Err(self.invalid(
                format!("{}.{TICK_LABEL}", field("labels")),
                format!("{TICK_LABEL:?} is set by the server on each event a schedule fires"),
            ));
        }
        Schedule::parse(&expression, time_zone.as_deref())
            .map(Some)
            .map_err(|e| {
                let name = match e {
                    crate::schedule::ScheduleError::TimeZone { .. } => "timeZone",
                    _ => "schedule",
                };
                self.invalid(field(name), e.to_string())
            })
    }

    /// The project's schedules together: a type fires on one schedule, and
    /// a project has at most [`MAX_SCHEDULES_PER_PROJECT`].
    fn schedules(&self, subscriptions: &[EventSubscription]) -> Result<(), ProjectError> {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, s) in subscriptions.iter().enumerate() {
            if s.schedule.is_none() {
                continue;
            }
            for (j, t) in s.types.iter().enumerate() {
                if let Some(first) = seen.insert(t, i) {
                    return Err(self.invalid(
                        format!("spec.eventSubscriptions[{i}].types[{j}]"),
                        format!(
                            "type {t:?} already has a schedule in spec.eventSubscriptions[{first}]; a type fires on one schedule"
                        ),
                    ));
                }
            }
        }
        if seen.len() > MAX_SCHEDULES_PER_PROJECT {
            return Err(self.invalid(
                "spec.eventSubscriptions",
                format!(
                    "{} types have a schedule; a project may have at most {MAX_SCHEDULES_PER_PROJECT} schedules",
                    seen.len()
                ),
            ));
        }
        Ok(())
    }

    fn worker(&self, w: WorkerTemplateFile) -> Result<WorkerTemplate, ProjectError> {
        const FIELD: &str = "spec.workerTemplate";
        if w.container.is_some() {
            return Err(self.invalid(
                format!("{FIELD}.container"),
                "custom worker images are not supported: Mizzen runs the project's script in its Wasm sandbox",
            ));
        }
        let mut limits = LimitSettings::default();
        if let Some(size) = &w.workspace_size {
            let value = Limit::WorkspaceSize.parse(size).map_err(|problem| {
                self.invalid(format!("{FIELD}.workspaceSize"), problem.to_string())
            })?;
            limits.insert(Limit::WorkspaceSize, value);
        }
        for (key, value) in w.limits.unwrap_or_default() {
            let field = format!("{FIELD}.limits.{key}");
            match Limit::from_key(&key) {
                Some(limit @ (Limit::Timeout | Limit::WorkspaceSize)) => {
                    return Err(self.invalid(
                        field,
                        format!("set it as {} (Brigade's field)", limit.project_field()),
                    ));
                }
                Some(_) => {}
                None => {
                    return Err(self.invalid(
                        field,
                        format!(
                            "is not a limit; the limits are {}",
                            Limit::ALL
                                .into_iter()
                                .filter(|l| !matches!(l, Limit::Timeout | Limit::WorkspaceSize))
                                .map(Limit::key)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
            let text = match value {
                serde_norway::Value::String(text) => text,
                serde_norway::Value::Number(number) => number.to_string(),
                other => format!("{other:?}"),
            };
            limits.set(&key, &text).map_err(|e| match e {
                LimitError::InvalidValue { problem, .. } => {
                    self.invalid(field.clone(), problem.to_string())
                }
                other => self.invalid(field.clone(), other.to_string()),
            })?;
        }
        let git = match w.git {
            None => None,
            Some(g) => {
                if !g.clone_url.is_empty() && !is_clone_url(&g.clone_url) {
                    return Err(self.invalid(
                        format!("{FIELD}.git.cloneURL"),
                        format!(
                            "{:?} must match ^(https?://|git@|file://)[\\w:/\\-\\.\\?=@&%]+$",
                            g.clone_url
                        ),
                    ));
                }
                if !g.commit.is_empty()
                    && (!(8..=40).contains(&g.commit.len())
                        || !g.commit.chars().all(|c| c.is_ascii_hexdigit()))
                {
                    return Err(self.invalid(
                        format!("{FIELD}.git.commit"),
                        format!("{:?} must be 8 to 40 hexadecimal characters", g.commit),
                    ));
                }
                Some(GitConfig {
                    clone_url: g.clone_url,
                    commit: g.commit,
                    git_ref: g.git_ref,
                    init_submodules: g.init_submodules,
                })
            }
        };
        let image_pull_secrets = w
            .kubernetes
            .map(|k| k.image_pull_secrets)
            .unwrap_or_default();
        for (i, secret) in image_pull_secrets.iter().enumerate() {
            if !is_dns_label(secret) {
                return Err(self.invalid(
                    format!("{FIELD}.kubernetes.imagePullSecrets[{i}]"),
                    format!(
                        "{secret:?} must be a Kubernetes secret name (^[a-z][a-z\\d-]*[a-z\\d]$)"
                    ),
                ));
            }
        }
        let log_level = match w.log_level.as_deref() {
            None | Some("") => LogLevel::Info,
            Some(level) => match level {
                "DEBUG" | "INFO" | "WARN" | "ERROR" => {
                    LogLevel::parse(level).expect("listed above")
                }
                other => {
                    return Err(self.invalid(
                        format!("{FIELD}.logLevel"),
                        format!("{other:?} must be one of DEBUG, INFO, WARN, ERROR"),
                    ));
                }
            },
        };
        let config_files_directory = w
            .config_files_directory
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| DEFAULT_CONFIG_FILES_DIRECTORY.to_string());
        if !is_relative_inside(&config_files_directory) {
            return Err(self.invalid(
                format!("{FIELD}.configFilesDirectory"),
                format!("{config_files_directory:?} must be a relative path that stays inside the repository (no '..')"),
            ));
        }
        let default_config_files = w.default_config_files.unwrap_or_default();
        for name in default_config_files.keys() {
            if name.is_empty() || !is_relative_inside(name) {
                return Err(self.invalid(
                    format!("{FIELD}.defaultConfigFiles.{name}"),
                    "file names must be relative paths that stay inside the config files directory (no '..')",
                ));
            }
        }
        let mut inline_module = None;
        if let Some(text) = default_config_files.get(MODULE_SCRIPT) {
            let field = format!("{FIELD}.defaultConfigFiles.{MODULE_SCRIPT}");
            let bytes = decode_module(text).map_err(|e| {
                self.invalid(
                    field.clone(),
                    format!("a compiled script is given inline in base64 (standard alphabet, padded): {e}"),
                )
            })?;
            crate::module::check(MODULE_SCRIPT, &bytes)
                .map_err(|problem| self.invalid(field, problem.to_string()))?;
            inline_module = Some(ScriptSource::module(MODULE_SCRIPT, bytes));
        }
        if let Some(text) = w.timeout_duration.as_deref().filter(|t| !t.is_empty()) {
            let timeout = parse_go_duration(text).filter(|d| !d.is_zero()).ok_or_else(|| {
                self.invalid(
                    format!("{FIELD}.timeoutDuration"),
                    format!("{text:?} must be a positive duration such as 10m or 1h30m (^([0-9]+(\\.[0-9]*)?(ns|us|µs|ms|s|m|h))+$)"),
                )
            })?;
            limits.insert(Limit::Timeout, LimitValue::Time(timeout));
        }
        let script_secrets = match w.script_secrets {
            None => None,
            Some(keys) => {
                for (i, key) in keys.iter().enumerate() {
                    validate_secret_key(key).map_err(|problem| {
                        self.invalid(format!("{FIELD}.scriptSecrets[{i}]"), problem.to_string())
                    })?;
                }
                Some(keys.into_iter().collect())
            }
        };
        let mut allowed_host_paths = Vec::new();
        let job_policies = match w.job_policies {
            None => JobPolicies::default(),
            Some(p) => {
                for (i, path) in p.allowed_host_paths.iter().enumerate() {
                    let path = validate_allowed_host_path(path).map_err(|problem| {
                        self.invalid(
                            format!("{FIELD}.jobPolicies.allowedHostPaths[{i}]"),
                            format!("{path:?} {problem}"),
                        )
                    })?;
                    allowed_host_paths.push(path);
                }
                JobPolicies {
                    allow_privileged: p.allow_privileged,
                    allow_docker_socket_mount: p.allow_docker_socket_mount,
                    allow_root: p.allow_root,
                    allow_host_ports: p.allow_host_ports,
                }
            }
        };
        let volumes = self.volumes(w.volumes.unwrap_or_default(), &limits)?;
        let log_forwarding = self.log_forwarding(w.log_forwarding)?;
        Ok(WorkerTemplate {
            use_workspace: w.use_workspace,
            workspace_size: w.workspace_size,
            git,
            image_pull_secrets,
            job_policies,
            log_level,
            config_files_directory,
            default_config_files,
            inline_module,
            limits,
            script_secrets,
            volumes,
            allowed_host_paths,
            log_forwarding,
        })
    }

    /// `logForwarding`: at most [`MAX_LOG_FORWARDING_LABELS`] labels, each
    /// named like an identifier and none named as the host's own fields.
    fn log_forwarding(
        &self,
        file: Option<LogForwardingFile>,
    ) -> Result<LogForwarding, ProjectError> {
        const FIELD: &str = "spec.workerTemplate.logForwarding";
        let Some(file) = file else {
            return Ok(LogForwarding::default());
        };
        if file.labels.len() > MAX_LOG_FORWARDING_LABELS {
            return Err(self.invalid(
                format!("{FIELD}.labels"),
                format!(
                    "{} labels; at most {MAX_LOG_FORWARDING_LABELS}",
                    file.labels.len()
                ),
            ));
        }
        for (name, value) in &file.labels {
            let field = format!("{FIELD}.labels.{name}");
            let well_formed = name.len() <= 63
                && name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
            if !well_formed {
                return Err(self.invalid(
                    field,
                    "a label's name is a letter then up to 62 letters, digits, '_', '.' or '-'",
                ));
            }
            if LOG_FORWARDING_RESERVED.contains(&name.as_str()) {
                return Err(self.invalid(
                    field,
                    format!(
                        "{name:?} is set by the host on every line (reserved: {})",
                        LOG_FORWARDING_RESERVED.join(", ")
                    ),
                ));
            }
            if value.len() > MAX_LOG_FORWARDING_LABEL_VALUE {
                return Err(self.invalid(
                    field,
                    format!(
                        "{} bytes; a label's value is at most {MAX_LOG_FORWARDING_LABEL_VALUE}",
                        value.len()
                    ),
                ));
            }
        }
        Ok(LogForwarding {
            enabled: file.enabled.unwrap_or(true),
            labels: file.labels,
        })
    }

    /// The project's volumes: named once each, sized, at most
    /// [`MAX_PROJECT_VOLUMES`], and within the project's own `volumeSize`
    /// when it sets one (a server's ceiling is checked when an event mounts
    /// them).
    fn volumes(
        &self,
        files: Vec<ProjectVolumeFile>,
        limits: &LimitSettings,
    ) -> Result<Vec<ProjectVolume>, ProjectError> {
        const FIELD: &str = "spec.workerTemplate.volumes";
        if files.len() > MAX_PROJECT_VOLUMES {
            return Err(self.invalid(
                FIELD,
                format!(
                    "{} volumes; a project may declare at most {MAX_PROJECT_VOLUMES}",
                    files.len()
                ),
            ));
        }
        let mut volumes: Vec<ProjectVolume> = Vec::with_capacity(files.len());
        for (i, file) in files.into_iter().enumerate() {
            let field = format!("{FIELD}[{i}]");
            if !is_volume_name(&file.name) {
                return Err(self.invalid(
                    format!("{field}.name"),
                    format!(
                        "{:?} must match ^[a-z][a-z\\d-]*[a-z\\d]$ and be at most {MAX_VOLUME_NAME} characters",
                        file.name
                    ),
                ));
            }
            if volumes.iter().any(|v| v.name == file.name) {
                return Err(self.invalid(
                    format!("{field}.name"),
                    format!("{:?} is declared twice", file.name),
                ));
            }
            let size_bytes = match &file.size {
                None => DEFAULT_PROJECT_VOLUME_BYTES,
                Some(size) => match Limit::VolumeSize.parse(size) {
                    Ok(LimitValue::Bytes(bytes)) => bytes,
                    Ok(_) => unreachable!("volumeSize is a size"),
                    Err(problem) => {
                        return Err(self.invalid(format!("{field}.size"), problem.to_string()));
                    }
                },
            };
            volumes.push(ProjectVolume {
                name: file.name,
                size_bytes,
            });
        }
        let declared = volumes
            .iter()
            .fold(0u64, |sum, v| sum.saturating_add(v.size_bytes));
        if let Some(LimitValue::Bytes(quota)) = limits.get(Limit::VolumeSize)
            && declared > quota
        {
            return Err(self.invalid(
                FIELD,
                format!(
                    "the volumes' sizes add up to {}, over the project's spec.workerTemplate.limits.volumeSize of {}",
                    LimitValue::Bytes(declared),
                    LimitValue::Bytes(quota)
                ),
            ));
        }
        Ok(volumes)
    }
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Longest event type, qualifier value or label value Brigade accepts.
pub const MAX_LABEL_LEN: usize = 255;

/// Whether `c` may be in an event type or a qualifier or label value:
/// Brigade's label pattern `^[\w:/\-\.\?=\*]*$`, where `\w` is ASCII (Go's
/// regexp, which Brigade's schema validator uses). The server's API and
/// webhook gateways check events with it, and project files the types
/// their subscriptions name.
pub fn is_label_char(c: char) -> bool {
    is_word(c) || ":/-.?=*".contains(c)
}

/// Whether `c` may be in an event source: Brigade's pattern for sources,
/// `^[\w:/\-\.\?=@]*$` (the label pattern with `@` instead of `*`).
pub fn is_event_source_char(c: char) -> bool {
    is_word(c) || ":/-.?=@".contains(c)
}

/// `^[a-z][a-z\d-]*[a-z\d]$`.
pub(crate) fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.len() >= 2
        && bytes[0].is_ascii_lowercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-'
}

/// `^[a-zA-Z][a-zA-Z\d-]*[a-zA-Z\d]$`.
fn is_label_key(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.len() >= 2
        && bytes[0].is_ascii_alphabetic()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes[bytes.len() - 1] != b'-'
}

/// `^(https?://|git@)[\w:/\-\.\?=@&%]+$`, and `file://` for repositories on
/// this machine (Mizzen's addition, for local runs).
fn is_clone_url(s: &str) -> bool {
    let rest = ["https://", "http://", "git@", "file://"]
        .iter()
        .find_map(|prefix| s.strip_prefix(prefix));
    rest.is_some_and(|r| !r.is_empty() && r.chars().all(|c| is_word(c) || ":/-.?=@&%".contains(c)))
}

/// Where a clone URL fetches from: its host as the URL standard reads it
/// (`127.1`, `2130706433`, `0x7f.0.0.1` and `0177.0.0.1` are 127.0.0.1, names
/// are lower-cased), and its port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneHost {
    /// The host.
    pub host: url::Host<String>,
    /// The port (the scheme's own when the URL names none).
    pub port: u16,
    /// Whether git reaches it over SSH (`git@host:path`) rather than HTTP.
    pub ssh: bool,
}

/// A cloneURL a server cannot fetch from, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cloneURL {url:?} {problem}")]
pub struct InvalidCloneUrl {
    /// The URL.
    pub url: String,
    /// What is wrong with it.
    pub problem: CloneUrlProblem,
}

/// What is wrong with a cloneURL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CloneUrlProblem {
    /// `git@` without `host:path`.
    #[error("must have the form git@host:path")]
    ScpForm,
    /// The host does not parse.
    #[error("has no valid host: {0}")]
    Host(#[source] url::ParseError),
    /// Not a URL at all.
    #[error("is not a URL: {0}")]
    NotAUrl(#[source] url::ParseError),
    /// A scheme a server does not fetch from.
    #[error("must be an http://, https:// or git@host:path URL")]
    Scheme,
}

/// The host and port `url` fetches from, for the forms a server fetches
/// (`http://`, `https://`, `git@host:path`); an error says why there is none.
pub fn clone_url_host(url: &str) -> Result<CloneHost, InvalidCloneUrl> {
    let invalid = |problem| InvalidCloneUrl {
        url: url.to_string(),
        problem,
    };
    if let Some(rest) = url.strip_prefix("git@") {
        // scp-like syntax: the host ends at the first ':' outside brackets.
        let host = match rest.strip_prefix('[') {
            Some(v6) => v6.split_once(']').map(|(h, _)| format!("[{h}]")),
            None => rest.split_once(':').map(|(h, _)| h.to_string()),
        }
        .ok_or_else(|| invalid(CloneUrlProblem::ScpForm))?;
        let host = url::Host::parse(&host).map_err(|e| invalid(CloneUrlProblem::Host(e)))?;
        return Ok(CloneHost {
            host,
            port: 22,
            ssh: true,
        });
    }
    let parsed = url::Url::parse(url).map_err(|e| invalid(CloneUrlProblem::NotAUrl(e)))?;
    match (
        parsed.scheme(),
        parsed.host(),
        parsed.port_or_known_default(),
    ) {
        ("http" | "https", Some(host), Some(port)) => Ok(CloneHost {
            host: host.to_owned(),
            port,
            ssh: false,
        }),
        _ => Err(invalid(CloneUrlProblem::Scheme)),
    }
}

/// Whether `ip` reaches the machine itself or its cloud's metadata service:
/// loopback, link-local (169.254.169.254 and fe80::/10), unspecified or the
/// rest of 0.0.0.0/8, AWS's IPv6 metadata address, and the IPv4-mapped and
/// -compatible IPv6 forms of those. Private networks are not: self-hosted
/// git servers live there.
pub fn is_internal_address(ip: std::net::IpAddr) -> bool {
    use std::net::{IpAddr, Ipv6Addr};
    /// The EC2 instance metadata service over IPv6.
    const AWS_METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254);
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xffc0) == 0xfe80
                || v6 == AWS_METADATA_V6
                // ::ffff:a.b.c.d and ::a.b.c.d reach a.b.c.d.
                || v6.to_ipv4().is_some_and(|v4| is_internal_address(IpAddr::V4(v4)))
        }
    }
}

/// Why a server must not fetch `url` for a tenant, if it must not: the
/// server's own disk (`file://`), and addresses that reach the server itself
/// or its cloud's metadata service ([`is_internal_address`]) rather than a
/// git host, in any form the URL standard reads as one. Private networks
/// stay allowed: self-hosted git servers live there. A name is resolved when
/// the clone runs (`source::checkout` of a [`Source::TenantGit`]), where an
/// internal address is refused too.
pub fn server_clone_url_problem(url: &str) -> Option<String> {
    if !is_clone_url(url) {
        return Some(format!(
            "cloneURL {url:?} must match ^(https?://|git@)[\\w:/\\-\\.\\?=@&%]+$"
        ));
    }
    if url.starts_with("file://") {
        return Some(format!(
            "cloneURL {url:?} names a path on the server's own disk; a server fetches only from git hosts (file:// is for `mizzen run`)"
        ));
    }
    let CloneHost { host, .. } = match clone_url_host(url) {
        Ok(host) => host,
        Err(problem) => return Some(problem.to_string()),
    };
    let internal = match &host {
        url::Host::Ipv4(ip) => is_internal_address((*ip).into()),
        url::Host::Ipv6(ip) => is_internal_address((*ip).into()),
        url::Host::Domain(name) => {
            let name = name.trim_end_matches('.');
            name == "localhost"
                || name.ends_with(".localhost")
                || name == "metadata.google.internal"
        }
    };
    internal.then(|| {
        format!(
            "cloneURL {url:?} points at {host}, which is the server itself or its cloud's metadata service, not a git host"
        )
    })
}

/// A relative path with no `..`, root or prefix component.
fn is_relative_inside(path: &str) -> bool {
    !path.contains('\\')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Project, ProjectError> {
        Project::parse(Path::new("project.yaml"), yaml)
    }

    const MINIMAL: &str = "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: hello-world\nspec:\n  workerTemplate: {}\n";

    #[test]
    fn a_minimal_project_gets_brigades_defaults() {
        let project = parse(MINIMAL).unwrap();
        assert_eq!(project.id, "hello-world");
        assert_eq!(project.worker.log_level, LogLevel::Info);
        assert_eq!(project.worker.config_files_directory, ".brigade");
        assert!(project.event_subscriptions.is_empty());
        assert!(project.worker.limits.is_empty());
    }

    #[test]
    fn job_policies_are_brigades_and_allow_root() {
        let yaml = MINIMAL.replace(
            "workerTemplate: {}",
            "workerTemplate:\n    jobPolicies:\n      allowPrivileged: true\n      allowRoot: true\n      allowHostPorts: true\n",
        );
        let policies = parse(&yaml).unwrap().worker.job_policies;
        assert_eq!(
            policies,
            JobPolicies {
                allow_privileged: true,
                allow_docker_socket_mount: false,
                allow_root: true,
                allow_host_ports: true,
            }
        );
        assert_eq!(
            parse(MINIMAL).unwrap().worker.job_policies,
            JobPolicies::default()
        );
    }

    #[test]
    fn volumes_and_host_paths_are_declared_with_their_limits() {
        let with = |worker: &str| MINIMAL.replace("workerTemplate: {}", worker);
        let project = parse(&with(
            "workerTemplate:\n    volumes:\n    - name: pgdata\n      size: 2Gi\n    - name: cache\n    jobPolicies:\n      allowedHostPaths: [/opt/data/]\n",
        ))
        .unwrap();
        assert_eq!(
            project.worker.volumes,
            [
                ProjectVolume {
                    name: "pgdata".into(),
                    size_bytes: 2 << 30
                },
                ProjectVolume {
                    name: "cache".into(),
                    size_bytes: DEFAULT_PROJECT_VOLUME_BYTES
                },
            ]
        );
        assert_eq!(project.worker.declared_volume_bytes(), 3 << 30);
        assert_eq!(
            project.worker.allowed_host_paths,
            [PathBuf::from("/opt/data")]
        );
        for (worker, expected) in [
            (
                "workerTemplate:\n    volumes:\n    - name: Data\n",
                "spec.workerTemplate.volumes[0].name",
            ),
            (
                "workerTemplate:\n    volumes:\n    - name: data\n    - name: data\n",
                "\"data\" is declared twice",
            ),
            (
                "workerTemplate:\n    volumes:\n    - name: data\n      size: lots\n",
                "spec.workerTemplate.volumes[0].size",
            ),
            (
                "workerTemplate:\n    volumes:\n    - name: data\n      size: 2Gi\n    limits:\n      volumeSize: 1Gi\n",
                "add up to 2 GiB, over the project's spec.workerTemplate.limits.volumeSize of 1 GiB",
            ),
            (
                "workerTemplate:\n    jobPolicies:\n      allowedHostPaths: [/]\n",
                "spec.workerTemplate.jobPolicies.allowedHostPaths[0]",
            ),
            (
                "workerTemplate:\n    jobPolicies:\n      allowedHostPaths: [/opt/../etc]\n",
                "must not contain '.' or '..'",
            ),
        ] {
            let error = parse(&with(worker)).unwrap_err().to_string();
            assert!(error.contains(expected), "{worker}: {error}");
        }
    }

    #[test]
    fn a_server_fetches_only_from_git_hosts() {
        for good in [
            "https://github.com/brigadecore/empty-testbed.git",
            "git@github.com:brigadecore/empty-testbed.git",
            "http://10.0.0.7:3000/team/repo.git",
            "https://gitlab.internal.example/repo.git",
        ] {
            assert_eq!(server_clone_url_problem(good), None, "{good}");
        }
        for bad in [
            "file:///etc",
            "http://127.0.0.1:8080/x.git",
            "http://169.254.169.254/latest/meta-data",
            "https://user@localhost/x.git",
            "http://[::1]:80/x.git",
            "http://0.0.0.0/x",
            "git@127.0.0.2:x.git",
            "ext::sh -c touch% /tmp/pwned",
            // Every form the URL standard (and curl, and inet_aton) reads
            // as an internal address: `127.1` passed, and git reached the
            // server's loopback.
            "http://127.1:8080/x.git",
            "http://2130706433/x.git",
            "http://0x7f.0.0.1/x.git",
            "http://0177.0.0.1/x.git",
            "http://127.0.0.%31/x.git",
            "http://[::ffff:127.0.0.1]/x.git",
            "http://[::ffff:169.254.169.254]/x.git",
            "http://[::127.0.0.1]/x.git",
            "http://[::]/x.git",
            "http://[fe80::1]/x.git",
            "http://[fd00:ec2::254]/latest",
            "http://0.1.2.3/x.git",
            "http://LOCALHOST./x.git",
            "http://a.localhost/x.git",
            "http://metadata.google.internal/computeMetadata/v1/",
            "git@127.1:x.git",
            "git@2130706433:x.git",
            "git@[::1]:x.git",
            "git@localhost:x.git",
        ] {
            let problem = server_clone_url_problem(bad);
            assert!(problem.is_some(), "{bad}");
        }
        assert_eq!(
            server_clone_url_problem("http://0x7f.1:80/x.git").as_deref(),
            Some(
                "cloneURL \"http://0x7f.1:80/x.git\" points at 127.0.0.1, which is the server itself or its cloud's metadata service, not a git host"
            )
        );
    }

    #[test]
    fn private_and_public_addresses_are_not_internal() {
        for ip in [
            "10.0.0.7",
            "192.168.1.1",
            "172.16.0.1",
            "140.82.112.3",
            "fd12::1",
            "2001:db8::1",
        ] {
            assert!(!is_internal_address(ip.parse().unwrap()), "{ip}");
        }
        assert_eq!(
            clone_url_host("git@Git.Example.com:team/repo.git"),
            Ok(CloneHost {
                host: url::Host::Domain("git.example.com".into()),
                port: 22,
                ssh: true
            })
        );
    }

    #[test]
    fn a_project_sets_its_workers_limits() {
        let project = parse(&MINIMAL.replace(
            "{}",
            "\n    timeoutDuration: 10m\n    workspaceSize: 2Gi\n    limits:\n      memory: 128Mi\n      cpuTime: 30s\n      concurrentJobs: 4\n      logLines: 500",
        ))
        .unwrap();
        let limits = &project.worker.limits;
        assert_eq!(
            limits.get(Limit::Memory),
            Some(LimitValue::Bytes(128 << 20))
        );
        assert_eq!(
            limits.get(Limit::CpuTime),
            Some(LimitValue::Time(std::time::Duration::from_secs(30)))
        );
        assert_eq!(
            limits.get(Limit::ConcurrentJobs),
            Some(LimitValue::Count(4))
        );
        assert_eq!(limits.get(Limit::LogLines), Some(LimitValue::Count(500)));
        assert_eq!(
            limits.get(Limit::Timeout),
            Some(LimitValue::Time(std::time::Duration::from_secs(600)))
        );
        assert_eq!(
            limits.get(Limit::WorkspaceSize),
            Some(LimitValue::Bytes(2 << 30))
        );
        for (yaml, expected) in [
            (
                "memroy: 1Gi",
                "spec.workerTemplate.limits.memroy: is not a limit; the limits are memory, cpuTime, logSize",
            ),
            (
                "memory: lots",
                "spec.workerTemplate.limits.memory: \"lots\" must be a size such as 64Mi",
            ),
            (
                "concurrentJobs: 0",
                "spec.workerTemplate.limits.concurrentJobs: \"0\" must be more than zero",
            ),
            (
                "timeout: 1h",
                "spec.workerTemplate.limits.timeout: set it as spec.workerTemplate.timeoutDuration",
            ),
        ] {
            let err = parse(&MINIMAL.replace("{}", &format!("\n    limits:\n      {yaml}")))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{yaml}: {err}");
        }
    }

    #[test]
    fn errors_name_the_field_and_the_rule() {
        let err = parse(&MINIMAL.replace("hello-world", "Hello_World"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("metadata.id") && err.contains("^[a-z]"),
            "{err}"
        );
        let err = parse(&MINIMAL.replace("{}", "\n    logLevel: LOUD"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("spec.workerTemplate.logLevel") && err.contains("DEBUG, INFO"),
            "{err}"
        );
        let err = parse(&MINIMAL.replace("{}", "\n    timeoutDuration: 10 minutes"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("timeoutDuration"), "{err}");
        let err = parse(&MINIMAL.replace("{}", "\n    configFilesDirectory: ../elsewhere"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("configFilesDirectory"), "{err}");
        let err = parse(&MINIMAL.replace("v2", "v1")).unwrap_err().to_string();
        assert!(err.contains("apiVersion"), "{err}");
    }

    #[test]
    fn unknown_fields_are_named_with_their_place() {
        let err = parse(&MINIMAL.replace("{}", "\n    logLevl: DEBUG"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `logLevl`"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn subscriptions_match_as_brigade_matched_them() {
        let yaml = MINIMAL.replace(
            "spec:\n",
            "spec:\n  eventSubscriptions:\n  - source: brigade.sh/github\n    types: [push]\n    qualifiers: {repo: a/b}\n  - source: brigade.sh/cli\n    types: ['*']\n",
        );
        let project = parse(&yaml).unwrap();
        let event = |source: &str, t: &str, q: &[(&str, &str)]| EventDetails {
            source: source.into(),
            event_type: t.into(),
            qualifiers: q
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        assert!(project.subscribes_to(&event("brigade.sh/cli", "anything", &[])));
        assert!(project.subscribes_to(&event("brigade.sh/github", "push", &[("repo", "a/b")])));
        assert!(!project.subscribes_to(&event("brigade.sh/github", "push", &[])));
        assert!(!project.subscribes_to(&event(
            "brigade.sh/github",
            "push",
            &[("repo", "a/b"), ("x", "y")]
        )));
        assert!(!project.subscribes_to(&event(
            "brigade.sh/github",
            "pull_request",
            &[("repo", "a/b")]
        )));
    }

    #[test]
    fn schedules_fire_the_named_types_of_the_cron_source() {
        let with = |subscriptions: &str| {
            parse(&MINIMAL.replace(
                "spec:\n",
                &format!("spec:\n  eventSubscriptions:\n{subscriptions}"),
            ))
        };
        let project = with(
            "  - source: brigade.sh/cron\n    types: [nightly, weekly]\n    schedule: '0 3 * * *'\n    timeZone: Europe/Berlin\n  - source: brigade.sh/cron\n    types: [manual]\n",
        )
        .unwrap();
        let schedules: Vec<_> = project
            .schedules()
            .map(|(t, _, s)| (t, s.expression(), s.time_zone()))
            .collect();
        assert_eq!(
            schedules,
            [
                ("nightly", "0 3 * * *", "Europe/Berlin"),
                ("weekly", "0 3 * * *", "Europe/Berlin")
            ]
        );
        // Still a subscription: a cron event created by hand reaches it.
        assert!(project.subscribes_to(&EventDetails {
            source: "brigade.sh/cron".into(),
            event_type: "manual".into(),
            ..Default::default()
        }));
        for (subscriptions, expected) in [
            (
                "  - source: brigade.sh/cron\n    types: [nightly]\n    schedule: '0 3 * *'\n",
                "project.yaml: spec.eventSubscriptions[0].schedule: \"0 3 * *\" is not a cron expression",
            ),
            (
                "  - source: brigade.sh/cron\n    types: [nightly]\n    schedule: '0 3 * * *'\n    timeZone: Europe/Nowhere\n",
                "project.yaml: spec.eventSubscriptions[0].timeZone: \"Europe/Nowhere\" is not a time zone",
            ),
            (
                "  - source: brigade.sh/github\n    types: [push]\n    schedule: '0 3 * * *'\n",
                "spec.eventSubscriptions[0].schedule: only a subscription of source \"brigade.sh/cron\"",
            ),
            (
                "  - source: brigade.sh/cron\n    types: [nightly, '*']\n    schedule: '0 3 * * *'\n",
                "spec.eventSubscriptions[0].types[1]: \"*\" cannot fire on a schedule",
            ),
        ] {
            let err = with(subscriptions).unwrap_err().to_string();
            assert!(err.contains(expected), "{err}");
        }
    }

    #[test]
    fn events_carry_the_projects_settings_and_secrets() {
        let project = parse(&MINIMAL.replace("{}", "\n    logLevel: DEBUG")).unwrap();
        let secrets = BTreeMap::from([("token".to_string(), "s3cret".to_string())]);
        let event = project.event(
            EventDetails {
                source: "brigade.sh/cli".into(),
                event_type: "exec".into(),
                payload: "Brigade".into(),
                ..Default::default()
            },
            secrets.clone(),
        );
        assert_eq!(event.project.id, "hello-world");
        assert_eq!(event.project.secrets, secrets);
        assert_eq!(event.worker.log_level, LogLevel::Debug);
        assert_eq!(event.qualifiers, None);
        assert_eq!(event.id.len(), 36);
    }

    #[test]
    fn a_project_may_restrict_the_secrets_its_script_reads() {
        let project = parse(&MINIMAL.replace("{}", "\n    scriptSecrets: [visible]")).unwrap();
        let secrets = BTreeMap::from([
            ("visible".to_string(), "a".to_string()),
            ("hidden".to_string(), "b".to_string()),
        ]);
        let event = project.event(EventDetails::default(), secrets.clone());
        // The worker's event keeps every secret for its jobs' references;
        // the script's view has only the one it may read.
        assert_eq!(event.project.secrets, secrets);
        assert!(event.project.script_may_read("visible"));
        assert!(!event.project.script_may_read("hidden"));
        let view = serde_json::to_value(event.script_view()).unwrap();
        assert_eq!(
            view["project"]["secrets"],
            serde_json::json!({"visible": "a"})
        );
        assert!(view["project"].get("scriptSecrets").is_none(), "{view}");

        let error = parse(&MINIMAL.replace("{}", "\n    scriptSecrets: [ok, not-a-key]"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("spec.workerTemplate.scriptSecrets[1]")
                && error.contains("\"not-a-key\""),
            "{error}"
        );
    }

    #[test]
    fn secret_keys_follow_brigades_rule() {
        assert!(validate_secret_key("gitPassword").is_ok());
        assert!(validate_secret_key("a_1").is_ok());
        for bad in ["", "1abc", "a-b", "a b", &"a".repeat(51)] {
            assert!(validate_secret_key(bad).is_err(), "{bad:?}");
        }
    }
}
