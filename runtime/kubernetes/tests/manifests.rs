//! Golden tests of the objects jobs become, and a check that they satisfy
//! Pod Security's "restricted" profile unless a project's policy widens it.
//!
//! `MIZZEN_UPDATE_GOLDEN=1 cargo test -p mizzen-kubernetes --test manifests`
//! rewrites the golden files after a deliberate change; review their diff.

use std::collections::BTreeMap;
use std::path::PathBuf;

use mizzen_host_api::types::{ContainerSpec, GitConfig, JobHost, JobSpec, Readiness};
use mizzen_kubernetes::KubernetesConfig;
use mizzen_kubernetes::manifest::{self, Owner};
use mizzen_runtime::executor::{ContainerLimits, EventContext, Source};
use mizzen_runtime::project::JobPolicies;
use serde_json::{Value, json};

const EVENT: &str = "5f0c3c4e-8a53-4d8e-9a57-2a3b1f5f9e10";

fn event(policies: JobPolicies) -> EventContext {
    EventContext {
        event_id: EVENT.into(),
        project_id: "hello-world".into(),
        use_workspace: true,
        source: Some(Source::Git(GitConfig {
            clone_url: "https://github.com/brigadecore/empty-testbed.git".into(),
            commit: String::new(),
            git_ref: "refs/heads/main".into(),
            init_submodules: false,
        })),
        policies,
        image_pull_secrets: vec!["registry-credentials".into()],
        pull_secrets: Vec::new(),
        workspace_size: Some("2Gi".into()),
        container_limits: Default::default(),
        kept: Default::default(),
        volumes: Default::default(),
    }
}

fn owner() -> Owner {
    Owner {
        name: manifest::event_owner_name(EVENT),
        uid: "0b7e5f7e-0000-4000-8000-000000000001".into(),
    }
}

fn container(image: &str, command: &[&str]) -> ContainerSpec {
    ContainerSpec {
        image: image.into(),
        command: command.iter().map(|s| s.to_string()).collect(),
        ..ContainerSpec::default()
    }
}

fn job(primary: ContainerSpec) -> JobSpec {
    JobSpec {
        primary_container: primary,
        sidecar_containers: BTreeMap::new(),
        timeout_seconds: 900.0,
        host: JobHost::default(),
        fallible: false,
        artifacts: Default::default(),
        caches: Vec::new(),
    }
}

/// The objects as YAML documents: Pod, environment Secret, workspace claim
/// and the event's owner, in that order.
fn render(event: &EventContext, name: &str, spec: &JobSpec) -> (Value, String) {
    let config = KubernetesConfig::new("mizzen-jobs");
    let objects = manifest::job_objects(&config, "mizzen-jobs", event, &owner(), name, spec, None)
        .expect("the job becomes a Pod");
    let pod = serde_json::to_value(&objects.pod).unwrap();
    let mut documents = vec![serde_norway::to_string(&objects.pod).unwrap()];
    if let Some(secret) = &objects.environment {
        documents.push(serde_norway::to_string(secret).unwrap());
    }
    documents.push(
        serde_norway::to_string(&manifest::workspace_claim(
            &config,
            "mizzen-jobs",
            event,
            &owner(),
        ))
        .unwrap(),
    );
    documents.push(serde_norway::to_string(&manifest::event_owner("mizzen-jobs", event)).unwrap());
    (pod, documents.join("---\n"))
}

#[track_caller]
fn assert_golden(file: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(file);
    if std::env::var_os("MIZZEN_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (MIZZEN_UPDATE_GOLDEN=1 writes it)", path.display()));
    assert!(
        expected == actual,
        "{} differs from what the executor generates (MIZZEN_UPDATE_GOLDEN=1 rewrites it):\n{actual}",
        path.display()
    );
}

