//! `mizzen run`: one event for one project, on this machine.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use mizzen_docker::{DockerConfig, DockerExecutor, LazyDockerExecutor};
use mizzen_objects::{JobStorage, Objects};
use mizzen_runtime::assembly::{ProjectFiles, WorkerPlan};
use mizzen_runtime::dependencies::Dependencies;
use mizzen_runtime::executor::{JobExecutor, Source};
use mizzen_runtime::limits::{LimitSettings, LimitValue};
use mizzen_runtime::project::{
    EventDetails, ProjectDir, validate_secret_key, validate_secret_value, validate_secrets,
};
use mizzen_runtime::redact::Redactor;
use mizzen_runtime::wasm_job::{HostJobExecutor, ModuleFetcher};
use mizzen_runtime::{Sandbox, SandboxConfig, WorkerLimits};
use mizzen_server::store::Store;

use crate::kubernetes::KubernetesArgs;
use crate::output::RunLog;
use crate::{
    EXIT_BAD_INPUT, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_NOT_SUBSCRIBED, ExecutorKind, Failure,
    RunArgs,
};
use mizzen_forwarding::{ForwardedLine, Forwarder};

/// Payloads travel inside the event; Brigade's gateways accepted up to
/// GitHub's 25 MB, and the CLI allows as much.
const MAX_PAYLOAD_BYTES: u64 = 25 * 1024 * 1024;
/// `mizzen run` handles one event: its worker, the script's compilation and
/// its Wasm jobs running at once (each an instance; the worker's
/// concurrent-jobs limit is the bound). Each slot reserves address space
/// only (4 GiB of the 128 TiB a process has), not memory.
const CLI_MAX_INSTANCES: u32 = 1_000;
/// How long a finished run waits for its lines to reach the collector.
const FORWARDING_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
/// A secrets file is a flat map of a few keys; 1 MiB is generous.
const MAX_SECRETS_FILE_BYTES: u64 = 1024 * 1024;

