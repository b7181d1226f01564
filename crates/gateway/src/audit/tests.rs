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
        journal_queue: 10_000,
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

/// Waits (bounded) until `done` holds, checking every 20 ms; fails the
/// test with `what` and the state `done` describes otherwise.
async fn until(within: Duration, mut done: impl FnMut() -> Result<(), String>) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match done() {
            Ok(()) => return,
            Err(why) => assert!(tokio::time::Instant::now() < deadline, "{why}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for(gate: &Gate, n: usize) {
    until(Duration::from_secs(20), || {
        let stored = gate.rows.lock().len();
        if stored == n { Ok(()) } else { Err(format!("{stored} rows stored, expected {n}")) }
    })
    .await;
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
    // The writer has tried the database (and found it down) ...
    until(Duration::from_secs(5), || match audit.health() {
        DependencyStatus::Down(_) => Ok(()),
        other => Err(format!("the writer never saw the outage: {other:?}")),
    })
    .await;
    // ... and stored nothing.
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
    until(Duration::from_secs(5), || {
        let spilled = audit.metrics.audit_spilled.with_label_values(&["buffer_full"]).get();
        if spilled >= 100 { Ok(()) } else { Err(format!("the 50-row buffer never spilled ({spilled})")) }
    })
    .await;
    audit.close(Duration::from_secs(1)).await;
    assert!(gate.rows.lock().is_empty());
    assert_eq!(audit.journal.pending_rows(), 120);
    drop(audit);
    // The database is back: the next start replays the journal.
    gate.down.store(false, Ordering::SeqCst);
    let audit = start(&gate, &dir, 1000, LONG).await;
    wait_for(&gate, 120).await;
    until(
        Duration::from_secs(5),
        || if audit.journal.has_pending() { Err("journal not emptied".into()) } else { Ok(()) },
    )
    .await;
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
    until(Duration::from_secs(3), || {
        if audit.health() == DependencyStatus::Ok {
            Err("the idle probe never noticed the outage".into())
        } else {
            Ok(())
        }
    })
    .await;
    // Well under the 50-row buffer, arriving after the outage was noticed.
    let sent: Vec<AuditEvent> = (0..10).map(event).collect();
    for e in &sent {
        audit.record(e.clone());
        // Not synchronisation: the scenario is rows trickling in, 30 ms
        // apart, each under the 100 ms spill delay on its own.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    until(Duration::from_secs(2), || {
        let n = audit.journal.pending_rows();
        if n >= 10 { Ok(()) } else { Err(format!("{n} of 10 rows journaled")) }
    })
    .await;
    gate.down.store(false, Ordering::SeqCst);
    wait_for(&gate, 10).await;
    until(Duration::from_secs(3), || {
        if audit.health() != DependencyStatus::Ok || audit.journal.has_pending() {
            Err("health or journal did not recover".into())
        } else {
            Ok(())
        }
    })
    .await;
    audit.close(Duration::from_secs(1)).await;
}

/// A journal stuck on its disk (its lock held, as by an append waiting on a
/// full or slow device) stalls neither the hot path nor what the writer's
/// loop reads on the runtime: rows that overflow the queue wait for the
/// journal on its own thread. None is lost once the disk is back.
#[tokio::test]
async fn a_stalled_journal_stalls_neither_the_hot_path_nor_the_writer_loop() {
    let dir = TempDir(std::env::temp_dir().join(format!("venta-audit-{}", uuid::Uuid::new_v4().simple())));
    let gate = Arc::new(Gate::default());
    let audit = Arc::new(start(&gate, &dir, 4, LONG).await);
    gate.down.store(true, Ordering::SeqCst);
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let journal = Arc::clone(&audit.journal);
    let holder = std::thread::spawn(move || {
        journal.while_locked(|| {
            let _ = held_tx.send(());
            let _ = release_rx.recv();
        })
    });
    held_rx.recv().unwrap();
    // On a thread of its own, so that a hot path stuck on the lock fails
    // the test instead of hanging it.
    let hot = Arc::clone(&audit);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let sent: Vec<AuditEvent> = (0..100).map(event).collect();
    let rows = sent.clone();
    std::thread::spawn(move || {
        for e in rows {
            hot.record(e);
        }
        let _ = (hot.journal.pending_rows(), hot.journal.has_pending());
        let _ = done_tx.send(());
    });
    let finished = done_rx.recv_timeout(Duration::from_secs(5)).is_ok();
    let _ = release_tx.send(());
    holder.join().unwrap();
    assert!(finished, "record() or the journal's counters waited for the journal's lock");
    gate.down.store(false, Ordering::SeqCst);
    wait_for(&gate, 100).await;
    let stored = gate.rows.lock().clone();
    assert!(sent.iter().all(|e| stored.get(&e.event_id) == Some(e)));
    audit.close(Duration::from_secs(1)).await;
}
