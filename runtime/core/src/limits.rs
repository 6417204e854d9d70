//! Per-worker limits. Every limit is on by default; each has a named failure
//! ([`crate::WorkerFailure`]) that says which limit was hit and its value.

use std::time::Duration;

/// Linear memory of one worker. A Brigade script orchestrates jobs: QuickJS
/// with the Brigadier library needs about 3 MiB, and 64 MiB leaves room for
/// megabytes of payload and data while stopping a memory bomb in well under a
/// second.
pub const DEFAULT_MEMORY_BYTES: u64 = 64 * 1024 * 1024;

/// Time a worker may spend executing Wasm (not waiting for jobs or timers).
/// Orchestration takes milliseconds; ten seconds is generous for any honest
/// script and ends a `while(true){}` long before it annoys anyone.
pub const DEFAULT_CPU_TIME: Duration = Duration::from_secs(10);

/// Wall-clock lifetime of a worker, including time spent waiting for jobs,
/// when the project sets no `timeoutDuration`: Brigade's operators capped
/// workers at 24 hours (`MAX_WORKER_LIFETIME`).
pub const DEFAULT_WALL_TIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Bytes of log output one worker may produce. Brigade stored every line
/// without a cap; 4 MiB is some 50,000 ordinary lines, far more than an
/// orchestration script prints, and bounds what one worker makes the host
/// hold and print.
pub const DEFAULT_LOG_BYTES: u64 = 4 * 1024 * 1024;

/// Size of one guest request. The largest honest request is a job spec with
/// its environment, or a log line the SDK already cut at 64 Ki characters
/// (256 KiB of UTF-8 at worst); 1 MiB fits both with room to spare and stops a
/// guest from making the host copy and parse megabytes per call.
pub const DEFAULT_REQUEST_BYTES: u32 = 1024 * 1024;

/// How often the engine's epoch advances: the granularity of CPU accounting
/// and the longest a guest holds a thread before it yields (Spin uses 10 ms).
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerLimits {
    /// Linear memory, in bytes.
    pub memory_bytes: u64,
    /// Time executing Wasm.
    pub cpu_time: Duration,
    /// Lifetime, including time blocked on jobs and timers.
    pub wall_time: Duration,
    /// Bytes of log output.
    pub log_bytes: u64,
    /// Bytes of one host request.
    pub request_bytes: u32,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            cpu_time: DEFAULT_CPU_TIME,
            wall_time: DEFAULT_WALL_TIME,
            log_bytes: DEFAULT_LOG_BYTES,
            request_bytes: DEFAULT_REQUEST_BYTES,
        }
    }
}

impl WorkerLimits {
    /// The CPU budget in epoch ticks (at least one).
    pub(crate) fn cpu_ticks(&self) -> u64 {
        let ticks = self.cpu_time.as_nanos() / EPOCH_TICK.as_nanos();
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }
}
