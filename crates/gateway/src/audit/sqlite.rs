//! The embedded audit sink: a SQLite file (`AUDIT_SQLITE_PATH`), used when
//! no `DATABASE_URL` is set. WAL mode, so the audit API reads while the
//! writer writes.

use std::path::Path;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row};
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::{OffsetDateTime, PrimitiveDateTime, UtcOffset};
use uuid::Uuid;

use super::{AuditError, AuditEvent, AuditQuery, AuditSink};

/// The SQLite migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/sqlite");

/// Stored time format: fixed width, so text order is time order.
const TIME: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// Rows per INSERT statement: 11 parameters each stays far below SQLite's
/// 32766-parameter limit.
const ROWS_PER_STATEMENT: usize = 500;

/// The SQLite sink.
#[derive(Debug, Clone)]
pub struct SqliteSink {
    pool: SqlitePool,
}

impl SqliteSink {
    /// Opens (creating) the file.
    pub async fn open(path: &Path) -> Result<Self, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(sqlx::Error::Io)?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            // Appends and indexed lookups need little cache; SQLite's 2 MiB
            // default per connection, and a statement cached for every batch
            // size the writer happened to flush, showed up as several MiB of
            // the gateway's resident memory under a connection storm.
            .pragma("cache_size", "-512")
            .statement_cache_capacity(16);
        let pool = SqlitePoolOptions::new().max_connections(2).connect_with(options).await?;
        Ok(Self { pool })
    }
}

fn format_time(t: OffsetDateTime) -> String {
    t.to_offset(UtcOffset::UTC).format(TIME).unwrap_or_default()
}

fn parse_time(s: &str) -> Result<OffsetDateTime, AuditError> {
    PrimitiveDateTime::parse(s, TIME)
        .map(PrimitiveDateTime::assume_utc)
        .map_err(|e| AuditError::Corrupt(format!("occurred_at {s:?}: {e}")))
}

impl AuditSink for SqliteSink {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    fn embedded(&self) -> bool {
        true
    }

    fn migrate(&self) -> BoxFuture<'_, Result<(), AuditError>> {
        Box::pin(async move { MIGRATOR.run(&self.pool).await.map_err(AuditError::from) })
    }

    fn write<'a>(&'a self, rows: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            for chunk in rows.chunks(ROWS_PER_STATEMENT) {
                let mut b = QueryBuilder::<sqlx::Sqlite>::new(
                    "INSERT INTO audit_events (event_id, occurred_at, instance_id, connection_id, user_id, \
                     transport, channel, vendor_id, action, client_addr, reason) ",
                );
                b.push_values(chunk, |mut v, r| {
                    v.push_bind(r.event_id.hyphenated().to_string())
                        .push_bind(format_time(r.time))
                        .push_bind(r.instance_id.to_string())
                        .push_bind(r.connection_id.hyphenated().to_string())
                        .push_bind(r.user_id.clone())
                        .push_bind(r.transport.clone())
                        .push_bind(r.channel.clone())
                        .push_bind(r.vendor_id.clone())
                        .push_bind(r.action.as_str())
                        .push_bind(r.client_addr.clone())
                        .push_bind(r.reason.clone());
                });
                b.push(" ON CONFLICT (event_id) DO NOTHING");
                b.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn query<'a>(&'a self, q: &'a AuditQuery) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
        Box::pin(async move {
            let mut b = QueryBuilder::<sqlx::Sqlite>::new(
                "SELECT event_id, occurred_at, instance_id, connection_id, user_id, transport, channel, \
                 vendor_id, action, client_addr, reason FROM audit_events WHERE 1 = 1",
            );
            if let Some(user) = &q.user_id {
                b.push(" AND user_id = ").push_bind(user.clone());
            }
            if let Some(vendor) = &q.vendor_id {
                b.push(" AND vendor_id = ").push_bind(vendor.clone());
            }
            if let Some(conn) = q.connection_id {
                b.push(" AND connection_id = ").push_bind(conn.hyphenated().to_string());
            }
            if let Some(since) = q.since {
                b.push(" AND occurred_at >= ").push_bind(format_time(since));
            }
            if let Some(after) = q.after {
                b.push(" AND (occurred_at, event_id) > (").push_bind(format_time(after.time));
                b.push(", ").push_bind(after.event_id.hyphenated().to_string()).push(")");
            }
            b.push(" ORDER BY occurred_at, event_id LIMIT ").push_bind(i64::try_from(q.limit).unwrap_or(i64::MAX));
            let rows = b.build().fetch_all(&self.pool).await?;
            rows.iter().map(from_row).collect()
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), AuditError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.pool.close())
    }
}

fn from_row(row: &SqliteRow) -> Result<AuditEvent, AuditError> {
    let time: String = row.try_get("occurred_at")?;
    AuditEvent::from_row(row, uuid_column(row, "event_id")?, uuid_column(row, "connection_id")?, parse_time(&time)?)
}

/// A UUID stored as text.
fn uuid_column(row: &SqliteRow, column: &'static str) -> Result<Uuid, AuditError> {
    let text: String = row.try_get(column)?;
    Uuid::try_parse(&text).map_err(|e| AuditError::Corrupt(format!("{column} {text:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_times_sort_as_text_and_read_back_equal() {
        let a = crate::audit::next_time(None);
        let b = a + time::Duration::microseconds(1);
        let c = a + time::Duration::seconds(3600);
        let (fa, fb, fc) = (format_time(a), format_time(b), format_time(c));
        assert!(fa < fb && fb < fc, "{fa} {fb} {fc}");
        assert_eq!(fa.len(), "2026-11-30T10:00:00.000000Z".len());
        assert_eq!(parse_time(&fa).ok(), Some(a));
    }
}
