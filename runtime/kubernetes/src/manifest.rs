//! The Kubernetes objects an event's jobs become, built without touching a
//! cluster (so that golden tests can pin them down).
//!
//! Per event: an owner Secret (no data) that every other object of the event
//! names in its `ownerReferences`, so that deleting it lets the cluster's
//! garbage collector remove the rest even when Mizzen is gone; a workspace
//! PersistentVolumeClaim when a job mounts the workspace. Per job: one Pod
//! (the primary container, sidecars as native sidecars, the source checkout
//! as an init container) and a Secret holding the containers' environment,
//! which the Pod spec only references. Per service of the event: a Pod of
//! one container whose host name is the service's, in the event's headless
//! Service (made at its first service, with a NetworkPolicy that lets only
//! the event's own Pods reach its services); every Pod of the event
//! searches that Service's domain, so that `db` resolves as on a local
//! engine.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use mizzen_host_api::types::{ContainerSpec, ImagePullPolicy, JobSpec};
use mizzen_runtime::executor::{
    ContainerLimits, ContainerUser, EventContext, PortMapping, ReadyWhen, Source, start_order,
};
use mizzen_runtime::limits::{LimitValue, parse_cpu, parse_quantity};
use mizzen_runtime::volume::{VolumeMount, VolumeSource};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::kept::{
    KEPT_ROOT, PodFiles, RESTORE_CONTAINER, SAVE_CONTAINER, SAVE_GRACE_SECONDS, TOKEN_DIR,
    TOKEN_KEY,
};
use crate::{KubernetesConfig, ResourceRequests};

/// Label naming who manages an object (the recommended Kubernetes label).
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Label naming the project an object belongs to.
pub const LABEL_PROJECT: &str = "mizzen.sh/project";
/// Label naming the event an object belongs to.
pub const LABEL_EVENT: &str = "mizzen.sh/event";
/// Label naming the job a Pod or Secret belongs to.
pub const LABEL_JOB: &str = "mizzen.sh/job";
/// Label on a service's Pod: what the event's headless Service selects.
pub const LABEL_SERVICE: &str = "mizzen.sh/service";
/// Label naming a volume claim's volume, as containers mount it.
pub const LABEL_VOLUME: &str = "mizzen.sh/volume";
/// Label on a project volume's claim, which outlives events.
pub const LABEL_PROJECT_VOLUME: &str = "mizzen.sh/project-volume";

/// The init container that checks the project's source out.
pub const SOURCE_CONTAINER: &str = "mizzen-source";

/// Where the checkout init container writes; jobs mount the same volume
/// where they ask.
const SOURCE_CHECKOUT_PATH: &str = "/src";

/// Kubernetes names that become host names or label values (Pods, their
/// containers) may have at most 63 characters (RFC 1123 labels).
const MAX_NAME_LEN: usize = 63;

/// Hex digits of the hash that replaces the end of a name too long or
/// changed by cleaning: 8 (32 bits) keep collisions among one namespace's
/// names negligible while leaving most of the readable name.
const NAME_HASH_LEN: usize = 8;

/// Checks out `$MIZZEN_GIT_COMMIT`, else `$MIZZEN_GIT_REF`, else the default
/// branch, shallowly. The values come in through the environment, never
/// through the script's text, so a URL or ref cannot inject shell syntax.
const CHECKOUT_SCRIPT: &str = r#"set -eu
cd /src
git init -q .
git remote add origin "$MIZZEN_GIT_URL"
target="${MIZZEN_GIT_COMMIT:-${MIZZEN_GIT_REF:-HEAD}}"
git fetch -q --depth 1 origin "$target"
git checkout -q FETCH_HEAD
if [ "$MIZZEN_GIT_SUBMODULES" = true ]; then git submodule update -q --init --recursive --depth 1; fi
"#;

/// Why a job cannot become a Pod.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job \"{job}\": {reason}")]
pub struct ManifestError {
    /// The job.
    pub job: String,
    /// What is wrong.
    pub reason: String,
}

/// The per-event owner object.
pub fn event_owner(namespace: &str, event: &EventContext) -> Secret {
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": event_owner_name(&event.event_id),
            "namespace": namespace,
            "labels": event_labels(event),
        },
        "type": "Opaque",
    }))
}

/// The name of an event's owner Secret.
pub fn event_owner_name(event_id: &str) -> String {
    dns_label(&format!("mizzen-event-{event_id}"))
}

