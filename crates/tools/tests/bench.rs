//! `venta bench` end to end: the binary against an in-process
//! gateway, with small numbers, publishing over HTTP, NATS and gRPC. The
//! assertions are on accounting (every expected delivery arrived once) and
//! on the shape of the result, never on timing.

mod common;

use std::time::Duration;

use common::{GwConfig, MACHINE_NATS, TestGateway, VENTA, require_machine_nats, unique_prefix};
use serde_json::Value;

/// Runs the bench binary; returns (exit success, last stdout line as JSON, stderr).
async fn bench(args: &[String]) -> (bool, Value, String) {
    let run = tokio::process::Command::new(VENTA)
        .arg("bench")
        .args(args)
        .env("LOG_LEVEL", "warn")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run).await.expect("bench timed out").expect("spawn bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let line = stdout.lines().last().unwrap_or_else(|| panic!("bench printed nothing; stderr:\n{stderr}"));
    let v: Value =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("bench printed non-JSON {line}: {e}\n{stderr}"));
    (out.status.success(), v, stderr)
}

fn small(gw: &TestGateway) -> Vec<String> {
    small_at(&gw.url("/ws/location"))
}

/// The small run over WebTransport: the session URL on the gateway's UDP
/// port; the certificate hash is fetched from `--http-url`.
fn small_wt(gw: &TestGateway) -> Vec<String> {
    let mut args = small_at(&gw.wt_url("/wt/location"));
    args.extend(["--transport", "webtransport", "--via", "http", "--http-url", &gw.http("")].map(str::to_owned));
    args
}

/// A minimal run whose clients are all expected to fail to connect.
fn doomed(url: &str, gw: &TestGateway) -> Vec<String> {
    ["--url", url, "--http-url", &gw.http(""), "--conns", "5", "--rates", "10", "--duration", "1", "--settle-ms", "0"]
        .map(str::to_owned)
        .to_vec()
}

