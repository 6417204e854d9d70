//! The server's sandbox stage: where its scheduler runs workers, in this
//! process ([`Sandbox`]) or spread over sandbox processes ([`SandboxPool`],
//! one per core by default).
//!
//! Starting and dropping instances does not scale with threads inside one
//! process on the VMs Mizzen runs on (the kernel serialises a process's
//! memory-map changes), so the pool runs each worker in one of several
//! child processes (`mizzen sandbox-shard`, serving
//! [`mizzen_runtime::sandbox_process`]) and speaks to them over their stdin
//! and stdout. A worker is split at the host call
//! ([`WorkerRequest::split`]): the child gets what its sandbox needs; the
//! pool keeps the worker's host (log, jobs, workspace, every secret) and
//! answers the child's calls from it. A child that dies fails only its own
//! workers, each with a [`WorkerFailure::Sandbox`] that says so, and is
//! started again; workers given out meanwhile wait for it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use mizzen_host_api::Op;
use mizzen_host_api::types::{JobResult, Phase};
use mizzen_runtime::capability::{Answer, HostedWorker, WorkerHost};
use mizzen_runtime::executor::JobOutput;
use mizzen_runtime::sandbox_process::{
    FrameError, FromSandbox, ScriptKey, ToSandbox, WireAnswer, read_frame, write_frames,
};
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::wasm_job::{WasmJob, WasmJobRunner};
use mizzen_runtime::{Sandbox, WorkerFailure, WorkerOutcome, WorkerRequest};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::{mpsc, oneshot, watch};

/// How long a sandbox process that died waits before it is started again,
/// so that one that cannot start does not spin.
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// Script keys remembered per process as sent: past it the oldest is
/// forgotten and sent again when next needed (a process asks for one it
/// dropped itself).
const SENT_SCRIPTS: usize = 1024;

/// Runs workers: in this process's [`Sandbox`], or spread over sandbox
/// processes.
#[async_trait]
pub trait SandboxStage: Send + Sync {
    /// Runs one event's worker to the end and says how it ended; its jobs
    /// are stopped and its event's leftovers handed to the executor's
    /// clean-up before this returns.
    async fn run(&self, script: &ScriptSource, request: WorkerRequest) -> WorkerOutcome;
}

#[async_trait]
impl SandboxStage for Sandbox {
    async fn run(&self, script: &ScriptSource, request: WorkerRequest) -> WorkerOutcome {
        Sandbox::run(self, script, request).await
    }
}

/// How to start a sandbox process: a program that serves
/// [`mizzen_runtime::sandbox_process::serve`] (the `mizzen` binary's hidden
/// `sandbox-shard` command).
#[derive(Debug, Clone)]
pub struct SandboxCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Why the sandbox processes could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SandboxPoolError {
    /// The program could not be run.
    #[error("could not start sandbox process {index} ({program}): {source}")]
    Spawn {
        /// Which process.
        index: usize,
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The process ended before its sandbox was set up.
    #[error(
        "sandbox process {index} exited before it was ready ({status}); its error is in the server's log above"
    )]
    NotReady {
        /// Which process.
        index: usize,
        /// How it ended.
        status: String,
    },
}

/// Workers spread over sandbox processes, each to the one running fewest.
/// A worker given out while no process is alive (they are all being
/// started again) waits for one, up to its lifetime.
pub struct SandboxPool {
    processes: Vec<Arc<SandboxProcess>>,
    next_worker: AtomicU64,
    /// Counts the processes started again, so that waiting workers look anew.
    revived: Arc<watch::Sender<u64>>,
}

/// One sandbox process, as the server sees it.
struct SandboxProcess {
    index: usize,
    command: SandboxCommand,
    state: Mutex<ProcessState>,
    revived: Arc<watch::Sender<u64>>,
}

#[derive(Default)]
struct ProcessState {
    /// Where messages to the live process go; `None` while it is restarted.
    to_process: Option<mpsc::UnboundedSender<ToSandbox>>,
    /// Scripts sent to the live process, oldest first.
    sent: VecDeque<ScriptKey>,
    sent_set: HashSet<ScriptKey>,
    workers: HashMap<u64, PoolWorker>,
    /// Wasm jobs running in the process.
    jobs: HashMap<u64, PoolJob>,
}

/// What the server holds for a Wasm job running in a sandbox process.
struct PoolJob {
    name: String,
    output: Arc<dyn JobOutput>,
    ended: oneshot::Sender<JobResult>,
}

/// What the server holds for a worker running in a sandbox process.
struct PoolWorker {
    hosted: Arc<HostedWorker>,
    script: Arc<ScriptSource>,
    /// The script's key, as its process knows it.
    key: ScriptKey,
    ended: oneshot::Sender<WorkerOutcome>,
}