/// The name of an event's workspace claim.
pub fn workspace_name(event_id: &str) -> String {
    dns_label(&format!("mizzen-workspace-{event_id}"))
}

/// The name of an event's headless Service, the domain its services' host
/// names live in.
pub fn services_name(event_id: &str) -> String {
    dns_label(&format!("mizzen-services-{event_id}"))
}

/// The name of a job's Pod (and of its environment Secret):
/// `<event>-<job>`, shortened with a hash when too long.
pub fn pod_name(event_id: &str, job: &str) -> String {
    dns_label(&format!("{event_id}-{job}"))
}

/// What the objects of an event point at to be collected with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The owner Secret's name.
    pub name: String,
    /// Its uid, as the cluster assigned it.
    pub uid: String,
}

impl Owner {
    fn reference(&self) -> Value {
        json!([{ "apiVersion": "v1", "kind": "Secret", "name": self.name, "uid": self.uid }])
    }
}

/// The event's workspace: a ReadWriteMany claim so that jobs on any node
/// share it.
pub fn workspace_claim(
    config: &KubernetesConfig,
    namespace: &str,
    event: &EventContext,
    owner: &Owner,
) -> PersistentVolumeClaim {
    let size = event
        .workspace_size
        .as_deref()
        .unwrap_or(&config.workspace_size);
    read_write_many_claim(
        config,
        json!({
            "name": workspace_name(&event.event_id),
            "namespace": namespace,
            "labels": event_labels(event),
            "ownerReferences": owner.reference(),
        }),
        size,
    )
}

/// A ReadWriteMany claim (an event's jobs may run on several nodes) of
/// `size`, in the configured storage class.
fn read_write_many_claim(
    config: &KubernetesConfig,
    metadata: Value,
    size: &str,
) -> PersistentVolumeClaim {
    let mut claim = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": metadata,
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "resources": { "requests": { "storage": size } },
        },
    });
    if let Some(class) = &config.workspace_storage_class {
        claim["spec"]["storageClassName"] = json!(class);
    }
    from_json(claim)
}

/// A job's Pod and the Secret with its containers' environment (none when
/// no container has one).
#[derive(Debug, Clone)]
pub struct JobObjects {
    /// The Pod.
    pub pod: Pod,
    /// The environment Secret.
    pub environment: Option<Secret>,
    /// Whether the Pod mounts the event's workspace claim (which must
    /// exist before it starts).
    pub mounts_workspace: bool,
    /// The claims of the named volumes the Pod mounts, to create before it
    /// starts unless they exist.
    pub claims: Vec<PersistentVolumeClaim>,
    /// Whether a sidecar of Mizzen's saves the job's artifacts and caches.
    pub saves: bool,
}

/// The name of the claim behind a named volume: the event's
/// (`mizzen-event-volume.<event>.<name>`) or, for a name the project
/// declares, the project's (`mizzen-project-volume.<project>.<name>`). The
/// dots keep two projects' names apart (neither ids nor volume names hold
/// one), and ids and volume names are short enough for a claim's 253.
pub fn volume_claim_name(event: &EventContext, volume: &str) -> String {
    if event.volumes.project.contains_key(volume) {
        project_volume_claim_name(&event.project_id, volume)
    } else {
        format!("mizzen-event-volume.{}.{volume}", event.event_id)
    }
}

/// The name of a project volume's claim.
pub fn project_volume_claim_name(project_id: &str, volume: &str) -> String {
    format!("mizzen-project-volume.{project_id}.{volume}")
}

/// The claim behind a named volume. An event's is owned by the event, sized as its
/// workspace; a project's has no owner (it outlives events) and the size
/// the project declares, which the cluster's storage enforces.
pub fn volume_claim(
    config: &KubernetesConfig,
    namespace: &str,
    event: &EventContext,
    owner: &Owner,
    volume: &str,
) -> PersistentVolumeClaim {
    let mut labels = event_labels(event);
    labels.insert(LABEL_VOLUME, volume.to_string());
    let mut metadata = json!({
        "name": volume_claim_name(event, volume),
        "namespace": namespace,
    });
    let size = match event.volumes.project.get(volume) {
        Some(bytes) => {
            labels.remove(LABEL_EVENT);
            labels.insert(LABEL_PROJECT_VOLUME, "true".to_string());
            bytes.to_string()
        }
        None => {
            metadata["ownerReferences"] = owner.reference();
            event
                .workspace_size
                .clone()
                .unwrap_or_else(|| config.workspace_size.clone())
        }
    };
    metadata["labels"] = json!(labels);
    read_write_many_claim(config, metadata, &size)
}

