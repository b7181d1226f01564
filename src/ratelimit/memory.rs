//! The in-process limiter: exact for one instance, and the fallback while a
//! shared Redis is unreachable.

use std::collections::HashMap;
use std::time::Instant;

use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use super::{Decision, Gcra, RateLimiter};
use crate::bus::DependencyStatus;

/// Keys tracked before idle ones (budget fully refilled) are swept.
const SWEEP_AT: usize = 4096;

/// GCRA per key in a map.
#[derive(Debug)]
pub struct MemoryLimiter {
    per_minute: u32,
    keys: Mutex<HashMap<String, Gcra>>,
}

impl MemoryLimiter {
    /// `per_minute` messages per minute per key.
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute, keys: Mutex::new(HashMap::new()) }
    }

    /// The synchronous check (no I/O).
    pub fn check_now(&self, key: &str) -> Decision {
        let now = Instant::now();
        let mut keys = self.keys.lock();
        if keys.len() >= SWEEP_AT && !keys.contains_key(key) {
            keys.retain(|_, g| !g.is_idle(now));
        }
        match keys.get_mut(key) {
            Some(g) => g.check(now),
            None => {
                let mut g = Gcra::per_minute(self.per_minute);
                let d = g.check(now);
                keys.insert(key.to_owned(), g);
                d
            }
        }
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
