//! Runaway scripts beside normal traffic:
//! `cargo bench -p mizzen-runtime --bench runaway`.
//!
//! On a multi-threaded runtime with one thread per core (as `mizzen server`
//! runs its workers), a steady trickle of normal events (a handler that logs
//! one line) is submitted from outside the runtime, as events arrive. Phases
//! alternate, side by side in one run:
//!
//! - **idle**: only the normal events;
//! - **runaways**: the same, while 64 workers of another project (tenant)
//!   run `while (true) {}`, each replaced by another as soon as it is
//!   stopped, so that 64 are always running.
//!
//! Reported:
//!
//! 1. The normal events' latency from submission to their handler's log line
//!    (stamped by the log sink), p50 and p99 in each phase, and the ratio of
//!    the p99s (goal ≤ 2×).
//! 2. How late each runaway is stopped. A runaway has a CPU limit of 200 ms
//!    and a wall-clock limit of 200 ms: its deadline is the instant 200 ms
//!    after it started (its task's first poll), by which one limit or the
//!    other must have ended it, and its lateness is the time from that
//!    deadline to its run returning. CPU time is counted in 10 ms epoch
//!    ticks, and a runaway that was queued behind others is counted a tick
//!    as soon as it resumes, so under contention the CPU limit often ends it
//!    before the deadline (negative lateness). p50, p99 and max (goal ≤ 10
//!    ms), first for runaways run alone one after another, then for those
//!    among 64.
//!
//! `MIZZEN_BENCH_RUNAWAYS` (default 64), `MIZZEN_BENCH_RUNAWAY_SECONDS`
//! (default 3, per phase) and `MIZZEN_BENCH_RUNAWAY_ROUNDS` (default 2, each
//! an idle and a runaway phase) change the sizes.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{NullLog, env_seconds, env_usize, figure, micros, millis, percentile};
use mizzen_runtime::log::{LogRecord, LogSink};
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{Sandbox, WorkerFailure, WorkerLimits};

const HANDLER: &str = r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => { console.log("handled"); });
events.process();
"#;

const RUNAWAY: &str = "while (true) {}";

/// The tenant whose scripts run away; normal events are project `bench`'s.
const RUNAWAY_PROJECT: &str = "runaway-tenant";

/// A runaway's limits. 200 ms is a short budget that still spans twenty
/// epoch ticks, so the stop is not decided by the first tick's rounding.
const RUNAWAY_LIMIT: Duration = Duration::from_millis(200);

/// Time between two normal events: 500 events/s, a quarter of what one
/// core handles, so that in the idle phase each finds the runtime idle.
const NORMAL_SPACING: Duration = Duration::from_millis(2);

/// Runaways run one after another, alone, for the reference lateness.
const ALONE: usize = 5;

/// Stamps the moment the handler's line arrives.
struct HandledLog(OnceLock<Instant>);

impl LogSink for HandledLog {
    fn record(&self, record: LogRecord) {
        if record.message == "handled" {
            let _ = self.0.set(Instant::now());
        }
    }
}

fn runaway_limits() -> WorkerLimits {
    WorkerLimits {
        cpu_time: RUNAWAY_LIMIT,
        wall_time: RUNAWAY_LIMIT,
        ..WorkerLimits::default()
    }
}

/// One stopped runaway: its lateness past the deadline (negative when
/// stopped before) and whether the CPU limit stopped it.
type Stopped = (f64, bool);

