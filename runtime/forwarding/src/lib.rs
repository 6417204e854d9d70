//! Log forwarding: every line of a worker, its jobs and their sidecars —
//! masked before it gets here — sent on to the operator's log pipeline: a
//! fluentd Forward endpoint ([`fluentd`]), an OTLP logs endpoint ([`otlp`]),
//! or both.
//!
//! Lines go through a spool on disk ([`spool`], a SQLite file in the data
//! directory), so that a collector that is down or slow never holds up a
//! worker and a restart of Mizzen loses nothing:
//!
//! - [`Forwarder::offer`] never waits: it hands the line to the spool's
//!   writer through a bounded channel; a full channel (the disk cannot keep
//!   up) drops the line and counts it.
//! - The spool is bounded in bytes; when it is full the oldest lines are
//!   dropped, counted, and a warning says so.
//! - Each sink reads the spool in order from its own cursor, sends a batch,
//!   and moves its cursor only once the collector acknowledged it (a Forward
//!   `chunk` ack, an OTLP 2xx). A failure is retried with backoff, so
//!   delivery is at least once: a batch acknowledged just before a crash or a
//!   dropped connection may be sent again, never more than that one batch per
//!   sink per failure.
//!
//! Several processes may share one spool (parallel `mizzen run`s on one data
//! directory): any of them appends, and the one holding the spool's delivery
//! lock sends.

pub mod fluentd;
pub mod otlp;
mod spool;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use fluentd::{FluentdConfig, FluentdTls, TagTemplate, TagTemplateError};
pub use otlp::{OtlpLogsConfig, OtlpTracesConfig, TraceSpan};
use spool::Spool;

/// Lines waiting between [`Forwarder::offer`] and the spool's writer. At a
/// few hundred bytes a line this is tens of MiB at most; the writer commits
/// thousands of lines a transaction, so only a disk that has stopped keeping
/// up fills it.
const OFFER_CAPACITY: usize = 65_536;

/// Lines the writer commits in one transaction: large enough that a flood
/// costs one fsync per thousand lines, small enough to keep a transaction
/// short for the other processes sharing the spool.
const WRITE_BATCH: usize = 1_024;

/// Lines a sink sends at once: one Forward message per tag, or one OTLP
/// request. Collectors take a few MiB a request by default (fluentd's
/// `chunk_size_limit`, the OpenTelemetry Collector's 4 MiB gRPC default);
/// the byte cap below keeps a batch of long lines under that.
const SEND_BATCH_LINES: usize = 2_000;

/// Bytes (as spooled) a sink sends at once; see [`SEND_BATCH_LINES`].
const SEND_BATCH_BYTES: usize = 2 * 1024 * 1024;

/// The first wait after a failed send; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// The longest wait between tries: a collector back after an outage gets
/// its backlog within half a minute.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How often a process that does not hold the delivery lock tries to take
/// it (the holder may have exited), and how often a sink looks at the spool
/// for lines other processes appended.
const POLL: Duration = Duration::from_secs(1);

/// One line as forwarded: its text and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ForwardedLine {
    /// When it was produced, in nanoseconds since the Unix epoch.
    pub time_nanos: i64,
    /// The project's id.
    pub project: String,
    /// The event's id.
    pub event: String,
    /// The event's source, e.g. `brigade.sh/cli`.
    pub source: String,
    /// The event's type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The job, or empty for the worker's own lines.
    pub job: String,
    /// `worker`, the job's name for its primary container, or a sidecar's
    /// name.
    pub container: String,
    /// The line, masked.
    pub message: String,
    /// The project's extra labels (`spec.workerTemplate.logForwarding.labels`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl ForwardedLine {
    /// The line's attributes as both sinks send them: Mizzen's own, then
    /// the project's labels but those that would take one of their names
    /// (or `message`), so a label can never pass for another project's or
    /// event's (the project file refuses such labels too).
    pub fn attributes(&self) -> Vec<(&str, &str)> {
        let mut attributes = vec![
            ("project", self.project.as_str()),
            ("event", self.event.as_str()),
            ("source", self.source.as_str()),
            ("type", self.event_type.as_str()),
            ("job", self.job.as_str()),
            ("container", self.container.as_str()),
        ];
        let own = attributes.len();
        for (key, value) in &self.labels {
            if key != "message" && !attributes[..own].iter().any(|(name, _)| name == key) {
                attributes.push((key.as_str(), value.as_str()));
            }
        }
        attributes
    }
}

