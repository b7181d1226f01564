//! How many audit rows a second the writer sustains into PostgreSQL.
//!
//! Pushes `rows` events through the path sessions use ([`Audit::record`] →
//! bounded queue → batching writer → `INSERT … UNNEST … ON CONFLICT`), into
//! a fresh schema, and times from the first `record` until the writer has
//! confirmed the last row; then checks the table holds exactly `rows`.
//! Prints each run and the median.
//!
//! ```sh
//! cargo run --release --example audit_bench -- [rows=100000] [runs=3] [batch=500] [queue=rows]
//! # DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test) names the server.
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPool;
use venta_gateway::audit::{Action, Audit, AuditEvent, AuditOptions, next_time};
use venta_gateway::metrics::Metrics;

fn arg(n: usize, default: usize) -> usize {
    std::env::args().nth(n).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn with_search_path(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20search_path%3D{schema}")
}

struct Run {
    secs: f64,
    record_ns_per_row: f64,
    spilled: u64,
}

async fn run_once(url: &str, admin: &PgPool, rows: usize, batch: usize, queue: usize) -> anyhow::Result<Run> {
    let schema = format!("bench_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}"))).execute(admin).await?;
    let journal = std::env::temp_dir().join(&schema);
    let metrics = Arc::new(Metrics::new()?);
    let opts = AuditOptions {
        database_url: Some(with_search_path(url, &schema)),
        sqlite_path: journal.join("unused.db"),
        journal_dir: journal.clone(),
        queue,
        batch,
        buffer: 10_000,
        journal_queue: 10_000,
        spill_after: std::time::Duration::from_millis(500),
        probe_interval: std::time::Duration::from_secs(2),
    };
    let audit = Audit::start(opts, "bench", Arc::clone(&metrics)).await?;
    // Rows made beforehand: the clock measures the audit path, not UUIDs.
    let mut t = None;
    let events: Vec<AuditEvent> = (0..rows as u64)
        .map(|i| {
            let time = next_time(t);
            t = Some(time);
            AuditEvent {
                event_id: uuid::Uuid::now_v7(),
                time,
                instance_id: Arc::clone(audit.instance_id()),
                connection_id: venta_gateway::audit::legacy_connection_id(i / 10),
                user_id: Some(format!("user{}", i % 1000)),
                transport: "websocket".into(),
                channel: Some("location".into()),
                vendor_id: Some(format!("vendor{}", i % 5000)),
                action: Action::Subscribe,
                client_addr: Some("203.0.113.7:51234".into()),
                reason: None,
            }
        })
        .collect();
    let started = Instant::now();
    for e in events {
        audit.record(e);
    }
    let record_ns_per_row = started.elapsed().as_nanos() as f64 / rows as f64;
    while metrics.audit_rows_written.get() < rows as u64 {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "writer stalled");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let spilled = metrics.audit_spilled.with_label_values(&["queue_full"]).get();
    audit.close(Duration::from_secs(5)).await;
    let sql = format!("SELECT count(*) FROM {schema}.audit_events");
    let stored: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).fetch_one(admin).await?;
    anyhow::ensure!(stored == rows as i64, "{stored} rows stored, {rows} sent");
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE"))).execute(admin).await?;
    let _ = std::fs::remove_dir_all(&journal);
    Ok(Run { secs, record_ns_per_row, spilled })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rows = arg(1, 100_000);
    let runs = arg(2, 3);
    let batch = arg(3, 500);
    let queue = arg(4, rows);
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let admin = PgPool::connect(&url).await?;
    println!("{rows} rows, batch {batch}, queue {queue}, {runs} runs");
    let mut rates = Vec::new();
    for i in 1..=runs {
        let r = run_once(&url, &admin, rows, batch, queue).await?;
        let rate = rows as f64 / r.secs;
        println!(
            "run {i}: {:.3} s, {rate:.0} rows/s, record() {:.0} ns/row, {} rows via the journal",
            r.secs, r.record_ns_per_row, r.spilled
        );
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!("median: {:.0} rows/s", rates[rates.len() / 2]);
    Ok(())
}
