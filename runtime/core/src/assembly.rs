//! One event's worker put together: the one place where `mizzen run` and
//! the server's scheduler turn a project, an event and their settings into
//! what a sandbox runs ([`WorkerRequest`] and its script) and what its jobs'
//! executor is told of the event ([`EventContext`]).
//!
//! What differs between the two is said in the [`WorkerPlan`] they fill in:
//! where the project's files are (a directory standing for its repository,
//! a repository fetched with a server's rules for tenants, or only the
//! script inline in the project), its limits (a server's ceilings, or the
//! flags of a local run), its executor, its log.

use std::path::PathBuf;
use std::sync::Arc;

use mizzen_host_api::types::{Event, GitConfig};

use crate::WorkerRequest;
use crate::dependencies::{ConfigFiles, Dependencies, DependencyError, NPM_TOKEN_SECRET};
use crate::executor::{ContainerLimits, EventContext, JobExecutor, PullSecret, Source};
use crate::jobs::JobCapability;
use crate::kept::KeptQuotas;
use crate::limits::WorkerLimits;
use crate::log::{LogRecord, LogSink};
use crate::project::{Project, ProjectDir, ProjectError};
use crate::script::ScriptSource;
use crate::source::{self, SourceError};
use crate::volume::{EventVolumes, HostPaths};
use mizzen_host_api::types::LogLevel;

/// Where a project's files (its script, what its jobs mount) come from.
#[derive(Debug, Clone)]
pub enum ProjectFiles {
    /// A directory that stands for the project's repository (`mizzen run`
    /// on a project directory); `file` is the project file, for messages.
    Directory {
        /// The directory.
        root: PathBuf,
        /// The project file.
        file: PathBuf,
    },
    /// A git repository, fetched as the machine's user would
    /// (`mizzen run`).
    Git(GitConfig),
    /// A git repository a server fetches for a tenant: only from git hosts,
    /// its name resolved as it is fetched and refused if it reaches the
    /// server itself or its cloud's metadata service.
    TenantGit(GitConfig),
    /// None: the script is inline in the project
    /// (`spec.workerTemplate.defaultConfigFiles`), and jobs get no source.
    Inline,
}

/// What a worker is made of.
pub struct WorkerPlan {
    /// The project.
    pub project: Arc<Project>,
    /// The event, with its project's secrets.
    pub event: Event,
    /// Where the project's files come from.
    pub files: ProjectFiles,
    /// The worker's limits.
    pub limits: WorkerLimits,
    /// What runs its jobs, or why nothing does.
    pub executor: Result<Arc<dyn JobExecutor>, String>,
    /// Where its log goes.
    pub log: Arc<dyn LogSink>,
    /// Prepares its script's modules and npm packages (shared by every
    /// worker of the process, which is what makes it once per version).
    pub dependencies: Arc<Dependencies>,
    /// Whether host paths are forbidden whatever the project's policy
    /// allows (a multi-tenant server's choice).
    pub forbid_host_paths: bool,
}

/// A worker ready to run.
pub struct PreparedWorker {
    /// Its script.
    pub script: ScriptSource,
    /// The worker.
    pub request: WorkerRequest,
    /// What its jobs' executor is told of the event (to clean up after a
    /// worker that was stopped before it ended).
    pub context: Arc<EventContext>,
}

/// Why a worker could not be put together.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// The repository could not be fetched.
    #[error(transparent)]
    Fetch(#[from] SourceError),
    /// The script could not be read.
    #[error(transparent)]
    Script(#[from] ProjectError),
    /// The project has neither a repository nor an inline script.
    #[error(
        "found nothing to run: project \"{0}\" has no git settings and none of brigade.wasm, brigade.ts and brigade.js in spec.workerTemplate.defaultConfigFiles"
    )]
    NothingToRun(String),
    /// The script's modules or npm packages could not be prepared.
    #[error(transparent)]
    Dependencies(#[from] DependencyError),
    /// No scratch directory for the checkout.
    #[error("cannot make a scratch directory for the project's checkout: {0}")]
    Scratch(std::io::Error),
}

