//! `mizzen`: runs Brigade projects in Mizzen's WebAssembly sandbox.
//!
//! `mizzen run <PROJECT>` handles one event for a project on this machine,
//! with no server and no cluster, and prints the worker's log as Brigade's
//! worker did. Exit codes: 0 the worker SUCCEEDED; 1 it FAILED or TIMED_OUT;
//! 2 the command's input was wrong (project file, payload, secrets); 3 the
//! project does not subscribe to the event, so nothing ran.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use mizzen_host_api::types::LogLevel;
use mizzen_runtime::log::{LogRecord, LogSink};
use mizzen_runtime::project::{EventDetails, ProjectDir, validate_secret_key};
use mizzen_runtime::{Sandbox, SandboxConfig, WorkerLimits, WorkerRequest, parse_go_duration};

/// Payloads travel inside the event; Brigade's gateways accepted up to
/// GitHub's 25 MB, and the CLI allows as much.
const MAX_PAYLOAD_BYTES: u64 = 25 * 1024 * 1024;
/// `mizzen run` handles one event: its worker and the script's compilation
/// need two instances; a few more leave room without reserving address space
/// for a server's thousand.
const CLI_MAX_INSTANCES: u32 = 8;
/// A secrets file is a flat map of a few keys; 1 MiB is generous.
const MAX_SECRETS_FILE_BYTES: u64 = 1024 * 1024;

#[derive(Parser)]
#[command(
    name = "mizzen",
    version,
    about = "Runs Brigade scripts in a WebAssembly sandbox"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Handle one event for a project on this machine (no server, no cluster)
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// A project file (project.yaml), or a directory holding one
    project: PathBuf,
    /// The event's source
    #[arg(long, default_value = "brigade.sh/cli")]
    source: String,
    /// The event's type
    #[arg(long = "type", default_value = "exec")]
    event_type: String,
    /// The event's payload
    #[arg(long, conflicts_with = "payload_file")]
    payload: Option<String>,
    /// Read the event's payload from a file
    #[arg(long, value_name = "FILE")]
    payload_file: Option<PathBuf>,
    /// A project secret (repeatable)
    #[arg(long = "secret", value_name = "KEY=VALUE")]
    secrets: Vec<String>,
    /// Project secrets from a flat YAML or JSON map
    #[arg(long, value_name = "FILE")]
    secrets_file: Option<PathBuf>,
    /// The worker's log level, overriding the project's (DEBUG, INFO, WARN, ERROR)
    #[arg(long, value_parser = parse_log_level)]
    log_level: Option<LogLevel>,
    /// The worker's lifetime, overriding the project's timeoutDuration (e.g. 10m)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// CPU time the script may use (e.g. 500ms)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    cpu_limit: Option<Duration>,
    /// Memory the script may use, in MiB
    #[arg(long, value_name = "MIB")]
    memory_limit: Option<u64>,
}

fn parse_log_level(text: &str) -> Result<LogLevel, String> {
    LogLevel::parse(text).ok_or_else(|| format!("{text:?} is not one of DEBUG, INFO, WARN, ERROR"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_go_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive duration such as 500ms, 30s or 1h30m"))
}

/// An exit code with the message that explains it.
struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            code: EXIT_BAD_INPUT,
            error: error.into(),
        }
    }
}

const EXIT_FAILED: u8 = 1;
const EXIT_BAD_INPUT: u8 = 2;
const EXIT_NOT_SUBSCRIBED: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIZZEN_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mizzen: error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            eprintln!("mizzen: {error:#}");
            ExitCode::from(code)
        }
    }
}

async fn run(args: RunArgs) -> Result<(), Failure> {
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
        payload,
        ..EventDetails::default()
    };
    if !dir.project.subscribes_to(&details) {
        return Err(Failure {
            code: EXIT_NOT_SUBSCRIBED,
            error: anyhow::anyhow!(
                "project \"{}\" does not subscribe to events of source \"{}\" and type \"{}\"; no worker ran",
                dir.project.id,
                details.source,
                details.event_type
            ),
        });
    }
    let mut event = dir.project.event(details, secrets);
    if let Some(level) = args.log_level {
        event.worker.log_level = level;
    }
    let script = dir.script().map_err(|e| Failure {
        code: EXIT_FAILED,
        error: anyhow::Error::new(e).context("worker FAILED"),
    })?;
    let mut limits = WorkerLimits::default();
    if let Some(timeout) = args.timeout.or(dir.project.worker.timeout) {
        limits.wall_time = timeout;
    }
    if let Some(cpu) = args.cpu_limit {
        limits.cpu_time = cpu;
    }
    if let Some(mib) = args.memory_limit {
        limits.memory_bytes = mib.saturating_mul(1024 * 1024);
    }

    let config = SandboxConfig {
        max_instances: CLI_MAX_INSTANCES,
        ..SandboxConfig::from_env()
    };
    let sandbox = Sandbox::new(config).await.map_err(|e| Failure {
        code: EXIT_FAILED,
        error: e.into(),
    })?;
    let outcome = sandbox
        .run(WorkerRequest {
            script,
            event,
            limits,
            log: Arc::new(TerminalLog),
        })
        .await;
    if let Some(summary) = &outcome.summary {
        let _ = writeln!(std::io::stdout(), "Summary: {summary}");
    }
    match outcome.failure {
        None => Ok(()),
        Some(failure) => Err(Failure {
            code: EXIT_FAILED,
            error: anyhow::anyhow!("worker {}: {failure}", outcome.phase),
        }),
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
            secrets.insert(key, value);
        }
    }
    for pair in &args.secrets {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--secret {pair:?} must have the form KEY=VALUE");
        };
        validate_secret_key(key).map_err(|e| anyhow::anyhow!("--secret: {e}"))?;
        secrets.insert(key.to_string(), value.to_string());
    }
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

/// Prints worker log lines as they come: `console.warn`/`console.error` to
/// stderr, everything else to stdout.
struct TerminalLog;

impl LogSink for TerminalLog {
    fn record(&self, record: LogRecord) {
        let line = record.to_line();
        if record.console && record.level <= LogLevel::Warn {
            let _ = writeln!(std::io::stderr(), "{line}");
        } else {
            let _ = writeln!(std::io::stdout(), "{line}");
        }
    }
}
