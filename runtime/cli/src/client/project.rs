//! `mizzen project`: projects, their secrets and project roles.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use anyhow::Context;
use base64::Engine as _;
use clap::{ArgGroup, Args, Subcommand, ValueEnum};
use mizzen_runtime::project::{
    DEFAULT_CONFIG_FILES_DIRECTORY, MAX_PROJECT_FILE_BYTES, MODULE_SCRIPT, PROJECT_FILE,
    SCRIPT_NAMES, validate_secret_key,
};
use mizzen_runtime::script::MAX_SCRIPT_BYTES;
use reqwest::Method;
use serde_json::{Map, Value, json};

use super::auth::{PrincipalFilter, Principals, describe};
use super::http::{API_VERSION, Api};
use super::print::{self, OutputArg, Table, age_of, field, out};
use super::{Failure, bad_input, confirm, read_limited};

/// A flat secrets file holds a few keys; 1 MiB is generous.
const MAX_SECRETS_FILE_BYTES: u64 = 1024 * 1024;

/// `mizzen project`.
#[derive(Subcommand)]
pub enum ProjectCommand {
    /// Create a project from a project file, or a directory holding project.yaml
    Create {
        #[command(flatten)]
        file: ProjectFileArg,
    },
    /// Show a project
    Get {
        #[command(flatten)]
        id: ProjectIdArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// List projects
    #[command(visible_alias = "ls")]
    List {
        /// Continue a previous listing from this token
        #[arg(long = "continue", value_name = "TOKEN")]
        continue_from: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Update a project from a project file, or a directory holding project.yaml
    Update {
        #[command(flatten)]
        file: ProjectFileArg,
        /// Create the project if it does not exist
        #[arg(short, long)]
        create: bool,
    },
    /// Delete a project with its events and secrets
    Delete {
        #[command(flatten)]
        id: ProjectIdArg,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
    },
    /// List a project's cron schedules (brigade.sh/cron subscriptions with
    /// a schedule): their last and next ticks
    #[command(visible_alias = "schedule")]
    Schedules {
        #[command(flatten)]
        id: ProjectIdArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Manage a project's secrets
    #[command(subcommand, visible_alias = "secrets")]
    Secret(SecretCommand),
    /// Manage who may use a project
    #[command(subcommand, visible_alias = "roles")]
    Role(ProjectRoleCommand),
    /// Manage a project's volumes (spec.workerTemplate.volumes, kept between
    /// events)
    #[command(subcommand, visible_alias = "volume")]
    Volumes(VolumeCommand),
    /// Manage a project's caches (job.caches, kept between events)
    #[command(subcommand, visible_alias = "cache")]
    Caches(super::kept::CacheCommand),
}

/// `mizzen project volumes`.
#[derive(Subcommand)]
pub enum VolumeCommand {
    /// List a project's volumes: those it declares and those kept for it,
    /// with their sizes and what they hold
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        project: ProjectArg,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Delete a project's volume and everything in it (refused while a
    /// running job mounts it); the next event that mounts it starts empty
    #[command(visible_alias = "rm")]
    Delete {
        #[command(flatten)]
        project: ProjectArg,
        /// The volume's name
        #[arg(value_name = "NAME")]
        name: String,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
    },
}

/// `-f/--file`.
#[derive(Args)]
pub struct ProjectFileArg {
    /// The project file (YAML or JSON), or a directory holding project.yaml.
    /// A project without git settings whose config files directory holds
    /// brigade.ts or brigade.js sends those scripts along, inline.
    #[arg(short, long, value_name = "FILE|DIR")]
    file: PathBuf,
}

/// `-i/--id` of `get` and `delete` (also `-p/--project`, as in brig).
#[derive(Args)]
pub struct ProjectIdArg {
    /// The project's ID
    #[arg(
        short = 'i',
        long = "id",
        visible_short_alias = 'p',
        visible_alias = "project",
        value_name = "ID"
    )]
    id: String,
}

/// `-p/--project` of secrets and roles.
#[derive(Args)]
pub struct ProjectArg {
    /// The project's ID
    #[arg(short = 'p', long = "project", value_name = "ID")]
    pub(super) project: String,
}

/// `mizzen project secret`.
#[derive(Subcommand)]
pub enum SecretCommand {
    /// List a project's secrets (keys only: values are never shown)
    #[command(visible_alias = "ls")]
    List {
        #[command(flatten)]
        project: ProjectArg,
        /// Continue a previous listing from this token
        #[arg(long = "continue", value_name = "TOKEN")]
        continue_from: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Set secrets
    Set(SecretSetArgs),
    /// Unset secrets
    Unset {
        #[command(flatten)]
        project: ProjectArg,
        /// A secret's key (repeatable)
        #[arg(short = 'u', long = "unset", value_name = "KEY", required = true)]
        keys: Vec<String>,
    },
}

/// `mizzen project secret set`.
#[derive(Args)]
#[command(group(ArgGroup::new("values").required(true).multiple(true).args(["set", "file"])))]
pub struct SecretSetArgs {
    #[command(flatten)]
    project: ProjectArg,
    /// A secret (repeatable); wins over the file's
    #[arg(short = 's', long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Secrets from a flat YAML or JSON map of keys to values
    #[arg(short, long, value_name = "FILE")]
    file: Option<PathBuf>,
}

/// Project roles.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProjectRole {
    /// Manage the project, its secrets and roles
    #[value(name = "PROJECT_ADMIN")]
    Admin,
    /// Update the project
    #[value(name = "PROJECT_DEVELOPER")]
    Developer,
    /// Create and manage the project's events
    #[value(name = "PROJECT_USER")]
    User,
}

impl ProjectRole {
    fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "PROJECT_ADMIN",
            Self::Developer => "PROJECT_DEVELOPER",
            Self::User => "PROJECT_USER",
        }
    }
}

