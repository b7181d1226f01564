//! Subscription audit trail (docs/protocol.md): one row per connect, subscribe,
//! unsubscribe and disconnect, in PostgreSQL ([`postgres`]) or, without
//! `DATABASE_URL`, an embedded SQLite file ([`sqlite`]).
//!
//! The hot path (a session) only calls [`Audit::record`]: a `try_send` into
//! a bounded queue, never a database await. A writer task batches rows into
//! the [`AuditSink`]. When the sink fails, rows go to the [`journal`] on
//! disk: at once on the failed write, then within `AUDIT_SPILL_AFTER_MS`
//! (or at `AUDIT_BUFFER` rows) while it stays down; when the sink is back,
//! the journal is written first, then memory. If even the queue is full,
//! the hot path appends the row to the journal itself (a buffered write, no
//! fsync) rather than drop it or wait. Event ids make every write
//! idempotent, so nothing is stored twice.

pub mod api;
mod event;
pub mod journal;
pub mod postgres;
pub mod sqlite;
mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

pub use event::{Action, AuditEvent, AuditQuery, Cursor, legacy_connection_id, next_time, truncate_to_micros};
use journal::{Journal, JournalError};

use crate::bus::DependencyStatus;
use crate::metrics::Metrics;

/// How long start-up waits for the database (migrations) before serving
/// anyway with the audit trail buffering.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(5);

/// An audit operation that failed.
///
/// Each variant displays its cause and does not also expose it as
/// `source()`: loggers that walk the chain (anyhow's `{:#}`) would print it
/// twice otherwise.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// `DATABASE_URL` could not be parsed.
    #[error("invalid DATABASE_URL: {0}")]
    Url(sqlx::Error),
    /// The database refused or could not be reached.
    #[error("database: {0}")]
    Database(sqlx::Error),
    /// Applying the embedded migrations failed.
    #[error("migrations: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    /// The database did not answer in time.
    #[error("database did not answer within {0:?}")]
    Timeout(Duration),
    /// The spill journal failed (its message names the journal).
    #[error("{0}")]
    Journal(JournalError),
    /// A stored row could not be read back.
    #[error("stored audit row is invalid: {0}")]
    Corrupt(String),
}

impl AuditError {
    /// Whether a setting is wrong (the operator must change it; retrying
    /// cannot help): the binary exits 2 for these.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Url(_) | Self::Journal(JournalError::Locked(_)))
    }
}

impl From<sqlx::Error> for AuditError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for AuditError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Self::Migrate(e)
    }
}

impl From<JournalError> for AuditError {
    fn from(e: JournalError) -> Self {
        Self::Journal(e)
    }
}

/// Where audit rows are stored: one trait, a real engine and an embedded one.
pub trait AuditSink: Send + Sync + 'static {
    /// `postgres` or `sqlite`, for logs.
    fn engine(&self) -> &'static str;

    /// Whether this is the embedded engine (no dependency to be down for).
    fn embedded(&self) -> bool;

    /// How many batches the writer may have in flight at once (each on its
    /// own connection), so a round trip's latency is paid once per several
    /// batches.
    fn parallel_writes(&self) -> usize {
        1
    }

    /// Applies the embedded migrations; idempotent.
    fn migrate(&self) -> BoxFuture<'_, Result<(), AuditError>>;

    /// Inserts rows, all or none; rows whose event id is already stored
    /// are skipped.
    fn write<'a>(&'a self, rows: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>>;

    /// Rows matching `query`, in (time, event id) order.
    fn query<'a>(&'a self, query: &'a AuditQuery) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>>;

    /// A cheap round trip, so health is fresh while no rows flow.
    fn ping(&self) -> BoxFuture<'_, Result<(), AuditError>>;

    /// Closes the connections.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Settings of the audit trail (from [`crate::Config`]).
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// PostgreSQL; `None`: embedded SQLite.
    pub database_url: Option<String>,
    /// The SQLite file when there is no URL.
    pub sqlite_path: PathBuf,
    /// Where rows spill while the database is unreachable.
    pub journal_dir: PathBuf,
    /// Hot-path queue capacity (rows).
    pub queue: usize,
    /// Rows per insert.
    pub batch: usize,
    /// Rows kept in memory while the database is unreachable before they
    /// spill to the journal.
    pub buffer: usize,
    /// Longest a row waits in memory only while the database is down.
    pub spill_after: Duration,
    /// How often an idle writer probes the database (for `/health`).
    pub probe_interval: Duration,
}

