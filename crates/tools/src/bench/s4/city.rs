//! The city of the area scenario: vendors on a random walk, clients' boxes
//! and pans, and the truth they are checked against.
//!
//! Positions and box edges are whole multiples of 1e-5° (about 1 m) held as
//! integers: the generator decides "inside" on integers, and the gateway
//! compares the `f64`s of the same decimals, which order the same way (a
//! multiple of 1e-5 below 180 is exact to far better than its spacing), so
//! a vendor on an edge is on it for both sides, never a rounding apart.

/// Madrid, Puerta del Sol: the city's centre.
pub const CENTRE: (f64, f64) = (40.4169, -3.7035);
/// Units per degree.
pub const UNITS: f64 = 1e5;
/// Metres per degree of latitude (mean Earth radius).
const M_PER_DEG_LAT: f64 = 111_195.0;

/// A position in 1e-5° units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub lat: i32,
    pub long: i32,
}

impl Pos {
    /// Degrees, as published.
    pub fn degrees(self) -> (f64, f64) {
        (f64::from(self.lat) / UNITS, f64::from(self.long) / UNITS)
    }
}

/// A box in 1e-5° units, edges inside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub south: i32,
    pub west: i32,
    pub north: i32,
    pub east: i32,
}

impl Rect {
    /// Whether `p` is inside, edges included (the protocol's rule).
    pub fn contains(&self, p: Pos) -> bool {
        (self.south..=self.north).contains(&p.lat) && (self.west..=self.east).contains(&p.long)
    }

    /// The `bbox` of a `subscribe_area`, in degrees.
    pub fn bbox_json(&self) -> serde_json::Value {
        let d = |u: i32| f64::from(u) / UNITS;
        serde_json::json!({"south": d(self.south), "west": d(self.west), "north": d(self.north), "east": d(self.east)})
    }
}

/// SplitMix64: small, seeded, good enough for a walk (no dependency).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9E37_79B9_7F4A_7C15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi] (inclusive; `lo` when `hi < lo`).
    pub fn range(&mut self, lo: i32, hi: i32) -> i32 {
        if hi <= lo {
            return lo;
        }
        let span = u64::try_from(i64::from(hi) - i64::from(lo) + 1).unwrap_or(1);
        lo + i32::try_from(self.next_u64() % span).unwrap_or(0)
    }

    /// Uniform index below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }
}

/// The map of the run: the city's bounds and the sizes in units.
#[derive(Debug, Clone, Copy)]
pub struct City {
    pub bounds: Rect,
    /// Half of a box's height and width.
    half_area: (i32, i32),
    /// A pan's length, north-south and east-west.
    pan: (i32, i32),
    /// Largest step of a vendor per update.
    step: (i32, i32),
}

fn units(deg: f64) -> i32 {
    (deg * UNITS).round() as i32
}

impl City {
    /// A square city of `city_km` around [`CENTRE`]; boxes of `area_km`,
    /// pans of `pan_km`, steps of at most `step_m` per axis.
    pub fn new(city_km: f64, area_km: f64, pan_km: f64, step_m: f64) -> Self {
        let m_per_deg_long = M_PER_DEG_LAT * CENTRE.0.to_radians().cos();
        let lat = |m: f64| units(m / M_PER_DEG_LAT);
        let long = |m: f64| units(m / m_per_deg_long);
        let (c_lat, c_long) = (units(CENTRE.0), units(CENTRE.1));
        let half = city_km * 500.0;
        Self {
            bounds: Rect {
                south: c_lat - lat(half),
                west: c_long - long(half),
                north: c_lat + lat(half),
                east: c_long + long(half),
            },
            half_area: (lat(area_km * 500.0).max(1), long(area_km * 500.0).max(1)),
            pan: (lat(pan_km * 1000.0), long(pan_km * 1000.0)),
            step: (lat(step_m), long(step_m)),
        }
    }

    /// A random position in the city.
    pub fn random_pos(&self, rng: &mut Rng) -> Pos {
        let b = &self.bounds;
        Pos { lat: rng.range(b.south, b.north), long: rng.range(b.west, b.east) }
    }

    /// One step of the walk from `p`, kept inside the city.
    pub fn step(&self, p: Pos, rng: &mut Rng) -> Pos {
        let b = &self.bounds;
        Pos {
            lat: (p.lat + rng.range(-self.step.0, self.step.0)).clamp(b.south, b.north),
            long: (p.long + rng.range(-self.step.1, self.step.1)).clamp(b.west, b.east),
        }
    }

    /// A box of the configured size centred on a random place, inside the city.
    pub fn random_box(&self, rng: &mut Rng) -> Rect {
        let (h, w) = self.half_area;
        let b = &self.bounds;
        let c = Pos { lat: rng.range(b.south + h, b.north - h), long: rng.range(b.west + w, b.east - w) };
        self.box_at(c)
    }

    fn box_at(&self, c: Pos) -> Rect {
        let (h, w) = self.half_area;
        Rect { south: c.lat - h, west: c.long - w, north: c.lat + h, east: c.long + w }
    }

    /// `r` moved by a pan's length in a random direction, kept inside the
    /// city (a pan into a wall slides along it).
    pub fn pan(&self, r: Rect, rng: &mut Rng) -> Rect {
        let angle = rng.unit() * std::f64::consts::TAU;
        let (h, w) = self.half_area;
        let b = &self.bounds;
        let c_lat = (r.south + r.north) / 2 + (f64::from(self.pan.0) * angle.sin()).round() as i32;
        let c_long = (r.west + r.east) / 2 + (f64::from(self.pan.1) * angle.cos()).round() as i32;
        let c = Pos {
            lat: c_lat.clamp(b.south + h, (b.north - h).max(b.south + h)),
            long: c_long.clamp(b.west + w, (b.east - w).max(b.west + w)),
        };
        self.box_at(c)
    }

