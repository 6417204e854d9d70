//! One job as a Pod: created (or adopted after a restart), watched to its
//! end, its containers' logs streamed, and removed when it ends.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod, Secret};
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use mizzen_host_api::types::{JobResult, Phase, ServiceReady};
use mizzen_runtime::executor::{
    ExecutorError, JobOutput, JobRequest, PortMapping, ReadySender, ReadyWhen, RunningJob,
    RunningService, SpawnedJob, SpawnedService, UP_FOR_READY,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::kept::{KeptCommit, SAVE_CONTAINER, SAVE_GRACE_SECONDS};
use crate::manifest::{JobObjects, LABEL_EVENT, LABEL_JOB, SOURCE_CONTAINER};
use crate::{KubernetesConfig, describe, is_conflict, is_not_found, refused};

/// How long after the job's timeout the executor stops waiting for the
/// cluster to report the Pod's deadline (`activeDeadlineSeconds` counts from
/// when the Pod was scheduled, and a busy kubelet reports late).
const DEADLINE_MARGIN: Duration = Duration::from_secs(30);

/// How long the watch may keep failing (API server restarting, network
/// gone) before the job fails; the watcher retries with back-off meanwhile.
const WATCH_FAILURE_LIMIT: Duration = Duration::from_secs(60);

/// How long the logs may take to be read to their end once the job has
/// ended: the API server serves a finished container's log at once.
const LOG_DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// How often a container's log is asked for again when its stream ended
/// while the container still runs (a dropped connection).
const LOG_RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// A line longer than this is passed on in pieces, so that a container that
/// never prints a newline cannot make the host buffer without end (as on a
/// local engine).
const MAX_LINE_BYTES: usize = 64 * 1024;

/// Waiting reasons that retry on their own for a while (image pulls, a
/// Secret not yet visible): the job fails only when they last longer than
/// the configured pull timeout.
const RETRYING_REASONS: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Waiting reasons that never resolve.
const HOPELESS_REASONS: [&str; 2] = ["InvalidImageName", "ErrImageNeverPull"];

/// Creates the job's objects and starts watching its Pod.
pub(crate) async fn start(
    client: kube::Client,
    config: &KubernetesConfig,
    namespace: &str,
    request: JobRequest,
    built: JobObjects,
) -> Result<Arc<dyn RunningJob>, ExecutorError> {
    let watched = create(client, config, namespace, request, built).await?;
    Ok(SpawnedJob::spawn(|cancelled| watched.run(cancelled, None)))
}

/// Creates a service's objects and starts watching its Pod, which says
/// when the service is ready.
pub(crate) async fn start_service(
    client: kube::Client,
    config: &KubernetesConfig,
    namespace: &str,
    request: JobRequest,
    built: JobObjects,
) -> Result<Arc<dyn RunningService>, ExecutorError> {
    let container = &request.spec.primary_container;
    let when = ReadyWhen::of(container.readiness.as_ref());
    // Host ports are named on Kubernetes (the manifest refused 0).
    let ports = PortMapping::all(container)
        .into_iter()
        .filter_map(|port| Some((port.container_port.to_string(), port.host?.port)))
        .collect();
    let watched = create(client, config, namespace, request, built).await?;
    Ok(SpawnedService::spawn(move |cancelled, sender| {
        watched.run(
            cancelled,
            Some(Readiness {
                sender,
                when,
                ports,
                up_since: None,
            }),
        )
    }))
}

/// What says when a service's Pod is ready.
struct Readiness {
    sender: ReadySender,
    when: ReadyWhen,
    /// The host ports, by container port.
    ports: BTreeMap<String, u16>,
    /// When its container was first seen running.
    up_since: Option<Instant>,
}

impl Readiness {
    fn say_ready(&self) {
        let ports = self.ports.clone();
        self.sender.send_if_modified(|ready| {
            let first = ready.is_none();
            if first {
                *ready = Some(Ok(ServiceReady { ports }));
            }
            first
        });
    }

    /// After an update of the Pod: whether the container is now ready.
    fn update(&mut self, tracker: &PodTracker, now: Instant) {
        match self.when {
            ReadyWhen::TcpPort(_) if tracker.primary_ready => self.say_ready(),
            ReadyWhen::Up if tracker.primary_started && self.up_since.is_none() => {
                self.up_since = Some(now);
            }
            _ => {}
        }
    }

    /// When a long-running container will have been up long enough.
    fn up_deadline(&self) -> Option<Instant> {
        (self.when == ReadyWhen::Up && self.sender.borrow().is_none())
            .then_some(self.up_since? + UP_FOR_READY)
    }
}

async fn create(
    client: kube::Client,
    config: &KubernetesConfig,
    namespace: &str,
    request: JobRequest,
    built: JobObjects,
) -> Result<WatchedJob, ExecutorError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let name = built.pod.metadata.name.clone().unwrap_or_default();
    let post = PostParams::default();
    if let Some(secret) = &built.environment {
        match secrets.create(&post, secret).await {
            Ok(_) => {}
            // Left by an earlier attempt of this job: bring it up to date.
            Err(e) if is_conflict(&e) => {
                secrets
                    .replace(&name, &post, secret)
                    .await
                    .map_err(|e| refused("update", "secrets", namespace, e))?;
            }
            Err(e) => return Err(refused("create", "secrets", namespace, e)),
        }
    }
    match pods.create(&post, &built.pod).await {
        Ok(_) => {}
        Err(e) if is_conflict(&e) => {
            // A Pod of this name exists: a server that restarted re-runs its
            // event's worker, whose job is still running (or has ended) in
            // the cluster. Adopt it when it is this job's.
            let existing = pods
                .get(&name)
                .await
                .map_err(|e| refused("get", "pods", namespace, e))?;
            let labels = existing.metadata.labels.unwrap_or_default();
            let ours = built.pod.metadata.labels.as_ref();
            let same = |label: &str| labels.get(label) == ours.and_then(|l| l.get(label));
            if !(same(LABEL_EVENT) && same(LABEL_JOB)) {
                return Err(ExecutorError::Unavailable(format!(
                    "job \"{}\": a Pod named {name} already exists in namespace \"{namespace}\" and is not this job's",
                    request.name
                )));
            }
            tracing::info!(pod = %name, namespace, "adopting the job's Pod made by an earlier attempt");
        }
        Err(e) => {
            if built.environment.is_some() {
                let _ = secrets.delete(&name, &DeleteParams::default()).await;
            }
            return Err(refused("create", "pods", namespace, e));
        }
    }

    let kept = match (&config.job_files, built.saves) {
        (Some(files), true) => Some(KeptCommit {
            storage: files.storage.clone(),
            event: request.event.as_ref().clone(),
            job: request.name.clone(),
            spec: request.spec.clone(),
            output: request.output.clone(),
        }),
        _ => None,
    };
    Ok(WatchedJob {
        pods,
        secrets,
        kept,
        has_secret: built.environment.is_some(),
        name,
        namespace: namespace.to_string(),
        job: request.name.clone(),
        timeout_seconds: request.spec.timeout_seconds,
        image_pull_timeout: config.image_pull_timeout,
        output: request.output.clone(),
    })
}

