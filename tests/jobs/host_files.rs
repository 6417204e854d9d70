//! What a job's files can do to the host that keeps them: nothing beyond
//! their event's workspace size, and nothing to another user of the host.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mizzen_docker::{DockerConfig, DockerExecutor};
use mizzen_runtime::executor::{EventContext, JobExecutor};

use crate::util::{Project, data_dir, executor, run_js};

#[tokio::test]
async fn a_set_user_id_file_a_job_plants_is_private_and_loses_its_bit() {
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const plant = new Job("plant", "localhost/busybox", event);
          plant.primaryContainer.workspaceMountPath = "/workspace";
          plant.primaryContainer.command = ["sh", "-c",
            "cp /bin/busybox /workspace/rootshell && chmod 4755 /workspace/rootshell && stat -c %a /workspace/rootshell;" +
            " mknod /workspace/null c 1 3 || echo no device files"];
          await plant.run();
          // The executor's watcher looks at the files at least every second.
          await new Promise((resolve) => setTimeout(resolve, 2500));
          const look = new Job("look", "localhost/busybox", event);
          look.primaryContainer.workspaceMountPath = "/workspace";
          look.primaryContainer.command = ["sh", "-c", "stat -c %a /workspace/rootshell"];
          await look.run();
        });
        events.process();"#,
        Project {
            use_workspace: true,
            ..Project::default()
        },
    )
    .await;
    run.assert_succeeded();
    let lines = run.job_lines();
    for expected in ["[plant] 4755", "[plant] no device files", "[look] 755"] {
        assert!(
            lines.iter().any(|l| l == expected),
            "{expected:?} missing from {lines:?}"
        );
    }
    // Whatever a job makes, no other user of the host can reach it.
    executor().await;
    let work = std::fs::metadata(data_dir().join("work")).unwrap();
    assert_eq!(work.permissions().mode() & 0o777, 0o700);
}

#[tokio::test]
async fn a_job_that_fills_its_workspace_past_its_size_fails_and_so_do_later_ones() {
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const fill = new Job("fill", "localhost/busybox", event);
          fill.primaryContainer.workspaceMountPath = "/workspace";
          fill.primaryContainer.command = ["sh", "-c",
            "dd if=/dev/zero of=/workspace/big bs=1M count=64 2>/dev/null; sleep 30; echo survived"];
          fill.fallible = true;
          await fill.run();
          const later = new Job("later", "localhost/busybox", event);
          later.primaryContainer.command = ["echo", "ran"];
          later.fallible = true;
          await later.run();
        });
        events.process();"#,
        Project {
            use_workspace: true,
            workspace_size: Some("16Mi".into()),
            ..Project::default()
        },
    )
    .await;
    run.assert_succeeded();
    let messages = run.messages();
    let said = |job: &str| {
        messages.iter().any(|m| {
            m.starts_with(&format!(
                "job {job} ended FAILED: the event's workspace and source checkouts hold 64."
            )) && m.ends_with("more than its limit of 16.0 MiB (spec.workerTemplate.workspaceSize)")
        })
    };
    assert!(said("fill") && said("later"), "{}", run.log.text());
    assert!(
        !run.job_lines()
            .iter()
            .any(|l| l.contains("survived") || l.contains("ran"))
    );
}

/// An executor of its own over `data_dir`; it sweeps as it starts.
async fn executor_over(data_dir: &std::path::Path) -> DockerExecutor {
    let engine = executor().await.engine().clone();
    DockerExecutor::with_engine(
        engine,
        DockerConfig {
            data_dir: data_dir.to_path_buf(),
            storage: None,
        },
    )
    .await
}

fn event(id: &str) -> EventContext {
    EventContext {
        use_workspace: true,
        ..mizzen_tests::worker::context(id, "sweep-race")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_never_takes_a_live_events_directory() {
    // A second `mizzen run` on the same data directory sweeps as its
    // executor starts; it used to remove a directory whose owner file the
    // first had not written yet (1 run in 30 failed).
    let data = tempfile::tempdir().unwrap();
    let creator = Arc::new(executor_over(data.path()).await);
    let sweeping = Arc::new(AtomicBool::new(true));
    let sweeper = {
        let (data, sweeping) = (data.path().to_path_buf(), sweeping.clone());
        tokio::spawn(async move {
            let mut sweeps = 0;
            while sweeping.load(Ordering::SeqCst) {
                executor_over(&data).await;
                sweeps += 1;
            }
            sweeps
        })
    };
    let mut created = Vec::new();
    for i in 0..300 {
        let event = event(&format!("live-{i}"));
        let workspace = creator
            .workspace_dir(&event)
            .await
            .unwrap_or_else(|e| panic!("event {i}: {e}"));
        created.push((event, workspace));
        tokio::task::yield_now().await;
    }
    sweeping.store(false, Ordering::SeqCst);
    let sweeps = sweeper.await.unwrap();
    assert!(sweeps > 0);
    for (event, workspace) in &created {
        assert!(workspace.is_dir(), "{} was swept away", event.event_id);
        creator.finish_event(event).await;
    }
    creator.cleaned_up().await;
    let left: Vec<_> = std::fs::read_dir(data.path().join("work"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn an_events_end_does_not_wait_for_its_files_to_be_deleted() {
    let data = tempfile::tempdir().unwrap();
    let executor = executor_over(data.path()).await;
    let event = event("many-files");
    let workspace = executor.workspace_dir(&event).await.unwrap();
    for i in 0..5000 {
        std::fs::write(workspace.join(i.to_string()), "x").unwrap();
    }
    executor.finish_event(&event).await;
    // Gone from where jobs and sweeps look at once; deleted in the
    // background, which the process waits for before it exits.
    assert!(!data.path().join("work/many-files").exists());
    executor.cleaned_up().await;
    let left: Vec<_> = std::fs::read_dir(data.path().join("work"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn directories_left_by_a_process_that_died_are_swept() {
    let data = tempfile::tempdir().unwrap();
    let work = data.path().join("work");
    // A dead owner's directory, one half deleted when its owner died, and
    // one whose owner died before it wrote the owner file.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let dead = format!("{}:999999999:1", host.trim());
    for (dir, owner) in [
        ("dead", Some(&dead)),
        (".trash-dead", Some(&dead)),
        ("ownerless", None),
    ] {
        std::fs::create_dir_all(work.join(dir).join("workspace")).unwrap();
        if let Some(owner) = owner {
            std::fs::write(work.join(dir).join("owner"), owner).unwrap();
        }
    }
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::open(work.join("ownerless"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let executor = executor_over(data.path()).await;
    executor.cleaned_up().await;
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
