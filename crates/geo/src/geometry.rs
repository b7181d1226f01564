//! Points, distances and the two area shapes clients subscribe to.

use crate::cell::{Cell, LONG_CELLS, lat_index, long_index};

/// Mean Earth radius (IUGG), in metres: the sphere all distances are taken on.
pub const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Most cells one area may cover.
///
/// An instance subscribes one subject per covered cell, so this bounds the
/// subscriptions a single client request can cause. Ordinary areas are far
/// below it (a 50 km area at mid latitudes is about 150 cells); what hits it
/// are areas near the poles, where cells shrink to nothing east-west.
pub const MAX_CELLS_PER_AREA: usize = 1024;

/// A position on the map, in degrees.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Latitude, [-90, 90].
    pub lat: f64,
    /// Longitude, [-180, 180].
    pub long: f64,
}

impl Point {
    /// A point; not checked (see [`Point::is_valid`]).
    pub const fn new(lat: f64, long: f64) -> Self {
        Self { lat, long }
    }

    /// Finite and on the map: the only points the index stores.
    pub fn is_valid(self) -> bool {
        (-90.0..=90.0).contains(&self.lat) && (-180.0..=180.0).contains(&self.long)
    }
}

/// Great-circle distance in metres (haversine on [`EARTH_RADIUS_M`]).
///
/// Haversine rather than the spherical law of cosines because it stays
/// accurate for the short distances areas are about (metres, not
/// continents). NaN if a coordinate is NaN.
pub fn distance_m(a: Point, b: Point) -> f64 {
    let (lat_a, lat_b) = (a.lat.to_radians(), b.lat.to_radians());
    let half_dlat = (lat_b - lat_a) / 2.0;
    let half_dlong = (b.long - a.long).to_radians() / 2.0;
    let h = half_dlat.sin().powi(2) + lat_a.cos() * lat_b.cos() * half_dlong.sin().powi(2);
    // rounding can push h a hair above 1 for antipodal points; `clamp`, not
    // `min`, so that NaN stays NaN
    2.0 * EARTH_RADIUS_M * h.sqrt().clamp(0.0, 1.0).asin()
}

/// An area a client subscribes to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Shape {
    /// A latitude/longitude box, edges included. `west > east` means the box
    /// crosses the antimeridian (its width is `east - west + 360`).
    BBox {
        /// Southern edge (latitude).
        south: f64,
        /// Western edge (longitude).
        west: f64,
        /// Northern edge (latitude).
        north: f64,
        /// Eastern edge (longitude).
        east: f64,
    },
    /// Every point within `radius_m` metres (great-circle) of `center`.
    Circle {
        /// Centre.
        center: Point,
        /// Radius in metres, > 0.
        radius_m: f64,
    },
}

/// Why a shape is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// A coordinate or the radius is out of range; `field` is the client's
    /// JSON path (`bbox.south`, `circle.center.lat`, `circle.radiusM`).
    #[error("{field}: {message}")]
    Invalid {
        /// JSON path of the offending field.
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A well-formed shape beyond the size limit, or covering more than
    /// [`MAX_CELLS_PER_AREA`] cells.
    #[error("area too large: {message}")]
    TooLarge {
        /// The measured size or cell count and the limit.
        message: String,
    },
}

impl Shape {
    /// The client-facing check: well formed ([`Shape::check`]) and at most
    /// `max_km` across (box diagonal, circle diameter; see [`Shape::size_m`]).
    ///
    /// Reports the first problem only, in field order, then size, then cells.
    pub fn validate(&self, max_km: f64) -> Result<(), ShapeError> {
        self.check_fields()?;
        let size_m = self.size_m();
        // false for a NaN `max_km`: a broken limit refuses, it does not accept
        let fits = size_m <= max_km * 1000.0;
        if !fits {
            let what = match self {
                Self::BBox { .. } => "diagonal",
                Self::Circle { .. } => "diameter",
            };
            return Err(ShapeError::TooLarge {
                message: format!("{what} is {:.1} km, more than the {max_km} km allowed", size_m / 1000.0),
            });
        }
        self.check_cells()
    }

