//! Wasm jobs against container jobs: `cargo bench -p mizzen-docker --bench wasm_jobs`.
//!
//! 1. **Start and whole job, side by side.** The same tiny step — print one
//!    line of the environment and exit — as a Wasm job (the test tool,
//!    tests/wasm-jobs/tool.wasm, `env GREETING`) and as a container job
//!    (`localhost/busybox`, `sh -c 'echo GREETING=$GREETING'`), each started
//!    through the executor `mizzen run` uses (Wasm jobs in front of the
//!    Docker executor), alternating in rounds so that drift affects both.
//!    For each: job start → first output line, and job start → job ended
//!    (medians over every job), and their ratios. Goal: the Wasm job ≥ 100×
//!    faster.
//! 2. **Throughput.** A script runs `Job.concurrent(...)` of many Wasm jobs
//!    (the tool's `args`) in one worker; Wasm jobs per second of the
//!    worker's whole run (median of the rounds). Goal: ≥ 1,000/s.
//!
//! Needs an engine with `localhost/busybox` (scripts/setup-engine).
//! `MIZZEN_BENCH_ROUNDS` (default 5), `MIZZEN_BENCH_WASM_JOBS` (Wasm jobs per
//! round, default 200), `MIZZEN_BENCH_CONTAINER_JOBS` (container jobs per
//! round, default 3) and `MIZZEN_BENCH_CONCURRENT` (jobs per worker in part
//! 2, default 500) change the sizes.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mizzen_docker::{DockerConfig, DockerExecutor};
use mizzen_host_api::types::{ContainerSpec, Event, JobResult, JobSpec, Phase};
use mizzen_runtime::executor::{
    ContainerLimits, EventContext, JobExecutor, JobOutput, JobRequest, Source,
};
use mizzen_runtime::log::{LogRecord, LogSink};
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::wasm_job::{HostJobExecutor, ModuleFetcher};
use mizzen_runtime::{JobCapability, Sandbox, SandboxConfig, WorkerLimits, WorkerRequest};

const IMAGE: &str = "localhost/busybox";

struct NullLog;

impl LogSink for NullLog {
    fn record(&self, _: LogRecord) {}
}

/// Notes when the first line arrived.
#[derive(Default)]
struct FirstLine(Mutex<Option<Instant>>);

impl JobOutput for FirstLine {
    fn line(&self, _: &str, _: &str) {
        self.0.lock().unwrap().get_or_insert_with(Instant::now);
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let rounds = env_usize("MIZZEN_BENCH_ROUNDS", 5);
    let wasm_per_round = env_usize("MIZZEN_BENCH_WASM_JOBS", 200);
    let containers_per_round = env_usize("MIZZEN_BENCH_CONTAINER_JOBS", 3);
    let concurrent = env_usize("MIZZEN_BENCH_CONCURRENT", 500);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = root.join("target");
    let source = tempfile::tempdir().expect("a temporary directory");
    std::fs::create_dir_all(source.path().join("tools")).unwrap();
    std::fs::copy(
        root.join("tests/wasm-jobs/tool.wasm"),
        source.path().join("tools/tool.wasm"),
    )
    .expect("tests/wasm-jobs/tool.wasm is committed");
    let containers = Arc::new(
        DockerExecutor::connect(DockerConfig {
            data_dir: target.join("mizzen-bench-data"),
            storage: None,
        })
        .await
        .expect("an engine answers (scripts/setup-engine)"),
    );
    let sandbox = Arc::new(
        Sandbox::new(SandboxConfig {
            cache_dir: Some(target.join("mizzen-bench-cache")),
            max_instances: (concurrent as u32 + 16).max(64),
            ..SandboxConfig::default()
        })
        .await
        .expect("the sandbox starts"),
    );
    let executor = Arc::new(HostJobExecutor::new(
        containers.clone(),
        sandbox.clone(),
        Arc::new(ModuleFetcher::new(None)),
    ));
    let limits = WorkerLimits {
        concurrent_jobs: concurrent as u64,
        ..WorkerLimits::default()
    };
    let context = |id: &str| {
        Arc::new(EventContext {
            source: Some(Source::Directory(source.path().to_path_buf())),
            container_limits: ContainerLimits::of(&limits),
            kept: Default::default(),
            volumes: Default::default(),
            event_id: id.to_string(),
            project_id: "bench".into(),
            use_workspace: false,
            policies: Default::default(),
            image_pull_secrets: Vec::new(),
            pull_secrets: Vec::new(),
            workspace_size: None,
        })
    };
    println!("engine: {}", containers.endpoint());

    // --- 1. one job at a time, side by side --------------------------------
    println!(
        "part 1: {rounds} rounds of {wasm_per_round} Wasm jobs and {containers_per_round} container jobs, alternating\n"
    );
    let event = uuid::Uuid::new_v4().to_string();
    let event_context = context(&event);
    // Warm both paths up: the module compiled, the image cached.
    one_job(&executor, &event_context, "warm-wasm", wasm_spec()).await;
    one_job(
        &executor,
        &event_context,
        "warm-container",
        container_spec(),
    )
    .await;
    let (mut wasm, mut container) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        for i in 0..wasm_per_round {
            wasm.push(
                one_job(
                    &executor,
                    &event_context,
                    &format!("w{round}-{i}"),
                    wasm_spec(),
                )
                .await,
            );
        }
        for i in 0..containers_per_round {
            container.push(
                one_job(
                    &executor,
                    &event_context,
                    &format!("c{round}-{i}"),
                    container_spec(),
                )
                .await,
            );
        }
        println!(
            "round {round}: Wasm job {:>8.3} ms to its first line, container job {:>8.1} ms",
            millis(median(&wasm.iter().map(|t| t.0).collect::<Vec<_>>())),
            millis(median(&container.iter().map(|t| t.0).collect::<Vec<_>>())),
        );
    }
    executor.finish_event(&event_context).await;
    executor.cleaned_up().await;
    let first =
        |times: &[(Duration, Duration)]| median(&times.iter().map(|t| t.0).collect::<Vec<_>>());
    let whole =
        |times: &[(Duration, Duration)]| median(&times.iter().map(|t| t.1).collect::<Vec<_>>());
    let (wasm_first, wasm_whole) = (first(&wasm), whole(&wasm));
    let (container_first, container_whole) = (first(&container), whole(&container));
    println!();
    println!(
        "Wasm job       first line {:>9.3} ms   whole job {:>9.3} ms   ({} jobs)",
        millis(wasm_first),
        millis(wasm_whole),
        wasm.len()
    );
    println!(
        "container job  first line {:>9.3} ms   whole job {:>9.3} ms   ({} jobs)",
        millis(container_first),
        millis(container_whole),
        container.len()
    );
    let first_ratio = container_first.as_secs_f64() / wasm_first.as_secs_f64();
    let whole_ratio = container_whole.as_secs_f64() / wasm_whole.as_secs_f64();
    let met = |ok: bool| if ok { "met" } else { "NOT MET" };
    println!(
        "figure | Wasm job: start → first line, median (container job: {:.1} ms) | {:.3} ms = {first_ratio:.0}× faster | ≥ 100× | {}",
        millis(container_first),
        millis(wasm_first),
        met(first_ratio >= 100.0)
    );
    println!(
        "figure | Wasm job: whole job, median (container job: {:.1} ms) | {:.3} ms = {whole_ratio:.0}× faster | ≥ 100× | {}",
        millis(container_whole),
        millis(wasm_whole),
        met(whole_ratio >= 100.0)
    );