/// The Pod volume of a container's anonymous volume `index`.
fn anonymous_volume_name(container: &str, index: usize) -> String {
    dns_label(&format!("anonymous-{container}-{index}"))
}

/// The Pod volume of the job's kept path `index`.
fn kept_volume_name(index: usize) -> String {
    format!("mizzen-kept-{index}")
}

/// The Pod volume of the job's token, mounted only into Mizzen's helpers.
const TOKEN_VOLUME: &str = "mizzen-job-token";

/// The Pod volume of the named volume `volume`.
fn named_volume_name(volume: &str) -> String {
    format!("volume-{volume}")
}

/// Builds a job's objects. The job has passed the host's checks (names,
/// policies); what remains are limits of Kubernetes itself.
pub fn job_objects(
    config: &KubernetesConfig,
    namespace: &str,
    event: &EventContext,
    owner: &Owner,
    job: &str,
    spec: &JobSpec,
    files: Option<&PodFiles>,
) -> Result<JobObjects, ManifestError> {
    pod_objects(
        config,
        namespace,
        event,
        owner,
        job,
        spec,
        PodKind::Job(files),
    )
}

/// Builds a service's objects: a job's, whose one container is the
/// service's, with its readiness as probes, its host name the service's
/// name in the event's headless Service, and the label that Service
/// selects.
pub fn service_objects(
    config: &KubernetesConfig,
    namespace: &str,
    event: &EventContext,
    owner: &Owner,
    service: &str,
    spec: &JobSpec,
) -> Result<JobObjects, ManifestError> {
    pod_objects(
        config,
        namespace,
        event,
        owner,
        service,
        spec,
        PodKind::Service,
    )
}

/// The event's headless Service (no cluster IP, no ports: each service Pod
/// is reached at its own address, on any port) and the NetworkPolicy that
/// admits to the event's services only the event's own Pods.
pub fn event_services(
    namespace: &str,
    event: &EventContext,
    owner: &Owner,
) -> (Service, NetworkPolicy) {
    let name = services_name(&event.event_id);
    let selector = json!({ LABEL_EVENT: label_value(&event.event_id), LABEL_SERVICE: "true" });
    let metadata = json!({
        "name": name,
        "namespace": namespace,
        "labels": event_labels(event),
        "ownerReferences": owner.reference(),
    });
    let service = from_json(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            // Mizzen says when a service is ready; its name resolves from
            // its start, as on a local engine.
            "publishNotReadyAddresses": true,
        },
    }));
    let policy = from_json(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": { "matchLabels": selector },
            "policyTypes": ["Ingress"],
            "ingress": [{
                "from": [{ "podSelector": { "matchLabels": { LABEL_EVENT: label_value(&event.event_id) } } }],
            }],
        },
    }));
    (service, policy)
}

/// What a Pod runs: a job (with Mizzen's helpers for its artifacts and
/// caches, if it keeps any) or a service.
enum PodKind<'a> {
    Job(Option<&'a PodFiles>),
    Service,
}

