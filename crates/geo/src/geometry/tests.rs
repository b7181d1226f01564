use proptest::prelude::*;

use super::*;
use crate::cell::CELL_DEG;

const M_PER_DEG_LAT: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

fn bbox(south: f64, west: f64, north: f64, east: f64) -> Shape {
    Shape::BBox { south, west, north, east }
}

fn circle(lat: f64, long: f64, radius_m: f64) -> Shape {
    Shape::Circle { center: Point::new(lat, long), radius_m }
}

/// The point `distance_m` from `from` on initial bearing `bearing_deg`.
fn destination(from: Point, bearing_deg: f64, distance_m: f64) -> Point {
    let (lat1, long1) = (from.lat.to_radians(), from.long.to_radians());
    let (theta, delta) = (bearing_deg.to_radians(), distance_m / EARTH_RADIUS_M);
    let lat2 = (lat1.sin() * delta.cos() + lat1.cos() * delta.sin() * theta.cos()).clamp(-1.0, 1.0).asin();
    let long2 = long1 + (theta.sin() * delta.sin() * lat1.cos()).atan2(delta.cos() - lat1.sin() * lat2.sin());
    let long = (long2.to_degrees() + 180.0).rem_euclid(360.0) - 180.0;
    Point::new(lat2.to_degrees(), long)
}

fn box_km(lat: f64, long: f64, km: f64) -> Shape {
    // a km × km box centred on (lat, long), measured on its middle parallel
    let half_lat = km * 500.0 / M_PER_DEG_LAT;
    let half_long = km * 500.0 / (M_PER_DEG_LAT * lat.to_radians().cos());
    bbox(lat - half_lat, long - half_long, lat + half_lat, long + half_long)
}

fn field_of(err: ShapeError) -> &'static str {
    match err {
        ShapeError::Invalid { field, .. } => field,
        ShapeError::TooLarge { message } => panic!("expected Invalid, got TooLarge: {message}"),
    }
}

fn too_large(result: Result<(), ShapeError>) -> String {
    match result {
        Err(ShapeError::TooLarge { message }) => message,
        other => panic!("expected TooLarge, got {other:?}"),
    }
}

#[test]
fn distances() {
    let one_degree = distance_m(Point::new(0.0, 0.0), Point::new(1.0, 0.0));
    assert!((one_degree - 111_195.08).abs() < 0.01, "{one_degree}");
    assert_eq!(distance_m(Point::new(10.0, 20.0), Point::new(10.0, 20.0)), 0.0);
    let half_world = distance_m(Point::new(0.0, 0.0), Point::new(0.0, 180.0));
    assert!((half_world - EARTH_RADIUS_M * std::f64::consts::PI).abs() < 1e-6);
    // the short way across the antimeridian
    let across = distance_m(Point::new(0.0, 179.95), Point::new(0.0, -179.95));
    assert!((across - 0.1 * one_degree).abs() < 0.01, "{across}");
    assert!(distance_m(Point::new(f64::NAN, 0.0), Point::new(0.0, 0.0)).is_nan());
}

#[test]
fn box_contains_edges_included() {
    let b = bbox(10.0, 20.0, 11.0, 21.0);
    for inside in [(10.5, 20.5), (10.0, 20.0), (11.0, 21.0), (10.0, 21.0), (11.0, 20.0), (10.5, 20.0)] {
        assert!(b.contains(Point::new(inside.0, inside.1)), "{inside:?}");
    }
    for outside in [(9.999_999, 20.5), (11.000_001, 20.5), (10.5, 19.999_999), (10.5, 21.000_001), (0.0, 0.0)] {
        assert!(!b.contains(Point::new(outside.0, outside.1)), "{outside:?}");
    }
    assert!(!b.contains(Point::new(f64::NAN, 20.5)));
}

#[test]
fn antimeridian_box() {
    let b = bbox(-1.0, 170.0, 1.0, -170.0);
    for long in [179.0, -179.0, 170.0, -170.0, 180.0, -180.0] {
        assert!(b.contains(Point::new(0.0, long)), "{long}");
    }
    for long in [0.0, 169.9, -169.9] {
        assert!(!b.contains(Point::new(0.0, long)), "{long}");
    }
    assert!(!b.contains(Point::new(2.0, 179.0)));
}

