//! What a compiled script costs the host as it grows:
//! `cargo bench -p mizzen-runtime --bench module_compile`.
//!
//! Modules of 1,000, 10,000 and 100,000 functions (the limit), each body
//! some forty instructions, so 10× and 100× the smallest in size. For each:
//! the check a server runs when the project is saved (`module::check`, on
//! the request's thread), and the compilation a sandbox runs once per
//! module (Cranelift, on a blocking thread, no cache). Both should grow
//! linearly: the figures are the ratios to the smallest module.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

mod common;

use std::time::{Duration, Instant};

use common::figure;
use mizzen_runtime::module;
use mizzen_runtime::script::ScriptSource;

/// A module of `functions` functions, each `(i32) -> i32` with a body of
/// arithmetic and a branch, and the `_start` and `memory` a script needs.
fn module_of(functions: usize) -> Vec<u8> {
    let mut text =
        String::from("(module (memory (export \"memory\") 1) (func (export \"_start\"))\n");
    // `_start` is the first of the `functions`.
    for i in 1..functions {
        text.push_str(&format!(
            "(func (param i32) (result i32) (local i32)
  (local.set 1 (i32.add (local.get 0) (i32.const {i})))
  (local.set 1 (i32.mul (local.get 1) (i32.const 31)))
  (local.set 1 (i32.xor (local.get 1) (i32.shr_u (local.get 1) (i32.const 7))))
  (if (i32.gt_u (local.get 1) (i32.const 1000))
    (then (local.set 1 (i32.sub (local.get 1) (i32.const 1000))))
    (else (local.set 1 (i32.add (local.get 1) (i32.const 3)))))
  (i32.add (local.get 1) (i32.load (i32.and (local.get 0) (i32.const 1023)))))\n"
        ));
    }
    text.push(')');
    wat::parse_str(text).expect("valid text")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    // No cache directory: every module is compiled.
    let sandbox = mizzen_runtime::Sandbox::new(mizzen_runtime::SandboxConfig {
        cache_dir: None,
        max_instances: 16,
        ..mizzen_runtime::SandboxConfig::default()
    })
    .await
    .expect("the sandbox starts");
    let mut first: Option<(usize, Duration, Duration)> = None;
    for functions in [1_000, 10_000, 100_000] {
        let bytes = module_of(functions);
        let started = Instant::now();
        module::check("brigade.wasm", &bytes).expect("within the limits");
        let checked = started.elapsed();
        let started = Instant::now();
        sandbox
            .compile(&ScriptSource::module("brigade.wasm", bytes.clone()))
            .await
            .expect("compiles");
        let compiled = started.elapsed();
        println!(
            "{functions:>7} functions, {:>9} bytes: checked in {:>8.1} ms, compiled in {:>8.1} ms",
            bytes.len(),
            checked.as_secs_f64() * 1000.0,
            compiled.as_secs_f64() * 1000.0
        );
        let (size0, check0, compile0) = *first.get_or_insert((bytes.len(), checked, compiled));
        let growth = bytes.len() as f64 / size0 as f64;
        figure(
            &format!("module of {functions} functions: check"),
            format!(
                "{:.1} ms ({:.1}× for {growth:.0}× the bytes)",
                checked.as_secs_f64() * 1000.0,
                checked.as_secs_f64() / check0.as_secs_f64()
            ),
            None,
        );
        figure(
            &format!("module of {functions} functions: compile"),
            format!(
                "{:.0} ms ({:.1}× for {growth:.0}× the bytes)",
                compiled.as_secs_f64() * 1000.0,
                compiled.as_secs_f64() / compile0.as_secs_f64()
            ),
            None,
        );
    }
}
