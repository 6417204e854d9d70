//! Names and encodings of the host imports.
//!
//! ```text
//! (import "mizzen:host/v1" "call"       (func (param i32 i32 i32) (result i64)))
//! (import "mizzen:host/v1" "take_reply" (func (param i32 i32) (result i32)))
//! ```

use crate::ErrorCode;

/// Version of this contract. A change that breaks guests bumps it, and with it
/// the import module name, so an old guest fails to link with a clear message
/// instead of misbehaving.
pub const VERSION: u32 = 1;

/// The import module of every host function.
pub const IMPORT_MODULE: &str = "mizzen:host/v1";

/// `call(op: i32, req_ptr: i32, req_len: i32) -> i64`.
pub const CALL: &str = "call";

/// `take_reply(buf_ptr: i32, buf_len: i32) -> i32`: copies the reply left by the
/// last `call` into `buf` and forgets it. Returns the number of bytes copied,
/// or -1 when there is no reply or `buf_len` is smaller than the reply.
pub const TAKE_REPLY: &str = "take_reply";

/// The result of `call`: the status in the high 32 bits (0 for success, an
/// [`ErrorCode`] otherwise) and the length of the reply in the low 32 bits.
/// On failure the reply is a JSON [`crate::HostError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallResult {
    /// `None` for success.
    pub error: Option<ErrorCode>,
    /// Bytes waiting to be taken with `take_reply`.
    pub reply_len: u32,
}

impl CallResult {
    /// Packs the result into the `i64` that `call` returns.
    pub fn encode(self) -> i64 {
        let status = self.error.map_or(0, |code| code as u32);
        (i64::from(status) << 32) | i64::from(self.reply_len)
    }

    /// Unpacks the `i64` that `call` returned. An unknown status decodes as
    /// [`ErrorCode::Internal`] so that a newer host never looks like success
    /// to an older guest.
    pub fn decode(raw: i64) -> Self {
        let status = (raw >> 32) as u32;
        let reply_len = raw as u32;
        let error =
            (status != 0).then(|| ErrorCode::from_u32(status).unwrap_or(ErrorCode::Internal));
        Self { error, reply_len }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_results_round_trip() {
        for result in [
            CallResult {
                error: None,
                reply_len: 0,
            },
            CallResult {
                error: None,
                reply_len: u32::MAX,
            },
            CallResult {
                error: Some(ErrorCode::NotConfigured),
                reply_len: 77,
            },
        ] {
            assert_eq!(CallResult::decode(result.encode()), result);
        }
    }

    #[test]
    fn an_unknown_status_is_never_success() {
        let raw = (999_i64 << 32) | 3;
        assert_eq!(CallResult::decode(raw).error, Some(ErrorCode::Internal));
    }
}
