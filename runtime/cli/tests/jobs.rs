//! `mizzen run` with jobs on the machine's container engine (Podman in CI,
//! set up by scripts/setup-engine): the examples end to end, and what users
//! see when the engine is missing or a run is interrupted.

mod common;
use common::{Ran, repo};

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bollard::query_parameters::ListContainersOptionsBuilder;
use mizzen_runtime::executor::{ExecutorError, JobExecutor};

fn command(args: &[&str]) -> Command {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut command = Command::new(env!("CARGO_BIN_EXE_mizzen"));
    command
        .args(args)
        .current_dir(repo())
        .env("MIZZEN_CACHE_DIR", tmp.join("mizzen-cache"))
        .env("MIZZEN_DATA_DIR", tmp.join("mizzen-cli-data"));
    command
}

fn run(args: &[&str]) -> Ran {
    Ran::from(command(args).output().expect("mizzen runs"))
}

/// Containers on the engine labelled with a project.
fn containers_of_project(project: &str) -> Vec<String> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = mizzen_docker::engine::connect()
            .await
            .expect("an engine answers");
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("sh.mizzen.project={project}")],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        mizzen_docker::list_containers(&engine.docker, options)
            .await
            .unwrap()
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default())
            .collect()
    })
}

/// Events' volumes on the engine labelled with a project.
fn event_volumes_of_project(project: &str) -> Vec<String> {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let engine = mizzen_docker::engine::connect()
            .await
            .expect("an engine answers");
        // One label filter: Podman lists volumes with any of several.
        let filters = HashMap::from([(
            "label".to_string(),
            vec![format!("sh.mizzen.project={project}")],
        )]);
        let options = bollard::query_parameters::ListVolumesOptionsBuilder::default()
            .filters(&filters)
            .build();
        engine
            .docker
            .list_volumes(Some(options))
            .await
            .unwrap()
            .volumes
            .unwrap_or_default()
            .into_iter()
            .filter(|v| v.labels.get("sh.mizzen.volume-scope").map(String::as_str) == Some("event"))
            .map(|v| v.name)
            .collect()
    })
}

fn project(id: &str, script: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let indented: String = script.lines().map(|l| format!("        {l}\n")).collect();
    std::fs::write(
        dir.path().join("project.yaml"),
        format!(
            "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: {id}\nspec:\n  eventSubscriptions:\n  - source: brigade.sh/cli\n    types: [exec]\n  workerTemplate:\n    defaultConfigFiles:\n      brigade.js: |\n{indented}"
        ),
    )
    .unwrap();
    dir
}

