//! The fake Kubernetes API (mizzen_tests::fake_kube) driven by a real kube
//! client, so that the executor's tests can trust what it answers.

use std::pin::pin;
use std::time::Duration;

use futures_util::{AsyncBufReadExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use mizzen_tests::fake_kube::{ContainerScript, FakeConfig, FakeKube, PodScript, RoleRule};
use serde_json::json;

const ROLE: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: { name: mizzen, namespace: mizzen }
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: { name: mizzen-jobs, namespace: jobs }
rules:
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["get", "list", "watch", "create", "delete"]
  - apiGroups: [""]
    resources: ["pods/log"]
    verbs: ["get"]
  - apiGroups: [""]
    resources: ["secrets", "persistentvolumeclaims"]
    verbs: ["get", "create", "delete"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: { name: mizzen-jobs, namespace: jobs }
roleRef: { apiGroup: rbac.authorization.k8s.io, kind: Role, name: mizzen-jobs }
subjects: [{ kind: ServiceAccount, name: mizzen, namespace: mizzen }]
"#;

/// Long enough for a loaded 2-core machine, short enough to fail fast.
const PATIENCE: Duration = Duration::from_secs(20);

async fn start() -> (FakeKube, kube::Client, tempfile::TempDir) {
    let fake = FakeKube::start(FakeConfig {
        namespaces: vec!["jobs".to_owned()],
        rules: RoleRule::from_role_yaml(ROLE),
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    fake.write_kubeconfig(&path, "jobs").unwrap();
    let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap();
    let options = kube::config::KubeConfigOptions::default();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "jobs");
    let client = kube::Client::try_from(config).unwrap();
    (fake, client, dir)
}

fn pod(name: &str, body: serde_json::Value) -> Pod {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": { "app": "mizzen" } },
        "spec": { "restartPolicy": "Never", "containers": [{ "name": "main", "image": "alpine:3" }] },
    });
    if let Some(spec) = body.as_object() {
        for (key, value) in spec {
            pod["spec"][key] = value.clone();
        }
    }
    serde_json::from_value(pod).unwrap()
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// The watched pod, once `done` holds for it.
async fn until(pods: &mut (impl Stream<Item = Pod> + Unpin), done: impl Fn(&Pod) -> bool) -> Pod {
    tokio::time::timeout(PATIENCE, async {
        while let Some(pod) = pods.next().await {
            if done(&pod) {
                return pod;
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("the pod did not get there in time")
}

fn watch_pod(api: &Api<Pod>, name: &str) -> impl Stream<Item = Pod> + Unpin + use<> {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    // Errors (a dropped watch) are retried by the watcher itself.
    Box::pin(
        watcher(api.clone(), config)
            .default_backoff()
            .applied_objects()
            .filter_map(|pod| async { pod.ok() }),
    )
}

fn api_error(error: kube::Error) -> kube::core::Status {
    match error {
        kube::Error::Api(status) => *status,
        other => panic!("expected a Status error, got {other:?}"),
    }
}

#[tokio::test]
async fn pod_runs_and_its_log_follows() {
    let (fake, client, _dir) = start().await;
    fake.on_pod(|_| {
        PodScript::default().with(
            "main",
            ContainerScript {
                runs_for: Duration::from_millis(300),
                ..ContainerScript::new(["one", "two", "three"], 0)
            },
        )
    });
    let pods: Api<Pod> = Api::default_namespaced(client);
    let created = pods
        .create(&PostParams::default(), &pod("job-1", json!({})))
        .await
        .unwrap();
    assert_eq!(phase(&created), "Pending");
    assert!(created.metadata.uid.is_some());

    let again = pods
        .create(&PostParams::default(), &pod("job-1", json!({})))
        .await;
    let conflict = api_error(again.unwrap_err());
    assert_eq!(
        (conflict.code, conflict.reason.as_str()),
        (409, "AlreadyExists")
    );

    let mut watched = watch_pod(&pods, "job-1");
    until(&mut watched, |p| phase(p) == "Running").await;
    let params = LogParams {
        follow: true,
        timestamps: true,
        container: Some("main".to_owned()),
        ..LogParams::default()
    };
    let lines: Vec<String> = tokio::time::timeout(PATIENCE, async {
        let log = pods.log_stream("job-1", &params).await.unwrap();
        pin!(log).lines().try_collect().await.unwrap()
    })
    .await
    .expect("the log did not end with the container");
    let (stamps, texts): (Vec<&str>, Vec<&str>) =
        lines.iter().map(|l| l.split_once(' ').unwrap()).unzip();
    assert_eq!(texts, ["one", "two", "three"]);
    let stamps: Vec<jiff::Timestamp> = stamps.iter().map(|s| s.parse().unwrap()).collect();
    assert!(stamps.is_sorted_by(|a, b| a < b), "{stamps:?}");

    let done = until(&mut watched, |p| phase(p) == "Succeeded").await;
    let main = &done.status.unwrap().container_statuses.unwrap()[0];
    let terminated = main.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (0, Some("Completed"))
    );

    // The watcher's first list and the watch that follows it.
    let requests = fake.requests();
    let list = requests
        .iter()
        .find(|r| {
            r.method == "GET"
                && r.path == "/api/v1/namespaces/jobs/pods"
                && r.param("watch").is_none()
        })
        .unwrap();
    assert_eq!(list.param("fieldSelector"), Some("metadata.name=job-1"));
    let watch = requests
        .iter()
        .find(|r| r.param("watch") == Some("true"))
        .unwrap();
    assert!(watch.param("resourceVersion").is_some_and(|rv| rv != "0"));
}

#[tokio::test]
async fn a_waiting_container_has_no_log_yet() {
    let (fake, client, _dir) = start().await;
    fake.on_pod(|_| PodScript {
        image_pull_failure: Some("main".to_owned()),
        ..PodScript::default()
    });
    let pods: Api<Pod> = Api::default_namespaced(client);
    pods.create(&PostParams::default(), &pod("job-2", json!({})))
        .await
        .unwrap();
    let mut watched = watch_pod(&pods, "job-2");
    let waiting_as = |reason: &'static str| {
        move |p: &Pod| {
            let statuses = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref());
            statuses.is_some_and(|s| {
                let waiting = s[0].state.as_ref().and_then(|s| s.waiting.as_ref());
                waiting.is_some_and(|w| w.reason.as_deref() == Some(reason))
            })
        }
    };
    until(&mut watched, waiting_as("ErrImagePull")).await;
    let pulling = until(&mut watched, waiting_as("ImagePullBackOff")).await;
    assert_eq!(phase(&pulling), "Pending");

    let log = pods.logs("job-2", &LogParams::default()).await;
    let refusal = api_error(log.unwrap_err());
    assert_eq!(refusal.code, 400);
    assert!(
        refusal
            .message
            .contains(r#"container "main" in pod "job-2" is waiting to start"#)
    );
}

#[tokio::test]
async fn what_the_role_does_not_allow_is_forbidden() {
    let (fake, client, _dir) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    pods.create(&PostParams::default(), &pod("job-3", json!({})))
        .await
        .unwrap();

    // Not in the Role: listing secrets, anything cluster-wide.
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let refusal = api_error(secrets.list(&ListParams::default()).await.unwrap_err());
    assert_eq!((refusal.code, refusal.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        refusal.message,
        r#"secrets is forbidden: User "system:serviceaccount:mizzen:mizzen" cannot list resource "secrets" in API group "" in the namespace "jobs""#
    );
    let everywhere: Api<Pod> = Api::all(client);
    let refusal = api_error(everywhere.list(&ListParams::default()).await.unwrap_err());
    assert!(
        refusal.message.ends_with("at the cluster scope"),
        "{}",
        refusal.message
    );

    // Refused at run time on top of the Role.
    fake.forbid("delete", "pods");
    let refusal = api_error(
        pods.delete("job-3", &DeleteParams::default())
            .await
            .unwrap_err(),
    );
    assert_eq!(
        refusal.message,
        r#"pods "job-3" is forbidden: User "system:serviceaccount:mizzen:mizzen" cannot delete resource "pods" in API group "" in the namespace "jobs""#
    );

    let denied: Vec<_> = fake
        .denied()
        .into_iter()
        .map(|d| (d.verb, d.resource, d.namespace))
        .collect();
    assert_eq!(
        denied,
        [
            (
                "list".to_owned(),
                "secrets".to_owned(),
                Some("jobs".to_owned())
            ),
            ("list".to_owned(), "pods".to_owned(), None),
            (
                "delete".to_owned(),
                "pods".to_owned(),
                Some("jobs".to_owned())
            ),
        ]
    );
    assert_eq!(fake.objects("pods", "jobs").len(), 1);
}

#[tokio::test]
async fn the_watcher_resumes_after_the_server_drops_its_watches() {
    let (fake, client, _dir) = start().await;
    fake.on_pod(|_| {
        PodScript::default().with(
            "main",
            ContainerScript {
                runs_for: Duration::from_millis(500),
                ..ContainerScript::new(["working"], 3)
            },
        )
    });
    let pods: Api<Pod> = Api::default_namespaced(client);
    pods.create(&PostParams::default(), &pod("job-4", json!({})))
        .await
        .unwrap();
    let mut watched = watch_pod(&pods, "job-4");
    until(&mut watched, |p| phase(p) == "Running").await;
    fake.drop_watches();
    // The changes made while no watch was open come from the history.
    let failed = until(&mut watched, |p| phase(p) == "Failed").await;
    let main = &failed.status.unwrap().container_statuses.unwrap()[0];
    let terminated = main.state.as_ref().unwrap().terminated.as_ref().unwrap();
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (3, Some("Error"))
    );

    let requests = fake.requests();
    let lists = requests
        .iter()
        .filter(|r| r.method == "GET" && r.param("watch").is_none());
    let watches: Vec<u64> = requests
        .iter()
        .filter(|r| r.param("watch") == Some("true"))
        .map(|r| r.param("resourceVersion").unwrap().parse().unwrap())
        .collect();
    assert_eq!(lists.count(), 1, "resumed without listing again");
    assert!(watches.len() >= 2 && watches[1] > watches[0], "{watches:?}");
}

#[tokio::test]
async fn deleting_an_owner_collects_its_dependents() {
    let (fake, client, _dir) = start().await;
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let owner = pods
        .create(&PostParams::default(), &pod("job-5", json!({})))
        .await
        .unwrap();
    let owned_by = |kind: &str, name: &str, uid: &str| json!([{ "apiVersion": "v1", "kind": kind, "name": name, "uid": uid }]);
    let secrets: Api<Secret> = Api::default_namespaced(client.clone());
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {
            "name": "job-5-env",
            "ownerReferences": owned_by("Pod", "job-5", owner.metadata.uid.as_deref().unwrap()),
        },
        "stringData": { "A": "1" },
    }))
    .unwrap();
    let secret = secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    // A dependent of the dependent goes too.
    let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(client);
    let claim: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {
            "name": "job-5-work",
            "ownerReferences": owned_by("Secret", "job-5-env", secret.metadata.uid.as_deref().unwrap()),
        },
        "spec": { "accessModes": ["ReadWriteOnce"], "resources": { "requests": { "storage": "1Gi" } } },
    }))
    .unwrap();
    claims.create(&PostParams::default(), &claim).await.unwrap();
    fake.insert(
        "secrets",
        "jobs",
        json!({ "metadata": { "name": "unrelated" } }),
    );

    pods.delete("job-5", &DeleteParams::default())
        .await
        .unwrap();
    let names = |resource| -> Vec<String> {
        fake.objects(resource, "jobs")
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(names("pods").is_empty());
    assert_eq!(names("secrets"), ["unrelated"]);
    assert!(names("persistentvolumeclaims").is_empty());
    let missing = api_error(secrets.get("job-5-env").await.unwrap_err());
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
}
