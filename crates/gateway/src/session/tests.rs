//! The session alone: no sockets, no services. Time is virtual (the tests
//! pass every instant, on a paused tokio clock), dependency calls are
//! answered by hand, so a test can hold a Redis check or a NATS subscribe
//! "in flight" as long as it likes and see what the session does meanwhile.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::audit::{Audit, AuditOptions};
use crate::bus::Deliver;
use crate::bus::local::LocalBus;
use crate::geo::GeoLimits;
use crate::hub::{Batch, Hub};
use crate::metrics::Metrics;
use crate::protocol::{Location, LocationUpdate};

const HEARTBEAT: Duration = Duration::from_secs(30);
const SECRET: &str = "session-test-secret-0123456789";

struct Fixture {
    ctx: Arc<SessionContext>,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn fixture(auth: Authenticator) -> Fixture {
    let dir = TempDir(std::env::temp_dir().join(format!("venta-session-{}", uuid::Uuid::new_v4().simple())));
    let metrics = Arc::new(Metrics::new().unwrap_or_else(|e| panic!("{e}")));
    let hub = Arc::new(Hub::new());
    let bus: Arc<dyn Bus> = Arc::new(LocalBus::new(Deliver::new(Arc::clone(&hub), Arc::clone(&metrics)), 1 << 20));
    let opts = AuditOptions {
        database_url: None,
        sqlite_path: dir.0.join("audit.db"),
        journal_dir: dir.0.join("journal"),
        queue: 1000,
        batch: 100,
        buffer: 1000,
        journal_queue: 1000,
        spill_after: Duration::from_millis(500),
        probe_interval: Duration::from_secs(2),
    };
    let audit = Arc::new(Audit::start(opts, "test", Arc::clone(&metrics)).await.unwrap_or_else(|e| panic!("{e}")));
    let limits = SessionLimits {
        heartbeat: HEARTBEAT,
        max_subscriptions: 3,
        rate_limit: 5,
        max_message_bytes: 4096,
        outbox: OutboxLimits { max_messages: 64, max_bytes: 1 << 20 },
        max_areas: 2,
        max_area_km: 50.0,
    };
    // Virtual time from here on: every instant below is passed explicitly.
    tokio::time::pause();
    let geo = GeoLimits { max_areas: 2, max_area_km: 50.0, snapshot_max: 10, vendor_ttl: Duration::from_secs(300) };
    let areas = Areas::new(geo, Arc::clone(&metrics));
    Fixture { ctx: Arc::new(SessionContext::new(hub, bus, metrics, audit, auth, areas, limits)), _dir: dir }
}

fn remote() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000))
}

fn open(f: &Fixture, token: Option<Verified>, t0: Instant) -> Session {
    Session::open(Arc::clone(&f.ctx), Transport::WebSocket, Channel::Location, remote(), token, t0)
}

/// Everything the session queued for the client, as JSON.
fn sent(session: &Session) -> Vec<Value> {
    let mut batch = Batch::new();
    session.outbox().take(&mut batch);
    batch.iter().map(|f| serde_json::from_slice(&f.bytes).unwrap_or(Value::Null)).collect()
}

fn text(session: &mut Session, v: &Value, now: Instant) -> Option<Close> {
    session.on_inbound(Inbound::Text(v.to_string().as_bytes()), now)
}

fn subscribe(vendor: &str, id: &str) -> Value {
    json!({"type": "subscribe_location", "data": {"vendorId": vendor, "userId": "u1"}, "id": id})
}

fn topic(vendor: &str) -> Topic {
    Topic::new(Channel::Location, VendorId::parse(vendor).unwrap_or_else(|_| unreachable!()))
}

/// Answers the budget check the session asked for with `decision`.
fn budget(session: &mut Session, decision: Decision, now: Instant) -> Option<Close> {
    assert!(matches!(session.next_call(), Some(Call::Budget(_))), "expected a budget check");
    session.on_completion(Completion::Budget(decision), now)
}