/// `mizzen project role`.
#[derive(Subcommand)]
pub enum ProjectRoleCommand {
    /// Grant a project role to users and service accounts
    Grant(ProjectRoleArgs),
    /// Revoke a project role from users and service accounts
    Revoke(ProjectRoleArgs),
    /// List project role assignments (of one project, or of all)
    #[command(visible_alias = "ls")]
    List(ProjectRoleListArgs),
}

/// `mizzen project role grant|revoke`.
#[derive(Args)]
pub struct ProjectRoleArgs {
    /// The role
    #[arg(value_enum, ignore_case = true)]
    role: ProjectRole,
    #[command(flatten)]
    project: ProjectArg,
    #[command(flatten)]
    principals: Principals,
}

/// `mizzen project role list`.
#[derive(Args)]
pub struct ProjectRoleListArgs {
    /// Only this project's assignments
    #[arg(short = 'p', long = "project", value_name = "ID")]
    project: Option<String>,
    /// Only assignments of this role
    #[arg(short, long, value_enum, ignore_case = true)]
    role: Option<ProjectRole>,
    #[command(flatten)]
    principal: PrincipalFilter,
    /// Continue a previous listing from this token
    #[arg(long = "continue", value_name = "TOKEN")]
    continue_from: Option<String>,
    #[command(flatten)]
    output: OutputArg,
}

