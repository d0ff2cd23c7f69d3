//! The accept loop: every client connection is bounded in number, in time and in what it may
//! hold on to, so idle or slow clients cannot starve real ones.
//!
//! Contract:
//! - At most `cap` connections are served at once ([`Connections::cap`]; `--max-connections`,
//!   by default [`crate::fd_limit::connection_budget`] of the raised open-file limit, which
//!   leaves headroom for database and payload files). When all are taken, the next accepted
//!   connection evicts the connection that has been waiting longest without a request in
//!   progress (idle, or still sending its request head), and waits for its slot. A connection
//!   with a request in progress (handler running or response body being sent) is never
//!   evicted, only waited for.
//! - A connection with no request in progress and no byte received is closed after
//!   `idle_timeout` (`--idle-timeout-ms`, default 60 s), counted from accept (or the end of the
//!   TLS handshake) and from the end of each response.
//! - Once a request's first byte arrives, its complete head must arrive within
//!   `header_timeout` (`--header-timeout-ms`, default 10 s), or the connection is closed. The
//!   TLS handshake must also finish within `header_timeout`.
//! - A request body that delivers no data for `body_timeout` (`--body-timeout-ms`, default
//!   30 s) while the server waits for it fails with [`BodyStalled`]; the handler answers with an
//!   error and the connection is closed. Slow but steady uploads are not cut off.
//! - Handlers see the TCP peer as `ConnectInfo<SocketAddr>`. HTTP/1.1 only.
//! - When `stop` turns true: no more accepts; idle connections close, requests in progress
//!   finish (still bounded by the timeouts above); the loop's task ends when all are gone.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tower_service::Service;

/// How long a saturated accept loop waits before looking again for a connection to evict.
const EVICTION_RETRY: Duration = Duration::from_millis(100);

/// Connection limits (see the module contract).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most simultaneous client connections; `None`: derived from the open-file limit.
    pub max_connections: Option<usize>,
    /// Time to receive a request head once its first byte arrived (and for a TLS handshake).
    pub header_timeout: Duration,
    /// Time a connection may wait with no request in progress.
    pub idle_timeout: Duration,
    /// Time a request body may deliver nothing while the server waits for it.
    pub body_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: None,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// A request body that delivered nothing for the body timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body stalled: no data for {} ms", after.as_millis())]
pub struct BodyStalled {
    /// The body timeout.
    pub after: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in progress, nothing received since `since`.
    Idle { since: Instant },
    /// A request head has been arriving since `since`.
    ReadingHead { since: Instant },
    /// `requests` requests in progress (handler or response body).
    Busy { requests: usize },
}

enum Ending {
    TimedOut(&'static str),
    Evicted,
    Stopping,
}

/// One connection's progress, watched by its own task (timeouts) and the accept loop
/// (eviction).
#[derive(Debug)]
struct Tracked {
    phase: Mutex<Phase>,
    changed: Notify,
    evict: Notify,
}

impl Tracked {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Idle {
                since: Instant::now(),
            }),
            changed: Notify::new(),
            evict: Notify::new(),
        }
    }

    fn phase(&self) -> Phase {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, f: impl FnOnce(Phase) -> Phase) {
        let changed = {
            let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
            let new = f(*phase);
            let changed = new != *phase;
            *phase = new;
            changed
        };
        if changed {
            self.changed.notify_waiters();
        }
    }

    fn bytes_received(&self) {
        self.update(|p| match p {
            Phase::Idle { .. } => Phase::ReadingHead {
                since: Instant::now(),
            },
            other => other,
        });
    }

    fn restart_idle(&self) {
        self.update(|_| Phase::Idle {
            since: Instant::now(),
        });
    }

    fn request_started(&self) {
        self.update(|p| match p {
            Phase::Busy { requests } => Phase::Busy {
                requests: requests + 1,
            },
            _ => Phase::Busy { requests: 1 },
        });
    }

    fn request_finished(&self) {
        self.update(|p| match p {
            Phase::Busy { requests } if requests > 1 => Phase::Busy {
                requests: requests - 1,
            },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        });
    }

    /// Since when this connection has been without a request in progress, if it is.
    fn waiting_since(&self) -> Option<Instant> {
        match self.phase() {
            Phase::Idle { since } | Phase::ReadingHead { since } => Some(since),
            Phase::Busy { .. } => None,
        }
    }

    /// Resolves when the current phase has outlasted its limit.
    async fn timed_out(&self, limits: &ConnectionLimits) -> &'static str {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let phase = self.phase();
            let (deadline, what) = match phase {
                Phase::Idle { since } => (since + limits.idle_timeout, "idle"),
                Phase::ReadingHead { since } => (since + limits.header_timeout, "header"),
                Phase::Busy { .. } => {
                    notified.await;
                    continue;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    if self.phase() == phase {
                        return what;
                    }
                }
                _ = notified => {}
            }
        }
    }
}