#[tokio::test]
async fn pings_on_time_and_closes_a_silent_client_with_4000() {
    let f = fixture(Authenticator::disabled()).await;
    let t0 = tokio::time::Instant::now().into_std();
    let mut s = open(&f, None, t0);
    assert_eq!(s.next_deadline(), t0 + HEARTBEAT);
    assert_eq!(s.on_timer(t0 + HEARTBEAT), None);
    assert_eq!(sent(&s), vec![json!({"type": "ping"})]);
    // Any frame is life, even a transport-level one.
    assert_eq!(s.on_inbound(Inbound::Heartbeat, t0 + HEARTBEAT + Duration::from_secs(1)), None);
    assert_eq!(s.on_timer(t0 + 2 * HEARTBEAT), None);
    let close = s.on_timer(t0 + 3 * HEARTBEAT + Duration::from_secs(1));
    assert_eq!(close.map(|c| c.code), Some(Close::HEARTBEAT_TIMEOUT));
    s.finish("test");
}

#[tokio::test]
async fn a_subscribe_goes_budget_then_watch_then_ack_then_snapshot() {
    let f = fixture(Authenticator::disabled()).await;
    let t0 = tokio::time::Instant::now().into_std();
    let mut s = open(&f, None, t0);
    assert_eq!(text(&mut s, &subscribe("v1", "a"), t0), None);
    assert_eq!(budget(&mut s, Decision::Allow, t0), None);
    assert_eq!(s.next_call(), Some(Call::Watch(topic("v1"))));
    // In the hub before the bus: an update in between is not lost.
    assert_eq!(f.ctx.hub.subscribers(&topic("v1")), 1);
    assert!(sent(&s).is_empty(), "no ack before the bus confirmed");
    assert_eq!(s.on_completion(Completion::Watch(Ok(())), t0), None);
    assert_eq!(
        sent(&s),
        vec![json!({"type": "subscribed", "data": {"channel": "location", "vendorId": "v1"}, "id": "a"})]
    );
    assert_eq!(s.next_call(), Some(Call::LastValue(topic("v1"))));
    let last = Update::Location(LocationUpdate {
        vendor_id: VendorId::parse("v1").unwrap_or_else(|_| unreachable!()),
        location: Location { lat: 1.0, long: 2.0 },
        timestamp: "2026-12-01T00:00:00Z".into(),
    });
    assert_eq!(s.on_completion(Completion::LastValue(Some(last)), t0), None);
    let snap = sent(&s);
    assert_eq!(snap.len(), 1);
    assert_eq!(
        (snap[0]["type"].as_str(), snap[0]["data"]["snapshot"].as_bool()),
        (Some("location_updated"), Some(true))
    );
    assert!(s.is_idle());
    // Unsubscribe: answered and released.
    assert_eq!(text(&mut s, &json!({"type": "unsubscribe_location", "data": {"vendorId": "v1"}, "id": "b"}), t0), None);
    assert_eq!(budget(&mut s, Decision::Allow, t0), None);
    assert_eq!(sent(&s)[0]["type"], "unsubscribed");
    assert_eq!(f.ctx.hub.subscribers(&topic("v1")), 0);
    s.finish("test");
}

