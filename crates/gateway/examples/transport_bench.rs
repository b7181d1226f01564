//! WebSocket vs WebTransport on this machine: latency under a small load and
//! memory per idle connection, against the release binary as operators run it.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example transport_bench -- latency   # 100 clients, 100 msg/s, 10 s, per transport
//! cargo run --release --example transport_bench -- memory    # RSS delta for 1000 idle subscribed clients
//! ```
//!
//! Latency: one vendor, `CLIENTS` subscribers; a publisher POSTs a location
//! update every 10 ms whose `timestamp` is the send time (RFC 3339, ns);
//! each client computes receive time − timestamp. The first second is warm-up.
//! Each transport runs `RUNS` times against a fresh gateway; the report gives
//! every run's p50/p99 and their medians. Client, publisher and gateway share
//! the machine's cores, as they would in any loopback measurement.
//!
//! Memory: the gateway's VmRSS before and after `IDLE` clients connected and
//! subscribed (one vendor each), settled for 3 s; delta / `IDLE`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_tungstenite::tungstenite::Message;
use wtransport::endpoint::endpoint_side::Client;
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Endpoint};

const CLIENTS: usize = 100;
const RATE_HZ: u64 = 100;
const SECONDS: u64 = 10;
const WARMUP: Duration = Duration::from_secs(1);
const RUNS: usize = 3;
const IDLE: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// WebSocket, JSON.
    Ws,
    /// WebTransport, updates on the stream.
    WtStream,
    /// WebTransport, location updates as datagrams.
    WtDatagram,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Ws => "websocket",
            Self::WtStream => "webtransport (stream)",
            Self::WtDatagram => "webtransport (datagram)",
        }
    }
}

struct Gateway {
    child: Child,
    http: u16,
    wt: u16,
}

