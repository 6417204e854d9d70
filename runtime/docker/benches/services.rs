//! One shared service against a sidecar per job: `cargo bench -p
//! mizzen-docker --bench services`.
//!
//! An event whose three jobs each talk to a database-like server, run two
//! ways, side by side in one run, alternating in rounds so that the engine's
//! drift hits both:
//!
//! - **shared**: the script starts one `Service` and its three jobs reach it
//!   by name;
//! - **sidecars**: each of the three jobs starts its own copy of the same
//!   server as a sidecar and reaches it on `localhost`.
//!
//! The server takes `MIZZEN_BENCH_STARTUP` seconds (default 1) to listen, as
//! a database takes to initialise; both ways wait for it with the same TCP
//! readiness. Reports the mean wall time of an event each way (the worker's
//! start to its end, clean-up included) and their ratio. Needs an engine
//! with `localhost/busybox` (scripts/setup-engine). `MIZZEN_BENCH_ROUNDS`
//! (default 3) changes the size.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on stdout"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use mizzen_docker::{DockerConfig, DockerExecutor};
use mizzen_host_api::types::Event;
use mizzen_runtime::executor::EventContext;
use mizzen_runtime::log::{LogRecord, LogSink};
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{
    CompiledScript, JobCapability, Sandbox, SandboxConfig, WorkerLimits, WorkerRequest,
};

const IMAGE: &str = "localhost/busybox";

/// The event's jobs, as the issue's benchmark asks.
const JOBS: usize = 3;

struct NullLog;

impl LogSink for NullLog {
    fn record(&self, _: LogRecord) {}
}

fn env_number(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let rounds = env_number("MIZZEN_BENCH_ROUNDS", 3.0) as usize;
    let startup = env_number("MIZZEN_BENCH_STARTUP", 1.0);
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
    let server = format!("sleep {startup}; while true; do echo ok | nc -l -p 5432; done");
    let compile = |body: String| {
        let sandbox = &sandbox;
        async move {
            sandbox
                .compile(&ScriptSource::new(
                    "brigade.js",
                    format!(
                        r#"const {{ events, Job, Service, Container }} = require("@brigadecore/brigadier");
                        events.on("brigade.sh/cli", "exec", async (event) => {{
                          function job(i, command) {{
                            const job = new Job("test-" + i, "{IMAGE}", event);
                            job.primaryContainer.command = ["sh", "-c", command];
                            return job;
                          }}
                          {body}
                        }});
                        events.process();"#
                    ),
                ))
                .await
                .expect("compiles")
        }
    };
    let shared = compile(format!(
        r#"const db = new Service("db", "{IMAGE}");
        db.command = ["sh", "-c", {server:?}];
        db.readiness = {{ tcpPort: 5432 }};
        await db.start();
        for (let i = 0; i < {JOBS}; i++) await job(i, "nc db 5432 | grep -q ok").run();"#
    ))
    .await;
    let sidecars = compile(format!(
        r#"for (let i = 0; i < {JOBS}; i++) {{
          const j = job(i, "nc localhost 5432 | grep -q ok");
          const db = new Container("{IMAGE}");
          db.command = ["sh", "-c", {server:?}];
          db.readiness = {{ tcpPort: 5432 }};
          j.sidecarContainers = {{ db }};
          await j.run();
        }}"#
    ))
    .await;
    println!("engine: {}", executor.endpoint());
    println!(
        "{rounds} rounds; an event of {JOBS} jobs and a server that listens after {startup} s, each way, alternating\n"
    );
    // Warm both paths up: the image, the pod helper, the first network.
    event(&sandbox, &shared, &executor).await;
    event(&sandbox, &sidecars, &executor).await;

    let (mut shared_times, mut sidecar_times) = (Vec::new(), Vec::new());
    for round in 1..=rounds {
        let s = event(&sandbox, &shared, &executor).await;
        let p = event(&sandbox, &sidecars, &executor).await;
        println!(
            "round {round}: one shared service {:>7.0} ms   a sidecar per job {:>7.0} ms",
            millis(s),
            millis(p)
        );
        shared_times.push(s);
        sidecar_times.push(p);
    }
    let (s, p) = (mean(&shared_times), mean(&sidecar_times));
    println!();
    println!("one shared service   mean {:>7.0} ms per event", millis(s));
    println!("a sidecar per job    mean {:>7.0} ms per event", millis(p));
    println!(
        "ratio (sidecars / shared)   {:.2}",
        p.as_secs_f64() / s.as_secs_f64()
    );
}

/// Runs one event of `script`; returns its wall time.
async fn event(
    sandbox: &Sandbox,
    script: &Arc<CompiledScript>,
    executor: &Arc<DockerExecutor>,
) -> Duration {
    let id = uuid::Uuid::new_v4().to_string();
    let event = Event::new(&id, "bench", "brigade.sh/cli", "exec");
    let context = Arc::new(EventContext {
        event_id: id,
        project_id: "bench".into(),
        use_workspace: false,
        source: None,
        policies: Default::default(),
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
                    event: context.clone(),
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

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
