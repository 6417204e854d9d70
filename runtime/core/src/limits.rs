//! Per-worker limits. Every limit is on by default; each has a named failure
//! ([`crate::WorkerFailure`]) or a refused host call that says which limit
//! was hit and its value.
//!
//! A project may set its own values (`spec.workerTemplate.limits`, a Mizzen
//! extension of Brigade's schema); a server sets ceilings that no project can
//! raise ([`LimitSettings`] for both, [`WorkerLimits::for_project`] to
//! combine them).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use mizzen_host_api::types::SUMMARY_MAX_CHARS;

use crate::duration::parse_go_duration;

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

/// Lines of log output one worker may produce. Each stored line costs a row
/// and an index entry whatever its length, so a script printing empty lines
/// in a loop is stopped by this, not by the byte limit: 100,000 is twice the
/// lines 4 MiB of ordinary output makes.
pub const DEFAULT_LOG_LINES: u64 = 100_000;

/// Size of one guest request. The largest honest request is a job spec with
/// its environment, or a log line the SDK already cut at 64 Ki characters
/// (256 KiB of UTF-8 at worst); 1 MiB fits both with room to spare and stops a
/// guest from making the host copy and parse megabytes per call.
pub const DEFAULT_REQUEST_BYTES: u32 = 1024 * 1024;

/// Jobs one worker may have running at once. Fan-out of a few dozen jobs is
/// common in CI pipelines; beyond that a script is more likely looping than
/// orchestrating, and each job holds containers (and a server's job slots,
/// which other events of the project wait for).
pub const DEFAULT_CONCURRENT_JOBS: u64 = 32;

/// Output kept per job (all its containers): a build's output can be long,
/// and 16 MiB is several hundred thousand lines. Past it, a line says the
/// output was cut and the rest is dropped.
pub const DEFAULT_JOB_LOG_BYTES: u64 = 16 * 1024 * 1024;

/// Bytes the script may keep in the event's workspace through the host API
/// when the project sets no `workspaceSize`: Brigade's default workspace
/// volume was 10 GiB, but a script (not a job) writing files is passing
/// state between jobs, for which 1 GiB is ample and a disk-filling loop is
/// stopped early.
pub const DEFAULT_WORKSPACE_BYTES: u64 = 1024 * 1024 * 1024;

/// What a project's volumes (`spec.workerTemplate.volumes`, kept between
/// events) may declare in all when the project sets no `volumeSize`: the
/// 10 GB GitHub gives each repository's cache, which is what CI users know
/// of storage kept between runs.
pub const DEFAULT_VOLUME_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// What a project's caches (`job.caches`, kept between events and evicted
/// least recently used first) may hold in all when the project sets no
/// `cacheSize`: GitHub's 10 GB cache per repository.
pub const DEFAULT_CACHE_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// What one event's artifacts (`job.artifacts.save`, kept with the event)
/// may hold in all when the project sets no `artifactSize`: a build's
/// packages, reports and logs, with room for a container image or two.
pub const DEFAULT_ARTIFACT_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// Memory of each of a job's containers. A build (a compiler, a test
/// suite, a bundler) fits in 2 GiB, Kubernetes executors have long defaulted
/// to it, and without a limit one job on a local engine could take the
/// host's memory from the server and every other tenant's jobs.
pub const DEFAULT_JOB_MEMORY_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// CPU of each of a job's containers, in thousandths of a core: two cores is
/// what CI users know of a hosted runner (GitHub's standard Linux runner for
/// private repositories), and a job that could take every core of a local
/// engine's host would slow the server's own threads and everyone's jobs.
pub const DEFAULT_JOB_CPU_MILLIS: u64 = 2000;

/// Processes (and threads) of each of a job's containers: a parallel build
/// runs a few hundred; a fork bomb is stopped at this many instead of at the
/// engine's default (Podman's 2,048; Docker Engine has none).
pub const DEFAULT_JOB_PROCESSES: u64 = 1024;

