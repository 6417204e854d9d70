//! The event's shared workspace and the project's source, mounted where jobs
//! ask for them.

use mizzen_host_api::types::GitConfig;
use mizzen_runtime::executor::Source;

use crate::util::{Project, git, run_js};

#[tokio::test]
async fn the_workspace_is_shared_by_the_events_jobs() {
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const write = new Job("writer", "localhost/busybox", event);
          write.primaryContainer.workspaceMountPath = "/share";
          write.primaryContainer.command = ["sh", "-c", "echo 'Hello!' > /share/message"];
          await write.run();
          const read = new Job("reader", "localhost/busybox", event);
          read.primaryContainer.workspaceMountPath = "/elsewhere";
          read.primaryContainer.command = ["cat", "/elsewhere/message"];
          await read.run();
        });
        events.process();"#,
        Project {
            use_workspace: true,
            ..Project::default()
        },
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.job_lines(), ["[reader] Hello!"]);
}

#[tokio::test]
async fn the_script_shares_the_workspace_with_its_jobs_and_reaches_nothing_outside_it() {
    let run = run_js(
        r#"const { events, Job, workspace } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          workspace.writeFile("in/greeting.txt", "hello from the script");
          const job = new Job("worker", "localhost/busybox", event);
          job.primaryContainer.workspaceMountPath = "/workspace";
          job.primaryContainer.command = ["sh", "-c",
            "cat /workspace/in/greeting.txt; echo; echo 'from the job' > /workspace/out.txt;" +
            " ln -s /etc /workspace/etc-link; ln -s /etc/hostname /workspace/host-file"];
          await job.run();
          console.log(`job wrote: ${workspace.readFile("out.txt").trim()}`);
          console.log(`listing: ${workspace.list().map(e => e.name + (e.directory ? "/" : "")).join(" ")}`);
          for (const path of ["../escape", "/etc/passwd", "etc-link/passwd", "host-file", "nothing-here"]) {
            try {
              workspace.readFile(path);
              console.log(`read ${path}!`);
            } catch (e) {
              console.log(`refused ${path}: ${e.code}`);
            }
          }
          workspace.remove("in");
          console.log(`after remove: ${workspace.list().map(e => e.name).join(" ")}`);
        });
        events.process();"#,
        Project {
            use_workspace: true,
            ..Project::default()
        },
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.job_lines(), ["[worker] hello from the script"]);
    assert_eq!(
        run.worker_lines(),
        [
            "Creating job worker",
            "job wrote: from the job",
            "listing: etc-link host-file in/ out.txt",
            "refused ../escape: invalid_request",
            "refused /etc/passwd: invalid_request",
            "refused etc-link/passwd: permission_denied",
            "refused host-file: permission_denied",
            "refused nothing-here: not_found",
            "after remove: etc-link host-file out.txt",
        ]
    );
}

#[tokio::test]
async fn a_project_without_a_workspace_says_how_to_get_one() {
    let run = run_js(
        r#"const { events, workspace } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async () => {
          workspace.writeFile("x", "y");
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_failed_with(
        "project \"test-project\" has no workspace (set spec.workerTemplate.useWorkspace: true)",
    );
}

#[tokio::test]
async fn the_source_is_checked_out_at_the_projects_commit() {
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "--quiet", "--initial-branch=main"]);
    std::fs::write(repo.path().join("VERSION"), "first\n").unwrap();
    git(repo.path(), &["add", "VERSION"]);
    git(repo.path(), &["commit", "--quiet", "-m", "first"]);
    let first = git(repo.path(), &["rev-parse", "HEAD"]);
    std::fs::write(repo.path().join("VERSION"), "second\n").unwrap();
    git(repo.path(), &["commit", "--quiet", "-am", "second"]);
    let source = |commit: &str| {
        Source::Git(GitConfig {
            clone_url: format!("file://{}", repo.path().display()),
            commit: commit.into(),
            git_ref: "main".into(),
            init_submodules: false,
        })
    };
    let script = r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const job = new Job("read-source", "localhost/busybox", event);
          job.primaryContainer.sourceMountPath = "/src";
          job.primaryContainer.workingDirectory = "/src";
          job.primaryContainer.command = ["cat", "VERSION"];
          await job.run();
        });
        events.process();"#;
    let pinned = run_js(
        script,
        Project {
            source: Some(source(&first)),
            ..Project::default()
        },
    )
    .await;
    pinned.assert_succeeded();
    assert_eq!(pinned.job_lines(), ["[read-source] first"]);
    let branch = run_js(
        script,
        Project {
            source: Some(source("")),
            ..Project::default()
        },
    )
    .await;
    assert_eq!(branch.job_lines(), ["[read-source] second"]);
}

#[tokio::test]
async fn a_failed_checkout_fails_the_job_with_gits_message() {
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "--quiet", "--initial-branch=main"]);
    git(
        repo.path(),
        &["commit", "--quiet", "--allow-empty", "-m", "empty"],
    );
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const job = new Job("no-such-ref", "localhost/busybox", event);
          job.primaryContainer.sourceMountPath = "/src";
          job.primaryContainer.command = ["true"];
          await job.run();
        });
        events.process();"#,
        Project {
            source: Some(Source::Git(GitConfig {
                clone_url: format!("file://{}", repo.path().display()),
                commit: String::new(),
                git_ref: "non-existent".into(),
                init_submodules: false,
            })),
            ..Project::default()
        },
    )
    .await;
    run.assert_failed_with(r#"Job "no-such-ref" failed"#);
    run.assert_logged("checking out the project's source failed: git fetch of non-existent");
    run.assert_logged("couldn't find remote ref non-existent");
}

#[tokio::test]
async fn a_local_project_directory_stands_for_the_repository() {
    let project = tempfile::tempdir().unwrap();
    std::fs::write(project.path().join("README.md"), "local project\n").unwrap();
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const job = new Job("read-readme", "localhost/busybox", event);
          job.primaryContainer.sourceMountPath = "/var/vcs";
          job.primaryContainer.command = ["sh", "-c", "cat /var/vcs/README.md; echo scratch > /var/vcs/written-by-job"];
          await job.run();
        });
        events.process();"#,
        Project {
            source: Some(Source::Directory(project.path().to_path_buf())),
            ..Project::default()
        },
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.job_lines(), ["[read-readme] local project"]);
    assert!(
        !project.path().join("written-by-job").exists(),
        "jobs get a copy, never the project directory itself"
    );
}