#[test]
fn first_job_runs_a_container_and_prints_its_output() {
    let ran = run(&["run", "examples/03-first-job"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout
            .contains("[job: my-first-job] INFO: Creating job my-first-job\n"),
        "{ran:?}"
    );
    assert!(
        ran.stdout.contains("[job: my-first-job] My first job!\n"),
        "{ran:?}"
    );
    assert!(ran.stderr.contains("mizzen: logs kept in "), "{ran:?}");
}

#[test]
fn simple_pipeline_runs_its_jobs_in_order() {
    let ran = run(&["run", "examples/04-simple-pipeline"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    let first = ran
        .stdout
        .find("[job: my-first-job] My first job!")
        .expect("first job's output");
    let second = ran
        .stdout
        .find("Creating job my-second-job")
        .expect("second job created");
    assert!(first < second, "{ran:?}");
    assert!(
        ran.stdout.contains("[job: my-second-job] My second job!"),
        "{ran:?}"
    );
}

#[test]
fn groups_run_two_sequences_concurrently() {
    let ran = run(&["run", "examples/05-groups"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    for line in ["My first job!", "My second job!", "My A job!", "My B job!"] {
        assert!(ran.stdout.contains(line), "{line}: {ran:?}");
    }
    // Both sequences start before either ends.
    let a = ran.stdout.find("Creating job my-a-job").unwrap();
    let second = ran.stdout.find("Creating job my-second-job").unwrap();
    assert!(a < second, "{ran:?}");
}

#[test]
fn git_example_reads_its_script_from_the_repository_and_mounts_the_source() {
    let ran = run(&["run", "examples/06-git"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("Hello, Git!\n"), "{ran:?}");
    assert!(
        ran.stdout.contains("[job: list-source] brigade.js\n"),
        "{ran:?}"
    );
    assert!(
        ran.stdout
            .contains("Summary: listed 3 entries of the source"),
        "{ran:?}"
    );
}

#[test]
fn shared_workspace_passes_a_file_between_jobs() {
    let ran = run(&["run", "examples/08-shared-workspace"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("[job: second-job] Hello!\n"), "{ran:?}");
}

#[test]
fn wasm_jobs_example_shares_the_workspace_with_container_jobs() {
    let ran = run(&["run", "examples/18-wasm-jobs"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    for line in [
        "[job: manifest] 654eb3c2 11 part-1.txt",
        "[job: verify-2] /work/dist/part-2.txt: OK",
        "[job: publish] 654eb3c2 11 part-1.txt",
        "Summary: manifest written and verified by Wasm jobs",
    ] {
        assert!(ran.stdout.contains(line), "{line}: {ran:?}");
    }
}

#[test]
fn sidecar_container_example_runs_both_containers() {
    let ran = run(&["run", "examples/14-sidecar-container"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("-> sidecar: debian:latest"), "{ran:?}");
    assert!(
        ran.stdout
            .contains("[job: my-job] Hello from the primary container!"),
        "{ran:?}"
    );
    assert!(
        ran.stdout
            .contains("[job: my-job/sidecar] Hello from the sidecar container!"),
        "{ran:?}"
    );
}

#[test]
fn sidecar_service_example_tests_against_a_ready_database() {
    let ran = run(&["run", "examples/15-sidecar-service"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout
            .contains("[job: integration-test] Hello from a sidecar service!"),
        "{ran:?}"
    );
    assert!(
        ran.stdout.contains("Summary: integration test passed"),
        "{ran:?}"
    );
}

/// Deletes a project's volume, through the executor's own call for it,
/// when made and when dropped: a test starts from a brand-new volume and
/// leaves none behind, whatever it asserts.
struct ProjectVolume {
    project: &'static str,
    name: &'static str,
}

impl ProjectVolume {
    fn fresh(project: &'static str, name: &'static str) -> Self {
        let volume = ProjectVolume { project, name };
        volume.delete().expect("the project's volume is deleted");
        volume
    }

    fn delete(&self) -> Result<(), ExecutorError> {
        tokio::runtime::Runtime::new().unwrap().block_on(async {
            let data = tempfile::tempdir().unwrap();
            let executor = mizzen_docker::DockerExecutor::connect(mizzen_docker::DockerConfig {
                data_dir: data.path().to_path_buf(),
                storage: None,
            })
            .await
            .expect("an engine answers");
            match executor
                .delete_project_volume(self.project, self.name)
                .await
            {
                Ok(()) | Err(ExecutorError::NotFound(_)) => Ok(()),
                Err(e) => Err(e),
            }
        })
    }
}

impl Drop for ProjectVolume {
    fn drop(&mut self) {
        // Not a panic: the test may be failing already.
        if let Err(e) = self.delete() {
            eprintln!("could not delete the volume {}: {e}", self.name);
        }
    }
}

/// How many runs example 19's database says it has seen.
fn runs_seen(ran: &Ran) -> u64 {
    let line = ran
        .stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "[job: integration-test] Tests passed against db and cache; the database has seen ",
            )
        })
        .unwrap_or_else(|| panic!("the test job's success line: {ran:?}"));
    line.strip_suffix(" run(s)")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a count of runs in {line:?}"))
}

#[test]
fn services_example_migrates_and_tests_against_a_database_kept_between_runs() {
    let _volume = ProjectVolume::fresh("services", "pgdata");
    let first = run(&["run", "examples/19-services"]);
    assert_eq!(first.code, 0, "{first:?}");
    assert!(
        first
            .stdout
            .contains("[job: db] initialised a new database"),
        "{first:?}"
    );
    assert!(
        first.stdout.contains("[job: migrate] CREATE TABLE"),
        "{first:?}"
    );
    assert_eq!(runs_seen(&first), 1, "{first:?}");
    assert!(
        first.stdout.contains("Summary: integration tests passed"),
        "{first:?}"
    );
    // The project volume outlived the first event: the second finds its
    // database, schema and row.
    let second = run(&["run", "examples/19-services"]);
    assert_eq!(second.code, 0, "{second:?}");
    assert!(
        !second.stdout.contains("initialised a new database"),
        "{second:?}"
    );
    assert_eq!(runs_seen(&second), 2, "{second:?}");
}

#[test]
fn job_logs_are_kept_in_the_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let ran = Ran::from(
        command(&["run", "examples/14-sidecar-container"])
            .env("MIZZEN_DATA_DIR", data.path())
            .output()
            .unwrap(),
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    let events: Vec<_> = std::fs::read_dir(data.path().join("events"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(events.len(), 1);
    let logs = events[0].path().join("logs");
    assert_eq!(
        std::fs::read_to_string(logs.join("jobs/my-job/my-job.log")).unwrap(),
        "Hello from the primary container!\n"
    );
    assert_eq!(
        std::fs::read_to_string(logs.join("jobs/my-job/sidecar.log")).unwrap(),
        "Hello from the sidecar container!\n"
    );
    let worker = std::fs::read_to_string(logs.join("worker.log")).unwrap();
    assert!(worker.contains("INFO: Creating job my-job"), "{worker}");
    assert!(
        !data
            .path()
            .join("work")
            .read_dir()
            .map(|mut d| d.next().is_some())
            .unwrap_or(false),
        "scratch removed"
    );
}

/// `mizzen run` with its own data directory.
fn run_in(data: &Path, args: &[&str]) -> Ran {
    Ran::from(
        command(args)
            .env("MIZZEN_DATA_DIR", data)
            .output()
            .expect("mizzen runs"),
    )
}

#[test]
fn artifacts_example_misses_its_cache_then_hits_it_and_hands_its_build_to_the_test() {
    let data = tempfile::tempdir().unwrap();
    let first = run_in(data.path(), &["run", "examples/20-artifacts-caches"]);
    assert_eq!(first.code, 0, "{first:?}");
    assert!(first.stdout.contains("has no entry"), "{first:?}");
    assert!(first.stdout.contains("fetching dependencies"), "{first:?}");
    assert!(first.stdout.contains("saved cache"), "{first:?}");
    assert!(
        first
            .stdout
            .contains("[job: test] hello from the build, with 2 dependencies"),
        "{first:?}"
    );
    // The script reads the report and lists what was saved.
    assert!(
        first.stdout.contains(
            "build report: built dist/app; artifacts: build-report (1 file), dist (1 file)"
        ),
        "{first:?}"
    );
    let second = run_in(data.path(), &["run", "examples/20-artifacts-caches"]);
    assert_eq!(second.code, 0, "{second:?}");
    assert!(second.stdout.contains("restored cache"), "{second:?}");
    assert!(
        second
            .stdout
            .contains("dependencies restored from the cache"),
        "{second:?}"
    );
    assert!(
        !second.stdout.contains("saved cache"),
        "a hit saves nothing: {second:?}"
    );
    // Each run's artifacts are written out and listed.
    assert!(second.stderr.contains("artifacts kept in"), "{second:?}");
    let apps: Vec<_> = std::fs::read_dir(data.path().join("events"))
        .unwrap()
        .flatten()
        .map(|event| event.path().join("artifacts/dist/app"))
        .collect();
    assert_eq!(apps.len(), 2);
    for app in apps {
        let text = std::fs::read_to_string(&app).unwrap();
        assert!(
            text.contains("hello from the build"),
            "{}: {text}",
            app.display()
        );
    }

    // Every file object altered, manifests left alone: the next restore
    // names the corrupt object, and the job's container never runs on what
    // it restored.
    let objects = data.path().join("run/objects/sha256");
    let mut altered = 0;
    for dir in std::fs::read_dir(&objects).unwrap().flatten() {
        for file in std::fs::read_dir(dir.path()).unwrap().flatten() {
            let content = std::fs::read(file.path()).unwrap();
            if !content.starts_with(b"{\"version\"") {
                // A byte more: as a crash or a disk leaves an object, which
                // a save finds (by its size) and stores anew. Altered bytes
                // of the same length are found by their hash on a read
                // (runtime/objects/tests/trees.rs).
                let mut altered_content = content.clone();
                altered_content.push(b'x');
                std::fs::write(file.path(), altered_content).unwrap();
                altered += 1;
            }
        }
    }
    assert!(altered > 0);
    let third = run_in(data.path(), &["run", "examples/20-artifacts-caches"]);
    assert_ne!(third.code, 0, "{third:?}");
    assert!(
        third
            .stdout
            .contains("job build ended FAILED: cache \"deps-"),
        "{third:?}"
    );
    assert!(third.stdout.contains("is corrupt: it holds "), "{third:?}");
    assert!(third.stdout.contains("it was not used"), "{third:?}");
    assert!(!third.stdout.contains("dependencies restored"), "{third:?}");
    assert!(
        third
            .stdout
            .contains("is damaged and was deleted: the next job that declares it starts empty"),
        "{third:?}"
    );
    // Healed: the next run misses, fetches, saves; the damaged objects were
    // deleted, so its artifact is stored anew and the test job runs it.
    let fourth = run_in(data.path(), &["run", "examples/20-artifacts-caches"]);
    assert_eq!(fourth.code, 0, "{fourth:?}");
    assert!(
        fourth.stdout.contains("fetching dependencies"),
        "{fourth:?}"
    );
    assert!(fourth.stdout.contains("saved cache"), "{fourth:?}");
}

/// A project `id` whose script runs one job with `job` (lines of
/// JavaScript setting up `job`), under `limits` (YAML lines for
/// `workerTemplate.limits`).
fn kept_project(id: &str, limits: &str, job: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("project.yaml"),
        format!(
            r#"apiVersion: brigade.sh/v2
kind: Project
metadata:
  id: {id}
spec:
  eventSubscriptions:
  - source: brigade.sh/cli
    types: [exec]
  workerTemplate:
    limits:
{limits}
    defaultConfigFiles:
      brigade.js: |
        const {{ events, Job }} = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {{
          const job = new Job("make", "debian", event);
          job.primaryContainer.workingDirectory = "/tmp";
          job.primaryContainer.command = ["sh", "-c", "mkdir -p out /tmp/cache && head -c 4096 /dev/zero > out/blob && head -c 4096 /dev/urandom > /tmp/cache/blob"];
          {job}
          await job.run();
        }});
        events.process();
"#
        ),
    )
    .unwrap();
    dir
}

/// A secret the script may not read (`scriptSecrets`), written by a job
/// into an artifact, reaches the script masked.
#[test]
fn an_artifact_read_by_the_script_masks_the_secrets_it_may_not_read() {
    let data = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("project.yaml"),
        r#"apiVersion: brigade.sh/v2
kind: Project
metadata:
  id: artifact-secrets
spec:
  eventSubscriptions:
  - source: brigade.sh/cli
    types: [exec]
  workerTemplate:
    scriptSecrets: [visible]
    defaultConfigFiles:
      brigade.js: |
        const { artifacts, events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {
          const job = new Job("leak", "debian", event);
          job.primaryContainer.environment = { TOKEN: "${{ secrets.hidden }}" };
          job.primaryContainer.command = ["sh", "-c", "mkdir -p /tmp/out && printf 'token=%s' \"$TOKEN\" > /tmp/out/t.txt"];
          job.artifacts.save = [{ name: "out", path: "/tmp/out" }];
          await job.run();
          const text = await artifacts.readFile("out", "t.txt");
          const bytes = await artifacts.readFile("out", "t.txt", "base64");
          console.log(`text ${text === "token=***" ? "masked" : "UNMASKED " + text.length}`);
          console.log(`base64 ${bytes === "dG9rZW49Kioq" ? "masked" : "UNMASKED " + bytes}`);
        });
        events.process();
"#,
    )
    .unwrap();
    let ran = run_in(
        data.path(),
        &[
            "run",
            dir.path().to_str().unwrap(),
            "--secret",
            "hidden=hidden-canary-5d1",
            "--secret",
            "visible=seen",
        ],
    );
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("text masked"), "{ran:?}");
    assert!(ran.stdout.contains("base64 masked"), "{ran:?}");
}

#[test]
fn a_cache_or_artifacts_over_their_quota_fail_the_job_naming_the_limit() {
    let data = tempfile::tempdir().unwrap();
    let cache = kept_project(
        "cache-quota",
        "      cacheSize: 1Ki",
        r#"job.caches = [{ key: "k", path: "/tmp/cache" }];"#,
    );
    let ran = run_in(data.path(), &["run", cache.path().to_str().unwrap()]);
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout.contains(
            "job make ended FAILED: cache \"k\" holds more than 1024 bytes (the project's cacheSize limit of 1 KiB)"
        ),
        "{ran:?}"
    );
    let artifacts = kept_project(
        "artifact-quota",
        "      artifactSize: 1Ki",
        r#"job.artifacts.save = [{ name: "out", path: "out" }];"#,
    );
    let ran = run_in(data.path(), &["run", artifacts.path().to_str().unwrap()]);
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout
            .contains("job make ended FAILED: artifact \"out\" holds more than 1024 bytes"),
        "{ran:?}"
    );
    assert!(
        ran.stdout.contains("artifactSize limit of 1 KiB"),
        "{ran:?}"
    );
}

#[test]
fn restoring_an_artifact_no_earlier_job_saves_is_refused_by_name() {
    let data = tempfile::tempdir().unwrap();
    let project = kept_project(
        "restore-unknown",
        "      artifactSize: 1Mi",
        r#"job.artifacts.restore = [{ name: "dist" }];"#,
    );
    let ran = run_in(data.path(), &["run", project.path().to_str().unwrap()]);
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stderr.contains("artifact \"dist\" is not saved by any job started before it in this event (saved: none)"),
        "{ran:?}"
    );
}

#[test]
fn a_missing_engine_is_one_clear_message() {
    let missing = "unix:///nonexistent/docker.sock";
    let ran = Ran::from(
        command(&["run", "examples/03-first-job"])
            .env("DOCKER_HOST", missing)
            .output()
            .unwrap(),
    );
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.contains(&format!(
            "mizzen: worker FAILED: brigade.js:7:13: Error: Error creating job \"my-first-job\": no container engine answered ({missing}: no such socket); start Docker or Podman (podman system service), or set DOCKER_HOST"
        )),
        "{ran:?}"
    );
    let ran = Ran::from(
        command(&["run", "examples/03-first-job", "--executor", "docker"])
            .env("DOCKER_HOST", missing)
            .output()
            .unwrap(),
    );
    assert_eq!(ran.code, 2, "{ran:?}");
    assert_eq!(
        ran.stderr,
        format!(
            "mizzen: --executor docker: no container engine answered ({missing}: no such socket); start Docker or Podman (podman system service), or set DOCKER_HOST\n"
        )
    );
    // A script without jobs does not need an engine at all.
    let ran = Ran::from(
        command(&["run", "examples/02-first-event"])
            .env("DOCKER_HOST", missing)
            .output()
            .unwrap(),
    );
    assert_eq!(ran.code, 0, "{ran:?}");
}

/// Starts `mizzen run` on a project whose job prints "started" and sleeps,
/// and returns once the job has started.
fn start_sleeping_job(id: &str) -> (std::process::Child, tempfile::TempDir) {
    let dir = project(
        id,
        r#"const { events, Job } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  const job = new Job("sleeper", "localhost/busybox", event);
  job.primaryContainer.command = ["sh", "-c", "echo started; sleep 600"];
  job.primaryContainer.volumes = ["scratch:/scratch"];
  await job.run();
});
events.process();"#,
    );
    let mut child = command(&["run", dir.path().to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines
            .next()
            .expect("mizzen printed the job's start")
            .unwrap();
        if line == "[job: sleeper] started" {
            break;
        }
        assert!(Instant::now() < deadline, "the job did not start");
    }
    // Keep reading, so that mizzen never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, dir)
}

#[test]
fn ctrl_c_removes_the_events_containers_before_exiting() {
    let (mut child, _dir) = start_sleeping_job("interrupted-run");
    // The job's pod: its infra container and its primary.
    assert_eq!(containers_of_project("interrupted-run").len(), 2);
    assert_eq!(event_volumes_of_project("interrupted-run").len(), 1);
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let exit = child.wait().unwrap();
    assert_eq!(exit.code(), Some(130));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(
        containers_of_project("interrupted-run"),
        Vec::<String>::new()
    );
    assert_eq!(
        event_volumes_of_project("interrupted-run"),
        Vec::<String>::new()
    );
}

#[test]
fn the_next_run_removes_what_a_killed_run_left_behind() {
    // Every run sweeps what dead runs left, so another test's run starting
    // right after the kill may take the container first: try again until
    // this test sees it left, and then the next run remove it.
    let (mut left, mut volumes) = (0, 0);
    for _ in 0..3 {
        let (mut child, _dir) = start_sleeping_job("killed-run");
        Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .unwrap();
        child.wait().unwrap();
        // The volume first: a sweep removes containers before volumes, so
        // a container still there means the volume was when counted.
        volumes = event_volumes_of_project("killed-run").len();
        left = containers_of_project("killed-run").len();
        if left > 0 && volumes > 0 {
            break;
        }
    }
    assert!(left > 0, "a SIGKILL leaves the pod's containers");
    assert!(volumes > 0, "and the event's volume");
    // Any later run that uses the engine sweeps them away.
    let ran = run(&["run", "examples/03-first-job"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(containers_of_project("killed-run"), Vec::<String>::new());
    assert_eq!(event_volumes_of_project("killed-run"), Vec::<String>::new());
}

#[test]
fn a_script_kept_in_a_git_repository_is_read_from_its_checkout() {
    let repo = tempfile::tempdir().unwrap();
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .arg("-C")
            .arg(repo.path())
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap().trim().to_string()
    };
    git(&["init", "--quiet", "--initial-branch=main"]);
    std::fs::create_dir_all(repo.path().join("ci")).unwrap();
    std::fs::write(
        repo.path().join("ci/brigade.js"),
        "console.log(\"from the pinned commit\");\n",
    )
    .unwrap();
    git(&["add", "."]);
    git(&["commit", "--quiet", "-m", "pinned"]);
    let pinned = git(&["rev-parse", "HEAD"]);
    std::fs::write(
        repo.path().join("ci/brigade.js"),
        "console.log(\"from a later commit\");\n",
    )
    .unwrap();
    git(&["commit", "--quiet", "-am", "later"]);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("project.yaml"),
        format!(
            "apiVersion: brigade.sh/v2\nkind: Project\nmetadata:\n  id: from-git\nspec:\n  eventSubscriptions:\n  - source: brigade.sh/cli\n    types: [exec]\n  workerTemplate:\n    configFilesDirectory: ci\n    git:\n      cloneURL: file://{}\n      commit: {pinned}\n",
            repo.path().display()
        ),
    )
    .unwrap();
    let ran = run(&["run", dir.path().to_str().unwrap()]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("from the pinned commit\n"), "{ran:?}");
}

/// The largest resident size `pid` has had, in bytes.
fn peak_resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[test]
fn a_job_printing_hundreds_of_megabytes_costs_the_host_a_bounded_amount_of_memory() {
    // The executor used to fetch a container's whole output into memory
    // when the container ended before its reader caught up, and split it
    // into lines in time quadratic in its size.
    const PRINTED: u64 = 300 * 1024 * 1024;
    let dir = project(
        "huge-log",
        &format!(
            r#"const {{ events, Job }} = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {{
  const job = new Job("flood", "localhost/busybox", event);
  job.primaryContainer.command = ["sh", "-c", "yes 0123456789abcdef | head -c {PRINTED}"];
  await job.run();
  // Lets the test read the peak after the job's output was handled.
  await new Promise((resolve) => setTimeout(resolve, 1000));
}});
events.process();"#
        ),
    );
    let data = tempfile::tempdir().unwrap();
    let mut child = command(&["run", dir.path().to_str().unwrap()])
        .env("MIZZEN_DATA_DIR", data.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(bytes) = peak_resident_bytes(child.id()) {
            peak = peak.max(bytes);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let ran = Ran::from(child.wait_with_output().unwrap());
    assert_eq!(ran.code, 0, "{ran:?}");
    eprintln!(
        "mizzen run peaked at {} MiB for a job printing {} MiB",
        peak / (1024 * 1024),
        PRINTED / (1024 * 1024)
    );
    // The job's kept output (16 MiB by default) is held for `job.logs()`;
    // the rest must not be.
    assert!(
        peak < 200 * 1024 * 1024,
        "mizzen run peaked at {} MiB for a job printing {} MiB",
        peak / (1024 * 1024),
        PRINTED / (1024 * 1024)
    );
    let worker = std::fs::read_to_string(
        std::fs::read_dir(data.path().join("events"))
            .unwrap()
            .flatten()
            .next()
            .unwrap()
            .path()
            .join("logs/worker.log"),
    )
    .unwrap();
    assert!(
        worker.contains("output of job flood was truncated at its log limit of 16 MiB"),
        "{worker}"
    );
}

/// Every file under a directory, with its text.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, String)> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
                files.push((path, text));
            }
        }
    }
    files
}

