//! The server's HTTP side: its accept loop, and what keeps slow or stalled
//! clients from taking the server down.
//!
//! axum's `serve` has no timeouts and accepts until the process runs out of
//! descriptors: 1,100 half-sent requests under a limit of 1,024 left its
//! accept loop failing with "Too many open files" and the store unable to
//! open its database for as long as the clients stalled. Here:
//!
//! - a request's head must arrive within the header timeout (hyper's
//!   `header_read_timeout`, which also ends keep-alive connections idle for
//!   as long), its body within the body timeout (`api`'s middleware), and a
//!   write the client does not read stays blocked for the write timeout at
//!   most;
//! - at most [`HttpLimits::max_connections`] connections are open. By
//!   default that is the process's descriptor limit, raised to its hard
//!   limit at start ([`raise_descriptor_limit`]), minus
//!   [`DESCRIPTOR_RESERVE`] for the store, the sandbox processes, git and
//!   the container engine;
//! - when every connection is taken, the one that has waited longest
//!   without a request in progress (it sent no whole head yet, or sits idle
//!   between requests) is closed to make room for the newcomer: stalled
//!   clients cannot keep new ones, `/healthz` among them, out. Only when
//!   every connection is in the middle of a request does a new one wait,
//!   unaccepted, in the kernel's backlog, rather than being accepted and
//!   closed at once: it is served as soon as a request ends instead of
//!   failing, and costs the server no descriptor while it waits.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Sleep;
use tower::ServiceExt;

/// How long a request's head may take to arrive: a head is a few KiB, so
/// even a slow link sends it in well under a second. hyper's own default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a request's body may take to arrive, from its head on: the
/// largest body the API takes (25 MiB) needs about 3.5 Mbit/s to make it.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a write may wait for a client that reads nothing before the
/// connection is closed. Idle streams do not write, so this only ends
/// clients that stopped reading what they asked for.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Descriptors kept for everything but client connections: the store's
/// pool (16 connections, each SQLite one holding the database, its WAL and
/// its shared memory: 48), the sandbox processes' pipes (3 each, and those
/// of one being restarted), the container engine's connections (a log
/// stream and a wait per running job: 64 at the default 32 jobs), git's
/// pipes while sources are fetched, the listener, the runtime's own and the
/// data directory's lock: about 200, with room to spare.
pub const DESCRIPTOR_RESERVE: u64 = 256;

/// The most descriptors asked for when the hard limit is unlimited: Linux's
/// default ceiling for one process (`fs.nr_open`).
const UNLIMITED_DESCRIPTORS: u64 = 1 << 20;

/// How often a new connection waiting for a slot looks again for an idle
/// connection to close: one may have become idle since, or the one told to
/// close may have started a request first.
const DISPLACE_RETRY: Duration = Duration::from_millis(100);

/// How long the accept loop pauses after an error that is not one
/// connection's (the process or system is out of descriptors or memory),
/// instead of spinning on it.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// How the server treats its clients' connections.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// How long a request's head may take to arrive.
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive, from its head on.
    pub body_timeout: Duration,
    /// How long a write may wait for a client that reads nothing.
    pub write_timeout: Duration,
    /// Connections open at once; by default, from the descriptor limit
    /// ([`default_max_connections`]).
    pub max_connections: Option<usize>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            max_connections: None,
        }
    }
}

/// Raises the process's soft limit of open descriptors to its hard limit
/// (a default of 1,024 is common, and far below what a server needs);
/// returns the limit now in force. Processes started later (sandbox
/// processes, git) inherit it.
pub fn raise_descriptor_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(UNLIMITED_DESCRIPTORS);
    let wanted = limit.maximum.unwrap_or(UNLIMITED_DESCRIPTORS);
    if wanted <= current {
        return current;
    }
    match setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(wanted),
            maximum: limit.maximum,
        },
    ) {
        Ok(()) => wanted,
        Err(e) => {
            tracing::warn!(error = %e, current, wanted, "cannot raise the limit of open descriptors");
            current
        }
    }
}

