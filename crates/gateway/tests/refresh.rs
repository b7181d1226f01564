//! A token does not outlive its `exp`: the connection is closed with 4001
//! then, unless the client sent `refresh` with a fresh token of the same
//! user. On WebSocket and WebTransport alike (one session for both).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::wt::WtClient;
use common::{TestGateway, WsClient, test_config, wait_until};
use serde_json::json;
use venta_gateway::auth::dev_token;

const SECRET: &str = "refresh-test-secret-0123456789";

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn token(sub: &str, ttl: u64) -> String {
    dev_token(SECRET, sub, ttl).expect("token")
}

async fn gateway() -> TestGateway {
    let mut config = test_config();
    config.auth.jwt_secret = Some(SECRET.into());
    // No leeway: the tests wait for real expiry.
    config.auth.jwt_leeway_secs = 0;
    // Heartbeats far away, so only the token can end the connection.
    config.limits.heartbeat_interval_ms = 600_000;
    TestGateway::start_with(config).await
}

/// Waits until the wall clock is past `unix_secs`.
async fn wait_past(unix_secs: u64) {
    wait_until("the old token's expiry to pass", async || now_secs() > unix_secs).await;
}

#[tokio::test]
async fn a_connection_is_closed_with_4001_when_its_token_expires() {
    let gw = gateway().await;
    let mut c = WsClient::connect(&format!("{}?token={}", gw.url("/ws/location"), token("u1", 2))).await;
    c.subscribe("location", "v1").await;
    let (code, reason) = c.closed().await;
    assert_eq!((code, reason.as_str()), (Some(4001), "token expired"));
    gw.shutdown().await;
}

#[tokio::test]
async fn refresh_with_a_fresh_token_keeps_the_connection_past_the_old_expiry() {
    let gw = gateway().await;
    let old_exp = now_secs() + 2;
    let mut c = WsClient::connect(&format!("{}?token={}", gw.url("/ws/location"), token("u1", 2))).await;
    c.subscribe("location", "v1").await;
    c.send_json(json!({"type": "refresh", "data": {"token": token("u1", 600)}, "id": "r1"})).await;
    let ack = c.recv().await;
    assert_eq!(ack["type"], "refreshed", "{ack}");
    assert_eq!(ack["id"], "r1");
    assert!(ack["data"]["expiresAt"].is_string(), "{ack}");
    wait_past(old_exp + 1).await;
    gw.publish_location("v1", 1.0, 2.0).await;
    let update = c.recv().await;
    assert_eq!(update["type"], "location_updated", "the connection died at the old expiry: {update}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_bad_or_foreign_refresh_is_an_error_and_the_old_expiry_holds() {
    let gw = gateway().await;
    let mut c = WsClient::connect(&format!("{}?token={}", gw.url("/ws/location"), token("u1", 3))).await;
    c.send_json(json!({"type": "refresh", "data": {"token": token("mallory", 600)}, "id": "a"})).await;
    let err = c.recv().await;
    assert_eq!((err["data"]["code"].as_str(), err["id"].as_str()), (Some("forbidden"), Some("a")), "{err}");
    c.send_json(json!({"type": "refresh", "data": {"token": "not.a.jwt"}, "id": "b"})).await;
    let err = c.recv().await;
    assert_eq!((err["data"]["code"].as_str(), err["id"].as_str()), (Some("unauthorized"), Some("b")), "{err}");
    c.send_json(json!({"type": "refresh", "data": {}, "id": "c"})).await;
    let err = c.recv().await;
    assert_eq!(err["data"]["code"], "invalid_field", "{err}");
    let (code, _) = c.closed().await;
    assert_eq!(code, Some(4001));
    gw.shutdown().await;
}

#[tokio::test]
async fn webtransport_sessions_expire_and_refresh_too() {
    let gw = gateway().await;
    let old_exp = now_secs() + 2;
    let mut refreshed = WtClient::connect(&gw, &format!("/wt/location?token={}", token("u1", 2))).await;
    let mut expiring = WtClient::connect(&gw, &format!("/wt/location?token={}", token("u2", 2))).await;
    refreshed.send_json(json!({"type": "refresh", "data": {"token": token("u1", 600)}, "id": "r"})).await;
    let ack = refreshed.recv().await;
    assert_eq!((ack["type"].as_str(), ack["id"].as_str()), (Some("refreshed"), Some("r")), "{ack}");
    let (code, reason) = expiring.closed().await;
    assert_eq!((code, reason.as_str()), (Some(4001), "token expired"));
    wait_past(old_exp + 1).await;
    refreshed.sync("still-alive").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn refresh_with_auth_off_is_answered_without_an_expiry() {
    let gw = TestGateway::start().await;
    let mut c = WsClient::connect(&gw.url("/ws/vendor")).await;
    c.send_json(json!({"type": "refresh", "data": {"token": "anything"}, "id": "r"})).await;
    let ack = tokio::time::timeout(Duration::from_secs(10), c.recv()).await.expect("answer");
    assert_eq!(ack, json!({"type": "refreshed", "data": {}, "id": "r"}));
    gw.shutdown().await;
}

/// The JS client's `getToken`: it refreshes before expiry, so the
/// connection outlives several tokens without a reconnect.
#[tokio::test]
async fn the_js_client_refreshes_its_token_in_place() {
    use std::io::{BufRead as _, BufReader};
    use std::process::{Command, Stdio};
    let node_ok = Command::new("node").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(node_ok, "node (20+) is required for the JS client test: apt-get install nodejs");
    let gw = common::GatewayProcess::spawn(common::free_port(), &[("JWT_SECRET", SECRET), ("JWT_LEEWAY", "0")]).await;
    let mut child = Command::new("node")
        .arg("--experimental-websocket")
        .arg(common::js_client().join("test/driver.mjs"))
        .args([gw.url("/ws/location").as_str(), "jsr1", "u1", "200", "3"])
        .env("VENTA_DRIVER_JWT_SECRET", SECRET)
        .env("VENTA_DRIVER_TOKEN_TTL", "3")
        .env("VENTA_DRIVER_REFRESH_LEAD_MS", "2000")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let started = now_secs();
    let mut refreshed = 0;
    let mut opens = 0;
    // Until well past the first token's expiry (3 s): every event but
    // refreshes, pings and the first open/subscribe would be a failure.
    while refreshed < 3 || now_secs() <= started + 4 {
        let v = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("driver silent")
            .expect("driver ended");
        match v["event"].as_str() {
            Some("refreshed") => refreshed += 1,
            Some("open") => opens += 1,
            Some("subscribed" | "ping") => {}
            _ => panic!("unexpected event while refreshing: {v}"),
        }
    }
    assert_eq!(opens, 1, "the client reconnected instead of refreshing");
    common::publish(
        &gw.http("/api/v1/publish/location"),
        &json!({"vendorId": "jsr1", "location": {"lat": 1.0, "long": 2.0}}),
    )
    .await;
    loop {
        let v = tokio::time::timeout(Duration::from_secs(15), rx.recv()).await.expect("driver silent").expect("ended");
        match v["event"].as_str() {
            Some("refreshed" | "ping") => {}
            Some("location") => break,
            _ => panic!("unexpected event: {v}"),
        }
    }
    drop(child.stdin.take());
    assert!(child.wait().expect("wait").success());
}
