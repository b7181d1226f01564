//! The per-instance index of live areas and the vendor positions they need.
//!
//! It answers, for every input, what the gateway must do (which cells to
//! subscribe or read, which events to send to which area), so the gateway
//! keeps no geometry of its own and the rules can be tested without sockets.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;

use crate::cell::Cell;
use crate::geometry::{Fine, Point, Shape, ShapeError};

/// Fine cells an area may be filed under; a larger area is filed under its
/// grid cells. 100 fine cells is a ≈ 5 × 5 km area: a 2 km viewport is
/// about 30, a city-wide one goes by grid cells. It also bounds what one
/// client's areas cost the index: 8 areas × 100 entries at most.
const MAX_FINE_PER_AREA: usize = 100;

/// Where an area stands with its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AreaState {
    /// Created or moved, waiting for [`AreaIndex::complete`]: location events
    /// only update positions, the completion reports their net effect.
    Pending,
    /// The client holds the area's membership; location events flow.
    Live,
}

/// Why a vendor left an area.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LeftReason {
    /// Its new position is outside the area.
    Moved,
    /// No position for the time to live.
    Expired,
    /// The client moved the area away from it.
    AreaChanged,
}

impl LeftReason {
    /// The wire spelling (`vendor_left.reason`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Moved => "moved",
            Self::Expired => "expired",
            Self::AreaChanged => "area_changed",
        }
    }
}

/// What one area's client must be told about one vendor.
#[derive(Debug, Clone, PartialEq)]
pub enum AreaEvent<V> {
    /// Now inside, and the client did not know it (`vendor_entered`).
    Entered {
        /// Who.
        vendor: V,
        /// Where.
        point: Point,
        /// Publisher timestamp of that position (unix nanos).
        ts: i64,
    },
    /// Known to the client and still inside, at a newer position
    /// (`location_updated`).
    Moved {
        /// Who.
        vendor: V,
        /// Where.
        point: Point,
        /// Publisher timestamp of that position (unix nanos).
        ts: i64,
    },
    /// Known to the client and no longer inside (`vendor_left`).
    Left {
        /// Who.
        vendor: V,
        /// Why.
        reason: LeftReason,
    },
}

impl<V> AreaEvent<V> {
    /// The vendor the event is about.
    pub fn vendor(&self) -> &V {
        match self {
            Self::Entered { vendor, .. } | Self::Moved { vendor, .. } | Self::Left { vendor, .. } => vendor,
        }
    }
}

/// What [`AreaIndex::complete`] tells the area's client.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion<V> {
    /// A new area: everything inside, sorted by vendor id.
    Snapshot {
        /// `(vendor, position, publisher ts)`, at most `snapshot_max` of them.
        vendors: Vec<(V, Point, i64)>,
        /// More vendors were inside than listed; the ones left out are not
        /// members (see [`AreaIndex::complete`]).
        truncated: bool,
    },
    /// A moved area: only the difference to what the client already holds,
    /// departures first (all `Left { reason: AreaChanged }`), then `Moved`,
    /// then `Entered`, each group by vendor id.
    Diff {
        /// The events, possibly none.
        events: Vec<AreaEvent<V>>,
        /// Some vendors inside were not entered, to keep the membership
        /// within `snapshot_max`.
        truncated: bool,
    },
}

/// What the gateway must do after [`AreaIndex::upsert`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Upsert {
    /// The key was not known: the completion will be a snapshot.
    pub new_area: bool,
    /// Cells nobody watched before: subscribe their subjects (before reading
    /// `load`, so that no update falls between the read and the subscription).
    pub watch: Vec<Cell>,
    /// Cells that lost their last watcher: unsubscribe; their positions are
    /// already dropped.
    pub unwatch: Vec<Cell>,
    /// The area's cells whose positions have not been read from shared state
    /// yet: read them, pass them to [`AreaIndex::load`], then call
    /// [`AreaIndex::complete`]. Usually the same as `watch`, plus cells another
    /// area started watching whose read is still outstanding. Empty: call
    /// `complete` right away.
    pub load: Vec<Cell>,
}

