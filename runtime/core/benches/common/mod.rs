//! What the sandbox benchmarks share: the sandbox they set up, the no-op
//! handler, requests, percentiles, and the `figure |` lines that
//! `scripts/bench` collects into its summary.

#![allow(
    dead_code,
    reason = "each benchmark binary uses a different part of this module"
)]

use std::sync::Arc;
use std::time::Duration;

use mizzen_host_api::types::Event;
use mizzen_runtime::log::{LogRecord, LogSink};
use mizzen_runtime::{JobCapability, Sandbox, SandboxConfig, WorkerLimits, WorkerRequest};

/// Brigade's smallest script: a handler that does nothing.
pub const NO_OP_HANDLER: &str = r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {});
events.process();
"#;

/// A log sink that drops every record.
pub struct NullLog;

impl LogSink for NullLog {
    fn record(&self, _: LogRecord) {}
}

/// A size from the environment, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A duration in seconds (fractions allowed) from the environment, or
/// `default`.
pub fn env_seconds(name: &str, default: f64) -> Duration {
    let seconds = std::env::var(name)
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(default);
    Duration::from_secs_f64(seconds)
}

/// A sandbox with the compiled plugin cached under `target/`, so that only
/// the first benchmark run compiles it.
pub async fn sandbox(max_instances: u32) -> Sandbox {
    let cache =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/mizzen-bench-cache");
    Sandbox::new(SandboxConfig {
        cache_dir: Some(cache),
        max_instances,
        ..SandboxConfig::default()
    })
    .await
    .expect("the sandbox starts")
}

/// A request for the benchmark's event, without jobs.
pub fn request(limits: WorkerLimits, log: Arc<dyn LogSink>) -> WorkerRequest {
    WorkerRequest {
        event: event("00000000-0000-4000-8000-000000000000"),
        limits,
        log,
        jobs: JobCapability::none(),
    }
}

/// The event every benchmark handles: `brigade.sh/cli` `exec`.
pub fn event(id: &str) -> Event {
    Event::new(id, "bench", "brigade.sh/cli", "exec")
}

/// The `p` quantile (0 to 1) of sorted samples, nearest rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

/// Microseconds, for printing.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Milliseconds, for printing.
pub fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Prints one figure in the form `scripts/bench` collects:
/// `figure | what | value | goal | met`. `goal` is `None` for figures
/// reported for context only.
#[expect(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]
pub fn figure(what: &str, value: String, goal: Option<(&str, bool)>) {
    let (goal, met) = match goal {
        Some((goal, true)) => (goal, "met"),
        Some((goal, false)) => (goal, "NOT MET"),
        None => ("", ""),
    };
    println!("figure | {what} | {value} | {goal} | {met}");
}

/// A field of /proc/self/status in bytes (`VmRSS`, `RssAnon`...).
pub fn proc_status_bytes(field: &str) -> u64 {
    proc_file_bytes("/proc/self/status", field)
}

/// A field of /proc/self/smaps_rollup in bytes (`Pss`, `Pss_File`...): the
/// proportional set size counts a page mapped N times as 1/N per mapping,
/// where `VmRSS` counts it in full each time.
pub fn proc_smaps_bytes(field: &str) -> u64 {
    proc_file_bytes("/proc/self/smaps_rollup", field)
}

fn proc_file_bytes(path: &str, field: &str) -> u64 {
    let status = std::fs::read_to_string(path).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
        * 1024
}
