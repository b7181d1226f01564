//! WebTransport (docs/protocol.md, §1.10) against an in-process gateway, with a
//! real wtransport client pinning the certificate hash from /wt/cert-hash.
//! Every message a client receives is converted from MessagePack to a JSON
//! value and checked against `schemas/server/any.json`.

mod common;

use std::time::Duration;

use common::nats::{MACHINE_NATS, require_machine_nats, unique_prefix};
use common::wt::{WtClient, cert_hash, connect, frame, raw_frame};
use common::{TestGateway, WsClient, assert_schema, test_config, wait_until};
use futures_util::future::join_all;
use serde_json::{Value, json};

async fn metric(gw: &TestGateway, series: &str) -> f64 {
    let text = reqwest::get(gw.http("/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

async fn status(gw: &TestGateway) -> Value {
    let v: Value = reqwest::get(gw.http("/ws/status")).await.unwrap().json().await.unwrap();
    assert_schema("http/ws_status.json", &v);
    v
}

#[tokio::test]
async fn cert_hash_names_the_certificate_the_endpoint_presents() {
    let gw = TestGateway::start().await;
    let hash = cert_hash(&gw.http("")).await;
    assert!(hash.get("next").is_none(), "no rotation right after start: {hash}");
    let not_after =
        time::OffsetDateTime::parse(hash["notAfter"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    let left = not_after - time::OffsetDateTime::now_utc();
    assert!(left > time::Duration::days(12) && left < time::Duration::days(14), "{left}");
    // The published hash is accepted; another one is refused by the client's
    // verifier (the same rule a browser applies).
    let good = hash["value"].as_str().unwrap();
    assert!(connect(&gw.wt_url("/wt/location"), &[good]).await.is_ok());
    let wrong = "00".repeat(32);
    assert!(connect(&gw.wt_url("/wt/location"), &[&wrong]).await.is_err());
    // Unknown session paths are refused (404).
    let refused = connect(&gw.wt_url("/wt/nope"), &[good]).await;
    assert!(matches!(refused, Err(wtransport::error::ConnectingError::SessionRejected)), "{:?}", refused.err());
    gw.shutdown().await;
}

#[tokio::test]
async fn every_message_type_on_both_endpoints() {
    let gw = TestGateway::start().await;
    for (path, v) in [("/wt/location", "v1"), ("/wt/vendor?token=ignored-when-auth-is-off", "v2")] {
        let mut c = WtClient::connect(&gw, path).await;
        c.subscribe("location", v).await;
        c.subscribe("vendor", v).await;

        gw.publish_location(v, 12.5, -45.25).await;
        let u = c.recv().await;
        assert_eq!(u["type"], "location_updated");
        assert_eq!(u["data"]["vendorId"], v);
        assert_eq!(u["data"]["location"], json!({"lat": 12.5, "long": -45.25}));

        gw.publish_vendor(v, json!({"name": "Tacos", "description": "al pastor", "open": true, "n": [1, 2.5]})).await;
        let u = c.recv().await;
        assert_eq!(u["type"], "vendor_updated");
        assert_eq!(
            u["data"]["vendor"],
            json!({"name": "Tacos", "description": "al pastor", "open": true, "n": [1, 2.5]})
        );

        c.sync("p1").await;
        c.send_json(json!({"type": "pong"})).await;
        for channel in ["location", "vendor"] {
            c.send_json(json!({"type": format!("unsubscribe_{channel}"), "data": {"vendorId": v}, "id": channel}))
                .await;
            assert_eq!(
                c.recv().await,
                json!({"type": "unsubscribed", "data": {"channel": channel, "vendorId": v}, "id": channel})
            );
        }
        gw.publish_location(v, 1.0, 1.0).await;
        c.sync("after-unsubscribe").await;
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn websocket_and_webtransport_clients_receive_the_same_update() {
    let gw = TestGateway::start().await;
    let mut ws = WsClient::connect(&gw.url("/ws/vendor")).await;
    let mut wt = WtClient::connect(&gw, "/wt/vendor").await;
    ws.subscribe("vendor", "shared").await;
    wt.subscribe("vendor", "shared").await;
    ws.subscribe("location", "shared").await;
    wt.subscribe("location", "shared").await;
    gw.publish_vendor("shared", json!({"name": "Kebab", "hours": {"mon": "9-17"}, "rating": 4.5})).await;
    gw.publish_location("shared", -33.5, 151.25).await;
    for _ in 0..2 {
        let (a, b) = (ws.recv().await, wt.recv().await);
        assert_eq!(a, b, "one update, one timestamp, whichever transport delivers it");
    }
    let st = status(&gw).await;
    assert_eq!(st["connections"]["byTransport"], json!({"websocket": 1, "webtransport": 1, "sse": 0}));
    assert_eq!(st["connections"]["byEndpoint"], json!({"location": 0, "vendor": 2}));
    assert_eq!(st["connections"]["total"], 2);
    assert_eq!(metric(&gw, r#"venta_connections{endpoint="vendor",transport="webtransport"}"#).await, 1.0);
    assert!(metric(&gw, r#"venta_messages_out_total{transport="webtransport",type="vendor_updated"}"#).await >= 1.0);
    assert!(metric(&gw, r#"venta_messages_in_total{transport="webtransport",type="subscribe_vendor"}"#).await >= 1.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn a_nats_publish_reaches_a_webtransport_client() {
    require_machine_nats();
    let prefix = unique_prefix();
    let mut config = test_config();
    config.nats.url = Some(MACHINE_NATS.to_owned());
    config.nats.subject_prefix = prefix.clone();
    let gw = TestGateway::start_with(config).await;
    let nats = async_nats::connect(MACHINE_NATS).await.unwrap();
    let mut c = WtClient::connect(&gw, "/wt/location").await;
    c.subscribe("location", "n1").await;
    c.subscribe("vendor", "n1").await;
    let payload =
        json!({"vendorId": "n1", "location": {"lat": 52.5, "long": 13.25}, "timestamp": "2026-11-30T10:00:00.5Z"});
    nats.publish(format!("{prefix}.location.n1"), payload.to_string().into()).await.unwrap();
    let u = c.recv().await;
    assert_eq!(
        u["data"],
        json!({"vendorId": "n1", "location": {"lat": 52.5, "long": 13.25}, "timestamp": "2026-11-30T10:00:00.5Z"})
    );
    let payload = json!({"vendorId": "n1", "vendor": {"name": "Kebab"}});
    nats.publish(format!("{prefix}.vendor.n1"), payload.to_string().into()).await.unwrap();
    let u = c.recv().await;
    assert_eq!(u["data"]["vendor"], json!({"name": "Kebab"}));
    // The same again over HTTP ingest, through NATS.
    gw.publish_location("n1", 1.5, 2.5).await;
    assert_eq!(c.recv().await["data"]["location"], json!({"lat": 1.5, "long": 2.5}));
    gw.shutdown().await;
}

#[tokio::test]
async fn datagram_delivery_for_location_subscriptions() {
    let gw = TestGateway::start().await;
    let mut c = WtClient::connect(&gw, "/wt/location").await;
    c.subscribe_datagram("location", "d1").await;
    // Ignored on vendor subscriptions: those stay on the stream.
    c.subscribe_datagram("vendor", "d1").await;

    gw.publish_location("d1", 10.0, 20.0).await;
    let dg = c.recv_datagram().await;
    assert_eq!(dg["type"], "location_updated");
    assert_eq!(dg["data"]["location"], json!({"lat": 10.0, "long": 20.0}));
    gw.publish_vendor("d1", json!({"name": "Stream only"})).await;
    assert_eq!(c.recv().await["data"]["vendor"]["name"], "Stream only", "vendor data on the stream");
    c.sync("nothing-else-on-the-stream").await;
    assert_eq!(metric(&gw, r#"venta_webtransport_datagrams_total{outcome="sent"}"#).await, 1.0);

    // An update too large for a datagram goes on the stream instead (RFC 3339
    // allows any number of fraction digits; the gateway passes it on).
    let ts = format!("2026-01-01T00:00:00.{}Z", "1".repeat(2000));
    common::publish(
        &gw.http("/api/v1/publish/location"),
        &json!({"vendorId": "d1", "location": {"lat": 1.0, "long": 2.0}, "timestamp": ts}),
    )
    .await;
    let big = c.recv().await;
    assert_eq!(big["data"]["timestamp"], ts.as_str());
    assert_eq!(metric(&gw, r#"venta_webtransport_datagrams_total{outcome="stream_fallback"}"#).await, 1.0);

    // Subscribing again with stream delivery moves the topic back to the stream.
    c.subscribe("location", "d1").await;
    gw.publish_location("d1", 3.0, 4.0).await;
    assert_eq!(c.recv().await["data"]["location"], json!({"lat": 3.0, "long": 4.0}));
    assert_eq!(c.try_datagram(Duration::from_millis(300)).await, None);
    gw.shutdown().await;
}

#[tokio::test]
async fn webtransport_datagram_subscribers_and_stream_subscribers_share_a_topic() {
    let gw = TestGateway::start().await;
    let mut dg = WtClient::connect(&gw, "/wt/location").await;
    let mut st = WtClient::connect(&gw, "/wt/location").await;
    dg.subscribe_datagram("location", "mix").await;
    st.subscribe("location", "mix").await;
    gw.publish_location("mix", 5.0, 6.0).await;
    let (a, b) = (dg.recv_datagram().await, st.recv().await);
    assert_eq!(a, b);
    gw.shutdown().await;
}

/// Each bad frame gets the documented error; the session stays unless the
/// stream is out of step; another client is served all along.
#[tokio::test]
async fn bad_frames_get_documented_errors_and_the_gateway_is_unharmed() {
    let gw = TestGateway::start().await;
    let mut bystander = WtClient::connect(&gw, "/wt/location").await;
    bystander.subscribe("location", "calm").await;

    let ping = rmp_serde::to_vec_named(&json!({"type": "ping"})).unwrap();
    let mut trailing = ping.clone();
    trailing.extend_from_slice(&[0xc0]);
    let kept: Vec<(&str, Vec<u8>, &str)> = vec![
        ("invalid MessagePack", raw_frame(&[0xc1, 0x00]), "invalid_frame"),
        ("empty frame", raw_frame(&[]), "invalid_frame"),
        ("trailing bytes", raw_frame(&trailing), "invalid_frame"),
        ("array, not a map", frame(&json!(["ping"])), "invalid_frame"),
        ("string, not a map", frame(&json!("ping")), "invalid_frame"),
        ("integer keys", raw_frame(&[0x81, 0x01, 0xa4, b'p', b'i', b'n', b'g']), "invalid_frame"),
        ("unknown type", frame(&json!({"type": "dance", "id": "d"})), "unknown_type"),
        ("missing type", frame(&json!({"data": {}})), "invalid_field"),
        (
            "bad vendorId",
            frame(&json!({"type": "subscribe_vendor", "data": {"vendorId": "a.b", "userId": "u"}})),
            "invalid_field",
        ),
        (
            "bad delivery",
            frame(
                &json!({"type": "subscribe_location", "data": {"vendorId": "a", "userId": "u", "delivery": "pigeon"}}),
            ),
            "invalid_field",
        ),
    ];
    let mut c = WtClient::connect(&gw, "/wt/location").await;
    for (what, bytes, code) in &kept {
        c.send_raw(bytes).await;
        let e = c.recv().await;
        assert_eq!(e["type"], "error", "{what}: {e}");
        assert_eq!(e["data"]["code"], *code, "{what}: {e}");
        c.sync(what).await;
    }
    assert_eq!(kept[6].2, "unknown_type");
    // The id of an unknown type is echoed, as on WebSocket.
    c.send_raw(&kept[6].1).await;
    assert_eq!(c.recv().await["id"], "d");
    // A frame of exactly WS_MAX_MESSAGE_BYTES is accepted.
    let max = gw.shared.config.limits.max_message_bytes;
    let mut msg = json!({"type": "ping", "id": "big", "pad": ""});
    let base = rmp_serde::to_vec_named(&msg).unwrap().len();
    msg["pad"] = Value::String("x".repeat(max - base - 2)); // str8 header grows by 2 bytes (fixstr → str16)
    let payload = rmp_serde::to_vec_named(&msg).unwrap();
    assert_eq!(payload.len(), max);
    c.send_raw(&raw_frame(&payload)).await;
    assert_eq!(c.recv().await, json!({"type": "pong", "id": "big"}));

    // A header announcing more than the limit: error, then the session closes
    // (1009), as soon as the header arrives.
    c.send_raw(&((max + 1) as u32).to_be_bytes()).await;
    let e = c.recv().await;
    assert_eq!(e["data"]["code"], "message_too_large", "{e}");
    assert_eq!(c.closed().await, (Some(1009), "message too large (WS_MAX_MESSAGE_BYTES)".into()));

    // A huge length, on another session.
    let mut c = WtClient::connect(&gw, "/wt/vendor").await;
    c.send_raw(&u32::MAX.to_be_bytes()).await;
    assert_eq!(c.recv().await["data"]["code"], "message_too_large");
    assert_eq!(c.closed().await.0, Some(1009));

    // A frame cut off by the end of the stream: error, then closed (1007).
    let mut c = WtClient::connect(&gw, "/wt/vendor").await;
    let whole = frame(&json!({"type": "ping"}));
    c.send_raw(&whole[..whole.len() - 2]).await;
    c.send.finish().await.unwrap();
    let e = c.recv().await;
    assert_eq!(e["data"]["code"], "invalid_frame", "{e}");
    assert_eq!(c.closed().await, (Some(1007), "stream ended inside a frame".into()));

    // Finishing the stream between frames is a normal goodbye.
    let mut c = WtClient::connect(&gw, "/wt/vendor").await;
    c.send_json(json!({"type": "ping", "id": "bye"})).await;
    c.send.finish().await.unwrap();
    assert_eq!(c.recv().await, json!({"type": "pong", "id": "bye"}));
    assert_eq!(c.closed().await, (Some(1000), "client finished its stream".into()));

    // The bystander never noticed.
    gw.publish_location("calm", 7.0, 8.0).await;
    assert_eq!(bystander.recv().await["data"]["location"], json!({"lat": 7.0, "long": 8.0}));
    assert!(metric(&gw, r#"venta_errors_total{code="invalid_frame"}"#).await >= 7.0);
    gw.shutdown().await;
}

#[tokio::test]
async fn max_connections_counts_both_transports() {
    let mut config = test_config();
    config.limits.max_connections = 2;
    let gw = TestGateway::start_with(config).await;
    let _ws = WsClient::connect(&gw.url("/ws/location")).await;
    let mut wt = WtClient::connect(&gw, "/wt/location").await;
    wt.sync("in").await;
    // The third is accepted, told why (1013) and closed.
    let hash = cert_hash(&gw.http("")).await;
    let closed = match connect(&gw.wt_url("/wt/location"), &[hash["value"].as_str().unwrap()]).await {
        // Usually the close overtakes the end of the client's handshake.
        Err(wtransport::error::ConnectingError::ConnectionError(e)) => e,
        Err(e) => panic!("{e}"),
        Ok((_ep, third)) => tokio::time::timeout(Duration::from_secs(10), third.closed()).await.unwrap(),
    };
    match closed {
        wtransport::error::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.code().into_inner(), 1013);
            assert_eq!(c.reason(), b"server at WS_MAX_CONNECTIONS; try again later");
        }
        other => panic!("{other}"),
    }
    let mut fourth = WsClient::connect(&gw.url("/ws/location")).await;
    assert_eq!(fourth.closed().await.0, Some(1013));
    assert_eq!(metric(&gw, r#"venta_connections_rejected_total{reason="max_connections"}"#).await, 2.0);
    // A slot freed by a WebTransport client is usable again.
    drop(wt);
    wait_until("the WebTransport slot released", async || gw.shared.open_connections() < 2).await;
    let mut again = WtClient::connect(&gw, "/wt/vendor").await;
    again.sync("back").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn heartbeat_pings_and_closes_silent_sessions() {
    let mut config = test_config();
    config.limits.heartbeat_interval_ms = 1000;
    let gw = TestGateway::start_with(config).await;
    let mut lively = WtClient::connect(&gw, "/wt/location").await;
    lively.auto_pong = false;
    assert_eq!(lively.recv().await, json!({"type": "ping"}), "the gateway pings over the stream");
    lively.send_json(json!({"type": "pong"})).await;
    lively.auto_pong = true;
    let mut silent = WtClient::connect(&gw, "/wt/location").await;
    silent.send_json(json!({"type": "ping", "id": "hello"})).await;
    silent.auto_pong = false;
    let hash = cert_hash(&gw.http("")).await["value"].as_str().unwrap().to_owned();
    let silent_side = async {
        let started = std::time::Instant::now();
        assert_eq!(silent.closed().await, (Some(4000), "heartbeat timeout".into()));
        assert!(started.elapsed() >= Duration::from_millis(1500), "{:?}", started.elapsed());
        // A session that never opens its stream is just as silent.
        let (_ep, conn) = connect(&gw.wt_url("/wt/location"), &[&hash]).await.unwrap();
        match tokio::time::timeout(Duration::from_secs(10), conn.closed()).await.unwrap() {
            wtransport::error::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.code().into_inner(), 4000);
                assert_eq!(c.reason(), b"heartbeat timeout: no stream opened");
            }
            other => panic!("{other}"),
        }
    };
    // Meanwhile the client answering pings stays.
    let lively_side = tokio::time::timeout(Duration::from_secs(5), lively.closed());
    let ((), stayed) = tokio::join!(silent_side, lively_side);
    assert!(stayed.is_err(), "the answering client was closed: {stayed:?}");
    lively.sync("still-here").await;
    gw.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_webtransport_sessions_with_1001() {
    let gw = TestGateway::start().await;
    let mut clients = join_all((0..20).map(|_| WtClient::connect(&gw, "/wt/location"))).await;
    for c in &mut clients {
        c.subscribe("location", "bye").await;
    }
    let mut ws = WsClient::connect(&gw.url("/ws/location")).await;
    let done = tokio::spawn(gw.shutdown());
    for c in &mut clients {
        assert_eq!(c.closed().await, (Some(1001), "server shutting down".into()));
    }
    assert_eq!(ws.closed().await.0, Some(1001));
    assert!(done.await.unwrap(), "shutdown finished within SHUTDOWN_TIMEOUT");
}

#[tokio::test]
async fn self_signed_certificate_rotates_while_sessions_stay() {
    let mut config = test_config();
    config.webtransport.cert_validity_secs = 12;
    let gw = TestGateway::start_with(config).await;
    let first = cert_hash(&gw.http("")).await;
    let first_hash = first["value"].as_str().unwrap().to_owned();
    let mut old = WtClient::connect_url(&gw.wt_url("/wt/location"), &[&first_hash]).await;
    old.subscribe("location", "rot").await;
    // Half-way through its life the next certificate is published...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let next = loop {
        let h = cert_hash(&gw.http("")).await;
        if let Some(next) = h.get("next") {
            assert_eq!(h["value"], first_hash.as_str(), "still serving the first");
            break next["value"].as_str().unwrap().to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "no next certificate published");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(next, first_hash);
    // ...a client pinning both connects before and after the switch...
    let both = WtClient::connect_url(&gw.wt_url("/wt/location"), &[&first_hash, &next]).await;
    drop(both);
    // ...and at three quarters the endpoint switches to it.
    loop {
        let h = cert_hash(&gw.http("")).await;
        if h["value"] == next.as_str() {
            assert!(h.get("next").is_none(), "{h}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no switch to the next certificate");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut new = WtClient::connect_url(&gw.wt_url("/wt/location"), &[&next]).await;
    new.subscribe("location", "rot").await;
    assert!(connect(&gw.wt_url("/wt/location"), &[&first_hash]).await.is_err(), "the old certificate is gone");
    // The session opened under the old certificate is still served.
    gw.publish_location("rot", 1.0, 2.0).await;
    assert_eq!(old.recv().await["data"]["location"], json!({"lat": 1.0, "long": 2.0}));
    assert_eq!(new.recv().await["data"]["location"], json!({"lat": 1.0, "long": 2.0}));
    gw.shutdown().await;
}

#[tokio::test]
async fn pem_files_from_wt_cert_and_wt_key() {
    let dir = std::env::temp_dir().join(format!("venta-wt-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let identity = wtransport::Identity::self_signed(["localhost", "127.0.0.1"]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    identity.certificate_chain().store_pemfile(&cert).await.unwrap();
    identity.private_key().store_secret_pemfile(&key).await.unwrap();
    let expected: String =
        identity.certificate_chain().as_slice()[0].hash().as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let mut config = test_config();
    config.webtransport.cert = Some(cert);
    config.webtransport.key = Some(key);
    let gw = TestGateway::start_with(config).await;
    assert_eq!(cert_hash(&gw.http("")).await["value"], expected.as_str());
    let mut c = WtClient::connect_url(&gw.wt_url("/wt/vendor"), &[&expected]).await;
    c.subscribe("vendor", "pem").await;
    gw.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unreadable_wt_cert_fails_startup_naming_the_file() {
    let mut config = test_config();
    config.webtransport.cert = Some("/nonexistent/cert.pem".into());
    config.webtransport.key = Some("/nonexistent/key.pem".into());
    let err = venta_gateway::Gateway::bind(config).await.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("WT_CERT") && err.contains("/nonexistent/cert.pem"), "{err}");
}

/// The binary as operators run it: SIGTERM closes WebTransport sessions with
/// 1001 and the process exits 0.
#[tokio::test]
async fn sigterm_closes_webtransport_sessions_with_1001_and_exits_0() {
    let wt_port = common::free_udp_port();
    let mut gw = common::GatewayProcess::spawn(common::free_port(), &[("WT_PORT", &wt_port.to_string())]).await;
    let hash = cert_hash(&gw.http("")).await;
    let url = format!("https://127.0.0.1:{wt_port}/wt/location");
    let hashes = [hash["value"].as_str().unwrap()];
    let mut clients = join_all((0..10).map(|_| WtClient::connect_url(&url, &hashes))).await;
    for c in &mut clients {
        c.subscribe("location", "term").await;
    }
    gw.signal("TERM");
    for c in &mut clients {
        assert_eq!(c.closed().await, (Some(1001), "server shutting down".into()));
    }
    assert_eq!(gw.wait_exit().await, Some(0));
}