impl SandboxPool {
    /// How many times a process was started again, as it grows.
    pub fn restarts(&self) -> watch::Receiver<u64> {
        self.revived.subscribe()
    }

    /// Starts `count` sandbox processes and waits until each has set up its
    /// sandbox.
    pub async fn start(count: usize, command: SandboxCommand) -> Result<Self, SandboxPoolError> {
        let mut processes = Vec::with_capacity(count);
        let revived = Arc::new(watch::Sender::new(0));
        for index in 0..count.max(1) {
            let process = Arc::new(SandboxProcess {
                index,
                command: command.clone(),
                state: Mutex::default(),
                revived: revived.clone(),
            });
            let (child, to_process, from_process) = process.spawn().await?;
            process.lock().to_process = Some(to_process);
            tokio::spawn(process.clone().supervise(child, from_process));
            processes.push(process);
        }
        Ok(Self {
            processes,
            next_worker: AtomicU64::new(1),
            revived,
        })
    }

    /// The live process running fewest workers.
    fn least_busy(&self) -> Option<&Arc<SandboxProcess>> {
        self.processes
            .iter()
            .filter_map(|process| {
                let state = process.lock();
                state
                    .to_process
                    .as_ref()
                    .map(|_| (process, state.workers.len() + state.jobs.len()))
            })
            .min_by_key(|&(_, workers)| workers)
            .map(|(process, _)| process)
    }
}

#[async_trait]
impl SandboxStage for SandboxPool {
    async fn run(&self, script: &ScriptSource, request: WorkerRequest) -> WorkerOutcome {
        let worker = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let lifetime = request.limits.wall_time;
        let (setup, hosted) = request.split();
        let hosted = Arc::new(hosted);
        hosted.begin();
        // The code is shared, not copied, and its key was computed once.
        let script = Arc::new(script.clone());
        let key = script.key();
        let (ended, outcome) = oneshot::channel();
        let mut pool_worker = Some(PoolWorker {
            hosted: hosted.clone(),
            script,
            key,
            ended,
        });
        let mut setup = Some(Box::new(setup));
        // While every process is being started again (a second or two after
        // one died), the worker waits for one rather than failing: only the
        // workers that ran in a dead process fail. The wait is bounded by
        // the worker's lifetime; a server shutting down drops it.
        let give_up = tokio::time::Instant::now() + lifetime;
        let mut revived = self.revived.subscribe();
        let process = loop {
            revived.borrow_and_update();
            if let Some(process) = self.least_busy() {
                let mut state = process.lock();
                // It may have died since it was picked: then look again.
                if let Some(to_process) = state.to_process.clone() {
                    if state.sent_set.insert(key) {
                        state.sent.push_back(key);
                        if state.sent.len() > SENT_SCRIPTS
                            && let Some(oldest) = state.sent.pop_front()
                        {
                            state.sent_set.remove(&oldest);
                        }
                        let source = pool_worker.as_ref().expect("once").script.as_ref().clone();
                        let _ = to_process.send(ToSandbox::Script { key, source });
                    }
                    state
                        .workers
                        .insert(worker, pool_worker.take().expect("given once"));
                    let _ = to_process.send(ToSandbox::Run {
                        worker,
                        script: key,
                        setup: setup.take().expect("sent once"),
                    });
                    break process.clone();
                }
                continue;
            }
            if tokio::time::timeout_at(give_up, revived.changed())
                .await
                .is_err()
            {
                let outcome = WorkerOutcome::failed(WorkerFailure::Sandbox {
                    message: format!(
                        "no sandbox process was running for the worker's whole lifetime ({}); the event can be retried",
                        humantime::format_duration(lifetime)
                    ),
                });
                let outcome = hosted.ended(outcome);
                hosted.finish().await;
                return outcome;
            }
        };
        // Dropped before the worker ended (its event was cancelled): the
        // process stops it.
        let mut guard = StopOnDrop {
            process: process.clone(),
            worker,
            armed: true,
        };
        let outcome = outcome.await.unwrap_or_else(|_| {
            WorkerOutcome::failed(WorkerFailure::Sandbox {
                message: format!(
                    "sandbox process {} stopped while the worker ran (see the server's log)",
                    process.index
                ),
            })
        });
        guard.armed = false;
        let outcome = hosted.ended(outcome);
        hosted.finish().await;
        outcome
    }
}