/// What the task watching a job's Pod needs.
struct WatchedJob {
    pods: Api<Pod>,
    secrets: Api<Secret>,
    /// What the job saves, kept once its Pod's saving sidecar has sent it.
    kept: Option<KeptCommit>,
    has_secret: bool,
    name: String,
    namespace: String,
    job: String,
    timeout_seconds: f64,
    image_pull_timeout: Duration,
    output: Arc<dyn JobOutput>,
}

impl WatchedJob {
    async fn run(
        self,
        mut cancelled: watch::Receiver<bool>,
        mut readiness: Option<Readiness>,
    ) -> JobResult {
        let (terminated, terminated_rx) = watch::channel(BTreeSet::new());
        let mut followers = HashMap::new();
        let mut tracker = PodTracker::new(&self.job, self.image_pull_timeout);
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let mut events = pin!(watcher(self.pods.clone(), config).default_backoff());
        let backstop =
            tokio::time::sleep(Duration::from_secs_f64(self.timeout_seconds) + DEADLINE_MARGIN);
        let mut backstop = pin!(backstop);
        // Whether the Pod was in the last full listing, to tell a Pod deleted
        // while the watch was down from one not yet listed.
        let mut seen = false;
        let mut listed = false;
        let mut failing_since: Option<Instant> = None;
        // Whether the Pod itself says the job ended (its containers have
        // stopped), rather than Mizzen stopping it.
        let mut ended_in_pod = false;
        // The Pod as last seen, for the saving sidecar's end.
        let mut last_seen: Option<Pod> = None;

        let mut result = loop {
            let pull_deadline = tracker.retry_deadline();
            tokio::select! {
                event = events.next() => match event {
                    Some(Ok(watcher::Event::Init)) => listed = false,
                    Some(Ok(watcher::Event::InitApply(pod) | watcher::Event::Apply(pod))) => {
                        seen = true;
                        listed = true;
                        failing_since = None;
                        let now = Instant::now();
                        let ended = tracker.update(&pod, now);
                        last_seen = Some(pod);
                        if let Some(result) = ended {
                            ended_in_pod = true;
                            break result;
                        }
                        if let Some(readiness) = &mut readiness {
                            readiness.update(&tracker, now);
                        }
                        let _ = terminated.send(tracker.terminated.clone());
                        for container in &tracker.running {
                            followers.entry(container.clone()).or_insert_with(|| {
                                tokio::spawn(follow_log(
                                    self.pods.clone(),
                                    self.name.clone(),
                                    container.clone(),
                                    self.output.clone(),
                                    terminated_rx.clone(),
                                ))
                            });
                        }
                    }
                    Some(Ok(watcher::Event::InitDone)) => {
                        failing_since = None;
                        if seen && !listed {
                            break deleted_from_outside();
                        }
                    }
                    Some(Ok(watcher::Event::Delete(_))) => break deleted_from_outside(),
                    Some(Err(e)) => {
                        if let Some(status) = forbidden(&e) {
                            break JobResult::ended(Phase::Failed, None, describe(
                                "watch", "pods", &self.namespace,
                                &kube::Error::Api(Box::new(status)),
                            ));
                        }
                        let since = *failing_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > WATCH_FAILURE_LIMIT {
                            break JobResult::ended(Phase::Failed, None, format!(
                                "lost track of the job's Pod {} in namespace \"{}\" for more than {}s: {e}",
                                self.name, self.namespace, WATCH_FAILURE_LIMIT.as_secs()
                            ));
                        }
                        tracing::debug!(pod = %self.name, error = %e, "watch failed; retrying");
                    }
                    None => break JobResult::ended(Phase::Unknown, None, "the watch of the job's Pod ended"),
                },
                _ = sleep_until(readiness.as_ref().and_then(Readiness::up_deadline)) => {
                    if let Some(readiness) = &readiness {
                        readiness.say_ready();
                    }
                }
                _ = sleep_until(pull_deadline) => {
                    if let Some(failure) = tracker.retry_failure() {
                        break failure;
                    }
                }
                _ = cancelled.wait_for(|cancel| *cancel) => {
                    break if tracker.primary_started {
                        JobResult::ended(Phase::Aborted, None, "the job was stopped")
                    } else {
                        JobResult::ended(Phase::Canceled, None, "the job was cancelled before it started")
                    };
                }
                () = &mut backstop => {
                    break JobResult::ended(Phase::TimedOut, None, format!(
                        "the job ran longer than its timeout of {}s (the cluster did not report the Pod's deadline)",
                        self.timeout_seconds
                    ));
                }
            }
        };

        // A one-shot service is ready once it has exited 0.
        if let Some(readiness) = &readiness
            && readiness.when == ReadyWhen::Exited
            && result.phase == Phase::Succeeded
        {
            readiness.say_ready();
        }
        if ended_in_pod && let Some(kept) = &self.kept {
            let saver = saver_ended(last_seen.as_ref(), &mut events).await;
            let succeeded = result.phase == Phase::Succeeded;
            if let Err(why) = kept.commit(succeeded, saver).await {
                tracing::warn!(pod = %self.name, error = %why, "a job's artifacts and caches were not kept");
                if succeeded {
                    result = JobResult::ended(Phase::Failed, result.exit_code, why);
                } else {
                    kept.output.line(&self.job, &format!("[mizzen] {why}"));
                }
            }
        }
        if ended_in_pod {
            // Every container's log is read to its end (the API server
            // serves a stopped container's log at once), then the Pod goes.
            let everything: BTreeSet<String> = followers.keys().cloned().collect();
            let _ = terminated.send(everything);
            let drain = futures_util::future::join_all(followers.into_values());
            if tokio::time::timeout(LOG_DRAIN_LIMIT, drain).await.is_err() {
                tracing::warn!(pod = %self.name, "the job's logs did not end in time; the rest is dropped");
            }
        } else {
            // Stopped by Mizzen while its containers run: what they print
            // from now on belongs to no job.
            for follower in followers.into_values() {
                follower.abort();
            }
        }
        self.remove().await;
        result
    }

