//! Configuration: every option is an environment variable (the seed's names)
//! and an equal command-line flag. Errors name the variable and the value.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Where the gateway runs: production refuses unsafe defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GatewayEnv {
    /// Local work: auth and ingest may be open (logged loudly).
    #[value(alias = "dev")]
    Development,
    /// Refuses to start without client auth and an ingest credential.
    #[value(alias = "prod")]
    Production,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// A duration in `unit_ms` units: a bare integer is in that unit (the
/// seed's millisecond and second integers keep working), or a number with a
/// unit: `500ms`, `30s`, `5m`, `1h`, `7d`. Rounded to whole units, up.
pub fn parse_duration(s: &str, unit_ms: u64) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(v) = s.parse::<u64>() {
        return Ok(v);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 =
        num.parse().map_err(|_| format!("{s:?} is not a duration like 500ms, 30s, 5m, 1h or a plain number"))?;
    let per: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => return Err(format!("unknown unit {other:?}: use ms, s, m, h or d")),
    };
    let ms = n.checked_mul(per).ok_or_else(|| format!("{s:?} is out of range"))?;
    Ok(ms.div_ceil(unit_ms))
}

fn millis(s: &str) -> Result<u64, String> {
    parse_duration(s, 1)
}

fn seconds(s: &str) -> Result<u64, String> {
    parse_duration(s, 1_000)
}

/// A duration in milliseconds within `range`.
fn millis_in(s: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, String> {
    let v = millis(s)?;
    if !range.contains(&v) {
        return Err(format!("must be between {} and {} milliseconds", range.start(), range.end()));
    }
    Ok(v)
}

fn probe_ms(s: &str) -> Result<u64, String> {
    millis_in(s, 100..=60_000)
}

fn spill_ms(s: &str) -> Result<u64, String> {
    millis_in(s, 1..=60_000)
}

fn heartbeat_ms(s: &str) -> Result<u64, String> {
    let v = millis(s)?;
    if v < 1000 {
        return Err("must be at least 1000 (milliseconds)".into());
    }
    Ok(v)
}

/// A tracing filter whose every directive means something: a bare word that
/// is not a level (`verbose`) would be read as a target name and silence
/// every log line, including the warning that auth is off.
fn log_level(s: &str) -> Result<String, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in s.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            Some(_) => return Err(format!("directive {directive:?} has no target before '='")),
            None => directive,
        };
        if !LEVELS.iter().any(|l| l.eq_ignore_ascii_case(level)) {
            return Err(format!(
                "{level:?} is not a level: use off, error, warn, info, debug, trace, or target=level directives"
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s).map_err(|e| e.to_string())?;
    Ok(s.to_owned())
}

fn header_timeout_ms(s: &str) -> Result<u64, String> {
    let v = millis(s)?;
    if !(100..=600_000).contains(&v) {
        return Err("must be between 100 and 600000 (milliseconds)".into());
    }
    Ok(v)
}

fn header_bytes(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|e| format!("{e}"))?;
    if !(crate::listener::MIN_HEADER_BYTES..=1 << 20).contains(&v) {
        return Err(format!("must be between {} and 1048576 bytes", crate::listener::MIN_HEADER_BYTES));
    }
    Ok(v)
}

fn leeway_secs(s: &str) -> Result<u64, String> {
    let v = seconds(s)?;
    if v > 300 {
        return Err("must be at most 300 seconds".into());
    }
    Ok(v)
}

/// `scheme://host[:port]` origins as browsers send them, compared exactly.
fn origins(s: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> =
        s.split(',').map(str::trim).filter(|o| !o.is_empty()).map(|o| o.trim_end_matches('/').to_owned()).collect();
    if list.is_empty() {
        return Err("must list at least one origin, e.g. https://app.example.com".into());
    }
    for o in &list {
        let ok = o == "*"
            || (o.starts_with("http://") || o.starts_with("https://"))
                && !o.split_once("://").is_some_and(|(_, h)| h.contains('/'));
        if !ok {
            return Err(format!("{o:?} is not an origin like https://app.example.com (scheme and host, no path)"));
        }
    }
    Ok(list)
}

fn positive(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|e| format!("{e}"))?;
    if v == 0 {
        return Err("must be greater than 0".into());
    }
    Ok(v)
}

fn area_km(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if !(v.is_finite() && v > 0.0 && v <= 20_000.0) {
        return Err("must be a number of kilometres greater than 0 and at most 20000".into());
    }
    Ok(v)
}

fn kv_replicas(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=5).contains(&v) {
        return Err("must be between 1 and 5".into());
    }
    Ok(v)
}

fn snapshot_max(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=10_000).contains(&v) {
        return Err("must be between 1 and 10000".into());
    }
    Ok(v)
}

fn top_vendors(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|e| format!("{e}"))?;
    if !(1..=100).contains(&v) {
        return Err("must be between 1 and 100".into());
    }
    Ok(v)
}

fn nonzero_secs(s: &str) -> Result<u64, String> {
    let v = seconds(s)?;
    if v == 0 {
        return Err("must be greater than 0".into());
    }
    Ok(v)
}

/// Dot-separated tokens of the identifier alphabet: no wildcards.
fn subject_prefix(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.split('.')
            .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
    if ok { Ok(s.to_owned()) } else { Err("must be dot-separated tokens of [A-Za-z0-9_-]".into()) }
}

/// Browsers accept a certificate pinned by hash only if it is valid for at
/// most 14 days; stay strictly under.
pub const MAX_WT_CERT_VALIDITY_SECS: u64 = 14 * 86_400 - 1;

fn cert_validity(s: &str) -> Result<u64, String> {
    let v = seconds(s)?;
    if !(10..=MAX_WT_CERT_VALIDITY_SECS).contains(&v) {
        return Err(format!("must be between 10 and {MAX_WT_CERT_VALIDITY_SECS} seconds (under 14 days)"));
    }
    Ok(v)
}

fn nonzero_u32(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v == 0 {
        return Err("must be greater than 0".into());
    }
    Ok(v)
}

