//! Volumes on Kubernetes, through a script in the sandbox (or the
//! executor's own start) against the fake API server: anonymous volumes are
//! `emptyDir`s; a named one is a claim made before the Pod that mounts it —
//! an event's owned by the event and collected with it, a project's with no
//! owner, its labels and declared size, kept and reused by later events,
//! listed, and deleted only once no running Pod mounts it; a host path is
//! refused by name. Also what the fake does that these rely on: it refuses
//! a Pod's bad volumes and mounts as the API server does, and holds a Pod
//! unscheduled until its claims exist.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use kube::api::{Api, PostParams};
use mizzen_host_api::types::{ContainerSpec, Event, JobHost, JobSpec, Phase};
use mizzen_runtime::executor::{
    EventContext, ExecutorError, JobExecutor, JobOutput, JobRequest, StoredVolume,
};
use mizzen_runtime::log::MemoryLog;
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::volume::{EventVolumes, HostPaths};
use mizzen_runtime::{JobCapability, WorkerLimits, WorkerRequest};
use mizzen_tests::fake_kube::{FakeConfig, FakeKube, PodScript};
use mizzen_tests::worker::{Run, sandbox};
use serde_json::{Value, json};

use super::{Cluster, NAMESPACE, cluster, forever, lines, uuid};

const GIB: u64 = 1024 * 1024 * 1024;
const PROJECT: &str = "test-project";

/// An event of [`PROJECT`], which declares the volume `db` of 1 GiB; its
/// workspace (and so its own volumes) is 2Gi.
fn context(event_id: &str) -> EventContext {
    EventContext {
        workspace_size: Some("2Gi".into()),
        volumes: EventVolumes {
            project: BTreeMap::from([("db".to_string(), GIB)]),
            quota_bytes: 10 * GIB,
            host_paths: HostPaths::default(),
        },
        ..mizzen_tests::worker::context(event_id, PROJECT)
    }
}

fn event_claim(event_id: &str, volume: &str) -> String {
    format!("mizzen-event-volume.{event_id}.{volume}")
}

fn project_claim(volume: &str) -> String {
    format!("mizzen-project-volume.{PROJECT}.{volume}")
}

