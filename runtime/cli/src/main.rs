//! `mizzen`: runs Brigade projects in Mizzen's WebAssembly sandbox.
//!
//! `mizzen run <PROJECT>` handles one event for a project on this machine,
//! with no server and no cluster, runs its jobs on a local container engine,
//! and prints the worker's log as Brigade's worker did. Exit codes: 0 the
//! worker SUCCEEDED; 1 it FAILED or TIMED_OUT; 2 the command's input was
//! wrong (project file, payload, secrets, `--executor docker` without an
//! engine); 3 the project does not subscribe to the event, so nothing ran;
//! 130 interrupted (the event's containers are removed first).

mod client;
mod forwarding;
mod init;
mod job_files;
mod kubernetes;
mod output;
mod run;
mod server;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use mizzen_host_api::types::LogLevel;
use mizzen_runtime::parse_go_duration;

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
    Run(Box<RunArgs>),
    /// Serve the REST API, the scheduler and the webhook gateways
    #[command(after_help = server::ENVIRONMENT_HELP)]
    Server(Box<server::ServerArgs>),
    /// Create a project whose script builds and runs (js, ts, rust or go)
    Init(init::InitArgs),
    #[command(flatten)]
    Client(client::ClientCommand),
    /// Print the completion script of a shell: `source <(mizzen completion bash)`
    Completion {
        /// The shell
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run workers for a `mizzen server` over stdin and stdout (started by
    /// the server, one per core)
    #[command(hide = true)]
    SandboxShard,
    /// Restore and save a Kubernetes job's artifacts and caches (run by
    /// Mizzen's image beside the job's containers)
    #[command(hide = true)]
    JobFiles(job_files::JobFilesArgs),
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
    /// An event qualifier (repeatable); a project whose subscription names
    /// qualifiers gets only events with exactly those
    #[arg(long = "qualifier", value_name = "KEY=VALUE", value_parser = parse_event_pair)]
    qualifiers: Vec<(String, String)>,
    /// An event label (repeatable), e.g. job=test for a ci:job_requested event
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_event_pair)]
    labels: Vec<(String, String)>,
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
    /// Memory the script may use, as a quantity (e.g. 128Mi, 1Gi)
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_limit)]
    memory_limit: Option<u64>,
    /// What runs the jobs: a local container engine, a Kubernetes cluster,
    /// or nothing; by default the engine found at DOCKER_HOST, Docker's or
    /// Podman's socket
    #[arg(long, value_enum)]
    executor: Option<ExecutorKind>,
    /// Where logs and the jobs' scratch files are kept
    /// [default: $MIZZEN_DATA_DIR, else ~/.local/share/mizzen]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    #[command(flatten)]
    kubernetes: kubernetes::KubernetesArgs,
    #[command(flatten)]
    forwarding: forwarding::ForwardingArgs,
}

/// What runs a worker's jobs.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ExecutorKind {
    /// Containers on Docker Engine or Podman (DOCKER_HOST, Docker's socket, Podman's)
    Docker,
    /// Pods on the Kubernetes cluster of KUBECONFIG (or ~/.kube/config, or
    /// the one the process runs in)
    Kubernetes,
    /// No executor: jobs fail to start
    None,
}

fn parse_log_level(text: &str) -> Result<LogLevel, String> {
    LogLevel::parse(text).ok_or_else(|| format!("{text:?} is not one of DEBUG, INFO, WARN, ERROR"))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_go_duration(text)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text:?} is not a positive duration such as 500ms, 30s or 1h30m"))
}

/// A size as Kubernetes writes quantities (`512Mi`, `2Gi`, `1G`; bytes when
/// bare), as project files and the server take them.
fn parse_size(text: &str) -> Result<u64, String> {
    mizzen_runtime::limits::parse_quantity(text)
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{text:?} is not a size such as 512Mi or 2Gi"))
}

/// `KEY=VALUE` for an event's qualifier or label: the value as the server
/// checks it (Brigade's label pattern, at most 255 characters), so a run
/// is refused where `event create` would be.
fn parse_event_pair(pair: &str) -> Result<(String, String), String> {
    let Some((key, value)) = pair.split_once('=') else {
        return Err(format!("{pair:?} must have the form KEY=VALUE"));
    };
    if key.is_empty() {
        return Err(format!("{pair:?} has an empty key"));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !mizzen_runtime::project::is_label_char(*c))
    {
        return Err(format!(
            "the value of {key:?} contains {c:?}; values may hold ASCII letters, digits and _ : / - . ? = *"
        ));
    }
    if value.len() > mizzen_runtime::project::MAX_LABEL_LEN {
        return Err(format!(
            "the value of {key:?} is {} characters long; at most {} are allowed",
            value.len(),
            mizzen_runtime::project::MAX_LABEL_LEN
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

/// `--memory-limit`: a size of at least a MiB. A bare number is bytes, as
/// in a project file; one too small for any script was most likely meant
/// in MiB (the flag's unit before it took quantities).
fn parse_memory_limit(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes < 1024 * 1024 {
        return Err(format!(
            "{text:?} is {bytes} bytes, less than a script needs (1Mi at least); did you mean {text}Mi?"
        ));
    }
    Ok(bytes)
}

/// Whether log lines may be coloured: only for a person at a terminal, and
/// not when `NO_COLOR` is set (no-color.org). Files and journals would keep
/// the escape codes as text.
fn colour_on_stderr() -> bool {
    use std::io::IsTerminal;
    colour_on(std::io::stderr().is_terminal())
}

/// Whether output to a stream that `is_terminal` (or not) may be coloured:
/// only a terminal's, and not when `NO_COLOR` is set.
fn colour_on(is_terminal: bool) -> bool {
    is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
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
/// As shells report a process ended by SIGINT.
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Completion { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "mizzen", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    // The server reports what it does; the other commands only problems.
    let default_filter = match cli.command {
        Command::Server(_) => "info",
        _ => "warn",
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MIZZEN_LOG")
                .unwrap_or_else(|_| default_filter.into()),
        )
        .with_writer(std::io::stderr);
    match &cli.command {
        Command::Server(args) if args.log_format == server::LogFormat::Json => log.json().init(),
        _ => log.with_ansi(colour_on_stderr()).init(),
    }
    // reqwest is built without a default crypto provider; ring's serves for
    // every HTTPS client of the process (the CLI's, the helper's, S3's).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // A sandbox process is one core's worth of the sandbox stage.
    let runtime = match cli.command {
        Command::SandboxShard => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mizzen: error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => run::run(*args).await,
            Command::Server(args) => server::serve(*args).await,
            Command::Init(args) => init::init(args).map_err(Failure::from),
            Command::Client(command) => client::run(command).await,
            Command::Completion { .. } => Ok(()),
            Command::SandboxShard => server::serve_shard().await,
            Command::JobFiles(args) => job_files::run(args).await.map_err(|error| Failure {
                code: EXIT_FAILED,
                error,
            }),
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
