//! `venta sub` end to end: the binary subscribed to an in-process gateway,
//! updates published for real (`venta publish`, the HTTP API), and each
//! printed line compared with what an ordinary client received.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{GwConfig, TIMEOUT, TestGateway, VENTA, WsClient};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout};

/// A running `venta sub`, its stdout and stderr read line by line.
struct Sub {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
    /// Every stderr line read so far (for failure messages).
    seen: Vec<String>,
}

impl Sub {
    fn spawn(args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new(VENTA)
            .arg("sub")
            .args(args)
            .env_remove("WEBSOCKET_GATEWAY_PORT")
            .env("LOG_LEVEL", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn venta sub");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
        Self { child, stdout, stderr, seen: Vec::new() }
    }

    /// Reads stderr until a line contains `needle`; fails the test if the
    /// stream ends or nothing matches in time.
    async fn stderr_until(&mut self, needle: &str) -> String {
        let wait = async {
            while let Some(line) = self.stderr.next_line().await.expect("read stderr") {
                self.seen.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            None
        };
        let found = tokio::time::timeout(TIMEOUT, wait).await.unwrap_or_else(|_| panic!("no {needle:?} in time"));
        found.unwrap_or_else(|| panic!("venta sub ended without {needle:?}; stderr:\n{}", self.seen.join("\n")))
    }

    /// The next line on stdout, parsed as JSON.
    async fn line(&mut self) -> Value {
        let line = tokio::time::timeout(TIMEOUT, self.stdout.next_line())
            .await
            .expect("no line from venta sub in time")
            .expect("read stdout")
            .unwrap_or_else(|| panic!("venta sub closed stdout; stderr so far:\n{}", self.seen.join("\n")));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("venta sub printed non-JSON {line:?}: {e}"))
    }

    /// Waits for the exit; the exit code and the rest of stderr.
    async fn exit(mut self) -> (Option<i32>, String) {
        let status = tokio::time::timeout(TIMEOUT, self.child.wait()).await.expect("venta sub did not exit");
        while let Ok(Some(line)) = self.stderr.next_line().await {
            self.seen.push(line);
        }
        (status.expect("wait").code(), self.seen.join("\n"))
    }
}

/// Runs `venta publish` to completion; it must succeed.
async fn venta_publish(args: &[&str]) {
    let run = tokio::process::Command::new(VENTA).arg("publish").args(args).kill_on_drop(true).output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("publish hung").expect("run publish");
    assert!(out.status.success(), "venta publish {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A location published over gRPC and vendor data over HTTP reach `venta
/// sub` as the very message an ordinary client gets, one line each, and
/// `--count` ends it with 0.
#[tokio::test]
async fn sub_prints_each_update_as_a_client_receives_it() {
    let gw = TestGateway::start().await;
    let mut ws = WsClient::connect(&gw.url("/ws/location")).await;
    ws.subscribe("location", "subv1").await;
    ws.subscribe("vendor", "subv2").await;
    let url = gw.url("/ws/location");
    let mut sub = Sub::spawn(&["subv1", "subv2", "--channel", "location,vendor", "--url", &url, "--count", "2"]);
    // Four subscribes (two vendors × two channels), each acknowledged.
    for _ in 0..4 {
        sub.stderr_until("[sub] subscribed to").await;
    }
    venta_publish(&["location", "subv1", "--lat", "40.4168", "--long", "-3.7038", "--grpc-url", &gw.grpc_url()]).await;
    let printed = sub.line().await;
    let received = ws.recv().await;
    assert_eq!(printed, received, "the printed line is the update a client got");
    assert_eq!(printed["type"], "location_updated", "{printed}");
    assert_eq!(printed["data"]["vendorId"], "subv1", "{printed}");
    assert_eq!(printed["data"]["location"], json!({"lat": 40.4168, "long": -3.7038}), "{printed}");
    assert!(printed["data"]["timestamp"].is_string(), "{printed}");

    let body = json!({"vendorId": "subv2", "vendor": {"name": "Tacos", "description": "al pastor", "tags": ["x"]}});
    let resp = reqwest::Client::new().post(gw.http("/api/v1/publish/vendor")).json(&body).send().await.expect("post");
    assert_eq!(resp.status(), 202);
    let printed = sub.line().await;
    assert_eq!(printed, ws.recv().await);
    assert_eq!(printed["type"], "vendor_updated", "{printed}");
    assert_eq!(printed["data"]["vendor"], body["vendor"], "{printed}");

    let (code, stderr) = sub.exit().await;
    assert_eq!(code, Some(0), "after --count 2: {stderr}");
    gw.shutdown().await;
}

/// Over WebTransport (the certificate hash fetched from the gateway), with
/// auth on: the token rides as `?token=` and the subscribes carry its `sub`.
#[tokio::test]
async fn sub_over_webtransport_with_a_token() {
    let secret = "sub-test-secret-0123456789abcdef";
    let gw = TestGateway::start_with(GwConfig::new().jwt_secret(secret)).await;
    let token = common::dev_token(secret, "sub-user");
    let (url, http) = (gw.wt_url("/wt/location"), gw.http(""));
    let mut sub = Sub::spawn(&["subwt", "--url", &url, "--http-url", &http, "--jwt", &token, "--count", "1"]);
    sub.stderr_until("[sub] subscribed to location of subwt").await;
    gw.publish_location("subwt", 1.25, 2.5).await;
    let printed = sub.line().await;
    common::assert_server_message(&printed);
    assert_eq!(printed["type"], "location_updated", "{printed}");
    assert_eq!(printed["data"]["location"], json!({"lat": 1.25, "long": 2.5}), "{printed}");
    let (code, stderr) = sub.exit().await;
    assert_eq!(code, Some(0), "{stderr}");
    gw.shutdown().await;
}

/// A subscribe the gateway refuses (a `userId` that is not the token's)
/// fails the command with the gateway's answer, instead of waiting.
#[tokio::test]
async fn a_refused_subscribe_exits_1_with_the_gateways_answer() {
    let secret = "sub-test-secret-0123456789abcdef";
    let gw = TestGateway::start_with(GwConfig::new().jwt_secret(secret)).await;
    let token = common::dev_token(secret, "sub-user");
    let url = gw.url("/ws/location");
    let sub = Sub::spawn(&["subv1", "--url", &url, "--jwt", &token, "--user", "someone-else"]);
    let (code, stderr) = sub.exit().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("refused the subscribe"), "{stderr}");
    gw.shutdown().await;
}

/// The gateway going away ends `venta sub` with 1 and the close it sent;
/// SIGTERM ends it with 0.
#[tokio::test]
async fn a_closed_session_exits_1_and_a_signal_exits_0() {
    let gw = TestGateway::start().await;
    let url = gw.url("/ws/location");
    let mut by_signal = Sub::spawn(&["subv1", "--url", &url]);
    let mut by_close = Sub::spawn(&["subv1", "--url", &url]);
    by_signal.stderr_until("[sub] subscribed to location of subv1").await;
    by_close.stderr_until("[sub] subscribed to location of subv1").await;

    let pid = by_signal.child.id().expect("pid").to_string();
    let st = std::process::Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    assert!(st.success());
    let (code, stderr) = by_signal.exit().await;
    assert_eq!(code, Some(0), "SIGTERM: {stderr}");

    gw.shutdown().await;
    let (code, stderr) = by_close.exit().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("closed by server: 1001"), "{stderr}");
}

/// Nothing listening: an error naming the URL, exit 1, at once.
#[tokio::test]
async fn an_unreachable_gateway_exits_1() {
    let url = format!("ws://127.0.0.1:{}/ws/location", common::free_port());
    let (code, stderr) = Sub::spawn(&["subv1", "--url", &url]).exit().await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains(&url), "{stderr}");
}

