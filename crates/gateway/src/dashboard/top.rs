//! The busiest vendors, in bounded memory.
//!
//! Vendor ids are chosen by publishers: a map keyed by every id ever seen
//! grows without bound, and a metric label per id is a new series for the
//! life of the process. This is the Space-Saving sketch (Metwally, Agrawal,
//! El Abbadi, 2005): at most `capacity` counters; a vendor not held takes
//! over the smallest counter (and its count, as an upper bound of its
//! error). Any vendor with more than `total / capacity` updates is held, so
//! the heavy hitters are always listed; the tail is approximate.
//!
//! Counts halve every [`HALF_LIFE`], so the list shows who is busy now
//! rather than who was busy since start.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::protocol::VendorId;
use parking_lot::Mutex;

/// How fast old activity fades from the list.
pub const HALF_LIFE: Duration = Duration::from_secs(60);

/// Counters held by default, before the configuration sets the capacity.
const DEFAULT_CAPACITY: usize = 40;

/// The sketch; cheap to update from the delivery path (one short lock).
#[derive(Debug)]
pub struct TopVendors {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    capacity: usize,
    counts: HashMap<VendorId, u64>,
    decayed_at: Instant,
}

impl Default for TopVendors {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl TopVendors {
    /// A sketch of at most `capacity` counters (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Self {
            inner: Mutex::new(Inner { capacity, counts: HashMap::with_capacity(capacity), decayed_at: Instant::now() }),
        }
    }

    /// Changes the number of counters; the smallest go when it shrinks.
    pub fn set_capacity(&self, capacity: usize) {
        let mut inner = self.inner.lock();
        inner.capacity = capacity.max(1);
        while inner.counts.len() > inner.capacity {
            if let Some(min) = inner.min_key() {
                inner.counts.remove(&min);
            }
        }
    }

    /// Counts one update of `vendor`.
    pub fn record(&self, vendor: &VendorId) {
        let mut inner = self.inner.lock();
        if let Some(n) = inner.counts.get_mut(vendor) {
            *n += 1;
            return;
        }
        if inner.counts.len() < inner.capacity {
            inner.counts.insert(vendor.clone(), 1);
            return;
        }
        // Full: the newcomer inherits the smallest count (O(capacity), only
        // for a vendor not already held).
        if let Some(min) = inner.min_key() {
            let n = inner.counts.remove(&min).unwrap_or(0);
            inner.counts.insert(vendor.clone(), n + 1);
        }
    }

    /// The `n` busiest vendors, busiest first (ties by id, so the order is
    /// stable), with their recent update counts.
    pub fn top(&self, n: usize) -> Vec<(VendorId, u64)> {
        self.top_at(n, Instant::now())
    }

    fn top_at(&self, n: usize, now: Instant) -> Vec<(VendorId, u64)> {
        let mut inner = self.inner.lock();
        inner.decay(now);
        let mut all: Vec<(VendorId, u64)> = inner.counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
        drop(inner);
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }
}

impl Inner {
    fn min_key(&self) -> Option<VendorId> {
        self.counts.iter().min_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0))).map(|(k, _)| k.clone())
    }

    fn decay(&mut self, now: Instant) {
        let mut halvings = 0u32;
        while now.saturating_duration_since(self.decayed_at) >= HALF_LIFE && halvings < 64 {
            self.decayed_at += HALF_LIFE;
            halvings += 1;
        }
        if halvings > 0 {
            self.counts.retain(|_, n| {
                *n = n.checked_shr(halvings).unwrap_or(0);
                *n > 0
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> VendorId {
        VendorId::parse(s).unwrap_or_else(|_| panic!("bad id {s}"))
    }

    #[test]
    fn heavy_hitters_survive_a_storm_of_new_ids_in_bounded_memory() {
        let top = TopVendors::new(8);
        for i in 0..10_000 {
            top.record(&v("hot"));
            if i % 2 == 0 {
                top.record(&v("warm"));
            }
            top.record(&v(&format!("noise-{i}")));
        }
        assert!(top.inner.lock().counts.len() <= 8);
        let list = top.top(2);
        assert_eq!(list.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["hot", "warm"]);
        // Space-Saving overestimates by at most total / capacity.
        assert!(list[0].1 >= 10_000);
    }

    #[test]
    fn counts_halve_every_half_life_and_vanish() {
        let top = TopVendors::new(4);
        for _ in 0..8 {
            top.record(&v("a"));
        }
        let t0 = top.inner.lock().decayed_at;
        assert_eq!(top.top_at(5, t0 + HALF_LIFE), vec![(v("a"), 4)]);
        assert_eq!(top.top_at(5, t0 + HALF_LIFE * 3), vec![(v("a"), 1)]);
        assert!(top.top_at(5, t0 + HALF_LIFE * 4).is_empty());
    }

    #[test]
    fn shrinking_keeps_the_largest() {
        let top = TopVendors::new(4);
        for (id, n) in [("a", 1), ("b", 5), ("c", 3), ("d", 2)] {
            for _ in 0..n {
                top.record(&v(id));
            }
        }
        top.set_capacity(2);
        assert_eq!(top.top(5), vec![(v("b"), 5), (v("c"), 3)]);
    }
}
