//! Mizzen's job executor for Kubernetes: each job becomes one Pod, while the
//! script that started it stays in the host's Wasm sandbox (an event costs
//! only its jobs' Pods, not a worker Pod as in Brigade).
//!
//! [`manifest`] builds the objects (a per-event owner Secret, a workspace
//! claim, and per job a Pod and an environment Secret); `job` creates them,
//! watches the Pod to its end with kube's watcher, streams its containers'
//! logs and maps how it ended to a job phase. When an event ends its owner
//! Secret is deleted and the cluster's garbage collector removes the rest.
//! [`kept`] adds a job's artifacts and caches: volumes, Mizzen's own helper
//! containers with the job's token, and what the executor keeps of their
//! receipts.
//!
//! The executor needs, in each job namespace, the verbs of
//! `deploy/base/role.yaml` and nothing cluster-wide; a refusal names the
//! verb and resource that are missing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use mizzen_runtime::executor::{
    EventContext, ExecutorError, JobExecutor, JobRequest, RunningJob, RunningService, StoredVolume,
    WorkspaceError,
};
use tokio::sync::OnceCell;

mod job;
pub mod kept;
pub mod manifest;

use manifest::Owner;

/// The placeholder in [`KubernetesConfig::namespace`] replaced by the
/// project's id.
pub const PROJECT_PLACEHOLDER: &str = "{project}";

/// How the executor is set up.
#[derive(Debug, Clone)]
pub struct KubernetesConfig {
    /// The namespace of every job; `{project}` in it is replaced by the
    /// project's id, giving each project a namespace of its own.
    pub namespace: String,
    /// The storage class of workspace claims; the cluster's default when
    /// unset. It must offer ReadWriteMany.
    pub workspace_storage_class: Option<String>,
    /// A workspace's size when the project does not set one.
    pub workspace_size: String,
    /// Requests and limits of every container.
    pub requests: ResourceRequests,
    /// The image of the source checkout init container (it needs `sh` and
    /// `git`).
    pub git_image: String,
    /// The Pod's user and group (and its volumes' group, `fsGroup`): what
    /// its helper containers (the source checkout) run as. A job's own
    /// containers run as their `user`, `nobody` by default, as on every
    /// executor.
    pub run_as_user: i64,
    /// How long an image may fail to pull before its job fails; the kubelet
    /// retries with back-off, so a registry's hiccup does not fail a job.
    pub image_pull_timeout: Duration,
    /// The cluster's DNS domain, in which an event's services' names are
    /// searched.
    pub cluster_domain: String,
    /// How jobs' artifacts and caches are kept; `None` (no server for the
    /// Pods' helpers to reach) refuses jobs that declare them.
    pub job_files: Option<kept::JobFilesConfig>,
}

/// Kubernetes' default cluster domain.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

/// A workspace's size when neither the project nor the configuration says:
/// Brigade's default.
pub const DEFAULT_WORKSPACE_SIZE: &str = "10Gi";

/// The source checkout's image: Alpine's git, small and with a shell.
pub const DEFAULT_GIT_IMAGE: &str = "docker.io/alpine/git:v2.47.2";

/// `nobody`, the user a job's containers run as by default: one user for
/// the whole Pod, so that what its helpers check out its containers can
/// read and write.
pub const DEFAULT_RUN_AS_USER: i64 = mizzen_runtime::executor::ContainerUser::NOBODY.uid as i64;

/// Two minutes: the kubelet's pull back-off reaches its five-minute cap
/// only after several failures; a missing image or tag fails every retry,
/// a registry's short outage rarely lasts this long.
pub const DEFAULT_IMAGE_PULL_TIMEOUT: Duration = Duration::from_secs(120);

impl KubernetesConfig {
    /// Defaults for jobs in `namespace`.
    pub fn new(namespace: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            workspace_storage_class: None,
            workspace_size: DEFAULT_WORKSPACE_SIZE.to_string(),
            requests: ResourceRequests::default(),
            git_image: DEFAULT_GIT_IMAGE.to_string(),
            run_as_user: DEFAULT_RUN_AS_USER,
            image_pull_timeout: DEFAULT_IMAGE_PULL_TIMEOUT,
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_string(),
            job_files: None,
        }
    }

    /// The namespace of a project's jobs.
    pub fn namespace_of(&self, project_id: &str) -> String {
        if self.namespace.contains(PROJECT_PLACEHOLDER) {
            manifest::dns_label(
                &self
                    .namespace
                    .replace(PROJECT_PLACEHOLDER, &project_id.to_ascii_lowercase()),
            )
        } else {
            self.namespace.clone()
        }
    }
}