/// A server's ceilings when its operator sets none, as `key=value` pairs.
/// Each bounds what one tenant's worker can take from the others:
/// - `memory=1Gi`: sixteen times the default; a server of 2 cores runs dozens
///   of workers, and a handful of 1 GiB workers already fill 24 GiB.
/// - `cpuTime=5m`: orchestration that computes for minutes belongs in a job.
/// - `timeout=24h`: Brigade's `MAX_WORKER_LIFETIME`.
/// - `logSize=64Mi`, `logLines=1000000`: a worker's lines are stored and
///   served; sixteen and ten times the defaults.
/// - `requestSize=16Mi`: the host parses each request in memory.
/// - `summaryLength=4096`: Brigade's schema caps the summary there.
/// - `concurrentJobs=256`: every job holds containers and a job slot.
/// - `jobLogSize=256Mi`: sixteen times the default; a job's output is stored.
/// - `workspaceSize=100Gi`: what one event may write to the server's disk.
/// - `jobMemory=16Gi`, `jobCpu=8`, `jobProcesses=8192`: eight times each
///   default; a job needing more belongs on a dedicated machine.
/// - `volumeSize=100Gi`: what one project may keep on the server's disk
///   between events, as `workspaceSize` bounds one event.
/// - `cacheSize=100Gi`, `artifactSize=100Gi`: likewise for a project's
///   caches and one event's artifacts, in the server's object storage.
pub const DEFAULT_CEILINGS: &str = "memory=1Gi,cpuTime=5m,timeout=24h,logSize=64Mi,logLines=1000000,requestSize=16Mi,summaryLength=4096,concurrentJobs=256,jobLogSize=256Mi,workspaceSize=100Gi,jobMemory=16Gi,jobCpu=8,jobProcesses=8192,volumeSize=100Gi,cacheSize=100Gi,artifactSize=100Gi";

/// How often the engine's epoch advances: the granularity of CPU accounting
/// and the longest a guest holds a thread before it yields (Spin uses 10 ms).
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerLimits {
    /// Linear memory, in bytes.
    pub memory_bytes: u64,
    /// Time executing Wasm.
    pub cpu_time: Duration,
    /// Lifetime, including time blocked on jobs and timers.
    pub wall_time: Duration,
    /// Bytes of log output.
    pub log_bytes: u64,
    /// Lines of log output.
    pub log_lines: u64,
    /// Bytes of one host request.
    pub request_bytes: u32,
    /// Characters of the event's summary.
    pub summary_chars: u64,
    /// Jobs running at once.
    pub concurrent_jobs: u64,
    /// Bytes of output kept per job.
    pub job_log_bytes: u64,
    /// Bytes of files in the workspace, when the script writes to it.
    pub workspace_bytes: u64,
    /// Memory of each job container, in bytes.
    pub job_memory_bytes: u64,
    /// CPU of each job container, in thousandths of a core.
    pub job_cpu_millis: u64,
    /// Processes of each job container.
    pub job_processes: u64,
    /// Bytes the project's volumes may declare in all.
    #[serde(default = "default_volume_bytes")]
    pub volume_bytes: u64,
    /// Bytes the project's caches may hold in all.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// Bytes one event's artifacts may hold in all.
    #[serde(default = "default_artifact_bytes")]
    pub artifact_bytes: u64,
}

fn default_volume_bytes() -> u64 {
    DEFAULT_VOLUME_BYTES
}

fn default_cache_bytes() -> u64 {
    DEFAULT_CACHE_BYTES
}

fn default_artifact_bytes() -> u64 {
    DEFAULT_ARTIFACT_BYTES
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            memory_bytes: DEFAULT_MEMORY_BYTES,
            cpu_time: DEFAULT_CPU_TIME,
            wall_time: DEFAULT_WALL_TIME,
            log_bytes: DEFAULT_LOG_BYTES,
            log_lines: DEFAULT_LOG_LINES,
            request_bytes: DEFAULT_REQUEST_BYTES,
            summary_chars: SUMMARY_MAX_CHARS as u64,
            concurrent_jobs: DEFAULT_CONCURRENT_JOBS,
            job_log_bytes: DEFAULT_JOB_LOG_BYTES,
            workspace_bytes: DEFAULT_WORKSPACE_BYTES,
            job_memory_bytes: DEFAULT_JOB_MEMORY_BYTES,
            job_cpu_millis: DEFAULT_JOB_CPU_MILLIS,
            job_processes: DEFAULT_JOB_PROCESSES,
            volume_bytes: DEFAULT_VOLUME_BYTES,
            cache_bytes: DEFAULT_CACHE_BYTES,
            artifact_bytes: DEFAULT_ARTIFACT_BYTES,
        }
    }
}