#[test]
fn circle_contains_by_great_circle_distance() {
    let c = circle(48.0, 11.0, 1000.0);
    let north_800 = Point::new(48.0 + 800.0 / M_PER_DEG_LAT, 11.0);
    let north_1300 = Point::new(48.0 + 1300.0 / M_PER_DEG_LAT, 11.0);
    assert!(c.contains(north_800));
    assert!(!c.contains(north_1300));
    let east_800 = destination(Point::new(48.0, 11.0), 90.0, 800.0);
    let east_1300 = destination(Point::new(48.0, 11.0), 90.0, 1300.0);
    assert!(c.contains(east_800));
    assert!(!c.contains(east_1300));
    // a box-shaped test would accept the corner of the bounding square
    assert!(!c.contains(destination(Point::new(48.0, 11.0), 45.0, 1300.0)));
    // across the antimeridian
    let c = circle(0.0, 179.999, 1000.0);
    assert!(c.contains(Point::new(0.0, -179.996)));
    assert!(!c.contains(Point::new(0.0, -179.98)));
}

#[test]
fn every_bad_field_is_named() {
    let cases = [
        (bbox(f64::NAN, 0.0, 1.0, 1.0), "bbox.south"),
        (bbox(-91.0, 0.0, 1.0, 1.0), "bbox.south"),
        (bbox(0.0, f64::INFINITY, 1.0, 1.0), "bbox.west"),
        (bbox(0.0, -180.5, 1.0, 1.0), "bbox.west"),
        (bbox(0.0, 0.0, f64::NEG_INFINITY, 1.0), "bbox.north"),
        (bbox(0.0, 0.0, 90.1, 1.0), "bbox.north"),
        (bbox(0.0, 0.0, 0.1, f64::NAN), "bbox.east"),
        (bbox(0.0, 0.0, 0.1, 181.0), "bbox.east"),
        (bbox(0.2, 0.0, 0.1, 0.1), "bbox.south"),
        (circle(f64::NAN, 0.0, 100.0), "circle.center.lat"),
        (circle(90.5, 0.0, 100.0), "circle.center.lat"),
        (circle(0.0, f64::INFINITY, 100.0), "circle.center.long"),
        (circle(0.0, -181.0, 100.0), "circle.center.long"),
        (circle(0.0, 0.0, 0.0), "circle.radiusM"),
        (circle(0.0, 0.0, -5.0), "circle.radiusM"),
        (circle(0.0, 0.0, f64::NAN), "circle.radiusM"),
        (circle(0.0, 0.0, f64::INFINITY), "circle.radiusM"),
    ];
    for (shape, field) in cases {
        let err = shape.validate(50.0).expect_err("must be refused");
        assert!(err.to_string().starts_with(field), "{err}");
        assert_eq!(field_of(err), field, "{shape:?}");
        assert_eq!(shape.check().map_err(field_of), Err(field), "{shape:?}");
    }
}

#[test]
fn edges_of_the_map_are_valid() {
    for shape in [
        bbox(-90.0, -180.0, -89.99, -179.9),
        bbox(0.0, 179.9, 0.1, 180.0),
        bbox(0.0, 180.0, 0.1, -179.9),
        bbox(1.0, 1.0, 1.0, 1.0),
        circle(0.0, 180.0, 1.0),
        circle(0.0, -180.0, 1.0),
    ] {
        assert_eq!(shape.validate(50.0), Ok(()), "{shape:?}");
    }
}

#[test]
fn size_limit() {
    for lat in [0.0, 45.0, -60.0] {
        assert_eq!(box_km(lat, 10.0, 30.0).validate(50.0), Ok(()), "30x30 at {lat}");
        let message = too_large(box_km(lat, 10.0, 40.0).validate(50.0));
        assert!(message.starts_with("diagonal is 56.") || message.starts_with("diagonal is 57."), "{message}");
    }
    assert_eq!(circle(45.0, 10.0, 24_000.0).validate(50.0), Ok(()));
    let message = too_large(circle(45.0, 10.0, 26_000.0).validate(50.0));
    assert_eq!(message, "diameter is 52.0 km, more than the 50 km allowed");
    // a lenient limit lets it through; a NaN limit lets nothing through
    assert_eq!(circle(45.0, 10.0, 26_000.0).validate(60.0), Ok(()));
    too_large(circle(45.0, 10.0, 1.0).validate(f64::NAN));
}

