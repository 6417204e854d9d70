//! One worker: the per-event state a Store holds, and how a run ends.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mizzen_host_api::types::{
    Event, LogLevel, LogRequest, Phase, ScriptError, ScriptErrorKind, WaitAnyReply,
};
use mizzen_host_api::{ErrorCode, HostError};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use wasmtime::ResourceLimiter;

use crate::cpu::CpuShare;
use crate::engine::CompiledScript;
use crate::jobs::WorkerJobs;
use crate::limits::WorkerLimits;
use crate::log::{LogRecord, LogSink, LogSource};

/// The plugin's function table has about 2,000 entries; no guest has a reason
/// to grow a table at run time, so growth beyond this is refused.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 10_000;

/// Timers and job waits one worker may have outstanding at once. A script
/// with more is leaking them; the cap bounds the host tasks one worker owns.
const MAX_OUTSTANDING_TICKETS: usize = 10_000;

/// Script errors kept per worker: the first decides the failure, the rest are
/// logged; a script that reports errors in a loop must not grow host memory.
const MAX_SCRIPT_ERRORS: usize = 16;

/// Why execution stopped early. Raised as a trap from host functions and the
/// resource limiter, recognised when the run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Stop {
    /// The guest asked to exit (`process.exit`, `proc_exit`).
    #[error("the worker exited with code {0}")]
    Exit(i32),
    /// The guest ran out of CPU time.
    #[error("CPU time limit exceeded")]
    CpuLimit,
    /// The guest tried to grow its memory past the limit.
    #[error("memory limit exceeded")]
    MemoryLimit,
    /// The guest wrote more log output than allowed.
    #[error("log limit exceeded")]
    LogLimit,
    /// The guest wrote more log lines than allowed.
    #[error("log line limit exceeded")]
    LogLines,
    /// The worker outlived its wall-clock limit.
    #[error("wall-clock limit exceeded")]
    WallTime,
}

/// What a worker may do and where its output goes. `None` for the instances
/// that compile scripts or pre-initialise the plugin: they get no event, no
/// secrets and no logs.
pub(crate) struct WorkerContext {
    /// The event as JSON, as `Op::EventGet` returns it.
    pub event_json: Vec<u8>,
    /// The event, for secrets and names.
    pub event: Event,
    /// Where log lines go.
    pub log: Arc<dyn LogSink>,
    /// The script, to map error positions back to its source.
    pub script: Arc<CompiledScript>,
}

/// The state of one Store: everything a worker's host calls read and write.
pub(crate) struct WorkerState {
    pub limits: WorkerLimits,
    pub context: Option<WorkerContext>,
    /// The worker's jobs; `None` where there is no worker (compilation).
    pub jobs: Option<WorkerJobs>,
    /// The reply of the last `call`, until `take_reply` collects it.
    pub reply: Option<Vec<u8>>,
    pub summary: Option<String>,
    pub errors: Vec<ScriptError>,
    pub exit_code: Option<i32>,
    pub memory_limit_hit: bool,
    pub cpu_ticks: u64,
    /// When the worker's wall-clock limit runs out. Checked on every epoch
    /// tick while the guest runs, and bounds every wait in a host call.
    pub deadline: Instant,
    pub tickets: Tickets,
    /// The worker's share of the cores; `None` for the instance that
    /// pre-initialises the plugin.
    pub cpu: Option<CpuShare>,
    log_bytes: u64,
    log_lines: u64,
    /// The log limit reached, after which every line is dropped.
    log_stopped: Option<Stop>,
    /// Output written to fd 1 or 2 without its newline yet.
    partial_output: [Vec<u8>; 2],
}

impl WorkerState {
    /// A worker for an event.
    pub fn new(
        limits: WorkerLimits,
        context: Option<WorkerContext>,
        jobs: Option<WorkerJobs>,
    ) -> Self {
        Self {
            limits,
            context,
            jobs,
            reply: None,
            summary: None,
            errors: Vec::new(),
            exit_code: None,
            memory_limit_hit: false,
            cpu_ticks: 0,
            deadline: deadline_after(limits.wall_time),
            tickets: Tickets::new(),
            cpu: None,
            log_bytes: 0,
            log_lines: 0,
            log_stopped: None,
            partial_output: [Vec::new(), Vec::new()],
        }
    }

