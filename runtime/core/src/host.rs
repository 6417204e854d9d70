//! The host side of `mizzen:host/v1`: reads a request from guest memory,
//! performs the operation against the worker's own state, leaves the reply.
//!
//! Every answer is decided from [`WorkerState`], never from what the guest
//! claims: the event, the project and its secrets are the worker's own.

use std::time::Duration;

use mizzen_host_api::abi::{self, CallResult};
use mizzen_host_api::types::{
    ExitRequest, JobLogsRequest, JobRef, LogRequest, ScriptError, SecretRequest, SecretValue,
    SleepRequest, SummaryRequest, Ticket, WorkspaceFile, WorkspacePath,
};
use mizzen_host_api::{ErrorCode, HostError, Op};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasmtime::{Caller, Linker};

use crate::limits::Limit;
use crate::wasi::memory;
use crate::worker::{Stop, WorkerState};

/// A call either fails the guest's way (an error it receives) or stops the
/// worker (a trap, e.g. a limit).
type CallOutcome = wasmtime::Result<Result<Option<Vec<u8>>, HostError>>;

/// Adds `call` and `take_reply` to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<WorkerState>) -> wasmtime::Result<()> {
    linker.func_wrap_async(
        abi::IMPORT_MODULE,
        abi::CALL,
        |mut caller: Caller<'_, WorkerState>, (op, ptr, len): (u32, u32, u32)| {
            Box::new(async move { call(&mut caller, op, ptr, len).await })
        },
    )?;
    linker.func_wrap(
        abi::IMPORT_MODULE,
        abi::TAKE_REPLY,
        |mut caller: Caller<'_, WorkerState>, ptr: u32, len: u32| -> wasmtime::Result<i32> {
            let Some(reply) = caller.data_mut().reply.take() else {
                return Ok(-1);
            };
            if reply.len() > len as usize {
                caller.data_mut().reply = Some(reply);
                return Ok(-1);
            }
            let memory = memory(&mut caller)?;
            match memory
                .data_mut(&mut caller)
                .get_mut(ptr as usize..ptr as usize + reply.len())
            {
                Some(target) => {
                    target.copy_from_slice(&reply);
                    Ok(reply.len() as i32)
                }
                None => Ok(-1),
            }
        },
    )?;
    Ok(())
}

async fn call(
    caller: &mut Caller<'_, WorkerState>,
    op: u32,
    ptr: u32,
    len: u32,
) -> wasmtime::Result<i64> {
    let outcome = match read_request(caller, ptr, len)? {
        Err(error) => Ok(Err(error)),
        Ok(request) => match Op::from_u32(op) {
            Some(op) => dispatch(caller, op, &request).await,
            None => Ok(Err(HostError::new(
                ErrorCode::UnknownOperation,
                format!(
                    "operation {op} is not part of {} (version {})",
                    abi::IMPORT_MODULE,
                    abi::VERSION
                ),
            ))),
        },
    }?;
    let state = caller.data_mut();
    let result = match outcome {
        Ok(None) => {
            state.reply = None;
            CallResult {
                error: None,
                reply_len: 0,
            }
        }
        Ok(Some(reply)) => {
            let reply_len = reply.len() as u32;
            state.reply = Some(reply);
            CallResult {
                error: None,
                reply_len,
            }
        }
        Err(error) => {
            let reply = serde_json::to_vec(&error).expect("errors serialise");
            let reply_len = reply.len() as u32;
            state.reply = Some(reply);
            CallResult {
                error: Some(error.code),
                reply_len,
            }
        }
    };
    Ok(result.encode())
}

/// Copies the request out of guest memory, within the request size limit.
fn read_request(
    caller: &mut Caller<'_, WorkerState>,
    ptr: u32,
    len: u32,
) -> wasmtime::Result<Result<Vec<u8>, HostError>> {
    let limit = caller.data().limits.request_bytes;
    if len > limit {
        return Ok(Err(HostError::new(
            ErrorCode::LimitExceeded,
            format!(
                "a request of {len} bytes exceeds the limit of {limit} bytes per host call ({})",
                Limit::RequestSize.project_field()
            ),
        )));
    }
    let memory = memory(caller)?;
    Ok(memory
        .data(&*caller)
        .get(ptr as usize..ptr as usize + len as usize)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            HostError::invalid(format!(
                "the request at {ptr}+{len} lies outside the guest's memory"
            ))
        }))
}

