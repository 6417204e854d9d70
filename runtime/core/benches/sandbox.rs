//! Sandbox benchmark: `cargo bench -p mizzen-runtime --bench sandbox`.
//!
//! 1. Fresh sandbox per event: a new Store and instance of the pre-initialised
//!    plugin, the bytecode loaded, a no-op handler dispatched through
//!    `events.process()`, everything dropped; sequentially on one thread.
//!    Reports p50, p99 and events per second.
//! 2. Resident memory per idle instance: many workers alive at once, each
//!    waiting on a host timer, and the growth of the process's RSS divided by
//!    their number.
//!
//! Set `MIZZEN_BENCH_EVENTS` and `MIZZEN_BENCH_IDLE` to change the sizes.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mizzen_host_api::types::Event;
use mizzen_runtime::log::{LogRecord, LogSink};
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{JobCapability, Sandbox, SandboxConfig, WorkerLimits, WorkerRequest};

const NO_OP_HANDLER: &str = r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {});
events.process();
"#;

const IDLE_WORKER: &str = r#"new Promise((resolve) => setTimeout(resolve, 4000));"#;

struct NullLog;

impl LogSink for NullLog {
    fn record(&self, _: LogRecord) {}
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // One worker thread: the figures are per core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let cache =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/mizzen-bench-cache");
    let idle = env_usize("MIZZEN_BENCH_IDLE", 1_000);
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(cache),
        // The idle workers below are alive at once, plus compilations.
        max_instances: u32::try_from(idle).unwrap_or(u32::MAX).saturating_add(16),
    })
    .await
    .expect("sandbox");
    let script = sandbox
        .compile(&ScriptSource::new("brigade.js", NO_OP_HANDLER))
        .await
        .expect("compiles");
    let log: Arc<dyn LogSink> = Arc::new(NullLog);
    let limits = WorkerLimits::default();

    println!(
        "machine: {} ({} cores)",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "no-op handler: {} bytes of QuickJS bytecode",
        script.bytecode_len()
    );

    let events = env_usize("MIZZEN_BENCH_EVENTS", 20_000);
    let empty = sandbox
        .compile(&ScriptSource::new("brigade.js", ""))
        .await
        .expect("compiles");
    for (label, script, goals) in [
        ("fresh sandbox + no-op handler", &script, true),
        (
            "fresh sandbox + empty script (no Brigadier dispatch)",
            &empty,
            false,
        ),
    ] {
        // Warm up caches, allocator and branch predictors.
        for _ in 0..2_000 {
            let outcome = sandbox.run_compiled(script, request(limits, &log)).await;
            assert!(outcome.succeeded(), "{outcome:?}");
        }
        let mut samples = Vec::with_capacity(events);
        let started = Instant::now();
        for _ in 0..events {
            let begin = Instant::now();
            let outcome = sandbox.run_compiled(script, request(limits, &log)).await;
            samples.push(begin.elapsed());
            debug_assert!(outcome.succeeded());
        }
        let total = started.elapsed();
        samples.sort();
        let percentile =
            |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
        let goal = |text: &'static str| if goals { text } else { "" };
        println!();
        println!("{label}, one thread, {events} events");
        println!(
            "  p50       {:>8.1} µs   {}",
            micros(percentile(0.50)),
            goal("(goal ≤ 50 µs)")
        );
        println!(
            "  p99       {:>8.1} µs   {}",
            micros(percentile(0.99)),
            goal("(goal ≤ 100 µs)")
        );
        println!("  p99.9     {:>8.1} µs", micros(percentile(0.999)));
        println!("  mean      {:>8.1} µs", micros(total / events as u32));
        println!("  events/s  {:>8.0}", events as f64 / total.as_secs_f64());
    }

    // Resident memory of idle instances: each waits on a 4 s host timer.
    let idle_script = sandbox
        .compile(&ScriptSource::new("brigade.js", IDLE_WORKER))
        .await
        .expect("compiles");
    let before = resident_bytes();
    let local = tokio::task::LocalSet::new();
    let sandbox = Arc::new(sandbox);
    let measured = local
        .run_until(async {
            let mut workers = Vec::with_capacity(idle);
            for _ in 0..idle {
                let sandbox = sandbox.clone();
                let script = idle_script.clone();
                let log = log.clone();
                workers.push(tokio::task::spawn_local(async move {
                    sandbox.run_compiled(&script, request(limits, &log)).await
                }));
            }
            // Let every worker start and block on its timer.
            tokio::time::sleep(Duration::from_millis(2_000)).await;
            let during = resident_bytes();
            for worker in workers {
                assert!(worker.await.expect("joins").succeeded());
            }
            during
        })
        .await;
    let per_instance = measured.saturating_sub(before) / idle as u64;
    println!();
    println!("idle instances (each waiting on a host timer): {idle}");
    println!(
        "  resident memory per instance  {:.0} KiB",
        per_instance as f64 / 1024.0
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn request(limits: WorkerLimits, log: &Arc<dyn LogSink>) -> WorkerRequest {
    WorkerRequest {
        event: event(),
        limits,
        log: log.clone(),
        jobs: JobCapability::none(),
    }
}

fn event() -> Event {
    Event::new(
        "00000000-0000-4000-8000-000000000000",
        "bench",
        "brigade.sh/cli",
        "exec",
    )
}

/// Resident set size of this process, from /proc/self/statm.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}