/// The connections being served, and the cap on them.
#[derive(Debug)]
pub struct Connections {
    cap: usize,
    permits: Arc<Semaphore>,
    table: Mutex<HashMap<u64, Arc<Tracked>>>,
    next_id: AtomicU64,
}

impl Connections {
    fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            cap,
            permits: Arc::new(Semaphore::new(cap)),
            table: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
        })
    }

    /// The connection cap.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections being served now.
    pub fn open(&self) -> usize {
        self.cap - self.permits.available_permits()
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Tracked>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the connection waiting longest without a request to close.
    fn evict_oldest_waiting(&self) {
        let oldest = self
            .table()
            .values()
            .filter_map(|t| t.waiting_since().map(|since| (since, t.clone())))
            .min_by_key(|(since, _)| *since);
        if let Some((_, tracked)) = oldest {
            tracked.evict.notify_one();
        }
    }

    /// A slot for one more connection, evicting waiting connections while the cap is reached;
    /// `None` once `stop` turns true.
    async fn admit(&self, stop: &mut watch::Receiver<bool>) -> Option<OwnedSemaphorePermit> {
        loop {
            if let Ok(permit) = self.permits.clone().try_acquire_owned() {
                return Some(permit);
            }
            self.evict_oldest_waiting();
            tokio::select! {
                permit = self.permits.clone().acquire_owned() => return permit.ok(),
                _ = tokio::time::sleep(EVICTION_RETRY) => {}
                _ = stopped(stop) => return None,
            }
        }
    }

    fn register(self: &Arc<Self>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tracked = Arc::new(Tracked::new());
        self.table().insert(id, tracked.clone());
        Registration {
            connections: self.clone(),
            id,
            tracked,
        }
    }
}

/// A connection's entry in [`Connections`], removed on drop.
struct Registration {
    connections: Arc<Connections>,
    id: u64,
    tracked: Arc<Tracked>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.connections.table().remove(&self.id);
    }
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Everything one connection needs.
#[derive(Clone)]
struct Shared {
    router: Router,
    limits: ConnectionLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    connections: Arc<Connections>,
}

/// Starts the accept loop on `listener` with at most `cap` connections; the task ends after
/// `stop` turns true and every connection is closed.
pub fn spawn(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    cap: usize,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: watch::Receiver<bool>,
) -> (Arc<Connections>, tokio::task::JoinHandle<()>) {
    let connections = Connections::new(cap);
    let shared = Shared {
        router,
        limits,
        tls,
        connections: connections.clone(),
    };
    (
        connections,
        tokio::spawn(accept_loop(listener, shared, stop)),
    )
}