/// Kilometres of an area's extent: a non-finite or non-positive size would
/// make every distance check meaningless; 20000 km is half the equator,
/// farther than any two points on Earth.
/// Gateway settings (`venta-gateway --help` lists them with defaults), one
/// group per subsystem so a setting is found where it is used: each
/// subsystem is built from its own group, and each group is one heading of
/// `--help`.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Listeners: ports, bind address, socket settings.
    #[command(flatten)]
    pub server: ServerConfig,
    /// The WebTransport endpoint and its certificate.
    #[command(flatten)]
    pub webtransport: WebTransportConfig,
    /// Per-client, per-user and per-instance limits, heartbeat, origins.
    #[command(flatten)]
    pub limits: LimitsConfig,
    /// Area subscriptions ("vendors near me").
    #[command(flatten)]
    pub geo: GeoConfig,
    /// HTTP timeouts and bounds.
    #[command(flatten)]
    pub http: HttpConfig,
    /// Client JWTs, ingest and admin tokens, the environment.
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Shared rate-limit counters.
    #[command(flatten)]
    pub redis: RedisConfig,
    /// The bus and its last values.
    #[command(flatten)]
    pub nats: NatsConfig,
    /// The subscription audit trail.
    #[command(flatten)]
    pub audit: AuditConfig,
    /// Instance id, logs, shutdown.
    #[command(flatten)]
    pub log: LogConfig,
}

/// Where the gateway listens: the ports and the socket settings of the
/// clients' TCP port.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Listeners")]
pub struct ServerConfig {
    /// TCP port for HTTP and WebSocket.
    #[arg(
        long = "port",
        env = "WEBSOCKET_GATEWAY_PORT",
        value_name = "WEBSOCKET_GATEWAY_PORT",
        default_value_t = 5006
    )]
    pub port: u16,

    /// TCP port for gRPC ingest (`venta.gateway.v1.UpdateIngest`).
    #[arg(long = "grpc-port", env = "GRPC_PORT", value_name = "GRPC_PORT", default_value_t = 5007)]
    pub grpc_port: u16,

    /// Address to bind; `::` is dual-stack (IPv4 and IPv6).
    #[arg(long = "bind-addr", env = "BIND_ADDR", value_name = "BIND_ADDR", default_value = "::")]
    pub bind_addr: IpAddr,

    /// TCP accept queue length, for reconnect storms after a restart (the
    /// kernel caps it at net.core.somaxconn).
    #[arg(
        long = "accept-backlog",
        env = "WS_ACCEPT_BACKLOG",
        value_name = "WS_ACCEPT_BACKLOG",
        default_value = "4096"
    )]
    pub accept_backlog: u32,

    /// Kernel send buffer per client socket, bytes (0 = the OS's autotuning,
    /// up to net.ipv4.tcp_wmem's max, several MiB). Small, so a client that
    /// stops reading is noticed and conflated early.
    #[arg(
        long = "send-buffer",
        env = "WS_SEND_BUFFER_BYTES",
        value_name = "WS_SEND_BUFFER_BYTES",
        default_value = "65536"
    )]
    pub send_buffer_bytes: usize,
}

/// The WebTransport (HTTP/3) endpoint and its certificate.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "WebTransport")]
pub struct WebTransportConfig {
    /// UDP port for WebTransport (HTTP/3); default: the same number as the
    /// HTTP port. 0 picks a free port.
    #[arg(id = "wt_port", long = "wt-port", env = "WT_PORT", value_name = "WT_PORT")]
    pub port: Option<u16>,

    /// WebTransport certificate chain (PEM). With `WT_KEY`; without both, a
    /// self-signed certificate is made and its hash served at /wt/cert-hash.
    #[arg(id = "wt_cert", long = "wt-cert", env = "WT_CERT", value_name = "WT_CERT", requires = "wt_key")]
    pub cert: Option<PathBuf>,

    /// WebTransport private key (PEM), with `WT_CERT`.
    #[arg(id = "wt_key", long = "wt-key", env = "WT_KEY", value_name = "WT_KEY", requires = "wt_cert")]
    pub key: Option<PathBuf>,

    /// Seconds the self-signed WebTransport certificate is valid (under 14
    /// days, the browsers' limit for hash pinning); it is renewed while
    /// running, the next hash published ahead at /wt/cert-hash.
    #[arg(long = "wt-cert-validity", env = "WT_CERT_VALIDITY", value_name = "WT_CERT_VALIDITY", default_value = "1123200", value_parser = cert_validity)]
    pub cert_validity_secs: u64,
}

/// What one client, one user or the whole instance may use: the bounds a
/// session and admission enforce.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Clients and limits")]
pub struct LimitsConfig {
    /// Server `ping` interval in milliseconds (min 1000); a client silent for
    /// two intervals is closed with 4000.
    #[arg(long = "heartbeat-interval", env = "WS_HEARTBEAT_INTERVAL", value_name = "WS_HEARTBEAT_INTERVAL", default_value = "30000", value_parser = heartbeat_ms)]
    pub heartbeat_interval_ms: u64,

    /// Maximum concurrent client connections on this instance (over: close 1013).
    #[arg(long = "max-connections", env = "WS_MAX_CONNECTIONS", value_name = "WS_MAX_CONNECTIONS", default_value = "1000", value_parser = positive)]
    pub max_connections: usize,

    /// Concurrent connections per authenticated user (over: close 1008).
    #[arg(long = "max-connections-per-user", env = "WS_MAX_CONNECTIONS_PER_USER", value_name = "WS_MAX_CONNECTIONS_PER_USER", default_value = "10", value_parser = positive)]
    pub max_connections_per_user: usize,

    /// Client messages per minute per user (per connection while auth is off);
    /// a burst of this many is served at once, then the budget refills evenly.
    #[arg(long = "rate-limit", env = "WS_RATE_LIMIT", value_name = "WS_RATE_LIMIT", default_value = "100", value_parser = nonzero_u32)]
    pub rate_limit: u32,

    /// Connect attempts per minute per client IP (0 = off: behind a load
    /// balancer every client shares one IP). Over: HTTP 429.
    #[arg(
        long = "connect-rate-limit",
        env = "WS_CONNECT_RATE_LIMIT",
        value_name = "WS_CONNECT_RATE_LIMIT",
        default_value = "0"
    )]
    pub connect_rate_limit: u32,

    /// Largest client frame in bytes (over: close 1009).
    #[arg(long = "max-message-bytes", env = "WS_MAX_MESSAGE_BYTES", value_name = "WS_MAX_MESSAGE_BYTES", default_value = "4096", value_parser = positive)]
    pub max_message_bytes: usize,

    /// Subscriptions per connection (over: `too_many_subscriptions`).
    #[arg(long = "max-subscriptions", env = "WS_MAX_SUBSCRIPTIONS", value_name = "WS_MAX_SUBSCRIPTIONS", default_value = "100", value_parser = positive)]
    pub max_subscriptions: usize,

    /// Bytes of unsent non-conflatable messages per connection before the
    /// client is closed with 1013 as a slow consumer.
    #[arg(long = "max-queue-bytes", env = "WS_MAX_QUEUE_BYTES", value_name = "WS_MAX_QUEUE_BYTES", default_value = "1048576", value_parser = positive)]
    pub max_queue_bytes: usize,

    /// Queued messages per connection beyond which pending location updates
    /// are conflated (only the newest per vendor is kept).
    #[arg(long = "max-queue-messages", env = "WS_MAX_QUEUE_MESSAGES", value_name = "WS_MAX_QUEUE_MESSAGES", default_value = "1024", value_parser = positive)]
    pub max_queue_messages: usize,

    /// Origins allowed to open WebSockets and WebTransport sessions
    /// (comma-separated, e.g. `https://app.example.com`); unset: any. A
    /// request without an Origin header (not a browser) is always allowed.
    #[arg(long = "allowed-origins", env = "WS_ALLOWED_ORIGINS", value_name = "WS_ALLOWED_ORIGINS", value_parser = origins)]
    pub allowed_origins: Option<Vec<String>>,
}

