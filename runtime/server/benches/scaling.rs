//! Sandbox throughput on one and two cores:
//! `cargo bench -p mizzen-server --bench scaling`.
//!
//! No-op events run back to back (a fresh instance each, as in the `sandbox`
//! benchmark) for a fixed time, three ways side by side in one run:
//!
//! - 1 thread in 1 process;
//! - 2 threads in 1 process, sharing one `Sandbox` (one engine per process,
//!   as the server runs);
//! - 2 processes of 1 thread each;
//! - the server's sandbox stage ([`mizzen_server::sandbox_pool::SandboxPool`]) with
//!   1 sandbox process, and with 2: events sent from this process over the
//!   pipes, `IN_FLIGHT` per sandbox process at a time, as the scheduler
//!   sends them. This is the figure the goal is about; the raw ways above
//!   show what the stage's own messages cost.
//!
//! Each way runs in child processes ("shards": this binary re-executed with
//! `MIZZEN_BENCH_SHARD=<threads>`), so that all three set up alike. A shard
//! sets up its sandbox and warms up, says `ready`, and starts counting only
//! when the parent says `go` to every shard of the way at once. The rounds
//! alternate the three ways so that drift on a shared machine hits all of
//! them; the median round of each is reported. Goals: ≥ 20,000 events/s per
//! core, and ≥ 1.8× from 1 to 2 cores.
//!
//! `MIZZEN_BENCH_SCALING_SECONDS` (default 2) sets how long each way counts
//! per round, `MIZZEN_BENCH_SCALING_ROUNDS` (default 3) the rounds.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

// The sandbox benchmarks' shared helpers, beside the others in the runtime.
#[path = "../../core/benches/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{NO_OP_HANDLER, NullLog, env_seconds, env_usize, figure, request};
use mizzen_runtime::SandboxConfig;
use mizzen_runtime::WorkerLimits;
use mizzen_runtime::log::LogSink;
use mizzen_runtime::sandbox_process;
use mizzen_runtime::script::ScriptSource;
use mizzen_server::sandbox_pool::{SandboxCommand, SandboxPool, SandboxStage};

/// The environment variable that makes this binary a shard, and how many
/// threads the shard runs.
const SHARD: &str = "MIZZEN_BENCH_SHARD";

/// The argument that makes this binary a sandbox process of a pool.
const SERVE_SHARD: &str = "--serve-shard";

/// Events in flight per sandbox process in the sandbox-stage ways: enough
/// that a process always has the next event queued while it runs one.
const IN_FLIGHT: usize = 16;

/// Events each thread runs before counting: enough for every pool slot it
/// uses to have been touched and for the branch predictors to settle
/// (about a tenth of a second).
const WARM_UP_EVENTS: usize = 2_000;

