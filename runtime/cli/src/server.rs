//! `mizzen server`: the API server, scheduler and gateways in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use mizzen_docker::{DockerConfig, LazyDockerExecutor};
use mizzen_runtime::SandboxConfig;
use mizzen_runtime::executor::JobExecutor;
use mizzen_runtime::limits::LimitSettings;
use mizzen_server::sandbox_pool::SandboxCommand;
use mizzen_server::store::ClaimLimits;
use mizzen_server::{
    GatewayConfig, HttpLimits, MakeExecutor, SchedulerConfig, Server, ServerConfig,
};

use crate::kubernetes::KubernetesArgs;
use crate::{ExecutorKind, Failure, parse_duration};

/// Workers (scripts) alive at once in this process: each idle one costs
/// about half a MiB, and the sandbox reserves address space per slot.
const DEFAULT_LOCAL_WORKERS: usize = 500;

/// What `mizzen server --help` says after the flags: the settings that are
/// not flags, and the endpoints an operator points probes and scrapers at.
pub const ENVIRONMENT_HELP: &str = "\
Environment:
  MIZZEN_ROOT_PASSWORD  root's password (`mizzen login --root`); unset, root cannot log in
  MIZZEN_LOG            what the server logs, as tracing's filter (default: info; e.g. debug,
                        mizzen_server=trace)
  MIZZEN_DATA_DIR       the data directory when --data-dir is not given
  MIZZEN_CACHE_DIR      where compiled scripts are cached (default: ~/.cache/mizzen)

Endpoints besides the API (/v2/...) and the dashboard (/):
  /healthz              200 while the store answers, for liveness and readiness probes
  /metrics              Prometheus / OpenMetrics text: events, workers, jobs, HTTP, forwarding
  /gateways/...         the webhook gateways enabled under \"Gateways\"";

