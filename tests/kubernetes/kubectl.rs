//! The fake Kubernetes API server (`mizzen_tests::fake_kube`) driven by the
//! real kubectl, a second client beside kube-rs, so that what the fake
//! answers is checked against what a Kubernetes client expects: discovery,
//! OpenAPI v3 and server-side field validation, Tables, watches, logs,
//! deletion. kubectl is the one scripts/setup-kubectl installs; its path
//! comes in MIZZEN_TEST_KUBECTL, and without it these tests fail.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use mizzen_tests::fake_kube::{ContainerScript, FakeConfig, FakeKube, PodScript, RoleRule};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

const NAMESPACE: &str = "jobs";

/// Long enough for a loaded 2-core machine, short enough to fail fast.
const PATIENCE: Duration = Duration::from_secs(20);

/// What the tests' kubectl may do in its namespace: everything on the
/// resources the fake serves, as a namespaced Role grants it.
const ROLE: &str = r#"
kind: Role
apiVersion: rbac.authorization.k8s.io/v1
metadata: { name: kubectl, namespace: jobs }
rules:
  - apiGroups: [""]
    resources: ["pods", "pods/log", "secrets", "services", "persistentvolumeclaims"]
    verbs: ["*"]
  - apiGroups: ["networking.k8s.io"]
    resources: ["networkpolicies"]
    verbs: ["*"]
"#;

/// The fake, and kubectl pointed at it.
struct Kubectl {
    fake: FakeKube,
    binary: PathBuf,
    dir: tempfile::TempDir,
}

/// A finished kubectl.
struct Output {
    success: bool,
    stdout: String,
    stderr: String,
}

