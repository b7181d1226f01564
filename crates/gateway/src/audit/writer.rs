//! The batching writer: the only task that talks to the audit database.
//!
//! It takes rows from the hot-path queue into a memory backlog and writes
//! them in batches of `AUDIT_BATCH` (a batch goes out when full, or
//! [`FLUSH_INTERVAL`] after its first row; under load several batches are in
//! flight at once, see [`AuditSink::parallel_writes`]).
//!
//! While the database is unreachable no row waits in memory longer than
//! `AUDIT_SPILL_AFTER_MS` after it arrived (or beyond `AUDIT_BUFFER` rows)
//! before the backlog goes to the journal (synced before the rows leave
//! memory): a crash during an outage loses at most that window, not the
//! whole outage. Meanwhile a probe (`SELECT 1`)
//! runs with back-off, alongside the loop rather than awaited by it, so a
//! database that takes seconds to refuse does not hold rows in memory. On
//! recovery the journal is replayed before the backlog, so rows reach the
//! database in roughly the order they happened. When idle, the same probe
//! runs every `AUDIT_PROBE_INTERVAL_MS`, so `/health` follows the database
//! without traffic.
//!
//! Every journal call of the writer (append, sync, sealing and reading a
//! segment for replay, deleting it) runs on the blocking pool, never on a
//! runtime thread.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::journal::{Journal, Segment, SegmentBatch};
use super::{AuditError, AuditEvent, AuditSink, Health, on_blocking_thread};
use crate::metrics::Metrics;

/// How long a batch may wait to fill before it is written anyway.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Longest a single write may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a health probe may take before it counts as failed.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Housekeeping (journal fsync, gauges, idle probe) at least this often.
const TICK: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// At most one "journal not writable" error line per this period.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// What the writer is built from.
pub(crate) struct Parts {
    pub(crate) sink: Arc<dyn AuditSink>,
    pub(crate) journal: Arc<Journal>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) health: Arc<Health>,
    pub(crate) batch: usize,
    pub(crate) buffer: usize,
    pub(crate) migrated: bool,
    /// Longest a row stays in memory only, while the database is down.
    pub(crate) spill_after: Duration,
    /// Probe period when no row was written.
    pub(crate) probe_interval: Duration,
}

type Probe = BoxFuture<'static, Result<(), AuditError>>;

pub(crate) struct Writer {
    p: Parts,
    rx: mpsc::Receiver<AuditEvent>,
    backlog: VecDeque<AuditEvent>,
    /// When the oldest row now in the backlog arrived.
    backlog_since: Option<Instant>,
    /// Set while the sink is failing: when to probe again.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The journal segment being replayed, if one is half done, and where
    /// to go back to first (the start of a batch whose write failed).
    replay: Option<(Segment, Option<u64>)>,
    last_contact: Instant,
    /// A probe in flight, polled by the loop (never awaited on its own).
    probe: Option<Probe>,
    journal_error_logged_at: Option<Instant>,
}

/// The probe's result once it finishes; pending forever without one.
async fn probe_result(probe: &mut Option<Probe>) -> Result<(), AuditError> {
    match probe.as_mut() {
        Some(p) => p.await,
        None => std::future::pending().await,
    }
}

impl Writer {
    pub(crate) fn new(p: Parts, rx: mpsc::Receiver<AuditEvent>) -> Self {
        let retry_at = (!p.migrated).then(|| Instant::now() + BACKOFF_MIN);
        Self {
            p,
            rx,
            backlog: VecDeque::new(),
            backlog_since: None,
            retry_at,
            backoff: BACKOFF_MIN,
            replay: None,
            last_contact: Instant::now(),
            probe: None,
            journal_error_logged_at: None,
        }
    }

