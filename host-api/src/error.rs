use serde::{Deserialize, Serialize};

/// Why a host call failed. The numeric values are part of the ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[repr(u32)]
pub enum ErrorCode {
    /// The request was not valid JSON, or not of the operation's shape, or a
    /// value broke a rule (a job name, a mount path...). The message names the
    /// field.
    InvalidRequest = 1,
    /// The capability is not configured for this worker (no job executor, no
    /// workspace...). The message says what would configure it.
    NotConfigured = 2,
    /// The named thing (job, secret, ticket, file) does not exist for this
    /// worker.
    NotFound = 3,
    /// The request conflicts with the worker's state (a job name used twice,
    /// a job run twice).
    Conflict = 4,
    /// The project's policy forbids it (privileged containers without
    /// `jobPolicies.allowPrivileged`...). The message names the policy.
    PermissionDenied = 5,
    /// A limit was reached (request size, concurrent jobs...). The message
    /// names the limit and its value.
    LimitExceeded = 6,
    /// A backend (container engine, cluster) failed or could not be reached.
    Unavailable = 7,
    /// The operation was cancelled before it completed.
    Cancelled = 8,
    /// The op code is not known to this host.
    UnknownOperation = 9,
    /// A bug in the host. The message says what went wrong.
    Internal = 10,
    /// A service ended, failed or timed out before it was ready (or one it
    /// comes after did). The message names the service and why.
    NotReady = 11,
}

impl ErrorCode {
    /// The code for a status number, if it is one.
    pub fn from_u32(value: u32) -> Option<Self> {
        use ErrorCode::*;
        Some(match value {
            1 => InvalidRequest,
            2 => NotConfigured,
            3 => NotFound,
            4 => Conflict,
            5 => PermissionDenied,
            6 => LimitExceeded,
            7 => Unavailable,
            8 => Cancelled,
            9 => UnknownOperation,
            10 => Internal,
            11 => NotReady,
            _ => return None,
        })
    }
}

/// A failed call, as the guest receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct HostError {
    /// The kind of failure.
    pub code: ErrorCode,
    /// What was wrong and where, for a person to read.
    pub message: String,
}

impl HostError {
    /// A failure with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Shorthand for [`ErrorCode::InvalidRequest`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// Shorthand for [`ErrorCode::NotConfigured`].
    pub fn not_configured(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotConfigured, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_its_number() {
        for n in 0..20 {
            if let Some(code) = ErrorCode::from_u32(n) {
                assert_eq!(code as u32, n);
            }
        }
        assert_eq!(ErrorCode::from_u32(0), None);
    }

    #[test]
    fn errors_serialise_with_snake_case_codes() {
        let e = HostError::not_configured("no job executor");
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":"not_configured","message":"no job executor"}"#
        );
    }
}