/// Runs `script` for the event of `context`, as `Cluster::run_js` does;
/// then checks that none of the event's objects is left.
async fn run(cluster: &Cluster, context: EventContext, script: &str) -> Run {
    let event_id = context.event_id.clone();
    let log = MemoryLog::new();
    let outcome = sandbox(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")))
        .await
        .run(
            &ScriptSource::new("brigade.js", script),
            WorkerRequest {
                event: Event::new(&event_id, PROJECT, "brigade.sh/cli", "exec"),
                limits: WorkerLimits::default(),
                log: Arc::new(log.clone()),
                jobs: JobCapability::Executor {
                    executor: cluster.executor.clone(),
                    event: Arc::new(context),
                },
            },
        )
        .await;
    let run = Run {
        outcome,
        log,
        event_id: event_id.clone(),
    };
    for resource in ["pods", "secrets", "persistentvolumeclaims"] {
        let left: Vec<Value> = cluster
            .fake
            .objects(resource, NAMESPACE)
            .into_iter()
            .filter(|o| o["metadata"]["labels"]["mizzen.sh/event"] == event_id.as_str())
            .collect();
        assert!(
            left.is_empty(),
            "{resource} of the event left behind: {left:#?}\nlog:\n{}",
            run.log.text()
        );
    }
    run
}

fn names(objects: &[Value]) -> Vec<String> {
    objects
        .iter()
        .map(|o| {
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

/// Where in the requests the client created `resource` named `name`
/// (the name as it sent it), in order.
fn creations(cluster: &Cluster, resource: &str, name: &str) -> Vec<usize> {
    let suffix = format!("/{resource}");
    cluster
        .fake
        .requests()
        .iter()
        .enumerate()
        .filter(|(_, r)| r.method == "POST" && r.path.ends_with(&suffix))
        .filter(|(_, r)| {
            r.body
                .as_ref()
                .is_some_and(|b| b["metadata"]["name"] == name)
        })
        .map(|(i, _)| i)
        .collect()
}

/// A container's mounts as (path → (Pod volume, read-only)), and the
/// Pod's volumes by name.
fn mounts(pod: &Value, container: &str) -> BTreeMap<String, (Value, bool)> {
    let spec = &pod["spec"];
    let container = ["containers", "initContainers"]
        .iter()
        .flat_map(|list| spec[*list].as_array().cloned().unwrap_or_default())
        .find(|c| c["name"] == container)
        .unwrap_or_else(|| panic!("no container {container} in {pod:#}"));
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|mount| {
            let volume = spec["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|v| v["name"] == mount["name"])
                .unwrap_or_else(|| panic!("the mount {mount} names no volume of the Pod"))
                .clone();
            (
                mount["mountPath"].as_str().unwrap().to_owned(),
                (volume, mount["readOnly"] == true),
            )
        })
        .collect()
}

/// A job's anonymous volumes are `emptyDir`s and its named ones claims,
/// each created before the Pod: the event's owned by the event's owner
/// Secret and sized as its workspace, the project's with no owner, the
/// project's labels and its declared size. A second job's creation of the
/// same claims meets 409s, which are fine. When the event ends its claim
/// goes with its owner while the project's stays, and is listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_volumes_are_claims_made_before_the_pod_and_only_the_events_go_with_it() {
    let cluster = cluster().await;
    // What the cluster holds when the kubelet starts the first job's Pod.
    let at_start = Arc::new(Mutex::new(None::<(Vec<Value>, Vec<Value>)>));
    {
        let fake = Arc::downgrade(&cluster.fake);
        let at_start = at_start.clone();
        cluster.fake.on_pod(move |pod| {
            let job = pod["metadata"]["labels"]["mizzen.sh/job"]
                .as_str()
                .unwrap_or_default();
            if job == "store"
                && let Some(fake) = fake.upgrade()
            {
                *at_start.lock().unwrap() = Some((
                    fake.objects("persistentvolumeclaims", NAMESPACE),
                    fake.objects("secrets", NAMESPACE),
                ));
            }
            PodScript::default().with(job, lines(&[&format!("{job} ran")], 0))
        });
    }
    let event_id = uuid();
    let run = run(
        &cluster,
        context(&event_id),
        r#"
        const { events, Job, Container } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async event => {
          const store = new Job("store", "postgres:16", event);
          store.primaryContainer.volumes = ["/cache", "shared:/shared", "db:/db:ro"];
          store.sidecarContainers = { helper: new Container("busybox") };
          store.sidecarContainers.helper.volumes = ["/tmp/x"];
          await store.run();
          const check = new Job("check", "debian", event);
          check.primaryContainer.volumes = ["shared:/shared:ro", "db:/db"];
          await check.run();
        });
        events.process();
        "#,
    )
    .await;
    run.assert_succeeded();
    assert_eq!(run.job_lines(), ["[store] store ran", "[check] check ran"]);
    cluster.assert_nothing_denied();

    // Both claims were asked for before each Pod, by each job.
    let shared = event_claim(&event_id, "shared");
    let db = project_claim("db");
    let pods = |job: &str| creations(&cluster, "pods", &format!("{event_id}-{job}"));
    let (store_pod, check_pod) = (pods("store"), pods("check"));
    assert_eq!((store_pod.len(), check_pod.len()), (1, 1));
    for claim in [&shared, &db] {
        let posts = creations(&cluster, "persistentvolumeclaims", claim);
        assert_eq!(posts.len(), 2, "{claim} created once per job: {posts:?}");
        assert!(
            posts[0] < store_pod[0] && store_pod[0] < posts[1] && posts[1] < check_pod[0],
            "{claim} at {posts:?}, the Pods at {store_pod:?} and {check_pod:?}"
        );
    }

    // As the cluster held them when the first Pod started.
    let (claims, secrets) = at_start
        .lock()
        .unwrap()
        .clone()
        .expect("the first job's Pod started");
    // In name order, as the API server lists.
    assert_eq!(names(&claims), [shared.clone(), db.clone()]);
    let owner = secrets
        .iter()
        .find(|s| s["metadata"]["name"] == format!("mizzen-event-{event_id}"))
        .expect("the event's owner Secret");
    let [event, project] = &claims[..] else {
        unreachable!()
    };
    assert!(
        project["metadata"]["ownerReferences"].is_null(),
        "a project's claim outlives the event: {project:#}"
    );
    assert_eq!(
        project["metadata"]["labels"],
        json!({
            "app.kubernetes.io/managed-by": "mizzen",
            "mizzen.sh/project": PROJECT,
            "mizzen.sh/project-volume": "true",
            "mizzen.sh/volume": "db",
        })
    );
    assert_eq!(
        project["spec"]["resources"]["requests"]["storage"],
        GIB.to_string()
    );
    assert_eq!(project["spec"]["accessModes"], json!(["ReadWriteMany"]));
    let owned_by = &event["metadata"]["ownerReferences"];
    assert_eq!(owned_by.as_array().map(Vec::len), Some(1), "{event:#}");
    assert_eq!(
        (
            &owned_by[0]["kind"],
            &owned_by[0]["name"],
            &owned_by[0]["uid"]
        ),
        (
            &json!("Secret"),
            &owner["metadata"]["name"],
            &owner["metadata"]["uid"]
        )
    );
    assert_eq!(
        event["metadata"]["labels"],
        json!({
            "app.kubernetes.io/managed-by": "mizzen",
            "mizzen.sh/event": event_id,
            "mizzen.sh/project": PROJECT,
            "mizzen.sh/volume": "shared",
        })
    );
    assert_eq!(event["spec"]["resources"]["requests"]["storage"], "2Gi");
    assert_eq!(event["spec"]["accessModes"], json!(["ReadWriteMany"]));

    // The Pods mount them where asked, read-only where asked.
    let created = cluster.fake.created("pods");
    let pod = |job: &str| {
        created
            .iter()
            .find(|p| p["metadata"]["labels"]["mizzen.sh/job"] == job)
            .unwrap()
    };
    let claim_of = |volume: &Value| volume["persistentVolumeClaim"]["claimName"].clone();
    let store = mounts(pod("store"), "store");
    assert_eq!(
        store.keys().collect::<Vec<_>>(),
        ["/cache", "/db", "/shared"]
    );
    assert!(store["/cache"].0["emptyDir"].is_object() && !store["/cache"].1);
    assert_eq!(
        (claim_of(&store["/shared"].0), store["/shared"].1),
        (json!(shared), false)
    );
    assert_eq!(
        (claim_of(&store["/db"].0), store["/db"].1),
        (json!(db), true)
    );
    let helper = mounts(pod("store"), "helper");
    assert!(helper["/tmp/x"].0["emptyDir"].is_object());
    assert_ne!(helper["/tmp/x"].0["name"], store["/cache"].0["name"]);
    let check = mounts(pod("check"), "check");
    assert_eq!(
        (claim_of(&check["/shared"].0), check["/shared"].1),
        (json!(shared), true)
    );
    assert_eq!(
        (claim_of(&check["/db"].0), check["/db"].1),
        (json!(db), false)
    );

    // The event's claim went with its owner; the project's stays, listed.
    assert_eq!(
        names(&cluster.fake.objects("persistentvolumeclaims", NAMESPACE)),
        [db]
    );
    let listed = cluster
        .executor
        .project_volumes(PROJECT, GIB)
        .await
        .unwrap();
    assert_eq!(
        listed,
        [StoredVolume {
            name: "db".into(),
            used_bytes: None
        }]
    );
    cluster.assert_nothing_denied();
}

/// A project's volumes are its own: the list selects them by label, not
/// another project's claim nor an event's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projects_volumes_are_listed_by_its_labels() {
    let cluster = cluster().await;
    let claim = |name: &str, labels: Value| {
        json!({
            "metadata": { "name": name, "labels": labels },
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "resources": { "requests": { "storage": "1Gi" } },
            },
        })
    };
    for (name, labels) in [
        (
            "mizzen-project-volume.other-project.db".to_owned(),
            json!({ "mizzen.sh/project-volume": "true", "mizzen.sh/project": "other-project", "mizzen.sh/volume": "db" }),
        ),
        (
            event_claim("e1", "cache"),
            json!({ "mizzen.sh/event": "e1", "mizzen.sh/project": PROJECT, "mizzen.sh/volume": "cache" }),
        ),
        (
            project_claim("pip"),
            json!({ "mizzen.sh/project-volume": "true", "mizzen.sh/project": PROJECT, "mizzen.sh/volume": "pip" }),
        ),
        (
            project_claim("db"),
            json!({ "mizzen.sh/project-volume": "true", "mizzen.sh/project": PROJECT, "mizzen.sh/volume": "db" }),
        ),
    ] {
        cluster
            .fake
            .insert("persistentvolumeclaims", NAMESPACE, claim(&name, labels));
    }
    let listed: Vec<String> = cluster
        .executor
        .project_volumes(PROJECT, GIB)
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(listed, ["db", "pip"]);
    assert!(
        cluster
            .executor
            .project_volumes("empty-project", GIB)
            .await
            .unwrap()
            .is_empty()
    );
    let list = cluster
        .fake
        .requests()
        .into_iter()
        .find(|r| r.method == "GET" && r.path.ends_with("/persistentvolumeclaims"))
        .expect("a list of claims");
    assert_eq!(
        list.param("labelSelector"),
        Some("mizzen.sh/project-volume=true,mizzen.sh/project=test-project")
    );
    cluster.assert_nothing_denied();
}

