//! A shared sandbox and executor, and helpers to run a script whose jobs run
//! on the machine's container engine (scripts/setup-engine prepares one).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::query_parameters::ListContainersOptionsBuilder;
use mizzen_docker::{DockerConfig, DockerExecutor};
use mizzen_host_api::types::Event;
use mizzen_runtime::executor::{EventContext, Source};
use mizzen_runtime::log::{LogSource, MemoryLog};
use mizzen_runtime::project::JobPolicies;
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{
    JobCapability, Sandbox, SandboxConfig, WorkerLimits, WorkerOutcome, WorkerRequest,
};
use tokio::sync::OnceCell;

/// The data directory of this test binary's executor.
pub fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mizzen-jobs-data")
}

pub async fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceCell<Sandbox> = OnceCell::const_new();
    SANDBOX
        .get_or_init(|| async {
            let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("mizzen-cache");
            Sandbox::new(SandboxConfig {
                cache_dir: Some(cache),
                ..SandboxConfig::default()
            })
            .await
            .expect("the sandbox starts")
        })
        .await
}

pub async fn executor() -> Arc<DockerExecutor> {
    static EXECUTOR: OnceCell<Arc<DockerExecutor>> = OnceCell::const_new();
    EXECUTOR
        .get_or_init(|| async {
            let executor = DockerExecutor::connect(DockerConfig {
                data_dir: data_dir(),
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
}

pub struct Run {
    pub outcome: WorkerOutcome,
    pub log: MemoryLog,
    pub event_id: String,
}

impl Run {
    /// Lines printed by the worker (console and logger), without the version line.
    pub fn worker_lines(&self) -> Vec<String> {
        self.log
            .records()
            .into_iter()
            .filter(|r| !matches!(r.source, LogSource::Container(_)))
            .map(|r| r.message)
            .filter(|m| !m.starts_with("brigade-worker version:"))
            .collect()
    }

    /// Lines printed by a job's containers, as `[job/container] line`
    /// (`[job] line` for the primary).
    pub fn job_lines(&self) -> Vec<String> {
        self.log
            .records()
            .into_iter()
            .filter_map(|r| match r.source {
                LogSource::Container(sidecar) => {
                    let job = r.job.unwrap_or_default();
                    Some(match sidecar {
                        Some(s) => format!("[{job}/{s}] {}", r.message),
                        None => format!("[{job}] {}", r.message),
                    })
                }
                _ => None,
            })
            .collect()
    }

    pub fn failure(&self) -> String {
        self.outcome
            .failure
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    #[track_caller]
    pub fn assert_succeeded(&self) {
        assert!(
            self.outcome.succeeded(),
            "expected SUCCEEDED, got {:?}\nlog:\n{}",
            self.outcome,
            self.log.text()
        );
    }

    #[track_caller]
    pub fn assert_failed_with(&self, expected: &str) {
        assert!(
            !self.outcome.succeeded() && self.failure().contains(expected),
            "expected a failure containing {expected:?}, got {:?}\nlog:\n{}",
            self.outcome,
            self.log.text()
        );
    }

    #[track_caller]
    pub fn assert_logged(&self, expected: &str) {
        let text = self.log.text();
        assert!(
            text.contains(expected),
            "expected {expected:?} in the log:\n{text}"
        );
    }
}

/// Runs a script for a fresh `brigade.sh/cli`/`exec` event of `project`,
/// then checks that none of the event's containers is left.
pub async fn run_js(script: &str, project: Project) -> Run {
    let event_id = uuid();
    let event = Event::new(&event_id, "test-project", "brigade.sh/cli", "exec");
    let context = Arc::new(EventContext {
        event_id: event_id.clone(),
        project_id: "test-project".into(),
        use_workspace: project.use_workspace,
        source: project.source,
        policies: project.policies,
        image_pull_secrets: Vec::new(),
        workspace_size: None,
    });
    let log = MemoryLog::new();
    let outcome = sandbox()
        .await
        .run(
            &ScriptSource::new("brigade.js", script),
            WorkerRequest {
                event,
                limits: WorkerLimits::default(),
                log: Arc::new(log.clone()),
                jobs: JobCapability::Executor {
                    executor: executor().await,
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
    assert!(
        !data_dir().join("work").join(&run.event_id).exists(),
        "the event's scratch directory was left behind"
    );
    run
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
    executor()
        .await
        .docker()
        .list_containers(Some(options))
        .await
        .expect("the engine lists containers")
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
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
