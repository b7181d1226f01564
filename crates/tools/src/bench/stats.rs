//! Shared counters and histograms, fed by every client and read by the
//! driver. Counters are atomics; latency goes into a few sharded
//! histograms (merged per step) so a multi-threaded run does not serialise
//! on one lock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use super::marker;
use super::transport::Delivery;

const SHARDS: usize = 16;
/// Latencies are recorded in microseconds, 1 µs … 1 h, 3 significant digits.
const MAX_US: u64 = 3_600_000_000;

/// An empty latency histogram (µs).
pub fn histogram() -> Histogram<u64> {
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant bounds are valid")
}

/// Everything the clients report.
pub struct Stats {
    /// Connections subscribed (ack received).
    pub connected: AtomicUsize,
    /// Connections that failed to open.
    pub failed: AtomicUsize,
    /// Connections that received at least one update.
    pub ready: AtomicUsize,
    /// Connections lost after they were open.
    pub dropped: AtomicUsize,
    /// Live subscribers per vendor, for expected deliveries.
    pub subs_per_vendor: Vec<AtomicU64>,
    errors: Mutex<BTreeMap<String, u64>>,
    connect_us: Mutex<Histogram<u64>>,
    /// The phase being measured: updates of other phases are `stale`.
    phase: AtomicU32,
    /// Deliveries after this instant are outside the publishing window.
    window_end_ns: AtomicU64,
    step: StepCounters,
    latency: Vec<Mutex<Histogram<u64>>>,
}

/// Counters of the current phase.
#[derive(Default)]
struct StepCounters {
    received: AtomicU64,
    in_window: AtomicU64,
    dup: AtomicU64,
    stale: AtomicU64,
    wrong_vendor: AtomicU64,
    snapshots: AtomicU64,
    unparsed: AtomicU64,
}

/// A copy of the current phase's counters.
#[derive(Debug, Clone, Default)]
pub struct StepSnapshot {
    pub received: u64,
    pub in_window: u64,
    pub dup: u64,
    pub stale: u64,
    pub wrong_vendor: u64,
    pub snapshots: u64,
    pub unparsed: u64,
}

/// One connection's view: the last sequence number seen per vendor.
#[derive(Debug, Default)]
pub struct ConnTally {
    got_any: bool,
    last_seq: Vec<(u32, u64)>,
}

impl Stats {
    /// Fresh statistics for `vendors` vendors.
    pub fn new(vendors: usize) -> Self {
        Self {
            connected: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            ready: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            subs_per_vendor: (0..vendors).map(|_| AtomicU64::new(0)).collect(),
            errors: Mutex::new(BTreeMap::new()),
            connect_us: Mutex::new(histogram()),
            phase: AtomicU32::new(0),
            window_end_ns: AtomicU64::new(u64::MAX),
            step: StepCounters::default(),
            latency: (0..SHARDS).map(|_| Mutex::new(histogram())).collect(),
        }
    }

    /// Counts an error by its (shortened) message.
    pub fn error(&self, e: &str) {
        self.errors_n(e, 1);
    }

    /// Counts `n` errors of one message.
    pub fn errors_n(&self, e: &str, n: u64) {
        let mut key: String = e.chars().take(100).collect();
        if key.is_empty() {
            key.push_str("unknown");
        }
        *self.errors.lock().entry(key).or_default() += n;
    }

