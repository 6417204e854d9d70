//! The sandbox stage split over processes: one sandbox process ("shard") per
//! core, behind the scheduler.
//!
//! Starting and dropping instances does not scale with threads inside one
//! process on the VMs Mizzen runs on (the kernel serialises a process's
//! memory-map changes; measured in `benches/scaling.rs`: two threads run
//! fewer events than one, two processes nearly twice as many). So a
//! [`ShardPool`] runs each worker in one of several child processes, each a
//! [`Sandbox`] on a single-threaded runtime, and speaks to them over their
//! stdin and stdout, one JSON message per line.
//!
//! Only the sandbox moves. The parent keeps everything else a worker
//! touches: its log sink (and so the store and redaction) and its job
//! executor. A shard's worker reaches them through proxies that forward each
//! call to the parent: a log record, a job to start, wait for or cancel, the
//! event's clean-up. A shard that dies fails only its own workers, each with
//! a [`WorkerFailure::Sandbox`] that says so, and is started again; workers
//! given out while no shard is alive wait for one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use mizzen_host_api::types::{Event, JobResult, JobSpec};
use serde::{Deserialize, Serialize};
use std::os::fd::AsFd;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

use crate::executor::{
    EventContext, ExecutorError, JobExecutor, JobOutput, JobRequest, RunningJob, result_of,
};
use crate::jobs::{CappedOutput, JobCapability};
use crate::limits::WorkerLimits;
use crate::log::{LogRecord, LogSink};
use crate::script::ScriptSource;
use crate::worker::{WorkerFailure, WorkerOutcome};
use crate::{Sandbox, SandboxConfig, SandboxError, WorkerRequest};

/// How long a shard that died waits before it is started again, so that a
/// shard that cannot start does not spin.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Messages queued together are written in one call up to this size: large
/// enough for a burst of log lines, small enough not to hold the rest back.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// A message from the parent to a shard.
#[derive(Debug, Serialize, Deserialize)]
enum ToShard {
    /// Run a worker.
    Run(Box<RunWorker>),
    /// Stop a worker (its event was cancelled): it ends without a word.
    Stop { worker: u64 },
    /// The executor accepted (`None`) or refused a job.
    JobStarted {
        worker: u64,
        job: u64,
        refused: Option<ExecutorError>,
    },
    /// A line a job's container printed.
    JobLine {
        worker: u64,
        job: u64,
        container: String,
        line: String,
    },
    /// How a job ended.
    JobEnded {
        worker: u64,
        job: u64,
        result: JobResult,
    },
    /// The executor removed what it made for the worker's event.
    EventFinished { worker: u64 },
}

/// A worker for a shard to run.
#[derive(Debug, Serialize, Deserialize)]
struct RunWorker {
    worker: u64,
    script: ScriptSource,
    event: Event,
    limits: WorkerLimits,
    /// The event's context when jobs can run, else why they cannot.
    jobs: Result<EventContext, String>,
    /// The executor's workspace directory (or why there is none), for a
    /// project that uses a workspace.
    workspace: Option<Result<PathBuf, String>>,
}

/// A message from a shard to the parent.
#[derive(Debug, Serialize, Deserialize)]
enum FromShard {
    /// The shard's sandbox is set up.
    Ready,
    /// A line of a worker's log.
    Log { worker: u64, record: LogRecord },
    /// A worker starts a job.
    StartJob {
        worker: u64,
        job: u64,
        name: String,
        spec: Box<JobSpec>,
    },
    /// A worker cancels a job.
    CancelJob { worker: u64, job: u64 },
    /// A worker ended: remove what the executor made for its event.
    FinishEvent { worker: u64 },
    /// A worker ended.
    Ended {
        worker: u64,
        outcome: Box<WorkerOutcome>,
    },
}

/// Runs workers: in this process's [`Sandbox`], or spread over shards.
#[async_trait]
pub trait SandboxStage: Send + Sync {
    /// Runs one event's worker to the end and says how it ended.
    async fn run(&self, script: &ScriptSource, request: WorkerRequest) -> WorkerOutcome;
}

#[async_trait]
impl SandboxStage for Sandbox {
    async fn run(&self, script: &ScriptSource, request: WorkerRequest) -> WorkerOutcome {
        Sandbox::run(self, script, request).await
    }
}

