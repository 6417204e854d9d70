//! Sandbox latency: `cargo bench -p mizzen-runtime --bench sandbox`.
//!
//! Per event, sequentially on one thread: a new Store and instance of the
//! pre-initialised plugin, the bytecode loaded, the handler dispatched through
//! `events.process()`, everything dropped. Measured for Brigade's no-op
//! handler (goal: p50 ≤ 50 µs, p99 ≤ 100 µs) and for an empty script (the
//! sandbox alone, without Brigadier's dispatch). Reports p50, p99, p99.9 and
//! events per second.
//!
//! Then the same no-op handler in Rust and in Go, side by side in the same
//! run: `benches/guests/{rust,go}`, built with their SDKs into
//! `benches/guests/*-no-op.wasm` (scripts/build-guests). For a module that is
//! a fresh instance and its whole `_start`: the language's runtime start-up,
//! reading and parsing the event, the dispatch (Rust goal: p50 ≤ 10 µs).
//!
//! `MIZZEN_BENCH_EVENTS` (default 20,000) sets the events measured per script,
//! after a tenth as many to warm up. Throughput on more than one core is the
//! `scaling` benchmark; memory of waiting workers is `waiting`.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{NO_OP_HANDLER, NullLog, env_usize, figure, micros, percentile, request};
use mizzen_runtime::WorkerLimits;
use mizzen_runtime::log::LogSink;
use mizzen_runtime::script::ScriptSource;

fn main() {
    // One worker thread: the figures are per core.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    // Only one instance is alive at a time, plus a compilation.
    let sandbox = common::sandbox(16).await;
    let script = sandbox
        .compile(&ScriptSource::new("brigade.js", NO_OP_HANDLER))
        .await
        .expect("compiles");
    let empty = sandbox
        .compile(&ScriptSource::new("brigade.js", ""))
        .await
        .expect("compiles");
    let log: Arc<dyn LogSink> = Arc::new(NullLog);
    let limits = WorkerLimits::default();
    println!(
        "no-op handler: {} bytes of QuickJS bytecode",
        script.bytecode_len()
    );

    let mut languages = Vec::new();
    for (language, file) in [("Rust", "rust-no-op.wasm"), ("Go", "go-no-op.wasm")] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("benches/guests")
            .join(file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        println!(
            "{language} no-op handler: a module of {} bytes",
            bytes.len()
        );
        let script = sandbox
            .compile(&ScriptSource::module("brigade.wasm", bytes))
            .await
            .expect("compiles");
        languages.push((language, script));
    }

    let events = env_usize("MIZZEN_BENCH_EVENTS", 20_000).max(1);
    let mut runs = vec![
        ("fresh sandbox + no-op handler".to_string(), &script, true),
        ("fresh sandbox + empty script".to_string(), &empty, false),
    ];
    for (language, script) in &languages {
        runs.push((
            format!("{language}: fresh instance + no-op handler"),
            script,
            false,
        ));
    }
    for (label, script, goals) in runs {
        // Warm up caches, the pool's slots and branch predictors.
        for _ in 0..events / 10 {
            let outcome = sandbox
                .run_compiled(script, request(limits, log.clone()))
                .await;
            assert!(outcome.succeeded(), "{outcome:?}");
        }
        let mut samples = Vec::with_capacity(events);
        let started = Instant::now();
        for _ in 0..events {
            let begin = Instant::now();
            let outcome = sandbox
                .run_compiled(script, request(limits, log.clone()))
                .await;
            samples.push(begin.elapsed());
            debug_assert!(outcome.succeeded());
        }
        let total = started.elapsed();
        samples.sort();
        let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
        println!();
        println!("{label}, one thread, {events} events");
        println!("  p50       {:>8.1} µs", micros(p50));
        println!("  p99       {:>8.1} µs", micros(p99));
        println!(
            "  p99.9     {:>8.1} µs",
            micros(percentile(&samples, 0.999))
        );
        println!("  mean      {:>8.1} µs", micros(total / events as u32));
        println!("  events/s  {:>8.0}", events as f64 / total.as_secs_f64());
        let goal = |text: &'static str, limit: Duration, value: Duration| {
            goals.then_some((text, value <= limit))
        };
        let p50_goal = if label.starts_with("Rust") {
            Some(("≤ 10 µs", p50 <= Duration::from_micros(10)))
        } else {
            goal("≤ 50 µs", Duration::from_micros(50), p50)
        };
        figure(
            &format!("{label}: p50"),
            format!("{:.1} µs", micros(p50)),
            p50_goal,
        );
        figure(
            &format!("{label}: p99"),
            format!("{:.1} µs", micros(p99)),
            goal("≤ 100 µs", Duration::from_micros(100), p99),
        );
    }
}