/// Bounds of area subscriptions ("vendors near me"): how long a silent
/// vendor stays in an area, and how much one connection may watch.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Area subscriptions")]
pub struct GeoConfig {
    /// Area subscriptions on or off. With NATS every instance indexes its
    /// share of all location updates (a few JetStream KV round trips each):
    /// a deployment that never uses areas turns that off here, and
    /// `subscribe_area` then answers `unavailable`.
    #[arg(long = "geo-enabled", env = "GEO_ENABLED", value_name = "GEO_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub enabled: bool,

    /// Seconds a vendor may stay silent before it leaves every area it was
    /// in (reason `expired`), so a vendor that stopped reporting does not
    /// linger on maps.
    #[arg(long = "geo-vendor-ttl", env = "GEO_VENDOR_TTL", value_name = "GEO_VENDOR_TTL", default_value = "300", value_parser = nonzero_secs)]
    pub vendor_ttl_secs: u64,

    /// Areas one connection may watch at once.
    #[arg(long = "geo-max-areas", env = "GEO_MAX_AREAS", value_name = "GEO_MAX_AREAS", default_value = "8", value_parser = positive)]
    pub max_areas: usize,

    /// Largest area, km: a box's diagonal or a circle's diameter (over 0, at
    /// most 20000), so one subscription cannot ask for the whole map.
    #[arg(long = "geo-max-area-km", env = "GEO_MAX_AREA_KM", value_name = "GEO_MAX_AREA_KM", default_value = "50", value_parser = area_km)]
    pub max_area_km: f64,

    /// Vendors sent in the snapshot that opens an area subscription (1 to
    /// 10000); one message, so it stays bounded however dense the area.
    #[arg(long = "geo-snapshot-max", env = "GEO_SNAPSHOT_MAX", value_name = "GEO_SNAPSHOT_MAX", default_value = "500", value_parser = snapshot_max)]
    pub snapshot_max: usize,

    /// Replicas of the vendor positions kept in JetStream KV for area
    /// subscriptions across instances (1 to 5; 3 on a NATS cluster keeps
    /// them through the loss of a node).
    #[arg(long = "geo-kv-replicas", env = "GEO_KV_REPLICAS", value_name = "GEO_KV_REPLICAS", default_value = "1", value_parser = kv_replicas)]
    pub kv_replicas: usize,
}

/// Bounds of the HTTP side of the clients' port (connections that are not
/// WebSocket yet).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "HTTP")]
pub struct HttpConfig {
    /// Milliseconds a connection on the HTTP port has to send a complete
    /// request head, from when it connected or its previous response was
    /// sent (so it is also the keep-alive idle timeout). Slow senders are
    /// closed.
    #[arg(long = "http-header-timeout", env = "HTTP_HEADER_TIMEOUT_MS", value_name = "HTTP_HEADER_TIMEOUT_MS", default_value = "10000", value_parser = header_timeout_ms)]
    pub header_timeout_ms: u64,

    /// Milliseconds an HTTP request (reading its body included) may take
    /// before it is answered 408.
    #[arg(long = "http-request-timeout", env = "HTTP_REQUEST_TIMEOUT_MS", value_name = "HTTP_REQUEST_TIMEOUT_MS", default_value = "30000", value_parser = header_timeout_ms)]
    pub request_timeout_ms: u64,

    /// Concurrent streams per HTTP/2 connection (h2c: clients that offer
    /// HTTP/2 with prior knowledge, e.g. many SSE streams on one
    /// connection); 0 turns HTTP/2 off (HTTP/1.1 only).
    #[arg(
        long = "http2-max-streams",
        env = "HTTP2_MAX_STREAMS",
        value_name = "HTTP2_MAX_STREAMS",
        default_value = "100"
    )]
    pub http2_max_streams: u32,

    /// Connections on the HTTP port that are not WebSocket (plain HTTP,
    /// keep-alive, handshakes in progress). Over: 503 and closed at once.
    /// Room for a reconnect storm's handshakes (each takes milliseconds);
    /// with `HTTP_MAX_HEADER_BYTES` it bounds what idle sockets can hold.
    #[arg(id = "http_max_connections", long = "http-max-connections", env = "HTTP_MAX_CONNECTIONS", value_name = "HTTP_MAX_CONNECTIONS", default_value = "4096", value_parser = positive)]
    pub max_connections: usize,

    /// Largest HTTP request head (request line and headers), bytes; over: 431.
    #[arg(long = "http-max-header-bytes", env = "HTTP_MAX_HEADER_BYTES", value_name = "HTTP_MAX_HEADER_BYTES", default_value = "16384", value_parser = header_bytes)]
    pub max_header_bytes: usize,

    /// Concurrent `/dashboard/stats` streams; one more is answered 503. Each
    /// holds an HTTP connection and a timer, so a few operators' tabs are
    /// the need, not thousands.
    #[arg(long = "dashboard-max-streams", env = "DASHBOARD_MAX_STREAMS", value_name = "DASHBOARD_MAX_STREAMS", default_value = "8", value_parser = positive)]
    pub dashboard_max_streams: usize,

    /// Milliseconds between two events of a `/dashboard/stats` stream.
    #[arg(long = "dashboard-interval", env = "DASHBOARD_INTERVAL_MS", value_name = "DASHBOARD_INTERVAL_MS", default_value = "1000", value_parser = probe_ms)]
    pub dashboard_interval_ms: u64,

    /// Busiest vendors the dashboard lists; the counter behind the list
    /// keeps four times as many, whatever the number of vendors.
    #[arg(long = "dashboard-top-vendors", env = "DASHBOARD_TOP_VENDORS", value_name = "DASHBOARD_TOP_VENDORS", default_value = "10", value_parser = top_vendors)]
    pub dashboard_top_vendors: usize,
}

