//! One job on the engine, with Kubernetes pod semantics.
//!
//! A job without sidecars is one container. A job with sidecars gets a pod:
//! an infra container (the pod helper) holds a network namespace that the
//! sidecars and the primary join, so they reach each other on `localhost`
//! and, through the infra container's hosts file, by name. Sidecars start
//! first; those that declare readiness must be ready before the primary
//! starts. The primary's exit code decides the job; when it exits, the
//! sidecars are stopped and every container of the job is removed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::container::{AttachContainerResults, LogOutput};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, ExecConfig, HostConfig, Mount, MountType,
    NetworkingConfig, PortBinding,
};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptions,
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures_util::future::{BoxFuture, Shared};
use futures_util::{FutureExt, StreamExt};
use mizzen_host_api::types::{
    ContainerSpec, DEFAULT_READINESS_TIMEOUT_SECONDS, JobResult, Phase, Readiness, ServiceReady,
};
use mizzen_runtime::executor::{
    ContainerUser, JobOutput, JobRequest, PortMapping, ReadySender, ReadyWhen, SpawnedJob,
    SpawnedService, UP_FOR_READY, start_order,
};
use mizzen_runtime::source;
use mizzen_runtime::volume::{VolumeMount, VolumeSource};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::images::{self, ImageError, POD_HELPER_PATH, engine_message};
use crate::scratch::EventScratch;
use crate::{Labels, SharedState};

/// How often a sidecar's TCP readiness is probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// How long a container's output may take to end after the container
/// stopped. The stream is attached before the container starts and ends as
/// soon as the engine has passed on its last bytes, within milliseconds; one
/// that has not ended by then is cut, and the job's log says so.
const OUTPUT_END_WAIT: Duration = Duration::from_secs(10);

/// A line longer than this is passed on in pieces, so that a container that
/// never prints a newline cannot make the host buffer without end.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Capabilities dropped from Docker's default set unless the container is
/// privileged: raw sockets (packet spoofing), device nodes, audit writes and
/// file capabilities are not needed to build, test or deploy; and a job's
/// files reach the host through its mounts, so its root may not give them
/// to other owners (`CHOWN`), change files it does not own (`FOWNER`) or
/// keep set-user-ID bits through a write or set set-group-ID bits for
/// groups it is not in (`FSETID`), as Kubernetes' restricted profile drops
/// all of them.
const DROPPED_CAPABILITIES: [&str; 7] = [
    "NET_RAW",
    "MKNOD",
    "AUDIT_WRITE",
    "SETFCAP",
    "CHOWN",
    "FOWNER",
    "FSETID",
];

/// Processes of a pod's infra container: the pause process and the probes
/// run in it, one at a time.
const POD_HELPER_PROCESSES: i64 = 16;

/// What a job needs besides its request.
pub(crate) struct JobContext {
    pub request: JobRequest,
    pub state: Arc<SharedState>,
    /// The event's scratch directory (workspace, checkouts).
    pub scratch: Arc<EventScratch>,
}

