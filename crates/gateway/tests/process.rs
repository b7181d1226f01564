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
    let driver = common::root().join("clients/js/test/driver.mjs");
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
        .arg(common::root().join("clients/js/test/driver.mjs"))
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
