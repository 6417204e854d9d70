//! An event's log as the store keeps it.

use std::sync::{Arc, Mutex};

use mizzen_forwarding::{ForwardedLine, Forwarder};
use mizzen_runtime::log::{LogRecord, LogSink};
use mizzen_runtime::redact::{Redactor, StreamId, StreamRedactor, stream_of};

use crate::store::{LogLine, Store, micros_at};

/// An event's log: every record of its worker and jobs goes to the store,
/// with the project's secret values replaced by `***`, and, masked alike, to
/// log forwarding when the server forwards and the project takes part.
pub(super) struct EventLog {
    store: Store,
    event_id: String,
    /// The forwarder, and each line's fields but its job, container, time
    /// and text.
    forwarding: Option<(Arc<Forwarder>, ForwardedLine)>,
    /// Each stream (job and container) read as one text, so that a value
    /// split across a stream's lines is masked.
    streams: Mutex<StreamRedactor<i64>>,
}

impl EventLog {
    pub fn new(store: Store, event_id: String, redactor: Arc<Redactor>) -> Self {
        Self {
            store,
            event_id,
            forwarding: None,
            streams: Mutex::new(StreamRedactor::new(redactor)),
        }
    }

    /// Forwards each line too, filled in from `line`.
    pub fn forwarding_to(mut self, forwarder: Arc<Forwarder>, line: ForwardedLine) -> Self {
        self.forwarding = Some((forwarder, line));
        self
    }

    fn append(&self, (job, container): &StreamId, time: i64, message: String) {
        if let Some((forwarder, line)) = &self.forwarding {
            forwarder.offer(ForwardedLine {
                time_nanos: time.saturating_mul(1_000),
                job: job.clone(),
                container: container.clone(),
                message: message.clone(),
                ..line.clone()
            });
        }
        self.store.append_log(LogLine {
            seq: 0,
            event_id: self.event_id.clone(),
            job: job.clone(),
            container: container.clone(),
            time,
            message,
        });
    }
}

/// The last holder of the log is gone, so is every writer of its streams:
/// the lines they still hold back are stored, masked as the stream ended.
impl Drop for EventLog {
    fn drop(&mut self) {
        let held = self
            .streams
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .finish();
        for (stream, message, time) in held {
            self.append(&stream, time, message);
        }
    }
}

impl LogSink for EventLog {
    fn record(&self, record: LogRecord) {
        let (stream, text) = stream_of(&record);
        let released = self.streams.lock().unwrap_or_else(|e| e.into_inner()).push(
            &stream,
            text,
            micros_at(record.time),
        );
        for (message, time) in released {
            self.append(&stream, time, message);
        }
    }
}
