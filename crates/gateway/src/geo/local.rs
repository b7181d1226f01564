//! The in-process geo engine (no `NATS_URL`): every location publish of
//! this instance is indexed here, and the shared state is a map in memory.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use super::{Areas, Cell, GeoEngine, Point, StoredPosition, now_ms, position_of};
use crate::bus::BusError;
use crate::protocol::{LocationUpdate, VendorId};

/// Positions held at most: past it the oldest go first. A publisher with
/// the ingest token cannot grow the process without bound by inventing
/// vendor ids (1 M positions ≈ 150 MB).
pub const MAX_POSITIONS: usize = 1_000_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    point: Point,
    ts: i64,
    seen_ms: u64,
    cell: Cell,
}

#[derive(Debug, Default)]
struct Positions {
    by_vendor: HashMap<VendorId, Entry>,
    by_cell: HashMap<Cell, HashSet<VendorId>>,
    /// `(seen_ms, vendor)`, oldest first: expiry and eviction in O(log n).
    age: BTreeSet<(u64, VendorId)>,
}

impl Positions {
    /// Records a position unless an equal or newer one is known.
    fn record(&mut self, vendor: &VendorId, point: Point, ts: i64, now: u64) -> bool {
        let cell = Cell::of(point);
        if let Some(old) = self.by_vendor.get(vendor) {
            if old.ts >= ts {
                return false;
            }
            let (old_cell, old_seen) = (old.cell, old.seen_ms);
            self.age.remove(&(old_seen, vendor.clone()));
            if old_cell != cell {
                self.forget_cell(old_cell, vendor);
            }
        }
        self.by_vendor.insert(vendor.clone(), Entry { point, ts, seen_ms: now, cell });
        self.by_cell.entry(cell).or_default().insert(vendor.clone());
        self.age.insert((now, vendor.clone()));
        true
    }

    fn forget_cell(&mut self, cell: Cell, vendor: &VendorId) {
        if let Some(set) = self.by_cell.get_mut(&cell) {
            set.remove(vendor);
            if set.is_empty() {
                self.by_cell.remove(&cell);
            }
        }
    }

    /// Drops positions older than `ttl_ms`, and the oldest past the cap.
    fn sweep(&mut self, now: u64, ttl_ms: u64) {
        while let Some((seen, _)) = self.age.first() {
            let dead = seen.saturating_add(ttl_ms) <= now;
            if !dead && self.by_vendor.len() <= MAX_POSITIONS {
                break;
            }
            let Some((_, vendor)) = self.age.pop_first() else { break };
            if let Some(e) = self.by_vendor.remove(&vendor) {
                self.forget_cell(e.cell, &vendor);
            }
        }
    }
}

/// The embedded engine.
#[derive(Debug)]
pub struct LocalGeo {
    areas: Weak<Areas>,
    positions: Mutex<Positions>,
    ttl_ms: u64,
}

impl LocalGeo {
    /// An engine feeding `areas`.
    pub fn new(areas: &Arc<Areas>) -> Arc<Self> {
        let ttl_ms = u64::try_from(areas.limits().vendor_ttl.as_millis()).unwrap_or(u64::MAX);
        Arc::new(Self { areas: Arc::downgrade(areas), positions: Mutex::default(), ttl_ms })
    }

    /// Indexes one published location (the local bus calls this for every
    /// one); stale positions move nothing.
    pub fn index(&self, update: &LocationUpdate, received: Instant) {
        let Some((point, ts)) = position_of(update) else { return };
        let now = now_ms();
        let fresh = {
            let mut p = self.positions.lock();
            p.sweep(now, self.ttl_ms);
            p.record(&update.vendor_id, point, ts, now)
        };
        if let (true, Some(areas)) = (fresh, self.areas.upgrade()) {
            areas.apply(update.vendor_id.clone(), point, ts, received);
        }
    }
}

impl GeoEngine for LocalGeo {
    fn watch(self: Arc<Self>, _cells: Vec<Cell>) -> BoxFuture<'static, Result<(), BusError>> {
        // Every publish reaches `index` already.
        futures_util::future::ready(Ok(())).boxed()
    }

    fn unwatch(&self, _cells: Vec<Cell>) {}

    fn load(self: Arc<Self>, cells: Vec<Cell>) -> BoxFuture<'static, Result<Vec<StoredPosition>, BusError>> {
        let mut p = self.positions.lock();
        p.sweep(now_ms(), self.ttl_ms);
        let mut out = Vec::new();
        for cell in cells {
            for vendor in p.by_cell.get(&cell).into_iter().flatten() {
                if let Some(e) = p.by_vendor.get(vendor) {
                    out.push(StoredPosition { vendor: vendor.clone(), point: e.point, ts: e.ts, seen_ms: e.seen_ms });
                }
            }
        }
        futures_util::future::ready(Ok(out)).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> VendorId {
        VendorId::parse(s).unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn older_positions_never_replace_newer_ones_and_cells_follow_the_vendor() {
        let mut p = Positions::default();
        let madrid = Point::new(40.42, -3.70);
        let far = Point::new(41.0, -3.70);
        assert!(p.record(&v("a"), madrid, 10, 1));
        assert!(!p.record(&v("a"), far, 9, 2), "an older fix is ignored");
        assert!(!p.record(&v("a"), far, 10, 2), "the same fix twice is ignored");
        assert!(p.record(&v("a"), far, 11, 3));
        assert!(!p.by_cell.contains_key(&Cell::of(madrid)), "the old cell forgets it");
        assert!(p.by_cell[&Cell::of(far)].contains(&v("a")));
        p.sweep(1_000, 100);
        assert!(p.by_vendor.is_empty() && p.by_cell.is_empty() && p.age.is_empty(), "expired");
    }
}