/// `mizzen run` masks a `--secret`'s value as the server does: in what it
/// prints (the worker's lines, whole and split across lines, a logger line,
/// a job's output, the summary, the error it fails with) and in every file
/// under the run's log directory. It printed and kept them in clear.
#[test]
fn mizzen_run_masks_secret_values_in_its_output_and_its_files() {
    const SECRET: &str = "s3cr3t-run-canary-7e41c9";
    let script = r#"const { events, Job, logger } = require("@brigadecore/brigadier");
events.on("brigade.sh/cli", "exec", async (event) => {
  const s = event.project.secrets.token;
  console.log("whole " + s);
  console.error("stderr " + s);
  logger.info("logger " + s);
  console.log(s.slice(0, 9));
  console.log(s.slice(9));
  const job = new Job("echo", "localhost/busybox", event);
  job.primaryContainer.environment = { TOKEN: s };
  job.primaryContainer.command = ["sh", "-c", "echo job sees $TOKEN; echo ${TOKEN:0:9}; echo ${TOKEN:9}"];
  await job.run();
  if (event.payload === "fail") throw new Error("failing with " + s);
  return "summary " + s;
});
events.process();
"#;
    let dir = project("run-secrets", script);
    let data = tempfile::tempdir().unwrap();
    for payload in ["", "fail"] {
        let ran = Ran::from(
            command(&[
                "run",
                dir.path().to_str().unwrap(),
                "--secret",
                &format!("token={SECRET}"),
                "--payload",
                payload,
            ])
            .env("MIZZEN_DATA_DIR", data.path())
            .output()
            .unwrap(),
        );
        let expected_code = if payload == "fail" { 1 } else { 0 };
        assert_eq!(ran.code, expected_code, "{ran:?}");
        // It ran and printed the value, masked.
        for shown in [
            "whole ***",
            "[job: echo] job sees ***",
            "Summary: summary ***",
        ] {
            assert!(
                payload == "fail" && shown.starts_with("Summary") || ran.stdout.contains(shown),
                "{shown:?} missing: {ran:?}"
            );
        }
        assert!(ran.stderr.contains("stderr ***"), "{ran:?}");
        if payload == "fail" {
            assert!(ran.stderr.contains("failing with ***"), "{ran:?}");
        }
        for half in [&SECRET[..9], &SECRET[9..]] {
            assert!(!ran.stdout.contains(half), "stdout shows {half:?}: {ran:?}");
            assert!(!ran.stderr.contains(half), "stderr shows {half:?}: {ran:?}");
        }
    }
    let files = files_under(&data.path().join("events"));
    assert!(
        files
            .iter()
            .any(|(path, _)| path.ends_with("jobs/echo/echo.log")),
        "{files:?}"
    );
    for (path, text) in &files {
        assert!(
            text.contains("***"),
            "{} masks nothing: {text}",
            path.display()
        );
        for half in [&SECRET[..9], &SECRET[9..]] {
            assert!(
                !text.contains(half),
                "{} holds {half:?}: {text}",
                path.display()
            );
        }
    }
}

