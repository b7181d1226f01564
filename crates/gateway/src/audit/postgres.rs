//! PostgreSQL as the audit sink (`DATABASE_URL`).
//!
//! A batch is one statement: `INSERT … SELECT FROM UNNEST($1::uuid[], …)
//! ON CONFLICT (event_id) DO NOTHING`, eleven array parameters whatever the
//! batch size, so the statement is prepared once per connection and a
//! batch is one round trip.

use std::str::FromStr;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{QueryBuilder, Row};

use super::{AuditError, AuditEvent, AuditQuery, AuditSink};

/// The PostgreSQL migrations, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations/postgres");

/// How long getting a connection may take; short, so an outage is noticed
/// quickly and rows go to the backlog instead of waiting.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// Batches in flight at once. sqlx 0.9.0 does not set TCP_NODELAY, so over
/// TLS (several records per message) a round trip can stall ~40 ms on
/// Nagle + delayed ACK; parallel batches keep throughput up regardless.
const PARALLEL_WRITES: usize = 4;

const INSERT: &str = "INSERT INTO audit_events \
    (event_id, occurred_at, instance_id, connection_id, user_id, transport, channel, vendor_id, action, client_addr, reason) \
    SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::text[], $4::uuid[], $5::text[], $6::text[], \
    $7::text[], $8::text[], $9::text[], $10::text[], $11::text[]) \
    ON CONFLICT (event_id) DO NOTHING";

const COLUMNS: &str = "SELECT event_id, occurred_at, instance_id, connection_id, user_id, transport, channel, \
    vendor_id, action, client_addr, reason FROM audit_events";

/// The PostgreSQL sink.
#[derive(Debug, Clone)]
pub struct PgSink {
    pool: PgPool,
    target: String,
}

impl PgSink {
    /// A sink for `url`; connects on first use, so an unreachable database
    /// does not stop the gateway from starting.
    pub fn connect_lazy(url: &str) -> Result<Self, AuditError> {
        let options = PgConnectOptions::from_str(url).map_err(AuditError::Url)?;
        Ok(Self::with_options(options))
    }

    /// A sink with explicit options (tests set `search_path` here).
    pub fn with_options(options: PgConnectOptions) -> Self {
        let target = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("(default database)")
        );
        let options = options.application_name("venta-gateway");
        let pool = PgPoolOptions::new()
            // The writer's batches plus two for the audit API and pings.
            .max_connections(PARALLEL_WRITES as u32 + 2)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Self { pool, target }
    }

    /// `host:port/database`, without credentials, for logs.
    pub fn describe(&self) -> &str {
        &self.target
    }
}

impl AuditSink for PgSink {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn embedded(&self) -> bool {
        false
    }

    fn parallel_writes(&self) -> usize {
        PARALLEL_WRITES
    }

    fn migrate(&self) -> BoxFuture<'_, Result<(), AuditError>> {
        Box::pin(async move { MIGRATOR.run(&self.pool).await.map_err(AuditError::from) })
    }

    fn write<'a>(&'a self, rows: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            let n = rows.len();
            let mut ids = Vec::with_capacity(n);
            let mut times = Vec::with_capacity(n);
            let mut instances = Vec::with_capacity(n);
            let mut conns = Vec::with_capacity(n);
            let mut users = Vec::with_capacity(n);
            let mut transports = Vec::with_capacity(n);
            let mut channels = Vec::with_capacity(n);
            let mut vendors = Vec::with_capacity(n);
            let mut actions = Vec::with_capacity(n);
            let mut addrs = Vec::with_capacity(n);
            let mut reasons = Vec::with_capacity(n);
            for r in rows {
                ids.push(r.event_id);
                times.push(r.time);
                instances.push(&*r.instance_id);
                conns.push(r.connection_id);
                users.push(r.user_id.as_deref());
                transports.push(r.transport.as_str());
                channels.push(r.channel.as_deref());
                vendors.push(r.vendor_id.as_deref());
                actions.push(r.action.as_str());
                addrs.push(r.client_addr.as_deref());
                reasons.push(r.reason.as_deref());
            }
            sqlx::query(INSERT)
                .bind(ids)
                .bind(times)
                .bind(instances)
                .bind(conns)
                .bind(users)
                .bind(transports)
                .bind(channels)
                .bind(vendors)
                .bind(actions)
                .bind(addrs)
                .bind(reasons)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn query<'a>(&'a self, q: &'a AuditQuery) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
        Box::pin(async move {
            let mut b = QueryBuilder::<sqlx::Postgres>::new(COLUMNS);
            b.push(" WHERE TRUE");
            if let Some(user) = &q.user_id {
                b.push(" AND user_id = ").push_bind(user.as_str());
            }
            if let Some(vendor) = &q.vendor_id {
                b.push(" AND vendor_id = ").push_bind(vendor.as_str());
            }
            if let Some(conn) = q.connection_id {
                b.push(" AND connection_id = ").push_bind(conn);
            }
            if let Some(since) = q.since {
                b.push(" AND occurred_at >= ").push_bind(since);
            }
            if let Some(after) = q.after {
                b.push(" AND (occurred_at, event_id) > (").push_bind(after.time);
                b.push(", ").push_bind(after.event_id).push(")");
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

fn from_row(row: &PgRow) -> Result<AuditEvent, AuditError> {
    AuditEvent::from_row(row, row.try_get("event_id")?, row.try_get("connection_id")?, row.try_get("occurred_at")?)
}
