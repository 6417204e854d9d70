//! Compiled scripts (`brigade.wasm`) in the sandbox: one compilation for
//! events that arrive together, and WASI's `poll_oneoff` waiting as the
//! host's timers do.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mizzen_runtime::log::MemoryLog;
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{
    JobCapability, Sandbox, SandboxConfig, WorkerFailure, WorkerLimits, WorkerRequest,
};

use crate::util::{event, run};

/// A command whose `_start` runs `body`, with `poll_oneoff` and `fd_write`
/// imported; `tag` makes the module's bytes (and so its key) unique.
fn command(tag: &str, body: &str) -> ScriptSource {
    let text = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 512) "slept\n")
  (data (i32.const 600) "{tag}")
  (func (export "_start") {body}))"#
    );
    ScriptSource::module("brigade.wasm", wat::parse_str(text).expect("valid text"))
}

/// `_start` sleeping `ms` milliseconds in `poll_oneoff` (one relative
/// monotonic clock subscription at 0, its event at 100), then printing
/// "slept".
fn sleeper(tag: &str, ms: u64) -> ScriptSource {
    command(
        tag,
        &format!(
            r#"
    (i64.store (i32.const 0) (i64.const 7))           ;; userdata
    (i32.store8 (i32.const 8) (i32.const 0))          ;; a clock
    (i32.store (i32.const 16) (i32.const 1))          ;; monotonic
    (i64.store (i32.const 24) (i64.const {nanos}))    ;; relative timeout
    (i32.store16 (i32.const 40) (i32.const 0))        ;; flags
    (if (i32.ne (call $poll (i32.const 0) (i32.const 100) (i32.const 1) (i32.const 200)) (i32.const 0))
      (then unreachable))
    ;; one event, for userdata 7, without error
    (if (i32.ne (i32.load (i32.const 200)) (i32.const 1)) (then unreachable))
    (if (i64.ne (i64.load (i32.const 100)) (i64.const 7)) (then unreachable))
    (if (i32.ne (i32.load16_u (i32.const 108)) (i32.const 0)) (then unreachable))
    (i32.store (i32.const 300) (i32.const 512))
    (i32.store (i32.const 304) (i32.const 6))
    (drop (call $write (i32.const 1) (i32.const 300) (i32.const 1) (i32.const 308)))"#,
            nanos = ms * 1_000_000
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_oneoff_sleeps_like_a_timer_and_not_past_the_lifetime() {
    let started = Instant::now();
    let run_ = run(sleeper("a", 150), event(), WorkerLimits::default()).await;
    assert!(run_.outcome.succeeded(), "{:?}", run_.outcome);
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(run_.worker_lines(), ["slept"]);

    // A sleep longer than the worker's lifetime ends it at the lifetime.
    let limits = WorkerLimits {
        wall_time: Duration::from_millis(300),
        ..WorkerLimits::default()
    };
    let started = Instant::now();
    let run_ = run(sleeper("b", 60_000), event(), limits).await;
    assert!(
        matches!(run_.outcome.failure, Some(WorkerFailure::WallTime { .. })),
        "{:?}",
        run_.outcome
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

/// Events of a new module that arrive together share one compilation,
/// which they all wait for, instead of compiling it once each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_a_new_module_arriving_together_compile_it_once() {
    // A sandbox of its own, so that no other test's compilations count.
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            cache_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("mizzen-cache")),
            ..SandboxConfig::default()
        })
        .await
        .expect("the sandbox starts"),
    );
    let tag = uuid::Uuid::new_v4().to_string();
    let script = sleeper(&tag, 1);
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let (sandbox, script) = (sandbox.clone(), script.clone());
            tokio::spawn(async move {
                let log = MemoryLog::new();
                sandbox
                    .run(
                        &script,
                        WorkerRequest {
                            event: event(),
                            limits: WorkerLimits::default(),
                            log: Arc::new(log),
                            jobs: JobCapability::none(),
                        },
                    )
                    .await
            })
        })
        .collect();
    for run in runs {
        let outcome = run.await.unwrap();
        assert!(outcome.succeeded(), "{outcome:?}");
    }
    assert_eq!(
        sandbox.compilations(),
        1,
        "eight events compiled the module more than once"
    );
}