/// Who may connect and publish, and whether an open door is refused
/// (`GATEWAY_ENV`).
#[derive(Clone, Args)]
#[command(next_help_heading = "Auth and tokens")]
pub struct AuthConfig {
    /// `production` (alias `prod`) refuses to start without a JWT key and
    /// an ingest token; `development` (alias `dev`) warns instead.
    #[arg(
        long = "gateway-env",
        env = "GATEWAY_ENV",
        value_name = "GATEWAY_ENV",
        default_value = "development",
        ignore_case = true
    )]
    pub gateway_env: GatewayEnv,

    /// HS256 secret for client JWTs (at least 16 bytes). Unset, and no
    /// JWT_PUBLIC_KEY: auth is off (logged loudly).
    #[arg(long = "jwt-secret", env = "JWT_SECRET", value_name = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM file of an RSA (RS256) or EC P-256 (ES256) public key for client JWTs.
    #[arg(long = "jwt-public-key", env = "JWT_PUBLIC_KEY", value_name = "JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// Required `iss` of client JWTs, when set.
    #[arg(long = "jwt-issuer", env = "JWT_ISSUER", value_name = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of client JWTs, when set.
    #[arg(long = "jwt-audience", env = "JWT_AUDIENCE", value_name = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Seconds of clock skew tolerated on a token's `exp`/`nbf`; a
    /// connection is closed with 4001 at `exp` plus this.
    #[arg(long = "jwt-leeway", env = "JWT_LEEWAY", value_name = "JWT_LEEWAY", default_value = "30", value_parser = leeway_secs)]
    pub jwt_leeway_secs: u64,

    /// Bearer token required by `POST /api/v1/publish/*` and gRPC ingest;
    /// unset: open (logged loudly), refused with GATEWAY_ENV=production.
    #[arg(long = "ingest-token", env = "INGEST_TOKEN", value_name = "INGEST_TOKEN", hide_env_values = true)]
    pub ingest_token: Option<String>,

    /// Bearer token for `GET /api/v1/audit`; unset: that route answers 404.
    #[arg(long = "admin-token", env = "ADMIN_TOKEN", value_name = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// Rate-limit counters shared by every instance.
#[derive(Clone, Args)]
#[command(next_help_heading = "Redis")]
pub struct RedisConfig {
    /// Redis for rate-limit counters shared by every instance; unset: each
    /// instance limits alone. With `REDIS_CLUSTER=true`: seed nodes of a
    /// Redis Cluster, comma separated (`redis://a:7000,redis://b:7001`).
    #[arg(id = "redis_url", long = "redis-url", env = "REDIS_URL", value_name = "REDIS_URL")]
    pub url: Option<String>,

    /// `REDIS_URL` names a Redis Cluster: each user's budget lives on the
    /// shard owning its key, and failovers are followed.
    #[arg(long = "redis-cluster", env = "REDIS_CLUSTER", value_name = "REDIS_CLUSTER", default_value_t = false, action = clap::ArgAction::Set)]
    pub cluster: bool,

    /// Prefix of the rate-limit keys in Redis.
    #[arg(
        long = "redis-key-prefix",
        env = "REDIS_KEY_PREFIX",
        value_name = "REDIS_KEY_PREFIX",
        default_value = "venta:rl:"
    )]
    pub key_prefix: String,
}

impl RedisConfig {
    /// What `REDIS_URL` names.
    pub fn topology(&self) -> crate::ratelimit::redis::Topology {
        if self.cluster {
            crate::ratelimit::redis::Topology::Cluster
        } else {
            crate::ratelimit::redis::Topology::Single
        }
    }
}

/// The bus between instances and publishers, and the last values kept for
/// new subscribers.
#[derive(Clone, Args)]
#[command(next_help_heading = "NATS")]
pub struct NatsConfig {
    /// NATS server(s), e.g. `nats://127.0.0.1:4222`; unset: in-process bus.
    #[arg(id = "nats_url", long = "nats-url", env = "NATS_URL", value_name = "NATS_URL")]
    pub url: Option<String>,

    /// Subject prefix: updates travel on `<prefix>.location.<vendorId>` and
    /// `<prefix>.vendor.<vendorId>`.
    #[arg(long = "nats-subject-prefix", env = "NATS_SUBJECT_PREFIX", value_name = "NATS_SUBJECT_PREFIX", default_value = "venta", value_parser = subject_prefix)]
    pub subject_prefix: String,

    /// Milliseconds an instance keeps a NATS subscription after its last
    /// client left, so flapping clients do not churn NATS.
    #[arg(
        long = "nats-interest-linger",
        env = "NATS_INTEREST_LINGER_MS",
        value_name = "NATS_INTEREST_LINGER_MS",
        default_value = "2000",
        value_parser = millis
    )]
    pub interest_linger_ms: u64,

    /// Keep the last update per vendor in a JetStream stream (nats-server
    /// 2.10+), so new subscribers get it across instances and restarts.
    #[arg(long = "nats-jetstream", env = "NATS_JETSTREAM", value_name = "NATS_JETSTREAM", default_value_t = true, action = clap::ArgAction::Set)]
    pub jetstream: bool,

    /// Seconds JetStream keeps a vendor's last update.
    #[arg(long = "last-value-max-age", env = "NATS_LAST_VALUE_MAX_AGE", value_name = "NATS_LAST_VALUE_MAX_AGE", default_value = "86400", value_parser = nonzero_secs)]
    pub last_value_max_age_secs: u64,

    /// Bytes (estimated heap) of last values kept in process: by the
    /// in-process bus, and by the NATS bus while JetStream is off or down.
    /// When full, the least recently updated vendors are dropped first.
    #[arg(long = "last-value-max-bytes", env = "LAST_VALUE_MAX_BYTES", value_name = "LAST_VALUE_MAX_BYTES", default_value = "67108864", value_parser = crate::bus::parse_store_bytes)]
    pub last_value_max_bytes: usize,

    /// Bytes the JetStream last-value stream may hold on the NATS server;
    /// past it, the oldest messages go. Applied to an existing stream too.
    #[arg(long = "nats-last-value-max-bytes", env = "NATS_LAST_VALUE_MAX_BYTES", value_name = "NATS_LAST_VALUE_MAX_BYTES", default_value = "1073741824", value_parser = crate::bus::parse_store_bytes)]
    pub stream_max_bytes: usize,

    /// Replicas of the JetStream last-value stream (1 to 5). On a NATS
    /// cluster, 3 keeps the last values (the snapshots new subscribers get)
    /// through the loss of a node; 1 loses them with the node holding them.
    /// Applied to an existing stream too.
    #[arg(long = "nats-last-value-replicas", env = "NATS_LAST_VALUE_REPLICAS", value_name = "NATS_LAST_VALUE_REPLICAS", default_value = "1", value_parser = kv_replicas)]
    pub last_value_replicas: usize,

    /// Milliseconds between background checks of Redis and NATS/JetStream
    /// (100 to 60000), so /health is true on an idle gateway.
    #[arg(long = "health-probe-interval", env = "HEALTH_PROBE_INTERVAL_MS", value_name = "HEALTH_PROBE_INTERVAL_MS", default_value = "2000", value_parser = probe_ms)]
    pub health_probe_interval_ms: u64,
}

