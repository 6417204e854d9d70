//! One sandbox per test binary, and what a worker run left behind, for
//! tests that run scripts through the real sandbox.

use std::path::Path;

use mizzen_runtime::executor::EventContext;
use mizzen_runtime::log::{LogSource, MemoryLog};
use mizzen_runtime::{Sandbox, SandboxConfig, WorkerOutcome};
use tokio::sync::OnceCell;

/// One sandbox for the whole test binary, as a server would have; its
/// compiled plugin is cached under `target_tmp` (the binary's
/// `CARGO_TARGET_TMPDIR`, which only test targets are given).
pub async fn sandbox(target_tmp: &Path) -> &'static Sandbox {
    static SANDBOX: OnceCell<Sandbox> = OnceCell::const_new();
    SANDBOX
        .get_or_init(|| async {
            Sandbox::new(SandboxConfig {
                cache_dir: Some(target_tmp.join("mizzen-cache")),
                ..SandboxConfig::default()
            })
            .await
            .expect("the sandbox starts")
        })
        .await
}

/// What an executor is told of an event of `project_id`: no workspace, no
/// source, the default policies; a test sets what it needs on top.
pub fn context(event_id: &str, project_id: &str) -> EventContext {
    EventContext {
        event_id: event_id.to_string(),
        project_id: project_id.to_string(),
        use_workspace: false,
        source: None,
        policies: Default::default(),
        image_pull_secrets: Vec::new(),
        pull_secrets: Vec::new(),
        workspace_size: None,
        container_limits: Default::default(),
        kept: Default::default(),
        volumes: Default::default(),
    }
}

/// What a run left behind.
pub struct Run {
    /// How the worker ended.
    pub outcome: WorkerOutcome,
    /// Everything it logged, its jobs' output included.
    pub log: MemoryLog,
    /// The event it handled.
    pub event_id: String,
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

    /// Lines printed by the worker (console and logger), without the
    /// version line.
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

    /// Asserts that the log contains `expected`.
    #[track_caller]
    pub fn assert_logged(&self, expected: &str) {
        let text = self.log.text();
        assert!(
            text.contains(expected),
            "expected {expected:?} in the log:\n{text}"
        );
    }
}