fn pod_objects(
    config: &KubernetesConfig,
    namespace: &str,
    event: &EventContext,
    owner: &Owner,
    job: &str,
    spec: &JobSpec,
    kind: PodKind<'_>,
) -> Result<JobObjects, ManifestError> {
    let (files, service) = match kind {
        PodKind::Job(files) => (files, false),
        PodKind::Service => (None, true),
    };
    let error = |reason: String| ManifestError {
        job: job.to_string(),
        reason,
    };
    for (name, c) in std::iter::once((job, &spec.primary_container))
        .chain(spec.sidecar_containers.iter().map(|(n, c)| (n.as_str(), c)))
    {
        if PortMapping::all(c)
            .iter()
            .any(|port| port.host.is_some_and(|host| host.port == 0))
        {
            return Err(error(format!(
                "container \"{name}\": a host port the engine chooses (\"0:PORT\") exists only on a local engine; on Kubernetes name the host port"
            )));
        }
    }
    let name = pod_name(&event.event_id, job);
    let windows = spec.host.os.as_deref() == Some("windows");
    if spec.sidecar_containers.contains_key(SOURCE_CONTAINER) {
        return Err(error(format!(
            "the sidecar name \"{SOURCE_CONTAINER}\" is reserved for the source checkout on Kubernetes"
        )));
    }
    for helper in [RESTORE_CONTAINER, SAVE_CONTAINER] {
        if spec.sidecar_containers.contains_key(helper) {
            return Err(error(format!(
                "the sidecar name \"{helper}\" is reserved for Mizzen's helpers on Kubernetes"
            )));
        }
    }
    let containers: Vec<(&str, &ContainerSpec)> = std::iter::once((job, &spec.primary_container))
        .chain(spec.sidecar_containers.iter().map(|(n, c)| (n.as_str(), c)))
        .collect();

    // The environment goes into the Secret, keyed `<container>.<variable>`.
    let mut environment = BTreeMap::new();
    for (container, c) in &containers {
        for (key, value) in &c.environment {
            if !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
            {
                return Err(error(format!(
                    "container \"{container}\": environment variable {key:?} cannot be a key of a Kubernetes Secret (letters, digits, '-', '_' and '.' only)"
                )));
            }
            environment.insert(format!("{container}.{key}"), value.clone());
        }
    }

    let wants_source = containers
        .iter()
        .any(|(_, c)| !c.source_mount_path.is_empty());
    let git = match (&event.source, wants_source) {
        (_, false) => None,
        // The cluster's checkout container fetches it: what a Pod may reach
        // is the cluster's network policy's to decide.
        (Some(Source::Git(git) | Source::TenantGit(git)), true) => Some(git),
        (Some(Source::Directory(dir)), true) => {
            return Err(error(format!(
                "sourceMountPath needs the project's source in a git repository: a local directory ({}) cannot be mounted into a cluster's Pods",
                dir.display()
            )));
        }
        (None, true) => {
            return Err(error(
                "sourceMountPath is set but the project has no git source".into(),
            ));
        }
    };
    let mounts_workspace = containers
        .iter()
        .any(|(_, c)| !c.workspace_mount_path.is_empty());
    let wants_docker = containers.iter().any(|(_, c)| c.use_host_docker_socket);

    let build = ContainerBuilder {
        config,
        secret: &name,
        windows,
        resources: resources(&config.requests, &event.container_limits),
    };
    let mut primary = build.container(job, &spec.primary_container);
    if service {
        add_probes(&mut primary, &spec.primary_container);
    }
    if let Some(files) = files {
        environment.insert(TOKEN_KEY.to_string(), files.token.clone());
        let mounts = primary
            .as_object_mut()
            .expect("a container is an object")
            .entry("volumeMounts")
            .or_insert_with(|| json!([]));
        for (index, path) in files.paths.iter().enumerate() {
            mounts
                .as_array_mut()
                .expect("volumeMounts is a list")
                .push(json!({ "name": kept_volume_name(index), "mountPath": path }));
        }
    }
    // Service sidecars (no readiness, or a TCP port) start first as native
    // sidecars; one-shot sidecars (`exited`) then run to completion in order,
    // with the services already up; the primary starts after all of them.
    // `after` moves a sidecar behind those it names: the kubelet starts an
    // init container once the one before it has started (a native sidecar,
    // past its start-up probe) or completed (a one-shot).
    let mut init_containers = Vec::new();
    if let Some(git) = git {
        init_containers.push(build.checkout(git));
    }
    if let Some(files) = files {
        if !files.restores.is_empty() {
            init_containers.push(build.helper(
                RESTORE_CONTAINER,
                files,
                &spec.primary_container,
                &["restore"],
                &files.restores,
            ));
        }
        if !files.saves.is_empty() {
            // A native sidecar: Kubernetes sends it SIGTERM once the
            // primary container has exited, and it saves then.
            let mut saver = build.helper(
                SAVE_CONTAINER,
                files,
                &spec.primary_container,
                &["save", "--after-sigterm"],
                &files.saves,
            );
            saver["restartPolicy"] = json!("Always");
            init_containers.push(saver);
        }
    }
    for sidecar in init_order(&spec.sidecar_containers) {
        let c = &spec.sidecar_containers[sidecar];
        let mut container = build.container(sidecar, c);
        if !c.readiness.is_some_and(|r| r.exited) {
            container["restartPolicy"] = json!("Always");
            add_probes(&mut container, c);
        }
        init_containers.push(container);
    }

    let mut volumes = Vec::new();
    if git.is_some() {
        volumes.push(json!({ "name": "source", "emptyDir": {} }));
    }
    if mounts_workspace {
        volumes.push(json!({
            "name": "workspace",
            "persistentVolumeClaim": { "claimName": workspace_name(&event.event_id) },
        }));
    }
    if wants_docker {
        volumes.push(json!({
            "name": "docker-socket",
            "hostPath": { "path": "/var/run/docker.sock", "type": "Socket" },
        }));
    }
    let mut named = std::collections::BTreeSet::new();
    for (container, c) in &containers {
        for (index, volume) in VolumeMount::all(c).into_iter().enumerate() {
            match volume.source {
                VolumeSource::Anonymous => volumes.push(json!({
                    "name": anonymous_volume_name(container, index),
                    "emptyDir": {},
                })),
                VolumeSource::Named(name) => {
                    if named.insert(name.clone()) {
                        volumes.push(json!({
                            "name": named_volume_name(&name),
                            "persistentVolumeClaim": { "claimName": volume_claim_name(event, &name) },
                        }));
                    }
                }
                VolumeSource::Host(path) => {
                    return Err(error(format!(
                        "container \"{container}\": volume \"{}:{}\" binds a host path, which the Kubernetes executor does not do: a Pod's node is not the host whose paths the project's allowedHostPaths lists; use a named volume",
                        path.display(),
                        volume.path
                    )));
                }
            }
        }
    }

    if let Some(files) = files {
        for index in 0..files.paths.len() {
            volumes.push(json!({ "name": kept_volume_name(index), "emptyDir": {} }));
        }
        volumes.push(json!({
            "name": TOKEN_VOLUME,
            "secret": {
                "secretName": name,
                "items": [{ "key": TOKEN_KEY, "path": "token" }],
                "defaultMode": 0o440,
            },
        }));
    }

    let mut node_selector = BTreeMap::from([(
        "kubernetes.io/os".to_string(),
        if windows { "windows" } else { "linux" }.to_string(),
    )]);
    node_selector.extend(spec.host.node_selector.clone());
    // As on a local engine, the job's and sidecars' names reach the pod's
    // own localhost.
    let host_names: Vec<&str> = std::iter::once(job)
        .chain(spec.sidecar_containers.keys().map(String::as_str))
        .collect();

    let mut pod_spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        // Other services' addresses in every container's environment are
        // noise at best and a map of the namespace at worst.
        "enableServiceLinks": false,
        "activeDeadlineSeconds": whole_seconds(spec.timeout_seconds),
        "nodeSelector": node_selector,
        "hostAliases": [{ "ip": "127.0.0.1", "hostnames": host_names }],
        // The event's services by their names alone, as on a local engine.
        "dnsConfig": { "searches": [format!(
            "{}.{namespace}.svc.{}",
            services_name(&event.event_id),
            config.cluster_domain
        )] },
        "containers": [primary],
    });
    if files.is_some_and(|f| !f.saves.is_empty()) {
        pod_spec["terminationGracePeriodSeconds"] = json!(SAVE_GRACE_SECONDS);
    }
    if service {
        pod_spec["hostname"] = json!(job);
        pod_spec["subdomain"] = json!(services_name(&event.event_id));
    }
    if !init_containers.is_empty() {
        pod_spec["initContainers"] = json!(init_containers);
    }
    if !volumes.is_empty() {
        pod_spec["volumes"] = json!(volumes);
    }
    if !event.image_pull_secrets.is_empty() {
        pod_spec["imagePullSecrets"] = json!(
            event
                .image_pull_secrets
                .iter()
                .map(|name| json!({ "name": name }))
                .collect::<Vec<_>>()
        );
    }
    if windows {
        pod_spec["os"] = json!({ "name": "windows" });
    } else {
        let user = config.run_as_user;
        pod_spec["securityContext"] = json!({
            "runAsNonRoot": true,
            "runAsUser": user,
            "runAsGroup": user,
            // Volumes (workspace, checkout) writable by that user.
            "fsGroup": user,
            "seccompProfile": { "type": "RuntimeDefault" },
        });
    }

    let mut labels = job_labels(event, job);
    if service {
        labels.insert(LABEL_SERVICE, "true".to_string());
    }
    let pod = from_json(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": owner.reference(),
        },
        "spec": pod_spec,
    }));
    let environment = (!environment.is_empty()).then(|| {
        from_json(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": labels,
                "ownerReferences": owner.reference(),
            },
            "type": "Opaque",
            "stringData": environment,
        }))
    });
    Ok(JobObjects {
        pod,
        environment,
        mounts_workspace,
        saves: files.is_some_and(|f| !f.saves.is_empty()),
        claims: named
            .iter()
            .map(|volume| volume_claim(config, namespace, event, owner, volume))
            .collect(),
    })
}

