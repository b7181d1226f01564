//! The binary as operators run it: configuration errors, --help, signals,
//! and the JS client across a restart.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{GatewayProcess, WsClient, free_port, publish};
use futures_util::future::join_all;
use serde_json::{Value, json};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_venta-gateway"))
}

#[test]
fn bad_values_exit_non_zero_naming_variable_and_value() {
    for (var, value) in [
        ("WEBSOCKET_GATEWAY_PORT", "70000"),
        ("WS_HEARTBEAT_INTERVAL", "999"),
        ("WS_MAX_CONNECTIONS", "lots"),
        ("WS_RATE_LIMIT", "0"),
        ("LOG_FORMAT", "xml"),
        ("BIND_ADDR", "nowhere"),
        ("AUDIT_QUEUE", "0"),
        ("AUDIT_BATCH", "many"),
    ] {
        let out = bin().env(var, value).output().unwrap();
        assert!(!out.status.success(), "{var}={value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var) && err.contains(value), "{var}={value}: {err}");
    }
}

#[test]
fn help_documents_every_option_with_its_default() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for (var, default) in [
        ("WEBSOCKET_GATEWAY_PORT", "5006"),
        ("BIND_ADDR", "::"),
        ("WS_HEARTBEAT_INTERVAL", "30000"),
        ("WS_MAX_CONNECTIONS", "1000"),
        ("WS_RATE_LIMIT", "100"),
        ("WS_MAX_MESSAGE_BYTES", "4096"),
        ("WS_MAX_SUBSCRIPTIONS", "100"),
        ("WS_MAX_QUEUE_BYTES", "1048576"),
        ("SHUTDOWN_TIMEOUT", "10"),
        ("LOG_LEVEL", "info"),
        ("LOG_FORMAT", "text"),
        ("AUDIT_SQLITE_PATH", "./venta-gateway-audit.db"),
        ("AUDIT_JOURNAL_DIR", "./audit-journal"),
        ("AUDIT_QUEUE", "10000"),
        ("AUDIT_BATCH", "500"),
        ("AUDIT_BUFFER", "10000"),
    ] {
        assert!(help.contains(&format!("env: {var}")), "--help lacks {var}:\n{help}");
        assert!(help.contains(&format!("default: {default}")), "--help lacks default {default} for {var}");
    }
    for var in ["INGEST_TOKEN", "DATABASE_URL", "ADMIN_TOKEN"] {
        assert!(help.contains(&format!("env: {var}")), "--help lacks {var}");
    }
}

#[tokio::test]
async fn sigterm_closes_clients_with_1001_and_exits_0() {
    let mut gw = GatewayProcess::spawn(free_port(), &[]).await;
    let url = gw.url("/ws/location");
    let mut clients = join_all((0..50).map(|_| WsClient::connect(&url))).await;
    for c in &mut clients {
        c.subscribe("location", "v1").await;
    }
    gw.signal("TERM");
    for c in &mut clients {
        assert_eq!(c.closed().await.0, Some(1001));
    }
    assert_eq!(gw.wait_exit().await, Some(0));
}

