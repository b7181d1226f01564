//! The subscription audit trail (docs/protocol.md) against the machine's
//! PostgreSQL (a fresh schema per test) and the embedded SQLite file: the
//! rows a connection leaves, outages through a TCP proxy, the journal
//! across a restart, the audit API, migrations.

mod common;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::nats::Proxy;
use common::nats::tempdir::Dir;
use common::pg::{MACHINE_PG, TestSchema};
use common::{GatewayProcess, TestGateway, WsClient, free_port, test_config, wait_until};
use serde_json::{Value, json};
use sqlx::Row;
use tokio_tungstenite::MaybeTlsStream;
use venta_gateway::Config;
use venta_gateway::audit::{Action, AuditEvent, AuditQuery, AuditSink, next_time};

const TOKEN: &str = "audit-secret";

fn pg_config(url: String) -> Config {
    let mut c = test_config();
    c.audit.database_url = Some(url);
    c.auth.admin_token = Some(TOKEN.into());
    c
}

/// A sample's value in the /metrics text (0 when absent).
async fn metric(gw: &TestGateway, sample: &str) -> f64 {
    let text = reqwest::get(gw.http("/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn local_addr(c: &WsClient) -> String {
    match c.ws.get_ref() {
        MaybeTlsStream::Plain(s) => s.local_addr().unwrap().to_string(),
        _ => unreachable!("plain TCP in tests"),
    }
}

async fn subscribe_as(c: &mut WsClient, channel: &str, vendor: &str, user: &str) {
    c.send_json(json!({"type": format!("subscribe_{channel}"), "data": {"vendorId": vendor, "userId": user}})).await;
    let ack = c.recv().await;
    assert_eq!(ack, json!({"type": "subscribed", "data": {"channel": channel, "vendorId": vendor}}));
}

async fn unsubscribe(c: &mut WsClient, channel: &str, vendor: &str) {
    c.send_json(json!({"type": format!("unsubscribe_{channel}"), "data": {"vendorId": vendor}})).await;
    let ack = c.recv().await;
    assert_eq!(ack, json!({"type": "unsubscribed", "data": {"channel": channel, "vendorId": vendor}}));
}

async fn close(mut c: WsClient) {
    c.ws.close(None).await.unwrap();
    while let Some(Ok(_)) = tokio::time::timeout(common::TIMEOUT, futures_util::StreamExt::next(&mut c.ws))
        .await
        .expect("server did not finish the close")
    {}
}

/// (action, user, channel, vendor, reason) of every row, in time order,
/// with the connection, address, transport and instance of each.
type Brief = (String, Option<String>, Option<String>, Option<String>, Option<String>);

async fn pg_rows(schema: &TestSchema) -> Vec<(Brief, uuid::Uuid, Option<String>, String, String)> {
    let rows = sqlx::query(
        "SELECT action, user_id, channel, vendor_id, reason, connection_id, client_addr, transport, instance_id \
         FROM audit_events ORDER BY occurred_at, event_id",
    )
    .fetch_all(&schema.pool)
    .await
    .unwrap();
    rows.iter()
        .map(|r| {
            (
                (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)),
                r.get::<uuid::Uuid, _>(5),
                r.get(6),
                r.get(7),
                r.get(8),
            )
        })
        .collect()
}

fn brief(action: &str, user: Option<&str>, channel: Option<&str>, vendor: Option<&str>, reason: Option<&str>) -> Brief {
    let s = |v: Option<&str>| v.map(str::to_owned);
    (action.to_owned(), s(user), s(channel), s(vendor), s(reason))
}

#[tokio::test]
async fn a_connection_leaves_exactly_its_rows_in_postgres() {
    let schema = TestSchema::new().await;
    let gw = TestGateway::start_with(pg_config(schema.url())).await;
    let (status, h) = gw.health().await;
    assert_eq!(
        (status, h["status"].as_str(), h["checks"]["database"]["status"].as_str()),
        (200, Some("ok"), Some("ok"))
    );

    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    let addr = local_addr(&c);
    subscribe_as(&mut c, "location", "v1", "u1").await;
    subscribe_as(&mut c, "location", "v1", "u1").await; // already held: no row
    subscribe_as(&mut c, "vendor", "v2", "u2").await;
    unsubscribe(&mut c, "location", "v1").await;
    unsubscribe(&mut c, "location", "v9").await; // not held: no row
    close(c).await;
    schema.wait_count("TRUE", 6).await;

    // A second client is still connected when the gateway shuts down: its
    // rows are flushed by the shutdown, with the server's close as reason.
    let mut d = WsClient::connect(&gw.url("/ws/vendor")).await;
    subscribe_as(&mut d, "location", "v3", "u3").await;
    let instance = gw.shared.instance_id.clone();
    assert!(gw.shutdown().await);
    assert_eq!(d.closed().await.0, Some(1001));

    let rows = pg_rows(&schema).await;
    let briefs: Vec<Brief> = rows.iter().map(|r| r.0.clone()).collect();
    assert_eq!(
        briefs,
        vec![
            brief("connect", None, None, None, None),
            brief("subscribe", Some("u1"), Some("location"), Some("v1"), None),
            brief("subscribe", Some("u2"), Some("vendor"), Some("v2"), None),
            brief("unsubscribe", Some("u2"), Some("location"), Some("v1"), None),
            brief("unsubscribe", Some("u2"), Some("vendor"), Some("v2"), Some("disconnect")),
            brief("disconnect", Some("u2"), None, None, Some("client closed")),
            brief("connect", None, None, None, None),
            brief("subscribe", Some("u3"), Some("location"), Some("v3"), None),
            brief("unsubscribe", Some("u3"), Some("location"), Some("v3"), Some("disconnect")),
            brief("disconnect", Some("u3"), None, None, Some("1001 server shutting down")),
        ]
    );
    let first_conn = rows[0].1;
    for (i, (_, conn, client, transport, inst)) in rows.iter().enumerate() {
        assert_eq!(*conn, if i < 6 { first_conn } else { rows[6].1 }, "row {i}");
        assert_eq!((transport.as_str(), inst.as_str()), ("websocket", instance.as_str()), "row {i}");
        if i < 6 {
            assert_eq!(client.as_deref(), Some(addr.as_str()), "row {i}");
        }
    }
    assert_ne!(rows[0].1, rows[6].1);
}

#[tokio::test]
async fn a_ten_second_outage_loses_no_row_and_duplicates_none() {
    let schema = TestSchema::new().await;
    let proxy = Proxy::start(MACHINE_PG.parse().unwrap()).await;
    let journal = Dir::new();
    let mut config = pg_config(schema.url_via(proxy.addr));
    // Small bounds, so the outage overflows memory into the journal.
    config.audit.queue = 64;
    config.audit.buffer = 200;
    config.audit.batch = 100;
    config.audit.journal_dir = journal.0.clone();
    config.limits.max_subscriptions = 2000;
    config.limits.rate_limit = 1_000_000;
    let gw = TestGateway::start_with(config).await;
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    schema.wait_count("action = 'connect'", 1).await;

    proxy.cut();
    let cut_at = tokio::time::Instant::now();
    for i in 0..1000 {
        c.send_json(json!({"type": "subscribe_location", "data": {"vendorId": format!("v{i}"), "userId": "u1"}})).await;
    }
    for _ in 0..1000 {
        assert_eq!(c.recv().await["type"], "subscribed");
    }
    wait_until("health to report the database down", async || {
        let (status, h) = gw.health().await;
        status == 200 && h["status"] == "degraded" && h["checks"]["database"]["status"] == "down"
    })
    .await;
    assert_eq!(schema.count("action = 'subscribe'").await, 0, "rows were written through a cut proxy");
    tokio::time::sleep_until(cut_at + Duration::from_secs(10)).await;
    // At most queue + buffer rows stay in memory; the rest are on disk.
    let spilled = metric(&gw, "venta_audit_spilled_total{reason=\"buffer_full\"}").await
        + metric(&gw, "venta_audit_spilled_total{reason=\"queue_full\"}").await;
    assert!(spilled >= 1001.0 - 64.0 - 200.0, "rows over the memory bounds must be journaled; spilled {spilled}");
    assert!(metric(&gw, "venta_audit_journal_rows").await >= 1001.0 - 64.0 - 200.0);

    proxy.restore();
    schema.wait_count("action = 'subscribe'", 1000).await;
    assert_eq!(schema.count("action = 'subscribe'").await, 1000);
    let vendors: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT vendor_id) FROM audit_events WHERE action = 'subscribe'")
            .fetch_one(&schema.pool)
            .await
            .unwrap();
    assert_eq!(vendors, 1000);
    close(c).await;
    schema.wait_count("TRUE", 2002).await;
    wait_until("health ok again", async || gw.health().await.1["checks"]["database"]["status"] == "ok").await;
    assert_eq!(metric(&gw, "venta_audit_dropped_total{reason=\"journal_error\"}").await, 0.0);
    assert_eq!(metric(&gw, "venta_audit_journal_rows").await, 0.0);
    assert!(gw.shutdown().await);
    // Nothing more arrives later, and nothing is left on disk.
    assert_eq!(schema.count("TRUE").await, 2002);
    assert_eq!(journal_lines(&journal.0), 0);
}