/// Builds the containers of one Pod.
struct ContainerBuilder<'a> {
    config: &'a KubernetesConfig,
    /// The job's environment Secret.
    secret: &'a str,
    windows: bool,
    /// Every container's requests and limits.
    resources: Value,
}

impl ContainerBuilder<'_> {
    fn container(&self, name: &str, c: &ContainerSpec) -> Value {
        let mut container = json!({
            "name": name,
            "image": c.image,
            "imagePullPolicy": match c.image_pull_policy {
                ImagePullPolicy::IfNotPresent => "IfNotPresent",
                ImagePullPolicy::Always => "Always",
            },
            "resources": self.resources,
        });
        if !c.command.is_empty() {
            container["command"] = json!(c.command);
        }
        if !c.arguments.is_empty() {
            container["args"] = json!(c.arguments);
        }
        if !c.working_directory.is_empty() {
            container["workingDir"] = json!(c.working_directory);
        }
        let ports = PortMapping::all(c);
        if !ports.is_empty() {
            container["ports"] = json!(
                ports
                    .iter()
                    .map(|port| {
                        let mut declared =
                            json!({ "containerPort": port.container_port, "protocol": "TCP" });
                        if let Some(host) = port.host {
                            declared["hostPort"] = json!(host.port);
                            declared["hostIP"] = json!(host.address.to_string());
                        }
                        declared
                    })
                    .collect::<Vec<_>>()
            );
        }
        if !c.environment.is_empty() {
            container["env"] = json!(
                c.environment
                    .keys()
                    .map(|key| json!({
                        "name": key,
                        "valueFrom": { "secretKeyRef": { "name": self.secret, "key": format!("{name}.{key}") } },
                    }))
                    .collect::<Vec<_>>()
            );
        }
        let mut mounts = Vec::new();
        if !c.workspace_mount_path.is_empty() {
            mounts.push(json!({ "name": "workspace", "mountPath": c.workspace_mount_path }));
        }
        if !c.source_mount_path.is_empty() {
            mounts.push(json!({ "name": "source", "mountPath": c.source_mount_path }));
        }
        if c.use_host_docker_socket {
            mounts.push(json!({ "name": "docker-socket", "mountPath": "/var/run/docker.sock" }));
        }
        for (index, volume) in VolumeMount::all(c).into_iter().enumerate() {
            let volume_name = match &volume.source {
                VolumeSource::Anonymous => anonymous_volume_name(name, index),
                VolumeSource::Named(named) => named_volume_name(named),
                // Refused before the Pod is built.
                VolumeSource::Host(_) => continue,
            };
            let mut mount = json!({ "name": volume_name, "mountPath": volume.path });
            if volume.read_only {
                mount["readOnly"] = json!(true);
            }
            mounts.push(mount);
        }
        if !mounts.is_empty() {
            container["volumeMounts"] = json!(mounts);
        }
        if !self.windows {
            let mut security = if c.privileged || c.use_host_docker_socket {
                // Only reached under the project's policy: a privileged
                // container (Docker in Docker) or one talking to the node's
                // Docker runs as root unless it names another user.
                json!({
                    "privileged": c.privileged,
                    "allowPrivilegeEscalation": true,
                })
            } else {
                // Root only under the project's allowRoot policy, and even
                // then without capabilities or privilege escalation.
                restricted_container_security()
            };
            // The container's user, as on every executor.
            let user = ContainerUser::of(c);
            security["runAsNonRoot"] = json!(!user.is_root());
            security["runAsUser"] = json!(user.uid);
            security["runAsGroup"] = json!(user.gid);
            container["securityContext"] = security;
        }
        container
    }

    /// One of Mizzen's helpers (`mizzen job-files ARGS ENTRIES`): the
    /// job's kept volumes at `/mizzen/kept/<n>` and its token, as the
    /// primary container's user, so that what it restores is that user's
    /// and what it saves it can read.
    fn helper(
        &self,
        name: &str,
        files: &PodFiles,
        primary: &ContainerSpec,
        args: &[&str],
        entries: &[(usize, usize)],
    ) -> Value {
        let mut mounts: Vec<Value> = (0..files.paths.len())
            .map(|index| {
                json!({ "name": kept_volume_name(index), "mountPath": format!("{KEPT_ROOT}/{index}") })
            })
            .collect();
        mounts.push(json!({ "name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true }));
        let mut command_args = vec!["job-files".to_string()];
        command_args.extend(args.iter().map(|a| a.to_string()));
        command_args.extend([
            "--server".to_string(),
            files.server_url.clone(),
            "--token-file".to_string(),
            format!("{TOKEN_DIR}/token"),
        ]);
        command_args.extend(PodFiles::entries(entries));
        let mut container = json!({
            "name": name,
            "image": files.image,
            "imagePullPolicy": "IfNotPresent",
            "args": command_args,
            "volumeMounts": mounts,
            "resources": self.resources,
        });
        if !self.windows {
            let user = ContainerUser::of(primary);
            let mut security = restricted_container_security();
            security["runAsNonRoot"] = json!(!user.is_root());
            security["runAsUser"] = json!(user.uid);
            security["runAsGroup"] = json!(user.gid);
            container["securityContext"] = security;
        }
        container
    }

    fn checkout(&self, git: &mizzen_host_api::types::GitConfig) -> Value {
        json!({
            "name": SOURCE_CONTAINER,
            "image": self.config.git_image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["sh", "-c", CHECKOUT_SCRIPT],
            "env": [
                { "name": "MIZZEN_GIT_URL", "value": git.clone_url },
                { "name": "MIZZEN_GIT_COMMIT", "value": git.commit },
                { "name": "MIZZEN_GIT_REF", "value": git.git_ref },
                { "name": "MIZZEN_GIT_SUBMODULES", "value": git.init_submodules.to_string() },
                // git wants a home; the image's user may have none.
                { "name": "HOME", "value": "/tmp" },
            ],
            "volumeMounts": [{ "name": "source", "mountPath": SOURCE_CHECKOUT_PATH }],
            "resources": self.resources,
            "securityContext": restricted_container_security(),
        })
    }
}

/// A TCP readiness as a start-up probe (which the kubelet waits for before
/// the next init container) and a readiness probe.
fn add_probes(container: &mut Value, c: &ContainerSpec) {
    if let ReadyWhen::TcpPort(port) = ReadyWhen::of(c.readiness.as_ref()) {
        let timeout = c
            .readiness
            .and_then(|r| r.timeout_seconds)
            .unwrap_or(mizzen_host_api::types::DEFAULT_READINESS_TIMEOUT_SECONDS);
        let probe = json!({
            "tcpSocket": { "port": port },
            "periodSeconds": 1,
            "failureThreshold": whole_seconds(timeout),
        });
        container["startupProbe"] = probe.clone();
        container["readinessProbe"] = probe;
    }
}

/// The sidecars as init containers: native sidecars first, then one-shots,
/// each by name, except that a sidecar comes after those it names in
/// `after` (the rules refused cycles and unknown names).
fn init_order(sidecars: &BTreeMap<String, ContainerSpec>) -> Vec<&str> {
    let one_shot = |c: &ContainerSpec| c.readiness.is_some_and(|r| r.exited);
    let natives = sidecars.iter().filter(|(_, c)| !one_shot(c));
    let one_shots = sidecars.iter().filter(|(_, c)| one_shot(c));
    start_order(
        sidecars,
        natives.chain(one_shots).map(|(name, _)| name.as_str()),
    )
}

/// A container's `resources`: the project's job limits, and the executor's
/// requests, each lowered to its limit where it is above it (Kubernetes
/// refuses a request above its limit).
fn resources(requests: &ResourceRequests, limits: &ContainerLimits) -> Value {
    let mut wanted = serde_json::Map::new();
    if let Some(cpu) = &requests.cpu {
        let lowered = parse_cpu(cpu).is_some_and(|millis| millis > limits.cpu_millis);
        wanted.insert(
            "cpu".into(),
            json!(if lowered {
                cpu_quantity(limits.cpu_millis)
            } else {
                cpu.clone()
            }),
        );
    }
    if let Some(memory) = &requests.memory {
        let lowered = parse_quantity(memory).is_some_and(|bytes| bytes > limits.memory_bytes);
        wanted.insert(
            "memory".into(),
            json!(if lowered {
                memory_quantity(limits.memory_bytes)
            } else {
                memory.clone()
            }),
        );
    }
    let mut resources = json!({
        "limits": {
            "cpu": cpu_quantity(limits.cpu_millis),
            "memory": memory_quantity(limits.memory_bytes),
        },
    });
    if !wanted.is_empty() {
        resources["requests"] = wanted.into();
    }
    resources
}

/// Thousandths of a core as Kubernetes writes CPU: `2`, `500m`.
fn cpu_quantity(millis: u64) -> String {
    LimitValue::Cpu(millis).to_string()
}

/// Bytes as a Kubernetes quantity: `2Gi`, `96Mi`, or the bytes.
fn memory_quantity(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "Gi"), (1 << 20, "Mi"), (1 << 10, "Ki")];
    UNITS
        .iter()
        .find(|(size, _)| bytes >= *size && bytes.is_multiple_of(*size))
        .map(|(size, unit)| format!("{}{unit}", bytes / size))
        .unwrap_or_else(|| bytes.to_string())
}

