//! A shared sandbox and helpers to run a script for an event.

use std::path::PathBuf;
use std::sync::Arc;

use mizzen_host_api::types::Event;
use mizzen_runtime::log::MemoryLog;
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{
    JobCapability, Sandbox, SandboxConfig, WorkerLimits, WorkerOutcome, WorkerRequest,
};
use tokio::sync::OnceCell;

/// One sandbox for the whole test binary, as a server would have; its
/// compiled plugin is cached under the target directory.
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

/// An event of `brigade.sh/cli`/`exec` for project `test-project`.
pub fn event() -> Event {
    Event::new(
        "2f9ff7b3-8a5c-4c1f-9f1e-3a4b5c6d7e8f",
        "test-project",
        "brigade.sh/cli",
        "exec",
    )
}

/// What a run left behind.
pub struct Run {
    pub outcome: WorkerOutcome,
    pub log: MemoryLog,
}

impl Run {
    /// The messages logged, without the worker's version line.
    pub fn messages(&self) -> Vec<String> {
        self.log
            .messages()
            .into_iter()
            .filter(|m| !m.starts_with("brigade-worker version:"))
            .collect()
    }

    /// The failure's message, or "" when the worker succeeded.
    pub fn failure(&self) -> String {
        self.outcome
            .failure
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }

    /// Asserts success, showing the log otherwise.
    #[track_caller]
    pub fn assert_succeeded(&self) {
        assert!(
            self.outcome.succeeded(),
            "expected SUCCEEDED, got {:?}\nlog:\n{}",
            self.outcome,
            self.log.text()
        );
    }

    /// Asserts failure with a message containing `expected`.
    #[track_caller]
    pub fn assert_failed_with(&self, expected: &str) {
        assert!(
            !self.outcome.succeeded() && self.failure().contains(expected),
            "expected a failure containing {expected:?}, got {:?}\nlog:\n{}",
            self.outcome,
            self.log.text()
        );
    }
}

/// Runs `text` as `brigade.js` for [`event`].
pub async fn run_js(text: &str) -> Run {
    run(
        ScriptSource::new("brigade.js", text),
        event(),
        WorkerLimits::default(),
    )
    .await
}

/// Runs a script for an event under limits.
pub async fn run(script: ScriptSource, event: Event, limits: WorkerLimits) -> Run {
    let log = MemoryLog::new();
    let outcome = sandbox()
        .await
        .run(
            &script,
            WorkerRequest {
                event,
                limits,
                log: Arc::new(log.clone()),
                jobs: JobCapability::none(),
            },
        )
        .await;
    Run { outcome, log }
}