/// A later event mounts the claim an earlier one made: its creation meets
/// a 409, and the claim is the same object, not a new (empty) one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_event_mounts_the_claim_an_earlier_one_made() {
    let cluster = cluster().await;
    cluster.play(vec![(
        "fill",
        PodScript::default().with("fill", lines(&["filled"], 0)),
    )]);
    let script = r#"
        const { events, Job } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async event => {
          const job = new Job("fill", "debian", event);
          job.primaryContainer.volumes = ["db:/db"];
          await job.run();
        });
        events.process();
        "#;
    let db = project_claim("db");
    let first = run(&cluster, context(&uuid()), script).await;
    first.assert_succeeded();
    let claims = cluster.fake.objects("persistentvolumeclaims", NAMESPACE);
    assert_eq!(names(&claims), [db.as_str()]);
    let uid = claims[0]["metadata"]["uid"].clone();

    let second_event = uuid();
    let second = run(&cluster, context(&second_event), script).await;
    second.assert_succeeded();
    assert_eq!(second.job_lines(), ["[fill] filled"]);
    let claims = cluster.fake.objects("persistentvolumeclaims", NAMESPACE);
    assert_eq!(names(&claims), [db.as_str()]);
    assert_eq!(claims[0]["metadata"]["uid"], uid, "the claim was made anew");
    assert_eq!(creations(&cluster, "persistentvolumeclaims", &db).len(), 2);
    let pod = cluster
        .fake
        .created("pods")
        .into_iter()
        .find(|p| p["metadata"]["labels"]["mizzen.sh/event"] == second_event.as_str())
        .unwrap();
    assert_eq!(
        mounts(&pod, "fill")["/db"].0["persistentVolumeClaim"]["claimName"],
        db.as_str()
    );
    cluster.assert_nothing_denied();
}

