//! How fast one instance's [`AreaIndex`] turns positions into area events,
//! as its areas grow: the CPU cost per location update the gateway pays
//! under its areas' lock (encoding and queueing the frames come on top).
//!
//! `cargo run --release -p venta-geo --example index_rate -- [areas=5000] [vendors=10000] [updates=200000]`
//!
//! A 30 × 30 km city around Madrid, 2 × 2 km viewports at random places,
//! vendors on a random walk (≈ 20 m a step); prints updates/s, events per
//! update and ns per update, for 1/10/100 % of the given areas.

use std::time::Instant;

use venta_geo::{AreaIndex, Completion, Point, Shape};

/// A small deterministic generator (xorshift64*): no dependency for a
/// benchmark.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
}

const LAT0: f64 = 40.28;
const LONG0: f64 = -3.88;
/// ≈ 30 km in latitude and in longitude at 40.4°.
const DLAT: f64 = 0.27;
const DLONG: f64 = 0.355;

fn run(areas: usize, vendors: usize, updates: usize) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut index: AreaIndex<usize, usize> = AreaIndex::new(300_000);
    for a in 0..areas {
        let (lat, long) = (LAT0 + rng.next() * (DLAT - 0.018), LONG0 + rng.next() * (DLONG - 0.024));
        let shape = Shape::BBox { south: lat, west: long, north: lat + 0.018, east: long + 0.024 };
        let Ok(up) = index.upsert(a, shape) else { continue };
        index.load(&up.load, std::iter::empty(), 0);
        let _: Option<Completion<usize>> = index.complete(&a, 500);
    }
    let mut pos: Vec<(f64, f64)> =
        (0..vendors).map(|_| (LAT0 + rng.next() * DLAT, LONG0 + rng.next() * DLONG)).collect();
    let (mut events, start) = (0usize, Instant::now());
    for i in 0..updates {
        let v = i % vendors;
        let p = &mut pos[v];
        p.0 = (p.0 + (rng.next() - 0.5) * 0.0004).clamp(LAT0, LAT0 + DLAT);
        p.1 = (p.1 + (rng.next() - 0.5) * 0.0005).clamp(LONG0, LONG0 + DLONG);
        let ts = i64::try_from(i).unwrap_or(i64::MAX) + 1;
        events += index.apply(v, Point::new(p.0, p.1), ts, 1).len();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "areas {areas:>6}  cells {:>3}  updates/s {:>10.0}  ns/update {:>7.0}  events/update {:>6.2}",
        index.watched_cell_count(),
        updates as f64 / secs,
        secs * 1e9 / updates as f64,
        events as f64 / updates as f64
    );
}

fn main() {
    let arg = |i: usize, d: usize| std::env::args().nth(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let (areas, vendors, updates) = (arg(1, 5000), arg(2, 10_000), arg(3, 200_000));
    for share in [100, 10, 1] {
        run((areas * share / 100).max(1), vendors, updates);
    }
}
