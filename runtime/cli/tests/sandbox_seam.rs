//! The seam between a server and its sandbox processes, read off the pipes:
//! what crosses them, and what never does.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use async_trait::async_trait;
use mizzen_host_api::types::{Event, JobResult, Phase};
use mizzen_runtime::executor::{
    EventContext, ExecutorError, JobExecutor, JobRequest, RunningJob, SpawnedJob,
};
use mizzen_runtime::log::MemoryLog;
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{JobCapability, WorkerLimits, WorkerRequest};
use mizzen_server::sandbox_pool::{SandboxCommand, SandboxPool, SandboxStage};

const VISIBLE: &str = "visible-value-8d2f61";
const HIDDEN: &str = "hidden-value-3c9e07a4";

/// Runs each job by printing its primary container's environment, one
/// `NAME=value` line each, as a container would.
struct PrintingExecutor;

#[async_trait]
impl JobExecutor for PrintingExecutor {
    async fn start(&self, job: JobRequest) -> Result<Arc<dyn RunningJob>, ExecutorError> {
        Ok(SpawnedJob::spawn(move |_| async move {
            for (name, value) in &job.spec.primary_container.environment {
                job.output.line(&job.name, &format!("{name}={value}"));
            }
            JobResult::ended(Phase::Succeeded, Some(0), "printed")
        }))
    }

    async fn finish_event(&self, _: &EventContext) {}
}

#[tokio::test]
async fn a_secret_the_script_may_not_read_never_reaches_a_sandbox_process() {
    let dir = tempfile::tempdir().unwrap();
    let (to, from) = (dir.path().join("to"), dir.path().join("from"));
    // A sandbox process whose every byte in and out is kept.
    let recording = dir.path().join("recording-sandbox");
    std::fs::write(
        &recording,
        format!(
            "#!/bin/sh\ntee {} | {} sandbox-shard | tee {}\n",
            to.display(),
            env!("CARGO_BIN_EXE_mizzen"),
            from.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&recording, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pool = SandboxPool::start(
        1,
        SandboxCommand {
            program: recording,
            args: Vec::new(),
        },
    )
    .await
    .expect("the recording sandbox process starts");

    let mut event = Event::new("seam-event", "seam", "brigade.sh/cli", "exec");
    event.project.secrets = BTreeMap::from([
        ("visible".to_string(), VISIBLE.to_string()),
        ("token".to_string(), HIDDEN.to_string()),
    ]);
    event.project.script_secrets = Some(BTreeSet::from(["visible".to_string()]));
    let script = ScriptSource::new(
        "brigade.js",
        r#"const { events, Job } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  console.log(`secrets: ${JSON.stringify(event.project.secrets)}`);
  const job = new Job("printer", "busybox", event);
  job.primaryContainer.environment = {
    TOKEN: "${{ secrets.token }}",
    VISIBLE: "${{ secrets.visible }}",
  };
  await job.run();
  console.log(`read back: ${await job.logs()}`);
});
events.process();
"#,
    );
    let log = MemoryLog::new();
    let outcome = pool
        .run(
            &script,
            WorkerRequest {
                event,
                limits: WorkerLimits::default(),
                log: Arc::new(log.clone()),
                jobs: JobCapability::Executor {
                    executor: Arc::new(PrintingExecutor),
                    event: Arc::new(mizzen_tests::worker::context("seam-event", "seam")),
                },
            },
        )
        .await;
    assert!(outcome.succeeded(), "{outcome:?}\n{}", log.text());
    // The job got the hidden secret, in the server.
    let text = log.text();
    assert!(
        text.contains(&format!("[job: printer] TOKEN={HIDDEN}")),
        "{text}"
    );
    assert!(text.contains("read back: TOKEN=***"), "{text}");
    drop(pool);
    let contains = |bytes: &[u8], needle: &str| {
        bytes
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    };
    // The `tee`s write on after the pool is gone; on a loaded machine the
    // last lines reach the files a little later.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !contains(&std::fs::read(&from).unwrap(), "read back")
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let crossed = [std::fs::read(&to).unwrap(), std::fs::read(&from).unwrap()];
    // The recording works: what the script may read went in, and its
    // lines came out.
    assert!(contains(&crossed[0], VISIBLE));
    assert!(contains(&crossed[1], "read back"));
    for (direction, bytes) in ["to", "from"].iter().zip(&crossed) {
        assert!(
            !contains(bytes, HIDDEN),
            "the hidden secret crossed the pipe {direction} the sandbox process"
        );
        assert!(
            !contains(bytes, "TOKEN=hidden"),
            "a container's line crossed the pipe {direction} the sandbox process"
        );
    }
}
