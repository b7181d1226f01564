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
//! the hot path hands the row to the journal's own thread (a second
//! bounded queue, `AUDIT_JOURNAL_QUEUE`) rather than wait: no file I/O runs
//! on a runtime thread. Event ids make every write idempotent, so nothing
//! is stored twice.

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

/// Settings of the audit trail (from [`crate::config::AuditConfig`]).
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
    /// Rows waiting for the journal's thread when the hot-path queue is full.
    pub journal_queue: usize,
    /// Longest a row waits in memory only while the database is down.
    pub spill_after: Duration,
    /// How often an idle writer probes the database (for `/health`).
    pub probe_interval: Duration,
}

impl AuditOptions {
    /// The options a configuration asks for.
    pub fn from_config(config: &crate::config::AuditConfig) -> Self {
        Self {
            database_url: config.database_url.clone(),
            sqlite_path: config.sqlite_path.clone(),
            journal_dir: config.journal_dir.clone(),
            queue: config.queue,
            batch: config.batch,
            buffer: config.buffer,
            journal_queue: config.journal_queue,
            spill_after: Duration::from_millis(config.spill_after_ms),
            probe_interval: Duration::from_millis(config.probe_interval_ms),
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
    /// The hot path's overflow into the journal's thread; taken at
    /// [`Audit::close`], which ends that thread.
    overflow: Mutex<Option<mpsc::Sender<AuditEvent>>>,
    /// Resolves when the journal's thread has appended its last row.
    overflow_done: Mutex<Option<oneshot::Receiver<()>>>,
    error_logged_at: Mutex<Option<Instant>>,
}

impl Audit {
    /// Opens the journal and the engine, applies migrations (SQLite: must
    /// succeed; PostgreSQL: waits up to 5 s, then serves anyway and the
    /// writer retries) and starts the writer.
    pub async fn start(opts: AuditOptions, instance_id: &str, metrics: Arc<Metrics>) -> Result<Self, AuditError> {
        // Opening counts the rows a previous run left: file reads.
        let dir = opts.journal_dir.clone();
        let journal = Arc::new(on_blocking_thread(move || Journal::open(&dir)).await?);
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
        let (overflow, overflow_rx) = mpsc::channel(opts.journal_queue.max(1));
        let (done_tx, done_rx) = oneshot::channel();
        let thread_journal = Arc::clone(&journal);
        let thread_metrics = Arc::clone(&metrics);
        std::thread::Builder::new()
            .name("audit-journal".into())
            .spawn(move || append_overflow(&thread_journal, &thread_metrics, overflow_rx, done_tx))
            .map_err(|error| JournalError::Io { path: journal.dir().to_owned(), error })?;
        Ok(Self {
            tx,
            journal,
            sink,
            metrics,
            health,
            instance_id: Arc::from(instance_id),
            stop: Mutex::new(Some(stop_tx)),
            writer: Mutex::new(Some(handle)),
            overflow: Mutex::new(Some(overflow)),
            overflow_done: Mutex::new(Some(done_rx)),
            error_logged_at: Mutex::new(None),
        })
    }

    /// This instance's id, shared by every row.
    pub fn instance_id(&self) -> &Arc<str> {
        &self.instance_id
    }

    /// Hands a row to the writer without waiting. When the queue is full
    /// (or the writer has stopped) the row goes to the journal's thread
    /// instead, also without waiting; it is counted as spilled when handed
    /// over (and as dropped too if that append then fails). Only when both
    /// queues are full is a row lost, and counted.
    pub fn record(&self, event: AuditEvent) {
        use mpsc::error::TrySendError;
        let (event, reason) = match self.tx.try_send(event) {
            Ok(()) => return,
            Err(TrySendError::Full(e)) => (e, "queue_full"),
            Err(TrySendError::Closed(e)) => (e, "writer_stopped"),
        };
        let handed = match self.overflow.lock().as_ref() {
            Some(overflow) => overflow.try_send(event),
            None => Err(TrySendError::Closed(event)),
        };
        match handed {
            Ok(()) => self.metrics.audit_spilled.with_label_values(&[reason]).inc(),
            Err(TrySendError::Full(_)) => {
                self.metrics.audit_dropped.with_label_values(&["journal_full"]).inc();
                self.log_loss("audit row lost: queue and journal queue full (AUDIT_QUEUE, AUDIT_JOURNAL_QUEUE)");
            }
            // After shutdown (a straggler past the deadline): nothing else
            // is left to take the row, so it is appended here, once.
            Err(TrySendError::Closed(event)) => match self.journal.append(std::slice::from_ref(&event)) {
                Ok(()) => self.metrics.audit_spilled.with_label_values(&[reason]).inc(),
                Err(_) => {
                    self.metrics.audit_dropped.with_label_values(&["journal_error"]).inc();
                    self.log_loss("audit row lost after shutdown: journal not writable");
                }
            },
        }
    }

    /// At most one line a second: a flood of lost rows must not flood logs.
    fn log_loss(&self, what: &'static str) {
        let mut at = self.error_logged_at.lock();
        if at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *at = Some(Instant::now());
            tracing::error!("{what}");
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
        // The writer journals by itself at the deadline; the extra second
        // covers that local file write (rows are never dropped to save it,
        // so only a disk that stalls can stretch the exit).
        let grace = budget + Duration::from_secs(1);
        if let Some(handle) = handle
            && tokio::time::timeout(grace, handle).await.is_err()
        {
            tracing::error!("audit writer did not stop in time");
        }
        // The journal's thread appends what it holds, then ends.
        self.overflow.lock().take();
        let done = self.overflow_done.lock().take();
        if let Some(done) = done
            && tokio::time::timeout(grace, done).await.is_err()
        {
            tracing::error!("audit journal thread did not stop in time");
        }
        let journal = Arc::clone(&self.journal);
        let _ = on_blocking_thread(move || {
            journal.release();
            Ok(())
        })
        .await;
    }
}

/// Runs journal I/O on the blocking pool; a panic there is an I/O error of
/// the journal, not of the caller.
pub(crate) async fn on_blocking_thread<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(JournalError::Io { path: PathBuf::new(), error: std::io::Error::other(e.to_string()) }))
}

/// The journal's thread: appends the rows the hot path could not queue, in
/// batches, until [`Audit::close`] (or drop) ends the queue; then syncs.
fn append_overflow(
    journal: &Journal,
    metrics: &Metrics,
    mut rows: mpsc::Receiver<AuditEvent>,
    done: oneshot::Sender<()>,
) {
    const BATCH: usize = 256;
    let mut batch = Vec::with_capacity(BATCH);
    let mut logged_at: Option<Instant> = None;
    while rows.blocking_recv_many(&mut batch, BATCH) > 0 {
        if let Err(e) = journal.append(&batch) {
            metrics.audit_dropped.with_label_values(&["journal_error"]).inc_by(batch.len() as u64);
            if logged_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                logged_at = Some(Instant::now());
                tracing::error!(error = %e, rows = batch.len(), "audit rows lost: queue full and journal not writable");
            }
        }
        batch.clear();
        if batch.capacity() > BATCH {
            batch.shrink_to(BATCH);
        }
    }
    if let Err(e) = journal.sync() {
        tracing::error!(error = %e, "audit journal sync failed");
    }
    let _ = done.send(());
}

#[cfg(test)]
mod tests;
