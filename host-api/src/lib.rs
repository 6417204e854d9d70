//! The contract between the Mizzen host and the guests it runs.
//!
//! A guest is a core WebAssembly module (wasm32-wasip1): the Javy plugin that
//! runs Brigade scripts, or a program written in any language that targets
//! wasm32-wasip1. It reaches the host through one import namespace,
//! [`abi::IMPORT_MODULE`], holding two functions:
//!
//! - `call(op, req_ptr, req_len) -> i64` performs the operation `op` (an
//!   [`Op`]) with a JSON request read from guest memory, and leaves a JSON
//!   reply with the host. The result packs a status and the reply length
//!   ([`abi::CallResult`]).
//! - `take_reply(buf_ptr, buf_len) -> i32` copies that reply into guest memory.
//!
//! Everything that crosses the boundary is JSON: the request and reply types
//! are in [`types`], the error codes in [`ErrorCode`]. Operations that take
//! time (waiting for a job, reading its logs, a timer) return a ticket at
//! once; the guest then blocks in [`Op::WaitAny`] until any ticket completes.
//! That is how JavaScript promises and Rust futures run several jobs at once
//! on one guest thread.
//!
//! docs/host-api.md describes the whole contract for guest authors, in any
//! language; `tests/host_api_doc.rs` keeps it in step with this crate, and
//! `tests/op_codes.rs` keeps brigadier.js and the Javy plugin in step with
//! [`Op`].
//!
//! The host decides everything from its own per-worker state: which event,
//! which project, which secrets. Nothing a guest sends can name another
//! tenant's data. A capability the host has not configured for a worker
//! answers with [`ErrorCode::NotConfigured`], never with a fake success.
//!
//! # Layout
//! - [`abi`]: the import names, the call result encoding, the version.
//! - [`Op`]: the operations and which request and reply each takes; their
//!   numbers are in `op_codes.rs`, the one place they are written.
//! - [`types`]: the JSON shapes (event, job spec, job result, log record...).
//! - [`ErrorCode`], [`HostError`]: how a call fails.

pub mod abi;
mod error;
mod op;
/// The operation numbers as plain constants, which [`Op`] takes its
/// discriminants from and the Javy plugin compiles into itself.
mod op_codes;
pub mod types;

pub use error::{ErrorCode, HostError};
pub use op::Op;