fn main() {
    let duration = env_seconds("MIZZEN_BENCH_SCALING_SECONDS", 2.0);
    if std::env::args().any(|arg| arg == SERVE_SHARD) {
        serve_shard();
        return;
    }
    if let Ok(threads) = std::env::var(SHARD) {
        shard(threads.parse().expect("a thread count"), duration);
        return;
    }
    let rounds = env_usize("MIZZEN_BENCH_SCALING_ROUNDS", 3).max(1);
    let ways = [
        ("1 thread in 1 process", 1, 1),
        ("2 threads in 1 process", 1, 2),
        ("2 processes of 1 thread", 2, 1),
        ("sandbox stage, 1 process", 1, 0),
        ("sandbox stage, 2 processes", 2, 0),
    ];
    println!(
        "no-op events back to back, {rounds} rounds of {:.1} s each way\n",
        duration.as_secs_f64()
    );
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); ways.len()];
    for round in 1..=rounds {
        for (way, &(label, processes, threads)) in ways.iter().enumerate() {
            let rate = if threads == 0 {
                run_stage(processes, duration)
            } else {
                run_shards(processes, threads)
            };
            println!("round {round}: {label:<26} {rate:>8.0} events/s");
            rates[way].push(rate);
        }
    }
    let [one, threads, processes, stage_one, stage_two] =
        [0, 1, 2, 3, 4].map(|way| median(&mut rates[way]));
    println!();
    println!("median rounds:");
    println!("  1 thread in 1 process    {one:>8.0} events/s");
    println!(
        "  2 threads in 1 process   {threads:>8.0} events/s  ({:.2}× of 1 thread)",
        threads / one
    );
    println!(
        "  2 processes of 1 thread  {processes:>8.0} events/s  ({:.2}× of 1 thread)",
        processes / one
    );
    println!("  sandbox stage, 1 process {stage_one:>8.0} events/s");
    println!(
        "  sandbox stage, 2 processes {stage_two:>6.0} events/s  ({:.2}× of 1 process, {:.2}× of 2 raw processes)",
        stage_two / stage_one,
        stage_two / processes
    );
    figure(
        "no-op events/s, sandbox stage with 1 process",
        format!("{stage_one:.0}/s"),
        Some(("≥ 20,000/s per core", stage_one >= 20_000.0)),
    );
    figure(
        "no-op events/s, sandbox stage with 2 processes",
        format!("{stage_two:.0}/s ({:.0}/s per core)", stage_two / 2.0),
        Some(("≥ 20,000/s per core", stage_two / 2.0 >= 20_000.0)),
    );
    // What the stage's own messages cost: the same two processes churning
    // instances with and without the parent, its pipes and its host calls.
    figure(
        "sandbox stage with 2 processes / 2 raw processes",
        format!("{:.2}×", stage_two / processes),
        Some(("≥ 0.8×", stage_two / processes >= 0.8)),
    );
    figure(
        "scaling 1 → 2 cores, the server's sandbox stage",
        format!("{:.2}×", stage_two / stage_one),
        Some(("≥ 1.8×", stage_two / stage_one >= 1.8)),
    );
    figure(
        "no-op events/s, 1 thread in 1 process",
        format!("{one:.0}/s"),
        Some(("≥ 20,000/s per core", one >= 20_000.0)),
    );
    figure(
        "no-op events/s, 2 threads in 1 process",
        format!("{threads:.0}/s ({:.0}/s per core)", threads / 2.0),
        Some(("≥ 20,000/s per core", threads / 2.0 >= 20_000.0)),
    );
    figure(
        "no-op events/s, 2 processes of 1 thread",
        format!("{processes:.0}/s ({:.0}/s per core)", processes / 2.0),
        Some(("≥ 20,000/s per core", processes / 2.0 >= 20_000.0)),
    );
    figure(
        "scaling 1 → 2 cores, threads in one process",
        format!("{:.2}×", threads / one),
        Some(("≥ 1.8×", threads / one >= 1.8)),
    );
    figure(
        "scaling 1 → 2 cores, separate processes",
        format!("{:.2}×", processes / one),
        Some(("≥ 1.8×", processes / one >= 1.8)),
    );
}

