//! `mizzen server`: accepts events for many projects (tenants) through
//! Brigade v2's REST API and webhook gateways, stores them durably, and runs
//! their workers in the sandbox (one sandbox process per core by default,
//! [`sandbox_pool`]) within global and per-project limits.
//!
//! The parts: [`store`] (SQLite or PostgreSQL through one code path, a
//! module per domain), [`scheduler`] (claims with leases, limits, fairness,
//! recovery), [`api`] (the REST API by resource, streams and the gateways'
//! HTTP side), [`http`] (connections: their limit and timeouts), [`auth`]
//! (principals, roles and bearer tokens), [`schedules`] (projects' cron
//! schedules, fired once per tick across replicas), [`gateways`] (webhook parsing and
//! authentication, a module per source), [`check_runs`] and
//! [`slack_replies`] (tracked events reported back, [`github_app`] calling
//! GitHub as an App), [`project_cache`] (parsed projects and their
//! redactors) and [`metrics`]; secret values are kept out of logs with
//! [`mizzen_runtime::redact`].

pub mod api;
pub mod auth;
pub mod check_runs;
pub mod gateways;
pub mod github_app;
pub mod http;
pub mod metrics;
pub mod project_cache;
pub mod sandbox_pool;
pub mod scheduler;
pub mod schedules;
pub mod slack_replies;
pub mod store;
pub mod traces;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mizzen_objects::{JobStorage, Objects};
use mizzen_runtime::dependencies::Dependencies;
use mizzen_runtime::executor::JobExecutor;
use mizzen_runtime::wasm_job::{HostJobExecutor, ModuleFetcher, WasmJobRunner};
use mizzen_runtime::{Sandbox, SandboxConfig, SandboxError};
use sandbox_pool::{SandboxCommand, SandboxPool, SandboxPoolError, SandboxStage};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use gateways::GatewayConfig;
pub use http::HttpLimits;
pub use scheduler::SchedulerConfig;

/// How often old logs and artifacts are looked for, and objects that no
/// artifact or cache names are swept: an hour's garbage is small beside
/// what is kept, and a sweep lists every object.
const RETENTION_SWEEP: Duration = Duration::from_secs(60 * 60);

