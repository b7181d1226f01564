//! One checker client: connect, subscribe, record every delivery, and on a
//! close reconnect (with back-off) and subscribe again, as the seed's
//! browser client does — until the run stops it. It only records; the
//! verdict is [`super::check::judge`]'s, after the run.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Semaphore, watch};

use super::super::marker;
use super::super::transport::{Conn, Connector, Event, Target};
use super::check::Rec;

/// `held` while nothing is held.
pub const NONE: u64 = u64::MAX;
/// Distinct error messages kept; the rest are counted under one key.
const MAX_ERROR_KINDS: usize = 64;

/// What the driver reads while the run goes on (the histories are read
/// only at the end).
pub struct Live {
    /// Per client: sequence of the last value received, or [`NONE`].
    pub held: Vec<AtomicU64>,
    /// Per client: a subscribed connection is open.
    pub connected: Vec<AtomicBool>,
    /// Per client: it was subscribed at least once.
    pub acked: Vec<AtomicBool>,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Live {
    pub fn new(clients: usize) -> Self {
        Self {
            held: (0..clients).map(|_| AtomicU64::new(NONE)).collect(),
            connected: (0..clients).map(|_| AtomicBool::new(false)).collect(),
            acked: (0..clients).map(|_| AtomicBool::new(false)).collect(),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts an error by its (shortened) message, in a bounded map.
    pub fn error(&self, e: &str) {
        let mut key: String = e.chars().take(100).collect();
        let mut errors = self.errors.lock();
        if errors.len() >= MAX_ERROR_KINDS && !errors.contains_key(&key) {
            key = "other errors".into();
        }
        *errors.entry(key).or_default() += 1;
    }

    /// Errors by message so far.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().clone()
    }
}

/// A client's record, returned when it stops.
#[derive(Debug, Default)]
pub struct History {
    pub recs: Vec<Rec>,
    /// The record reached its bound and stopped growing: no verdict.
    pub overflow: bool,
    /// Frames that should have been updates but did not decode.
    pub unparsed: u64,
}

/// How clients (re)connect.
pub struct Settings {
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Most records one client keeps.
    pub max_recs: usize,
    /// Start of the run (ns since the epoch): older updates are not ours.
    pub run_start_ns: u64,
}

impl History {
    fn push(&mut self, r: Rec, max: usize) {
        if self.recs.len() < max {
            self.recs.push(r);
        } else {
            self.overflow = true;
        }
    }
}

/// Runs client `i` until `stop` turns true; returns its history.
pub async fn client<C: Connector>(
    connector: Arc<C>,
    target: Target,
    i: usize,
    live: Arc<Live>,
    handshakes: Arc<Semaphore>,
    settings: Arc<Settings>,
    mut stop: watch::Receiver<bool>,
) -> History {
    let mut h = History::default();
    let mut backoff = settings.reconnect_min;
    loop {
        if *stop.borrow() {
            return h;
        }
        let opened = tokio::select! {
            o = open(&*connector, &target, &handshakes, settings.connect_timeout) => o,
            _ = stop.changed() => return h,
        };
        let mut conn = match opened {
            Ok(c) => c,
            Err(e) => {
                live.error(&e);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return h,
                }
                backoff = (backoff * 2).min(settings.reconnect_max);
                continue;
            }
        };
        // Taken after the ack arrived: anything handed to the publisher
        // later was certainly published after the subscription was live.
        h.push(Rec::Ack(marker::now_ns()), settings.max_recs);
        live.acked[i].store(true, Relaxed);
        live.connected[i].store(true, Relaxed);
        backoff = settings.reconnect_min;
        loop {
            let ev = tokio::select! {
                ev = conn.next_event() => ev,
                _ = stop.changed() => return h,
            };
            match ev {
                Event::Update(d) => {
                    let Some(m) = d.marker.filter(|_| d.vendor_index == Some(target.vendor_index)) else {
                        h.unparsed += 1;
                        continue;
                    };
                    let rec = if m.sent_ns < settings.run_start_ns {
                        Rec::Old { snapshot: d.snapshot }
                    } else if d.snapshot {
                        Rec::Snapshot(m.seq)
                    } else {
                        Rec::Live(m.seq)
                    };
                    let held = match rec {
                        Rec::Live(s) | Rec::Snapshot(s) => s,
                        _ => NONE,
                    };
                    live.held[i].store(held, Relaxed);
                    h.push(rec, settings.max_recs);
                }
                Event::Unparsed => h.unparsed += 1,
                Event::Closed(why) => {
                    live.connected[i].store(false, Relaxed);
                    live.error(&why);
                    h.push(Rec::Closed, settings.max_recs);
                    break;
                }
            }
        }
        // A short pause before reconnecting, so a gateway that is going
        // away is not hammered.
        tokio::select! {
            () = tokio::time::sleep(settings.reconnect_min) => {}
            _ = stop.changed() => return h,
        }
    }
}

/// One handshake (TCP or QUIC, subscribe, ack) within the bound of
/// handshakes in flight.
async fn open<C: Connector>(
    connector: &C,
    target: &Target,
    handshakes: &Semaphore,
    timeout: Duration,
) -> Result<C::Conn, String> {
    let _permit = handshakes.acquire().await.map_err(|_| "stopping".to_owned())?;
    match tokio::time::timeout(timeout, connector.open(target)).await {
        Ok(r) => r,
        Err(_) => Err("handshake timed out".into()),
    }
}