    async fn remove(&self) {
        match self.pods.delete(&self.name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => tracing::warn!(
                error = %describe("delete", "pods", &self.namespace, &e),
                "could not delete a job's Pod; it goes with its event"
            ),
        }
        if self.has_secret
            && let Err(e) = self
                .secrets
                .delete(&self.name, &DeleteParams::default())
                .await
            && !is_not_found(&e)
        {
            tracing::warn!(
                error = %describe("delete", "secrets", &self.namespace, &e),
                "could not delete a job's environment; it goes with its event"
            );
        }
    }
}

/// How the Pod's saving sidecar ended (its exit code and termination
/// message), once it has: Kubernetes stops it after the primary container,
/// and it has the Pod's grace period to save. `None` if it did not end by
/// then (or the Pod went).
async fn saver_ended(
    last_seen: Option<&Pod>,
    events: &mut (impl futures_util::Stream<Item = Result<watcher::Event<Pod>, watcher::Error>> + Unpin),
) -> Option<(i32, String)> {
    if let Some(ended) = last_seen.and_then(saver_state) {
        return Some(ended);
    }
    let watching = async {
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    if let Some(ended) = saver_state(&pod) {
                        return Some(ended);
                    }
                }
                Ok(watcher::Event::Delete(_)) => return None,
                _ => {}
            }
        }
        None
    };
    let limit = Duration::from_secs(SAVE_GRACE_SECONDS) + DEADLINE_MARGIN;
    tokio::time::timeout(limit, watching).await.ok().flatten()
}

