//! The operations of `mizzen:host/v1`: their numbers (from
//! [`crate::op_codes`], the one place they are written), their stable names,
//! and which request and reply each takes.

use crate::op_codes as code;

/// The operations a guest can ask of the host. The numbers are part of the
/// ABI; each variant documents its request and its reply (types in
/// [`crate::types`]). "Ticket" means the reply is a [`crate::types::Ticket`]
/// and the real result arrives later through [`Op::WaitAny`].
/// docs/host-api.md describes each for guest authors, with examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Op {
    /// Request: none. Reply: [`crate::types::Event`], the event this worker
    /// handles, with its project's secrets.
    EventGet = code::EVENT_GET,
    /// Request: [`crate::types::LogRequest`]. Reply: none. Adds a line to the
    /// worker's log; the host timestamps it and counts it against the log
    /// limits. It does not filter by level: the guest drops its levelled
    /// lines below the event's `worker.logLevel` itself.
    Log = code::LOG,
    /// Request: [`crate::types::SummaryRequest`]. Reply: none. Sets the
    /// event's summary (at most [`crate::types::SUMMARY_MAX_CHARS`]).
    SummarySet = code::SUMMARY_SET,
    /// Request: [`crate::types::ExitRequest`]. Never returns: the worker ends
    /// with that exit code, as `process.exit` does.
    Exit = code::EXIT,
    /// Request: [`crate::types::ScriptError`]. Reply: none. Reports an error
    /// that fails the worker (an uncaught exception, an unhandled rejection).
    ScriptError = code::SCRIPT_ERROR,
    /// Request: [`crate::types::SecretRequest`]. Reply:
    /// [`crate::types::SecretValue`]. One of this project's secrets.
    SecretGet = code::SECRET_GET,
    /// Request: [`crate::types::JobStartRequest`]. Reply: none. Starts a job;
    /// returns as soon as the executor has accepted it.
    JobStart = code::JOB_START,
    /// Request: [`crate::types::JobRef`]. Reply: ticket, completing with a
    /// [`crate::types::JobResult`] when the job ends.
    JobWait = code::JOB_WAIT,
    /// Request: [`crate::types::JobRef`]. Reply: none. Stops a running job
    /// (it ends ABORTED) or cancels a pending one.
    JobCancel = code::JOB_CANCEL,
    /// Request: [`crate::types::JobLogsRequest`]. Reply: ticket, completing
    /// at once with [`crate::types::JobLogs`]: the container's output kept so
    /// far (wait for the job first to read all of it).
    JobLogs = code::JOB_LOGS,
    /// Request: [`crate::types::ServiceStartRequest`]. Reply: ticket,
    /// completing with [`crate::types::ServiceReady`] once the service is
    /// ready, or failing (`failed`) when it ended or timed out first. A
    /// service is named like a job: `job.wait`, `job.cancel` (which stops
    /// it) and `job.logs` take its name.
    ServiceStart = code::SERVICE_START,
    /// Request: [`crate::types::SleepRequest`]. Reply: ticket, completing
    /// with `null` after the delay. Backs `setTimeout`.
    Sleep = code::SLEEP,
    /// Request: [`crate::types::Ticket`]. Reply: none. Forgets a ticket: its
    /// result will never be delivered. Backs `clearTimeout`.
    TicketCancel = code::TICKET_CANCEL,
    /// Request: none. Reply: [`crate::types::WaitAnyReply`]. Blocks until
    /// any outstanding ticket completes, or answers `idle` at once when none
    /// is outstanding.
    WaitAny = code::WAIT_ANY,
    /// Request: [`crate::types::WorkspacePath`]. Reply:
    /// [`crate::types::WorkspaceFile`]. Reads a file of the event's workspace.
    WorkspaceRead = code::WORKSPACE_READ,
    /// Request: [`crate::types::WorkspaceFile`]. Reply: none. Writes (creates
    /// or replaces) a file of the event's workspace.
    WorkspaceWrite = code::WORKSPACE_WRITE,
    /// Request: [`crate::types::WorkspacePath`]. Reply:
    /// [`crate::types::WorkspaceListing`]. Lists a directory of the workspace.
    WorkspaceList = code::WORKSPACE_LIST,
    /// Request: [`crate::types::WorkspacePath`]. Reply: none. Removes a file
    /// of the workspace, or a directory with everything in it.
    WorkspaceRemove = code::WORKSPACE_REMOVE,
    /// Request: none. Reply: ticket, completing with
    /// [`crate::types::ArtifactList`]: the artifacts the event's jobs saved
    /// so far.
    ArtifactList = code::ARTIFACT_LIST,
    /// Request: [`crate::types::ArtifactFileRequest`]. Reply: ticket,
    /// completing with [`crate::types::WorkspaceFile`] (its `path` the
    /// file's within the artifact): one file of an artifact, checked
    /// against its SHA-256.
    ArtifactRead = code::ARTIFACT_READ,
}

impl Op {
    /// Every operation, for tables and tests.
    pub const ALL: [Op; 20] = [
        Op::EventGet,
        Op::Log,
        Op::SummarySet,
        Op::Exit,
        Op::ScriptError,
        Op::SecretGet,
        Op::JobStart,
        Op::JobWait,
        Op::JobCancel,
        Op::JobLogs,
        Op::ServiceStart,
        Op::Sleep,
        Op::TicketCancel,
        Op::WaitAny,
        Op::WorkspaceRead,
        Op::WorkspaceWrite,
        Op::WorkspaceList,
        Op::WorkspaceRemove,
        Op::ArtifactList,
        Op::ArtifactRead,
    ];

    /// The operation with this number, if there is one.
    pub fn from_u32(value: u32) -> Option<Op> {
        Op::ALL.into_iter().find(|op| *op as u32 == value)
    }

    /// A stable name for messages and logs.
    pub fn name(self) -> &'static str {
        match self {
            Op::EventGet => "event.get",
            Op::Log => "log",
            Op::SummarySet => "summary.set",
            Op::Exit => "exit",
            Op::ScriptError => "script.error",
            Op::SecretGet => "secret.get",
            Op::JobStart => "job.start",
            Op::JobWait => "job.wait",
            Op::JobCancel => "job.cancel",
            Op::JobLogs => "job.logs",
            Op::ServiceStart => "service.start",
            Op::Sleep => "sleep",
            Op::TicketCancel => "ticket.cancel",
            Op::WaitAny => "wait_any",
            Op::WorkspaceRead => "workspace.read",
            Op::WorkspaceWrite => "workspace.write",
            Op::WorkspaceList => "workspace.list",
            Op::WorkspaceRemove => "workspace.remove",
            Op::ArtifactList => "artifact.list",
            Op::ArtifactRead => "artifact.read",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn numbers_and_names_are_unique_and_round_trip() {
        let numbers: HashSet<u32> = Op::ALL.iter().map(|op| *op as u32).collect();
        let names: HashSet<&str> = Op::ALL.iter().map(|op| op.name()).collect();
        assert_eq!(numbers.len(), Op::ALL.len());
        assert_eq!(names.len(), Op::ALL.len());
        for op in Op::ALL {
            assert_eq!(Op::from_u32(op as u32), Some(op));
        }
        assert_eq!(Op::from_u32(0), None);
    }
}