impl WorkerLimits {
    /// The CPU budget in epoch ticks (at least one).
    pub(crate) fn cpu_ticks(&self) -> u64 {
        let ticks = self.cpu_time.as_nanos() / EPOCH_TICK.as_nanos();
        u64::try_from(ticks).unwrap_or(u64::MAX).max(1)
    }

    /// The limits of a worker of a project that set `project` under a
    /// server's `ceilings`: the defaults, then the project's values, each
    /// capped by its ceiling. A project value above its ceiling (the
    /// ceiling was lowered after the project was accepted) is cut to it and
    /// reported in the returned notes, which say so in the event's log.
    pub fn for_project(project: &LimitSettings, ceilings: &LimitSettings) -> (Self, Vec<String>) {
        let mut limits = Self::default();
        let mut notes = Vec::new();
        for limit in Limit::ALL {
            let ceiling = ceilings.get(limit);
            let value = match (project.get(limit), ceiling) {
                (Some(value), Some(ceiling)) if value > ceiling => {
                    notes.push(format!(
                        "{} {value} is above this server's ceiling of {ceiling}; the ceiling applies",
                        limit.project_field()
                    ));
                    ceiling
                }
                (Some(value), _) => value,
                (None, Some(ceiling)) => limit.get(&limits).min(ceiling),
                (None, None) => continue,
            };
            limit.set(&mut limits, value);
        }
        (limits, notes)
    }
}

/// One configurable limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Limit {
    /// [`WorkerLimits::memory_bytes`].
    Memory,
    /// [`WorkerLimits::cpu_time`].
    CpuTime,
    /// [`WorkerLimits::wall_time`]; a project sets it as
    /// `spec.workerTemplate.timeoutDuration`.
    Timeout,
    /// [`WorkerLimits::log_bytes`].
    LogSize,
    /// [`WorkerLimits::log_lines`].
    LogLines,
    /// [`WorkerLimits::request_bytes`].
    RequestSize,
    /// [`WorkerLimits::summary_chars`].
    SummaryLength,
    /// [`WorkerLimits::concurrent_jobs`].
    ConcurrentJobs,
    /// [`WorkerLimits::job_log_bytes`].
    JobLogSize,
    /// [`WorkerLimits::workspace_bytes`]; a project sets it as
    /// `spec.workerTemplate.workspaceSize`.
    WorkspaceSize,
    /// [`WorkerLimits::job_memory_bytes`].
    JobMemory,
    /// [`WorkerLimits::job_cpu_millis`].
    JobCpu,
    /// [`WorkerLimits::job_processes`].
    JobProcesses,
    /// [`WorkerLimits::volume_bytes`].
    VolumeSize,
    /// [`WorkerLimits::cache_bytes`].
    CacheSize,
    /// [`WorkerLimits::artifact_bytes`].
    ArtifactSize,
}

/// A limit's value: a size, a count or a time, as the limit takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LimitValue {
    /// Bytes.
    Bytes(u64),
    /// A number of things.
    Count(u64),
    /// A time.
    Time(Duration),
    /// Thousandths of a CPU core.
    Cpu(u64),
}

impl fmt::Display for LimitValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitValue::Bytes(bytes) => f.write_str(&crate::worker::human_bytes(*bytes)),
            LimitValue::Count(count) => write!(f, "{count}"),
            LimitValue::Time(time) => write!(f, "{}", humantime::format_duration(*time)),
            LimitValue::Cpu(millis) if millis.is_multiple_of(1000) => {
                write!(f, "{}", millis / 1000)
            }
            LimitValue::Cpu(millis) => write!(f, "{millis}m"),
        }
    }
}

enum Unit {
    Bytes,
    Count,
    Time,
    Cpu,
}