/// Output nobody reads.
struct Discard;

impl JobOutput for Discard {
    fn line(&self, _: &str, _: &str) {}
}

fn job_mounting(volumes: &[&str]) -> JobSpec {
    JobSpec {
        primary_container: ContainerSpec {
            image: "debian".into(),
            volumes: volumes.iter().map(ToString::to_string).collect(),
            ..ContainerSpec::default()
        },
        sidecar_containers: BTreeMap::new(),
        timeout_seconds: 60.0,
        host: JobHost::default(),
        fallible: false,
        artifacts: Default::default(),
        caches: Vec::new(),
    }
}

/// Deleting a project's volume is refused while a Pod that mounts it
/// runs (a running Pod that mounts another of the project's volumes, or
/// an ended one that mounts it, is no reason), done once the Pod has ended
/// even before its event does, and then the volume is not found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_volume_is_deleted_only_once_no_running_pod_mounts_it() {
    let cluster = cluster().await;
    let slow = mizzen_tests::fake_kube::ContainerScript {
        runs_for: Duration::from_millis(1000),
        ..mizzen_tests::fake_kube::ContainerScript::new(["working"], 0)
    };
    cluster.play(vec![
        ("use-db", PodScript::default().with("use-db", slow)),
        ("other", PodScript::default().with("other", forever())),
    ]);
    let event_id = uuid();
    let mut event = context(&event_id);
    event.volumes.project.insert("pip".into(), GIB);
    let event = Arc::new(event);
    let start = |name: &str, volumes: &[&str]| {
        cluster.executor.start(JobRequest {
            event: event.clone(),
            name: name.into(),
            spec: job_mounting(volumes),
            output: Arc::new(Discard),
        })
    };
    let other = start("other", &["pip:/pip"]).await.unwrap();
    let job = start("use-db", &["db:/db"]).await.unwrap();
    let pod_name = format!("{event_id}-use-db");
    let phase = || {
        cluster
            .fake
            .objects("pods", NAMESPACE)
            .into_iter()
            .find(|p| p["metadata"]["name"] == pod_name.as_str())
            .map(|p| p["status"]["phase"].as_str().unwrap_or_default().to_owned())
    };
    for _ in 0..100 {
        if phase().as_deref() == Some("Running") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(phase().as_deref(), Some("Running"));

    let refused = cluster
        .executor
        .delete_project_volume(PROJECT, "db")
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ExecutorError::InUse(m) if m.contains("\"db\"")),
        "{refused:?}"
    );
    assert_eq!(
        names(&cluster.fake.objects("persistentvolumeclaims", NAMESPACE)),
        [project_claim("db"), project_claim("pip")]
    );

    // Ended (its Pod goes with it); a Pod that ended and is still there
    // (as an earlier server may leave one) is no reason either.
    assert_eq!(job.wait().await.phase, Phase::Succeeded);
    assert_eq!(phase(), None);
    cluster.fake.insert(
        "pods",
        NAMESPACE,
        json!({
            "metadata": {
                "name": "earlier-use-db",
                "labels": { "mizzen.sh/project": PROJECT, "mizzen.sh/job": "use-db" },
            },
            "spec": {
                "containers": [{
                    "name": "use-db",
                    "image": "debian",
                    "volumeMounts": [{ "name": "volume-db", "mountPath": "/db" }],
                }],
                "volumes": [{
                    "name": "volume-db",
                    "persistentVolumeClaim": { "claimName": project_claim("db") },
                }],
            },
            "status": { "phase": "Succeeded" },
        }),
    );
    // The other job's Pod still runs, but mounts another volume.
    assert_eq!(
        cluster
            .fake
            .objects("pods", NAMESPACE)
            .iter()
            .find(|p| p["metadata"]["name"] == format!("{event_id}-other"))
            .map(|p| p["status"]["phase"].clone()),
        Some(json!("Running"))
    );
    cluster
        .executor
        .delete_project_volume(PROJECT, "db")
        .await
        .expect("deleted once no running Pod mounts it");
    assert_eq!(
        names(&cluster.fake.objects("persistentvolumeclaims", NAMESPACE)),
        [project_claim("pip")]
    );
    let missing = cluster
        .executor
        .delete_project_volume(PROJECT, "db")
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, ExecutorError::NotFound(m) if m.contains("\"db\"")),
        "{missing:?}"
    );
    other.cancel().await;
    assert_eq!(other.wait().await.phase, Phase::Aborted);
    cluster.executor.finish_event(&event).await;
    assert_eq!(
        names(&cluster.fake.objects("persistentvolumeclaims", NAMESPACE)),
        [project_claim("pip")],
        "a project's claim stays after its event"
    );
    cluster.assert_nothing_denied();
}