/// The saving sidecar's exit code and termination message, once it has
/// terminated.
fn saver_state(pod: &Pod) -> Option<(i32, String)> {
    let statuses = pod.status.as_ref()?.init_container_statuses.as_ref()?;
    let saver = statuses.iter().find(|c| c.name == SAVE_CONTAINER)?;
    let terminated = saver.state.as_ref()?.terminated.as_ref()?;
    Some((
        terminated.exit_code,
        terminated.message.clone().unwrap_or_default(),
    ))
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn deleted_from_outside() -> JobResult {
    JobResult::ended(
        Phase::Aborted,
        None,
        "the job's Pod was deleted from outside Mizzen",
    )
}

/// The API server's 403 inside a watcher error, if that is what it is.
fn forbidden(e: &watcher::Error) -> Option<kube::core::Status> {
    let status = match e {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::WatchError(status) => status,
        _ => return None,
    };
    (status.code == 403).then(|| (**status).clone())
}

/// Reads a Pod's successive states and says when, and how, the job ended.
struct PodTracker {
    /// The primary container's name (the job's).
    job: String,
    image_pull_timeout: Duration,
    /// Whether the primary container has started.
    primary_started: bool,
    /// Whether the primary container is ready (its readiness probe passed).
    primary_ready: bool,
    /// Containers that have started (their logs can be read).
    running: BTreeSet<String>,
    /// Containers that have terminated.
    terminated: BTreeSet<String>,
    /// Since when, and why, a container has been unable to start.
    retrying: Option<(Instant, String)>,
}

impl PodTracker {
    fn new(job: &str, image_pull_timeout: Duration) -> Self {
        Self {
            job: job.to_string(),
            image_pull_timeout,
            primary_started: false,
            primary_ready: false,
            running: BTreeSet::new(),
            terminated: BTreeSet::new(),
            retrying: None,
        }
    }

    fn retry_deadline(&self) -> Option<Instant> {
        self.retrying
            .as_ref()
            .map(|(since, _)| *since + self.image_pull_timeout)
    }

    fn retry_failure(&self) -> Option<JobResult> {
        self.retrying.as_ref().map(|(_, reason)| {
            JobResult::ended(
                Phase::Failed,
                None,
                format!(
                    "{reason} (still failing after {}s)",
                    self.image_pull_timeout.as_secs()
                ),
            )
        })
    }

    fn update(&mut self, pod: &Pod, now: Instant) -> Option<JobResult> {
        let status = pod.status.clone().unwrap_or_default();
        let init = status.init_container_statuses.unwrap_or_default();
        let main = status.container_statuses.unwrap_or_default();
        for container in init.iter().chain(&main) {
            let state = container.state.clone().unwrap_or_default();
            if state.running.is_some() || state.terminated.is_some() {
                self.running.insert(container.name.clone());
            }
            if state.terminated.is_some() {
                self.terminated.insert(container.name.clone());
            }
        }

        if status.reason.as_deref() == Some("DeadlineExceeded") {
            let timeout = pod
                .spec
                .as_ref()
                .and_then(|s| s.active_deadline_seconds)
                .unwrap_or_default();
            return Some(JobResult::ended(
                Phase::TimedOut,
                None,
                format!("the job ran longer than its timeout of {timeout}s"),
            ));
        }
        if let Some(primary) = main.iter().find(|c| c.name == self.job) {
            let state = primary.state.clone().unwrap_or_default();
            if state.running.is_some() {
                self.primary_started = true;
                self.primary_ready = primary.ready;
            }
            if let Some(terminated) = state.terminated {
                self.primary_started = true;
                let code = i64::from(terminated.exit_code);
                return Some(if code == 0 {
                    JobResult {
                        phase: Phase::Succeeded,
                        exit_code: Some(0),
                        reason: None,
                    }
                } else {
                    let why = terminated
                        .reason
                        .filter(|r| r != "Error")
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default();
                    JobResult::ended(
                        Phase::Failed,
                        Some(code),
                        format!("the job's container exited with code {code}{why}"),
                    )
                });
            }
        }
        if !self.primary_started
            && let Some(failure) = init_failure(pod, &init)
        {
            return Some(JobResult::ended(Phase::Failed, None, failure));
        }
        match status.phase.as_deref() {
            Some("Succeeded") => {
                return Some(JobResult {
                    phase: Phase::Succeeded,
                    exit_code: Some(0),
                    reason: None,
                });
            }
            Some("Failed") => {
                return Some(JobResult::ended(
                    Phase::Failed,
                    None,
                    format!(
                        "the job's Pod failed: {}",
                        [status.reason, status.message]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join(": ")
                    ),
                ));
            }
            _ => {}
        }

        // Containers that cannot start.
        let mut retrying = None;
        for container in init.iter().chain(&main) {
            let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
                continue;
            };
            let reason = waiting.reason.clone().unwrap_or_default();
            let described = format!(
                "container \"{}\" (image {}) cannot start: {reason}: {}",
                container.name,
                container.image,
                waiting.message.clone().unwrap_or_default()
            );
            if HOPELESS_REASONS.contains(&reason.as_str()) {
                return Some(JobResult::ended(Phase::Failed, None, described));
            }
            if RETRYING_REASONS.contains(&reason.as_str()) {
                retrying = Some(described);
            }
        }
        self.retrying = match (retrying, self.retrying.take()) {
            (Some(reason), Some((since, _))) => Some((since, reason)),
            (Some(reason), None) => Some((now, reason)),
            (None, _) => None,
        };
        None
    }
}