#[async_trait]
impl WasmJobRunner for SandboxPool {
    /// Runs a Wasm job in the live process running fewest workers and jobs
    /// (waiting for one, up to the job's timeout, while all are started
    /// again); where its lines come from and its end is said.
    async fn run_job(
        &self,
        job: WasmJob,
        output: Arc<dyn JobOutput>,
        mut cancel: watch::Receiver<bool>,
    ) -> JobResult {
        let id = self.next_worker.fetch_add(1, Ordering::Relaxed);
        let name = job.name.clone();
        let give_up = tokio::time::Instant::now() + job.timeout;
        let (ended, result) = oneshot::channel();
        let mut pool_job = Some(PoolJob {
            name: name.clone(),
            output,
            ended,
        });
        let mut job = Some(Box::new(job));
        let mut revived = self.revived.subscribe();
        let process = loop {
            revived.borrow_and_update();
            if let Some(process) = self.least_busy() {
                let mut state = process.lock();
                if let Some(to_process) = state.to_process.clone() {
                    state.jobs.insert(id, pool_job.take().expect("given once"));
                    let _ = to_process.send(ToSandbox::RunJob {
                        job: id,
                        wasm: job.take().expect("sent once"),
                    });
                    break process.clone();
                }
                continue;
            }
            tokio::select! {
                changed = tokio::time::timeout_at(give_up, revived.changed()) => {
                    if changed.is_err() {
                        return JobResult::ended(
                            Phase::Failed,
                            None,
                            format!("job \"{name}\": no sandbox process was running to run it within its timeout"),
                        );
                    }
                }
                _ = cancel.wait_for(|cancelled| *cancelled) => {
                    return JobResult::ended(Phase::Canceled, None, format!("job \"{name}\" was cancelled before it started"));
                }
            }
        };
        // Dropped before it ended (its worker was stopped): the process
        // cancels it.
        let mut guard = CancelJobOnDrop {
            process: process.clone(),
            job: id,
            armed: true,
        };
        let mut result = std::pin::pin!(result);
        let result = tokio::select! {
            result = &mut result => result,
            () = async { drop(cancel.wait_for(|cancelled| *cancelled).await) } => {
                process.send(ToSandbox::CancelJob { job: id });
                result.await
            }
        };
        guard.armed = false;
        result.unwrap_or_else(|_| {
            JobResult::ended(
                Phase::Failed,
                None,
                format!(
                    "job \"{name}\": sandbox process {} stopped while the job ran (see the server's log)",
                    process.index
                ),
            )
        })
    }
}

/// Cancels a Wasm job whose run was dropped before it ended.
struct CancelJobOnDrop {
    process: Arc<SandboxProcess>,
    job: u64,
    armed: bool,
}

impl Drop for CancelJobOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.process.lock();
        state.jobs.remove(&self.job);
        if let Some(to_process) = &state.to_process {
            let _ = to_process.send(ToSandbox::CancelJob { job: self.job });
        }
    }
}

/// Stops a worker whose run was dropped before it ended.
struct StopOnDrop {
    process: Arc<SandboxProcess>,
    worker: u64,
    armed: bool,
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.process.lock();
        state.workers.remove(&self.worker);
        if let Some(to_process) = &state.to_process {
            let _ = to_process.send(ToSandbox::Stop {
                worker: self.worker,
                stop: None,
            });
        }
    }
}

impl SandboxProcess {
    fn lock(&self) -> MutexGuard<'_, ProcessState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the process and waits for its `Ready`.
    async fn spawn(
        &self,
    ) -> Result<(Child, mpsc::UnboundedSender<ToSandbox>, ChildStdout), SandboxPoolError> {
        let mut child = Command::new(&self.command.program)
            .args(&self.command.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| SandboxPoolError::Spawn {
                index: self.index,
                program: self.command.program.display().to_string(),
                source,
            })?;
        let stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let ready = matches!(
            read_frame::<FromSandbox>(&mut stdout, &mut Vec::new()).await,
            Ok(FromSandbox::Ready)
        );
        if !ready {
            return Err(SandboxPoolError::NotReady {
                index: self.index,
                status: exit_status(&mut child).await,
            });
        }
        let (to_process, outbox) = mpsc::unbounded_channel::<ToSandbox>();
        tokio::spawn(write_frames(outbox, stdin));
        Ok((child, to_process, stdout))
    }

