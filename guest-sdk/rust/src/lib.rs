//! Brigadier for Rust: Brigade's script API for Mizzen scripts written in Rust
//! and compiled to a `wasm32-wasip1` command module (`brigade.wasm`).
//!
//! The model is brigadier.js (`guest-sdk/js/brigadier.js`), in Rust's terms:
//! an [`Events`] registry of async handlers, [`Job`]s and their
//! [`Container`]s, [`Service`]s the event's jobs share, [`sequence`] and
//! [`concurrent`] groups, a levelled [`logger()`], the event's
//! [`summary`](set_summary), [`secret`]s, [`sleep`], the event's
//! [`workspace`] and the [`artifacts`] its jobs saved. Every call reaches the
//! host through the two imports of `mizzen:host/v1` (docs/host-api.md).
//!
//! ```no_run
//! use brigadier::{Event, Events, Job, Result, concurrent, info};
//!
//! async fn exec(event: Event) -> Result<String> {
//!     info!("event {} from {}", event.id, event.source);
//!     let a = Job::new("a", "debian:12").command(["echo", "a"]);
//!     let b = Job::new("b", "debian:12").command(["echo", "b"]);
//!     concurrent([&a, &b]).run().await?;
//!     Ok(format!("a said {}", a.logs().await?))
//! }
//!
//! fn main() {
//!     Events::new().on("brigade.sh/cli", "exec", exec).process();
//! }
//! ```
//!
//! Handlers run on a small single-threaded executor ([`block_on`]) that waits
//! in the host's `wait_any` whenever every future is pending, so jobs and
//! timers awaited together really run at the same time.

pub mod artifacts;
mod error;
mod event;
mod executor;
mod host;
mod job;
mod logger;
pub mod workspace;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{Error, Result};
pub use event::{Event, Events, GitConfig, IntoSummary, Kubernetes, Project, Worker, event};
pub use executor::{block_on, join_all, try_join_all};
pub use job::{
    ConcurrentGroup, Container, DEFAULT_TIMEOUT_SECONDS, ImagePullPolicy, Job, JobArtifacts,
    JobCache, JobHost, JobResult, Phase, Readiness, RestoreArtifact, RunFuture, Runnable,
    SaveArtifact, SerialGroup, Service, ServiceReady, concurrent, sequence,
};
pub use logger::{Level, Logger, level, logger, set_level};

use host::op;

/// The longest summary the host accepts, in characters.
pub const SUMMARY_MAX_CHARS: usize = 4096;

/// Sets the event's summary, shown by Brigade's clients (`summary.set`); a
/// later call replaces it. More than 4096 characters is refused with
/// [`code`](Error::code) `limit_exceeded`.
#[track_caller]
pub fn set_summary(text: impl Into<String>) -> Result<()> {
    let at = Location::caller();
    summary(text.into()).map_err(|e| e.located(at))
}

pub(crate) fn summary(text: String) -> Result<()> {
    #[derive(Serialize)]
    struct SummaryRequest {
        text: String,
    }
    host::call_unit(op::SUMMARY_SET, &SummaryRequest { text }).map_err(|e| Error::host(e, None))
}

/// One of the project's secrets (`secret.get`): `not_found` when the project
/// has no such secret, `permission_denied` when the project keeps it from its
/// script (`spec.workerTemplate.scriptSecrets`; a job can still have it, with
/// an environment value `${{ secrets.NAME }}`).
#[track_caller]
pub fn secret(key: &str) -> Result<String> {
    #[derive(Serialize)]
    struct SecretRequest<'a> {
        key: &'a str,
    }
    #[derive(Deserialize)]
    struct SecretValue {
        value: String,
    }
    let at = Location::caller();
    let reply: SecretValue =
        host::call(op::SECRET_GET, &SecretRequest { key }).map_err(|e| Error::host(e, Some(at)))?;
    Ok(reply.value)
}

/// Waits `duration` on a host timer (`sleep`): other futures, jobs among
/// them, go on meanwhile (`std::thread::sleep` would block them all). The
/// resolution is a millisecond.
#[track_caller]
pub fn sleep(duration: Duration) -> impl Future<Output = Result<()>> {
    #[derive(Serialize)]
    struct SleepRequest {
        ms: f64,
    }
    let at = Location::caller();
    async move {
        let request = SleepRequest {
            ms: duration.as_millis() as f64,
        };
        let ticket = executor::submit(op::SLEEP, &request).map_err(|e| Error::host(e, Some(at)))?;
        ticket.await.map_err(|e| Error::host(e, Some(at)))?;
        Ok(())
    }
}

/// Ends the worker at once with `code`: 0 succeeds (unless an error was
/// reported), anything else fails it. Output printed so far is flushed.
/// (`std::process::exit` does the same.)
pub fn exit(code: i32) -> ! {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(code)
}

/// Installs a panic hook that reports a panic to the host as a script error
/// (`src/main.rs:10:5: panic: <message>`), so that the worker fails with the
/// panic's message; the module then aborts (scripts are built with
/// `panic = "abort"`). [`Events::process`] installs it; call it yourself only
/// if you drive the SDK without `process`.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("Box<dyn Any>");
        let report = match info.location() {
            Some(at) => format!(
                "{}:{}:{}: panic: {message}",
                at.file(),
                at.line(),
                at.column()
            ),
            None => format!("panic: {message}"),
        };
        if !host::report_script_error(&report) {
            eprintln!("{report}");
        }
    }));
}
