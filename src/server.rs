//! Wiring: build the shared state, the router, serve, and shut down cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use std::time::Duration;

use crate::audit::{Audit, AuditError, AuditOptions};
use crate::auth::Authenticator;
use crate::bus::local::LocalBus;
use crate::bus::nats::{ConnectError, NatsBus, NatsOptions};
use crate::bus::{Bus, Deliver};
use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::{Metrics, MetricsError};
use crate::ratelimit::RateLimiter;
use crate::ratelimit::memory::MemoryLimiter;
use crate::ratelimit::redis::RedisLimiter;
use crate::state::Shared;
use crate::transport::wt;
use crate::{audit, http, ingest, transport};

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP/WebSocket port could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address tried.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The NATS client could not be set up.
    #[error(transparent)]
    Nats(#[from] ConnectError),
    /// Auth is misconfigured.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthConfigError),
    /// Ingest is open where it must not be (production without INGEST_TOKEN).
    #[error(transparent)]
    Ingest(#[from] ingest::IngestConfigError),
    /// Redis is misconfigured.
    #[error(transparent)]
    Redis(#[from] crate::ratelimit::redis::RedisConfigError),
    /// Metrics registration failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// WebTransport could not start (certificate or UDP port).
    #[error(transparent)]
    WebTransport(#[from] wt::WtError),
    /// The audit trail could not be set up (journal directory, SQLite file,
    /// or an unparsable DATABASE_URL).
    #[error("audit: {0}")]
    Audit(#[from] AuditError),
}

/// Serving failures.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Io(#[from] std::io::Error),
    /// gRPC reflection could not be built.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A gateway with its listener bound, ready to [`Gateway::run`].
pub struct Gateway {
    shared: Arc<Shared>,
    listener: TcpListener,
    grpc_listener: TcpListener,
    wt: wt::Listener,
}

impl Gateway {
    /// Builds the engines and binds the listener (port 0 picks a free one).
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let addr = SocketAddr::new(config.bind_addr, config.port);
        let listener = listen(addr, config.accept_backlog).map_err(|source| StartError::Bind { addr, source })?;
        let grpc_addr = SocketAddr::new(config.bind_addr, config.grpc_port);
        let grpc_listener =
            TcpListener::bind(grpc_addr).await.map_err(|source| StartError::Bind { addr: grpc_addr, source })?;
        let metrics = Arc::new(Metrics::new()?);
        let hub = Arc::new(Hub::new());
        let deliver = Deliver::new(Arc::clone(&hub), Arc::clone(&metrics));
        let bus: Arc<dyn Bus> = match &config.nats_url {
            Some(url) => {
                let opts = NatsOptions {
                    url: url.clone(),
                    prefix: config.nats_subject_prefix.clone(),
                    linger: Duration::from_millis(config.nats_interest_linger_ms),
                    jetstream: config.nats_jetstream,
                    last_value_max_age: Duration::from_secs(config.last_value_max_age_secs),
                };
                Arc::new(NatsBus::connect(opts, deliver, Arc::clone(&metrics)).await?)
            }
            None => {
                tracing::info!("no NATS_URL: in-process bus (this instance alone)");
                Arc::new(LocalBus::new(deliver))
            }
        };
        let auth = Authenticator::from_config(
            config.jwt_secret.as_deref(),
            config.jwt_public_key.as_deref(),
            config.jwt_issuer.as_deref(),
            config.jwt_audience.as_deref(),
            config.gateway_env.eq_ignore_ascii_case("production"),
        )?;
        if !auth.enabled() {
            tracing::warn!("AUTH IS OFF: no JWT_SECRET or JWT_PUBLIC_KEY; any client may connect as any user");
        }
        ingest::check_config(&config)?;
        let limiter: Arc<dyn RateLimiter> = match &config.redis_url {
            Some(url) => Arc::new(RedisLimiter::new(url, &config.redis_key_prefix, config.rate_limit)?),
            None => Arc::new(MemoryLimiter::new(config.rate_limit)),
        };
        let instance_id = config.instance_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let audit =
            Arc::new(Audit::start(AuditOptions::from_config(&config), &instance_id, Arc::clone(&metrics)).await?);
        let shared = Arc::new(Shared::new(config, hub, bus, metrics, auth, limiter, audit));
        let http_port = listener.local_addr().map(|a| a.port()).unwrap_or(shared.config.port);
        let wt = wt::Listener::bind(&shared.config, http_port, &shared.wt_certs).await?;
        Ok(Self { shared, listener, grpc_listener, wt })
    }

    /// The bound WebTransport (UDP) address.
    pub fn wt_addr(&self) -> SocketAddr {
        self.wt.local_addr()
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc_listener.local_addr()
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The shared state (for embedding and tests).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Serves until `shutdown` resolves, then: readiness 503, stop accepting,
    /// close every client with 1001, wait for them up to `SHUTDOWN_TIMEOUT`,
    /// flush the audit trail (journaling what cannot be written), drain the
    /// bus. Returns whether every client finished in time.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<bool, RunError> {
        let Self { shared, listener, grpc_listener, wt } = self;
        let wt_accept = wt.spawn(Arc::clone(&shared));
        let app = router(Arc::clone(&shared));
        let grpc_routes = ingest::grpc::routes(Arc::clone(&shared)).await?;
        if let Ok(addr) = grpc_listener.local_addr() {
            tracing::info!(%addr, "gRPC ingest listening (UpdateIngest, health, reflection)");
        }
        let grpc_token = shared.shutdown.clone();
        let grpc = tokio::spawn(
            tonic::transport::Server::builder()
                .add_routes(grpc_routes)
                .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), grpc_token.cancelled_owned()),
        );
        shared.set_ready(true);
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, instance = %shared.instance_id, "venta-gateway listening (HTTP + WebSocket)");
        }
        let token = shared.shutdown.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutdown: not ready, closing clients with 1001");
            token.cancel();
        };
        let send_buffer = shared.config.send_buffer_bytes;
        let listener = listener.tap_io(move |tcp| tune(tcp, send_buffer));
        axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
            .with_graceful_shutdown(signal)
            .await?;
        match grpc.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Err(e) => tracing::warn!(error = %e, "gRPC server task failed"),
        }
        // The WebTransport accept loop ends on the token; wait for it before
        // the endpoint may be closed (accepting on a closed one panics).
        let wt_endpoint = match wt_accept.await {
            Ok(endpoint) => Some(endpoint),
            Err(e) => {
                tracing::error!(error = %e, "WebTransport accept loop failed");
                None
            }
        };
        // axum stops at the upgrade: WebSocket and WebTransport sessions are
        // tracked apart, and close themselves with 1001.
        let stopping = std::time::Instant::now();
        shared.tracker.close();
        let timeout = shared.config.shutdown_timeout();
        let clean = tokio::time::timeout(timeout, shared.tracker.wait()).await.is_ok();
        if let Some(endpoint) = wt_endpoint {
            wt::close(&endpoint, Duration::from_secs(2)).await;
        }
        // Sessions have recorded their disconnects: the audit flush gets the
        // rest of the grace period (at least a second).
        shared.audit.close(timeout.saturating_sub(stopping.elapsed())).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), shared.bus.drain()).await;
        if clean {
            tracing::info!("shutdown complete");
        } else {
            tracing::warn!(?timeout, left = shared.tracker.len(), "shutdown timed out with connections still open");
        }
        Ok(clean)
    }
}