    /// Adds a log line, counting it against the limit. When the limit is
    /// reached a last line says so and the worker stops.
    pub fn log(&mut self, request: LogRequest) -> Result<(), Stop> {
        let Some(context) = &self.context else {
            return Ok(());
        };
        if let Some(stop) = self.log_stopped {
            return Err(stop);
        }
        let size = request.message.len() as u64 + 1;
        let limit = if self.log_bytes + size > self.limits.log_bytes {
            Some((
                Stop::LogLimit,
                format!("log limit of {}", human_bytes(self.limits.log_bytes)),
            ))
        } else if self.log_lines >= self.limits.log_lines {
            Some((
                Stop::LogLines,
                format!("limit of {} log lines", self.limits.log_lines),
            ))
        } else {
            None
        };
        if let Some((stop, limit)) = limit {
            // Said once: output the guest flushes as it stops is dropped.
            self.log_stopped = Some(stop);
            context.log.record(LogRecord::logger(
                LogLevel::Error,
                &format!("log output truncated: the worker's {limit} was reached"),
                None,
            ));
            return Err(stop);
        }
        self.log_bytes += size;
        self.log_lines += 1;
        let source = if request.console {
            LogSource::Console
        } else {
            LogSource::Logger
        };
        context.log.record(LogRecord::new(
            request.level,
            &request.message,
            request.job,
            source,
        ));
        Ok(())
    }

    /// Output a guest wrote to stdout (fd 1) or stderr (fd 2): one log line
    /// per complete line, as `console.log` and `console.error` would give.
    pub fn write_output(&mut self, stderr: bool, bytes: &[u8]) -> Result<(), Stop> {
        let index = usize::from(stderr);
        self.partial_output[index].extend_from_slice(bytes);
        while let Some(newline) = self.partial_output[index].iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.partial_output[index].drain(..=newline).collect();
            self.log_output_line(stderr, &line[..line.len() - 1])?;
        }
        // A line longer than the log limit can never be printed whole.
        if self.partial_output[index].len() as u64 > self.limits.log_bytes {
            let line = std::mem::take(&mut self.partial_output[index]);
            self.log_output_line(stderr, &line)?;
        }
        Ok(())
    }

    /// Logs output left without a final newline when the run ends.
    pub fn flush_output(&mut self) {
        for stderr in [false, true] {
            let line = std::mem::take(&mut self.partial_output[usize::from(stderr)]);
            if !line.is_empty() {
                let _ = self.log_output_line(stderr, &line);
            }
        }
    }

    fn log_output_line(&mut self, stderr: bool, line: &[u8]) -> Result<(), Stop> {
        self.log(LogRequest {
            level: if stderr {
                LogLevel::Error
            } else {
                LogLevel::Info
            },
            message: String::from_utf8_lossy(line).into_owned(),
            job: None,
            console: true,
        })
    }

    /// Records an error that fails the worker, and logs it.
    pub fn report_error(&mut self, mut error: ScriptError) -> Result<(), Stop> {
        if let Some(context) = &self.context {
            error.message = context.script.source_positions(&error.message);
            error.stack = error
                .stack
                .map(|stack| context.script.source_positions(&stack));
        }
        let mut line = error.message.clone();
        if let Some(stack) = error
            .stack
            .as_deref()
            .map(str::trim_end)
            .filter(|s| !s.is_empty())
        {
            line.push('\n');
            line.push_str(stack);
        }
        if self.errors.len() < MAX_SCRIPT_ERRORS {
            self.errors.push(error);
        }
        self.log(LogRequest {
            level: LogLevel::Error,
            message: line,
            job: None,
            console: false,
        })
    }
}

/// `now + limit`, or a century from now for limits too large to add.
fn deadline_after(limit: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(limit)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 60 * 60))
}

impl ResourceLimiter for WorkerState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.limits.memory_bytes {
            self.memory_limit_hit = true;
            return Err(wasmtime::Error::new(Stop::MemoryLimit));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    // A worker is one module with one memory and one table; wasmtime's
    // defaults (10,000 each) would let a hostile module reserve far more.
    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// Operations that complete later. Each runs as its own task and reports to a
/// channel; `wait_any` takes the next report for a ticket still wanted. The
/// channel is made with the first ticket: most workers never need one.
pub(crate) struct Tickets {
    next: u64,
    outstanding: HashMap<u64, AbortHandle>,
    channel: Option<TicketChannel>,
}

type TicketReport = (u64, Result<serde_json::Value, HostError>);

struct TicketChannel {
    sender: mpsc::UnboundedSender<TicketReport>,
    receiver: mpsc::UnboundedReceiver<TicketReport>,
}

impl Tickets {
    fn new() -> Self {
        Self {
            next: 1,
            outstanding: HashMap::new(),
            channel: None,
        }
    }