    /// A random point exactly on the perimeter of `r` (edges are inside:
    /// this makes sure they are tested, corners included).
    pub fn onto_edge(&self, r: Rect, rng: &mut Rng) -> Pos {
        let lat = rng.range(r.south, r.north);
        let long = rng.range(r.west, r.east);
        match rng.below(4) {
            0 => Pos { lat: r.south, long },
            1 => Pos { lat: r.north, long },
            2 => Pos { lat, long: r.west },
            _ => Pos { lat, long: r.east },
        }
    }

    /// Whether `p` is on the perimeter of `r`.
    pub fn on_edge(r: &Rect, p: Pos) -> bool {
        r.contains(p) && (p.lat == r.south || p.lat == r.north || p.long == r.west || p.long == r.east)
    }
}

/// Vendors (by index) whose `positions` are inside `r`, sorted.
pub fn inside(r: &Rect, positions: &[Option<Pos>]) -> Vec<u32> {
    positions
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_some_and(|p| r.contains(p)))
        .filter_map(|(i, _)| u32::try_from(i).ok())
        .collect()
}

/// How a client's view differs from the truth: vendors it believes inside
/// that are not, and vendors inside it does not know of.
pub fn mismatch(believed: &[u32], truth: &[u32]) -> (usize, usize) {
    // Both sorted: one merge.
    let (mut i, mut j, mut extra, mut missing) = (0, 0, 0, 0);
    while i < believed.len() || j < truth.len() {
        match (believed.get(i), truth.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                extra += 1;
                i += 1;
            }
            (Some(_), None) => {
                extra += 1;
                i += 1;
            }
            _ => {
                missing += 1;
                j += 1;
            }
        }
    }
    (extra, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_are_inside_and_the_corner_outside_is_not() {
        let r = Rect { south: 10, west: 20, north: 30, east: 40 };
        for p in [(10, 20), (30, 40), (10, 40), (30, 20), (20, 30)] {
            assert!(r.contains(Pos { lat: p.0, long: p.1 }), "{p:?}");
        }
        for p in [(9, 20), (31, 40), (20, 19), (20, 41)] {
            assert!(!r.contains(Pos { lat: p.0, long: p.1 }), "{p:?}");
        }
    }

    #[test]
    fn the_city_is_30_km_and_boxes_2_km_and_stay_inside() {
        let c = City::new(30.0, 2.0, 0.5, 50.0);
        let b = c.bounds;
        // 30 km of latitude is 0.2698°; of longitude at 40.4° about 0.354°.
        assert!((f64::from(b.north - b.south) / UNITS - 0.2698).abs() < 0.001, "{b:?}");
        assert!((f64::from(b.east - b.west) / UNITS - 0.354).abs() < 0.002, "{b:?}");
        let mut rng = Rng::new(1);
        let mut r = c.random_box(&mut rng);
        assert!((f64::from(r.north - r.south) / UNITS - 0.01799).abs() < 0.0001, "{r:?}");
        for _ in 0..10_000 {
            let next = c.pan(r, &mut rng);
            assert!(next.south >= b.south && next.north <= b.north && next.west >= b.west && next.east <= b.east);
            assert_eq!((next.north - next.south, next.east - next.west), (r.north - r.south, r.east - r.west));
            r = next;
        }
        let mut p = c.random_pos(&mut rng);
        for _ in 0..10_000 {
            let q = c.step(p, &mut rng);
            assert!(b.contains(q) && (q.lat - p.lat).abs() <= 45 && (q.long - p.long).abs() <= 60, "{p:?} {q:?}");
            p = q;
        }
    }

    #[test]
    fn degrees_survive_json_exactly() {
        let p = Pos { lat: 4_041_690, long: -370_350 };
        let (lat, long) = p.degrees();
        let back: f64 = serde_json::to_string(&lat).ok().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
        assert_eq!(back, lat);
        assert_eq!(format!("{long}").parse::<f64>().ok(), Some(long));
        assert_eq!((lat, long), (40.4169, -3.7035));
    }

    #[test]
    fn onto_edge_is_on_the_edge() {
        let c = City::new(30.0, 2.0, 0.5, 50.0);
        let mut rng = Rng::new(7);
        let r = c.random_box(&mut rng);
        for _ in 0..1000 {
            let p = c.onto_edge(r, &mut rng);
            assert!(City::on_edge(&r, p) && c.bounds.contains(p), "{p:?} {r:?}");
        }
        assert!(!City::on_edge(&r, Pos { lat: r.south + 1, long: r.west + 1 }));
    }

    #[test]
    fn truth_and_mismatch() {
        let r = Rect { south: 0, west: 0, north: 10, east: 10 };
        let pos = [Some(Pos { lat: 0, long: 10 }), None, Some(Pos { lat: 11, long: 5 }), Some(Pos { lat: 5, long: 5 })];
        assert_eq!(inside(&r, &pos), [0, 3]);
        assert_eq!(mismatch(&[0, 3], &[0, 3]), (0, 0));
        assert_eq!(mismatch(&[0, 2], &[0, 3]), (1, 1));
        assert_eq!(mismatch(&[], &[0, 3]), (0, 2));
        assert_eq!(mismatch(&[1, 2, 9], &[]), (3, 0));
    }
}
