//! How jobs run and end, as Brigade's scripts expect.

use std::collections::{BTreeMap, BTreeSet};

use crate::util::{Project, run_js};

#[tokio::test]
async fn a_job_runs_its_command_and_logs_returns_the_primarys_lines() {
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const job = new Job("greet", "localhost/busybox", event);
          job.primaryContainer.command = ["sh", "-c"];
          job.primaryContainer.arguments = ["echo first; echo second; echo to stderr >&2"];
          await job.run();
          return JSON.stringify((await job.logs()).split("\n").sort());
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    // Both streams are kept; the engine keeps no order between them.
    assert_eq!(
        run.outcome.summary.as_deref(),
        Some(r#"["first","second","to stderr"]"#)
    );
    let mut lines = run.job_lines();
    lines.sort();
    assert_eq!(
        lines,
        ["[greet] first", "[greet] second", "[greet] to stderr"]
    );
    assert!(
        run.worker_lines()
            .contains(&"Creating job greet".to_string())
    );
}

#[tokio::test]
async fn environment_variables_reach_the_container() {
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const job = new Job("env", "localhost/busybox", event);
          job.primaryContainer.environment = { GREETING: "hello from the script", EMPTY: "" };
          job.primaryContainer.command = ["sh", "-c", "echo \"$GREETING|${EMPTY-unset}|$(id -u)\""];
          await job.run();
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    // Run as nobody, as every container is unless it names a user.
    assert_eq!(run.job_lines(), ["[env] hello from the script||65534"]);
}

#[tokio::test]
async fn a_secret_the_script_may_not_read_reaches_its_job_only_by_reference() {
    let project = Project {
        secrets: BTreeMap::from([
            ("visible".to_string(), "shown-value".to_string()),
            ("hidden".to_string(), "hidden-value-4711".to_string()),
        ]),
        script_secrets: Some(BTreeSet::from(["visible".to_string()])),
        use_workspace: true,
        ..Project::default()
    };
    let run = run_js(
        r#"const { events, Job, workspace } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          console.log(`script sees: ${JSON.stringify(event.project)}`);
          const job = new Job("by-reference", "localhost/busybox", event);
          job.primaryContainer.environment = {
            TOKEN: "${{ secrets.hidden }}",
            SHOWN: event.project.secrets.visible,
          };
          job.primaryContainer.workspaceMountPath = "/workspace";
          job.primaryContainer.command = ["sh", "-c",
            "echo \"$TOKEN\" | rev; echo \"$TOKEN|$SHOWN\"; echo \"token=$TOKEN\" > /workspace/leak.txt"];
          await job.run();
          console.log(`script reads back: ${(await job.logs()).replace("\n", " / ")}`);
          console.log(`script reads the workspace: ${workspace.readFile("leak.txt").trim()}`);
          const missing = new Job("missing", "localhost/busybox", event);
          missing.primaryContainer.environment = { KEY: "${{ secrets.nonesuch }}" };
          await missing.run().catch(e => console.log(`refused: ${e.message}`));
        });
        events.process();"#,
        project,
    )
    .await;
    run.assert_succeeded();
    let worker = run.worker_lines().join("\n");
    // The script's event holds the secret it may read, and nothing of the
    // other: neither its value nor its name nor the list.
    assert!(
        worker.contains(r#"script sees: {"id":"test-project","kubernetes":{"namespace":""},"secrets":{"visible":"shown-value"}}"#),
        "{worker}"
    );
    // The job had the value (it printed it reversed, which no redaction
    // can catch: a job the script designs can transform what it is given).
    assert!(
        run.job_lines()
            .contains(&"[by-reference] 1174-eulav-neddih".to_string()),
        "{:?}",
        run.job_lines()
    );
    // What the job printed as it is, the script reads back masked.
    assert!(
        worker.contains("script reads back: 1174-eulav-neddih / ***|shown-value"),
        "{worker}"
    );
    // And what the job wrote into the workspace.
    assert!(
        worker.contains("script reads the workspace: token=***"),
        "{worker}"
    );
    assert!(
        worker.contains(r#"refused: Error creating job "missing": job "missing": container "missing": environment variable KEY refers to secret "nonesuch", which project "test-project" does not have"#),
        "{worker}"
    );
}

#[tokio::test]
async fn hidden_secrets_are_masked_once_in_what_the_script_reads_back() {
    // Masked value by value, "*" made "***", in which "**" was found again:
    // each such secret multiplied the line (the redactor's fuzz finding).
    let project = Project {
        secrets: BTreeMap::from([
            ("one".to_string(), "*".to_string()),
            ("two".to_string(), "**".to_string()),
        ]),
        script_secrets: Some(BTreeSet::new()),
        ..Project::default()
    };
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const job = new Job("stars", "localhost/busybox", event);
          job.primaryContainer.command = ["echo", "a*b**c"];
          await job.run();
          console.log(`script reads back: ${(await job.logs()).trim()}`);
        });
        events.process();"#,
        project,
    )
    .await;
    run.assert_succeeded();
    let worker = run.worker_lines().join("\n");
    assert!(worker.contains("script reads back: a***b***c"), "{worker}");
}