/// Runs `mizzen project ...`.
pub async fn run(command: ProjectCommand) -> Result<(), Failure> {
    match command {
        ProjectCommand::Create { file } => {
            let project = load(&file.file)?;
            let api = Api::from_config()?;
            api.request(Method::POST, &["v2", "projects"])
                .json(project.body)
                .send()
                .await?;
            out(format!("Created project {:?}.", project.id));
            Ok(())
        }
        ProjectCommand::Get { id, output } => {
            let api = Api::from_config()?;
            let project = api.get(&["v2", "projects", &id.id]).send().await?;
            print::emit(output.output, &project, |p| {
                projects_table(std::slice::from_ref(p)).render()
            })
        }
        ProjectCommand::List {
            continue_from,
            output,
        } => {
            let api = Api::from_config()?;
            let list = api
                .get(&["v2", "projects"])
                .query_opt("continue", continue_from.as_deref())
                .send()
                .await?;
            print::emit(output.output, &list, |list| {
                print::list_table(list, "No projects found.", projects_table)
            })
        }
        ProjectCommand::Update { file, create } => {
            let project = load(&file.file)?;
            let api = Api::from_config()?;
            let mut call = api
                .request(Method::PUT, &["v2", "projects", &project.id])
                .json(project.body);
            if create {
                call = call.query("create", "true");
            }
            call.send().await?;
            out(format!("Updated project {:?}.", project.id));
            Ok(())
        }
        ProjectCommand::Delete { id, yes } => {
            let api = Api::from_config()?;
            let question = format!(
                "Delete project {:?} with all its events, logs and secrets?",
                id.id
            );
            if !confirm(yes, &question)? {
                return Ok(());
            }
            api.request(Method::DELETE, &["v2", "projects", &id.id])
                .send()
                .await?;
            out(format!("Deleted project {:?}.", id.id));
            Ok(())
        }
        ProjectCommand::Schedules { id, output } => {
            let api = Api::from_config()?;
            let list = api
                .get(&["v2", "projects", &id.id, "schedules"])
                .send()
                .await?;
            print::emit(output.output, &list, |list| {
                print::list_table(list, "The project has no schedules.", schedules_table)
            })
        }
        ProjectCommand::Secret(command) => secrets(command).await,
        ProjectCommand::Role(command) => roles(command).await,
        ProjectCommand::Volumes(command) => volumes(command).await,
        ProjectCommand::Caches(command) => super::kept::caches(command).await,
    }
}

// ---------------------------------------------------------------------------
// Volumes.

async fn volumes(command: VolumeCommand) -> Result<(), Failure> {
    match command {
        VolumeCommand::List { project, output } => {
            let api = Api::from_config()?;
            let list = api
                .get(&["v2", "projects", &project.project, "volumes"])
                .send()
                .await?;
            print::emit(output.output, &list, |list| {
                let empty = format!(
                    "Project {:?} declares no volumes and has none kept.",
                    project.project
                );
                print::list_table(list, &empty, |items| {
                    let mut table = Table::new(&["NAME", "SIZE", "USED", "STATE"]);
                    for item in items {
                        let bytes = |key: &str| {
                            item[key]
                                .as_u64()
                                .map(mizzen_runtime::limits::LimitValue::Bytes)
                                .map_or_else(|| "-".to_string(), |b| b.to_string())
                        };
                        let state = match (item["declared"].as_bool(), item["created"].as_bool()) {
                            (Some(false), _) => "not declared (delete it to free its room)",
                            (_, Some(false)) => "not created yet",
                            _ => "kept",
                        };
                        table.row(vec![
                            field(item, &["name"]),
                            bytes("sizeBytes"),
                            bytes("usedBytes"),
                            state.into(),
                        ]);
                    }
                    table
                })
            })
        }
        VolumeCommand::Delete { project, name, yes } => {
            let project = &project.project;
            let question =
                format!("Delete volume {name:?} of project {project:?} and everything in it?");
            if !confirm(yes, &question)? {
                return Ok(());
            }
            let api = Api::from_config()?;
            api.request(
                Method::DELETE,
                &["v2", "projects", project, "volumes", &name],
            )
            .send()
            .await?;
            out(format!("Deleted volume {name:?} of project {project:?}."));
            Ok(())
        }
    }
}

fn schedules_table(items: &[Value]) -> Table {
    let mut table = Table::new(&[
        "TYPE",
        "SCHEDULE",
        "TIME ZONE",
        "LAST TICK",
        "LAST EVENT",
        "NEXT TICK",
    ]);
    for item in items {
        table.row(vec![
            field(item, &["type"]),
            field(item, &["schedule"]),
            field(item, &["timeZone"]),
            field(item, &["lastTick"]),
            field(item, &["lastEventID"]),
            field(item, &["nextTick"]),
        ]);
    }
    table
}

