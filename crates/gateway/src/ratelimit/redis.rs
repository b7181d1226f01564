//! The shared limiter: one GCRA state per key in Redis, updated atomically
//! by a Lua script in one round trip, so every instance spends one budget.
//! While Redis is unreachable the in-process limiter holds the line.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
/// The background probe's interval unless told otherwise.
const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// Redis-backed limiter with a local fallback.
pub struct RedisLimiter {
    inner: Arc<Inner>,
    /// Ends the background connect-and-probe task.
    stop: CancellationToken,
    /// That task, awaited by [`RateLimiter::close`].
    tasks: TaskTracker,
}

struct Inner {
    /// The address, credentials removed: for logs and `/health`.
    url: String,
    prefix: String,
    interval_us: u64,
    per_minute: u32,
    probe_interval: Duration,
    /// Set by the probe once connected; taken by [`RateLimiter::close`], so
    /// the connection (and the client's tasks behind it) ends at shutdown.
    conn: parking_lot::RwLock<Option<ConnectionManager>>,
    script: redis::Script,
    fallback: MemoryLimiter,
    healthy: AtomicBool,
    /// Whether the current outage (or a failing start) was logged.
    outage_logged: AtomicBool,
    /// Whether Redis ever answered (the first success logs differently).
    ever_up: AtomicBool,
    /// Earliest time (µs since `started`) to try Redis again after a failure.
    retry_at_us: AtomicU64,
    started: Instant,
    last_error: parking_lot::Mutex<String>,
}

/// `REDIS_URL` is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RedisConfigError {
    /// Not a Redis URL.
    #[error("invalid REDIS_URL {url:?}: {reason}")]
    InvalidUrl {
        /// The value, credentials removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl RedisConfigError {
    /// Whether this is a configuration mistake (exit status 2): always.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::InvalidUrl { .. })
    }
}

impl RedisLimiter {
    /// Starts connecting in the background; checks use the local limiter
    /// until Redis answers. Redis is probed every 2 s.
    pub fn new(url: &str, key_prefix: &str, per_minute: u32) -> Result<Self, RedisConfigError> {
        Self::start(url, key_prefix, per_minute, DEFAULT_PROBE_INTERVAL)
    }

