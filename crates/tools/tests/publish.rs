//! `venta publish` end to end: the binary against an in-process gateway,
//! over gRPC, HTTP and NATS, with flags and with only the variables a
//! gateway's shell has; what a client receives is the update published.

mod common;

use std::time::Duration;

use common::{GwConfig, MACHINE_NATS, TestGateway, VENTA, WsClient, require_machine_nats, unique_prefix};
use serde_json::json;

/// `venta publish` with only the environment a gateway shell has
/// (async: the gateway under test shares this runtime).
async fn publish_cli(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new(VENTA);
    cmd.kill_on_drop(true);
    for var in ["NATS_URL", "NATS_SUBJECT_PREFIX", "GRPC_PORT", "WEBSOCKET_GATEWAY_PORT", "INGEST_TOKEN"] {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let run = cmd.arg("publish").args(args).output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("publish hung").expect("run publish");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// NATS_URL / NATS_SUBJECT_PREFIX / GRPC_PORT / WEBSOCKET_GATEWAY_PORT /
/// INGEST_TOKEN as the gateway reads them: a publish needs no flags to
/// reach the gateway they describe.
#[tokio::test]
async fn publish_honours_the_gateways_variables() {
    require_machine_nats();
    let prefix = unique_prefix();
    let config = GwConfig::new().nats(MACHINE_NATS, &prefix).ingest_token("cli-ingest-token");
    let gw = TestGateway::start_with(config).await;
    common::wait_until("gateway ready", async || gw.is_ready().await).await;
    let mut ws = WsClient::connect(&gw.url("/ws/location")).await;
    ws.subscribe("location", "env1").await;
    let grpc_port = gw.grpc_addr.port().to_string();
    let http_port = gw.addr.port().to_string();
    let env = [
        ("NATS_URL", MACHINE_NATS),
        ("NATS_SUBJECT_PREFIX", prefix.as_str()),
        ("GRPC_PORT", grpc_port.as_str()),
        ("WEBSOCKET_GATEWAY_PORT", http_port.as_str()),
        ("INGEST_TOKEN", "cli-ingest-token"),
    ];
    for (i, via) in ["grpc", "http", "nats"].into_iter().enumerate() {
        let lat = format!("{i}.5");
        let (ok, stdout, stderr) =
            publish_cli(&["location", "env1", "--lat", &lat, "--long", "1", "--via", via], &env).await;
        assert!(ok, "{via}: {stdout}{stderr}");
        assert!(!stderr.contains("warning"), "{via}: {stderr}");
        let u = ws.recv().await;
        assert_eq!(u["data"]["location"], json!({"lat": i as f64 + 0.5, "long": 1.0}), "via {via}");
    }
    let (_, stdout, _) = publish_cli(&["location", "env1", "--lat", "0", "--long", "0", "--via", "nats"], &env).await;
    assert!(stdout.contains(&format!("{prefix}.location.env1")), "the subject is named: {stdout}");
    ws.recv().await;
    // The same with the flags, and with the old spellings (hidden aliases).
    let grpc_url = gw.grpc_url();
    let (ok, out, err) = publish_cli(
        &[
            "location",
            "env1",
            "--lat",
            "7",
            "--long",
            "7",
            "--grpc-url",
            &grpc_url,
            "--ingest-token",
            "cli-ingest-token",
        ],
        &[],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert_eq!(ws.recv().await["data"]["location"]["lat"], 7.0);
    let (ok, out, err) = publish_cli(
        &["location", "env1", "--lat", "8", "--long", "8", "--grpc-url", &grpc_url, "--token", "cli-ingest-token"],
        &[],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert_eq!(ws.recv().await["data"]["location"]["lat"], 8.0);
    let (ok, out, err) = publish_cli(
        &["location", "env1", "--lat", "9", "--long", "9", "--via", "nats"]
            .into_iter()
            .chain(["--to-nats", MACHINE_NATS, "--prefix", &prefix])
            .collect::<Vec<_>>(),
        &[],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert_eq!(ws.recv().await["data"]["location"]["lat"], 9.0);
    gw.shutdown().await;
}

/// A NATS publish no gateway takes (here: another subject prefix) names the
/// subject and warns that nothing subscribes, instead of a bare success.
#[tokio::test]
async fn publish_over_nats_says_when_nothing_subscribes() {
    require_machine_nats();
    let prefix = unique_prefix();
    let gw = TestGateway::start_with(GwConfig::new().nats(MACHINE_NATS, &prefix)).await;
    let mut ws = WsClient::connect(&gw.url("/ws/location")).await;
    ws.subscribe("location", "lost1").await;
    let other = unique_prefix();
    let env = [("NATS_URL", MACHINE_NATS), ("NATS_SUBJECT_PREFIX", other.as_str())];
    let (_, stdout, stderr) =
        publish_cli(&["location", "lost1", "--lat", "1", "--long", "1", "--via", "nats"], &env).await;
    assert!(stdout.contains(&format!("{other}.location.lost1")), "{stdout}");
    assert!(stderr.contains("warning: nothing") && stderr.contains("NATS_SUBJECT_PREFIX"), "{stderr}");
    ws.send_json(json!({"type": "ping", "id": "end"})).await;
    assert_eq!(ws.recv().await["id"], "end", "nothing was delivered");
    gw.shutdown().await;
}

/// The ingest bearer from `publish --via http` with a lower-case scheme
/// and over gRPC with the environment's INGEST_TOKEN is covered above; a
/// missing token is refused with 401 over HTTP and UNAUTHENTICATED over
/// gRPC, and the CLI says so (non-zero exit).
#[tokio::test]
async fn publish_without_the_ingest_token_fails_loudly() {
    let gw = TestGateway::start_with(GwConfig::new().ingest_token("needed-token")).await;
    let grpc_url = gw.grpc_url();
    let http_url = gw.http("");
    for via in ["grpc", "http"] {
        let (ok, out, err) = publish_cli(
            &[
                "location",
                "v1",
                "--lat",
                "1",
                "--long",
                "1",
                "--via",
                via,
                "--grpc-url",
                &grpc_url,
                "--http-url",
                &http_url,
            ],
            &[],
        )
        .await;
        assert!(!ok, "{via}: {out}");
        assert!(err.contains("INGEST_TOKEN"), "{via}: {err}");
    }
    gw.shutdown().await;
}

#[tokio::test]
async fn cli_publish_works_over_grpc_http_and_nats() {
    require_machine_nats();
    let prefix = unique_prefix();
    let gw = TestGateway::start_with(GwConfig::new().nats(MACHINE_NATS, &prefix)).await;
    let mut ws = WsClient::connect(&gw.url("/ws/location")).await;
    ws.subscribe("location", "cli1").await;
    ws.subscribe("vendor", "cli1").await;
    let run = async |args: &[&str]| {
        let (ok, stdout, stderr) = publish_cli(
            &args
                .iter()
                .copied()
                .chain(["--grpc-url", &gw.grpc_url(), "--http-url", &gw.http(""), "--prefix", &prefix])
                .chain(["--nats-url", MACHINE_NATS])
                .collect::<Vec<_>>(),
            &[],
        )
        .await;
        assert!(ok, "{args:?}: {stdout} {stderr}");
        stdout
    };
    for (i, via) in ["grpc", "http", "nats"].iter().enumerate() {
        let lat = format!("{}.5", i + 1);
        let said = run(&["location", "cli1", "--lat", &lat, "--long", "-7.25", "--via", via]).await;
        assert!(said.contains("published"), "{said}");
        let u = ws.recv().await;
        assert_eq!(u["data"]["location"], json!({"lat": (i + 1) as f64 + 0.5, "long": -7.25}), "via {via}");
    }
    run(&["vendor", "cli1", "--json", r#"{"name":"Tacos","tags":["a"]}"#]).await;
    assert_eq!(ws.recv().await["data"]["vendor"], json!({"name": "Tacos", "tags": ["a"]}));
    // Bad input is refused before anything is sent.
    let (ok, _, stderr) = publish_cli(&["location", "cli1", "--lat", "95", "--long", "0"], &[]).await;
    assert!(!ok);
    assert!(stderr.contains("location.lat"), "{stderr}");
    gw.shutdown().await;
}

/// `venta publish` parses only its own options: the gateway variables it
/// shares by name are documented in its help.
#[test]
fn publish_help_names_the_gateways_variables() {
    let help = std::process::Command::new(VENTA).args(["publish", "--help"]).output().expect("help");
    assert!(help.status.success());
    let help = String::from_utf8_lossy(&help.stdout);
    for var in ["NATS_SUBJECT_PREFIX", "NATS_URL", "GRPC_PORT", "WEBSOCKET_GATEWAY_PORT", "INGEST_TOKEN"] {
        assert!(help.contains(var), "publish --help lacks {var}:\n{help}");
    }
}