/// The subscription audit trail: its database, queues and spill journal.
#[derive(Clone, Args)]
#[command(next_help_heading = "Audit trail")]
pub struct AuditConfig {
    /// PostgreSQL for the subscription audit trail, e.g.
    /// `postgres://user:pass@host:5432/db`; unset: embedded SQLite file.
    #[arg(long = "database-url", env = "DATABASE_URL", value_name = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// The embedded SQLite audit file, used when DATABASE_URL is unset.
    #[arg(
        long = "audit-sqlite-path",
        env = "AUDIT_SQLITE_PATH",
        value_name = "AUDIT_SQLITE_PATH",
        default_value = "./venta-gateway-audit.db"
    )]
    pub sqlite_path: PathBuf,

    /// Directory of the audit spill journal (rows the database could not
    /// take yet); one per instance.
    #[arg(
        long = "audit-journal-dir",
        env = "AUDIT_JOURNAL_DIR",
        value_name = "AUDIT_JOURNAL_DIR",
        default_value = "./audit-journal"
    )]
    pub journal_dir: PathBuf,

    /// Audit rows the hot-path queue holds; when full, rows go straight to
    /// the journal (never dropped, never waited for).
    #[arg(long = "audit-queue", env = "AUDIT_QUEUE", value_name = "AUDIT_QUEUE", default_value = "10000", value_parser = positive)]
    pub queue: usize,

    /// Audit rows per database insert.
    #[arg(long = "audit-batch", env = "AUDIT_BATCH", value_name = "AUDIT_BATCH", default_value = "500", value_parser = positive)]
    pub batch: usize,

    /// Audit rows kept in memory while the database is unreachable before
    /// they spill to the journal.
    #[arg(long = "audit-buffer", env = "AUDIT_BUFFER", value_name = "AUDIT_BUFFER", default_value = "10000", value_parser = positive)]
    pub buffer: usize,

    /// While the audit database is unreachable, the longest an audit row
    /// waits in memory before it is journaled (milliseconds, 1-60000): what
    /// a crash during an outage can lose.
    #[arg(
        long = "audit-spill-after",
        env = "AUDIT_SPILL_AFTER_MS",
        value_name = "AUDIT_SPILL_AFTER_MS",
        default_value = "500",
        value_parser = spill_ms
    )]
    pub spill_after_ms: u64,

    /// How often an idle audit writer probes its database, so /health is
    /// current without traffic (milliseconds, 100-60000).
    #[arg(
        long = "audit-probe-interval",
        env = "AUDIT_PROBE_INTERVAL_MS",
        value_name = "AUDIT_PROBE_INTERVAL_MS",
        default_value = "2000",
        value_parser = probe_ms
    )]
    pub probe_interval_ms: u64,

    /// Audit rows waiting for the journal's thread when the hot-path queue
    /// (`AUDIT_QUEUE`) is full; past both, a row is dropped and counted
    /// (`venta_audit_dropped_total{reason="journal_full"}`): the hot path
    /// never writes a file itself.
    #[arg(long = "audit-journal-queue", env = "AUDIT_JOURNAL_QUEUE", value_name = "AUDIT_JOURNAL_QUEUE", default_value = "10000", value_parser = positive)]
    pub journal_queue: usize,
}

/// How the process names itself, logs and stops.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Lifecycle and logs")]
pub struct LogConfig {
    /// Seconds to wait for clients to close and queues to flush on shutdown.
    #[arg(long = "shutdown-timeout", env = "SHUTDOWN_TIMEOUT", value_name = "SHUTDOWN_TIMEOUT", default_value = "10", value_parser = seconds)]
    pub shutdown_timeout_secs: u64,

    /// This instance's id in /ws/status and logs (default: random).
    #[arg(long = "instance-id", env = "INSTANCE_ID", value_name = "INSTANCE_ID")]
    pub instance_id: Option<String>,

    /// Log filter: error, warn, info, debug, trace, or a tracing directive.
    #[arg(long = "log-level", env = "LOG_LEVEL", value_name = "LOG_LEVEL", default_value = "info", value_parser = log_level)]
    pub level: String,

    /// Log format.
    #[arg(long = "log-format", env = "LOG_FORMAT", value_name = "LOG_FORMAT", default_value = "text")]
    pub format: LogFormat,
}

/// A setting that parsed but cannot work (the binary exits 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {shown} for {variable}: {reason}")]
pub struct ConfigError {
    /// The environment variable.
    pub variable: &'static str,
    /// The value, quoted, with any password or secret hidden.
    pub shown: String,
    /// What is wrong.
    pub reason: String,
}

/// The URL as it may be shown: `user:password@` becomes `user:***@`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (auth_end, _) = rest.char_indices().find(|(_, c)| *c == '/' || *c == '?').unwrap_or((rest.len(), ' '));
    match rest[..auth_end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { format!("{user}:***") } else { "***".to_owned() };
            format!("{scheme}://{hidden}@{host}{}", &rest[auth_end..])
        }
        None => url.to_owned(),
    }
}

fn bad(variable: &'static str, shown: String, reason: impl Into<String>) -> ConfigError {
    ConfigError { variable, shown, reason: reason.into() }
}

/// The scheme of `url`, lower-cased, if it has one.
fn scheme(url: &str) -> Option<String> {
    url.split_once("://").map(|(s, _)| s.to_ascii_lowercase())
}