/// The shortest interval between a schedule's ticks a server allows by
/// default: each tick is a worker its project runs, and a minute is cron's
/// own finest step (a seconds field is for servers that allow less).
pub const DEFAULT_MIN_SCHEDULE_INTERVAL: Duration = Duration::from_secs(60);

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The object storage for artifacts and caches cannot be used.
    #[error(transparent)]
    Objects(#[from] mizzen_objects::ObjectsError),
    /// Log forwarding could not start (its spool, a sink's configuration).
    #[error(transparent)]
    Forwarding(#[from] mizzen_forwarding::ForwardingError),
    /// The sandbox could not be set up.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The sandbox processes could not be started.
    #[error(transparent)]
    SandboxProcesses(#[from] SandboxPoolError),
    /// Another server already uses the data directory's embedded database.
    #[error(
        "{}: another mizzen server is using this data directory's database; give each server its own --data-dir, or share PostgreSQL with --database-url",
        .0.display()
    )]
    DataDirInUse(PathBuf),
    /// The GitHub App that check runs are reported as cannot be used.
    #[error(transparent)]
    GitHubApp(#[from] github_app::GitHubError),
    /// A setting from the environment is wrong.
    #[error("{0}")]
    Environment(String),
    /// The listen address could not be bound or served.
    #[error("cannot listen on {address}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The data directory (or its lock) cannot be made or opened.
    #[error("cannot use {}", .path.display())]
    DataDir {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// How the server runs.
pub struct ServerConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where the embedded database and scratch files live.
    pub data_dir: PathBuf,
    /// A PostgreSQL (or SQLite) URL instead of the embedded database.
    pub database_url: Option<String>,
    /// Root's password; `None` disables root login.
    pub root_password: Option<String>,
    /// The webhook gateways' credentials.
    pub gateways: GatewayConfig,
    /// The scheduler's limits and leases.
    pub scheduler: SchedulerConfig,
    /// What runs jobs, made once the storage of their artifacts and caches
    /// is open; `None` refuses jobs with a message.
    pub executor: Option<MakeExecutor>,
    /// Where jobs' artifacts and caches are kept: `s3://BUCKET[/PREFIX]`
    /// or a directory; `None` for `objects/` in the data directory.
    pub object_store: Option<String>,
    /// How long logs are kept after their event ended; `None` keeps them.
    pub log_retention: Option<Duration>,
    /// How long artifacts are kept after they were saved; `None` keeps
    /// them as long as their event.
    pub artifact_retention: Option<Duration>,
    /// How long running workers may finish when the server stops before
    /// they go back to the queue.
    pub shutdown_grace: Duration,
    /// Where workers run: in this many sandbox processes, started with this
    /// command (one per core scales with the cores), or, when `None`, in
    /// this process.
    pub sandbox_processes: Option<(usize, SandboxCommand)>,
    /// Client connections: how many, and how long they may be slow.
    pub http: HttpLimits,
    /// The shortest interval a project's schedule may tick at
    /// ([`DEFAULT_MIN_SCHEDULE_INTERVAL`] unless set).
    pub min_schedule_interval: Duration,
    /// Where workers' and jobs' lines are forwarded; `None`, nowhere.
    pub forwarding: Option<mizzen_forwarding::ForwardingConfig>,
    /// Where events' traces are exported; `None`, nowhere.
    pub traces: Option<mizzen_forwarding::OtlpTracesConfig>,
    /// The GitHub App that tracked events' jobs are reported as, as check
    /// runs; `None`, they are not reported.
    pub github_app: Option<github_app::GitHubAppConfig>,
}

/// The most the traces' spool holds while the collector is down: an
/// event's spans take a few KiB, so this is some 100,000 events' worth.
const TRACES_SPOOL_BYTES: u64 = 256 * 1024 * 1024;

/// How long a stopping server's log forwarding may go on delivering what
/// its spool holds; the rest waits there for the next start.
const FORWARDING_GRACE: Duration = Duration::from_secs(5);

/// Makes the executor of a server's container jobs, given where their
/// artifacts and caches are kept.
pub type MakeExecutor = Arc<dyn Fn(JobStorage) -> Arc<dyn JobExecutor> + Send + Sync>;

/// A server bound to its address, ready to run.
pub struct Server {
    /// The executor of container jobs, made from the config's.
    containers: Option<Arc<dyn JobExecutor>>,
    /// Log forwarding, when configured.
    forwarder: Option<Arc<mizzen_forwarding::Forwarder>>,
    /// Traces' export, when configured.
    traces: Option<Arc<mizzen_forwarding::Forwarder<mizzen_forwarding::TraceSpan>>>,
    /// Where jobs' artifacts and caches are kept.
    storage: JobStorage,
    /// Held while the server runs on the embedded database: a second
    /// server on the same data directory would take the first one's
    /// running events for abandoned ones.
    _data_dir_lock: Option<std::fs::File>,
    listener: TcpListener,
    state: Arc<api::AppState>,
    scheduler: Arc<scheduler::Scheduler>,
    config: ServerConfig,
    max_connections: usize,
}

impl Server {
    /// Opens the store, prepares the sandbox and binds the address.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        // Before the store and the sandbox processes open theirs.
        let descriptors = http::raise_descriptor_limit();
        let max_connections = match config.http.max_connections {
            Some(max) => {
                if max as u64 + http::DESCRIPTOR_RESERVE > descriptors {
                    tracing::warn!(
                        max_connections = max,
                        descriptors,
                        reserve = http::DESCRIPTOR_RESERVE,
                        "--max-connections leaves fewer descriptors than the reserve for the store, sandbox processes, git and the engine: a full server may fail to open them"
                    );
                }
                max
            }
            None => {
                if descriptors <= 2 * http::DESCRIPTOR_RESERVE {
                    tracing::warn!(
                        descriptors,
                        "few open descriptors are allowed (raise `ulimit -n`): half go to client connections, half are kept for the store, sandbox processes, git and the engine"
                    );
                }
                http::default_max_connections(descriptors)
            }
        };
        tracing::info!(
            descriptors,
            max_connections,
            "open descriptors allowed, and client connections served at once"
        );
        // The store and the jobs' scratch files are the server's alone.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .map_err(|source| ServerError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
        let data_dir_lock = match &config.database_url {
            Some(url) if !url.starts_with("sqlite:") => None,
            _ => Some(lock_data_dir(&config.data_dir)?),
        };
        let store = store::Store::open(config.database_url.as_deref(), &config.data_dir).await?;
        // Wasm jobs run where workers run: in the sandbox processes, or in
        // this process's sandbox when there are none.
        let metrics = Arc::new(metrics::Metrics::new());
        let (sandbox, wasm_jobs): (Arc<dyn SandboxStage>, Arc<dyn WasmJobRunner>) =
            match &config.sandbox_processes {
                Some((count, command)) => {
                    let pool = Arc::new(SandboxPool::start(*count, command.clone()).await?);
                    metrics.watch_sandbox_restarts(pool.restarts());
                    (pool.clone(), pool)
                }
                None => {
                    let sandbox = Arc::new(Sandbox::new(SandboxConfig::from_env()).await?);
                    (sandbox.clone(), sandbox)
                }
            };
        let objects = match &config.object_store {
            Some(url) => Objects::open(url)?,
            None => Objects::local(&config.data_dir.join("objects"))?,
        };
        let tokens = mizzen_objects::JobTokens::new(store.job_token_key().await?);
        let storage = JobStorage::new(objects, Arc::new(store.clone()), tokens);
        let containers = config.executor.as_ref().map(|make| make(storage.clone()));
        let executor = containers
            .clone()
            .map(|containers| -> Arc<dyn JobExecutor> {
                Arc::new(HostJobExecutor::new(
                    containers,
                    wasm_jobs,
                    Arc::new(ModuleFetcher::for_tenants(
                        SandboxConfig::from_env().cache_dir,
                    )),
                ))
            });
        let forwarder = match &config.forwarding {
            Some(forwarding) => Some(Arc::new(
                mizzen_forwarding::Forwarder::start(
                    forwarding.clone(),
                    metrics.forwarding_stats().clone(),
                )
                .await?,
            )),
            None => None,
        };
        let traces = match &config.traces {
            Some(traces) => Some(Arc::new(
                mizzen_forwarding::Forwarder::start_traces(
                    traces.clone(),
                    &config.data_dir.join("forwarding").join("traces"),
                    TRACES_SPOOL_BYTES,
                    metrics.forwarding_stats().clone(),
                )
                .await?,
            )),
            None => None,
        };
        let check_runs = match &config.github_app {
            Some(app) => Some(check_runs::CheckRunReporter::new(
                github_app::GitHubApp::new(app.clone())?,
                store.clone(),
            )),
            None => None,
        };
        let slack_replies = match &config.gateways.slack_signing_secret {
            Some(_) => Some(
                slack_replies::SlackReplies::new(
                    config
                        .gateways
                        .slack_response_urls
                        .clone()
                        .unwrap_or_else(|| slack_replies::SLACK_RESPONSE_URLS.into()),
                )
                .map_err(|e| ServerError::Environment(format!("an HTTP client for Slack: {e}")))?,
            ),
            None => None,
        };
        // Scripts' npm packages and bundles are kept with the server's data,
        // shared by its sandbox processes and kept across restarts.
        let dependencies = Arc::new(Dependencies::new(
            Dependencies::registry_from_env().map_err(ServerError::Environment)?,
            Some(config.data_dir.join("dependencies")),
        ));
        let projects = Arc::new(project_cache::ProjectCache::new(dependencies));
        let scheduler = scheduler::Scheduler::new(
            store.clone(),
            projects.clone(),
            sandbox,
            executor,
            config.scheduler.clone(),
            metrics.clone(),
            scheduler::Forwarding {
                lines: forwarder.clone(),
                traces: traces.clone(),
                check_runs,
                slack_replies,
            },
        );
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    address: config.listen.to_string(),
                    source,
                })?;
        let state = Arc::new(api::AppState {
            store,
            storage: storage.clone(),
            scheduler: scheduler.clone(),
            projects,
            metrics,
            root_password: config.root_password.clone(),
            gateways: config.gateways.clone(),
            documents: Arc::new(tokio::sync::Semaphore::new(api::DOCUMENT_BUDGET as usize)),
            body_timeout: config.http.body_timeout,
            min_schedule_interval: config.min_schedule_interval,
        });
        Ok(Self {
            containers,
            forwarder,
            traces,
            storage,
            _data_dir_lock: data_dir_lock,
            listener,
            state,
            scheduler,
            config,
            max_connections,
        })
    }

    /// The address the server listens on (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown` resolves, then stops taking requests, lets
    /// running workers finish for the grace period and re-queues the rest.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let scheduler = tokio::spawn(
            self.scheduler
                .clone()
                .run(stop_rx.clone(), self.config.shutdown_grace),
        );
        tokio::spawn(schedules::run(self.state.clone(), stop_rx.clone()));
        tokio::spawn(sweep_objects(
            self.state.store.clone(),
            self.storage.clone(),
            self.config.artifact_retention,
            stop_rx.clone(),
        ));
        if let Some(retention) = self.config.log_retention {
            tokio::spawn(expire_logs(
                self.state.store.clone(),
                retention,
                stop_rx.clone(),
            ));
        }
        let app = api::router(self.state.clone());
        http::serve(
            self.listener,
            app,
            &self.config.http,
            self.max_connections,
            async move {
                shutdown.await;
                tracing::info!(
                    "shutting down: no new requests; running workers get their grace period"
                );
                let _ = stop_tx.send(true);
            },
        )
        .await;
        // Streams may keep the HTTP side open; the scheduler decides when
        // the workers are done.
        let _ = scheduler.await;
        self.state.store.flush_logs().await;
        if let Some(forwarder) = &self.forwarder {
            forwarder.close(FORWARDING_GRACE).await;
        }
        if let Some(traces) = &self.traces {
            traces.close(FORWARDING_GRACE).await;
        }
        // Ended events' files still being deleted; a crash instead leaves
        // them to the next start's sweep.
        if let Some(executor) = &self.containers {
            executor.cleaned_up().await;
        }
        Ok(())
    }
}

