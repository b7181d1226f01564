//! The in-process limiter: exact for one instance, and the fallback while a
//! shared Redis is unreachable.
//!
//! Keys live in two generations instead of one map swept by a scan: each
//! check costs O(1) however many keys a reconnect storm brings (one per
//! connection while auth is off), and a key nobody checked for a whole
//! window (its budget fully refilled, so forgetting it changes no answer)
//! leaves memory at the next rotation.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use super::{Decision, Gcra, RateLimiter};
use crate::bus::DependencyStatus;

/// Keys checked in the current window, and those of the window before.
#[derive(Debug)]
struct Generations {
    current: HashMap<String, Gcra>,
    previous: HashMap<String, Gcra>,
    /// When `current` began.
    since: Instant,
}

impl Generations {
    /// Starts a new window if `current` is a window old, and hands back the
    /// keys that are now certainly idle, to be freed outside the lock.
    ///
    /// A window ends at the first check after it is over, so every key in
    /// `current` was last checked before `since + window`, and every key in
    /// `previous` before `since`.
    fn rotate(&mut self, now: Instant, window: Duration) -> Option<[HashMap<String, Gcra>; 2]> {
        let age = now.saturating_duration_since(self.since);
        if age < window {
            return None;
        }
        self.since = now;
        let previous = std::mem::take(&mut self.previous);
        let current = std::mem::take(&mut self.current);
        if age < window * 2 {
            // `current`'s keys may still be refilling: they stay, one window.
            self.previous = current;
            Some([previous, HashMap::new()])
        } else {
            // Quiet for two windows: everything is idle.
            Some([previous, current])
        }
    }
}

/// GCRA per key, in two generations of maps.
#[derive(Debug)]
pub struct MemoryLimiter {
    per_minute: u32,
    /// How long an unchecked key takes to refill its whole burst: after
    /// that its state equals a fresh one, so it may be forgotten.
    window: Duration,
    keys: Mutex<Generations>,
}

impl MemoryLimiter {
    /// `per_minute` messages per minute per key.
    pub fn new(per_minute: u32) -> Self {
        let window = Gcra::per_minute(per_minute).refill_time().max(Duration::from_millis(1));
        let keys = Generations { current: HashMap::new(), previous: HashMap::new(), since: Instant::now() };
        Self { per_minute, window, keys: Mutex::new(keys) }
    }

    /// The synchronous check (no I/O).
    pub fn check_now(&self, key: &str) -> Decision {
        self.check_at(key, Instant::now())
    }

    /// The check as of `now` (not earlier than any previous check's), so
    /// tests and benches can drive the clock.
    pub fn check_at(&self, key: &str, now: Instant) -> Decision {
        let mut keys = self.keys.lock();
        let expired = keys.rotate(now, self.window);
        let decision = match keys.current.get_mut(key) {
            Some(g) => g.check(now),
            None => {
                // Still refilling from the window before: keep its state
                // (and its key's allocation).
                let (name, mut g) = keys
                    .previous
                    .remove_entry(key)
                    .unwrap_or_else(|| (key.to_owned(), Gcra::per_minute(self.per_minute)));
                let d = g.check(now);
                keys.current.insert(name, g);
                d
            }
        };
        drop(keys);
        // Freeing a storm's worth of keys must not stall other checks.
        drop(expired);
        decision
    }

    /// Keys held in memory (for tests and diagnostics).
    pub fn tracked_keys(&self) -> usize {
        let keys = self.keys.lock();
        keys.current.len() + keys.previous.len()
    }
}

impl RateLimiter for MemoryLimiter {
    fn check<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(std::future::ready(self.check_now(key)))
    }

    fn health(&self) -> DependencyStatus {
        DependencyStatus::Disabled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    #[test]
    fn idle_keys_leave_memory_and_the_map_shrinks_back() {
        let limiter = MemoryLimiter::new(60);
        let t0 = Instant::now();
        for i in 0..10_000 {
            assert_eq!(limiter.check_at(&format!("conn:{i}"), t0), Decision::Allow);
        }
        assert_eq!(limiter.tracked_keys(), 10_000);
        // One window on, the storm's keys are kept (they could still be
        // refilling); one more, and they are gone.
        assert_eq!(limiter.check_at("late", t0 + MIN + Duration::from_secs(1)), Decision::Allow);
        assert_eq!(limiter.tracked_keys(), 10_001);
        assert_eq!(limiter.check_at("later", t0 + 2 * MIN + Duration::from_secs(2)), Decision::Allow);
        assert_eq!(limiter.tracked_keys(), 2, "only the keys of the last two windows");
        // After two quiet windows nothing old is kept at all.
        assert_eq!(limiter.check_at("alone", t0 + 5 * MIN), Decision::Allow);
        assert_eq!(limiter.tracked_keys(), 1);
    }

    #[test]
    fn a_key_still_refilling_keeps_its_state_across_windows() {
        // 2 a minute: a burst of 2, then one every 30 s.
        let limiter = MemoryLimiter::new(2);
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(59);
        assert_eq!(limiter.check_at("k", late), Decision::Allow);
        assert_eq!(limiter.check_at("k", late), Decision::Allow);
        assert!(matches!(limiter.check_at("k", late), Decision::Deny { .. }));
        // The window rolls over here: "k" moves to the old generation but is
        // not forgotten (a fresh key would be allowed).
        let next = t0 + Duration::from_secs(61);
        assert!(matches!(limiter.check_at("other", next), Decision::Allow));
        let Decision::Deny { retry_after } = limiter.check_at("k", next) else { panic!("k must stay limited") };
        assert!(retry_after > Duration::ZERO && retry_after <= MIN, "{retry_after:?}");
        // Refilled evenly: one more 30 s after the burst was spent.
        assert_eq!(limiter.check_at("k", late + Duration::from_secs(30)), Decision::Allow);
        assert!(matches!(limiter.check_at("k", late + Duration::from_secs(30)), Decision::Deny { .. }));
    }

    #[test]
    fn a_storm_of_new_keys_costs_constant_time_per_check() {
        // The old sweep scanned the whole map for each new key past 4,096:
        // 40,000 new keys meant ~8·10⁸ entry visits (about 14 s in a debug
        // build). Bounded here by generous wall time, not a tight figure.
        let limiter = MemoryLimiter::new(60);
        let t0 = Instant::now();
        let started = Instant::now();
        for i in 0..40_000 {
            limiter.check_at(&format!("conn:{i}"), t0);
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "40,000 new keys took {took:?}");
    }
}