/// What Pod Security's "restricted" profile (Kubernetes 1.33) forbids in
/// `pod`, one line per violation.
fn restricted_violations(pod: &Value) -> Vec<String> {
    let mut violations = Vec::new();
    let spec = &pod["spec"];
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if spec[field] == Value::Bool(true) {
            violations.push(format!("spec.{field} is true"));
        }
    }
    let allowed_volumes = [
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    ];
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        for key in volume.as_object().unwrap().keys() {
            if key != "name" && !allowed_volumes.contains(&key.as_str()) {
                violations.push(format!("volume {} is of type {key}", volume["name"]));
            }
        }
    }
    let pod_security = &spec["securityContext"];
    let pod_seccomp = pod_security["seccompProfile"]["type"].as_str();
    let pod_non_root = pod_security["runAsNonRoot"] == Value::Bool(true);
    if pod_security["runAsUser"] == 0 {
        violations.push("spec.securityContext.runAsUser is 0".into());
    }
    if pod_security["sysctls"].is_array() {
        violations.push("spec.securityContext.sysctls is set".into());
    }
    let containers = ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|kind| spec[*kind].as_array().cloned().unwrap_or_default());
    for container in containers {
        let name = container["name"].as_str().unwrap_or_default().to_string();
        let security = &container["securityContext"];
        if security["privileged"] == Value::Bool(true) {
            violations.push(format!("{name}: privileged"));
        }
        if security["allowPrivilegeEscalation"] != Value::Bool(false) {
            violations.push(format!("{name}: allowPrivilegeEscalation is not false"));
        }
        let drops_all = security["capabilities"]["drop"]
            .as_array()
            .is_some_and(|d| d.contains(&Value::from("ALL")));
        if !drops_all {
            violations.push(format!("{name}: capabilities do not drop ALL"));
        }
        for added in security["capabilities"]["add"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if added != "NET_BIND_SERVICE" {
                violations.push(format!("{name}: adds capability {added}"));
            }
        }
        let non_root = match &security["runAsNonRoot"] {
            Value::Bool(b) => *b,
            _ => pod_non_root,
        };
        if !non_root {
            violations.push(format!("{name}: runAsNonRoot is not true"));
        }
        if security["runAsUser"] == 0 {
            violations.push(format!("{name}: runAsUser is 0"));
        }
        let seccomp = security["seccompProfile"]["type"].as_str().or(pod_seccomp);
        if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
            violations.push(format!("{name}: seccomp profile is {seccomp:?}"));
        }
        if security["procMount"]
            .as_str()
            .is_some_and(|m| m != "Default")
        {
            violations.push(format!("{name}: procMount is not Default"));
        }
        if container["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["hostPort"].is_number())
        {
            violations.push(format!("{name}: uses a host port"));
        }
    }
    violations
}

#[test]
fn a_plain_job_is_one_restricted_pod() {
    let mut event = event(JobPolicies::default());
    event.use_workspace = false;
    event.source = None;
    event.image_pull_secrets.clear();
    let spec = job(container("debian:latest", &["echo", "Hello, World!"]));
    let (pod, yaml) = render(&event, "my-first-job", &spec);
    assert_golden("plain.yaml", &yaml);
    assert_eq!(restricted_violations(&pod), Vec::<String>::new());
    assert_eq!(pod["metadata"]["name"], format!("{EVENT}-my-first-job"));
    assert_eq!(pod["spec"]["activeDeadlineSeconds"], 900);
}

#[test]
fn environment_sidecars_source_and_workspace_stay_restricted() {
    let mut primary = container("golang:1.22", &["go", "test", "./..."]);
    primary.environment = BTreeMap::from([
        ("GOFLAGS".to_string(), "-mod=vendor".to_string()),
        ("API_TOKEN".to_string(), "s3cr3t-value".to_string()),
    ]);
    primary.workspace_mount_path = "/workspace".into();
    primary.source_mount_path = "/src".into();
    primary.working_directory = "/src".into();
    let mut database = container("postgres:16", &[]);
    database.environment = BTreeMap::from([("POSTGRES_PASSWORD".into(), "pw".into())]);
    database.readiness = Some(Readiness {
        tcp_port: Some(5432),
        exited: false,
        timeout_seconds: Some(30.0),
    });
    let mut migrate = container("migrate/migrate:v4", &["migrate", "up"]);
    migrate.readiness = Some(Readiness {
        tcp_port: None,
        exited: true,
        timeout_seconds: None,
    });
    let cache = container("redis:7", &[]);
    let mut spec = job(primary);
    spec.sidecar_containers = BTreeMap::from([
        ("database".to_string(), database),
        ("migrate".to_string(), migrate),
        ("cache".to_string(), cache),
    ]);
    spec.timeout_seconds = 90.5;
    spec.host.node_selector = BTreeMap::from([("pool".into(), "builders".into())]);
    let (pod, yaml) = render(&event(JobPolicies::default()), "test", &spec);
    assert_golden("full.yaml", &yaml);
    assert_eq!(restricted_violations(&pod), Vec::<String>::new());
    assert!(
        !yaml.split("---").next().unwrap().contains("s3cr3t-value"),
        "an environment value is in the Pod spec"
    );
    let init: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["mizzen-source", "cache", "database", "migrate"]);
}