    /// Well formed and within [`MAX_CELLS_PER_AREA`] cells, whatever the size
    /// limit: what [`AreaIndex::upsert`](crate::AreaIndex::upsert) insists on
    /// so that its memory and subscriptions per area stay bounded.
    pub fn check(&self) -> Result<(), ShapeError> {
        self.check_fields()?;
        self.check_cells()
    }

    fn check_fields(&self) -> Result<(), ShapeError> {
        match *self {
            Self::BBox { south, west, north, east } => {
                check_coordinate("bbox.south", south, 90.0)?;
                check_coordinate("bbox.west", west, 180.0)?;
                check_coordinate("bbox.north", north, 90.0)?;
                check_coordinate("bbox.east", east, 180.0)?;
                if south > north {
                    return Err(invalid("bbox.south", "must not be greater than north"));
                }
            }
            Self::Circle { center, radius_m } => {
                check_coordinate("circle.center.lat", center.lat, 90.0)?;
                check_coordinate("circle.center.long", center.long, 180.0)?;
                if !radius_m.is_finite() {
                    return Err(invalid("circle.radiusM", "must be a finite number"));
                }
                if radius_m <= 0.0 {
                    return Err(invalid("circle.radiusM", "must be greater than 0"));
                }
            }
        }
        Ok(())
    }

    fn check_cells(&self) -> Result<(), ShapeError> {
        let cells = self.cell_count();
        if cells > MAX_CELLS_PER_AREA {
            return Err(ShapeError::TooLarge {
                message: format!("covers {cells} grid cells, more than {MAX_CELLS_PER_AREA} (too close to a pole?)"),
            });
        }
        Ok(())
    }

    /// Size in metres: a circle's diameter; a box's diagonal, i.e. the
    /// great-circle distance from the south-west to the north-east corner with
    /// the width taken as given (`east - west`, plus 360 across the
    /// antimeridian).
    ///
    /// The great circle between the corners of a box wider than 180° runs the
    /// other way round (and near a pole it cuts across the cap), so it would
    /// understate such a box; the size is therefore never less than the box's
    /// widest parallel (the one nearest the equator). For the boxes people
    /// actually draw the diagonal is the larger of the two.
    pub fn size_m(&self) -> f64 {
        match *self {
            Self::BBox { south, west, north, east } => {
                let width = box_width(west, east);
                // haversine only uses the longitude difference, so west + width
                // may lie beyond 180
                let diagonal = distance_m(Point::new(south, west), Point::new(north, west + width));
                let nearest_equator = if south <= 0.0 && north >= 0.0 { 0.0 } else { south.abs().min(north.abs()) };
                let parallel = EARTH_RADIUS_M * nearest_equator.to_radians().cos() * width.to_radians();
                diagonal.max(parallel)
            }
            Self::Circle { radius_m, .. } => 2.0 * radius_m,
        }
    }

    /// Whether `p` is inside, edges included; exact geometry, not cells.
    pub fn contains(&self, p: Point) -> bool {
        match *self {
            Self::BBox { south, west, north, east } => {
                let long_inside =
                    if west <= east { west <= p.long && p.long <= east } else { p.long >= west || p.long <= east };
                south <= p.lat && p.lat <= north && long_inside
            }
            Self::Circle { center, radius_m } => distance_m(center, p) <= radius_m,
        }
    }

    /// Every grid cell the shape touches, sorted, without duplicates.
    ///
    /// May include a few cells that only touch the shape's bounding box (a
    /// circle covers its box), never misses the cell of a point inside. Meant
    /// for shapes that passed [`Shape::check`]: an unchecked one can cover
    /// the whole grid (26 million cells).
    pub fn cells(&self) -> Vec<Cell> {
        let cover = self.cover();
        let mut cells = Vec::with_capacity(cover.count());
        for lat in cover.rows.0..=cover.rows.1 {
            for &(west, east) in &cover.cols {
                cells.extend((west..=east).filter_map(|long| Cell::new(lat, long)));
            }
        }
        cells
    }

