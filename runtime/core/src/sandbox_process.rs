//! A sandbox process: runs the workers another process (a server,
//! `mizzen sandbox-shard`) gives it, over its stdin and stdout, and holds
//! nothing of a worker but what its sandbox needs.
//!
//! The seam is the host call. A worker's sandbox-held capabilities (its
//! event as its script may see it, the secrets it may read, timers, its
//! summary) answer here; every other operation goes to the parent as one
//! [`FromSandbox::Call`] and comes back as an [`ToSandbox::Answer`] (and, for
//! what completes later, a [`ToSandbox::Completed`]). A log line is a call
//! no one waits for; a limit it reaches comes back as a
//! [`ToSandbox::Stop`]. So the parent keeps the project's other secrets, the
//! job rules and the jobs' output, a container's line never crosses the
//! pipes, and a new capability needs no new message.
//!
//! A script crosses once per process: later runs name it by its hash, and a
//! process that no longer has it asks for it again ([`FromSandbox::NeedScript`]).
//!
//! Messages are postcard-encoded and framed by a little-endian `u32`
//! length ([`write_frames`], [`read_frame`]): a request's JSON crosses as
//! bytes, never escaped into another JSON document.

use std::collections::{HashMap, VecDeque};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use mizzen_host_api::types::LogRequest;
use mizzen_host_api::{ErrorCode, HostError, Op};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{mpsc, oneshot};

use crate::capability::{self, Answer, SandboxWorker, StopSignal, WorkerHost};
use crate::executor::JobOutput;
use crate::script::ScriptSource;
use crate::wasm_job::{WasmJob, WasmJobRunner};
use crate::worker::{Stop, WorkerOutcome};
use crate::{Sandbox, SandboxConfig, SandboxError};
use mizzen_host_api::types::JobResult;

/// Frames queued together are written in one call up to this size: large
/// enough for a burst of log lines, small enough not to hold the rest back.
const MAX_BATCH_BYTES: usize = 256 * 1024;

/// The largest frame either side reads: an event carries its payload (up to
/// the API's 25 MiB body) and its script (up to 1 MiB); anything larger is
/// not from a peer that speaks this protocol.
pub const MAX_FRAME_BYTES: u32 = 64 * 1024 * 1024;

/// Scripts a sandbox process keeps by hash. Sources are usually a few KiB;
/// a process asks again for one it dropped.
const KEPT_SCRIPTS: usize = 1024;

/// What the kept scripts may weigh together: a compiled script (a module) is
/// up to 16 MiB, and a thousand of them must not be a process's memory.
const KEPT_SCRIPT_BYTES: usize = 256 * 1024 * 1024;

pub use crate::script::ScriptKey;

/// A message to a sandbox process.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToSandbox {
    /// A script that runs name by `key`.
    Script {
        /// Its hash.
        key: ScriptKey,
        /// The script.
        source: ScriptSource,
    },
    /// Run a worker.
    Run {
        /// The parent's number for the worker.
        worker: u64,
        /// The script, sent before ([`ToSandbox::Script`]).
        script: ScriptKey,
        /// What the sandbox needs of the worker.
        setup: Box<SandboxWorker>,
    },
    /// Stop a worker: its event was cancelled (`None`: it ends without a
    /// word), or its host reached a limit on a line no one waited for.
    Stop {
        /// The worker.
        worker: u64,
        /// Why, when the worker is to end with an outcome.
        stop: Option<Stop>,
    },
    /// The answer to a [`FromSandbox::Call`].
    Answer {
        /// The worker.
        worker: u64,
        /// The call's number.
        call: u64,
        /// The answer.
        answer: WireAnswer,
    },
    /// The result of an answer that came [`WireAnswer::Later`].
    Completed {
        /// The worker.
        worker: u64,
        /// The call's number.
        call: u64,
        /// The result as JSON, or the error.
        result: Result<Vec<u8>, HostError>,
    },
    /// Run a Wasm job: its module, argv, environment, directories and
    /// limits. Its lines and its end come back as [`FromSandbox::JobLine`]
    /// and [`FromSandbox::JobEnded`].
    RunJob {
        /// The server's number for the job.
        job: u64,
        /// What to run.
        wasm: Box<WasmJob>,
    },
    /// Stop a Wasm job: it ends ABORTED.
    CancelJob {
        /// The job.
        job: u64,
    },
}