/// What each container requests (Kubernetes quantities), so that the
/// scheduler places it; `None` leaves one unset. Limits come from the
/// project's job limits ([`mizzen_runtime::executor::ContainerLimits`]), and
/// a request above its limit is lowered to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceRequests {
    /// CPU request.
    pub cpu: Option<String>,
    /// Memory request.
    pub memory: Option<String>,
}

/// Each container's CPU request by default: small, so that a job is
/// scheduled on a busy cluster.
pub const DEFAULT_CPU_REQUEST: &str = "100m";
/// Each container's memory request by default: small, for the same reason.
pub const DEFAULT_MEMORY_REQUEST: &str = "128Mi";

impl Default for ResourceRequests {
    fn default() -> Self {
        Self {
            cpu: Some(DEFAULT_CPU_REQUEST.into()),
            memory: Some(DEFAULT_MEMORY_REQUEST.into()),
        }
    }
}

/// Runs jobs as Pods.
pub struct KubernetesExecutor {
    state: Arc<SharedState>,
}

/// What every job of the executor shares.
struct SharedState {
    client: kube::Client,
    config: KubernetesConfig,
    /// Events with jobs, by id: their namespace, owner and workspace.
    events: Mutex<HashMap<String, Arc<EventObjects>>>,
}

/// The objects an event has in the cluster, made on its first job.
struct EventObjects {
    namespace: String,
    owner: OnceCell<Owner>,
    workspace: OnceCell<()>,
    /// The headless Service and NetworkPolicy of the event's services.
    services: OnceCell<()>,
}

impl KubernetesExecutor {
    /// An executor on `client`.
    pub fn new(client: kube::Client, config: KubernetesConfig) -> Self {
        Self {
            state: Arc::new(SharedState {
                client,
                config,
                events: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A client from `$KUBECONFIG` or `~/.kube/config`, else the in-cluster
    /// service account; and the namespace it defaults to.
    pub async fn client_from_environment() -> Result<kube::Client, ClusterNotFound> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| ClusterNotFound(e.to_string()))?;
        kube::Client::try_from(config).map_err(|e| ClusterNotFound(e.to_string()))
    }

    fn event_objects(&self, event: &EventContext) -> Arc<EventObjects> {
        let mut events = self.state.events.lock().expect("events lock");
        events
            .entry(event.event_id.clone())
            .or_insert_with(|| {
                Arc::new(EventObjects {
                    namespace: self.state.config.namespace_of(&event.project_id),
                    owner: OnceCell::new(),
                    workspace: OnceCell::new(),
                    services: OnceCell::new(),
                })
            })
            .clone()
    }

    /// The event's owner Secret, created on first use or adopted when an
    /// earlier process created it.
    async fn owner(
        &self,
        objects: &EventObjects,
        event: &EventContext,
    ) -> Result<Owner, ExecutorError> {
        let owner = objects
            .owner
            .get_or_try_init(|| async {
                let api: Api<Secret> =
                    Api::namespaced(self.state.client.clone(), &objects.namespace);
                let secret = manifest::event_owner(&objects.namespace, event);
                let name = manifest::event_owner_name(&event.event_id);
                let created = match api.create(&PostParams::default(), &secret).await {
                    Ok(created) => created,
                    Err(e) if is_conflict(&e) => api
                        .get(&name)
                        .await
                        .map_err(|e| refused("get", "secrets", &objects.namespace, e))?,
                    Err(e) => return Err(refused("create", "secrets", &objects.namespace, e)),
                };
                let uid = created.metadata.uid.ok_or_else(|| {
                    ExecutorError::Unavailable(format!(
                        "the cluster gave the Secret {name} in namespace \"{}\" no uid",
                        objects.namespace
                    ))
                })?;
                Ok(Owner { name, uid })
            })
            .await?;
        Ok(owner.clone())
    }

    /// The event's workspace claim, created on the first job that mounts it.
    async fn workspace(
        &self,
        objects: &EventObjects,
        event: &EventContext,
        owner: &Owner,
    ) -> Result<(), ExecutorError> {
        objects
            .workspace
            .get_or_try_init(|| async {
                let claim =
                    manifest::workspace_claim(&self.state.config, &objects.namespace, event, owner);
                self.create_unless_exists(&objects.namespace, "persistentvolumeclaims", &claim)
                    .await
            })
            .await?;
        Ok(())
    }
}

impl KubernetesExecutor {
    /// Creates `object` in `namespace` unless it exists: one that does is
    /// this event's (made by an earlier process or job) or this project's.
    async fn create_unless_exists<K>(
        &self,
        namespace: &str,
        resource: &str,
        object: &K,
    ) -> Result<(), ExecutorError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let api: Api<K> = Api::namespaced(self.state.client.clone(), namespace);
        match api.create(&PostParams::default(), object).await {
            Ok(_) => Ok(()),
            Err(e) if is_conflict(&e) => Ok(()),
            Err(e) => Err(refused("create", resource, namespace, e)),
        }
    }

    /// The claims of the named volumes a Pod mounts, created unless they
    /// exist (an event's made by an earlier job, a project's by an earlier
    /// event).
    async fn claims(
        &self,
        objects: &EventObjects,
        claims: &[PersistentVolumeClaim],
    ) -> Result<(), ExecutorError> {
        for claim in claims {
            self.create_unless_exists(&objects.namespace, "persistentvolumeclaims", claim)
                .await?;
        }
        Ok(())
    }

    /// The claims of the project's volumes.
    async fn project_claims(
        &self,
        project_id: &str,
    ) -> Result<Vec<PersistentVolumeClaim>, ExecutorError> {
        let namespace = self.state.config.namespace_of(project_id);
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(self.state.client.clone(), &namespace);
        let selector = format!(
            "{}=true,{}={}",
            manifest::LABEL_PROJECT_VOLUME,
            manifest::LABEL_PROJECT,
            manifest::label_value(project_id)
        );
        let claims = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| refused("list", "persistentvolumeclaims", &namespace, e))?;
        Ok(claims.items)
    }

