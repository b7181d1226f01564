//! The HTTP listener on the clients' port: accepts TCP, speaks HTTP/1.1 until
//! a connection upgrades to WebSocket (or HTTP/2 to clients that offer it),
//! and bounds everything a client that never upgrades can hold.
//!
//! `axum::serve` has no header timeout, no bound on connections and waits
//! for every connection on shutdown; this loop is its replacement:
//! - a request head must arrive within `HTTP_HEADER_TIMEOUT_MS`, counted
//!   from the moment the connection (or its previous response) was ready
//!   for one, so a slowloris client and an idle keep-alive connection are
//!   both closed then; a connection (HTTP/2 too) with no request in flight
//!   for that long is closed as well;
//! - request heads are capped at `HTTP_MAX_HEADER_BYTES` (431 beyond);
//! - at most `HTTP_MAX_CONNECTIONS` connections that are not WebSocket (yet)
//!   are held; over that a connection is answered 503 and closed at once, so
//!   idle sockets cannot exhaust descriptors. A WebSocket leaves this count
//!   at its upgrade and counts towards `WS_MAX_CONNECTIONS` instead;
//! - on shutdown it stops accepting, lets in-flight requests finish until a
//!   deadline, then drops whatever is left.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

use crate::metrics::Metrics;

/// Bounds of the HTTP side of the clients' port.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Time to receive a complete request head (also the keep-alive idle time).
    pub header_timeout: Duration,
    /// Largest request head, bytes (at least 8192, hyper's floor).
    pub max_header_bytes: usize,
    /// Connections held that have not upgraded to WebSocket.
    pub max_connections: usize,
    /// Kernel send buffer per socket (0: the OS default).
    pub send_buffer: usize,
    /// Concurrent streams per HTTP/2 connection; 0: HTTP/1.1 only.
    pub http2_max_streams: u32,
}

/// hyper's smallest read buffer; `max_buf_size` panics below it.
pub const MIN_HEADER_BYTES: usize = 8192;

/// What the refused connection reads before it is closed.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\ncontent-type: text/plain\r\ncontent-length: 32\r\n\r\ntoo many HTTP connections; retry";

/// Accepts and serves until `stop` is cancelled; then drains in-flight
/// requests for at most `drain` and returns when the stop was seen (the
/// start of the caller's shutdown deadline).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    drain: Duration,
) -> tokio::time::Instant {
    // HTTP/1.1 always (browsers' WebSockets, health checks, publishers);
    // HTTP/2 for clients that offer it with prior knowledge (h2c), so many
    // SSE streams share one connection. h2 has no header timeout: its
    // streams are bounded per connection and its connections by the same
    // slots, and keep-alive pings find dead peers.
    let mut http = auto::Builder::new(TokioExecutor::new());
    if limits.http2_max_streams == 0 {
        http = http.http1_only();
    }
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // The read buffer bounds the request head: past it hyper answers 431.
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BYTES));
    let header_list = u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX);
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_header_list_size(header_list)
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(limits.header_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    let mut accept_errors_logged_at: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (EMFILE) and the like: log now and then,
                // pause so the loop does not spin, keep serving.
                let now = tokio::time::Instant::now();
                if accept_errors_logged_at.is_none_or(|t| now.duration_since(t) > Duration::from_secs(10)) {
                    tracing::warn!(error = %e, "cannot accept a TCP connection; retrying");
                    accept_errors_logged_at = Some(now);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            metrics.connections_rejected.with_label_values(&["http_max_connections"]).inc();
            // Best effort and never waiting: the socket is closed right after.
            let _ = tcp.try_write(REFUSAL);
            continue;
        };
        tune(&tcp, limits.send_buffer);
        let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
        let app = app.clone();
        let activity = Arc::new(Activity::default());
        let seen = Arc::clone(&activity);
        let abort = CancellationToken::new();
        let abort_handle = ConnAbort(abort.clone());
        let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(remote));
            req.extensions_mut().insert(abort_handle.clone());
            let mut app = app.clone();
            let guard = Activity::begin(&seen);
            async move {
                let resp = app.call(req).await.unwrap_or_else(|e: Infallible| match e {});
                // The request counts until its body is sent (or dropped): a
                // long SSE stream is activity, an idle connection is not.
                Ok::<_, Infallible>(resp.map(|body| axum::body::Body::new(Tracked { body, _guard: guard })))
            }
        });
        let conn = graceful.watch(http.serve_connection_with_upgrades(TokioIo::new(tcp), service).into_owned());
        let gauge = metrics.http_connections.clone();
        gauge.inc();
        let idle_after = limits.header_timeout;
        conns.spawn(async move {
            tokio::select! {
                ended = conn => if let Err(e) = ended {
                    tracing::debug!(%remote, error = %e, "HTTP connection ended with an error");
                },
                // HTTP/1.1 has hyper's header timeout; HTTP/2 has none, so an
                // h2 connection without a request for the same time is closed.
                () = activity.idle(idle_after) => tracing::debug!(%remote, "idle HTTP connection closed"),
                () = abort.cancelled() => tracing::debug!(%remote, "HTTP connection dropped: a response stalled"),
            }
            gauge.dec();
            drop(slot);
        });
    }
    drop(listener);
    let stopped_at = tokio::time::Instant::now();
    let deadline = stopped_at + drain;
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep_until(deadline) => {
            tracing::debug!(left = conns.len(), "HTTP connections still open at the shutdown deadline; dropping them");
        }
    }
    conns.abort_all();
    while conns.join_next().await.is_some() {}
    stopped_at
}

