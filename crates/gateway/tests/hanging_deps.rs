//! A dependency that hangs (accepts bytes, answers nothing) must never stop
//! a connection: while a subscribe waits on NATS the client still gets its
//! heartbeat pings and answers to other messages in order, and SIGTERM
//! still closes it with 1001 within SHUTDOWN_TIMEOUT.

mod common;

use std::time::Duration;

use common::nats::{OwnNats, Proxy, unique_prefix};
use common::{Event, TestGateway, WsClient, test_config};
use serde_json::json;

#[tokio::test]
async fn a_hanging_nats_stops_neither_pings_nor_shutdown() {
    let own = OwnNats::start().await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", own.port).parse().expect("addr")).await;
    let mut config = test_config();
    config.nats.url = Some(format!("nats://{}", proxy.addr));
    config.nats.subject_prefix = unique_prefix();
    config.limits.heartbeat_interval_ms = 1000;
    config.log.shutdown_timeout_secs = 3;
    let gw = TestGateway::start_with(config).await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.subscribe("location", "v0").await;
    c.auto_pong = false;
    proxy.stall();
    // The subscribe's NATS round trip now hangs (up to its 5 s timeout).
    c.send_json(json!({"type": "subscribe_location", "data": {"vendorId": "v1", "userId": "u1"}, "id": "hang"})).await;
    // Heartbeats keep coming meanwhile: two of them before the subscribe is answered.
    let mut pings = 0;
    while pings < 2 {
        match c.next_event().await {
            Event::Json(v) if v["type"] == "ping" => {
                pings += 1;
                c.send_json(json!({"type": "pong"})).await;
            }
            other => panic!("expected only pings while NATS hangs, got {other:?}"),
        }
    }
    // Shutdown does not wait for the hanging call either.
    let started = std::time::Instant::now();
    let stop = tokio::spawn(gw.shutdown());
    let closed = async {
        loop {
            match c.next_event().await {
                Event::Closed(code, _) => return code,
                Event::Json(_) => continue,
            }
        }
    };
    let code = tokio::time::timeout(Duration::from_secs(10), closed).await.expect("no close while NATS hangs");
    assert_eq!(code, Some(1001));
    // Bounded by the test, generously: SHUTDOWN_TIMEOUT is 3 s.
    tokio::time::timeout(Duration::from_secs(15), stop).await.expect("shutdown hung").expect("shutdown task");
    assert!(started.elapsed() < Duration::from_secs(15));
    proxy.restore();
}