#[test]
fn bad_options_exit_2() {
    for args in [&["sub"][..], &["sub", "v1", "--count", "0"], &["sub", "v1", "--channel", "weather"]] {
        let out = std::process::Command::new(VENTA).args(args).output().expect("run");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let help = std::process::Command::new(VENTA).args(["sub", "--help"]).output().expect("help");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for needle in ["--channel", "--count", "--jwt", "--wt-cert-hash", "WEBSOCKET_GATEWAY_PORT", "one JSON line"] {
        assert!(help.contains(needle), "sub --help lacks {needle:?}:\n{help}");
    }
}

/// `--bbox` alone: an area subscription whose snapshot, entered, move and
/// left are printed as a client receives them.
#[tokio::test]
async fn sub_follows_an_area() {
    let gw = TestGateway::start().await;
    gw.publish_location("inside", 40.4169, -3.7035).await;
    let url = gw.url("/ws/location");
    let mut sub = Sub::spawn(&["--bbox", "40.408,-3.715,40.426,-3.691", "--url", &url, "--count", "4"]);
    sub.stderr_until("[sub] subscribed to area of venta-sub").await;
    let snapshot = sub.line().await;
    common::assert_server_message(&snapshot);
    assert_eq!(snapshot["type"], "area_snapshot", "{snapshot}");
    assert_eq!(snapshot["data"]["vendors"][0]["vendorId"], "inside", "{snapshot}");
    gw.publish_location("comes", 40.42, -3.70).await;
    gw.publish_location("inside", 40.418, -3.7035).await;
    gw.publish_location("inside", 41.0, -3.7).await;
    let mut types = Vec::new();
    for _ in 0..3 {
        let m = sub.line().await;
        common::assert_server_message(&m);
        types.push(m["type"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(types, ["vendor_entered", "location_updated", "vendor_left"]);
    let (code, stderr) = sub.exit().await;
    assert_eq!(code, Some(0), "{stderr}");
    gw.shutdown().await;
}