/// A vendor's last known position.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Position {
    /// Where.
    pub point: Point,
    /// Publisher timestamp (unix nanos): the ordering key, newer wins.
    pub ts: i64,
    /// `now_ms` when it was last updated, for expiry.
    pub seen_ms: u64,
    /// `Cell::of(point)`.
    pub cell: Cell,
}

/// The areas of one gateway instance's clients, and the positions of the
/// vendors in the cells they cover.
///
/// `A` is the area key (the gateway uses (connection id, areaId)), `V` the
/// vendor id. Time is passed in (`now_ms`), never read.
///
/// The gateway drives it like this:
/// 1. A client subscribes or moves an area: [`upsert`](Self::upsert);
///    subscribe [`Upsert::watch`], unsubscribe [`Upsert::unwatch`], read the
///    positions of [`Upsert::load`] from shared state, [`load`](Self::load)
///    them, then [`complete`](Self::complete) and send the snapshot or diff.
/// 2. Every location message from a cell subject: [`apply`](Self::apply).
///    Publishers must publish to the vendor's previous cell as well as its
///    new one, or watchers of the previous cell never see it leave.
/// 3. Periodically: [`expire`](Self::expire).
/// 4. Unsubscribe, or disconnect: [`remove`](Self::remove) per area key (the
///    gateway keeps each connection's area ids anyway, to bound them).
///
/// Invariants the methods keep:
/// * a vendor's position is stored if and only if its cell is watched by at
///   least one area, so memory is bounded by the watched cells;
/// * a [`Live`](AreaState::Live) area's members are the stored vendors inside
///   its shape, except those a capped snapshot or diff left out and that have
///   not moved since;
/// * events only ever speak of what the client was told: `Moved` and `Left`
///   only for members, `Entered` only for non-members.
///
/// Outputs are deterministic: events come in area key order per vendor,
/// snapshots in vendor id order.
#[derive(Debug)]
pub struct AreaIndex<A, V> {
    ttl_ms: u64,
    areas: HashMap<A, Area<V>>,
    /// Exactly the watched cells.
    cells: HashMap<Cell, CellEntry<A, V>>,
    vendors: HashMap<V, Position>,
    /// `(seen_ms, vendor)` of every stored vendor, oldest first, so expiry
    /// costs O(log n) per expired vendor and nothing when none is due.
    expiry: BTreeSet<(u64, V)>,
    /// Fine cell → the areas filed under it: the candidates for a point
    /// there are these plus its grid cell's `coarse` areas, a few dozen
    /// rather than every watcher of the grid cell.
    fine: HashMap<Fine, Vec<A>>,
}

#[derive(Debug)]
struct Area<V> {
    shape: Shape,
    /// `shape.cells()`: sorted.
    cells: Vec<Cell>,
    state: AreaState,
    /// The client got its snapshot; a completion from now on is a diff.
    told: bool,
    /// Vendor → ts of the position the client was last told.
    members: BTreeMap<V, i64>,
    /// The fine cells it is filed under, or `None`: filed under its grid
    /// cells' `coarse` sets.
    fine: Option<Vec<Fine>>,
}

#[derive(Debug)]
struct CellEntry<A, V> {
    /// Sorted, so events come out in area key order.
    watchers: BTreeSet<A>,
    /// The watchers too large to file under fine cells.
    coarse: BTreeSet<A>,
    vendors: HashSet<V>,
    /// Its positions were read from shared state since it became watched.
    loaded: bool,
}

impl<A, V> CellEntry<A, V> {
    fn new() -> Self {
        Self { watchers: BTreeSet::new(), coarse: BTreeSet::new(), vendors: HashSet::new(), loaded: false }
    }
}