async fn kubectl() -> Kubectl {
    let binary = std::env::var_os("MIZZEN_TEST_KUBECTL").unwrap_or_else(|| {
        panic!(
            "MIZZEN_TEST_KUBECTL is not set: these tests run the real kubectl. Run \
             `export MIZZEN_TEST_KUBECTL=\"$(scripts/setup-kubectl)\"` (scripts/test does)"
        )
    });
    let binary = PathBuf::from(binary);
    assert!(
        binary.is_file(),
        "MIZZEN_TEST_KUBECTL={} is not a file: run scripts/setup-kubectl",
        binary.display()
    );
    let fake = FakeKube::start(FakeConfig {
        namespaces: vec![NAMESPACE.to_owned()],
        rules: RoleRule::from_role_yaml(ROLE),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    fake.write_kubeconfig(&dir.path().join("kubeconfig"), NAMESPACE)
        .unwrap();
    Kubectl { fake, binary, dir }
}

impl Kubectl {
    /// kubectl with `args`, alone: its own kubeconfig, discovery cache and
    /// home, nothing from the environment.
    fn command(&self, args: &[&str]) -> Command {
        let dir = self.dir.path();
        let mut command = Command::new(&self.binary);
        command
            .env_clear()
            .env("HOME", dir)
            .arg("--kubeconfig")
            .arg(dir.join("kubeconfig"))
            .arg("--cache-dir")
            .arg(dir.join("cache"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    async fn output(&self, args: &[&str]) -> Output {
        let run = self.command(args).output();
        let output = tokio::time::timeout(PATIENCE, run)
            .await
            .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in {PATIENCE:?}"))
            .expect("running kubectl");
        Output {
            success: output.status.success(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// kubectl's output; it must succeed.
    async fn run(&self, args: &[&str]) -> String {
        let output = self.output(args).await;
        assert!(
            output.success,
            "kubectl {args:?} failed:\n{}\nrequests: {:#?}",
            output.stderr,
            self.paths()
        );
        output.stdout
    }

    /// kubectl's error; it must fail.
    async fn fail(&self, args: &[&str]) -> String {
        let output = self.output(args).await;
        assert!(
            !output.success,
            "kubectl {args:?} succeeded: {}",
            output.stdout
        );
        output.stderr
    }

    /// Writes `manifest` to `file` in kubectl's directory, for `-f`.
    fn manifest(&self, file: &str, manifest: &str) -> String {
        let path = self.dir.path().join(file);
        std::fs::write(&path, manifest).unwrap();
        path.to_str().unwrap().to_owned()
    }

    /// `kubectl create -f FILE` of `manifest`; it must succeed.
    async fn create(&self, file: &str, manifest: &str) -> String {
        self.run(&["create", "-f", &self.manifest(file, manifest)])
            .await
    }

    /// `METHOD path?query` of every request so far, for failure messages.
    fn paths(&self) -> Vec<String> {
        self.fake
            .requests()
            .iter()
            .map(|r| format!("{} {}?{}", r.method, r.path, r.query))
            .collect()
    }

    /// Asserts that kubectl needed nothing the Role does not grant, but for
    /// reading the namespace (cluster-scoped, so out of a Role's reach:
    /// kubectl asks after an empty list, and takes the refusal in its stride
    /// as it does on a real cluster).
    #[track_caller]
    fn assert_only_the_namespace_denied(&self) {
        let denied: Vec<_> = self
            .fake
            .denied()
            .into_iter()
            .filter(|d| (d.verb.as_str(), d.resource.as_str()) != ("get", "namespaces"))
            .collect();
        assert!(denied.is_empty(), "kubectl was refused: {denied:#?}");
    }
}

/// The rows of kubectl's table output, each split into its cells.
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

/// The JSON documents kubectl has printed so far (`-o json` writes them one
/// after the other); an incomplete last one is left in `buffer`.
fn take_documents(buffer: &mut Vec<u8>) -> Vec<Value> {
    let mut stream = serde_json::Deserializer::from_slice(buffer).into_iter::<Value>();
    let mut documents = Vec::new();
    loop {
        match stream.next() {
            Some(Ok(document)) => documents.push(document),
            Some(Err(e)) if e.is_eof() => break,
            Some(Err(e)) => panic!(
                "kubectl printed something that is not JSON ({e}): {}",
                String::from_utf8_lossy(buffer)
            ),
            None => break,
        }
    }
    let consumed = stream.byte_offset();
    buffer.drain(..consumed);
    documents
}

async fn collect_stdout(child: &mut Child) -> String {
    let mut stdout = child.stdout.take().unwrap();
    let mut text = String::new();
    stdout.read_to_string(&mut text).await.unwrap();
    text
}

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: hello
  labels: { app: demo }
spec:
  restartPolicy: Never
  containers:
    - name: main
      image: busybox
      command: ["sh", "-c", "echo one; sleep 1; echo two; echo three"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_a_pod_watches_it_succeed_reads_its_logs_and_deletes_it() {
    let kubectl = kubectl().await;
    // Long enough for the watch and a following log stream to see it run.
    kubectl.fake.on_pod(|_| {
        PodScript::default().with(
            "main",
            ContainerScript {
                runs_for: Duration::from_millis(1500),
                ..ContainerScript::new(["one", "two", "three"], 0)
            },
        )
    });

    assert_eq!(
        kubectl.create("pod.yaml", POD).await.trim(),
        "pod/hello created"
    );
    assert_eq!(
        kubectl.run(&["get", "pods", "-o", "name"]).await,
        "pod/hello\n"
    );
    // The default output is the server's Table.
    let table = rows(&kubectl.run(&["get", "pods"]).await);
    assert_eq!(table[0], ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]);
    assert_eq!(table.len(), 2, "{table:?}");
    assert_eq!(table[1][0], "hello");
    assert!(
        ["Pending", "ContainerCreating", "Running"].contains(&table[1][2].as_str()),
        "{table:?}"
    );

    // The watch prints the pod, then each change, until the end; once it
    // runs, a following log stream is opened beside it.
    let mut watch = kubectl
        .command(&["get", "pod", "hello", "--watch", "-o", "json"])
        .spawn()
        .unwrap();
    let mut stdout = watch.stdout.take().unwrap();
    let mut buffer = Vec::new();
    let mut phases: Vec<String> = Vec::new();
    let mut follow = None;
    tokio::time::timeout(PATIENCE, async {
        while phases.last().is_none_or(|p| p != "Succeeded") {
            let mut chunk = [0; 8192];
            let read = stdout.read(&mut chunk).await.unwrap();
            assert!(
                read > 0,
                "the watch ended before the pod succeeded: {phases:?}"
            );
            buffer.extend_from_slice(&chunk[..read]);
            for pod in take_documents(&mut buffer) {
                assert_eq!(pod["kind"], "Pod");
                assert_eq!(pod["metadata"]["name"], "hello");
                let phase = pod["status"]["phase"].as_str().unwrap_or_default();
                if phase == "Running" && follow.is_none() {
                    follow = Some(kubectl.command(&["logs", "-f", "hello"]).spawn().unwrap());
                }
                phases.push(phase.to_owned());
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the pod did not succeed in {PATIENCE:?}: {phases:?}"));
    drop(watch);
    phases.dedup();
    assert_eq!(
        phases.last().map(String::as_str),
        Some("Succeeded"),
        "{phases:?}"
    );
    assert!(
        phases.iter().any(|p| p == "Running"),
        "the watch never saw the pod run: {phases:?}"
    );
    // The following stream ends by itself when the container does.
    let mut follow = follow.expect("a log stream was opened while the pod ran");
    let followed = tokio::time::timeout(PATIENCE, async {
        let text = collect_stdout(&mut follow).await;
        (text, follow.wait().await.unwrap())
    })
    .await
    .expect("kubectl logs -f did not end with the container");
    assert!(followed.1.success(), "kubectl logs -f failed");
    assert_eq!(followed.0, "one\ntwo\nthree\n");

    let list: Value = serde_json::from_str(&kubectl.run(&["get", "pods", "-o", "json"]).await)
        .expect("kubectl get -o json prints JSON");
    let items = list["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["metadata"]["name"], "hello");
    assert_eq!(items[0]["status"]["phase"], "Succeeded");
    assert_eq!(
        items[0]["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    let table = rows(&kubectl.run(&["get", "pods"]).await);
    assert_eq!(table[1][..4], ["hello", "0/1", "Completed", "0"]);
    assert_eq!(kubectl.run(&["logs", "hello"]).await, "one\ntwo\nthree\n");

    let deleted = kubectl.run(&["delete", "pod", "hello"]).await;
    assert!(deleted.starts_with("pod \"hello\" deleted"), "{deleted}");
    assert_eq!(kubectl.run(&["get", "pods", "-o", "name"]).await, "");
    let missing = kubectl.fail(&["get", "pod", "hello"]).await;
    assert!(
        missing.contains("Error from server (NotFound): pods \"hello\" not found"),
        "{missing}"
    );
    kubectl.assert_only_the_namespace_denied();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_creates_and_reads_a_secret() {
    let kubectl = kubectl().await;
    let created = kubectl
        .create(
            "secret.yaml",
            r#"
apiVersion: v1
kind: Secret
metadata: { name: credentials, labels: { app: demo } }
stringData: { password: hunter2 }
"#,
        )
        .await;
    assert_eq!(created.trim(), "secret/credentials created");

    let secret: Value = serde_json::from_str(
        &kubectl
            .run(&["get", "secret", "credentials", "-o", "json"])
            .await,
    )
    .unwrap();
    // stringData is write-only: it comes back in data, base64.
    assert_eq!(secret["data"]["password"], "aHVudGVyMg==");
    assert!(secret.get("stringData").is_none(), "{secret:#}");
    assert_eq!(secret["type"], "Opaque");
    let password = kubectl
        .run(&[
            "get",
            "secret",
            "credentials",
            "-o",
            "jsonpath={.data.password}",
        ])
        .await;
    assert_eq!(password, "aHVudGVyMg==");

    let table = rows(&kubectl.run(&["get", "secrets", "-l", "app=demo"]).await);
    assert_eq!(table[0], ["NAME", "TYPE", "DATA", "AGE"]);
    assert_eq!(table[1][..3], ["credentials", "Opaque", "1"]);
    assert_eq!(
        kubectl.run(&["get", "secrets", "-o", "name"]).await,
        "secret/credentials\n"
    );
    // kubectl's typed commands send protobuf, which the fake does not read:
    // it says so, rather than misreading the body.
    let typed = kubectl
        .fail(&["create", "secret", "generic", "typed", "--from-literal=a=b"])
        .await;
    assert!(
        typed.contains("the body of the request was in an unknown format")
            && typed.contains("application/vnd.kubernetes.protobuf"),
        "{typed}"
    );
    kubectl.assert_only_the_namespace_denied();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_has_unknown_fields_refused_by_the_server() {
    let kubectl = kubectl().await;
    let misspelt = r#"
apiVersion: v1
kind: Pod
metadata: { name: misspelt }
spec:
  containers:
    - name: main
      image: busybox
      comand: ["true"]
"#;
    // kubectl leaves validation to the server (fieldValidation=Strict),
    // having read in the OpenAPI that it supports it.
    let file = kubectl.manifest("misspelt.yaml", misspelt);
    let strict = kubectl.output(&["create", "-f", &file]).await;
    assert!(!strict.success);
    assert!(
        strict.stderr.contains(
            "Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: unknown \
             field \"spec.containers[0].comand\""
        ),
        "{}",
        strict.stderr
    );
    let post = kubectl
        .fake
        .requests()
        .into_iter()
        .find(|r| r.method == "POST")
        .unwrap();
    assert_eq!(post.param("fieldValidation"), Some("Strict"));

    // Warned about and dropped, as the API server does.
    let warned = kubectl
        .output(&["create", "--validate=warn", "-f", &file])
        .await;
    assert!(warned.success, "{}", warned.stderr);
    assert!(
        warned
            .stderr
            .contains("Warning: unknown field \"spec.containers[0].comand\""),
        "{}",
        warned.stderr
    );
    let container = kubectl
        .run(&[
            "get",
            "pod",
            "misspelt",
            "-o",
            "jsonpath={.spec.containers[0]}",
        ])
        .await;
    let container: Value = serde_json::from_str(&container).unwrap();
    assert_eq!(
        container,
        serde_json::json!({ "name": "main", "image": "busybox" })
    );
    kubectl.assert_only_the_namespace_denied();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_lists_services_and_network_policies() {
    let kubectl = kubectl().await;
    let created = kubectl
        .create(
            "redis.yaml",
            r#"
apiVersion: v1
kind: Service
metadata: { name: redis }
spec:
  selector: { app: redis }
  ports: [{ port: 6379 }]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { name: redis-clients }
spec:
  podSelector: { matchLabels: { app: redis } }
  ingress: [{ from: [{ podSelector: { matchLabels: { role: client } } }] }]
"#,
        )
        .await;
    assert_eq!(
        created,
        "service/redis created\nnetworkpolicy.networking.k8s.io/redis-clients created\n"
    );

    let services = rows(&kubectl.run(&["get", "services", "-o", "wide"]).await);
    assert_eq!(
        services[0],
        [
            "NAME",
            "TYPE",
            "CLUSTER-IP",
            "EXTERNAL-IP",
            "PORT(S)",
            "AGE",
            "SELECTOR"
        ]
    );
    let cluster_ip = &services[1][2];
    assert!(cluster_ip.starts_with("10.96."), "{services:?}");
    assert_eq!(services[1][..2], ["redis", "ClusterIP"]);
    assert_eq!(services[1][3..5], ["<none>", "6379/TCP"]);
    assert_eq!(services[1][6], "app=redis");
    // By its short name, through the discovery document.
    let policies = rows(&kubectl.run(&["get", "netpol"]).await);
    assert_eq!(policies[0], ["NAME", "POD-SELECTOR", "AGE"]);
    assert_eq!(policies[1][..2], ["redis-clients", "app=redis"]);
    let policy_types = kubectl
        .run(&[
            "get",
            "netpol",
            "redis-clients",
            "-o",
            "jsonpath={.spec.policyTypes}",
        ])
        .await;
    assert_eq!(policy_types, r#"["Ingress"]"#);

    let deleted = kubectl
        .run(&["delete", "service/redis", "networkpolicy/redis-clients"])
        .await;
    assert!(
        deleted.contains("service \"redis\" deleted")
            && deleted.contains("networkpolicy.networking.k8s.io \"redis-clients\" deleted"),
        "{deleted}"
    );
    assert!(kubectl.fake.objects("services", NAMESPACE).is_empty());
    assert!(
        kubectl
            .fake
            .objects("networkpolicies", NAMESPACE)
            .is_empty()
    );
    kubectl.assert_only_the_namespace_denied();
}
