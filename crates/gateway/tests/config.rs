//! Configuration fails loudly: every bad value exits 2 naming the variable
//! (and the value, unless it is a secret), and no credential reaches a log
//! at any level.

mod common;

use std::io::Read as _;
use std::process::{Command, Stdio};

use common::wt::WtClient;
use common::{free_port, free_udp_port};

fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_venta-gateway"));
    // Never a real port or file of the machine's: these must fail before.
    cmd.env("WEBSOCKET_GATEWAY_PORT", free_port().to_string())
        .env("GRPC_PORT", free_port().to_string())
        .env("WT_PORT", "0")
        .env("BIND_ADDR", "127.0.0.1");
    cmd
}

fn run(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = common::nats::tempdir::Dir::new();
    let mut cmd = bin();
    cmd.env("AUDIT_JOURNAL_DIR", dir.0.join("journal")).env("AUDIT_SQLITE_PATH", dir.0.join("audit.db"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdout(Stdio::null()).output().expect("run the gateway");
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_values_exit_2_naming_the_variable_and_the_value() {
    for (var, value) in [
        ("LOG_LEVEL", "verbose"),
        ("GATEWAY_ENV", "staging"),
        ("DATABASE_URL", "mysql://127.0.0.1/venta"),
        ("REDIS_URL", "notaurl"),
        ("NATS_URL", "nats://127.0.0.1:4222,nats://127.0.0.1:notaport"),
        ("WS_ALLOWED_ORIGINS", "app.example.com"),
        ("HTTP_HEADER_TIMEOUT_MS", "5"),
    ] {
        let (code, err) = run(&[(var, value)]);
        assert_eq!(code, Some(2), "{var}={value}: {err}");
        assert!(err.contains(var), "{var}={value}: {err}");
        let shown = value.split(',').next_back().unwrap_or(value);
        assert!(err.contains(shown), "{var}={value} not named: {err}");
    }
}

#[test]
fn production_refuses_to_start_without_auth_and_prod_means_production() {
    for env in ["production", "prod", "PRODUCTION"] {
        let (code, err) = run(&[("GATEWAY_ENV", env)]);
        assert_eq!(code, Some(2), "GATEWAY_ENV={env}: {err}");
        assert!(err.contains("JWT_SECRET"), "GATEWAY_ENV={env}: {err}");
    }
}

#[test]
fn a_short_secret_exits_2_without_printing_it() {
    let (code, err) = run(&[("JWT_SECRET", "hunter2-short")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("JWT_SECRET") && err.contains("16 bytes"), "{err}");
    assert!(!err.contains("hunter2"), "the secret was printed: {err}");
}

#[test]
fn a_database_password_is_never_printed() {
    let (code, err) = run(&[("DATABASE_URL", "mysql://root:s3cr3t-pw@127.0.0.1/venta")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(!err.contains("s3cr3t-pw"), "the password was printed: {err}");
}

#[test]
fn a_port_in_use_is_one_line_and_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let (code, err) = run(&[("WEBSOCKET_GATEWAY_PORT", &port), ("LOG_LEVEL", "error")]);
    assert_eq!(code, Some(1), "{err}");
    let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line: {err}"));
    assert_eq!(line.matches("in use").count(), 1, "repeated: {line}");
}

/// wtransport logs the CONNECT `:path` (with `?token=`) at debug; the
/// gateway caps it, and its own lines never carry the query.
#[tokio::test]
async fn no_token_in_the_logs_at_trace_level() {
    let secret = "log-test-secret-0123456789abcdef";
    let token = venta_gateway::auth::dev_token(secret, "u1", 600).expect("token");
    let port = free_port();
    let wt_port = free_udp_port();
    let dir = common::nats::tempdir::Dir::new();
    let mut child = bin()
        .env("WEBSOCKET_GATEWAY_PORT", port.to_string())
        .env("WT_PORT", wt_port.to_string())
        .env("JWT_SECRET", secret)
        .env("LOG_LEVEL", "trace")
        .env("AUDIT_JOURNAL_DIR", dir.0.join("journal"))
        .env("AUDIT_SQLITE_PATH", dir.0.join("audit.db"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let http = format!("http://127.0.0.1:{port}");
    common::wait_until("the gateway to be ready", async || {
        reqwest::get(format!("{http}/health/ready")).await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let hash = common::wt::cert_hash(&http).await;
    let hash = hash["value"].as_str().expect("hash").to_owned();
    for path in ["/wt/location", "/wt/nowhere"] {
        let url = format!("https://127.0.0.1:{wt_port}{path}?token={token}");
        if path == "/wt/location" {
            let mut c = WtClient::connect_url(&url, &[&hash]).await;
            c.sync("1").await;
        } else {
            let _ = common::wt::connect(&url, &[&hash]).await;
        }
    }
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(st.success());
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status:?}");
    let log = log.join().expect("log thread");
    assert!(log.lines().count() > 20, "trace logging printed almost nothing:\n{log}");
    let signature = token.rsplit('.').next().unwrap_or(&token);
    assert!(!log.contains(signature), "the token reached the log");
}

/// The subcommands parse only their own options: a gateway variable that
/// would stop the gateway does not stop them.
#[test]
fn subcommands_ignore_settings_that_only_the_gateway_uses() {
    let out = Command::new(env!("CARGO_BIN_EXE_venta-gateway"))
        .args(["gentoken", "--sub", "u1"])
        .env("JWT_SECRET", "subcommand-secret-0123456789")
        .env("WS_HEARTBEAT_INTERVAL", "5")
        .env("LOG_LEVEL", "verbose")
        .env("DATABASE_URL", "mysql://nowhere")
        .output()
        .expect("run gentoken");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().split('.').count(), 3, "not a JWT");
}

/// `bench` and `publish` moved to the `venta` tool (crates/tools, where
/// their tests are): the server binary says so instead of a parse error.
#[test]
fn moved_subcommands_point_at_the_venta_tool() {
    for (args, to) in [(&["bench", "--scenario", "s1"][..], "venta bench"), (&["publish", "--help"], "venta publish")] {
        let out = Command::new(env!("CARGO_BIN_EXE_venta-gateway")).args(args).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(to) && err.contains("crates/tools"), "{args:?}: {err}");
    }
}

#[test]
fn bad_geo_settings_exit_2_naming_the_variable_and_the_value() {
    for (var, value) in [
        ("GEO_VENDOR_TTL", "0"),
        ("GEO_VENDOR_TTL", "soon"),
        ("GEO_MAX_AREAS", "0"),
        ("GEO_MAX_AREA_KM", "0"),
        ("GEO_MAX_AREA_KM", "NaN"),
        ("GEO_MAX_AREA_KM", "20001"),
        ("GEO_SNAPSHOT_MAX", "10001"),
    ] {
        let (code, err) = run(&[(var, value)]);
        assert_eq!(code, Some(2), "{var}={value}: {err}");
        assert!(err.contains(var) && err.contains(value), "{var}={value} not named: {err}");
    }
}

/// `--help` groups settings by subsystem, in this order; the area
/// subscription settings have their own heading.
#[test]
fn help_groups_the_settings_and_lists_the_geo_ones_under_their_heading() {
    let out = Command::new(env!("CARGO_BIN_EXE_venta-gateway")).arg("--help").output().expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let headings: Vec<&str> =
        help.lines().filter(|l| !l.starts_with(' ') && l.ends_with(':')).map(|l| l.trim_end_matches(':')).collect();
    assert_eq!(
        headings,
        [
            "Commands",
            "Options",
            "Listeners",
            "WebTransport",
            "Clients and limits",
            "Area subscriptions",
            "HTTP",
            "Auth and tokens",
            "Redis",
            "NATS",
            "Audit trail",
            "Lifecycle and logs",
        ],
        "{help}"
    );
    let section = help.split("\nArea subscriptions:\n").nth(1).and_then(|s| s.split("\nHTTP:\n").next()).unwrap_or("");
    for (var, default) in
        [("GEO_VENDOR_TTL", "300"), ("GEO_MAX_AREAS", "8"), ("GEO_MAX_AREA_KM", "50"), ("GEO_SNAPSHOT_MAX", "500")]
    {
        let flag = format!("--{} <{var}>", var.to_ascii_lowercase().replace('_', "-"));
        let at = section.find(&flag).unwrap_or_else(|| panic!("{flag} not under Area subscriptions:\n{section}"));
        let entry = &section[at..];
        let entry = entry.split("\n\n").next().unwrap_or(entry);
        assert!(
            entry.contains(&format!("[env: {var}=]")) && entry.contains(&format!("[default: {default}]")),
            "{entry}"
        );
    }
}