/// How to start a shard: a program that calls [`serve`] (the `mizzen`
/// binary's hidden `sandbox-shard` command).
#[derive(Debug, Clone)]
pub struct ShardCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Why the shards could not be started, or a shard could not serve.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// The program could not be run.
    #[error("could not start sandbox process {index} ({program}): {source}")]
    Spawn {
        /// Which shard.
        index: usize,
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// A sandbox process's stdin or stdout is not a pipe from its server.
    #[error(
        "a sandbox process talks to its server over pipes on stdin and stdout (it is started by `mizzen server`): {source}"
    )]
    Pipe {
        /// Why the pipe could not be used.
        source: std::io::Error,
    },
    /// The sandbox could not be set up.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The process ended before its sandbox was set up.
    #[error(
        "sandbox process {index} exited before it was ready ({status}); its error is in the server's log above"
    )]
    NotReady {
        /// Which shard.
        index: usize,
        /// How it ended.
        status: String,
    },
}

/// Workers spread over shard processes, each to the one running fewest.
/// A worker given out while no process is alive (they are all being
/// started again) waits for one, up to its lifetime.
pub struct ShardPool {
    shards: Vec<Arc<Shard>>,
    next_worker: AtomicU64,
    /// Counts the shards started again, so that waiting workers look anew.
    revived: Arc<watch::Sender<u64>>,
}

/// One shard process, as the parent sees it.
struct Shard {
    index: usize,
    command: ShardCommand,
    state: Mutex<ShardState>,
    revived: Arc<watch::Sender<u64>>,
}

#[derive(Default)]
struct ShardState {
    /// Where messages to the live process go; `None` while it is restarted.
    to_shard: Option<mpsc::UnboundedSender<ToShard>>,
    workers: HashMap<u64, ParentWorker>,
}

/// What the parent holds for a worker running in a shard.
struct ParentWorker {
    log: Arc<dyn LogSink>,
    /// Each job's output is cut at this size here, before it crosses the
    /// pipe, so a job printing gigabytes costs the shard nothing.
    job_log_bytes: u64,
    jobs: JobCapability,
    running_jobs: HashMap<u64, Arc<dyn RunningJob>>,
    ended: oneshot::Sender<WorkerOutcome>,
}

impl ShardPool {
    /// Starts `count` shards and waits until each has set up its sandbox.
    pub async fn start(count: usize, command: ShardCommand) -> Result<Self, ShardError> {
        let mut shards = Vec::with_capacity(count);
        let revived = Arc::new(watch::Sender::new(0));
        for index in 0..count.max(1) {
            let shard = Arc::new(Shard {
                index,
                command: command.clone(),
                state: Mutex::default(),
                revived: revived.clone(),
            });
            let (child, to_shard, lines) = shard.spawn().await?;
            shard.lock().to_shard = Some(to_shard);
            tokio::spawn(shard.clone().supervise(child, lines));
            shards.push(shard);
        }
        Ok(Self {
            shards,
            next_worker: AtomicU64::new(1),
            revived,
        })
    }

    /// The live shard running fewest workers.
    fn least_busy(&self) -> Option<&Arc<Shard>> {
        self.shards
            .iter()
            .filter_map(|shard| {
                let state = shard.lock();
                state
                    .to_shard
                    .as_ref()
                    .map(|_| (shard, state.workers.len()))
            })
            .min_by_key(|&(_, workers)| workers)
            .map(|(shard, _)| shard)
    }
}