#[tokio::test]
async fn js_client_receives_updates_and_resubscribes_after_restart() {
    let node_ok = Command::new("node").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(node_ok, "node (20+) is required for the JS client test: apt-get install nodejs");
    let port = free_port();
    let gw = GatewayProcess::spawn(port, &[]).await;
    let driver = common::js_client().join("test/driver.mjs");
    let mut child = Command::new("node")
        .arg("--experimental-websocket")
        .arg(&driver)
        .args([gw.url("/ws/location").as_str(), "jsv1", "u1", "200", "20"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut next = async || -> Value {
        loop {
            let v = tokio::time::timeout(Duration::from_secs(15), rx.recv())
                .await
                .expect("driver silent")
                .expect("driver ended");
            if v["event"] != "ping" {
                return v;
            }
        }
    };
    assert_eq!(next().await["event"], "open");
    let sub = next().await;
    assert_eq!(sub, json!({"event": "subscribed", "data": {"channel": "location", "vendorId": "jsv1"}}));
    let body = json!({"vendorId": "jsv1", "location": {"lat": 1.25, "long": 2.5}});
    publish(&gw.http("/api/v1/publish/location"), &body).await;
    let got = next().await;
    assert_eq!(got["event"], "location");
    assert_eq!(got["data"]["location"], json!({"lat": 1.25, "long": 2.5}));

    // Restart the gateway on the same port: the client reconnects and
    // resubscribes by itself.
    drop(gw);
    assert_eq!(next().await["event"], "close");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let gw = GatewayProcess::spawn(port, &[]).await;
    assert_eq!(next().await["event"], "open");
    assert_eq!(next().await["event"], "subscribed");
    let body = json!({"vendorId": "jsv1", "location": {"lat": -3.5, "long": 4.5}});
    publish(&gw.http("/api/v1/publish/location"), &body).await;
    let got = next().await;
    assert_eq!(got["event"], "location");
    assert_eq!(got["data"]["location"], json!({"lat": -3.5, "long": 4.5}));

    // Closing stdin ends the driver cleanly.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.flush();
    }
    let status = child.wait().unwrap();
    assert!(status.success());
}

#[test]
fn log_format_json_writes_json_lines() {
    let port = free_port();
    let audit = common::nats::tempdir::Dir::new();
    let mut child = bin()
        .env("WEBSOCKET_GATEWAY_PORT", port.to_string())
        .env("GRPC_PORT", free_port().to_string())
        .env("BIND_ADDR", "127.0.0.1")
        .env("LOG_FORMAT", "json")
        .env("LOG_LEVEL", "info")
        .env("AUDIT_JOURNAL_DIR", audit.0.join("journal"))
        .env("AUDIT_SQLITE_PATH", audit.0.join("audit.db"))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().expect("a log line").unwrap();
    let v: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("not JSON: {first}: {e}"));
    assert!(v["level"].is_string() && v["fields"]["message"].is_string(), "{v}");
    let _ = child.kill();
    let _ = child.wait();
}