#[test]
fn only_a_policy_lets_a_job_out_of_the_restricted_profile() {
    let mut primary = container("docker:dind", &[]);
    primary.privileged = true;
    let mut client = container("docker:cli", &["docker", "info"]);
    client.use_host_docker_socket = true;
    let mut spec = job(primary);
    spec.sidecar_containers = BTreeMap::from([("client".to_string(), client)]);
    let policies = JobPolicies {
        allow_privileged: true,
        allow_docker_socket_mount: true,
        ..JobPolicies::default()
    };
    let (pod, yaml) = render(&event(policies), "docker-in-docker", &spec);
    assert_golden("privileged.yaml", &yaml);
    let violations = restricted_violations(&pod);
    for expected in [
        "docker-in-docker: privileged",
        "docker-in-docker: runAsNonRoot is not true",
        "client: allowPrivilegeEscalation is not false",
        "volume \"docker-socket\" is of type hostPath",
    ] {
        assert!(
            violations.iter().any(|v| v == expected),
            "{expected:?} not in {violations:?}"
        );
    }
}

/// A container runs as its `user`, `nobody` by default, as on the local
/// engine; root (under the project's `allowRoot`) still gets no
/// capabilities and no privilege escalation.
#[test]
fn containers_run_as_their_user_and_nobody_by_default() {
    let mut primary = container("postgres", &["postgres"]);
    primary.user = "999:999".into();
    let mut setup = container("debian", &["true"]);
    setup.user = "root".into();
    let mut spec = job(primary);
    spec.sidecar_containers = BTreeMap::from([
        ("setup".to_string(), setup),
        ("plain".to_string(), container("debian", &["true"])),
    ]);
    let policies = JobPolicies {
        allow_root: true,
        ..JobPolicies::default()
    };
    let (pod, _) = render(&event(policies), "users", &spec);
    let security = |name: &str| {
        let containers = pod["spec"]["containers"].as_array().unwrap().iter().chain(
            pod["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten(),
        );
        containers
            .clone()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {pod:#}"))["securityContext"]
            .clone()
    };
    for (name, uid, gid, non_root) in [
        ("users", 999, 999, true),
        ("setup", 0, 0, false),
        ("plain", 65534, 65534, true),
    ] {
        let security = security(name);
        assert_eq!(security["runAsUser"], uid, "{name}: {security}");
        assert_eq!(security["runAsGroup"], gid, "{name}: {security}");
        assert_eq!(security["runAsNonRoot"], non_root, "{name}: {security}");
        assert_eq!(security["allowPrivilegeEscalation"], false, "{name}");
        assert_eq!(security["capabilities"]["drop"][0], "ALL", "{name}");
    }
    assert_eq!(pod["spec"]["securityContext"]["fsGroup"], 65534);
}

#[test]
fn long_names_are_shortened_with_a_hash_and_bad_environment_names_refused() {
    let long_job = format!("j{}", "o".repeat(61));
    let spec = job(container("alpine", &["true"]));
    let (pod, _) = render(&event(JobPolicies::default()), &long_job, &spec);
    let name = pod["metadata"]["name"].as_str().unwrap();
    assert!(name.len() <= 63 && name.starts_with(EVENT), "{name}");
    assert_eq!(
        pod["metadata"]["labels"]["mizzen.sh/job"],
        long_job.as_str()
    );

    let mut primary = container("alpine", &["true"]);
    primary.environment = BTreeMap::from([("HAS SPACE".to_string(), "x".to_string())]);
    let error = manifest::job_objects(
        &KubernetesConfig::new("ns"),
        "ns",
        &event(JobPolicies::default()),
        &owner(),
        "build",
        &job(primary),
        None,
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("\"HAS SPACE\"") && error.to_string().contains("job \"build\""),
        "{error}"
    );
}

#[test]
fn a_local_source_directory_cannot_be_mounted_in_a_cluster() {
    let mut event = event(JobPolicies::default());
    event.source = Some(Source::Directory("/home/me/project".into()));
    let mut primary = container("alpine", &["ls"]);
    primary.source_mount_path = "/src".into();
    let error = manifest::job_objects(
        &KubernetesConfig::new("ns"),
        "ns",
        &event,
        &owner(),
        "list",
        &job(primary),
        None,
    )
    .unwrap_err();
    assert!(error.to_string().contains("/home/me/project"), "{error}");
}

#[test]
fn a_namespace_per_project() {
    let config = KubernetesConfig::new("mizzen-{project}");
    assert_eq!(config.namespace_of("Hello-World"), "mizzen-hello-world");
    assert_eq!(KubernetesConfig::new("jobs").namespace_of("x"), "jobs");
}

#[test]
fn a_projects_job_limits_bound_each_container_and_lower_larger_requests() {
    let mut event = event(JobPolicies::default());
    event.source = None;
    event.container_limits = ContainerLimits {
        memory_bytes: 64 * 1024 * 1024,
        cpu_millis: 50,
        processes: 100,
        ..ContainerLimits::default()
    };
    let spec = job(container("debian:latest", &["true"]));
    let (pod, _) = render(&event, "small", &spec);
    let resources = &pod["spec"]["containers"][0]["resources"];
    assert_eq!(resources["limits"]["memory"], "64Mi");
    assert_eq!(resources["limits"]["cpu"], "50m");
    // The default requests (128Mi, 100m) are above these limits, which
    // Kubernetes would refuse.
    assert_eq!(resources["requests"]["memory"], "64Mi");
    assert_eq!(resources["requests"]["cpu"], "50m");
}

#[test]
fn a_service_is_a_pod_named_in_the_events_headless_service() {
    let mut db = container("postgres", &[]);
    db.readiness = Some(Readiness {
        tcp_port: Some(5432),
        exited: false,
        timeout_seconds: Some(30.0),
    });
    db.ports = vec!["5432".into()];
    let config = KubernetesConfig::new("mizzen-jobs");
    let event = event(JobPolicies::default());
    let objects =
        manifest::service_objects(&config, "mizzen-jobs", &event, &owner(), "db", &job(db))
            .expect("the service becomes a Pod");
    let (service, policy) = manifest::event_services("mizzen-jobs", &event, &owner());
    let documents = [
        serde_norway::to_string(&objects.pod).unwrap(),
        serde_norway::to_string(&service).unwrap(),
        serde_norway::to_string(&policy).unwrap(),
    ];
    assert_golden("service.yaml", &documents.join("---\n"));
    let pod = serde_json::to_value(&objects.pod).unwrap();
    assert_eq!(pod["spec"]["hostname"], "db");
    assert_eq!(pod["spec"]["subdomain"], manifest::services_name(EVENT));
    assert_eq!(
        pod["metadata"]["labels"][manifest::LABEL_SERVICE],
        "true",
        "the headless Service selects it"
    );
    let service = serde_json::to_value(&service).unwrap();
    assert_eq!(service["spec"]["clusterIP"], "None");
    assert_eq!(service["spec"]["selector"][manifest::LABEL_EVENT], EVENT);
    assert!(restricted_violations(&pod).is_empty());
    // A job of the event searches the Service's domain, so `db` resolves.
    let (job_pod, _) = render(&event, "test", &job(container("debian", &["true"])));
    assert_eq!(
        job_pod["spec"]["dnsConfig"]["searches"][0],
        format!(
            "{}.mizzen-jobs.svc.cluster.local",
            manifest::services_name(EVENT)
        )
    );
}

#[test]
fn sidecars_become_init_containers_in_the_order_of_after() {
    let mut spec = job(container("debian", &["true"]));
    let sidecar = |after: &[&str], exited: bool| {
        let mut c = container("debian", &["true"]);
        c.after = after.iter().map(|s| s.to_string()).collect();
        c.readiness = exited.then_some(Readiness {
            tcp_port: None,
            exited: true,
            timeout_seconds: None,
        });
        c
    };
    spec.sidecar_containers = BTreeMap::from([
        // A native sidecar after a one-shot: the one-shot moves ahead.
        ("app".to_string(), sidecar(&["migrate"], false)),
        ("db".to_string(), sidecar(&[], false)),
        ("migrate".to_string(), sidecar(&["db"], true)),
        ("zz-cache".to_string(), sidecar(&[], false)),
    ]);
    let (pod, _) = render(&event(JobPolicies::default()), "ordered", &spec);
    let names: Vec<&str> = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "migrate", "app", "zz-cache"]);
    let native = |name: &str| {
        pod["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["restartPolicy"] == "Always")
            .unwrap()
    };
    assert!(native("db") && native("app") && !native("migrate"));
}

#[test]
fn host_ports_are_named_on_kubernetes() {
    let mut redis = container("redis", &[]);
    redis.ports = vec!["127.0.0.1:16379:6379".into()];
    let config = KubernetesConfig::new("mizzen-jobs");
    let event = event(JobPolicies {
        allow_host_ports: true,
        ..JobPolicies::default()
    });
    let objects = manifest::service_objects(
        &config,
        "mizzen-jobs",
        &event,
        &owner(),
        "redis",
        &job(redis.clone()),
    )
    .expect("a named host port is published");
    let pod = serde_json::to_value(&objects.pod).unwrap();
    assert_eq!(
        pod["spec"]["containers"][0]["ports"][0],
        serde_json::json!({ "containerPort": 6379, "hostPort": 16379, "hostIP": "127.0.0.1", "protocol": "TCP" })
    );
    redis.ports = vec!["0:6379".into()];
    let error = manifest::service_objects(
        &config,
        "mizzen-jobs",
        &event,
        &owner(),
        "redis",
        &job(redis),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        r#"job "redis": container "redis": a host port the engine chooses ("0:PORT") exists only on a local engine; on Kubernetes name the host port"#
    );
}

/// Whether `name` is an RFC 1123 label, as Kubernetes checks Pod volume
/// names.
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Whether `name` is an RFC 1123 subdomain, as Kubernetes checks object
/// names.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// A container's mounts as (volume, path, read-only).
fn mounts(container: &Value) -> Vec<(String, String, bool)> {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["mountPath"].as_str().unwrap().to_string(),
                m["readOnly"] == Value::Bool(true),
            )
        })
        .collect()
}