#[async_trait]
impl SandboxStage for ShardPool {
    async fn run(&self, script: &ScriptSource, request: WorkerRequest) -> WorkerOutcome {
        let worker = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let WorkerRequest {
            event,
            limits,
            log,
            jobs,
        } = request;
        let (context, workspace) = match &jobs {
            JobCapability::Executor { executor, event } => {
                // Asked here: the executor is this process's.
                let workspace = match event.use_workspace {
                    true => Some(executor.workspace_dir(event).await),
                    false => None,
                };
                (Ok((**event).clone()), workspace)
            }
            JobCapability::Unavailable(why) => (Err(why.clone()), None),
        };
        let (ended, outcome) = oneshot::channel();
        let parent = ParentWorker {
            log,
            job_log_bytes: limits.job_log_bytes,
            jobs,
            running_jobs: HashMap::new(),
            ended,
        };
        let lifetime = limits.wall_time;
        let message = ToShard::Run(Box::new(RunWorker {
            worker,
            script: script.clone(),
            event,
            limits,
            jobs: context,
            workspace,
        }));
        // While every process is being started again (a second or two after
        // one died), the worker waits for one rather than failing: only the
        // workers that ran in a dead process fail. The wait is bounded by
        // the worker's lifetime; a server shutting down drops it.
        let give_up = tokio::time::Instant::now() + lifetime;
        let mut revived = self.revived.subscribe();
        let shard = loop {
            revived.borrow_and_update();
            if let Some(shard) = self.least_busy() {
                let mut state = shard.lock();
                // It may have died since it was picked: then look again.
                if let Some(to_shard) = state.to_shard.clone() {
                    state.workers.insert(worker, parent);
                    let _ = to_shard.send(message);
                    break shard.clone();
                }
                continue;
            }
            if tokio::time::timeout_at(give_up, revived.changed())
                .await
                .is_err()
            {
                return WorkerOutcome::failed(WorkerFailure::Sandbox {
                    message: format!(
                        "no sandbox process was running for the worker's whole lifetime ({}); the event can be retried",
                        humantime::format_duration(lifetime)
                    ),
                });
            }
        };
        // Dropped before the worker ended (its event was cancelled): the
        // shard stops it.
        let mut guard = StopOnDrop {
            shard: shard.clone(),
            worker,
            armed: true,
        };
        let outcome = outcome.await.unwrap_or_else(|_| {
            WorkerOutcome::failed(WorkerFailure::Sandbox {
                message: format!(
                    "sandbox process {} stopped while the worker ran (see the server's log)",
                    shard.index
                ),
            })
        });
        guard.armed = false;
        outcome
    }
}

/// Stops a worker whose run was dropped before it ended.
struct StopOnDrop {
    shard: Arc<Shard>,
    worker: u64,
    armed: bool,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.shard.lock();
        state.workers.remove(&self.worker);
        if let Some(to_shard) = &state.to_shard {
            let _ = to_shard.send(ToShard::Stop {
                worker: self.worker,
            });
        }
    }
}

type ShardLines = tokio::io::Lines<BufReader<tokio::process::ChildStdout>>;

impl Shard {
    fn lock(&self) -> MutexGuard<'_, ShardState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the process and waits for its `Ready`.
    async fn spawn(
        &self,
    ) -> Result<(Child, mpsc::UnboundedSender<ToShard>, ShardLines), ShardError> {
        let mut child = Command::new(&self.command.program)
            .args(&self.command.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ShardError::Spawn {
                index: self.index,
                program: self.command.program.display().to_string(),
                source,
            })?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let ready = matches!(
            lines
                .next_line()
                .await
                .ok()
                .flatten()
                .map(|line| serde_json::from_str(&line)),
            Some(Ok(FromShard::Ready))
        );
        if !ready {
            return Err(ShardError::NotReady {
                index: self.index,
                status: exit_status(&mut child).await,
            });
        }
        let (to_shard, outbox) = mpsc::unbounded_channel::<ToShard>();
        tokio::spawn(write_messages(outbox, stdin));
        Ok((child, to_shard, lines))
    }

