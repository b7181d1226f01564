//! The batching writer: the only task that talks to the audit database.
//!
//! It takes rows from the hot-path queue into a memory backlog and writes
//! them in batches of `AUDIT_BATCH` (a batch goes out when full, or
//! [`FLUSH_INTERVAL`] after its first row; under load several batches are in
//! flight at once, see [`AuditSink::parallel_writes`]). While the sink fails it retries
//! with back-off; the backlog holds up to `AUDIT_BUFFER` rows, then spills
//! to the journal (synced before the rows leave memory). On recovery the
//! journal is replayed before the backlog, so rows reach the database in
//! roughly the order they happened.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use super::journal::{Journal, Segment};
use super::{AuditError, AuditEvent, AuditSink, Health};
use crate::metrics::Metrics;

/// How long a batch may wait to fill before it is written anyway.
const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Longest a single write (or ping) may take before it counts as failed.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Housekeeping: journal fsync, gauges, idle health probe.
const TICK: Duration = Duration::from_secs(1);
/// A health probe when no row was written for this long.
const PROBE_AFTER: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the writer is built from.
pub(crate) struct Parts {
    pub(crate) sink: Arc<dyn AuditSink>,
    pub(crate) journal: Arc<Journal>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) health: Arc<Health>,
    pub(crate) batch: usize,
    pub(crate) buffer: usize,
    pub(crate) migrated: bool,
}

pub(crate) struct Writer {
    p: Parts,
    rx: mpsc::Receiver<AuditEvent>,
    backlog: VecDeque<AuditEvent>,
    /// Set while the sink is failing: when to try again.
    retry_at: Option<Instant>,
    backoff: Duration,
    /// The journal segment being replayed, if one is half done.
    replay: Option<Segment>,
    last_contact: Instant,
}

impl Writer {
    pub(crate) fn new(p: Parts, rx: mpsc::Receiver<AuditEvent>) -> Self {
        let retry_at = (!p.migrated).then(|| Instant::now() + BACKOFF_MIN);
        Self {
            p,
            rx,
            backlog: VecDeque::new(),
            retry_at,
            backoff: BACKOFF_MIN,
            replay: None,
            last_contact: Instant::now(),
        }
    }

