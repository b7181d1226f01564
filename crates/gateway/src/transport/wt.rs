//! WebTransport transport (wtransport, HTTP/3 over QUIC on UDP `WT_PORT`):
//! sessions on `/wt/location` and `/wt/vendor`, MessagePack frames on one
//! client-opened bidirectional stream, datagrams for location subscriptions
//! that ask for them. Every rule is the [`Session`](crate::session::Session)'s,
//! as for WebSocket.
//!
//! Shutdown order (wtransport's `accept()` panics once the endpoint is
//! closed): leave the accept loop, let sessions close themselves with 1001,
//! then [`close`] the endpoint and wait until it is idle.

pub mod cert;
mod conn;

use std::future::IntoFuture as _;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::sync::Arc;
use std::time::Duration;

use wtransport::config::{Ipv6DualStackConfig, QuicTransportConfig};
use wtransport::endpoint::IncomingSession;
use wtransport::endpoint::endpoint_side::Server;
use wtransport::{Endpoint, Identity, ServerConfig, VarInt};

use self::cert::{CertError, CertInfo, CertSource, CertStore};
use crate::admission::{self, Knock};
use crate::auth;
use crate::config::WebTransportConfig;
use crate::protocol::Channel as Path;
use crate::protocol::Close;
use crate::state::Shared;

/// Time a client gets for the QUIC + TLS handshake and the session request.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// QUIC keep-alive: keeps NAT bindings and both idle timers fresh between
/// application heartbeats.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Per-stream receive window. Client frames are at most
/// `WS_MAX_MESSAGE_BYTES` (4 KiB by default).
const STREAM_WINDOW: u32 = 64 * 1024;
/// Receive window for the whole connection, every stream together: what a
/// client can make the gateway buffer, however many streams it opens.
const CONNECTION_WINDOW: u32 = 256 * 1024;
/// Unacknowledged bytes the gateway buffers per connection. Small, so a slow
/// reader pushes back into its outbox, where conflation and the
/// slow-consumer close apply, instead of into QUIC's buffers.
const SEND_WINDOW: u64 = 256 * 1024;

/// WebTransport could not start.
#[derive(Debug, thiserror::Error)]
pub enum WtError {
    /// The certificate could not be loaded or made.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// The UDP port could not be bound.
    #[error("cannot bind UDP {addr} for WebTransport: {reason}")]
    Bind {
        /// The address tried.
        addr: SocketAddr,
        /// Why (not a `source`: it is in the message already).
        reason: std::io::Error,
    },
}

/// A bound WebTransport endpoint, not yet accepting.
pub struct Listener {
    endpoint: Arc<Endpoint<Server>>,
    addr: SocketAddr,
    source: CertSource,
}

impl Listener {
    /// Loads or makes the certificate, publishes its hash in `certs` and
    /// binds UDP `WT_PORT` (default: `http_port`, the HTTP listener's port)
    /// on `bind_addr`, the `BIND_ADDR` the TCP listeners share.
    pub async fn bind(
        config: &WebTransportConfig,
        bind_addr: IpAddr,
        http_port: u16,
        certs: &CertStore,
    ) -> Result<Self, WtError> {
        let source = CertSource::from_config(config);
        let identity = cert::load(&source).await?;
        let info = CertInfo::of(&identity)?;
        let addr = SocketAddr::new(bind_addr, config.port.unwrap_or(http_port));
        let endpoint =
            Endpoint::server(server_config(addr, identity)).map_err(|reason| WtError::Bind { addr, reason })?;
        let addr = endpoint.local_addr().map_err(|reason| WtError::Bind { addr, reason })?;
        certs.set_current(info);
        Ok(Self { endpoint: Arc::new(endpoint), addr, source })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts sessions until shutdown and keeps the certificate fresh.
    /// Returns the endpoint for [`close`] once the accept loop has ended.
    pub fn spawn(self, shared: Arc<Shared>) -> tokio::task::JoinHandle<Arc<Endpoint<Server>>> {
        let Self { endpoint, addr, source } = self;
        let reloader = Arc::clone(&endpoint);
        let reload = move |identity: Identity| {
            reloader.reload_config(server_config(addr, identity), false).map_err(|e| e.to_string())
        };
        // Both end on the shutdown token; shutdown waits for them.
        shared.tasks.spawn(cert::keep_fresh(source, Arc::clone(&shared.wt_certs), reload, shared.shutdown.clone()));
        tracing::info!(%addr, "WebTransport listening (UDP, /wt/location, /wt/vendor)");
        let tasks = shared.tasks.clone();
        tasks.spawn(async move {
            accept_loop(&endpoint, &shared).await;
            endpoint
        })
    }
}

/// Closes every remaining session with 1001 and waits (bounded) until the
/// peers were told. Call only after the accept loop has ended.
pub async fn close(endpoint: &Endpoint<Server>, wait: Duration) {
    endpoint.close(VarInt::from_u32(u32::from(Close::GOING_AWAY)), b"server shutting down");
    if tokio::time::timeout(wait, endpoint.wait_idle()).await.is_err() {
        tracing::warn!("WebTransport endpoint not idle after {wait:?}");
    }
}

fn transport_config() -> QuicTransportConfig {
    let mut t = QuicTransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE))
        .stream_receive_window(STREAM_WINDOW.into())
        .receive_window(CONNECTION_WINDOW.into())
        .send_window(SEND_WINDOW)
        // The CONNECT stream and the session's stream, with room to spare;
        // HTTP/3 needs three unidirectional streams of its own.
        .max_concurrent_bidi_streams(8u32.into())
        .max_concurrent_uni_streams(8u32.into())
        // Client datagrams only prove liveness; outgoing ones are latest
        // positions, so a short queue loses nothing worth keeping.
        .datagram_receive_buffer_size(Some(16 * 1024))
        .datagram_send_buffer_size(64 * 1024);
    t
}