fn projects_table(items: &[Value]) -> Table {
    let mut table = Table::new(&["ID", "DESCRIPTION", "AGE"]);
    for item in items {
        table.row(vec![
            field(item, &["metadata", "id"]),
            field(item, &["description"]),
            age_of(item, &["metadata", "created"]),
        ]);
    }
    table
}

// ---------------------------------------------------------------------------
// Project files.

/// A project file read for the API.
#[derive(Debug)]
pub struct LoadedProject {
    /// `metadata.id`.
    pub id: String,
    /// The request body: the file as JSON, with scripts inlined.
    pub body: Value,
    /// The script files sent inline.
    pub inlined: Vec<PathBuf>,
}

/// Reads the project file at `path` (or `path/project.yaml`) and inlines
/// its local scripts, saying on stderr which ones; a bad file is bad input.
fn load(path: &Path) -> Result<LoadedProject, Failure> {
    let project = load_project(path).map_err(bad_input)?;
    for file in &project.inlined {
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        super::note(format!(
            "sending {} as spec.workerTemplate.defaultConfigFiles[\"{name}\"]",
            file.display()
        ));
    }
    Ok(project)
}

/// Reads a project file, YAML (or JSON), into the JSON the API takes, with
/// `apiVersion` and `kind` filled in when missing. When the project has no
/// git `cloneURL`, `brigade.wasm` (in base64), `brigade.ts` and `brigade.js`
/// from its config files directory (relative to the project file's
/// directory) go into `spec.workerTemplate.defaultConfigFiles`, unless an
/// inline file of that name is there already: a local project runs on a
/// server as it runs with `mizzen run`.
pub fn load_project(path: &Path) -> anyhow::Result<LoadedProject> {
    let file = if path.is_dir() {
        path.join(PROJECT_FILE)
    } else {
        path.to_path_buf()
    };
    let size = std::fs::metadata(&file)
        .with_context(|| format!("cannot read the project file {}", file.display()))?
        .len();
    if size > MAX_PROJECT_FILE_BYTES {
        anyhow::bail!(
            "{}: the file is {size} bytes; the limit is {MAX_PROJECT_FILE_BYTES} bytes",
            file.display()
        );
    }
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read the project file {}", file.display()))?;
    let mut body: Value = serde_norway::from_str(&text)
        .with_context(|| format!("{}: not a valid YAML or JSON project", file.display()))?;
    let Some(object) = body.as_object_mut() else {
        anyhow::bail!(
            "{}: a project file is a mapping (apiVersion, kind, metadata, spec)",
            file.display()
        );
    };
    object
        .entry("apiVersion")
        .or_insert_with(|| json!(API_VERSION));
    object.entry("kind").or_insert_with(|| json!("Project"));
    let id = field(&body, &["metadata", "id"]);
    if id.is_empty() {
        anyhow::bail!("{}: metadata.id is missing", file.display());
    }
    // Checked here with the server's own parser, so that a mistake is named
    // by the user's file, field and line rather than by a place in the JSON
    // sent; the server checks again.
    mizzen_runtime::project::Project::parse(&file, &text)?;
    let root = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let inlined = inline_scripts(&mut body, root)?;
    Ok(LoadedProject { id, body, inlined })
}

/// Files a script's bundle may read (see mizzen_runtime::bundle): sources,
/// JSON (package.json and package-lock.json among them) and yarn.lock.
const MODULE_EXTENSIONS: [&str; 7] = ["js", "cjs", "mjs", "ts", "cts", "mts", "json"];

/// The config directory's module files a project takes along: a tree of
/// kilobyte sources, well under this, or a directory that is not one.
const MAX_MODULE_FILES: usize = 1000;

