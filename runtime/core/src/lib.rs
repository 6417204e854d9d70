//! Mizzen's host: runs Brigade scripts in a WebAssembly sandbox.
//!
//! An event arrives for a project; the project's script (JavaScript or
//! TypeScript) runs in a fresh wasmtime instance of the Javy plugin, and can
//! reach nothing but the host API ([`mizzen_host_api`]): its own event, its
//! project's secrets, its log, its summary, jobs, timers and its event's
//! workspace.
//!
//! # Layout
//! - [`Sandbox`] (`sandbox`): the wasmtime engine, the pre-initialised plugin
//!   (`plugin`), the bytecode cache, and [`Sandbox::run`], which gives every
//!   event a fresh Store and instance under [`WorkerLimits`]; `cpu`: how
//!   guests share the cores; `wasi`: the few WASI functions a guest gets.
//! - `host`: the `mizzen:host/v1` call, routed to the [`capability`] that
//!   owns its operation: event, secrets, timers and outcome answered in the
//!   sandbox (`worker` holds their state), log, [`jobs`] and workspace by
//!   the worker's host ([`capability::HostedWorker`]).
//! - [`assembly`]: the one place `mizzen run` and the server put an event's
//!   worker together; [`sandbox_process`]: the child side of a server's
//!   sandbox process, where the seam is the host call.
//! - [`project`]: Brigade v2 project files, subscriptions, events;
//!   [`limits`]: every limit of a worker and its jobs.
//! - [`executor`]: the trait that runs jobs (containers, Pods, Wasm);
//!   [`source`]: git checkouts and project directories for jobs;
//!   [`wasm_job`]: the host's own part of every job before a container
//!   executor sees it, a container's environment file
//!   ([`environment_file`]) and Wasm jobs, which run in the sandbox.
//! - [`script`]: script sources, TypeScript stripping, module detection.
//! - [`dependencies`]: a script's own modules and npm packages, prepared
//!   once per project version: [`npm`] fetches, checks and unpacks
//!   packages, [`bundle`] resolves and bundles modules.
//! - [`log`]: worker log records and sinks; [`redact`]: secret values
//!   masked in them.
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use mizzen_runtime::{JobCapability, Sandbox, SandboxConfig, WorkerLimits, WorkerRequest};
//! use mizzen_runtime::log::MemoryLog;
//! use mizzen_runtime::project::{EventDetails, ProjectDir};
//!
//! let sandbox = Sandbox::new(SandboxConfig::from_env()).await?;
//! let dir = ProjectDir::load("examples/02-first-event".as_ref())?;
//! let event = dir.project.event(
//!     EventDetails { source: "brigade.sh/cli".into(), event_type: "exec".into(), ..Default::default() },
//!     Default::default(),
//! );
//! let log = MemoryLog::new();
//! let request = WorkerRequest {
//!     event,
//!     limits: WorkerLimits::default(),
//!     log: Arc::new(log.clone()),
//!     jobs: JobCapability::none(),
//! };
//! let outcome = sandbox.run(&dir.script()?, request).await;
//! assert!(outcome.succeeded());
//! # Ok(()) }
//! ```

pub mod assembly;
pub mod bundle;
mod cache_files;
pub mod capability;
mod cpu;
pub mod dependencies;
mod duration;
pub mod environment_file;
pub mod executor;
mod host;
pub mod kept;
pub mod limits;
pub mod log;
pub mod module;
pub mod npm;
mod plugin;
pub mod project;
pub mod redact;
mod sandbox;
pub mod sandbox_process;
pub mod schedule;
pub mod script;
pub mod source;
pub mod volume;
mod wasi;
pub mod wasm_job;
mod worker;

pub use capability::jobs::{self as jobs, JobCapability};
pub use duration::parse_go_duration;
pub use limits::WorkerLimits;
pub use sandbox::{CompiledScript, Sandbox, SandboxConfig, WorkerRequest};
pub use worker::{WorkerFailure, WorkerOutcome};

/// Why the sandbox could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// wasmtime rejected the configuration or the host functions.
    #[error("could not set up the WebAssembly engine: {}", causes(source.as_ref()))]
    Engine {
        /// wasmtime's error.
        #[source]
        source: BoxError,
    },
    /// The Javy plugin could not be pre-initialised or compiled.
    #[error("could not prepare the Javy plugin: {step}: {}", causes(source.as_ref()))]
    Plugin {
        /// What was being done.
        step: &'static str,
        /// wasmtime's error.
        #[source]
        source: BoxError,
    },
}

impl SandboxError {
    pub(crate) fn engine(error: wasmtime::Error) -> Self {
        Self::Engine {
            source: error.into(),
        }
    }

    pub(crate) fn plugin(step: &'static str, error: wasmtime::Error) -> Self {
        Self::Plugin {
            step,
            source: error.into(),
        }
    }
}

/// An error from a library that is not ours, kept whole.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An error and its causes, `a: b: c`.
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
