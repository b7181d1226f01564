//! What every part of a running gateway shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use std::collections::HashMap;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::Audit;
use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::config::Config;
use crate::geo::Areas;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::UserId;
use crate::ratelimit::RateLimiter;
use crate::ratelimit::memory::MemoryLimiter;
use crate::session::{Deps, SessionContext, SessionLimits};
use crate::transport::wt::cert::CertStore;

/// Shared state of one gateway instance.
pub struct Shared {
    /// Settings.
    pub config: Config,
    /// This instance's id.
    pub instance_id: String,
    /// Subscriptions and fan-out.
    pub hub: Arc<Hub>,
    /// Updates between publishers and instances.
    pub bus: Arc<dyn Bus>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The subscription audit trail.
    pub audit: Arc<Audit>,
    /// Verifies client tokens.
    pub auth: Authenticator,
    /// Client message budgets.
    pub limiter: Arc<dyn RateLimiter>,
    /// Connect attempts per IP (when `WS_CONNECT_RATE_LIMIT` > 0).
    pub connect_limiter: Option<MemoryLimiter>,
    per_user: Mutex<HashMap<UserId, usize>>,
    /// What every client session shares.
    pub sessions: Arc<SessionContext>,
    /// The engines behind the sessions' dependency calls.
    pub deps: Deps,
    /// This instance's area subscriptions.
    pub areas: Arc<Areas>,
    /// Cancelled when shutdown begins; every connection watches it.
    pub shutdown: CancellationToken,
    /// Client connection tasks, awaited on shutdown.
    pub tracker: TaskTracker,
    /// The gateway's own background tasks (accept loops, certificate
    /// reload, gRPC health): each ends on `shutdown`, and shutdown waits
    /// for them, so no task outlives [`crate::server::Gateway::run`].
    pub tasks: TaskTracker,
    /// The WebTransport certificate hashes served at `/wt/cert-hash`.
    pub wt_certs: Arc<CertStore>,
    started: Instant,
    ready: AtomicBool,
    open: AtomicUsize,
}

impl Shared {
    /// Assembles the shared state; the instance id is the audit trail's.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Config,
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
        auth: Authenticator,
        limiter: Arc<dyn RateLimiter>,
        audit: Arc<Audit>,
        areas: Arc<Areas>,
    ) -> Self {
        let instance_id = audit.instance_id().to_string();
        let connect_limiter = (config.connect_rate_limit > 0).then(|| MemoryLimiter::new(config.connect_rate_limit));
        let sessions = Arc::new(SessionContext::new(
            Arc::clone(&hub),
            Arc::clone(&bus),
            Arc::clone(&metrics),
            Arc::clone(&audit),
            auth.clone(),
            Arc::clone(&areas),
            SessionLimits::from_config(&config),
        ));
        let deps = Deps { limiter: Arc::clone(&limiter), bus: Arc::clone(&bus), areas: Arc::clone(&areas) };
        Self {
            sessions,
            deps,
            areas,
            config,
            instance_id,
            hub,
            bus,
            metrics,
            audit,
            auth,
            limiter,
            connect_limiter,
            per_user: Mutex::new(HashMap::new()),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            tasks: TaskTracker::new(),
            wt_certs: Arc::default(),
            started: Instant::now(),
            ready: AtomicBool::new(false),
            open: AtomicUsize::new(0),
        }
    }

    /// Seconds since start.
    pub fn uptime_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Whether the instance takes traffic (`/health/ready`).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.shutdown.is_cancelled()
    }

    /// Marks the instance ready (after its listeners are up).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Takes a connection slot if fewer than `WS_MAX_CONNECTIONS` are open.
    pub fn try_admit(self: &Arc<Self>) -> Option<Admission> {
        let max = self.config.max_connections;
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1))
            .ok()
            .map(|_| Admission { shared: Arc::clone(self) })
    }

    /// Whether a browser page from `origin` may connect: always when
    /// `WS_ALLOWED_ORIGINS` is unset or the request has no Origin (not a
    /// browser). With cookies or other ambient credentials a page on any
    /// site could otherwise open a connection as its visitor.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        match (&self.config.allowed_origins, origin) {
            (None, _) | (_, None) => true,
            (Some(list), Some(origin)) => {
                let origin = origin.trim_end_matches('/');
                list.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(origin))
            }
        }
    }

    /// Open client connections.
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// Takes one of the user's `WS_MAX_CONNECTIONS_PER_USER` slots.
    pub fn try_admit_user(self: &Arc<Self>, user: &UserId) -> Option<UserAdmission> {
        let mut per_user = self.per_user.lock();
        let n = per_user.entry(user.clone()).or_insert(0);
        if *n >= self.config.max_connections_per_user {
            return None;
        }
        *n += 1;
        Some(UserAdmission { shared: Arc::clone(self), user: user.clone() })
    }
}

/// A held per-user connection slot; released on drop.
pub struct UserAdmission {
    shared: Arc<Shared>,
    user: UserId,
}

impl Drop for UserAdmission {
    fn drop(&mut self) {
        let mut per_user = self.shared.per_user.lock();
        if let Some(n) = per_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(&self.user);
            }
        }
    }
}

/// A held connection slot; released on drop.
pub struct Admission {
    shared: Arc<Shared>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.shared.open.fetch_sub(1, Ordering::AcqRel);
    }
}
