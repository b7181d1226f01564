//! The shared limiter: one GCRA state per key in Redis, updated atomically
//! by a Lua script in one round trip, so every instance spends one budget.
//! While Redis is unreachable the in-process limiter holds the line.
//!
//! Redis may be one server or a Redis Cluster ([`Topology::Cluster`]). A
//! check touches exactly one key, so in a cluster the script runs on the
//! shard that owns the key's slot and needs no hash tag; a user's budget
//! lives on one shard, and different users spread over all of them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::memory::MemoryLimiter;
use super::{Decision, RateLimiter};
use crate::bus::DependencyStatus;

/// GCRA with the server's clock (one clock for every instance), in µs.
/// Returns 0 when allowed, else the µs until one more message fits.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2]) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > burst then return math.ceil(ahead - burst) end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000) + 1000)
return 0
";

/// How long a check may wait for Redis before the local limiter decides.
const CHECK_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, how long checks go straight to the local limiter before
/// Redis is tried again (so an outage does not add a timeout per message).
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// The background probe's interval unless told otherwise.
const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// How long connecting to one Redis node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What `REDIS_URL` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One Redis server (one URL).
    Single,
    /// A Redis Cluster: `REDIS_URL` lists one or more seed nodes, comma
    /// separated; the rest of the cluster is learnt from them.
    Cluster,
}

/// The client for either topology (a ready connection is [`Conn`]).
enum Client {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

/// A connection that re-connects by itself: to the server, or to every
/// shard of the cluster (following failovers and slot moves).
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn gcra(&mut self, call: &redis::ScriptInvocation<'_>) -> redis::RedisResult<i64> {
        match self {
            Self::Single(c) => call.invoke_async(c).await,
            Self::Cluster(c) => call.invoke_async(c).await,
        }
    }

    /// PING the server; or, for a cluster, reach every shard's primary.
    async fn ping(&mut self, prefix: &str) -> Result<(), String> {
        match self {
            Self::Single(c) => {
                redis::cmd("PING").query_async::<redis::Value>(c).await.map(drop).map_err(|e| e.to_string())
            }
            Self::Cluster(c) => ping_primaries(c, prefix).await,
        }
    }
}

/// Whether every slot has a primary this client reaches. A plain PING
/// "to all primaries" is not enough: the client skips a primary it holds
/// no connection to (a dead one), so it would answer ok while a shard is
/// gone. So the slot map comes from a live node (`CLUSTER SLOTS`: every
/// slot must have a primary), and for each slot range a key of that range
/// is read (`EXISTS`), routed by the client's own slot map: it answers only
/// if the shard's current primary does, and a stale map (a failover the
/// client has not seen yet) is corrected on the way by the MOVED reply, so
/// an idle gateway follows a failover too.
async fn ping_primaries(c: &mut ClusterConnection, prefix: &str) -> Result<(), String> {
    use redis::Value;
    use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
    let mut slots = redis::cmd("CLUSTER");
    slots.arg("SLOTS");
    let map = c
        .route_command(slots, RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random))
        .await
        .map_err(|e| e.to_string())?;
    let Value::Array(ranges) = map else { return Err("CLUSTER SLOTS: not an array".into()) };
    let mut covered = 0_i64;
    // One read per primary (its first range), however fragmented the slots.
    let mut probed: Vec<&Value> = Vec::new();
    for range in &ranges {
        // [start, end, [host, port, id, ...], replicas...]
        let Value::Array(f) = range else { continue };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
            (f.first(), f.get(1), f.get(2))
        else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u16::try_from(*start), u16::try_from(*end)) else { continue };
        if start > end {
            continue;
        }
        covered += i64::from(end - start) + 1;
        // [host, port, node id, ...]: the same in each of its ranges.
        let primary = node.get(2).unwrap_or(&Value::Nil);
        if *primary != Value::Nil && probed.contains(&primary) {
            continue;
        }
        probed.push(primary);
        let Some(key) = key_in_slots(prefix, start, end) else { continue };
        redis::cmd("EXISTS").arg(&key).query_async::<i64>(c).await.map_err(|e| format!("slots {start}-{end}: {e}"))?;
    }
    if covered < i64::from(SLOTS) {
        return Err(format!("{} of {SLOTS} slots have no primary", i64::from(SLOTS) - covered));
    }
    Ok(())
}