    /// Errors by message so far.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().clone()
    }

    /// Records one successful handshake.
    pub fn connect_time(&self, us: u64) {
        self.connect_us.lock().saturating_record(us.max(1));
    }

    /// Handshake times so far (µs).
    pub fn connect_histogram(&self) -> Histogram<u64> {
        self.connect_us.lock().clone()
    }

    /// Starts measuring `phase`: counters and latencies reset.
    pub fn begin_phase(&self, phase: u32) {
        for h in &self.latency {
            h.lock().reset();
        }
        let s = &self.step;
        for c in [&s.received, &s.in_window, &s.dup, &s.stale, &s.wrong_vendor, &s.snapshots, &s.unparsed] {
            c.store(0, Relaxed);
        }
        self.window_end_ns.store(u64::MAX, Relaxed);
        self.phase.store(phase, Relaxed);
    }

    /// Marks the end of the publishing window (for deliveries/s).
    pub fn end_window(&self) {
        self.window_end_ns.store(marker::now_ns(), Relaxed);
    }

    /// Deliveries of the current phase so far.
    pub fn received(&self) -> u64 {
        self.step.received.load(Relaxed)
    }

    /// The current phase's counters.
    pub fn snapshot(&self) -> StepSnapshot {
        let s = &self.step;
        StepSnapshot {
            received: s.received.load(Relaxed),
            in_window: s.in_window.load(Relaxed),
            dup: s.dup.load(Relaxed),
            stale: s.stale.load(Relaxed),
            wrong_vendor: s.wrong_vendor.load(Relaxed),
            snapshots: s.snapshots.load(Relaxed),
            unparsed: s.unparsed.load(Relaxed),
        }
    }

    /// The current phase's latencies (µs), shards merged.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = histogram();
        for h in &self.latency {
            // Same bounds everywhere: adding cannot fail.
            let _ = all.add(&*h.lock());
        }
        all
    }

    /// A frame that should have been an update but was not decodable.
    pub fn unparsed(&self) {
        self.step.unparsed.fetch_add(1, Relaxed);
    }

    /// Accounts one delivered update on connection `conn` (subscribed to
    /// vendor `vendor`).
    pub fn delivered(&self, conn: usize, vendor: u32, tally: &mut ConnTally, d: Delivery) {
        let s = &self.step;
        if d.snapshot {
            s.snapshots.fetch_add(1, Relaxed);
            return;
        }
        let Some(m) = d.marker else {
            s.unparsed.fetch_add(1, Relaxed);
            return;
        };
        let Some(v) = d.vendor_index.filter(|v| *v == vendor) else {
            s.wrong_vendor.fetch_add(1, Relaxed);
            return;
        };
        match tally.last_seq.iter_mut().find(|(lv, _)| *lv == v) {
            Some((_, last)) if m.seq <= *last => {
                // Seen already (or out of order): never counted twice.
                s.dup.fetch_add(1, Relaxed);
                return;
            }
            Some((_, last)) => *last = m.seq,
            None => tally.last_seq.push((v, m.seq)),
        }
        if !tally.got_any {
            tally.got_any = true;
            self.ready.fetch_add(1, Relaxed);
        }
        if m.phase != self.phase.load(Relaxed) {
            s.stale.fetch_add(1, Relaxed);
            return;
        }
        let now = marker::now_ns();
        s.received.fetch_add(1, Relaxed);
        if now <= self.window_end_ns.load(Relaxed) {
            s.in_window.fetch_add(1, Relaxed);
        }
        let us = now.saturating_sub(m.sent_ns) / 1000;
        self.latency[conn % SHARDS].lock().saturating_record(us.clamp(1, MAX_US));
    }

    /// A connection that was open has gone.
    pub fn lost_connection(&self, vendor: usize, tally: &ConnTally) {
        if let Some(c) = self.subs_per_vendor.get(vendor) {
            c.fetch_sub(1, Relaxed);
        }
        self.dropped.fetch_add(1, Relaxed);
        if tally.got_any {
            self.ready.fetch_sub(1, Relaxed);
        }
    }
}

/// Milliseconds at quantile `q`, three decimals; 0 when empty.
pub fn ms_at(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() { 0.0 } else { round3(h.value_at_quantile(q) as f64 / 1000.0) }
}

/// Rounds to three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::marker::Marker;

    fn upd(vendor: u32, seq: u64, phase: u32) -> Delivery {
        let sent_ns = marker::now_ns().saturating_sub(2_000_000);
        Delivery { vendor_index: Some(vendor), snapshot: false, marker: Some(Marker { seq, phase, sent_ns }) }
    }

    #[test]
    fn counts_duplicates_stale_and_wrong_vendor() {
        let st = Stats::new(2);
        let mut t = ConnTally::default();
        st.begin_phase(1);
        st.delivered(0, 1, &mut t, upd(1, 5, 0)); // probe, late
        st.delivered(0, 1, &mut t, upd(1, 6, 1));
        st.delivered(0, 1, &mut t, upd(1, 6, 1)); // again
        st.delivered(0, 1, &mut t, upd(1, 4, 1)); // older
        st.delivered(0, 1, &mut t, upd(0, 9, 1)); // not ours
        st.delivered(0, 1, &mut t, Delivery { vendor_index: Some(1), snapshot: true, marker: None });
        st.delivered(0, 1, &mut t, upd(1, 8, 1)); // a gap is fine here: losses are expected − received
        let s = st.snapshot();
        assert_eq!((s.received, s.stale, s.dup, s.wrong_vendor, s.snapshots), (2, 1, 2, 1, 1));
        assert_eq!(st.ready.load(Relaxed), 1);
        let h = st.latency();
        assert_eq!(h.len(), 2);
        assert!(ms_at(&h, 0.5) >= 2.0 && ms_at(&h, 0.5) <= ms_at(&h, 1.0));
        st.begin_phase(2);
        assert_eq!(st.received(), 0);
        assert!(st.latency().is_empty());
    }
}
