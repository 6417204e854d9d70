//! Levelled log lines, as Brigade's worker printed them (`<time> LEVEL:
//! message`, `[job: name]` for a job's lines), filtered by the event's
//! `worker.logLevel`.

use std::cell::Cell;
use std::fmt;

use serde::Serialize;

use crate::host::{self, op};

/// A log level, from most to least severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Something failed.
    Error,
    /// Something looks wrong.
    Warn,
    /// The default threshold.
    Info,
    /// Details for whoever debugs the script.
    Debug,
}

impl Level {
    /// The upper-case name: `ERROR`, `WARN`, `INFO`, `DEBUG`.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }

    /// Parses a level in any case (`info`, `INFO`, `Info`).
    pub fn parse(text: &str) -> Option<Level> {
        match text.to_ascii_uppercase().as_str() {
            "ERROR" => Some(Level::Error),
            "WARN" => Some(Level::Warn),
            "INFO" => Some(Level::Info),
            "DEBUG" => Some(Level::Debug),
            _ => None,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// brigadier.js cuts a single line at this many characters, so that one call
/// cannot carry megabytes across the boundary.
const MAX_LINE_CHARS: usize = 64 * 1024;

thread_local! {
    static THRESHOLD: Cell<Option<Level>> = const { Cell::new(None) };
}

/// The lowest level printed: the event's `worker.logLevel` (INFO when it
/// names no level), until [`set_level`] changes it.
pub fn level() -> Level {
    if let Some(level) = THRESHOLD.with(Cell::get) {
        return level;
    }
    let level = crate::event::event()
        .ok()
        .and_then(|event| Level::parse(&event.worker.log_level))
        .unwrap_or(Level::Info);
    THRESHOLD.with(|cell| cell.set(Some(level)));
    level
}

/// Changes the lowest level printed, for the rest of the run (as assigning
/// `logger.level` does in brigadier.js).
pub fn set_level(level: Level) {
    THRESHOLD.with(|cell| cell.set(Some(level)));
}

/// A logger: the worker's ([`logger()`]), or a job's ([`Logger::child`],
/// [`Job::logger`](crate::Job::logger)), whose lines carry `[job: <name>]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Logger {
    job: Option<String>,
}

/// The worker's logger.
pub fn logger() -> Logger {
    Logger::default()
}

impl Logger {
    /// A logger whose lines are about `job` (printed `[job: <job>]`).
    pub fn child(&self, job: impl Into<String>) -> Logger {
        Logger {
            job: Some(job.into()),
        }
    }

    /// The job this logger's lines are about, if any.
    pub fn job(&self) -> Option<&str> {
        self.job.as_deref()
    }

    /// Logs `message` at `level` unless the level is below the threshold
    /// ([`level`]). A line over 65,536 characters is cut, saying how much.
    pub fn log(&self, level: Level, message: impl fmt::Display) -> &Self {
        if level <= self::level() {
            emit(level, &message.to_string(), self.job.as_deref(), false);
        }
        self
    }

    /// Logs at ERROR.
    pub fn error(&self, message: impl fmt::Display) -> &Self {
        self.log(Level::Error, message)
    }

    /// Logs at WARN.
    pub fn warn(&self, message: impl fmt::Display) -> &Self {
        self.log(Level::Warn, message)
    }

    /// Logs at INFO.
    pub fn info(&self, message: impl fmt::Display) -> &Self {
        self.log(Level::Info, message)
    }

    /// Logs at DEBUG.
    pub fn debug(&self, message: impl fmt::Display) -> &Self {
        self.log(Level::Debug, message)
    }
}

/// Sends a line to the host (`log`). `console` lines are printed as they are
/// and never filtered; the others are levelled lines.
pub(crate) fn emit(level: Level, message: &str, job: Option<&str>, console: bool) {
    #[derive(Serialize)]
    struct LogRequest<'a> {
        level: &'static str,
        message: &'a str,
        job: Option<&'a str>,
        console: bool,
    }
    let cut;
    let message = match message.char_indices().nth(MAX_LINE_CHARS) {
        Some((end, _)) => {
            let rest = message[end..].chars().count();
            cut = format!(
                "{}... [line truncated: {rest} more characters]",
                &message[..end]
            );
            cut.as_str()
        }
        None => message,
    };
    // A refused line has nowhere else to go; the limits that end a worker
    // end it inside this call.
    let _ = host::call_unit(
        op::LOG,
        &LogRequest {
            level: level.as_str(),
            message,
            job,
            console,
        },
    );
}

/// Logs a line at DEBUG with the worker's logger, formatted as by `format!`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {{ $crate::logger().debug(::std::format_args!($($arg)*)); }};
}

/// Logs a line at INFO with the worker's logger, formatted as by `format!`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {{ $crate::logger().info(::std::format_args!($($arg)*)); }};
}

/// Logs a line at WARN with the worker's logger, formatted as by `format!`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {{ $crate::logger().warn(::std::format_args!($($arg)*)); }};
}

/// Logs a line at ERROR with the worker's logger, formatted as by `format!`.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => {{ $crate::logger().error(::std::format_args!($($arg)*)); }};
}