/// Per-connection socket options. No Nagle: the writer already batches, and
/// a small update must not wait for an ACK. A bounded send buffer: a client
/// that stops reading blocks the writer after `send_buffer` bytes, so its
/// queue starts conflating then instead of after megabytes of stale
/// positions sitting in the kernel (autotuning grows it to `tcp_wmem` max).
fn tune(tcp: &TcpStream, send_buffer: usize) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY");
    }
    if send_buffer > 0
        && let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(send_buffer)
    {
        tracing::debug!(error = %e, "SO_SNDBUF");
    }
}

/// Requests in flight on one connection, and whether one began or ended
/// since the idle check last looked.
#[derive(Debug, Default)]
struct Activity {
    active: std::sync::atomic::AtomicUsize,
    touched: std::sync::atomic::AtomicBool,
}

impl Activity {
    fn begin(this: &Arc<Self>) -> ActiveGuard {
        use std::sync::atomic::Ordering;
        this.active.fetch_add(1, Ordering::AcqRel);
        this.touched.store(true, Ordering::Release);
        ActiveGuard(Arc::clone(this))
    }

    /// Resolves once the connection had no request in flight and none
    /// began or ended for a whole `after` (so within `2 × after` of going
    /// idle).
    async fn idle(&self, after: Duration) {
        use std::sync::atomic::Ordering;
        loop {
            tokio::time::sleep(after).await;
            let touched = self.touched.swap(false, Ordering::AcqRel);
            if !touched && self.active.load(Ordering::Acquire) == 0 {
                return;
            }
        }
    }
}

/// One request in flight; ends when its response body is done or dropped.
struct ActiveGuard(Arc<Activity>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        self.0.active.fetch_sub(1, Ordering::AcqRel);
        self.0.touched.store(true, Ordering::Release);
    }
}

/// A response body that holds its request's [`ActiveGuard`].
struct Tracked {
    body: axum::body::Body,
    _guard: ActiveGuard,
}

impl hyper::body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Drops the request's connection at once: for a streamed HTTP/1.1 response
/// (SSE) whose client stopped reading, where hyper's write would otherwise
/// wait forever (it never polls the body again to see it end).
#[derive(Debug, Clone)]
pub struct ConnAbort(CancellationToken);

impl ConnAbort {
    /// Closes the connection.
    pub fn abort(&self) {
        self.0.cancel();
    }
}
