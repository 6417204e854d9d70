//! A job's output on its way from the executor: cut at the job's log limit
//! ([`CappedOutput`]), then kept for `job.logs()` and passed to the worker's
//! log ([`JobRecorder`]). Both live with the worker's host: a container's
//! line never crosses to a sandbox process.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mizzen_host_api::types::LogLevel;

use crate::executor::JobOutput;
use crate::limits::Limit;
use crate::log::{LogRecord, LogSink};

/// Keeps each container's lines of a job for `job.logs()` and passes them to
/// the worker's log. It sees only what [`CappedOutput`] lets through.
pub(crate) struct JobRecorder {
    pub job: String,
    pub log: Arc<dyn LogSink>,
    pub lines: Mutex<BTreeMap<String, Vec<String>>>,
}

impl JobOutput for JobRecorder {
    fn line(&self, container: &str, line: &str) {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(container.to_string())
            .or_default()
            .push(line.to_string());
        let container = (container != self.job).then(|| container.to_string());
        self.log
            .record(LogRecord::container(&self.job, container, line));
    }
}

/// A job's output up to its log limit (`jobLogSize`, all its containers
/// together): lines within it go on to `inner` whole and in order; past it,
/// the first line says the output is being cut, the rest are only counted,
/// and [`CappedOutput::finish`] says how much was not kept.
pub(crate) struct CappedOutput {
    job: String,
    limit: u64,
    inner: Arc<dyn JobOutput>,
    log: Arc<dyn LogSink>,
    state: Mutex<CapState>,
}

#[derive(Default)]
struct CapState {
    kept_bytes: u64,
    dropped_lines: u64,
    dropped_bytes: u64,
}

impl CappedOutput {
    /// `job`'s output, at most `limit` bytes (each line counts its newline),
    /// passed to `inner`; what is cut is said in `log`.
    pub fn new(job: &str, limit: u64, inner: Arc<dyn JobOutput>, log: Arc<dyn LogSink>) -> Self {
        Self {
            job: job.to_string(),
            limit,
            inner,
            log,
            state: Mutex::default(),
        }
    }

    /// Says how much output past the limit was not kept, if any. Called
    /// once the job has ended and its executor has passed on every line.
    pub fn finish(&self) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.dropped_lines == 0 {
            return;
        }
        self.log.record(LogRecord::logger(
            LogLevel::Warn,
            &format!(
                "output of job {} was truncated at its log limit of {} ({}): {} more lines ({} bytes) were not kept",
                self.job,
                crate::worker::human_bytes(self.limit),
                Limit::JobLogSize.project_field(),
                state.dropped_lines,
                state.dropped_bytes,
            ),
            Some(self.job.clone()),
        ));
    }
}

impl JobOutput for CappedOutput {
    fn line(&self, container: &str, line: &str) {
        let size = line.len() as u64 + 1;
        {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            if state.dropped_lines == 0 && state.kept_bytes + size <= self.limit {
                state.kept_bytes += size;
            } else {
                state.dropped_lines += 1;
                state.dropped_bytes += size;
                if state.dropped_lines > 1 {
                    return;
                }
                // Said as it happens, for whoever follows the log; how much
                // was cut is said when the job ends.
                self.log.record(LogRecord::logger(
                    LogLevel::Warn,
                    &format!(
                        "output of job {} truncated: its log limit of {} ({}) was reached",
                        self.job,
                        crate::worker::human_bytes(self.limit),
                        Limit::JobLogSize.project_field()
                    ),
                    Some(self.job.clone()),
                ));
                return;
            }
        }
        // Outside the lock: `inner` may take its own.
        self.inner.line(container, line);
    }

    fn lost(&self, container: &str, why: &str) {
        self.log.record(LogRecord::logger(
            LogLevel::Warn,
            &format!(
                "output of job {}, container {container}, was cut: {why}",
                self.job
            ),
            Some(self.job.clone()),
        ));
    }
}