    /// Reads the process's messages until it dies, fails its workers, and
    /// starts it again.
    async fn supervise(self: Arc<Self>, mut child: Child, mut from_process: ChildStdout) {
        let mut buffer = Vec::new();
        loop {
            loop {
                match read_frame::<FromSandbox>(&mut from_process, &mut buffer).await {
                    Ok(message) => self.receive(message),
                    Err(FrameError::Io(_)) => break,
                    Err(e) => {
                        tracing::error!(process = self.index, error = %e, "a sandbox process sent a message this server cannot read; stopping it");
                        let _ = child.start_kill();
                        break;
                    }
                }
            }
            let status = exit_status(&mut child).await;
            let (workers, jobs) = {
                let mut state = self.lock();
                state.to_process = None;
                state.sent.clear();
                state.sent_set.clear();
                (
                    std::mem::take(&mut state.workers),
                    std::mem::take(&mut state.jobs),
                )
            };
            for (_, job) in jobs {
                let _ = job.ended.send(JobResult::ended(
                    Phase::Failed,
                    None,
                    format!(
                        "job \"{}\": sandbox process {} stopped while the job ran ({status})",
                        job.name, self.index
                    ),
                ));
            }
            tracing::error!(
                process = self.index,
                %status,
                workers = workers.len(),
                "a sandbox process stopped; its workers fail and it is started again"
            );
            for (_, worker) in workers {
                // Their runs stop the jobs and clean up as for any end.
                let _ = worker
                    .ended
                    .send(WorkerOutcome::failed(WorkerFailure::Sandbox {
                        message: format!(
                            "sandbox process {} stopped while the worker ran ({status})",
                            self.index
                        ),
                    }));
            }
            loop {
                tokio::time::sleep(RESTART_DELAY).await;
                match self.spawn().await {
                    Ok((new_child, to_process, new_from_process)) => {
                        (child, from_process) = (new_child, new_from_process);
                        self.lock().to_process = Some(to_process);
                        // Workers given out meanwhile wait for this.
                        self.revived.send_modify(|count| *count += 1);
                        tracing::info!(process = self.index, "sandbox process restarted");
                        break;
                    }
                    Err(e) => {
                        tracing::error!(process = self.index, error = %e, "restarting a sandbox process failed")
                    }
                }
            }
        }
    }

    /// Sends `message` to the live process; dropped while it is restarted
    /// (it concerns workers that failed with the old one).
    fn send(&self, message: ToSandbox) {
        if let Some(to_process) = &self.lock().to_process {
            let _ = to_process.send(message);
        }
    }

    /// Acts on one message. Messages about a worker no longer held (it was
    /// stopped) are dropped.
    fn receive(self: &Arc<Self>, message: FromSandbox) {
        match message {
            FromSandbox::Ready => {}
            FromSandbox::NeedScript { key } => {
                let source = self
                    .lock()
                    .workers
                    .values()
                    .find(|w| w.key == key)
                    .map(|w| w.script.as_ref().clone());
                if let Some(source) = source {
                    self.send(ToSandbox::Script { key, source });
                }
            }
            FromSandbox::JobLine { job, line } => {
                let found = self
                    .lock()
                    .jobs
                    .get(&job)
                    .map(|job| (job.name.clone(), job.output.clone()));
                // Outside the lock: the output takes its own.
                if let Some((name, output)) = found {
                    output.line(&name, &line);
                }
            }
            FromSandbox::JobEnded {
                job,
                result,
                dropped: (lines, bytes),
            } => {
                let Some(job) = self.lock().jobs.remove(&job) else {
                    return;
                };
                if lines > 0 {
                    job.output.lost(
                        &job.name,
                        &format!("{lines} more lines ({bytes} bytes) past its log limit were dropped where it ran"),
                    );
                }
                let _ = job.ended.send(result);
            }
            FromSandbox::Ended { worker, outcome } => {
                if let Some(worker) = self.lock().workers.remove(&worker) {
                    let _ = worker.ended.send(*outcome);
                }
            }
            FromSandbox::Call {
                worker,
                call,
                op,
                request,
            } => {
                let Some(hosted) = self.lock().workers.get(&worker).map(|w| w.hosted.clone())
                else {
                    return;
                };
                let Some(op) = Op::from_u32(op) else {
                    return;
                };
                let Some(call) = call else {
                    // A line no one waits for, taken in order.
                    if let Err(stop) = hosted.call_unanswered(op, &request) {
                        self.send(ToSandbox::Stop {
                            worker,
                            stop: Some(stop),
                        });
                    }
                    return;
                };
                let process = self.clone();
                tokio::spawn(async move {
                    let answer = match hosted.call(op, request).await {
                        Err(stop) => WireAnswer::Stop(stop),
                        Ok(Err(error)) => WireAnswer::Failed(error),
                        Ok(Ok(Answer::Now(body))) => WireAnswer::Now(body),
                        Ok(Ok(Answer::Later(pending))) => {
                            process.send(ToSandbox::Answer {
                                worker,
                                call,
                                answer: WireAnswer::Later,
                            });
                            let result = pending
                                .await
                                .map(|value| serde_json::to_vec(&value).expect("JSON serialises"));
                            process.send(ToSandbox::Completed {
                                worker,
                                call,
                                result,
                            });
                            return;
                        }
                    };
                    process.send(ToSandbox::Answer {
                        worker,
                        call,
                        answer,
                    });
                });
            }
        }
    }
}

/// How a process ended, for the log and its workers' failures.
async fn exit_status(child: &mut Child) -> String {
    match child.wait().await {
        Ok(status) => status.to_string(),
        Err(e) => e.to_string(),
    }
}