    /// Like [`RedisLimiter::new`], probing Redis (PING) every
    /// `probe_interval` so `/health` is true with no client traffic. The
    /// probe ends when the limiter is dropped.
    pub fn start(
        url: &str,
        key_prefix: &str,
        per_minute: u32,
        probe_interval: Duration,
    ) -> Result<Self, RedisConfigError> {
        let shown = crate::bus::nats::redact(url);
        let client = redis::Client::open(url)
            .map_err(|e| RedisConfigError::InvalidUrl { url: shown.clone(), reason: e.to_string() })?;
        let per_minute = per_minute.max(1);
        let inner = Arc::new(Inner {
            url: shown,
            prefix: key_prefix.to_owned(),
            interval_us: 60_000_000 / u64::from(per_minute),
            per_minute,
            probe_interval,
            conn: parking_lot::RwLock::new(None),
            script: redis::Script::new(GCRA),
            fallback: MemoryLimiter::new(per_minute),
            healthy: AtomicBool::new(false),
            outage_logged: AtomicBool::new(false),
            ever_up: AtomicBool::new(false),
            retry_at_us: AtomicU64::new(0),
            started: Instant::now(),
            last_error: parking_lot::Mutex::new("connecting".into()),
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(probe(Arc::downgrade(&inner), client, stop.clone()));
        tasks.close();
        Ok(Self { inner, stop, tasks })
    }
}

impl Drop for RedisLimiter {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Connects, then PINGs every probe interval: health follows Redis on an
/// idle gateway too, and the connection is re-made after an outage without
/// waiting for a client message.
async fn probe(inner: Weak<Inner>, client: redis::Client, stop: CancellationToken) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(CHECK_TIMEOUT))
        .set_max_delay(Duration::from_secs(2))
        // Fail the attempt fast: this loop retries every probe interval,
        // and says once that Redis is unreachable.
        .set_number_of_retries(1);
    loop {
        let Some(me) = inner.upgrade() else { return };
        let interval = me.probe_interval;
        tokio::select! {
            () = stop.cancelled() => return,
            () = me.probe_once(&client, &config) => {}
        }
        drop(me);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

impl Inner {
    fn now_us(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    async fn probe_once(&self, client: &redis::Client, config: &ConnectionManagerConfig) {
        let known = self.conn.read().clone();
        let mut conn = match known {
            Some(conn) => conn,
            None => match client.get_connection_manager_with_config(config.clone()).await {
                Ok(conn) => {
                    *self.conn.write() = Some(conn.clone());
                    conn
                }
                Err(e) => {
                    self.failed(e.to_string());
                    return;
                }
            },
        };
        let ping = redis::cmd("PING");
        match tokio::time::timeout(CHECK_TIMEOUT * 4, ping.query_async::<String>(&mut conn)).await {
            Ok(Ok(_)) => self.succeeded(),
            Ok(Err(e)) => self.failed(e.to_string()),
            Err(_) => self.failed("PING timed out".into()),
        }
    }

    fn succeeded(&self) {
        if self.healthy.swap(true, Ordering::Relaxed) {
            return;
        }
        self.outage_logged.store(false, Ordering::Relaxed);
        if self.ever_up.swap(true, Ordering::Relaxed) {
            tracing::info!(redis = %self.url, "Redis is back: rate limits shared again");
        } else {
            tracing::info!(redis = %self.url, "rate limits shared through Redis");
        }
    }

    fn failed(&self, why: String) {
        self.healthy.store(false, Ordering::Relaxed);
        if !self.outage_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(redis = %self.url, error = %why, "Redis unreachable: rate limits are per instance until it answers; retrying");
        } else {
            tracing::debug!(redis = %self.url, error = %why, "Redis still unreachable");
        }
        *self.last_error.lock() = why;
        let retry = self.now_us() + u64::try_from(PROBE_EVERY.as_micros()).unwrap_or(1_000_000);
        self.retry_at_us.store(retry, Ordering::Relaxed);
    }

    async fn check(&self, key: &str) -> Decision {
        if !self.healthy.load(Ordering::Relaxed) && self.now_us() < self.retry_at_us.load(Ordering::Relaxed) {
            return self.fallback.check_now(key);
        }
        let Some(mut conn) = self.conn.read().clone() else { return self.fallback.check_now(key) };
        let mut call = self.script.key(format!("{}{key}", self.prefix));
        call.arg(self.interval_us).arg(self.per_minute);
        match tokio::time::timeout(CHECK_TIMEOUT, call.invoke_async::<i64>(&mut conn)).await {
            Ok(Ok(wait_us)) => {
                self.succeeded();
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

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            self.stop.cancel();
            self.tasks.wait().await;
            // Later checks (a straggler past the deadline) use the local
            // limiter.
            self.inner.conn.write().take();
        })
    }

    fn health(&self) -> DependencyStatus {
        if self.inner.healthy.load(Ordering::Relaxed) {
            DependencyStatus::Ok
        } else {
            DependencyStatus::Down(self.inner.last_error.lock().clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_url_that_is_not_one_is_a_config_error_without_the_password() {
        for bad in ["notaurl", "http://u:hunter2@host:6379"] {
            let Err(e) = RedisLimiter::new(bad, "p:", 10) else { panic!("{bad} accepted") };
            let msg = e.to_string();
            assert!(e.is_config() && msg.contains("REDIS_URL") && !msg.contains("hunter2"), "{msg}");
            assert!(std::error::Error::source(&e).is_none(), "said once: {msg}");
        }
    }
}
