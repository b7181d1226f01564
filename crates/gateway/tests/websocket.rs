//! The WebSocket protocol of docs/protocol.md / §1.10 against an in-process
//! gateway, with a real tungstenite client.

mod common;

use common::{Event, TestGateway, WsClient, wait_until};
use futures_util::future::join_all;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Utf8Bytes;

#[tokio::test]
async fn every_message_type_on_both_endpoints() {
    let gw = TestGateway::start().await;
    for (path, v) in [("/ws/location", "v1"), ("/ws/vendor", "v2")] {
        let mut c = WsClient::connect(&gw.url(path)).await;
        c.subscribe("location", v).await;
        c.subscribe("vendor", v).await;

        gw.publish_location(v, 12.5, -45.25).await;
        let u = c.recv().await;
        assert_eq!(u["type"], "location_updated");
        assert_eq!(u["data"]["vendorId"], v);
        assert_eq!(u["data"]["location"], json!({"lat": 12.5, "long": -45.25}));
        assert_eq!(u["data"].get("snapshot"), None, "a fresh update is not a snapshot");

        gw.publish_vendor(v, json!({"name": "Tacos", "description": "al pastor", "open": true})).await;
        let u = c.recv().await;
        assert_eq!(u["type"], "vendor_updated");
        assert_eq!(u["data"]["vendor"], json!({"name": "Tacos", "description": "al pastor", "open": true}));

        c.send_json(json!({"type": "ping", "id": "p1"})).await;
        assert_eq!(c.recv().await, json!({"type": "pong", "id": "p1"}));
        // `pong` is silent; the next reply proves it was accepted quietly.
        c.send_json(json!({"type": "pong"})).await;

        for channel in ["location", "vendor"] {
            c.send_json(json!({"type": format!("unsubscribe_{channel}"), "data": {"vendorId": v}, "id": channel}))
                .await;
            assert_eq!(
                c.recv().await,
                json!({"type": "unsubscribed", "data": {"channel": channel, "vendorId": v}, "id": channel})
            );
        }
        // Unsubscribing what is not subscribed still answers, without id too.
        c.send_json(json!({"type": "unsubscribe_location", "data": {"vendorId": "nope"}})).await;
        assert_eq!(
            c.recv().await,
            json!({"type": "unsubscribed", "data": {"channel": "location", "vendorId": "nope"}})
        );
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn vendors_are_isolated_and_unsubscribe_stops_delivery() {
    let gw = TestGateway::start().await;
    let mut a = WsClient::connect(&gw.url("/ws/location")).await;
    let mut b = WsClient::connect(&gw.url("/ws/location")).await;
    a.subscribe("location", "v1").await;
    b.subscribe("location", "v2").await;
    // Subscribing twice is idempotent: one delivery per update.
    a.subscribe("location", "v1").await;

    gw.publish_location("v1", 1.0, 1.0).await;
    gw.publish_location("v2", 2.0, 2.0).await;
    // Per-connection order is preserved, so the first thing each client sees
    // must be its own vendor's update: v2 never saw v1's.
    assert_eq!(a.recv().await["data"]["vendorId"], "v1");
    assert_eq!(b.recv().await["data"]["vendorId"], "v2");

    // A location subscription does not receive vendor data.
    gw.publish_vendor("v1", json!({"name": "x"})).await;
    gw.publish_location("v1", 3.0, 3.0).await;
    assert_eq!(a.recv().await["data"]["location"]["lat"], 3.0);

    a.send_json(json!({"type": "unsubscribe_location", "data": {"vendorId": "v1"}})).await;
    assert_eq!(a.recv().await["type"], "unsubscribed");
    a.subscribe("location", "v3").await;
    gw.publish_location("v1", 4.0, 4.0).await;
    gw.publish_location("v3", 5.0, 5.0).await;
    assert_eq!(a.recv().await["data"]["vendorId"], "v3", "no delivery after unsubscribe");
    assert_eq!(gw.shared.hub.subscription_count(), 2);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_thousand_subscribers_each_receive_exactly_once() {
    let mut config = common::test_config();
    config.limits.max_connections = 1100;
    let gw = TestGateway::start_with(config).await;
    let url = gw.url("/ws/location");
    let mut clients = Vec::new();
    for chunk in 0..10 {
        let batch = join_all((0..100).map(|_| WsClient::connect(&url))).await;
        clients.extend(batch);
        let _ = chunk;
    }
    join_all(clients.iter_mut().map(|c| c.subscribe("location", "hot"))).await;
    assert_eq!(gw.shared.hub.subscribers(&topic("hot")), 1000);
    gw.publish_location("hot", 10.0, 20.0).await;
    gw.publish_location("marker", 0.0, 0.0).await; // nobody: must not arrive
    let mut c0 = clients.pop().unwrap();
    let results = join_all(clients.iter_mut().map(|c| async move {
        let first = c.recv().await;
        // Exactly once: a ping after the update must come back as the very
        // next frame, so no duplicate is queued in between.
        c.send_json(json!({"type": "ping", "id": "after"})).await;
        let second = c.recv().await;
        (first, second)
    }))
    .await;
    for (first, second) in &results {
        assert_eq!(first["data"]["location"], json!({"lat": 10.0, "long": 20.0}));
        assert_eq!(second, &json!({"type": "pong", "id": "after"}));
    }
    assert_eq!(c0.recv().await["type"], "location_updated");
    assert_eq!(results.len(), 999);
    gw.shutdown().await;
}

fn topic(v: &str) -> venta_gateway::protocol::Topic {
    venta_gateway::protocol::Topic::new(
        venta_gateway::protocol::Channel::Location,
        venta_gateway::protocol::VendorId::parse(v).unwrap(),
    )
}

async fn expect_error(c: &mut WsClient, code: &str) -> Value {
    let e = c.recv().await;
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["data"]["code"], code, "{e}");
    e
}

#[tokio::test]
async fn bad_input_gets_its_code_and_the_connection_survives() {
    let gw = TestGateway::start().await;
    let mut c = WsClient::connect(&gw.url("/ws/vendor")).await;
    let sub = |v: Value| json!({"type": "subscribe_location", "data": {"vendorId": v, "userId": "u1"}, "id": "q"});
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "invalid_json"),
        ("[1,2]".into(), "invalid_field"),
        ("\"hello\"".into(), "invalid_field"),
        (json!({"data": {}}).to_string(), "invalid_field"),
        (json!({"type": 7}).to_string(), "invalid_field"),
        (json!({"type": "dance", "id": "d"}).to_string(), "unknown_type"),
        (json!({"type": "subscribe_location"}).to_string(), "invalid_field"),
        (json!({"type": "subscribe_location", "data": []}).to_string(), "invalid_field"),
        (json!({"type": "subscribe_location", "data": {"vendorId": "v1"}}).to_string(), "invalid_field"),
        (json!({"type": "subscribe_vendor", "data": {"userId": "u1"}}).to_string(), "invalid_field"),
        (json!({"type": "unsubscribe_vendor", "data": {}}).to_string(), "invalid_field"),
        (sub(json!("v.1")).to_string(), "invalid_field"),
        (sub(json!("v*")).to_string(), "invalid_field"),
        (sub(json!(">")).to_string(), "invalid_field"),
        (sub(json!("v 1")).to_string(), "invalid_field"),
        (sub(json!("a".repeat(65))).to_string(), "invalid_field"),
        (sub(json!("")).to_string(), "invalid_field"),
        (sub(json!(42)).to_string(), "invalid_field"),
        (
            json!({"type": "subscribe_location", "data": {"vendorId": "v1", "userId": "u.1"}}).to_string(),
            "invalid_field",
        ),
    ];
    for (frame, code) in &cases {
        c.send_raw(Message::text(frame.clone())).await;
        let e = expect_error(&mut c, code).await;
        if frame.contains("\"id\":\"q\"") {
            assert_eq!(e["id"], "q", "id echoed for {frame}");
            assert_eq!(e["data"]["requestType"], "subscribe_location");
        }
        if frame.contains("dance") {
            assert_eq!(e["id"], "d");
            assert_eq!(e["data"]["requestType"], "dance");
        }
    }
    // A binary frame is invalid_json, connection kept.
    c.send_raw(Message::binary(b"{\"type\":\"ping\"}".to_vec())).await;
    expect_error(&mut c, "invalid_json").await;
    // Unknown fields inside data are ignored; a 64-char id is fine.
    let long = "a".repeat(64);
    c.send_json(json!({"type": "subscribe_vendor", "data": {"vendorId": long, "userId": "u1", "extra": 1}})).await;
    assert_eq!(c.recv().await["type"], "subscribed");
    // A frame of exactly WS_MAX_MESSAGE_BYTES is accepted.
    let mut exact = json!({"type": "ping", "id": "big", "data": {"pad": ""}}).to_string();
    let pad = 4096 - exact.len();
    exact = json!({"type": "ping", "id": "big", "data": {"pad": "x".repeat(pad)}}).to_string();
    assert_eq!(exact.len(), 4096);
    c.send_raw(Message::text(exact)).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": "big"}));
    // Still alive after all that.
    c.send_json(json!({"type": "ping", "id": "alive"})).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": "alive"}));
    let errors = gw.shared.metrics.render();
    assert!(errors.contains("venta_errors_total{code=\"invalid_field\"} 17"), "{errors}");

    // One byte more closes with 1009.
    let over = json!({"type": "ping", "data": {"pad": "x".repeat(4097)}}).to_string();
    c.send_raw(Message::text(over)).await;
    assert_eq!(c.closed().await.0, Some(1009));
    gw.shutdown().await;
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    let gw = TestGateway::start().await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    // Bypass the client's UTF-8 check: a text frame with raw bytes.
    let frame = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
        vec![0x7b, 0xff, 0xfe, 0x7d],
        tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
            tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    c.send_raw(Message::Frame(frame)).await;
    assert_eq!(c.closed().await.0, Some(1007));
    let _ = Utf8Bytes::from_static("");
    gw.shutdown().await;
}

