//! Jobs that break a rule: each fails with a message naming the job, the
//! container and the rule, and nothing is left running.

use mizzen_runtime::project::JobPolicies;

use crate::util::{Project, run_js};

/// Runs `new Job(...)` set up by `setup` and returns what `run()` rejected with.
async fn rejection(setup: &str, project: Project) -> String {
    let script = format!(
        r#"const {{ events, Job, Container }} = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {{
          {setup}
          try {{ await job.run(); }} catch (e) {{ return e.message; }}
          return "no error";
        }});
        events.process();"#
    );
    let run = run_js(&script, project).await;
    run.assert_succeeded();
    run.outcome.summary.clone().unwrap_or_default()
}

#[tokio::test]
async fn invalid_job_names_are_refused() {
    for name in [
        "Build",
        "a",
        "under_score",
        "-dash",
        "x".repeat(64).as_str(),
    ] {
        let message = rejection(
            &format!(r#"const job = new Job("{name}", "localhost/busybox", event);"#),
            Project::default(),
        )
        .await;
        assert!(
            message.contains("must match ^[a-z][a-z\\d-]*[a-z\\d]$"),
            "{name}: {message}"
        );
    }
}

#[tokio::test]
async fn a_job_name_is_used_once_per_event() {
    let message = rejection(
        r#"const first = new Job("same-name", "localhost/busybox", event);
        first.primaryContainer.command = ["true"];
        await first.run();
        const job = new Job("same-name", "localhost/busybox", event);"#,
        Project::default(),
    )
    .await;
    assert_eq!(
        message,
        r#"Error creating job "same-name": a job or service named "same-name" already exists in this event (names are unique within an event, and each runs once)"#
    );
}

#[tokio::test]
async fn an_unknown_image_fails_the_job_with_the_engines_reason() {
    let run = run_js(
        r#"const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          await new Job("no-image", "localhost/this-image-does-not-exist:v0", event).run();
        });
        events.process();"#,
        Project::default(),
    )
    .await;
    run.assert_failed_with(r#"Job "no-image" failed"#);
    run.assert_logged("job no-image ended FAILED: image \"localhost/this-image-does-not-exist:v0\" could not be pulled:");
}

#[tokio::test]
async fn privileged_containers_need_the_projects_policy() {
    let setup = r#"const job = new Job("dind", "localhost/busybox", event);
        job.primaryContainer.privileged = true;
        job.primaryContainer.command = ["true"];"#;
    let message = rejection(setup, Project::default()).await;
    assert!(
        message.starts_with(
            r#"Error creating job "dind": job "dind": primaryContainer: is privileged"#
        ),
        "{message}"
    );
    assert!(message.contains("jobPolicies.allowPrivileged"), "{message}");
    let allowed = Project {
        policies: JobPolicies {
            allow_privileged: true,
            ..JobPolicies::default()
        },
        ..Project::default()
    };
    assert_eq!(rejection(setup, allowed).await, "no error");
}

#[tokio::test]
async fn the_host_docker_socket_needs_the_projects_policy() {
    let message = rejection(
        r#"const job = new Job("dood", "localhost/busybox", event);
        job.sidecarContainers = { helper: new Container("localhost/busybox") };
        job.sidecarContainers.helper.useHostDockerSocket = true;"#,
        Project::default(),
    )
    .await;
    assert!(
        message.contains(r#"sidecar "helper": mounts the host's Docker socket"#),
        "{message}"
    );
    assert!(
        message.contains("jobPolicies.allowDockerSocketMount"),
        "{message}"
    );
}

#[tokio::test]
async fn the_workspace_needs_the_projects_setting() {
    let message = rejection(
        r#"const job = new Job("wants-workspace", "localhost/busybox", event);
        job.primaryContainer.workspaceMountPath = "/share";"#,
        Project::default(),
    )
    .await;
    assert!(
        message.contains("spec.workerTemplate.useWorkspace: true"),
        "{message}"
    );
}

#[tokio::test]
async fn mount_paths_must_be_absolute_and_free_of_dot_dot() {
    let workspace = Project {
        use_workspace: true,
        ..Project::default()
    };
    for (path, rule) in [
        ("share", "must be an absolute path"),
        ("/share/../etc", "must not contain '..'"),
    ] {
        let message = rejection(
            &format!(
                r#"const job = new Job("bad-path", "localhost/busybox", event);
                job.primaryContainer.workspaceMountPath = "{path}";"#
            ),
            workspace.clone(),
        )
        .await;
        assert!(
            message.contains(&format!("workspaceMountPath \"{path}\" {rule}")),
            "{message}"
        );
    }
}

#[tokio::test]
async fn unknown_container_properties_are_named() {
    let message = rejection(
        r#"const job = new Job("typo", "localhost/busybox", event);
        job.primaryContainer.env = { A: "b" };"#,
        Project::default(),
    )
    .await;
    assert!(
        message.starts_with(
            r#"Error creating job "typo": job "typo": primaryContainer: unknown field `env`"#
        ),
        "{message}"
    );
}

#[tokio::test]
async fn malformed_images_are_refused_before_the_engine_sees_them() {
    let message = rejection(
        r#"const job = new Job("bad-image", "--privileged alpine", event);"#,
        Project::default(),
    )
    .await;
    assert!(
        message.contains("image \"--privileged alpine\" is not an image reference"),
        "{message}"
    );
}

#[tokio::test]
async fn windows_jobs_are_refused_by_a_linux_engine() {
    let message = rejection(
        r#"const job = new Job("windows", "mcr.microsoft.com/windows/nanoserver:1809", event);
        job.host = { os: "windows" };"#,
        Project::default(),
    )
    .await;
    assert!(
        message.contains("asks for a Windows host; this executor runs Linux containers"),
        "{message}"
    );
}