impl AuditOptions {
    /// The options a configuration asks for.
    pub fn from_config(config: &crate::Config) -> Self {
        Self {
            database_url: config.database_url.clone(),
            sqlite_path: config.audit_sqlite_path.clone(),
            journal_dir: config.audit_journal_dir.clone(),
            queue: config.audit_queue,
            batch: config.audit_batch,
            buffer: config.audit_buffer,
            spill_after: Duration::from_millis(config.audit_spill_after_ms),
            probe_interval: Duration::from_millis(config.audit_probe_interval_ms),
        }
    }
}

/// The sink's state as the writer last saw it.
#[derive(Debug, Default)]
pub(crate) struct Health {
    down: Mutex<Option<String>>,
}

impl Health {
    pub(crate) fn set(&self, down: Option<String>) {
        *self.down.lock() = down;
    }

    fn get(&self) -> Option<String> {
        self.down.lock().clone()
    }
}

/// The audit trail of one gateway: the hot path's handle, the writer task
/// and the query side.
pub struct Audit {
    tx: mpsc::Sender<AuditEvent>,
    journal: Arc<Journal>,
    sink: Arc<dyn AuditSink>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    instance_id: Arc<str>,
    stop: Mutex<Option<oneshot::Sender<Instant>>>,
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    error_logged_at: Mutex<Option<Instant>>,
}

impl Audit {
    /// Opens the journal and the engine, applies migrations (SQLite: must
    /// succeed; PostgreSQL: waits up to 5 s, then serves anyway and the
    /// writer retries) and starts the writer.
    pub async fn start(opts: AuditOptions, instance_id: &str, metrics: Arc<Metrics>) -> Result<Self, AuditError> {
        let journal = Arc::new(Journal::open(&opts.journal_dir)?);
        let sink: Arc<dyn AuditSink> = match &opts.database_url {
            Some(url) => {
                let sink = postgres::PgSink::connect_lazy(url)?;
                tracing::info!(target = %sink.describe(), "audit trail in PostgreSQL");
                Arc::new(sink)
            }
            None => {
                tracing::info!(path = %opts.sqlite_path.display(), "no DATABASE_URL: audit trail in embedded SQLite");
                Arc::new(sqlite::SqliteSink::open(&opts.sqlite_path).await?)
            }
        };
        Self::start_with_sink(opts, sink, journal, instance_id, metrics).await
    }

