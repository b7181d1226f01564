//! The writer's bookkeeping against a sink the test can stall: no row is
//! lost or stored twice whichever path (queue, memory, journal) it takes.
//! The engines themselves are tested against real PostgreSQL and SQLite in
//! `tests/audit.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use super::*;

/// Stores rows in a map keyed by event id (so a second write of a row is a
/// no-op, like ON CONFLICT DO NOTHING); fails every call while `down`.
#[derive(Default)]
struct Gate {
    down: AtomicBool,
    rows: Mutex<HashMap<uuid::Uuid, AuditEvent>>,
    writes: Mutex<u64>,
}

struct GateSink(Arc<Gate>);

impl GateSink {
    fn check(&self) -> Result<(), AuditError> {
        if self.0.down.load(Ordering::SeqCst) { Err(AuditError::Database(sqlx::Error::PoolTimedOut)) } else { Ok(()) }
    }
}

impl AuditSink for GateSink {
    fn engine(&self) -> &'static str {
        "gate"
    }
    fn embedded(&self) -> bool {
        false
    }
    fn migrate(&self) -> BoxFuture<'_, Result<(), AuditError>> {
        Box::pin(async move { self.check() })
    }
    fn write<'a>(&'a self, rows: &'a [AuditEvent]) -> BoxFuture<'a, Result<(), AuditError>> {
        Box::pin(async move {
            self.check()?;
            *self.0.writes.lock() += 1;
            let mut map = self.0.rows.lock();
            for r in rows {
                map.entry(r.event_id).or_insert_with(|| r.clone());
            }
            Ok(())
        })
    }
    fn query<'a>(&'a self, _: &'a AuditQuery) -> BoxFuture<'a, Result<Vec<AuditEvent>, AuditError>> {
        Box::pin(async move { Ok(Vec::new()) })
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), AuditError>> {
        Box::pin(async move { self.check() })
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// A connect event of connection `n`; shared with the journal's tests.
pub(super) fn event(n: u64) -> AuditEvent {
    AuditEvent {
        event_id: uuid::Uuid::now_v7(),
        time: next_time(None),
        instance_id: Arc::from("t"),
        connection_id: legacy_connection_id(n),
        user_id: None,
        transport: "websocket".into(),
        channel: None,
        vendor_id: None,
        action: Action::Connect,
        client_addr: None,
        reason: None,
    }
}

/// A directory removed on drop; shared with the journal's tests.
pub(super) struct TempDir(pub(super) PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn start(gate: &Arc<Gate>, dir: &TempDir, queue: usize, spill_after: Duration) -> Audit {
    let opts = AuditOptions {
        database_url: None,
        sqlite_path: dir.0.join("unused.db"),
        journal_dir: dir.0.join("journal"),
        queue,
        batch: 16,
        buffer: 50,
        spill_after,
        probe_interval: Duration::from_millis(200),
    };
    let journal = Arc::new(Journal::open(&opts.journal_dir).unwrap());
    let metrics = Arc::new(Metrics::new().unwrap());
    let sink: Arc<dyn AuditSink> = Arc::new(GateSink(Arc::clone(gate)));
    Audit::start_with_sink(opts, sink, journal, "t", metrics).await.unwrap()
}

/// A spill delay no test reaches: only the other bounds act.
const LONG: Duration = Duration::from_secs(600);

async fn wait_for(gate: &Gate, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while gate.rows.lock().len() != n {
        assert!(tokio::time::Instant::now() < deadline, "{} rows stored, expected {n}", gate.rows.lock().len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_outage_overflowing_queue_and_memory_loses_nothing() {
    let dir = TempDir(std::env::temp_dir().join(format!("venta-audit-{}", uuid::Uuid::new_v4().simple())));
    let gate = Arc::new(Gate::default());
    let audit = start(&gate, &dir, 4, LONG).await;
    gate.down.store(true, Ordering::SeqCst);
    let sent: Vec<AuditEvent> = (0..1000).map(event).collect();
    // The hot path never waits: 1000 rows into a 4-row queue, in one go,
    // without yielding to the writer.
    for e in &sent {
        audit.record(e.clone());
    }
    let spilled = |r: &str| audit.metrics.audit_spilled.with_label_values(&[r]).get();
    assert!(spilled("queue_full") >= 990, "queue overflow went to the journal: {}", spilled("queue_full"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(gate.rows.lock().is_empty());
    assert!(matches!(audit.health(), DependencyStatus::Down(_)));
    gate.down.store(false, Ordering::SeqCst);
    wait_for(&gate, 1000).await;
    let stored = gate.rows.lock().clone();
    assert!(sent.iter().all(|e| stored.get(&e.event_id) == Some(e)));
    assert_eq!(audit.health(), DependencyStatus::Ok);
    assert_eq!(audit.metrics.audit_dropped.with_label_values(&["journal_error"]).get(), 0);
    audit.close(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn memory_spills_at_its_bound_and_shutdown_journals_the_rest_for_the_next_start() {
    let dir = TempDir(std::env::temp_dir().join(format!("venta-audit-{}", uuid::Uuid::new_v4().simple())));
    let gate = Arc::new(Gate::default());
    let audit = start(&gate, &dir, 1000, LONG).await;
    gate.down.store(true, Ordering::SeqCst);
    let sent: Vec<AuditEvent> = (0..120).map(event).collect();
    for e in &sent {
        audit.record(e.clone());
        tokio::task::yield_now().await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while audit.metrics.audit_spilled.with_label_values(&["buffer_full"]).get() < 100 {
        assert!(tokio::time::Instant::now() < deadline, "the 50-row buffer never spilled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    audit.close(Duration::from_secs(1)).await;
    assert!(gate.rows.lock().is_empty());
    assert_eq!(audit.journal.pending_rows(), 120);
    drop(audit);
    // The database is back: the next start replays the journal.
    gate.down.store(false, Ordering::SeqCst);
    let audit = start(&gate, &dir, 1000, LONG).await;
    wait_for(&gate, 120).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while audit.journal.has_pending() {
        assert!(tokio::time::Instant::now() < deadline, "journal not emptied");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    audit.close(Duration::from_secs(1)).await;
}

/// While the database is down, a row reaches the journal within the spill
/// delay even far below `AUDIT_BUFFER`; health follows the database with no
/// rows flowing (the idle probe).
#[tokio::test]
async fn rows_reach_the_journal_promptly_while_the_database_is_down() {
    let dir = TempDir(std::env::temp_dir().join(format!("venta-audit-{}", uuid::Uuid::new_v4().simple())));
    let gate = Arc::new(Gate::default());
    let audit = start(&gate, &dir, 1000, Duration::from_millis(100)).await;
    gate.down.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while audit.health() == DependencyStatus::Ok {
        assert!(tokio::time::Instant::now() < deadline, "the idle probe never noticed the outage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Well under the 50-row buffer, arriving after the outage was noticed.
    let sent: Vec<AuditEvent> = (0..10).map(event).collect();
    for e in &sent {
        audit.record(e.clone());
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while audit.journal.pending_rows() < 10 {
        assert!(tokio::time::Instant::now() < deadline, "{} of 10 rows journaled", audit.journal.pending_rows());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.down.store(false, Ordering::SeqCst);
    wait_for(&gate, 10).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while audit.health() != DependencyStatus::Ok || audit.journal.has_pending() {
        assert!(tokio::time::Instant::now() < deadline, "health or journal did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    audit.close(Duration::from_secs(1)).await;
}
