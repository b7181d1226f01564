//! A reconnect storm against the in-process limiter: `keys` distinct keys
//! (auth off: one key per connection), each checked once, as the connect
//! limiter and the per-connection message limiter see them. Prints the time
//! per new-key check and the slowest single check.
//!
//! `cargo run --release --example limiter_storm -- [keys] [per_minute]`

use std::time::Instant;

use venta_gateway::ratelimit::memory::MemoryLimiter;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let keys: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10_000);
    let per_minute: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(60);
    let names: Vec<String> = (0..keys).map(|i| format!("conn:{i}")).collect();
    let limiter = MemoryLimiter::new(per_minute);
    let mut slowest = 0f64;
    let started = Instant::now();
    for k in &names {
        let t = Instant::now();
        std::hint::black_box(limiter.check_now(k));
        slowest = slowest.max(t.elapsed().as_secs_f64());
    }
    let total = started.elapsed().as_secs_f64();
    println!(
        "{{\"keys\":{keys},\"total_ms\":{:.2},\"ns_per_check\":{:.0},\"slowest_us\":{:.1}}}",
        total * 1e3,
        total * 1e9 / keys as f64,
        slowest * 1e6
    );
    Ok(())
}
