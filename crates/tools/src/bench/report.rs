//! What the bench tells: a progress line on stderr every second (a person
//! watching must never wonder whether it hangs), a summary line per step,
//! and the JSON pieces of the final result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::publisher::PubStats;
use super::stats::{Stats, ms_at, round3};
use super::sys;

/// Latency percentiles in milliseconds.
pub fn latency_json(h: &Histogram<u64>) -> Value {
    json!({
        "p50": ms_at(h, 0.5), "p90": ms_at(h, 0.9), "p99": ms_at(h, 0.99), "p999": ms_at(h, 0.999),
        "max": round3(h.max() as f64 / 1000.0), "mean": round3(h.mean() / 1000.0), "count": h.len(),
    })
}

/// Why a step failed, if it did.
#[derive(Debug, Default)]
pub struct Verdict {
    reasons: Vec<String>,
}

impl Verdict {
    /// Adds `reason` when `failed`.
    pub fn check(&mut self, failed: bool, reason: impl FnOnce() -> String) {
        if failed {
            self.reasons.push(reason());
        }
    }

    /// Whether nothing failed.
    pub fn ok(&self) -> bool {
        self.reasons.is_empty()
    }

    /// The reasons, joined; `None` when ok.
    pub fn reason(&self) -> Option<String> {
        (!self.ok()).then(|| self.reasons.join(", "))
    }
}

/// The progress line's sources.
pub struct Progress {
    phase: Mutex<String>,
    stats: Arc<Stats>,
    publish: Arc<PubStats>,
    conns: usize,
    pid: Option<u32>,
    started: Instant,
    /// Highest RSS seen (KiB), sampled every 250 ms with `--pid`.
    pub peak_rss: AtomicU64,
}

impl Progress {
    /// Starts the progress line (every second) and, with a pid, the RSS
    /// peak sampler. Both stop with the runtime.
    pub fn start(stats: Arc<Stats>, publish: Arc<PubStats>, conns: usize, pid: Option<u32>) -> Arc<Self> {
        let p = Arc::new(Self {
            phase: Mutex::new("starting".into()),
            stats,
            publish,
            conns,
            pid,
            started: Instant::now(),
            peak_rss: AtomicU64::new(0),
        });
        let ticker = Arc::clone(&p);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            loop {
                every.tick().await;
                eprintln!("{}", ticker.line());
            }
        });
        if pid.is_some() {
            let sampler = Arc::clone(&p);
            tokio::spawn(async move {
                loop {
                    if let Some(kib) = sys::rss_kib(sampler.pid) {
                        sampler.peak_rss.fetch_max(kib, Relaxed);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            });
        }
        p
    }

    /// Names the current phase (shown from the next line on, and now).
    pub fn phase(&self, name: impl Into<String>) {
        *self.phase.lock() = name.into();
        eprintln!("{}", self.line());
    }

    fn line(&self) -> String {
        let st = &self.stats;
        let rss =
            sys::rss_kib(self.pid).map(|k| format!(", server rss {:.1} MiB", k as f64 / 1024.0)).unwrap_or_default();
        format!(
            "[bench {:>6.1}s] {} | conns {}/{} failed {} dropped {} ready {} | published {} (errors {}) | received {}/{} dup {}{rss}",
            self.started.elapsed().as_secs_f64(),
            self.phase.lock(),
            st.connected.load(Relaxed),
            self.conns,
            st.failed.load(Relaxed),
            st.dropped.load(Relaxed),
            st.ready.load(Relaxed),
            self.publish.published.load(Relaxed),
            self.publish.errors.load(Relaxed),
            st.received(),
            self.publish.expected.load(Relaxed),
            st.snapshot().dup,
        )
    }
}

/// A person-readable summary of a finished step.
pub fn step_summary(step: &Value) -> String {
    let lat = &step["lat_ms"];
    let warning = if step["bench_saturated"] == true {
        format!(
            "\n[bench] warning: the bench used {}% CPU in this step: it, not the gateway, set the pace \
             (run it on more cores with --threads, or on another machine)",
            step["bench_cpu_pct"]
        )
    } else {
        String::new()
    };
    format!(
        "[bench] step rate {}/s attempt {}: {} deliveries/s, p50 {} p99 {} p99.9 {} max {} ms, received {}/{} lost {} dup {} → {}",
        step["rate"],
        step["attempt"],
        step["deliveries_per_s"],
        lat["p50"],
        lat["p99"],
        lat["p999"],
        lat["max"],
        step["received"],
        step["expected"],
        step["lost"],
        step["dup"],
        if step["ok"] == true {
            "ok".to_owned()
        } else {
            format!("FAILED ({})", step["fail_reason"].as_str().unwrap_or(""))
        },
    ) + &warning
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::stats::histogram;

    #[test]
    fn percentiles_are_ordered() {
        let mut h = histogram();
        for us in 1..=10_000u64 {
            h.saturating_record(us);
        }
        let j = latency_json(&h);
        let keys = ["p50", "p90", "p99", "p999", "max"];
        let v: Vec<f64> = keys.iter().map(|k| j[*k].as_f64().unwrap_or(f64::NAN)).collect();
        assert!(v.windows(2).all(|w| w[0] <= w[1]), "{j}");
        assert!((v[0] - 5.0).abs() < 0.01 && (v[4] - 10.0).abs() < 0.01, "{j}");
        assert_eq!(latency_json(&histogram())["p99"], 0.0);
    }

    #[test]
    fn verdict_joins_reasons() {
        let mut v = Verdict::default();
        v.check(false, || "no".into());
        assert!(v.ok() && v.reason().is_none());
        v.check(true, || "p99 300 ms > 250".into());
        v.check(true, || "lost 3".into());
        assert_eq!(v.reason().as_deref(), Some("p99 300 ms > 250, lost 3"));
    }
}
