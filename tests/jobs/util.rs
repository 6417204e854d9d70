//! A shared sandbox and executor, and helpers to run a script whose jobs run
//! on the machine's container engine (scripts/setup-engine prepares one).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::query_parameters::ListContainersOptionsBuilder;
use mizzen_docker::{DockerConfig, DockerExecutor};
use mizzen_host_api::types::Event;
use mizzen_host_api::types::JobResult;
use mizzen_runtime::executor::{ContainerLimits, EventContext, JobExecutor, JobOutput, Source};
use mizzen_runtime::log::MemoryLog;
use mizzen_runtime::project::JobPolicies;
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::volume::EventVolumes;
use mizzen_runtime::wasm_job::{HostJobExecutor, ModuleFetcher, WasmJob, WasmJobRunner};
use mizzen_runtime::{JobCapability, Sandbox, WorkerLimits, WorkerRequest};
pub use mizzen_tests::worker::Run;
use tokio::sync::OnceCell;

/// The data directory of this test binary's executor.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mizzen-jobs-data")
}

pub async fn sandbox() -> &'static Sandbox {
    mizzen_tests::worker::sandbox(Path::new(env!("CARGO_TARGET_TMPDIR"))).await
}

pub async fn executor() -> Arc<DockerExecutor> {
    static EXECUTOR: OnceCell<Arc<DockerExecutor>> = OnceCell::const_new();
    EXECUTOR
        .get_or_init(|| async {
            let executor = DockerExecutor::connect(DockerConfig {
                data_dir: data_dir(),
                storage: None,
            })
            .await
            .unwrap_or_else(|e| {
                panic!("these tests need a container engine; run scripts/setup-engine: {e}")
            });
            Arc::new(executor)
        })
        .await
        .clone()
}

/// What a project allows and has, for a test.
#[derive(Clone, Default)]
pub struct Project {
    pub use_workspace: bool,
    pub source: Option<Source>,
    pub policies: JobPolicies,
    /// The project's secrets.
    pub secrets: BTreeMap<String, String>,
    /// Those its script may read (`spec.workerTemplate.scriptSecrets`).
    pub script_secrets: Option<BTreeSet<String>>,
    /// `spec.workerTemplate.workspaceSize`.
    pub workspace_size: Option<String>,
    /// The project's id; `test-project` when empty.
    pub id: String,
    /// Its volumes and the host paths it may bind.
    pub volumes: EventVolumes,
}

/// Runs a script for a fresh `brigade.sh/cli`/`exec` event of `project`,
/// then checks that none of the event's containers is left.
pub async fn run_js(script: &str, project: Project) -> Run {
    run_js_with_limits(script, project, WorkerLimits::default()).await
}

/// [`run_js`] under `limits`.
pub async fn run_js_with_limits(script: &str, project: Project, limits: WorkerLimits) -> Run {
    run_js_as(&uuid(), script, project, limits).await
}

/// [`run_js_with_limits`] for the event `event_id`.
pub async fn run_js_as(
    event_id: &str,
    script: &str,
    project: Project,
    limits: WorkerLimits,
) -> Run {
    let event_id = event_id.to_string();
    let project_id = if project.id.is_empty() {
        "test-project".to_string()
    } else {
        project.id.clone()
    };
    let mut event = Event::new(&event_id, &project_id, "brigade.sh/cli", "exec");
    event.project.secrets = project.secrets;
    event.project.script_secrets = project.script_secrets;
    let context = Arc::new(EventContext {
        use_workspace: project.use_workspace,
        source: project.source,
        policies: project.policies,
        container_limits: ContainerLimits::of(&limits),
        kept: Default::default(),
        volumes: project.volumes,
        workspace_size: project.workspace_size,
        ..mizzen_tests::worker::context(&event_id, &project_id)
    });
    let log = MemoryLog::new();
    let outcome = sandbox()
        .await
        .run(
            &ScriptSource::new("brigade.js", script),
            WorkerRequest {
                event,
                limits,
                log: Arc::new(log.clone()),
                jobs: JobCapability::Executor {
                    executor: with_wasm_jobs(executor().await),
                    event: context,
                },
            },
        )
        .await;
    let run = Run {
        outcome,
        log,
        event_id,
    };
    let left = containers_of(&run.event_id).await;
    assert!(
        left.is_empty(),
        "containers left behind: {left:?}\nlog:\n{}",
        run.log.text()
    );
    let left = networks_of(&run.event_id).await;
    assert!(
        left.is_empty(),
        "networks left behind: {left:?}\nlog:\n{}",
        run.log.text()
    );
    let left = volumes_labelled(&format!("sh.mizzen.event={}", run.event_id)).await;
    assert!(
        left.is_empty(),
        "volumes left behind: {left:?}\nlog:\n{}",
        run.log.text()
    );
    assert!(
        !data_dir().join("work").join(&run.event_id).exists(),
        "the event's scratch directory was left behind"
    );
    run
}

/// `containers` with the host's part of jobs in front (environment files;
/// Wasm jobs, run in the test binary's sandbox), as `mizzen run` puts them
/// together.
pub fn with_wasm_jobs(containers: Arc<dyn JobExecutor>) -> Arc<dyn JobExecutor> {
    Arc::new(HostJobExecutor::new(
        containers,
        Arc::new(TestSandbox),
        Arc::new(ModuleFetcher::new(Some(
            PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mizzen-cache"),
        ))),
    ))
}

/// The test binary's sandbox as a Wasm job runner.
struct TestSandbox;

#[async_trait::async_trait]
impl WasmJobRunner for TestSandbox {
    async fn run_job(
        &self,
        job: WasmJob,
        output: Arc<dyn JobOutput>,
        cancel: tokio::sync::watch::Receiver<bool>,
    ) -> JobResult {
        sandbox().await.run_job(job, output, cancel).await
    }
}

/// Names of the containers labelled with an event.
pub async fn containers_of(event_id: &str) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("sh.mizzen.event={event_id}")],
    )]);
    let options = ListContainersOptionsBuilder::default()
        .all(true)
        .filters(&filters)
        .build();
    mizzen_docker::list_containers(executor().await.docker(), options)
        .await
        .expect("the engine lists containers")
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .collect()
}

/// Names of the networks labelled with an event.
pub async fn networks_of(event_id: &str) -> Vec<String> {
    let filters = HashMap::from([(
        "label".to_string(),
        vec![format!("sh.mizzen.event={event_id}")],
    )]);
    let options = bollard::query_parameters::ListNetworksOptionsBuilder::default()
        .filters(&filters)
        .build();
    executor()
        .await
        .docker()
        .list_networks(Some(options))
        .await
        .expect("the engine lists networks")
        .into_iter()
        .filter_map(|n| n.name)
        .collect()
}

/// Names of the volumes with the label `label` (`key=value`).
pub async fn volumes_labelled(label: &str) -> Vec<String> {
    let filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
    let options = bollard::query_parameters::ListVolumesOptionsBuilder::default()
        .filters(&filters)
        .build();
    executor()
        .await
        .docker()
        .list_volumes(Some(options))
        .await
        .expect("the engine lists volumes")
        .volumes
        .unwrap_or_default()
        .into_iter()
        .map(|v| v.name)
        .collect()
}

pub fn uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Runs git in `dir`.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=test", "-c", "user.email=test@example.com"])
        .args(args)
        .output()
        .expect("git runs");
    assert!(output.status.success(), "git {args:?}: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}