fn journal_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

fn journal_lines(dir: &Path) -> usize {
    journal_files(dir).iter().map(|f| std::fs::read_to_string(f).unwrap().lines().count()).sum()
}

#[tokio::test]
async fn a_journal_left_at_shutdown_is_written_exactly_once_by_the_next_gateway() {
    let schema = TestSchema::new().await;
    let proxy = Proxy::start(MACHINE_PG.parse().unwrap()).await;
    let journal = Dir::new();
    let mut config = pg_config(schema.url_via(proxy.addr));
    config.audit.journal_dir = journal.0.clone();
    let gw = TestGateway::start_with(config).await;
    assert_eq!(gw.health().await.1["checks"]["database"]["status"], "ok");

    proxy.cut();
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    for i in 0..50 {
        subscribe_as(&mut c, "location", &format!("v{i}"), "u1").await;
    }
    assert!(gw.shutdown().await);
    assert_eq!(c.closed().await.0, Some(1001));
    // 1 connect + 50 subscribes + 50 unsubscribes at disconnect + 1 disconnect.
    assert_eq!(journal_lines(&journal.0), 102);
    assert_eq!(schema.count("TRUE").await, 0);
    let saved: Vec<(PathBuf, Vec<u8>)> =
        journal_files(&journal.0).into_iter().map(|f| (f.clone(), std::fs::read(&f).unwrap())).collect();

    // The database is reachable again: the next gateway replays at start.
    let mut config = pg_config(schema.url());
    config.audit.journal_dir = journal.0.clone();
    let gw = TestGateway::start_with(config).await;
    schema.wait_count("TRUE", 102).await;
    wait_until("journal emptied", async || journal_lines(&journal.0) == 0).await;
    assert!(gw.shutdown().await);
    assert_eq!(schema.count("reason = '1001 server shutting down' AND action = 'disconnect'").await, 1);
    assert_eq!(schema.count("action = 'subscribe'").await, 50);

    // A crash between the insert and the journal truncation replays the
    // same rows again: they are stored once.
    for (path, bytes) in &saved {
        std::fs::write(path, bytes).unwrap();
    }
    let mut config = pg_config(schema.url());
    config.audit.journal_dir = journal.0.clone();
    let gw = TestGateway::start_with(config).await;
    wait_until("journal replayed again", async || journal_lines(&journal.0) == 0).await;
    wait_until("all rows re-sent", async || metric(&gw, "venta_audit_rows_written_total").await >= 102.0).await;
    assert_eq!(schema.count("TRUE").await, 102);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn sqlite_is_the_default_without_a_database_url() {
    let dir = Dir::new();
    let db = dir.0.join("sub/audit.db");
    let port = free_port();
    let mut gw =
        GatewayProcess::spawn(port, &[("AUDIT_SQLITE_PATH", db.to_str().unwrap()), ("ADMIN_TOKEN", TOKEN)]).await;
    let h: Value = reqwest::get(gw.http("/health")).await.unwrap().json().await.unwrap();
    assert_eq!((h["status"].as_str(), h["checks"]["database"]["status"].as_str()), (Some("ok"), Some("ok")));
    let mut c = WsClient::connect(&gw.url("/ws/vendor")).await;
    c.subscribe("vendor", "v1").await;
    close(c).await;
    let client = reqwest::Client::new();
    let mut rows = Vec::new();
    wait_until("4 audit rows", async || {
        let v: Value =
            client.get(gw.http("/api/v1/audit")).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap();
        rows = v["rows"].as_array().cloned().unwrap_or_default();
        rows.len() == 4
    })
    .await;
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["connect", "subscribe", "unsubscribe", "disconnect"]);
    assert_eq!(rows[2]["reason"], "disconnect");
    assert_eq!(rows[3]["reason"], "client closed");
    gw.signal("TERM");
    assert_eq!(gw.wait_exit().await, Some(0));
    // The rows are in the configured file.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events").fetch_one(&pool).await.unwrap();
    assert_eq!(n, 4);
    pool.close().await;
}

