/// The operations a guest can ask of the host. The numbers are part of the
/// ABI; each variant documents its request and its reply (types in
/// [`crate::types`]). "Ticket" means the reply is a [`crate::types::Ticket`]
/// and the real result arrives later through [`Op::WaitAny`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Op {
    /// Request: none. Reply: [`crate::types::Event`], the event this worker
    /// handles, with its project's secrets.
    EventGet = 1,
    /// Request: [`crate::types::LogRequest`]. Reply: none. Adds a line to the
    /// worker's log; the host timestamps it, filters it by the worker's log
    /// level and counts it against the log limit.
    Log = 2,
    /// Request: [`crate::types::SummaryRequest`]. Reply: none. Sets the
    /// event's summary (at most [`crate::types::SUMMARY_MAX_CHARS`]).
    SummarySet = 3,
    /// Request: [`crate::types::ExitRequest`]. Never returns: the worker ends
    /// with that exit code, as `process.exit` does.
    Exit = 4,
    /// Request: [`crate::types::ScriptError`]. Reply: none. Reports an error
    /// that fails the worker (an uncaught exception, an unhandled rejection).
    ScriptError = 5,
    /// Request: [`crate::types::SecretRequest`]. Reply:
    /// [`crate::types::SecretValue`]. One of this project's secrets.
    SecretGet = 6,
    /// Request: [`crate::types::JobStartRequest`]. Reply: none. Starts a job;
    /// returns as soon as the executor has accepted it.
    JobStart = 10,
    /// Request: [`crate::types::JobRef`]. Reply: ticket, completing with a
    /// [`crate::types::JobResult`] when the job ends.
    JobWait = 11,
    /// Request: [`crate::types::JobRef`]. Reply: none. Stops a running job
    /// (it ends ABORTED) or cancels a pending one.
    JobCancel = 12,
    /// Request: [`crate::types::JobLogsRequest`]. Reply: ticket, completing
    /// with [`crate::types::JobLogs`] once the job has ended.
    JobLogs = 13,
    /// Request: [`crate::types::SleepRequest`]. Reply: ticket, completing
    /// with `null` after the delay. Backs `setTimeout`.
    Sleep = 20,
    /// Request: [`crate::types::Ticket`]. Reply: none. Forgets a ticket: its
    /// result will never be delivered. Backs `clearTimeout`.
    TicketCancel = 21,
    /// Request: none. Reply: [`crate::types::WaitAnyReply`]. Blocks until
    /// any outstanding ticket completes, or answers `idle` at once when none
    /// is outstanding.
    WaitAny = 30,
    /// Request: [`crate::types::WorkspacePath`]. Reply:
    /// [`crate::types::WorkspaceFile`]. Reads a file of the event's workspace.
    WorkspaceRead = 40,
    /// Request: [`crate::types::WorkspaceFile`]. Reply: none. Writes (creates
    /// or replaces) a file of the event's workspace.
    WorkspaceWrite = 41,
    /// Request: [`crate::types::WorkspacePath`]. Reply:
    /// [`crate::types::WorkspaceListing`]. Lists a directory of the workspace.
    WorkspaceList = 42,
    /// Request: [`crate::types::WorkspacePath`]. Reply: none. Removes a file
    /// or an empty directory of the workspace.
    WorkspaceRemove = 43,
}

impl Op {
    /// Every operation, for tables and tests.
    pub const ALL: [Op; 17] = [
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
        Op::Sleep,
        Op::TicketCancel,
        Op::WaitAny,
        Op::WorkspaceRead,
        Op::WorkspaceWrite,
        Op::WorkspaceList,
        Op::WorkspaceRemove,
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
            Op::Sleep => "sleep",
            Op::TicketCancel => "ticket.cancel",
            Op::WaitAny => "wait_any",
            Op::WorkspaceRead => "workspace.read",
            Op::WorkspaceWrite => "workspace.write",
            Op::WorkspaceList => "workspace.list",
            Op::WorkspaceRemove => "workspace.remove",
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
