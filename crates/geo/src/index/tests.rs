use super::*;

type Index = AreaIndex<&'static str, &'static str>;
type Entry = (&'static str, Point, i64, u64);

const TTL: u64 = 60_000;
const ALL: usize = usize::MAX;

/// A box inside one cell, (10.0..10.05) × (20.0..20.05), with room around it.
fn small_box() -> Shape {
    Shape::BBox { south: 10.01, west: 20.01, north: 10.04, east: 20.04 }
}

fn p(lat: f64, long: f64) -> Point {
    Point::new(lat, long)
}

const IN: Point = Point::new(10.02, 20.02);
const IN2: Point = Point::new(10.03, 20.03);
/// Same cell as IN, outside `small_box`.
const OUT_SAME_CELL: Point = Point::new(10.005, 20.005);
/// Far away, in no watched cell.
const FAR: Point = Point::new(-40.0, 100.0);

/// Upsert, load what the store has in the cells to load, complete.
fn open(ix: &mut Index, key: &'static str, shape: Shape, store: &[Entry], now: u64) -> Completion<&'static str> {
    let up = ix.upsert(key, shape).unwrap();
    let rows: Vec<Entry> = store.iter().copied().filter(|e| up.load.contains(&Cell::of(e.1))).collect();
    assert!(ix.load(&up.load, rows, now).is_empty());
    ix.complete(&key, ALL).expect("completes once its cells are loaded")
}

fn members(ix: &Index, key: &'static str) -> Vec<&'static str> {
    ix.members(&key).map(|(v, _)| *v).collect()
}

fn entered(vendor: &'static str, point: Point, ts: i64) -> AreaEvent<&'static str> {
    AreaEvent::Entered { vendor, point, ts }
}

fn moved(vendor: &'static str, point: Point, ts: i64) -> AreaEvent<&'static str> {
    AreaEvent::Moved { vendor, point, ts }
}

fn left(vendor: &'static str, reason: LeftReason) -> AreaEvent<&'static str> {
    AreaEvent::Left { vendor, reason }
}

#[test]
fn snapshot_lists_the_vendors_inside_sorted() {
    let mut ix = Index::new(TTL);
    let store = [("c", IN, 1, 0), ("a", IN2, 2, 0), ("b", OUT_SAME_CELL, 3, 0), ("d", FAR, 4, 0)];
    let up = ix.upsert("area", small_box()).unwrap();
    assert!(up.new_area);
    assert_eq!(up.watch, vec![Cell::of(IN)]);
    assert_eq!(up.load, up.watch);
    assert!(up.unwatch.is_empty());
    assert_eq!(ix.state(&"area"), Some(AreaState::Pending));
    // not loaded yet: no completion
    assert_eq!(ix.complete(&"area", ALL), None);
    // the whole store is offered; only watched cells are kept
    assert!(ix.load(&up.load, store, 0).is_empty());
    assert_eq!(ix.vendor_count(), 3);
    assert_eq!(ix.position(&"d"), None);
    let completion = ix.complete(&"area", ALL);
    assert_eq!(completion, Some(Completion::Snapshot { vendors: vec![("a", IN2, 2), ("c", IN, 1)], truncated: false }));
    assert_eq!(ix.state(&"area"), Some(AreaState::Live));
    assert_eq!(ix.members(&"area").collect::<Vec<_>>(), vec![(&"a", 2), (&"c", 1)]);
    // completing twice sends nothing
    assert_eq!(ix.complete(&"area", ALL), None);
    assert_eq!(ix.complete(&"unknown", ALL), None);
}

#[test]
fn truncated_snapshot_members_are_exactly_the_listed_ones() {
    let mut ix = Index::new(TTL);
    let store: Vec<Entry> = ["e", "d", "c", "b", "a"].iter().map(|&v| (v, IN, 1, 0)).collect();
    let up = ix.upsert("area", small_box()).unwrap();
    ix.load(&up.load, store, 0);
    let completion = ix.complete(&"area", 3);
    assert_eq!(
        completion,
        Some(Completion::Snapshot { vendors: vec![("a", IN, 1), ("b", IN, 1), ("c", IN, 1)], truncated: true })
    );
    assert_eq!(members(&ix, "area"), vec!["a", "b", "c"]);
    // "e" was never told: moving inside enters it, leaving says nothing
    assert_eq!(ix.apply("e", IN2, 2, 1), vec![("area", entered("e", IN2, 2))]);
    assert!(ix.apply("d", OUT_SAME_CELL, 2, 1).is_empty());
    assert!(ix.apply("d", FAR, 3, 1).is_empty());
    assert_eq!(ix.apply("a", FAR, 2, 1), vec![("area", left("a", LeftReason::Moved))]);
    assert_eq!(members(&ix, "area"), vec!["b", "c", "e"]);
    // a zero cap lists nothing, and says so
    let mut ix = Index::new(TTL);
    let up = ix.upsert("area", small_box()).unwrap();
    ix.load(&up.load, [("a", IN, 1, 0)], 0);
    assert_eq!(ix.complete(&"area", 0), Some(Completion::Snapshot { vendors: vec![], truncated: true }));
}

#[test]
fn enter_move_leave() {
    let mut ix = Index::new(TTL);
    assert_eq!(open(&mut ix, "area", small_box(), &[], 0), Completion::Snapshot { vendors: vec![], truncated: false });
    // appears in a watched cell, outside the shape: stored, no event
    assert!(ix.apply("v", OUT_SAME_CELL, 1, 1).is_empty());
    assert_eq!(ix.position(&"v").map(|p| p.point), Some(OUT_SAME_CELL));
    assert_eq!(ix.apply("v", IN, 2, 2), vec![("area", entered("v", IN, 2))]);
    assert_eq!(ix.apply("v", IN2, 3, 3), vec![("area", moved("v", IN2, 3))]);
    assert_eq!(ix.members(&"area").collect::<Vec<_>>(), vec![(&"v", 3)]);
    assert_eq!(ix.apply("v", OUT_SAME_CELL, 4, 4), vec![("area", left("v", LeftReason::Moved))]);
    assert_eq!(ix.apply("v", IN, 5, 5), vec![("area", entered("v", IN, 5))]);
    // straight out of the watched cells: left, and the position is dropped
    assert_eq!(ix.apply("v", FAR, 6, 6), vec![("area", left("v", LeftReason::Moved))]);
    assert_eq!(ix.position(&"v"), None);
    assert_eq!(ix.vendor_count(), 0);
    // back from nowhere: entered
    assert_eq!(ix.apply("v", IN, 7, 7), vec![("area", entered("v", IN, 7))]);
    // never seen, never inside: nothing stored
    assert!(ix.apply("w", FAR, 1, 1).is_empty());
    assert_eq!(ix.position(&"w"), None);
}

#[test]
fn stale_and_duplicate_events_are_ignored() {
    let mut ix = Index::new(TTL);
    open(&mut ix, "area", small_box(), &[], 0);
    assert_eq!(ix.apply("v", IN, 10, 1), vec![("area", entered("v", IN, 10))]);
    // the same event again (received through a second cell subject)
    assert!(ix.apply("v", IN, 10, 2).is_empty());
    // older
    assert!(ix.apply("v", OUT_SAME_CELL, 9, 3).is_empty());
    assert!(ix.apply("v", FAR, 5, 3).is_empty());
    let position = ix.position(&"v").unwrap();
    assert_eq!((position.point, position.ts, position.seen_ms), (IN, 10, 1), "a stale event changes nothing");
    assert_eq!(ix.members(&"area").collect::<Vec<_>>(), vec![(&"v", 10)]);
    // off the map
    assert!(ix.apply("v", p(f64::NAN, 20.02), 11, 4).is_empty());
    assert!(ix.apply("v", p(91.0, 20.02), 12, 4).is_empty());
    assert_eq!(ix.position(&"v").unwrap().ts, 10);
    assert_eq!(ix.apply("v", IN2, 11, 5), vec![("area", moved("v", IN2, 11))]);
}

#[test]
fn pending_area_emits_nothing_until_complete() {
    let mut ix = Index::new(TTL);
    let up = ix.upsert("area", small_box()).unwrap();
    assert!(ix.apply("v", IN, 1, 1).is_empty());
    assert!(ix.apply("w", IN2, 1, 1).is_empty());
    assert!(ix.apply("w", OUT_SAME_CELL, 2, 1).is_empty());
    assert_eq!(ix.members(&"area").count(), 0);
    // the read from shared state is older than what arrived meanwhile
    assert!(ix.load(&up.load, [("v", OUT_SAME_CELL, 0, 0), ("w", IN2, 1, 0)], 1).is_empty());
    assert_eq!(ix.complete(&"area", ALL), Some(Completion::Snapshot { vendors: vec![("v", IN, 1)], truncated: false }));
    assert_eq!(ix.apply("v", IN2, 2, 2), vec![("area", moved("v", IN2, 2))]);
}

#[test]
fn moving_an_area_sends_only_the_difference() {
    let mut ix = Index::new(TTL);
    // two boxes side by side in one cell, overlapping in the middle
    let west = Shape::BBox { south: 10.01, west: 20.01, north: 10.04, east: 20.03 };
    let east = Shape::BBox { south: 10.01, west: 20.02, north: 10.04, east: 20.04 };
    let only_west = p(10.02, 20.015);
    let both = p(10.02, 20.025);
    let only_east = p(10.02, 20.035);
    let store = [("a", only_west, 1, 0), ("b", both, 1, 0), ("c", only_east, 1, 0), ("d", both, 1, 0)];
    assert_eq!(
        open(&mut ix, "area", west, &store, 0),
        Completion::Snapshot { vendors: vec![("a", only_west, 1), ("b", both, 1), ("d", both, 1)], truncated: false }
    );
    // "d" moves within the overlap while the area is pending
    let up = ix.upsert("area", east).unwrap();
    assert_eq!(up, Upsert { new_area: false, watch: vec![], unwatch: vec![], load: vec![] });
    assert_eq!(ix.state(&"area"), Some(AreaState::Pending));
    let d_now = p(10.03, 20.025);
    assert!(ix.apply("d", d_now, 2, 1).is_empty());
    assert_eq!(
        ix.complete(&"area", ALL),
        Some(Completion::Diff {
            events: vec![left("a", LeftReason::AreaChanged), moved("d", d_now, 2), entered("c", only_east, 1)],
            truncated: false,
        })
    );
    assert_eq!(members(&ix, "area"), vec!["b", "c", "d"]);
    // the same shape again: nothing to do, nothing to send
    assert_eq!(ix.upsert("area", east).unwrap(), Upsert::default());
    assert_eq!(ix.state(&"area"), Some(AreaState::Live));
    assert_eq!(ix.complete(&"area", ALL), None);
}

#[test]
fn moving_an_area_to_new_cells_watches_loads_and_unwatches() {
    let mut ix = Index::new(TTL);
    let here = small_box();
    let there = Shape::BBox { south: 10.11, west: 20.11, north: 10.14, east: 20.14 };
    let there_pt = p(10.12, 20.12);
    let store = [("a", IN, 1, 0), ("b", there_pt, 1, 0)];
    open(&mut ix, "area", here, &store, 0);
    let up = ix.upsert("area", there).unwrap();
    assert_eq!(up.watch, vec![Cell::of(there_pt)]);
    assert_eq!(up.unwatch, vec![Cell::of(IN)]);
    assert_eq!(up.load, up.watch);
    // the old cell's positions are gone at once
    assert_eq!(ix.position(&"a"), None);
    assert_eq!(ix.watched_cells(), vec![Cell::of(there_pt)]);
    assert_eq!(ix.complete(&"area", ALL), None, "not loaded yet");
    ix.load(&up.load, store.iter().copied().filter(|e| up.load.contains(&Cell::of(e.1))), 0);
    assert_eq!(
        ix.complete(&"area", ALL),
        Some(Completion::Diff {
            events: vec![left("a", LeftReason::AreaChanged), entered("b", there_pt, 1)],
            truncated: false
        })
    );
}

#[test]
fn a_moved_area_keeps_its_membership_within_the_cap() {
    let mut ix = Index::new(TTL);
    let there = Shape::BBox { south: 10.11, west: 20.11, north: 10.14, east: 20.14 };
    let store: Vec<Entry> =
        vec![("a", IN, 1, 0), ("b", IN2, 1, 0), ("x", p(10.12, 20.12), 1, 0), ("y", p(10.13, 20.13), 1, 0)];
    let up = ix.upsert("area", small_box()).unwrap();
    ix.load(&up.load, store.clone(), 0);
    ix.complete(&"area", 1);
    let up = ix.upsert("area", there).unwrap();
    ix.load(&up.load, store, 0);
    assert_eq!(
        ix.complete(&"area", 1),
        Some(Completion::Diff {
            events: vec![left("a", LeftReason::AreaChanged), entered("x", p(10.12, 20.12), 1)],
            truncated: true,
        })
    );
}

#[test]
fn moving_a_never_completed_area_still_ends_in_a_snapshot() {
    let mut ix = Index::new(TTL);
    ix.upsert("area", small_box()).unwrap();
    let shape = Shape::BBox { south: 10.005, west: 20.005, north: 10.04, east: 20.04 };
    let up = ix.upsert("area", shape).unwrap();
    assert!(!up.new_area);
    assert_eq!(up.load, vec![Cell::of(IN)], "the first read is still outstanding");
    ix.load(&up.load, [("b", OUT_SAME_CELL, 1, 0)], 0);
    assert_eq!(
        ix.complete(&"area", ALL),
        Some(Completion::Snapshot { vendors: vec![("b", OUT_SAME_CELL, 1)], truncated: false })
    );
}

#[test]
fn an_area_waits_for_a_read_another_area_started() {
    let mut ix = Index::new(TTL);
    let first = ix.upsert("first", small_box()).unwrap();
    let second = ix.upsert("second", small_box()).unwrap();
    assert!(second.watch.is_empty(), "already subscribed");
    assert_eq!(second.load, first.load, "but not read yet");
    assert_eq!(ix.complete(&"second", ALL), None);
    ix.load(&first.load, [("v", IN, 1, 0)], 0);
    let snapshot = Completion::Snapshot { vendors: vec![("v", IN, 1)], truncated: false };
    assert_eq!(ix.complete(&"second", ALL), Some(snapshot.clone()));
    assert_eq!(ix.complete(&"first", ALL), Some(snapshot));
    // a third one over read cells completes at once
    let third = ix.upsert("third", small_box()).unwrap();
    assert!(third.load.is_empty() && third.watch.is_empty());
    assert!(ix.complete(&"third", ALL).is_some());
}

#[test]
fn load_merges_by_timestamp_and_skips_the_dead() {
    let mut ix = Index::new(TTL);
    open(&mut ix, "area", small_box(), &[("v", IN, 5, 0)], 0);
    let far_box = Shape::BBox { south: 10.11, west: 20.11, north: 10.14, east: 20.14 };
    let up = ix.upsert("other", far_box).unwrap();
    let now = 100_000;
    let rows = [
        // older than known: ignored
        ("v", IN2, 4, now),
        // expired already (seen + ttl <= now): skipped
        ("dead", p(10.12, 20.12), 1, now - TTL),
        ("alive", p(10.13, 20.13), 1, now - TTL + 1),
        // not in a watched cell
        ("far", FAR, 1, now),
    ];
    assert!(ix.load(&up.load, rows, now).is_empty());
    assert_eq!(ix.position(&"v").unwrap().point, IN);
    assert_eq!(ix.position(&"dead"), None);
    assert_eq!(ix.position(&"far"), None);
    assert_eq!(ix.position(&"alive").unwrap().seen_ms, now - TTL + 1);
    // a read with a newer position for a vendor a live area shows: events
    assert_eq!(ix.load(&[], [("v", p(10.12, 20.12), 6, now)], now), vec![("area", left("v", LeftReason::Moved))]);
    assert_eq!(
        ix.complete(&"other", ALL),
        Some(Completion::Snapshot {
            vendors: vec![("alive", p(10.13, 20.13), 1), ("v", p(10.12, 20.12), 6)],
            truncated: false
        })
    );
}

#[test]
fn expiry_tells_members_and_forgets_the_vendor() {
    let mut ix = Index::new(TTL);
    let store = [("old", IN, 1, 0), ("new", IN2, 1, 500), ("edge", OUT_SAME_CELL, 1, 0)];
    open(&mut ix, "area", small_box(), &store, 1000);
    assert!(ix.expire(TTL - 1).is_empty(), "nothing due yet");
    assert_eq!(ix.vendor_count(), 3);
    // due exactly at seen + ttl; "edge" is not a member: no event, but forgotten
    assert_eq!(ix.expire(TTL), vec![("area", left("old", LeftReason::Expired))]);
    assert_eq!(ix.position(&"old"), None);
    assert_eq!(ix.position(&"edge"), None);
    assert_eq!(members(&ix, "area"), vec!["new"]);
    assert!(ix.expire(TTL).is_empty());
    // an update keeps a vendor alive
    ix.apply("new", IN, 2, TTL);
    assert!(ix.expire(TTL + 500).is_empty());
    assert_eq!(ix.expire(2 * TTL), vec![("area", left("new", LeftReason::Expired))]);
    assert_eq!(ix.vendor_count(), 0);
    // gone from later snapshots
    assert_eq!(
        open(&mut ix, "later", small_box(), &[], 2 * TTL),
        Completion::Snapshot { vendors: vec![], truncated: false }
    );
    // and comes back as new when it sends again
    assert_eq!(
        ix.apply("old", IN, 2, 2 * TTL),
        vec![("area", entered("old", IN, 2)), ("later", entered("old", IN, 2))]
    );
}

#[test]
fn unwatching_drops_positions() {
    let mut ix = Index::new(TTL);
    let store = [("a", IN, 1, 0), ("b", OUT_SAME_CELL, 1, 0)];
    open(&mut ix, "one", small_box(), &store, 0);
    open(&mut ix, "two", small_box(), &store, 0);
    assert_eq!(ix.vendor_count(), 2);
    assert!(ix.remove(&"one").is_empty(), "still watched by two");
    assert_eq!(ix.vendor_count(), 2);
    assert_eq!(ix.remove(&"two"), vec![Cell::of(IN)]);
    assert_eq!((ix.vendor_count(), ix.watched_cell_count(), ix.area_count()), (0, 0, 0));
    assert!(ix.expiry.is_empty(), "the expiry order is bounded too");
    assert!(ix.remove(&"two").is_empty());
    // nothing is kept for unwatched cells
    assert!(ix.apply("a", IN2, 2, 1).is_empty());
    assert_eq!(ix.vendor_count(), 0);
    // watching again needs a read again
    let up = ix.upsert("three", small_box()).unwrap();
    assert_eq!(up.watch, vec![Cell::of(IN)]);
    assert_eq!(up.load, up.watch);
}

#[test]
fn areas_sharing_cells_both_get_events_in_key_order() {
    let mut ix = Index::new(TTL);
    // four cells, the first shared with "b"
    let wide = Shape::BBox { south: 10.01, west: 20.01, north: 10.06, east: 20.06 };
    open(&mut ix, "b", small_box(), &[], 0);
    open(&mut ix, "a", wide, &[], 0);
    assert_eq!(ix.watched_cell_count(), 4);
    assert_eq!(ix.apply("v", IN, 1, 1), vec![("a", entered("v", IN, 1)), ("b", entered("v", IN, 1))]);
    let a_only = p(10.045, 20.045);
    assert_eq!(Cell::of(a_only), Cell::of(IN));
    assert_eq!(ix.apply("v", a_only, 2, 1), vec![("a", moved("v", a_only, 2)), ("b", left("v", LeftReason::Moved))]);
    let next_cell = p(10.055, 20.055);
    assert_ne!(Cell::of(next_cell), Cell::of(IN));
    assert_eq!(ix.apply("v", next_cell, 3, 1), vec![("a", moved("v", next_cell, 3))]);
    assert_eq!(ix.position(&"v").unwrap().cell, Cell::of(next_cell));
    // "a" watches the old cell, "b" neither: only "a" hears
    assert_eq!(ix.apply("v", FAR, 4, 1), vec![("a", left("v", LeftReason::Moved))]);
    // a pending area sharing the cells hears nothing
    ix.upsert("c", Shape::BBox { south: 10.0, west: 20.0, north: 10.04, east: 20.04 }).unwrap();
    assert_eq!(ix.apply("v", IN, 5, 1), vec![("a", entered("v", IN, 5)), ("b", entered("v", IN, 5))]);
}

#[test]
fn areas_across_the_antimeridian() {
    let mut ix = Index::new(TTL);
    let circle = Shape::Circle { center: p(0.0, 179.99), radius_m: 3_000.0 };
    let east_of_180 = p(0.0, -179.99);
    let store = [("v", east_of_180, 1, 0)];
    assert_eq!(
        open(&mut ix, "area", circle, &store, 0),
        Completion::Snapshot { vendors: vec![("v", east_of_180, 1)], truncated: false }
    );
    assert_eq!(ix.apply("v", p(0.0, 180.0), 2, 0), vec![("area", moved("v", p(0.0, 180.0), 2))]);
    assert_eq!(ix.apply("v", p(0.0, -179.95), 3, 0), vec![("area", left("v", LeftReason::Moved))]);
    let b = Shape::BBox { south: -0.01, west: 179.99, north: 0.01, east: -179.99 };
    open(&mut ix, "box", b, &[], 0);
    assert_eq!(
        ix.apply("w", p(0.0, -180.0), 1, 0),
        vec![("area", entered("w", p(0.0, -180.0), 1)), ("box", entered("w", p(0.0, -180.0), 1))]
    );
}

#[test]
fn bad_shapes_are_refused_without_changes() {
    let mut ix = Index::new(TTL);
    open(&mut ix, "area", small_box(), &[("v", IN, 1, 0)], 0);
    let bad = Shape::Circle { center: p(10.0, 20.0), radius_m: -1.0 };
    assert!(matches!(ix.upsert("area", bad), Err(ShapeError::Invalid { field: "circle.radiusM", .. })));
    let polar = Shape::Circle { center: p(89.99, 0.0), radius_m: 2_000.0 };
    assert!(matches!(ix.upsert("new", polar), Err(ShapeError::TooLarge { .. })));
    assert_eq!(ix.shape(&"area"), Some(small_box()));
    assert_eq!(ix.state(&"area"), Some(AreaState::Live));
    assert_eq!((ix.area_count(), ix.watched_cell_count(), ix.vendor_count()), (1, 1, 1));
}

#[test]
fn cells_of_an_area_cover_its_shape() {
    let mut ix = Index::new(TTL);
    let shape = Shape::Circle { center: p(45.0, 10.0), radius_m: 10_000.0 };
    let up = ix.upsert("area", shape).unwrap();
    assert_eq!(ix.area_cells(&"area"), shape.cells().as_slice());
    assert_eq!(up.watch, shape.cells());
    assert!(ix.area_cells(&"nope").is_empty());
    // 20 km across: 4 rows by 6 columns of 0.05° here
    assert_eq!(up.watch.len(), 24);
}

/// Small areas are filed under fine cells, large ones under their grid
/// cells; both kinds see the same vendor, and a move between fine cells
/// (or a jump between grid cells) reaches every area it concerns.
#[test]
fn small_and_large_areas_both_see_moves_between_fine_and_grid_cells() {
    let mut ix = Index::new(TTL);
    // ≈ 20 × 20 km: thousands of fine cells, so filed by grid cell.
    let large = Shape::BBox { south: 9.95, west: 19.95, north: 10.13, east: 20.13 };
    assert!(large.fine_cells(MAX_FINE_PER_AREA).is_none());
    assert!(small_box().fine_cells(MAX_FINE_PER_AREA).is_some());
    open(&mut ix, "large", large, &[], 0);
    open(&mut ix, "small", small_box(), &[], 0);
    assert_eq!(ix.apply("v", IN, 1, 1), vec![("large", entered("v", IN, 1)), ("small", entered("v", IN, 1))]);
    // Another fine cell, still inside both.
    assert_eq!(ix.apply("v", IN2, 2, 2), vec![("large", moved("v", IN2, 2)), ("small", moved("v", IN2, 2))]);
    // Another grid cell, inside the large area only.
    let next_cell = p(10.07, 20.07);
    assert_eq!(
        ix.apply("v", next_cell, 3, 3),
        vec![("large", moved("v", next_cell, 3)), ("small", left("v", LeftReason::Moved))]
    );
    // Back into the small one from there.
    assert_eq!(ix.apply("v", IN, 4, 4), vec![("large", moved("v", IN, 4)), ("small", entered("v", IN, 4))]);
    // Moving the small area away and removing the large one leave no
    // filing behind.
    ix.upsert("small", Shape::BBox { south: 30.01, west: 20.01, north: 30.02, east: 20.02 }).unwrap();
    ix.remove(&"large");
    ix.remove(&"small");
    assert!(ix.fine.is_empty(), "fine filing left behind");
    assert_eq!(ix.watched_cell_count(), 0);
}