    // --- 2. Job.concurrent of many Wasm jobs ------------------------------
    let script = sandbox
        .compile(&ScriptSource::new(
            "brigade.js",
            format!(
                r#"const {{ events, Job }} = require("@brigadecore/brigadier");
                events.on("brigade.sh/cli", "exec", async (event) => {{
                  const jobs = [];
                  for (let i = 0; i < {concurrent}; i++) {{
                    const job = new Job("w" + i, "wasm:tools/tool.wasm", event);
                    job.primaryContainer.arguments = ["args"];
                    jobs.push(job);
                  }}
                  await Job.concurrent(...jobs).run();
                }});
                events.process();"#
            ),
        ))
        .await
        .expect("compiles");
    println!("\npart 2: {rounds} workers, each Job.concurrent of {concurrent} Wasm jobs\n");
    let mut rates = Vec::new();
    for round in 0..=rounds {
        let id = uuid::Uuid::new_v4().to_string();
        let started = Instant::now();
        let outcome = sandbox
            .run_compiled(
                &script,
                WorkerRequest {
                    event: Event::new(&id, "bench", "brigade.sh/cli", "exec"),
                    limits,
                    log: Arc::new(NullLog),
                    jobs: JobCapability::Executor {
                        executor: executor.clone(),
                        event: context(&id),
                    },
                },
            )
            .await;
        let elapsed = started.elapsed();
        assert!(outcome.succeeded(), "{outcome:?}");
        // Round 0 warms up.
        if round > 0 {
            let rate = concurrent as f64 / elapsed.as_secs_f64();
            println!(
                "round {round}: {concurrent} Wasm jobs in {:>7.1} ms = {rate:>7.0} jobs/s",
                millis(elapsed)
            );
            rates.push(rate);
        }
    }
    rates.sort_by(f64::total_cmp);
    let rate = rates[rates.len() / 2];
    println!(
        "figure | Wasm jobs through Job.concurrent ({concurrent} per worker), median | {rate:.0} jobs/s | ≥ 1,000/s | {}",
        met(rate >= 1000.0)
    );
}

fn wasm_spec() -> JobSpec {
    spec(ContainerSpec {
        image: "wasm:tools/tool.wasm".into(),
        arguments: vec!["env".into(), "GREETING".into()],
        ..ContainerSpec::default()
    })
}

fn container_spec() -> JobSpec {
    spec(ContainerSpec {
        image: IMAGE.into(),
        command: vec!["sh".into(), "-c".into(), "echo GREETING=$GREETING".into()],
        ..ContainerSpec::default()
    })
}

fn spec(mut container: ContainerSpec) -> JobSpec {
    container.environment = BTreeMap::from([("GREETING".to_string(), "hello".to_string())]);
    JobSpec {
        primary_container: container,
        sidecar_containers: BTreeMap::new(),
        timeout_seconds: 900.0,
        host: Default::default(),
        fallible: false,
        artifacts: Default::default(),
        caches: Vec::new(),
    }
}

/// Starts one job and waits for it: (start → first line, start → end).
async fn one_job(
    executor: &Arc<HostJobExecutor>,
    event: &Arc<EventContext>,
    name: &str,
    spec: JobSpec,
) -> (Duration, Duration) {
    let output = Arc::new(FirstLine::default());
    let started = Instant::now();
    let running = executor
        .start(JobRequest {
            event: event.clone(),
            name: name.to_string(),
            spec,
            output: output.clone(),
        })
        .await
        .expect("the job starts");
    let result: JobResult = running.wait().await;
    let ended = started.elapsed();
    assert_eq!(result.phase, Phase::Succeeded, "{name}: {result:?}");
    let first = output
        .0
        .lock()
        .unwrap()
        .expect("the job printed a line")
        .duration_since(started);
    (first, ended)
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