    /// Reads the shard's messages until it dies, fails its workers, and
    /// starts it again.
    async fn supervise(self: Arc<Self>, mut child: Child, mut lines: ShardLines) {
        loop {
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<FromShard>(&line) {
                    Ok(message) => self.receive(message),
                    Err(e) => {
                        tracing::error!(shard = self.index, error = %e, "a sandbox process sent a message this server cannot read; stopping it");
                        let _ = child.start_kill();
                        break;
                    }
                }
            }
            let status = exit_status(&mut child).await;
            let workers = {
                let mut state = self.lock();
                state.to_shard = None;
                std::mem::take(&mut state.workers)
            };
            tracing::error!(
                shard = self.index,
                %status,
                workers = workers.len(),
                "a sandbox process stopped; its workers fail and it is started again"
            );
            for (_, worker) in workers {
                let message = format!(
                    "sandbox process {} stopped while the worker ran ({status})",
                    self.index
                );
                // The worker's jobs run on in the parent: stop them and clean
                // up as a worker that ended would have.
                tokio::spawn(async move {
                    for running in worker.running_jobs.values() {
                        running.cancel().await;
                    }
                    if let JobCapability::Executor { executor, event } = &worker.jobs {
                        executor.finish_event(event).await;
                    }
                    let _ = worker
                        .ended
                        .send(WorkerOutcome::failed(WorkerFailure::Sandbox { message }));
                });
            }
            loop {
                tokio::time::sleep(RESTART_DELAY).await;
                match self.spawn().await {
                    Ok((new_child, to_shard, new_lines)) => {
                        (child, lines) = (new_child, new_lines);
                        self.lock().to_shard = Some(to_shard);
                        // Workers given out meanwhile wait for this.
                        self.revived.send_modify(|count| *count += 1);
                        break;
                    }
                    Err(e) => {
                        tracing::error!(shard = self.index, error = %e, "restarting a sandbox process failed")
                    }
                }
            }
        }
    }

    /// Sends `message` to the live process; dropped while it is restarted
    /// (it concerns workers that failed with the old one).
    fn send(&self, message: ToShard) {
        if let Some(to_shard) = &self.lock().to_shard {
            let _ = to_shard.send(message);
        }
    }

    /// Acts on one message. Messages about a worker the parent no longer
    /// holds (it was stopped) are dropped.
    fn receive(self: &Arc<Self>, message: FromShard) {
        match message {
            FromShard::Ready => {}
            FromShard::Log { worker, record } => {
                let log = self.lock().workers.get(&worker).map(|w| w.log.clone());
                if let Some(log) = log {
                    log.record(record);
                }
            }
            FromShard::Ended { worker, outcome } => {
                if let Some(worker) = self.lock().workers.remove(&worker) {
                    let _ = worker.ended.send(*outcome);
                }
            }
            FromShard::StartJob {
                worker,
                job,
                name,
                spec,
            } => {
                let Some((executor, event)) = self.executor(worker) else {
                    return;
                };
                let Some((log, limit)) = self
                    .lock()
                    .workers
                    .get(&worker)
                    .map(|w| (w.log.clone(), w.job_log_bytes))
                else {
                    return;
                };
                let shard = self.clone();
                tokio::spawn(async move {
                    let forwarded = Arc::new(ForwardedOutput {
                        shard: shard.clone(),
                        worker,
                        job,
                    });
                    let output = Arc::new(CappedOutput::new(&name, limit, forwarded, log));
                    let request = JobRequest {
                        event,
                        name,
                        spec: *spec,
                        output: output.clone(),
                    };
                    let running = match executor.start(request).await {
                        Ok(running) => running,
                        Err(refused) => {
                            shard.send(ToShard::JobStarted {
                                worker,
                                job,
                                refused: Some(refused),
                            });
                            return;
                        }
                    };
                    if let Some(w) = shard.lock().workers.get_mut(&worker) {
                        w.running_jobs.insert(job, running.clone());
                    }
                    shard.send(ToShard::JobStarted {
                        worker,
                        job,
                        refused: None,
                    });
                    let result = running.wait().await;
                    // Every line has been passed on by now.
                    output.finish();
                    shard.send(ToShard::JobEnded {
                        worker,
                        job,
                        result,
                    });
                });
            }
            FromShard::CancelJob { worker, job } => {
                let running = self
                    .lock()
                    .workers
                    .get(&worker)
                    .and_then(|w| w.running_jobs.get(&job).cloned());
                if let Some(running) = running {
                    tokio::spawn(async move { running.cancel().await });
                }
            }
            FromShard::FinishEvent { worker } => {
                let Some((executor, event)) = self.executor(worker) else {
                    return;
                };
                let shard = self.clone();
                tokio::spawn(async move {
                    executor.finish_event(&event).await;
                    shard.send(ToShard::EventFinished { worker });
                });
            }
        }
    }

    fn executor(&self, worker: u64) -> Option<(Arc<dyn JobExecutor>, Arc<EventContext>)> {
        match &self.lock().workers.get(&worker)?.jobs {
            JobCapability::Executor { executor, event } => Some((executor.clone(), event.clone())),
            JobCapability::Unavailable(_) => None,
        }
    }
}

/// How a shard process ended, for the log and its workers' failures.
async fn exit_status(child: &mut Child) -> String {
    match child.wait().await {
        Ok(status) => status.to_string(),
        Err(e) => e.to_string(),
    }
}

/// A job's output in the parent, sent on to the shard whose worker reads it
/// (and logs it, within the job's log limit).
struct ForwardedOutput {
    shard: Arc<Shard>,
    worker: u64,
    job: u64,
}

impl JobOutput for ForwardedOutput {
    fn line(&self, container: &str, line: &str) {
        self.shard.send(ToShard::JobLine {
            worker: self.worker,
            job: self.job,
            container: container.to_string(),
            line: line.to_string(),
        });
    }
}

