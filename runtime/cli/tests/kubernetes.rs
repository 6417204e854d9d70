//! `mizzen run --executor kubernetes`: the container-job examples end to
//! end through the CLI, with their jobs as Pods.
//!
//! Always against a fake Kubernetes API server at the HTTP level
//! (`mizzen_tests::fake_kube`: the Role of deploy/base/role.yaml, Pods
//! played back with the output their commands would print), checking the
//! Pods the executor asked for. With `MIZZEN_TEST_KUBECONFIG` set, the same
//! examples also run against that real cluster (namespace
//! `MIZZEN_TEST_KUBERNETES_NAMESPACE`, default `default`; example 08 needs a
//! ReadWriteMany storage class, `MIZZEN_TEST_KUBERNETES_STORAGE_CLASS`).

mod common;
use common::{Ran, repo};

use std::path::Path;
use std::process::Command;

use mizzen_tests::fake_kube::{ContainerScript, FakeConfig, FakeKube, PodScript};

const NAMESPACE: &str = "mizzen-jobs";

/// What an example's jobs print, by job and container: what the fake's
/// kubelet plays back, and what a real cluster prints.
const OUTPUT: [(&str, &str, &str); 8] = [
    ("my-first-job", "my-first-job", "My first job!"),
    ("my-second-job", "my-second-job", "My second job!"),
    ("my-a-job", "my-a-job", "My A job!"),
    ("my-b-job", "my-b-job", "My B job!"),
    ("first-job", "first-job", ""),
    ("second-job", "second-job", "Hello!"),
    ("my-job", "my-job", "Hello from the primary container!"),
    ("my-job", "sidecar", "Hello from the sidecar container!"),
];

/// The examples and the lines each must print.
const EXAMPLES: [(&str, &[&str]); 5] = [
    ("03-first-job", &["[job: my-first-job] My first job!"]),
    (
        "04-simple-pipeline",
        &[
            "[job: my-first-job] My first job!",
            "[job: my-second-job] My second job!",
        ],
    ),
    (
        "05-groups",
        &[
            "[job: my-first-job] My first job!",
            "[job: my-second-job] My second job!",
            "[job: my-a-job] My A job!",
            "[job: my-b-job] My B job!",
        ],
    ),
    ("08-shared-workspace", &["[job: second-job] Hello!"]),
    (
        "14-sidecar-container",
        &[
            "[job: my-job] Hello from the primary container!",
            "[job: my-job/sidecar] Hello from the sidecar container!",
        ],
    ),
];

/// Runs `mizzen run --executor kubernetes <example>` with `kubeconfig`.
async fn run_example(example: &str, kubeconfig: &Path, extra: &[&str]) -> Ran {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let data = tempfile::tempdir().unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_mizzen"));
    command
        .args(["run", "--executor", "kubernetes"])
        .args(extra)
        .arg(format!("examples/{example}"))
        .current_dir(repo())
        .env("KUBECONFIG", kubeconfig)
        .env("MIZZEN_CACHE_DIR", tmp.join("mizzen-cache"))
        .env("MIZZEN_DATA_DIR", data.path());
    let output = tokio::task::spawn_blocking(move || command.output().expect("mizzen runs"))
        .await
        .unwrap();
    Ran::from(output)
}

#[track_caller]
fn assert_printed(example: &str, ran: &Ran, lines: &[&str]) {
    assert_eq!(ran.code, 0, "{example}: {ran:?}");
    for line in lines {
        assert!(
            ran.stdout.contains(&format!("{line}\n")),
            "{example}: {line:?} missing: {ran:?}"
        );
    }
}

async fn fake_cluster() -> FakeKube {
    let fake = FakeKube::start(FakeConfig::deployed(&[NAMESPACE])).await;
    fake.on_pod(|pod| {
        let job = pod["metadata"]["labels"]["mizzen.sh/job"]
            .as_str()
            .unwrap_or_default();
        let mut script = PodScript::default();
        for (_, container, line) in OUTPUT.iter().filter(|(j, _, _)| *j == job) {
            let lines: Vec<&str> = [*line].into_iter().filter(|l| !l.is_empty()).collect();
            script = script.with(container, ContainerScript::new(lines, 0));
        }
        script
    });
    fake
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_job_examples_run_as_pods_on_a_fake_cluster() {
    let fake = fake_cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig, NAMESPACE).unwrap();
    for (example, lines) in EXAMPLES {
        let ran = run_example(example, &kubeconfig, &[]).await;
        assert_printed(example, &ran, lines);
    }
    assert!(fake.denied().is_empty(), "{:#?}", fake.denied());

    // What the executor asked for: the Pods carry the examples' commands,
    // 08's jobs share one workspace claim, 14's sidecar is a native one.
    let pods = fake.created("pods");
    assert_eq!(pods.len(), 1 + 2 + 4 + 2 + 1, "{pods:#?}");
    let pod = |job: &str| {
        pods.iter()
            .find(|p| p["metadata"]["labels"]["mizzen.sh/job"] == job)
            .unwrap_or_else(|| panic!("no Pod for {job}"))
    };
    assert_eq!(
        pod("my-a-job")["spec"]["containers"][0]["args"],
        serde_json::json!(["My A job!"])
    );
    let claims = fake.created("persistentvolumeclaims");
    assert_eq!(claims.len(), 1, "{claims:#?}");
    for job in ["first-job", "second-job"] {
        let volumes = &pod(job)["spec"]["volumes"];
        assert_eq!(
            volumes[0]["persistentVolumeClaim"]["claimName"],
            claims[0]["metadata"]["name"]
        );
    }
    let sidecar = &pod("my-job")["spec"]["initContainers"][0];
    assert_eq!(sidecar["name"], "sidecar");
    assert_eq!(sidecar["restartPolicy"], "Always");
    // Every event's objects were collected when it ended.
    for resource in ["pods", "secrets", "persistentvolumeclaims"] {
        assert!(
            fake.objects(resource, NAMESPACE).is_empty(),
            "{resource} left: {:#?}",
            fake.objects(resource, NAMESPACE)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cluster_configured_the_executor_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run_example("03-first-job", &dir.path().join("missing"), &[]).await;
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("--executor kubernetes"), "{ran:?}");
}

/// Says what was skipped on the terminal itself: the test harness keeps
/// what passing tests print with `eprintln!` to itself.
fn skipped(what: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {what}");
}

/// The same examples on a real cluster, when one is configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_job_examples_run_on_a_real_cluster() {
    let Some(kubeconfig) = std::env::var_os("MIZZEN_TEST_KUBECONFIG") else {
        skipped(
            "container_job_examples_run_on_a_real_cluster: set MIZZEN_TEST_KUBECONFIG to a kubeconfig file to run the examples on a real cluster",
        );
        return;
    };
    let namespace =
        std::env::var("MIZZEN_TEST_KUBERNETES_NAMESPACE").unwrap_or_else(|_| "default".into());
    let storage_class = std::env::var("MIZZEN_TEST_KUBERNETES_STORAGE_CLASS").ok();
    let mut extra = vec!["--kubernetes-namespace", namespace.as_str()];
    if let Some(class) = &storage_class {
        extra.extend(["--kubernetes-workspace-storage-class", class.as_str()]);
    }
    for (example, lines) in EXAMPLES {
        if example == "08-shared-workspace" && storage_class.is_none() {
            skipped(&format!(
                "{example}: set MIZZEN_TEST_KUBERNETES_STORAGE_CLASS to a ReadWriteMany storage class"
            ));
            continue;
        }
        let ran = run_example(example, Path::new(&kubeconfig), &extra).await;
        assert_printed(example, &ran, lines);
    }
}