    /// The fine cells (see [`FINE_DEG`]) the shape touches, or `None` when
    /// there would be more than `max` of them: the index then files the
    /// area under its grid cells instead. Like [`Shape::cells`], never
    /// misses the fine cell of a point inside.
    pub(crate) fn fine_cells(&self, max: usize) -> Option<Vec<Fine>> {
        let (south, north, cols) = self.bounds()?;
        let rows = (fine_lat(south), fine_lat(north));
        let cols: Vec<(u32, u32)> = cols.into_iter().map(|(w, e)| (fine_long(w), fine_long(e))).collect();
        let count = (rows.1 - rows.0 + 1) as usize
            * cols.iter().map(|&(w, e)| (e.saturating_sub(w) + 1) as usize).sum::<usize>();
        if count > max {
            return None;
        }
        let mut out = Vec::with_capacity(count);
        for lat in rows.0..=rows.1 {
            for &(w, e) in &cols {
                out.extend((w..=e).map(|long| Fine { lat, long }));
            }
        }
        out.sort_unstable();
        out.dedup();
        Some(out)
    }

    /// The latitude band and longitude ranges (degrees, west ≤ east each)
    /// of the shape's bounding box; `None` when it spans every longitude.
    fn bounds(&self) -> Option<Bounds> {
        match *self {
            Self::BBox { south, west, north, east } => {
                let cols = if west <= east { vec![(west, east)] } else { vec![(west, 180.0), (-180.0, east)] };
                Some((south, north, cols))
            }
            Self::Circle { center, radius_m } => {
                let delta = (radius_m / EARTH_RADIUS_M * (1.0 + 1e-12) + 1e-9).min(std::f64::consts::PI);
                let lat = center.lat.to_radians();
                let (south, north) = ((lat - delta).to_degrees(), (lat + delta).to_degrees());
                if south <= -90.0 || north >= 90.0 {
                    return None;
                }
                let ratio = delta.sin() / lat.cos();
                if ratio.is_nan() || ratio >= 1.0 {
                    return None;
                }
                let half = ratio.asin().to_degrees();
                let (west, east) = (center.long - half, center.long + half);
                let cols = if west < -180.0 {
                    vec![(west + 360.0, 180.0), (-180.0, east)]
                } else if east > 180.0 {
                    vec![(west, 180.0), (-180.0, east - 360.0)]
                } else {
                    vec![(west, east)]
                };
                Some((south, north, cols))
            }
        }
    }

    /// `self.cells().len()` without building the list.
    pub fn cell_count(&self) -> usize {
        self.cover().count()
    }

    fn cover(&self) -> Cover {
        match *self {
            Self::BBox { south, west, north, east } => {
                let cols = if west <= east {
                    vec![(long_index(west), long_index(east))]
                } else {
                    vec![(long_index(west), LONG_CELLS - 1), (0, long_index(east))]
                };
                Cover::new((lat_index(south), lat_index(north)), cols)
            }
            Self::Circle { center, radius_m } => circle_cover(center, radius_m),
        }
    }
}

/// South, north, and the longitude ranges (west ≤ east each) of a box.
type Bounds = (f64, f64, Vec<(f64, f64)>);

/// Side of a fine cell, degrees: a tenth of a grid cell (≈ 560 m north-south).
/// Only the index uses it, to find the few areas that may contain a point
/// among the hundreds that watch its grid cell.
pub const FINE_DEG: f64 = 0.005;
const FINE_ROWS: u32 = 36_000;
const FINE_COLS: u32 = 72_000;

/// A fine cell (see [`FINE_DEG`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Fine {
    lat: u32,
    long: u32,
}