#[derive(Args)]
pub struct ServerArgs {
    /// Where to listen
    #[arg(long, default_value = "127.0.0.1:7744", value_name = "ADDR")]
    listen: SocketAddr,
    /// The server's own log on stderr: lines of text (coloured only on a
    /// terminal), or one JSON object per line for a log pipeline
    #[arg(long, env = "MIZZEN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Where the embedded database and the jobs' scratch files live
    /// [default: $MIZZEN_DATA_DIR, else ~/.local/share/mizzen]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// A PostgreSQL URL (postgres://user:password@host/db) to share the work
    /// between replicas, instead of the embedded SQLite database
    #[arg(
        long,
        env = "MIZZEN_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// Workers running at once, across all replicas
    #[arg(long, default_value_t = 100, help_heading = "Workers and jobs")]
    max_workers: i64,
    /// Workers of one project running at once, across all replicas
    #[arg(long, default_value_t = 10, help_heading = "Workers and jobs")]
    max_workers_per_project: i64,
    /// Jobs running at once in this process
    #[arg(long, default_value_t = 32, help_heading = "Workers and jobs")]
    max_jobs: usize,
    /// Jobs of one project running at once in this process
    #[arg(long, default_value_t = 8, help_heading = "Workers and jobs")]
    max_jobs_per_project: usize,
    /// How long a claimed event stays this replica's without renewal: the
    /// time another replica waits before taking over a dead one's events
    #[arg(long, default_value = "30s", value_parser = parse_duration, help_heading = "Workers and jobs")]
    lease: Duration,
    /// What runs the jobs (default: the container engine found when the
    /// first job starts)
    #[arg(long, value_enum, env = "MIZZEN_EXECUTOR")]
    executor: Option<ExecutorKind>,
    #[command(flatten)]
    kubernetes: KubernetesArgs,
    #[command(flatten)]
    forwarding: crate::forwarding::ForwardingArgs,
    /// Export a trace per event (accepted, queued, worker, each job) to
    /// this OTLP traces endpoint, HTTP with protobuf (e.g.
    /// http://collector:4318/v1/traces); a `traceparent` on the request
    /// that brings an event continues the caller's trace
    #[arg(
        long,
        env = "MIZZEN_OTLP_TRACES_ENDPOINT",
        value_name = "URL",
        help_heading = "Log forwarding"
    )]
    otlp_traces_endpoint: Option<String>,
    /// Where jobs' artifacts and caches are kept: s3://BUCKET[/PREFIX]
    /// (endpoint, region and credentials from the AWS_* variables:
    /// AWS_ENDPOINT for an S3-compatible server, AWS_ALLOW_HTTP=true without
    /// TLS) or a directory [default: objects/ in the data directory]
    #[arg(
        long,
        env = "MIZZEN_OBJECT_STORE",
        value_name = "URL",
        help_heading = "Artifacts, caches and logs"
    )]
    object_store: Option<String>,
    /// Delete artifacts this long after they were saved (e.g. 720h); kept
    /// as long as their event by default
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", help_heading = "Artifacts, caches and logs")]
    artifact_retention: Option<Duration>,
    /// Delete logs this long after their event ended (e.g. 720h); kept
    /// forever by default
    #[arg(long, value_parser = parse_duration, value_name = "DURATION", help_heading = "Artifacts, caches and logs")]
    log_retention: Option<Duration>,
    /// On SIGTERM, how long running workers may finish before they go back
    /// to the queue
    #[arg(long, default_value = "30s", value_parser = parse_duration, help_heading = "Workers and jobs")]
    shutdown_grace: Duration,
    /// The shortest interval a project's cron schedule may tick at (a
    /// project whose schedule ticks more often is refused) [default: 60s]
    #[arg(
        long,
        env = "MIZZEN_MIN_SCHEDULE_INTERVAL",
        value_parser = parse_duration,
        value_name = "DURATION",
        help_heading = "Workers and jobs"
    )]
    min_schedule_interval: Option<Duration>,
    /// GitHub webhook secret; enables POST /gateways/github
    #[arg(
        long,
        env = "MIZZEN_GITHUB_WEBHOOK_SECRET",
        hide_env_values = true,
        help_heading = "Gateways"
    )]
    github_webhook_secret: Option<String>,
    /// The GitHub App's id: with --github-app-key-file, tracked GitHub
    /// events' jobs are reported as check runs
    #[arg(
        long,
        env = "MIZZEN_GITHUB_APP_ID",
        requires = "github_app_key_file",
        help_heading = "Gateways"
    )]
    github_app_id: Option<u64>,
    /// The GitHub App's private key (the .pem file from the App's settings)
    #[arg(
        long,
        env = "MIZZEN_GITHUB_APP_KEY_FILE",
        value_name = "FILE",
        requires = "github_app_id",
        help_heading = "Gateways"
    )]
    github_app_key_file: Option<PathBuf>,
    /// GitHub's REST API, for check runs (GitHub Enterprise Server:
    /// https://HOST/api/v3)
    #[arg(
        long,
        env = "MIZZEN_GITHUB_API_URL",
        value_name = "URL",
        default_value = mizzen_server::github_app::GITHUB_API,
        help_heading = "Gateways"
    )]
    github_api_url: String,
    /// Slack app's signing secret; enables POST /gateways/slack (slash
    /// commands)
    #[arg(
        long,
        env = "MIZZEN_SLACK_SIGNING_SECRET",
        hide_env_values = true,
        help_heading = "Gateways"
    )]
    slack_signing_secret: Option<String>,
    /// Slack commands are answered in their channel when their event ends,
    /// at response URLs under this prefix only
    #[arg(
        long,
        env = "MIZZEN_SLACK_RESPONSE_URLS",
        value_name = "URL_PREFIX",
        default_value = mizzen_server::slack_replies::SLACK_RESPONSE_URLS,
        help_heading = "Gateways"
    )]
    slack_response_urls: String,
    /// Addresses Bitbucket's webhooks may come from, as CIDR ranges
    /// (Bitbucket signs nothing; it publishes its ranges); enables POST
    /// /gateways/bitbucket
    #[arg(
        long,
        env = "MIZZEN_BITBUCKET_ADDRESSES",
        value_name = "CIDR,...",
        value_delimiter = ',',
        value_parser = parse_address_range,
        help_heading = "Gateways"
    )]
    bitbucket_addresses: Vec<ipnet::IpNet>,
    /// Tokens Docker Hub webhooks present (?access_token=); enables POST
    /// /gateways/dockerhub
    #[arg(
        long,
        env = "MIZZEN_DOCKERHUB_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        help_heading = "Gateways"
    )]
    dockerhub_token: Vec<String>,
    /// Tokens ACR webhooks present (Authorization: Bearer); enables POST
    /// /gateways/acr
    #[arg(
        long,
        env = "MIZZEN_ACR_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        help_heading = "Gateways"
    )]
    acr_token: Vec<String>,
    /// Tokens CloudEvents producers present; enables POST
    /// /gateways/cloudevents
    #[arg(
        long,
        env = "MIZZEN_CLOUDEVENTS_TOKENS",
        value_delimiter = ',',
        hide_env_values = true,
        help_heading = "Gateways"
    )]
    cloudevents_token: Vec<String>,
    /// The most any project's worker may have of each limit, as key=value
    /// pairs (memory=2Gi,cpuTime=10m); limits not named keep their default
    /// ceilings. Projects asking for more are refused.
    #[arg(
        long,
        env = "MIZZEN_LIMIT_CEILINGS",
        value_name = "KEY=VALUE,...",
        default_value = "",
        value_parser = parse_ceilings,
        help_heading = "Tenants' limits"
    )]
    limit_ceilings: LimitSettings,
    /// Refuse every container volume that binds a host path, whatever a
    /// project's jobPolicies.allowedHostPaths lists: for a server whose
    /// projects belong to tenants who must not reach its files
    #[arg(
        long,
        env = "MIZZEN_FORBID_HOST_PATHS",
        help_heading = "Tenants' limits"
    )]
    forbid_host_paths: bool,
    /// Sandbox processes running the workers; 0 runs them in this process.
    /// One per core, the default, scales with the cores: instance churn in
    /// one process does not
    #[arg(
        long,
        env = "MIZZEN_SANDBOX_PROCESSES",
        value_name = "COUNT",
        help_heading = "Workers and jobs"
    )]
    sandbox_processes: Option<usize>,
    /// Client connections served at once; beyond them, the connection idle
    /// the longest is closed, or new ones wait to be accepted [default: the
    /// descriptor limit, raised to its hard limit, minus 256 kept for the
    /// store, sandbox processes, git and the container engine]
    #[arg(long, env = "MIZZEN_MAX_CONNECTIONS", value_name = "COUNT", value_parser = clap::value_parser!(u32).range(1..), help_heading = "Connections")]
    max_connections: Option<u32>,
    /// How long a request's head may take to arrive (and a connection may
    /// sit idle between requests)
    #[arg(long, env = "MIZZEN_HEADER_TIMEOUT", default_value = "30s", value_parser = parse_duration, help_heading = "Connections")]
    header_timeout: Duration,
    /// How long a request's body may take to arrive, from its head on
    #[arg(long, env = "MIZZEN_BODY_TIMEOUT", default_value = "60s", value_parser = parse_duration, help_heading = "Connections")]
    body_timeout: Duration,
    /// How long an answer may wait for a client that reads nothing
    #[arg(long, env = "MIZZEN_WRITE_TIMEOUT", default_value = "60s", value_parser = parse_duration, help_heading = "Connections")]
    write_timeout: Duration,
}

