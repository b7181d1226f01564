//! Auth on connect and rate limits shared through a real Redis (docs/protocol.md).

mod common;

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::nats::{Proxy, tempdir};
use common::{Event, TestGateway, WsClient, test_config};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const SECRET: &str = "test-secret-0123456789";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn hs_token(claims: Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes()).unwrap())
        .unwrap()
}

fn auth_config() -> venta_gateway::Config {
    let mut c = test_config();
    c.auth.jwt_secret = Some(SECRET.into());
    c
}

fn require_redis() {
    if std::net::TcpStream::connect_timeout(&"127.0.0.1:6379".parse().unwrap(), Duration::from_secs(2)).is_err() {
        panic!(
            "Redis is not reachable at 127.0.0.1:6379. Start it: redis-server --daemonize yes --bind 127.0.0.1 -::1 \
             --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
        );
    }
}

fn redis_config(url: &str, prefix: &str, limit: u32) -> venta_gateway::Config {
    let mut c = auth_config();
    c.redis.url = Some(url.into());
    c.redis.key_prefix = prefix.into();
    c.limits.rate_limit = limit;
    c
}

/// The HTTP status of an upgrade attempt (101 when accepted).
async fn upgrade_status(url: &str, bearer: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    if let Some(b) = bearer {
        req.headers_mut().insert("authorization", format!("Bearer {b}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, resp)) => resp.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn tokens_are_checked_before_the_upgrade() {
    let gw = TestGateway::start_with(auth_config()).await;
    let url = gw.url("/ws/location");
    let valid = hs_token(json!({"sub": "u1", "exp": now() + 60}));
    assert_eq!(upgrade_status(&url, None).await, 401, "no token");
    assert_eq!(upgrade_status(&format!("{url}?token=garbage"), None).await, 401, "garbage");
    let mut tampered = valid.clone();
    tampered.pop();
    tampered.push(if valid.ends_with('A') { 'B' } else { 'A' });
    assert_eq!(upgrade_status(&format!("{url}?token={tampered}"), None).await, 401, "bad signature");
    let other = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "u1", "exp": now() + 60}),
        &EncodingKey::from_secret(b"some-other-secret-123").unwrap(),
    )
    .unwrap();
    assert_eq!(upgrade_status(&format!("{url}?token={other}"), None).await, 401, "other key");
    let expired = hs_token(json!({"sub": "u1", "exp": now() - 120}));
    assert_eq!(upgrade_status(&format!("{url}?token={expired}"), None).await, 401, "expired");
    let not_yet = hs_token(json!({"sub": "u1", "exp": now() + 600, "nbf": now() + 300}));
    assert_eq!(upgrade_status(&format!("{url}?token={not_yet}"), None).await, 401, "nbf in the future");
    let no_sub = hs_token(json!({"exp": now() + 60}));
    assert_eq!(upgrade_status(&format!("{url}?token={no_sub}"), None).await, 401, "no sub");
    let no_exp = hs_token(json!({"sub": "u1"}));
    assert_eq!(upgrade_status(&format!("{url}?token={no_exp}"), None).await, 401, "no exp");
    let wildcard_sub = hs_token(json!({"sub": "u.>", "exp": now() + 60}));
    assert_eq!(upgrade_status(&format!("{url}?token={wildcard_sub}"), None).await, 401, "sub not an id");
    // alg "none": an unsigned token.
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let none =
        format!("{}.{}.", b64(json!({"alg": "none", "typ": "JWT"})), b64(json!({"sub": "u1", "exp": now() + 60})));
    assert_eq!(upgrade_status(&format!("{url}?token={none}"), None).await, 401, "alg none");
    // Within the 30 s leeway an expired token still passes.
    let just_expired = hs_token(json!({"sub": "u1", "exp": now() - 5}));
    assert_eq!(upgrade_status(&format!("{url}?token={just_expired}"), None).await, 101, "leeway");
    assert_eq!(upgrade_status(&format!("{url}?token={valid}"), None).await, 101, "query token");
    assert_eq!(upgrade_status(&url, Some(&valid)).await, 101, "bearer header");
    gw.shutdown().await;
}