#[tokio::test]
async fn a_failing_job_rejects_with_brigades_message_and_fails_the_worker() {
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const job = new Job("job-fails", "localhost/busybox", event);
          job.primaryContainer.command = ["sh", "-c", "echo Goodbye World; exit 3"];
          await job.run();
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_failed_with(r#"Error: Job "job-fails" failed"#);
    assert_eq!(run.job_lines(), ["[job-fails] Goodbye World"]);
    run.assert_logged("job job-fails ended FAILED (exit code 3)");
}

#[tokio::test]
async fn a_failure_the_script_catches_leaves_the_worker_succeeded() {
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const job = new Job("will-fail", "localhost/busybox", event);
          job.primaryContainer.command = ["false"];
          try { await job.run(); } catch (e) { return "caught: " + e.message + " (exit code " + e.exitCode + ")"; }
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    assert_eq!(
        run.outcome.summary.as_deref(),
        Some(r#"caught: Job "will-fail" failed (exit code 1)"#)
    );
}

#[tokio::test]
async fn a_sequence_stops_at_its_first_failure() {
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const step = (name, command) => {
            const job = new Job(name, "localhost/busybox", event);
            job.primaryContainer.command = ["sh", "-c", command];
            return job;
          };
          await Job.sequence(step("one", "echo one"), step("two", "echo two; exit 1"), step("three", "echo three")).run();
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_failed_with(r#"Job "two" failed"#);
    assert_eq!(run.job_lines(), ["[one] one", "[two] two"]);
    assert!(
        !run.worker_lines()
            .iter()
            .any(|l| l.contains("Creating job three"))
    );
}

#[tokio::test]
async fn a_fallible_job_resolves_even_when_it_fails() {
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const fails = new Job("fallible-fails", "localhost/busybox", event);
          fails.primaryContainer.command = ["false"];
          fails.fallible = true;
          await fails.run();
          const passes = new Job("then-passes", "localhost/busybox", event);
          passes.primaryContainer.command = ["true"];
          await passes.run();
          return "both ran";
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.outcome.summary.as_deref(), Some("both ran"));
    run.assert_logged("job fallible-fails ended FAILED (exit code 1)");
}

#[tokio::test]
async fn a_job_that_runs_past_its_timeout_times_out_and_fails_the_worker() {
    let started = std::time::Instant::now();
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const job = new Job("job-times-out", "localhost/busybox", event);
          job.primaryContainer.command = ["sleep", "60"];
          job.timeoutSeconds = 2;
          await job.run();
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_failed_with(r#"Job "job-times-out" timed out"#);
    run.assert_logged(
        "job job-times-out ended TIMED_OUT: the job ran longer than its timeout of 2s",
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn jobs_still_running_when_the_worker_ends_are_stopped() {
    // A pending job.run() keeps the worker alive, as it kept Node's; a worker
    // that ends anyway (here by process.exit) stops the jobs it leaves.
    let started = std::time::Instant::now();
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const job = new Job("left-running", "localhost/busybox", event);
          job.primaryContainer.command = ["sleep", "600"];
          job.run();
          await new Promise((resolve) => setTimeout(resolve, 1500));
          process.exit(0);
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    // run_js checks that no container of the event is left.
}

#[tokio::test]
async fn a_subclassed_job_runs() {
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        class EchoJob extends Job {
          constructor(name, text, event) {
            super(name, "localhost/busybox", event);
            this.primaryContainer.command = ["echo"];
            this.primaryContainer.arguments = [text];
          }
        }
        events.on("brigade.sh/cli", "exec", async (event) => {
          await new EchoJob("subclassed", "from a subclass", event).run();
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.job_lines(), ["[subclassed] from a subclass"]);
}