impl Fine {
    /// The fine cell of a point.
    pub(crate) fn of(p: Point) -> Self {
        Self { lat: fine_lat(p.lat), long: fine_long(p.long) }
    }
}

fn fine_lat(lat: f64) -> u32 {
    // `as` saturates and maps NaN to 0.
    (((lat + 90.0) / FINE_DEG).floor() as u32).min(FINE_ROWS - 1)
}

fn fine_long(long: f64) -> u32 {
    let long = if (-180.0..=180.0).contains(&long) { long } else { (long + 180.0).rem_euclid(360.0) - 180.0 };
    (((long + 180.0) / FINE_DEG).floor() as u32).min(FINE_COLS - 1)
}

fn check_coordinate(field: &'static str, value: f64, max: f64) -> Result<(), ShapeError> {
    if !value.is_finite() {
        return Err(invalid(field, "must be a finite number"));
    }
    if !(-max..=max).contains(&value) {
        return Err(invalid(field, format!("must be within [-{max}, {max}]")));
    }
    Ok(())
}

fn invalid(field: &'static str, message: impl Into<String>) -> ShapeError {
    ShapeError::Invalid { field, message: message.into() }
}

fn box_width(west: f64, east: f64) -> f64 {
    if west <= east { east - west } else { east - west + 360.0 }
}

/// Rows × column ranges of the grid, all inclusive.
struct Cover {
    rows: (u16, u16),
    /// Sorted, disjoint, not touching.
    cols: Vec<(u16, u16)>,
}

impl Cover {
    fn new(rows: (u16, u16), mut cols: Vec<(u16, u16)>) -> Self {
        cols.retain(|&(west, east)| west <= east);
        cols.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(cols.len());
        for (west, east) in cols {
            match merged.last_mut() {
                Some(last) if u32::from(west) <= u32::from(last.1) + 1 => last.1 = last.1.max(east),
                _ => merged.push((west, east)),
            }
        }
        Self { rows, cols: merged }
    }

    fn count(&self) -> usize {
        let rows = if self.rows.0 <= self.rows.1 { usize::from(self.rows.1 - self.rows.0) + 1 } else { 0 };
        let cols: usize = self.cols.iter().map(|&(west, east)| usize::from(east - west) + 1).sum();
        rows * cols
    }
}

/// The cover of a circle's latitude/longitude bounding box.
///
/// The angular radius gets a margin (about 6 mm) so that a point `contains`
/// accepts by a rounding error is still covered; a slightly larger cover is
/// harmless, a missing cell would hide a vendor.
fn circle_cover(center: Point, radius_m: f64) -> Cover {
    let all_cols = vec![(0, LONG_CELLS - 1)];
    let delta = (radius_m / EARTH_RADIUS_M * (1.0 + 1e-12) + 1e-9).min(std::f64::consts::PI);
    let lat = center.lat.to_radians();
    let south = (lat - delta).to_degrees();
    let north = (lat + delta).to_degrees();
    let rows = (lat_index(south.max(-90.0)), lat_index(north.min(90.0)));
    if south <= -90.0 || north >= 90.0 {
        // the circle holds a pole: every longitude
        return Cover::new(rows, all_cols);
    }
    // The widest longitude extent of a spherical cap: asin(sin δ / cos φ).
    let ratio = delta.sin() / lat.cos();
    if ratio.is_nan() || ratio >= 1.0 {
        return Cover::new(rows, all_cols);
    }
    let half_width = ratio.asin().to_degrees();
    let (west, east) = (center.long - half_width, center.long + half_width);
    let cols = if west < -180.0 {
        vec![(long_index(west + 360.0), LONG_CELLS - 1), (0, long_index(east))]
    } else if east > 180.0 {
        vec![(long_index(west), LONG_CELLS - 1), (0, long_index(east - 360.0))]
    } else {
        vec![(long_index(west), long_index(east))]
    };
    Cover::new(rows, cols)
}

#[cfg(test)]
mod tests;
