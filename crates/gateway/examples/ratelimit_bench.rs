//! Measures the Redis rate-limit check: latency of one check (sequential,
//! p50/p99) and checks/s with many in flight, from one process.
//!
//! `cargo run --release --example ratelimit_bench -- redis://127.0.0.1:6379 20000 64`

use std::sync::Arc;
use std::time::{Duration, Instant};

use venta_gateway::bus::DependencyStatus;
use venta_gateway::ratelimit::RateLimiter;
use venta_gateway::ratelimit::redis::RedisLimiter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args.next().unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(20_000);
    let in_flight: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(64);
    let prefix = format!("venta:bench:{}:", std::process::id());
    let limiter = Arc::new(RedisLimiter::new(&url, &prefix, 1_000_000)?);
    let deadline = Instant::now() + Duration::from_secs(10);
    while limiter.health() != DependencyStatus::Ok {
        anyhow::ensure!(Instant::now() < deadline, "Redis at {url} not reachable");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Sequential: the latency one client message pays.
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        limiter.check(&format!("user:{}", i % 1000)).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)].as_secs_f64() * 1e6;
    // Concurrent: what one instance can push through one Redis.
    let started = Instant::now();
    let tasks: Vec<_> = (0..in_flight)
        .map(|t| {
            let limiter = Arc::clone(&limiter);
            tokio::spawn(async move {
                for i in 0..n / in_flight {
                    limiter.check(&format!("user:{}", (t * 7919 + i) % 1000)).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    let rate = (n / in_flight * in_flight) as f64 / started.elapsed().as_secs_f64();
    println!(
        "{{\"checks\":{n},\"p50_us\":{:.0},\"p99_us\":{:.0},\"p999_us\":{:.0},\"in_flight\":{in_flight},\"checks_per_s\":{rate:.0},\"healthy\":{}}}",
        pct(0.5),
        pct(0.99),
        pct(0.999),
        limiter.health() == DependencyStatus::Ok
    );
    Ok(())
}
