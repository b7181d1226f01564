//! Ingest is closed where it matters: production refuses to start without
//! INGEST_TOKEN, development says loudly that it is open, the HTTP publish
//! takes only JSON (no cross-site `text/plain` forgeries), and the bearer
//! scheme is case-insensitive.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{TestGateway, WsClient, assert_schema, free_port, test_config};
use serde_json::{Value, json};
use venta_gateway::Gateway;
use venta_gateway::ingest::IngestConfigError;
use venta_gateway::server::StartError;

const BODY: &str = r#"{"vendorId":"i1","location":{"lat":1.5,"long":2.5}}"#;

async fn post(url: &str, content_type: Option<&str>, authorization: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().post(url).body(BODY);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.expect("publish request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn http_publish_accepts_only_json_content_types() {
    let gw = TestGateway::start().await;
    let url = gw.http("/api/v1/publish/location");
    let mut ws = WsClient::connect(&gw.url("/ws/location")).await;
    ws.subscribe("location", "i1").await;
    // What a web page can send cross-site without a preflight, and nothing.
    for ct in [
        Some("text/plain"),
        Some("text/plain; charset=utf-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/json; charset=iso-8859-1"),
        None,
    ] {
        let (status, body) = post(&url, ct, None).await;
        assert_eq!(status, 415, "{ct:?} → {body}");
        assert_schema("http/error_response.json", &body);
        assert!(body["error"]["message"].as_str().is_some_and(|m| m.contains("application/json")), "{body}");
    }
    for ct in ["application/json", "application/json; charset=utf-8", "Application/JSON; Charset=UTF-8"] {
        let (status, body) = post(&url, Some(ct), None).await;
        assert_eq!((status, body), (202, json!({"published": true})), "{ct}");
        assert_eq!(ws.recv().await["data"]["location"], json!({"lat": 1.5, "long": 2.5}), "{ct}");
    }
    // Nothing refused above was delivered.
    ws.send_json(json!({"type": "ping", "id": "end"})).await;
    assert_eq!(ws.recv().await["id"], "end");
    gw.shutdown().await;
}

#[tokio::test]
async fn ingest_bearer_scheme_is_case_insensitive() {
    let mut config = test_config();
    config.auth.ingest_token = Some("s3cret-ingest".into());
    let gw = TestGateway::start_with(config).await;
    let url = gw.http("/api/v1/publish/location");
    for auth in ["bearer s3cret-ingest", "BEARER s3cret-ingest", "Bearer  s3cret-ingest"] {
        let (status, body) = post(&url, Some("application/json"), Some(auth)).await;
        assert_eq!(status, 202, "{auth:?} → {body}");
    }
    for auth in [None, Some("Basic s3cret-ingest"), Some("bearer"), Some("Bearer s3cret")] {
        let (status, body) = post(&url, Some("application/json"), auth).await;
        assert_eq!(status, 401, "{auth:?} → {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn production_refuses_to_start_without_an_ingest_token() {
    for token in [None, Some("")] {
        let mut config = test_config();
        config.auth.gateway_env = venta_gateway::config::GatewayEnv::Production;
        config.auth.jwt_secret = Some("production-secret-0123456789".into());
        config.auth.ingest_token = token.map(str::to_owned);
        let _dir = common::private_audit_paths(&mut config);
        match Gateway::bind(config).await {
            Err(StartError::Ingest(e)) => {
                assert_eq!(e, IngestConfigError::ProductionWithoutToken);
                assert!(e.is_config());
                assert!(e.to_string().contains("INGEST_TOKEN"), "{e}");
            }
            Err(e) => panic!("{token:?}: wrong error {e}"),
            Ok(_) => panic!("{token:?}: production started with open ingest"),
        }
    }
    // With a token it starts.
    let mut config = test_config();
    config.auth.gateway_env = venta_gateway::config::GatewayEnv::Production;
    config.auth.jwt_secret = Some("production-secret-0123456789".into());
    config.auth.ingest_token = Some("tok".into());
    let gw = TestGateway::start_with(config).await;
    gw.shutdown().await;
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_venta-gateway"))
}

/// The binary: production without INGEST_TOKEN exits (non-zero) naming it,
/// instead of serving open ingest.
#[test]
fn the_binary_in_production_without_ingest_token_exits_naming_it() {
    let audit = common::nats::tempdir::Dir::new();
    let mut child = bin()
        .env("GATEWAY_ENV", "production")
        .env("JWT_SECRET", "production-secret-0123456789")
        .env_remove("INGEST_TOKEN")
        .env("WEBSOCKET_GATEWAY_PORT", free_port().to_string())
        .env("GRPC_PORT", free_port().to_string())
        .env("WT_PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("AUDIT_JOURNAL_DIR", audit.0.join("journal"))
        .env("AUDIT_SQLITE_PATH", audit.0.join("audit.db"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("GATEWAY_ENV=production without INGEST_TOKEN kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert_eq!(status.code(), Some(2), "a setting to change exits 2: {err}");
    assert!(err.contains("GATEWAY_ENV=production requires INGEST_TOKEN"), "{err}");
}

/// Development with open ingest starts, and says so once, loudly.
#[test]
fn development_warns_that_ingest_is_open() {
    let audit = common::nats::tempdir::Dir::new();
    let mut child = bin()
        .env_remove("INGEST_TOKEN")
        .env_remove("GATEWAY_ENV")
        .env("WEBSOCKET_GATEWAY_PORT", free_port().to_string())
        .env("GRPC_PORT", free_port().to_string())
        .env("WT_PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("LOG_LEVEL", "warn")
        .env("AUDIT_JOURNAL_DIR", audit.0.join("journal"))
        .env("AUDIT_SQLITE_PATH", audit.0.join("audit.db"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("INGEST IS OPEN") => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    let line = found.unwrap_or_else(|| panic!("no open-ingest warning in:\n{}", seen.join("\n")));
    assert!(line.contains("WARN") && line.contains("INGEST_TOKEN"), "{line}");
}

/// Found by schemathesis (.ci/specs.sh): `"timestamp": null` was taken as
/// "no timestamp" and published, though the payload schema (and
/// docs/openapi.yaml) says a present `timestamp` is an RFC 3339 string. It is
/// refused like any other mistyped field, on both routes, and nothing reaches
/// the subscribers; leaving the field out still gets the gateway's stamp.
#[tokio::test]
async fn http_publish_refuses_a_null_timestamp() {
    let gw = TestGateway::start().await;
    let mut ws = WsClient::connect(&gw.url("/ws/location")).await;
    ws.subscribe("location", "n1").await;
    ws.subscribe("vendor", "n1").await;
    let client = reqwest::Client::new();
    for (route, body) in [
        (
            "/api/v1/publish/location",
            json!({"vendorId": "n1", "location": {"lat": 1.0, "long": 2.0}, "timestamp": null}),
        ),
        ("/api/v1/publish/vendor", json!({"vendorId": "n1", "vendor": {"name": "Tacos"}, "timestamp": null})),
    ] {
        let resp = client.post(gw.http(route)).json(&body).send().await.expect("publish request");
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.expect("json body");
        assert_eq!(status, 400, "{route} {body} → {answer}");
        assert_schema("http/error_response.json", &answer);
        assert_eq!(answer["error"]["code"], "invalid_field", "{answer}");
        assert!(answer["error"]["message"].as_str().is_some_and(|m| m.starts_with("timestamp")), "{answer}");
    }
    // Nothing refused above was delivered; an absent timestamp is stamped.
    ws.send_json(json!({"type": "ping", "id": "end"})).await;
    assert_eq!(ws.recv().await["id"], "end");
    gw.publish_location("n1", 1.0, 2.0).await;
    let update = ws.recv().await;
    assert_eq!(update["type"], "location_updated", "{update}");
    assert!(update["data"]["timestamp"].as_str().is_some_and(|t| !t.is_empty()), "{update}");
    gw.shutdown().await;
}