/// Why the Pod could not reach its primary container: the checkout or a
/// one-shot sidecar failed, or a service sidecar kept failing its start-up.
fn init_failure(pod: &Pod, init: &[ContainerStatus]) -> Option<String> {
    let specs = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.clone())
        .unwrap_or_default();
    for container in init {
        let spec = specs.iter().find(|s| s.name == container.name);
        let native_sidecar = spec.and_then(|s| s.restart_policy.as_deref()) == Some("Always");
        if native_sidecar {
            // A sidecar the primary waits for (a start-up probe) that had to
            // be restarted was not ready in time; one without is restarted
            // by the kubelet as native sidecars are, and gates nothing.
            let port = spec
                .and_then(|s| s.startup_probe.as_ref())
                .and_then(|p| p.tcp_socket.as_ref())
                .map(|t| int_or_string(&t.port));
            if let Some(port) = port
                && container.restart_count > 0
            {
                return Some(format!(
                    "sidecar \"{}\" exited or was not ready on port {port} before the job's container started (restarted {} times)",
                    container.name, container.restart_count
                ));
            }
            continue;
        }
        let terminated = container.state.as_ref().and_then(|s| s.terminated.as_ref());
        if let Some(terminated) = terminated.filter(|t| t.exit_code != 0) {
            let message = terminated
                .message
                .as_deref()
                .map(|m| format!(": {}", m.trim()))
                .unwrap_or_default();
            return Some(if container.name == SOURCE_CONTAINER {
                format!(
                    "the source checkout failed with exit code {}{message}",
                    terminated.exit_code
                )
            } else {
                format!(
                    "sidecar \"{}\" exited with code {} before the job's container started{message}",
                    container.name, terminated.exit_code
                )
            });
        }
    }
    None
}

