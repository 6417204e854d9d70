// The operation numbers of `mizzen:host/v1`, the one place they are written.
//
// `Op` (op.rs) takes its discriminants from these constants, and the Javy
// plugin compiles this very file into itself (`include!` in
// guest-sdk/javy-plugin/src/lib.rs, listed in its build.sh inputs), so the
// host and the plugin cannot disagree. brigadier.js keeps a table of its own,
// which host-api/tests/op_codes.rs compares with `Op::ALL`, as it compares
// these names.
//
// The plugin is a wasm32 crate that depends on nothing from host-api, so this
// file must stay plain constants: no `use`, no attributes, no inner doc
// comments (`include!` refuses them).

/// `event.get`: the worker's event.
pub const EVENT_GET: u32 = 1;
/// `log`: a line of the worker's log.
pub const LOG: u32 = 2;
/// `summary.set`: the event's summary.
pub const SUMMARY_SET: u32 = 3;
/// `exit`: ends the worker with an exit code.
pub const EXIT: u32 = 4;
/// `script.error`: an error that fails the worker.
pub const SCRIPT_ERROR: u32 = 5;
/// `secret.get`: one of the project's secrets.
pub const SECRET_GET: u32 = 6;
/// `job.start`: starts a job.
pub const JOB_START: u32 = 10;
/// `job.wait`: a ticket for a job's end.
pub const JOB_WAIT: u32 = 11;
/// `job.cancel`: stops a job.
pub const JOB_CANCEL: u32 = 12;
/// `job.logs`: a ticket for a job's output.
pub const JOB_LOGS: u32 = 13;
/// `service.start`: starts a service of the event; a ticket for its readiness.
pub const SERVICE_START: u32 = 14;
/// `sleep`: a ticket that completes after a delay.
pub const SLEEP: u32 = 20;
/// `ticket.cancel`: forgets a ticket.
pub const TICKET_CANCEL: u32 = 21;
/// `wait_any`: blocks until a ticket completes.
pub const WAIT_ANY: u32 = 30;
/// `workspace.read`: reads a workspace file.
pub const WORKSPACE_READ: u32 = 40;
/// `workspace.write`: writes a workspace file.
pub const WORKSPACE_WRITE: u32 = 41;
/// `workspace.list`: lists a workspace directory.
pub const WORKSPACE_LIST: u32 = 42;
/// `workspace.remove`: removes a workspace file, or a directory with everything in it.
pub const WORKSPACE_REMOVE: u32 = 43;
/// `artifact.list`: a ticket for the artifacts the event's jobs saved so far.
pub const ARTIFACT_LIST: u32 = 50;
/// `artifact.read`: a ticket for a file of one of the event's artifacts.
pub const ARTIFACT_READ: u32 = 51;