#[tokio::test]
async fn rs256_key_refuses_hs256_tokens_made_with_its_public_key() {
    let dir = tempdir::Dir::new();
    let private = dir.0.join("key.pem");
    let public = dir.0.join("pub.pem");
    let ok =
        Command::new("openssl").args(["genrsa", "-out"]).arg(&private).arg("2048").output().unwrap().status.success()
            && Command::new("openssl")
                .args(["rsa", "-in"])
                .arg(&private)
                .args(["-pubout", "-out"])
                .arg(&public)
                .output()
                .unwrap()
                .status
                .success();
    assert!(ok, "openssl could not make an RSA key pair");
    let mut config = test_config();
    config.auth.jwt_public_key = Some(public.clone());
    config.auth.jwt_issuer = Some("venta-auth".into());
    let gw = TestGateway::start_with(config).await;
    let url = gw.url("/ws/vendor");
    let claims = json!({"sub": "u1", "exp": now() + 60, "iss": "venta-auth"});
    let rs = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &claims,
        &EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(upgrade_status(&format!("{url}?token={rs}"), None).await, 101, "RS256 with the right key");
    let wrong_iss = jsonwebtoken::encode(
        &Header::new(Algorithm::RS256),
        &json!({"sub": "u1", "exp": now() + 60, "iss": "someone-else"}),
        &EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(upgrade_status(&format!("{url}?token={wrong_iss}"), None).await, 401, "wrong issuer");
    // The classic confusion: HS256 "signed" with the public key's bytes.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(&std::fs::read(&public).unwrap()).unwrap(),
    )
    .unwrap();
    assert_eq!(upgrade_status(&format!("{url}?token={confused}"), None).await, 401, "HS with an RS key");
    gw.shutdown().await;
}

#[tokio::test]
async fn user_id_must_match_the_token_subject() {
    let gw = TestGateway::start_with(auth_config()).await;
    let token = hs_token(json!({"sub": "u1", "exp": now() + 60}));
    let mut c = WsClient::connect(&format!("{}?token={token}", gw.url("/ws/location"))).await;
    c.subscribe("location", "v1").await; // userId "u1" = sub
    c.send_json(json!({"type": "subscribe_vendor", "data": {"vendorId": "v1", "userId": "mallory"}, "id": "x"})).await;
    let e = c.recv().await;
    assert_eq!((e["data"]["code"].as_str(), e["id"].as_str()), (Some("forbidden"), Some("x")));
    assert_eq!(gw.shared.hub.subscription_count(), 1);
    gw.shutdown().await;
}

#[tokio::test]
async fn per_user_connections_and_per_ip_connect_attempts_are_limited() {
    let mut config = auth_config();
    config.limits.max_connections_per_user = 2;
    config.limits.connect_rate_limit = 5;
    let gw = TestGateway::start_with(config).await;
    let token = hs_token(json!({"sub": "u1", "exp": now() + 60}));
    let url = format!("{}?token={token}", gw.url("/ws/location"));
    let mut a = WsClient::connect(&url).await;
    let _b = WsClient::connect(&url).await;
    let mut c = WsClient::connect(&url).await;
    assert_eq!(c.closed().await, (Some(1008), "too many connections for this user".to_owned()));
    a.send_json(json!({"type": "ping"})).await;
    assert_eq!(a.recv().await["type"], "pong");
    // Three attempts so far; two more pass the per-IP budget of 5, then 429.
    let other = hs_token(json!({"sub": "u2", "exp": now() + 60}));
    let url2 = format!("{}?token={other}", gw.url("/ws/location"));
    assert_eq!(upgrade_status(&url2, None).await, 101);
    assert_eq!(upgrade_status(&url2, None).await, 101);
    assert_eq!(upgrade_status(&url2, None).await, 429);
    gw.shutdown().await;
}

