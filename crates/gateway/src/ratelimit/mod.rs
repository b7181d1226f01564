//! Client message rate limits.
//!
//! The budget is GCRA (generic cell rate algorithm): a burst of `limit`
//! messages at once, then one every `60 s / limit` — smooth, with no
//! fixed-window edge that would allow 2× bursts. One trait, two engines:
//! [`memory::MemoryLimiter`] (this process) and [`redis::RedisLimiter`]
//! (shared by every instance, falling back to memory while Redis is down).

pub mod memory;
pub mod redis;

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;

use crate::bus::DependencyStatus;

/// Counts client messages per key (the user, or the connection when auth
/// is off) against the `WS_RATE_LIMIT` budget.
pub trait RateLimiter: Send + Sync + 'static {
    /// Spends one unit of `key`'s budget if it allows.
    fn check<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Decision>;

    /// Health of the engine (`Disabled` for the in-process one).
    fn health(&self) -> DependencyStatus;

    /// Ends the engine's background work (a probe), at shutdown; checks
    /// still answer afterwards, from whatever the engine has left.
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// The answer to "may this message pass?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Within budget.
    Allow,
    /// Over budget; try again after this long (in (0, 60 s]).
    Deny {
        /// Time until one more message fits.
        retry_after: Duration,
    },
}

/// One key's GCRA state, in process memory.
#[derive(Debug, Clone)]
pub struct Gcra {
    interval: Duration,
    burst: Duration,
    /// Theoretical arrival time of the next message.
    tat: Option<Instant>,
}

impl Gcra {
    /// A budget of `per_minute` messages per minute, all usable as a burst.
    pub fn per_minute(per_minute: u32) -> Self {
        let interval = Duration::from_secs(60) / per_minute.max(1);
        Self { interval, burst: interval * per_minute.max(1), tat: None }
    }

    /// The longest a key can take, unchecked, to get its whole burst back:
    /// past it, [`Gcra::is_idle`] holds whatever the state was.
    pub fn refill_time(&self) -> Duration {
        self.burst
    }

    /// Whether the whole burst is available again at `now` (the state can
    /// be forgotten).
    pub fn is_idle(&self, now: Instant) -> bool {
        self.tat.is_none_or(|t| t <= now)
    }

    /// Spends one unit if the budget allows it.
    pub fn check(&mut self, now: Instant) -> Decision {
        let tat = self.tat.map_or(now, |t| t.max(now));
        let new_tat = tat + self.interval;
        let ahead = new_tat - now;
        if ahead > self.burst {
            let retry_after = (ahead - self.burst).max(Duration::from_millis(1));
            return Decision::Deny { retry_after };
        }
        self.tat = Some(new_tat);
        Decision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_even_refill() {
        let t0 = Instant::now();
        let mut g = Gcra::per_minute(60);
        for _ in 0..60 {
            assert_eq!(g.check(t0), Decision::Allow);
        }
        let Decision::Deny { retry_after } = g.check(t0) else { panic!("61st must be denied") };
        assert!(retry_after > Duration::ZERO && retry_after <= Duration::from_secs(1), "{retry_after:?}");
        assert_eq!(g.check(t0 + Duration::from_secs(1)), Decision::Allow);
        assert!(matches!(g.check(t0 + Duration::from_secs(1)), Decision::Deny { .. }));
        // A full minute of quiet restores the whole burst, not more.
        let later = t0 + Duration::from_secs(120);
        for _ in 0..60 {
            assert_eq!(g.check(later), Decision::Allow);
        }
        assert!(matches!(g.check(later), Decision::Deny { .. }));
    }
}
