//! Cost of epoch interruption on warm calls:
//! `cargo bench -p mizzen-runtime --bench epoch`.
//!
//! The sandbox's engine always has epoch interruption on: Cranelift adds a
//! check of the epoch at every function entry and loop back-edge, which is
//! how a runaway guest is stopped. This benchmark builds two raw wasmtime
//! engines configured as the sandbox's (Cranelift, `OptLevel::Speed`, the
//! pooling allocator) except for epoch interruption, one with it on (and an
//! epoch ticker every 10 ms, as the sandbox's) and one with it off, and
//! times calls into an already-instantiated instance of a small module on
//! each, alternating in rounds so that drift hits both:
//!
//! - `empty`: a call that does nothing (the entry check and call overhead);
//! - `spin`: a tight arithmetic loop of 10,000 iterations (a check per
//!   iteration: the worst case);
//! - `fib`: recursive Fibonacci of 20, about 22,000 calls (a check per call);
//! - `sum`: a loop over 64 KiB of linear memory.
//!
//! Reports the median round's time per call each way and the overhead (goal
//! ≤ 25 %). QuickJS itself is not measured here: the sandbox has no engine
//! without epochs to compare against.
//!
//! `MIZZEN_BENCH_EPOCH_ROUNDS` (default 30) sets the rounds.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{env_usize, figure};
use wasmtime::{Engine, Instance, Module, Store, TypedFunc, UpdateDeadline};

const MODULE: &str = r#"
(module
  (memory (export "memory") 1)
  (func (export "empty"))
  (func (export "spin") (param $n i32) (result i32)
    (local $acc i32)
    (loop $next
      (local.set $acc (i32.add (i32.mul (local.get $acc) (i32.const 31)) (local.get $n)))
      (local.set $n (i32.sub (local.get $n) (i32.const 1)))
      (br_if $next (local.get $n)))
    (local.get $acc))
  (func $fib (export "fib") (param $n i32) (result i32)
    (if (result i32) (i32.lt_u (local.get $n) (i32.const 2))
      (then (local.get $n))
      (else (i32.add (call $fib (i32.sub (local.get $n) (i32.const 1)))
                     (call $fib (i32.sub (local.get $n) (i32.const 2)))))))
  (func (export "sum") (param $bytes i32) (result i32)
    (local $i i32) (local $acc i32)
    (loop $next
      (local.set $acc (i32.add (local.get $acc) (i32.load (local.get $i))))
      (local.set $i (i32.add (local.get $i) (i32.const 4)))
      (br_if $next (i32.lt_u (local.get $i) (local.get $bytes))))
    (local.get $acc)))
"#;

/// Each workload: its export, its argument, and the calls per round, chosen
/// so that a round takes some 10 ms: long enough to time with `Instant`,
/// short enough that many rounds fit in seconds.
const WORKLOADS: [(&str, i32, u32); 4] = [
    ("empty", 0, 200_000),
    ("spin", 10_000, 1_000),
    ("fib", 20, 200),
    ("sum", 64 * 1024, 1_000),
];

/// As the sandbox's `EPOCH_TICK` (limits.rs).
const EPOCH_TICK: Duration = Duration::from_millis(10);

struct Side {
    store: Store<()>,
    instance: Instance,
}

impl Side {
    fn new(epochs: bool, wasm: &[u8]) -> Self {
        let mut config = wasmtime::Config::new();
        config
            .epoch_interruption(epochs)
            .strategy(wasmtime::Strategy::Cranelift)
            .cranelift_opt_level(wasmtime::OptLevel::Speed);
        // As the sandbox's, at the size this needs: one instance.
        let mut pool = wasmtime::PoolingAllocationConfig::new();
        pool.total_core_instances(1)
            .total_memories(1)
            .total_tables(1)
            .total_stacks(1);
        config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).expect("the engine starts");
        let module = Module::new(&engine, wasm).expect("the module compiles");
        let mut store = Store::new(&engine, ());
        if epochs {
            // As the sandbox: a callback on every tick, which here lets the
            // call go on.
            store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Continue(1)));
            store.set_epoch_deadline(1);
            let ticker = engine.clone();
            let stop = Arc::new(AtomicBool::new(false));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker.increment_epoch();
                }
            });
        }
        let instance = Instance::new(&mut store, &module, &[]).expect("instantiates");
        Self { store, instance }
    }

    /// Time per call of `export(argument)`, over `calls` calls.
    fn time(&mut self, export: &str, argument: i32, calls: u32) -> Duration {
        if export == "empty" {
            let function: TypedFunc<(), ()> = self
                .instance
                .get_typed_func(&mut self.store, export)
                .expect("exported");
            let started = Instant::now();
            for _ in 0..calls {
                function.call(&mut self.store, ()).expect("returns");
            }
            return started.elapsed() / calls;
        }
        let function: TypedFunc<i32, i32> = self
            .instance
            .get_typed_func(&mut self.store, export)
            .expect("exported");
        let started = Instant::now();
        for _ in 0..calls {
            std::hint::black_box(
                function
                    .call(&mut self.store, std::hint::black_box(argument))
                    .expect("returns"),
            );
        }
        started.elapsed() / calls
    }
}

fn main() {
    let rounds = env_usize("MIZZEN_BENCH_EPOCH_ROUNDS", 30).max(1);
    let wasm = wat::parse_str(MODULE).expect("the module parses");
    let mut on = Side::new(true, &wasm);
    let mut off = Side::new(false, &wasm);
    println!("warm calls, {rounds} rounds alternating epochs on and off\n");
    for (export, argument, calls) in WORKLOADS {
        // Warm up both: code in cache, branch predictors, the memory's pages.
        on.time(export, argument, calls);
        off.time(export, argument, calls);
        let (mut with, mut without) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            // Alternate which goes first, so neither always follows the other.
            if round % 2 == 0 {
                with.push(on.time(export, argument, calls));
                without.push(off.time(export, argument, calls));
            } else {
                without.push(off.time(export, argument, calls));
                with.push(on.time(export, argument, calls));
            }
        }
        with.sort();
        without.sort();
        let (with, without) = (with[with.len() / 2], without[without.len() / 2]);
        let overhead = (with.as_secs_f64() / without.as_secs_f64() - 1.0) * 100.0;
        println!(
            "{export:<6} epochs on {:>10.3} µs/call   off {:>10.3} µs/call   overhead {overhead:>6.1} %",
            with.as_secs_f64() * 1e6,
            without.as_secs_f64() * 1e6,
        );
        figure(
            &format!("epoch interruption overhead, warm calls: {export}"),
            format!(
                "{overhead:+.1} % ({:.3} vs {:.3} µs/call)",
                with.as_secs_f64() * 1e6,
                without.as_secs_f64() * 1e6
            ),
            Some(("≤ 25 %", overhead <= 25.0)),
        );
    }
}