    /// Runs until `stop` delivers the shutdown deadline (or every sender is
    /// gone), then flushes.
    pub(crate) async fn run(mut self, mut stop: oneshot::Receiver<Instant>) {
        let mut buf = Vec::with_capacity(self.p.batch * self.p.sink.parallel_writes().max(1));
        let mut tick = tokio::time::interval(TICK.min(self.p.probe_interval));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A journal left by an earlier run is replayed at once.
        self.pump().await;
        loop {
            let retry = self.retry_at.filter(|_| self.probe.is_none()).map(tokio::time::Instant::from_std);
            let spill = self.spill_deadline().map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                deadline = &mut stop => {
                    let deadline = deadline.unwrap_or_else(|_| Instant::now());
                    return self.shutdown(deadline).await;
                }
                r = probe_result(&mut self.probe) => {
                    self.probe = None;
                    match r {
                        Ok(()) => {
                            self.last_contact = Instant::now();
                            self.mark_up();
                        }
                        Err(e) => self.went_down(&e),
                    }
                }
                n = self.rx.recv_many(&mut buf, self.p.batch * self.p.sink.parallel_writes().max(1)) => {
                    if n == 0 {
                        return self.shutdown(Instant::now() + Duration::from_secs(1)).await;
                    }
                    self.take(&mut buf);
                    if self.retry_at.is_none() {
                        self.fill(&mut buf).await;
                    }
                }
                () = async { if let Some(at) = retry { tokio::time::sleep_until(at).await } }, if retry.is_some() => {
                    self.start_probe();
                }
                () = async { if let Some(at) = spill { tokio::time::sleep_until(at).await } }, if spill.is_some() => {}
                _ = tick.tick() => self.housekeeping().await,
            }
            self.pump().await;
            self.update_gauges();
        }
    }

    /// Moves received rows into the backlog.
    fn take(&mut self, buf: &mut Vec<AuditEvent>) {
        if self.backlog.is_empty() && !buf.is_empty() {
            self.backlog_since = Some(Instant::now());
        }
        self.backlog.extend(buf.drain(..));
    }

    /// Batches by time: waits up to [`FLUSH_INTERVAL`] for a full batch.
    async fn fill(&mut self, buf: &mut Vec<AuditEvent>) {
        let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
        while self.backlog.len() < self.p.batch {
            let want = self.p.batch - self.backlog.len();
            match tokio::time::timeout_at(deadline, self.rx.recv_many(buf, want)).await {
                Ok(n) if n > 0 => self.take(buf),
                _ => break,
            }
        }
    }

    /// Writes what is pending while the sink is (believed) up; journals the
    /// backlog when it is due (see [`Writer::spill_due`]).
    async fn pump(&mut self) {
        let pending =
            !self.backlog.is_empty() || self.replay.is_some() || self.p.journal.has_pending() || !self.p.migrated;
        if self.retry_at.is_none() && pending {
            match self.write_pending().await {
                Ok(()) => self.mark_up(),
                Err(e) => self.went_down(&e),
            }
        }
        if self.spill_due() {
            let reason = if self.backlog.len() >= self.p.buffer { "buffer_full" } else { "database_down" };
            self.spill(reason).await;
        }
    }

    /// Whether the backlog must go to the journal now: it reached
    /// `AUDIT_BUFFER`, or the database is down and its oldest row has waited
    /// `AUDIT_SPILL_AFTER_MS`.
    fn spill_due(&self) -> bool {
        !self.backlog.is_empty()
            && (self.backlog.len() >= self.p.buffer || self.spill_deadline().is_some_and(|t| Instant::now() >= t))
    }

    /// When the backlog is due for the journal while the database is down.
    fn spill_deadline(&self) -> Option<Instant> {
        if self.retry_at.is_none() || self.backlog.is_empty() {
            return None;
        }
        self.backlog_since.map(|t| t + self.p.spill_after)
    }

    /// Journal first, then the backlog, batch by batch; stops at the first
    /// failure with everything unwritten still in place.
    async fn write_pending(&mut self) -> Result<(), AuditError> {
        if !self.p.migrated {
            timed(self.p.sink.migrate()).await?;
            self.p.migrated = true;
        }
        self.replay_journal().await?;
        while !self.backlog.is_empty() {
            let n = self.backlog.len().min(self.p.batch * self.p.sink.parallel_writes().max(1));
            let rows = &self.backlog.make_contiguous()[..n];
            write_batches(&*self.p.sink, &self.p.metrics, rows, self.p.batch).await?;
            self.backlog.drain(..n);
            self.contact();
        }
        self.backlog_since = None;
        Ok(())
    }

    /// A write went through: the database is up, an idle probe is moot.
    fn contact(&mut self) {
        self.last_contact = Instant::now();
        self.probe = None;
    }

    async fn replay_journal(&mut self) -> Result<(), AuditError> {
        let max = self.p.batch * self.p.sink.parallel_writes().max(1);
        loop {
            let journal = Arc::clone(&self.p.journal);
            let resume = self.replay.take();
            let Some((segment, start, batch)) = on_blocking_thread(move || read_next(&journal, resume, max)).await?
            else {
                return Ok(());
            };
            if let Err(e) = write_batches(&*self.p.sink, &self.p.metrics, &batch.rows, self.p.batch).await {
                self.replay = Some((segment, Some(start)));
                return Err(e);
            }
            self.contact();
            self.p.journal.confirm(batch.rows.len() as u64 + batch.invalid);
            if batch.invalid > 0 {
                self.p.metrics.audit_dropped.with_label_values(&["journal_unreadable"]).inc_by(batch.invalid);
            }
            if batch.done {
                tracing::debug!(file = %segment.path.display(), "audit journal segment written");
                let journal = Arc::clone(&self.p.journal);
                on_blocking_thread(move || journal.finish_segment(segment)).await?;
            } else {
                self.replay = Some((segment, None));
            }
        }
    }

    /// Moves the whole backlog to the journal (append and fdatasync, on the
    /// blocking pool). If the journal fails, the rows stay in memory up to
    /// `AUDIT_BUFFER`; the oldest beyond it are dropped and counted.
    async fn spill(&mut self, reason: &'static str) {
        if self.backlog.is_empty() {
            return;
        }
        let n = self.backlog.len();
        // A copy goes to the blocking thread; the rows leave memory only
        // once the journal has them on disk.
        let rows: Vec<AuditEvent> = self.backlog.iter().cloned().collect();
        let journal = Arc::clone(&self.p.journal);
        let result = tokio::task::spawn_blocking(move || journal.append(&rows).and_then(|()| journal.sync())).await;
        match result {
            Ok(Ok(())) => {
                self.backlog.clear();
                self.backlog_since = None;
                self.p.metrics.audit_spilled.with_label_values(&[reason]).inc_by(n as u64);
                tracing::debug!(rows = n, reason, "audit rows spilled to the journal");
            }
            Ok(Err(e)) => self.journal_failed(&e.to_string()),
            Err(e) => self.journal_failed(&e.to_string()),
        }
    }

    fn journal_failed(&mut self, error: &str) {
        // Memory stays bounded: the oldest rows beyond the bound go.
        let lost = self.backlog.len().saturating_sub(self.p.buffer);
        self.backlog.drain(..lost);
        self.p.metrics.audit_dropped.with_label_values(&["journal_error"]).inc_by(lost as u64);
        if self.journal_error_logged_at.is_none_or(|t| t.elapsed() >= ERROR_LOG_EVERY) {
            self.journal_error_logged_at = Some(Instant::now());
            tracing::error!(
                error,
                lost,
                kept = self.backlog.len(),
                "audit journal not writable while the database is down"
            );
        }
    }

    async fn housekeeping(&mut self) {
        let journal = Arc::clone(&self.p.journal);
        match tokio::task::spawn_blocking(move || journal.sync()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "audit journal sync failed"),
            Err(e) => tracing::error!(error = %e, "audit journal sync failed"),
        }
        if self.retry_at.is_none() && self.probe.is_none() && self.last_contact.elapsed() >= self.p.probe_interval {
            self.start_probe();
        }
        self.update_gauges();
    }

    /// Starts a `SELECT 1` (bounded by [`PROBE_TIMEOUT`]) that the loop
    /// polls alongside everything else.
    fn start_probe(&mut self) {
        if self.probe.is_some() {
            return;
        }
        let sink = Arc::clone(&self.p.sink);
        self.probe = Some(Box::pin(async move {
            tokio::time::timeout(PROBE_TIMEOUT, sink.ping()).await.map_err(|_| AuditError::Timeout(PROBE_TIMEOUT))?
        }));
    }

    fn mark_up(&mut self) {
        if self.retry_at.take().is_some() {
            tracing::info!(engine = self.p.sink.engine(), "audit database reachable again; writing journaled rows");
        }
        self.backoff = BACKOFF_MIN;
        self.p.health.set(None);
        self.p.metrics.audit_database_up.set(1);
    }

    /// A write or probe failed: health says so and probes back off; the
    /// rows in memory go to the journal by [`Writer::spill_due`].
    fn went_down(&mut self, e: &AuditError) {
        if self.retry_at.is_none() {
            tracing::warn!(engine = self.p.sink.engine(), error = %e, "audit database unreachable; journaling rows until it returns");
        } else {
            tracing::debug!(error = %e, "audit database still unreachable");
        }
        self.p.health.set(Some(e.to_string()));
        self.p.metrics.audit_database_up.set(0);
        self.retry_at = Some(Instant::now() + self.backoff);
        // While down, probe at least every probe interval.
        let max = BACKOFF_MAX.min(self.p.probe_interval).max(BACKOFF_MIN);
        self.backoff = (self.backoff * 2).min(max);
    }

    fn update_gauges(&self) {
        let m = &self.p.metrics;
        m.audit_queue_depth.set(self.rx.len() as i64);
        m.audit_buffered_rows.set(self.backlog.len() as i64);
        m.audit_journal_rows.set(i64::try_from(self.p.journal.pending_rows()).unwrap_or(i64::MAX));
    }

    /// Final flush: take what is queued, write it (and the journal) until
    /// `deadline` if the sink is up, journal whatever is left.
    async fn shutdown(mut self, deadline: Instant) {
        self.probe = None;
        self.rx.close();
        while let Ok(row) = self.rx.try_recv() {
            self.backlog.push_back(row);
        }
        if self.retry_at.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.write_pending()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "audit flush at shutdown failed"),
                Err(_) => tracing::warn!("audit flush at shutdown ran out of time"),
            }
        }
        let rows: Vec<AuditEvent> = self.backlog.drain(..).collect();
        let n = rows.len() as u64;
        let journal = Arc::clone(&self.p.journal);
        match on_blocking_thread(move || journal.append(&rows).and_then(|()| journal.sync())).await {
            Ok(()) if n == 0 => {}
            Ok(()) => {
                self.p.metrics.audit_spilled.with_label_values(&["shutdown"]).inc_by(n);
                tracing::warn!(
                    rows = n,
                    dir = %self.p.journal.dir().display(),
                    "audit rows journaled at shutdown; the next start writes them"
                );
            }
            Err(e) if n == 0 => tracing::error!(error = %e, "audit journal sync failed"),
            Err(e) => {
                self.p.metrics.audit_dropped.with_label_values(&["journal_error"]).inc_by(n);
                tracing::error!(error = %e, rows = n, "audit rows lost at shutdown: journal not writable");
            }
        }
        self.update_gauges();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.p.sink.close()).await;
    }
}