impl Limit {
    /// Every limit, in the order they are documented.
    pub const ALL: [Limit; 16] = [
        Limit::Memory,
        Limit::CpuTime,
        Limit::Timeout,
        Limit::LogSize,
        Limit::LogLines,
        Limit::RequestSize,
        Limit::SummaryLength,
        Limit::ConcurrentJobs,
        Limit::JobLogSize,
        Limit::WorkspaceSize,
        Limit::JobMemory,
        Limit::JobCpu,
        Limit::JobProcesses,
        Limit::VolumeSize,
        Limit::CacheSize,
        Limit::ArtifactSize,
    ];

    /// The limit's name in `spec.workerTemplate.limits` and in a server's
    /// ceilings (`memory=256Mi`).
    pub fn key(self) -> &'static str {
        match self {
            Limit::Memory => "memory",
            Limit::CpuTime => "cpuTime",
            Limit::Timeout => "timeout",
            Limit::LogSize => "logSize",
            Limit::LogLines => "logLines",
            Limit::RequestSize => "requestSize",
            Limit::SummaryLength => "summaryLength",
            Limit::ConcurrentJobs => "concurrentJobs",
            Limit::JobLogSize => "jobLogSize",
            Limit::WorkspaceSize => "workspaceSize",
            Limit::JobMemory => "jobMemory",
            Limit::JobCpu => "jobCpu",
            Limit::JobProcesses => "jobProcesses",
            Limit::VolumeSize => "volumeSize",
            Limit::CacheSize => "cacheSize",
            Limit::ArtifactSize => "artifactSize",
        }
    }

    /// Where a project sets the limit.
    pub fn project_field(self) -> String {
        match self {
            Limit::Timeout => "spec.workerTemplate.timeoutDuration".into(),
            Limit::WorkspaceSize => "spec.workerTemplate.workspaceSize".into(),
            other => format!("spec.workerTemplate.limits.{}", other.key()),
        }
    }

    /// The limit named `key`.
    pub fn from_key(key: &str) -> Option<Limit> {
        Limit::ALL.into_iter().find(|limit| limit.key() == key)
    }

    fn unit(self) -> Unit {
        match self {
            Limit::Memory
            | Limit::LogSize
            | Limit::RequestSize
            | Limit::JobLogSize
            | Limit::WorkspaceSize
            | Limit::JobMemory
            | Limit::VolumeSize
            | Limit::CacheSize
            | Limit::ArtifactSize => Unit::Bytes,
            Limit::LogLines
            | Limit::SummaryLength
            | Limit::ConcurrentJobs
            | Limit::JobProcesses => Unit::Count,
            Limit::CpuTime | Limit::Timeout => Unit::Time,
            Limit::JobCpu => Unit::Cpu,
        }
    }

    /// Parses a value for this limit: a size such as `64Mi` (Kubernetes
    /// quantities), a count, a Go duration such as `30s`, or CPU cores such
    /// as `500m`. Zero is refused: a limit of nothing would fail every
    /// worker.
    pub fn parse(self, text: &str) -> Result<LimitValue, InvalidLimitValue> {
        let text = text.trim();
        let invalid = |expected| InvalidLimitValue {
            text: text.to_string(),
            expected,
        };
        let value = match self.unit() {
            Unit::Bytes => parse_quantity(text)
                .map(LimitValue::Bytes)
                .ok_or_else(|| invalid("a size such as 64Mi, 1Gi or 500k"))?,
            Unit::Count => text
                .parse::<u64>()
                .map(LimitValue::Count)
                .map_err(|_| invalid("a whole number"))?,
            Unit::Time => parse_go_duration(text)
                .map(LimitValue::Time)
                .ok_or_else(|| invalid("a duration such as 30s, 5m or 1h"))?,
            Unit::Cpu => parse_cpu(text)
                .map(LimitValue::Cpu)
                .ok_or_else(|| invalid("CPU cores such as 500m, 1 or 2.5"))?,
        };
        let zero = matches!(
            value,
            LimitValue::Bytes(0)
                | LimitValue::Count(0)
                | LimitValue::Time(Duration::ZERO)
                | LimitValue::Cpu(0)
        );
        if zero {
            return Err(invalid("more than zero"));
        }
        if self == Limit::RequestSize && value > LimitValue::Bytes(u64::from(u32::MAX)) {
            return Err(invalid("less than 4Gi"));
        }
        Ok(value)
    }

    /// This limit's value in `limits`.
    pub fn get(self, limits: &WorkerLimits) -> LimitValue {
        match self {
            Limit::Memory => LimitValue::Bytes(limits.memory_bytes),
            Limit::CpuTime => LimitValue::Time(limits.cpu_time),
            Limit::Timeout => LimitValue::Time(limits.wall_time),
            Limit::LogSize => LimitValue::Bytes(limits.log_bytes),
            Limit::LogLines => LimitValue::Count(limits.log_lines),
            Limit::RequestSize => LimitValue::Bytes(u64::from(limits.request_bytes)),
            Limit::SummaryLength => LimitValue::Count(limits.summary_chars),
            Limit::ConcurrentJobs => LimitValue::Count(limits.concurrent_jobs),
            Limit::JobLogSize => LimitValue::Bytes(limits.job_log_bytes),
            Limit::WorkspaceSize => LimitValue::Bytes(limits.workspace_bytes),
            Limit::JobMemory => LimitValue::Bytes(limits.job_memory_bytes),
            Limit::JobCpu => LimitValue::Cpu(limits.job_cpu_millis),
            Limit::JobProcesses => LimitValue::Count(limits.job_processes),
            Limit::VolumeSize => LimitValue::Bytes(limits.volume_bytes),
            Limit::CacheSize => LimitValue::Bytes(limits.cache_bytes),
            Limit::ArtifactSize => LimitValue::Bytes(limits.artifact_bytes),
        }
    }

    /// Sets this limit in `limits` (a value of another unit is ignored: only
    /// [`Limit::parse`] makes values).
    fn set(self, limits: &mut WorkerLimits, value: LimitValue) {
        match (self, value) {
            (Limit::Memory, LimitValue::Bytes(v)) => limits.memory_bytes = v,
            (Limit::CpuTime, LimitValue::Time(v)) => limits.cpu_time = v,
            (Limit::Timeout, LimitValue::Time(v)) => limits.wall_time = v,
            (Limit::LogSize, LimitValue::Bytes(v)) => limits.log_bytes = v,
            (Limit::LogLines, LimitValue::Count(v)) => limits.log_lines = v,
            (Limit::RequestSize, LimitValue::Bytes(v)) => {
                limits.request_bytes = u32::try_from(v).unwrap_or(u32::MAX);
            }
            (Limit::SummaryLength, LimitValue::Count(v)) => limits.summary_chars = v,
            (Limit::ConcurrentJobs, LimitValue::Count(v)) => limits.concurrent_jobs = v,
            (Limit::JobLogSize, LimitValue::Bytes(v)) => limits.job_log_bytes = v,
            (Limit::WorkspaceSize, LimitValue::Bytes(v)) => limits.workspace_bytes = v,
            (Limit::JobMemory, LimitValue::Bytes(v)) => limits.job_memory_bytes = v,
            (Limit::JobCpu, LimitValue::Cpu(v)) => limits.job_cpu_millis = v,
            (Limit::JobProcesses, LimitValue::Count(v)) => limits.job_processes = v,
            (Limit::VolumeSize, LimitValue::Bytes(v)) => limits.volume_bytes = v,
            (Limit::CacheSize, LimitValue::Bytes(v)) => limits.cache_bytes = v,
            (Limit::ArtifactSize, LimitValue::Bytes(v)) => limits.artifact_bytes = v,
            _ => {}
        }
    }
}

