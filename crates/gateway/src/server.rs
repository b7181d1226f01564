//! Wiring: build the shared state, the router, serve, and shut down cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;

use std::time::Duration;

use crate::audit::{Audit, AuditError, AuditOptions};
use crate::auth::Authenticator;
use crate::bus::local::LocalBus;
use crate::bus::nats::{ConnectError, NatsBus, NatsOptions};
use crate::bus::{Bus, Deliver};
use crate::config::Config;
use crate::geo::local::LocalGeo;
use crate::geo::nats::{NatsGeo, NatsGeoOptions};
use crate::geo::{Areas, GeoLimits};
use crate::hub::Hub;
use crate::metrics::{Metrics, MetricsError};
use crate::ratelimit::RateLimiter;
use crate::ratelimit::memory::MemoryLimiter;
use crate::ratelimit::redis::RedisLimiter;
use crate::state::Shared;
use crate::transport::wt;
use crate::{audit, http, ingest, listener, transport};

/// Startup failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP/WebSocket port could not be bound.
    // `reason`, not `source`: the text is in the message already, and a
    // source would make chain-printing loggers repeat it.
    #[error("cannot bind {addr}: {reason}")]
    Bind {
        /// The address tried.
        addr: SocketAddr,
        /// Why.
        reason: std::io::Error,
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
    /// or an unparsable DATABASE_URL); its message names the part.
    #[error(transparent)]
    Audit(#[from] AuditError),
}

impl StartError {
    /// Whether the operator must change a setting (the binary exits 2): a
    /// value that parsed but cannot work, as opposed to a port in use or a
    /// dependency that is down.
    pub fn is_config(&self) -> bool {
        match self {
            Self::Auth(_) => true,
            Self::Ingest(e) => e.is_config(),
            Self::Redis(e) => e.is_config(),
            Self::Nats(e) => e.is_config(),
            Self::Audit(e) => e.is_config(),
            _ => false,
        }
    }
}

/// Serving failures.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Io(std::io::Error),
    /// gRPC reflection could not be built.
    #[error("gRPC reflection: {0}")]
    Reflection(tonic_reflection::server::Error),
}