async fn dispatch(caller: &mut Caller<'_, WorkerState>, op: Op, request: &[u8]) -> CallOutcome {
    let state = caller.data_mut();
    let Some(context) = &state.context else {
        return Ok(Err(HostError::not_configured(format!(
            "{} is not available while scripts are compiled or the plugin is initialised",
            op.name()
        ))));
    };
    Ok(match op {
        Op::EventGet => Ok(Some(context.event_json.clone())),
        Op::Log => match parse::<LogRequest>(op, request) {
            Ok(log) => {
                state.log(log).map_err(wasmtime::Error::new)?;
                Ok(None)
            }
            Err(e) => Err(e),
        },
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
            state.summary = Some(summary.text);
            Ok(None)
        }),
        Op::Exit => match parse::<ExitRequest>(op, request) {
            Ok(exit) => {
                state.exit_code = Some(exit.code);
                return Err(wasmtime::Error::new(Stop::Exit(exit.code)));
            }
            Err(e) => Err(e),
        },
        Op::ScriptError => match parse::<ScriptError>(op, request) {
            Ok(error) => {
                state.report_error(error).map_err(wasmtime::Error::new)?;
                Ok(None)
            }
            Err(e) => Err(e),
        },
        Op::SecretGet => parse::<SecretRequest>(op, request).and_then(|secret| {
            let project = &context.event.project;
            match project.secrets.get(&secret.key) {
                Some(_) if !project.script_may_read(&secret.key) => Err(HostError::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "project \"{}\" does not let its script read secret \"{}\" (spec.workerTemplate.scriptSecrets); a job can still have it: environment: {{ NAME: \"${{{{ secrets.{} }}}}\" }}",
                        project.id, secret.key, secret.key
                    ),
                )),
                Some(value) => reply(&SecretValue { value: value.clone() }),
                None => Err(HostError::new(
                    ErrorCode::NotFound,
                    format!("project \"{}\" has no secret \"{}\"", context.event.project.id, secret.key),
                )),
            }
        }),
        Op::JobStart | Op::JobWait | Op::JobCancel | Op::JobLogs => {
            let Some(jobs) = state.jobs.as_mut() else {
                return Ok(Err(HostError::not_configured("this instance runs no jobs")));
            };
            match op {
                Op::JobStart => jobs.start(request).await.map(|()| None),
                Op::JobWait => parse::<JobRef>(op, request)
                    .and_then(|job| jobs.running(&job.name))
                    .and_then(|running| {
                        let ticket = state.tickets.start(async move {
                            serde_json::to_value(running.wait().await).map_err(|e| {
                                HostError::new(ErrorCode::Internal, format!("a job result could not be encoded: {e}"))
                            })
                        })?;
                        reply(&Ticket { ticket })
                    }),
                Op::JobCancel => match parse::<JobRef>(op, request).and_then(|job| jobs.running(&job.name)) {
                    Ok(running) => {
                        running.cancel().await;
                        Ok(None)
                    }
                    Err(e) => Err(e),
                },
                _ => parse::<JobLogsRequest>(op, request)
                    .and_then(|logs| jobs.logs(&logs.name, logs.container.as_deref()))
                    .and_then(|logs| {
                        let logs = serde_json::to_value(logs).expect("logs serialise");
                        let ticket = state.tickets.start(async move { Ok(logs) })?;
                        reply(&Ticket { ticket })
                    }),
            }
        }
        Op::Sleep => parse::<SleepRequest>(op, request).and_then(|sleep| {
            let wall = state.limits.wall_time;
            let delay = if sleep.ms.is_finite() && sleep.ms > 0.0 {
                Duration::try_from_secs_f64(sleep.ms / 1000.0).unwrap_or(wall).min(wall)
            } else {
                Duration::ZERO
            };
            let ticket = state.tickets.sleep(delay)?;
            reply(&Ticket { ticket })
        }),
        Op::TicketCancel => parse::<Ticket>(op, request).map(|ticket| {
            state.tickets.cancel(ticket.ticket);
            None
        }),
        Op::WaitAny => {
            if let Some(cpu) = &mut state.cpu {
                cpu.blocked();
            }
            let deadline = tokio::time::Instant::from_std(state.deadline);
            match tokio::time::timeout_at(deadline, state.tickets.wait_any()).await {
                Ok(next) => reply(&next),
                Err(_) => return Err(wasmtime::Error::new(Stop::WallTime)),
            }
        }
        Op::WorkspaceRead | Op::WorkspaceWrite | Op::WorkspaceList | Op::WorkspaceRemove => {
            let Some(jobs) = state.jobs.as_mut() else {
                return Ok(Err(HostError::not_configured("this instance has no workspace")));
            };
            match jobs.workspace().await {
                Err(e) => Err(e),
                Ok(workspace) => match op {
                    Op::WorkspaceRead => parse::<WorkspacePath>(op, request)
                        .and_then(|path| workspace.read(&path))
                        .and_then(|file| reply(&file)),
                    Op::WorkspaceWrite => parse::<WorkspaceFile>(op, request)
                        .and_then(|file| workspace.write(&file))
                        .map(|()| None),
                    Op::WorkspaceList => parse::<WorkspacePath>(op, request)
                        .and_then(|path| workspace.list(&path))
                        .and_then(|listing| reply(&listing)),
                    _ => parse::<WorkspacePath>(op, request)
                        .and_then(|path| workspace.remove(&path))
                        .map(|()| None),
                },
            }
        }
    })
}

