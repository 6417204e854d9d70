//! The host side of `mizzen:host/v1`: reads a request from guest memory,
//! hands the operation to the capability that answers it
//! ([`crate::capability`]), leaves the reply (or, for what completes later,
//! a ticket).
//!
//! Every answer is decided from the worker's own state and its host, never
//! from what the guest claims: the event, the project and its secrets are
//! the worker's own.

use mizzen_host_api::abi::{self, CallResult};
use mizzen_host_api::types::{LogRequest, SecretRequest, Ticket};
use mizzen_host_api::{ErrorCode, HostError, Op};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wasmtime::{Caller, Linker};

use crate::capability::{self, Answer, Capability, outcome, timers};
use crate::limits::Limit;
use crate::wasi::memory;
use crate::worker::WorkerState;

/// A call either fails the guest's way (an error it receives) or stops the
/// worker (a trap, e.g. a limit).
pub(crate) type CallOutcome = wasmtime::Result<Result<Option<Vec<u8>>, HostError>>;

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

/// Routes a call to the capability that answers its operation.
async fn dispatch(caller: &mut Caller<'_, WorkerState>, op: Op, request: &[u8]) -> CallOutcome {
    let state = caller.data_mut();
    if let Some(stop) = state.stop_signal.raised() {
        return Err(wasmtime::Error::new(stop));
    }
    let Some(worker) = &state.worker else {
        return Ok(Err(HostError::not_configured(format!(
            "{} is not available while scripts are compiled or the plugin is initialised",
            op.name()
        ))));
    };
    match capability::owner(op) {
        Capability::Event => Ok(Ok(Some(worker.event.get()))),
        Capability::Secrets => Ok(parse::<SecretRequest>(op, request)
            .and_then(|secret| worker.secrets.get(&secret))
            .and_then(|value| reply(&value))),
        Capability::Timers => timers::call(state, op, request).await,
        Capability::Outcome => outcome::call(state, op, request),
        Capability::Log => match parse::<LogRequest>(op, request) {
            Ok(line) => {
                state.log(line).map_err(wasmtime::Error::new)?;
                Ok(Ok(None))
            }
            Err(e) => Ok(Err(e)),
        },
        Capability::Jobs | Capability::Workspace => {
            let host = worker.host.clone();
            match host.call(op, request.to_vec()).await {
                Err(stop) => Err(wasmtime::Error::new(stop)),
                Ok(Err(error)) => Ok(Err(error)),
                Ok(Ok(Answer::Now(body))) => Ok(Ok(body)),
                Ok(Ok(Answer::Later(pending))) => Ok(state
                    .tickets
                    .start(pending)
                    .and_then(|ticket| reply(&Ticket { ticket }))),
            }
        }
    }
}

/// A request's JSON as `T`, or an error naming the operation.
pub(crate) fn parse<T: DeserializeOwned>(op: Op, request: &[u8]) -> Result<T, HostError> {
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

/// `value` as a reply body.
pub(crate) fn reply<T: Serialize>(value: &T) -> Result<Option<Vec<u8>>, HostError> {
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
