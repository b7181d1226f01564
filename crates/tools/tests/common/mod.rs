//! Shared helpers for the tools' tests: a gateway started in this process
//! on ephemeral ports (the server crate is a dev-dependency only), the
//! machine's NATS, a WebSocket client that checks every server message
//! against `schemas/server/any.json`, and the `venta` binary.
//!
//! Every gateway setting a test changes goes through [`GwConfig`], so a
//! change in the server's `Config` is adapted here once.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use venta_client::{Client, Event, Options};
use venta_gateway::{Config, Gateway};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// The machine's NATS (started before each session and for CI).
pub const MACHINE_NATS: &str = "nats://127.0.0.1:4222";

/// The `venta` binary of this build.
pub const VENTA: &str = env!("CARGO_BIN_EXE_venta");

pub fn root() -> PathBuf {
    // The repository root: this crate lives in crates/tools.
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// Fails loudly, with how to start it, if the machine's NATS is down.
pub fn require_machine_nats() {
    let addr: SocketAddr = "127.0.0.1:4222".parse().unwrap();
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!(
            "NATS is not reachable at 127.0.0.1:4222. Start it: start-stop-daemon --start --oknodo --background \
             --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
        );
    }
}

/// A name no other test (of this or any process on the machine) uses.
fn unique(tag: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{tag}{}x{nanos}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// A NATS subject prefix no other test uses.
pub fn unique_prefix() -> String {
    unique("t")
}

/// A directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(unique("venta-tools-test-"));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `f` every 50 ms until it holds; fails the test after 30 s.
pub async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The gateway settings the tests vary, on top of a loopback gateway with
/// ephemeral ports and private audit files.
pub struct GwConfig {
    config: Config,
    audit_dir: TempDir,
}

impl GwConfig {
    pub fn new() -> Self {
        let audit_dir = TempDir::new();
        let mut c = Config::defaults();
        c.server.bind_addr = "127.0.0.1".parse().unwrap();
        c.server.port = 0;
        c.server.grpc_port = 0;
        // Ephemeral: the HTTP port's number may be some client's UDP port.
        c.webtransport.port = Some(0);
        c.log.shutdown_timeout_secs = 5;
        c.audit.journal_dir = audit_dir.0.join("journal");
        c.audit.sqlite_path = audit_dir.0.join("audit.db");
        Self { config: c, audit_dir }
    }

    /// Updates travel over this NATS under this subject prefix.
    pub fn nats(mut self, url: &str, prefix: &str) -> Self {
        self.config.nats.url = Some(url.into());
        self.config.nats.subject_prefix = prefix.into();
        self
    }

    /// Client auth on: HS256 tokens signed with `secret`.
    pub fn jwt_secret(mut self, secret: &str) -> Self {
        self.config.auth.jwt_secret = Some(secret.into());
        self
    }

    /// WS_MAX_CONNECTIONS.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.limits.max_connections = n;
        self
    }

    /// WS_MAX_CONNECTIONS_PER_USER.
    pub fn max_connections_per_user(mut self, n: usize) -> Self {
        self.config.limits.max_connections_per_user = n;
        self
    }

    /// INGEST_TOKEN.
    pub fn ingest_token(mut self, token: &str) -> Self {
        self.config.auth.ingest_token = Some(token.into());
        self
    }
    /// Any other setting (a test that needs one the helpers above lack).
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }
}

/// An HS256 client token the gateway with `secret` accepts.
pub fn dev_token(secret: &str, sub: &str) -> String {
    venta_gateway::auth::dev_token(secret, sub, 600).expect("token")
}

/// A gateway running in this test process.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub wt_addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<bool, venta_gateway::server::RunError>>>,
    _audit_dir: TempDir,
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(GwConfig::new()).await
    }

    pub async fn start_with(config: GwConfig) -> Self {
        let gw = Gateway::bind(config.config).await.expect("bind");
        let addr = gw.local_addr().expect("addr");
        let grpc_addr = gw.grpc_addr().expect("grpc addr");
        let wt_addr = gw.wt_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(async move {
            let _ = rx.await;
        }));
        Self { addr, grpc_addr, wt_addr, stop: Some(tx), task: Some(task), _audit_dir: config.audit_dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// A WebTransport session URL.
    pub fn wt_url(&self, path: &str) -> String {
        format!("https://{}{}", self.wt_addr, path)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// Whether `GET /health/ready` answers 200.
    pub async fn is_ready(&self) -> bool {
        reqwest::get(self.http("/health/ready")).await.is_ok_and(|r| r.status() == 200)
    }

    /// Triggers graceful shutdown; returns whether it finished in time.
    pub async fn shutdown(mut self) -> bool {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().expect("task");
        tokio::time::timeout(Duration::from_secs(20), task)
            .await
            .expect("shutdown timed out")
            .expect("join")
            .expect("io")
    }

    /// `POST /api/v1/publish/location`, which must be accepted.
    pub async fn publish_location(&self, vendor: &str, lat: f64, long: f64) -> Value {
        let body = json!({"vendorId": vendor, "location": {"lat": lat, "long": long}});
        let resp = reqwest::Client::new()
            .post(self.http("/api/v1/publish/location"))
            .json(&body)
            .send()
            .await
            .expect("publish request");
        assert_eq!(resp.status(), 202, "publish {body} answered {}", resp.status());
        resp.json().await.expect("publish json")
    }
}

/// Panics with the schema's complaint if `value` is not a server message
/// of docs/protocol.md (`schemas/server/any.json`).
pub fn assert_server_message(value: &Value) {
    static VALIDATOR: OnceLock<Arc<jsonschema::Validator>> = OnceLock::new();
    let v = VALIDATOR.get_or_init(|| {
        let path = root().join("schemas/server/any.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let schema: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Arc::new(validator)
    });
    if let Err(e) = v.validate(value) {
        panic!("{value} does not match schemas/server/any.json: {e}");
    }
}

/// A WebSocket client (venta-client) whose every received message is
/// checked against the server schema; heartbeats are answered and hidden.
pub struct WsClient(Client);

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        let client = tokio::time::timeout(TIMEOUT, Client::connect(url, &Options::default()))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Self(client)
    }

    pub async fn send_json(&mut self, v: Value) {
        self.0.send(&v).await.expect("send");
    }

    /// The next server message; fails the test on a close or a timeout.
    pub async fn recv(&mut self) -> Value {
        let event = tokio::time::timeout(TIMEOUT, self.0.next_event()).await.expect("no message within timeout");
        match event.expect("read") {
            Event::Message(v) => {
                assert_server_message(&v);
                v
            }
            Event::Closed(c) => panic!("expected a message, got {c}"),
        }
    }

    pub async fn subscribe(&mut self, channel: &str, vendor: &str) {
        let id = format!("s-{channel}-{vendor}");
        self.send_json(
            json!({"type": format!("subscribe_{channel}"), "data": {"vendorId": vendor, "userId": "u1"}, "id": id}),
        )
        .await;
        let ack = self.recv().await;
        assert_eq!(ack, json!({"type": "subscribed", "data": {"channel": channel, "vendorId": vendor}, "id": id}));
    }
}