/// The sandbox processes to start: this binary's `sandbox-shard` command,
/// one per core unless told otherwise.
fn shard_plan(count: Option<usize>) -> anyhow::Result<Option<(usize, SandboxCommand)>> {
    let count = count.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if count == 0 {
        return Ok(None);
    }
    let program = std::env::current_exe()
        .context("cannot find this program to start its sandbox processes (--sandbox-processes 0 runs the sandbox in this process)")?;
    Ok(Some((
        count,
        SandboxCommand {
            program,
            args: vec!["sandbox-shard".into()],
        },
    )))
}

/// How the server writes its own log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: time, level, message and fields.
    Json,
}

fn parse_ceilings(text: &str) -> Result<LimitSettings, String> {
    LimitSettings::ceilings(text).map_err(|e| e.to_string())
}

pub async fn serve(args: ServerArgs) -> Result<(), Failure> {
    let data_dir = args.data_dir.unwrap_or_else(crate::run::default_data_dir);
    let executor: Option<MakeExecutor> = match args.executor {
        Some(ExecutorKind::None) => None,
        Some(ExecutorKind::Kubernetes) => {
            let cluster = args.kubernetes.connect().await?;
            Some(Arc::new(move |storage| -> Arc<dyn JobExecutor> {
                Arc::new(cluster.executor(Some(storage)))
            }))
        }
        _ => {
            let data_dir = data_dir.clone();
            Some(Arc::new(move |storage| {
                Arc::new(LazyDockerExecutor::new(DockerConfig {
                    data_dir: data_dir.clone(),
                    storage: Some(storage),
                }))
            }))
        }
    };
    let root_password = std::env::var("MIZZEN_ROOT_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    if root_password.is_none() {
        tracing::warn!("MIZZEN_ROOT_PASSWORD is not set: root login is disabled");
    }
    let forwarding = args.forwarding.config(&data_dir).map_err(|error| Failure {
        code: crate::EXIT_BAD_INPUT,
        error,
    })?;
    let traces = match &args.otlp_traces_endpoint {
        None => None,
        Some(endpoint) => Some(mizzen_forwarding::OtlpTracesConfig {
            endpoint: endpoint.clone(),
            headers: args.forwarding.otlp_headers().map_err(|error| Failure {
                code: crate::EXIT_BAD_INPUT,
                error,
            })?,
        }),
    };
    let github_app = match (args.github_app_id, &args.github_app_key_file) {
        (Some(app_id), Some(file)) => Some(mizzen_server::github_app::GitHubAppConfig {
            app_id,
            private_key_pem: std::fs::read(file)
                .with_context(|| format!("--github-app-key-file {}", file.display()))
                .map_err(|error| Failure {
                    code: crate::EXIT_BAD_INPUT,
                    error,
                })?,
            api_url: args.github_api_url.clone(),
        }),
        _ => None,
    };
    let config = ServerConfig {
        github_app,
        forwarding,
        traces,
        listen: args.listen,
        data_dir,
        database_url: args.database_url,
        root_password,
        gateways: GatewayConfig {
            github_secret: args.github_webhook_secret.filter(|s| !s.is_empty()),
            dockerhub_tokens: nonempty(args.dockerhub_token),
            acr_tokens: nonempty(args.acr_token),
            cloudevents_tokens: nonempty(args.cloudevents_token),
            slack_signing_secret: args.slack_signing_secret.filter(|s| !s.is_empty()),
            bitbucket_addresses: args.bitbucket_addresses,
            slack_response_urls: Some(args.slack_response_urls),
        },
        scheduler: SchedulerConfig {
            replica: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "mizzen".into()),
                uuid::Uuid::new_v4()
            ),
            lease: args.lease,
            workers: ClaimLimits {
                global: args.max_workers.max(1),
                per_project: args.max_workers_per_project.max(1),
            },
            local_workers: DEFAULT_LOCAL_WORKERS,
            jobs: args.max_jobs,
            jobs_per_project: args.max_jobs_per_project,
            max_attempts: MAX_ATTEMPTS,
            limit_ceilings: args.limit_ceilings,
            forbid_host_paths: args.forbid_host_paths,
        },
        executor,
        object_store: args.object_store,
        log_retention: args.log_retention,
        artifact_retention: args.artifact_retention,
        shutdown_grace: args.shutdown_grace,
        min_schedule_interval: args
            .min_schedule_interval
            .unwrap_or(mizzen_server::DEFAULT_MIN_SCHEDULE_INTERVAL),
        sandbox_processes: shard_plan(args.sandbox_processes)?,
        http: HttpLimits {
            header_timeout: args.header_timeout,
            body_timeout: args.body_timeout,
            write_timeout: args.write_timeout,
            max_connections: args.max_connections.map(|n| n as usize),
        },
    };
    let server = Server::bind(config)
        .await
        .context("mizzen server cannot start")?;
    if let Some(address) = server.local_addr() {
        eprintln!("mizzen server listening on http://{address}");
    }
    server
        .run(shutdown_signal())
        .await
        .context("mizzen server stopped")?;
    Ok(())
}

/// Workers started for one event at most: a worker cut short by a crash
/// runs again, but an event that keeps killing its server must end.
const MAX_ATTEMPTS: i64 = 3;

fn nonempty(tokens: Vec<String>) -> Vec<String> {
    tokens.into_iter().filter(|t| !t.is_empty()).collect()
}

async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return std::future::pending().await,
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// `mizzen sandbox-shard`: one of the server's sandbox processes. It runs
/// one thread: long-running guests take turns on it, one at a time.
pub async fn serve_shard() -> Result<(), Failure> {
    let config = SandboxConfig {
        long_running_slots: 1,
        ..SandboxConfig::from_env()
    };
    mizzen_runtime::sandbox_process::serve(config)
        .await
        .context("the sandbox process could not start")?;
    Ok(())
}

/// A CIDR range (`104.192.136.0/21`), or one address (`192.0.2.7`, as /32
/// or /128).
fn parse_address_range(text: &str) -> Result<ipnet::IpNet, String> {
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or a CIDR range (e.g. 104.192.136.0/21)"))
}