pub async fn run(args: RunArgs) -> Result<(), Failure> {
    let dir = ProjectDir::load(&args.project)?;
    let payload = match &args.payload_file {
        Some(path) => read_limited(path, MAX_PAYLOAD_BYTES)
            .with_context(|| format!("cannot read the payload file {}", path.display()))?,
        None => args.payload.clone().unwrap_or_default(),
    };
    let secrets = secrets(&args)?;
    let details = EventDetails {
        source: args.source.clone(),
        event_type: args.event_type.clone(),
        qualifiers: args.qualifiers.iter().cloned().collect(),
        labels: args.labels.iter().cloned().collect(),
        payload,
        ..EventDetails::default()
    };
    if !dir.project.subscribes_to(&details) {
        return Err(Failure {
            code: EXIT_NOT_SUBSCRIBED,
            error: anyhow::anyhow!(
                "project \"{}\" does not subscribe to events of source \"{}\" and type \"{}\"{}; no worker ran{}",
                dir.project.id,
                details.source,
                details.event_type,
                pairs_said(&details.qualifiers, &details.labels),
                subscription_hint(&dir.project, &details),
            ),
        });
    }
    let mut event = dir.project.event(details, secrets);
    if let Some(level) = args.log_level {
        event.worker.log_level = level;
    }
    // A local run has no operator above the user: the project's limits
    // apply without ceilings, and the flags override them.
    let (mut limits, _) =
        WorkerLimits::for_project(&dir.project.worker.limits, &LimitSettings::default());
    if let Some(timeout) = args.timeout {
        limits.wall_time = timeout;
    }
    if let Some(cpu) = args.cpu_limit {
        limits.cpu_time = cpu;
    }
    if let Some(bytes) = args.memory_limit {
        limits.memory_bytes = bytes;
    }

    let data_dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
    let config = SandboxConfig {
        max_instances: CLI_MAX_INSTANCES,
        ..SandboxConfig::from_env()
    };
    let cache_dir = config.cache_dir.clone();
    let sandbox = Arc::new(Sandbox::new(config).await.map_err(|e| Failure {
        code: EXIT_FAILED,
        error: e.into(),
    })?);
    // Wasm jobs run in this process's sandbox, beside the script; the rest
    // on the executor asked for.
    let storage = run_storage(&data_dir).await?;
    let executor = executor(args.executor, &args.kubernetes, &data_dir, storage.clone())
        .await?
        .map(|containers| -> Arc<dyn JobExecutor> {
            Arc::new(HostJobExecutor::new(
                containers,
                sandbox.clone(),
                Arc::new(ModuleFetcher::new(cache_dir.clone())),
            ))
        });
    // Every secret value is masked in what the run prints and keeps, as the
    // server masks it.
    let redactor = Arc::new(Redactor::new(event.project.secrets.values()));
    let mut log = RunLog::new(
        data_dir.join("events").join(&event.id).join("logs"),
        redactor,
    );
    let forwarder = match args.forwarding.config(&data_dir)? {
        Some(config) if dir.project.worker.log_forwarding.enabled => {
            let forwarder = Arc::new(
                Forwarder::start(config, Arc::default())
                    .await
                    .context("log forwarding")?,
            );
            log = log.forwarding_to(
                forwarder.clone(),
                ForwardedLine {
                    time_nanos: 0,
                    project: dir.project.id.clone(),
                    event: event.id.clone(),
                    source: args.source.clone(),
                    event_type: args.event_type.clone(),
                    job: String::new(),
                    container: String::new(),
                    message: String::new(),
                    labels: dir.project.worker.log_forwarding.labels.clone(),
                },
            );
            Some(forwarder)
        }
        _ => None,
    };
    let log = Arc::new(log);
    // A project whose scripts live in its repository is checked out and
    // read from there (as Brigade's worker read them from /var/vcs): the
    // user's own project, so a plain git fetch, local and file:// URLs
    // included.
    let files = match dir.source() {
        Source::Git(git) => ProjectFiles::Git(git),
        _ => ProjectFiles::Directory {
            root: dir.root.clone(),
            file: dir.file.clone(),
        },
    };
    let prepared = WorkerPlan {
        project: Arc::new(dir.project),
        event,
        files,
        limits,
        executor: executor
            .clone()
            .ok_or_else(|| "jobs are disabled for this run (--executor none)".to_string()),
        log: log.clone(),
        dependencies: Arc::new(Dependencies::new(
            Dependencies::registry_from_env().map_err(|e| Failure {
                code: EXIT_FAILED,
                error: anyhow::anyhow!(e),
            })?,
            cache_dir,
        )),
        // The user's own machine: the project's policy decides.
        forbid_host_paths: false,
    }
    .prepare()
    .await
    .map_err(|e| Failure {
        code: EXIT_FAILED,
        error: anyhow::Error::new(e).context("worker FAILED"),
    })?;
    let context = prepared.context.clone();
    let outcome = tokio::select! {
        outcome = sandbox.run(&prepared.script, prepared.request) => outcome,
        signal = interrupted() => {
            // The worker was dropped mid-run; its jobs' containers are still
            // there until the executor removes the event's.
            if let Some(executor) = &executor {
                executor.finish_event(&context).await;
                executor.cleaned_up().await;
            }
            // Spooled, not waited for: the next run delivers them.
            if let Some(forwarder) = &forwarder {
                forwarder.close(std::time::Duration::ZERO).await;
            }
            return Err(Failure {
                code: EXIT_INTERRUPTED,
                error: anyhow::anyhow!("{signal}: the worker was stopped and the event's containers were removed"),
            });
        }
    };
    log.finish();
    if let Some(summary) = &outcome.summary {
        let _ = writeln!(std::io::stdout(), "Summary: {}", log.redact(summary));
    }
    if log.jobs_ran() {
        let _ = writeln!(
            std::io::stderr(),
            "mizzen: logs kept in {}",
            log.dir().display()
        );
    }
    if let Some(forwarder) = &forwarder {
        finish_forwarding(forwarder).await;
    }
    write_artifacts(&storage, &context.event_id, &data_dir).await;
    sweep_now_and_then(&storage, &data_dir).await;
    // The result is out; the event's files may still be being deleted.
    if let Some(executor) = &executor {
        executor.cleaned_up().await;
    }
    match outcome.failure {
        None => Ok(()),
        Some(failure) => Err(Failure {
            code: EXIT_FAILED,
            error: anyhow::anyhow!(
                "worker {}: {}",
                outcome.phase,
                log.redact(&failure.to_string())
            ),
        }),
    }
}

/// Lets log forwarding deliver what the run printed, for a while; what is
/// left waits in the spool and goes with the next run's lines (or the
/// server's, on this data directory).
async fn finish_forwarding(forwarder: &Forwarder) {
    forwarder.close(FORWARDING_GRACE).await;
    let stats = forwarder.stats();
    let waiting = stats.spool_lines.load(std::sync::atomic::Ordering::Relaxed);
    if waiting > 0 {
        let _ = writeln!(
            std::io::stderr(),
            "mizzen: {waiting} log line(s) wait in the forwarding spool for the collector"
        );
    }
    let dropped = stats.dropped();
    if dropped > 0 {
        let _ = writeln!(
            std::io::stderr(),
            "mizzen: {dropped} log line(s) could not be forwarded (see the warnings above)"
        );
    }
}

