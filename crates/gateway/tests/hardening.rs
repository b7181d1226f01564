//! What an attacker and an impatient client tried against the clients'
//! port: metric labels chosen by clients, connections that never finish a
//! request or never upgrade, huge request heads, a client that stops
//! reading, a close that was never answered, origins, another user's name.

mod common;

use std::time::Duration;

use common::{Event, TestGateway, WsClient, test_config, wait_until};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn metrics(gw: &TestGateway) -> String {
    reqwest::get(gw.http("/metrics")).await.expect("metrics").text().await.expect("metrics body")
}

/// Reads until the server closes the connection; returns what it sent.
/// Fails if the server keeps it open past `within`.
async fn read_until_closed(tcp: &mut TcpStream, within: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(within, read_all).await.expect("the server kept the connection open");
    got
}

#[tokio::test]
async fn unknown_message_types_never_become_metric_labels() {
    let gw = TestGateway::start().await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    for i in 0..50 {
        c.send_json(json!({"type": format!("attacker-type-{i}"), "id": format!("{i}")})).await;
        let err = c.recv().await;
        assert_eq!(err["data"]["code"], "unknown_type", "{err}");
    }
    let text = metrics(&gw).await;
    assert!(!text.contains("attacker-type"), "a client's type reached /metrics");
    let unknown = text
        .lines()
        .find(|l| l.starts_with("venta_messages_in_total") && l.contains("type=\"unknown\""))
        .unwrap_or_else(|| panic!("no unknown-type series in:\n{text}"));
    assert!(unknown.ends_with(" 50"), "{unknown}");
    gw.shutdown().await;
}

#[tokio::test]
async fn a_slowloris_request_and_an_idle_keep_alive_connection_are_closed() {
    let mut config = test_config();
    config.http.header_timeout_ms = 500;
    let gw = TestGateway::start_with(config).await;
    // One byte of a request head every 100 ms: never complete.
    let mut slow = TcpStream::connect(gw.addr).await.expect("connect");
    let trickle = async {
        for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".iter().cycle() {
            if slow.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), trickle).await.expect("the slowloris connection was never closed");
    // A keep-alive connection that made one request, then went quiet.
    let mut idle = TcpStream::connect(gw.addr).await.expect("connect");
    idle.write_all(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let got = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    gw.shutdown().await;
}