/// Where lines go and how much the spool may hold.
#[derive(Debug, Clone)]
pub struct ForwardingConfig {
    /// A fluentd (or Fluent Bit) Forward endpoint.
    pub fluentd: Option<FluentdConfig>,
    /// An OTLP logs endpoint (HTTP/protobuf).
    pub otlp_logs: Option<OtlpLogsConfig>,
    /// The spool's directory.
    pub spool_dir: PathBuf,
    /// The most the spool holds, in bytes of lines as spooled.
    pub spool_bytes: u64,
}

/// What went wrong starting forwarding.
#[derive(Debug, thiserror::Error)]
pub enum ForwardingError {
    /// The spool could not be opened.
    #[error("the log forwarding spool {}: {source}", path.display())]
    Spool {
        /// The spool's file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// The spool's directory or lock file.
    #[error("the log forwarding spool {}: {source}", path.display())]
    SpoolFile {
        /// The spool's file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A sink's configuration.
    #[error("{0}")]
    Sink(#[from] SinkError),
}

/// Why a sink could not deliver a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth trying again: the collector is down, slow or overloaded.
    #[error("{0}")]
    Retry(String),
    /// The collector refused these lines for good (an OTLP 400): trying
    /// again would be refused again, so they are dropped and counted.
    #[error("{0}")]
    Rejected(String),
    /// The sink's configuration cannot work (a CA file that does not parse).
    #[error("{0}")]
    Config(String),
}

/// Where one sink sends batches of `T` (log lines, spans).
#[async_trait::async_trait]
pub trait Sink<T>: Send {
    /// The sink's name in metrics and logs: `fluentd`, `otlp`, `otlp-traces`.
    fn name(&self) -> &'static str;
    /// Sends `items` and returns once the collector acknowledged them; the
    /// count is of items the collector said it refused (OTLP's partial
    /// success), which are dropped.
    async fn send(&mut self, items: &[T]) -> Result<u64, SinkError>;
}

/// What a forwarder carries: stored in the spool as JSON.
pub trait Forwardable:
    serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static
{
}
impl<T: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static> Forwardable for T {}

/// Counts for the server's metrics and for tests.
#[derive(Debug, Default)]
pub struct ForwardingStats {
    /// Lines in the spool not yet delivered to every sink.
    pub spool_lines: AtomicU64,
    /// Their bytes.
    pub spool_bytes: AtomicU64,
    /// Lines dropped because the spool was full (the oldest).
    pub dropped_spool_full: AtomicU64,
    /// Lines dropped because the spool's writer could not keep up.
    pub dropped_writer_behind: AtomicU64,
    /// Lines a collector refused for good.
    pub dropped_rejected: AtomicU64,
    /// Lines the spool could not store (a disk error), each counted.
    pub dropped_spool_error: AtomicU64,
    /// Per sink: lines delivered, and lines sent again after a failure.
    pub sinks: std::sync::Mutex<BTreeMap<&'static str, SinkCounts>>,
}

/// One sink's counts.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkCounts {
    /// Lines the collector acknowledged.
    pub delivered: u64,
    /// Lines of batches that failed and wait to be sent again.
    pub retried: u64,
}

impl ForwardingStats {
    /// Each sink's counts.
    pub fn sinks(&self) -> BTreeMap<&'static str, SinkCounts> {
        self.sinks.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn count(&self, sink: &'static str, f: impl FnOnce(&mut SinkCounts)) {
        f(self
            .sinks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(sink)
            .or_default());
    }