/// A message from a sandbox process.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromSandbox {
    /// The process's sandbox is set up.
    Ready,
    /// A run named a script this process does not have (any more).
    NeedScript {
        /// The script's key.
        key: ScriptKey,
    },
    /// An operation of a capability the worker's host holds.
    Call {
        /// The worker.
        worker: u64,
        /// The call's number, or `None` when no one waits for the answer
        /// (a log line).
        call: Option<u64>,
        /// The operation's number.
        op: u32,
        /// The request as the guest sent it (JSON).
        request: Vec<u8>,
    },
    /// A worker ended.
    Ended {
        /// The worker.
        worker: u64,
        /// How.
        outcome: Box<WorkerOutcome>,
    },
    /// A line a Wasm job printed (within its log limit, and the first one
    /// past it, so that the server says the output was cut).
    JobLine {
        /// The job.
        job: u64,
        /// The line.
        line: String,
    },
    /// A Wasm job ended.
    JobEnded {
        /// The job.
        job: u64,
        /// How.
        result: JobResult,
        /// Lines (and their bytes) past the job's log limit that were
        /// dropped here rather than sent.
        dropped: (u64, u64),
    },
}

/// A call's answer as it crosses the pipes.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireAnswer {
    /// The reply body now.
    Now(Option<Vec<u8>>),
    /// The error the guest receives.
    Failed(HostError),
    /// A result later, in a [`ToSandbox::Completed`].
    Later,
    /// The worker is to stop.
    Stop(Stop),
}

