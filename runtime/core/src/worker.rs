//! One worker: the state a Store holds for it, and how a run ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mizzen_host_api::types::{LogLevel, LogRequest, Phase, ScriptErrorKind};
use wasmtime::ResourceLimiter;

use crate::capability::StopSignal;
use crate::capability::WorkerHost;
use crate::capability::event::EventView;
use crate::capability::outcome::ScriptOutcome;
use crate::capability::secrets::ScriptSecrets;
use crate::capability::timers::Tickets;
use crate::cpu::CpuShare;
use crate::limits::WorkerLimits;
use crate::sandbox::CompiledScript;

/// A module's function table: the plugin's has about 2,000 entries, but Go
/// puts most of its functions there (6,710 entries for a small script), so a
/// large Go program needs tens of thousands. Each pool slot reserves this
/// many (800 KB of address space; only the 64 KiB kept resident are ever
/// touched by a small table), and growth beyond it is refused.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Why execution stopped early. Raised as a trap from host functions and the
/// resource limiter, recognised when the run ends.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize,
)]
pub enum Stop {
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

/// The worker a Store runs: what its sandbox-held capabilities answer
/// from, and its host for the rest. `None` in the instances that compile
/// scripts or pre-initialise the plugin: they get no event, no secrets and
/// no log.
pub(crate) struct SandboxedWorker {
    pub event: EventView,
    pub secrets: ScriptSecrets,
    /// The script, to map error positions back to its source.
    pub script: Arc<CompiledScript>,
    pub host: Arc<dyn WorkerHost>,
}

/// The state of one Store: everything a worker's host calls read and write.
pub(crate) struct WorkerState {
    pub limits: WorkerLimits,
    pub worker: Option<SandboxedWorker>,
    /// The reply of the last `call`, until `take_reply` collects it.
    pub reply: Option<Vec<u8>>,
    pub outcome: ScriptOutcome,
    pub memory_limit_hit: bool,
    pub cpu_ticks: u64,
    /// When the worker's wall-clock limit runs out. Checked on every epoch
    /// tick while the guest runs, and bounds every wait in a host call.
    pub deadline: Instant,
    pub tickets: Tickets,
    /// The worker's share of the cores; `None` for the instance that
    /// pre-initialises the plugin.
    pub cpu: Option<CpuShare>,
    /// A stop its host asked for (a limit reached on a line not waited for).
    pub stop_signal: Arc<StopSignal>,
    /// Output written to fd 1 or 2 without its newline yet.
    partial_output: [Vec<u8>; 2],
    /// A Wasm job's WASI (wasmtime-wasi's); `None` for scripts, whose WASI
    /// is [`crate::wasi`]'s.
    pub wasi: Option<Box<wasmtime_wasi::p1::WasiP1Ctx>>,
    /// A Wasm job's WASI preview 2, when the job is a component.
    pub component_wasi: Option<Box<ComponentWasi>>,
    /// Bytes of linear memory the Store's instances hold together.
    memory_total: u64,
}

/// WASI preview 2 for a component: its context and its resource table.
pub(crate) struct ComponentWasi {
    pub ctx: wasmtime_wasi::WasiCtx,
    pub table: wasmtime::component::ResourceTable,
}

/// What a component may instantiate: its own module, WASI's preview 1
/// adapter and the small modules that wire them (a Rust or C program
/// adapted to preview 2 has five core instances, two memories and three
/// tables); a component needing more is refused when it is instantiated.
const COMPONENT_INSTANCES: usize = 16;
const COMPONENT_MEMORIES: usize = 4;
const COMPONENT_TABLES: usize = 8;

impl wasmtime_wasi::WasiView for WorkerState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        let wasi = self
            .component_wasi
            .as_deref_mut()
            .expect("a component's Store holds its WASI context");
        wasmtime_wasi::WasiCtxView {
            ctx: &mut wasi.ctx,
            table: &mut wasi.table,
        }
    }
}

impl WorkerState {
    /// The state of a Store for `worker` (or for none).
    pub fn new(
        limits: WorkerLimits,
        worker: Option<SandboxedWorker>,
        stop_signal: Arc<StopSignal>,
    ) -> Self {
        Self {
            limits,
            worker,
            reply: None,
            outcome: ScriptOutcome::default(),
            memory_limit_hit: false,
            cpu_ticks: 0,
            deadline: deadline_after(limits.wall_time),
            tickets: Tickets::new(),
            cpu: None,
            stop_signal,
            partial_output: [Vec::new(), Vec::new()],
            wasi: None,
            component_wasi: None,
            memory_total: 0,
        }
    }

    /// Adds a line to the worker's log, through its host.
    pub fn log(&mut self, request: LogRequest) -> Result<(), Stop> {
        match &self.worker {
            Some(worker) => worker.host.log(request),
            None => Ok(()),
        }
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
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // All the Store's memories together (a component has several).
        let total = self.memory_total + (desired.saturating_sub(current)) as u64;
        if total > self.limits.memory_bytes {
            self.memory_limit_hit = true;
            return Err(wasmtime::Error::new(Stop::MemoryLimit));
        }
        self.memory_total = total;
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

    // A worker is one module with one memory and one table (a component a
    // few); wasmtime's defaults (10,000 each) would let a hostile module
    // reserve far more.
    fn instances(&self) -> usize {
        if self.component_wasi.is_some() {
            COMPONENT_INSTANCES
        } else {
            1
        }
    }

    fn tables(&self) -> usize {
        if self.component_wasi.is_some() {
            COMPONENT_TABLES
        } else {
            1
        }
    }

    fn memories(&self) -> usize {
        if self.component_wasi.is_some() {
            COMPONENT_MEMORIES
        } else {
            1
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

    /// A worker that failed.
    pub fn failed(failure: WorkerFailure) -> Self {
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
