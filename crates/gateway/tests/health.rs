//! `/health` tells the truth on an idle gateway: Redis, NATS and JetStream
//! are probed in the background, so an outage and a recovery show with no
//! client sending anything. Dependencies sit behind in-test TCP proxies.

mod common;

use std::time::{Duration, Instant};

use common::nats::{OwnNats, Proxy, unique_prefix};
use common::{TestGateway, free_port, test_config, wait_until};
use serde_json::{Value, json};

async fn check(gw: &TestGateway, name: &str) -> String {
    gw.health().await.1["checks"][name]["status"].as_str().unwrap_or("missing").to_owned()
}

#[tokio::test]
async fn redis_health_follows_redis_with_no_client_traffic() {
    let redis = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let mut config = test_config();
    config.redis.url = Some(format!("redis://{}", redis.addr));
    config.redis.key_prefix = format!("venta:test:{}:", uuid::Uuid::new_v4().simple());
    config.nats.health_probe_interval_ms = 200;
    let gw = TestGateway::start_with(config).await;
    wait_until("redis ok", async || check(&gw, "redis").await == "ok").await;
    for round in 0..2 {
        redis.cut();
        wait_until("redis down, no client traffic", async || check(&gw, "redis").await == "down").await;
        let (code, h) = gw.health().await;
        assert_eq!((code, h["status"].as_str()), (200, Some("degraded")), "round {round}: {h}");
        redis.restore();
        wait_until("redis ok again, no client traffic", async || check(&gw, "redis").await == "ok").await;
        assert_eq!(gw.health().await.1["status"], "ok");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn jetstream_health_follows_nats_with_no_client_traffic() {
    let own = OwnNats::start().await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", own.port).parse().unwrap()).await;
    let mut config = test_config();
    config.nats.url = Some(format!("nats://{}", proxy.addr));
    config.nats.subject_prefix = unique_prefix();
    config.nats.health_probe_interval_ms = 200;
    let gw = TestGateway::start_with(config).await;
    wait_until("jetstream ok", async || check(&gw, "jetstream").await == "ok").await;
    proxy.cut();
    wait_until("nats and jetstream down", async || {
        check(&gw, "nats").await == "down" && check(&gw, "jetstream").await == "down"
    })
    .await;
    proxy.restore();
    wait_until("nats and jetstream ok again", async || {
        check(&gw, "nats").await == "ok" && check(&gw, "jetstream").await == "ok"
    })
    .await;
    gw.shutdown().await;
}

/// NATS unreachable from the start: the gateway serves, is not ready, and
/// a publish is refused at once (it used to wait 5 s per request while the
/// client was still "pending" its first connection).
#[tokio::test]
async fn publishes_fail_fast_while_nats_is_known_unreachable() {
    let dead = free_port();
    let mut config = test_config();
    config.nats.url = Some(format!("nats://user:hunter2@127.0.0.1:{dead}"));
    config.nats.subject_prefix = unique_prefix();
    let gw = TestGateway::start_with(config).await;
    wait_until("health says nats down", async || check(&gw, "nats").await == "down").await;
    let (code, h) = gw.health().await;
    assert_eq!(code, 503);
    let detail = h["checks"]["nats"]["detail"].as_str().unwrap_or_default().to_owned();
    assert!(detail.contains(&format!("127.0.0.1:{dead}")) && !detail.contains("hunter2"), "{detail}");
    assert!(!gw.is_ready().await);
    let client = reqwest::Client::new();
    for _ in 0..3 {
        let started = Instant::now();
        let r = client
            .post(gw.http("/api/v1/publish/location"))
            .json(&json!({"vendorId": "v1", "location": {"lat": 0, "long": 0}}))
            .send()
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unavailable");
        assert!(took < Duration::from_secs(1), "a publish with NATS known down took {took:?}");
    }
    gw.shutdown().await;
}

/// With the in-process bus there is no outage to report: the gauge says 1.
#[tokio::test]
async fn the_in_process_bus_reports_connected() {
    let gw = TestGateway::start().await;
    let metrics = reqwest::get(gw.http("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("\nventa_bus_connected 1\n"), "{metrics}");
    gw.shutdown().await;
}
