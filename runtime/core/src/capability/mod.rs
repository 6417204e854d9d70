//! The host's capabilities: what a guest may do, one module each. Every
//! operation of `mizzen:host/v1` belongs to exactly one of them (each
//! module lists its own in `OPS`; [`owner`] finds the one for an op).
//!
//! They sit on either side of the seam between a sandbox and the process
//! that gave it the worker:
//!
//! - **in the sandbox**, answered from the worker's own state: [`event`]
//!   (the event as the script may see it), [`secrets`] (those it may read),
//!   [`timers`] (sleeps, tickets and `wait_any`) and [`outcome`] (summary,
//!   exit, script errors);
//! - **in the worker's host**, which runs no guest code: [`log`], [`jobs`]
//!   and [`workspace`]. The sandbox reaches them through [`WorkerHost`]: a
//!   direct call in `mizzen run` (and a server without sandbox processes),
//!   one message each way behind a sandbox process. The secrets a script may
//!   not read, job rules, `${{ secrets.x }}` substitution, job output and
//!   redaction stay on this side; a container's line never crosses to a
//!   sandbox process at all.
//!
//! A capability is prepared per worker from what the worker was given
//! ([`crate::WorkerRequest`], split by [`crate::WorkerRequest::split`] into
//! the [`SandboxWorker`] a sandbox needs and the [`HostedWorker`] that keeps
//! the rest).

pub mod event;
pub mod jobs;
pub mod log;
pub mod outcome;
pub mod secrets;
pub mod timers;
pub mod workspace;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use mizzen_host_api::types::{LogLevel, LogRequest};
use mizzen_host_api::{HostError, Op};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::limits::WorkerLimits;
use crate::log::{LogRecord, LogSink};
use crate::worker::{Stop, WorkerOutcome};
use jobs::WorkerJobs;
use log::WorkerLog;
use workspace::WorkspaceAccess;

/// What a worker reports as its version on its first log line.
const WORKER_VERSION_LINE: &str =
    concat!("brigade-worker version: mizzen ", env!("CARGO_PKG_VERSION"));

/// Which capability answers an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// [`event`].
    Event,
    /// [`secrets`].
    Secrets,
    /// [`timers`].
    Timers,
    /// [`outcome`].
    Outcome,
    /// [`log`].
    Log,
    /// [`jobs`].
    Jobs,
    /// [`workspace`].
    Workspace,
}

impl Capability {
    /// Every capability, each with the operations its module answers.
    pub const ALL: [(Capability, &'static [Op]); 7] = [
        (Capability::Event, event::OPS),
        (Capability::Secrets, secrets::OPS),
        (Capability::Timers, timers::OPS),
        (Capability::Outcome, outcome::OPS),
        (Capability::Log, log::OPS),
        (Capability::Jobs, jobs::OPS),
        (Capability::Workspace, workspace::OPS),
    ];

    /// Whether the worker's host answers it, rather than the sandbox.
    pub fn hosted(self) -> bool {
        matches!(
            self,
            Capability::Log | Capability::Jobs | Capability::Workspace
        )
    }
}

/// The capability that answers `op`.
pub fn owner(op: Op) -> Capability {
    Capability::ALL
        .iter()
        .find(|(_, ops)| ops.contains(&op))
        .map(|(capability, _)| *capability)
        .expect("every operation has a capability (tested)")
}

/// How a capability answers a call the guest may go on from.
pub enum Answer {
    /// The reply body now (`None`: the call has no reply).
    Now(Option<Vec<u8>>),
    /// A result later: the guest gets a ticket, and the value through
    /// `wait_any` once this resolves.
    Later(Pending),
}

/// A result on its way.
pub type Pending = Pin<Box<dyn Future<Output = Result<serde_json::Value, HostError>> + Send>>;

/// What a call comes to: an answer or an error the guest receives, or a
/// stop that ends the worker (a limit).
pub type Answered = Result<Result<Answer, HostError>, Stop>;

/// The worker's host as its sandbox reaches it: the capabilities the sandbox
/// does not hold.
#[async_trait]
pub trait WorkerHost: Send + Sync {
    /// Performs a job or workspace operation.
    async fn call(&self, op: Op, request: Vec<u8>) -> Answered;

    /// Adds a line to the worker's log (`Op::Log`, and the sandbox's own
    /// lines: output, script errors). It is not waited for: a limit it
    /// reaches stops the worker at once in this process, and from a sandbox
    /// process at the worker's next host call or tick ([`StopSignal`]).
    fn log(&self, request: LogRequest) -> Result<(), Stop>;
}

/// What a sandbox needs of a worker: the event as its script may see it,
/// the secrets it may read, its limits. Nothing else of the project (its
/// other secrets, its jobs' rules) reaches a sandbox process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxWorker {
    /// The event as `event.get` returns it (the secrets the script may not
    /// read removed).
    pub event_json: Vec<u8>,
    /// The project's id, for messages and for charging it CPU.
    pub project_id: String,
    /// The secrets the script may read.
    pub readable_secrets: BTreeMap<String, String>,
    /// The names (never the values) of those it may not.
    pub hidden_secrets: BTreeSet<String>,
    /// The worker's limits.
    pub limits: WorkerLimits,
}