impl<A, V> AreaIndex<A, V>
where
    A: Clone + Eq + Hash + Ord,
    V: Clone + Eq + Hash + Ord,
{
    /// An empty index whose vendors expire `ttl_ms` after their last update.
    ///
    /// The time to live lives here rather than in each call so that
    /// [`load`](Self::load) can skip positions that are already dead, instead
    /// of showing them in a snapshot and expiring them right after.
    pub fn new(ttl_ms: u64) -> Self {
        Self {
            ttl_ms,
            areas: HashMap::new(),
            cells: HashMap::new(),
            vendors: HashMap::new(),
            expiry: BTreeSet::new(),
            fine: HashMap::new(),
        }
    }

    /// The time to live given to [`new`](Self::new).
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// Creates the area, or moves it to a new shape (same key).
    ///
    /// The area becomes [`Pending`](AreaState::Pending) until
    /// [`complete`](Self::complete); a moved area keeps its members meanwhile,
    /// so the completion can report only the difference. Upserting the shape
    /// an area already has changes nothing and returns an empty [`Upsert`]
    /// (`complete` then returns `None`: nothing to send).
    ///
    /// Refuses, changing nothing, a shape that fails [`Shape::check`]; the
    /// size limit ([`Shape::validate`]) is the caller's policy.
    pub fn upsert(&mut self, key: A, shape: Shape) -> Result<Upsert, ShapeError> {
        shape.check()?;
        let cells = shape.cells();
        let mut out = Upsert::default();
        if self.areas.get(&key).is_some_and(|area| area.shape == shape) {
            return Ok(out);
        }
        self.unfile(&key);
        let fine = shape.fine_cells(MAX_FINE_PER_AREA);
        let old_cells = match self.areas.get_mut(&key) {
            Some(area) => {
                area.shape = shape;
                area.state = AreaState::Pending;
                area.fine = fine;
                std::mem::replace(&mut area.cells, cells.clone())
            }
            None => {
                out.new_area = true;
                let area = Area {
                    shape,
                    cells: cells.clone(),
                    state: AreaState::Pending,
                    told: false,
                    members: BTreeMap::new(),
                    fine,
                };
                self.areas.insert(key.clone(), area);
                Vec::new()
            }
        };
        for &cell in &cells {
            if old_cells.binary_search(&cell).is_err() {
                let entry = self.cells.entry(cell).or_insert_with(|| {
                    out.watch.push(cell);
                    CellEntry::new()
                });
                entry.watchers.insert(key.clone());
            }
        }
        for &cell in &old_cells {
            if cells.binary_search(&cell).is_err() {
                self.unwatch(cell, &key, &mut out.unwatch);
            }
        }
        self.file(&key);
        out.load = cells.into_iter().filter(|cell| !self.cells.get(cell).is_some_and(|e| e.loaded)).collect();
        Ok(out)
    }

    /// Merges positions read from shared state, `(vendor, point, ts,
    /// seen_ms)`, and marks `cells` as read.
    ///
    /// Each entry is handled like [`apply`](Self::apply) with its own
    /// `seen_ms`: only a newer ts wins, vendors in unwatched cells are
    /// ignored. Entries already past the time to live at `now_ms` are skipped.
    /// Usually returns nothing; it returns events when the read holds a newer
    /// position for a vendor a live area already shows (an update that is
    /// still in flight on the subject, say).
    ///
    /// A read that was started before its cell was unwatched and watched
    /// again still marks the cell as read; an update in that gap shows up
    /// with the vendor's next one.
    pub fn load<I>(&mut self, cells: &[Cell], vendors: I, now_ms: u64) -> Vec<(A, AreaEvent<V>)>
    where
        I: IntoIterator<Item = (V, Point, i64, u64)>,
    {
        let mut events = Vec::new();
        for (vendor, point, ts, seen_ms) in vendors {
            if seen_ms.saturating_add(self.ttl_ms) > now_ms {
                self.update(vendor, point, ts, seen_ms, &mut events);
            }
        }
        for cell in cells {
            if let Some(entry) = self.cells.get_mut(cell) {
                entry.loaded = true;
            }
        }
        events
    }

    /// Turns a pending area live and says what its client must be told.
    ///
    /// A new area gets a [`Completion::Snapshot`] of at most `snapshot_max`
    /// vendors (the first by vendor id). Those beyond the cap are simply not
    /// members: no `Moved` or `Left` is ever sent about them, and they show up
    /// with `Entered` when they next move and are still inside.
    ///
    /// A moved area gets a [`Completion::Diff`] against what its client holds:
    /// `Left { reason: AreaChanged }` for members no longer inside, `Moved` for
    /// members whose position changed since they were told, `Entered` for the
    /// others inside, as long as the membership stays within `snapshot_max`
    /// (the same cap as a snapshot, the same rule for those left out).
    ///
    /// `None`: the key is unknown, the area is already live, or some of its
    /// cells were not [`load`](Self::load)ed yet (call again after that load).
    pub fn complete(&mut self, key: &A, snapshot_max: usize) -> Option<Completion<V>> {
        let area = self.areas.get_mut(key)?;
        if area.state == AreaState::Live || !area.cells.iter().all(|c| self.cells.get(c).is_some_and(|e| e.loaded)) {
            return None;
        }
        // Each stored vendor sits in exactly one cell and `area.cells` has no
        // duplicates, so this lists every vendor at most once.
        let mut inside: Vec<(&V, &Position)> = area
            .cells
            .iter()
            .filter_map(|cell| self.cells.get(cell))
            .flat_map(|entry| entry.vendors.iter())
            .filter_map(|vendor| self.vendors.get(vendor).map(|position| (vendor, position)))
            .filter(|(_, position)| area.shape.contains(position.point))
            .collect();
        inside.sort_unstable_by(|a, b| a.0.cmp(b.0));
        area.state = AreaState::Live;

        if !area.told {
            area.told = true;
            let truncated = inside.len() > snapshot_max;
            inside.truncate(snapshot_max);
            area.members = inside.iter().map(|&(vendor, position)| (vendor.clone(), position.ts)).collect();
            let vendors = inside.into_iter().map(|(vendor, p)| (vendor.clone(), p.point, p.ts)).collect();
            return Some(Completion::Snapshot { vendors, truncated });
        }

        let told = std::mem::take(&mut area.members);
        let is_inside = |vendor: &V| inside.binary_search_by(|(v, _)| (*v).cmp(vendor)).is_ok();
        let mut events: Vec<AreaEvent<V>> = told
            .keys()
            .filter(|vendor| !is_inside(vendor))
            .map(|vendor| AreaEvent::Left { vendor: vendor.clone(), reason: LeftReason::AreaChanged })
            .collect();
        let mut members = BTreeMap::new();
        for &(vendor, position) in &inside {
            if let Some(&told_ts) = told.get(vendor) {
                // `!=` rather than `>`: after its cell was dropped and read
                // again a vendor can come back older; the client follows the
                // index either way.
                if position.ts != told_ts {
                    events.push(AreaEvent::Moved { vendor: vendor.clone(), point: position.point, ts: position.ts });
                }
                members.insert(vendor.clone(), position.ts);
            }
        }
        let mut truncated = false;
        for &(vendor, position) in &inside {
            if told.contains_key(vendor) {
                continue;
            }
            if members.len() < snapshot_max {
                events.push(AreaEvent::Entered { vendor: vendor.clone(), point: position.point, ts: position.ts });
                members.insert(vendor.clone(), position.ts);
            } else {
                truncated = true;
            }
        }
        area.members = members;
        Some(Completion::Diff { events, truncated })
    }

    /// A live location event: `vendor` is at `point` as of publisher time
    /// `ts`, received at `now_ms`.
    ///
    /// Stale (`ts` not newer than the stored one) or off the map: returns
    /// nothing and changes nothing; this also drops the second copy of an
    /// event received through both its old and its new cell's subject.
    /// Otherwise the position is stored (or dropped, if its new cell is not
    /// watched) and every live area watching the old or the new cell is told:
    /// `Moved` if it was a member and is still inside, `Entered` if it is
    /// newly inside, `Left { reason: Moved }` if it was a member and is not
    /// inside any more. Pending areas are told nothing.
    pub fn apply(&mut self, vendor: V, point: Point, ts: i64, now_ms: u64) -> Vec<(A, AreaEvent<V>)> {
        let mut events = Vec::new();
        self.update(vendor, point, ts, now_ms, &mut events);
        events
    }

    /// Forgets vendors not updated for the time to live (`seen_ms + ttl_ms <=
    /// now_ms`); every area watching the vendor's cell that counts it as a
    /// member is told `Left { reason: Expired }`. That includes pending moved
    /// areas (they keep their members, and the client knew the vendor); one
    /// whose new shape no longer covers the cell reports the vendor at
    /// completion instead, as `AreaChanged`.
    ///
    /// Costs nothing when no vendor is due.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(A, AreaEvent<V>)> {
        let mut events = Vec::new();
        while let Some(&(seen_ms, _)) = self.expiry.first() {
            if seen_ms.saturating_add(self.ttl_ms) > now_ms {
                break;
            }
            let Some((_, vendor)) = self.expiry.pop_first() else { break };
            let Some(position) = self.vendors.remove(&vendor) else { continue };
            let Some(entry) = self.cells.get_mut(&position.cell) else { continue };
            entry.vendors.remove(&vendor);
            for key in &entry.watchers {
                if let Some(area) = self.areas.get_mut(key)
                    && area.members.remove(&vendor).is_some()
                {
                    events.push((key.clone(), AreaEvent::Left { vendor: vendor.clone(), reason: LeftReason::Expired }));
                }
            }
        }
        events
    }

    /// Forgets an area; returns the cells that lost their last watcher (to
    /// unsubscribe; their positions are dropped). Unknown key: nothing.
    pub fn remove(&mut self, key: &A) -> Vec<Cell> {
        let mut unwatched = Vec::new();
        self.unfile(key);
        if let Some(area) = self.areas.remove(key) {
            for cell in area.cells {
                self.unwatch(cell, key, &mut unwatched);
            }
        }
        unwatched
    }

    /// The area's state; `None` for an unknown key.
    pub fn state(&self, key: &A) -> Option<AreaState> {
        self.areas.get(key).map(|area| area.state)
    }

    /// The area's current shape.
    pub fn shape(&self, key: &A) -> Option<Shape> {
        self.areas.get(key).map(|area| area.shape)
    }

    /// The cells the area watches, sorted; empty for an unknown key.
    pub fn area_cells(&self, key: &A) -> &[Cell] {
        self.areas.get(key).map_or(&[], |area| &area.cells)
    }

    /// The vendors the area's client was told about, with the ts it was last
    /// told, by vendor id; empty for an unknown key.
    pub fn members<'a>(&'a self, key: &A) -> impl Iterator<Item = (&'a V, i64)> + use<'a, A, V> {
        self.areas.get(key).into_iter().flat_map(|area| area.members.iter().map(|(vendor, &ts)| (vendor, ts)))
    }

    /// The stored position of a vendor (only vendors in watched cells are).
    pub fn position(&self, vendor: &V) -> Option<Position> {
        self.vendors.get(vendor).copied()
    }

    /// Whether some area watches `cell`.
    pub fn is_watched(&self, cell: Cell) -> bool {
        self.cells.contains_key(&cell)
    }

    /// Every watched cell, sorted.
    pub fn watched_cells(&self) -> Vec<Cell> {
        let mut cells: Vec<Cell> = self.cells.keys().copied().collect();
        cells.sort_unstable();
        cells
    }

    /// Number of areas.
    pub fn area_count(&self) -> usize {
        self.areas.len()
    }

    /// Number of stored vendor positions.
    pub fn vendor_count(&self) -> usize {
        self.vendors.len()
    }

    /// Number of watched cells.
    pub fn watched_cell_count(&self) -> usize {
        self.cells.len()
    }

    fn update(&mut self, vendor: V, point: Point, ts: i64, seen_ms: u64, events: &mut Vec<(A, AreaEvent<V>)>) {
        let old = self.vendors.get(&vendor).copied();
        if old.is_some_and(|old| ts <= old.ts) || !point.is_valid() {
            return;
        }
        let new_cell = Cell::of(point);
        let stored = match self.cells.get_mut(&new_cell) {
            Some(entry) => {
                entry.vendors.insert(vendor.clone());
                true
            }
            None => false,
        };
        let Some(old_cell) = old.map(|old| old.cell).or(stored.then_some(new_cell)) else {
            // unknown, and not in a watched cell: nobody here cares
            return;
        };
        if let Some(old) = old {
            self.expiry.remove(&(old.seen_ms, vendor.clone()));
            if old.cell != new_cell
                && let Some(entry) = self.cells.get_mut(&old.cell)
            {
                entry.vendors.remove(&vendor);
            }
        }
        if stored {
            self.vendors.insert(vendor.clone(), Position { point, ts, seen_ms, cell: new_cell });
            self.expiry.insert((seen_ms, vendor.clone()));
        } else {
            self.vendors.remove(&vendor);
        }

        // Every live member area contains the old position (so it is filed
        // under its fine cell, or under its grid cell if large), and every
        // area the vendor is now inside contains the new one.
        let mut candidates: Vec<&A> = Vec::new();
        let mut points = vec![Fine::of(point)];
        if let Some(old) = old {
            points.push(Fine::of(old.point));
        }
        for f in &points {
            if let Some(keys) = self.fine.get(f) {
                candidates.extend(keys.iter());
            }
        }
        for cell in [old_cell, new_cell] {
            if let Some(entry) = self.cells.get(&cell) {
                candidates.extend(entry.coarse.iter());
            }
        }
        candidates.sort_unstable();
        candidates.dedup();
        let candidates: Vec<A> = candidates.into_iter().cloned().collect();
        for key in &candidates {
            let Some(area) = self.areas.get_mut(key) else { continue };
            if area.state != AreaState::Live {
                continue;
            }
            let inside = stored && area.shape.contains(point);
            let event = match (inside, area.members.get_mut(&vendor)) {
                (true, Some(told_ts)) => {
                    *told_ts = ts;
                    AreaEvent::Moved { vendor: vendor.clone(), point, ts }
                }
                (true, None) => {
                    area.members.insert(vendor.clone(), ts);
                    AreaEvent::Entered { vendor: vendor.clone(), point, ts }
                }
                (false, Some(_)) => {
                    area.members.remove(&vendor);
                    AreaEvent::Left { vendor: vendor.clone(), reason: LeftReason::Moved }
                }
                (false, None) => continue,
            };
            events.push((key.clone(), event));
        }
    }

    /// Files an area under its fine cells, or its grid cells' `coarse` sets.
    fn file(&mut self, key: &A) {
        let Some(area) = self.areas.get(key) else { return };
        match &area.fine {
            Some(fine) => {
                for f in fine {
                    self.fine.entry(*f).or_default().push(key.clone());
                }
            }
            None => {
                for cell in &area.cells {
                    if let Some(entry) = self.cells.get_mut(cell) {
                        entry.coarse.insert(key.clone());
                    }
                }
            }
        }
    }

    /// Undoes [`file`](Self::file) (before the area's shape changes).
    fn unfile(&mut self, key: &A) {
        let Some(area) = self.areas.get(key) else { return };
        match &area.fine {
            Some(fine) => {
                for f in fine {
                    if let Some(keys) = self.fine.get_mut(f) {
                        keys.retain(|k| k != key);
                        if keys.is_empty() {
                            self.fine.remove(f);
                        }
                    }
                }
            }
            None => {
                for cell in &area.cells {
                    if let Some(entry) = self.cells.get_mut(cell) {
                        entry.coarse.remove(key);
                    }
                }
            }
        }
    }

    fn unwatch(&mut self, cell: Cell, key: &A, unwatched: &mut Vec<Cell>) {
        let Some(entry) = self.cells.get_mut(&cell) else { return };
        entry.watchers.remove(key);
        if !entry.watchers.is_empty() {
            return;
        }
        if let Some(entry) = self.cells.remove(&cell) {
            for vendor in entry.vendors {
                if let Some(position) = self.vendors.remove(&vendor) {
                    self.expiry.remove(&(position.seen_ms, vendor));
                }
            }
        }
        unwatched.push(cell);
    }
}

#[cfg(test)]
mod tests;
