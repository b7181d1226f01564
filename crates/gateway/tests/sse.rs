//! Server-Sent Events (docs/protocol.md, "Server-Sent Events"): a real
//! gateway, a real HTTP client reading the stream (reqwest over HTTP/1.1, a
//! raw h2 client for HTTP/2), every rule of the transport.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{TIMEOUT, TestGateway, assert_schema, test_config, wait_until};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "test-secret-0123456789";
const ADMIN: &str = "sse-admin-token";

/// One thing a stream said.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Event { event: String, id: Option<String>, data: Value },
    Comment(String),
}

/// The SSE wire format, parsed as a browser would (fields per line, events
/// at a blank line).
#[derive(Default)]
struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next(&mut self) -> Option<Item> {
        let end = self.buf.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = self.buf.drain(..end + 2).collect();
        let text = String::from_utf8(block).expect("SSE is UTF-8");
        let (mut event, mut id, mut data, mut comment) = (None, None, Vec::new(), None);
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(c) = line.strip_prefix(':') {
                comment = Some(c.trim().to_owned());
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v.to_owned());
            } else {
                panic!("unexpected SSE line {line:?}");
            }
        }
        match (event, comment) {
            (Some(event), _) => {
                let data: Value = serde_json::from_str(&data.join("\n")).expect("data is JSON");
                if event == "close" {
                    assert_schema("sse/close.json", &data);
                } else {
                    // The exact object a WebSocket client gets, type included.
                    assert_schema("server/any.json", &data);
                    assert_eq!(data["type"], event.as_str(), "event: names the message type");
                }
                Some(Item::Event { event, id, data })
            }
            (None, Some(c)) => Some(Item::Comment(c)),
            (None, None) => panic!("empty SSE block {text:?}"),
        }
    }
}

struct Sse {
    resp: reqwest::Response,
    parser: Parser,
    /// The last `id:` seen, as EventSource keeps it.
    last_id: Option<String>,
}

impl Sse {
    async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Self, (u16, Value)> {
        let mut req = reqwest::Client::new().get(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = tokio::time::timeout(TIMEOUT, req.send()).await.expect("SSE request timed out").expect("request");
        let status = resp.status().as_u16();
        if status != 200 {
            let body: Value = resp.json().await.expect("refusal body is JSON");
            assert_schema("http/error_response.json", &body);
            return Err((status, body));
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        assert_eq!(resp.headers()["cache-control"], "no-store");
        Ok(Self { resp, parser: Parser::default(), last_id: None })
    }

    async fn must_open(url: &str) -> Self {
        match Self::open(url, &[]).await {
            Ok(s) => s,
            Err(e) => panic!("{url}: refused {e:?}"),
        }
    }

    /// The next event or comment; `None` when the stream ended.
    async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.parser.next() {
                if let Item::Event { id: Some(id), .. } = &item {
                    self.last_id = Some(id.clone());
                }
                return Some(item);
            }
            let chunk = tokio::time::timeout(TIMEOUT, self.resp.chunk()).await.expect("nothing on the stream");
            match chunk {
                Ok(Some(bytes)) => self.parser.push(&bytes),
                Ok(None) | Err(_) => {
                    assert!(self.parser.buf.is_empty(), "stream ended inside an event");
                    return None;
                }
            }
        }
    }

    /// The next event, skipping comments.
    async fn event(&mut self) -> (String, Value) {
        loop {
            match self.next_item().await {
                Some(Item::Event { event, data, .. }) => return (event, data),
                Some(Item::Comment(_)) => continue,
                None => panic!("stream ended while an event was expected"),
            }
        }
    }

    /// The next event that is not a `subscribed` ack.
    async fn update(&mut self) -> Value {
        loop {
            let (event, data) = self.event().await;
            if event != "subscribed" {
                return data;
            }
        }
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn token(sub: &str) -> String {
    let claims = json!({"sub": sub, "exp": now() + 300});
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap())
        .unwrap()
}

async fn status(gw: &TestGateway) -> Value {
    let v: Value = reqwest::get(gw.http("/ws/status")).await.unwrap().json().await.unwrap();
    assert_schema("http/ws_status.json", &v);
    v
}

async fn metric(gw: &TestGateway, name: &str) -> f64 {
    let text = reqwest::get(gw.http("/metrics")).await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(name).and_then(|r| r.trim().parse().ok())).unwrap_or(0.0)
}