    async fn start_with_sink(
        opts: AuditOptions,
        sink: Arc<dyn AuditSink>,
        journal: Arc<Journal>,
        instance_id: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AuditError> {
        let health = Arc::new(Health::default());
        let migrated = match tokio::time::timeout(STARTUP_TIMEOUT, sink.migrate()).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) if sink.embedded() => return Err(e),
            Err(_) if sink.embedded() => return Err(AuditError::Timeout(STARTUP_TIMEOUT)),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit database unavailable at start; rows are kept and written when it returns");
                health.set(Some(e.to_string()));
                false
            }
            Err(_) => {
                let e = AuditError::Timeout(STARTUP_TIMEOUT);
                tracing::error!(error = %e, "audit database unavailable at start; rows are kept and written when it returns");
                health.set(Some(e.to_string()));
                false
            }
        };
        metrics.audit_database_up.set(i64::from(migrated));
        if journal.has_pending() {
            tracing::info!(rows = journal.pending_rows(), dir = %journal.dir().display(), "audit journal found; replaying");
        }
        let (tx, rx) = mpsc::channel(opts.queue);
        let (stop_tx, stop_rx) = oneshot::channel();
        let writer = writer::Writer::new(
            writer::Parts {
                sink: Arc::clone(&sink),
                journal: Arc::clone(&journal),
                metrics: Arc::clone(&metrics),
                health: Arc::clone(&health),
                batch: opts.batch,
                buffer: opts.buffer,
                migrated,
                spill_after: opts.spill_after,
                probe_interval: opts.probe_interval,
            },
            rx,
        );
        let handle = tokio::spawn(writer.run(stop_rx));
        Ok(Self {
            tx,
            journal,
            sink,
            metrics,
            health,
            instance_id: Arc::from(instance_id),
            stop: Mutex::new(Some(stop_tx)),
            writer: Mutex::new(Some(handle)),
            error_logged_at: Mutex::new(None),
        })
    }

    /// This instance's id, shared by every row.
    pub fn instance_id(&self) -> &Arc<str> {
        &self.instance_id
    }

    /// Hands a row to the writer without waiting. When the queue is full
    /// (or the writer has stopped) the row is appended to the journal right
    /// here: a buffered file write of a few hundred bytes, no fsync.
    pub fn record(&self, event: AuditEvent) {
        use mpsc::error::TrySendError;
        let (event, reason) = match self.tx.try_send(event) {
            Ok(()) => return,
            Err(TrySendError::Full(e)) => (e, "queue_full"),
            Err(TrySendError::Closed(e)) => (e, "writer_stopped"),
        };
        match self.journal.append(std::slice::from_ref(&event)) {
            Ok(()) => self.metrics.audit_spilled.with_label_values(&[reason]).inc(),
            Err(e) => {
                self.metrics.audit_dropped.with_label_values(&["journal_error"]).inc();
                // At most one line a second: a full disk must not flood logs.
                let mut at = self.error_logged_at.lock();
                if at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    *at = Some(Instant::now());
                    tracing::error!(error = %e, "audit row lost: queue full and journal not writable");
                }
            }
        }
    }

    /// Rows waiting in the hot-path queue.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Rows matching `query` (from the database; rows still queued or
    /// journaled appear once written).
    pub async fn query(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, AuditError> {
        const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
        tokio::time::timeout(QUERY_TIMEOUT, self.sink.query(query))
            .await
            .map_err(|_| AuditError::Timeout(QUERY_TIMEOUT))?
    }

    /// `/health`'s `database` check: SQLite is embedded, so `ok` unless its
    /// writes fail; PostgreSQL is `down` while the writer cannot reach it
    /// (an idle writer probes every `AUDIT_PROBE_INTERVAL_MS`, so this is
    /// current without traffic).
    pub fn health(&self) -> DependencyStatus {
        match self.health.get() {
            None => DependencyStatus::Ok,
            Some(why) => DependencyStatus::Down(format!("{}: {why}", self.sink.engine())),
        }
    }

    /// Flushes on shutdown: rows still queued are written within `budget`
    /// (the rest of `SHUTDOWN_TIMEOUT`); what cannot be written by then is
    /// journaled and synced, for the next start. Idempotent.
    pub async fn close(&self, budget: Duration) {
        let deadline = Instant::now() + budget;
        if let Some(stop) = self.stop.lock().take() {
            let _ = stop.send(deadline);
        }
        let handle = self.writer.lock().take();
        if let Some(handle) = handle {
            // The writer journals by itself at the deadline; the extra second
            // covers that local file write (rows are never dropped to save
            // it, so only a disk that stalls can stretch the exit).
            let grace = budget + Duration::from_secs(1);
            if tokio::time::timeout(grace, handle).await.is_err() {
                tracing::error!("audit writer did not stop in time");
            }
        }
        self.journal.release();
    }
}

#[cfg(test)]
mod tests;
