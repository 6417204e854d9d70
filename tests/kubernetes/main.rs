//! The Kubernetes executor through the real path — a script in the sandbox
//! starting jobs — against a fake Kubernetes API server at the HTTP level
//! (`mizzen_tests::fake_kube`), which authorises every request with the
//! Role of `deploy/base/role.yaml` and plays back each Pod's life: success,
//! failure by exit code, image pull failure, deadline, deletion from
//! outside, a dropped watch, a Pod left by an earlier attempt, a refused
//! permission, and an event's services.

mod kubectl;
mod services;
mod volumes;

use std::sync::Arc;
use std::time::Duration;

use mizzen_host_api::types::Event;
use mizzen_kubernetes::{KubernetesConfig, KubernetesExecutor};
use mizzen_runtime::executor::EventContext;
use mizzen_runtime::log::MemoryLog;
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{JobCapability, WorkerLimits, WorkerRequest};
use mizzen_tests::fake_kube::{ContainerScript, FakeConfig, FakeKube, PodScript};
use mizzen_tests::worker::{Run, sandbox};
use serde_json::Value;

const NAMESPACE: &str = "mizzen-jobs";

/// A fake cluster with the deployment's Role, and an executor on it.
struct Cluster {
    fake: Arc<FakeKube>,
    executor: Arc<KubernetesExecutor>,
}

async fn cluster() -> Cluster {
    cluster_with(|_| {}).await
}

async fn cluster_with(configure: impl FnOnce(&mut KubernetesConfig)) -> Cluster {
    let fake = FakeKube::start(FakeConfig::deployed(&[NAMESPACE])).await;
    let mut client_config = kube::Config::new(fake.url().parse().unwrap());
    client_config.default_namespace = NAMESPACE.into();
    let client = kube::Client::try_from(client_config).expect("a client for the fake");
    let mut config = KubernetesConfig::new(NAMESPACE);
    configure(&mut config);
    Cluster {
        fake: Arc::new(fake),
        executor: Arc::new(KubernetesExecutor::new(client, config)),
    }
}