    /// Starts `operation` and returns its ticket.
    pub fn start<F>(&mut self, operation: F) -> Result<u64, HostError>
    where
        F: Future<Output = Result<serde_json::Value, HostError>> + Send + 'static,
    {
        if self.outstanding.len() >= MAX_OUTSTANDING_TICKETS {
            return Err(HostError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "a worker may have at most {MAX_OUTSTANDING_TICKETS} timers and job waits outstanding"
                ),
            ));
        }
        let ticket = self.next;
        self.next += 1;
        let channel = self.channel.get_or_insert_with(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            TicketChannel { sender, receiver }
        });
        let sender = channel.sender.clone();
        let task = tokio::spawn(async move {
            let result = operation.await;
            let _ = sender.send((ticket, result));
        });
        self.outstanding.insert(ticket, task.abort_handle());
        Ok(ticket)
    }

    /// A ticket that sleeps for `delay`.
    pub fn sleep(&mut self, delay: Duration) -> Result<u64, HostError> {
        self.start(async move {
            tokio::time::sleep(delay).await;
            Ok(serde_json::Value::Null)
        })
    }

    /// Forgets a ticket; returns whether it was outstanding.
    pub fn cancel(&mut self, ticket: u64) -> bool {
        match self.outstanding.remove(&ticket) {
            Some(task) => {
                task.abort();
                true
            }
            None => false,
        }
    }

    /// Waits for the next outstanding ticket to complete.
    pub async fn wait_any(&mut self) -> WaitAnyReply {
        loop {
            let Some(channel) = self
                .channel
                .as_mut()
                .filter(|_| !self.outstanding.is_empty())
            else {
                return WaitAnyReply::Idle;
            };
            let Some((ticket, result)) = channel.receiver.recv().await else {
                return WaitAnyReply::Idle; // unreachable: the channel holds a sender
            };
            if self.outstanding.remove(&ticket).is_none() {
                continue; // cancelled while its result was on the way
            }
            return match result {
                Ok(result) => WaitAnyReply::Completed { ticket, result },
                Err(error) => WaitAnyReply::Failed { ticket, error },
            };
        }
    }
}

impl Drop for Tickets {
    fn drop(&mut self) {
        for task in self.outstanding.values() {
            task.abort();
        }
    }
}

/// How a worker ended.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WorkerOutcome {
    /// SUCCEEDED, FAILED or TIMED_OUT.
    pub phase: Phase,
    /// What the handler returned, when it returned something.
    pub summary: Option<String>,
    /// Why the worker did not succeed.
    pub failure: Option<WorkerFailure>,
}

impl WorkerOutcome {
    /// Whether the worker succeeded.
    pub fn succeeded(&self) -> bool {
        self.phase == Phase::Succeeded
    }

    pub(crate) fn failed(failure: WorkerFailure) -> Self {
        let phase = match failure {
            WorkerFailure::WallTime { .. } => Phase::TimedOut,
            _ => Phase::Failed,
        };
        Self {
            phase,
            summary: None,
            failure: Some(failure),
        }
    }
}

/// Why a worker failed, each with the limit or location involved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum WorkerFailure {
    /// The script could not be loaded or compiled (`brigade.js:3:5: SyntaxError: ...`).
    #[error("{message}")]
    Script {
        /// What was wrong, and where.
        message: String,
    },
    /// The script threw, or a promise rejected with nothing to handle it.
    #[error("{message}")]
    Uncaught {
        /// The error, led by its location in the script.
        message: String,
        /// How it escaped.
        kind: ScriptErrorKind,
    },
    /// The script exited with a non-zero code.
    #[error("the script exited with code {code}")]
    Exit {
        /// The code.
        code: i32,
    },
    /// The script ran on the CPU for longer than allowed.
    #[error("CPU time limit of {} exceeded", humantime::format_duration(*limit))]
    CpuTime {
        /// The limit.
        limit: Duration,
    },
    /// The worker lived longer than allowed (the project's `timeoutDuration`).
    #[error("timed out after {}", humantime::format_duration(*limit))]
    WallTime {
        /// The limit.
        limit: Duration,
    },
    /// The script tried to use more memory than allowed.
    #[error("memory limit of {} exceeded", human_bytes(*limit))]
    Memory {
        /// The limit in bytes.
        limit: u64,
    },
    /// The script wrote more log output than allowed.
    #[error("log limit of {} exceeded (output truncated)", human_bytes(*limit))]
    Log {
        /// The limit in bytes.
        limit: u64,
    },
    /// The script wrote more log lines than allowed.
    #[error("log limit of {limit} lines exceeded (output truncated)")]
    LogLines {
        /// The limit in lines.
        limit: u64,
    },
    /// The sandbox had no free instance slot: more workers were alive at
    /// once than it was configured for.
    #[error("the sandbox is at capacity: {message}")]
    Capacity {
        /// wasmtime's account of the limit.
        message: String,
    },
    /// WebAssembly trapped (stack exhausted, unreachable...).
    #[error("the sandbox stopped the script: {message}")]
    Trap {
        /// The trap.
        message: String,
    },
    /// The sandbox process running the worker stopped under it, or none
    /// was running (see [`crate::shard`]).
    #[error("{message}")]
    Sandbox {
        /// What happened to the process.
        message: String,
    },
}

/// `64 MiB`, `512 KiB`, `100 B`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    const GIB: u64 = 1024 * MIB;
    match bytes {
        b if b >= GIB && b % GIB == 0 => format!("{} GiB", b / GIB),
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= KIB && b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_read_naturally() {
        assert_eq!(human_bytes(64 * 1024 * 1024), "64 MiB");
        assert_eq!(human_bytes(4096), "4 KiB");
        assert_eq!(human_bytes(1000), "1000 B");
    }
}
