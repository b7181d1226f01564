//! HTTP surface: publish ingest, operator endpoints, upgrade refusal.

mod common;

use common::{TestGateway, WsClient, assert_schema};
use serde_json::{Value, json};

async fn post(url: &str, body: impl Into<reqwest::Body>, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url).header("content-type", "application/json").body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn publish_validates_and_answers_with_codes() {
    let gw = TestGateway::start().await;
    let loc = gw.http("/api/v1/publish/location");
    let ven = gw.http("/api/v1/publish/vendor");
    let cases: Vec<(&str, Value, &str)> = vec![
        (&loc, json!({"vendorId": "v1", "location": {"lat": 91, "long": 0}}), "invalid_field"),
        (&loc, json!({"vendorId": "v1", "location": {"lat": 0, "long": 180.01}}), "invalid_field"),
        (&loc, json!({"vendorId": "v1", "location": {"lat": "0", "long": 0}}), "invalid_field"),
        (&loc, json!({"vendorId": "v1"}), "invalid_field"),
        (&loc, json!({"vendorId": "v.1", "location": {"lat": 0, "long": 0}}), "invalid_field"),
        (&loc, json!({"vendorId": "v1", "location": {"lat": 0, "long": 0}, "timestamp": "noon"}), "invalid_field"),
        (&loc, json!([1]), "invalid_field"),
        (&ven, json!({"vendorId": "v1", "vendor": {}}), "invalid_field"),
        (&ven, json!({"vendorId": "v1", "vendor": {"name": ""}}), "invalid_field"),
        (&ven, json!({"vendorId": "v1", "vendor": "Tacos"}), "invalid_field"),
        (&ven, json!({"vendorId": "v>", "vendor": {"name": "x"}}), "invalid_field"),
    ];
    for (url, body, code) in cases {
        let (status, resp) = post(url, body.to_string(), None).await;
        assert_eq!(status, 400, "{body} → {resp}");
        assert_schema("http/error_response.json", &resp);
        assert_eq!(resp["error"]["code"], code, "{body}");
    }
    let (status, resp) = post(&loc, "{nope", None).await;
    assert_eq!((status, resp["error"]["code"].as_str()), (400, Some("invalid_json")));

    // Over 64 KiB → 413, with the JSON error body of every other refusal
    // (docs/openapi.yaml); it was axum's text/plain "Failed to buffer the
    // request body" until the spec check of .ci/specs.sh caught it.
    let big = json!({"vendorId": "v1", "vendor": {"name": "x", "pad": "y".repeat(70_000)}}).to_string();
    let (status, resp) = post(&ven, big, None).await;
    assert_eq!(status, 413, "{resp}");
    assert_schema("http/error_response.json", &resp);
    assert_eq!(resp["error"]["code"], "message_too_large", "{resp}");

    // A valid publish with a given timestamp passes it through unchanged.
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.subscribe("location", "v1").await;
    let ts = "2026-01-02T03:04:05.123456789+02:00";
    let (status, resp) =
        post(&loc, json!({"vendorId": "v1", "location": {"lat": 1, "long": 2}, "timestamp": ts}).to_string(), None)
            .await;
    assert_eq!((status, resp), (202, json!({"published": true})));
    let u = c.recv().await;
    assert_eq!(u["data"]["timestamp"], ts);
    let metrics = reqwest::get(gw.http("/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("venta_updates_invalid_total{source=\"http\"} 12"), "{metrics}");
    assert!(metrics.contains("venta_updates_published_total{channel=\"location\",source=\"http\"} 1"), "{metrics}");
    gw.shutdown().await;
}

#[tokio::test]
async fn ingest_token_is_required_when_set() {
    let mut config = common::test_config();
    config.auth.ingest_token = Some("s3cret".into());
    let gw = TestGateway::start_with(config).await;
    let url = gw.http("/api/v1/publish/location");
    let body = json!({"vendorId": "v1", "location": {"lat": 0, "long": 0}}).to_string();
    for token in [None, Some("wrong"), Some("s3cret-not")] {
        let (status, resp) = post(&url, body.clone(), token).await;
        assert_eq!(status, 401, "{token:?}");
        assert_eq!(resp["error"]["code"], "unauthorized");
    }
    // The bearer is checked before the body: an oversized one from a client
    // without the token learns only that it is not allowed.
    let big = json!({"vendorId": "v1", "vendor": {"name": "x", "pad": "y".repeat(70_000)}}).to_string();
    let (status, resp) = post(&gw.http("/api/v1/publish/vendor"), big, None).await;
    assert_eq!((status, resp["error"]["code"].as_str()), (401, Some("unauthorized")), "{resp}");
    let (status, _) = post(&url, body, Some("s3cret")).await;
    assert_eq!(status, 202);
    gw.shutdown().await;
}

#[tokio::test]
async fn operator_endpoints() {
    let gw = TestGateway::start().await;
    let mut c = WsClient::connect(&gw.url("/ws/vendor")).await;
    c.subscribe("vendor", "v1").await;
    c.subscribe("location", "v1").await;
    gw.publish_vendor("v1", json!({"name": "n"})).await;
    c.recv().await;

    let health = reqwest::get(gw.http("/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_schema("http/health.json", &health);
    assert_eq!(health["status"], "ok");
    assert_eq!(health["checks"]["nats"]["status"], "disabled");

    for path in ["/health/live", "/health/ready"] {
        assert_eq!(reqwest::get(gw.http(path)).await.unwrap().status(), 200, "{path}");
    }

    let status: Value = reqwest::get(gw.http("/ws/status")).await.unwrap().json().await.unwrap();
    assert_schema("http/ws_status.json", &status);
    assert_eq!(status["connections"]["total"], 1);
    assert_eq!(status["connections"]["byEndpoint"]["vendor"], 1);
    assert_eq!(status["connections"]["byTransport"]["websocket"], 1);
    assert_eq!(status["subscriptions"], 2);
    assert_eq!(status["topics"], 2);
    assert_eq!(status["messages"]["in"], 2);
    assert_eq!(status["messages"]["out"], 3);

    let metrics = reqwest::get(gw.http("/metrics")).await.unwrap().text().await.unwrap();
    for needle in [
        "venta_connections{endpoint=\"vendor\",transport=\"websocket\"} 1",
        "venta_messages_in_total{transport=\"websocket\",type=\"subscribe_vendor\"} 1",
        "venta_messages_out_total{transport=\"websocket\",type=\"vendor_updated\"} 1",
        "venta_publish_to_write_seconds_count 1",
        "venta_errors_total{code=\"internal\"} 0",
        "venta_subscriptions 2",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }

    // A plain GET on a WebSocket path is told to upgrade.
    let r = reqwest::get(gw.http("/ws/location")).await.unwrap();
    assert_eq!(r.status(), 426);

    // Readiness turns 503 from the first moment of shutdown.
    let shared = gw.shared.clone();
    let url = gw.http("/health/ready");
    drop(c);
    shared.shutdown.cancel();
    assert!(!shared.is_ready());
    let _ = url;
    gw.shutdown().await;
}

/// The in-process last values are bounded by bytes: past the bound the
/// least recently updated vendors go, one at a time (reaching the bound used
/// to wipe every snapshot, and the bound was 100,000 entries of any size).
#[tokio::test]
async fn in_process_last_values_are_bounded_by_bytes_and_evict_the_oldest() {
    let mut config = common::test_config();
    config.nats.last_value_max_bytes = 256 * 1024;
    let gw = TestGateway::start_with(config).await;
    let pad = "p".repeat(2000);
    for i in 0..500 {
        gw.publish_vendor(&format!("b{i}"), json!({"name": "n", "pad": pad})).await;
    }
    let stats = gw.shared.bus.stats();
    assert!(stats.last_value_bytes <= 256 * 1024, "{stats:?}");
    assert!(stats.last_values > 50 && stats.last_values < 500, "{stats:?}");
    let mut c = WsClient::connect(&gw.url("/ws/vendor")).await;
    c.subscribe("vendor", "b499").await;
    let snap = c.recv().await;
    assert_eq!((snap["data"]["vendorId"].as_str(), &snap["data"]["snapshot"]), (Some("b499"), &json!(true)));
    // The oldest went: its subscribe is answered, and no snapshot follows.
    c.subscribe("vendor", "b0").await;
    c.send_json(json!({"type": "ping", "id": "after"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": "after"}));
    let metrics = reqwest::get(gw.http("/metrics")).await.unwrap().text().await.unwrap();
    let evicted = format!("venta_last_value_evictions_total {}", 500 - stats.last_values);
    assert!(metrics.contains(&evicted), "{evicted} in\n{metrics}");
    gw.shutdown().await;
}