#[tokio::test]
async fn production_without_a_key_does_not_start_and_gentoken_works() {
    let out = Command::new(env!("CARGO_BIN_EXE_venta-gateway")).env("GATEWAY_ENV", "production").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("GATEWAY_ENV=production requires JWT_SECRET"));
    let out = Command::new(env!("CARGO_BIN_EXE_venta-gateway"))
        .env("JWT_SECRET", SECRET)
        .args(["gentoken", "--sub", "dev1", "--ttl", "1h"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let gw = TestGateway::start_with(auth_config()).await;
    let mut c = WsClient::connect(&format!("{}?token={token}", gw.url("/ws/location"))).await;
    c.send_json(json!({"type": "subscribe_location", "data": {"vendorId": "v1", "userId": "dev1"}})).await;
    assert_eq!(c.recv().await["type"], "subscribed");
    gw.shutdown().await;
}

async fn count_limited(c: &mut WsClient, n: usize) -> usize {
    for i in 0..n {
        c.send_json(json!({"type": "ping", "id": i.to_string()})).await;
    }
    let mut limited = 0;
    for _ in 0..n {
        let m = c.recv().await;
        if m["data"]["code"] == "rate_limited" {
            let retry = m["data"]["retryAfterMs"].as_u64().unwrap();
            assert!(retry > 0 && retry <= 60_000);
            limited += 1;
        } else {
            assert_eq!(m["type"], "pong", "{m}");
        }
    }
    limited
}

#[tokio::test]
async fn redis_budget_is_shared_by_instances() {
    require_redis();
    let prefix = format!("venta:test:{}:", uuid::Uuid::new_v4().simple());
    let a = TestGateway::start_with(redis_config("redis://127.0.0.1:6379", &prefix, 10)).await;
    let b = TestGateway::start_with(redis_config("redis://127.0.0.1:6379", &prefix, 10)).await;
    for gw in [&a, &b] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while gw.shared.limiter.health() != venta_gateway::bus::DependencyStatus::Ok {
            assert!(tokio::time::Instant::now() < deadline, "Redis limiter never connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let token = hs_token(json!({"sub": "shared", "exp": now() + 60}));
    let mut ca = WsClient::connect(&format!("{}?token={token}", a.url("/ws/location"))).await;
    let mut cb = WsClient::connect(&format!("{}?token={token}", b.url("/ws/location"))).await;
    // 15 quick messages with a budget of 10: at least 5 refused.
    let limited_a = count_limited(&mut ca, 15).await;
    assert!(limited_a >= 5, "{limited_a}");
    // The other instance sees the same (spent) budget: 10 in total, not 20.
    let limited_b = count_limited(&mut cb, 10).await;
    let passed = (15 - limited_a) + (10 - limited_b);
    assert!(passed <= 11, "{passed} messages passed a shared budget of 10");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn redis_outage_falls_back_to_the_local_limiter_and_returns() {
    require_redis();
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let prefix = format!("venta:test:{}:", uuid::Uuid::new_v4().simple());
    let gw = TestGateway::start_with(redis_config(&format!("redis://{}", proxy.addr), &prefix, 5)).await;
    let health = async || -> Value { reqwest::get(gw.http("/health")).await.unwrap().json().await.unwrap() };
    let wait_redis = async |want: &str| {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let h = health().await;
            common::assert_schema("http/health.json", &h);
            if h["checks"]["redis"]["status"] == want {
                return h;
            }
            assert!(tokio::time::Instant::now() < deadline, "redis never {want}: {h}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_redis("ok").await;
    let token = hs_token(json!({"sub": "out", "exp": now() + 60}));
    let mut c = WsClient::connect(&format!("{}?token={token}", gw.url("/ws/location"))).await;
    assert_eq!(count_limited(&mut c, 2).await, 0);
    proxy.cut();
    // The next check fails over to the local limiter; the client is served.
    c.send_json(json!({"type": "ping", "id": "during"})).await;
    assert!(matches!(c.next_event().await, Event::Json(_)));
    let h = wait_redis("down").await;
    assert_eq!(h["status"], "degraded");
    // The local limiter holds the line on its own (budget 5).
    assert!(count_limited(&mut c, 8).await >= 3);
    proxy.restore();
    // Redis is probed again within a second and used once it answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        c.send_json(json!({"type": "pong"})).await;
        let _ = count_limited(&mut c, 1).await;
        if health().await["checks"]["redis"]["status"] == "ok" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "Redis never came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(health().await["status"], "ok");
    gw.shutdown().await;
}

#[tokio::test]
async fn webtransport_sessions_need_a_token_too() {
    use common::wt::{WtClient, cert_hash, connect};
    let gw = TestGateway::start_with(auth_config()).await;
    let hash = cert_hash(&gw.http("")).await;
    let hash = hash["value"].as_str().unwrap().to_owned();
    let refused = connect(&gw.wt_url("/wt/location"), &[&hash]).await;
    assert!(refused.is_err(), "a session without a token was accepted");
    let expired = hs_token(json!({"sub": "u1", "exp": now() - 120}));
    assert!(connect(&gw.wt_url(&format!("/wt/location?token={expired}")), &[&hash]).await.is_err());
    let token = hs_token(json!({"sub": "u1", "exp": now() + 60}));
    let mut c = WtClient::connect_url(&gw.wt_url(&format!("/wt/location?token={token}")), &[&hash]).await;
    c.subscribe("location", "v1").await;
    c.send_json(json!({"type": "subscribe_location", "data": {"vendorId": "v2", "userId": "mallory"}, "id": "m"}))
        .await;
    let e = c.recv().await;
    assert_eq!((e["data"]["code"].as_str(), e["id"].as_str()), (Some("forbidden"), Some("m")));
    gw.shutdown().await;
}

/// Status and JSON body of a refused (or accepted) upgrade.
async fn upgrade_answer(url: &str, authorization: Option<&str>) -> (u16, Value) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = url.into_client_request().unwrap();
    if let Some(a) = authorization {
        req.headers_mut().insert("authorization", a.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((_, resp)) => (resp.status().as_u16(), Value::Null),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().map(|b| serde_json::from_slice(b).unwrap()).unwrap_or(Value::Null);
            (resp.status().as_u16(), body)
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn issuer_and_audience_are_required_when_configured() {
    let mut config = auth_config();
    config.auth.jwt_issuer = Some("venta-auth".into());
    config.auth.jwt_audience = Some("venta-gateway".into());
    let gw = TestGateway::start_with(config).await;
    let url = gw.url("/ws/location");
    let exp = now() + 60;
    for (claims, why) in [
        (json!({"sub": "u1", "exp": exp}), "token missing claim `iss`"),
        (json!({"sub": "u1", "exp": exp, "iss": "venta-auth"}), "token missing claim `aud`"),
        (json!({"sub": "u1", "exp": exp, "aud": "venta-gateway"}), "token missing claim `iss`"),
        (json!({"sub": "u1", "exp": exp, "iss": "other", "aud": "venta-gateway"}), "token issuer (`iss`) not accepted"),
        (json!({"sub": "u1", "exp": exp, "iss": "venta-auth", "aud": "other"}), "token audience (`aud`) not accepted"),
    ] {
        let (status, body) = upgrade_answer(&format!("{url}?token={}", hs_token(claims.clone())), None).await;
        assert_eq!(status, 401, "{claims}");
        assert_eq!(body["error"]["message"], why, "{claims}");
    }
    let ok = hs_token(json!({"sub": "u1", "exp": exp, "iss": "venta-auth", "aud": "venta-gateway"}));
    assert_eq!(upgrade_answer(&format!("{url}?token={ok}"), None).await.0, 101);
    let list_aud = hs_token(json!({"sub": "u1", "exp": exp, "iss": "venta-auth", "aud": ["x", "venta-gateway"]}));
    assert_eq!(upgrade_answer(&format!("{url}?token={list_aud}"), None).await.0, 101, "aud as a list");
    gw.shutdown().await;
}

#[tokio::test]
async fn refusals_say_what_is_wrong_without_parser_internals() {
    let gw = TestGateway::start_with(auth_config()).await;
    let url = gw.url("/ws/location");
    let valid = hs_token(json!({"sub": "u1", "exp": now() + 60}));
    let other = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"sub": "u1", "exp": now() + 60}),
        &EncodingKey::from_secret(b"some-other-secret-123").unwrap(),
    )
    .unwrap();
    for (token, why) in [
        (hs_token(json!({"sub": "u1", "exp": now() - 120})), "token expired"),
        (other, "token signature invalid"),
        (hs_token(json!({"sub": "u1"})), "token missing claim `exp`"),
        (hs_token(json!({"exp": now() + 60})), "token missing claim `sub`"),
        (
            hs_token(json!({"sub": "u1", "exp": now() + 600, "nbf": now() + 300})),
            "token not yet valid (`nbf` is in the future)",
        ),
        ("garbage".to_owned(), "token malformed (not a signed JWT)"),
    ] {
        let (status, body) = upgrade_answer(&format!("{url}?token={token}"), None).await;
        assert_eq!((status, body["error"]["message"].as_str()), (401, Some(why)), "{body}");
    }
    assert_eq!(upgrade_answer(&format!("{url}?token={valid}"), None).await.0, 101);
    gw.shutdown().await;
}

/// RFC 7235: the auth scheme is case-insensitive.
#[tokio::test]
async fn lower_case_bearer_scheme_works_for_client_tokens() {
    let gw = TestGateway::start_with(auth_config()).await;
    let url = gw.url("/ws/location");
    let valid = hs_token(json!({"sub": "u1", "exp": now() + 60}));
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let (status, body) = upgrade_answer(&url, Some(&format!("{scheme} {valid}"))).await;
        assert_eq!(status, 101, "{scheme}: {body}");
    }
    assert_eq!(upgrade_answer(&url, Some(&format!("Basic {valid}"))).await.0, 401);
    gw.shutdown().await;
}

#[tokio::test]
async fn gentoken_adds_issuer_and_audience_and_refuses_what_the_gateway_would() {
    let gentoken = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_venta-gateway"));
        cmd.env_remove("JWT_ISSUER").env_remove("JWT_AUDIENCE").env_remove("JWT_PUBLIC_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.args(["gentoken", "--sub", "dev1"]).output().unwrap()
    };
    let out = gentoken(&[("JWT_SECRET", SECRET), ("JWT_ISSUER", "venta-auth"), ("JWT_AUDIENCE", "venta-gateway")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
    assert_eq!((claims["iss"].as_str(), claims["aud"].as_str()), (Some("venta-auth"), Some("venta-gateway")));
    let mut config = auth_config();
    config.auth.jwt_issuer = Some("venta-auth".into());
    config.auth.jwt_audience = Some("venta-gateway".into());
    let gw = TestGateway::start_with(config).await;
    assert_eq!(upgrade_status(&format!("{}?token={token}", gw.url("/ws/location")), None).await, 101);
    gw.shutdown().await;
    // Without them set, neither claim is added.
    let out = gentoken(&[("JWT_SECRET", SECRET)]);
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let claims: Value = jsonwebtoken::dangerous::insecure_decode_claims(&token).unwrap();
    assert!(claims.get("iss").is_none() && claims.get("aud").is_none(), "{claims}");
    // A secret the gateway refuses is refused here too: exit 2, no token.
    let out = gentoken(&[("JWT_SECRET", "short-secret")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at least 16 bytes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