/// The next batch of the journal to replay: from the segment under way
/// (after going back to `rewind`, if set) or the oldest one, sealing the
/// active file if need be. File I/O: for the blocking pool.
fn read_next(
    journal: &Journal,
    resume: Option<(Segment, Option<u64>)>,
    max: usize,
) -> Result<Option<(Segment, u64, SegmentBatch)>, super::journal::JournalError> {
    let mut segment = match resume {
        Some((mut segment, rewind)) => {
            if let Some(pos) = rewind {
                segment.rewind(pos)?;
            }
            segment
        }
        None => match journal.next_segment()? {
            Some(segment) => segment,
            None => return Ok(None),
        },
    };
    let start = segment.position()?;
    let batch = segment.read_batch(max)?;
    Ok(Some((segment, start, batch)))
}

async fn timed<T>(f: impl Future<Output = Result<T, AuditError>>) -> Result<T, AuditError> {
    tokio::time::timeout(WRITE_TIMEOUT, f).await.map_err(|_| AuditError::Timeout(WRITE_TIMEOUT))?
}

/// `rows` in inserts of `batch` rows, all in flight at once; `Ok` only if
/// every insert succeeded (on failure the caller keeps all the rows: those
/// that did go in are skipped when written again).
async fn write_batches(
    sink: &dyn AuditSink,
    metrics: &Metrics,
    rows: &[AuditEvent],
    batch: usize,
) -> Result<(), AuditError> {
    let results = futures_util::future::join_all(rows.chunks(batch.max(1)).map(|c| write_rows(sink, metrics, c))).await;
    results.into_iter().collect()
}

/// One insert, measured.
async fn write_rows(sink: &dyn AuditSink, metrics: &Metrics, rows: &[AuditEvent]) -> Result<(), AuditError> {
    if rows.is_empty() {
        return Ok(());
    }
    let started = Instant::now();
    match timed(sink.write(rows)).await {
        Ok(()) => {
            metrics.audit_write_seconds.observe(started.elapsed().as_secs_f64());
            metrics.audit_batch_rows.observe(rows.len() as f64);
            metrics.audit_rows_written.inc_by(rows.len() as u64);
            Ok(())
        }
        Err(e) => {
            metrics.audit_write_errors.inc();
            Err(e)
        }
    }
}