/// Node has no WebTransport: `VentaWebTransportClient` falls back to the
/// matching WebSocket endpoint (/wt/location → /ws/location, same port) and
/// works as the WebSocket client does.
#[tokio::test]
async fn js_webtransport_client_falls_back_to_websocket_in_node() {
    let node_ok = Command::new("node").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(node_ok, "node (20+) is required for the JS client test: apt-get install nodejs");
    let gw = GatewayProcess::spawn(free_port(), &[]).await;
    let url = format!("https://127.0.0.1:{}/wt/location", gw.port);
    let mut child = Command::new("node")
        .arg("--experimental-websocket")
        .arg(common::js_client().join("test/driver.mjs"))
        .args([url.as_str(), "fallback1", "u1", "200", "5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        for line in lines.by_ref().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut next = async || -> Value {
        tokio::time::timeout(Duration::from_secs(15), rx.recv()).await.expect("driver silent").expect("driver ended")
    };
    assert_eq!(next().await, json!({"event": "open", "transport": "websocket"}));
    assert_eq!(next().await, json!({"event": "subscribed", "data": {"channel": "location", "vendorId": "fallback1"}}));
    publish(
        &gw.http("/api/v1/publish/location"),
        &json!({"vendorId": "fallback1", "location": {"lat": 3.5, "long": -4.5}}),
    )
    .await;
    let got = next().await;
    assert_eq!(
        (got["event"].as_str(), &got["data"]["location"]),
        (Some("location"), &json!({"lat": 3.5, "long": -4.5}))
    );
    drop(child.stdin.take());
    assert!(child.wait().unwrap().success());
}

/// Area subscriptions through the JS client (driver.mjs, commands on its
/// stdin) against the binary in embedded mode: the snapshot has the vendor
/// published before; a publish inside gives vendor_entered, a move inside
/// location_updated with areaId, a publish outside vendor_left (moved); a
/// circle; a refused area is forgotten; moving an area gives the difference;
/// after unsubscribeArea nothing of it arrives; after a restart the client
/// subscribes its areas again and gets fresh snapshots.
#[tokio::test]
async fn js_client_follows_areas_across_a_restart() {
    const SOL: (f64, f64) = (40.4169, -3.7035);
    let node_ok = Command::new("node").arg("--version").output().map(|o| o.status.success()).unwrap_or(false);
    assert!(node_ok, "node (20+) is required for the JS client test: apt-get install nodejs");
    let port = free_port();
    let gw = GatewayProcess::spawn(port, &[]).await;
    let publish_at = async |gw: &GatewayProcess, vendor: &str, lat: f64, long: f64, ts: &str| {
        let body = json!({"vendorId": vendor, "location": {"lat": lat, "long": long}, "timestamp": ts});
        publish(&gw.http("/api/v1/publish/location"), &body).await;
    };
    publish_at(&gw, "a1", SOL.0, SOL.1, "2026-01-01T10:00:00Z").await;
    publish_at(&gw, "far", SOL.0 + 0.5, SOL.1, "2026-01-01T10:00:00Z").await;

    let mut child = Command::new("node")
        .arg("--experimental-websocket")
        .arg(common::js_client().join("test/driver.mjs"))
        .args([gw.url("/ws/location").as_str(), "-", "u1", "200", "20"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    let mut stdin = child.stdin.take().unwrap();
    let mut cmd = move |c: Value| {
        writeln!(stdin, "{c}").expect("driver stdin");
        stdin.flush().expect("driver stdin");
    };
    let stdout = child.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    let mut next = async || -> Value {
        loop {
            let v = tokio::time::timeout(Duration::from_secs(15), rx.recv())
                .await
                .expect("driver silent")
                .expect("driver ended");
            if v["event"] != "ping" {
                return v;
            }
        }
    };
    let sol_box = |id: &str, lat: f64| {
        json!({"cmd": "subscribeArea", "areaId": id,
            "shape": {"bbox": {"south": lat - 0.009, "west": SOL.1 - 0.012, "north": lat + 0.009, "east": SOL.1 + 0.012}}})
    };
    let at = |lat: f64, long: f64| json!({"lat": lat, "long": long});

    assert_eq!(next().await, json!({"event": "open", "transport": "websocket"}));
    cmd(sol_box("map", SOL.0));
    assert_eq!(next().await, json!({"event": "subscribed", "data": {"channel": "area", "areaId": "map"}}));
    assert_eq!(
        next().await,
        json!({"event": "area_snapshot", "data": {"areaId": "map", "truncated": false,
            "vendors": [{"vendorId": "a1", "location": at(SOL.0, SOL.1), "timestamp": "2026-01-01T10:00:00Z"}]}})
    );
    // In, a move inside, out.
    publish_at(&gw, "b2", SOL.0 + 0.001, SOL.1, "2026-01-01T10:00:01Z").await;
    assert_eq!(
        next().await,
        json!({"event": "vendor_entered", "data": {"areaId": "map", "vendorId": "b2",
            "location": at(SOL.0 + 0.001, SOL.1), "timestamp": "2026-01-01T10:00:01Z"}})
    );
    publish_at(&gw, "a1", SOL.0 + 0.002, SOL.1, "2026-01-01T10:00:02Z").await;
    assert_eq!(
        next().await,
        json!({"event": "area_location", "data": {"vendorId": "a1", "location": at(SOL.0 + 0.002, SOL.1),
            "timestamp": "2026-01-01T10:00:02Z", "areaId": "map"}})
    );
    publish_at(&gw, "a1", SOL.0 + 0.05, SOL.1, "2026-01-01T10:00:03Z").await;
    assert_eq!(
        next().await,
        json!({"event": "vendor_left", "data": {"areaId": "map", "vendorId": "a1", "reason": "moved"}})
    );
    cmd(json!({"cmd": "areaVendors", "areaId": "map"}));
    assert_eq!(
        next().await,
        json!({"event": "area_vendors", "areaId": "map", "vendors": [
            {"vendorId": "b2", "location": at(SOL.0 + 0.001, SOL.1), "timestamp": "2026-01-01T10:00:01Z"}]})
    );

    // Too large: refused and forgotten.
    cmd(json!({"cmd": "subscribeArea", "areaId": "huge",
        "shape": {"bbox": {"south": 0, "west": 0, "north": 10, "east": 10}}}));
    let refused = next().await;
    assert_eq!((refused["event"].as_str(), refused["data"]["code"].as_str()), (Some("error"), Some("area_too_large")));
    assert_eq!(refused["data"]["requestType"], "subscribe_area");
    cmd(json!({"cmd": "areaVendors", "areaId": "huge"}));
    assert_eq!(next().await, json!({"event": "area_vendors", "areaId": "huge", "vendors": null}));
    // A shape the client itself refuses never reaches the gateway.
    cmd(json!({"cmd": "subscribeArea", "areaId": "two", "shape": {}}));
    assert_eq!(next().await["event"], "command_failed");

    // A circle around where a1 went.
    cmd(json!({"cmd": "subscribeArea", "areaId": "near",
        "shape": {"circle": {"center": at(SOL.0 + 0.05, SOL.1), "radiusM": 300}}}));
    assert_eq!(next().await, json!({"event": "subscribed", "data": {"channel": "area", "areaId": "near"}}));
    let snap = next().await;
    assert_eq!(snap["event"], "area_snapshot");
    assert_eq!(snap["data"]["vendors"][0]["vendorId"], "a1", "{snap}");

    // Moving "map" over a1 and away from b2: the difference, no snapshot.
    cmd(sol_box("map", SOL.0 + 0.05));
    assert_eq!(next().await, json!({"event": "subscribed", "data": {"channel": "area", "areaId": "map"}}));
    let mut diff = [next().await, next().await];
    diff.sort_by_key(|v| v["event"].as_str().map(str::to_owned));
    assert_eq!(diff[0]["event"], "vendor_entered");
    assert_eq!((diff[0]["data"]["areaId"].as_str(), diff[0]["data"]["vendorId"].as_str()), (Some("map"), Some("a1")));
    assert_eq!(
        diff[1],
        json!({"event": "vendor_left", "data": {"areaId": "map", "vendorId": "b2", "reason": "area_changed"}})
    );

    // Unsubscribed from "near": a1 moving inside both now reaches "map" only
    // (one publish queues all its events at once; the pong comes after them).
    cmd(json!({"cmd": "unsubscribeArea", "areaId": "near"}));
    assert_eq!(next().await, json!({"event": "unsubscribed", "data": {"channel": "area", "areaId": "near"}}));
    publish_at(&gw, "a1", SOL.0 + 0.0501, SOL.1, "2026-01-01T10:00:04Z").await;
    let moved = next().await;
    assert_eq!((moved["event"].as_str(), moved["data"]["areaId"].as_str()), (Some("area_location"), Some("map")));
    cmd(json!({"cmd": "ping"}));
    assert_eq!(next().await["event"], "pong", "nothing of \"near\" after its unsubscribe");

    // Restart: the client reconnects and subscribes "map" again (not "huge",
    // not "near"); the new instance knows no vendor yet.
    drop(gw);
    assert_eq!(next().await["event"], "close");
    let gw = GatewayProcess::spawn(port, &[]).await;
    assert_eq!(next().await["event"], "open");
    assert_eq!(next().await, json!({"event": "subscribed", "data": {"channel": "area", "areaId": "map"}}));
    assert_eq!(
        next().await,
        json!({"event": "area_snapshot", "data": {"areaId": "map", "vendors": [], "truncated": false}})
    );
    publish_at(&gw, "c3", SOL.0 + 0.05, SOL.1, "2026-01-01T10:00:05Z").await;
    let entered = next().await;
    assert_eq!((entered["event"].as_str(), entered["data"]["vendorId"].as_str()), (Some("vendor_entered"), Some("c3")));
    cmd(json!({"cmd": "areaVendors", "areaId": "map"}));
    let held = next().await;
    assert_eq!(held["vendors"].as_array().map(|v| v.len()), Some(1), "the snapshot replaced the old members: {held}");

    // Closing stdin ends the driver cleanly.
    drop(cmd);
    assert!(child.wait().unwrap().success());
}