async fn api(gw: &TestGateway, query: &str, token: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(gw.http(&format!("/api/v1/audit{query}")));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    if status == 200 {
        common::assert_schema("http/audit_response.json", &v);
    } else {
        common::assert_schema("http/error_response.json", &v);
    }
    (status, v)
}

async fn api_rows(gw: &TestGateway, query: &str) -> Vec<Value> {
    let (status, v) = api(gw, query, Some(TOKEN)).await;
    assert_eq!(status, 200, "{query}: {v}");
    v["rows"].as_array().unwrap().clone()
}

/// Two users on two connections, 12 rows; the API filters and pages them.
async fn api_scenario(gw: &TestGateway) {
    let mut a = WsClient::connect(&gw.url("/ws/location")).await;
    subscribe_as(&mut a, "location", "v1", "alice").await;
    subscribe_as(&mut a, "location", "v2", "alice").await;
    let mut b = WsClient::connect(&gw.url("/ws/vendor")).await;
    subscribe_as(&mut b, "vendor", "v2", "bob").await;
    subscribe_as(&mut b, "vendor", "v3", "bob").await;
    close(a).await;
    close(b).await;
    let mut all = Vec::new();
    wait_until("12 rows", async || {
        all = api_rows(gw, "?limit=1000").await;
        all.len() == 12
    })
    .await;

    assert_eq!(api(gw, "", None).await.0, 401);
    assert_eq!(api(gw, "", Some("wrong")).await.0, 401);
    let r = reqwest::get(gw.http("/api/v1/audit")).await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");

    let alice = api_rows(gw, "?userId=alice").await;
    assert_eq!(alice.len(), 5, "alice's rows but her connect (no user yet): {alice:?}");
    assert!(alice.iter().all(|r| r["userId"] == "alice"));
    let v2 = api_rows(gw, "?vendorId=v2").await;
    let v2: Vec<(&str, &str)> =
        v2.iter().map(|r| (r["userId"].as_str().unwrap(), r["action"].as_str().unwrap())).collect();
    assert_eq!(v2.len(), 4);
    for want in [("alice", "subscribe"), ("alice", "unsubscribe"), ("bob", "subscribe"), ("bob", "unsubscribe")] {
        assert!(v2.contains(&want), "{want:?} not in {v2:?}");
    }
    assert_eq!(api_rows(gw, "?userId=bob&vendorId=v3").await.len(), 2);
    assert!(api_rows(gw, "?userId=nobody").await.is_empty());

    // Pages of 5 add up to the whole list, in order, once each.
    let mut paged = Vec::new();
    let mut query = "?limit=5".to_owned();
    let mut pages = 0;
    loop {
        let (status, v) = api(gw, &query, Some(TOKEN)).await;
        assert_eq!(status, 200);
        paged.extend(v["rows"].as_array().unwrap().iter().cloned());
        pages += 1;
        match v["nextCursor"].as_str() {
            Some(c) => query = format!("?limit=5&cursor={c}"),
            None => break,
        }
    }
    assert_eq!((pages, &paged), (3, &all));
    let times: Vec<&str> = all.iter().map(|r| r["time"].as_str().unwrap()).collect();
    let ids: HashSet<&str> = all.iter().map(|r| r["eventId"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 12);

    // `since` is inclusive.
    let parse = |t: &str| time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap();
    let since = parse(times[6]);
    let later = api_rows(gw, &format!("?since={}&limit=1000", times[6].replace('+', "%2B"))).await;
    let expected: Vec<Value> = all.iter().filter(|r| parse(r["time"].as_str().unwrap()) >= since).cloned().collect();
    assert!(expected.len() >= 6);
    assert_eq!(later, expected);

    for bad in [
        "?userId=a.b",
        "?vendorId=*",
        "?limit=0",
        "?limit=1001",
        "?limit=x",
        "?since=yesterday",
        "?cursor=zzz",
        "?connectionId=1",
        // Found by schemathesis (.ci/specs.sh): a UUID that is not in the
        // hyphenated form of the rows (and of `format: uuid`) was taken.
        "?connectionId=00000000000000000000000000000000",
        "?connectionId=%7B00000000-0000-0000-0000-00000000002a%7D",
        "?connectionId=urn:uuid:00000000-0000-0000-0000-00000000002a",
        "?userId=alice&userId=bob",
    ] {
        let (status, v) = api(gw, bad, Some(TOKEN)).await;
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_field")), "{bad}: {v}");
    }

    // A mistyped filter is refused, naming it and the accepted ones, rather
    // than ignored (which answered with every row).
    for typo in ["?userid=alice", "?vendor=v2", "?limit=5&connection_id=x"] {
        let (status, v) = api(gw, typo, Some(TOKEN)).await;
        assert_eq!((status, v["error"]["code"].as_str()), (400, Some("invalid_field")), "{typo}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        let name = typo.trim_start_matches('?').rsplit('&').next().unwrap().split('=').next().unwrap();
        assert!(message.contains(&format!("\"{name}\"")), "{typo}: {message}");
        for accepted in ["userId", "vendorId", "connectionId", "since", "limit", "cursor"] {
            assert!(message.contains(accepted), "{typo}: {message}");
        }
    }

    // One connection's rows by its id: alice's 6 (connect, 2 subscribes,
    // 2 unsubscribes, disconnect).
    let conn = alice[0]["connectionId"].as_str().unwrap();
    let hers = api_rows(gw, &format!("?connectionId={conn}")).await;
    assert_eq!(hers.len(), 6, "{hers:?}");
    assert!(hers.iter().all(|r| r["connectionId"] == conn));
    assert_ne!(all.iter().filter(|r| r["connectionId"] != conn).count(), 0);
}

#[tokio::test]
async fn the_audit_api_filters_and_pages_postgres_rows() {
    let schema = TestSchema::new().await;
    let gw = TestGateway::start_with(pg_config(schema.url())).await;
    api_scenario(&gw).await;
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn the_audit_api_filters_and_pages_sqlite_rows_and_is_off_without_a_token() {
    let mut config = test_config();
    config.auth.admin_token = Some(TOKEN.into());
    let gw = TestGateway::start_with(config).await;
    api_scenario(&gw).await;
    assert!(gw.shutdown().await);

    let gw = TestGateway::start().await;
    let (status, v) = api(&gw, "", Some(TOKEN)).await;
    assert_eq!((status, v["error"]["code"].as_str()), (404, Some("unavailable")));
    assert!(gw.shutdown().await);
}

fn sample_rows(n: u64) -> Vec<AuditEvent> {
    let mut t = None;
    (0..n)
        .map(|i| {
            let time = next_time(t);
            t = Some(time);
            AuditEvent {
                event_id: uuid::Uuid::now_v7(),
                time,
                instance_id: Arc::from("test"),
                connection_id: if i == 0 {
                    venta_gateway::audit::legacy_connection_id(7)
                } else {
                    uuid::Uuid::now_v7()
                },
                user_id: (i % 2 == 0).then(|| format!("u{i}")),
                transport: "websocket".into(),
                channel: Some("vendor".into()),
                vendor_id: Some(format!("v{i}")),
                action: Action::Subscribe,
                client_addr: Some("[::1]:9".into()),
                reason: (i == 1).then(|| "a 'quoted' reason".into()),
            }
        })
        .collect()
}

/// Both engines: migrations apply to an empty database and again as a
/// no-op; a row reads back as written; writing it twice stores it once.
async fn check_sink(sink: &dyn AuditSink) {
    sink.migrate().await.unwrap();
    sink.migrate().await.unwrap();
    let mut rows = sample_rows(3);
    // An area subscription's row (channel `area`, its id in vendor_id).
    rows[2].channel = Some("area".into());
    rows[2].vendor_id = Some("map".into());
    sink.write(&rows).await.unwrap();
    sink.write(&rows[1..]).await.unwrap();
    let back = sink.query(&AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(back, rows);
}

#[tokio::test]
async fn postgres_migrations_apply_to_an_empty_schema_and_are_idempotent() {
    let schema = TestSchema::new().await;
    let sink = venta_gateway::audit::postgres::PgSink::connect_lazy(&schema.url()).unwrap();
    check_sink(&sink).await;
    venta_gateway::audit::postgres::MIGRATOR.run(&schema.pool).await.unwrap();
    let mut indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = $1 AND tablename = 'audit_events'",
    )
    .bind(&schema.name)
    .fetch_all(&schema.pool)
    .await
    .unwrap();
    indexes.sort();
    assert_eq!(
        indexes,
        [
            "audit_events_by_connection",
            "audit_events_by_time",
            "audit_events_by_user",
            "audit_events_by_vendor",
            "audit_events_pkey"
        ]
    );
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&schema.pool).await.unwrap();
    // audit_events, connection_uuid, area_channel.
    assert_eq!(applied, 3);
    sink.close().await;
}

#[tokio::test]
async fn sqlite_migrations_apply_to_an_empty_file_and_are_idempotent() {
    let dir = Dir::new();
    let path = dir.0.join("audit.db");
    let sink = venta_gateway::audit::sqlite::SqliteSink::open(&path).await.unwrap();
    check_sink(&sink).await;
    sink.close().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.unwrap();
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'audit_events' AND name NOT LIKE 'sqlite_%' ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        ["audit_events_by_connection", "audit_events_by_time", "audit_events_by_user", "audit_events_by_vendor"]
    );
    venta_gateway::audit::sqlite::MIGRATOR.run(&pool).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations").fetch_one(&pool).await.unwrap();
    // audit_events, connection_uuid, area_channel.
    assert_eq!(applied, 3);
    pool.close().await;
}

#[tokio::test]
async fn an_unreachable_database_at_start_degrades_and_catches_up() {
    let schema = TestSchema::new().await;
    let proxy = Proxy::start(MACHINE_PG.parse().unwrap()).await;
    proxy.cut();
    let gw = TestGateway::start_with(pg_config(schema.url_via(proxy.addr))).await;
    let (status, h) = gw.health().await;
    assert_eq!(
        (status, h["status"].as_str(), h["checks"]["database"]["status"].as_str()),
        (200, Some("degraded"), Some("down"))
    );
    assert!(h["checks"]["database"]["detail"].as_str().is_some_and(|d| d.starts_with("postgres")), "{h}");
    let mut c = WsClient::connect(&gw.url("/ws/location")).await;
    c.subscribe("location", "v1").await;
    // The API reads the database: unavailable while it is down.
    assert_eq!(api(&gw, "", Some(TOKEN)).await.0, 503);
    proxy.restore();
    // Migrations run when the database appears, then the rows follow.
    schema.wait_count("TRUE", 2).await;
    wait_until("health ok", async || gw.health().await.1["status"] == "ok").await;
    close(c).await;
    schema.wait_count("TRUE", 4).await;
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn with_auth_on_every_row_carries_the_tokens_user() {
    const SECRET: &str = "audit-test-secret-0123456789";
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "carol", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let mut config = test_config();
    config.auth.jwt_secret = Some(SECRET.into());
    config.auth.admin_token = Some(TOKEN.into());
    let gw = TestGateway::start_with(config).await;
    let mut c = WsClient::connect(&format!("{}?token={token}", gw.url("/ws/location"))).await;
    subscribe_as(&mut c, "location", "v1", "carol").await;
    // Another user's id is refused and leaves no row.
    c.send_json(json!({"type": "subscribe_location", "data": {"vendorId": "v2", "userId": "mallory"}})).await;
    assert_eq!(c.recv().await["data"]["code"], "forbidden");
    close(c).await;
    let mut rows = Vec::new();
    wait_until("4 rows", async || {
        rows = api_rows(&gw, "").await;
        rows.len() == 4
    })
    .await;
    let seen: Vec<(&str, &str)> =
        rows.iter().map(|r| (r["action"].as_str().unwrap(), r["userId"].as_str().unwrap_or("-"))).collect();
    assert_eq!(seen, [("connect", "carol"), ("subscribe", "carol"), ("unsubscribe", "carol"), ("disconnect", "carol")]);
    assert!(gw.shutdown().await);
}

#[tokio::test]
async fn webtransport_sessions_are_audited_with_their_transport() {
    let mut config = test_config();
    config.auth.admin_token = Some(TOKEN.into());
    let gw = TestGateway::start_with(config).await;
    let mut c = common::wt::WtClient::connect(&gw, "/wt/location").await;
    c.subscribe("location", "v1").await;
    // Finishing the stream is the client's goodbye: the server closes 1000.
    c.send.finish().await.unwrap();
    assert_eq!(c.closed().await.0, Some(1000));
    let mut rows = Vec::new();
    wait_until("4 rows", async || {
        rows = api_rows(&gw, "").await;
        rows.len() == 4
    })
    .await;
    let seen: Vec<(&str, &str)> =
        rows.iter().map(|r| (r["action"].as_str().unwrap(), r["transport"].as_str().unwrap())).collect();
    assert_eq!(
        seen,
        [
            ("connect", "webtransport"),
            ("subscribe", "webtransport"),
            ("unsubscribe", "webtransport"),
            ("disconnect", "webtransport")
        ]
    );
    assert_eq!(rows[3]["reason"], "1000 client finished its stream");
    assert_eq!(rows[1]["userId"], "u1");
    assert!(gw.shutdown().await);
}

/// A sample's value in a gateway's /metrics text (0 when absent).
async fn metric_at(base: &str, sample: &str) -> f64 {
    let text = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Issue 13 item 12: during an outage rows reach the journal within
/// `AUDIT_SPILL_AFTER_MS`, so a SIGKILL seconds into it loses none of them
/// (they used to wait in memory for the whole outage).
#[tokio::test]
async fn a_sigkill_during_an_outage_loses_no_row_and_the_next_gateway_stores_each_once() {
    const CLIENTS: usize = 25;
    const ROWS: i64 = 4 * CLIENTS as i64; // connect, subscribe, unsubscribe, disconnect
    let schema = TestSchema::new().await;
    let proxy = Proxy::start(MACHINE_PG.parse().unwrap()).await;
    let journal = Dir::new();
    let url = schema.url_via(proxy.addr);
    let dir = journal.0.to_str().unwrap();
    let env = [("DATABASE_URL", url.as_str()), ("AUDIT_JOURNAL_DIR", dir)];
    let mut gw = GatewayProcess::spawn(free_port(), &env).await;
    let base = gw.http("");
    wait_until("the database up", async || metric_at(&base, "venta_audit_database_up").await == 1.0).await;

    proxy.cut();
    for i in 0..CLIENTS {
        let mut c = WsClient::connect(&gw.url("/ws/location")).await;
        subscribe_as(&mut c, "location", &format!("v{i}"), "u1").await;
        close(c).await;
    }
    let made = tokio::time::Instant::now();
    wait_until("every row journaled", async || metric_at(&base, "venta_audit_journal_rows").await == ROWS as f64).await;
    // AUDIT_SPILL_AFTER_MS (500) after the last row, plus a scrape.
    assert!(made.elapsed() < Duration::from_secs(3), "rows reached the journal after {:?}", made.elapsed());
    assert_eq!(schema.count("TRUE").await, 0, "rows were written through a cut proxy");

    gw.signal("KILL");
    assert_eq!(gw.wait_exit().await, None, "killed by a signal");
    proxy.restore();
    let gw = GatewayProcess::spawn(free_port(), &env).await;
    schema.wait_count("TRUE", ROWS).await;
    let base = gw.http("");
    wait_until("journal replayed", async || metric_at(&base, "venta_audit_journal_rows").await == 0.0).await;
    assert_eq!(journal_lines(&journal.0), 0);
    for action in ["connect", "subscribe", "unsubscribe", "disconnect"] {
        assert_eq!(schema.count(&format!("action = '{action}'")).await, CLIENTS as i64, "{action}");
    }
    let vendors: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT vendor_id) FROM audit_events WHERE action = 'subscribe'")
            .fetch_one(&schema.pool)
            .await
            .unwrap();
    assert_eq!(vendors, CLIENTS as i64);
    assert_eq!(schema.count("TRUE").await, ROWS);
}

/// Issue 13 item 13: connection 1 of every run of an instance shared id 1.
#[tokio::test]
async fn two_runs_of_one_instance_give_their_connections_distinct_ids() {
    let schema = TestSchema::new().await;
    for _ in 0..2 {
        let mut config = pg_config(schema.url());
        config.log.instance_id = Some("pod-0".into());
        let gw = TestGateway::start_with(config).await;
        let c = WsClient::connect(&gw.url("/ws/location")).await;
        close(c).await;
        assert!(gw.shutdown().await);
    }
    schema.wait_count("TRUE", 4).await;
    let rows = pg_rows(&schema).await;
    let ids: HashSet<uuid::Uuid> = rows.iter().map(|r| r.1).collect();
    assert_eq!(ids.len(), 2, "{rows:?}");
    assert!(ids.iter().all(|id| id.get_version_num() == 7), "{ids:?}");
    assert!(rows.iter().all(|r| r.4 == "pod-0"));
}

/// Rows stored and journaled by a version with numeric connection ids: the
/// migration keeps the stored ones, an old journal still replays, and both
/// map a number the same way.
#[tokio::test]
async fn numeric_connection_ids_survive_the_migration_and_old_journals_replay() {
    use venta_gateway::audit::legacy_connection_id;
    let schema = TestSchema::new().await;
    let first = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(venta_gateway::audit::postgres::MIGRATOR.migrations[..1].to_vec()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    first.run(&schema.pool).await.unwrap();
    sqlx::query(
        "INSERT INTO audit_events (event_id, occurred_at, instance_id, connection_id, transport, action) \
         VALUES ('0190a5b2-7c1e-7000-8000-000000000001', '2026-11-30T09:00:00Z', 'old', 42, 'websocket', 'connect')",
    )
    .execute(&schema.pool)
    .await
    .unwrap();
    let journal = Dir::new();
    let line = r#"{"eventId":"0190a5b2-7c1e-7000-8000-000000000002","time":"2026-11-30T10:00:00.000001Z","instanceId":"old","connectionId":42,"userId":null,"transport":"websocket","channel":null,"vendorId":null,"action":"disconnect","clientAddr":"127.0.0.1:1","reason":"client closed"}"#;
    std::fs::write(journal.0.join("active.jsonl"), format!("{line}\n")).unwrap();

    let mut config = pg_config(schema.url());
    config.audit.journal_dir = journal.0.clone();
    let gw = TestGateway::start_with(config).await;
    schema.wait_count("TRUE", 2).await;
    let (_, v) = api(&gw, &format!("?connectionId={}", legacy_connection_id(42)), Some(TOKEN)).await;
    let actions: Vec<&str> = v["rows"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["connect", "disconnect"], "{v}");
    assert_eq!(v["rows"][0]["connectionId"], "00000000-0000-0000-0000-00000000002a");
    assert!(gw.shutdown().await);

    // SQLite: the same, through its table rebuild.
    let dir = Dir::new();
    let path = dir.0.join("audit.db");
    let pool = sqlx::SqlitePool::connect_with(
        sqlx::sqlite::SqliteConnectOptions::new().filename(&path).create_if_missing(true),
    )
    .await
    .unwrap();
    let first = sqlx::migrate::Migrator {
        migrations: std::borrow::Cow::Owned(venta_gateway::audit::sqlite::MIGRATOR.migrations[..1].to_vec()),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    first.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO audit_events (event_id, occurred_at, instance_id, connection_id, transport, action) VALUES \
         ('0190a5b2-7c1e-7000-8000-000000000001', '2026-11-30T10:00:00.000000Z', 'old', 42, 'websocket', 'connect'), \
         ('0190a5b2-7c1e-7000-8000-000000000003', '2026-11-30T10:00:00.000002Z', 'old', 9223372036854775807, 'websocket', 'connect')",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let sink = venta_gateway::audit::sqlite::SqliteSink::open(&path).await.unwrap();
    sink.migrate().await.unwrap();
    let back = sink.query(&AuditQuery { limit: 10, ..Default::default() }).await.unwrap();
    let ids: Vec<uuid::Uuid> = back.iter().map(|r| r.connection_id).collect();
    assert_eq!(ids, [legacy_connection_id(42), legacy_connection_id(i64::MAX as u64)]);
    sink.close().await;
}

/// Issue 13 item 11 (database): /health follows the database with no
/// client connected, within a bound set by AUDIT_PROBE_INTERVAL_MS.
#[tokio::test]
async fn idle_health_follows_the_database_within_the_probe_interval() {
    const BOUND: Duration = Duration::from_secs(4);
    let schema = TestSchema::new().await;
    let proxy = Proxy::start(MACHINE_PG.parse().unwrap()).await;
    let mut config = pg_config(schema.url_via(proxy.addr));
    config.audit.probe_interval_ms = 500;
    let gw = TestGateway::start_with(config).await;
    let database = async || gw.health().await.1["checks"]["database"]["status"].as_str().map(str::to_owned);
    assert_eq!(database().await.as_deref(), Some("ok"));
    for (action, want) in [("cut", "down"), ("restore", "ok"), ("cut", "down"), ("restore", "ok")] {
        if action == "cut" {
            proxy.cut();
        } else {
            proxy.restore();
        }
        let at = tokio::time::Instant::now();
        while database().await.as_deref() != Some(want) {
            assert!(at.elapsed() < BOUND, "{action}: /health database not {want} within {BOUND:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(gw.shared.open_connections(), 0);
    assert!(gw.shutdown().await);
}

/// Issue 13 item 21: a second gateway in the same working directory names
/// the setting to change, once, and exits 2 (a configuration error).
#[tokio::test]
async fn a_second_gateway_on_a_locked_journal_exits_2_with_one_line() {
    const MESSAGE: &str = "is locked by another running gateway; give each instance its own AUDIT_JOURNAL_DIR";
    let journal = Dir::new();
    let dir = journal.0.to_str().unwrap();
    let _first = GatewayProcess::spawn(free_port(), &[("AUDIT_JOURNAL_DIR", dir)]).await;
    let audit = Dir::new();
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_venta-gateway"))
        .env("WEBSOCKET_GATEWAY_PORT", free_port().to_string())
        .env("GRPC_PORT", free_port().to_string())
        .env("WT_PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("LOG_LEVEL", "warn")
        .env("AUDIT_JOURNAL_DIR", dir)
        .env("AUDIT_SQLITE_PATH", audit.0.join("audit.db"))
        .kill_on_drop(true)
        .output();
    let out =
        tokio::time::timeout(Duration::from_secs(30), second).await.expect("second gateway kept running").unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let error = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert_eq!(error.matches(MESSAGE).count(), 1, "{error}");
    assert!(error.contains(&format!("audit journal {dir} {MESSAGE}")), "{error}");
    assert_eq!(error.matches(dir).count(), 1, "{error}");
    for line in stderr.lines() {
        assert!(line.matches(MESSAGE).count() <= 1, "repeated: {line}");
    }
}
