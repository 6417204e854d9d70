//! The two imports of `mizzen:host/v1` and the JSON around them
//! (docs/host-api.md, "The imports").
//!
//! Natively (for the crate's own unit tests) the imports are replaced by a
//! fake host that a test installs for its thread.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The host's operation numbers: host-api's own file, compiled in here (as the
/// Javy plugin does), so that the SDK cannot disagree with the host.
#[allow(
    dead_code,
    reason = "the SDK calls most operations, not necessarily all"
)]
pub(crate) mod op {
    include!("../../../host-api/src/op_codes.rs");
}

/// A failed call: the host's error object, `{"code": ..., "message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct HostError {
    pub code: String,
    pub message: String,
}

impl HostError {
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self {
            code: "internal".into(),
            message: message.into(),
        }
    }
}

/// The error codes by status number (docs/host-api.md, "Errors"), for a
/// failure whose reply cannot be read.
fn code_name(status: u32) -> &'static str {
    match status {
        1 => "invalid_request",
        2 => "not_configured",
        3 => "not_found",
        4 => "conflict",
        5 => "permission_denied",
        6 => "limit_exceeded",
        7 => "unavailable",
        8 => "cancelled",
        9 => "unknown_operation",
        11 => "not_ready",
        // 10, and any status the contract does not list.
        _ => "internal",
    }
}

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "mizzen:host/v1")]
    unsafe extern "C" {
        pub fn call(op: u32, request_ptr: *const u8, request_len: usize) -> i64;
        pub fn take_reply(buffer_ptr: *mut u8, buffer_len: usize) -> i32;
    }
}

/// Performs operation `op` with `request` (empty for none): the status (0 for
/// success) and the reply (empty for none).
#[cfg(target_arch = "wasm32")]
fn raw_call(op: u32, request: &[u8]) -> (u32, Vec<u8>) {
    // SAFETY: the host reads `request.len()` bytes at `request.as_ptr()`,
    // which `request` owns for the duration of the call.
    let result = unsafe { imports::call(op, request.as_ptr(), request.len()) };
    let status = (result >> 32) as u32;
    let len = result as u32 as usize;
    let mut reply = vec![0u8; len];
    if len > 0 {
        // SAFETY: `reply` has room for exactly `len` bytes.
        let copied = unsafe { imports::take_reply(reply.as_mut_ptr(), len) };
        if copied < 0 || copied as usize != len {
            let error = br#"{"code":"internal","message":"the host's reply could not be read"}"#;
            return (10, error.to_vec());
        }
    }
    (status, reply)
}

#[cfg(not(target_arch = "wasm32"))]
fn raw_call(op: u32, request: &[u8]) -> (u32, Vec<u8>) {
    fake::call(op, request)
}

/// A host for native unit tests: a function of the operation and the request
/// that answers `Ok(reply)` or `Err((status, error JSON))`.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod fake {
    use std::cell::RefCell;

    type Host = Box<dyn FnMut(u32, &str) -> Result<String, (u32, String)>>;

    thread_local! {
        static HOST: RefCell<Option<Host>> = const { RefCell::new(None) };
    }

    /// Installs `host` for this thread's calls.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn install(host: impl FnMut(u32, &str) -> Result<String, (u32, String)> + 'static) {
        HOST.with(|cell| *cell.borrow_mut() = Some(Box::new(host)));
    }

    pub(super) fn call(op: u32, request: &[u8]) -> (u32, Vec<u8>) {
        let request = String::from_utf8_lossy(request).into_owned();
        HOST.with(|cell| {
            let mut host = cell.borrow_mut();
            let host = host
                .as_mut()
                .expect("a test installs a fake host before it calls the host");
            match host(op, &request) {
                Ok(reply) => (0, reply.into_bytes()),
                Err((status, error)) => (status, error.into_bytes()),
            }
        })
    }
}

/// Performs `op` with an already encoded request: `Ok` with the reply (empty
/// when there is none) or the host's error.
pub(crate) fn call_json(op: u32, request: &str) -> Result<String, HostError> {
    let (status, reply) = raw_call(op, request.as_bytes());
    let reply = match String::from_utf8(reply) {
        Ok(reply) => reply,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    if status == 0 {
        return Ok(reply);
    }
    // A status the contract does not list is a failure too, never success.
    Err(
        serde_json::from_str::<HostError>(&reply).unwrap_or_else(|_| HostError {
            code: code_name(status).into(),
            message: if reply.is_empty() {
                format!("the host answered status {status} without an error")
            } else {
                reply
            },
        }),
    )
}

/// Performs `op` with `request` encoded as JSON and decodes the reply.
pub(crate) fn call<R: DeserializeOwned>(op: u32, request: &impl Serialize) -> Result<R, HostError> {
    let reply = call_json(op, &encode(request)?)?;
    serde_json::from_str(&reply).map_err(|e| {
        HostError::internal(format!(
            "the host's reply to operation {op} could not be read: {e}"
        ))
    })
}

/// Performs an operation without a reply.
pub(crate) fn call_unit(op: u32, request: &impl Serialize) -> Result<(), HostError> {
    call_json(op, &encode(request)?).map(drop)
}

fn encode(request: &impl Serialize) -> Result<String, HostError> {
    serde_json::to_string(request)
        .map_err(|e| HostError::internal(format!("the request could not be encoded: {e}")))
}

/// Reports an error that fails the worker (`script.error`). Returns whether
/// the host took it.
pub(crate) fn report_script_error(message: &str) -> bool {
    #[derive(Serialize)]
    struct ScriptError<'a> {
        kind: &'static str,
        message: &'a str,
    }
    call_unit(
        op::SCRIPT_ERROR,
        &ScriptError {
            kind: "uncaught",
            message,
        },
    )
    .is_ok()
}