impl Cluster {
    /// Plays every Pod of job `job` with `script`; others print nothing and
    /// exit 0.
    fn play(&self, scripts: Vec<(&'static str, PodScript)>) {
        self.fake.on_pod(move |pod| {
            let job = pod["metadata"]["labels"]["mizzen.sh/job"]
                .as_str()
                .unwrap_or_default();
            scripts
                .iter()
                .find(|(name, _)| *name == job)
                .map(|(_, script)| script.clone())
                .unwrap_or_default()
        });
    }

    /// Runs `script` for a fresh event; then checks that the event's objects
    /// are gone and that the executor asked for nothing the Role does not
    /// grant.
    async fn run_js(&self, script: &str) -> Run {
        self.run_js_for(&uuid(), script).await
    }

    async fn run_js_for(&self, event_id: &str, script: &str) -> Run {
        self.run_js_limited(event_id, script, WorkerLimits::default())
            .await
    }

    async fn run_js_limited(&self, event_id: &str, script: &str, limits: WorkerLimits) -> Run {
        self.run_script(event_id, ScriptSource::new("brigade.js", script), limits)
            .await
    }

    async fn run_script(&self, event_id: &str, script: ScriptSource, limits: WorkerLimits) -> Run {
        let event = Event::new(event_id, "test-project", "brigade.sh/cli", "exec");
        let context = Arc::new(EventContext {
            use_workspace: true,
            ..mizzen_tests::worker::context(event_id, "test-project")
        });
        let log = MemoryLog::new();
        let outcome = sandbox(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
            .await
            .run(
                &script,
                WorkerRequest {
                    event,
                    limits,
                    log: Arc::new(log.clone()),
                    jobs: JobCapability::Executor {
                        executor: self.executor.clone(),
                        event: context,
                    },
                },
            )
            .await;
        let run = Run {
            outcome,
            log,
            event_id: event_id.to_string(),
        };
        for resource in [
            "pods",
            "secrets",
            "persistentvolumeclaims",
            "services",
            "networkpolicies",
        ] {
            let left: Vec<Value> = self
                .fake
                .objects(resource, NAMESPACE)
                .into_iter()
                .filter(|o| o["metadata"]["labels"]["mizzen.sh/event"] == event_id)
                .collect();
            assert!(
                left.is_empty(),
                "{resource} of the event left behind: {left:#?}\nlog:\n{}",
                run.log.text()
            );
        }
        run
    }

    #[track_caller]
    fn assert_nothing_denied(&self) {
        assert!(
            self.fake.denied().is_empty(),
            "requests outside the Role: {:#?}",
            self.fake.denied()
        );
    }
}

fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn lines(lines: &[&str], exit_code: i32) -> ContainerScript {
    ContainerScript {
        runs_for: Duration::from_millis(100),
        ..ContainerScript::new(lines.iter().copied(), exit_code)
    }
}

fn forever() -> ContainerScript {
    ContainerScript {
        forever: true,
        ..ContainerScript::new(["started"], 0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_runs_as_a_pod_and_its_output_reaches_the_log() {
    let cluster = cluster().await;
    cluster.play(vec![(
        "hello",
        PodScript::default().with("hello", lines(&["Hello,", "World!"], 0)),
    )]);
    let run = cluster
        .run_js(
            r#"
            const { events, Job } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async event => {
              const job = new Job("hello", "debian:latest", event);
              job.primaryContainer.command = ["echo"];
              job.primaryContainer.arguments = ["Hello,\nWorld!"];
              job.primaryContainer.environment = { GREETING: "s3cr3t" };
              await job.run();
              console.log("job done");
            });
            events.process();
            "#,
        )
        .await;
    run.assert_succeeded();
    assert_eq!(run.job_lines(), ["[hello] Hello,", "[hello] World!"]);
    run.assert_logged("job done");
    cluster.assert_nothing_denied();

    let pods = cluster.fake.created("pods");
    assert_eq!(pods.len(), 1);
    let primary = &pods[0]["spec"]["containers"][0];
    assert_eq!(primary["command"], serde_json::json!(["echo"]));
    assert_eq!(primary["args"], serde_json::json!(["Hello,\nWorld!"]));
    assert!(
        !pods[0].to_string().contains("s3cr3t"),
        "the environment's value is in the Pod spec"
    );
    // The environment went into the job's Secret, owned by the event's.
    let secret = cluster
        .fake
        .created("secrets")
        .into_iter()
        .find(|s| s["stringData"]["hello.GREETING"] == "s3cr3t")
        .expect("the job's environment Secret");
    assert_eq!(
        secret["metadata"]["ownerReferences"][0]["name"],
        format!("mizzen-event-{}", run.event_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_zero_exit_fails_the_job_and_a_fallible_one_does_not_fail_the_worker() {
    let cluster = cluster().await;
    cluster.play(vec![
        (
            "test",
            PodScript::default().with("test", lines(&["1 test failed"], 3)),
        ),
        (
            "lint",
            PodScript::default().with("lint", lines(&["warning"], 1)),
        ),
    ]);
    let run = cluster
        .run_js(
            r#"
            const { events, Job } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async event => {
              const lint = new Job("lint", "debian", event);
              lint.fallible = true;
              await lint.run();
              await new Job("test", "debian", event).run();
            });
            events.process();
            "#,
        )
        .await;
    run.assert_failed_with("Job \"test\" failed");
    run.assert_logged("exited with code 3");
    assert!(
        run.job_lines()
            .contains(&"[test] 1 test failed".to_string())
    );
    cluster.assert_nothing_denied();
}

/// Artifacts and caches are kept by the local engine only so far: a job
/// that declares them is refused by name, and no Pod is made for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_artifacts_or_caches_is_refused_by_name_without_a_server_to_keep_them() {
    let cluster = cluster().await;
    let run = cluster
        .run_js(
            r#"
            const { events, Job } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async event => {
              const build = new Job("build", "debian", event);
              build.caches = [{ key: "npm", path: "/root/.npm" }];
              await build.run();
            });
            events.process();
            "#,
        )
        .await;
    // The executor has no storage or URL for the Pod's helpers: as under
    // `mizzen run --executor kubernetes` (mizzen server keeps them: see
    // runtime/cli/tests/server.rs, artifacts_and_caches_on_kubernetes).
    run.assert_failed_with(
        "job \"build\": it declares artifacts or caches, which on Kubernetes its Pod's helpers send to and fetch from the server: start the server with --kubernetes-job-files-url",
    );
    assert!(run.job_lines().is_empty());
    cluster.assert_nothing_denied();
}

/// A job's kept files with the server's storage configured: the saving
/// sidecar's failure, or a receipt it did not get from the server, fails
/// the job and keeps nothing. (Saves that succeed, with the real helpers
/// and server: runtime/cli/tests/server.rs, artifacts_and_caches_on_kubernetes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_save_or_a_forged_receipt_fails_the_job_and_keeps_nothing() {
    use mizzen_objects::{Catalog, JobStorage, JobTokens, Objects};
    let dir = tempfile::tempdir().unwrap();
    let store = mizzen_server::store::Store::open(None, dir.path())
        .await
        .unwrap();
    let catalog: Arc<dyn Catalog> = Arc::new(store);
    let storage = JobStorage::new(
        Objects::local(&dir.path().join("objects")).unwrap(),
        catalog.clone(),
        JobTokens::new([3; 32]),
    );
    let cluster = cluster_with(|c| {
        c.job_files = Some(mizzen_kubernetes::kept::JobFilesConfig {
            server_url: "http://mizzen.mizzen.svc:7000".into(),
            image: "ghcr.io/mizzen-dev/mizzen:test".into(),
            storage,
        });
    })
    .await;
    let script = r#"
        const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async event => {
          const build = new Job("build", "debian", event);
          build.artifacts.save = [{ name: "dist", path: "/out" }];
          await build.run();
        });
        events.process();
        "#;
    let forged_tree = mizzen_objects::Digest::of(b"someone else's tree");
    for (message, exit_code, expected) in [
        (
            "error: save 0: the server answered 503 Service Unavailable: object storage down"
                .to_string(),
            1,
            "saving the job's artifacts and caches failed (mizzen-save exited with code 1): save 0: the server answered 503",
        ),
        (
            format!("0 {forged_tree} 10 1 c2lnbmF0dXJl"),
            0,
            "mizzen-save's termination message: a receipt does not match the job or its signature",
        ),
    ] {
        let saver = ContainerScript {
            termination_message: Some(message),
            ..ContainerScript::new(Vec::<String>::new(), exit_code)
        };
        cluster.play(vec![(
            "build",
            PodScript::default().with("mizzen-save", saver),
        )]);
        let event_id = uuid();
        let run = cluster.run_js_for(&event_id, script).await;
        run.assert_failed_with("Job \"build\" failed");
        let log = run.log.text();
        assert!(
            log.contains(&format!("job build ended FAILED (exit code 0): {expected}")),
            "{log}"
        );
        assert!(catalog.artifacts(&event_id).await.unwrap().is_empty());
    }
    // Kept paths that nest cannot each be a volume: refused by name, before
    // any Pod is made.
    let pods_before = cluster.fake.created("pods").len();
    let run = cluster
        .run_js(
            r#"
            const { events, Job } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async event => {
              const build = new Job("build", "debian", event);
              build.caches = [{ key: "deps", path: "/out" }];
              build.artifacts.save = [{ name: "dist", path: "/out/dist" }];
              await build.run();
            });
            events.process();
            "#,
        )
        .await;
    run.assert_failed_with(
        "job \"build\": kept paths /out/dist and /out are nested: on Kubernetes each is a volume of its own",
    );
    assert_eq!(cluster.fake.created("pods").len(), pods_before);
    // The Pods named their helpers and their token's Secret, never a token.
    let pods = serde_json::to_string(&cluster.fake.created("pods")).unwrap();
    assert!(
        pods.contains("mizzen-save") && !pods.contains("mzjob1."),
        "{pods}"
    );
    cluster.assert_nothing_denied();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_fails_the_job_in_bounded_time() {
    let cluster = cluster_with(|c| c.image_pull_timeout = Duration::from_millis(500)).await;
    cluster.play(vec![(
        "build",
        PodScript {
            image_pull_failure: Some("build".into()),
            ..PodScript::default()
        },
    )]);
    let started = std::time::Instant::now();
    let run = cluster
        .run_js(
            r#"
            const { events, Job } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async event => {
              await new Job("build", "example.com/no/such-image:1", event).run();
            });
            events.process();
            "#,
        )
        .await;
    run.assert_failed_with("Job \"build\" failed");
    run.assert_logged("example.com/no/such-image:1");
    run.assert_logged("ImagePullBackOff");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pods_deadline_times_the_job_out() {
    let cluster = cluster().await;
    cluster.play(vec![("slow", PodScript::default().with("slow", forever()))]);
    let run = cluster
        .run_js(
            r#"
            const { events, Job } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async event => {
              const job = new Job("slow", "debian", event);
              job.timeoutSeconds = 1;
              await job.run();
            });
            events.process();
            "#,
        )
        .await;
    run.assert_failed_with("Job \"slow\" timed out");
    assert_eq!(
        cluster.fake.created("pods")[0]["spec"]["activeDeadlineSeconds"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_deleted_from_outside_aborts_its_job() {
    let cluster = cluster().await;
    cluster.play(vec![(
        "serve",
        PodScript::default().with("serve", forever()),
    )]);
    let event_id = uuid();
    let pod = format!("{event_id}-serve");
    let deleter = {
        let fake_pods = cluster.fake.clone();
        let pod = pod.clone();
        tokio::spawn(async move {
            for _ in 0..200 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let running = fake_pods
                    .objects("pods", NAMESPACE)
                    .iter()
                    .any(|p| p["metadata"]["name"] == pod && p["status"]["phase"] == "Running");
                if running {
                    return fake_pods.delete_from_outside("pods", NAMESPACE, &pod);
                }
            }
            false
        })
    };
    let run = cluster
        .run_js_for(
            &event_id,
            r#"
            const { events, Job } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async event => {
              await new Job("serve", "debian", event).run();
            });
            events.process();
            "#,
        )
        .await;
    assert!(deleter.await.unwrap(), "the Pod never ran");
    run.assert_failed_with("Job \"serve\"");
    run.assert_logged("deleted from outside Mizzen");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_watch_resumes_without_losing_the_end_or_repeating_lines() {
    let cluster = cluster().await;
    let script = ContainerScript {
        runs_for: Duration::from_millis(1500),
        ..ContainerScript::new(["one", "two", "three", "four", "five"], 0)
    };
    cluster.play(vec![("long", PodScript::default().with("long", script))]);
    let fake = cluster.fake.clone();
    let dropper = tokio::spawn(async move {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            fake.drop_watches();
            fake.drop_log_streams();
        }
    });
    let run = cluster
        .run_js(
            r#"
            const { events, Job } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async event => {
              await new Job("long", "debian", event).run();
            });
            events.process();
            "#,
        )
        .await;
    dropper.await.unwrap();
    run.assert_succeeded();
    assert_eq!(
        run.job_lines(),
        [
            "[long] one",
            "[long] two",
            "[long] three",
            "[long] four",
            "[long] five"
        ]
    );
    let watches = cluster
        .fake
        .requests()
        .into_iter()
        .filter(|r| r.param("watch") == Some("true"))
        .count();
    assert!(
        watches >= 2,
        "the watch was not resumed ({watches} watches)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_left_by_an_earlier_attempt_is_adopted() {
    let cluster = cluster().await;
    cluster.play(vec![(
        "deploy",
        PodScript::default().with("deploy", lines(&["deployed"], 0)),
    )]);
    let event_id = uuid();
    // What an earlier server made before it died: the event's owner and the
    // job's Pod, still to run.
    let owner = cluster.fake.insert(
        "secrets",
        NAMESPACE,
        serde_json::json!({
            "metadata": {
                "name": format!("mizzen-event-{event_id}"),
                "labels": { "mizzen.sh/event": event_id },
            },
        }),
    );
    cluster.fake.insert(
        "pods",
        NAMESPACE,
        serde_json::json!({
            "metadata": {
                "name": format!("{event_id}-deploy"),
                "labels": {
                    "mizzen.sh/event": event_id,
                    "mizzen.sh/job": "deploy",
                    "mizzen.sh/project": "test-project",
                },
                "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Secret",
                    "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                }],
            },
            "spec": {
                "restartPolicy": "Never",
                "containers": [{ "name": "deploy", "image": "debian" }],
            },
        }),
    );
    let run = cluster
        .run_js_for(
            &event_id,
            r#"
            const { events, Job } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async event => {
              await new Job("deploy", "debian", event).run();
            });
            events.process();
            "#,
        )
        .await;
    run.assert_succeeded();
    assert_eq!(run.job_lines(), ["[deploy] deployed"]);
    cluster.assert_nothing_denied();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_permission_is_named() {
    let cluster = cluster().await;
    cluster.fake.forbid("create", "pods");
    let run = cluster
        .run_js(
            r#"
            const { events, Job } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async event => {
              await new Job("build", "debian", event).run();
            });
            events.process();
            "#,
        )
        .await;
    run.assert_failed_with(
        "Mizzen's service account needs the \"create\" verb on \"pods\" in \"mizzen-jobs\"",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_shot_sidecar_that_fails_fails_the_job_before_it_starts() {
    let cluster = cluster().await;
    cluster.play(vec![(
        "test",
        PodScript::default()
            .with("migrate", lines(&["migration 3 failed"], 2))
            .with("test", lines(&["should not run"], 0)),
    )]);
    let run = cluster
        .run_js(
            r#"
            const { events, Job, Container } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async event => {
              const job = new Job("test", "debian", event);
              job.sidecarContainers = { migrate: new Container("migrate/migrate") };
              job.sidecarContainers.migrate.readiness = { exited: true };
              await job.run();
            });
            events.process();
            "#,
        )
        .await;
    run.assert_failed_with("Job \"test\" failed");
    run.assert_logged("sidecar \"migrate\" exited with code 2 before the job's container started");
    assert_eq!(run.job_lines(), ["[test/migrate] migration 3 failed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_times_out_stops_its_running_jobs() {
    let cluster = cluster().await;
    cluster.play(vec![(
        "serve",
        PodScript::default().with("serve", forever()),
    )]);
    let event_id = uuid();
    let run = cluster
        .run_js_limited(
            &event_id,
            r#"
            const { events, Job } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async event => {
              await new Job("serve", "debian", event).run();
            });
            events.process();
            "#,
            WorkerLimits {
                wall_time: Duration::from_secs(1),
                ..WorkerLimits::default()
            },
        )
        .await;
    assert_eq!(
        run.outcome.phase,
        mizzen_host_api::types::Phase::TimedOut,
        "{:?}",
        run.outcome
    );
    run.assert_logged("job serve ended ABORTED");
    let deleted = cluster
        .fake
        .requests()
        .into_iter()
        .any(|r| r.method == "DELETE" && r.path.ends_with(&format!("/pods/{event_id}-serve")));
    assert!(deleted, "the job's Pod was not deleted");
}

/// The Rust and Go examples' compiled scripts run their concurrent jobs as
/// pods, exactly as their JavaScript counterparts do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_scripts_run_their_jobs_as_pods() {
    for (example, jobs) in [
        (
            "16-rust-pipeline",
            ["my-first-job", "my-second-job", "my-a-job", "my-b-job"],
        ),
        ("17-go-pipeline", ["build", "test", "lint", "docs"]),
    ] {
        let cluster = cluster().await;
        cluster.play(
            jobs.iter()
                .map(|job| (*job, PodScript::default().with(job, lines(&["ok 1"], 0))))
                .collect(),
        );
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples")
            .join(example)
            .join(".brigade/brigade.wasm");
        let module = std::fs::read(&path).unwrap();
        let run = cluster
            .run_script(
                &uuid(),
                ScriptSource::module("brigade.wasm", module),
                WorkerLimits::default(),
            )
            .await;
        run.assert_succeeded();
        assert!(
            run.outcome
                .summary
                .as_deref()
                .unwrap_or_default()
                .contains("4 jobs"),
            "{example}: {:?}",
            run.outcome.summary
        );
        let mut created: Vec<String> = cluster
            .fake
            .created("pods")
            .iter()
            .map(|pod| {
                pod["spec"]["containers"][0]["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        created.sort();
        let mut expected: Vec<String> = jobs.iter().map(ToString::to_string).collect();
        expected.sort();
        assert_eq!(created, expected, "{example}");
        cluster.assert_nothing_denied();
    }
}

/// Brigade's kitchen-sink example, unmodified: its TypeScript imports an npm
/// package (fetched by the host from a registry the test serves) to name
/// its four jobs, which run as pods two sequences at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kitchen_sink_example_with_its_npm_package_runs_its_jobs_as_pods() {
    use mizzen_runtime::dependencies::{ConfigFiles, Dependencies};
    use mizzen_tests::npm_registry::{NpmRegistry, brigade_example_packages};

    let registry = NpmRegistry::start(brigade_example_packages(), None).await;
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/12-kitchen-sink/.brigade");
    let cache = tempfile::tempdir().unwrap();
    let inline = std::collections::BTreeMap::new();
    let script = ScriptSource::new(
        "brigade.ts",
        std::fs::read_to_string(config.join("brigade.ts")).unwrap(),
    );
    let prepared = Dependencies::new(
        Some(registry.url.parse().unwrap()),
        Some(cache.path().to_path_buf()),
    )
    .prepare(
        ConfigFiles {
            dir: Some(&config),
            inline: &inline,
        },
        script,
        None,
    )
    .await
    .expect("the example's dependencies are prepared");
    assert!(prepared.script.is_bundle());

    let cluster = cluster().await;
    let run = cluster
        .run_script(&uuid(), prepared.script, WorkerLimits::default())
        .await;
    run.assert_succeeded();
    let pods = cluster.fake.created("pods");
    let mut images: Vec<&str> = pods
        .iter()
        .map(|pod| pod["spec"]["containers"][0]["image"].as_str().unwrap())
        .collect();
    images.sort();
    assert_eq!(
        images,
        [
            "alpine:latest",
            "centos:latest",
            "debian:latest",
            "ubuntu:latest"
        ]
    );
    for pod in &pods {
        let job = pod["metadata"]["labels"]["mizzen.sh/job"].as_str().unwrap();
        let words: Vec<&str> = job.split('-').collect();
        assert!(
            words.len() >= 2 && words.iter().all(|w| !w.is_empty()),
            "a generated job name: {job}"
        );
    }
    cluster.assert_nothing_denied();
}

/// The test binary's sandbox as a Wasm job runner.
struct TestSandbox;

#[async_trait::async_trait]
impl mizzen_runtime::wasm_job::WasmJobRunner for TestSandbox {
    async fn run_job(
        &self,
        job: mizzen_runtime::wasm_job::WasmJob,
        output: Arc<dyn mizzen_runtime::executor::JobOutput>,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> mizzen_host_api::types::JobResult {
        sandbox(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
            .await
            .run_job(job, output, cancel)
            .await
    }
}

/// With the Kubernetes executor, a Wasm job runs in the sandbox beside the
/// script (no Pod: its start costs no pod's seconds), while container jobs
/// become Pods; a Wasm job that mounts the workspace is refused by name,
/// since the workspace is a claim only the event's Pods reach. An
/// environment file of the source reaches a Pod's environment Secret, and
/// one in the workspace is refused for the same reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_jobs_run_in_the_sandbox_and_container_jobs_as_pods() {
    use mizzen_runtime::wasm_job::{HostJobExecutor, ModuleFetcher};
    let cluster = cluster().await;
    let source = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(source.path().join("tools")).unwrap();
    std::fs::copy(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("wasm-jobs/tool.wasm"),
        source.path().join("tools/tool.wasm"),
    )
    .unwrap();
    std::fs::write(
        source.path().join("ci.env"),
        "GREETING=hello from the file\n",
    )
    .unwrap();
    let event_id = uuid();
    let context = Arc::new(EventContext {
        use_workspace: true,
        source: Some(mizzen_runtime::executor::Source::Directory(
            source.path().to_path_buf(),
        )),
        ..mizzen_tests::worker::context(&event_id, "test-project")
    });
    let executor = Arc::new(HostJobExecutor::new(
        cluster.executor.clone(),
        Arc::new(TestSandbox),
        Arc::new(ModuleFetcher::new(None)),
    ));
    let log = MemoryLog::new();
    let outcome = sandbox(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
        .await
        .run(
            &ScriptSource::new(
                "brigade.js",
                r#"const { events, Job } = require("@brigadecore/brigadier");
                events.on("brigade.sh/cli", "exec", async (event) => {
                  const pod = new Job("in-a-pod", "debian:latest", event);
                  pod.primaryContainer.environmentFile = "ci.env";
                  await pod.run();
                  const fromClaim = new Job("env-from-the-claim", "debian:latest", event);
                  fromClaim.primaryContainer.environmentFile = "workspace:ci.env";
                  try { await fromClaim.run(); } catch (e) { console.log(`refused: ${e.reason}`); }
                  const wasm = new Job("in-the-sandbox", "wasm:tools/tool.wasm", event);
                  wasm.primaryContainer.arguments = ["args", "no pod"];
                  await wasm.run();
                  const shared = new Job("wants-the-claim", "wasm:tools/tool.wasm", event);
                  shared.primaryContainer.arguments = ["ls", "/ws"];
                  shared.primaryContainer.workspaceMountPath = "/ws";
                  try { await shared.run(); } catch (e) { console.log(`refused: ${e.reason}`); }
                });
                events.process();"#,
            ),
            WorkerRequest {
                event: Event::new(&event_id, "test-project", "brigade.sh/cli", "exec"),
                limits: WorkerLimits::default(),
                log: Arc::new(log.clone()),
                jobs: JobCapability::Executor {
                    executor,
                    event: context,
                },
            },
        )
        .await;
    let run = Run {
        outcome,
        log,
        event_id,
    };
    run.assert_succeeded();
    let lines = run.job_lines();
    assert!(
        lines.contains(&"[in-the-sandbox] arg: no pod".to_string()),
        "{lines:?}"
    );
    run.assert_logged(
        "refused: job \"wants-the-claim\": a Wasm job runs in the sandbox, where this executor's workspace is not (on Kubernetes the workspace is a volume claim",
    );
    let pods: Vec<String> = cluster
        .fake
        .created("pods")
        .iter()
        .map(|pod| {
            pod["metadata"]["labels"]["mizzen.sh/job"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(pods, ["in-a-pod"], "only the container job is a Pod");
    run.assert_logged(
        "refused: job \"env-from-the-claim\": primaryContainer: environmentFile \"workspace:ci.env\": the event's workspace cannot be read here: on Kubernetes the workspace is a volume claim",
    );
    assert!(
        cluster
            .fake
            .created("secrets")
            .iter()
            .any(|s| s["stringData"]["in-a-pod.GREETING"] == "hello from the file"),
        "the environment file's variable is in the job's environment Secret"
    );
    cluster.assert_nothing_denied();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_pods_that_the_events_jobs_reach_through_its_headless_service() {
    let cluster = cluster().await;
    let pods = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let seen = pods.clone();
    cluster.fake.on_pod(move |pod| {
        seen.lock().unwrap().push(pod.clone());
        let job = pod["metadata"]["labels"]["mizzen.sh/job"]
            .as_str()
            .unwrap_or_default();
        match job {
            "db" | "cache" => PodScript::default().with(job, forever()),
            "broken" => PodScript::default().with(job, lines(&["no config"], 3)),
            _ => PodScript::default().with(job, lines(&[&format!("{job} ran")], 0)),
        }
    });
    let run = cluster
        .run_js(
            r#"
            const { events, Job, Service } = require("@brigadecore/brigadier");
            events.on("brigade.sh/cli", "exec", async event => {
              const db = new Service("db", "postgres");
              db.readiness = { tcpPort: 5432 };
              db.ports = ["5432"];
              const migrate = new Service("migrate", "migrate/migrate");
              migrate.readiness = { exited: true };
              migrate.after = ["db"];
              const cache = new Service("cache", "redis");
              const begun = Date.now();
              await Promise.all([db.start(), migrate.start(), cache.start()]);
              console.log("cache up 3 s first:", Date.now() - begun >= 3000);
              await new Job("test", "debian", event).run();
              const broken = new Service("broken", "debian");
              const after = new Service("after-broken", "debian");
              after.after = ["broken"];
              const [b, a] = await Promise.allSettled([broken.start(), after.start()]);
              console.log(b.reason.code, a.reason.message);
              const port = new Service("published", "redis");
              port.ports = ["0:6379"];
              await port.start().catch((e) => console.log(e.message));
            });
            events.process();
            "#,
        )
        .await;
    run.assert_succeeded();
    cluster.assert_nothing_denied();
    run.assert_logged("cache up 3 s first: true");
    run.assert_logged("[job: test] test ran");
    run.assert_logged(
        r#"not_ready Error starting service "after-broken": service "after-broken" was not started: "broken", which it comes after, was not ready (service "broken" was not ready: it ended FAILED"#,
    );
    run.assert_logged(
        r#"service "published": port "0:6379" publishes a host port, which the project's policy forbids (spec.workerTemplate.jobPolicies.allowHostPorts is not true)"#,
    );
    let pods = pods.lock().unwrap();
    let pod = |job: &str| {
        pods.iter()
            .find(|p| p["metadata"]["labels"]["mizzen.sh/job"] == job)
            .unwrap_or_else(|| panic!("no Pod for {job}"))
            .clone()
    };
    let domain = format!("mizzen-services-{}", run.event_id);
    let db = pod("db");
    assert_eq!(db["spec"]["hostname"], "db");
    assert_eq!(db["spec"]["subdomain"], domain.as_str());
    assert_eq!(db["metadata"]["labels"]["mizzen.sh/service"], "true");
    assert_eq!(
        db["spec"]["containers"][0]["startupProbe"]["tcpSocket"]["port"],
        5432
    );
    assert_eq!(
        pod("test")["spec"]["dnsConfig"]["searches"][0],
        format!("{domain}.{NAMESPACE}.svc.cluster.local").as_str()
    );
    // The event's headless Service and NetworkPolicy were made once, for
    // the first service, and went with the event.
    let created = |resource: &str| {
        cluster
            .fake
            .requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path.ends_with(&format!("/{resource}")))
            .count()
    };
    assert_eq!(created("services"), 1);
    assert_eq!(created("networkpolicies"), 1);
}