/// A host path names a directory of the server's host, not of the node a
/// Pod runs on: a job or service that binds one is refused, naming its
/// container and the volume, even where the project's policy allows the
/// path; nothing of it reaches the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_path_volume_is_refused_by_name() {
    let cluster = cluster().await;
    let event_id = uuid();
    let context = EventContext {
        volumes: EventVolumes {
            host_paths: HostPaths::Under(vec!["/data".into()]),
            ..context(&event_id).volumes
        },
        ..context(&event_id)
    };
    let run = run(
        &cluster,
        context,
        r#"
        const { events, Job, Service } = require("@brigadecore/brigadier");
        events.on("brigade.sh/cli", "exec", async event => {
          const job = new Job("build", "debian", event);
          job.primaryContainer.volumes = ["shared:/shared", "/data/cache:/cache:ro"];
          try { await job.run(); } catch (e) { console.log(`refused: ${e.message}`); }
          const db = new Service("db", "postgres");
          db.volumes = ["/data/db:/var/lib/postgresql/data"];
          try { await db.start(); } catch (e) { console.log(`refused: ${e.message}`); }
        });
        events.process();
        "#,
    )
    .await;
    run.assert_succeeded();
    run.assert_logged(
        "refused: Error creating job \"build\": job \"build\": container \"build\": volume \"/data/cache:/cache\" binds a host path, which the Kubernetes executor does not do: a Pod's node is not the host whose paths the project's allowedHostPaths lists; use a named volume",
    );
    run.assert_logged(
        "refused: Error starting service \"db\": service \"db\" was not started: job \"db\": container \"db\": volume \"/data/db:/var/lib/postgresql/data\" binds a host path, which the Kubernetes executor does not do",
    );
    assert!(cluster.fake.created("pods").is_empty());
    assert!(cluster.fake.created("persistentvolumeclaims").is_empty());
    assert!(cluster.fake.created("services").is_empty());
    cluster.assert_nothing_denied();
}