/// Collects the module files under `dir` (`prefix` is its path in the config
/// directory), leaving out `node_modules` (the server fetches packages
/// itself), hidden entries and links.
fn module_files(
    dir: &Path,
    prefix: &str,
    found: &mut BTreeMap<String, (PathBuf, String)>,
) -> anyhow::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut entries: Vec<_> = entries.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if name.starts_with('.') || name == "node_modules" || kind.is_symlink() {
            continue;
        }
        let relative = format!("{prefix}{name}");
        if kind.is_dir() {
            module_files(&entry.path(), &format!("{relative}/"), found)?;
            continue;
        }
        let extension = Path::new(&name).extension().and_then(|e| e.to_str());
        let wanted =
            name == "yarn.lock" || extension.is_some_and(|e| MODULE_EXTENSIONS.contains(&e));
        if !kind.is_file() || !wanted {
            continue;
        }
        if found.len() >= MAX_MODULE_FILES {
            anyhow::bail!(
                "{}: more than {MAX_MODULE_FILES} module files to send with the script; give the project a git repository instead",
                dir.display()
            );
        }
        let path = entry.path();
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        if size > MAX_SCRIPT_BYTES as u64 {
            anyhow::bail!(
                "{}: the file is {size} bytes; the limit is {MAX_SCRIPT_BYTES} bytes",
                path.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} as text", path.display()))?;
        found.insert(relative, (path, text));
    }
    Ok(())
}

