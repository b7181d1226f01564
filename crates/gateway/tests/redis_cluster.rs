//! Rate limits shared through a Redis Cluster of the test's own (3
//! primaries + 3 replicas on loopback, tests/common/redis_cluster.rs):
//! one budget across instances, keys spread over the shards, and a primary
//! failing over to its replica under load without an unlimited window.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::redis_cluster::RedisCluster;
use common::{TestGateway, WsClient, test_config};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use venta_gateway::bus::DependencyStatus;

const SECRET: &str = "test-secret-0123456789";
/// Fixed: each test has a cluster of its own, and fixed keys make the
/// slot of every user the same on every run.
const PREFIX: &str = "venta:rlc:";

/// The limiter's key for an authenticated user.
fn limiter_key(user: &str) -> String {
    format!("{PREFIX}user:{user}")
}

fn token(user: &str) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 300;
    let claims = json!({"sub": user, "exp": exp});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap())
        .unwrap()
}

fn cluster_config(seeds: &str, limit: u32) -> venta_gateway::Config {
    let mut c = test_config();
    c.auth.jwt_secret = Some(SECRET.into());
    c.redis.url = Some(seeds.into());
    c.redis.cluster = true;
    c.redis.key_prefix = PREFIX.into();
    c.limits.rate_limit = limit;
    // /health follows the cluster within a fifth of a second.
    c.nats.health_probe_interval_ms = 200;
    c
}

async fn connect(gw: &TestGateway, user: &str) -> WsClient {
    WsClient::connect(&format!("{}?token={}", gw.url("/ws/location"), token(user))).await
}

/// Sends one ping and returns whether it passed (a `pong`) or was refused
/// (`rate_limited`, with a sane retry time); anything else fails the test.
async fn ping(c: &mut WsClient, id: usize) -> bool {
    c.send_json(json!({"type": "ping", "id": id.to_string()})).await;
    let m = c.recv().await;
    if m["type"] == "pong" {
        return true;
    }
    assert_eq!(m["data"]["code"], "rate_limited", "{m}");
    let retry = m["data"]["retryAfterMs"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 60_000, "{m}");
    false
}

/// `/health`'s Redis check and overall status.
async fn redis_health(gw: &TestGateway) -> (String, String) {
    let (_, h) = gw.health().await;
    (h["checks"]["redis"]["status"].as_str().unwrap_or("").to_owned(), h["status"].as_str().unwrap_or("").to_owned())
}

async fn wait_redis_ok(gw: &TestGateway) {
    common::wait_until("the limiter to reach the cluster", async || gw.shared.limiter.health() == DependencyStatus::Ok)
        .await;
}

/// The most a GCRA budget of `limit`/min lets through in `elapsed`: the
/// burst, one more per interval, and one for the boundary.
fn budget(limit: u32, elapsed: Duration) -> usize {
    let refill = elapsed.as_secs_f64() * f64::from(limit) / 60.0;
    limit as usize + refill.ceil() as usize + 1
}