#[tokio::test]
async fn a_hanging_dependency_never_stops_pings_and_requests_keep_their_order() {
    let f = fixture(Authenticator::disabled()).await;
    let t0 = tokio::time::Instant::now().into_std();
    let mut s = open(&f, None, t0);
    text(&mut s, &subscribe("v1", "sub"), t0);
    budget(&mut s, Decision::Allow, t0);
    assert_eq!(s.next_call(), Some(Call::Watch(topic("v1"))));
    // The bus subscribe hangs. Meanwhile: a ping from the client, and the
    // heartbeat is due.
    assert_eq!(text(&mut s, &json!({"type": "ping", "id": "p"}), t0 + Duration::from_secs(1)), None);
    assert_eq!(s.next_call(), None, "one call at a time");
    assert_eq!(s.on_timer(t0 + HEARTBEAT), None);
    assert_eq!(sent(&s), vec![json!({"type": "ping"})], "the heartbeat does not wait for the bus");
    // The bus answers: the ack, then (after its budget) the pong, in order.
    s.on_completion(Completion::Watch(Ok(())), t0 + HEARTBEAT);
    assert_eq!(s.next_call(), Some(Call::LastValue(topic("v1"))));
    s.on_completion(Completion::LastValue(None), t0 + HEARTBEAT);
    budget(&mut s, Decision::Allow, t0 + HEARTBEAT);
    let types: Vec<Value> = sent(&s).into_iter().map(|m| m["type"].clone()).collect();
    assert_eq!(types, vec![json!("subscribed"), json!("pong")]);
    s.finish("test");
}

#[tokio::test]
async fn a_full_queue_stops_reading_without_timing_the_client_out() {
    let f = fixture(Authenticator::disabled()).await;
    let t0 = tokio::time::Instant::now().into_std();
    let mut s = open(&f, None, t0);
    for i in 0..=MAX_QUEUED_REQUESTS {
        assert!(s.can_read());
        assert_eq!(text(&mut s, &json!({"type": "ping", "id": i.to_string()}), t0), None);
    }
    // One is waiting for its budget, MAX_QUEUED_REQUESTS behind it.
    assert!(!s.can_read());
    assert!(matches!(s.next_call(), Some(Call::Budget(_))));
    // The server is behind, not the client: no 4000 while reading is paused.
    assert_eq!(s.on_timer(t0 + 3 * HEARTBEAT), None);
    s.on_completion(Completion::Budget(Decision::Allow), t0 + 3 * HEARTBEAT);
    assert!(s.can_read());
    s.finish("test");
}

#[tokio::test]
async fn over_budget_is_rate_limited_then_closed_as_abuse() {
    let f = fixture(Authenticator::disabled()).await;
    let t0 = tokio::time::Instant::now().into_std();
    let mut s = open(&f, None, t0);
    let deny = Decision::Deny { retry_after: Duration::from_millis(1500) };
    text(&mut s, &json!({"type": "ping", "id": "x"}), t0);
    assert_eq!(budget(&mut s, deny, t0), None);
    let err = sent(&s);
    assert_eq!(err[0]["data"]["code"], "rate_limited");
    assert_eq!(err[0]["data"]["retryAfterMs"], 1500);
    assert_eq!((err[0]["data"]["requestType"].as_str(), err[0]["id"].as_str()), (Some("ping"), Some("x")));
    // rate_limit (5) x ABUSE_FACTOR (2) denials in a row are tolerated; the next closes.
    for _ in 1..10 {
        text(&mut s, &json!({"type": "ping"}), t0);
        assert_eq!(budget(&mut s, deny, t0), None);
    }
    text(&mut s, &json!({"type": "ping"}), t0);
    assert_eq!(budget(&mut s, deny, t0).map(|c| c.code), Some(Close::POLICY));
    s.finish("test");
}

#[tokio::test]
async fn a_failed_bus_subscribe_is_unavailable_and_leaves_nothing_in_the_hub() {
    let f = fixture(Authenticator::disabled()).await;
    let t0 = tokio::time::Instant::now().into_std();
    let mut s = open(&f, None, t0);
    text(&mut s, &subscribe("v1", "a"), t0);
    budget(&mut s, Decision::Allow, t0);
    assert_eq!(s.next_call(), Some(Call::Watch(topic("v1"))));
    s.on_completion(Completion::Watch(Err(BusError::Unavailable("NATS is down".into()))), t0);
    let err = sent(&s);
    assert_eq!((err[0]["data"]["code"].as_str(), err[0]["id"].as_str()), (Some("unavailable"), Some("a")));
    assert_eq!(f.ctx.hub.subscribers(&topic("v1")), 0);
    assert_eq!(s.subscriptions(), 0);
    s.finish("test");
}