impl Config {
    /// Checks what clap cannot without printing secrets: URLs (which may
    /// carry passwords) and the JWT secret. Every error names the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(secret) = &self.auth.jwt_secret
            && secret.len() < crate::auth::MIN_SECRET_BYTES
        {
            let reason = format!(
                "must be at least {} bytes (it is {}); generate one with `openssl rand -hex 32`",
                crate::auth::MIN_SECRET_BYTES,
                secret.len()
            );
            return Err(bad("JWT_SECRET", "(hidden)".into(), reason));
        }
        if let Some(url) = &self.audit.database_url
            && !matches!(scheme(url).as_deref(), Some("postgres" | "postgresql"))
        {
            let reason = "must be a PostgreSQL URL (postgres://user:pass@host:5432/db); unset it for the embedded SQLite audit trail";
            return Err(bad("DATABASE_URL", format!("{:?}", redact_url(url)), reason));
        }
        if let Some(url) = &self.redis.url {
            let shown = format!("{:?}", redact_url(url));
            if !url
                .split(',')
                .all(|u| matches!(scheme(u.trim()).as_deref(), Some("redis" | "rediss" | "redis+unix" | "unix")))
            {
                return Err(bad("REDIS_URL", shown, "must be a Redis URL (redis://host:6379 or rediss:// for TLS)"));
            }
            match crate::ratelimit::redis::check_url(url, self.redis.topology()) {
                Ok(()) => {}
                Err(crate::ratelimit::redis::RedisConfigError::InvalidUrl { reason, .. }) => {
                    return Err(bad("REDIS_URL", shown, reason));
                }
                Err(e) => return Err(bad("REDIS_URL", shown, e.to_string())),
            }
            if self.redis.cluster && self.redis.key_prefix.contains(['{', '}']) {
                let reason =
                    "must not contain `{` or `}` with REDIS_CLUSTER=true (a hash tag would put every key on one shard)";
                return Err(bad("REDIS_KEY_PREFIX", format!("{:?}", self.redis.key_prefix), reason));
            }
        }
        if let Some(urls) = &self.nats.url {
            for url in urls.split(',').map(str::trim) {
                let shown = format!("{:?}", redact_url(url));
                if url.is_empty() {
                    return Err(bad("NATS_URL", shown, "empty server in the comma-separated list"));
                }
                if let Err(e) = url.parse::<async_nats::ServerAddr>() {
                    return Err(bad(
                        "NATS_URL",
                        shown,
                        format!("{e} (expected nats://host:4222, comma-separated for several)"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether `GATEWAY_ENV` is production.
    pub fn is_production(&self) -> bool {
        self.auth.is_production()
    }

    /// The HTTP limits of the clients' port: the HTTP group's bounds and the
    /// listener's socket send buffer, which the accept loop applies.
    pub fn http_limits(&self) -> crate::listener::HttpLimits {
        crate::listener::HttpLimits {
            header_timeout: Duration::from_millis(self.http.header_timeout_ms),
            max_header_bytes: self.http.max_header_bytes,
            max_connections: self.http.max_connections,
            send_buffer: self.server.send_buffer_bytes,
            http2_max_streams: self.http.http2_max_streams,
        }
    }

    /// The documented defaults, ignoring the environment: for tests and embedding.
    pub fn defaults() -> Self {
        Self {
            server: ServerConfig {
                port: 5006,
                grpc_port: 5007,
                bind_addr: IpAddr::from([0u16; 8]),
                accept_backlog: 4096,
                send_buffer_bytes: 65_536,
            },
            webtransport: WebTransportConfig { port: None, cert: None, key: None, cert_validity_secs: 13 * 86_400 },
            limits: LimitsConfig {
                heartbeat_interval_ms: 30_000,
                max_connections: 1000,
                max_connections_per_user: 10,
                rate_limit: 100,
                connect_rate_limit: 0,
                max_message_bytes: 4096,
                max_subscriptions: 100,
                max_queue_bytes: 1 << 20,
                max_queue_messages: 1024,
                allowed_origins: None,
            },
            geo: GeoConfig {
                enabled: true,
                vendor_ttl_secs: 300,
                max_areas: 8,
                max_area_km: 50.0,
                snapshot_max: 500,
                kv_replicas: 1,
            },
            http: HttpConfig {
                header_timeout_ms: 10_000,
                request_timeout_ms: 30_000,
                http2_max_streams: 100,
                max_connections: 4096,
                max_header_bytes: 16_384,
                dashboard_max_streams: 8,
                dashboard_interval_ms: 1000,
                dashboard_top_vendors: 10,
            },
            auth: AuthConfig {
                gateway_env: GatewayEnv::Development,
                jwt_secret: None,
                jwt_public_key: None,
                jwt_issuer: None,
                jwt_audience: None,
                jwt_leeway_secs: 30,
                ingest_token: None,
                admin_token: None,
            },
            redis: RedisConfig { url: None, cluster: false, key_prefix: "venta:rl:".into() },
            nats: NatsConfig {
                url: None,
                subject_prefix: "venta".into(),
                interest_linger_ms: 2000,
                jetstream: true,
                last_value_max_age_secs: 86_400,
                last_value_max_bytes: 64 << 20,
                stream_max_bytes: 1 << 30,
                last_value_replicas: 1,
                health_probe_interval_ms: 2000,
            },
            audit: AuditConfig {
                database_url: None,
                sqlite_path: PathBuf::from("./venta-gateway-audit.db"),
                journal_dir: PathBuf::from("./audit-journal"),
                queue: 10_000,
                batch: 500,
                buffer: 10_000,
                spill_after_ms: 500,
                probe_interval_ms: 2000,
                journal_queue: 10_000,
            },
            log: LogConfig {
                shutdown_timeout_secs: 10,
                instance_id: None,
                level: "info".into(),
                format: LogFormat::Text,
            },
        }
    }
}

impl AuthConfig {
    /// Whether `GATEWAY_ENV` is production.
    pub fn is_production(&self) -> bool {
        self.gateway_env == GatewayEnv::Production
    }
}

impl LimitsConfig {
    /// The heartbeat interval.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }
}

impl WebTransportConfig {
    /// Validity of the self-signed WebTransport certificate.
    pub fn cert_validity(&self) -> Duration {
        Duration::from_secs(self.cert_validity_secs)
    }
}

impl LogConfig {
    /// The shutdown grace period.
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

impl GeoConfig {
    /// How long a silent vendor stays in its areas.
    pub fn vendor_ttl(&self) -> Duration {
        Duration::from_secs(self.vendor_ttl_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        config: Config,
    }

    #[test]
    fn defaults_match_the_flags() {
        let parsed = Cli::try_parse_from(["x"]).map(|c| c.config);
        let Ok(parsed) = parsed else { panic!("{parsed:?}") };
        assert_eq!(format!("{parsed:?}"), format!("{:?}", Config::defaults()));
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = Cli::try_parse_from(["x", "--heartbeat-interval", "500"]).err().map(|e| e.to_string());
        let msg = err.unwrap_or_default();
        assert!(msg.contains("WS_HEARTBEAT_INTERVAL") && msg.contains("500"), "{msg}");
        let err = Cli::try_parse_from(["x", "--wt-cert-validity", "1209600"]).err().map(|e| e.to_string());
        let msg = err.unwrap_or_default();
        assert!(msg.contains("WT_CERT_VALIDITY") && msg.contains("14 days"), "{msg}");
    }

    fn parse(args: &[&str]) -> Result<Config, String> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))
            .map(|c| c.config)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn nonsense_is_refused_naming_the_variable() {
        for (args, var) in [
            (&["--log-level", "verbose"][..], "LOG_LEVEL"),
            (&["--log-level", "venta_gateway=loud"][..], "LOG_LEVEL"),
            (&["--gateway-env", "staging"][..], "GATEWAY_ENV"),
            (&["--allowed-origins", "app.example.com"][..], "WS_ALLOWED_ORIGINS"),
            (&["--http-max-header-bytes", "100"][..], "HTTP_MAX_HEADER_BYTES"),
        ] {
            let err = parse(args).err().unwrap_or_default();
            assert!(err.contains(var) && err.contains(args[1]), "{args:?}: {err}");
        }
        assert!(parse(&["--log-level", "warn,venta_gateway=debug"]).is_ok());
        assert_eq!(parse(&["--gateway-env", "prod"]).map(|c| c.is_production()), Ok(true));
        assert_eq!(parse(&["--gateway-env", "PRODUCTION"]).map(|c| c.is_production()), Ok(true));
        assert_eq!(parse(&["--gateway-env", "dev"]).map(|c| c.is_production()), Ok(false));
    }

    #[test]
    fn urls_and_secrets_are_checked_without_showing_secrets() {
        let check = |f: fn(&mut Config)| {
            let mut c = Config::defaults();
            f(&mut c);
            c.validate().err()
        };
        let e = check(|c| c.auth.jwt_secret = Some("short-secret".into())).unwrap_or_else(|| panic!("accepted"));
        assert_eq!(e.variable, "JWT_SECRET");
        assert!(!e.to_string().contains("short-secret"), "{e}");
        let e = check(|c| c.audit.database_url = Some("mysql://root:hunter2@db/venta".into()))
            .unwrap_or_else(|| panic!("accepted"));
        assert_eq!(e.variable, "DATABASE_URL");
        assert!(!e.to_string().contains("hunter2") && e.to_string().contains("mysql://root:***@db/venta"), "{e}");
        assert_eq!(check(|c| c.redis.url = Some("notaurl".into())).map(|e| e.variable), Some("REDIS_URL"));
        assert_eq!(check(|c| c.nats.url = Some("nats://a:1,nats://b:x".into())).map(|e| e.variable), Some("NATS_URL"));
        assert_eq!(check(|c| c.nats.url = Some("nats://a:1, nats://b:2".into())), None);
        assert_eq!(check(|c| c.audit.database_url = Some("postgresql://u@h/db".into())), None);
        assert_eq!(check(|c| c.redis.url = Some("redis://127.0.0.1:6379".into())), None);
        let redis = |url: &str, cluster: bool, prefix: &str| {
            let mut c = Config::defaults();
            c.redis.url = Some(url.into());
            c.redis.cluster = cluster;
            c.redis.key_prefix = prefix.into();
            c.validate().err().map(|e| e.variable)
        };
        let several = "redis://127.0.0.1:7000, redis://127.0.0.1:7001";
        assert_eq!(redis(several, false, "venta:rl:"), Some("REDIS_URL"));
        let cluster = |url: &str, prefix: &str| redis(url, true, prefix);
        assert_eq!(cluster(several, "venta:rl:"), None);
        assert_eq!(cluster("redis://127.0.0.1:7000", "venta:rl:"), None);
        assert_eq!(cluster("redis://127.0.0.1:7000,,redis://127.0.0.1:7001", "venta:rl:"), Some("REDIS_URL"));
        assert_eq!(cluster("redis://127.0.0.1:7000,http://x:1", "venta:rl:"), Some("REDIS_URL"));
        assert_eq!(cluster(several, "{venta}:rl:"), Some("REDIS_KEY_PREFIX"));
    }

    #[test]
    fn durations_take_units_and_the_seeds_integers() {
        assert_eq!(parse_duration("30000", 1), Ok(30_000));
        assert_eq!(parse_duration("30s", 1), Ok(30_000));
        assert_eq!(parse_duration("500ms", 1), Ok(500));
        assert_eq!(parse_duration("1500ms", 1000), Ok(2), "rounded up to whole seconds");
        assert_eq!(parse_duration("2m", 1000), Ok(120));
        assert!(parse_duration("5 parsecs", 1).is_err());
        assert!(parse_duration("ms", 1).is_err());
        assert_eq!(parse(&["--heartbeat-interval", "45s"]).map(|c| c.limits.heartbeat_interval_ms), Ok(45_000));
        assert_eq!(parse(&["--shutdown-timeout", "1m"]).map(|c| c.log.shutdown_timeout_secs), Ok(60));
        assert!(parse(&["--heartbeat-interval", "999ms"]).is_err());
    }

    #[test]
    fn wt_cert_and_key_come_together() {
        assert!(Cli::try_parse_from(["x", "--wt-cert", "c.pem"]).is_err());
        assert!(Cli::try_parse_from(["x", "--wt-key", "k.pem"]).is_err());
        let both = Cli::try_parse_from(["x", "--wt-cert", "c.pem", "--wt-key", "k.pem"]).map(|c| c.config);
        assert!(both.is_ok_and(|c| c.webtransport.cert.is_some() && c.webtransport.key.is_some()));
    }

    #[test]
    fn last_value_replicas_are_one_to_five() {
        let replicas = |args: &[&str]| parse(args).map(|c| c.nats.last_value_replicas);
        assert_eq!(replicas(&[]), Ok(1));
        assert_eq!(replicas(&["--nats-last-value-replicas", "3"]), Ok(3));
        assert_eq!(replicas(&["--nats-last-value-replicas", "5"]), Ok(5));
        for bad in ["0", "6", "-1", "three"] {
            let err = parse(&[&format!("--nats-last-value-replicas={bad}")]).err().unwrap_or_default();
            assert!(err.contains("NATS_LAST_VALUE_REPLICAS") && err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn geo_settings_parse_with_units() {
        let geo = |args: &[&str]| parse(args).map(|c| c.geo);
        let Ok(d) = geo(&[]) else { panic!("defaults do not parse") };
        assert_eq!((d.vendor_ttl_secs, d.max_areas, d.max_area_km, d.snapshot_max), (300, 8, 50.0, 500));
        assert_eq!(geo(&["--geo-vendor-ttl", "90"]).map(|g| g.vendor_ttl_secs), Ok(90));
        assert_eq!(geo(&["--geo-vendor-ttl", "5m"]).map(|g| g.vendor_ttl_secs), Ok(300));
        assert_eq!(geo(&["--geo-vendor-ttl", "1500ms"]).map(|g| g.vendor_ttl_secs), Ok(2));
        assert_eq!(geo(&["--geo-max-areas", "1"]).map(|g| g.max_areas), Ok(1));
        assert_eq!(geo(&["--geo-max-area-km", "0.5"]).map(|g| g.max_area_km), Ok(0.5));
        assert_eq!(geo(&["--geo-max-area-km", "20000"]).map(|g| g.max_area_km), Ok(20_000.0));
        assert_eq!(geo(&["--geo-snapshot-max", "1"]).map(|g| g.snapshot_max), Ok(1));
        assert_eq!(geo(&["--geo-snapshot-max", "10000"]).map(|g| g.snapshot_max), Ok(10_000));
    }

    #[test]
    fn bad_geo_settings_are_refused_naming_the_variable() {
        for (flag, value, var) in [
            ("--geo-vendor-ttl", "0", "GEO_VENDOR_TTL"),
            ("--geo-vendor-ttl", "0s", "GEO_VENDOR_TTL"),
            ("--geo-vendor-ttl", "5 minutes", "GEO_VENDOR_TTL"),
            ("--geo-max-areas", "0", "GEO_MAX_AREAS"),
            ("--geo-max-areas", "-1", "GEO_MAX_AREAS"),
            ("--geo-max-area-km", "0", "GEO_MAX_AREA_KM"),
            ("--geo-max-area-km", "-5", "GEO_MAX_AREA_KM"),
            ("--geo-max-area-km", "20000.5", "GEO_MAX_AREA_KM"),
            ("--geo-max-area-km", "NaN", "GEO_MAX_AREA_KM"),
            ("--geo-max-area-km", "inf", "GEO_MAX_AREA_KM"),
            ("--geo-max-area-km", "far", "GEO_MAX_AREA_KM"),
            ("--geo-snapshot-max", "0", "GEO_SNAPSHOT_MAX"),
            ("--geo-snapshot-max", "10001", "GEO_SNAPSHOT_MAX"),
        ] {
            // `=` so that a negative value is not read as a flag.
            let err = parse(&[&format!("{flag}={value}")]).err().unwrap_or_default();
            assert!(err.contains(var) && err.contains(value), "{flag}={value}: {err}");
        }
    }

    /// Each group's flags sit under its own heading, and the groups come in
    /// the order `--help` has always listed them.
    #[test]
    fn help_headings_follow_the_groups() {
        use clap::CommandFactory as _;
        let cmd = Cli::command();
        let heading = |id: &str| {
            cmd.get_arguments()
                .find(|a| a.get_id().as_str() == id)
                .and_then(|a| a.get_help_heading())
                .map(str::to_owned)
        };
        for (id, want) in [
            ("port", "Listeners"),
            ("wt_port", "WebTransport"),
            ("max_subscriptions", "Clients and limits"),
            ("vendor_ttl_secs", "Area subscriptions"),
            ("max_area_km", "Area subscriptions"),
            ("http_max_connections", "HTTP"),
            ("gateway_env", "Auth and tokens"),
            ("redis_url", "Redis"),
            ("nats_url", "NATS"),
            ("journal_queue", "Audit trail"),
            ("level", "Lifecycle and logs"),
        ] {
            assert_eq!(heading(id).as_deref(), Some(want), "{id}");
        }
    }
}

/// A secret as `Debug` shows it: whether it is set, never its value.
fn secret(v: &Option<String>) -> Option<&'static str> {
    v.as_ref().map(|_| "***")
}

/// A URL as `Debug` shows it: credentials replaced by `***`.
fn url(v: &Option<String>) -> Option<String> {
    v.as_deref().map(crate::bus::nats::redact)
}

// `Debug` by hand for the groups that hold secrets: a `{:?}` of the
// configuration (a log line, a panic message) must not carry them.
impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("gateway_env", &self.gateway_env)
            .field("jwt_secret", &secret(&self.jwt_secret))
            .field("jwt_public_key", &self.jwt_public_key)
            .field("jwt_issuer", &self.jwt_issuer)
            .field("jwt_audience", &self.jwt_audience)
            .field("jwt_leeway_secs", &self.jwt_leeway_secs)
            .field("ingest_token", &secret(&self.ingest_token))
            .field("admin_token", &secret(&self.admin_token))
            .finish()
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &url(&self.url))
            .field("cluster", &self.cluster)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &url(&self.url))
            .field("subject_prefix", &self.subject_prefix)
            .field("interest_linger_ms", &self.interest_linger_ms)
            .field("jetstream", &self.jetstream)
            .field("last_value_max_age_secs", &self.last_value_max_age_secs)
            .field("last_value_max_bytes", &self.last_value_max_bytes)
            .field("stream_max_bytes", &self.stream_max_bytes)
            .field("last_value_replicas", &self.last_value_replicas)
            .field("health_probe_interval_ms", &self.health_probe_interval_ms)
            .finish()
    }
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("database_url", &url(&self.database_url))
            .field("sqlite_path", &self.sqlite_path)
            .field("journal_dir", &self.journal_dir)
            .field("queue", &self.queue)
            .field("batch", &self.batch)
            .field("buffer", &self.buffer)
            .field("spill_after_ms", &self.spill_after_ms)
            .field("probe_interval_ms", &self.probe_interval_ms)
            .field("journal_queue", &self.journal_queue)
            .finish()
    }
}

#[cfg(test)]
mod debug_tests {
    use super::Config;

    #[test]
    fn debug_never_shows_a_secret() {
        let mut c = Config::defaults();
        c.auth.jwt_secret = Some("jwt-secret-value-123456".into());
        c.auth.ingest_token = Some("ingest-token-value".into());
        c.auth.admin_token = Some("admin-token-value".into());
        c.redis.url = Some("redis://user:redis-pass@127.0.0.1:6379".into());
        c.nats.url = Some("nats://u:nats-pass@127.0.0.1:4222".into());
        c.audit.database_url = Some("postgres://p:pg-pass@127.0.0.1/db".into());
        let shown = format!("{c:?}");
        for secret in
            ["jwt-secret-value", "ingest-token-value", "admin-token-value", "redis-pass", "nats-pass", "pg-pass"]
        {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("127.0.0.1:6379") && shown.contains("***"), "{shown}");
    }
}
