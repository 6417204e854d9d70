//! Volumes on the real engine: anonymous ones fresh for each container,
//! an event's named ones shared by its jobs and services and gone when it
//! ends, a project's kept between events and measured against their sizes
//! and quota, host paths only where the project's policy and the server
//! allow them — and deleting a project volume while jobs start on it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use mizzen_runtime::executor::{ExecutorError, JobExecutor};
use mizzen_runtime::volume::{EventVolumes, HostPaths};

use crate::util::{Project, executor, run_js, uuid, volumes_labelled};

/// A script whose handler runs `body`, with `job(name, command, volumes)`
/// making a busybox job and `service(name, command, volumes)` a busybox
/// service.
fn script(body: &str) -> String {
    format!(
        r#"const {{ events, Job, Service }} = require("@brigadecore/brigadier");
        function job(name, command, volumes) {{
          const job = new Job(name, "localhost/busybox", event);
          job.primaryContainer.command = ["sh", "-c", command];
          job.primaryContainer.volumes = volumes;
          return job;
        }}
        function service(name, command, volumes) {{
          const service = new Service(name, "localhost/busybox");
          service.command = ["sh", "-c", command];
          service.volumes = volumes;
          return service;
        }}
        let event;
        events.on("brigade.sh/cli", "exec", async (e) => {{
          event = e;
          {body}
        }});
        events.process();"#
    )
}

/// A project of its own (project volumes are per project) declaring
/// `volumes` (name, bytes).
fn project_with(volumes: &[(&str, u64)]) -> Project {
    Project {
        id: format!("volumes-{}", &uuid()[..8]),
        volumes: EventVolumes {
            project: volumes
                .iter()
                .map(|(name, size)| (name.to_string(), *size))
                .collect::<BTreeMap<_, _>>(),
            quota_bytes: 10 * 1024 * 1024 * 1024,
            host_paths: HostPaths::default(),
        },
        ..Project::default()
    }
}

