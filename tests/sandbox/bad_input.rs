//! Hostile or broken scripts: each fails alone, with a named error, and the
//! sandbox goes on serving other workers.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mizzen_host_api::types::Phase;
use mizzen_runtime::log::MemoryLog;
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{
    JobCapability, Sandbox, SandboxConfig, WorkerFailure, WorkerLimits, WorkerRequest,
};

use crate::util::{event, run, run_js};

#[tokio::test]
async fn a_javascript_syntax_error_names_the_file_line_and_column() {
    let run = run_js("const { events } = require(\"brigadier\");\n\nevents.on(\"brigade.sh/cli\", \"exec\", async () => {\n  console.log(\"unclosed\";\n});\n").await;
    run.assert_failed_with("brigade.js:4:");
    run.assert_failed_with("SyntaxError");
    assert!(matches!(
        run.outcome.failure,
        Some(WorkerFailure::Script { .. })
    ));
    assert!(
        run.log.text().contains("brigade.js:4:"),
        "the error is logged too"
    );
}

#[tokio::test]
async fn a_typescript_syntax_error_names_the_file_line_and_column() {
    let run = run(
        ScriptSource::new(
            "brigade.ts",
            "const a: number = 1;\nfunction broken(: string) {}\n",
        ),
        event(),
        WorkerLimits::default(),
    )
    .await;
    run.assert_failed_with("brigade.ts:2:");
    run.assert_failed_with("SyntaxError");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_runaway_scripts_do_not_hold_up_another_tenants_events() {
    // Its own sandbox: the runaways queue for its long-running slots, which
    // the other tests' workers must not have to share.
    let sandbox = own_sandbox(SandboxConfig::default()).await;
    // Each runaway's 200 ms: the case where every new runaway used to spend
    // its first ticks before it queued, 640 ms of CPU a second per core.
    let limits = WorkerLimits {
        cpu_time: Duration::from_millis(200),
        wall_time: Duration::from_millis(200),
        ..WorkerLimits::default()
    };
    let script = ScriptSource::new("brigade.js", "while (true) {}\n");
    let runaway = {
        let sandbox = sandbox.clone();
        move || {
            let (sandbox, script) = (sandbox.clone(), script.clone());
            async move {
                let outcome = sandbox
                    .run(&script, tenant_request("greedy-tenant", limits))
                    .await;
                assert!(!outcome.succeeded(), "{outcome:?}");
            }
        }
    };
    let (handled, stopped) = ordinary_events_beside_runaways(&sandbox, runaway).await;
    eprintln!(
        "{handled} ordinary events in 2 s beside 64 runaways of another tenant ({stopped} stopped)"
    );
    // Measured on the 2-core development machine: 10,692 with the
    // runaways' first ticks charged to their tenant, 109 without; 13,827 to
    // 19,634 in six runs since a yield's wait is no longer counted as the
    // guest's ticks (before, one run in five fell to 100: see the spinning
    // Wasm jobs' test below).
    assert!(
        handled >= 1000,
        "only {handled} ordinary events ran in 2 s beside 64 runaways of another tenant"
    );
}

/// A sandbox of the test's own, its long-running slots shared with no other
/// test's workers.
async fn own_sandbox(config: SandboxConfig) -> Arc<Sandbox> {
    Arc::new(
        Sandbox::new(SandboxConfig {
            cache_dir: Some(Path::new(env!("CARGO_TARGET_TMPDIR")).join("mizzen-cache")),
            ..config
        })
        .await
        .unwrap(),
    )
}

/// A request for an event of `project`.
fn tenant_request(project: &str, limits: WorkerLimits) -> WorkerRequest {
    let mut event = event();
    event.project.id = project.to_string();
    WorkerRequest {
        event,
        limits,
        log: Arc::new(MemoryLog::new()),
        jobs: JobCapability::none(),
    }
}

/// Keeps 64 runaways of one tenant going (each `runaway()` one, replaced as
/// soon as it ends), and after a second runs another tenant's ordinary
/// events one after another for 2 s, spawned like the runaways so that they
/// compete for the same threads. Returns how many ordinary events were
/// handled and how many runaways ended (at least 64, or they did not run).
async fn ordinary_events_beside_runaways<F, Fut>(
    sandbox: &Arc<Sandbox>,
    runaway: F,
) -> (usize, usize)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let runaways: Vec<_> = (0..64)
        .map(|_| {
            let (runaway, stop) = (runaway.clone(), stop.clone());
            tokio::spawn(async move {
                let mut stopped = 0;
                while !stop.load(Ordering::Relaxed) {
                    runaway().await;
                    stopped += 1;
                }
                stopped
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ordinary = ScriptSource::new("brigade.js", "console.log(\"ordinary\");\n");
    let window = Instant::now();
    let mut handled = 0;
    while window.elapsed() < Duration::from_secs(2) {
        let (sandbox, ordinary) = (sandbox.clone(), ordinary.clone());
        let outcome = tokio::spawn(async move {
            sandbox
                .run(
                    &ordinary,
                    tenant_request("quiet-tenant", WorkerLimits::default()),
                )
                .await
        })
        .await
        .unwrap();
        assert!(outcome.succeeded(), "{outcome:?}");
        handled += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut stopped = 0;
    for runaway in runaways {
        stopped += runaway.await.unwrap();
    }
    assert!(stopped >= 64, "the runaways did not run: {stopped}");
    (handled, stopped)
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_at_its_cpu_limit_while_other_workers_carry_on() {
    let limits = WorkerLimits {
        cpu_time: Duration::from_millis(300),
        ..WorkerLimits::default()
    };
    // Load the shared sandbox first: on a fresh machine that compiles the
    // plugin, which is not what this measures.
    crate::util::sandbox().await;
    let started = Instant::now();
    let runaway = tokio::spawn(async move {
        let run = run(
            ScriptSource::new("brigade.js", "while (true) {}\n"),
            event(),
            limits,
        )
        .await;
        (run, started.elapsed())
    });
    // Well-behaved workers in the same process while the loop spins.
    let mut others = Vec::new();
    for i in 0..5 {
        others.push(tokio::spawn(async move {
            let run = run_js(&format!(
                "const sleep = (ms) => new Promise((r) => setTimeout(r, ms));\nsleep(20).then(() => console.log(\"worker {i} done\"));\n"
            ))
            .await;
            (run, started.elapsed())
        }));
    }
    for (i, other) in others.into_iter().enumerate() {
        let (run, finished) = other.await.unwrap();
        run.assert_succeeded();
        assert_eq!(run.messages(), [format!("worker {i} done")]);
        assert!(
            finished < Duration::from_secs(2),
            "worker {i} was held up for {finished:?}"
        );
    }
    let (run, stopped) = runaway.await.unwrap();
    run.assert_failed_with("CPU time limit of 300ms exceeded");
    assert!(matches!(
        run.outcome.failure,
        Some(WorkerFailure::CpuTime { .. })
    ));
    assert!(
        stopped < Duration::from_secs(5),
        "the loop ran for {stopped:?}"
    );
}

#[tokio::test]
async fn a_loop_inside_a_timer_callback_is_stopped_too() {
    let limits = WorkerLimits {
        cpu_time: Duration::from_millis(200),
        ..WorkerLimits::default()
    };
    let run = run(
        ScriptSource::new("brigade.js", "setTimeout(() => { for (;;) {} }, 10);\n"),
        event(),
        limits,
    )
    .await;
    run.assert_failed_with("CPU time limit of 200ms exceeded");
}

#[tokio::test]
async fn a_memory_bomb_hits_the_named_memory_limit() {
    let limits = WorkerLimits {
        memory_bytes: 32 * 1024 * 1024,
        ..WorkerLimits::default()
    };
    let run = run(
        ScriptSource::new(
            "brigade.js",
            "const hoard = [];\nwhile (true) { hoard.push(\"x\".repeat(1024 * 1024) + hoard.length); }\n",
        ),
        event(),
        limits,
    )
    .await;
    run.assert_failed_with("memory limit of 32 MiB exceeded");
    assert!(
        matches!(run.outcome.failure, Some(WorkerFailure::Memory { limit }) if limit == 32 * 1024 * 1024)
    );
    // And the next worker gets a fresh instance with memory to spare.
    run_js("console.log(\"x\".repeat(1000).length);\n")
        .await
        .assert_succeeded();
}

#[tokio::test]
async fn a_flood_of_log_output_is_capped_marked_and_fails_the_worker() {
    let limits = WorkerLimits {
        log_bytes: 1024 * 1024,
        ..WorkerLimits::default()
    };
    // 100 MB of console.log: 100 000 lines of 1000 characters.
    let run = run(
        ScriptSource::new(
            "brigade.js",
            "const line = \"y\".repeat(999);\nfor (let i = 0; i < 100000; i++) console.log(line);\n",
        ),
        event(),
        limits,
    )
    .await;
    run.assert_failed_with("log limit of 1 MiB exceeded (output truncated)");
    let records = run.log.records();
    let logged: usize = records.iter().map(|r| r.message.len() + 1).sum();
    assert!(logged <= 1024 * 1024 + 4096, "{logged} bytes were logged");
    assert!(
        records
            .iter()
            .any(|r| r.message.contains("log output truncated")),
        "the truncation is marked"
    );
}

#[tokio::test]
async fn one_enormous_line_is_cut_with_a_marker() {
    let run = run_js("console.log(\"z\".repeat(10 * 1024 * 1024));\n").await;
    run.assert_succeeded();
    let line = &run.messages()[0];
    assert!(line.len() < 100 * 1024, "the line was {} bytes", line.len());
    assert!(
        line.ends_with("more characters]"),
        "{}",
        &line[line.len() - 60..]
    );
}

#[tokio::test]
async fn terminal_escape_sequences_in_logs_are_neutralised() {
    let run = run_js("console.log(\"\\u001b[2J\\u001b[31mred\\u0007 and \\u202e\");\n").await;
    run.assert_succeeded();
    assert_eq!(run.messages(), ["\\x1b[2J\\x1b[31mred\\x07 and \\x202e"]);
}

#[tokio::test]
async fn deep_recursion_is_an_error_not_a_crash() {
    let run = run_js("function down(n) { return down(n + 1) + 1; }\ndown(0);\n").await;
    assert_eq!(run.outcome.phase, Phase::Failed, "{:?}", run.outcome);
    assert!(
        run.failure().contains("RangeError") || run.failure().contains("stack"),
        "{}",
        run.failure()
    );
    run_js("console.log(\"still here\");\n")
        .await
        .assert_succeeded();
}

#[tokio::test]
async fn a_worker_that_outlives_its_wall_time_times_out() {
    let limits = WorkerLimits {
        wall_time: Duration::from_millis(300),
        ..WorkerLimits::default()
    };
    // Load the shared sandbox first: on a fresh machine that compiles the
    // plugin, which is not what this measures.
    crate::util::sandbox().await;
    let started = Instant::now();
    let run = run(
        ScriptSource::new(
            "brigade.js",
            "setTimeout(() => console.log(\"too late\"), 60000);\n",
        ),
        event(),
        limits,
    )
    .await;
    assert_eq!(run.outcome.phase, Phase::TimedOut);
    run.assert_failed_with("timed out after 300ms");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_script_larger_than_the_limit_is_refused_before_compiling() {
    let text = format!(
        "// {}\n",
        "x".repeat(mizzen_runtime::script::MAX_SCRIPT_BYTES)
    );
    let run = run(
        ScriptSource::new("brigade.js", text),
        event(),
        WorkerLimits::default(),
    )
    .await;
    run.assert_failed_with("the limit is");
}

/// Discards a job's lines.
struct Discard;

impl mizzen_runtime::executor::JobOutput for Discard {
    fn line(&self, _: &str, _: &str) {}
}

/// A job of `greedy-tenant` that runs the test tool's `spin` until its CPU
/// time or its timeout stops it.
fn spinner(cpu_time: Duration, timeout: Duration) -> mizzen_runtime::wasm_job::WasmJob {
    use sha2::Digest;
    let tool =
        std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("wasm-jobs/tool.wasm")).unwrap();
    mizzen_runtime::wasm_job::WasmJob {
        name: "spin".into(),
        project_id: "greedy-tenant".into(),
        module_name: "tool.wasm".into(),
        sha256: sha2::Sha256::digest(&tool).into(),
        module: tool.into(),
        args: vec!["tool.wasm".into(), "spin".into()],
        env: Vec::new(),
        preopens: Vec::new(),
        memory_bytes: 64 * 1024 * 1024,
        cpu_time,
        timeout,
        log_bytes: 1024,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spinning_wasm_jobs_share_the_long_running_slots_with_scripts() {
    use mizzen_runtime::wasm_job::WasmJobRunner;

    // One long-running slot (what two cores give): eight jobs that spin for
    // 3 s of wall-clock time with 500 ms of CPU each. Sharing the slot,
    // each gets about 3 s / 8 = 375 ms of CPU and ends TIMED_OUT, queued;
    // running unqueued on two cores, each would get 750 ms and end at its
    // CPU limit. So every job ending TIMED_OUT is what shows that a spinning
    // Wasm job takes only the slot's share, as a runaway script does (the
    // test above measures what that leaves other tenants).
    let sandbox = own_sandbox(SandboxConfig {
        long_running_slots: 1,
        ..SandboxConfig::default()
    })
    .await;
    let spinner = spinner(Duration::from_millis(500), Duration::from_secs(3));
    let spinners: Vec<_> = (0..8)
        .map(|_| {
            let (sandbox, spinner) = (sandbox.clone(), spinner.clone());
            tokio::spawn(async move {
                let (_cancel, cancelled) = tokio::sync::watch::channel(false);
                sandbox.run_job(spinner, Arc::new(Discard), cancelled).await
            })
        })
        .collect();
    for spinner in spinners {
        let result = spinner.await.unwrap();
        assert_eq!(result.phase, Phase::TimedOut, "{result:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_spinning_wasm_jobs_do_not_hold_up_another_tenants_events() {
    use mizzen_runtime::wasm_job::WasmJobRunner;

    // The runaway scripts' test above with Wasm jobs as the runaways, each
    // stopped when its 200 ms run out.
    let sandbox = own_sandbox(SandboxConfig::default()).await;
    let spinner = spinner(Duration::from_millis(200), Duration::from_millis(200));
    let runaway = {
        let sandbox = sandbox.clone();
        move || {
            let (sandbox, spinner) = (sandbox.clone(), spinner.clone());
            async move {
                let (_cancel, cancelled) = tokio::sync::watch::channel(false);
                let result = sandbox.run_job(spinner, Arc::new(Discard), cancelled).await;
                assert_ne!(result.phase, Phase::Succeeded, "{result:?}");
            }
        }
    };
    let (handled, stopped) = ordinary_events_beside_runaways(&sandbox, runaway).await;
    eprintln!(
        "{handled} ordinary events in 2 s beside 64 spinning Wasm jobs of another tenant ({stopped} stopped)"
    );
    // Measured on the 2-core development machine: 13,901 to 19,071 in six
    // runs. 146 to 161 in four runs of five while a guest that waited for
    // the thread after its first yield was charged the ticks it waited: an
    // ordinary event turned long-running that way, its tenant was charged,
    // and the tenant's next events queued behind the spinners.
    assert!(
        handled >= 1000,
        "only {handled} ordinary events ran in 2 s beside 64 spinning Wasm jobs of another tenant"
    );
}
