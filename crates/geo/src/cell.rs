//! The fixed grid the map is cut into: one NATS subject per cell.
//!
//! Every instance and every publisher must agree on the grid, so it is a
//! constant, not configuration.

use std::fmt;

use crate::geometry::Point;

/// Side of a cell, in degrees of latitude and of longitude.
///
/// 0.05° is about 5.6 km north-south and 3.9 km east-west at 45°. A 2 km
/// viewport then needs 1 to 4 cells (4 only when it straddles a corner), and a
/// 50 km area at mid latitudes about 150 at most (a circle of 50 km diameter
/// is 10 rows by 14 columns at 45°). Smaller cells would multiply the
/// subscriptions per area; larger ones would make each instance receive more
/// updates for vendors nobody near it watches, because an instance gets every
/// update of a cell it watches.
pub const CELL_DEG: f64 = 0.05;

/// Number of cell rows, from the south pole up (180° / [`CELL_DEG`]).
pub const LAT_CELLS: u16 = 3600;

/// Number of cell columns, from longitude -180 eastwards (360° / [`CELL_DEG`]).
pub const LONG_CELLS: u16 = 7200;

/// One cell of the grid: a row (latitude index) and a column (longitude index).
///
/// Ordered by row, then column, so sorted lists of cells are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cell {
    lat: u16,
    long: u16,
}

impl Cell {
    /// The cell at a row and column; `None` outside the grid.
    pub fn new(lat_index: u16, long_index: u16) -> Option<Self> {
        (lat_index < LAT_CELLS && long_index < LONG_CELLS).then_some(Self { lat: lat_index, long: long_index })
    }

    /// The cell a point falls in.
    ///
    /// Latitude 90 and longitude 180 belong to the last row and column (a cell
    /// is closed on its south and west edges only, and the grid must end
    /// somewhere). A longitude outside [-180, 180] is wrapped around; a
    /// non-finite coordinate lands in row or column 0 (such points are refused
    /// before they get here, this only keeps the function total).
    pub fn of(p: Point) -> Self {
        Self { lat: lat_index(p.lat), long: long_index(p.long) }
    }

    /// Row, counted from the south pole.
    pub fn lat_index(self) -> u16 {
        self.lat
    }

    /// Column, counted eastwards from longitude -180.
    pub fn long_index(self) -> u16 {
        self.long
    }

    /// The cell's part of a NATS subject: `"<row>_<column>"`, digits and one
    /// underscore, so it is a single subject token on every server.
    pub fn token(&self) -> String {
        self.to_string()
    }

    /// The inverse of [`Cell::token`]; only the canonical spelling is accepted
    /// (no sign, no leading zeros), so one cell has exactly one subject.
    pub fn parse_token(token: &str) -> Option<Self> {
        let (lat, long) = token.split_once('_')?;
        Self::new(parse_index(lat)?, parse_index(long)?)
    }
}

impl fmt::Display for Cell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.lat, self.long)
    }
}

fn parse_index(s: &str) -> Option<u16> {
    let canonical = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    if canonical { s.parse().ok() } else { None }
}

/// Row of a latitude. Monotone in `lat`, which is what makes a cover computed
/// from a shape's bounds include the cell of every point inside.
pub(crate) fn lat_index(lat: f64) -> u16 {
    index((lat + 90.0) / CELL_DEG, LAT_CELLS)
}

/// Column of a longitude; monotone on [-180, 180].
pub(crate) fn long_index(long: f64) -> u16 {
    let long = if (-180.0..=180.0).contains(&long) { long } else { (long + 180.0).rem_euclid(360.0) - 180.0 };
    index((long + 180.0) / CELL_DEG, LONG_CELLS)
}

fn index(scaled: f64, cells: u16) -> u16 {
    // `as` saturates and maps NaN to 0; the clamp puts the closing edge (lat
    // 90, long 180) into the last cell.
    (scaled.floor() as u16).min(cells - 1)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn of_places_points_and_edges() {
        assert_eq!(Cell::of(Point::new(-90.0, -180.0)), Cell::new(0, 0).unwrap());
        assert_eq!(Cell::of(Point::new(90.0, 180.0)), Cell::new(LAT_CELLS - 1, LONG_CELLS - 1).unwrap());
        assert_eq!(Cell::of(Point::new(0.0, 0.0)), Cell::new(1800, 3600).unwrap());
        assert_eq!(Cell::of(Point::new(-0.01, -0.01)), Cell::new(1799, 3599).unwrap());
        // Berlin-ish: (52.52 + 90) / 0.05 = 2850.4, (13.405 + 180) / 0.05 = 3868.1
        assert_eq!(Cell::of(Point::new(52.52, 13.405)), Cell::new(2850, 3868).unwrap());
        // wraps instead of clamping out-of-range longitudes
        assert_eq!(Cell::of(Point::new(0.0, 190.0)), Cell::of(Point::new(0.0, -170.0)));
        assert_eq!(Cell::of(Point::new(f64::NAN, f64::INFINITY)), Cell::new(0, 0).unwrap());
    }

    #[test]
    fn tokens_are_subject_safe_and_canonical() {
        let cell = Cell::new(2616, 4290).unwrap();
        assert_eq!(cell.token(), "2616_4290");
        assert_eq!(Cell::parse_token("2616_4290"), Some(cell));
        assert_eq!(Cell::parse_token("0_0"), Cell::new(0, 0));
        for bad in ["", "_", "1_", "_1", "01_2", "1_02", "+1_2", "1_-2", "1_2_3", "3600_0", "0_7200", "1 _2", "a_b"] {
            assert_eq!(Cell::parse_token(bad), None, "{bad:?}");
        }
        assert_eq!(Cell::new(3600, 0), None);
        assert_eq!(Cell::new(0, 7200), None);
    }

    proptest! {
        #[test]
        fn token_round_trip(lat in 0..LAT_CELLS, long in 0..LONG_CELLS) {
            let cell = Cell::new(lat, long).unwrap();
            let token = cell.token();
            prop_assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            prop_assert_eq!(Cell::parse_token(&token), Some(cell));
        }

        #[test]
        fn of_is_inside_the_grid(lat in -90.0..=90.0f64, long in -180.0..=180.0f64) {
            let cell = Cell::of(Point::new(lat, long));
            prop_assert!(cell.lat_index() < LAT_CELLS && cell.long_index() < LONG_CELLS);
            // the cell's south-west corner is at or below the point
            prop_assert!(f64::from(cell.lat_index()) * CELL_DEG - 90.0 <= lat + 1e-9);
            prop_assert!(f64::from(cell.long_index()) * CELL_DEG - 180.0 <= long + 1e-9);
        }
    }
}
