//! `Job.concurrent` really runs its jobs at the same time. Alone in its test
//! binary, so that no other test loads the machine while it measures.

#[path = "jobs/util.rs"]
#[allow(
    dead_code,
    reason = "shared with the jobs test binary, which uses all of it"
)]
mod util;

use std::time::{Duration, Instant};

use util::{Project, run_js};

#[tokio::test]
async fn three_two_second_jobs_run_concurrently_in_about_two_seconds() {
    // Warm the engine up (image, pod helper, first container) so that the
    // measurement is of the jobs.
    run_js(
        r#"const { Job } = require("@brigadecore/brigadier");
        new Job("warm-up", "localhost/busybox", {}).run();"#,
        Project::default(),
    )
    .await;
    let started = Instant::now();
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const sleeper = (name) => {
            const job = new Job(name, "localhost/busybox", event);
            job.primaryContainer.command = ["sh", "-c", "sleep 2; echo done"];
            return job;
          };
          await Job.concurrent(sleeper("one"), sleeper("two"), sleeper("three")).run();
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    let elapsed = started.elapsed();
    run.assert_succeeded();
    let mut lines = run.job_lines();
    lines.sort();
    assert_eq!(lines, ["[one] done", "[three] done", "[two] done"]);
    // Run one after another they would take at least 6 s.
    assert!(
        elapsed < Duration::from_millis(4500),
        "three 2 s jobs took {elapsed:?}"
    );
}