/// The connections a process allowed `descriptors` open descriptors may
/// serve: all but [`DESCRIPTOR_RESERVE`], or half of them when the limit is
/// too low for the reserve to leave as many.
pub fn default_max_connections(descriptors: u64) -> usize {
    let connections = if descriptors > 2 * DESCRIPTOR_RESERVE {
        descriptors - DESCRIPTOR_RESERVE
    } else {
        descriptors / 2
    };
    usize::try_from(connections).unwrap_or(usize::MAX).max(1)
}

/// Serves `router` on `listener` until `shutdown` resolves; then takes no
/// new connections, lets each finish the request it is serving, and
/// returns once all are closed.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &HttpLimits,
    max_connections: usize,
    shutdown: impl Future<Output = ()>,
) {
    // A semaphore counts in u32 when waiting for all its permits.
    let max_connections = u32::try_from(max_connections).unwrap_or(u32::MAX).max(1);
    let connections = Arc::new(Connections::new(max_connections));
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Answers are written in parts (a list's envelope, then
                    // each item; a log line at a time): with Nagle's
                    // algorithm each part after the first would wait for
                    // the client's delayed ACK, 40 ms on Linux.
                    let _ = stream.set_nodelay(true);
                    stream
                }
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "accepting a connection failed");
                    // Out of descriptors after all: a stalled client's may
                    // be taken back.
                    connections.displace_oldest();
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let permit = loop {
            if let Ok(permit) = connections.slots.clone().try_acquire_owned() {
                break Some(permit);
            }
            connections.displace_oldest();
            tokio::select! {
                // Only fails when closed, which it never is.
                permit = connections.slots.clone().acquire_owned() => break permit.ok(),
                () = tokio::time::sleep(DISPLACE_RETRY) => {}
                () = &mut shutdown => break None,
            }
        };
        let Some(permit) = permit else {
            break;
        };
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            limits.clone(),
            connections.clone(),
            permit,
            stopping.clone(),
        ));
    }
    let _ = stop.send(true);
    drop(listener);
    // Every connection holds a slot until it is closed.
    let _ = connections.slots.acquire_many(max_connections).await;
}

/// Errors of one connection, which say nothing about the next (as hyper's
/// and axum's accept loops treat them).
fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: HttpLimits,
    connections: Arc<Connections>,
    permit: OwnedSemaphorePermit,
    mut stopping: watch::Receiver<bool>,
) {
    let slot = Arc::new(Slot::default());
    connections.idle(&slot);
    // Who is on the other end, for the handlers that decide by it (axum's
    // ConnectInfo, as its own server would set it).
    let peer = stream.peer_addr().ok().map(axum::extract::ConnectInfo);
    let service = {
        let (connections, slot) = (connections.clone(), slot.clone());
        hyper::service::service_fn(move |mut request: Request<Incoming>| {
            if let Some(peer) = peer {
                request.extensions_mut().insert(peer);
            }
            slot.in_request.store(true, Ordering::Relaxed);
            connections.busy(&slot);
            let done = IdleWhenDropped {
                connections: connections.clone(),
                slot: slot.clone(),
            };
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(Body::new)).await?;
                Ok::<_, Infallible>(
                    response.map(|body| Body::new(WithGuard { body, _guard: done })),
                )
            }
        })
    };
    {
        let io = TokioIo::new(WriteTimeout::new(stream, limits.write_timeout));
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(io, service);
        tokio::pin!(connection);
        let mut stopped = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "a connection ended with an error");
                    }
                    break;
                }
                () = slot.displaced.notified(), if !stopped => {
                    // Told to close just as it began a request: that one
                    // is served, and the accept loop looks again.
                    if !slot.in_request.load(Ordering::Relaxed) {
                        tracing::debug!("closed an idle connection to make room for a new one");
                        break;
                    }
                }
                _ = stopping.wait_for(|stop| *stop), if !stopped => {
                    stopped = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
    connections.busy(&slot);
    drop(permit);
}