/// Anonymous volumes are the container's own `emptyDir`s; named ones are
/// claims: an event's owned by the event and sized as its workspace, a
/// project's (declared, 1 GiB) with no owner, the project's labels and its
/// declared size. `:ro` mounts read-only.
#[test]
fn anonymous_volumes_are_empty_dirs_and_named_ones_claims() {
    const GIB: u64 = 1024 * 1024 * 1024;
    let mut event = event(JobPolicies::default());
    event.source = None;
    event.image_pull_secrets.clear();
    event.volumes.project = BTreeMap::from([("db".to_string(), GIB)]);
    event.volumes.quota_bytes = 10 * GIB;
    let mut primary = container("postgres:16", &["postgres"]);
    primary.volumes = vec!["/cache".into(), "shared:/shared".into(), "db:/db:ro".into()];
    let mut helper = container("busybox", &["sleep", "600"]);
    helper.volumes = vec!["/tmp/x".into()];
    let mut spec = job(primary);
    spec.sidecar_containers = BTreeMap::from([("helper".to_string(), helper)]);

    let config = KubernetesConfig::new("mizzen-jobs");
    let objects = manifest::job_objects(
        &config,
        "mizzen-jobs",
        &event,
        &owner(),
        "store",
        &spec,
        None,
    )
    .expect("the job becomes a Pod");
    let mut documents = vec![serde_norway::to_string(&objects.pod).unwrap()];
    for claim in &objects.claims {
        documents.push(serde_norway::to_string(claim).unwrap());
    }
    assert_golden("volumes.yaml", &documents.join("---\n"));

    let pod = serde_json::to_value(&objects.pod).unwrap();
    assert_eq!(restricted_violations(&pod), Vec::<String>::new());
    assert!(!objects.mounts_workspace);
    let volumes = pod["spec"]["volumes"].as_array().unwrap();
    let names: Vec<&str> = volumes
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for name in &names {
        assert!(
            is_dns_label(name),
            "Pod volume name {name:?} is not a DNS label"
        );
    }
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(
        unique.len(),
        names.len(),
        "duplicate Pod volumes: {names:?}"
    );

    // Every mount names a volume of the Pod, of the right kind.
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no Pod volume {name:?} in {names:?}"))
    };
    let event_claim = format!("mizzen-event-volume.{EVENT}.shared");
    let project_claim = "mizzen-project-volume.hello-world.db";
    let primary = mounts(&pod["spec"]["containers"][0]);
    assert_eq!(primary.len(), 3, "{primary:?}");
    let by_path = |path: &str| {
        primary
            .iter()
            .find(|(_, p, _)| p == path)
            .unwrap_or_else(|| panic!("no mount at {path} in {primary:?}"))
            .clone()
    };
    let (cache, _, cache_ro) = by_path("/cache");
    assert!(volume(&cache)["emptyDir"].is_object() && !cache_ro);
    let (shared, _, shared_ro) = by_path("/shared");
    assert_eq!(
        volume(&shared)["persistentVolumeClaim"]["claimName"],
        event_claim.as_str()
    );
    assert!(!shared_ro);
    let (db, _, db_ro) = by_path("/db");
    assert_eq!(
        volume(&db)["persistentVolumeClaim"]["claimName"],
        project_claim
    );
    assert!(db_ro, "\"db:/db:ro\" is mounted read-only");
    let helper = pod["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "helper")
        .unwrap();
    let helper = mounts(helper);
    assert_eq!(helper.len(), 1, "{helper:?}");
    assert_eq!(helper[0].1, "/tmp/x");
    assert!(volume(&helper[0].0)["emptyDir"].is_object());
    assert_ne!(
        helper[0].0, cache,
        "each container's anonymous volume is its own"
    );

    // The claims.
    let claims: Vec<Value> = objects
        .claims
        .iter()
        .map(|c| serde_json::to_value(c).unwrap())
        .collect();
    let claim_names: Vec<&str> = claims
        .iter()
        .map(|c| c["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(claim_names, [project_claim, event_claim.as_str()]);
    for name in &claim_names {
        assert!(is_dns_subdomain(name), "claim name {name:?}");
    }
    let [project, shared] = &claims[..] else {
        unreachable!()
    };
    assert!(project["metadata"]["ownerReferences"].is_null());
    assert_eq!(
        project["metadata"]["labels"],
        serde_json::json!({
            "app.kubernetes.io/managed-by": "mizzen",
            "mizzen.sh/project": "hello-world",
            "mizzen.sh/project-volume": "true",
            "mizzen.sh/volume": "db",
        })
    );
    assert_eq!(
        project["spec"]["resources"]["requests"]["storage"],
        GIB.to_string()
    );
    assert_eq!(
        project["spec"]["accessModes"],
        serde_json::json!(["ReadWriteMany"])
    );
    assert_eq!(
        shared["metadata"]["ownerReferences"][0]["uid"],
        owner().uid.as_str()
    );
    assert_eq!(shared["metadata"]["labels"]["mizzen.sh/event"], EVENT);
    assert_eq!(shared["metadata"]["labels"]["mizzen.sh/volume"], "shared");
    assert!(shared["metadata"]["labels"]["mizzen.sh/project-volume"].is_null());
    assert_eq!(
        shared["spec"]["resources"]["requests"]["storage"], "2Gi",
        "an event's volume is sized as its workspace"
    );
}

/// A host path is a directory of the server's host, not of the Pod's
/// node: the job is refused, naming the container and the volume.
#[test]
fn a_host_path_volume_is_refused_by_name() {
    let mut event = event(JobPolicies::default());
    event.volumes.host_paths = mizzen_runtime::volume::HostPaths::Under(vec!["/data".into()]);
    let config = KubernetesConfig::new("ns");
    let mut primary = container("alpine", &["ls"]);
    primary.volumes = vec!["shared:/shared".into(), "/data/cache:/cache".into()];
    let error = manifest::job_objects(
        &config,
        "ns",
        &event,
        &owner(),
        "build",
        &job(primary),
        None,
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "job \"build\": container \"build\": volume \"/data/cache:/cache\" binds a host path, \
         which the Kubernetes executor does not do: a Pod's node is not the host whose paths the \
         project's allowedHostPaths lists; use a named volume"
    );

    let mut spec = job(container("alpine", &["ls"]));
    let mut sidecar = container("alpine", &["true"]);
    sidecar.volumes = vec!["/data:/data:ro".into()];
    spec.sidecar_containers = BTreeMap::from([("helper".to_string(), sidecar)]);
    let error = manifest::service_objects(&config, "ns", &event, &owner(), "web", &spec)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("job \"web\": container \"helper\": volume \"/data:/data\" binds a host path, which the Kubernetes executor does not do"),
        "{error}"
    );
}

#[test]
fn a_job_that_keeps_files_gets_mizzens_helpers_and_its_token_only_in_its_secret() {
    use mizzen_kubernetes::kept::PodFiles;
    let mut primary = container("node", &["npm", "ci"]);
    primary.user = "1000:1000".into();
    let spec = job(primary);
    let files = PodFiles {
        paths: vec!["/src/dist".into(), "/root/.npm".into(), "/opt/tools".into()],
        // A restored artifact (restore 0) into /opt/tools, the cache (restore 1) into /root/.npm.
        restores: vec![(0, 2), (1, 1)],
        // A saved artifact (save 0) from /src/dist, the cache (save 1) from /root/.npm.
        saves: vec![(0, 0), (1, 1)],
        token: "mzjob1.claim.signature".into(),
        server_url: "http://mizzen.mizzen.svc:7000".into(),
        image: "ghcr.io/mizzen-dev/mizzen:test".into(),
    };
    let objects = manifest::job_objects(
        &KubernetesConfig::new("ns"),
        "ns",
        &event(JobPolicies::default()),
        &owner(),
        "build",
        &spec,
        Some(&files),
    )
    .unwrap();
    let pod = serde_json::to_value(&objects.pod).unwrap();
    assert!(objects.saves);
    // The token: in the job's Secret, mounted only into the helpers.
    assert!(!pod.to_string().contains("mzjob1."), "{pod:#}");
    let secret = serde_json::to_value(objects.environment.as_ref().unwrap()).unwrap();
    assert_eq!(
        secret["stringData"]["mizzen-job-token"],
        "mzjob1.claim.signature"
    );
    let init = pod["spec"]["initContainers"].as_array().unwrap();
    let names: Vec<&str> = init.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["mizzen-restore", "mizzen-save"]);
    let (restore, save) = (&init[0], &init[1]);
    assert_eq!(
        restore["args"],
        json!([
            "job-files",
            "restore",
            "--server",
            "http://mizzen.mizzen.svc:7000",
            "--token-file",
            "/var/run/mizzen/job/token",
            "0=/mizzen/kept/2",
            "1=/mizzen/kept/1"
        ])
    );
    assert_eq!(
        save["args"],
        json!([
            "job-files",
            "save",
            "--after-sigterm",
            "--server",
            "http://mizzen.mizzen.svc:7000",
            "--token-file",
            "/var/run/mizzen/job/token",
            "0=/mizzen/kept/0",
            "1=/mizzen/kept/1"
        ])
    );
    // The saver is a native sidecar, stopped once the primary has exited,
    // with the grace period its upload needs.
    assert_eq!(save["restartPolicy"], "Always");
    assert!(restore.get("restartPolicy").is_none());
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 600);
    // The helpers run as the job's user, restricted.
    for helper in [restore, save] {
        assert_eq!(helper["image"], "ghcr.io/mizzen-dev/mizzen:test");
        assert_eq!(helper["securityContext"]["runAsUser"], 1000);
        assert_eq!(helper["securityContext"]["allowPrivilegeEscalation"], false);
        let mounts: Vec<&str> = helper["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["mountPath"].as_str().unwrap())
            .collect();
        assert_eq!(
            mounts,
            [
                "/mizzen/kept/0",
                "/mizzen/kept/1",
                "/mizzen/kept/2",
                "/var/run/mizzen/job"
            ]
        );
    }
    // The primary mounts each kept path, and not the token.
    let primary_mounts = pod["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap();
    let mounted: Vec<(&str, &str)> = primary_mounts
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["mountPath"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        mounted,
        [
            ("mizzen-kept-0", "/src/dist"),
            ("mizzen-kept-1", "/root/.npm"),
            ("mizzen-kept-2", "/opt/tools")
        ]
    );
    let token_volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "mizzen-job-token")
        .unwrap();
    assert_eq!(
        token_volume["secret"]["items"],
        json!([{ "key": "mizzen-job-token", "path": "token" }])
    );

    // The helpers' names are reserved.
    let mut taken = job(container("node", &["true"]));
    taken
        .sidecar_containers
        .insert("mizzen-save".into(), container("busybox", &["true"]));
    let error = manifest::job_objects(
        &KubernetesConfig::new("ns"),
        "ns",
        &event(JobPolicies::default()),
        &owner(),
        "build",
        &taken,
        Some(&files),
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("\"mizzen-save\" is reserved for Mizzen's helpers"),
        "{error}"
    );
}
