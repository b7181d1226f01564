//! The connect phase: clients are started at `--connect-rate` per second
//! with at most `--connect-concurrency` handshakes in flight; each then
//! reads its deliveries into the shared statistics until the run ends or
//! the server drops it.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::stats::{ConnTally, Stats};
use super::transport::{Conn, Connector, Event, Target};

/// Counted for each client not tried after the gateway said it is full.
pub const NOT_ATTEMPTED: &str = "not attempted: the gateway refused with 1013 (at WS_MAX_CONNECTIONS)";

/// Whether a handshake failure is the gateway's "full" (close 1013 before
/// the ack, on either transport): more attempts would only repeat it.
fn is_full(e: &str) -> bool {
    e.starts_with("closed before the ack") && e.contains(" 1013 ")
}

/// How to open the clients.
pub struct ConnectPlan {
    pub conns: usize,
    pub rate: f64,
    pub concurrency: usize,
    pub timeout: Duration,
}

/// Opens every client (without waiting for the stragglers longer than the
/// schedule plus one handshake timeout) and returns the connect phase's
/// length in seconds.
pub async fn connect_all<C: Connector>(
    connector: Arc<C>,
    plan: &ConnectPlan,
    target: impl Fn(usize) -> Target,
    stats: &Arc<Stats>,
) -> f64 {
    let sem = Arc::new(Semaphore::new(plan.concurrency));
    let full = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    for i in 0..plan.conns {
        if full.load(Relaxed) {
            // The rest would be refused the same way: count, do not try.
            let left = plan.conns - i;
            stats.failed.fetch_add(left, Relaxed);
            stats.errors_n(NOT_ATTEMPTED, left as u64);
            break;
        }
        let due = t0 + Duration::from_secs_f64(i as f64 / plan.rate);
        tokio::time::sleep_until(due.into()).await;
        let ctx = ClientCtx {
            sem: Arc::clone(&sem),
            stats: Arc::clone(stats),
            timeout: plan.timeout,
            full: Arc::clone(&full),
            planned: plan.conns,
        };
        tokio::spawn(client(Arc::clone(&connector), target(i), i, ctx));
    }
    let deadline = t0 + Duration::from_secs_f64(plan.conns as f64 / plan.rate) + plan.timeout + Duration::from_secs(5);
    // (A stop at the first 1013 has counted the untried ones as failed.)
    while stats.connected.load(Relaxed) + stats.failed.load(Relaxed) < plan.conns && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t0.elapsed().as_secs_f64()
}

/// What each client task shares.
struct ClientCtx {
    sem: Arc<Semaphore>,
    stats: Arc<Stats>,
    timeout: Duration,
    /// Set at the first 1013: the gateway is at WS_MAX_CONNECTIONS.
    full: Arc<AtomicBool>,
    /// Connections the run wants.
    planned: usize,
}

async fn client<C: Connector>(connector: Arc<C>, target: Target, i: usize, ctx: ClientCtx) {
    let ClientCtx { sem, stats, timeout, full, planned } = ctx;
    let Ok(permit) = sem.acquire_owned().await else { return };
    if full.load(Relaxed) {
        stats.error(NOT_ATTEMPTED);
        stats.failed.fetch_add(1, Relaxed);
        return;
    }
    let t0 = Instant::now();
    let opened = tokio::time::timeout(timeout, connector.open(&target)).await;
    drop(permit);
    let mut conn = match opened {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            if is_full(&e) && !full.swap(true, Relaxed) {
                eprintln!(
                    "[bench] the gateway refused a connection with 1013 after {} connected: it is at \
                     WS_MAX_CONNECTIONS. No more connections are tried; restart the gateway with \
                     WS_MAX_CONNECTIONS at least {} (and WS_MAX_CONNECTIONS_PER_USER too when every client \
                     uses one --jwt), or use fewer --conns",
                    stats.connected.load(Relaxed),
                    planned,
                );
            }
            stats.error(&e);
            stats.failed.fetch_add(1, Relaxed);
            return;
        }
        Err(_) => {
            stats.error("handshake timed out");
            stats.failed.fetch_add(1, Relaxed);
            return;
        }
    };
    stats.connect_time(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
    let v = target.vendor_index as usize;
    // Subscriber first, then "connected": expected deliveries never miss it.
    if let Some(c) = stats.subs_per_vendor.get(v) {
        c.fetch_add(1, Relaxed);
    }
    stats.connected.fetch_add(1, Relaxed);
    let mut tally = ConnTally::default();
    loop {
        match conn.next_event().await {
            Event::Update(d) => stats.delivered(i, target.vendor_index, &mut tally, d),
            Event::Unparsed => stats.unparsed(),
            Event::Closed(why) => {
                stats.error(&why);
                stats.lost_connection(v, &tally);
                return;
            }
        }
    }
}