#[tokio::test]
async fn dropping_a_session_mid_subscribe_releases_the_hub() {
    let f = fixture(Authenticator::disabled()).await;
    let t0 = tokio::time::Instant::now().into_std();
    let mut s = open(&f, None, t0);
    text(&mut s, &subscribe("v1", "a"), t0);
    budget(&mut s, Decision::Allow, t0);
    assert_eq!(f.ctx.hub.subscribers(&topic("v1")), 1);
    drop(s);
    assert_eq!(f.ctx.hub.subscribers(&topic("v1")), 0);
}

#[tokio::test]
async fn too_many_subscriptions_and_a_foreign_user_are_refused() {
    let auth = Authenticator::from_config(Some(SECRET), None, None, None, false).unwrap_or_else(|e| panic!("{e}"));
    let f = fixture(auth.clone()).await;
    let t0 = tokio::time::Instant::now().into_std();
    let token = crate::auth::dev_token(SECRET, "u1", 3600).unwrap_or_else(|e| panic!("{e}"));
    let verified = auth.verify(Some(&token)).ok().flatten();
    let mut s = open(&f, verified, t0);
    let foreign = json!({"type": "subscribe_vendor", "data": {"vendorId": "v9", "userId": "mallory"}, "id": "m"});
    text(&mut s, &foreign, t0);
    budget(&mut s, Decision::Allow, t0);
    assert_eq!(sent(&s)[0]["data"]["code"], "forbidden");
    for v in ["v1", "v2", "v3"] {
        text(&mut s, &subscribe(v, v), t0);
        budget(&mut s, Decision::Allow, t0);
        assert!(matches!(s.next_call(), Some(Call::Watch(_))));
        s.on_completion(Completion::Watch(Ok(())), t0);
        assert!(matches!(s.next_call(), Some(Call::LastValue(_))));
        s.on_completion(Completion::LastValue(None), t0);
    }
    sent(&s);
    text(&mut s, &subscribe("v4", "v4"), t0);
    budget(&mut s, Decision::Allow, t0);
    assert_eq!(sent(&s)[0]["data"]["code"], "too_many_subscriptions");
    assert_eq!(s.subscriptions(), 3);
    s.finish("test");
    for v in ["v1", "v2", "v3"] {
        assert_eq!(f.ctx.hub.subscribers(&topic(v)), 0);
    }
}

#[tokio::test]
async fn a_token_expires_with_4001_unless_refreshed() {
    let auth = Authenticator::from_config(Some(SECRET), None, None, None, false)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_leeway(0);
    let f = fixture(auth.clone()).await;
    let t0 = tokio::time::Instant::now().into_std();
    let short = crate::auth::dev_token(SECRET, "u1", 10).unwrap_or_else(|e| panic!("{e}"));
    let mut s = open(&f, auth.verify(Some(&short)).ok().flatten(), t0);
    assert!(s.next_deadline() <= t0 + Duration::from_secs(10));
    let long = crate::auth::dev_token(SECRET, "u1", 3600).unwrap_or_else(|e| panic!("{e}"));
    text(&mut s, &json!({"type": "refresh", "data": {"token": long}, "id": "r"}), t0);
    budget(&mut s, Decision::Allow, t0);
    assert_eq!(sent(&s)[0]["type"], "refreshed");
    assert_eq!(s.on_timer(t0 + Duration::from_secs(11)), None, "refreshed: no 4001 at the old expiry");
    let mut other = open(&f, auth.verify(Some(&short)).ok().flatten(), t0);
    let close = other.on_timer(t0 + Duration::from_secs(11));
    assert_eq!(close.map(|c| c.code), Some(Close::TOKEN_EXPIRED));
    s.finish("test");
    other.finish("test");
}