/// What Pod Security's "restricted" profile asks of every container.
fn restricted_container_security() -> Value {
    json!({
        "allowPrivilegeEscalation": false,
        "capabilities": { "drop": ["ALL"] },
    })
}

fn event_labels(event: &EventContext) -> BTreeMap<&'static str, String> {
    BTreeMap::from([
        (LABEL_MANAGED_BY, "mizzen".to_string()),
        (LABEL_PROJECT, label_value(&event.project_id)),
        (LABEL_EVENT, label_value(&event.event_id)),
    ])
}

fn job_labels(event: &EventContext, job: &str) -> BTreeMap<&'static str, String> {
    let mut labels = event_labels(event);
    labels.insert(LABEL_JOB, label_value(job));
    labels
}

/// Seconds rounded up, at least 1 (Kubernetes counts whole seconds).
fn whole_seconds(seconds: f64) -> i64 {
    (seconds.ceil() as i64).max(1)
}

/// `raw` as an RFC 1123 label: lower case, letters, digits and '-', at
/// most 63 characters, starting and ending with a letter or digit. A name
/// that had to change ends with a hash of the original, so that two names
/// that clean to the same text stay apart.
pub fn dns_label(raw: &str) -> String {
    let cleaned: String = raw
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect();
    let cleaned = cleaned.trim_matches('-');
    if cleaned == raw && !cleaned.is_empty() && cleaned.len() <= MAX_NAME_LEN {
        return cleaned.to_string();
    }
    let hash = hex::encode(Sha256::digest(raw.as_bytes()));
    let keep = MAX_NAME_LEN - NAME_HASH_LEN - 1;
    let prefix = cleaned[..cleaned.len().min(keep)].trim_end_matches('-');
    if prefix.is_empty() {
        format!("x-{}", &hash[..NAME_HASH_LEN])
    } else {
        format!("{prefix}-{}", &hash[..NAME_HASH_LEN])
    }
}