/// A worker's host-side capabilities: its log, its jobs, its workspace.
pub struct HostedWorker {
    log: WorkerLog,
    jobs: tokio::sync::Mutex<WorkerJobs>,
    workspace: WorkspaceAccess,
}

impl HostedWorker {
    pub(crate) fn new(log: WorkerLog, jobs: WorkerJobs, workspace: WorkspaceAccess) -> Self {
        Self {
            log,
            jobs: tokio::sync::Mutex::new(jobs),
            workspace,
        }
    }

    /// Opens the worker's log with the line Brigade's worker began with
    /// (`brigade-worker version: <v>`, which Brigade's own tests look for).
    pub fn begin(&self) {
        self.note(LogLevel::Info, WORKER_VERSION_LINE);
    }

    /// A line of the host's own in the worker's log.
    pub fn note(&self, level: LogLevel, message: &str) {
        self.log.note(LogRecord::logger(level, message, None));
    }

    /// Performs an operation whose answer no one waits for (a log line from
    /// a sandbox process); a limit it reaches is the stop returned.
    pub fn call_unanswered(&self, op: Op, request: &[u8]) -> Result<(), Stop> {
        match owner(op) {
            Capability::Log => log::call(&self.log, request),
            // Only log lines are sent without waiting; anything else is not
            // from this host's sandbox.
            _ => Ok(()),
        }
    }

    /// How the worker ended, all told: a log limit its host reached on a
    /// line no one waited for (from a sandbox process) ends it FAILED even
    /// if its sandbox finished before it heard. Says so in its log when it
    /// failed in a way the log does not show yet (a script error, or the
    /// log's own limit, is already there).
    pub fn ended(&self, outcome: WorkerOutcome) -> WorkerOutcome {
        use crate::WorkerFailure::{Log, LogLines, Uncaught};
        let limits = self.log.limits();
        let outcome = match self.log.stopped() {
            Some(Stop::LogLimit) => WorkerOutcome::failed(Log {
                limit: limits.log_bytes,
            }),
            Some(Stop::LogLines) => WorkerOutcome::failed(LogLines {
                limit: limits.log_lines,
            }),
            _ => outcome,
        };
        if let Some(failure) = &outcome.failure
            && !matches!(failure, Uncaught { .. } | Log { .. } | LogLines { .. })
        {
            self.note(LogLevel::Error, &failure.to_string());
        }
        outcome
    }

    /// Ends the worker's jobs (those still running are stopped) and has the
    /// executor remove what it made for the event.
    pub async fn finish(&self) {
        self.jobs.lock().await.finish().await;
    }

    /// Where the worker's log goes.
    pub fn sink(&self) -> Arc<dyn LogSink> {
        self.log.sink()
    }
}

#[async_trait]
impl WorkerHost for HostedWorker {
    async fn call(&self, op: Op, request: Vec<u8>) -> Answered {
        Ok(match owner(op) {
            Capability::Jobs => jobs::call(&self.jobs, op, &request).await,
            Capability::Workspace => workspace::call(&self.workspace, op, &request).await,
            Capability::Log => {
                return log::call(&self.log, &request).map(|()| Ok(Answer::Now(None)));
            }
            other => Err(HostError::new(
                mizzen_host_api::ErrorCode::Internal,
                format!(
                    "{} belongs to the {other:?} capability, which the sandbox holds",
                    op.name()
                ),
            )),
        })
    }

    fn log(&self, request: LogRequest) -> Result<(), Stop> {
        self.log.record(request)
    }
}

/// A stop that comes from outside the worker's own calls: its host reached
/// a limit on a line that was not waited for. The worker ends with it at
/// its next host call, its next tick, or at once when it waits.
#[derive(Default)]
pub struct StopSignal {
    stop: Mutex<Option<Stop>>,
    raised: Notify,
}

impl StopSignal {
    /// Asks the worker to stop with `stop` (the first asked wins).
    pub fn raise(&self, stop: Stop) {
        self.stop
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert(stop);
        self.raised.notify_waiters();
    }

    /// The stop asked for, if any.
    pub fn raised(&self) -> Option<Stop> {
        *self.stop.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves once a stop is asked for.
    pub async fn wait(&self) -> Stop {
        loop {
            let raised = self.raised.notified();
            if let Some(stop) = self.raised() {
                return stop;
            }
            raised.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_belongs_to_exactly_one_capability() {
        for op in Op::ALL {
            let owners: Vec<Capability> = Capability::ALL
                .iter()
                .filter(|(_, ops)| ops.contains(&op))
                .map(|(capability, _)| *capability)
                .collect();
            assert_eq!(owners.len(), 1, "{} is answered by {owners:?}", op.name());
        }
    }
}