/// The open connections' slots, and those of them without a request in
/// progress, oldest first.
struct Connections {
    slots: Arc<Semaphore>,
    idle: Mutex<BTreeMap<u64, Arc<Slot>>>,
    /// Orders idle connections by when they became idle; 0 means busy.
    next: AtomicU64,
}

/// One connection's place among [`Connections`].
#[derive(Default)]
struct Slot {
    /// Its key in `Connections::idle`, or 0 while it is not there.
    idle_since: AtomicU64,
    /// Whether a request has begun whose answer is not written yet.
    in_request: AtomicBool,
    /// Told to close to make room.
    displaced: Notify,
}

impl Connections {
    fn new(max: u32) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(max as usize)),
            idle: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(1),
        }
    }

    fn idle_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Slot>>> {
        // A panic elsewhere while the map was held leaves it whole.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    // The map's lock also orders the changes to each slot's `idle_since`.

    fn idle(&self, slot: &Arc<Slot>) {
        let mut idle = self.idle_map();
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        idle.insert(key, slot.clone());
        slot.idle_since.store(key, Ordering::Relaxed);
    }

    fn busy(&self, slot: &Slot) {
        let mut idle = self.idle_map();
        let key = slot.idle_since.swap(0, Ordering::Relaxed);
        if key != 0 {
            idle.remove(&key);
        }
    }

    /// Tells the connection idle the longest to close, if there is one.
    fn displace_oldest(&self) {
        let mut idle = self.idle_map();
        if let Some((_, slot)) = idle.pop_first() {
            slot.idle_since.store(0, Ordering::Relaxed);
            slot.displaced.notify_one();
        }
    }
}

/// Marks its connection idle when dropped: the HTTP layer drops a
/// response's body once it has written it, or when the connection ends.
struct IdleWhenDropped {
    connections: Arc<Connections>,
    slot: Arc<Slot>,
}

impl Drop for IdleWhenDropped {
    fn drop(&mut self) {
        self.slot.in_request.store(false, Ordering::Relaxed);
        self.connections.idle(&self.slot);
    }
}

/// A response body carrying a guard that lives as long as it does.
struct WithGuard<G> {
    body: Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for WithGuard<G> {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A client connection whose writes fail once they have waited `timeout`
/// for a client that reads nothing (its receive window stays full).
struct WriteTimeout {
    stream: TcpStream,
    timeout: Duration,
    /// Running while a write waits.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl WriteTimeout {
    fn new(stream: TcpStream, timeout: Duration) -> Self {
        Self {
            stream,
            timeout,
            waiting: None,
        }
    }

    /// What a write that returned `poll` comes to: an error once the wait
    /// has lasted the timeout.
    fn bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if poll.is_ready() {
            self.waiting = None;
            return poll;
        }
        let timeout = self.timeout;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing for {} (the write timeout)",
                    humantime::format_duration(timeout)
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for WriteTimeout {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteTimeout {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        this.bounded(cx, poll)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_write_vectored(cx, bufs);
        this.bounded(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.stream).poll_flush(cx);
        this.bounded(cx, poll)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_leaves_most_descriptors_to_connections() {
        assert_eq!(default_max_connections(1024), 768);
        assert_eq!(default_max_connections(65536), 65280);
        // Too few for the reserve: half each.
        assert_eq!(default_max_connections(256), 128);
        assert_eq!(default_max_connections(1), 1);
    }

    #[test]
    fn the_connection_idle_longest_is_displaced_first() {
        let connections = Connections::new(2);
        let (first, second) = (Arc::new(Slot::default()), Arc::new(Slot::default()));
        connections.idle(&first);
        connections.idle(&second);
        connections.busy(&first);
        connections.idle(&first);
        // `second` has now been idle the longest.
        connections.displace_oldest();
        assert_eq!(second.idle_since.load(Ordering::Relaxed), 0);
        assert_ne!(first.idle_since.load(Ordering::Relaxed), 0);
        connections.busy(&first);
        connections.displace_oldest();
        assert!(connections.idle_map().is_empty());
    }
}
