//! The fake kubelet: plays back a pod's life from a [`PodScript`] through
//! status changes and log lines. No container really runs.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep, sleep_until};

use super::panic_message;
use super::store::{Resource, Shared, now, now_seconds, str_at};

/// How the fake kubelet plays one pod; chosen per pod by the callback given
/// to [`FakeKube::on_pod`](super::FakeKube::on_pod).
#[derive(Clone, Debug, Default)]
pub struct PodScript {
    /// Scripts by container name (init and main containers alike);
    /// containers not in the map behave as [`ContainerScript::default`].
    pub containers: BTreeMap<String, ContainerScript>,
    /// The container whose image cannot be pulled: it alternates between
    /// `ErrImagePull` and `ImagePullBackOff`, the pod stays Pending and
    /// nothing after it starts.
    pub image_pull_failure: Option<String>,
}

impl PodScript {
    /// This script with `container` played by `script`.
    #[must_use]
    pub fn with(mut self, container: &str, script: ContainerScript) -> PodScript {
        self.containers.insert(container.to_owned(), script);
        self
    }

    fn container(&self, name: &str) -> ContainerScript {
        self.containers.get(name).cloned().unwrap_or_default()
    }
}

/// How one container behaves once it runs.
#[derive(Clone, Debug)]
pub struct ContainerScript {
    /// Lines it prints (without their `\n`), spread evenly over `runs_for`.
    pub lines: Vec<String>,
    /// Its exit code.
    pub exit_code: i32,
    /// How long it runs.
    pub runs_for: Duration,
    /// It never exits by itself (it prints its lines, then runs until the
    /// pod's deadline or deletion).
    pub forever: bool,
    /// What it leaves in its termination message (`terminationMessagePath`)
    /// when it ends; for a native sidecar, when it is stopped once the main
    /// containers have exited, with `exit_code`.
    pub termination_message: Option<String>,
}

impl Default for ContainerScript {
    /// No output, exit 0 after 10 ms.
    fn default() -> ContainerScript {
        ContainerScript {
            lines: Vec::new(),
            exit_code: 0,
            runs_for: Duration::from_millis(10),
            forever: false,
            termination_message: None,
        }
    }
}

impl ContainerScript {
    /// Prints `lines` over 10 ms, then exits with `exit_code`.
    pub fn new<S: Into<String>>(lines: impl IntoIterator<Item = S>, exit_code: i32) -> Self {
        ContainerScript {
            lines: lines.into_iter().map(Into::into).collect(),
            exit_code,
            ..ContainerScript::default()
        }
    }
}

/// One line a container printed.
pub(crate) struct LogLine {
    pub at: Timestamp,
    pub text: String,
}

/// The kubelet's record of one pod: its containers' states and output.
pub(crate) struct PodRun {
    task: Option<AbortHandle>,
    model: PodModel,
    pub logs: BTreeMap<String, Vec<LogLine>>,
}

impl PodRun {
    /// Stops playing the pod (it was deleted, or the fake is going away).
    pub(crate) fn stop(self) {
        if let Some(task) = self.task {
            task.abort();
        }
    }
}

/// Starts the kubelet on a pod just stored (created or inserted); a pod
/// that is already over is left as it is. Call without holding the lock.
pub(crate) fn start(shared: &Arc<Shared>, pod: &Value) {
    let (Some(namespace), Some(name), Some(uid)) = (
        str_at(pod, "/metadata/namespace"),
        str_at(pod, "/metadata/name"),
        str_at(pod, "/metadata/uid"),
    ) else {
        return;
    };
    if matches!(str_at(pod, "/status/phase"), Some("Succeeded" | "Failed")) {
        return;
    }
    let kubelet = Kubelet {
        shared: Arc::clone(shared),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        uid: uid.to_owned(),
    };
    // Registered before the task starts, so that its first update finds it;
    // a deletion in between removes it and the task ends at that update.
    shared.lock().pods.insert(
        uid.to_owned(),
        PodRun {
            task: None,
            model: PodModel::new(pod),
            logs: BTreeMap::new(),
        },
    );
    let task = spawn_supervised(shared, format!("the kubelet of pod {name}"), kubelet.run());
    match shared.lock().pods.get_mut(uid) {
        Some(run) => run.task = Some(task),
        None => task.abort(),
    }
}

