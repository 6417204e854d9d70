//! Worker log records: what a worker and its jobs printed, where it goes, how
//! it reads.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use mizzen_host_api::types::LogLevel;

/// Who produced a log line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LogSource {
    /// The script's `console.*` (or a guest's stdout/stderr): printed as is
    /// and never filtered, as in Brigade's worker.
    Console,
    /// The script's `logger.*`, or the host speaking about the worker:
    /// timestamped and levelled.
    Logger,
    /// A container of a job: the sidecar's name, or `None` for the primary.
    Container(Option<String>),
}

/// One line (or several, for a multi-line message) of a worker's log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogRecord {
    /// When the host received it.
    pub time: SystemTime,
    /// Its level.
    pub level: LogLevel,
    /// The text, with control characters other than newline and tab escaped
    /// so that a script cannot drive the reader's terminal.
    pub message: String,
    /// The job it is about, for `[job: name]` lines.
    pub job: Option<String>,
    /// Who produced it.
    pub source: LogSource,
}

impl LogRecord {
    /// A record stamped now, with its message made safe to print.
    pub fn new(level: LogLevel, message: &str, job: Option<String>, source: LogSource) -> Self {
        Self {
            time: SystemTime::now(),
            level,
            message: escape_control_characters(message),
            job,
            source,
        }
    }

    /// A `logger.*` line, or the host's own.
    pub fn logger(level: LogLevel, message: &str, job: Option<String>) -> Self {
        Self::new(level, message, job, LogSource::Logger)
    }

    /// A line a job's container printed.
    pub fn container(job: &str, sidecar: Option<String>, line: &str) -> Self {
        Self::new(
            LogLevel::Info,
            line,
            Some(job.to_string()),
            LogSource::Container(sidecar),
        )
    }

    /// The line as Brigade's worker printed it: `console.*` output as is,
    /// `logger.*` lines as `<RFC 3339 time> [job: name] LEVEL: message`, and a
    /// job's output as `[job: name] line` (`[job: name/sidecar] line` for a
    /// sidecar).
    pub fn to_line(&self) -> String {
        match &self.source {
            LogSource::Console => self.message.clone(),
            LogSource::Container(sidecar) => {
                let job = self.job.as_deref().unwrap_or_default();
                match sidecar {
                    Some(sidecar) => format!("[job: {job}/{sidecar}] {}", self.message),
                    None => format!("[job: {job}] {}", self.message),
                }
            }
            LogSource::Logger => {
                let mut line = humantime::format_rfc3339_millis(self.time).to_string();
                if let Some(job) = &self.job {
                    let _ = write!(line, " [job: {job}]");
                }
                let _ = write!(line, " {}: {}", self.level.as_str(), self.message);
                line
            }
        }
    }
}

/// Replaces control characters (except newline and tab) with visible escapes
/// such as `\x1b`, so that log lines cannot carry terminal escape sequences.
pub fn escape_control_characters(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            let _ = write!(out, "\\x{:02x}", c as u32);
        } else {
            out.push(c);
        }
    }
    out
}

fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || c == '\u{202e}'
}

/// Where a worker's log records go. Called from the worker's task and from
/// its jobs' output streams.
pub trait LogSink: Send + Sync {
    /// Takes one record.
    fn record(&self, record: LogRecord);
}

/// A sink that keeps every record, for tests and for callers that print at
/// the end.
#[derive(Debug, Default, Clone)]
pub struct MemoryLog {
    records: Arc<Mutex<Vec<LogRecord>>>,
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// The records so far.
    pub fn records(&self) -> Vec<LogRecord> {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The messages so far, in order.
    pub fn messages(&self) -> Vec<String> {
        self.records().into_iter().map(|r| r.message).collect()
    }

    /// Every record as a printed line, joined with newlines.
    pub fn text(&self) -> String {
        self.records()
            .iter()
            .map(LogRecord::to_line)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl LogSink for MemoryLog {
    fn record(&self, record: LogRecord) {
        self.records
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn lines_read_like_brigades() {
        let mut record = LogRecord::logger(LogLevel::Info, "Creating job j1", Some("j1".into()));
        record.time = UNIX_EPOCH + Duration::from_millis(1_632_176_112_047);
        assert_eq!(
            record.to_line(),
            "2021-09-20T22:15:12.047Z [job: j1] INFO: Creating job j1"
        );
        record.source = LogSource::Console;
        assert_eq!(record.to_line(), "Creating job j1");
        assert_eq!(
            LogRecord::container("build", None, "compiling").to_line(),
            "[job: build] compiling"
        );
        assert_eq!(
            LogRecord::container("build", Some("redis".into()), "ready").to_line(),
            "[job: build/redis] ready"
        );
    }

    #[test]
    fn control_characters_are_escaped_but_newlines_kept() {
        assert_eq!(
            escape_control_characters("a\u{1b}[31mred\nb\tc\u{0}"),
            "a\\x1b[31mred\nb\tc\\x00"
        );
        assert_eq!(escape_control_characters("plain"), "plain");
    }
}
