//! PostgreSQL for tests: the machine's server (127.0.0.1:5432, trust auth,
//! database `test`), one fresh schema per test, dropped afterwards.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

/// The machine's PostgreSQL.
pub const MACHINE_PG: &str = "127.0.0.1:5432";
/// How to start it when it is down.
pub const START_PG: &str = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start";

/// Fails loudly, with how to start it, if the machine's PostgreSQL is down.
pub fn require_machine_pg() {
    let addr: SocketAddr = MACHINE_PG.parse().unwrap();
    if std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!("PostgreSQL is not reachable at {MACHINE_PG}. Start it: {START_PG}");
    }
}

/// A URL for database `test` at `addr` whose connections use `schema`.
pub fn url(addr: &str, schema: &str) -> String {
    format!("postgres://postgres@{addr}/test?options=-c%20search_path%3D{schema}")
}

fn admin_url() -> String {
    format!("postgres://postgres@{MACHINE_PG}/test")
}

/// A schema of the test's own; its pool sees only that schema.
pub struct TestSchema {
    pub name: String,
    pub pool: PgPool,
}

impl TestSchema {
    pub async fn new() -> Self {
        require_machine_pg();
        let name = format!("audit_{}", uuid::Uuid::new_v4().simple());
        let admin = PgPool::connect(&admin_url())
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {MACHINE_PG}, database test: {e}. Start it: {START_PG}"));
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {name}"))).execute(&admin).await.unwrap();
        admin.close().await;
        let pool = PgPoolOptions::new().max_connections(2).connect(&url(MACHINE_PG, &name)).await.unwrap();
        Self { name, pool }
    }

    /// The URL for the gateway, direct.
    pub fn url(&self) -> String {
        url(MACHINE_PG, &self.name)
    }

    /// The URL for the gateway, through a proxy at `addr`.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        url(&addr.to_string(), &self.name)
    }

    /// Rows in `audit_events` matching `filter` (an SQL condition).
    pub async fn count(&self, filter: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM audit_events WHERE {filter}");
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(&self.pool).await.unwrap()
    }

    /// Waits until `count(filter)` is `n` (panics after 30 s with the count);
    /// a table the gateway has not created yet counts as empty.
    pub async fn wait_count(&self, filter: &str, n: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let sql = format!("SELECT count(*) FROM audit_events WHERE {filter}");
        loop {
            let c: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone())).fetch_one(&self.pool).await.unwrap_or(0);
            if c == n {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{filter}: {c} rows, expected {n}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(admin) = PgPool::connect(&admin_url()).await {
                    let sql = format!("DROP SCHEMA IF EXISTS {name} CASCADE");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await;
                    admin.close().await;
                }
            });
        })
        .join();
    }
}
