//! The limits a project may set (`spec.workerTemplate.limits`): each stops
//! only the worker that reaches it, with an error naming the limit.

use std::sync::Arc;

use async_trait::async_trait;
use mizzen_host_api::types::{JobResult, Phase};
use mizzen_runtime::executor::{
    EventContext, ExecutorError, JobExecutor, JobRequest, RunningJob, SpawnedJob,
};
use mizzen_runtime::jobs::JobCapability;
use mizzen_runtime::log::MemoryLog;
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{WorkerLimits, WorkerRequest};

use crate::util::{event, run, sandbox};

#[tokio::test]
async fn a_flood_of_short_lines_is_stopped_at_the_line_limit() {
    let limits = WorkerLimits {
        log_lines: 100,
        ..WorkerLimits::default()
    };
    let run = run(
        ScriptSource::new(
            "brigade.js",
            "for (let i = 0; i < 1000000; i++) console.log(\"\");\n",
        ),
        event(),
        limits,
    )
    .await;
    run.assert_failed_with("log limit of 100 lines exceeded (output truncated)");
    assert!(
        run.log.records().len() <= 102,
        "{} lines",
        run.log.records().len()
    );
    assert!(
        run.messages()
            .iter()
            .any(|m| m.contains("the worker's limit of 100 log lines was reached")),
        "the truncation is marked once"
    );
}

#[tokio::test]
async fn a_summary_longer_than_the_projects_limit_is_refused_by_name() {
    let limits = WorkerLimits {
        summary_chars: 10,
        ..WorkerLimits::default()
    };
    let script = r#"const { events } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async () => "a summary of more than ten characters");
events.process();
"#;
    let run = run(ScriptSource::new("brigade.js", script), event(), limits).await;
    run.assert_failed_with(
        "a summary of 37 characters exceeds the limit of 10 characters (spec.workerTemplate.limits.summaryLength)",
    );
}

/// Jobs that run until they are cancelled.
struct EndlessJobs;

#[async_trait]
impl JobExecutor for EndlessJobs {
    async fn start(&self, _: JobRequest) -> Result<Arc<dyn RunningJob>, ExecutorError> {
        Ok(SpawnedJob::spawn(|mut cancelled| async move {
            let _ = cancelled.wait_for(|c| *c).await;
            JobResult::ended(Phase::Aborted, None, "cancelled")
        }))
    }

    async fn finish_event(&self, _: &EventContext) {}
}

#[tokio::test]
async fn a_job_past_the_concurrent_limit_is_refused_by_name() {
    let script = r#"const { events, Job } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  const first = new Job("first", "busybox", event).run();
  new Job("second", "busybox", event).run();
  try {
    await new Job("third", "busybox", event).run();
  } catch (e) {
    console.log(`third: ${e.message}`);
  }
  // The first two never end by themselves.
  process.exit(0);
});
events.process();
"#;
    let event = event();
    let context = Arc::new(mizzen_tests::worker::context(&event.id, &event.project.id));
    let log = MemoryLog::new();
    let outcome = sandbox()
        .await
        .run(
            &ScriptSource::new("brigade.js", script),
            WorkerRequest {
                event,
                limits: WorkerLimits {
                    concurrent_jobs: 2,
                    ..WorkerLimits::default()
                },
                log: Arc::new(log.clone()),
                jobs: JobCapability::Executor {
                    executor: Arc::new(EndlessJobs),
                    event: context,
                },
            },
        )
        .await;
    // The worker exits once the third job is refused; the two running jobs
    // are stopped with it.
    assert_eq!(outcome.phase, Phase::Succeeded, "{outcome:?}");
    let messages = log.messages();
    assert!(
        messages.iter().any(|m| m
            .ends_with("job \"third\" was not started: 2 jobs and services of this worker are already running, its limit (spec.workerTemplate.limits.concurrentJobs)")),
        "{messages:#?}"
    );
    for job in ["first", "second"] {
        assert!(
            messages
                .iter()
                .any(|m| m.contains(&format!("job {job} ended ABORTED"))),
            "{messages:#?}"
        );
    }
}