#[tokio::test]
async fn connections_that_never_upgrade_are_bounded_and_websockets_do_not_count() {
    let mut config = test_config();
    config.http.max_connections = 4;
    config.http.header_timeout_ms = 60_000;
    let gw = TestGateway::start_with(config).await;
    // WebSockets leave the HTTP count at their upgrade: more of them than
    // the HTTP bound all work.
    let mut clients = Vec::new();
    for _ in 0..8 {
        let mut c = WsClient::connect(&gw.url("/ws/location")).await;
        c.subscribe("location", "v1").await;
        clients.push(c);
    }
    let g = &gw;
    wait_until("the HTTP gauge to settle at 0", async || g.shared.metrics.http_connections.get() == 0).await;
    // Four idle TCP connections fill the bound; the fifth is refused at once.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(TcpStream::connect(gw.addr).await.expect("connect"));
    }
    wait_until("4 HTTP connections held", async || g.shared.metrics.http_connections.get() == 4).await;
    let mut fifth = TcpStream::connect(gw.addr).await.expect("connect");
    let got = read_until_closed(&mut fifth, Duration::from_secs(5)).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 503"), "{}", String::from_utf8_lossy(&got));
    // Freeing the slots lets operators in again.
    drop(idle);
    wait_until("/health answers again", async || {
        reqwest::get(g.http("/health")).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    // The WebSockets were never disturbed.
    gw.publish_location("v1", 1.0, 2.0).await;
    for c in &mut clients {
        assert_eq!(c.recv().await["type"], "location_updated");
    }
    let text = metrics(&gw).await;
    assert!(text.contains("venta_connections_rejected_total{reason=\"http_max_connections\"} 1"), "{text}");
    gw.shutdown().await;
}

#[tokio::test]
async fn request_heads_over_the_limit_are_refused_with_431() {
    let mut config = test_config();
    config.http.max_header_bytes = 8192;
    let gw = TestGateway::start_with(config).await;
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let big = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    // The server may close before it has read all of it.
    let _ = tcp.write_all(big.as_bytes()).await;
    let got = read_until_closed(&mut tcp, Duration::from_secs(10)).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 431"), "{}", String::from_utf8_lossy(&got));
    gw.shutdown().await;
}

#[tokio::test]
async fn a_publish_body_sent_a_byte_at_a_time_times_out_with_408() {
    let mut config = test_config();
    config.http.request_timeout_ms = 500;
    let gw = TestGateway::start_with(config).await;
    let mut tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let head = "POST /api/v1/publish/location HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{";
    tcp.write_all(head.as_bytes()).await.expect("write");
    let (mut rd, mut wr) = tcp.into_split();
    let trickle = tokio::spawn(async move {
        while wr.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("no answer to a trickled body");
    trickle.abort();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&got));
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_ends_within_its_timeout_whatever_clients_do() {
    let mut config = test_config();
    config.log.shutdown_timeout_secs = 2;
    config.http.header_timeout_ms = 600_000;
    let gw = TestGateway::start_with(config).await;
    // A half-sent request, a client that never reads, and a subscriber.
    let mut half = TcpStream::connect(gw.addr).await.expect("connect");
    half.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n").await.expect("write");
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.subscribe("location", "v1").await;
    let g = &gw;
    wait_until("the half-sent request to be held", async || g.shared.metrics.http_connections.get() == 1).await;
    let started = std::time::Instant::now();
    // Bounded by the test: SHUTDOWN_TIMEOUT (2 s) plus a generous margin
    // for a loaded machine; before the fix this waited forever.
    let clean = tokio::time::timeout(Duration::from_secs(15), gw.shutdown()).await;
    assert!(clean.is_ok(), "shutdown did not finish ({:?} after the signal)", started.elapsed());
    let (code, _) = c.closed().await;
    assert_eq!(code, Some(1001));
    drop(half);
}

#[tokio::test]
async fn a_client_that_stops_reading_but_keeps_sending_is_closed() {
    let mut config = test_config();
    config.limits.max_queue_bytes = 64 * 1024;
    config.server.send_buffer_bytes = 4096;
    let gw = TestGateway::start_with(config).await;
    // A client socket with a tiny receive window, so the server's writer
    // blocks soon after the client stops reading.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let tcp = socket.connect(gw.addr).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(gw.url("/ws/vendor"), tcp).await.expect("handshake");
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::text(
        json!({"type": "subscribe_vendor", "data": {"vendorId": "v1", "userId": "u1"}, "id": "s"}).to_string(),
    ))
    .await
    .expect("send");
    let ack = tokio::time::timeout(Duration::from_secs(10), rx.next()).await.expect("ack");
    assert!(matches!(ack, Some(Ok(Message::Text(ref t))) if t.contains("subscribed")), "{ack:?}");
    // From now on the client never reads, but pings every 100 ms (WebSocket
    // pings: life, and never rate-limited).
    let pinger = tokio::spawn(async move {
        while tx.send(Message::Ping(Vec::new().into())).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let g = &gw;
    wait_until("the connection to be counted", async || g.shared.open_connections() == 1).await;
    let big = "x".repeat(30_000);
    let mut published = 0;
    wait_until("the slow consumer to be closed and its slot freed", async || {
        if published < 400 {
            g.publish_vendor("v1", json!({"name": "n", "blob": big})).await;
            published += 1;
        }
        g.shared.open_connections() == 0
    })
    .await;
    assert!(g.shared.metrics.slow_consumers_closed.get() >= 1);
    pinger.abort();
    drop(rx);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_client_close_is_answered_with_its_code() {
    let gw = TestGateway::start().await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.subscribe("location", "v1").await;
    c.ws.send(Message::Close(Some(CloseFrame { code: CloseCode::Away, reason: "tab closed".into() })))
        .await
        .expect("send close");
    match c.next_event().await {
        Event::Closed(code, _) => assert_eq!(code, Some(1001), "the server must echo the client's code"),
        other => panic!("expected the server's close frame, got {other:?}"),
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn allowed_origins_refuse_other_pages_but_not_non_browsers() {
    let mut config = test_config();
    config.limits.allowed_origins = Some(vec!["https://app.example.com".into()]);
    let gw = TestGateway::start_with(config).await;
    let request = |origin: Option<&str>| {
        let mut req =
            tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(gw.url("/ws/location"))
                .expect("request");
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().expect("header"));
        }
        req
    };
    let evil = tokio_tungstenite::connect_async(request(Some("https://evil.example.net"))).await;
    match evil {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("a foreign origin was not refused: {:?}", other.map(|_| ())),
    }
    for origin in [Some("https://app.example.com"), None] {
        let ok = tokio_tungstenite::connect_async(request(origin)).await;
        assert!(ok.is_ok(), "{origin:?} refused: {:?}", ok.err());
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn unsubscribe_in_another_users_name_is_forbidden() {
    let mut config = test_config();
    config.auth.jwt_secret = Some("0123456789abcdef0123456789".into());
    let gw = TestGateway::start_with(config).await;
    let token = venta_gateway::auth::dev_token("0123456789abcdef0123456789", "u1", 600).expect("token");
    let mut c = WsClient::connect(&format!("{}?token={token}", gw.url("/ws/location"))).await;
    c.subscribe("location", "v1").await;
    c.send_json(json!({"type": "unsubscribe_location", "data": {"vendorId": "v1", "userId": "mallory"}, "id": "u"}))
        .await;
    let err = c.recv().await;
    assert_eq!(err["type"], "error");
    assert_eq!(err["data"]["code"], "forbidden");
    assert_eq!(err["id"], "u");
    // Still subscribed; the owner may unsubscribe, with or without userId.
    gw.publish_location("v1", 1.0, 2.0).await;
    assert_eq!(c.recv().await["type"], "location_updated");
    c.send_json(json!({"type": "unsubscribe_location", "data": {"vendorId": "v1", "userId": "u1"}, "id": "u2"})).await;
    assert_eq!(c.recv().await["type"], "unsubscribed");
    gw.shutdown().await;
}