/// The executor `--executor` asks for: `docker` connects now and fails at
/// once when no engine answers; `kubernetes` reads the cluster's
/// configuration now and fails at once when there is none; `none` runs no jobs; without the flag, jobs
/// run on the engine that answers when the first job starts (a script
/// without jobs never looks for one).
async fn executor(
    kind: Option<ExecutorKind>,
    kubernetes: &KubernetesArgs,
    data_dir: &Path,
    storage: JobStorage,
) -> Result<Option<Arc<dyn JobExecutor>>, Failure> {
    let config = DockerConfig {
        data_dir: data_dir.to_path_buf(),
        storage: Some(storage),
    };
    Ok(match kind {
        Some(ExecutorKind::Docker) => {
            let executor = DockerExecutor::connect(config).await.map_err(|e| Failure {
                code: EXIT_BAD_INPUT,
                error: anyhow::Error::new(e).context("--executor docker"),
            })?;
            Some(Arc::new(executor))
        }
        Some(ExecutorKind::Kubernetes) => {
            Some(Arc::new(kubernetes.connect().await?.executor(None)))
        }
        Some(ExecutorKind::None) => None,
        None => Some(Arc::new(LazyDockerExecutor::new(config))),
    })
}

/// Where `mizzen run` keeps jobs' artifacts and caches: objects and a
/// SQLite catalog in `run/` of the data directory, apart from what a server
/// on the same directory keeps (whose sweeps know only its own catalog).
/// Caches are kept per project across runs, as a server keeps them.
async fn run_storage(data_dir: &Path) -> Result<JobStorage, Failure> {
    let dir = data_dir.join("run");
    let failed = |error: anyhow::Error| Failure {
        code: EXIT_FAILED,
        error: error.context(format!(
            "the artifacts and caches kept in {} cannot be opened",
            dir.display()
        )),
    };
    std::fs::create_dir_all(&dir).map_err(|e| failed(e.into()))?;
    let objects = Objects::local(&dir.join("objects")).map_err(|e| failed(e.into()))?;
    let url = format!("sqlite://{}?mode=rwc", dir.join("catalog.db").display());
    let store = Store::open(Some(&url), &dir)
        .await
        .map_err(|e| failed(e.into()))?;
    let key = store.job_token_key().await.map_err(|e| failed(e.into()))?;
    Ok(JobStorage::new(
        objects,
        Arc::new(store),
        mizzen_objects::JobTokens::new(key),
    ))
}

/// Writes the event's artifacts into `events/<id>/artifacts/<name>` of the
/// data directory and lists them.
async fn write_artifacts(storage: &JobStorage, event_id: &str, data_dir: &Path) {
    let artifacts = match storage.catalog.artifacts(event_id).await {
        Ok(artifacts) => artifacts,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "mizzen: listing the artifacts failed: {e}"
            );
            return;
        }
    };
    if artifacts.is_empty() {
        return;
    }
    let dir = data_dir.join("events").join(event_id).join("artifacts");
    let _ = writeln!(
        std::io::stderr(),
        "mizzen: artifacts kept in {}:",
        dir.display()
    );
    for artifact in artifacts {
        let written = match storage.objects.manifest(&artifact.tree).await {
            Ok(manifest) => {
                storage
                    .objects
                    .write_dir(manifest, &dir.join(&artifact.name))
                    .await
            }
            Err(e) => Err(e),
        };
        let _ = match written {
            Ok(()) => writeln!(
                std::io::stderr(),
                "  {} ({}, {}) from job {}",
                artifact.name,
                mizzen_runtime::kept::files(artifact.files),
                LimitValue::Bytes(artifact.bytes),
                artifact.job
            ),
            Err(e) => writeln!(std::io::stderr(), "  {}: {e}", artifact.name),
        };
    }
}