    /// Every dropped line, whatever the reason.
    pub fn dropped(&self) -> u64 {
        self.dropped_spool_full.load(Ordering::Relaxed)
            + self.dropped_writer_behind.load(Ordering::Relaxed)
            + self.dropped_rejected.load(Ordering::Relaxed)
            + self.dropped_spool_error.load(Ordering::Relaxed)
    }
}

/// Forwarding, running: offers lines (or spans), and stops with a grace
/// period.
pub struct Forwarder<T = ForwardedLine> {
    lines: mpsc::Sender<Offered<T>>,
    stats: Arc<ForwardingStats>,
    closing: watch::Sender<Option<Instant>>,
    delivery: std::sync::Mutex<Option<JoinHandle<()>>>,
}

/// What the spool's writer receives.
enum Offered<T> {
    Line(T),
    /// Spool what came before and say so.
    Flush(tokio::sync::oneshot::Sender<()>),
    /// Spool what came before, say so, and stop.
    Close(tokio::sync::oneshot::Sender<()>),
}

impl Forwarder<ForwardedLine> {
    /// Opens the spool and starts the writer and the sinks' delivery (in
    /// this process once it holds the spool's delivery lock).
    pub async fn start(
        config: ForwardingConfig,
        stats: Arc<ForwardingStats>,
    ) -> Result<Self, ForwardingError> {
        let mut sinks: Vec<Box<dyn Sink<ForwardedLine>>> = Vec::new();
        if let Some(fluentd) = &config.fluentd {
            sinks.push(Box::new(fluentd::FluentdSink::new(fluentd.clone())?));
        }
        if let Some(otlp) = &config.otlp_logs {
            sinks.push(Box::new(otlp::OtlpLogsSink::new(otlp.clone())?));
        }
        Self::with_sinks(&config.spool_dir, config.spool_bytes, sinks, stats).await
    }
}

impl Forwarder<TraceSpan> {
    /// Spans of events, to an OTLP traces endpoint, through a spool of
    /// their own in `spool_dir`.
    pub async fn start_traces(
        config: OtlpTracesConfig,
        spool_dir: &std::path::Path,
        spool_bytes: u64,
        stats: Arc<ForwardingStats>,
    ) -> Result<Self, ForwardingError> {
        let sink: Box<dyn Sink<TraceSpan>> = Box::new(otlp::OtlpTracesSink::new(config)?);
        Self::with_sinks(spool_dir, spool_bytes, vec![sink], stats).await
    }
}

impl<T: Forwardable> Forwarder<T> {
    async fn with_sinks(
        spool_dir: &std::path::Path,
        spool_bytes: u64,
        sinks: Vec<Box<dyn Sink<T>>>,
        stats: Arc<ForwardingStats>,
    ) -> Result<Self, ForwardingError> {
        let names: Vec<&'static str> = sinks.iter().map(|s| s.name()).collect();
        let spool = Arc::new(Spool::open(spool_dir, spool_bytes, &names).await?);
        spool.publish_depth(&stats).await;
        let (lines, received) = mpsc::channel(OFFER_CAPACITY);
        let (closing, closing_seen) = watch::channel(None);
        let appended = Arc::new(Notify::new());
        tokio::spawn(write_spool(
            received,
            spool.clone(),
            stats.clone(),
            appended.clone(),
        ));
        let delivery = tokio::spawn(deliver_all(
            spool,
            sinks,
            stats.clone(),
            appended,
            closing_seen,
            spool_dir.join("deliver.lock"),
        ));
        Ok(Self {
            lines,
            stats,
            closing,
            delivery: std::sync::Mutex::new(Some(delivery)),
        })
    }

    /// Takes a line (or a span); never waits.
    pub fn offer(&self, line: T) {
        if self.lines.try_send(Offered::Line(line)).is_err() {
            self.stats
                .dropped_writer_behind
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until every line offered so far is in the spool, so that a
    /// crash from now on loses none of them (before an event is recorded
    /// as ended: it will not run again to print them again).
    pub async fn flush(&self) {
        let (spooled, done) = tokio::sync::oneshot::channel();
        if self.lines.send(Offered::Flush(spooled)).await.is_ok() {
            let _ = done.await;
        }
    }

    /// The counts.
    pub fn stats(&self) -> &Arc<ForwardingStats> {
        &self.stats
    }

    /// Stops taking lines, spools what was offered, and lets the sinks
    /// deliver for up to `grace`; what they did not deliver stays in the
    /// spool for the next start.
    pub async fn close(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let (spooled, done) = tokio::sync::oneshot::channel();
        if self.lines.send(Offered::Close(spooled)).await.is_ok() {
            let _ = done.await;
        }
        let _ = self.closing.send(Some(deadline));
        let delivery = self
            .delivery
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(delivery) = delivery {
            let _ = delivery.await;
        }
    }
}

/// Moves offered lines into the spool, a batch a transaction.
async fn write_spool<T: Forwardable>(
    mut received: mpsc::Receiver<Offered<T>>,
    spool: Arc<Spool>,
    stats: Arc<ForwardingStats>,
    appended: Arc<Notify>,
) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let mut full = false;
    let mut closed = None;
    while closed.is_none() && received.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let mut encoded = Vec::with_capacity(batch.len());
        let mut flushed = Vec::new();
        for offered in batch.drain(..) {
            match offered {
                Offered::Line(line) => encoded.extend(serde_json::to_vec(&line).ok()),
                Offered::Flush(done) => flushed.push(done),
                Offered::Close(done) => closed = Some(done),
            }
        }
        match spool.append(&encoded).await {
            Ok(dropped) => {
                if dropped > 0 {
                    stats
                        .dropped_spool_full
                        .fetch_add(dropped, Ordering::Relaxed);
                    if !full {
                        tracing::warn!(
                            dropped,
                            limit_bytes = spool.limit_bytes(),
                            "the log forwarding spool is full: its oldest lines are dropped \
                             (mizzen_forwarding_lines_dropped_total{{reason=\"spool_full\"}}); \
                             is the collector down?"
                        );
                    }
                    full = true;
                } else {
                    full = false;
                }
            }
            Err(e) => {
                stats
                    .dropped_spool_error
                    .fetch_add(encoded.len() as u64, Ordering::Relaxed);
                tracing::warn!(lines = encoded.len(), error = %e, "could not spool log lines for forwarding");
            }
        }
        spool.publish_depth(&stats).await;
        appended.notify_waiters();
        for done in flushed {
            let _ = done.send(());
        }
    }
    if let Some(done) = closed {
        let _ = done.send(());
    }
}

/// Takes the spool's delivery lock, then runs each sink's delivery.
async fn deliver_all<T: Forwardable>(
    spool: Arc<Spool>,
    sinks: Vec<Box<dyn Sink<T>>>,
    stats: Arc<ForwardingStats>,
    appended: Arc<Notify>,
    mut closing: watch::Receiver<Option<Instant>>,
    lock_path: PathBuf,
) {
    if sinks.is_empty() {
        return;
    }
    // Held for as long as this process delivers; dropped (and so released)
    // when delivery ends.
    let _lock = loop {
        match take_lock(&lock_path) {
            Ok(Some(lock)) => break lock,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(path = %lock_path.display(), error = %e, "could not take the log forwarding spool's delivery lock");
            }
        }
        if closing.borrow().is_some() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = closing.changed() => {}
        }
    };
    let deliveries: Vec<JoinHandle<()>> = sinks
        .into_iter()
        .map(|sink| {
            tokio::spawn(deliver(
                spool.clone(),
                sink,
                stats.clone(),
                appended.clone(),
                closing.clone(),
            ))
        })
        .collect();
    for delivery in deliveries {
        let _ = delivery.await;
    }
}

