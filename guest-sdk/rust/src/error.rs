//! The SDK's one error type.

use std::fmt;
use std::panic::Location;

use crate::host::HostError;
use crate::job::Phase;

/// `Result` with [`Error`] as its error, what handlers and most SDK functions
/// return.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error: one the host answered (with its [`code`](Error::code)), a job
/// that did not succeed (with its [`phase`](Error::phase) and
/// [`exit_code`](Error::exit_code)), or one the script made.
///
/// `Display` is the message alone, as brigadier.js's `error.message`:
/// `Job "test" failed`, `Job "test" timed out`, or the host's message. The
/// location where the error arose in the script (when known) is kept apart
/// and leads the message when the error fails the worker:
/// `src/main.rs:12:5: Job "test" failed`.
///
/// Common errors convert with `?` (`serde_json::Error`, parse errors,
/// `String`, `&str`, boxed errors); [`Error::new`] makes one from any message.
pub struct Error(Box<Inner>);

// Boxed, so that a `Result` is small whatever the error holds.
struct Inner {
    message: String,
    code: Option<String>,
    job: Option<JobFailure>,
    location: Option<&'static Location<'static>>,
}

/// How a job ended when it did not succeed.
#[derive(Debug, Clone)]
struct JobFailure {
    name: String,
    phase: Phase,
    exit_code: Option<i64>,
    reason: Option<String>,
}

impl Error {
    /// An error with this message, located where it is made.
    #[track_caller]
    pub fn new(message: impl fmt::Display) -> Self {
        Self(Box::new(Inner {
            message: message.to_string(),
            code: None,
            job: None,
            location: Some(Location::caller()),
        }))
    }

    /// The host's error code, for an error the host answered:
    /// `invalid_request`, `not_configured`, `not_found`, `conflict`,
    /// `permission_denied`, `limit_exceeded`, `unavailable`, `cancelled`,
    /// `unknown_operation`, `internal` or `not_ready` (a service that was not
    /// ready: [`Service::start`](crate::Service::start)) (docs/host-api.md,
    /// "Errors").
    pub fn code(&self) -> Option<&str> {
        self.0.code.as_deref()
    }

    /// The message, without the location (the same as `to_string()`).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// For a job that did not succeed: the phase it ended in.
    pub fn phase(&self) -> Option<Phase> {
        self.0.job.as_ref().map(|job| job.phase)
    }

    /// For a job that did not succeed: its primary container's exit code,
    /// when it exited.
    pub fn exit_code(&self) -> Option<i64> {
        self.0.job.as_ref().and_then(|job| job.exit_code)
    }

    /// For a job that did not succeed: why, when the phase does not say (a
    /// failed pull, the timeout).
    pub fn reason(&self) -> Option<&str> {
        self.0.job.as_ref().and_then(|job| job.reason.as_deref())
    }

    /// For a job that did not succeed: its name.
    pub fn job_name(&self) -> Option<&str> {
        self.0.job.as_ref().map(|job| job.name.as_str())
    }

    /// Where in the script the error arose, when known.
    pub fn location(&self) -> Option<&'static Location<'static>> {
        self.0.location
    }

    /// The message led by the location, as it is reported when the error
    /// fails the worker: `src/main.rs:12:5: boom`.
    pub fn report(&self) -> String {
        match self.0.location {
            Some(at) => format!(
                "{}:{}:{}: {}",
                at.file(),
                at.line(),
                at.column(),
                self.0.message
            ),
            None => self.0.message.clone(),
        }
    }

    /// An error the host answered.
    pub(crate) fn host(error: HostError, location: Option<&'static Location<'static>>) -> Self {
        Self(Box::new(Inner {
            message: error.message,
            code: Some(error.code),
            job: None,
            location,
        }))
    }

    /// A job that ended in `phase`, with brigadier.js's message for it.
    pub(crate) fn job(
        name: &str,
        phase: Phase,
        exit_code: Option<i64>,
        reason: Option<String>,
    ) -> Self {
        Self(Box::new(Inner {
            message: format!("Job \"{name}\" {}", phase_error(phase)),
            code: None,
            job: Some(JobFailure {
                name: name.to_string(),
                phase,
                exit_code,
                reason,
            }),
            location: None,
        }))
    }

    /// An error of the SDK's own, without a location in the script.
    pub(crate) fn internal(message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            message: message.into(),
            code: None,
            job: None,
            location: None,
        }))
    }

    pub(crate) fn with_message(mut self, message: String) -> Self {
        self.0.message = message;
        self
    }

    /// Replaces the location.
    pub(crate) fn located_at(mut self, location: &'static Location<'static>) -> Self {
        self.0.location = Some(location);
        self
    }

    /// Sets the location unless the error has one.
    pub(crate) fn located(mut self, location: &'static Location<'static>) -> Self {
        self.0.location.get_or_insert(location);
        self
    }
}

/// brigadier.js's PHASE_ERRORS: what follows `Job "<name>"`.
fn phase_error(phase: Phase) -> String {
    match phase {
        Phase::Aborted => "was aborted".into(),
        Phase::Canceled => "was canceled before starting".into(),
        Phase::Failed => "failed".into(),
        Phase::SchedulingFailed => "scheduling failed".into(),
        Phase::TimedOut => "timed out".into(),
        other => format!("ended {other}"),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = f.debug_struct("Error");
        s.field("message", &self.0.message);
        if let Some(code) = &self.0.code {
            s.field("code", code);
        }
        if let Some(job) = &self.0.job {
            s.field("job", &job.name).field("phase", &job.phase);
            if let Some(exit_code) = job.exit_code {
                s.field("exit_code", &exit_code);
            }
            if let Some(reason) = &job.reason {
                s.field("reason", reason);
            }
        }
        if let Some(at) = self.0.location {
            s.field("location", &format_args!("{at}"));
        }
        s.finish()
    }
}

impl std::error::Error for Error {}

macro_rules! from_error {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            #[track_caller]
            fn from(error: $t) -> Self {
                Error::new(error)
            }
        }
    )*};
}

from_error!(
    String,
    &str,
    serde_json::Error,
    std::fmt::Error,
    std::num::ParseIntError,
    std::num::ParseFloatError,
    std::str::ParseBoolError,
    std::str::Utf8Error,
    std::string::FromUtf8Error,
    std::io::Error,
    Box<dyn std::error::Error>,
    Box<dyn std::error::Error + Send + Sync>,
);