fn small_at(url: &str) -> Vec<String> {
    [
        "--url",
        url,
        "--conns",
        "50",
        "--vendors",
        "5",
        "--rates",
        "50",
        "--duration",
        "2",
        "--settle-ms",
        "200",
        "--pid",
        &std::process::id().to_string(),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Everything connected, every step delivered exactly what was owed, and
/// the latency percentiles are there and ordered.
fn assert_clean(v: &Value, stderr: &str) {
    assert_eq!(v["connected"], 50, "{v}\n{stderr}");
    assert_eq!(v["ready"], 50, "{v}");
    assert_eq!(v["ok"], true, "{v}\n{stderr}");
    let steps = v["steps"].as_array().expect("steps");
    assert_eq!(steps.len(), 1, "{v}");
    let s = &steps[0];
    // 2 s × 50 updates/s, each to the 10 subscribers of its vendor.
    assert_eq!(s["published"], 100, "{s}");
    assert_eq!(s["expected"], 1000, "{s}");
    assert_eq!(s["received"], s["expected"], "{s}");
    assert_eq!(
        (&s["lost"], &s["dup"], &s["wrong_vendor"], &s["unparsed"]),
        (&0.into(), &0.into(), &0.into(), &0.into())
    );
    let lat = &s["lat_ms"];
    let q: Vec<f64> =
        ["p50", "p90", "p99", "p999", "max"].iter().map(|k| lat[*k].as_f64().expect("percentile")).collect();
    assert!(q[0] > 0.0 && q.windows(2).all(|w| w[0] <= w[1]), "{lat}");
    assert_eq!(lat["count"], 1000);
    assert!(v["rss_kib"]["ready"].as_u64().is_some_and(|k| k > 0), "{v}");
    assert!(stderr.contains("[bench"), "no progress on stderr: {stderr}");
}

#[tokio::test]
async fn bench_over_http() {
    let gw = TestGateway::start().await;
    let mut args = small(&gw);
    args.extend(["--via".into(), "http".into(), "--http-url".into(), gw.http("")]);
    let (ok, v, stderr) = bench(&args).await;
    assert!(ok, "{stderr}");
    assert_clean(&v, &stderr);
    assert_eq!(v["via"], "http");
    gw.shutdown().await;
}

#[tokio::test]
async fn bench_over_nats() {
    require_machine_nats();
    let prefix = unique_prefix();
    let gw = TestGateway::start_with(GwConfig::new().nats(MACHINE_NATS, &prefix)).await;
    let mut args = small(&gw);
    // Two source addresses (both loopback) exercise --src-ips.
    args.extend(
        [
            "--via",
            "nats",
            "--nats-url",
            MACHINE_NATS,
            "--nats-subject-prefix",
            &prefix,
            "--src-ips",
            "127.0.0.1,127.0.0.2",
        ]
        .map(str::to_owned),
    );
    let (ok, v, stderr) = bench(&args).await;
    assert!(ok, "{stderr}");
    assert_clean(&v, &stderr);
    assert_eq!(v["via"], "nats");
    gw.shutdown().await;
}

#[tokio::test]
async fn bench_over_grpc_with_client_tokens_and_an_ingest_token() {
    let secret = "bench-test-secret-0123456789";
    let config = GwConfig::new().jwt_secret(secret).max_connections_per_user(100).ingest_token("ingest-secret");
    let gw = TestGateway::start_with(config).await;
    let token = common::dev_token(secret, "bench-user");
    let mut args = small(&gw);
    args.extend(
        [
            "--via",
            "grpc",
            "--grpc-url",
            &format!("http://{}", gw.grpc_addr),
            "--jwt",
            &token,
            "--ingest-token",
            "ingest-secret",
            // The multi-threaded runtime (sharded histograms) too.
            "--threads",
            "2",
        ]
        .map(str::to_owned),
    );
    let (ok, v, stderr) = bench(&args).await;
    assert!(ok, "{stderr}");
    assert_clean(&v, &stderr);
    gw.shutdown().await;
}

#[tokio::test]
async fn refused_connections_are_counted_and_the_rest_measured() {
    let gw = TestGateway::start_with(GwConfig::new().max_connections(20)).await;
    let mut args = small(&gw);
    args.extend(["--via".into(), "http".into(), "--http-url".into(), gw.http(""), "--step-retries".into(), "0".into()]);
    let (ok, v, stderr) = bench(&args).await;
    assert!(ok, "the run completed, so the exit status is 0: {stderr}");
    assert_eq!((&v["connected"], &v["connect_failed"], &v["ok"]), (&20.into(), &30.into(), &false.into()), "{v}");
    let errors = v["connect_errors"].as_object().expect("errors");
    assert!(errors.keys().any(|k| k.contains("503") || k.contains("1013")), "{v}");
    // The clients that did connect still get every update they are owed.
    let s = &v["steps"][0];
    assert_eq!(s["received"], s["expected"], "{s}");
    assert_eq!(s["lost"], 0, "{s}");
    gw.shutdown().await;
}

#[tokio::test]
async fn bench_over_webtransport_streams() {
    let gw = TestGateway::start().await;
    let (ok, v, stderr) = bench(&small_wt(&gw)).await;
    assert!(ok, "{stderr}");
    assert_clean(&v, &stderr);
    assert_eq!((&v["transport"], &v["wt_delivery"]), (&"webtransport".into(), &"stream".into()), "{v}");
    assert!(v["url"].as_str().is_some_and(|u| u.starts_with("https://")), "{v}");
    let status: Value = reqwest::get(gw.http("/ws/status")).await.expect("status").json().await.expect("json");
    assert_eq!(status["connections"]["byTransport"]["webtransport"], 50, "{status}");
    gw.shutdown().await;
}

/// Datagram delivery, with auth on: the token rides as `?token=` and the
/// subscribes carry its `sub`; the gateway really sent datagrams.
#[tokio::test]
async fn bench_over_webtransport_datagrams_with_a_token() {
    let secret = "bench-test-secret-0123456789";
    let gw = TestGateway::start_with(GwConfig::new().jwt_secret(secret).max_connections_per_user(100)).await;
    let token = common::dev_token(secret, "bench-user");
    let mut args = small_wt(&gw);
    // `--token`: the old spelling of `--jwt`, kept as an alias.
    args.extend(["--wt-delivery", "datagram", "--token", &token].map(str::to_owned));
    let (ok, v, stderr) = bench(&args).await;
    assert!(ok, "{stderr}");
    assert_clean(&v, &stderr);
    assert_eq!(v["wt_delivery"], "datagram", "{v}");
    let metrics = reqwest::get(gw.http("/metrics")).await.expect("metrics").text().await.expect("text");
    let sent = metrics
        .lines()
        .find_map(|l| l.strip_prefix("venta_webtransport_datagrams_total{outcome=\"sent\"}"))
        .and_then(|n| n.trim().parse::<f64>().ok());
    // At least the step's 1000 deliveries (plus the readiness probe's).
    assert!(sent.is_some_and(|n| n >= 1000.0), "datagrams sent: {sent:?}");
    gw.shutdown().await;
}

/// Over WS_MAX_CONNECTIONS the gateway accepts the session and closes it
/// with 1013: the bench reports that code, and measures the rest.
#[tokio::test]
async fn refused_webtransport_sessions_report_the_close_code() {
    let gw = TestGateway::start_with(GwConfig::new().max_connections(20)).await;
    let mut args = small_wt(&gw);
    args.extend(["--step-retries", "0"].map(str::to_owned));
    let (ok, v, stderr) = bench(&args).await;
    assert!(ok, "{stderr}");
    assert_eq!((&v["connected"], &v["connect_failed"], &v["ok"]), (&20.into(), &30.into(), &false.into()), "{v}");
    let errors = v["connect_errors"].as_object().expect("errors");
    assert!(errors.keys().all(|k| k.contains("1013")), "{v}");
    let s = &v["steps"][0];
    assert_eq!(s["received"], s["expected"], "{s}");
    assert_eq!((&s["lost"], &s["dup"]), (&0.into(), &0.into()), "{s}");
    gw.shutdown().await;
}

/// A pinned hash that is not the gateway's: every handshake fails, is
/// counted, and the run ends instead of waiting.
#[tokio::test]
async fn a_wrong_certificate_hash_is_refused_and_counted() {
    let gw = TestGateway::start().await;
    let mut args = doomed(&gw.wt_url("/wt/location"), &gw);
    args.extend(["--transport", "wt", "--wt-cert-hash", &"ab".repeat(32)].map(str::to_owned));
    let (ok, v, stderr) = bench(&args).await;
    assert!(ok, "{stderr}");
    assert_eq!((&v["connected"], &v["connect_failed"], &v["ok"]), (&0.into(), &5.into(), &false.into()), "{v}");
    assert!(v["connect_errors"].as_object().is_some_and(|e| e.keys().all(|k| k.starts_with("connect:"))), "{v}");
    gw.shutdown().await;
}

#[test]
fn help_names_both_transports_and_lists_the_scenarios() {
    let out = std::process::Command::new(VENTA).args(["bench", "--help"]).output().expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in
        ["webtransport", "--wt-cert-hash", "--wt-delivery", "--scenario", "s1", "s2", "s3", "--rates", "--via"]
    {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}

#[tokio::test]
async fn an_unreachable_gateway_is_reported_not_waited_for() {
    let port = common::free_port();
    let gw = TestGateway::start().await;
    let args = doomed(&format!("ws://127.0.0.1:{port}/ws/location"), &gw);
    let (ok, v, stderr) = bench(&args).await;
    assert!(ok, "{stderr}");
    assert_eq!((&v["connected"], &v["connect_failed"], &v["ok"]), (&0.into(), &5.into(), &false.into()), "{v}");
    assert!(v["connect_errors"].as_object().is_some_and(|e| e.keys().any(|k| k.starts_with("tcp:"))), "{v}");
    assert_eq!(v["steps"], serde_json::json!([]), "{v}");
    assert!(v["broke"].as_str().is_some_and(|b| b.contains("no client connected")), "{v}");
    gw.shutdown().await;
}

#[test]
fn bad_options_exit_2_with_a_message() {
    let out = std::process::Command::new(VENTA).args(["bench", "--conns", "0"]).output().expect("run bench");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--conns"));
}

/// The gateway's own variables reach the bench: NATS_URL and
/// NATS_SUBJECT_PREFIX (no flags), with the old `--nats`/`--prefix`
/// spellings still accepted.
#[tokio::test]
async fn bench_over_nats_honours_the_gateways_variables() {
    require_machine_nats();
    let prefix = unique_prefix();
    let gw = TestGateway::start_with(GwConfig::new().nats(MACHINE_NATS, &prefix)).await;
    let mut args = small(&gw);
    args.extend(["--via", "nats"].map(str::to_owned));
    let run = tokio::process::Command::new(VENTA)
        .arg("bench")
        .args(&args)
        .env("NATS_URL", MACHINE_NATS)
        .env("NATS_SUBJECT_PREFIX", &prefix)
        .env("LOG_LEVEL", "warn")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(180), run).await.expect("bench timed out").expect("spawn");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: Value = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert!(out.status.success(), "{stderr}");
    assert_clean(&v, &stderr);
    let mut old = small(&gw);
    old.extend(["--via", "nats", "--nats", MACHINE_NATS, "--prefix", &prefix].map(str::to_owned));
    let (ok, v, stderr) = bench(&old).await;
    assert!(ok, "{stderr}");
    assert_clean(&v, &stderr);
    gw.shutdown().await;
}

/// A preset opens more clients than a default gateway admits: the bench
/// says what to raise before it connects.
#[tokio::test]
async fn a_preset_says_up_front_what_the_gateway_must_admit() {
    let port = common::free_port();
    let gw = TestGateway::start().await;
    let url = format!("ws://127.0.0.1:{port}/ws/location");
    let args = ["--scenario", "s2", "--url", &url, "--http-url", &gw.http(""), "--rates", "10", "--duration", "1"]
        .map(str::to_owned);
    let (ok, v, stderr) = bench(&args).await;
    assert!(ok, "{stderr}");
    assert_eq!(v["conns"], 2000, "{v}");
    let note = stderr.lines().position(|l| l.contains("WS_MAX_CONNECTIONS=2000 or more"));
    let connecting = stderr.lines().position(|l| l.contains("connect at"));
    assert!(note.is_some(), "no note on what to raise:\n{stderr}");
    assert!(connecting.is_none_or(|c| note < Some(c)), "the note came after connecting:\n{stderr}");
    gw.shutdown().await;
}

/// At the first 1013 (gateway full) the bench stops connecting, says which
/// limit to raise, and counts the untried clients instead of trying each.
#[tokio::test]
async fn the_first_1013_stops_the_connect_phase_with_a_clear_message() {
    let gw = TestGateway::start_with(GwConfig::new().max_connections(5)).await;
    let mut args = small(&gw);
    args.extend(
        ["--via", "http", "--http-url", &gw.http(""), "--connect-concurrency", "1", "--step-retries", "0"]
            .map(str::to_owned),
    );
    let (ok, v, stderr) = bench(&args).await;
    assert!(ok, "{stderr}");
    assert_eq!((&v["connected"], &v["connect_failed"]), (&5.into(), &45.into()), "{v}");
    let errors = v["connect_errors"].as_object().expect("errors");
    let refused: u64 =
        errors.iter().filter(|(k, _)| k.starts_with("closed before the ack")).filter_map(|(_, n)| n.as_u64()).sum();
    let untried: u64 =
        errors.iter().filter(|(k, _)| k.starts_with("not attempted")).filter_map(|(_, n)| n.as_u64()).sum();
    assert_eq!((refused, untried), (1, 44), "{v}");
    assert!(
        stderr.contains("it is at WS_MAX_CONNECTIONS. No more connections are tried") && stderr.contains("at least 50"),
        "{stderr}"
    );
    // The five that connected are still measured.
    let s = &v["steps"][0];
    assert_eq!((&s["received"], &s["lost"]), (&s["expected"], &0.into()), "{s}");
    gw.shutdown().await;
}

/// `--scenario s4` at a small scale against an in-process gateway (areas
/// indexed in process, updates over HTTP): every phase ran, areas got
/// deliveries and pans, the per-vendor phase lost nothing, and every area
/// converged to the truth, vendors on edges included.
#[tokio::test]
async fn s4_areas_converge_at_a_small_scale() {
    let gw = TestGateway::start().await;
    let args = [
        "--scenario",
        "s4",
        "--via",
        "http",
        "--url",
        &gw.url("/ws/location"),
        "--http-url",
        &gw.http(""),
        "--conns",
        "100",
        "--vendors",
        "200",
        "--rates",
        "200",
        "--duration",
        "3",
        "--location-conns",
        "50",
        "--follow",
        "2",
        "--city-km",
        "5",
        "--pan-fraction",
        "0.2",
        "--pan-every-ms",
        "500",
        "--edge-fraction",
        "0.1",
        "--settle-ms",
        "200",
        "--pid",
        &std::process::id().to_string(),
    ]
    .map(str::to_owned);
    let (ok, v, stderr) = bench(&args).await;
    assert!(ok, "{stderr}");
    assert_eq!((&v["scenario"], &v["via"], &v["connected"]), (&"s4".into(), &"http".into(), &100.into()), "{v}");
    assert_eq!(v["ok"], true, "{v}\n{stderr}");
    let names: Vec<&str> = v["steps"].as_array().expect("steps").iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(names, ["baseline", "location", "area"], "{v}");
    let loc = &v["steps"][1];
    assert_eq!((&loc["connected"], &loc["lost"], &loc["dup"]), (&50.into(), &0.into(), &0.into()), "{loc}");
    // 600 updates, each followed by the one client of its vendor (50 × 2 of 200).
    assert_eq!((&loc["published"], &loc["expected"]), (&600.into(), &300.into()), "{loc}");
    let area = &v["area"];
    assert!(area["deliveries_per_s"].as_f64().is_some_and(|d| d > 0.0), "{area}");
    assert!(area["lat_ms"]["location_updated"]["count"].as_u64().is_some_and(|n| n > 0), "{area}");
    assert!(area["pans"]["acked"].as_u64().is_some_and(|n| n > 0), "{area}");
    assert_eq!(area["violations"], 0, "{area}");
    let conv = &v["convergence"]["details"];
    assert_eq!((&conv["clients_checked"], &conv["clients_mismatched"]), (&100.into(), &0.into()), "{conv}");
    assert_eq!(conv["vendors_mismatched"], 0, "{conv}");
    assert!(conv["vendors_inside_total"].as_u64().is_some_and(|n| n > 100), "{conv}");
    assert!(conv["vendors_on_an_edge"].as_u64().is_some_and(|n| n > 0), "edges were not exercised: {conv}");
    assert!(v["comparison"]["ratio"].as_f64().is_some(), "{v}");
    assert!(stderr.contains("[bench s4"), "no progress lines: {stderr}");
    gw.shutdown().await;
}