#[test]
fn antimeridian_box_size_is_the_short_width() {
    // 0.2° wide across 180 at the equator: 22 km, not 40,000
    let across = bbox(-0.05, 179.9, 0.05, -179.9);
    assert!((across.size_m() - 24_861.0).abs() < 50.0, "{}", across.size_m());
    assert_eq!(across.validate(50.0), Ok(()));
    // the same numbers the other way round are (nearly) the whole parallel
    let around = bbox(-0.05, -179.9, 0.05, 179.9);
    assert!(around.size_m() > 39_000_000.0, "{}", around.size_m());
    too_large(around.validate(50.0));
    // a box wider than 180° near a pole: the corner-to-corner great circle
    // would cut across the cap, the parallel does not
    let polar = bbox(80.0, -150.0, 80.1, 150.0);
    assert!(polar.size_m() >= EARTH_RADIUS_M * 80f64.to_radians().cos() * 300f64.to_radians() - 1.0);
}

#[test]
fn polar_areas_are_refused_by_cell_count() {
    // small in kilometres, hundreds of cells wide
    let near_pole = circle(89.9, 0.0, 5_000.0);
    assert!(near_pole.size_m() < 50_000.0);
    assert!(too_large(near_pole.validate(50.0)).contains("grid cells"));
    assert!(near_pole.check().is_err());
    let holds_pole = circle(89.99, 0.0, 2_000.0);
    assert_eq!(holds_pole.cell_count() % usize::from(LONG_CELLS), 0);
    assert!(too_large(holds_pole.check()).contains("grid cells"));
    let polar_box = bbox(89.0, 0.0, 89.15, 20.0);
    assert!(polar_box.size_m() < 50_000.0, "{}", polar_box.size_m());
    assert!(too_large(polar_box.validate(50.0)).contains("grid cells"));
    // the whole world is well formed but far too many cells
    assert!(too_large(bbox(-90.0, -180.0, 90.0, 180.0).check()).contains("grid cells"));
    // at mid latitudes a 50 km circle stays well under the cap
    let city = circle(45.0, 10.0, 25_000.0);
    assert!(city.cell_count() <= 150, "{}", city.cell_count());
}

#[test]
fn small_viewports_need_one_to_four_cells() {
    let inside_one = box_km(45.0125 + 0.0125, 10.0125 + 0.0125, 2.0);
    assert_eq!(inside_one.cells().len(), 1);
    let on_a_corner = box_km(45.0, 10.0, 2.0);
    assert_eq!(on_a_corner.cells().len(), 4);
    assert_eq!(
        on_a_corner.cells(),
        vec![
            Cell::of(Point::new(44.99, 9.99)),
            Cell::of(Point::new(44.99, 10.01)),
            Cell::of(Point::new(45.01, 9.99)),
            Cell::of(Point::new(45.01, 10.01)),
        ]
    );
}

#[test]
fn antimeridian_covers_both_sides() {
    let b = bbox(0.0, 179.96, 0.01, -179.94);
    let longs: Vec<u16> = b.cells().iter().map(|c| c.long_index()).collect();
    assert_eq!(longs, vec![0, 1, LONG_CELLS - 1]);
    for c in [circle(0.0, 179.99, 3_000.0), circle(0.0, -179.99, 3_000.0), circle(0.0, 180.0, 100.0)] {
        let cells = c.cells();
        assert!(cells.iter().any(|cell| cell.long_index() == 0), "{c:?}");
        assert!(cells.iter().any(|cell| cell.long_index() == LONG_CELLS - 1), "{c:?}");
        assert!(cells.iter().all(|cell| cell.long_index() <= 1 || cell.long_index() >= LONG_CELLS - 2), "{c:?}");
        assert!(cells.contains(&Cell::of(Point::new(0.0, 180.0))));
        assert!(cells.contains(&Cell::of(Point::new(0.0, -180.0))));
    }
    // a circle well away from 180 stays on its side
    assert!(circle(0.0, 179.5, 3_000.0).cells().iter().all(|c| c.long_index() > 7000));
}

#[test]
fn cells_are_sorted_unique_and_counted() {
    for shape in [
        box_km(45.0, 10.0, 30.0),
        bbox(0.0, 179.0, 0.5, -179.0),
        circle(-33.9, 151.2, 25_000.0),
        circle(0.0, 180.0, 20_000.0),
        circle(89.99, 0.0, 2_000.0),
    ] {
        let cells = shape.cells();
        assert!(cells.windows(2).all(|w| w[0] < w[1]), "{shape:?}");
        assert_eq!(cells.len(), shape.cell_count(), "{shape:?}");
    }
    // an unchecked inverted box covers nothing instead of panicking
    assert!(bbox(1.0, 0.0, 0.0, 1.0).cells().is_empty());
}