/// Moves the local scripts of a project without git settings into its
/// `defaultConfigFiles`; returns the files moved.
fn inline_scripts(body: &mut Value, root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let Some(template) = body
        .pointer_mut("/spec/workerTemplate")
        .and_then(Value::as_object_mut)
    else {
        return Ok(Vec::new()); // the server will say what is missing
    };
    let clone_url = template
        .get("git")
        .and_then(|git| git.get("cloneURL"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !clone_url.trim().is_empty() {
        return Ok(Vec::new()); // the worker reads the scripts from the repository
    }
    let directory = template
        .get("configFilesDirectory")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty())
        .unwrap_or(DEFAULT_CONFIG_FILES_DIRECTORY)
        .to_string();
    if !is_relative_inside(&directory) {
        return Ok(Vec::new()); // the server will refuse it
    }
    let directory = root.join(directory);
    let mut found = BTreeMap::new();
    for name in SCRIPT_NAMES {
        let path = directory.join(name);
        if !path.is_file() {
            continue;
        }
        let inline = template
            .get("defaultConfigFiles")
            .and_then(|files| files.get(name))
            .is_some();
        if inline {
            continue;
        }
        let size = std::fs::metadata(&path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .len();
        if name == MODULE_SCRIPT {
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            mizzen_runtime::module::check(&path.display().to_string(), &bytes)?;
            let text = base64::engine::general_purpose::STANDARD.encode(bytes);
            found.insert(name, (path, text));
            continue;
        }
        if size > MAX_SCRIPT_BYTES as u64 {
            anyhow::bail!(
                "{}: the script is {size} bytes; the limit is {MAX_SCRIPT_BYTES} bytes",
                path.display()
            );
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        found.insert(name, (path, text));
    }
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let files = template
        .entry("defaultConfigFiles")
        .or_insert_with(|| Value::Object(Map::new()));
    if files.is_null() {
        *files = Value::Object(Map::new());
    }
    let Some(files) = files.as_object_mut() else {
        anyhow::bail!("spec.workerTemplate.defaultConfigFiles must be a map of file names to text");
    };
    let scripted = found.keys().any(|name| *name != MODULE_SCRIPT);
    let mut inlined = Vec::new();
    for (name, (path, text)) in found {
        files.insert(name.to_string(), Value::String(text));
        inlined.push(path);
    }
    inlined.sort_by_key(|path| SCRIPT_NAMES.iter().position(|n| path.ends_with(n)));
    // A script's own modules and its package files go along, so that the
    // server bundles what `mizzen run` bundles.
    if scripted {
        let mut modules = BTreeMap::new();
        module_files(&directory, "", &mut modules)?;
        for (name, (path, text)) in modules {
            if SCRIPT_NAMES.contains(&name.as_str()) || files.contains_key(&name) {
                continue;
            }
            files.insert(name, Value::String(text));
            inlined.push(path);
        }
    }
    Ok(inlined)
}

/// A relative path that stays inside its root (no `..`, no root).
fn is_relative_inside(path: &str) -> bool {
    !path.contains('\\')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

// ---------------------------------------------------------------------------
// Secrets.

async fn secrets(command: SecretCommand) -> Result<(), Failure> {
    match command {
        SecretCommand::List {
            project,
            continue_from,
            output,
        } => {
            let api = Api::from_config()?;
            let list = api
                .get(&["v2", "projects", &project.project, "secrets"])
                .query_opt("continue", continue_from.as_deref())
                .send()
                .await?;
            print::emit(output.output, &list, |list| {
                let empty = format!("Project {:?} has no secrets.", project.project);
                print::list_table(list, &empty, |items| {
                    let mut table = Table::new(&["KEY", "VALUE"]);
                    for item in items {
                        table.row(vec![field(item, &["key"]), "*** (redacted)".into()]);
                    }
                    table
                })
            })
        }
        SecretCommand::Set(args) => {
            let values = secret_values(&args)?;
            let api = Api::from_config()?;
            let project = &args.project.project;
            for (key, value) in values {
                let body = json!({
                    "apiVersion": API_VERSION,
                    "kind": "Secret",
                    "key": key,
                    "value": value,
                });
                api.request(Method::PUT, &["v2", "projects", project, "secrets", &key])
                    .json(body)
                    .send()
                    .await?;
                out(format!("Set secret {key:?} for project {project:?}."));
            }
            Ok(())
        }
        SecretCommand::Unset { project, keys } => {
            let api = Api::from_config()?;
            let project = &project.project;
            for key in keys {
                api.request(
                    Method::DELETE,
                    &["v2", "projects", project, "secrets", &key],
                )
                .send()
                .await?;
                out(format!("Unset secret {key:?} for project {project:?}."));
            }
            Ok(())
        }
    }
}

/// `--file` values, then `--set` ones over them, every key checked.
fn secret_values(args: &SecretSetArgs) -> Result<BTreeMap<String, String>, Failure> {
    let mut values = BTreeMap::new();
    if let Some(path) = &args.file {
        let text = read_limited(path, MAX_SECRETS_FILE_BYTES, "secrets file")?;
        values = parse_secrets_file(&text)
            .map_err(|e| bad_input(anyhow::anyhow!("{}: {e}", path.display())))?;
    }
    for pair in &args.set {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(bad_input(anyhow::anyhow!(
                "--set {pair:?} must have the form KEY=VALUE"
            )));
        };
        validate_secret_key(key).map_err(|e| bad_input(anyhow::anyhow!("--set: {e}")))?;
        values.insert(key.to_string(), value.to_string());
    }
    Ok(values)
}

/// A flat map of keys to strings, numbers or booleans.
fn parse_secrets_file(text: &str) -> Result<BTreeMap<String, String>, String> {
    let map: BTreeMap<String, serde_norway::Value> = serde_norway::from_str(text)
        .map_err(|e| format!("expected a flat map of secret keys to values: {e}"))?;
    let mut values = BTreeMap::new();
    for (key, value) in map {
        let value = match value {
            serde_norway::Value::String(s) => s,
            serde_norway::Value::Number(n) => n.to_string(),
            serde_norway::Value::Bool(b) => b.to_string(),
            _ => {
                return Err(format!(
                    "secret {key:?} must be a string, number or boolean"
                ));
            }
        };
        validate_secret_key(&key).map_err(|e| e.to_string())?;
        values.insert(key, value);
    }
    Ok(values)
}

// ---------------------------------------------------------------------------
// Project roles.

async fn roles(command: ProjectRoleCommand) -> Result<(), Failure> {
    let api = Api::from_config()?;
    match command {
        ProjectRoleCommand::Grant(args) => {
            let project = &args.project.project;
            for (kind, id) in args.principals.pairs() {
                let body = json!({
                    "apiVersion": API_VERSION,
                    "kind": "ProjectRoleAssignment",
                    "role": args.role.as_str(),
                    "principal": {"type": kind, "id": id},
                });
                api.request(
                    Method::POST,
                    &["v2", "projects", project, "role-assignments"],
                )
                .json(body)
                .send()
                .await?;
                out(format!(
                    "Granted role {} for project {project:?} to {}.",
                    args.role.as_str(),
                    describe(kind, id)
                ));
            }
            Ok(())
        }
        ProjectRoleCommand::Revoke(args) => {
            let project = &args.project.project;
            for (kind, id) in args.principals.pairs() {
                api.request(
                    Method::DELETE,
                    &["v2", "projects", project, "role-assignments"],
                )
                .query("role", args.role.as_str())
                .query("principalType", kind)
                .query("principalID", id)
                .send()
                .await?;
                out(format!(
                    "Revoked role {} for project {project:?} from {}.",
                    args.role.as_str(),
                    describe(kind, id)
                ));
            }
            Ok(())
        }
        ProjectRoleCommand::List(args) => {
            let mut call = match &args.project {
                Some(project) => api.get(&["v2", "projects", project, "role-assignments"]),
                None => api.get(&["v2", "project-role-assignments"]),
            };
            if let Some((kind, id)) = args.principal.query() {
                call = call.query("principalType", kind).query("principalID", id);
            }
            let list = call
                .query_opt("role", args.role.map(ProjectRole::as_str))
                .query_opt("continue", args.continue_from.as_deref())
                .send()
                .await?;
            let project = args.project.clone().unwrap_or_default();
            print::emit(args.output.output, &list, |list| {
                print::list_table(list, "No project role assignments found.", |items| {
                    project_roles_table(items, &project)
                })
            })
        }
    }
}

fn project_roles_table(items: &[Value], project: &str) -> Table {
    let mut table = Table::new(&["PROJECT", "PRINCIPAL TYPE", "PRINCIPAL ID", "ROLE"]);
    for item in items {
        let mut project_id = field(item, &["projectID"]);
        if project_id.is_empty() {
            project_id = project.to_string();
        }
        table.row(vec![
            project_id,
            field(item, &["principal", "type"]),
            field(item, &["principal", "id"]),
            field(item, &["role"]),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
    }

    #[test]
    fn a_typescript_directory_sends_its_script_inline() {
        let dir = examples().join("11-typescript");
        let project = load_project(&dir).unwrap();
        assert_eq!(project.id, "hello-typescript");
        assert_eq!(
            project.inlined,
            vec![dir.join(".brigade").join("brigade.ts")]
        );
        let script = std::fs::read_to_string(dir.join(".brigade/brigade.ts")).unwrap();
        let files = &project.body["spec"]["workerTemplate"]["defaultConfigFiles"];
        assert_eq!(files, &json!({"brigade.ts": script}));
        // The rest of the file is as written.
        assert_eq!(project.body["apiVersion"], "brigade.sh/v2");
        assert_eq!(project.body["kind"], "Project");
        assert_eq!(project.body["spec"]["workerTemplate"]["logLevel"], "DEBUG");
        assert_eq!(
            project.body["spec"]["eventSubscriptions"],
            json!([{"source": "brigade.sh/cli", "types": ["exec"]}])
        );
        // Naming the file does the same.
        let by_file = load_project(&dir.join("project.yaml")).unwrap();
        assert_eq!(by_file.body, project.body);
    }

    #[test]
    fn an_inline_script_is_sent_as_written() {
        let dir = examples().join("03-first-job");
        let project = load_project(&dir).unwrap();
        assert_eq!(project.id, "first-job");
        assert!(project.inlined.is_empty());
        let files = project.body["spec"]["workerTemplate"]["defaultConfigFiles"]
            .as_object()
            .unwrap();
        assert_eq!(files.len(), 1);
        assert!(
            files["brigade.js"]
                .as_str()
                .unwrap()
                .contains("my-first-job")
        );
    }

    fn project_dir(yaml: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("project.yaml"), yaml).unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        dir
    }

    const HEAD: &str = "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: local\nspec:\n  workerTemplate:\n";

    #[test]
    fn an_inline_script_of_the_same_name_is_kept() {
        let yaml = format!(
            "{HEAD}    configFilesDirectory: scripts\n    defaultConfigFiles:\n      brigade.js: inline\n"
        );
        let dir = project_dir(
            &yaml,
            &[
                ("scripts/brigade.js", "file js"),
                ("scripts/brigade.ts", "file ts"),
            ],
        );
        let project = load_project(dir.path()).unwrap();
        assert_eq!(
            project.body["spec"]["workerTemplate"]["defaultConfigFiles"],
            json!({"brigade.js": "inline", "brigade.ts": "file ts"})
        );
        assert_eq!(project.inlined, vec![dir.path().join("scripts/brigade.ts")]);
    }

    #[test]
    fn git_projects_send_nothing_and_escaping_directories_are_refused() {
        let git = format!("{HEAD}    git:\n      cloneURL: https://github.com/x/y.git\n");
        let dir = project_dir(&git, &[(".brigade/brigade.js", "js")]);
        let project = load_project(dir.path()).unwrap();
        assert!(project.inlined.is_empty());
        assert!(
            project.body["spec"]["workerTemplate"]
                .get("defaultConfigFiles")
                .is_none()
        );

        // A directory outside the project is refused before anything is
        // read or sent, as the server would refuse it.
        let escaping = format!("{HEAD}    configFilesDirectory: ../elsewhere\n");
        let dir = project_dir(&escaping, &[]);
        let err = format!("{:#}", load_project(dir.path()).unwrap_err());
        assert!(
            err.contains("spec.workerTemplate.configFilesDirectory")
                && err.contains("stays inside the repository"),
            "{err}"
        );
    }

    #[test]
    fn a_null_worker_template_map_takes_the_scripts() {
        let yaml = format!("{HEAD}    defaultConfigFiles:\n");
        let dir = project_dir(&yaml, &[(".brigade/brigade.js", "js")]);
        let project = load_project(dir.path()).unwrap();
        assert_eq!(
            project.body["spec"]["workerTemplate"]["defaultConfigFiles"],
            json!({"brigade.js": "js"})
        );
    }

    #[test]
    fn bad_project_files() {
        let dir = project_dir("- a\n- list\n", &[]);
        let err = format!("{:#}", load_project(dir.path()).unwrap_err());
        assert!(err.contains("mapping"), "{err}");
        let dir = project_dir("apiVersion: brigade.sh/v2\nspec: {}\n", &[]);
        let err = format!("{:#}", load_project(dir.path()).unwrap_err());
        assert!(err.contains("metadata.id"), "{err}");
        let err = format!(
            "{:#}",
            load_project(&dir.path().join("missing.yaml")).unwrap_err()
        );
        assert!(err.contains("cannot read the project file"), "{err}");
    }

    #[test]
    fn secrets_files() {
        assert_eq!(
            parse_secrets_file("a: x\nb: 2\nc: true\n").unwrap(),
            BTreeMap::from([
                ("a".to_string(), "x".to_string()),
                ("b".to_string(), "2".to_string()),
                ("c".to_string(), "true".to_string()),
            ])
        );
        assert!(parse_secrets_file("a: [1]\n").is_err());
        assert!(parse_secrets_file("1bad: x\n").is_err());
    }

    #[test]
    fn tables() {
        let projects = [json!({
            "metadata": {"id": "hello-world", "created": "2000-01-01T00:00:00Z"},
            "description": "Hello",
        })];
        let text = projects_table(&projects).render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID            DESCRIPTION   AGE");
        assert!(
            lines[1].starts_with("hello-world   Hello         "),
            "{text}"
        );
        assert!(lines[1].ends_with('y'), "{text}");

        let roles = [json!({"role": "PROJECT_USER", "principal": {"type": "USER", "id": "al"}})];
        assert_eq!(
            project_roles_table(&roles, "p").render(),
            "PROJECT   PRINCIPAL TYPE   PRINCIPAL ID   ROLE\n\
             p         USER             al             PROJECT_USER\n"
        );
    }
}