/// Serves as a shard: sets up a sandbox with `config`, says `Ready` on
/// stdout and runs the workers stdin asks for until stdin closes (the parent
/// is gone). Call it on a single-threaded runtime: one shard is one core.
pub async fn serve(config: SandboxConfig) -> Result<(), ShardError> {
    // The pipes are read and written on this thread, through epoll: a
    // thread of their own (or tokio's stdin and stdout, which use its
    // blocking pool) would cost a wake-up on another thread per message.
    let pipe = |fd: std::os::fd::BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map(std::fs::File::from)
            .map_err(|source| ShardError::Pipe { source })
    };
    let stdout = pipe::Sender::from_file(pipe(std::io::stdout().as_fd())?)
        .map_err(|source| ShardError::Pipe { source })?;
    let stdin = pipe::Receiver::from_file(pipe(std::io::stdin().as_fd())?)
        .map_err(|source| ShardError::Pipe { source })?;
    let sandbox = Arc::new(Sandbox::new(config).await?);
    let (to_parent, outbox) = mpsc::unbounded_channel::<FromShard>();
    tokio::spawn(write_messages(outbox, stdout));
    let link = Arc::new(ParentLink {
        to_parent,
        state: Mutex::default(),
        next_job: AtomicU64::new(1),
    });
    let _ = link.to_parent.send(FromShard::Ready);
    let mut lines = BufReader::new(stdin).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let message: ToShard = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(e) => {
                // The parent and this process are the same binary; a line
                // that does not parse means the pipe is not the parent's.
                tracing::error!(error = %e, "a sandbox process got a message it cannot read; stopping");
                break;
            }
        };
        link.receive(message, &sandbox);
    }
    Ok(())
}

/// Writes the messages queued in `outbox` to `pipe`, one JSON line each,
/// until either end closes. Whatever is queued together goes in one write:
/// one system call for a burst of log lines.
async fn write_messages<T: Serialize>(
    mut outbox: mpsc::UnboundedReceiver<T>,
    mut pipe: impl tokio::io::AsyncWrite + Unpin,
) {
    let mut batch = Vec::new();
    while let Some(message) = outbox.recv().await {
        encode(&mut batch, &message);
        while batch.len() < MAX_BATCH_BYTES
            && let Ok(message) = outbox.try_recv()
        {
            encode(&mut batch, &message);
        }
        if pipe.write_all(&batch).await.is_err() {
            break;
        }
        batch.clear();
    }
}

/// Appends `message` and its newline to `batch`.
fn encode(batch: &mut Vec<u8>, message: &impl Serialize) {
    serde_json::to_writer(&mut *batch, message).expect("messages serialise");
    batch.push(b'\n');
}

/// A shard's side of the pipe: the workers it runs and their jobs.
struct ParentLink {
    to_parent: mpsc::UnboundedSender<FromShard>,
    state: Mutex<LinkState>,
    next_job: AtomicU64,
}

#[derive(Default)]
struct LinkState {
    workers: HashMap<u64, tokio::task::AbortHandle>,
    jobs: HashMap<(u64, u64), ShardJob>,
    finishing: HashMap<u64, oneshot::Sender<()>>,
}

/// A job as a shard's worker sees it.
struct ShardJob {
    output: Arc<dyn JobOutput>,
    started: Option<oneshot::Sender<Option<ExecutorError>>>,
    result: watch::Sender<Option<JobResult>>,
}