/// `mizzen init --lang L` makes a project that builds (Rust and Go with
/// their build.sh) and runs its two concurrent jobs to the summary, in every
/// language; init refuses a directory that holds a project already.
#[test]
fn init_scaffolds_a_project_that_builds_and_runs_in_every_language() {
    let dir = tempfile::tempdir().unwrap();
    for lang in ["js", "ts", "rust", "go"] {
        let project = dir.path().join(format!("new-{lang}"));
        let project = project.to_str().unwrap();
        let ran = run(&["init", "--lang", lang, project]);
        assert_eq!(ran.code, 0, "{lang}: {ran:?}");
        if matches!(lang, "rust" | "go") {
            let built = Command::new(format!("{project}/build.sh"))
                // One build of Rust's standard library for every run of
                // this test, not one per scaffold.
                .env(
                    "CARGO_TARGET_DIR",
                    Path::new(env!("CARGO_TARGET_TMPDIR")).join("scaffold-wasm"),
                )
                .output()
                .expect("build.sh runs");
            let built = Ran::from(built);
            assert_eq!(built.code, 0, "{lang}: {built:?}");
        }
        let ran = run(&["run", project]);
        assert_eq!(ran.code, 0, "{lang}: {ran:?}");
        assert!(
            ran.stdout.contains("Summary: build and test succeeded")
                && ran.stdout.contains("[job: build] building")
                && ran.stdout.contains("[job: test] testing"),
            "{lang}: {ran:?}"
        );
    }
    let again = run(&["init", dir.path().join("new-js").to_str().unwrap()]);
    assert_eq!(again.code, 2, "{again:?}");
    assert!(
        again.stderr.contains("already holds a project"),
        "{again:?}"
    );
}

