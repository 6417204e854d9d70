//! `log`: the worker's log. Held by the worker's host, which stamps each
//! line, escapes what could drive a terminal, counts it against the
//! worker's log limits and passes it to the log sink (where the server
//! masks secrets and stores it). The sandbox's own lines (a guest's stdout
//! and stderr, script errors) come the same way.

use std::sync::{Arc, Mutex};

use mizzen_host_api::Op;
use mizzen_host_api::types::{LogLevel, LogRequest};

use crate::host::parse;
use crate::limits::WorkerLimits;
use crate::log::{LogRecord, LogSink, LogSource};
use crate::worker::{Stop, human_bytes};

/// The operations this capability answers.
pub const OPS: &[Op] = &[Op::Log];

/// A worker's log, within its limits.
pub(crate) struct WorkerLog {
    sink: Arc<dyn LogSink>,
    limits: WorkerLimits,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    bytes: u64,
    lines: u64,
    /// The limit reached, after which every line is dropped.
    stopped: Option<Stop>,
}

impl WorkerLog {
    pub fn new(sink: Arc<dyn LogSink>, limits: WorkerLimits) -> Self {
        Self {
            sink,
            limits,
            counts: Mutex::default(),
        }
    }

    /// Adds a line of the worker's, counting it against the limits. When a
    /// limit is reached a last line says so and the worker stops.
    pub fn record(&self, request: LogRequest) -> Result<(), Stop> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stop) = counts.stopped {
            return Err(stop);
        }
        let size = request.message.len() as u64 + 1;
        let limit = if counts.bytes + size > self.limits.log_bytes {
            Some((
                Stop::LogLimit,
                format!("log limit of {}", human_bytes(self.limits.log_bytes)),
            ))
        } else if counts.lines >= self.limits.log_lines {
            Some((
                Stop::LogLines,
                format!("limit of {} log lines", self.limits.log_lines),
            ))
        } else {
            None
        };
        if let Some((stop, limit)) = limit {
            // Said once: output the guest flushes as it stops is dropped.
            counts.stopped = Some(stop);
            self.sink.record(LogRecord::logger(
                LogLevel::Error,
                &format!("log output truncated: the worker's {limit} was reached"),
                None,
            ));
            return Err(stop);
        }
        counts.bytes += size;
        counts.lines += 1;
        let source = if request.console {
            LogSource::Console
        } else {
            LogSource::Logger
        };
        self.sink.record(LogRecord::new(
            request.level,
            &request.message,
            request.job,
            source,
        ));
        Ok(())
    }

    /// A line of the host's own about the worker (a job's end, a note):
    /// not counted against the script's limits.
    pub fn note(&self, record: LogRecord) {
        self.sink.record(record);
    }

    /// The limit reached, if one was.
    pub fn stopped(&self) -> Option<Stop> {
        self.counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stopped
    }

    /// The worker's limits.
    pub fn limits(&self) -> &WorkerLimits {
        &self.limits
    }

    /// Where the lines go.
    pub fn sink(&self) -> Arc<dyn LogSink> {
        self.sink.clone()
    }
}

/// Answers `log` with the request as the guest sent it.
pub(crate) fn call(log: &WorkerLog, request: &[u8]) -> Result<(), Stop> {
    match parse::<LogRequest>(Op::Log, request) {
        Ok(request) => log.record(request),
        // A line that does not parse is the guest's mistake; the guest does
        // not wait for the answer, so it is dropped.
        Err(_) => Ok(()),
    }
}