/// Hash slots in a Redis Cluster.
const SLOTS: u16 = 16_384;

/// A key (never written; under the prefix, so an ACL limited to it
/// allows it) whose hash slot is in `start..=end`: a hash tag of a counter,
/// hashed as Redis does (CRC16/XMODEM mod 16384). 2^20 counters cover
/// every slot.
fn key_in_slots(prefix: &str, start: u16, end: u16) -> Option<String> {
    (0..1_u32 << 20).find_map(|n| {
        let tag = n.to_string();
        let slot = crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS;
        (start..=end).contains(&slot).then(|| format!("{prefix}probe:{{{tag}}}"))
    })
}

/// Redis-backed limiter with a local fallback.
pub struct RedisLimiter {
    inner: Arc<Inner>,
    /// Ends the background connect-and-probe task.
    stop: CancellationToken,
    /// That task, awaited by [`RateLimiter::close`].
    tasks: TaskTracker,
}

struct Inner {
    /// The address, credentials removed: for logs and `/health`.
    url: String,
    prefix: String,
    interval_us: u64,
    per_minute: u32,
    probe_interval: Duration,
    /// Set by the probe once connected; taken by [`RateLimiter::close`], so
    /// the connection (and the client's tasks behind it) ends at shutdown.
    conn: parking_lot::RwLock<Option<Conn>>,
    script: redis::Script,
    fallback: MemoryLimiter,
    healthy: AtomicBool,
    /// Whether the current outage (or a failing start) was logged.
    outage_logged: AtomicBool,
    /// Whether Redis ever answered (the first success logs differently).
    ever_up: AtomicBool,
    /// Earliest time (µs since `started`) to try Redis again after a failure.
    retry_at_us: AtomicU64,
    started: Instant,
    last_error: parking_lot::Mutex<String>,
}

/// `REDIS_URL` (or the key prefix, for a cluster) is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    /// Not a Redis URL, or not a list of them for a cluster.
    #[error("invalid REDIS_URL {url:?}: {reason}")]
    InvalidUrl {
        /// The value, credentials removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A hash tag in the prefix would put every user's key in one slot,
    /// so one shard would carry every budget.
    #[error(
        "invalid REDIS_KEY_PREFIX {prefix:?}: must not contain `{{` or `}}` with REDIS_CLUSTER=true (a hash tag would put every key on one shard)"
    )]
    HashTagPrefix {
        /// The prefix.
        prefix: String,
    },
}

impl RedisConfigError {
    /// Whether this is a configuration mistake (exit status 2): always.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::InvalidUrl { .. } | Self::HashTagPrefix { .. })
    }
}

/// Checks `REDIS_URL` for `topology` without connecting: one URL for a
/// single server, one or more comma-separated seed URLs for a cluster.
/// Config validation and [`RedisLimiter::start`] share it.
pub fn check_url(url: &str, topology: Topology) -> Result<(), RedisConfigError> {
    open(url, topology).map(drop)
}

fn open(url: &str, topology: Topology) -> Result<Client, RedisConfigError> {
    let invalid = |reason: String| RedisConfigError::InvalidUrl { url: crate::bus::nats::redact(url), reason };
    match topology {
        Topology::Single => {
            if url.contains(',') {
                return Err(invalid(
                    "several URLs name a Redis Cluster: set REDIS_CLUSTER=true, or give one URL".into(),
                ));
            }
            redis::Client::open(url).map(Client::Single).map_err(|e| invalid(e.to_string()))
        }
        Topology::Cluster => {
            let seeds: Vec<&str> = url.split(',').map(str::trim).collect();
            if seeds.iter().any(|s| s.is_empty()) {
                return Err(invalid("an empty seed in the comma-separated list".into()));
            }
            for seed in &seeds {
                // Each seed alone, so a bad one is named by its reason.
                redis::Client::open(*seed).map_err(|e| invalid(e.to_string()))?;
            }
            ClusterClient::builder(seeds)
                .connection_timeout(CONNECT_TIMEOUT)
                .response_timeout(CHECK_TIMEOUT)
                .build()
                .map(|c| Client::Cluster(Box::new(c)))
                .map_err(|e| invalid(e.to_string()))
        }
    }
}