#[tokio::test]
async fn anonymous_volumes_are_fresh_for_each_container_and_read_only_when_asked() {
    let run = run_js(
        &script(
            r#"await job("first", "echo one > /data/note && cat /data/note", ["/data"]).run();
          await job("second", "test -e /data/note && echo found || echo fresh", ["/data"]).run();
          await job("read-only", "touch /data/x 2>/dev/null && echo wrote || echo refused", ["/data:ro"]).run();"#,
        ),
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    assert_eq!(
        run.job_lines(),
        ["[first] one", "[second] fresh", "[read-only] refused"]
    );
}

#[tokio::test]
async fn a_named_volume_is_shared_by_the_events_jobs_and_services_and_ends_with_it() {
    let body = r#"const writer = service("writer", "echo from-the-service > /shared/note; sleep 600", ["shared:/shared"]);
          await writer.start();
          await job("reader", "cat /shared/note && echo from-a-job >> /shared/note", ["shared:/shared"]).run();
          await job("again", "cat /shared/note", ["shared:/shared:ro"]).run();
          await writer.stop();"#;
    let run = run_js(&script(body), Project::default()).await;
    run.assert_succeeded();
    assert_eq!(
        run.job_lines(),
        [
            "[reader] from-the-service",
            "[again] from-the-service",
            "[again] from-a-job"
        ]
    );
    // run_js checked that no volume of the event is left; another event
    // with the same name starts empty.
    let run = run_js(
        &script(r#"await job("other", "cat /shared/note 2>/dev/null || echo empty", ["shared:/shared"]).run();"#),
        Project::default(),
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.job_lines(), ["[other] empty"]);
}

#[tokio::test]
async fn other_events_ending_leave_this_events_volumes_alone() {
    // Event A writes to its volume, then waits between two jobs while other
    // events that use the same name end. Podman lists volumes with any of
    // several labels, and an event's clean-up that asked for two took every
    // event's volumes not in use at that moment: A's second job found a new,
    // empty one.
    let a = tokio::spawn(run_js_owned(
        script(
            r#"await job("write", "echo kept > /data/note", ["data:/data"]).run();
          await new Promise((resolve) => setTimeout(resolve, 6000));
          await job("read", "cat /data/note 2>/dev/null || echo lost", ["data:/data"]).run();"#,
        ),
        Project::default(),
    ));
    for _ in 0..4 {
        run_js(
            &script(r#"await job("other", "true", ["data:/data"]).run();"#),
            Project::default(),
        )
        .await
        .assert_succeeded();
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let a = a.await.unwrap();
    a.assert_succeeded();
    assert_eq!(a.job_lines(), ["[read] kept"]);
}

#[tokio::test]
async fn a_project_volume_is_kept_between_events_and_measured_against_its_size() {
    const MIB: u64 = 1024 * 1024;
    let project = project_with(&[("cache", MIB)]);
    let id = project.id.clone();
    let first = run_js(
        &script(r#"await job("fill", "echo kept > /cache/note", ["cache:/cache"]).run();"#),
        project.clone(),
    )
    .await;
    first.assert_succeeded();
    let second = run_js(
        &script(
            r#"await job("read", "cat /cache/note && head -c 2097152 /dev/zero > /cache/big", ["cache:/cache"]).run();"#,
        ),
        project.clone(),
    )
    .await;
    second.assert_succeeded();
    assert_eq!(second.job_lines(), ["[read] kept"]);

    let listed = executor()
        .await
        .project_volumes(&id, 10 * MIB)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].name, "cache");
    assert!(
        listed[0].used_bytes.is_some_and(|used| used > 2 * MIB),
        "{listed:?}"
    );

    // Over its size: the next job that mounts it is refused, by name.
    let third = run_js(
        &script(r#"await job("over", "true", ["cache:/cache"]).run();"#),
        project.clone(),
    )
    .await;
    third.assert_logged("the project's volume \"cache\" holds more than its size of 1.0 MiB");

    executor()
        .await
        .delete_project_volume(&id, "cache")
        .await
        .unwrap();
    let fourth = run_js(
        &script(r#"await job("after", "ls /cache | wc -l", ["cache:/cache"]).run();"#),
        project.clone(),
    )
    .await;
    fourth.assert_succeeded();
    assert_eq!(fourth.job_lines(), ["[after] 0"]);
    executor()
        .await
        .delete_project_volume(&id, "cache")
        .await
        .unwrap();
    assert!(matches!(
        executor().await.delete_project_volume(&id, "cache").await,
        Err(ExecutorError::NotFound(_))
    ));
    assert_eq!(
        volumes_labelled(&format!("sh.mizzen.project={id}")).await,
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn project_volumes_over_the_quota_are_refused_by_name() {
    let mut project = project_with(&[("big", 8 * 1024 * 1024), ("small", 1024 * 1024)]);
    project.volumes.quota_bytes = 4 * 1024 * 1024;
    let run = run_js(
        &script(r#"await job("one", "true", ["big:/big"]).run();"#),
        project.clone(),
    )
    .await;
    run.assert_failed_with(
        "job \"one\": primaryContainer: volume \"big:/big\" is one of the project's volumes, whose sizes add up to 9 MiB, over the project's volume quota of 4 MiB",
    );
    // An event's own volumes are not the project's and need no quota.
    let run = run_js(
        &script(r#"await job("two", "true", ["scratch:/scratch"]).run();"#),
        project,
    )
    .await;
    run.assert_succeeded();
}

#[tokio::test]
async fn host_paths_are_bound_only_under_the_allowed_paths_and_where_they_lead() {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("host-paths-{}", uuid()));
    let allowed = root.join("allowed");
    let outside = root.join("outside");
    for dir in [&allowed, &outside] {
        std::fs::create_dir_all(dir).unwrap();
        // The job runs as nobody.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("escape")).unwrap();
    let under = |paths: HostPaths| Project {
        volumes: EventVolumes {
            host_paths: paths,
            ..EventVolumes::default()
        },
        ..Project::default()
    };
    let bind = |host: &std::path::Path| {
        script(&format!(
            r#"await job("bind", "echo from-the-job > /host/note", ["{}:/host"]).run();"#,
            host.display()
        ))
    };

    let run = run_js(
        &bind(&allowed),
        under(HostPaths::Under(vec![allowed.clone()])),
    )
    .await;
    run.assert_succeeded();
    assert_eq!(
        std::fs::read_to_string(allowed.join("note")).unwrap(),
        "from-the-job\n"
    );

    let run = run_js(
        &bind(&outside),
        under(HostPaths::Under(vec![allowed.clone()])),
    )
    .await;
    run.assert_failed_with(
        "which is under none of the project's spec.workerTemplate.jobPolicies.allowedHostPaths",
    );
    let run = run_js(&bind(&outside), Project::default()).await;
    run.assert_failed_with("which is under none of the project's");
    let run = run_js(&bind(&allowed), under(HostPaths::Forbidden)).await;
    run.assert_failed_with(
        "binds a host path, which this server forbids (mizzen server --forbid-host-paths)",
    );

    let run = run_js(
        &bind(&allowed.join("escape")),
        under(HostPaths::Under(vec![allowed.clone()])),
    )
    .await;
    run.assert_logged("leads, through a symbolic link, out of the project's spec.workerTemplate.jobPolicies.allowedHostPaths");
    assert!(!outside.join("note").exists());
    let run = run_js(
        &bind(&allowed.join("missing")),
        under(HostPaths::Under(vec![allowed.clone()])),
    )
    .await;
    run.assert_logged("does not exist on this host");
    std::fs::remove_dir_all(&root).unwrap();
}

#[tokio::test]
async fn deleting_a_project_volume_while_jobs_start_on_it_leaves_nothing_unlisted() {
    // Deletions race jobs that mount the volume: each is refused while a
    // container holds it, or takes it (a later job starts on an empty one);
    // whatever the interleaving, what is left is listed and deletable.
    let project = project_with(&[("raced", 1024 * 1024)]);
    let id = project.id.clone();
    let body = r#"for (let i = 0; i < 4; i++) {
            await job(`write-${i}`, "echo $HOSTNAME > /v/note; sleep 0.2", ["raced:/v"]).run();
          }"#;
    let running = tokio::spawn(run_js_owned(script(body), project));
    let mut outcomes = BTreeMap::new();
    while !running.is_finished() {
        let outcome = match executor().await.delete_project_volume(&id, "raced").await {
            Ok(()) => "deleted",
            Err(ExecutorError::InUse(message)) => {
                assert!(
                    message.contains("the volume \"raced\" is in use"),
                    "{message}"
                );
                "in use"
            }
            Err(ExecutorError::NotFound(_)) => "none",
            Err(e) => panic!("unexpected: {e}"),
        };
        *outcomes.entry(outcome).or_insert(0) += 1;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let run = running.await.unwrap();
    assert!(
        run.outcome.phase == mizzen_host_api::types::Phase::Succeeded,
        "{outcomes:?}\n{}",
        run.log.text()
    );
    let listed = executor().await.project_volumes(&id, 0).await.unwrap();
    for volume in &listed {
        executor()
            .await
            .delete_project_volume(&id, &volume.name)
            .await
            .unwrap();
    }
    assert!(
        executor()
            .await
            .project_volumes(&id, 0)
            .await
            .unwrap()
            .is_empty(),
        "{outcomes:?}"
    );
}

async fn run_js_owned(script: String, project: Project) -> crate::util::Run {
    run_js(&script, project).await
}
