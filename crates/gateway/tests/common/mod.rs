//! Shared helpers for the integration tests: an in-process gateway on an
//! ephemeral port, a WebSocket client that checks every frame it receives
//! against `schemas/server/any.json`, and a child-process gateway.
#![allow(dead_code)]

pub mod nats;
pub mod pg;
pub mod redis_cluster;
pub mod wt;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use venta_gateway::state::Shared;
use venta_gateway::{Config, Gateway};

pub const TIMEOUT: Duration = Duration::from_secs(10);

pub fn root() -> PathBuf {
    // The repository root: this crate lives in crates/gateway.
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

/// The JS client (clients/js), with its packages installed and its browser
/// bundle built, doing either once per test process when missing or older
/// than the sources: the Node driver imports the package, the Chromium pages
/// load the bundle, and `cargo test` must work on a fresh clone as it is.
pub fn js_client() -> PathBuf {
    static READY: OnceLock<PathBuf> = OnceLock::new();
    READY
        .get_or_init(|| {
            let dir = root().join("clients/js");
            let npm = |args: &[&str]| {
                let ok = Command::new("npm").args(args).current_dir(&dir).status().is_ok_and(|s| s.success());
                assert!(
                    ok,
                    "npm {} in {} failed (Node 20+ with npm is needed; .ci/run checks it)",
                    args.join(" "),
                    dir.display()
                );
            };
            if !dir.join("node_modules").is_dir() {
                eprintln!("installing the JS client's packages (npm ci in {})", dir.display());
                npm(&["ci", "--no-audit", "--no-fund"]);
            }
            let bundle = dir.join("dist/venta-realtime.browser.js");
            let built = std::fs::metadata(&bundle).and_then(|m| m.modified()).ok();
            let newest_source = std::fs::read_dir(dir.join("src"))
                .into_iter()
                .flatten()
                .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
                .max();
            if built.is_none() || newest_source > built {
                eprintln!("building the JS client (npm run build in {})", dir.display());
                npm(&["run", "build"]);
            }
            dir
        })
        .clone()
}

pub fn schema(rel: &str) -> jsonschema::Validator {
    let path = root().join("schemas").join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let value: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    jsonschema::options()
        .should_validate_formats(true)
        .build(&value)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Panics with the schema's complaint if `value` does not match `rel`.
pub fn assert_schema(rel: &str, value: &Value) {
    static CACHE: OnceLock<parking_lot::Mutex<std::collections::HashMap<String, Arc<jsonschema::Validator>>>> =
        OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let v = cache.lock().entry(rel.to_owned()).or_insert_with(|| Arc::new(schema(rel))).clone();
    if let Err(e) = v.validate(value) {
        panic!("{value} does not match schemas/{rel}: {e}");
    }
}

/// A gateway running in this test process.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub wt_addr: SocketAddr,
    pub shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<bool, venta_gateway::server::RunError>>>,
    /// Audit files (SQLite, journal) of a test that did not choose its own.
    _audit_dir: Option<nats::tempdir::Dir>,
}

/// Points audit paths still at their defaults (the working directory) into
/// a fresh temporary directory, so tests neither share nor litter them.
pub fn private_audit_paths(config: &mut Config) -> Option<nats::tempdir::Dir> {
    let defaults = Config::defaults();
    if config.audit.journal_dir != defaults.audit.journal_dir && config.audit.sqlite_path != defaults.audit.sqlite_path
    {
        return None;
    }
    let dir = nats::tempdir::Dir::new();
    if config.audit.journal_dir == defaults.audit.journal_dir {
        config.audit.journal_dir = dir.0.join("journal");
    }
    if config.audit.sqlite_path == defaults.audit.sqlite_path {
        config.audit.sqlite_path = dir.0.join("audit.db");
    }
    Some(dir)
}

pub fn test_config() -> Config {
    let mut c = Config::defaults();
    c.server.bind_addr = "127.0.0.1".parse().unwrap();
    c.server.port = 0;
    c.server.grpc_port = 0;
    // Ephemeral: the HTTP port's number may be some client's UDP port.
    c.webtransport.port = Some(0);
    c.log.shutdown_timeout_secs = 5;
    c
}

/// Polls `f` every 50 ms until it holds; fails the test after 30 s.
pub async fn wait_until<F: AsyncFnMut() -> bool>(what: &str, mut f: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestGateway {
    pub async fn start() -> Self {
        Self::start_with(test_config()).await
    }

    pub async fn start_with(mut config: Config) -> Self {
        let audit_dir = private_audit_paths(&mut config);
        let gw = Gateway::bind(config).await.expect("bind");
        let addr = gw.local_addr().expect("addr");
        let grpc_addr = gw.grpc_addr().expect("grpc addr");
        let wt_addr = gw.wt_addr();
        let shared = Arc::clone(gw.shared());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gw.run(async move {
            let _ = rx.await;
        }));
        Self { addr, grpc_addr, wt_addr, shared, stop: Some(tx), task: Some(task), _audit_dir: audit_dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://{}{}", self.addr, path)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `GET /health`: status code and body, checked against its schema.
    pub async fn health(&self) -> (u16, Value) {
        let r = reqwest::get(self.http("/health")).await.unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap();
        assert_schema("http/health.json", &v);
        (status, v)
    }

    /// Whether `GET /health/ready` answers 200.
    pub async fn is_ready(&self) -> bool {
        reqwest::get(self.http("/health/ready")).await.is_ok_and(|r| r.status() == 200)
    }

    /// A WebTransport session URL.
    pub fn wt_url(&self, path: &str) -> String {
        format!("https://{}{}", self.wt_addr, path)
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

    pub async fn publish_location(&self, vendor: &str, lat: f64, long: f64) -> Value {
        let body = json!({"vendorId": vendor, "location": {"lat": lat, "long": long}});
        publish(&self.http("/api/v1/publish/location"), &body).await
    }

    pub async fn publish_vendor(&self, vendor: &str, data: Value) -> Value {
        let body = json!({"vendorId": vendor, "vendor": data});
        publish(&self.http("/api/v1/publish/vendor"), &body).await
    }
}

pub async fn publish(url: &str, body: &Value) -> Value {
    let resp = reqwest::Client::new().post(url).json(body).send().await.expect("publish request");
    assert_eq!(resp.status(), 202, "publish {body} answered {}", resp.status());
    let v: Value = resp.json().await.expect("publish json");
    assert_schema("http/publish_response.json", &v);
    v
}

/// What a client saw next.
#[derive(Debug, PartialEq)]
pub enum Event {
    Json(Value),
    Closed(Option<u16>, String),
}

pub struct WsClient {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Whether to answer server pings with pong and hide them.
    pub auto_pong: bool,
}

impl WsClient {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Self { ws, auto_pong: true }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// Next JSON message or close; every JSON message is checked against the
    /// server schema.
    pub async fn next_event(&mut self) -> Event {
        loop {
            let msg = tokio::time::timeout(TIMEOUT, self.ws.next()).await.expect("no message within timeout");
            match msg {
                None => return Event::Closed(None, String::new()),
                Some(Err(e)) => return Event::Closed(None, e.to_string()),
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap_or_else(|e| panic!("server sent non-JSON {t}: {e}"));
                    assert_schema("server/any.json", &v);
                    if self.auto_pong && v["type"] == "ping" {
                        self.send_json(json!({"type": "pong"})).await;
                        continue;
                    }
                    return Event::Json(v);
                }
                Some(Ok(Message::Close(frame))) => {
                    return Event::Closed(
                        frame.as_ref().map(|f| u16::from(f.code)),
                        frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    );
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        match self.next_event().await {
            Event::Json(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Waits for the close frame, skipping messages; returns (code, reason).
    pub async fn closed(&mut self) -> (Option<u16>, String) {
        let wait = async {
            loop {
                if let Event::Closed(code, reason) = self.next_event().await {
                    return (code, reason);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(60), wait).await.expect("no close within 60 s")
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

/// A port that was free a moment ago (for child-process gateways).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A gateway binary run as a child process.
pub struct GatewayProcess {
    pub child: Child,
    pub port: u16,
    _audit_dir: nats::tempdir::Dir,
}

impl GatewayProcess {
    pub async fn spawn(port: u16, env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_venta-gateway"));
        cmd.env("WEBSOCKET_GATEWAY_PORT", port.to_string())
            .env("GRPC_PORT", free_port().to_string())
            .env("WT_PORT", "0")
            .env("BIND_ADDR", "127.0.0.1")
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // Audit files in a private directory unless the test chose its own.
        let audit_dir = nats::tempdir::Dir::new();
        cmd.env("AUDIT_JOURNAL_DIR", audit_dir.0.join("journal"))
            .env("AUDIT_SQLITE_PATH", audit_dir.0.join("audit.db"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn gateway binary");
        let p = Self { child, port, _audit_dir: audit_dir };
        p.wait_live().await;
        p
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    pub fn url(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.port, path)
    }

    async fn wait_live(&self) {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if let Ok(r) = reqwest::get(self.http("/health/ready")).await
                && r.status() == 200
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway on port {} did not become ready", self.port);
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill").args([&format!("-{sig}"), &self.child.id().to_string()]).status().expect("kill");
        assert!(st.success());
    }

    /// Waits for exit and returns the exit code.
    pub async fn wait_exit(&mut self) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code();
            }
            assert!(tokio::time::Instant::now() < deadline, "gateway did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Chromium from Debian, never a downloaded browser; fails loudly if missing.
pub fn chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "chromium is not installed: apt-get update && apt-get install -y chromium (Debian's package; .ci/run does this)"
    );
}

/// The flags every test browser starts with: headless, and nothing that
/// reaches outside the machine (the team's Chromium notes).
pub const CHROMIUM_FLAGS: [&str; 7] = [
    "--headless",
    "--no-sandbox",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-gpu",
];

/// Headless Chromium with a fresh profile that loads `url` and prints the
/// DOM once the page has settled (the dump-dom trick); killed on drop. The
/// profile directory is returned for the caller to remove afterwards.
pub fn chromium_dump_dom(url: &str) -> (tokio::process::Child, PathBuf) {
    let profile = std::env::temp_dir().join(format!("venta-chromium-{}", uuid::Uuid::new_v4().simple()));
    let child = tokio::process::Command::new(chromium())
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start chromium");
    (child, profile)
}
