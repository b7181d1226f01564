//! The index against a brute-force model.
//!
//! A simulated gateway drives [`AreaIndex`] with random upserts, location
//! events, redeliveries, stale events, expiry and removals, and keeps what a
//! real deployment would have around it: the shared state (latest position
//! per vendor, with a time to live) and, per area, the client's view built
//! only from the snapshots, diffs and events it was sent. After every step,
//! for every live area, the index's members, and the client's view, must be
//! exactly the vendors whose latest position is inside the shape, recomputed
//! from scratch.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use venta_geo::{AreaEvent, AreaIndex, AreaState, Cell, Completion, Point, Shape};

const TTL: u64 = 1_000;

/// Area key and vendor id.
type Key = u8;
type Vendor = u8;

#[derive(Debug, Clone)]
enum Op {
    Upsert {
        key: Key,
        shape: Shape,
    },
    Complete {
        key: Key,
    },
    Apply {
        vendor: Vendor,
        point: Point,
    },
    /// A small step from the vendor's latest position (how vendors move).
    Nudge {
        vendor: Vendor,
        dlat: f64,
        dlong: f64,
    },
    /// The vendor's latest event once more, before time moves on (through
    /// its second subject, or redelivered).
    Redeliver {
        vendor: Vendor,
    },
    /// An event older than the latest one, for a vendor the index holds.
    Stale {
        vendor: Vendor,
        point: Point,
    },
    Advance {
        ms: u64,
    },
    Remove {
        key: Key,
    },
}

/// Points and shapes within about 0.15° of (10, `base`): 6 × 6 cells, so
/// areas and vendors meet often. `base` 180 puts the antimeridian through it.
fn wrap(long: f64) -> f64 {
    if long > 180.0 {
        long - 360.0
    } else if long < -180.0 {
        long + 360.0
    } else {
        long
    }
}

fn point(base: f64) -> impl Strategy<Value = Point> {
    (-0.15..0.15f64, -0.15..0.15f64).prop_map(move |(dy, dx)| Point::new(10.0 + dy, wrap(base + dx)))
}

fn shape(base: f64) -> impl Strategy<Value = Shape> {
    let bbox = (-0.15..0.1f64, 0.0..0.12f64, -0.15..0.1f64, 0.0..0.12f64).prop_map(move |(s, h, w, width)| {
        Shape::BBox { south: 10.0 + s, north: 10.0 + s + h, west: wrap(base + w), east: wrap(base + w + width) }
    });
    let circle = (point(base), 100.0..12_000.0f64).prop_map(|(center, radius_m)| Shape::Circle { center, radius_m });
    prop_oneof![bbox, circle]
}

fn op(base: f64) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..4u8, shape(base)).prop_map(|(key, shape)| Op::Upsert { key, shape }),
        3 => (0..4u8).prop_map(|key| Op::Complete { key }),
        5 => (0..6u8, point(base)).prop_map(|(vendor, point)| Op::Apply { vendor, point }),
        6 => (0..6u8, -0.004..0.004f64, -0.004..0.004f64).prop_map(|(vendor, dlat, dlong)| Op::Nudge { vendor, dlat, dlong }),
        1 => (0..6u8).prop_map(|vendor| Op::Redeliver { vendor }),
        1 => (0..6u8, point(base)).prop_map(|(vendor, point)| Op::Stale { vendor, point }),
        2 => (0..700u64).prop_map(|ms| Op::Advance { ms }),
        1 => (0..4u8).prop_map(|key| Op::Remove { key }),
    ]
}

/// What a client holds about an area, from what it was sent.
#[derive(Debug, Default)]
struct View {
    vendors: BTreeMap<Vendor, (Point, i64)>,
}

impl View {
    fn apply(&mut self, event: &AreaEvent<Vendor>) {
        match *event {
            AreaEvent::Entered { vendor, point, ts } => {
                assert!(self.vendors.insert(vendor, (point, ts)).is_none(), "entered twice: {event:?}");
            }
            AreaEvent::Moved { vendor, point, ts } => {
                let told = self.vendors.get_mut(&vendor).expect("moved, but never told");
                assert!(ts != told.1, "moved to the position it had: {event:?}");
                *told = (point, ts);
            }
            AreaEvent::Left { vendor, .. } => {
                assert!(self.vendors.remove(&vendor).is_some(), "left, but never told: {event:?}");
            }
        }
    }
}

struct Sim {
    index: AreaIndex<Key, Vendor>,
    now: u64,
    next_ts: i64,
    /// Shared state: vendor → (point, ts, seen_ms), latest only.
    store: BTreeMap<Vendor, (Point, i64, u64)>,
    /// Per area, the cells its last upsert asked to load.
    to_load: BTreeMap<Key, Vec<Cell>>,
    views: BTreeMap<Key, View>,
}

impl Sim {
    fn new() -> Self {
        Self {
            index: AreaIndex::new(TTL),
            now: 0,
            next_ts: 1,
            store: BTreeMap::new(),
            to_load: BTreeMap::new(),
            views: BTreeMap::new(),
        }
    }

