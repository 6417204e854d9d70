//! Sidecars share the primary's network namespace, like a Kubernetes pod's
//! containers, and may declare when they are ready.

use std::time::{Duration, Instant};

use crate::util::{Project, run_js};

/// A busybox sidecar that answers every TCP connection on `port` with
/// `reply` (a persistent server), after waiting `delay` seconds.
fn server(port: u16, reply: &str, delay: u32) -> String {
    format!(
        r#"(() => {{ const c = new Container("localhost/busybox");
          c.command = ["sh", "-c", "sleep {delay}; exec nc -ll -p {port} -e echo {reply}"];
          return c; }})()"#
    )
}

#[tokio::test]
async fn a_sidecar_is_reachable_by_name_and_on_localhost() {
    let script = format!(
        r#"const {{ events, Job, Container }} = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {{
          const job = new Job("client", "localhost/busybox", event);
          job.sidecarContainers = {{ echoer: {} }};
          job.sidecarContainers.echoer.readiness = {{ tcpPort: 7000 }};
          job.primaryContainer.command = ["sh", "-c", "nc echoer 7000 </dev/null; nc localhost 7000 </dev/null; nc 127.0.0.1 7000 </dev/null"];
          await job.run();
        }});
        events.process();"#,
        server(7000, "pong", 0)
    );
    let run = run_js(&script, Project::default()).await;
    run.assert_succeeded();
    assert_eq!(
        run.job_lines(),
        ["[client] pong", "[client] pong", "[client] pong"]
    );
}

#[tokio::test]
async fn readiness_holds_the_primary_until_the_sidecar_accepts_connections() {
    // The sidecar listens only after 3 s; a primary started at once would
    // find nothing there and fail.
    let script = format!(
        r#"const {{ events, Job, Container }} = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {{
          const job = new Job("waits", "localhost/busybox", event);
          job.sidecarContainers = {{ db: {} }};
          job.sidecarContainers.db.readiness = {{ tcpPort: 5432, timeoutSeconds: 30 }};
          job.primaryContainer.command = ["sh", "-c", "nc db 5432 </dev/null || {{ echo nobody there; exit 1; }}"];
          await job.run();
        }});
        events.process();"#,
        server(5432, "ready", 3)
    );
    let started = Instant::now();
    let run = run_js(&script, Project::default()).await;
    run.assert_succeeded();
    assert_eq!(run.job_lines(), ["[waits] ready"]);
    assert!(started.elapsed() >= Duration::from_secs(3));
}

#[tokio::test]
async fn a_one_shot_sidecar_must_exit_zero_before_the_primary_starts() {
    let run = run_js(
        r#"const { events, Job, Container } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const setup = new Container("localhost/busybox");
          setup.command = ["sh", "-c", "sleep 1; echo prepared"];
          setup.readiness = { exited: true };
          const job = new Job("after-setup", "localhost/busybox", event);
          job.sidecarContainers = { setup };
          job.primaryContainer.command = ["echo", "primary ran"];
          await job.run();

          const broken = new Container("localhost/busybox");
          broken.command = ["sh", "-c", "exit 4"];
          broken.readiness = { exited: true };
          const second = new Job("setup-fails", "localhost/busybox", event);
          second.sidecarContainers = { setup: broken };
          second.primaryContainer.command = ["echo", "must not run"];
          try { await second.run(); } catch (e) { return e.message; }
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    assert_eq!(
        run.job_lines(),
        ["[after-setup/setup] prepared", "[after-setup] primary ran"]
    );
    assert_eq!(
        run.outcome.summary.as_deref(),
        Some(r#"Job "setup-fails" failed"#)
    );
    run.assert_logged("sidecar \"setup\" exited with code 4 before it was ready");
}

#[tokio::test]
async fn a_sidecar_that_never_becomes_ready_fails_the_job_after_its_wait() {
    let started = Instant::now();
    let run = run_js(
        r#"const { events, Job, Container } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const silent = new Container("localhost/busybox");
          silent.command = ["sleep", "600"];
          silent.readiness = { tcpPort: 6000, timeoutSeconds: 2 };
          const job = new Job("never-ready", "localhost/busybox", event);
          job.sidecarContainers = { silent };
          job.primaryContainer.command = ["echo", "must not run"];
          await job.run();
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_failed_with(r#"Job "never-ready" failed"#);
    run.assert_logged(
        "sidecar \"silent\" was not ready after 2s: nothing accepted connections on port 6000",
    );
    assert!(run.job_lines().is_empty(), "{:?}", run.job_lines());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sidecars_are_stopped_when_the_primary_exits() {
    let started = Instant::now();
    let run = run_js(
        r#"const { events, Job, Container } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const forever = new Container("localhost/busybox");
          forever.command = ["sh", "-c", "echo sidecar up; sleep 600"];
          const job = new Job("short-primary", "localhost/busybox", event);
          job.sidecarContainers = { forever };
          job.primaryContainer.command = ["sh", "-c", "sleep 1; echo primary done"];
          await job.run();
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    assert!(
        run.job_lines()
            .contains(&"[short-primary/forever] sidecar up".to_string()),
        "{:?}",
        run.job_lines()
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
}