fn int_or_string(value: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString) -> String {
    match value {
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n) => n.to_string(),
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(s) => s.clone(),
    }
}

/// Streams one container's log into the job's output until the container
/// has terminated and its log has been read to the end. Lines come with
/// the kubelet's timestamps, so that a stream opened again after a dropped
/// connection skips what was already passed on.
async fn follow_log(
    pods: Api<Pod>,
    pod: String,
    container: String,
    output: Arc<dyn JobOutput>,
    mut terminated: watch::Receiver<BTreeSet<String>>,
) {
    let mut last_seen: Option<jiff::Timestamp> = None;
    let mut last_round = false;
    loop {
        last_round |= terminated.borrow().contains(&container);
        let params = LogParams {
            container: Some(container.clone()),
            follow: !last_round,
            timestamps: true,
            ..LogParams::default()
        };
        match pods.log_stream(&pod, &params).await {
            Ok(reader) => {
                if let Err(e) = pass_lines(reader, &mut last_seen, |line| {
                    output.line(&container, line);
                })
                .await
                {
                    tracing::debug!(pod, container, error = %e, "a container's log stream broke; reading on");
                }
            }
            // 400 while the container is still being created; a Pod that is
            // gone has nothing more to say.
            Err(kube::Error::Api(status)) if status.code == 400 => {}
            Err(e) if is_not_found(&e) => return,
            Err(e) => {
                tracing::debug!(pod, container, error = %e, "cannot read a container's log yet")
            }
        }
        if last_round {
            return;
        }
        tokio::select! {
            changed = terminated.changed() => if changed.is_err() { last_round = true },
            () = tokio::time::sleep(LOG_RETRY_INTERVAL) => {}
        }
    }
}

/// Passes on each line after `last_seen`, pieces of at most
/// [`MAX_LINE_BYTES`] for longer lines.
async fn pass_lines(
    reader: impl AsyncBufRead,
    last_seen: &mut Option<jiff::Timestamp>,
    mut line: impl FnMut(&str),
) -> std::io::Result<()> {
    let mut reader = pin!(reader);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64)
            .read_until(b'\n', &mut buffer)
            .await?;
        if read == 0 {
            return Ok(());
        }
        if buffer.last() == Some(&b'\n') {
            buffer.pop();
        }
        let text = String::from_utf8_lossy(&buffer);
        // `<RFC 3339 time> <line>`; a piece of a long line has no time.
        let (time, rest) = match text.split_once(' ') {
            Some((time, rest)) => match time.parse::<jiff::Timestamp>() {
                Ok(time) => (Some(time), rest),
                Err(_) => (None, text.as_ref()),
            },
            None => match text.parse::<jiff::Timestamp>() {
                Ok(time) => (Some(time), ""),
                Err(_) => (None, text.as_ref()),
            },
        };
        if let Some(time) = time {
            if last_seen.is_some_and(|last| time <= last) {
                continue;
            }
            *last_seen = Some(time);
        }
        line(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_already_passed_on_are_skipped_when_a_stream_is_opened_again() {
        let mut last = None;
        let mut lines = Vec::new();
        let first = "2026-11-22T10:00:00.1Z one\n2026-11-22T10:00:00.12Z two\n";
        pass_lines(first.as_bytes(), &mut last, |l| lines.push(l.to_string()))
            .await
            .unwrap();
        let again = "2026-11-22T10:00:00.1Z one\n2026-11-22T10:00:00.12Z two\n2026-11-22T10:00:01Z three\n2026-11-22T10:00:02Z \n";
        pass_lines(again.as_bytes(), &mut last, |l| lines.push(l.to_string()))
            .await
            .unwrap();
        assert_eq!(lines, ["one", "two", "three", ""]);
    }

    #[tokio::test]
    async fn long_lines_come_in_pieces() {
        let long = format!("2026-11-22T10:00:00Z {}\n", "x".repeat(MAX_LINE_BYTES * 2));
        let mut last = None;
        let mut sizes = Vec::new();
        pass_lines(long.as_bytes(), &mut last, |l| sizes.push(l.len()))
            .await
            .unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), MAX_LINE_BYTES * 2);
        assert!(sizes.iter().all(|s| *s <= MAX_LINE_BYTES));
    }
}