impl RedisLimiter {
    /// Starts connecting in the background; checks use the local limiter
    /// until Redis answers. Redis is probed every 2 s.
    pub fn new(url: &str, key_prefix: &str, per_minute: u32) -> Result<Self, RedisConfigError> {
        Self::start(url, Topology::Single, key_prefix, per_minute, DEFAULT_PROBE_INTERVAL)
    }

    /// Like [`RedisLimiter::new`], probing Redis (PING) every
    /// `probe_interval` so `/health` is true with no client traffic. The
    /// probe ends when the limiter is dropped.
    pub fn start(
        url: &str,
        topology: Topology,
        key_prefix: &str,
        per_minute: u32,
        probe_interval: Duration,
    ) -> Result<Self, RedisConfigError> {
        let shown = crate::bus::nats::redact(url);
        let client = open(url, topology)?;
        if topology == Topology::Cluster && key_prefix.contains(['{', '}']) {
            return Err(RedisConfigError::HashTagPrefix { prefix: key_prefix.to_owned() });
        }
        let per_minute = per_minute.max(1);
        let inner = Arc::new(Inner {
            url: shown,
            prefix: key_prefix.to_owned(),
            interval_us: 60_000_000 / u64::from(per_minute),
            per_minute,
            probe_interval,
            conn: parking_lot::RwLock::new(None),
            script: redis::Script::new(GCRA),
            fallback: MemoryLimiter::new(per_minute),
            healthy: AtomicBool::new(false),
            outage_logged: AtomicBool::new(false),
            ever_up: AtomicBool::new(false),
            retry_at_us: AtomicU64::new(0),
            started: Instant::now(),
            last_error: parking_lot::Mutex::new("connecting".into()),
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(probe(Arc::downgrade(&inner), client, stop.clone()));
        tasks.close();
        Ok(Self { inner, stop, tasks })
    }
}

impl Drop for RedisLimiter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connects, then PINGs every probe interval: health follows Redis on an
/// idle gateway too, and the connection is re-made after an outage without
/// waiting for a client message.
async fn probe(inner: Weak<Inner>, client: Client, stop: CancellationToken) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(CHECK_TIMEOUT))
        .set_max_delay(Duration::from_secs(2))
        // Fail the attempt fast: this loop retries every probe interval,
        // and says once that Redis is unreachable.
        .set_number_of_retries(1);
    loop {
        let Some(me) = inner.upgrade() else { return };
        let interval = me.probe_interval;
        tokio::select! {
            () = stop.cancelled() => return,
            () = me.probe_once(&client, &config) => {}
        }
        drop(me);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

impl Inner {
    fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    async fn probe_once(&self, client: &Client, config: &ConnectionManagerConfig) {
        let known = self.conn.read().clone();
        let mut conn = match known {
            Some(conn) => conn,
            None => {
                let made = match client {
                    Client::Single(c) => c.get_connection_manager_with_config(config.clone()).await.map(Conn::Single),
                    // Bounded: it asks the seeds for the slot map, each
                    // within CONNECT_TIMEOUT.
                    Client::Cluster(c) => c.get_async_connection().await.map(Conn::Cluster),
                };
                match made {
                    Ok(conn) => {
                        *self.conn.write() = Some(conn.clone());
                        conn
                    }
                    Err(e) => {
                        self.failed(e.to_string());
                        return;
                    }
                }
            }
        };
        match tokio::time::timeout(CHECK_TIMEOUT * 4, conn.ping(&self.prefix)).await {
            Ok(Ok(())) => self.succeeded(),
            Ok(Err(e)) => self.failed(e),
            Err(_) => self.failed("PING timed out".into()),
        }
    }

    fn succeeded(&self) {
        if self.healthy.swap(true, Ordering::Relaxed) {
            return;
        }
        self.outage_logged.store(false, Ordering::Relaxed);
        if self.ever_up.swap(true, Ordering::Relaxed) {
            tracing::info!(redis = %self.url, "Redis is back: rate limits shared again");
        } else {
            tracing::info!(redis = %self.url, "rate limits shared through Redis");
        }
    }

    fn failed(&self, why: String) {
        self.healthy.store(false, Ordering::Relaxed);
        if !self.outage_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(redis = %self.url, error = %why, "Redis unreachable: rate limits are per instance until it answers; retrying");
        } else {
            tracing::debug!(redis = %self.url, error = %why, "Redis still unreachable");
        }
        *self.last_error.lock() = why;
        let retry = self.now_us() + u64::try_from(PROBE_EVERY.as_micros()).unwrap_or(1_000_000);
        self.retry_at_us.store(retry, Ordering::Relaxed);
    }

    async fn check(&self, key: &str) -> Decision {
        if !self.healthy.load(Ordering::Relaxed) && self.now_us() < self.retry_at_us.load(Ordering::Relaxed) {
            return self.fallback.check_now(key);
        }
        let Some(mut conn) = self.conn.read().clone() else { return self.fallback.check_now(key) };
        let mut call = self.script.key(format!("{}{key}", self.prefix));
        call.arg(self.interval_us).arg(self.per_minute);
        match tokio::time::timeout(CHECK_TIMEOUT, conn.gcra(&call)).await {
            Ok(Ok(wait_us)) => {
                self.succeeded();
                match u64::try_from(wait_us) {
                    Ok(0) | Err(_) => Decision::Allow,
                    Ok(us) => Decision::Deny { retry_after: Duration::from_micros(us) },
                }
            }
            Ok(Err(e)) => {
                self.failed(e.to_string());
                self.fallback.check_now(key)
            }
            Err(_) => {
                self.failed("timed out".into());
                self.fallback.check_now(key)
            }
        }
    }
}

impl RateLimiter for RedisLimiter {
    fn check<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(self.inner.check(key))
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop.cancel();
            self.tasks.wait().await;
            // Later checks (a straggler past the deadline) use the local
            // limiter.
            self.inner.conn.write().take();
        })
    }

    fn health(&self) -> DependencyStatus {
        if self.inner.healthy.load(Ordering::Relaxed) {
            DependencyStatus::Ok
        } else {
            DependencyStatus::Down(self.inner.last_error.lock().clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_url_that_is_not_one_is_a_config_error_without_the_password() {
        for bad in ["notaurl", "http://u:hunter2@host:6379"] {
            let Err(e) = RedisLimiter::new(bad, "p:", 10) else { panic!("{bad} accepted") };
            let msg = e.to_string();
            assert!(e.is_config() && msg.contains("REDIS_URL") && !msg.contains("hunter2"), "{msg}");
            assert!(std::error::Error::source(&e).is_none(), "said once: {msg}");
        }
    }

    #[test]
    fn probe_keys_hash_into_the_asked_slots_as_redis_hashes_them() {
        // CLUSTER KEYSLOT of the Redis docs' examples.
        assert_eq!(crc16::State::<crc16::XMODEM>::calculate(b"123456789"), 0x31C3);
        for (start, end) in [(0, 5460), (5461, 10922), (10923, 16383), (7000, 7000), (16383, 16383)] {
            let key = key_in_slots("venta:rl:", start, end).expect("a key");
            let tag = key.split_once('{').and_then(|(_, t)| t.strip_suffix('}')).expect("a hash tag");
            let slot = crc16::State::<crc16::XMODEM>::calculate(tag.as_bytes()) % SLOTS;
            assert!((start..=end).contains(&slot), "{key} -> {slot}");
        }
    }

    #[test]
    fn several_urls_need_the_cluster_topology_and_a_cluster_prefix_has_no_hash_tag() {
        let seeds = "redis://127.0.0.1:7000,redis://u:hunter2@127.0.0.1:7001";
        let Err(e) = RedisLimiter::new(seeds, "p:", 10) else { panic!("several URLs taken for one server") };
        assert!(e.to_string().contains("REDIS_CLUSTER=true") && !e.to_string().contains("hunter2"), "{e}");
        for bad in ["redis://127.0.0.1:7000,", "redis://127.0.0.1:7000,notaurl"] {
            assert!(check_url(bad, Topology::Cluster).is_err(), "{bad}");
        }
        assert!(check_url(seeds, Topology::Cluster).is_ok());
        assert!(check_url("redis://127.0.0.1:7000", Topology::Cluster).is_ok());
        let start = |prefix: &str| RedisLimiter::start(seeds, Topology::Cluster, prefix, 10, Duration::from_secs(1));
        let Err(e) = start("{rl}:") else { panic!("a hash-tag prefix accepted for a cluster") };
        assert!(e.is_config() && e.to_string().contains("REDIS_KEY_PREFIX"), "{e}");
    }
}