/// The status and JSON body a refused WebSocket upgrade gets on `path`.
async fn ws_refusal(gw: &TestGateway, path: &str) -> (u16, Value) {
    match tokio_tungstenite::connect_async(gw.url(path)).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (resp.status().as_u16(), serde_json::from_slice(&body).expect("JSON refusal"))
        }
        Ok(_) => panic!("{path}: upgrade accepted"),
        Err(e) => panic!("{path}: {e}"),
    }
}

#[tokio::test]
async fn location_stream_sends_snapshots_then_live_updates_with_ids() {
    let gw = TestGateway::start().await;
    gw.publish_location("v1", 40.0, -3.0).await;
    let mut s = Sse::must_open(&gw.http("/sse/location?vendorId=v1,v2&userId=u1")).await;
    assert_eq!(s.next_item().await, Some(Item::Comment("venta-gateway".into())));
    let mut acks = Vec::new();
    let snapshot = loop {
        match s.next_item().await {
            Some(Item::Event { event, data, id }) if event == "subscribed" => {
                assert_eq!(id, None, "acks carry no resume id");
                acks.push(data["data"]["vendorId"].as_str().unwrap().to_owned());
            }
            Some(Item::Event { event, data, id }) => {
                assert_eq!(event, "location_updated");
                assert!(id.is_some(), "updates carry a resume id");
                break data;
            }
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(snapshot["data"]["vendorId"], "v1");
    assert_eq!(snapshot["data"]["snapshot"], true);
    assert_eq!(snapshot["data"]["location"], json!({"lat": 40.0, "long": -3.0}));
    // Both subscriptions are live once acked; v2 has no last value.
    wait_until("both acks", async || {
        if acks.len() < 2 {
            let (event, data) = s.event().await;
            assert_eq!(event, "subscribed");
            acks.push(data["data"]["vendorId"].as_str().unwrap().to_owned());
        }
        acks.len() == 2
    })
    .await;
    acks.sort();
    assert_eq!(acks, ["v1", "v2"]);
    gw.publish_location("v2", 41.0, -4.0).await;
    let live = s.update().await;
    assert_eq!((live["type"].as_str(), live["data"]["vendorId"].as_str()), (Some("location_updated"), Some("v2")));
    assert!(live["data"].get("snapshot").is_none());
    let st = status(&gw).await;
    assert_eq!(st["connections"]["byTransport"]["sse"], 1);
    assert_eq!(st["connections"]["byEndpoint"]["location"], 1);
    assert_eq!(st["subscriptions"], 2);
    drop(s);
    wait_until("the stream's session ends", async || gw.shared.hub.subscription_count() == 0).await;
    assert_eq!(status(&gw).await["connections"]["total"], 0);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn vendor_stream_delivers_vendor_updates() {
    let gw = TestGateway::start().await;
    let mut s = Sse::must_open(&gw.http("/sse/vendor?vendorId=v9&userId=u1")).await;
    let (event, ack) = s.event().await;
    assert_eq!(event, "subscribed");
    assert_eq!(ack["data"], json!({"channel": "vendor", "vendorId": "v9"}));
    gw.publish_vendor("v9", json!({"name": "Churros", "extra": [1, 2]})).await;
    let up = s.update().await;
    assert_eq!(up["type"], "vendor_updated");
    assert_eq!(up["data"]["vendor"], json!({"name": "Churros", "extra": [1, 2]}));
    assert_eq!(status(&gw).await["connections"]["byEndpoint"]["vendor"], 1);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn refusals_have_the_websocket_status_and_body() {
    let mut config = test_config();
    config.auth.jwt_secret = Some(SECRET.into());
    config.limits.max_connections = 1;
    config.limits.max_subscriptions = 3;
    let gw = TestGateway::start_with(config).await;
    // 401: no token, a bad token; the same body as a refused upgrade.
    let (ws_status, ws_body) = ws_refusal(&gw, "/ws/location").await;
    let sse = Sse::open(&gw.http("/sse/location?vendorId=v1"), &[]).await.err().expect("refused");
    assert_eq!(sse, (ws_status, ws_body));
    assert_eq!(sse.0, 401);
    assert_eq!(sse.1["error"]["code"], "unauthorized");
    let bad = Sse::open(&gw.http("/sse/location?vendorId=v1&token=not.a.jwt"), &[]).await.err().expect("refused");
    assert_eq!(bad.0, 401);
    let t = token("u1");
    // 400: bad ids, none, too many; 403: another user's userId.
    for (query, code) in [
        ("vendorId=a.b", "invalid_field"),
        ("vendorId=", "invalid_field"),
        ("vendorId=a,b,c,d", "too_many_subscriptions"),
        ("vendorId=a,*", "invalid_field"),
    ] {
        let url = gw.http(&format!("/sse/location?{query}&token={t}"));
        let (st, body) = Sse::open(&url, &[]).await.err().expect("refused");
        assert_eq!((st, body["error"]["code"].as_str()), (400, Some(code)), "{query}: {body}");
    }
    let url = gw.http(&format!("/sse/vendor?vendorId=a&userId=someone-else&token={t}"));
    let (st, body) = Sse::open(&url, &[]).await.err().expect("refused");
    assert_eq!((st, body["error"]["code"].as_str()), (403, Some("forbidden")));
    // The token as a bearer header; then 503 over WS_MAX_CONNECTIONS (1).
    let bearer = format!("Bearer {t}");
    let url = gw.http("/sse/location?vendorId=a,a,b");
    let mut held = Sse::open(&url, &[("authorization", &bearer)]).await.expect("bearer token accepted");
    assert_eq!(held.event().await.0, "subscribed");
    let (st, body) = Sse::open(&url, &[("authorization", &bearer)]).await.err().expect("refused");
    assert_eq!((st, body["error"]["code"].as_str()), (503, Some("unavailable")), "{body}");
    drop(held);
    assert!(gw.shutdown().await);

    // 429: over the per-IP connect rate, like an upgrade.
    let mut config = test_config();
    config.limits.connect_rate_limit = 2;
    let gw = TestGateway::start_with(config).await;
    let url = gw.http("/sse/location?vendorId=v1&userId=u1");
    let _a = Sse::must_open(&url).await;
    let _b = Sse::must_open(&url).await;
    let (st, body) = Sse::open(&url, &[]).await.err().expect("refused");
    assert_eq!((st, body["error"]["code"].as_str()), (429, Some("rate_limited")));
    assert_eq!(ws_refusal(&gw, "/ws/location").await, (st, body));
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn heartbeat_comments_keep_a_silent_stream_open() {
    let mut config = test_config();
    config.limits.heartbeat_interval_ms = 1000;
    let gw = TestGateway::start_with(config).await;
    let mut s = Sse::must_open(&gw.http("/sse/location?vendorId=v1&userId=u1")).await;
    let started = tokio::time::Instant::now();
    let mut pings = 0;
    // Three pings: over two intervals of client silence, which would close
    // a WebSocket with 4000; an SSE client cannot talk, so it is not closed.
    while pings < 3 {
        match s.next_item().await {
            Some(Item::Comment(c)) if c == "ping" => pings += 1,
            Some(Item::Comment(_)) => {}
            Some(Item::Event { event, .. }) => assert_eq!(event, "subscribed"),
            None => panic!("stream ended"),
        }
    }
    assert!(started.elapsed() >= Duration::from_millis(2500), "pings every WS_HEARTBEAT_INTERVAL");
    assert_eq!(status(&gw).await["connections"]["byTransport"]["sse"], 1);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn audit_rows_and_metrics_say_sse() {
    let mut config = test_config();
    config.auth.admin_token = Some(ADMIN.into());
    let gw = TestGateway::start_with(config).await;
    let mut s = Sse::must_open(&gw.http("/sse/vendor?vendorId=va&userId=auditor")).await;
    assert_eq!(s.event().await.0, "subscribed");
    drop(s);
    let client = reqwest::Client::new();
    let mut rows = Vec::new();
    wait_until("4 audit rows", async || {
        let v: Value =
            client.get(gw.http("/api/v1/audit")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
        rows = v["rows"].as_array().cloned().unwrap_or_default();
        rows.len() == 4
    })
    .await;
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["connect", "subscribe", "unsubscribe", "disconnect"]);
    assert!(rows.iter().all(|r| r["transport"] == "sse"), "{rows:?}");
    // The audit API's documented body (docs/openapi.yaml) knows `sse` too:
    // schemathesis found it did not.
    let body: Value =
        client.get(gw.http("/api/v1/audit")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    assert_schema("http/audit_response.json", &body);
    assert_eq!(rows[1]["vendorId"], "va");
    assert_eq!(rows[3]["reason"], "client closed");
    assert_eq!(metric(&gw, "venta_connections_total{endpoint=\"vendor\",transport=\"sse\"}").await, 1.0);
    assert_eq!(metric(&gw, "venta_messages_in_total{transport=\"sse\",type=\"subscribe_vendor\"}").await, 1.0);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn shutdown_sends_a_close_event_then_ends_the_stream() {
    let gw = TestGateway::start().await;
    let mut s = Sse::must_open(&gw.http("/sse/location?vendorId=v1&userId=u1")).await;
    assert_eq!(s.event().await.0, "subscribed");
    let shutdown = tokio::spawn(gw.shutdown());
    let (event, data) = s.event().await;
    assert_eq!(event, "close");
    assert_eq!(data, json!({"type": "close", "code": 1001, "reason": "server shutting down"}));
    assert_eq!(s.next_item().await, None, "the stream ends after the close event");
    assert!(shutdown.await.unwrap(), "shutdown finished within SHUTDOWN_TIMEOUT");
}

#[tokio::test]
async fn last_event_id_resumes_changed_vendors_only() {
    let gw = TestGateway::start().await;
    for v in ["r1", "r2", "r3"] {
        gw.publish_location(v, 10.0, 10.0).await;
    }
    let url = gw.http("/sse/location?vendorId=r1,r2,r3&userId=u1");
    let mut s = Sse::must_open(&url).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(s.update().await["data"]["vendorId"].as_str().unwrap().to_owned());
    }
    got.sort();
    assert_eq!(got, ["r1", "r2", "r3"]);
    gw.publish_location("r1", 11.0, 11.0).await;
    assert_eq!(s.update().await["data"]["location"]["lat"], 11.0);
    let last = s.last_id.clone().expect("an id");
    drop(s);
    // While away: r2 moves. On return only r2 comes, at its new place.
    gw.publish_location("r2", 12.0, 12.0).await;
    let mut s = Sse::open(&url, &[("last-event-id", &last)]).await.expect("resume");
    let up = s.update().await;
    assert_eq!((up["data"]["vendorId"].as_str(), up["data"]["location"]["lat"].as_f64()), (Some("r2"), Some(12.0)));
    // Nothing else is owed: the next event is a live one published now.
    gw.publish_location("r3", 13.0, 13.0).await;
    let up = s.update().await;
    assert_eq!((up["data"]["vendorId"].as_str(), up["data"]["location"]["lat"].as_f64()), (Some("r3"), Some(13.0)));
    let last = s.last_id.clone().expect("an id");
    drop(s);
    // The same id again, nothing changed: no snapshot at all.
    let mut s = Sse::open(&url, &[("last-event-id", &last)]).await.expect("resume");
    gw.publish_location("r1", 14.0, 14.0).await;
    let up = s.update().await;
    assert_eq!((up["data"]["vendorId"].as_str(), up["data"]["location"]["lat"].as_f64()), (Some("r1"), Some(14.0)));
    drop(s);
    // Garbage (and an id of another list) counts as no id: every snapshot.
    for bad in ["garbage!", "AQAAAA", last.as_str()] {
        let other = if bad == last { gw.http("/sse/location?vendorId=r3,r2,r1&userId=u1") } else { url.clone() };
        let mut s = Sse::open(&other, &[("last-event-id", bad)]).await.expect("open");
        let mut got = Vec::new();
        while got.len() < 3 {
            got.push(s.update().await["data"]["vendorId"].as_str().unwrap().to_owned());
        }
        got.sort();
        assert_eq!(got, ["r1", "r2", "r3"], "{bad}");
    }
    // `?lastEventId=` works where a client cannot set the header.
    let mut s = Sse::must_open(&format!("{url}&lastEventId={last}")).await;
    gw.publish_location("r2", 15.0, 15.0).await;
    let up = s.update().await;
    assert_eq!((up["data"]["vendorId"].as_str(), up["data"]["location"]["lat"].as_f64()), (Some("r1"), Some(14.0)));
    let up = s.update().await;
    assert_eq!((up["data"]["vendorId"].as_str(), up["data"]["location"]["lat"].as_f64()), (Some("r2"), Some(15.0)));
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn many_streams_share_one_http2_connection() {
    let gw = TestGateway::start().await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2c prior knowledge");
    tokio::spawn(conn);
    let mut bodies = Vec::new();
    for i in 0..5 {
        let req = axum::http::Request::get(format!("http://{}/sse/location?vendorId=h{i}&userId=u1", gw.addr))
            .body(())
            .unwrap();
        let mut c = client.clone().ready().await.unwrap();
        let (resp, _) = c.send_request(req, true).unwrap();
        let resp = tokio::time::timeout(TIMEOUT, resp).await.unwrap().unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.version(), axum::http::Version::HTTP_2);
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        bodies.push((i, resp.into_body(), Parser::default()));
    }
    wait_until("5 SSE sessions", async || status(&gw).await["connections"]["byTransport"]["sse"] == 5).await;
    // The h2 connection and the request asking: one TCP connection for 5 streams.
    wait_until("one HTTP connection besides this request", async || metric(&gw, "venta_http_connections").await == 2.0)
        .await;
    wait_until("5 subscriptions", async || gw.shared.hub.subscription_count() == 5).await;
    for i in 0..5 {
        gw.publish_location(&format!("h{i}"), 1.0, f64::from(i)).await;
    }
    for (i, body, parser) in &mut bodies {
        let up = loop {
            match parser.next() {
                Some(Item::Event { event, data, .. }) if event == "location_updated" => break data,
                Some(_) => continue,
                None => {
                    let chunk = tokio::time::timeout(TIMEOUT, body.data()).await.unwrap().unwrap().unwrap();
                    let _ = body.flow_control().release_capacity(chunk.len());
                    parser.push(&chunk);
                }
            }
        };
        assert_eq!(up["data"]["vendorId"], format!("h{i}"));
    }
    drop(bodies);
    wait_until("streams reset, sessions gone", async || gw.shared.hub.subscription_count() == 0).await;
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn area_stream_sends_a_snapshot_then_enter_and_leave() {
    let gw = TestGateway::start().await;
    gw.publish_location("in1", 40.42, -3.70).await;
    let url = gw.http("/sse/area?areaId=centro&bbox=40.40,-3.72,40.43,-3.68&userId=u1");
    let mut s = Sse::must_open(&url).await;
    let (event, ack) = s.event().await;
    assert_eq!((event.as_str(), &ack["data"]), ("subscribed", &json!({"channel": "area", "areaId": "centro"})));
    let snap = s.update().await;
    assert_eq!(snap["type"], "area_snapshot");
    let inside: Vec<&str> =
        snap["data"]["vendors"].as_array().unwrap().iter().map(|v| v["vendorId"].as_str().unwrap()).collect();
    assert_eq!(inside, ["in1"]);
    gw.publish_location("in2", 40.41, -3.69).await;
    let entered = s.update().await;
    assert_eq!((entered["type"].as_str(), entered["data"]["vendorId"].as_str()), (Some("vendor_entered"), Some("in2")));
    gw.publish_location("in2", 41.5, -3.69).await;
    let left = s.update().await;
    assert_eq!((left["type"].as_str(), left["data"]["reason"].as_str()), (Some("vendor_left"), Some("moved")));
    drop(s);
    // A circle works too; a bad or oversized shape is a 400 before the stream.
    let _c = Sse::must_open(&gw.http("/sse/area?areaId=c&lat=40.42&long=-3.70&radiusM=500&userId=u1")).await;
    for (query, code) in [
        ("areaId=a&bbox=1,2,3&userId=u1", "invalid_field"),
        ("areaId=a&bbox=95,0,96,1&userId=u1", "invalid_field"),
        ("areaId=a&bbox=0,0,10,10&userId=u1", "area_too_large"),
        ("bbox=0,0,0.1,0.1&userId=u1", "invalid_field"),
        ("areaId=a&userId=u1", "invalid_field"),
    ] {
        let (st, body) = Sse::open(&gw.http(&format!("/sse/area?{query}")), &[]).await.err().expect("refused");
        assert_eq!((st, body["error"]["code"].as_str()), (400, Some(code)), "{query}: {body}");
    }
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_closed_as_a_slow_consumer() {
    let mut config = test_config();
    config.limits.heartbeat_interval_ms = 1000;
    config.limits.max_queue_bytes = 16 * 1024;
    config.server.send_buffer_bytes = 4096;
    config.http.header_timeout_ms = 300;
    let gw = TestGateway::start_with(config).await;
    // A raw socket that sends the request and then never reads.
    let mut tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let _ = socket2::SockRef::from(&tcp).set_recv_buffer_size(4096);
    let req = format!("GET /sse/vendor?vendorId=slow&userId=u1 HTTP/1.1\r\nhost: {}\r\n\r\n", gw.addr);
    tokio::io::AsyncWriteExt::write_all(&mut tcp, req.as_bytes()).await.unwrap();
    wait_until("the subscription", async || gw.shared.hub.subscription_count() == 1).await;
    let big = "x".repeat(2000);
    let client = reqwest::Client::new();
    // Vendor updates never conflate: the queue's bytes bound is what holds.
    let mut sent = 0;
    while metric(&gw, "venta_slow_consumers_closed_total").await < 1.0 {
        assert!(sent < 5000, "no slow-consumer close after {sent} updates");
        let body = json!({"vendorId": "slow", "vendor": {"name": "n", "blob": big}});
        let r = client.post(gw.http("/api/v1/publish/vendor")).json(&body).send().await.unwrap();
        assert_eq!(r.status(), 202);
        sent += 1;
    }
    wait_until("the session is gone", async || status(&gw).await["connections"]["byTransport"]["sse"] == 0).await;
    assert_eq!(gw.shared.hub.subscription_count(), 0);
    // hyper's write to the stalled socket never completes; once the body is
    // done the connection is idle and dropped, so no HTTP slot stays stuck.
    wait_until("the stalled connection is dropped", async || metric(&gw, "venta_http_connections").await == 1.0).await;
    drop(tcp);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn a_stream_ends_with_4001_when_its_token_expires() {
    let mut config = test_config();
    config.auth.jwt_secret = Some(SECRET.into());
    config.auth.jwt_leeway_secs = 0;
    let gw = TestGateway::start_with(config).await;
    let claims = json!({"sub": "u1", "exp": now() + 2});
    let short = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let mut s = Sse::must_open(&gw.http(&format!("/sse/location?vendorId=v1&token={short}"))).await;
    let (event, ack) = s.event().await;
    assert_eq!((event.as_str(), &ack["data"]["vendorId"]), ("subscribed", &json!("v1")));
    // No `refresh` on a one-way stream: the token's end is the stream's.
    let (event, data) = s.event().await;
    assert_eq!(event, "close");
    assert_eq!(data["code"], 4001);
    assert_eq!(s.next_item().await, None);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn http2_streams_are_bounded_and_http2_can_be_off() {
    let mut config = test_config();
    config.http.http2_max_streams = 2;
    config.http.header_timeout_ms = 300;
    config.limits.heartbeat_interval_ms = 1000;
    let gw = TestGateway::start_with(config).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    // Settings arrive with the first exchange.
    let req = axum::http::Request::get(format!("http://{}/health/live", gw.addr)).body(()).unwrap();
    let (resp, _) = client.clone().ready().await.unwrap().send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), 200);
    assert_eq!(client.current_max_send_streams(), 2, "the server announces HTTP2_MAX_STREAMS");
    // An open stream is activity: the connection outlives HTTP_HEADER_TIMEOUT_MS
    // (300 ms) and carries the 1 s heartbeat.
    let req = axum::http::Request::get(format!("http://{}/sse/vendor?vendorId=x&userId=u1", gw.addr)).body(()).unwrap();
    let (resp, _) = client.clone().ready().await.unwrap().send_request(req, true).unwrap();
    let mut body = tokio::time::timeout(TIMEOUT, resp).await.unwrap().unwrap().into_body();
    let mut parser = Parser::default();
    loop {
        match parser.next() {
            Some(Item::Comment(c)) if c == "ping" => break,
            Some(_) => continue,
            None => {
                let chunk = tokio::time::timeout(TIMEOUT, body.data()).await.unwrap().expect("stream open").unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                parser.push(&chunk);
            }
        }
    }
    // Without a stream, HTTP/2 has no header timeout of hyper's: the
    // gateway closes a connection idle that long itself.
    // The client keeps its handle (it would close the connection itself
    // once every handle is gone) and answers the server's pings.
    drop(body);
    tokio::time::timeout(TIMEOUT, conn).await.expect("an idle h2 connection is closed").unwrap().ok();
    drop(client);
    wait_until("the HTTP connection is gone", async || metric(&gw, "venta_http_connections").await == 1.0).await;
    assert!(gw.shutdown().await);

    let mut config = test_config();
    config.http.http2_max_streams = 0;
    let gw = TestGateway::start_with(config).await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = axum::http::Request::get(format!("http://{}/health/live", gw.addr)).body(()).unwrap();
    let answer = match client.ready().await {
        Ok(mut c) => match c.send_request(req, true) {
            Ok((resp, _)) => tokio::time::timeout(TIMEOUT, resp).await.expect("an answer or an error").is_ok(),
            Err(_) => false,
        },
        Err(_) => false,
    };
    assert!(!answer, "HTTP2_MAX_STREAMS=0: no HTTP/2");
    let _ = tokio::time::timeout(TIMEOUT, conn).await;
    // HTTP/1.1 still works.
    assert_eq!(reqwest::get(gw.http("/health/live")).await.unwrap().status(), 200);
    assert!(gw.shutdown().await);
}

// ---------------------------------------------------------------------------
// A real browser: Chromium's EventSource.

/// What the page tells the test.
#[derive(Debug)]
enum PageEvent {
    Subscribed,
    Updated,
    Report(Value),
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned()
}

/// Serves the page and the /subscribed, /updated, /report, /wait endpoints
/// (/wait, a stylesheet, holds the load event, so `--dump-dom` waits until
/// the page reported).
async fn page_server(page: String) -> (std::net::SocketAddr, tokio::sync::mpsc::UnboundedReceiver<PageEvent>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reported = std::sync::Arc::new(tokio::sync::Notify::new());
    let page = std::sync::Arc::new(page);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let (tx, reported, page) = (tx.clone(), reported.clone(), page.clone());
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 64 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&req).into_owned();
                let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                let (status, ctype, body) = match path {
                    "/" => ("200 OK", "text/html; charset=utf-8", page.as_bytes().to_vec()),
                    "/subscribed" => {
                        let _ = tx.send(PageEvent::Subscribed);
                        ("204 No Content", "text/plain", Vec::new())
                    }
                    "/updated" => {
                        let _ = tx.send(PageEvent::Updated);
                        ("204 No Content", "text/plain", Vec::new())
                    }
                    "/report" => {
                        let r = percent_decode(query.strip_prefix("r=").unwrap_or_default());
                        let v = serde_json::from_str(&r)
                            .unwrap_or_else(|e| json!({"ok": false, "error": format!("{r}: {e}")}));
                        let _ = tx.send(PageEvent::Report(v));
                        reported.notify_waiters();
                        reported.notify_one();
                        ("204 No Content", "text/plain", Vec::new())
                    }
                    "/wait" => {
                        let _ = tokio::time::timeout(Duration::from_secs(25), reported.notified()).await;
                        ("200 OK", "text/css", Vec::new())
                    }
                    _ => ("404 Not Found", "text/plain", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    (addr, rx)
}

/// The page: an `EventSource` on the gateway (another origin: the stream
/// needs CORS), the events it got, the last event id, and the close.
fn eventsource_page(url: &str) -> String {
    let cfg = json!({"url": url});
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>PENDING</title></head>
<body><pre id="out">PENDING</pre>
<script>
(() => {{
const cfg = {cfg};
const seen = [];
let done = false, last = null, opened = false;
const finish = (r) => {{
  if (done) return;
  done = true;
  const text = JSON.stringify(r);
  document.getElementById('out').textContent = text;
  fetch('/report?r=' + encodeURIComponent(text));
}};
setTimeout(() => finish({{ ok: false, error: 'timeout', seen }}), 20000);
const es = new EventSource(cfg.url);
es.onopen = () => {{ opened = true; }};
es.onerror = () => {{ if (!opened) finish({{ ok: false, error: 'could not open', seen }}); }};
es.addEventListener('subscribed', (e) => {{ seen.push(JSON.parse(e.data)); fetch('/subscribed'); }});
es.addEventListener('location_updated', (e) => {{ seen.push(JSON.parse(e.data)); last = e.lastEventId; fetch('/updated'); }});
es.addEventListener('close', (e) => {{ es.close(); finish({{ ok: true, seen, lastEventId: last, close: JSON.parse(e.data) }}); }});
}})();
</script>
<link rel="stylesheet" href="/wait">
</body></html>
"#
    )
}

#[tokio::test]
async fn chromium_eventsource_gets_updates_and_the_close_event() {
    let gw = TestGateway::start().await;
    gw.publish_location("cv", 48.85, 2.29).await;
    let url = gw.http("/sse/location?vendorId=cv&userId=u1");
    let (addr, mut events) = page_server(eventsource_page(&url)).await;
    let (child, profile) = common::chromium_dump_dom(&format!("http://{addr}/"));
    let browser = tokio::spawn(tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()));
    let (mut gw, mut published, mut updates) = (Some(gw), false, 0);
    let report = loop {
        let ev = tokio::time::timeout(Duration::from_secs(30), events.recv()).await.expect("page silent").unwrap();
        match ev {
            PageEvent::Subscribed if !published => {
                published = true;
                if let Some(g) = &gw {
                    g.publish_location("cv", 48.86, 2.30).await;
                }
            }
            PageEvent::Subscribed => {}
            // The snapshot, then the live update: then shut down.
            PageEvent::Updated => {
                updates += 1;
                if updates == 2
                    && let Some(g) = gw.take()
                {
                    assert!(g.shutdown().await);
                }
            }
            PageEvent::Report(v) => break v,
        }
    };
    let _ = browser.await;
    let _ = std::fs::remove_dir_all(&profile);
    assert_eq!(report["ok"], true, "{report}");
    let seen = report["seen"].as_array().unwrap();
    for m in seen {
        assert_schema("server/any.json", m);
    }
    let types: Vec<&str> = seen.iter().map(|m| m["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["subscribed", "location_updated", "location_updated"], "{report}");
    assert_eq!(seen[1]["data"]["snapshot"], true);
    assert_eq!(seen[2]["data"]["location"], json!({"lat": 48.86, "long": 2.30}));
    assert!(report["lastEventId"].as_str().is_some_and(|id| !id.is_empty()), "{report}");
    assert_eq!(report["close"], json!({"type": "close", "code": 1001, "reason": "server shutting down"}));
}

/// The resume id holds everything: a client resumes on another instance of
/// a cluster (NATS with JetStream's last values) without duplicates.
#[tokio::test]
async fn last_event_id_resumes_on_another_instance() {
    let nats = common::nats::OwnNats::start().await;
    let prefix = common::nats::unique_prefix();
    let config = || {
        let mut c = test_config();
        c.nats.url = Some(nats.url());
        c.nats.subject_prefix = prefix.clone();
        c.nats.interest_linger_ms = 100;
        c
    };
    let a = TestGateway::start_with(config()).await;
    let b = TestGateway::start_with(config()).await;
    wait_until("both ready", async || a.is_ready().await && b.is_ready().await).await;
    a.publish_location("n1", 1.0, 1.0).await;
    a.publish_location("n2", 2.0, 2.0).await;
    let path = "/sse/location?vendorId=n1,n2&userId=u1";
    // The last values are stored once a fresh stream on B shows both.
    let snapshots = async |gw: &TestGateway, want: &[(&str, f64)]| {
        let mut s = Sse::must_open(&gw.http(path)).await;
        let mut got = Vec::new();
        while got.len() < 2 {
            let up = s.update().await;
            got.push((
                up["data"]["vendorId"].as_str().unwrap().to_owned(),
                up["data"]["location"]["lat"].as_f64().unwrap(),
            ));
        }
        got.sort_by(|x, y| x.0.cmp(&y.0));
        got.iter().map(|(v, l)| (v.as_str(), *l)).eq(want.iter().copied())
    };
    wait_until("stored on JetStream", async || snapshots(&b, &[("n1", 1.0), ("n2", 2.0)]).await).await;
    let mut s = Sse::must_open(&a.http(path)).await;
    for _ in 0..2 {
        s.update().await;
    }
    let last = s.last_id.clone().expect("an id");
    drop(s);
    b.publish_location("n2", 3.0, 3.0).await;
    wait_until("the move stored", async || snapshots(&b, &[("n1", 1.0), ("n2", 3.0)]).await).await;
    let mut s = Sse::open(&b.http(path), &[("last-event-id", &last)]).await.expect("resume on B");
    let up = s.update().await;
    assert_eq!((up["data"]["vendorId"].as_str(), up["data"]["location"]["lat"].as_f64()), (Some("n2"), Some(3.0)));
    a.publish_location("n1", 4.0, 4.0).await;
    let up = s.update().await;
    assert_eq!((up["data"]["vendorId"].as_str(), up["data"]["location"]["lat"].as_f64()), (Some("n1"), Some(4.0)));
    assert!(up["data"].get("snapshot").is_none(), "live, not a replay of n1's old value");
    drop(s);
    assert!(a.shutdown().await);
    assert!(b.shutdown().await);
}
