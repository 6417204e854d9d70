//! What `mizzen run` prints, and keeps: every worker and job line goes to the
//! terminal as it comes and to the event's log files under the data
//! directory (`events/<event>/logs/worker.log`,
//! `events/<event>/logs/jobs/<job>/<container>.log`), with the project's
//! secret values masked as the server masks them (the runtime's
//! [`StreamRedactor`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::{LineWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mizzen_forwarding::{ForwardedLine, Forwarder};
use mizzen_host_api::types::LogLevel;
use mizzen_runtime::log::{LogRecord, LogSink, LogSource};
use mizzen_runtime::redact::{Redactor, StreamRedactor, stream_id, stream_of};

/// Prints worker and job lines (`console.warn` and `console.error` to
/// stderr, the rest to stdout) and stores them, secret values masked.
pub struct RunLog {
    dir: PathBuf,
    worker: Mutex<Option<LineWriter<File>>>,
    jobs: Mutex<HashMap<(String, String), LineWriter<File>>>,
    /// Each stream read as one text, so that a value printed in pieces is
    /// masked in each; lines wait here while a value may go on.
    streams: Mutex<StreamRedactor<LogRecord>>,
    /// Whether any job printed anything.
    jobs_ran: std::sync::atomic::AtomicBool,
    /// Log forwarding, and each line's fields but its job, container, time
    /// and text.
    forwarding: Option<(Arc<Forwarder>, ForwardedLine)>,
}

impl RunLog {
    /// A log for an event, kept under `dir` (created on first use), masking
    /// `redactor`'s values.
    pub fn new(dir: PathBuf, redactor: Arc<Redactor>) -> Self {
        Self {
            dir,
            worker: Mutex::new(None),
            jobs: Mutex::new(HashMap::new()),
            streams: Mutex::new(StreamRedactor::new(redactor)),
            jobs_ran: std::sync::atomic::AtomicBool::new(false),
            forwarding: None,
        }
    }

    /// Forwards each line too (masked), filled in from `line`.
    pub fn forwarding_to(mut self, forwarder: Arc<Forwarder>, line: ForwardedLine) -> Self {
        self.forwarding = Some((forwarder, line));
        self
    }

    /// `text` with the secret values masked (a summary, an error).
    pub fn redact(&self, text: &str) -> String {
        self.lock_streams().redactor().redact(text).into_owned()
    }

    /// Passes on the lines still held: the worker has ended.
    pub fn finish(&self) {
        let held = self.lock_streams().finish();
        for (_, masked, record) in held {
            self.emit(record, masked);
        }
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, StreamRedactor<LogRecord>> {
        self.streams.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prints and stores a record whose stream text is `masked`.
    fn emit(&self, mut record: LogRecord, masked: String) {
        let line = match record.source {
            LogSource::Container(_) => {
                record.message = masked;
                record.to_line()
            }
            LogSource::Console | LogSource::Logger => masked,
        };
        if let Some((forwarder, fields)) = &self.forwarding {
            let (job, container) = stream_id(&record);
            let since_epoch = record
                .time
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            forwarder.offer(ForwardedLine {
                time_nanos: i64::try_from(since_epoch.as_nanos()).unwrap_or(i64::MAX),
                job,
                container,
                // The stream's text, masked, as the server forwards it.
                message: match record.source {
                    LogSource::Container(_) => record.message.clone(),
                    LogSource::Console | LogSource::Logger => line.clone(),
                },
                ..fields.clone()
            });
        }
        let to_stderr = record.source == LogSource::Console && record.level <= LogLevel::Warn;
        if to_stderr {
            let _ = writeln!(std::io::stderr(), "{line}");
        } else {
            let _ = writeln!(std::io::stdout(), "{line}");
        }
        self.store(&record, &line);
    }

    /// Where the files are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether any job printed anything.
    pub fn jobs_ran(&self) -> bool {
        self.jobs_ran.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn store(&self, record: &LogRecord, line: &str) {
        let stored = match &record.source {
            LogSource::Container(_) => {
                self.jobs_ran
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let (job, container) = stream_id(record);
                let path = self
                    .dir
                    .join("jobs")
                    .join(&job)
                    .join(format!("{container}.log"));
                let mut files = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
                let file = match files.entry((job, container)) {
                    std::collections::hash_map::Entry::Occupied(entry) => Some(entry.into_mut()),
                    std::collections::hash_map::Entry::Vacant(entry) => {
                        open(&path).map(|f| entry.insert(f))
                    }
                };
                file.map(|f| writeln!(f, "{}", record.message))
            }
            _ => {
                let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
                if worker.is_none() {
                    *worker = open(&self.dir.join("worker.log"));
                }
                worker.as_mut().map(|f| writeln!(f, "{line}"))
            }
        };
        if let Some(Err(e)) = stored {
            tracing::warn!(dir = %self.dir.display(), error = %e, "could not store a log line");
        }
    }
}

fn open(path: &Path) -> Option<LineWriter<File>> {
    let opened = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| File::create(path));
    match opened {
        Ok(file) => Some(LineWriter::new(file)),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not create a log file");
            None
        }
    }
}

impl LogSink for RunLog {
    fn record(&self, record: LogRecord) {
        let (stream, text) = stream_of(&record);
        let released = self.lock_streams().push(&stream, text, record);
        for (masked, record) in released {
            self.emit(record, masked);
        }
    }
}

impl Drop for RunLog {
    fn drop(&mut self) {
        self.finish();
    }
}