#[tokio::test]
async fn protocol_level_pongs_count_as_life() {
    let mut config = common::test_config();
    config.limits.heartbeat_interval_ms = 1000;
    let gw = TestGateway::start_with(config).await;
    // This client never sends a message of its own, but its WebSocket stack
    // answers Ping frames while it reads: that keeps it connected.
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.auto_pong = false;
    let mut pings = 0;
    while pings < 3 {
        match c.next_event().await {
            Event::Json(v) if v["type"] == "ping" => pings += 1,
            other => panic!("expected pings only, got {other:?}"),
        }
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn heartbeat_pings_and_closes_a_silent_client_with_4000() {
    let mut config = common::test_config();
    config.limits.heartbeat_interval_ms = 1000;
    let gw = TestGateway::start_with(config).await;
    // A client that answers pings stays connected past two intervals.
    let mut alive = WsClient::connect(&gw.url("/ws/location")).await;
    let alive_task = tokio::spawn(async move {
        // Answers pings (inside next_event) for 2.5 intervals; any other
        // event, such as a close, would end the wait early and fail below.
        let waited = tokio::time::timeout(std::time::Duration::from_millis(2500), alive.next_event()).await;
        assert!(waited.is_err(), "alive client got {waited:?}");
        alive
    });
    // A silent client: it does not read at all, so neither the app-level
    // ping nor the protocol-level one is answered.
    let mut silent = WsClient::connect(&gw.url("/ws/location")).await;
    silent.auto_pong = false;
    // Not reading meanwhile (a read would answer the protocol ping): the
    // gateway gives up on it and frees its slot; `alive` keeps its own.
    wait_until("the silent client dropped", async || gw.shared.open_connections() == 1).await;
    assert_eq!(silent.recv().await, json!({"type": "ping"}), "the app-level ping came first");
    let (code, reason) = silent.closed().await;
    assert_eq!(code, Some(4000));
    assert_eq!(reason, "heartbeat timeout");
    // Meanwhile `alive` answered its pings (auto_pong) and is still served.
    let mut alive = alive_task.await.unwrap();
    alive.send_json(json!({"type": "ping", "id": "x"})).await;
    assert_eq!(alive.recv().await, json!({"type": "pong", "id": "x"}));
    gw.shutdown().await;
}

#[tokio::test]
async fn over_max_connections_closes_with_1013() {
    let mut config = common::test_config();
    config.limits.max_connections = 2;
    let gw = TestGateway::start_with(config).await;
    let mut a = WsClient::connect(&gw.url("/ws/location")).await;
    let _b = WsClient::connect(&gw.url("/ws/location")).await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    assert_eq!(c.closed().await.0, Some(1013));
    a.send_json(json!({"type": "ping"})).await;
    assert_eq!(a.recv().await["type"], "pong");
    drop(a);
    // The slot is released when a client leaves.
    wait_until("a's slot released", async || gw.shared.open_connections() < 2).await;
    let mut d = WsClient::connect(&gw.url("/ws/location")).await;
    d.send_json(json!({"type": "ping"})).await;
    assert_eq!(d.recv().await["type"], "pong");
    d.send_json(json!({"type": "ping"})).await;
    assert_eq!(d.recv().await["type"], "pong");
    gw.shutdown().await;
}

#[tokio::test]
async fn rate_limit_answers_rate_limited_with_retry_after() {
    let mut config = common::test_config();
    config.limits.rate_limit = 5;
    let gw = TestGateway::start_with(config).await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    for i in 0..5 {
        c.send_json(json!({"type": "ping", "id": i.to_string()})).await;
        assert_eq!(c.recv().await["type"], "pong");
    }
    // `pong` is never counted.
    c.send_json(json!({"type": "pong"})).await;
    c.send_json(json!({"type": "ping", "id": "over"})).await;
    let e = expect_error(&mut c, "rate_limited").await;
    assert_eq!(e["id"], "over");
    let retry = e["data"]["retryAfterMs"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 60_000, "{retry}");
    gw.shutdown().await;
}

#[tokio::test]
async fn graceful_shutdown_closes_clients_with_1001() {
    let gw = TestGateway::start().await;
    let url = gw.url("/ws/location");
    let mut clients = join_all((0..20).map(|_| WsClient::connect(&url))).await;
    for c in &mut clients {
        c.subscribe("location", "v1").await;
    }
    let shutdown = tokio::spawn(gw.shutdown());
    for c in &mut clients {
        assert_eq!(c.closed().await, (Some(1001), "server shutting down".to_owned()));
    }
    assert!(shutdown.await.unwrap(), "shutdown finished within SHUTDOWN_TIMEOUT");
}

#[tokio::test]
async fn new_subscribers_first_get_the_last_known_value_as_snapshot() {
    let gw = TestGateway::start().await;
    gw.publish_location("lv", 1.5, 2.5).await;
    gw.publish_location("lv", 3.5, 4.5).await;
    gw.publish_vendor("lv", json!({"name": "Churros", "rating": 5})).await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.subscribe("location", "lv").await;
    let snap = c.recv().await;
    assert_eq!(snap["type"], "location_updated");
    assert_eq!(snap["data"]["snapshot"], true);
    assert_eq!(snap["data"]["location"], json!({"lat": 3.5, "long": 4.5}), "the newest one");
    c.subscribe("vendor", "lv").await;
    let snap = c.recv().await;
    assert_eq!(snap["data"]["vendor"], json!({"name": "Churros", "rating": 5}));
    assert_eq!(snap["data"]["snapshot"], true);
    // A vendor nobody published for: the ack and nothing else.
    c.subscribe("location", "fresh").await;
    gw.publish_location("fresh", 0.5, 0.5).await;
    let live = c.recv().await;
    assert_eq!((live["data"]["vendorId"].as_str(), live["data"].get("snapshot")), (Some("fresh"), None));
    gw.shutdown().await;
}
