//! Job dispatch benchmark: `cargo bench -p mizzen-docker --bench job_dispatch`.
//!
//! Runs a no-op container (`true` in busybox) two ways, side by side in one
//! run, alternating in rounds so that drift in the engine affects both:
//!
//! - directly through the engine API: create, start, wait, remove (what
//!   `docker run --rm` does);
//! - as a Brigade job: a script in the sandbox runs `await job.run()` for a
//!   job of that container, through the Docker executor (image check, pod
//!   labels, output stream, exit code, removal).
//!
//! Reports, for each, the mean time per container and the median of the
//! rounds' means (a job's time is known only per worker, so per-round means
//! are what both sides share), and the ratio of the means. Needs an engine with `localhost/busybox` (scripts/setup-engine).
//! `MIZZEN_BENCH_ROUNDS` (default 5) and `MIZZEN_BENCH_JOBS` (default 10 per
//! round) change the sizes.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder};
use futures_util::StreamExt;
use mizzen_docker::{DockerConfig, DockerExecutor};
use mizzen_host_api::types::Event;
use mizzen_runtime::executor::EventContext;
use mizzen_runtime::log::{LogRecord, LogSink};
use mizzen_runtime::project::JobPolicies;
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{JobCapability, Sandbox, SandboxConfig, WorkerLimits, WorkerRequest};

const IMAGE: &str = "localhost/busybox";

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

#[tokio::main]
async fn main() {
    let rounds = env_usize("MIZZEN_BENCH_ROUNDS", 5);
    let per_round = env_usize("MIZZEN_BENCH_JOBS", 10);
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target");
    let executor = Arc::new(
        DockerExecutor::connect(DockerConfig {
            data_dir: target.join("mizzen-bench-data"),
            storage: None,
        })
        .await
        .expect("an engine answers (scripts/setup-engine)"),
    );
    let sandbox = Sandbox::new(SandboxConfig {
        cache_dir: Some(target.join("mizzen-bench-cache")),
        ..SandboxConfig::default()
    })
    .await
    .expect("the sandbox starts");
    let script = sandbox
        .compile(&ScriptSource::new(
            "brigade.js",
            format!(
                r#"const {{ events, Job }} = require("@brigadecore/brigadier");
                events.on("brigade.sh/cli", "exec", async (event) => {{
                  for (let i = 0; i < {per_round}; i++) {{
                    const job = new Job("no-op-" + i, "{IMAGE}", event);
                    job.primaryContainer.command = ["true"];
                    await job.run();
                  }}
                }});
                events.process();"#
            ),
        ))
        .await
        .expect("compiles");
    println!("engine: {}", executor.endpoint());
    println!("{rounds} rounds of {per_round} containers each way, alternating\n");

    let docker = executor.docker().clone();
    // Warm both paths up: image cache, first container, first network.
    direct(&docker, 2).await;
    jobs(&sandbox, &script, &executor).await;

    let (mut direct_times, mut job_times) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let d = mean(&direct(&docker, per_round).await);
        let j = jobs(&sandbox, &script, &executor).await / per_round as u32;
        println!(
            "round {round}: direct {:>7.1} ms/container   job.run() {:>7.1} ms/job",
            millis(d),
            millis(j)
        );
        direct_times.push(d);
        job_times.push(j);
    }
    let (d, j) = (mean(&direct_times), mean(&job_times));
    println!();
    println!(
        "direct through the engine  mean {:>7.1} ms   median round {:>7.1} ms",
        millis(d),
        millis(median(&direct_times))
    );
    println!(
        "job.run() through Mizzen   mean {:>7.1} ms   median round {:>7.1} ms",
        millis(j),
        millis(median(&job_times))
    );
    println!(
        "ratio (job / direct)       {:.3}   (goal ≤ 1.10)",
        j.as_secs_f64() / d.as_secs_f64()
    );
}

/// Runs `n` containers directly, one after another; returns each one's time.
async fn direct(docker: &Docker, n: usize) -> Vec<Duration> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let body = ContainerCreateBody {
            image: Some(IMAGE.into()),
            cmd: Some(vec!["true".into()]),
            ..ContainerCreateBody::default()
        };
        let id = docker
            .create_container(None, body)
            .await
            .expect("creates")
            .id;
        docker.start_container(&id, None).await.expect("starts");
        let wait = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let _ = docker.wait_container(&id, Some(wait)).next().await;
        let remove = RemoveContainerOptionsBuilder::default().force(true).build();
        docker
            .remove_container(&id, Some(remove))
            .await
            .expect("removes");
        times.push(started.elapsed());
    }
    times
}

/// Runs one worker whose script runs the jobs; returns the worker's time.
async fn jobs(
    sandbox: &Sandbox,
    script: &Arc<mizzen_runtime::CompiledScript>,
    executor: &Arc<DockerExecutor>,
) -> Duration {
    let id = uuid::Uuid::new_v4().to_string();
    let event = Event::new(&id, "bench", "brigade.sh/cli", "exec");
    let context = Arc::new(EventContext {
        event_id: id,
        project_id: "bench".into(),
        use_workspace: false,
        source: None,
        policies: JobPolicies::default(),
        image_pull_secrets: Vec::new(),
        pull_secrets: Vec::new(),
        workspace_size: None,
        container_limits: Default::default(),
        kept: Default::default(),
        volumes: Default::default(),
    });
    let started = Instant::now();
    let outcome = sandbox
        .run_compiled(
            script,
            WorkerRequest {
                event,
                limits: WorkerLimits::default(),
                log: Arc::new(NullLog),
                jobs: JobCapability::Executor {
                    executor: executor.clone(),
                    event: context,
                },
            },
        )
        .await;
    assert!(outcome.succeeded(), "{outcome:?}");
    started.elapsed()
}

fn mean(times: &[Duration]) -> Duration {
    times.iter().sum::<Duration>() / times.len().max(1) as u32
}

fn median(times: &[Duration]) -> Duration {
    let mut sorted = times.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