/// The server configuration; `::` binds dual-stack (Chromium tries ::1
/// first for `localhost`).
fn server_config(addr: SocketAddr, identity: Identity) -> ServerConfig {
    let builder = ServerConfig::builder();
    let builder = match addr.ip() {
        IpAddr::V6(ip) if ip.is_unspecified() => {
            builder.with_bind_address_v6(SocketAddrV6::new(ip, addr.port(), 0, 0), Ipv6DualStackConfig::Allow)
        }
        _ => builder.with_bind_address(addr),
    };
    builder.with_custom_transport(identity, transport_config()).build()
}

async fn accept_loop(endpoint: &Endpoint<Server>, shared: &Arc<Shared>) {
    loop {
        let incoming = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => return,
            incoming = endpoint.accept() => incoming,
        };
        shared.tracker.spawn(handshake(incoming, Arc::clone(shared)));
    }
}

fn route(path: &str) -> Option<Path> {
    match path.split_once('?').map_or(path, |(p, _)| p) {
        "/wt/location" => Some(Path::Location),
        "/wt/vendor" => Some(Path::Vendor),
        _ => None,
    }
}

/// Runs a handshake step, bounded by [`HANDSHAKE_TIMEOUT`] and abandoned at
/// shutdown (so a stalled client cannot hold the drain up).
async fn step<F: std::future::Future>(shared: &Shared, fut: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        () = shared.shutdown.cancelled() => None,
        out = tokio::time::timeout(HANDSHAKE_TIMEOUT, fut) => out.ok(),
    }
}

/// One incoming session: handshake, route, admission, then the session.
///
/// The handshake runs boxed: its futures (wtransport's accept and answer
/// futures) are larger than the session's, and a task's future is as large
/// as its largest state for as long as the task lives, so an unboxed
/// handshake would cost every idle session ~2 KiB more for its whole life.
async fn handshake(incoming: IncomingSession, shared: Arc<Shared>) {
    if let Some((conn, path, remote, admitted)) = Box::pin(negotiate(incoming, &shared)).await {
        conn::serve(conn, shared, path, remote, admitted).await;
    }
}

/// A session past its handshake and the admission gate.
type Accepted = (wtransport::Connection, Path, SocketAddr, admission::Admitted);

/// The handshake, routing and admission: the accepted session, or `None`
/// once the client was answered (refused, timed out, failed).
async fn negotiate(incoming: IncomingSession, shared: &Arc<Shared>) -> Option<Accepted> {
    let request = match step(shared, incoming.into_future()).await {
        Some(Ok(request)) => request,
        Some(Err(e)) => {
            tracing::debug!(error = %e, "WebTransport handshake failed");
            return None;
        }
        None => {
            tracing::debug!("WebTransport handshake timed out or shutdown began");
            return None;
        }
    };
    let remote = request.remote_address();
    // Dual-stack sockets report IPv4 clients as ::ffff:a.b.c.d.
    let remote = SocketAddr::new(remote.ip().to_canonical(), remote.port());
    let Some(path) = route(request.path()) else {
        // The path only, never the query: browsers put the token there.
        let path = request.path().split_once('?').map_or(request.path(), |(p, _)| p);
        tracing::debug!(%remote, path, "WebTransport session for an unknown path");
        request.not_found().await;
        return None;
    };
    // Browsers cannot set headers on WebTransport: the token rides in the
    // URL (`?token=`); other clients may send `authorization` too.
    let query = request.path().split_once('?').map(|(_, q)| q.to_owned());
    let authorization = request.headers().get("authorization").cloned();
    let token = auth::token_from(query.as_deref(), authorization.as_deref());
    let knock = Knock { remote: remote.ip(), origin: request.origin(), token: token.as_deref() };
    let verdict = admission::admit(shared, knock);
    if let Err(refusal) = &verdict
        && !refusal.after_handshake()
    {
        tracing::debug!(%remote, reason = refusal.label(), "WebTransport session refused");
        // wtransport answers the CONNECT with 403, 404 or 429 only: a
        // refusal that is final (401, 403) is 403; "later" (429, 503) is 429.
        if refusal.status().as_u16() == 401 || refusal.status().as_u16() == 403 {
            request.forbidden().await;
        } else {
            request.too_many_requests().await;
        }
        return None;
    }
    let conn = match step(shared, request.accept()).await {
        Some(Ok(conn)) => conn,
        Some(Err(e)) => {
            tracing::debug!(%remote, error = %e, "WebTransport session accept failed");
            return None;
        }
        None => return None,
    };
    let admitted = match verdict {
        Ok(admitted) => admitted,
        // As on WebSocket: the client learns why (1013, 1008) and may retry.
        Err(refusal) => {
            conn::close_now(&conn, &refusal.close());
            return None;
        }
    };
    Some((conn, path, remote, admitted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, F: std::future::Future>(_: impl FnOnce(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every session's task holds one `handshake` future for its whole life:
    /// 5,368 bytes in a debug build while the handshake ran inline, 3,672
    /// once it was boxed (the session's own `serve` is 3,136).
    #[test]
    fn session_task_stays_small() {
        let size = future_size(handshake);
        assert!(size <= 3_700, "handshake future grew to {size} bytes (was 3,672 in a debug build)");
    }

    #[test]
    fn routes_the_two_session_paths_only() {
        assert_eq!(route("/wt/location"), Some(Path::Location));
        assert_eq!(route("/wt/vendor?token=abc"), Some(Path::Vendor));
        assert_eq!(route("/wt/vendor/"), None);
        assert_eq!(route("/ws/location"), None);
        assert_eq!(route("/"), None);
    }
}