impl WorkerPlan {
    /// Fetches the project's repository when its script is there, reads the
    /// script, and puts the worker together.
    pub async fn prepare(self) -> Result<PreparedWorker, PrepareError> {
        let WorkerPlan {
            project,
            event,
            files,
            limits,
            executor,
            log,
            dependencies,
            forbid_host_paths,
        } = self;
        let label = || PathBuf::from(format!("project \"{}\"", project.id));
        let prepare = Prepare {
            dependencies: &dependencies,
            token: event
                .project
                .secrets
                .get(NPM_TOKEN_SECRET)
                .map(String::as_str),
            log: &*log,
        };
        let (script, source) = match files {
            ProjectFiles::Directory { root, file } => {
                let dir = ProjectDir {
                    project: (*project).clone(),
                    root: root.clone(),
                    file,
                };
                let config = root.join(&project.worker.config_files_directory);
                let script = prepare
                    .script(&project, Some(&config), dir.script()?)
                    .await?;
                (script, Some(Source::Directory(root)))
            }
            ProjectFiles::Git(git) => {
                fetched(&project, Source::Git(git), label(), &prepare).await?
            }
            ProjectFiles::TenantGit(git) => {
                fetched(&project, Source::TenantGit(git), label(), &prepare).await?
            }
            ProjectFiles::Inline => {
                let (script, source) = inline(&project)?;
                (prepare.script(&project, None, script).await?, source)
            }
        };
        let context = Arc::new(EventContext {
            event_id: event.id.clone(),
            project_id: project.id.clone(),
            use_workspace: project.worker.use_workspace,
            source,
            policies: project.worker.job_policies,
            image_pull_secrets: project.worker.image_pull_secrets.clone(),
            pull_secrets: PullSecret::lookup(
                &project.worker.image_pull_secrets,
                &event.project.secrets,
            ),
            workspace_size: project.worker.workspace_size.clone(),
            container_limits: ContainerLimits::of(&limits),
            kept: KeptQuotas::of(&limits),
            volumes: EventVolumes {
                project: project
                    .worker
                    .volumes
                    .iter()
                    .map(|v| (v.name.clone(), v.size_bytes))
                    .collect(),
                quota_bytes: limits.volume_bytes,
                host_paths: if forbid_host_paths {
                    HostPaths::Forbidden
                } else {
                    HostPaths::Under(project.worker.allowed_host_paths.clone())
                },
            },
        });
        let jobs = match executor {
            Ok(executor) => JobCapability::Executor {
                executor,
                event: context.clone(),
            },
            Err(why) => JobCapability::Unavailable(why),
        };
        Ok(PreparedWorker {
            script,
            request: WorkerRequest {
                event,
                limits,
                log,
                jobs,
            },
            context,
        })
    }
}

/// A script, and what its jobs mount as the project's source.
type Prepared = (ScriptSource, Option<Source>);

/// What bundles an event's script with its modules and packages.
struct Prepare<'a> {
    dependencies: &'a Dependencies,
    token: Option<&'a str>,
    log: &'a dyn LogSink,
}

impl Prepare<'_> {
    /// The script bundled with what it requires, from `config` (the config
    /// files directory, when there is one) and the project's inline files;
    /// what was installed is written to the event's log.
    async fn script(
        &self,
        project: &Project,
        config: Option<&std::path::Path>,
        script: ScriptSource,
    ) -> Result<ScriptSource, PrepareError> {
        let files = ConfigFiles {
            dir: config,
            inline: &project.worker.default_config_files,
        };
        let prepared = self.dependencies.prepare(files, script, self.token).await?;
        for note in prepared.notes {
            self.log
                .record(LogRecord::logger(LogLevel::Info, &note, None));
        }
        Ok(prepared.script)
    }
}

/// The project's inline script; its jobs get no source.
fn inline(project: &Project) -> Result<Prepared, PrepareError> {
    let script = project
        .inline_script("")
        .ok_or_else(|| PrepareError::NothingToRun(project.id.clone()))?;
    Ok((script, None))
}

/// The script from a fresh checkout of `source`, as Brigade's worker read it
/// from its own (removed once it is read); the jobs get checkouts of the
/// same.
async fn fetched(
    project: &Project,
    source: Source,
    label: PathBuf,
    prepare: &Prepare<'_>,
) -> Result<Prepared, PrepareError> {
    let checkout = tempfile::tempdir().map_err(PrepareError::Scratch)?;
    let root = checkout.path().join("source");
    source::checkout(&source, &root).await?;
    let mut project = project.clone();
    if let Source::Git(git) | Source::TenantGit(git) = &source {
        project.worker.git = Some(git.clone());
    }
    let config = root.join(&project.worker.config_files_directory);
    // Brigade's worker wrote the project's default config files into its
    // checkout where the repository had none; modules and package files
    // among them are then found as the repository's own.
    let mut inline = project.worker.default_config_files.clone();
    inline.remove(crate::project::MODULE_SCRIPT);
    if config.is_dir() {
        crate::dependencies::write_inline(&config, &inline)?;
    }
    let dir = ProjectDir {
        project,
        root,
        file: label,
    };
    let script = prepare
        .script(&dir.project, Some(&config), dir.script()?)
        .await?;
    drop(checkout);
    Ok((script, Some(source)))
}