/// Why a job failed before its primary container could decide it. The text
/// is the job's failure reason; the engine's words for its own errors are
/// kept in it ([`engine_message`]).
#[derive(Debug, thiserror::Error)]
enum JobError {
    /// The workspace directory could not be made on the host.
    #[error("creating the workspace {} failed: {source}", path.display())]
    Workspace {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An earlier checkout of the job's source could not be removed.
    #[error("clearing {} failed: {source}", path.display())]
    ClearSource {
        /// The checkout's directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The project's source could not be checked out for the job.
    #[error("checking out the project's source failed: {0}")]
    Checkout(#[source] source::SourceError),
    /// The checkout could not be made writable for the containers' users.
    #[error("opening {} to the job failed: {source}", path.display())]
    ShareSource {
        /// The checkout's directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A container asks for the host's Docker socket, and the engine is not
    /// reached through a local socket. Jobs are refused this before they
    /// start; this is the second line.
    #[error("the host's Docker socket can be mounted only from a local engine")]
    NoLocalSocket,
    /// An image the job needs (one of its own, or the pod helper's) is not
    /// there.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The engine would not create one of the job's containers.
    #[error("creating container {container:?} failed: {}", engine_message(source))]
    Create {
        /// The container's name in the job (`pod` for the infra container).
        container: String,
        /// Why.
        #[source]
        source: bollard::errors::Error,
    },
    /// The engine would not start one of the job's containers, or attach to
    /// its output just before (where Podman fails what would fail the start).
    #[error("starting container {container:?} failed: {}", engine_message(source))]
    Start {
        /// The container's name in the job (`pod` for the infra container).
        container: String,
        /// Why.
        #[source]
        source: bollard::errors::Error,
    },
    /// Waiting for a container to stop failed.
    #[error("waiting for a container failed: {}", engine_message(.0))]
    Wait(#[source] bollard::errors::Error),
    /// The engine ended its answer to a wait without the container's exit.
    #[error("the engine stopped reporting on a container")]
    EngineStoppedReporting,
    /// Running the pod helper's readiness probe in the pod failed.
    #[error("probing a sidecar failed: {}", engine_message(.0))]
    Probe(#[source] bollard::errors::Error),
    /// The event's network could not be made.
    #[error(transparent)]
    Network(#[from] crate::network::NetworkError),
    /// A volume a container mounts could not be made ready.
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    /// An artifact or cache could not be restored or saved.
    #[error(transparent)]
    Kept(#[from] crate::kept::KeptError),
    /// A sidecar or service that is ready once it exits exited with another
    /// code than 0.
    #[error("{container} exited with code {code} before it was ready")]
    SidecarFailed {
        /// `sidecar "name"` or `service "name"`.
        container: String,
        /// Its exit code.
        code: i64,
    },
    /// A sidecar or service exited while it was probed for a port.
    #[error("{container} exited with code {code} before it accepted connections on port {port}")]
    SidecarExited {
        /// `sidecar "name"` or `service "name"`.
        container: String,
        /// Its exit code.
        code: i64,
        /// The port it was to accept connections on.
        port: u16,
    },
    /// A sidecar or service without a readiness check exited before it had
    /// been up for [`UP_FOR_READY`].
    #[error(
        "{container} exited with code {code} within {}s of starting, before what comes after it could start (declare readiness: {{ exited: true }} for a one-shot container)",
        UP_FOR_READY.as_secs()
    )]
    ExitedEarly {
        /// `sidecar "name"` or `service "name"`.
        container: String,
        /// Its exit code.
        code: i64,
    },
    /// Nothing accepted connections on a sidecar's or service's port
    /// within its readiness timeout.
    #[error(
        "{container} was not ready after {seconds}s: nothing accepted connections on port {port}"
    )]
    SidecarNotListening {
        /// `sidecar "name"` or `service "name"`.
        container: String,
        /// Its readiness timeout.
        seconds: f64,
        /// The port probed.
        port: u16,
    },
    /// A sidecar or service that is ready once it exits was still running at
    /// the end of its readiness timeout.
    #[error("{container} was not ready after {seconds}s: it had not exited")]
    SidecarRunning {
        /// `sidecar "name"` or `service "name"`.
        container: String,
        /// Its readiness timeout.
        seconds: f64,
    },
    /// A sidecar was not started because one it comes after was not ready.
    #[error(
        "{container} was not started: \"{after}\", which it comes after, was not ready: {cause}"
    )]
    NotStarted {
        /// `sidecar "name"`.
        container: String,
        /// The sidecar it comes after.
        after: String,
        /// Why that one was not ready.
        cause: Arc<JobError>,
    },
    /// A sidecar's failure, shared by the containers that come after it.
    #[error(transparent)]
    Shared(Arc<JobError>),
}

fn sidecar(name: &str) -> String {
    format!("sidecar \"{name}\"")
}

/// Starts the job's task and returns its handle.
pub(crate) fn spawn(context: JobContext) -> Arc<SpawnedJob> {
    SpawnedJob::spawn(|cancelled| run(context, cancelled))
}

/// Starts a service's task and returns its handle.
pub(crate) fn spawn_service(context: JobContext) -> Arc<SpawnedService> {
    SpawnedService::spawn(|cancelled, ready| serve(context, cancelled, ready))
}

async fn serve(
    context: JobContext,
    mut cancelled: watch::Receiver<bool>,
    ready: ReadySender,
) -> JobResult {
    let pod = Pod::new(&context);
    let result = tokio::select! {
        result = pod.serve(&context, &ready) => match result {
            Ok(result) => result,
            Err(error) => JobResult::ended(Phase::Failed, None, error.to_string()),
        },
        reason = context.scratch.exceeded() => JobResult::ended(Phase::Failed, None, reason),
        _ = cancelled.wait_for(|cancel| *cancel) => {
            JobResult::ended(Phase::Aborted, None, "the service was stopped")
        }
    };
    pod.remove_all(&context).await;
    result
}

async fn run(context: JobContext, mut cancelled: watch::Receiver<bool>) -> JobResult {
    let pod = Pod::new(&context);
    let timeout = Duration::from_secs_f64(context.request.spec.timeout_seconds);
    let result = tokio::select! {
        result = pod.run(&context) => result,
        _ = tokio::time::sleep(timeout) => JobResult::ended(
            Phase::TimedOut,
            None,
            format!("the job ran longer than its timeout of {}s", context.request.spec.timeout_seconds),
        ),
        reason = context.scratch.exceeded() => JobResult::ended(Phase::Failed, None, reason),
        _ = cancelled.wait_for(|cancel| *cancel) => {
            if pod.primary_started.load(std::sync::atomic::Ordering::SeqCst) {
                JobResult::ended(Phase::Aborted, None, "the job was stopped")
            } else {
                JobResult::ended(Phase::Canceled, None, "the job was cancelled before it started")
            }
        }
    };
    pod.remove_all(&context).await;
    result
}

struct Pod {
    docker: Docker,
    /// Containers created so far, in order (the infra container first).
    containers: Mutex<Vec<String>>,
    /// The output streams of the sidecars.
    followers: Mutex<Vec<Follower>>,
    primary_started: std::sync::atomic::AtomicBool,
}

impl Pod {
    fn new(context: &JobContext) -> Self {
        Self {
            docker: context.state.engine.docker.clone(),
            containers: Mutex::new(Vec::new()),
            followers: Mutex::new(Vec::new()),
            primary_started: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Runs a service: an infra container on the event's network, with the
    /// service's name as its alias and its published ports, and the
    /// service's container in its namespace. Says when it is ready (with the
    /// host ports it got) and ends when the container exits.
    async fn serve(
        &self,
        context: &JobContext,
        ready: &ReadySender,
    ) -> Result<JobResult, JobError> {
        let request = &context.request;
        let container = &request.spec.primary_container;
        let mounts = prepare_mounts(context).await?;
        images::ensure(
            &self.docker,
            &container.image,
            container.image_pull_policy,
            &request.event.pull_secrets,
        )
        .await?;
        let labels = Labels::new(&context.state, &request.event, &request.name);
        let base_name = format!("mizzen_{}_{}", request.event.event_id, request.name);
        let infra = self
            .start_infra(
                context,
                &base_name,
                &labels,
                Some(&request.name),
                &[],
                &PortMapping::all(container),
            )
            .await?;
        let body = container_body(
            container,
            &labels.for_container(&request.name),
            Some(format!("container:{infra}")),
            &mounts,
            context,
        )?;
        let id = self
            .create_and_start(
                &format!("{base_name}_{}", request.name),
                &request.name,
                body,
                Some(&request.output),
            )
            .await?;
        self.primary_started
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Every container is made: a project volume may be deleted now.
        drop(mounts);
        let label = format!("service \"{}\"", request.name);
        let readiness = container.readiness.as_ref();
        self.ready(
            &label,
            &id,
            &infra,
            ReadyWhen::of(readiness),
            readiness_seconds(readiness),
        )
        .await?;
        let ports = self.host_ports(&infra).await?;
        let _ = ready.send(Some(Ok(ServiceReady { ports })));
        let code = exit_code(&self.docker, &id).await?;
        Ok(if code == 0 {
            JobResult {
                phase: Phase::Succeeded,
                exit_code: Some(0),
                reason: None,
            }
        } else {
            JobResult::ended(
                Phase::Failed,
                Some(code),
                format!("the service's container exited with code {code}"),
            )
        })
    }

    /// Creates and starts a pod's infra container on the event's network:
    /// with `alias` (a service's name) there, `localhost_names` (a job's
    /// containers) resolving to the pod itself, and `ports` published.
    async fn start_infra(
        &self,
        context: &JobContext,
        base_name: &str,
        labels: &Labels,
        alias: Option<&str>,
        localhost_names: &[&str],
        ports: &[PortMapping],
    ) -> Result<String, JobError> {
        let network = crate::network::ensure(&context.state, &context.request.event).await?;
        let helper = images::pod_helper(&self.docker).await?;
        let extra_hosts = localhost_names
            .iter()
            .map(|name| format!("{name}:127.0.0.1"))
            .collect();
        let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = ports
            .iter()
            .filter_map(|port| {
                let host = port.host?;
                Some((
                    format!("{}/tcp", port.container_port),
                    Some(vec![PortBinding {
                        host_ip: Some(host.address.to_string()),
                        // Empty: a port the engine chooses.
                        host_port: Some(if host.port == 0 {
                            String::new()
                        } else {
                            host.port.to_string()
                        }),
                    }]),
                ))
            })
            .collect();
        let exposed_ports = ports
            .iter()
            .map(|port| format!("{}/tcp", port.container_port))
            .collect::<Vec<_>>();
        let networking_config = alias.map(|alias| NetworkingConfig {
            endpoints_config: Some(HashMap::from([(
                network.to_string(),
                EndpointSettings {
                    aliases: Some(vec![alias.to_string()]),
                    ..EndpointSettings::default()
                },
            )])),
        });
        let body = ContainerCreateBody {
            image: Some(helper),
            cmd: Some(vec![POD_HELPER_PATH.to_string()]),
            labels: Some(labels.for_container("pod")),
            exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
            networking_config,
            host_config: Some(HostConfig {
                network_mode: Some(network.to_string()),
                extra_hosts: Some(extra_hosts),
                port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
                security_opt: Some(vec!["no-new-privileges".into()]),
                cap_drop: Some(vec!["ALL".into()]),
                pids_limit: Some(POD_HELPER_PROCESSES),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let _joining =
            crate::network::membership_change(&context.state, &context.request.event.event_id)
                .await;
        self.create_and_start(base_name, "pod", body, None).await
    }

    /// The host port each published container port got, from the infra
    /// container (the engine chose those asked for as 0).
    async fn host_ports(&self, infra: &str) -> Result<BTreeMap<String, u16>, JobError> {
        let inspected = self
            .docker
            .inspect_container(infra, None)
            .await
            .map_err(JobError::Probe)?;
        let ports = inspected
            .network_settings
            .and_then(|settings| settings.ports)
            .unwrap_or_default();
        Ok(ports
            .into_iter()
            .filter_map(|(port, bindings)| {
                let container_port = port.split('/').next()?.to_string();
                let host_port = bindings?.first()?.host_port.as_deref()?.parse().ok()?;
                Some((container_port, host_port))
            })
            .collect())
    }

    async fn run(&self, context: &JobContext) -> JobResult {
        match self.run_containers(context).await {
            Ok(result) => result,
            Err(error) => JobResult::ended(Phase::Failed, None, error.to_string()),
        }
    }

    async fn run_containers(&self, context: &JobContext) -> Result<JobResult, JobError> {
        let request = &context.request;
        let spec = &request.spec;
        // What the job restores is found first: a missing artifact fails
        // the job before anything of it runs.
        let kept = match &context.state.storage {
            Some(storage) if !spec.artifacts.is_empty() || !spec.caches.is_empty() => {
                Some((storage, crate::kept::find(storage, context).await?))
            }
            _ => None,
        };
        let mounts = prepare_mounts(context).await?;

        let mut pulled = BTreeMap::new();
        for container in
            std::iter::once(&spec.primary_container).chain(spec.sidecar_containers.values())
        {
            if pulled.insert(container.image.clone(), ()).is_none() {
                images::ensure(
                    &self.docker,
                    &container.image,
                    container.image_pull_policy,
                    &request.event.pull_secrets,
                )
                .await?;
            }
        }

        let labels = Labels::new(&context.state, &request.event, &request.name);
        let base_name = format!("mizzen_{}_{}", request.event.event_id, request.name);
        // Every pod has an infra container, even without sidecars: then
        // only Mizzen starts and stops the members of the event's network,
        // under its lock (see `network::membership_change`), rather than a
        // primary container leaving it whenever it exits.
        //
        // Every name the job's containers use resolves to the pod's
        // localhost, as `redis:6379` does in a Kubernetes pod with
        // hostAliases; the event's services resolve on its network.
        let names: Vec<&str> = std::iter::once(request.name.as_str())
            .chain(spec.sidecar_containers.keys().map(String::as_str))
            .collect();
        let ports: Vec<PortMapping> = spec
            .sidecar_containers
            .values()
            .flat_map(PortMapping::all)
            .collect();
        let infra = self
            .start_infra(context, &base_name, &labels, None, &names, &ports)
            .await?;
        let network_mode = Some(format!("container:{infra}"));

        // Sidecars start in the order their `after` gives (the rules refused
        // unknown names and cycles), each once those it comes after are
        // ready; the primary once every sidecar has started and those that
        // declare readiness, or that it comes after, are ready. Each step is
        // a shared future, run once however many wait for it.
        type Step<'a> = Shared<BoxFuture<'a, Result<String, Arc<JobError>>>>;
        let mut started: BTreeMap<&str, Step<'_>> = BTreeMap::new();
        let mut ready: BTreeMap<&str, Step<'_>> = BTreeMap::new();
        let names = spec.sidecar_containers.keys().map(String::as_str);
        for name in start_order(&spec.sidecar_containers, names) {
            let container = &spec.sidecar_containers[name];
            let before: Vec<(&str, Step<'_>)> = container
                .after
                .iter()
                .map(|after| (after.as_str(), ready[after.as_str()].clone()))
                .collect();
            let body = container_body(
                container,
                &labels.for_container(name),
                network_mode.clone(),
                &mounts,
                context,
            )?;
            let full_name = format!("{base_name}_{name}");
            let start = async move {
                for (after, before) in before {
                    before.await.map_err(|cause| {
                        Arc::new(JobError::NotStarted {
                            container: sidecar(name),
                            after: after.to_string(),
                            cause,
                        })
                    })?;
                }
                self.create_and_start(&full_name, name, body, Some(&request.output))
                    .await
                    .map_err(Arc::new)
            }
            .boxed()
            .shared();
            let infra = infra.clone();
            let readiness = container.readiness.as_ref();
            let is_ready = {
                let start = start.clone();
                async move {
                    let id = start.await?;
                    self.ready(
                        &sidecar(name),
                        &id,
                        &infra,
                        ReadyWhen::of(readiness),
                        readiness_seconds(readiness),
                    )
                    .await
                    .map_err(Arc::new)?;
                    Ok(id)
                }
                .boxed()
                .shared()
            };
            started.insert(name, start);
            ready.insert(name, is_ready);
        }
        let primary = &spec.primary_container;
        let waited_for = spec
            .sidecar_containers
            .iter()
            .filter(|(name, c)| c.readiness.is_some() || primary.after.contains(name))
            .map(|(name, _)| ready[name.as_str()].clone());
        let outcomes =
            futures_util::future::join_all(started.values().cloned().chain(waited_for)).await;
        // A sidecar not started because of another's failure says both.
        let failures: Vec<Arc<JobError>> = outcomes.into_iter().filter_map(Result::err).collect();
        if let Some(failure) = failures
            .iter()
            .find(|f| matches!(***f, JobError::NotStarted { .. }))
            .or(failures.first())
        {
            return Err(JobError::Shared(failure.clone()));
        }

        let body = container_body(
            primary,
            &labels.for_container(&request.name),
            network_mode,
            &mounts,
            context,
        )?;
        let id = self
            .create(
                &format!("{base_name}_{}", request.name),
                &request.name,
                body,
                Some(&request.output),
            )
            .await?;
        if let Some((storage, restores)) = &kept {
            crate::kept::restore(&self.docker, storage, &id, context, restores).await?;
        }
        self.start(&id, &request.name).await?;
        self.primary_started
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Every container is made: a project volume may be deleted now.
        drop(mounts);
        let code = exit_code(&self.docker, &id).await?;
        // `job.logs()` right after `run()` must see every line: the
        // primary's follower was the last one started.
        let primary_output = self
            .followers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop();
        if let Some(follower) = primary_output {
            follower.drain().await;
        }
        if let Some((storage, restores)) = &kept {
            let saved =
                crate::kept::save(&self.docker, storage, &id, context, restores, code == 0).await;
            match saved {
                Err(error) if code == 0 => return Err(error.into()),
                // The container's failure is the job's; the save's is said.
                Err(error) => request
                    .output
                    .line(&request.name, &format!("[mizzen] {error}")),
                Ok(()) => {}
            }
        }
        Ok(if code == 0 {
            JobResult {
                phase: Phase::Succeeded,
                exit_code: Some(0),
                reason: None,
            }
        } else {
            JobResult::ended(
                Phase::Failed,
                Some(code),
                format!("the primary container exited with code {code}"),
            )
        })
    }

    /// Creates a container and starts it; with `output`, its stdout and
    /// stderr are attached in between, so that every byte it writes reaches
    /// a follower (kept in `followers`) once and in order.
    async fn create_and_start(
        &self,
        name: &str,
        container: &str,
        body: ContainerCreateBody,
        output: Option<&Arc<dyn JobOutput>>,
    ) -> Result<String, JobError> {
        let id = self.create(name, container, body, output).await?;
        self.start(&id, container).await?;
        Ok(id)
    }

    /// Creates a container, its output attached when there is `output`.
    async fn create(
        &self,
        name: &str,
        container: &str,
        body: ContainerCreateBody,
        output: Option<&Arc<dyn JobOutput>>,
    ) -> Result<String, JobError> {
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|source| JobError::Create {
                container: container.to_string(),
                source,
            })?;
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(created.id.clone());
        if let Some(output) = output {
            let follower = Follower::attach(&self.docker, &created.id, container, output).await?;
            self.followers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(follower);
        }
        Ok(created.id)
    }

    /// Starts a created container.
    async fn start(&self, id: &str, container: &str) -> Result<(), JobError> {
        self.docker
            .start_container(id, None)
            .await
            .map_err(|source| JobError::Start {
                container: container.to_string(),
                source,
            })
    }

    /// Waits until a sidecar or service (`container`, named so in errors)
    /// is ready, within `seconds`; its TCP port is probed from `infra`, the
    /// pod's namespace.
    async fn ready(
        &self,
        container: &str,
        id: &str,
        infra: &str,
        when: ReadyWhen,
        seconds: f64,
    ) -> Result<(), JobError> {
        let container = container.to_string();
        let check = async {
            match when {
                ReadyWhen::Exited => match exit_code(&self.docker, id).await? {
                    0 => Ok(()),
                    code => Err(JobError::SidecarFailed {
                        container: container.clone(),
                        code,
                    }),
                },
                ReadyWhen::Up => {
                    match tokio::time::timeout(UP_FOR_READY, exit_code(&self.docker, id)).await {
                        Err(_) => Ok(()),
                        Ok(code) => Err(JobError::ExitedEarly {
                            container: container.clone(),
                            code: code?,
                        }),
                    }
                }
                ReadyWhen::TcpPort(port) => loop {
                    if self.probe_tcp(infra, port).await? {
                        return Ok(());
                    }
                    if let Some(code) = self.exited(id).await {
                        return Err(JobError::SidecarExited {
                            container: container.clone(),
                            code,
                            port,
                        });
                    }
                    tokio::time::sleep(PROBE_INTERVAL).await;
                },
            }
        };
        if when == ReadyWhen::Up {
            return check.await;
        }
        match tokio::time::timeout(Duration::from_secs_f64(seconds), check).await {
            Ok(ready) => ready,
            Err(_) => Err(match when {
                ReadyWhen::TcpPort(port) => JobError::SidecarNotListening {
                    container,
                    seconds,
                    port,
                },
                _ => JobError::SidecarRunning { container, seconds },
            }),
        }
    }

    /// Runs the pod helper's probe inside the pod's network namespace.
    async fn probe_tcp(&self, infra: &str, port: u16) -> Result<bool, JobError> {
        let exec = self
            .docker
            .create_exec(
                infra,
                ExecConfig {
                    cmd: Some(vec![
                        POD_HELPER_PATH.into(),
                        "probe-tcp".into(),
                        port.to_string(),
                    ]),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..ExecConfig::default()
                },
            )
            .await
            .map_err(JobError::Probe)?;
        if let bollard::exec::StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(JobError::Probe)?
        {
            while output.next().await.is_some() {}
        }
        let inspected = self
            .docker
            .inspect_exec(&exec.id)
            .await
            .map_err(JobError::Probe)?;
        Ok(inspected.exit_code == Some(0))
    }

    /// The container's exit code if it has exited.
    async fn exited(&self, id: &str) -> Option<i64> {
        let state = self.docker.inspect_container(id, None).await.ok()?.state?;
        if state.running == Some(true) {
            return None;
        }
        state.exit_code
    }

    /// Stops every container of the job (the sidecars when the primary has
    /// exited), collects the rest of their output, and removes them, the
    /// infra container last (its network namespace is the others'), under
    /// the lock on the event's network's members.
    async fn remove_all(&self, context: &JobContext) {
        let containers =
            std::mem::take(&mut *self.containers.lock().unwrap_or_else(|e| e.into_inner()));
        let Some((infra, members)) = containers.split_first() else {
            return;
        };
        let stop = StopContainerOptionsBuilder::default().t(0).build();
        for id in members.iter().rev() {
            let _ = self.docker.stop_container(id, Some(stop.clone())).await;
        }
        let followers =
            std::mem::take(&mut *self.followers.lock().unwrap_or_else(|e| e.into_inner()));
        for follower in followers {
            follower.drain().await;
        }
        let remove = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        for id in members.iter().rev() {
            self.remove(id, remove.clone()).await;
        }
        let _leaving =
            crate::network::membership_change(&context.state, &context.request.event.event_id)
                .await;
        let _ = self.docker.stop_container(infra, Some(stop)).await;
        self.remove(infra, remove).await;
    }

    async fn remove(&self, id: &str, options: RemoveContainerOptions) {
        if let Err(e) = self.docker.remove_container(id, Some(options)).await {
            tracing::warn!(container = %id, error = %engine_message(&e), "could not remove a job's container");
        }
    }
}

/// How long a readiness check may take.
fn readiness_seconds(readiness: Option<&Readiness>) -> f64 {
    readiness
        .and_then(|r| r.timeout_seconds)
        .unwrap_or(DEFAULT_READINESS_TIMEOUT_SECONDS)
}

/// What a job's containers mount, prepared: the workspace and checkout
/// directories on the host, and the engine's names of the named volumes,
/// each held (see [`crate::volume::VolumeLock`]) until the job's containers
/// are made.
struct Mounts {
    workspace: Option<PathBuf>,
    source: Option<PathBuf>,
    named: HashMap<String, String>,
    _held: Vec<crate::volume::VolumeLock>,
}

async fn prepare_mounts(context: &JobContext) -> Result<Mounts, JobError> {
    let spec = &context.request.spec;
    let containers: Vec<&ContainerSpec> = std::iter::once(&spec.primary_container)
        .chain(spec.sidecar_containers.values())
        .collect();
    let workspace = if containers
        .iter()
        .any(|c| !c.workspace_mount_path.is_empty())
    {
        let dir = workspace_dir(context.scratch.dir());
        create_shared_dir(&dir).map_err(|source| JobError::Workspace {
            path: dir.clone(),
            source,
        })?;
        Some(dir)
    } else {
        None
    };
    let source = match &context.request.event.source {
        Some(project_source) if containers.iter().any(|c| !c.source_mount_path.is_empty()) => {
            let dir = context
                .scratch
                .dir()
                .join("jobs")
                .join(&context.request.name)
                .join("source");
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|source| JobError::ClearSource {
                    path: dir.clone(),
                    source,
                })?;
            }
            source::checkout(project_source, &dir)
                .await
                .map_err(JobError::Checkout)?;
            make_shared(&dir).map_err(|source| JobError::ShareSource {
                path: dir.clone(),
                source,
            })?;
            Some(dir)
        }
        _ => None,
    };
    let mut named = HashMap::new();
    let mut held = Vec::new();
    let event = &context.request.event;
    for container in &containers {
        for volume in VolumeMount::all(container) {
            match &volume.source {
                VolumeSource::Anonymous => {}
                VolumeSource::Named(name) if !named.contains_key(name) => {
                    let (engine_name, lock) =
                        crate::volume::ensure(&context.state, event, name).await?;
                    named.insert(name.clone(), engine_name);
                    held.push(lock);
                }
                VolumeSource::Named(_) => {}
                VolumeSource::Host(path) => {
                    crate::volume::check_host_path(
                        &event.volumes.host_paths,
                        &format!("{}:{}", path.display(), volume.path),
                        path,
                    )?;
                }
            }
        }
    }
    Ok(Mounts {
        workspace,
        source,
        named,
        _held: held,
    })
}

/// Where the event's workspace is in its scratch directory: one place for
/// its jobs' mounts and its script's operations.
pub(crate) fn workspace_dir(work_dir: &Path) -> PathBuf {
    work_dir.join("workspace")
}

/// Creates a directory every user of the job's containers can write: images
/// run as whatever user they choose.
pub(crate) fn create_shared_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    make_shared(dir)
}

fn make_shared(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
}

/// The engine's view of one of the job's containers.
fn container_body(
    container: &ContainerSpec,
    labels: &HashMap<String, String>,
    network_mode: Option<String>,
    mounts: &Mounts,
    context: &JobContext,
) -> Result<ContainerCreateBody, JobError> {
    let mut binds = Vec::new();
    let mut bind = |source: &Path, target: &str| {
        binds.push(Mount {
            target: Some(target.to_string()),
            source: Some(source.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(false),
            ..Mount::default()
        });
    };
    if let (Some(dir), false) = (&mounts.workspace, container.workspace_mount_path.is_empty()) {
        bind(dir, &container.workspace_mount_path);
    }
    if let (Some(dir), false) = (&mounts.source, container.source_mount_path.is_empty()) {
        bind(dir, &container.source_mount_path);
    }
    if container.use_host_docker_socket {
        let socket = context
            .state
            .engine
            .socket
            .as_ref()
            .ok_or(JobError::NoLocalSocket)?;
        bind(socket, "/var/run/docker.sock");
    }
    for volume in VolumeMount::all(container) {
        let (typ, source) = match &volume.source {
            // No source: the engine makes the container a volume of its
            // own, removed with it.
            VolumeSource::Anonymous => (MountType::VOLUME, None),
            VolumeSource::Named(name) => (MountType::VOLUME, mounts.named.get(name).cloned()),
            VolumeSource::Host(path) => {
                (MountType::BIND, Some(path.to_string_lossy().into_owned()))
            }
        };
        binds.push(Mount {
            target: Some(volume.path.clone()),
            source,
            typ: Some(typ),
            read_only: Some(volume.read_only),
            ..Mount::default()
        });
    }
    let (entrypoint, cmd) = match (container.command.is_empty(), container.arguments.is_empty()) {
        // As in Kubernetes: `command` replaces the image's entrypoint (and
        // its default arguments), `arguments` replaces its arguments.
        (false, _) => (
            Some(container.command.clone()),
            Some(container.arguments.clone()),
        ),
        (true, false) => (None, Some(container.arguments.clone())),
        (true, true) => (None, None),
    };
    let limits = &context.request.event.container_limits;
    let env = container
        .environment
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    let (security_opt, cap_drop) = if container.privileged {
        (None, None)
    } else {
        (
            Some(vec!["no-new-privileges".to_string()]),
            Some(DROPPED_CAPABILITIES.iter().map(|c| c.to_string()).collect()),
        )
    };
    Ok(ContainerCreateBody {
        image: Some(container.image.clone()),
        entrypoint,
        cmd,
        env: Some(env),
        // Numbers, as on Kubernetes: never the image's own user, so that a
        // job runs as the same user on every executor.
        user: Some(ContainerUser::of(container).to_string()),
        working_dir: (!container.working_directory.is_empty())
            .then(|| container.working_directory.clone()),
        labels: Some(labels.clone()),
        host_config: Some(HostConfig {
            network_mode,
            mounts: Some(binds),
            privileged: Some(container.privileged),
            security_opt,
            cap_drop,
            // The project's job limits, as a Pod's would be; swap equal to
            // memory means none beyond it.
            memory: Some(saturating_i64(limits.memory_bytes)),
            memory_swap: Some(saturating_i64(limits.memory_bytes)),
            nano_cpus: Some(saturating_i64(limits.cpu_millis.saturating_mul(1_000_000))),
            pids_limit: Some(saturating_i64(limits.processes)),
            ..HostConfig::default()
        }),
        ..ContainerCreateBody::default()
    })
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Passes a container's output, line by line, to the job's output, while it
/// runs.
///
/// The output is read from an attachment made before the container starts,
/// not from the engine's log: Podman's log stream (`logs?follow=true`) skips,
/// repeats and reorders lines of a container that writes fast (a job printing
/// 500,000 numbered lines lost 1,833 and repeated 1,619), while an attachment
/// passes on every byte in order, and the container waits for a reader that
/// is behind rather than dropping what it writes.
struct Follower {
    container: String,
    output: Arc<dyn JobOutput>,
    task: JoinHandle<()>,
}

impl Follower {
    /// Attaches to a created container's stdout and stderr.
    async fn attach(
        docker: &Docker,
        id: &str,
        container: &str,
        output: &Arc<dyn JobOutput>,
    ) -> Result<Self, JobError> {
        let options = AttachContainerOptionsBuilder::default()
            .stream(true)
            .stdout(true)
            .stderr(true)
            .build();
        let AttachContainerResults {
            output: mut stream,
            input,
        } = docker
            .attach_container(id, Some(options))
            .await
            // Podman prepares the container (runc create) to attach to it,
            // so what would fail its start fails here.
            .map_err(|source| JobError::Start {
                container: container.to_string(),
                source,
            })?;
        let mut lines = Lines::new(container, output.clone());
        let task = tokio::spawn(async move {
            // Held until the output ends: closing our side of the
            // connection can end the attachment.
            let _input = input;
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(LogOutput::StdOut { message } | LogOutput::Console { message }) => {
                        lines.feed(Stream::Out, &message);
                    }
                    Ok(LogOutput::StdErr { message }) => lines.feed(Stream::Err, &message),
                    Ok(LogOutput::StdIn { .. }) => {}
                    Err(e) => {
                        lines.finish();
                        lines.output.lost(
                            &lines.container,
                            &format!(
                                "the engine's stream of its output broke: {}",
                                engine_message(&e)
                            ),
                        );
                        return;
                    }
                }
            }
            lines.finish();
        });
        Ok(Self {
            container: container.to_string(),
            output: output.clone(),
            task,
        })
    }

    /// Once the container has stopped: waits for the end of its output.
    async fn drain(mut self) {
        if tokio::time::timeout(OUTPUT_END_WAIT, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
            self.output.lost(
                &self.container,
                &format!(
                    "its output had not ended {}s after it stopped",
                    OUTPUT_END_WAIT.as_secs()
                ),
            );
        }
    }
}

/// A container's two output streams, each split into lines on its own.
#[derive(Clone, Copy)]
enum Stream {
    Out = 0,
    Err = 1,
}

/// Splits a container's output into lines, in time linear in its size.
struct Lines {
    container: String,
    output: Arc<dyn JobOutput>,
    /// The unfinished last line of each stream.
    partial: [Vec<u8>; 2],
}

impl Lines {
    fn new(container: &str, output: Arc<dyn JobOutput>) -> Self {
        Self {
            container: container.to_string(),
            output,
            partial: [Vec::new(), Vec::new()],
        }
    }

    fn feed(&mut self, stream: Stream, mut bytes: &[u8]) {
        let Self {
            container,
            output,
            partial,
        } = self;
        let partial = &mut partial[stream as usize];
        while let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            if partial.is_empty() {
                emit(output, container, &bytes[..newline]);
            } else {
                partial.extend_from_slice(&bytes[..newline]);
                emit(output, container, partial);
                partial.clear();
            }
            bytes = &bytes[newline + 1..];
        }
        partial.extend_from_slice(bytes);
        // A container that never prints a newline is passed on in pieces
        // rather than buffered without end.
        let mut start = 0;
        while partial.len() - start >= MAX_LINE_BYTES {
            let end = char_boundary(&partial[start..], MAX_LINE_BYTES) + start;
            emit(output, container, &partial[start..end]);
            start = end;
        }
        partial.drain(..start);
    }

    fn finish(&mut self) {
        for partial in &mut self.partial {
            if !partial.is_empty() {
                emit(&self.output, &self.container, partial);
                partial.clear();
            }
        }
    }
}

fn emit(output: &Arc<dyn JobOutput>, container: &str, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    output.line(container, text.trim_end_matches('\r'));
}

/// Where to cut `bytes` at most `max` bytes in: before a UTF-8 character
/// that `max` would split, when there is one.
fn char_boundary(bytes: &[u8], max: usize) -> usize {
    let continuation = |i: usize| bytes.get(i).is_some_and(|b| b & 0xC0 == 0x80);
    (max.saturating_sub(3)..=max)
        .rev()
        .find(|i| *i > 0 && !continuation(*i))
        .unwrap_or(max)
}

/// Waits for a container to stop and returns its exit code.
async fn exit_code(docker: &Docker, id: &str) -> Result<i64, JobError> {
    let options = WaitContainerOptionsBuilder::default()
        .condition("not-running")
        .build();
    match docker.wait_container(id, Some(options)).next().await {
        Some(Ok(response)) => Ok(response.status_code),
        // bollard reports a non-zero exit as an error carrying the code.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Ok(code),
        Some(Err(e)) => Err(JobError::Wait(e)),
        None => Err(JobError::EngineStoppedReporting),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine_error(message: &str) -> bollard::errors::Error {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 500,
            message: message.into(),
        }
    }

    fn io_error() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::PermissionDenied)
    }

    /// The failure reasons users see, as the job path wrote them when they
    /// were strings.
    #[test]
    fn failure_reasons_read_as_before() {
        let path = PathBuf::from("/work/e1/jobs/build/source");
        let reasons = [
            (
                JobError::Workspace {
                    path: PathBuf::from("/work/e1/workspace"),
                    source: io_error(),
                },
                "creating the workspace /work/e1/workspace failed: permission denied",
            ),
            (
                JobError::ClearSource {
                    path: path.clone(),
                    source: io_error(),
                },
                "clearing /work/e1/jobs/build/source failed: permission denied",
            ),
            (
                JobError::Checkout(source::SourceError::Refused("not there".into())),
                "checking out the project's source failed: not there",
            ),
            (
                JobError::ShareSource {
                    path,
                    source: io_error(),
                },
                "opening /work/e1/jobs/build/source to the job failed: permission denied",
            ),
            (
                JobError::NoLocalSocket,
                "the host's Docker socket can be mounted only from a local engine",
            ),
            (
                JobError::Image(ImageError::NoPodHelper),
                "jobs with sidecars need the pod helper, which is built only on Linux hosts",
            ),
            (
                JobError::Create {
                    container: "build".into(),
                    source: engine_error("name in use"),
                },
                "creating container \"build\" failed: name in use",
            ),
            (
                JobError::Start {
                    container: "pod".into(),
                    source: engine_error("no such file"),
                },
                "starting container \"pod\" failed: no such file",
            ),
            (
                JobError::Wait(engine_error("gone")),
                "waiting for a container failed: gone",
            ),
            (
                JobError::EngineStoppedReporting,
                "the engine stopped reporting on a container",
            ),
            (
                JobError::Probe(engine_error("no exec")),
                "probing a sidecar failed: no exec",
            ),
            (
                JobError::SidecarFailed {
                    container: sidecar("setup"),
                    code: 4,
                },
                "sidecar \"setup\" exited with code 4 before it was ready",
            ),
            (
                JobError::SidecarExited {
                    container: sidecar("db"),
                    code: 1,
                    port: 5432,
                },
                "sidecar \"db\" exited with code 1 before it accepted connections on port 5432",
            ),
            (
                JobError::SidecarNotListening {
                    container: sidecar("silent"),
                    seconds: 2.0,
                    port: 6000,
                },
                "sidecar \"silent\" was not ready after 2s: nothing accepted connections on port 6000",
            ),
            (
                JobError::SidecarRunning {
                    container: sidecar("setup"),
                    seconds: 1.5,
                },
                "sidecar \"setup\" was not ready after 1.5s: it had not exited",
            ),
            (
                JobError::ExitedEarly {
                    container: "service \"cache\"".to_string(),
                    code: 0,
                },
                "service \"cache\" exited with code 0 within 3s of starting, before what comes after it could start (declare readiness: { exited: true } for a one-shot container)",
            ),
            (
                JobError::NotStarted {
                    container: sidecar("app"),
                    after: "db".into(),
                    cause: Arc::new(JobError::SidecarFailed {
                        container: sidecar("db"),
                        code: 1,
                    }),
                },
                "sidecar \"app\" was not started: \"db\", which it comes after, was not ready: sidecar \"db\" exited with code 1 before it was ready",
            ),
        ];
        for (error, reason) in reasons {
            assert_eq!(error.to_string(), reason);
        }
    }
}