/// Values for some limits: a project's, or a server's ceilings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitSettings(BTreeMap<Limit, LimitValue>);

/// A limit's value that does not read as one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} must be {expected}")]
pub struct InvalidLimitValue {
    /// The text given.
    pub text: String,
    /// What it must be.
    pub expected: &'static str,
}

/// A limit setting that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The text names no limit.
    #[error("{key:?} is not a limit; the limits are {}", Limit::ALL.map(Limit::key).join(", "))]
    UnknownLimit {
        /// The name given.
        key: String,
    },
    /// A setting that is not `key=value`.
    #[error("{pair}: must be written key=value, e.g. memory=256Mi")]
    NotAPair {
        /// The setting given.
        pair: String,
    },
    /// The value does not parse for its limit.
    #[error("{key}: {problem}")]
    InvalidValue {
        /// The limit's name.
        key: String,
        /// What was wrong.
        #[source]
        problem: InvalidLimitValue,
    },
    /// A project asks for more than the server allows.
    #[error("{field} {value} is above this server's ceiling of {ceiling}")]
    AboveCeiling {
        /// Where the project sets it.
        field: String,
        /// The project's value.
        value: LimitValue,
        /// The server's ceiling.
        ceiling: LimitValue,
    },
}

impl LimitSettings {
    /// Parses `key=value` pairs separated by commas (`memory=256Mi,cpuTime=1m`),
    /// as a server's ceilings are given.
    pub fn parse_pairs(text: &str) -> Result<Self, LimitError> {
        let mut settings = Self::default();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').ok_or_else(|| LimitError::NotAPair {
                pair: pair.to_string(),
            })?;
            settings.set(key.trim(), value)?;
        }
        Ok(settings)
    }

    /// Sets the limit named `key` from its text.
    pub fn set(&mut self, key: &str, text: &str) -> Result<(), LimitError> {
        let limit = Limit::from_key(key).ok_or_else(|| LimitError::UnknownLimit {
            key: key.to_string(),
        })?;
        let value = limit
            .parse(text)
            .map_err(|problem| LimitError::InvalidValue {
                key: key.to_string(),
                problem,
            })?;
        self.0.insert(limit, value);
        Ok(())
    }

    /// A server's ceilings: [`DEFAULT_CEILINGS`], with those in `text`
    /// (`key=value` pairs, as [`LimitSettings::parse_pairs`] reads them)
    /// instead where given.
    pub fn ceilings(text: &str) -> Result<Self, LimitError> {
        let mut ceilings = Self::parse_pairs(DEFAULT_CEILINGS)?;
        ceilings.0.extend(Self::parse_pairs(text)?.0);
        Ok(ceilings)
    }

    /// Sets `limit` to a value already parsed.
    pub fn insert(&mut self, limit: Limit, value: LimitValue) {
        self.0.insert(limit, value);
    }

    /// The value set for `limit`.
    pub fn get(&self, limit: Limit) -> Option<LimitValue> {
        self.0.get(&limit).copied()
    }

    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Checks that every value here is within `ceilings`; the first that is
    /// not is named with its project field.
    pub fn check_within(&self, ceilings: &LimitSettings) -> Result<(), LimitError> {
        for (limit, value) in &self.0 {
            if let Some(ceiling) = ceilings.get(*limit)
                && *value > ceiling
            {
                return Err(LimitError::AboveCeiling {
                    field: limit.project_field(),
                    value: *value,
                    ceiling,
                });
            }
        }
        Ok(())
    }
}

