//! A shared sandbox and helpers to run a script for an event.

use std::path::Path;
use std::sync::Arc;

use mizzen_host_api::types::Event;
use mizzen_runtime::log::MemoryLog;
use mizzen_runtime::script::ScriptSource;
use mizzen_runtime::{JobCapability, Sandbox, WorkerLimits, WorkerRequest};
pub use mizzen_tests::worker::Run;

/// The test binary's sandbox.
pub async fn sandbox() -> &'static Sandbox {
    mizzen_tests::worker::sandbox(Path::new(env!("CARGO_TARGET_TMPDIR"))).await
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
    let event_id = event.id.clone();
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
    Run {
        outcome,
        log,
        event_id,
    }
}