impl ParentLink {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn receive(self: &Arc<Self>, message: ToShard, sandbox: &Arc<Sandbox>) {
        match message {
            ToShard::Run(run) => {
                let RunWorker {
                    worker,
                    script,
                    event,
                    limits,
                    jobs,
                    workspace,
                } = *run;
                let jobs = match jobs {
                    Ok(context) => JobCapability::Executor {
                        executor: Arc::new(ProxyExecutor {
                            link: self.clone(),
                            worker,
                            workspace,
                        }),
                        event: Arc::new(context),
                    },
                    Err(why) => JobCapability::Unavailable(why),
                };
                let request = WorkerRequest {
                    event,
                    limits,
                    log: Arc::new(ProxyLog {
                        to_parent: self.to_parent.clone(),
                        worker,
                    }),
                    jobs,
                };
                let (link, sandbox) = (self.clone(), sandbox.clone());
                // Registered before the task can end and remove it.
                let mut state = self.lock();
                let task = tokio::spawn(async move {
                    let outcome = sandbox.run(&script, request).await;
                    link.forget(worker);
                    let _ = link.to_parent.send(FromShard::Ended {
                        worker,
                        outcome: Box::new(outcome),
                    });
                });
                state.workers.insert(worker, task.abort_handle());
            }
            ToShard::Stop { worker } => {
                if let Some(task) = self.lock().workers.get(&worker) {
                    task.abort();
                }
                self.forget(worker);
            }
            ToShard::JobStarted {
                worker,
                job,
                refused,
            } => {
                let started = self
                    .lock()
                    .jobs
                    .get_mut(&(worker, job))
                    .and_then(|j| j.started.take());
                if let Some(started) = started {
                    let _ = started.send(refused);
                }
            }
            ToShard::JobLine {
                worker,
                job,
                container,
                line,
            } => {
                let output = self
                    .lock()
                    .jobs
                    .get(&(worker, job))
                    .map(|j| j.output.clone());
                if let Some(output) = output {
                    output.line(&container, &line);
                }
            }
            ToShard::JobEnded {
                worker,
                job,
                result,
            } => {
                if let Some(job) = self.lock().jobs.get(&(worker, job)) {
                    let _ = job.result.send(Some(result));
                }
            }
            ToShard::EventFinished { worker } => {
                if let Some(finished) = self.lock().finishing.remove(&worker) {
                    let _ = finished.send(());
                }
            }
        }
    }

    /// Drops everything held for a worker that ended or was stopped.
    fn forget(&self, worker: u64) {
        let mut state = self.lock();
        state.workers.remove(&worker);
        state.jobs.retain(|(w, _), _| *w != worker);
        state.finishing.remove(&worker);
    }
}

/// A worker's log in a shard: each record goes to the parent.
struct ProxyLog {
    to_parent: mpsc::UnboundedSender<FromShard>,
    worker: u64,
}

impl LogSink for ProxyLog {
    fn record(&self, record: LogRecord) {
        let _ = self.to_parent.send(FromShard::Log {
            worker: self.worker,
            record,
        });
    }
}

/// A worker's job executor in a shard: the parent's, over the pipe.
struct ProxyExecutor {
    link: Arc<ParentLink>,
    worker: u64,
    workspace: Option<Result<PathBuf, String>>,
}

#[async_trait]
impl JobExecutor for ProxyExecutor {
    async fn start(&self, job: JobRequest) -> Result<Arc<dyn RunningJob>, ExecutorError> {
        let id = self.link.next_job.fetch_add(1, Ordering::Relaxed);
        let (started, refused) = oneshot::channel();
        let (result_sender, result) = watch::channel(None);
        self.link.lock().jobs.insert(
            (self.worker, id),
            ShardJob {
                output: job.output,
                started: Some(started),
                result: result_sender,
            },
        );
        let _ = self.link.to_parent.send(FromShard::StartJob {
            worker: self.worker,
            job: id,
            name: job.name,
            spec: Box::new(job.spec),
        });
        match refused.await {
            Ok(None) => Ok(Arc::new(ProxyJob {
                link: self.link.clone(),
                worker: self.worker,
                job: id,
                result,
            })),
            Ok(Some(refused)) => Err(refused),
            Err(_) => Err(ExecutorError::Unavailable(
                "the server stopped before the job started".into(),
            )),
        }
    }

    async fn workspace_dir(&self, _event: &EventContext) -> Result<PathBuf, String> {
        self.workspace
            .clone()
            .unwrap_or_else(|| Err("the project uses no workspace".into()))
    }

    async fn finish_event(&self, _event: &EventContext) {
        let (finished, done) = oneshot::channel();
        self.link.lock().finishing.insert(self.worker, finished);
        let _ = self.link.to_parent.send(FromShard::FinishEvent {
            worker: self.worker,
        });
        let _ = done.await;
    }
}

/// A running job in a shard; its result comes from the parent.
struct ProxyJob {
    link: Arc<ParentLink>,
    worker: u64,
    job: u64,
    result: watch::Receiver<Option<JobResult>>,
}

#[async_trait]
impl RunningJob for ProxyJob {
    async fn wait(&self) -> JobResult {
        result_of(&self.result, "the server stopped before the job ended").await
    }

    async fn cancel(&self) {
        let _ = self.link.to_parent.send(FromShard::CancelJob {
            worker: self.worker,
            job: self.job,
        });
        self.wait().await;
    }
}