fn free_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn free_udp() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Gateway {
    async fn start() -> Self {
        let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/release/venta-gateway");
        assert!(bin.exists(), "build the gateway first: cargo build --release");
        let (http, wt) = (free_tcp(), free_udp());
        let child = Command::new(bin)
            .env("WEBSOCKET_GATEWAY_PORT", http.to_string())
            .env("WT_PORT", wt.to_string())
            .env("GRPC_PORT", free_tcp().to_string())
            .env("BIND_ADDR", "127.0.0.1")
            .env("WS_MAX_CONNECTIONS", "5000")
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gateway");
        let gw = Self { child, http, wt };
        for _ in 0..200 {
            if reqwest::get(gw.url("/health/ready")).await.is_ok_and(|r| r.status() == 200) {
                return gw;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway did not become ready");
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    }

    async fn hash(&self) -> Sha256Digest {
        let v: Value = reqwest::get(self.url("/wt/cert-hash")).await.unwrap().json().await.unwrap();
        let hex = v["value"].as_str().unwrap();
        let bytes: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
        Sha256Digest::new(bytes.try_into().unwrap())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn subscribe_msg(vendor: &str, datagram: bool) -> Value {
    let mut data = json!({"vendorId": vendor, "userId": "bench"});
    if datagram {
        data["delivery"] = json!("datagram");
    }
    json!({"type": "subscribe_location", "data": data, "id": "s"})
}

fn frame(v: &Value) -> Vec<u8> {
    let payload = rmp_serde::to_vec_named(v).unwrap();
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend(payload);
    out
}

/// Latency of one location update in microseconds, if it was sent at or
/// after `from_ns` (Unix nanoseconds: the end of the warm-up).
fn latency_us(v: &Value, from_ns: i128) -> Option<f64> {
    if v["type"] != "location_updated" {
        return None;
    }
    let sent = OffsetDateTime::parse(v["data"]["timestamp"].as_str()?, &Rfc3339).ok()?;
    (sent.unix_timestamp_nanos() >= from_ns).then(|| (OffsetDateTime::now_utc() - sent).as_seconds_f64() * 1e6)
}

/// Latencies, and from when (Unix ns) to record them.
#[derive(Default)]
struct Samples {
    from_ns: AtomicI64,
    values: Mutex<Vec<f64>>,
}

/// Opens one client of `kind` subscribed to `vendor`; with `samples`, records
/// latencies until the task is dropped; answers pings either way.
async fn client(
    kind: Kind,
    gw: &Gateway,
    wt_ep: &Endpoint<Client>,
    vendor: String,
    samples: Option<Arc<Samples>>,
) -> tokio::task::JoinHandle<()> {
    let record = move |v: &Value| {
        if let Some(s) = &samples
            && let Some(us) = latency_us(v, i128::from(s.from_ns.load(Ordering::Relaxed)))
        {
            s.values.lock().push(us);
        }
    };
    match kind {
        Kind::Ws => {
            let url = format!("ws://127.0.0.1:{}/ws/location", gw.http);
            let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("ws connect");
            ws.send(Message::text(subscribe_msg(&vendor, false).to_string())).await.unwrap();
            loop {
                let Some(Ok(Message::Text(t))) = ws.next().await else { panic!("ws ended before ack") };
                if serde_json::from_str::<Value>(&t).unwrap()["type"] == "subscribed" {
                    break;
                }
            }
            tokio::spawn(async move {
                while let Some(Ok(msg)) = ws.next().await {
                    if let Message::Text(t) = msg {
                        let v: Value = serde_json::from_str(&t).unwrap();
                        if v["type"] == "ping" {
                            let _ = ws.send(Message::text(r#"{"type":"pong"}"#)).await;
                        }
                        record(&v);
                    }
                }
            })
        }
        Kind::WtStream | Kind::WtDatagram => {
            let url = format!("https://127.0.0.1:{}/wt/location", gw.wt);
            let conn = wt_ep.connect(&url).await.expect("wt connect");
            let (mut send, mut recv) = conn.open_bi().await.unwrap().await.unwrap();
            send.write_all(&frame(&subscribe_msg(&vendor, kind == Kind::WtDatagram))).await.unwrap();
            let read = async move |recv: &mut wtransport::RecvStream| -> Option<Value> {
                let mut h = [0u8; 4];
                recv.read_exact(&mut h).await.ok()?;
                let mut p = vec![0u8; u32::from_be_bytes(h) as usize];
                recv.read_exact(&mut p).await.ok()?;
                rmp_serde::from_slice(&p).ok()
            };
            loop {
                let v = read(&mut recv).await.expect("wt ended before ack");
                if v["type"] == "subscribed" {
                    break;
                }
            }
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        v = read(&mut recv) => {
                            let Some(v) = v else { return };
                            if v["type"] == "ping" {
                                let _ = send.write_all(&frame(&json!({"type": "pong"}))).await;
                            }
                            record(&v);
                        }
                        dg = conn.receive_datagram() => {
                            let Ok(dg) = dg else { return };
                            if let Ok(v) = rmp_serde::from_slice::<Value>(&dg.payload()) {
                                record(&v);
                            }
                        }
                    }
                }
            })
        }
    }
}

fn client_endpoint(hash: Sha256Digest) -> Endpoint<Client> {
    let cfg = ClientConfig::builder()
        .with_bind_address("127.0.0.1:0".parse::<SocketAddr>().unwrap())
        .with_server_certificate_hashes([hash])
        .build();
    Endpoint::client(cfg).unwrap()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn latency_run(kind: Kind) -> (f64, f64, usize) {
    let gw = Gateway::start().await;
    let ep = client_endpoint(gw.hash().await);
    let samples = Arc::new(Samples { from_ns: AtomicI64::new(i64::MAX), values: Mutex::default() });
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        tasks.push(client(kind, &gw, &ep, "bench".into(), Some(Arc::clone(&samples))).await);
    }
    let warm_end = OffsetDateTime::now_utc() + WARMUP;
    samples.from_ns.store(i64::try_from(warm_end.unix_timestamp_nanos()).unwrap(), Ordering::Relaxed);
    let http = reqwest::Client::new();
    let url = gw.url("/api/v1/publish/location");
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE_HZ));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let total = RATE_HZ * (SECONDS + WARMUP.as_secs());
    for i in 0..total {
        tick.tick().await;
        let ts = OffsetDateTime::now_utc().format(&Rfc3339).unwrap();
        let body = json!({"vendorId": "bench", "location": {"lat": (i % 90) as f64, "long": 1.0}, "timestamp": ts});
        let resp = http.post(&url).json(&body).send().await.expect("publish");
        assert_eq!(resp.status(), 202);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for t in tasks {
        t.abort();
    }
    let mut s = std::mem::take(&mut *samples.values.lock());
    s.sort_by(f64::total_cmp);
    (percentile(&s, 0.5), percentile(&s, 0.99), s.len())
}

async fn memory_run(kind: Kind) -> f64 {
    let gw = Gateway::start().await;
    let ep = client_endpoint(gw.hash().await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = gw.rss_kib();
    let mut tasks = Vec::new();
    for i in 0..IDLE {
        tasks.push(client(kind, &gw, &ep, format!("m{i}"), None).await);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = gw.rss_kib();
    for t in tasks {
        t.abort();
    }
    (after as f64 - before as f64) / IDLE as f64
}

#[tokio::main]
async fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "latency".into());
    let kinds = [Kind::Ws, Kind::WtStream, Kind::WtDatagram];
    match mode.as_str() {
        "latency" => {
            println!(
                "{CLIENTS} clients × {RATE_HZ} msg/s × {SECONDS} s per run (publish via HTTP → client), {RUNS} runs"
            );
            for kind in kinds {
                let mut p50s = Vec::new();
                let mut p99s = Vec::new();
                for run in 1..=RUNS {
                    let (p50, p99, n) = latency_run(kind).await;
                    println!(
                        "  {:<24} run {run}: p50 {:>7.0} µs  p99 {:>7.0} µs  ({n} samples)",
                        kind.name(),
                        p50,
                        p99
                    );
                    p50s.push(p50);
                    p99s.push(p99);
                }
                println!(
                    "{:<26} median p50 {:>7.0} µs  median p99 {:>7.0} µs",
                    kind.name(),
                    median(p50s),
                    median(p99s)
                );
            }
        }
        "memory" => {
            println!("gateway RSS delta for {IDLE} idle subscribed connections, {RUNS} runs");
            for kind in [Kind::Ws, Kind::WtStream] {
                let mut per = Vec::new();
                for run in 1..=RUNS {
                    let kib = memory_run(kind).await;
                    println!("  {:<24} run {run}: {:>6.1} KiB per connection", kind.name(), kib);
                    per.push(kib);
                }
                println!("{:<26} median {:>6.1} KiB per connection", kind.name(), median(per));
            }
        }
        other => panic!("unknown mode {other}: latency | memory"),
    }
}