#[tokio::test]
async fn two_gateways_on_the_cluster_share_one_users_budget() {
    let cluster = RedisCluster::start().await;
    // Several seeds for one, a single seed for the other: both learn the
    // whole cluster.
    let a = TestGateway::start_with(cluster_config(&cluster.seeds(3), 10)).await;
    let b = TestGateway::start_with(cluster_config(&cluster.seeds(1), 10)).await;
    wait_redis_ok(&a).await;
    wait_redis_ok(&b).await;
    assert_eq!(redis_health(&a).await, ("ok".into(), "ok".into()));
    let mut ca = connect(&a, "shared").await;
    let mut cb = connect(&b, "shared").await;
    let started = Instant::now();
    let mut passed = 0;
    // 15 through one instance, then 10 through the other, against a budget
    // of 10 for the user (one more every 6 s).
    for i in 0..15 {
        passed += usize::from(ping(&mut ca, i).await);
    }
    let through_a = passed;
    for i in 0..10 {
        passed += usize::from(ping(&mut cb, i).await);
    }
    let bound = budget(10, started.elapsed());
    assert!(through_a >= 10, "the first 10 of a fresh budget passed: {through_a}");
    assert!(passed <= bound, "{passed} messages passed a shared budget of 10 (bound {bound})");
    assert!(passed - through_a < bound - 10, "the second instance saw the spent budget: {}", passed - through_a);
    // One key for the user, on the primary that owns its slot.
    let key = limiter_key("shared");
    let owner = cluster.owner(&key).await;
    let keys = cluster.keys_by_primary(&format!("{PREFIX}*")).await;
    for (port, ks) in &keys {
        let want: Vec<String> = if *port == owner { vec![key.clone()] } else { vec![] };
        assert_eq!(ks, &want, "keys on primary {port}: {keys:?}");
    }
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn keys_of_different_users_land_on_different_shards() {
    let cluster = RedisCluster::start().await;
    let gw = TestGateway::start_with(cluster_config(&cluster.seeds(2), 100)).await;
    wait_redis_ok(&gw).await;
    // Users until every primary owns two of them (by CLUSTER KEYSLOT and
    // the slot map), bounded.
    let primaries = cluster.primaries().await;
    assert_eq!(primaries.len(), 3, "{primaries:?}");
    let mut expected: std::collections::BTreeMap<u16, Vec<String>> =
        primaries.iter().map(|p| (p.port, Vec::new())).collect();
    let mut users = Vec::new();
    for i in 0..200 {
        if expected.values().all(|v| v.len() >= 2) {
            break;
        }
        let user = format!("user-{i}");
        let key = limiter_key(&user);
        let owner = cluster.owner(&key).await;
        if expected[&owner].len() < 2 {
            expected.get_mut(&owner).unwrap().push(key);
            users.push(user);
        }
    }
    assert!(expected.values().all(|v| v.len() == 2), "no spread of users over 3 primaries: {expected:?}");
    let mut slots = std::collections::BTreeSet::new();
    for user in &users {
        slots.insert(cluster.slot(&limiter_key(user)).await);
        let mut c = connect(&gw, user).await;
        assert!(ping(&mut c, 0).await, "{user}'s first message passed");
    }
    assert_eq!(slots.len(), users.len(), "one slot per user");
    for v in expected.values_mut() {
        v.sort();
    }
    // Each key was written on the shard that owns it, and only there.
    assert_eq!(cluster.keys_by_primary(&format!("{PREFIX}*")).await, expected);
    gw.shutdown().await;
}

/// What one load client saw so far: messages passed (when) and refused.
#[derive(Default)]
struct Seen {
    passes: parking_lot::Mutex<Vec<Instant>>,
    refusals: parking_lot::Mutex<Vec<Instant>>,
}

impl Seen {
    fn passed(&self) -> usize {
        self.passes.lock().len()
    }
    fn refused(&self) -> usize {
        self.refusals.lock().len()
    }
    fn replies(&self) -> usize {
        self.passed() + self.refused()
    }
    /// (passed, refused) with a reply in `from..=to`.
    fn between(&self, from: Instant, to: Instant) -> (usize, usize) {
        let count = |v: &[Instant]| v.iter().filter(|&&t| (from..=to).contains(&t)).count();
        (count(&self.passes.lock()), count(&self.refusals.lock()))
    }
}

/// Health of one gateway sampled every 50 ms: (redis, status) pairs in the
/// order seen, consecutive repeats dropped.
async fn watch_health(gw: Arc<TestGateway>, stop: CancellationToken) -> Vec<(String, String)> {
    let mut seen: Vec<(String, String)> = Vec::new();
    while !stop.is_cancelled() {
        let h = redis_health(&gw).await;
        if seen.last() != Some(&h) {
            seen.push(h);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// One user's client on `gw`, pinging every 10 ms until `stop`.
async fn load(gw: Arc<TestGateway>, user: &'static str, seen: Arc<Seen>, stop: CancellationToken) {
    let mut c = connect(&gw, user).await;
    let mut i = 0;
    while !stop.is_cancelled() {
        let list = if ping(&mut c, i).await { &seen.passes } else { &seen.refusals };
        list.lock().push(Instant::now());
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_failing_over_under_load_keeps_the_limits_and_recovers() {
    const LIMIT: u32 = 120;
    // A node timeout of 2.5 s keeps the shard without a primary for ~5 s:
    // long enough that the load would pass well over the budget if the
    // outage were an unlimited window (checked below, so this test can
    // tell).
    let mut cluster = RedisCluster::start_with_node_timeout(2500).await;
    let user = "failover";
    let key = limiter_key(user);
    let primary = cluster.owner(&key).await;
    let replica = cluster.replica_of(primary).await;
    // One gateway knows every node; the other only the primary that dies.
    let all = cluster.seeds(6);
    let a = Arc::new(TestGateway::start_with(cluster_config(&all, LIMIT)).await);
    let b = Arc::new(TestGateway::start_with(cluster_config(&format!("redis://127.0.0.1:{primary}"), LIMIT)).await);
    wait_redis_ok(&a).await;
    wait_redis_ok(&b).await;

    let stop_load = CancellationToken::new();
    let stop_watch = CancellationToken::new();
    let watch_a = tokio::spawn(watch_health(Arc::clone(&a), stop_watch.clone()));
    let watch_b = tokio::spawn(watch_health(Arc::clone(&b), stop_watch.clone()));
    let started = Instant::now();
    let (seen_a, seen_b) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let load_a = tokio::spawn(load(Arc::clone(&a), user, Arc::clone(&seen_a), stop_load.clone()));
    let load_b = tokio::spawn(load(Arc::clone(&b), user, Arc::clone(&seen_b), stop_load.clone()));

    // The shared burst is spent (two clients at up to 100/s each against 120):
    // both instances refuse, and no more than one budget passed in all.
    common::wait_until("the shared budget to be spent", async || seen_a.refused() > 0 && seen_b.refused() > 0).await;
    let shared = seen_a.passed() + seen_b.passed();
    let bound = budget(LIMIT, started.elapsed());
    assert!(shared <= bound, "{shared} passed a budget of {LIMIT} shared by two instances (bound {bound})");

    // SIGKILL the primary holding the user's key, mid-load.
    cluster.kill(primary);
    let killed = Instant::now();
    cluster
        .wait("the replica's promotion", async || {
            cluster
                .primaries_seen_by(replica)
                .await
                .is_ok_and(|ps| ps.iter().any(|p| p.port == replica && !p.slots.is_empty()))
        })
        .await;
    let promoted = killed.elapsed();
    // Both gateways follow the failover and share again.
    for gw in [&a, &b] {
        common::wait_until("redis ok again after the failover", async || {
            redis_health(gw).await == ("ok".into(), "ok".into())
        })
        .await;
    }
    let recovered_at = Instant::now();
    let recovered = recovered_at - killed;
    // Some more load after the recovery, then stop.
    let key_on_replica = async || {
        let keys: Vec<String> = cluster.cmd(replica, &["KEYS", &key]).await.unwrap_or_default();
        keys == [key.clone()]
    };
    common::wait_until("the user's key on the promoted replica", key_on_replica).await;
    let (ra, rb) = (seen_a.replies(), seen_b.replies());
    common::wait_until("load after the recovery", async || seen_a.replies() > ra + 25 && seen_b.replies() > rb + 25)
        .await;
    stop_load.cancel();
    load_a.await.unwrap();
    load_b.await.unwrap();
    let elapsed = started.elapsed();
    stop_watch.cancel();
    let (health_a, health_b) = (watch_a.await.unwrap(), watch_b.await.unwrap());
    eprintln!(
        "failover: promoted after {promoted:?}, gateways ok after {recovered:?}; a {}+{} b {}+{} (passed+refused) in {elapsed:?}; health a {health_a:?} b {health_b:?}",
        seen_a.passed(),
        seen_a.refused(),
        seen_b.passed(),
        seen_b.refused()
    );

    // No unlimited window: from the kill to the recovery each instance's
    // local limiter held the user to one budget of its own (plus the
    // refill, and what Redis's own refill passed once back), although the
    // client sent more than that.
    let window = recovered;
    let refill = (window.as_secs_f64() * f64::from(LIMIT) / 60.0).ceil() as usize;
    let window_bound = budget(LIMIT, window) + refill + 1;
    for (name, seen) in [("a", &seen_a), ("b", &seen_b)] {
        let (passed, refused) = seen.between(killed, recovered_at);
        eprintln!("{name}: {passed} passed, {refused} refused during the {window:?} outage (bound {window_bound})");
        assert!(passed + refused > window_bound, "{name}: too little load to tell: {}", passed + refused);
        assert!(passed <= window_bound, "{name}: {passed} passed during the outage, over {window_bound}");
        assert!(refused > 0, "{name}: the local limiter never refused during the outage");
        // Over the whole run: the shared budget, and one local one.
        let total = budget(LIMIT, elapsed) + LIMIT as usize;
        assert!(seen.passed() <= total, "{name}: {} passed in {elapsed:?}, over {total}", seen.passed());
    }
    // Each gateway reported the episode: degraded while the shard was
    // gone, ok again after.
    for (name, h) in [("a", &health_a), ("b", &health_b)] {
        let down = h.iter().position(|s| s == &("down".to_owned(), "degraded".to_owned()));
        assert!(down.is_some(), "{name} never showed redis down/degraded: {h:?}");
        assert_eq!(h.last(), Some(&("ok".to_owned(), "ok".to_owned())), "{name}: {h:?}");
    }

    // The budget is shared again, on the promoted replica: a fresh user
    // whose key lives there, 10 over the budget through each instance.
    let mut fresh = None;
    for i in 0..200 {
        let u = format!("after-{i}");
        if cluster.owner(&limiter_key(&u)).await == replica {
            fresh = Some(u);
            break;
        }
    }
    let fresh = fresh.expect("a user on the promoted replica");
    let (mut ca, mut cb) = (connect(&a, &fresh).await, connect(&b, &fresh).await);
    let t = Instant::now();
    let mut passed = 0;
    for i in 0..(LIMIT as usize / 2 + 10) {
        passed += usize::from(ping(&mut ca, i).await);
        passed += usize::from(ping(&mut cb, i).await);
    }
    let bound = budget(LIMIT, t.elapsed());
    assert!(passed >= LIMIT as usize, "a fresh budget of {LIMIT} passed: {passed}");
    assert!(passed <= bound, "{passed} passed a budget of {LIMIT} shared by two instances (bound {bound})");
    let keys: Vec<String> = cluster.cmd(replica, &["KEYS", &limiter_key(&fresh)]).await.unwrap();
    assert_eq!(keys.len(), 1, "the fresh user's key is on the promoted replica");
    drop((ca, cb));
    for gw in [a, b] {
        let gw = Arc::into_inner(gw).expect("watchers and load are done");
        gw.shutdown().await;
    }
}