    /// Runs until `stop` delivers the shutdown deadline (or every sender is
    /// gone), then flushes.
    pub(crate) async fn run(mut self, mut stop: oneshot::Receiver<Instant>) {
        let mut buf = Vec::with_capacity(self.p.batch * self.p.sink.parallel_writes().max(1));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A journal left by an earlier run is replayed at once.
        self.pump().await;
        loop {
            let retry = self.retry_at.map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                deadline = &mut stop => {
                    let deadline = deadline.unwrap_or_else(|_| Instant::now());
                    return self.shutdown(deadline).await;
                }
                n = self.rx.recv_many(&mut buf, self.p.batch * self.p.sink.parallel_writes().max(1)) => {
                    if n == 0 {
                        return self.shutdown(Instant::now() + Duration::from_secs(1)).await;
                    }
                    self.backlog.extend(buf.drain(..));
                    if self.retry_at.is_none() {
                        self.fill(&mut buf).await;
                    }
                }
                () = async { if let Some(at) = retry { tokio::time::sleep_until(at).await } }, if retry.is_some() => {}
                _ = tick.tick() => self.housekeeping().await,
            }
            self.pump().await;
            self.update_gauges();
        }
    }

    /// Batches by time: waits up to [`FLUSH_INTERVAL`] for a full batch.
    async fn fill(&mut self, buf: &mut Vec<AuditEvent>) {
        let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
        while self.backlog.len() < self.p.batch {
            let want = self.p.batch - self.backlog.len();
            match tokio::time::timeout_at(deadline, self.rx.recv_many(buf, want)).await {
                Ok(n) if n > 0 => self.backlog.extend(buf.drain(..)),
                _ => break,
            }
        }
    }

    /// Writes what is pending if the sink is (believed) up or a retry is
    /// due; spills the backlog when it is over its bound.
    async fn pump(&mut self) {
        let due = self.retry_at.is_none_or(|t| Instant::now() >= t);
        let pending = !self.backlog.is_empty() || self.replay.is_some() || self.p.journal.has_pending();
        if due && (pending || self.retry_at.is_some()) {
            match self.write_pending().await {
                Ok(()) => self.mark_up(),
                Err(e) => self.mark_down(&e),
            }
        }
        self.spill_if_full();
    }

    /// Journal first, then the backlog, batch by batch; stops at the first
    /// failure with everything unwritten still in place.
    async fn write_pending(&mut self) -> Result<(), AuditError> {
        if self.retry_at.is_some() {
            timed(self.p.sink.ping()).await?;
        }
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
            self.last_contact = Instant::now();
        }
        Ok(())
    }

    async fn replay_journal(&mut self) -> Result<(), AuditError> {
        loop {
            let mut segment = match self.replay.take() {
                Some(s) => s,
                None => match self.p.journal.next_segment()? {
                    Some(s) => s,
                    None => return Ok(()),
                },
            };
            let start = segment.position()?;
            let batch = segment.read_batch(self.p.batch * self.p.sink.parallel_writes().max(1))?;
            if let Err(e) = write_batches(&*self.p.sink, &self.p.metrics, &batch.rows, self.p.batch).await {
                segment.rewind(start)?;
                self.replay = Some(segment);
                return Err(e);
            }
            self.last_contact = Instant::now();
            self.p.journal.confirm(batch.rows.len() as u64 + batch.invalid);
            if batch.invalid > 0 {
                self.p.metrics.audit_dropped.with_label_values(&["journal_unreadable"]).inc_by(batch.invalid);
            }
            if batch.done {
                tracing::debug!(file = %segment.path.display(), "audit journal segment written");
                self.p.journal.finish_segment(segment)?;
            } else {
                self.replay = Some(segment);
            }
        }
    }

    /// Moves the backlog to the journal once it reaches `AUDIT_BUFFER`.
    fn spill_if_full(&mut self) {
        if self.backlog.len() < self.p.buffer {
            return;
        }
        let n = self.backlog.len();
        let rows = self.backlog.make_contiguous();
        match self.p.journal.append(rows).and_then(|()| self.p.journal.sync()) {
            Ok(()) => {
                self.backlog.clear();
                self.p.metrics.audit_spilled.with_label_values(&["buffer_full"]).inc_by(n as u64);
                tracing::info!(rows = n, "audit buffer full; rows spilled to the journal");
            }
            Err(e) => {
                // Memory stays bounded: the oldest rows beyond the bound go.
                let lost = n.saturating_sub(self.p.buffer);
                self.backlog.drain(..lost);
                self.p.metrics.audit_dropped.with_label_values(&["journal_error"]).inc_by(lost as u64);
                tracing::error!(error = %e, lost, "audit journal not writable while the database is down");
            }
        }
    }

    async fn housekeeping(&mut self) {
        if let Err(e) = self.p.journal.sync() {
            tracing::error!(error = %e, "audit journal sync failed");
        }
        if self.retry_at.is_none() && self.last_contact.elapsed() >= PROBE_AFTER {
            self.last_contact = Instant::now();
            match timed(self.p.sink.ping()).await {
                Ok(()) => self.mark_up(),
                Err(e) => self.mark_down(&e),
            }
        }
        self.update_gauges();
    }

    fn mark_up(&mut self) {
        if self.retry_at.take().is_some() {
            tracing::info!(engine = self.p.sink.engine(), "audit database reachable again; buffered rows written");
        }
        self.backoff = BACKOFF_MIN;
        self.p.health.set(None);
        self.p.metrics.audit_database_up.set(1);
    }

    fn mark_down(&mut self, e: &AuditError) {
        if self.retry_at.is_none() {
            tracing::warn!(engine = self.p.sink.engine(), error = %e, "audit database unreachable; keeping rows until it returns");
        } else {
            tracing::debug!(error = %e, "audit database still unreachable");
        }
        self.p.health.set(Some(e.to_string()));
        self.p.metrics.audit_database_up.set(0);
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
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
        if !self.backlog.is_empty() {
            let rows = self.backlog.make_contiguous();
            match self.p.journal.append(rows).and_then(|()| self.p.journal.sync()) {
                Ok(()) => {
                    self.p.metrics.audit_spilled.with_label_values(&["shutdown"]).inc_by(rows.len() as u64);
                    tracing::warn!(
                        rows = rows.len(),
                        dir = %self.p.journal.dir().display(),
                        "audit rows journaled at shutdown; the next start writes them"
                    );
                }
                Err(e) => {
                    self.p.metrics.audit_dropped.with_label_values(&["journal_error"]).inc_by(rows.len() as u64);
                    tracing::error!(error = %e, rows = rows.len(), "audit rows lost at shutdown: journal not writable");
                }
            }
        }
        if let Err(e) = self.p.journal.sync() {
            tracing::error!(error = %e, "audit journal sync failed");
        }
        self.update_gauges();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.p.sink.close()).await;
    }
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
