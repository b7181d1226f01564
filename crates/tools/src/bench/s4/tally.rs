//! Counters and latencies of the area scenario, fed by every client.
//!
//! Counters only grow; the driver takes a [`Counts`] at each end of a
//! measured window and subtracts. Latencies are kept per window
//! ([`Tally::reset_latency`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;
use parking_lot::Mutex;

use super::super::stats::histogram;

/// Latencies are recorded in µs, from the update's `timestamp` (its send time).
const MAX_US: u64 = 3_600_000_000;

macro_rules! counters {
    ($($name:ident: $doc:literal,)*) => {
        /// Everything counted, as atomics.
        #[derive(Default)]
        pub struct Counters { $(#[doc = $doc] pub $name: AtomicU64,)* }

        /// A copy of [`Counters`].
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct Counts { $(#[doc = $doc] pub $name: u64,)* }

        impl Counters {
            /// The values now.
            pub fn get(&self) -> Counts {
                Counts { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl Counts {
            /// `self − earlier`, per counter.
            pub fn since(&self, earlier: &Self) -> Self {
                Self { $($name: self.$name.saturating_sub(earlier.$name),)* }
            }

            /// As a JSON object.
            pub fn json(&self) -> serde_json::Value {
                serde_json::json!({ $(stringify!($name): self.$name,)* })
            }
        }
    };
}

counters! {
    area_connected: "Area clients subscribed (ack and snapshot received).",
    location_connected: "Per-vendor clients subscribed (every ack received).",
    connect_failed: "Clients that failed to open or subscribe.",
    dropped: "Clients that lost their connection while open.",
    snapshots: "`area_snapshot` messages.",
    snapshot_vendors: "Vendors listed in snapshots.",
    truncated: "Snapshots with `truncated: true` (their area cannot converge).",
    entered: "`vendor_entered` caused by a vendor's move.",
    moved: "`location_updated` with `areaId`.",
    left_moved: "`vendor_left` with reason `moved`.",
    left_expired: "`vendor_left` with reason `expired`.",
    pan_entered: "`vendor_entered` of a pan's difference.",
    pan_left: "`vendor_left` with reason `area_changed`.",
    pans_sent: "Pans sent (`subscribe_area` again, same areaId).",
    pans_acked: "Pans answered `subscribed`.",
    pans_skipped: "Pans not sent because the previous one was not answered yet.",
    violations: "Area events against the contract: entered while inside, moved or left while not inside, an event before the snapshot.",
    location: "Per-vendor `location_updated` (live, no `areaId`).",
    location_snapshots: "Per-vendor last-value snapshots.",
    location_dup: "Per-vendor updates not newer than the last one seen.",
    unparsed: "Frames that could not be decoded.",
}

impl Counts {
    /// Area deliveries: entered, moved and left, pans included.
    pub fn area_deliveries(&self) -> u64 {
        self.entered + self.moved + self.left_moved + self.left_expired + self.pan_entered + self.pan_left
    }
}

/// Which latency histogram.
#[derive(Debug, Clone, Copy)]
pub enum Lat {
    /// Area `location_updated`.
    Moved = 0,
    /// `vendor_entered` caused by a move.
    Entered = 1,
    /// Per-vendor `location_updated`.
    Location = 2,
}

/// Shared by all clients.
pub struct Tally {
    pub c: Counters,
    latency: [Mutex<Histogram<u64>>; 3],
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            c: Counters::default(),
            latency: [Mutex::new(histogram()), Mutex::new(histogram()), Mutex::new(histogram())],
            errors: Mutex::new(BTreeMap::new()),
        }
    }
}

impl Tally {
    /// Records one latency (µs).
    pub fn latency(&self, which: Lat, us: u64) {
        self.latency[which as usize].lock().saturating_record(us.clamp(1, MAX_US));
    }

    /// A copy of one histogram.
    pub fn histogram(&self, which: Lat) -> Histogram<u64> {
        self.latency[which as usize].lock().clone()
    }

    /// Empties the histograms (a new window).
    pub fn reset_latency(&self) {
        for h in &self.latency {
            h.lock().reset();
        }
    }

    /// Counts an error by its (shortened) message.
    pub fn error(&self, e: &str) {
        let key: String = e.chars().take(100).collect();
        *self.errors.lock().entry(key).or_default() += 1;
    }

    /// Errors by message.
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().clone()
    }
}