/// Why a sandbox process could not serve.
#[derive(Debug, thiserror::Error)]
pub enum SandboxProcessError {
    /// stdin or stdout is not a pipe from a parent.
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
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The pipe closed or failed.
    #[error("the pipe closed or failed: {0}")]
    Io(#[from] std::io::Error),
    /// A length past [`MAX_FRAME_BYTES`].
    #[error("a frame of {0} bytes is larger than the {MAX_FRAME_BYTES} bytes a peer sends")]
    TooLarge(u32),
    /// Bytes that are not a message of this protocol.
    #[error("a frame is not a message of this protocol: {0}")]
    Decode(#[from] postcard::Error),
}

/// Reads one message.
pub async fn read_frame<T: for<'de> Deserialize<'de>>(
    pipe: &mut (impl AsyncRead + Unpin),
    buffer: &mut Vec<u8>,
) -> Result<T, FrameError> {
    let len = pipe.read_u32_le().await?;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    buffer.resize(len as usize, 0);
    pipe.read_exact(buffer).await?;
    Ok(postcard::from_bytes(buffer)?)
}

/// Writes the messages queued in `outbox` to `pipe`, until either end
/// closes. Whatever is queued together goes in one write.
pub async fn write_frames<T: Serialize>(
    mut outbox: mpsc::UnboundedReceiver<T>,
    mut pipe: impl AsyncWrite + Unpin,
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

/// Appends `message`, framed, to `batch`.
fn encode(batch: &mut Vec<u8>, message: &impl Serialize) {
    let start = batch.len();
    batch.extend_from_slice(&[0; 4]);
    *batch = postcard::to_extend(message, std::mem::take(batch)).expect("messages serialise");
    let len = u32::try_from(batch.len() - start - 4).expect("a message fits a frame");
    batch[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// Serves as a sandbox process: sets up a sandbox with `config`, says
/// `Ready` on stdout and runs the workers stdin asks for until stdin closes
/// (the parent is gone). Call it on a single-threaded runtime: one sandbox
/// process is one core.
pub async fn serve(config: SandboxConfig) -> Result<(), SandboxProcessError> {
    // The pipes are read and written on this thread, through epoll: a
    // thread of their own (or tokio's stdin and stdout, which use its
    // blocking pool) would cost a wake-up on another thread per message.
    let pipe = |fd: std::os::fd::BorrowedFd<'_>| {
        fd.try_clone_to_owned()
            .map(std::fs::File::from)
            .map_err(|source| SandboxProcessError::Pipe { source })
    };
    let stdout = pipe::Sender::from_file(pipe(std::io::stdout().as_fd())?)
        .map_err(|source| SandboxProcessError::Pipe { source })?;
    let mut stdin = pipe::Receiver::from_file(pipe(std::io::stdin().as_fd())?)
        .map_err(|source| SandboxProcessError::Pipe { source })?;
    let sandbox = Arc::new(Sandbox::new(config).await?);
    let (to_parent, outbox) = mpsc::unbounded_channel::<FromSandbox>();
    tokio::spawn(write_frames(outbox, stdout));
    let link = Arc::new(ParentLink {
        to_parent,
        state: Mutex::default(),
        next_call: AtomicU64::new(1),
    });
    let _ = link.to_parent.send(FromSandbox::Ready);
    let mut buffer = Vec::new();
    loop {
        match read_frame::<ToSandbox>(&mut stdin, &mut buffer).await {
            Ok(message) => link.receive(message, &sandbox),
            // The parent is gone.
            Err(FrameError::Io(_)) => break,
            Err(e) => {
                // The parent and this process are the same binary; a frame
                // that does not decode means the pipe is not the parent's.
                tracing::error!(error = %e, "a sandbox process got a message it cannot read; stopping");
                break;
            }
        }
    }
    Ok(())
}

/// A sandbox process's side of the pipes: the workers it runs and the
/// calls they wait on.
struct ParentLink {
    to_parent: mpsc::UnboundedSender<FromSandbox>,
    state: Mutex<LinkState>,
    next_call: AtomicU64,
}

#[derive(Default)]
struct LinkState {
    scripts: HashMap<ScriptKey, ScriptSource>,
    /// Script keys, oldest first, to drop the oldest past [`KEPT_SCRIPTS`]
    /// or [`KEPT_SCRIPT_BYTES`].
    script_order: VecDeque<ScriptKey>,
    /// What the kept scripts weigh.
    script_bytes: usize,
    /// Runs waiting for their script, by its key.
    waiting_for_script: HashMap<ScriptKey, Vec<(u64, Box<SandboxWorker>)>>,
    workers: HashMap<u64, RunningWorker>,
    /// Calls waiting for their answer, by worker and call.
    calls: HashMap<(u64, u64), oneshot::Sender<Answered>>,
    /// Answers that came `Later`, waiting for their result.
    later: HashMap<(u64, u64), oneshot::Sender<Completed>>,
    /// Wasm jobs running, by the server's number: what cancels each.
    jobs: HashMap<u64, tokio::sync::watch::Sender<bool>>,
}

/// A later answer's result: its JSON, or the error.
type Completed = Result<Vec<u8>, HostError>;

/// Where a later answer's result arrives.
type Completion = oneshot::Receiver<Completed>;

/// A call's answer, and where its result arrives when it comes later.
type Answered = (WireAnswer, Option<Completion>);

/// A Wasm job's output on its way to the server: every line while the job
/// is within its log limit, and the first past it; the rest only counted.
struct JobLinesToParent {
    job: u64,
    limit: u64,
    to_parent: mpsc::UnboundedSender<FromSandbox>,
    counts: Mutex<LineCounts>,
}

#[derive(Default, Clone, Copy)]
struct LineCounts {
    kept_bytes: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl JobOutput for JobLinesToParent {
    fn line(&self, _container: &str, line: &str) {
        let size = line.len() as u64 + 1;
        {
            let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            if counts.kept_bytes > self.limit {
                counts.dropped_lines += 1;
                counts.dropped_bytes += size;
                return;
            }
            counts.kept_bytes += size;
        }
        let _ = self.to_parent.send(FromSandbox::JobLine {
            job: self.job,
            line: line.to_string(),
        });
    }
}

struct RunningWorker {
    task: tokio::task::AbortHandle,
    stop: Arc<StopSignal>,
}

impl ParentLink {
    fn lock(&self) -> MutexGuard<'_, LinkState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn receive(self: &Arc<Self>, message: ToSandbox, sandbox: &Arc<Sandbox>) {
        match message {
            ToSandbox::Script { key, source } => {
                let waiting = {
                    let mut state = self.lock();
                    state.script_bytes += source.code().len();
                    match state.scripts.insert(key, source) {
                        Some(old) => state.script_bytes -= old.code().len(),
                        None => state.script_order.push_back(key),
                    }
                    while state.script_order.len() > KEPT_SCRIPTS
                        || (state.script_bytes > KEPT_SCRIPT_BYTES && state.script_order.len() > 1)
                    {
                        if let Some(oldest) = state.script_order.pop_front()
                            && let Some(old) = state.scripts.remove(&oldest)
                        {
                            state.script_bytes -= old.code().len();
                        }
                    }
                    state.waiting_for_script.remove(&key).unwrap_or_default()
                };
                for (worker, setup) in waiting {
                    self.run(worker, key, setup, sandbox);
                }
            }
            ToSandbox::Run {
                worker,
                script,
                setup,
            } => self.run(worker, script, setup, sandbox),
            ToSandbox::Stop { worker, stop } => {
                let mut state = self.lock();
                match stop {
                    Some(stop) => {
                        if let Some(running) = state.workers.get(&worker) {
                            running.stop.raise(stop);
                        }
                    }
                    None => {
                        if let Some(running) = state.workers.remove(&worker) {
                            running.task.abort();
                        }
                        state.calls.retain(|(w, _), _| *w != worker);
                        state.later.retain(|(w, _), _| *w != worker);
                    }
                }
            }
            ToSandbox::Answer {
                worker,
                call,
                answer,
            } => {
                let mut state = self.lock();
                let Some(waiting) = state.calls.remove(&(worker, call)) else {
                    return;
                };
                let completion = matches!(answer, WireAnswer::Later).then(|| {
                    let (sender, receiver) = oneshot::channel();
                    state.later.insert((worker, call), sender);
                    receiver
                });
                let _ = waiting.send((answer, completion));
            }
            ToSandbox::Completed {
                worker,
                call,
                result,
            } => {
                if let Some(later) = self.lock().later.remove(&(worker, call)) {
                    let _ = later.send(result);
                }
            }
            ToSandbox::RunJob { job, wasm } => self.run_job(job, *wasm, sandbox),
            ToSandbox::CancelJob { job } => {
                if let Some(cancel) = self.lock().jobs.get(&job) {
                    let _ = cancel.send(true);
                }
            }
        }
    }

    /// Runs a Wasm job on its own task; its lines go to the server up to
    /// its log limit (a flood does not cross the pipe).
    fn run_job(self: &Arc<Self>, job: u64, wasm: WasmJob, sandbox: &Arc<Sandbox>) {
        let (cancel, cancelled) = tokio::sync::watch::channel(false);
        self.lock().jobs.insert(job, cancel);
        let output = Arc::new(JobLinesToParent {
            job,
            limit: wasm.log_bytes,
            to_parent: self.to_parent.clone(),
            counts: Mutex::default(),
        });
        let (link, sandbox) = (self.clone(), sandbox.clone());
        tokio::spawn(async move {
            let result = sandbox.run_job(wasm, output.clone(), cancelled).await;
            link.lock().jobs.remove(&job);
            let counts = *output.counts.lock().unwrap_or_else(|e| e.into_inner());
            let _ = link.to_parent.send(FromSandbox::JobEnded {
                job,
                result,
                dropped: (counts.dropped_lines, counts.dropped_bytes),
            });
        });
    }

    /// Starts a worker whose script this process has, or asks for it.
    fn run(
        self: &Arc<Self>,
        worker: u64,
        key: ScriptKey,
        setup: Box<SandboxWorker>,
        sandbox: &Arc<Sandbox>,
    ) {
        let mut state = self.lock();
        let Some(script) = state.scripts.get(&key).cloned() else {
            let waiting = state.waiting_for_script.entry(key).or_default();
            if waiting.is_empty() {
                let _ = self.to_parent.send(FromSandbox::NeedScript { key });
            }
            waiting.push((worker, setup));
            return;
        };
        let stop = Arc::new(StopSignal::default());
        let host = Arc::new(ProxyHost {
            link: self.clone(),
            worker,
            stop: stop.clone(),
        });
        let (link, sandbox, signal) = (self.clone(), sandbox.clone(), stop.clone());
        // Registered before the task can end and remove it.
        let task = tokio::spawn(async move {
            let outcome = sandbox.run_sandboxed(&script, *setup, host, signal).await;
            link.forget(worker);
            let _ = link.to_parent.send(FromSandbox::Ended {
                worker,
                outcome: Box::new(outcome),
            });
        });
        state.workers.insert(
            worker,
            RunningWorker {
                task: task.abort_handle(),
                stop,
            },
        );
    }

    /// Drops everything held for a worker that ended.
    fn forget(&self, worker: u64) {
        let mut state = self.lock();
        state.workers.remove(&worker);
        state.calls.retain(|(w, _), _| *w != worker);
        state.later.retain(|(w, _), _| *w != worker);
    }
}

/// A worker's host as a sandbox process reaches it: its parent, over the
/// pipes.
struct ProxyHost {
    link: Arc<ParentLink>,
    worker: u64,
    stop: Arc<StopSignal>,
}

#[async_trait]
impl WorkerHost for ProxyHost {
    async fn call(&self, op: Op, request: Vec<u8>) -> capability::Answered {
        let call = self.link.next_call.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        self.link.lock().calls.insert((self.worker, call), answer);
        let _ = self.link.to_parent.send(FromSandbox::Call {
            worker: self.worker,
            call: Some(call),
            op: op as u32,
            request,
        });
        let name = op.name();
        let gone = move || {
            HostError::new(
                ErrorCode::Unavailable,
                format!("the server stopped before it answered {name}"),
            )
        };
        let Ok((answer, completion)) = answered.await else {
            return Ok(Err(gone()));
        };
        match answer {
            WireAnswer::Now(body) => Ok(Ok(Answer::Now(body))),
            WireAnswer::Failed(error) => Ok(Err(error)),
            WireAnswer::Stop(stop) => Err(stop),
            WireAnswer::Later => {
                let Some(completion) = completion else {
                    return Ok(Err(gone()));
                };
                Ok(Ok(Answer::Later(Box::pin(async move {
                    let result = completion.await.map_err(|_| gone())??;
                    serde_json::from_slice(&result).map_err(|e| {
                        HostError::new(
                            ErrorCode::Internal,
                            format!("a result from the server could not be read: {e}"),
                        )
                    })
                }))))
            }
        }
    }

    fn log(&self, request: LogRequest) -> Result<(), Stop> {
        if let Some(stop) = self.stop.raised() {
            return Err(stop);
        }
        let _ = self.link.to_parent.send(FromSandbox::Call {
            worker: self.worker,
            call: None,
            op: Op::Log as u32,
            request: serde_json::to_vec(&request).expect("log lines serialise"),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_a_lie_about_length_is_refused() {
        let (sender, outbox) = mpsc::unbounded_channel();
        let (write, mut read) = tokio::io::duplex(1 << 20);
        tokio::spawn(write_frames(outbox, write));
        for message in [
            FromSandbox::Ready,
            FromSandbox::Call {
                worker: 7,
                call: Some(9),
                op: Op::JobStart as u32,
                request: br#"{"name":"x"}"#.to_vec(),
            },
        ] {
            sender.send(message).unwrap();
        }
        let mut buffer = Vec::new();
        assert!(matches!(
            read_frame::<FromSandbox>(&mut read, &mut buffer).await,
            Ok(FromSandbox::Ready)
        ));
        match read_frame::<FromSandbox>(&mut read, &mut buffer).await {
            Ok(FromSandbox::Call {
                worker: 7,
                call: Some(9),
                op,
                request,
            }) => {
                assert_eq!(op, Op::JobStart as u32);
                assert_eq!(request, br#"{"name":"x"}"#);
            }
            other => panic!("{other:?}"),
        }
        let mut lying = &(MAX_FRAME_BYTES + 1).to_le_bytes()[..];
        assert!(matches!(
            read_frame::<FromSandbox>(&mut lying, &mut buffer).await,
            Err(FrameError::TooLarge(_))
        ));
    }
}
