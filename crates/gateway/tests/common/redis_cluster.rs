//! A Redis Cluster of the test's own: three primaries and three replicas of
//! the machine's `redis-server` on loopback, in a temporary directory, made
//! with `redis-cli --cluster create` and killed by PID on drop.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::nats::tempdir;

/// How long one command to one node may take.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// One `redis-server` child.
struct Node {
    port: u16,
    child: Option<Child>,
}

/// A slot range and the node serving it, from `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct Primary {
    pub port: u16,
    pub id: String,
    pub slots: Vec<(u16, u16)>,
}

pub struct RedisCluster {
    nodes: Vec<Node>,
    dir: tempdir::Dir,
}

/// Fails loudly, with how to get them, without the two binaries.
fn require_binaries() {
    for bin in ["redis-server", "redis-cli"] {
        let ok = Command::new(bin).arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        assert!(ok, "{bin} not found: the Redis Cluster tests need Redis 7+ (apt-get install redis-server)");
    }
}

/// `n` distinct ports, all free a moment ago (client and cluster-bus
/// ports are chosen apart: the default bus port, port + 10000, may be taken
/// or past 65535).
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<_> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

impl RedisCluster {
    /// Starts six nodes and joins them into 3 primaries + 3 replicas;
    /// returns once every node says `cluster_state:ok` and every replica
    /// is in sync with its primary (so a failover can happen).
    pub async fn start() -> Self {
        Self::start_with_node_timeout(1000).await
    }