    fn deliver(&mut self, events: Vec<(Key, AreaEvent<Vendor>)>, only_live: bool) {
        let mut last: Option<(Key, Vendor)> = None;
        for (key, event) in events {
            if only_live {
                assert_eq!(self.index.state(&key), Some(AreaState::Live), "event for a pending area: {event:?}");
            }
            let order = (key, *event.vendor());
            if let Some(last) = last {
                assert!(last.1 != order.1 || last.0 < order.0, "areas out of order for one vendor");
            }
            last = Some(order);
            self.views.get_mut(&key).expect("event for an unknown area").apply(&event);
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Upsert { key, shape } => {
                let up = self.index.upsert(key, shape).expect("shapes of the model are valid");
                assert_eq!(up.new_area, !self.views.contains_key(&key));
                self.views.entry(key).or_default();
                for cell in &up.watch {
                    assert!(self.index.is_watched(*cell));
                }
                for cell in &up.unwatch {
                    assert!(!self.index.is_watched(*cell));
                }
                self.to_load.insert(key, up.load);
            }
            Op::Complete { key } => {
                let cells = self.to_load.remove(&key).unwrap_or_default();
                let rows: Vec<_> = self
                    .store
                    .iter()
                    .filter(|(_, (point, _, _))| cells.contains(&Cell::of(*point)))
                    .map(|(&vendor, &(point, ts, seen))| (vendor, point, ts, seen))
                    .collect();
                let events = self.index.load(&cells, rows, self.now);
                self.deliver(events, true);
                let was_pending = self.index.state(&key) == Some(AreaState::Pending);
                let completion = self.index.complete(&key, usize::MAX);
                assert_eq!(completion.is_some(), was_pending, "a pending area completes once its cells are loaded");
                let Some(view) = self.views.get_mut(&key) else { return };
                match completion {
                    Some(Completion::Snapshot { vendors, truncated }) => {
                        assert!(!truncated);
                        assert!(view.vendors.is_empty(), "a snapshot for an area the client already holds");
                        assert!(vendors.windows(2).all(|w| w[0].0 < w[1].0), "snapshot not sorted");
                        view.vendors = vendors.into_iter().map(|(v, point, ts)| (v, (point, ts))).collect();
                    }
                    Some(Completion::Diff { events, truncated }) => {
                        assert!(!truncated);
                        for event in &events {
                            view.apply(event);
                        }
                    }
                    None => {}
                }
            }
            Op::Nudge { vendor, dlat, dlong } => {
                if let Some(&(from, _, _)) = self.store.get(&vendor) {
                    let point = Point::new(from.lat + dlat, wrap(from.long + dlong));
                    self.step(&Op::Apply { vendor, point });
                }
            }
            Op::Apply { vendor, point } => {
                let ts = self.next_ts;
                self.next_ts += 1;
                self.store.insert(vendor, (point, ts, self.now));
                let events = self.index.apply(vendor, point, ts, self.now);
                self.deliver(events, true);
            }
            Op::Redeliver { vendor } => {
                if let Some(&(point, ts, seen)) = self.store.get(&vendor)
                    && seen == self.now
                {
                    assert!(self.index.apply(vendor, point, ts, self.now).is_empty(), "a redelivery made events");
                }
            }
            Op::Stale { vendor, point } => {
                if let Some(before) = self.index.position(&vendor) {
                    assert!(self.index.apply(vendor, point, before.ts - 1, self.now).is_empty());
                    assert_eq!(self.index.position(&vendor), Some(before), "a stale event changed the position");
                }
            }
            Op::Advance { ms } => {
                self.now += ms;
                let now = self.now;
                self.store.retain(|_, &mut (_, _, seen)| seen + TTL > now);
                let events = self.index.expire(now);
                for (_, event) in &events {
                    assert!(matches!(event, AreaEvent::Left { reason: venta_geo::LeftReason::Expired, .. }));
                }
                self.deliver(events, false);
            }
            Op::Remove { key } => {
                let watched_before: BTreeSet<Cell> = self.index.watched_cells().into_iter().collect();
                let cells = self.index.area_cells(&key).to_vec();
                let unwatched = self.index.remove(&key);
                for cell in &unwatched {
                    assert!(watched_before.contains(cell) && cells.contains(cell) && !self.index.is_watched(*cell));
                }
                self.views.remove(&key);
                self.to_load.remove(&key);
            }
        }
    }

    fn check(&self) {
        // positions the index holds are the latest ones, and only in watched cells
        let watched: BTreeSet<Cell> = self.index.watched_cells().into_iter().collect();
        for vendor in 0..6u8 {
            if let Some(position) = self.index.position(&vendor) {
                let &(point, ts, seen) = self.store.get(&vendor).expect("the index holds an expired vendor");
                assert_eq!((position.point, position.ts, position.seen_ms), (point, ts, seen));
                assert!(watched.contains(&position.cell), "a position in an unwatched cell");
            }
        }
        let mut cells_needed = BTreeSet::new();
        for (&key, view) in &self.views {
            cells_needed.extend(self.index.area_cells(&key).iter().copied());
            if self.index.state(&key) != Some(AreaState::Live) {
                continue;
            }
            let Some(shape) = self.index.shape(&key) else { panic!("a view without an area") };
            let expected: BTreeMap<Vendor, (Point, i64)> = self
                .store
                .iter()
                .filter(|(_, (point, _, _))| shape.contains(*point))
                .map(|(&vendor, &(point, ts, _))| (vendor, (point, ts)))
                .collect();
            let members: BTreeMap<Vendor, i64> = self.index.members(&key).map(|(&v, ts)| (v, ts)).collect();
            let expected_members: BTreeMap<Vendor, i64> = expected.iter().map(|(&v, &(_, ts))| (v, ts)).collect();
            assert_eq!(members, expected_members, "members of area {key} ({shape:?})");
            assert_eq!(view.vendors, expected, "client view of area {key} ({shape:?})");
        }
        // watched cells are exactly the union of the areas' cells
        assert_eq!(watched, cells_needed);
        assert_eq!(self.index.area_count(), self.views.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn index_matches_brute_force(
        ops in prop_oneof![Just(20.0), Just(180.0)]
            .prop_flat_map(|base| proptest::collection::vec(op(base), 1..80))
    ) {
        let mut sim = Sim::new();
        for op in &ops {
            sim.step(op);
            sim.check();
        }
    }
}