/// Binds with a deep accept backlog: after a restart thousands of clients
/// reconnect at once, and a short queue turns that into refused connections.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Per-connection socket options. No Nagle: the writer already batches, and
/// a small update must not wait for an ACK. A bounded send buffer: a client
/// that stops reading blocks the writer after `send_buffer` bytes, so its
/// queue starts conflating then instead of after megabytes of stale
/// positions sitting in the kernel (autotuning grows it to `tcp_wmem` max).
fn tune(tcp: &mut tokio::net::TcpStream, send_buffer: usize) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY");
    }
    if send_buffer > 0
        && let Err(e) = socket2::SockRef::from(&*tcp).set_send_buffer_size(send_buffer)
    {
        tracing::debug!(error = %e, "SO_SNDBUF");
    }
}

/// Every HTTP route of the gateway.
pub fn router(shared: Arc<Shared>) -> Router {
    let publish = Router::new()
        .route("/api/v1/publish/location", post(ingest::http::location))
        .route("/api/v1/publish/vendor", post(ingest::http::vendor))
        .layer(DefaultBodyLimit::max(ingest::http::MAX_BODY));
    Router::new()
        .route("/ws/location", get(transport::ws::location))
        .route("/ws/vendor", get(transport::ws::vendor))
        .route("/ws/status", get(http::status))
        .route("/health", get(http::health))
        .route("/health/live", get(http::live))
        .route("/health/ready", get(http::ready))
        .route("/metrics", get(http::metrics))
        .route("/wt/cert-hash", get(http::cert_hash))
        .route("/api/v1/audit", get(audit::api::list))
        .merge(publish)
        .with_state(shared)
}