/// Spawns a task of the fake whose panic breaks the fake (see
/// `State::broken`) rather than leaving a test waiting for its events.
pub(crate) fn spawn_supervised(
    shared: &Arc<Shared>,
    what: String,
    future: impl Future<Output = ()> + Send + 'static,
) -> AbortHandle {
    let task = shared.runtime.spawn(future);
    let abort = task.abort_handle();
    let weak = Arc::downgrade(shared);
    shared.runtime.spawn(async move {
        if let Err(error) = task.await
            && error.is_panic()
            && let Some(shared) = weak.upgrade()
        {
            let why = panic_message(error.into_panic().as_ref());
            shared.break_down(format!("{what} panicked: {why}"));
        }
    });
    abort
}

/// The pod was deleted: the kubelet stops.
struct Gone;

#[derive(Clone)]
struct Kubelet {
    shared: Arc<Shared>,
    namespace: String,
    name: String,
    uid: String,
}

struct ContainerSpec {
    name: String,
    image: String,
    /// An init container with `restartPolicy: Always`.
    sidecar: bool,
}

fn containers(pod: &Value, list: &str) -> Vec<ContainerSpec> {
    pod["spec"][list]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| ContainerSpec {
            name: c["name"].as_str().unwrap_or_default().to_owned(),
            image: c["image"].as_str().unwrap_or_default().to_owned(),
            sidecar: list == "initContainers" && c["restartPolicy"] == "Always",
        })
        .collect()
}