    /// The event's headless Service and NetworkPolicy, created at its first
    /// service (ones that exist are this event's, made by an earlier
    /// process).
    async fn services(
        &self,
        objects: &EventObjects,
        event: &EventContext,
        owner: &Owner,
    ) -> Result<(), ExecutorError> {
        objects
            .services
            .get_or_try_init(|| async {
                let (service, policy) = manifest::event_services(&objects.namespace, event, owner);
                self.create_unless_exists(&objects.namespace, "services", &service)
                    .await?;
                self.create_unless_exists(&objects.namespace, "networkpolicies", &policy)
                    .await
            })
            .await?;
        Ok(())
    }
}

impl KubernetesExecutor {
    /// The server's storage of artifacts, or why there is none.
    fn job_storage(&self) -> Result<&mizzen_objects::JobStorage, ExecutorError> {
        self.state
            .config
            .job_files
            .as_ref()
            .map(|files| &files.storage)
            .ok_or_else(|| {
                ExecutorError::Unsupported(
                    "artifacts on Kubernetes are kept by mizzen server with --kubernetes-job-files-url".into(),
                )
            })
    }
}

#[async_trait]
impl JobExecutor for KubernetesExecutor {
    async fn start_service(
        &self,
        service: JobRequest,
    ) -> Result<Arc<dyn RunningService>, ExecutorError> {
        let objects = self.event_objects(&service.event);
        let owner = self.owner(&objects, &service.event).await?;
        let built = manifest::service_objects(
            &self.state.config,
            &objects.namespace,
            &service.event,
            &owner,
            &service.name,
            &service.spec,
        )
        .map_err(|e| ExecutorError::Unsupported(e.to_string()))?;
        self.services(&objects, &service.event, &owner).await?;
        if built.mounts_workspace {
            self.workspace(&objects, &service.event, &owner).await?;
        }
        self.claims(&objects, &built.claims).await?;
        job::start_service(
            self.state.client.clone(),
            &self.state.config,
            &objects.namespace,
            service,
            built,
        )
        .await
    }

    async fn start(&self, job: JobRequest) -> Result<Arc<dyn RunningJob>, ExecutorError> {
        let files = kept::plan(self.state.config.job_files.as_ref(), &job).await?;
        let objects = self.event_objects(&job.event);
        let owner = self.owner(&objects, &job.event).await?;
        let built = manifest::job_objects(
            &self.state.config,
            &objects.namespace,
            &job.event,
            &owner,
            &job.name,
            &job.spec,
            files.as_ref(),
        )
        .map_err(|e| ExecutorError::Unsupported(e.to_string()))?;
        if built.mounts_workspace {
            self.workspace(&objects, &job.event, &owner).await?;
        }
        self.claims(&objects, &built.claims).await?;
        job::start(
            self.state.client.clone(),
            &self.state.config,
            &objects.namespace,
            job,
            built,
        )
        .await
    }

    async fn artifacts(
        &self,
        event: &EventContext,
    ) -> Result<Vec<mizzen_host_api::types::ArtifactInfo>, ExecutorError> {
        let storage = self.job_storage()?;
        storage
            .artifact_infos(&event.event_id)
            .await
            .map_err(|e| ExecutorError::Unavailable(e.to_string()))
    }

    async fn read_artifact(
        &self,
        event: &EventContext,
        name: &str,
        path: &str,
        max_bytes: u64,
    ) -> Result<Vec<u8>, ExecutorError> {
        let storage = self.job_storage()?;
        storage
            .read_artifact_file(&event.event_id, name, path, max_bytes)
            .await
            .map_err(|e| match e {
                e if e.is_not_found() => ExecutorError::NotFound(e.to_string()),
                mizzen_objects::ArtifactReadError::TooLarge { .. } => {
                    ExecutorError::Unsupported(e.to_string())
                }
                e => ExecutorError::Unavailable(e.to_string()),
            })
    }