/// Takes the data directory's lock, or says which directory another server
/// holds. The operating system releases it when the process dies, however
/// it dies.
fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, ServerError> {
    let path = data_dir.join("mizzen.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| ServerError::DataDir {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(ServerError::DataDirInUse(data_dir.to_path_buf()))
        }
        Err(std::fs::TryLockError::Error(source)) => Err(ServerError::DataDir { path, source }),
    }
}

/// Deletes artifacts past `retention`, then the objects that nothing kept
/// names (those of deleted events, evicted caches, saves that failed).
async fn sweep_objects(
    store: store::Store,
    storage: JobStorage,
    retention: Option<Duration>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_SWEEP) => {}
            _ = stop.changed() => return,
        }
        if let Some(retention) = retention {
            let before =
                store::now_micros() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
            match store.delete_artifacts_before(before).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(artifacts = n, "deleted artifacts past their retention"),
                Err(e) => tracing::error!(error = %e, "deleting old artifacts failed"),
            }
        }
        match storage.sweep().await {
            Ok(sweep) if sweep.deleted > 0 => tracing::info!(
                deleted = sweep.deleted,
                bytes = sweep.deleted_bytes,
                kept = sweep.kept,
                "swept objects no artifact or cache names"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "sweeping the object storage failed"),
        }
    }
}

async fn expire_logs(store: store::Store, retention: Duration, mut stop: watch::Receiver<bool>) {
    loop {
        let before = store::now_micros() - i64::try_from(retention.as_micros()).unwrap_or(i64::MAX);
        match store.expire_logs(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(lines = n, "deleted logs past their retention"),
            Err(e) => tracing::error!(error = %e, "deleting old logs failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETENTION_SWEEP) => {}
            _ = stop.changed() => return,
        }
    }
}