fn parse<T: DeserializeOwned>(op: Op, request: &[u8]) -> Result<T, HostError> {
    serde_json::from_slice(request).or_else(|e| {
        // JavaScript strings may hold lone surrogates (text cut inside a
        // pair, by the script or the SDK's own line cut); JSON.stringify
        // escapes them, and Rust strings cannot hold them.
        let mended = mend_lone_surrogates(request)
            .ok_or_else(|| HostError::invalid(format!("invalid {} request: {e}", op.name())))?;
        serde_json::from_slice(&mended)
            .map_err(|e| HostError::invalid(format!("invalid {} request: {e}", op.name())))
    })
}

/// `request` with each `\uXXXX` escape of a surrogate that has no partner
/// replaced by `\ufffd`, the replacement character; `None` when it has none.
fn mend_lone_surrogates(request: &[u8]) -> Option<Vec<u8>> {
    let escape_at = |at: usize| -> Option<u16> {
        let digits = request.get(at..at + 6)?;
        if digits[0] != b'\\' || digits[1] != b'u' {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(&digits[2..]).ok()?, 16).ok()
    };
    let mut mended = Vec::with_capacity(request.len());
    let (mut at, mut changed) = (0, false);
    while at < request.len() {
        if request[at] == b'\\' && request.get(at + 1) == Some(&b'\\') {
            // An escaped backslash: what follows is text, not an escape.
            mended.extend_from_slice(&request[at..at + 2]);
            at += 2;
            continue;
        }
        match escape_at(at) {
            Some(0xd800..=0xdbff) if matches!(escape_at(at + 6), Some(0xdc00..=0xdfff)) => {
                mended.extend_from_slice(&request[at..at + 12]);
                at += 12;
            }
            Some(0xd800..=0xdfff) => {
                mended.extend_from_slice(b"\\ufffd");
                changed = true;
                at += 6;
            }
            _ => {
                mended.push(request[at]);
                at += 1;
            }
        }
    }
    changed.then_some(mended)
}

fn reply<T: Serialize>(value: &T) -> Result<Option<Vec<u8>>, HostError> {
    serde_json::to_vec(value).map(Some).map_err(|e| {
        HostError::new(
            ErrorCode::Internal,
            format!("the reply could not be encoded: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lone_surrogates_become_replacement_characters_and_pairs_stay() {
        let mended =
            mend_lone_surrogates(br#"{"m":"a\ud800b\ud83d\ude80c\\ud800\udfff"}"#).unwrap();
        assert_eq!(
            std::str::from_utf8(&mended).unwrap(),
            r#"{"m":"a\ufffdb\ud83d\ude80c\\ud800\ufffd"}"#
        );
        let value: serde_json::Value = serde_json::from_slice(&mended).unwrap();
        assert_eq!(value["m"], "a\u{fffd}b\u{1f680}c\\ud800\u{fffd}");
        assert_eq!(mend_lone_surrogates(br#"{"m":"fine \ud83d\ude80"}"#), None);
    }
}