/// Parses a Kubernetes quantity (`64Mi`, `1Gi`, `500k`, `1.5Gi`, `1048576`)
/// into bytes; `None` when it is not one or does not fit in 64 bits.
pub fn parse_quantity(text: &str) -> Option<u64> {
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let multiplier: f64 = match unit {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        _ => return None,
    };
    if number.is_empty() || number.starts_with('.') || number.matches('.').count() > 1 {
        return None;
    }
    let bytes = number.parse::<f64>().ok()? * multiplier;
    (bytes.is_finite() && bytes < u64::MAX as f64).then(|| bytes.ceil() as u64)
}

/// Parses CPU cores as Kubernetes writes them (`500m`, `1`, `2.5`) into
/// thousandths of a core; `None` when it is not such a value.
pub fn parse_cpu(text: &str) -> Option<u64> {
    if let Some(millis) = text.strip_suffix('m') {
        return millis.parse().ok();
    }
    if text.is_empty()
        || text.starts_with('.')
        || !text.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        return None;
    }
    let cores: f64 = text.parse().ok()?;
    let millis = (cores * 1000.0).round();
    (millis.is_finite() && millis < u64::MAX as f64).then_some(millis as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_read_as_kubernetes_reads_it() {
        assert_eq!(parse_cpu("500m"), Some(500));
        assert_eq!(parse_cpu("2"), Some(2000));
        assert_eq!(parse_cpu("1.5"), Some(1500));
        for bad in ["", "m", "-1", ".5", "two", "1.5m"] {
            assert_eq!(parse_cpu(bad), None, "{bad}");
        }
        assert_eq!(LimitValue::Cpu(2000).to_string(), "2");
        assert_eq!(LimitValue::Cpu(250).to_string(), "250m");
    }

    #[test]
    fn quantities_are_read_as_kubernetes_reads_them() {
        assert_eq!(parse_quantity("64Mi"), Some(64 * 1024 * 1024));
        assert_eq!(parse_quantity("1.5Gi"), Some(1536 * 1024 * 1024));
        assert_eq!(parse_quantity("500k"), Some(500_000));
        assert_eq!(parse_quantity("42"), Some(42));
        for bad in ["", "Mi", "64MB", "-1", ".5Gi", "1.2.3", "99999999999Ei"] {
            assert_eq!(parse_quantity(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_project_gets_its_values_within_the_ceilings() {
        let mut project = LimitSettings::default();
        project.set("memory", "128Mi").unwrap();
        project.set("concurrentJobs", "4").unwrap();
        let ceilings = LimitSettings::parse_pairs("memory=256Mi, cpuTime=2s").unwrap();
        let (limits, notes) = WorkerLimits::for_project(&project, &ceilings);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(limits.memory_bytes, 128 * 1024 * 1024);
        assert_eq!(limits.concurrent_jobs, 4);
        // A default above a ceiling comes down to it.
        assert_eq!(limits.cpu_time, Duration::from_secs(2));
        assert_eq!(limits.log_bytes, DEFAULT_LOG_BYTES);
    }

    #[test]
    fn a_value_above_its_ceiling_is_named_and_cut() {
        let mut project = LimitSettings::default();
        project.set("memory", "1Gi").unwrap();
        let ceilings = LimitSettings::parse_pairs("memory=256Mi").unwrap();
        let err = project.check_within(&ceilings).unwrap_err().to_string();
        assert_eq!(
            err,
            "spec.workerTemplate.limits.memory 1 GiB is above this server's ceiling of 256 MiB"
        );
        let (limits, notes) = WorkerLimits::for_project(&project, &ceilings);
        assert_eq!(limits.memory_bytes, 256 * 1024 * 1024);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("ceiling of 256 MiB"), "{notes:?}");
    }

    #[test]
    fn an_operators_ceilings_replace_the_defaults_they_name() {
        let ceilings = LimitSettings::ceilings("memory=2Gi").unwrap();
        assert_eq!(
            ceilings.get(Limit::Memory),
            Some(LimitValue::Bytes(2 << 30))
        );
        assert_eq!(
            ceilings.get(Limit::CpuTime),
            Some(LimitValue::Time(Duration::from_secs(300)))
        );
        // Every default limit is within the default ceilings.
        let (limits, notes) = WorkerLimits::for_project(&LimitSettings::default(), &ceilings);
        assert!(notes.is_empty());
        assert_eq!(limits, WorkerLimits::default());
        assert_eq!(
            Limit::ALL.len(),
            LimitSettings::parse_pairs(DEFAULT_CEILINGS)
                .unwrap()
                .0
                .len()
        );
    }

    #[test]
    fn bad_settings_name_the_limit_and_the_rule() {
        let err = LimitSettings::parse_pairs("memroy=1Gi")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"memroy\" is not a limit") && err.contains("memory, cpuTime"),
            "{err}"
        );
        let err = LimitSettings::parse_pairs("cpuTime=10")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cpuTime: \"10\" must be a duration"),
            "{err}"
        );
        let err = LimitSettings::parse_pairs("logLines=0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("more than zero"), "{err}");
        let err = LimitSettings::parse_pairs("memory")
            .unwrap_err()
            .to_string();
        assert!(err.contains("key=value"), "{err}");
    }
}