impl Kubelet {
    async fn run(self) {
        let (pod, scripter) = {
            let state = self.shared.lock();
            let pod = state
                .get(Resource::Pods, &self.namespace, &self.name)
                .cloned();
            (pod, state.on_pod.clone())
        };
        let Some(pod) = pod else { return };
        // The deadline counts from the pod's start on a node, which it
        // reaches once its claims exist.
        if self.wait_for_claims(&pod).await.is_err() {
            return;
        }
        let started = Instant::now();
        // Called outside the lock: the test's callback may use the fake.
        let script = scripter.map(|f| f(&pod)).unwrap_or_default();
        let deadline = pod["spec"]["activeDeadlineSeconds"]
            .as_u64()
            .map(|s| started + Duration::from_secs(s));
        let deadline = async move {
            match deadline {
                Some(at) => sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.play(&pod, &script) => {}
            () = deadline => {
                let _ = self.update(PodModel::deadline_exceeded);
            }
        }
    }

    /// Leaves the pod unscheduled while a claim it mounts does not exist,
    /// as the scheduler does (`persistentvolumeclaim "x" not found`); it is
    /// scheduled once they all exist.
    async fn wait_for_claims(&self, pod: &Value) -> Result<(), Gone> {
        let claims: Vec<&str> = pod["spec"]["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| str_at(v, "/persistentVolumeClaim/claimName"))
            .collect();
        let mut changes = self.shared.subscribe();
        let mut said = None;
        loop {
            // Marked seen before looking, so that no change is missed.
            changes.borrow_and_update();
            let missing = {
                let state = self.shared.lock();
                if !state.pods.contains_key(&self.uid) {
                    return Err(Gone);
                }
                claims
                    .iter()
                    .find(|claim| {
                        state
                            .get(Resource::PersistentVolumeClaims, &self.namespace, claim)
                            .is_none()
                    })
                    .map(|claim| (*claim).to_owned())
            };
            let Some(missing) = missing else {
                return Ok(());
            };
            if said.as_ref() != Some(&missing) {
                let message = format!(
                    "0/1 nodes are available: persistentvolumeclaim \"{missing}\" not found."
                );
                self.update(|m| m.unschedulable(message))?;
                said = Some(missing);
            }
            if changes.changed().await.is_err() {
                return Err(Gone);
            }
        }
    }

    async fn play(&self, pod: &Value, script: &PodScript) -> Result<(), Gone> {
        let failing = script.image_pull_failure.as_deref();
        sleep(Duration::from_millis(5)).await;
        self.update(PodModel::schedule)?;
        for c in containers(pod, "initContainers") {
            if failing == Some(c.name.as_str()) {
                return self.fail_pulling(&c.name, &c.image).await;
            }
            let s = script.container(&c.name);
            self.update(|m| m.start(&c.name))?;
            if c.sidecar {
                // A native sidecar runs beside what follows; its printing
                // ends by itself once it is no longer running.
                let kubelet = self.clone();
                spawn_supervised(
                    &self.shared,
                    format!("the kubelet's sidecar {} of pod {}", c.name, self.name),
                    async move {
                        let _ = kubelet.print_over(&c.name, &s).await;
                    },
                );
                continue;
            }
            self.print_over(&c.name, &s).await?;
            if s.forever {
                std::future::pending::<()>().await;
            }
            self.update(|m| m.terminate(&c.name, &s))?;
            if s.exit_code != 0 {
                return self.update(|m| m.fail_initialization(script));
            }
        }
        let mains = containers(pod, "containers");
        if let Some(c) = mains.iter().find(|c| failing == Some(c.name.as_str())) {
            self.update(|m| m.wait_mains("ContainerCreating"))?;
            return self.fail_pulling(&c.name, &c.image).await;
        }
        self.update(PodModel::start_mains)?;
        let runs = mains.iter().map(|c| async {
            let s = script.container(&c.name);
            self.print_over(&c.name, &s).await?;
            if s.forever {
                std::future::pending::<()>().await;
            }
            self.update(|m| m.terminate(&c.name, &s))
        });
        for result in futures_util::future::join_all(runs).await {
            result?;
        }
        self.update(|m| m.finish(script))
    }

    async fn print_over(&self, container: &str, script: &ContainerScript) -> Result<(), Gone> {
        let start = Instant::now();
        let count = script.lines.len();
        for (i, line) in script.lines.iter().enumerate() {
            #[expect(clippy::cast_precision_loss, reason = "line counts are small")]
            let at = script.runs_for.mul_f64(i as f64 / count as f64);
            sleep_until(start + at).await;
            self.print(container, line)?;
        }
        sleep_until(start + script.runs_for).await;
        Ok(())
    }

    /// Alternates like the kubelet's image pull back-off until the pod is
    /// deleted or its deadline passes.
    async fn fail_pulling(&self, container: &str, image: &str) -> Result<(), Gone> {
        let pull_error = format!("failed to pull and unpack image \"{image}\": not found");
        let back_off = format!("Back-off pulling image \"{image}\"");
        self.update(|m| m.wait(container, "ErrImagePull", &pull_error))?;
        sleep(Duration::from_millis(50)).await;
        loop {
            self.update(|m| m.wait(container, "ImagePullBackOff", &back_off))?;
            sleep(Duration::from_millis(100)).await;
            self.update(|m| m.wait(container, "ErrImagePull", &pull_error))?;
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// Changes the pod's status: one new resourceVersion, one MODIFIED event.
    fn update(&self, change: impl FnOnce(&mut PodModel)) -> Result<(), Gone> {
        let updated = {
            let mut state = self.shared.lock();
            let state = &mut *state;
            let Some(run) = state.pods.get_mut(&self.uid) else {
                return Err(Gone);
            };
            change(&mut run.model);
            let status = run.model.render();
            state.set_pod_status(&self.namespace, &self.name, &self.uid, status)
        };
        self.shared.notify();
        if updated { Ok(()) } else { Err(Gone) }
    }

    fn print(&self, container: &str, text: &str) -> Result<(), Gone> {
        {
            let mut state = self.shared.lock();
            let run = state.pods.get_mut(&self.uid).ok_or(Gone)?;
            if !run.model.is_running(container) {
                return Err(Gone);
            }
            let lines = run.logs.entry(container.to_owned()).or_default();
            let mut at = now();
            // `timestamps=true` output is strictly increasing per container,
            // even when two lines fall in the same clock tick.
            if let Some(last) = lines.last()
                && at <= last.at
            {
                at = last
                    .at
                    .checked_add(SignedDuration::from_nanos(1))
                    .unwrap_or(last.at);
            }
            lines.push(LogLine {
                at,
                text: text.to_owned(),
            });
        }
        self.shared.notify();
        Ok(())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Init,
    Sidecar,
    Main,
}

enum ContainerState {
    /// Before the pod is scheduled: no status at all.
    Unknown,
    Waiting {
        reason: &'static str,
        message: Option<String>,
    },
    Running {
        started_at: String,
    },
    Terminated {
        exit_code: i32,
        reason: &'static str,
        message: Option<String>,
        started_at: Option<String>,
        finished_at: String,
    },
}

struct ContainerModel {
    name: String,
    image: String,
    role: Role,
    state: ContainerState,
    /// 64 hex digits, for the containerID and imageID once it started.
    digest: String,
}

/// What the kubelet knows of a pod, rendered into `status` on each change.
pub(crate) struct PodModel {
    phase: &'static str,
    reason: Option<&'static str>,
    message: Option<&'static str>,
    start_time: Option<String>,
    containers: Vec<ContainerModel>,
    /// Condition type → (status, lastTransitionTime).
    conditions: HashMap<&'static str, (bool, String)>,
    /// Why the scheduler cannot place the pod, while it cannot.
    unschedulable: Option<String>,
}

impl PodModel {
    fn new(pod: &Value) -> PodModel {
        let init = containers(pod, "initContainers").into_iter().map(|c| {
            let role = if c.sidecar { Role::Sidecar } else { Role::Init };
            (c, role)
        });
        let main = containers(pod, "containers")
            .into_iter()
            .map(|c| (c, Role::Main));
        PodModel {
            phase: "Pending",
            reason: None,
            message: None,
            start_time: None,
            containers: init
                .chain(main)
                .map(|(c, role)| ContainerModel {
                    name: c.name,
                    image: c.image,
                    role,
                    state: ContainerState::Unknown,
                    digest: format!(
                        "{}{}",
                        uuid::Uuid::new_v4().simple(),
                        uuid::Uuid::new_v4().simple()
                    ),
                })
                .collect(),
            conditions: HashMap::new(),
            unschedulable: None,
        }
    }

    fn container(&mut self, name: &str) -> Option<&mut ContainerModel> {
        self.containers.iter_mut().find(|c| c.name == name)
    }

    fn is_running(&self, name: &str) -> bool {
        self.containers
            .iter()
            .any(|c| c.name == name && matches!(c.state, ContainerState::Running { .. }))
    }

    fn unschedulable(&mut self, message: String) {
        self.unschedulable = Some(message);
    }

    fn schedule(&mut self) {
        self.unschedulable = None;
        self.start_time = Some(now_seconds());
        let initializing = self.containers.iter().any(|c| c.role != Role::Main);
        for c in &mut self.containers {
            let reason = if c.role == Role::Main && !initializing {
                "ContainerCreating"
            } else {
                "PodInitializing"
            };
            c.state = ContainerState::Waiting {
                reason,
                message: None,
            };
        }
    }

    fn wait(&mut self, name: &str, reason: &'static str, message: &str) {
        if let Some(c) = self.container(name) {
            c.state = ContainerState::Waiting {
                reason,
                message: Some(message.to_owned()),
            };
        }
    }

    fn wait_mains(&mut self, reason: &'static str) {
        for c in self.containers.iter_mut().filter(|c| c.role == Role::Main) {
            c.state = ContainerState::Waiting {
                reason,
                message: None,
            };
        }
    }

    fn start(&mut self, name: &str) {
        if let Some(c) = self.container(name) {
            c.state = ContainerState::Running {
                started_at: now_seconds(),
            };
        }
    }

    fn start_mains(&mut self) {
        for c in self.containers.iter_mut().filter(|c| c.role == Role::Main) {
            c.state = ContainerState::Running {
                started_at: now_seconds(),
            };
        }
        self.phase = "Running";
    }

    fn terminate(&mut self, name: &str, script: &ContainerScript) {
        if let Some(c) = self.container(name) {
            c.terminate_saying(
                script.exit_code,
                if script.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                },
                script.termination_message.clone(),
            );
        }
    }

    /// Stops the native sidecars still running, each as its script says.
    fn stop_sidecars(&mut self, script: &PodScript) {
        for c in self
            .containers
            .iter_mut()
            .filter(|c| c.role == Role::Sidecar)
        {
            if matches!(c.state, ContainerState::Running { .. }) {
                let s = script.container(&c.name);
                let reason = if s.exit_code == 0 {
                    "Completed"
                } else {
                    "Error"
                };
                c.terminate_saying(s.exit_code, reason, s.termination_message);
            }
        }
    }

    fn fail_initialization(&mut self, script: &PodScript) {
        self.stop_sidecars(script);
        self.phase = "Failed";
    }

    fn finish(&mut self, script: &PodScript) {
        self.stop_sidecars(script);
        let all_succeeded = self
            .containers
            .iter()
            .filter(|c| c.role == Role::Main)
            .all(|c| matches!(c.state, ContainerState::Terminated { exit_code: 0, .. }));
        self.phase = if all_succeeded { "Succeeded" } else { "Failed" };
    }

    fn deadline_exceeded(&mut self) {
        for c in &mut self.containers {
            if matches!(c.state, ContainerState::Running { .. }) {
                c.terminate(137, "Error");
            }
        }
        self.phase = "Failed";
        self.reason = Some("DeadlineExceeded");
        self.message = Some("Pod was active on the node for longer than the specified deadline");
    }

    /// The pod's `status`, shaped like k8s-openapi's PodStatus.
    fn render(&mut self) -> Value {
        let mut status = json!({ "phase": self.phase, "qosClass": "BestEffort" });
        if let Some(reason) = self.reason {
            status["reason"] = json!(reason);
        }
        if let Some(message) = self.message {
            status["message"] = json!(message);
        }
        let Some(start_time) = &self.start_time else {
            if let Some(message) = &self.unschedulable {
                let since = self
                    .conditions
                    .entry("PodScheduled")
                    .or_insert_with(|| (false, now_seconds()));
                status["conditions"] = json!([{
                    "type": "PodScheduled",
                    "status": "False",
                    "lastProbeTime": null,
                    "lastTransitionTime": since.1,
                    "reason": "Unschedulable",
                    "message": message,
                }]);
            }
            return status;
        };
        status["startTime"] = json!(start_time);
        status["hostIP"] = json!("192.0.2.10");
        status["podIP"] = json!("198.51.100.10");
        let initialized = self.containers.iter().all(|c| match c.role {
            Role::Init => matches!(c.state, ContainerState::Terminated { exit_code: 0, .. }),
            Role::Sidecar => !matches!(c.state, ContainerState::Waiting { .. }),
            Role::Main => true,
        });
        let ready = self.phase == "Running"
            && self
                .containers
                .iter()
                .all(|c| c.role == Role::Init || matches!(c.state, ContainerState::Running { .. }));
        let not_ready = if matches!(self.phase, "Succeeded" | "Failed") {
            "PodCompleted"
        } else {
            "ContainersNotReady"
        };
        let conditions = [
            ("PodReadyToStartContainers", true, ""),
            ("Initialized", initialized, "ContainersNotInitialized"),
            ("Ready", ready, not_ready),
            ("ContainersReady", ready, not_ready),
            ("PodScheduled", true, ""),
        ];
        status["conditions"] = conditions
            .iter()
            .map(|&(kind, holds, reason)| {
                let entry = self
                    .conditions
                    .entry(kind)
                    .or_insert_with(|| (holds, now_seconds()));
                if entry.0 != holds {
                    *entry = (holds, now_seconds());
                }
                let mut condition = json!({
                    "type": kind,
                    "status": if holds { "True" } else { "False" },
                    "lastProbeTime": null,
                    "lastTransitionTime": entry.1,
                });
                if !holds {
                    condition["reason"] = json!(reason);
                }
                condition
            })
            .collect();
        let statuses = |roles: &[Role]| -> Value {
            self.containers
                .iter()
                .filter(|c| roles.contains(&c.role))
                .map(ContainerModel::render)
                .collect()
        };
        let init = statuses(&[Role::Init, Role::Sidecar]);
        if init.as_array().is_some_and(|a| !a.is_empty()) {
            status["initContainerStatuses"] = init;
        }
        status["containerStatuses"] = statuses(&[Role::Main]);
        status
    }
}

impl ContainerModel {
    fn terminate(&mut self, exit_code: i32, reason: &'static str) {
        self.terminate_saying(exit_code, reason, None);
    }

    fn terminate_saying(&mut self, exit_code: i32, reason: &'static str, message: Option<String>) {
        let started_at = match &self.state {
            ContainerState::Running { started_at } => Some(started_at.clone()),
            _ => None,
        };
        self.state = ContainerState::Terminated {
            exit_code,
            reason,
            message,
            started_at,
            finished_at: now_seconds(),
        };
    }

    fn render(&self) -> Value {
        let container_id = format!("containerd://{}", self.digest);
        let (state, ready, started) = match &self.state {
            ContainerState::Unknown => (json!({}), false, false),
            ContainerState::Waiting { reason, message } => {
                let mut waiting = json!({ "reason": reason });
                if let Some(message) = message {
                    waiting["message"] = json!(message);
                }
                (json!({ "waiting": waiting }), false, false)
            }
            ContainerState::Running { started_at } => (
                json!({ "running": { "startedAt": started_at } }),
                self.role != Role::Init,
                true,
            ),
            ContainerState::Terminated {
                exit_code,
                reason,
                message,
                started_at,
                finished_at,
            } => (
                {
                    let mut terminated = json!({
                        "exitCode": exit_code,
                        "reason": reason,
                        "startedAt": started_at,
                        "finishedAt": finished_at,
                        "containerID": container_id,
                    });
                    if let Some(message) = message {
                        terminated["message"] = json!(message);
                    }
                    json!({ "terminated": terminated })
                },
                self.role == Role::Init && *exit_code == 0,
                false,
            ),
        };
        let mut status = json!({
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "ready": ready,
            "restartCount": 0,
            "started": started,
            "state": state,
            "lastState": {},
        });
        if matches!(
            self.state,
            ContainerState::Running { .. } | ContainerState::Terminated { .. }
        ) {
            status["containerID"] = json!(container_id);
            status["imageID"] = json!(format!("{}@sha256:{}", self.image, self.digest));
        }
        status
    }
}