async fn accept_loop(listener: TcpListener, shared: Shared, mut stop: watch::Receiver<bool>) {
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut stop) => break,
        };
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!("accepting a connection failed: {e}");
                tokio::select! {
                    _ = tokio::time::sleep(EVICTION_RETRY) => continue,
                    _ = stopped(&mut stop) => break,
                }
            }
        };
        let Some(permit) = shared.connections.admit(&mut stop).await else {
            break;
        };
        let registration = shared.connections.register();
        tasks.spawn(serve_connection(
            stream,
            peer,
            shared.clone(),
            registration,
            permit,
            stop.clone(),
        ));
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Shared,
    registration: Registration,
    _permit: OwnedSemaphorePermit,
    mut stop: watch::Receiver<bool>,
) {
    let tracked = registration.tracked.clone();
    let _ = stream.set_nodelay(true);
    let Some(acceptor) = shared.tls.clone() else {
        return drive(stream, peer, &shared, &tracked, stop).await;
    };
    let handshake = tokio::select! {
        done = tokio::time::timeout(shared.limits.header_timeout, acceptor.accept(stream)) => done,
        _ = tracked.evict.notified() => return,
        _ = stopped(&mut stop) => return,
    };
    match handshake {
        Ok(Ok(tls)) => {
            tracked.restart_idle();
            drive(tls, peer, &shared, &tracked, stop).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

async fn drive<I>(
    io: I,
    peer: SocketAddr,
    shared: &Shared,
    tracked: &Arc<Tracked>,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limits = shared.limits;
    let service = {
        let router = shared.router.clone();
        let tracked = tracked.clone();
        hyper::service::service_fn(move |request: Request<Incoming>| {
            let in_progress = RequestInProgress::start(tracked.clone());
            let mut router = router.clone();
            let (mut parts, body) = request.into_parts();
            parts.extensions.insert(ConnectInfo(peer));
            let body = Body::new(StallTimeoutBody::new(body, limits.body_timeout));
            async move {
                let response = match router.call(Request::from_parts(parts, body)).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(response.map(|body| {
                    Body::new(TrackedBody {
                        inner: body,
                        _in_progress: in_progress,
                    })
                }))
            }
        })
    };
    let observed = ObservedIo {
        inner: io,
        tracked: tracked.clone(),
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // A backstop only: the phases above close connections first.
        .header_read_timeout(limits.idle_timeout + limits.header_timeout);
    let connection = builder.serve_connection(TokioIo::new(observed), service);
    tokio::pin!(connection);
    let ending = loop {
        tokio::select! {
            done = connection.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                return;
            }
            what = tracked.timed_out(&limits) => break Ending::TimedOut(what),
            _ = tracked.evict.notified() => {
                if tracked.waiting_since().is_some() {
                    break Ending::Evicted;
                }
            }
            _ = stopped(&mut stop) => break Ending::Stopping,
        }
    };
    match ending {
        Ending::TimedOut(what) => tracing::debug!(%peer, "closing connection: {what} timeout"),
        Ending::Evicted => tracing::debug!(%peer, "closing waiting connection to make room"),
        Ending::Stopping => {
            connection.as_mut().graceful_shutdown();
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = tracked.timed_out(&limits) => {}
            }
        }
    }
}

/// Marks a request in progress on its connection until dropped (with the response body).
struct RequestInProgress(Arc<Tracked>);

impl RequestInProgress {
    fn start(tracked: Arc<Tracked>) -> Self {
        tracked.request_started();
        Self(tracked)
    }
}

impl Drop for RequestInProgress {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A response body that keeps its request "in progress" until it is sent or dropped.
struct TrackedBody {
    inner: Body,
    _in_progress: RequestInProgress,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body failing with [`BodyStalled`] when the client sends nothing for `timeout`
/// while the server waits for it.
struct StallTimeoutBody {
    inner: Incoming,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
    waiting: bool,
}

impl StallTimeoutBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            waiting: false,
        }
    }
}

impl HttpBody for StallTimeoutBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if !this.waiting {
            // Only time spent waiting on the client counts, not the handler's own pace.
            this.waiting = true;
            let deadline = Instant::now() + this.timeout;
            this.deadline.as_mut().reset(deadline);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled {
                    after: this.timeout,
                }
                .into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's byte stream, telling its [`Tracked`] when request bytes arrive.
struct ObservedIo<I> {
    inner: I,
    tracked: Arc<Tracked>,
}

impl<I: AsyncRead + Unpin> AsyncRead for ObservedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.tracked.bytes_received();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ObservedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