fn take_lock(path: &std::path::Path) -> std::io::Result<Option<std::fs::File>> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// One sink's delivery: batches from its cursor, sent until acknowledged.
async fn deliver<T: Forwardable>(
    spool: Arc<Spool>,
    mut sink: Box<dyn Sink<T>>,
    stats: Arc<ForwardingStats>,
    appended: Arc<Notify>,
    mut closing: watch::Receiver<Option<Instant>>,
) {
    let name = sink.name();
    let mut backoff = FIRST_BACKOFF;
    let mut failing = false;
    loop {
        let deadline = *closing.borrow();
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return;
        }
        // Registered before reading, so an append between the read and the
        // wait still wakes this sink.
        let woken = appended.notified();
        let batch = match spool.batch(name, SEND_BATCH_LINES, SEND_BATCH_BYTES).await {
            Ok(batch) => batch,
            Err(e) => {
                tracing::warn!(sink = name, error = %e, "could not read the log forwarding spool");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let Some(last) = batch.last().map(|(seq, _)| *seq) else {
            if deadline.is_some() {
                return;
            }
            tokio::select! {
                () = woken => {}
                () = tokio::time::sleep(POLL) => {}
                _ = closing.changed() => {}
            }
            continue;
        };
        let lines: Vec<T> = batch
            .iter()
            .filter_map(|(_, bytes)| serde_json::from_slice(bytes).ok())
            .collect();
        let sent = match deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, sink.send(&lines))
                .await
                .unwrap_or_else(|_| Err(SinkError::Retry("Mizzen is stopping".into()))),
            None => sink.send(&lines).await,
        };
        let delivered = match sent {
            Ok(refused) => {
                if refused > 0 {
                    stats.dropped_rejected.fetch_add(refused, Ordering::Relaxed);
                }
                if failing {
                    tracing::info!(sink = name, "log forwarding delivers again");
                }
                failing = false;
                backoff = FIRST_BACKOFF;
                stats.count(name, |c| {
                    c.delivered += lines.len() as u64 - refused.min(lines.len() as u64)
                });
                true
            }
            Err(SinkError::Rejected(why)) => {
                stats
                    .dropped_rejected
                    .fetch_add(lines.len() as u64, Ordering::Relaxed);
                tracing::warn!(sink = name, lines = lines.len(), reason = %why, "the collector refused log lines; they are dropped");
                true
            }
            Err(SinkError::Retry(why) | SinkError::Config(why)) => {
                stats.count(name, |c| c.retried += lines.len() as u64);
                if !failing {
                    tracing::warn!(sink = name, lines = lines.len(), reason = %why, "could not forward log lines; retrying with backoff");
                }
                failing = true;
                false
            }
        };
        if delivered {
            if let Err(e) = spool.advance(name, last).await {
                tracing::warn!(sink = name, error = %e, "could not record log forwarding progress");
            }
            spool.publish_depth(&stats).await;
        } else {
            let wait = if deadline.is_some() {
                // Stopping: what is left waits in the spool for the next start.
                return;
            } else {
                backoff
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = closing.changed() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
}