/// How often `mizzen run` sweeps the objects no artifact or cache names (an
/// evicted cache's): a sweep lists every object, and what a day of runs
/// leaves behind is small beside what is kept.
const RUN_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// Sweeps the run's objects when the last sweep (`run/last-sweep`) was
/// more than [`RUN_SWEEP_INTERVAL`] ago.
async fn sweep_now_and_then(storage: &JobStorage, data_dir: &Path) {
    let stamp = data_dir.join("run").join("last-sweep");
    let due = std::fs::metadata(&stamp)
        .and_then(|m| m.modified())
        .map_or(true, |last| {
            last.elapsed()
                .map_or(true, |since| since > RUN_SWEEP_INTERVAL)
        });
    if !due {
        return;
    }
    let _ = std::fs::write(&stamp, b"");
    if let Err(e) = storage.sweep().await {
        let _ = writeln!(
            std::io::stderr(),
            "mizzen: sweeping the kept objects failed: {e}"
        );
    }
}

/// `$MIZZEN_DATA_DIR`, else the user's data directory (`~/.local/share/mizzen`).
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("MIZZEN_DATA_DIR")
        .map(PathBuf::from)
        .or_else(|| dirs::data_dir().map(|dir| dir.join("mizzen")))
        .unwrap_or_else(|| PathBuf::from(".mizzen"))
}

/// Resolves on Ctrl-C or SIGTERM, saying which.
async fn interrupted() -> &'static str {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = terminate.recv() => "terminated",
    }
}

/// `--secret KEY=VALUE` flags over the `--secrets-file` map.
fn secrets(args: &RunArgs) -> anyhow::Result<BTreeMap<String, String>> {
    let mut secrets = BTreeMap::new();
    if let Some(path) = &args.secrets_file {
        let text = read_limited(path, MAX_SECRETS_FILE_BYTES)
            .with_context(|| format!("cannot read the secrets file {}", path.display()))?;
        let map: BTreeMap<String, serde_norway::Value> = serde_norway::from_str(&text)
            .with_context(|| {
                format!(
                    "{}: expected a flat map of secret names to values",
                    path.display()
                )
            })?;
        for (key, value) in map {
            let value = match value {
                serde_norway::Value::String(s) => s,
                serde_norway::Value::Number(n) => n.to_string(),
                serde_norway::Value::Bool(b) => b.to_string(),
                _ => bail!(
                    "{}: secret {key:?} must be a string, number or boolean",
                    path.display()
                ),
            };
            validate_secret_key(&key).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            validate_secret_value(&key, &value).with_context(|| format!("{}", path.display()))?;
            secrets.insert(key, value);
        }
    }
    for pair in &args.secrets {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--secret {pair:?} must have the form KEY=VALUE");
        };
        validate_secret_key(key).map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
        validate_secret_value(key, value).context("--secret")?;
        secrets.insert(key.to_string(), value.to_string());
    }
    validate_secrets(&secrets).context("the run's secrets (--secret and --secrets-file)")?;
    Ok(secrets)
}

/// Reads a UTF-8 file of at most `limit` bytes.
fn read_limited(path: &Path, limit: u64) -> anyhow::Result<String> {
    let size = std::fs::metadata(path)?.len();
    if size > limit {
        bail!("the file is {size} bytes; the limit is {limit} bytes");
    }
    Ok(std::fs::read_to_string(path)?)
}

/// ` with qualifiers K=V, ... and labels K=V, ...`, each part only when
/// there are any.
fn pairs_said(qualifiers: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> String {
    let parts: Vec<String> = [("qualifiers", qualifiers), ("labels", labels)]
        .into_iter()
        .filter(|(_, map)| !map.is_empty())
        .map(|(heading, map)| {
            let pairs: Vec<String> = map.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{heading} {}", pairs.join(", "))
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!(" with {}", parts.join(" and "))
    }
}

/// What the project's subscriptions of the event's source and type ask for
/// that the run did not give (qualifiers must match exactly, labels be
/// present), as the flags that would give it.
fn subscription_hint(project: &mizzen_runtime::project::Project, details: &EventDetails) -> String {
    let wanted: Vec<String> = project
        .event_subscriptions
        .iter()
        .filter(|s| {
            s.source == details.source
                && s.types.iter().any(|t| t == "*" || *t == details.event_type)
        })
        .map(|s| {
            s.qualifiers
                .iter()
                .map(|(k, v)| format!("--qualifier {k}={v}"))
                .chain(s.labels.iter().map(|(k, v)| format!("--label {k}={v}")))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|flags| !flags.is_empty())
        .collect();
    match wanted.as_slice() {
        [] => String::new(),
        [one] => format!(" (its subscription asks for {one})"),
        many => format!(" (its subscriptions ask for one of: {})", many.join("; ")),
    }
}