fn assert_covered(shape: &Shape, p: Point) -> Result<(), TestCaseError> {
    if shape.contains(p) {
        let cells = shape.cells();
        prop_assert!(
            cells.binary_search(&Cell::of(p)).is_ok(),
            "{:?} inside {:?} but {:?} not covered",
            p,
            shape,
            Cell::of(p)
        );
    }
    Ok(())
}

fn wrap(long: f64) -> f64 {
    if long > 180.0 { long - 360.0 } else { long }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn box_cover_holds_every_inside_point(
        south in -89.0..89.0f64,
        height in 0.0..1.0f64,
        west in -180.0..=180.0f64,
        width in 0.0..1.5f64,
        t_lat in prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0f64],
        t_long in prop_oneof![Just(0.0), Just(1.0), 0.0..=1.0f64],
    ) {
        let north = (south + height).min(90.0);
        let east = wrap(west + width);
        let shape = bbox(south, west, north, east);
        let p = Point::new((south + (north - south) * t_lat).min(north), wrap(west + width * t_long));
        prop_assert!(shape.contains(p), "{:?} not in {:?}", p, shape);
        assert_covered(&shape, p)?;
        // and the edges exactly
        for p in [Point::new(south, west), Point::new(north, east), Point::new(south, east), Point::new(north, west)] {
            prop_assert!(shape.contains(p));
            assert_covered(&shape, p)?;
        }
    }

    #[test]
    fn circle_cover_holds_every_inside_point(
        lat in -85.0..85.0f64,
        long in -180.0..=180.0f64,
        radius_m in prop_oneof![1.0..100.0f64, 100.0..30_000.0f64],
        bearing in 0.0..360.0f64,
        t in prop_oneof![Just(1.0), Just(1.0 - 1e-12), Just(1.0 + 1e-12), 0.0..=1.0f64],
    ) {
        let shape = circle(lat, long, radius_m);
        let center = Point::new(lat, long);
        assert_covered(&shape, center)?;
        let p = destination(center, bearing, radius_m * t);
        if t <= 0.999 {
            prop_assert!(shape.contains(p), "{:?} not in {:?}", p, shape);
        }
        assert_covered(&shape, p)?;
    }

    #[test]
    fn circle_cover_holds_points_of_its_bounding_square(
        lat in -85.0..85.0f64,
        long in -180.0..=180.0f64,
        radius_m in 100.0..30_000.0f64,
        dx in -1.0..1.0f64,
        dy in -1.0..1.0f64,
    ) {
        let shape = circle(lat, long, radius_m);
        let dlat = radius_m / M_PER_DEG_LAT;
        let dlong = dlat / lat.to_radians().cos();
        let p = Point::new((lat + dy * dlat).clamp(-90.0, 90.0), (long + dx * dlong + 540.0).rem_euclid(360.0) - 180.0);
        assert_covered(&shape, p)?;
    }
}

proptest! {
    /// The cover must reach a circle's extreme points even when they lie just
    /// past a cell edge: the circle is placed so that they do.
    #[test]
    fn circle_cover_reaches_extreme_points_past_a_cell_edge(
        lat in -80.0..80.0f64,
        radius_m in 1.0..30_000.0f64,
        edge in 100u16..7100,
        row_edge in 400u16..3200,
        past_m in prop_oneof![Just(0.01f64), 0.0..1.0f64],
    ) {
        let delta = radius_m / EARTH_RADIUS_M;
        let edge_long = f64::from(edge) * CELL_DEG - 180.0;
        let edge_lat = f64::from(row_edge) * CELL_DEG - 90.0;
        // east: the widest longitude of a cap is asin(sin δ / cos φ), reached
        // at latitude asin(sin φ / cos δ)
        let half_width = (delta.sin() / lat.to_radians().cos()).asin().to_degrees();
        let past_deg = past_m / M_PER_DEG_LAT;
        let center = Point::new(lat, edge_long - half_width + past_deg);
        let east = Point::new((lat.to_radians().sin() / delta.cos()).asin().to_degrees(), center.long + half_width * (1.0 - 1e-9));
        let shape = Shape::Circle { center, radius_m };
        prop_assume!(shape.contains(east));
        assert_covered(&shape, east)?;
        // north: straight up by the angular radius
        let center = Point::new(edge_lat - delta.to_degrees() + past_deg, 10.0);
        let north = Point::new(center.lat + delta.to_degrees() * (1.0 - 1e-9), 10.0);
        let shape = Shape::Circle { center, radius_m };
        prop_assume!(shape.contains(north));
        assert_covered(&shape, north)?;
    }
}
