//! Subscribe/unsubscribe latency while one vendor fans out to many
//! subscribers, and the fan-out's deliveries/s, driving the [`Hub`] directly
//! in one process (no sockets: this isolates the hub's locking).
//!
//! `cargo run --release --example hub_contention -- [subscribers] [rate] [seconds] [topic]`
//!
//! - `subscribers`: subscribers of the vendor's topic (2000);
//! - `rate`: the vendor's updates per second, `0` for flat out (500);
//! - `seconds`: how long to measure (2);
//! - `topic`: where the churning thread subscribes and unsubscribes:
//!   `other` (a topic nobody publishes to), `same` (the fanned-out topic) or
//!   `none` (no churn: the fan-out's throughput alone) (other).
//!
//! The publisher thread also drains every outbox after a few updates, as the
//! writers would, so queues never fill. Prints one JSON line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use venta_gateway::hub::{Batch, Hub, Outbox, OutboxLimits};
use venta_gateway::protocol::{Channel, Codec, Location, LocationUpdate, Topic, Update, VendorId};

/// Updates between two drains of every outbox (below `max_messages`, so
/// nothing is conflated).
const DRAIN_EVERY: u64 = 16;
/// Subscribe+unsubscribe pairs per second on the churning thread.
const CHURN_PER_S: u64 = 2_000;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let subscribers: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2_000);
    let rate: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(500);
    let seconds: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2.0);
    let churn_on = args.next().unwrap_or_else(|| "other".into());
    let vendor = VendorId::parse("bench-vendor").map_err(|e| anyhow::anyhow!("{e}"))?;
    let other = VendorId::parse("bench-other").map_err(|e| anyhow::anyhow!("{e}"))?;
    let topic = Topic::new(Channel::Location, vendor.clone());
    let churn_topic = match churn_on.as_str() {
        "same" => Some(topic.clone()),
        "other" => Some(Topic::new(Channel::Location, other)),
        "none" => None,
        s => anyhow::bail!("topic must be same, other or none, not {s}"),
    };
    let limits = OutboxLimits { max_messages: 64, max_bytes: 1 << 20 };
    let hub = Arc::new(Hub::new());
    let outboxes: Vec<Arc<Outbox>> = (0..subscribers).map(|_| Arc::new(Outbox::new(Codec::Json, limits))).collect();
    for (id, ob) in outboxes.iter().enumerate() {
        hub.subscribe(&topic, id as u64, ob);
    }
    let update = Update::Location(LocationUpdate {
        vendor_id: vendor,
        location: Location { lat: 52.5, long: 13.4 },
        timestamp: "2024-01-01T00:00:00Z".into(),
    });
    let stop = Arc::new(AtomicBool::new(false));

    let publisher = {
        let (hub, stop) = (Arc::clone(&hub), Arc::clone(&stop));
        std::thread::spawn(move || {
            let started = Instant::now();
            let (mut sent, mut delivered) = (0u64, 0u64);
            let mut batch = Batch::new();
            while !stop.load(Ordering::Relaxed) {
                if rate > 0 {
                    let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let f = hub.publish(&update, Instant::now());
                delivered += (f.queued + f.conflated) as u64;
                sent += 1;
                if sent % DRAIN_EVERY == 0 {
                    for ob in &outboxes {
                        ob.take(&mut batch);
                        batch.clear();
                    }
                }
            }
            (sent, delivered, started.elapsed())
        })
    };

    let churner = churn_topic.map(|churn_topic| {
        let (hub, stop) = (Arc::clone(&hub), Arc::clone(&stop));
        std::thread::spawn(move || {
            let ob = Arc::new(Outbox::new(Codec::Json, limits));
            let id = u64::MAX;
            let mut lat = Vec::new();
            let started = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let due = started + Duration::from_secs_f64(n as f64 / CHURN_PER_S as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                let t = Instant::now();
                hub.subscribe(&churn_topic, id, &ob);
                hub.unsubscribe(&churn_topic, id);
                lat.push(t.elapsed());
                n += 1;
                let mut b = Batch::new();
                ob.take(&mut b);
            }
            lat
        })
    });

    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    let (sent, delivered, elapsed) = publisher.join().map_err(|_| anyhow::anyhow!("publisher panicked"))?;
    let mut lat = match churner {
        Some(c) => c.join().map_err(|_| anyhow::anyhow!("churner panicked"))?,
        None => Vec::new(),
    };
    lat.sort();
    let pct = |p: f64| {
        if lat.is_empty() {
            return 0.0;
        }
        lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6
    };
    println!(
        "{{\"subscribers\":{subscribers},\"rate\":{rate},\"churn\":\"{churn_on}\",\"updates_per_s\":{:.0},\"deliveries_per_s\":{:.0},\"pairs\":{},\"pair_p50_us\":{:.2},\"pair_p99_us\":{:.2},\"pair_max_us\":{:.1}}}",
        sent as f64 / elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.last().map_or(0.0, |d| d.as_secs_f64() * 1e6),
    );
    Ok(())
}
