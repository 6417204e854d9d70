//! How the worker ends, as its script says it: `summary.set`, `exit`
//! (`process.exit`) and `script.error` (an uncaught exception or an
//! unhandled rejection, which fails the worker). Held by the sandbox: the
//! outcome is decided where the script runs; a script error's line goes to
//! the worker's log like any other.

use mizzen_host_api::types::{ExitRequest, LogLevel, LogRequest, ScriptError, SummaryRequest};
use mizzen_host_api::{ErrorCode, HostError, Op};

use crate::host::{CallOutcome, parse};
use crate::limits::Limit;
use crate::worker::{Stop, WorkerState};

/// The operations this capability answers.
pub const OPS: &[Op] = &[Op::SummarySet, Op::Exit, Op::ScriptError];

/// Script errors kept per worker: the first decides the failure, the rest are
/// logged; a script that reports errors in a loop must not grow host memory.
const MAX_SCRIPT_ERRORS: usize = 16;

/// What the script said of its end.
#[derive(Default)]
pub(crate) struct ScriptOutcome {
    pub summary: Option<String>,
    pub errors: Vec<ScriptError>,
    pub exit_code: Option<i32>,
}

/// Answers one of [`OPS`].
pub(crate) fn call(state: &mut WorkerState, op: Op, request: &[u8]) -> CallOutcome {
    Ok(match op {
        Op::SummarySet => parse::<SummaryRequest>(op, request).and_then(|summary| {
            let chars = summary.text.chars().count() as u64;
            let limit = state.limits.summary_chars;
            if chars > limit {
                return Err(HostError::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "a summary of {chars} characters exceeds the limit of {limit} characters ({})",
                        Limit::SummaryLength.project_field()
                    ),
                ));
            }
            state.outcome.summary = Some(summary.text);
            Ok(None)
        }),
        Op::Exit => match parse::<ExitRequest>(op, request) {
            Ok(exit) => {
                state.outcome.exit_code = Some(exit.code);
                return Err(wasmtime::Error::new(Stop::Exit(exit.code)));
            }
            Err(e) => Err(e),
        },
        _ => match parse::<ScriptError>(op, request) {
            Ok(error) => {
                report_error(state, error).map_err(wasmtime::Error::new)?;
                Ok(None)
            }
            Err(e) => Err(e),
        },
    })
}

/// Records an error that fails the worker, and logs it, its positions
/// mapped back to the script's source.
fn report_error(state: &mut WorkerState, mut error: ScriptError) -> Result<(), Stop> {
    if let Some(worker) = &state.worker {
        error.message = worker.script.source_positions(&error.message);
        error.stack = error
            .stack
            .map(|stack| worker.script.source_positions(&stack));
    }
    let mut line = error.message.clone();
    if let Some(stack) = error
        .stack
        .as_deref()
        .map(str::trim_end)
        .filter(|s| !s.is_empty())
    {
        line.push('\n');
        line.push_str(stack);
    }
    if state.outcome.errors.len() < MAX_SCRIPT_ERRORS {
        state.outcome.errors.push(error);
    }
    state.log(LogRequest {
        level: LogLevel::Error,
        message: line,
        job: None,
        console: false,
    })
}