/// What the fake refuses as the API server does, and its scheduler's wait
/// for a Pod's claims, which the tests above rely on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_checks_volumes_and_holds_a_pod_until_its_claims_exist() {
    let fake = FakeKube::start(FakeConfig::deployed(&[NAMESPACE])).await;
    let mut config = kube::Config::new(fake.url().parse().unwrap());
    config.default_namespace = NAMESPACE.into();
    let client = kube::Client::try_from(config).unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let claims: Api<PersistentVolumeClaim> = Api::default_namespaced(client);
    let post = PostParams::default();
    let pod = |volumes: Value, mounts: Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "p" },
            "spec": {
                "containers": [{ "name": "c", "image": "debian", "volumeMounts": mounts }],
                "volumes": volumes,
            },
        }))
        .unwrap()
    };
    let refusal = |error: kube::Error| match error {
        kube::Error::Api(status) => (status.code, status.message),
        other => panic!("expected a Status, got {other:?}"),
    };
    for (volumes, mounts, expected) in [
        (
            json!([{ "name": "Bad_Name", "emptyDir": {} }]),
            json!([]),
            "spec.volumes[0].name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 label",
        ),
        (
            json!([{ "name": "a", "emptyDir": {} }, { "name": "a", "emptyDir": {} }]),
            json!([]),
            "spec.volumes[1].name: Duplicate value: \"a\"",
        ),
        (
            json!([{ "name": "a" }]),
            json!([]),
            "spec.volumes[0]: Required value: must specify a volume type",
        ),
        (
            json!([{ "name": "a", "emptyDir": {} }]),
            json!([{ "name": "b", "mountPath": "/b" }]),
            "spec.containers[0].volumeMounts[0].name: Not found: \"b\"",
        ),
        (
            json!([{ "name": "a", "emptyDir": {} }]),
            json!([{ "name": "a", "mountPath": "/a" }, { "name": "a", "mountPath": "/a" }]),
            "spec.containers[0].volumeMounts[1].mountPath: Invalid value: \"/a\": must be unique",
        ),
    ] {
        let (code, message) = refusal(pods.create(&post, &pod(volumes, mounts)).await.unwrap_err());
        assert_eq!(code, 422, "{message}");
        assert!(
            message.starts_with(&format!("Pod \"p\" is invalid: {expected}")),
            "{message}"
        );
    }
    let claim = |spec: Value| -> PersistentVolumeClaim {
        serde_json::from_value(json!({ "metadata": { "name": "c.1" }, "spec": spec })).unwrap()
    };
    for (spec, code, expected) in [
        (
            json!({ "resources": { "requests": { "storage": "1Gi" } } }),
            422,
            "PersistentVolumeClaim \"c.1\" is invalid: spec.accessModes: Required value",
        ),
        (
            json!({ "accessModes": ["ReadWriteMany"] }),
            422,
            "PersistentVolumeClaim \"c.1\" is invalid: spec.resources[storage]: Required value",
        ),
        (
            json!({ "accessModes": ["ReadWriteMany"], "resources": { "requests": { "storage": "10 GB" } } }),
            400,
            "PersistentVolumeClaim in version \"v1\" cannot be handled as a PersistentVolumeClaim: quantities must match",
        ),
    ] {
        let (got, message) = refusal(claims.create(&post, &claim(spec)).await.unwrap_err());
        assert_eq!(got, code, "{message}");
        assert!(message.starts_with(expected), "{message}");
    }

    // A Pod whose claim does not exist stays unscheduled until it does.
    pods.create(
        &post,
        &pod(
            json!([{ "name": "data", "persistentVolumeClaim": { "claimName": "c.1" } }]),
            json!([{ "name": "data", "mountPath": "/data" }]),
        ),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let waiting = pods.get("p").await.unwrap();
    let status = waiting.status.unwrap();
    assert_eq!(status.phase.as_deref(), Some("Pending"));
    assert!(status.start_time.is_none());
    let condition = &status.conditions.unwrap()[0];
    assert_eq!(
        (
            condition.type_.as_str(),
            condition.status.as_str(),
            condition.reason.as_deref()
        ),
        ("PodScheduled", "False", Some("Unschedulable"))
    );
    assert!(
        condition
            .message
            .as_deref()
            .is_some_and(|m| m.contains("persistentvolumeclaim \"c.1\" not found")),
        "{condition:?}"
    );
    claims
        .create(
            &post,
            &claim(json!({
                "accessModes": ["ReadWriteOnce"],
                "resources": { "requests": { "storage": "1073741824" } },
            })),
        )
        .await
        .unwrap();
    for _ in 0..100 {
        let phase = pods.get("p").await.unwrap().status.unwrap().phase;
        if phase.as_deref() == Some("Succeeded") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the Pod never ran once its claim existed");
}