/// `raw` as a label value (letters, digits, '-', '_', '.'; at most 63).
pub fn label_value(raw: &str) -> String {
    let valid = raw.len() <= MAX_NAME_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && raw.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && raw.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric());
    if valid {
        raw.to_string()
    } else {
        dns_label(raw)
    }
}

/// Typed objects from the JSON above. The JSON is this module's own and
/// matches the types, so a failure is a bug here, not bad input.
fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    match serde_json::from_value(value) {
        Ok(object) => object,
        Err(e) => panic!("a manifest built by Mizzen does not match its Kubernetes type: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_kept_when_valid_and_hashed_when_not() {
        assert_eq!(dns_label("abc-1"), "abc-1");
        let long = format!("{}-build", "e".repeat(70));
        let short = dns_label(&long);
        assert_eq!(short.len(), MAX_NAME_LEN);
        assert!(short.starts_with("eeee"));
        assert_ne!(dns_label(&format!("{long}2")), short);
        assert_eq!(dns_label("Ab_c").len(), "ab-c".len() + 1 + NAME_HASH_LEN);
        assert_ne!(dns_label("a_b"), dns_label("a.b"));
        assert!(dns_label("___").starts_with("x-"));
    }

    #[test]
    fn label_values_keep_what_kubernetes_allows() {
        assert_eq!(label_value("my_project.v1"), "my_project.v1");
        assert_ne!(label_value("-x"), "-x");
        assert_eq!(label_value(&"p".repeat(64)).len(), MAX_NAME_LEN);
    }
}