/// A project whose one job runs the registry's private image, pulled every
/// time, with `imagePullSecrets: [regcred]`.
fn private_image_project(address: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("project.yaml"),
        format!(
            r#"apiVersion: brigade.sh/v2
kind: Project
metadata:
  id: private-image
spec:
  eventSubscriptions:
  - source: brigade.sh/cli
    types: [exec]
  workerTemplate:
    kubernetes:
      imagePullSecrets: [regcred]
    defaultConfigFiles:
      brigade.js: |
        const {{ events, Job }} = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async (event) => {{
          const job = new Job("private", "{address}/private/busybox:latest", event);
          job.primaryContainer.imagePullPolicy = "Always";
          job.primaryContainer.command = ["sh", "-c", "echo pulled privately"];
          await job.run();
        }});
        events.process();
"#
        ),
    )
    .unwrap();
    dir
}

/// Docker's and Podman's credentials, a credential helper, and a project's
/// pull secret each let a job's private image be pulled; without them, or
/// with wrong ones, the job fails saying which credentials went (or where
/// none was found). A project's secret may not name a helper.
#[test]
fn private_images_are_pulled_with_the_engines_or_the_projects_credentials() {
    let Some((address, user, password)) = common::private_registry(
        "private_images_are_pulled_with_the_engines_or_the_projects_credentials",
    ) else {
        return;
    };
    let project = private_image_project(&address);
    let project = project.path().to_str().unwrap();
    let home = tempfile::tempdir().unwrap();
    let docker_config = home.path().join("docker");
    std::fs::create_dir_all(&docker_config).unwrap();
    let auth = base64_of(&format!("{user}:{password}"));
    let wrong = base64_of(&format!("{user}:not-the-password"));
    // Every credentials file Mizzen might read is under `home`.
    let isolated = |args: &[&str]| {
        let mut command = command(args);
        command
            .env("HOME", home.path())
            .env("DOCKER_CONFIG", &docker_config)
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .env("XDG_RUNTIME_DIR", home.path().join("run"))
            .env_remove("REGISTRY_AUTH_FILE");
        command
    };
    let pulled =
        |ran: &Ran| ran.code == 0 && ran.stdout.contains("[job: private] pulled privately");

    // None anywhere: the registry refuses, and the error says where
    // Mizzen looked.
    let ran = Ran::from(isolated(&["run", project]).output().unwrap());
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        said(&ran).contains(&format!("image \"{address}/private/busybox:latest\" could not be pulled: "))
            && said(&ran).contains(&format!(
                "(no credentials for {address} in imagePullSecrets \"regcred\" (no such project secret))"
            )),
        "{ran:?}"
    );

    // Podman's auth file, named by REGISTRY_AUTH_FILE.
    let podman_auth = home.path().join("podman-auth.json");
    std::fs::write(
        &podman_auth,
        format!(r#"{{"auths": {{"{address}": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
    let ran = Ran::from(
        isolated(&["run", project])
            .env("REGISTRY_AUTH_FILE", &podman_auth)
            .output()
            .unwrap(),
    );
    assert!(pulled(&ran), "{ran:?}");

    // Docker's config.json, through a credential helper on the PATH.
    let helpers = home.path().join("bin");
    std::fs::create_dir_all(&helpers).unwrap();
    let asked = home.path().join("helper-asked");
    let helper = helpers.join("docker-credential-mizzentest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread server\necho \"$server\" > {asked}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{user}\",\"Secret\":\"{password}\"}}' \"$server\"\n",
            asked = asked.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        docker_config.join("config.json"),
        format!(r#"{{"credHelpers": {{"{address}": "mizzentest"}}}}"#),
    )
    .unwrap();
    let path = format!("{}:{}", helpers.display(), std::env::var("PATH").unwrap());
    let ran = Ran::from(
        isolated(&["run", project])
            .env("PATH", &path)
            .output()
            .unwrap(),
    );
    assert!(pulled(&ran), "{ran:?}");
    assert_eq!(std::fs::read_to_string(&asked).unwrap().trim(), address);
    std::fs::remove_file(docker_config.join("config.json")).unwrap();

    // The project's own pull secret, with nothing on the host.
    let secret = format!(r#"regcred={{"auths": {{"{address}": {{"auth": "{auth}"}}}}}}"#);
    let ran = Ran::from(
        isolated(&["run", project, "--secret", &secret])
            .output()
            .unwrap(),
    );
    assert!(pulled(&ran), "{ran:?}");

    // A wrong password in it: the registry refuses, and the error names
    // the secret the credentials came from.
    let secret = format!(r#"regcred={{"auths": {{"{address}": {{"auth": "{wrong}"}}}}}}"#);
    let ran = Ran::from(
        isolated(&["run", project, "--secret", &secret])
            .output()
            .unwrap(),
    );
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        said(&ran).contains(&format!(
            "(with the credentials for {address} from project secret \"regcred\")"
        )),
        "{ran:?}"
    );
    assert!(!said(&ran).contains(&wrong), "{ran:?}");

    // A helper named in a project's secret would run on the host: refused.
    let secret = r#"regcred={"credsStore": "mizzentest"}"#;
    let ran = Ran::from(
        isolated(&["run", project, "--secret", secret])
            .env("PATH", &path)
            .output()
            .unwrap(),
    );
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        said(&ran).contains(
            "project secret \"regcred\" (named in spec.workerTemplate.kubernetes.imagePullSecrets) names a credential helper (credsStore): a project's secret may not make the host run a program"
        ),
        "{ran:?}"
    );
}

/// All a run printed.
fn said(ran: &Ran) -> String {
    format!("{}{}", ran.stdout, ran.stderr)
}

fn base64_of(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}