impl From<tonic_reflection::server::Error> for RunError {
    fn from(e: tonic_reflection::server::Error) -> Self {
        Self::Reflection(e)
    }
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
        let addr = SocketAddr::new(config.server.bind_addr, config.server.port);
        let listener =
            listen(addr, config.server.accept_backlog).map_err(|reason| StartError::Bind { addr, reason })?;
        let grpc_addr = SocketAddr::new(config.server.bind_addr, config.server.grpc_port);
        let grpc_listener =
            TcpListener::bind(grpc_addr).await.map_err(|reason| StartError::Bind { addr: grpc_addr, reason })?;
        let metrics = Arc::new(Metrics::new()?);
        metrics.connections_max.set(i64::try_from(config.limits.max_connections).unwrap_or(i64::MAX));
        metrics.busiest.set_capacity(config.http.dashboard_top_vendors * 4);
        let hub = Arc::new(Hub::new());
        let deliver = Deliver::new(Arc::clone(&hub), Arc::clone(&metrics));
        let areas = Areas::new(GeoLimits::from_config(&config.geo), Arc::clone(&metrics));
        let bus: Arc<dyn Bus> = match &config.nats.url {
            Some(url) => {
                let opts = NatsOptions {
                    url: url.clone(),
                    prefix: config.nats.subject_prefix.clone(),
                    linger: Duration::from_millis(config.nats.interest_linger_ms),
                    jetstream: config.nats.jetstream,
                    last_value_max_age: Duration::from_secs(config.nats.last_value_max_age_secs),
                    last_value_max_bytes: config.nats.last_value_max_bytes,
                    stream_max_bytes: config.nats.stream_max_bytes,
                    last_value_replicas: config.nats.last_value_replicas,
                    max_message_size: ingest::http::MAX_BODY,
                    probe_interval: Duration::from_millis(config.nats.health_probe_interval_ms),
                };
                let nats = Arc::new(NatsBus::connect(opts, deliver, Arc::clone(&metrics)).await?);
                let geo_opts = NatsGeoOptions {
                    ttl: Duration::from_secs(config.geo.vendor_ttl_secs),
                    replicas: config.geo.kv_replicas,
                };
                // Areas across instances keep their positions in JetStream KV;
                // with NATS_JETSTREAM=false they are off (`unavailable`).
                if config.geo.enabled && config.nats.jetstream {
                    let geo = NatsGeo::start(Arc::clone(&nats), &areas, Arc::clone(&metrics), geo_opts);
                    areas.set_engine(geo);
                } else if config.geo.enabled {
                    tracing::info!("NATS_JETSTREAM=false: area subscriptions are off (they need JetStream KV)");
                }
                nats
            }
            None => {
                tracing::info!("no NATS_URL: in-process bus (this instance alone)");
                let bus = LocalBus::new(deliver, config.nats.last_value_max_bytes);
                if config.geo.enabled {
                    let geo = LocalGeo::new(&areas);
                    areas.set_engine(Arc::clone(&geo) as Arc<dyn crate::geo::GeoEngine>);
                    Arc::new(bus.with_geo(geo))
                } else {
                    Arc::new(bus)
                }
            }
        };
        let auth = Authenticator::from_config(
            config.auth.jwt_secret.as_deref(),
            config.auth.jwt_public_key.as_deref(),
            config.auth.jwt_issuer.as_deref(),
            config.auth.jwt_audience.as_deref(),
            config.auth.is_production(),
        )?
        .with_leeway(config.auth.jwt_leeway_secs);
        if !auth.enabled() {
            tracing::warn!("AUTH IS OFF: no JWT_SECRET or JWT_PUBLIC_KEY; any client may connect as any user");
        }
        ingest::check_config(&config.auth)?;
        let limiter: Arc<dyn RateLimiter> = match &config.redis.url {
            Some(url) => Arc::new(RedisLimiter::start(
                url,
                config.redis.topology(),
                &config.redis.key_prefix,
                config.limits.rate_limit,
                Duration::from_millis(config.nats.health_probe_interval_ms),
            )?),
            None => Arc::new(MemoryLimiter::new(config.limits.rate_limit)),
        };
        let instance_id = config.log.instance_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let audit =
            Arc::new(Audit::start(AuditOptions::from_config(&config.audit), &instance_id, Arc::clone(&metrics)).await?);
        let shared = Arc::new(Shared::new(config, hub, bus, metrics, auth, limiter, audit, areas));
        let http_port = listener.local_addr().map(|a| a.port()).unwrap_or(shared.config.server.port);
        let wt = wt::Listener::bind(
            &shared.config.webtransport,
            shared.config.server.bind_addr,
            http_port,
            &shared.wt_certs,
        )
        .await?;
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
    /// close every client with 1001, flush the audit trail (journaling what
    /// cannot be written), drain the bus. All of it ends within
    /// `SHUTDOWN_TIMEOUT` of the signal, whatever clients do: each phase
    /// gets what is left of one deadline, and what is still open then is
    /// dropped. Returns whether every client finished in time.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<bool, RunError> {
        let Self { shared, listener, grpc_listener, wt } = self;
        let wt_accept = wt.spawn(Arc::clone(&shared));
        let app = router(Arc::clone(&shared));
        let grpc_routes = ingest::grpc::routes(Arc::clone(&shared)).await?;
        if let Ok(addr) = grpc_listener.local_addr() {
            tracing::info!(%addr, "gRPC ingest listening (UpdateIngest, health, reflection)");
        }
        let grpc_token = shared.shutdown.clone();
        let mut grpc = shared.tasks.spawn(
            tonic::transport::Server::builder()
                .add_routes(grpc_routes)
                .serve_with_incoming_shutdown(TcpListenerStream::new(grpc_listener), grpc_token.cancelled_owned()),
        );
        shared.tasks.spawn(Arc::clone(&shared.areas).run_expiry(shared.shutdown.clone()));
        shared.set_ready(true);
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, instance = %shared.instance_id, "venta-gateway listening (HTTP + WebSocket)");
        }
        let token = shared.shutdown.clone();
        let signal_token = token.clone();
        let signal = shared.tasks.spawn(async move {
            tokio::select! {
                () = shutdown => {
                    tracing::info!("shutdown: not ready, closing clients with 1001");
                    signal_token.cancel();
                }
                () = signal_token.cancelled() => {}
            }
        });
        let timeout = shared.config.log.shutdown_timeout();
        // The last part of the grace period belongs to the audit flush and
        // the bus drain; clients and HTTP requests get the rest.
        let tail = (timeout / 4).min(Duration::from_secs(2));
        let limits = shared.config.http_limits();
        let stopped_at =
            listener::serve(listener, app, limits, Arc::clone(&shared.metrics), token, timeout - tail).await;
        signal.abort();
        let deadline = stopped_at + timeout;
        let clients_deadline = deadline - tail;
        // gRPC's own graceful stop waits for every connection; past the
        // deadline it is abandoned.
        match tokio::time::timeout_at(clients_deadline, &mut grpc).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "gRPC server ended with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "gRPC server task failed"),
            Err(_) => {
                tracing::warn!("gRPC connections still open at the shutdown deadline; dropping them");
                grpc.abort();
            }
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
        // WebSocket and WebTransport sessions are tracked apart from HTTP,
        // and close themselves with 1001.
        shared.tracker.close();
        let clean = tokio::time::timeout_at(clients_deadline, shared.tracker.wait()).await.is_ok();
        if let Some(endpoint) = wt_endpoint {
            let left = deadline.saturating_duration_since(Instant::now());
            wt::close(&endpoint, left.min(Duration::from_secs(1))).await;
        }
        // Sessions have recorded their disconnects: the audit flush gets
        // what is left of the grace period, the bus drain the remainder.
        let left = deadline.saturating_duration_since(Instant::now());
        shared.audit.close(left.saturating_sub(tail / 4)).await;
        let _ = tokio::time::timeout_at(deadline, shared.bus.drain()).await;
        // The gateway's own tasks have seen the token by now; the limiter's
        // probe is told here (checks went on until the last client left).
        let _ = tokio::time::timeout_at(deadline, shared.limiter.close()).await;
        shared.tasks.close();
        if tokio::time::timeout_at(deadline, shared.tasks.wait()).await.is_err() {
            tracing::warn!(left = shared.tasks.len(), "background tasks still running at the shutdown deadline");
        }
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

/// Bounds a request, reading its body included: a client trickling a
/// 64 KiB publish body a byte at a time gets 408 instead of a slot forever.
async fn request_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            [(axum::http::header::CONNECTION, "close")],
            axum::Json(serde_json::json!({"error": {"code": "unavailable", "message": "request took longer than HTTP_REQUEST_TIMEOUT_MS"}})),
        )
            .into_response(),
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
        .route("/sse/location", get(transport::sse::location))
        .route("/sse/vendor", get(transport::sse::vendor))
        .route("/sse/area", get(transport::sse::area))
        .route("/ws/status", get(http::status))
        .route("/health", get(http::health))
        .route("/health/live", get(http::live))
        .route("/health/ready", get(http::ready))
        .route("/metrics", get(http::metrics))
        .route("/wt/cert-hash", get(http::cert_hash))
        .route("/api/v1/audit", get(audit::api::list))
        .merge(crate::dashboard::routes(&shared))
        .merge(publish)
        .layer(middleware::from_fn_with_state(
            Duration::from_millis(shared.config.http.request_timeout_ms),
            request_timeout,
        ))
        .with_state(shared)
}