/// Runs `processes` shards of `threads` threads together; returns their
/// events per second, summed.
fn run_shards(processes: usize, threads: usize) -> f64 {
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let mut children: Vec<_> = (0..processes)
        .map(|_| {
            let mut child = Command::new(&exe)
                .env(SHARD, threads.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("a shard starts");
            let stdout = BufReader::new(child.stdout.take().expect("piped"));
            (child, stdout.lines())
        })
        .collect();
    for (_, lines) in &mut children {
        let line = lines.next().and_then(Result::ok);
        assert_eq!(line.as_deref(), Some("ready"), "a shard failed to start");
    }
    for (child, _) in &mut children {
        let stdin = child.stdin.as_mut().expect("piped");
        stdin.write_all(b"go\n").expect("the shard listens");
        stdin.flush().expect("the shard listens");
    }
    let mut rate = 0.0;
    for (mut child, mut lines) in children {
        let line = lines
            .next()
            .and_then(Result::ok)
            .expect("the shard reports");
        // `<events> <seconds>` for each of the shard's threads.
        let numbers: Vec<f64> = line
            .split_whitespace()
            .map(|n| n.parse().expect("a number"))
            .collect();
        rate += numbers.chunks(2).map(|pair| pair[0] / pair[1]).sum::<f64>();
        assert!(child.wait().expect("the shard ends").success());
    }
    rate
}

/// One shard: `threads` threads sharing one sandbox, each running no-op
/// events on its own single-threaded runtime for `duration` after `go`.
fn shard(threads: usize, duration: Duration) {
    let setup = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (sandbox, script) = setup.block_on(async {
        // Each thread has one instance alive at a time; one compilation.
        let sandbox = common::sandbox(threads as u32 + 16).await;
        let script = sandbox
            .compile(&ScriptSource::new("brigade.js", NO_OP_HANDLER))
            .await
            .expect("compiles");
        (Arc::new(sandbox), script)
    });
    // Everyone warmed up, then everyone starts together.
    let warmed = Arc::new(Barrier::new(threads + 1));
    let go = Arc::new(Barrier::new(threads + 1));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (sandbox, script) = (sandbox.clone(), script.clone());
            let (warmed, go) = (warmed.clone(), go.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                let log: Arc<dyn LogSink> = Arc::new(NullLog);
                let limits = WorkerLimits::default();
                runtime.block_on(async {
                    for _ in 0..WARM_UP_EVENTS {
                        let outcome = sandbox
                            .run_compiled(&script, request(limits, log.clone()))
                            .await;
                        assert!(outcome.succeeded(), "{outcome:?}");
                    }
                    warmed.wait();
                    go.wait();
                    let started = Instant::now();
                    let mut events = 0u64;
                    while started.elapsed() < duration {
                        let outcome = sandbox
                            .run_compiled(&script, request(limits, log.clone()))
                            .await;
                        debug_assert!(outcome.succeeded());
                        events += 1;
                    }
                    (events, started.elapsed())
                })
            })
        })
        .collect();
    warmed.wait();
    println!("ready");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .expect("the parent says go");
    go.wait();
    let results: Vec<String> = workers
        .into_iter()
        .map(|worker| {
            let (events, elapsed) = worker.join().expect("the thread ends");
            format!("{events} {}", elapsed.as_secs_f64())
        })
        .collect();
    println!("{}", results.join(" "));
}

/// The server's sandbox stage with `processes` sandbox processes: events
/// per second over `duration`, after a warm-up.
fn run_stage(processes: usize, duration: Duration) -> f64 {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let command = SandboxCommand {
            program: std::env::current_exe().expect("the benchmark's own path"),
            args: vec![SERVE_SHARD.into()],
        };
        let pool = Arc::new(
            SandboxPool::start(processes, command)
                .await
                .expect("the sandbox processes start"),
        );
        let script = ScriptSource::new("brigade.js", NO_OP_HANDLER);
        let senders = processes * IN_FLIGHT;
        let run_for = |events: Option<usize>, until: Option<Instant>| {
            (0..senders)
                .map(|_| {
                    let (pool, script) = (pool.clone(), script.clone());
                    tokio::spawn(async move {
                        let log: Arc<dyn LogSink> = Arc::new(NullLog);
                        let mut count = 0usize;
                        while events.is_none_or(|n| count < n)
                            && until.is_none_or(|t| Instant::now() < t)
                        {
                            let outcome = pool
                                .run(&script, request(WorkerLimits::default(), log.clone()))
                                .await;
                            assert!(outcome.succeeded(), "{outcome:?}");
                            count += 1;
                        }
                        count
                    })
                })
                .collect::<Vec<_>>()
        };
        for sender in run_for(Some(WARM_UP_EVENTS / IN_FLIGHT), None) {
            sender.await.expect("the warm-up runs");
        }
        let started = Instant::now();
        let mut events = 0;
        for sender in run_for(None, Some(started + duration)) {
            events += sender.await.expect("the senders run");
        }
        events as f64 / started.elapsed().as_secs_f64()
    })
}

/// A sandbox process of the pool in [`run_stage`], as `mizzen
/// sandbox-shard` is one of the server's.
fn serve_shard() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/mizzen-bench-cache");
        let config = SandboxConfig {
            cache_dir: Some(cache),
            long_running_slots: 1,
            ..SandboxConfig::default()
        };
        sandbox_process::serve(config)
            .await
            .expect("the sandbox process serves");
    });
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