fn main() {
    let runaways = env_usize("MIZZEN_BENCH_RUNAWAYS", 64);
    let phase = env_seconds("MIZZEN_BENCH_RUNAWAY_SECONDS", 3.0);
    let rounds = env_usize("MIZZEN_BENCH_RUNAWAY_ROUNDS", 2).max(1);
    // One worker thread per core, as `mizzen server`'s runtime.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (sandbox, handler, runaway) = runtime.block_on(async {
        // The runaways, and normal events that pile up behind them.
        let sandbox = Arc::new(common::sandbox(runaways as u32 + 2_000).await);
        let compile = |text| {
            let sandbox = sandbox.clone();
            async move {
                sandbox
                    .compile(&ScriptSource::new("brigade.js", text))
                    .await
                    .expect("compiles")
            }
        };
        let (handler, runaway) = (compile(HANDLER).await, compile(RUNAWAY).await);
        (sandbox, handler, runaway)
    });
    let runaway = Arc::new(runaway);

    // The reference: runaways alone, one after another.
    let alone: Vec<Stopped> = (0..ALONE)
        .map(|_| runtime.block_on(run_runaway(&sandbox, &runaway)))
        .collect();

    let (mut idle, mut loaded) = (Vec::new(), Vec::new());
    let stopped = Arc::new(Mutex::new(Vec::<Stopped>::new()));
    for round in 1..=rounds {
        let samples = normal_traffic(&runtime, &sandbox, &handler, phase);
        println!(
            "round {round}: idle      normal events p99 {:>9.1} µs ({} events)",
            micros(p99(&samples)),
            samples.len()
        );
        idle.extend(samples);

        let running = Arc::new(AtomicBool::new(true));
        let loops: Vec<_> = (0..runaways)
            .map(|_| {
                let (sandbox, runaway) = (sandbox.clone(), runaway.clone());
                let (running, stopped) = (running.clone(), stopped.clone());
                runtime.spawn(async move {
                    while running.load(Ordering::Relaxed) {
                        let result = run_runaway(&sandbox, &runaway).await;
                        stopped.lock().expect("not poisoned").push(result);
                    }
                })
            })
            .collect();
        let samples = normal_traffic(&runtime, &sandbox, &handler, phase);
        running.store(false, Ordering::Relaxed);
        for task in loops {
            runtime.block_on(task).expect("joins");
        }
        println!(
            "round {round}: runaways  normal events p99 {:>9.1} µs ({} events)",
            micros(p99(&samples)),
            samples.len()
        );
        loaded.extend(samples);
    }

    idle.sort();
    loaded.sort();
    let ratio = p99(&loaded).as_secs_f64() / p99(&idle).as_secs_f64();
    println!();
    println!("normal events, submission → handler's log line");
    for (label, samples) in [("idle", &idle), ("with runaways", &loaded)] {
        println!(
            "  {label:<14} p50 {:>9.1} µs  p99 {:>9.1} µs  max {:>9.1} µs  ({} events)",
            micros(percentile(samples, 0.5)),
            micros(p99(samples)),
            micros(samples.last().copied().unwrap_or_default()),
            samples.len()
        );
    }
    println!("  p99 ratio      {ratio:.1}×");

    let stopped = stopped.lock().expect("not poisoned").clone();
    println!();
    println!(
        "runaways: deadline = start + {} ms (CPU and wall-clock limits both {} ms)",
        RUNAWAY_LIMIT.as_millis(),
        RUNAWAY_LIMIT.as_millis()
    );
    let lateness = |label: &str, stopped: &[Stopped]| {
        let mut late: Vec<f64> = stopped.iter().map(|s| s.0).collect();
        late.sort_by(f64::total_cmp);
        let at = |p: f64| late[((late.len() as f64 * p).ceil() as usize).clamp(1, late.len()) - 1];
        let by_cpu = stopped.iter().filter(|s| s.1).count();
        println!(
            "  {label:<18} stopped after the deadline by p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  ({} runaways, {by_cpu} by the CPU limit, {} by the wall-clock limit)",
            at(0.5),
            at(0.99),
            at(1.0),
            late.len(),
            late.len() - by_cpu
        );
        (at(0.5), at(0.99), at(1.0))
    };
    let (_, _, alone_max) = lateness("alone", &alone);
    let (p50, late_p99, max) = lateness(&format!("{runaways} at once"), &stopped);

    figure(
        "normal event → handler p99, idle",
        format!("{:.1} µs", micros(p99(&idle))),
        None,
    );
    figure(
        &format!("normal event → handler p99, beside {runaways} runaways"),
        format!("{:.1} µs", micros(p99(&loaded))),
        None,
    );
    figure(
        &format!("normal p99 with {runaways} runaways / idle"),
        format!("{ratio:.1}×"),
        Some(("≤ 2×", ratio <= 2.0)),
    );
    figure(
        &format!("runaway stopped after its deadline, alone (max of {ALONE})"),
        format!("{alone_max:.1} ms"),
        Some(("≤ 10 ms", alone_max <= 10.0)),
    );
    figure(
        &format!("runaway stopped after its deadline, {runaways} at once (p50 / p99 / max)"),
        format!("{p50:.1} / {late_p99:.1} / {max:.1} ms"),
        Some(("≤ 10 ms", max <= 10.0)),
    );
}

/// Runs one runaway to its stop and says how late it was stopped.
async fn run_runaway(sandbox: &Sandbox, runaway: &Arc<mizzen_runtime::CompiledScript>) -> Stopped {
    let started = Instant::now();
    // The runaways are one tenant's; the normal traffic is another's.
    let mut request = common::request(runaway_limits(), Arc::new(NullLog));
    request.event.project.id = RUNAWAY_PROJECT.into();
    let outcome = sandbox.run_compiled(runaway, request).await;
    let stopped = started.elapsed();
    let by_cpu = match outcome.failure {
        Some(WorkerFailure::CpuTime { .. }) => true,
        Some(WorkerFailure::WallTime { .. }) => false,
        other => panic!("a runaway ended otherwise: {other:?}"),
    };
    (millis(stopped) - millis(RUNAWAY_LIMIT), by_cpu)
}

/// Submits a normal event every [`NORMAL_SPACING`] for `phase`, from this
/// (non-runtime) thread; returns each one's latency to its handler.
fn normal_traffic(
    runtime: &tokio::runtime::Runtime,
    sandbox: &Arc<Sandbox>,
    handler: &Arc<mizzen_runtime::CompiledScript>,
    phase: Duration,
) -> Vec<Duration> {
    let mut submitted = Vec::new();
    let started = Instant::now();
    let mut next = started;
    while started.elapsed() < phase {
        let log = Arc::new(HandledLog(OnceLock::new()));
        let (sandbox, handler, sink) = (sandbox.clone(), handler.clone(), log.clone());
        let at = Instant::now();
        let task = runtime.spawn(async move {
            let request = common::request(WorkerLimits::default(), sink);
            sandbox.run_compiled(&handler, request).await
        });
        submitted.push((at, log, task));
        next += NORMAL_SPACING;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    submitted
        .into_iter()
        .map(|(at, log, task)| {
            let outcome = runtime.block_on(task).expect("joins");
            assert!(outcome.succeeded(), "{outcome:?}");
            log.0.get().expect("the handler logged").duration_since(at)
        })
        .collect()
}

fn p99(sorted_or_not: &[Duration]) -> Duration {
    let mut sorted = sorted_or_not.to_vec();
    sorted.sort();
    percentile(&sorted, 0.99)
}