    async fn workspace_dir(
        &self,
        _event: &EventContext,
    ) -> Result<std::path::PathBuf, WorkspaceError> {
        Err(WorkspaceError::JobsOnly(
            "on Kubernetes the workspace is a volume claim that only the event's jobs mount; the script cannot read or write it (a job can)",
        ))
    }

    async fn project_volumes(
        &self,
        project_id: &str,
        _measure_up_to: u64,
    ) -> Result<Vec<StoredVolume>, ExecutorError> {
        let claims = self.project_claims(project_id).await?;
        let mut volumes: Vec<StoredVolume> = claims
            .into_iter()
            .filter_map(|claim| {
                let name = claim.metadata.labels?.remove(manifest::LABEL_VOLUME)?;
                // What a claim holds is its storage's to tell, not the API's.
                Some(StoredVolume {
                    name,
                    used_bytes: None,
                })
            })
            .collect();
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(volumes)
    }

    async fn delete_project_volume(
        &self,
        project_id: &str,
        name: &str,
    ) -> Result<(), ExecutorError> {
        let namespace = self.state.config.namespace_of(project_id);
        let claim = manifest::project_volume_claim_name(project_id, name);
        // The cluster would keep a claim in use until its Pods end (its
        // protection finalizer) and say nothing: refuse as a local engine
        // does instead.
        let pods: Api<Pod> = Api::namespaced(self.state.client.clone(), &namespace);
        let selector = format!(
            "{}={}",
            manifest::LABEL_PROJECT,
            manifest::label_value(project_id)
        );
        let listed = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| refused("list", "pods", &namespace, e))?;
        let in_use = listed.items.iter().any(|pod| {
            let running = !matches!(
                pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            );
            let mounts = pod
                .spec
                .as_ref()
                .and_then(|spec| spec.volumes.as_ref())
                .is_some_and(|volumes| {
                    volumes.iter().any(|v| {
                        v.persistent_volume_claim
                            .as_ref()
                            .is_some_and(|c| c.claim_name == claim)
                    })
                });
            running && mounts
        });
        if in_use {
            return Err(ExecutorError::InUse(format!(
                "the volume \"{name}\" is in use by a Pod of a running event; delete it once the event ends"
            )));
        }
        let api: Api<PersistentVolumeClaim> =
            Api::namespaced(self.state.client.clone(), &namespace);
        match api.delete(&claim, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(ExecutorError::NotFound(format!(
                "project \"{project_id}\" has no volume \"{name}\" in namespace \"{namespace}\""
            ))),
            Err(e) => Err(refused("delete", "persistentvolumeclaims", &namespace, e)),
        }
    }

    async fn finish_event(&self, event: &EventContext) {
        let objects = self
            .state
            .events
            .lock()
            .expect("events lock")
            .remove(&event.event_id);
        let Some(objects) = objects else {
            return;
        };
        let Some(owner) = objects.owner.get() else {
            return;
        };
        let api: Api<Secret> = Api::namespaced(self.state.client.clone(), &objects.namespace);
        // The garbage collector removes the Pods, Secrets and claim that
        // name the owner; in the background, so the event ends now.
        match api.delete(&owner.name, &DeleteParams::background()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => tracing::warn!(
                event = %event.event_id,
                namespace = %objects.namespace,
                error = %refused("delete", "secrets", &objects.namespace, e),
                "could not delete an event's objects"
            ),
        }
    }
}

/// No cluster configuration was found.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "no Kubernetes cluster is configured (set KUBECONFIG, write ~/.kube/config, or run in a cluster): {0}"
)]
pub struct ClusterNotFound(pub String);

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 409)
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(status) if status.code == 404)
}

/// The cluster's refusal of `verb` on `resource`, saying what permission
/// is missing when that is why.
fn refused(verb: &str, resource: &str, namespace: &str, e: kube::Error) -> ExecutorError {
    ExecutorError::Unavailable(describe(verb, resource, namespace, &e))
}

fn describe(verb: &str, resource: &str, namespace: &str, e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "Kubernetes refused to {verb} {resource} in namespace \"{namespace}\" (403 Forbidden: {}); \
             Mizzen's service account needs the \"{verb}\" verb on \"{resource}\" in \"{namespace}\" \
             (deploy/base/role.yaml grants what the executor needs)",
            status.message
        ),
        kube::Error::Api(status) if status.code == 404 && verb == "create" => format!(
            "cannot {verb} {resource} in namespace \"{namespace}\": {} (does the namespace exist?)",
            status.message
        ),
        e => format!("cannot {verb} {resource} in namespace \"{namespace}\": {e}"),
    }
}
