//! The shared limiter: one GCRA state per key in Redis, updated atomically
//! by a Lua script in one round trip, so every instance spends one budget.
//! While Redis is unreachable the in-process limiter holds the line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::memory::MemoryLimiter;
use super::{Decision, RateLimiter};
use crate::bus::DependencyStatus;

/// GCRA with the server's clock (one clock for every instance), in µs.
/// Returns 0 when allowed, else the µs until one more message fits.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2]) * interval
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local ahead = new_tat - now
if ahead > burst then return math.ceil(ahead - burst) end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ahead / 1000) + 1000)
return 0
";

/// How long a check may wait for Redis before the local limiter decides.
const CHECK_TIMEOUT: Duration = Duration::from_millis(250);
/// After a failure, how long checks go straight to the local limiter before
/// Redis is tried again (so an outage does not add a timeout per message).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Redis-backed limiter with a local fallback.
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    prefix: String,
    interval_us: u64,
    per_minute: u32,
    conn: OnceCell<ConnectionManager>,
    script: redis::Script,
    fallback: MemoryLimiter,
    healthy: AtomicBool,
    /// Earliest time (µs since `started`) to try Redis again after a failure.
    retry_at_us: AtomicU64,
    started: Instant,
    last_error: parking_lot::Mutex<String>,
}

/// The Redis URL is malformed.
#[derive(Debug, thiserror::Error)]
#[error("REDIS_URL: {0}")]
pub struct RedisConfigError(String);

impl RedisLimiter {
    /// Starts connecting in the background; checks use the local limiter
    /// until Redis answers.
    pub fn new(url: &str, key_prefix: &str, per_minute: u32) -> Result<Self, RedisConfigError> {
        let client = redis::Client::open(url).map_err(|e| RedisConfigError(e.to_string()))?;
        let per_minute = per_minute.max(1);
        let inner = Arc::new(Inner {
            url: url.to_owned(),
            prefix: key_prefix.to_owned(),
            interval_us: 60_000_000 / u64::from(per_minute),
            per_minute,
            conn: OnceCell::new(),
            script: redis::Script::new(GCRA),
            fallback: MemoryLimiter::new(per_minute),
            healthy: AtomicBool::new(false),
            retry_at_us: AtomicU64::new(0),
            started: Instant::now(),
            last_error: parking_lot::Mutex::new("connecting".into()),
        });
        tokio::spawn(connect(Arc::downgrade(&inner), client));
        Ok(Self { inner })
    }
}

async fn connect(inner: std::sync::Weak<Inner>, client: redis::Client) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(CHECK_TIMEOUT))
        .set_max_delay(Duration::from_secs(2));
    loop {
        let Some(me) = inner.upgrade() else { return };
        match client.get_connection_manager_with_config(config.clone()).await {
            Ok(conn) => {
                let _ = me.conn.set(conn);
                me.healthy.store(true, Ordering::Relaxed);
                tracing::info!("rate limits shared through Redis");
                return;
            }
            Err(e) => {
                *me.last_error.lock() = e.to_string();
                tracing::debug!(error = %e, url = %me.url, "Redis not reachable yet; local rate limiter in use");
            }
        }
        drop(me);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Inner {
    fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn failed(&self, why: String) {
        if self.healthy.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %why, "Redis unreachable: rate limits are per instance until it returns");
        }
        *self.last_error.lock() = why;
        let retry = self.now_us() + u64::try_from(PROBE_EVERY.as_micros()).unwrap_or(1_000_000);
        self.retry_at_us.store(retry, Ordering::Relaxed);
    }

    async fn check(&self, key: &str) -> Decision {
        let Some(conn) = self.conn.get() else { return self.fallback.check_now(key) };
        if !self.healthy.load(Ordering::Relaxed) && self.now_us() < self.retry_at_us.load(Ordering::Relaxed) {
            return self.fallback.check_now(key);
        }
        let mut conn = conn.clone();
        let mut call = self.script.key(format!("{}{key}", self.prefix));
        call.arg(self.interval_us).arg(self.per_minute);
        match tokio::time::timeout(CHECK_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(wait_us)) => {
                if !self.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("Redis is back: rate limits shared again");
                }
                match u64::try_from(wait_us) {
                    Ok(0) | Err(_) => Decision::Allow,
                    Ok(us) => Decision::Deny { retry_after: Duration::from_micros(us) },
                }
            }
            Ok(Err(e)) => {
                self.failed(e.to_string());
                self.fallback.check_now(key)
            }
            Err(_) => {
                self.failed("timed out".into());
                self.fallback.check_now(key)
            }
        }
    }
}

impl RateLimiter for RedisLimiter {
    fn check<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Decision> {
        Box::pin(self.inner.check(key))
    }

    fn health(&self) -> DependencyStatus {
        if self.inner.healthy.load(Ordering::Relaxed) {
            DependencyStatus::Ok
        } else {
            DependencyStatus::Down(self.inner.last_error.lock().clone())
        }
    }
}