    /// Like [`RedisCluster::start`], with `cluster-node-timeout` in ms: a
    /// primary that stops answering is replaced after about 2-3 times it.
    pub async fn start_with_node_timeout(node_timeout_ms: u32) -> Self {
        // One cluster forms at a time in this process: ports are picked
        // and bound under the lock, so two tests never pick the same ones.
        static FORMING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _forming = FORMING.lock().await;
        require_binaries();
        let dir = tempdir::Dir::new();
        let ports = free_ports(12);
        let (client_ports, bus_ports) = ports.split_at(6);
        let mut nodes = Vec::new();
        for (&port, &bus) in client_ports.iter().zip(bus_ports) {
            let child = Command::new("redis-server")
                .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--cluster-port", &bus.to_string()])
                .args(["--cluster-enabled", "yes", "--cluster-config-file"])
                .arg(dir.0.join(format!("nodes-{port}.conf")))
                .args(["--cluster-node-timeout", &node_timeout_ms.to_string()])
                .args(["--cluster-replica-validity-factor", "0"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no", "--dir"])
                .arg(&dir.0)
                .arg("--logfile")
                .arg(dir.0.join(format!("{port}.log")))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("spawn redis-server");
            nodes.push(Node { port, child: Some(child) });
        }
        let cluster = Self { nodes, dir };
        for &port in client_ports {
            cluster.wait(&format!("redis-server on {port} to answer"), async || cluster.ping(port).await).await;
        }
        let log = cluster.dir.0.join("create.log");
        let mut create = tokio::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for &port in client_ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(cluster.dir.0.join("create.err")).unwrap())
            .kill_on_drop(true);
        let status = tokio::time::timeout(Duration::from_secs(30), create.status()).await;
        if !matches!(status, Ok(Ok(s)) if s.success()) {
            panic!("redis-cli --cluster create: {status:?}\n{}", cluster.logs());
        }
        cluster.wait("the cluster to be ok on every node, replicas in sync", async || cluster.healthy().await).await;
        cluster
    }

    /// Polls `f` every 50 ms; fails the test after 20 s.
    pub async fn wait<F: AsyncFnMut() -> bool>(&self, what: &str, mut f: F) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !f().await {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of every log in the directory, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<_> =
            std::fs::read_dir(&self.dir.0).into_iter().flatten().flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files.iter().filter(|f| f.extension().is_some_and(|e| e == "log" || e == "err")) {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!("--- {}\n{}\n", f.display(), lines[lines.len().saturating_sub(8)..].join("\n"));
        }
        out
    }

    /// Ports of the nodes still running.
    pub fn live_ports(&self) -> Vec<u16> {
        self.nodes.iter().filter(|n| n.child.is_some()).map(|n| n.port).collect()
    }

    /// `REDIS_URL` for the gateway: the first `n` live nodes, comma separated.
    pub fn seeds(&self, n: usize) -> String {
        self.live_ports().iter().take(n).map(|p| format!("redis://127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    /// One command to one node (not through the cluster client): what that
    /// node itself says.
    pub async fn cmd<T: redis::FromRedisValue>(&self, port: u16, args: &[&str]) -> redis::RedisResult<T> {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
        let call = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            let mut cmd = redis::cmd(args[0]);
            for a in &args[1..] {
                cmd.arg(*a);
            }
            cmd.query_async::<T>(&mut conn).await
        };
        match tokio::time::timeout(NODE_TIMEOUT, call).await {
            Ok(r) => r,
            Err(_) => Err(redis::RedisError::from((redis::ErrorKind::Io, "timed out"))),
        }
    }

    async fn ping(&self, port: u16) -> bool {
        self.cmd::<String>(port, &["PING"]).await.is_ok_and(|p| p == "PONG")
    }

    /// Every live node: `cluster_state:ok`, it knows 3 serving primaries,
    /// and every replica's link to its primary is up.
    pub async fn healthy(&self) -> bool {
        for port in self.live_ports() {
            let Ok(info) = self.cmd::<String>(port, &["CLUSTER", "INFO"]).await else { return false };
            if !info.contains("cluster_state:ok") {
                return false;
            }
            let Ok(primaries) = self.primaries_seen_by(port).await else { return false };
            if primaries.len() != 3 || primaries.iter().any(|p| p.slots.is_empty()) {
                return false;
            }
            let Ok(repl) = self.cmd::<String>(port, &["INFO", "replication"]).await else { return false };
            if repl.contains("role:slave") && !repl.contains("master_link_status:up") {
                return false;
            }
        }
        true
    }

    /// The primaries serving slots, as node `port` sees them.
    pub async fn primaries_seen_by(&self, port: u16) -> redis::RedisResult<Vec<Primary>> {
        let text: String = self.cmd(port, &["CLUSTER", "NODES"]).await?;
        let mut out = Vec::new();
        for line in text.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 8 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let Some(node_port) =
                f[1].split('@').next().and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse().ok())
            else {
                continue;
            };
            let slots = f[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|x| (x, x)),
                })
                .collect();
            out.push(Primary { port: node_port, id: f[0].to_owned(), slots });
        }
        Ok(out)
    }

    /// The serving primaries (as the first live node sees them).
    pub async fn primaries(&self) -> Vec<Primary> {
        let port = self.live_ports()[0];
        let mut p = self.primaries_seen_by(port).await.expect("CLUSTER NODES");
        p.retain(|p| !p.slots.is_empty());
        p
    }

    /// The key's hash slot.
    pub async fn slot(&self, key: &str) -> u16 {
        let port = self.live_ports()[0];
        self.cmd::<u16>(port, &["CLUSTER", "KEYSLOT", key]).await.expect("CLUSTER KEYSLOT")
    }

    /// The port of the primary serving `key`.
    pub async fn owner(&self, key: &str) -> u16 {
        let slot = self.slot(key).await;
        let primaries = self.primaries().await;
        primaries
            .iter()
            .find(|p| p.slots.iter().any(|&(a, b)| (a..=b).contains(&slot)))
            .map(|p| p.port)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}: {primaries:?}"))
    }

    /// The port of a replica of the primary on `port`.
    pub async fn replica_of(&self, port: u16) -> u16 {
        let id: String = self.cmd(port, &["CLUSTER", "MYID"]).await.expect("CLUSTER MYID");
        let text: String = self.cmd(port, &["CLUSTER", "NODES"]).await.expect("CLUSTER NODES");
        text.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == id)
            .and_then(|f| f[1].split('@').next()?.rsplit(':').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no replica of {port}: {text}"))
    }

    /// Keys matching `pattern` on each serving primary (by port).
    pub async fn keys_by_primary(&self, pattern: &str) -> BTreeMap<u16, Vec<String>> {
        let mut out = BTreeMap::new();
        for p in self.primaries().await {
            let mut keys: Vec<String> = self.cmd(p.port, &["KEYS", pattern]).await.expect("KEYS");
            keys.sort();
            out.insert(p.port, keys);
        }
        out
    }

    /// SIGKILLs the node on `port` (no goodbye to the cluster: the others
    /// must notice and fail over).
    pub fn kill(&mut self, port: u16) {
        let node = self.nodes.iter_mut().find(|n| n.port == port).expect("no such node");
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
