//! The bus carries updates from publishers to every gateway instance.
//!
//! One trait, two engines: [`local::LocalBus`] (in process, the embedded
//! default) and NATS (a cluster). Publishers call [`Bus::publish`]; whatever
//! the bus receives is handed to [`deliver`], which fans it out via the hub.

pub mod last;
pub mod local;
pub mod nats;

use std::sync::Arc;
use std::time::Instant;

use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::protocol::{Topic, Update};

/// A bus operation that could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    /// The bus is unreachable; try again later.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// State of a dependency, as `/health` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DependencyStatus {
    /// Configured and working.
    Ok,
    /// Configured and not working, with why.
    Down(String),
    /// Not configured (embedded mode).
    Disabled,
}

/// Sizes of a bus's internal state (see [`Bus::stats`]): on an idle bus
/// whose clients all left, everything but the bounded last values is 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Topics with interest held (subscribed, or lingering).
    pub interests: usize,
    /// Released interests waiting for their linger to end.
    pub lingering: usize,
    /// Topics with a last value held in process.
    pub last_values: usize,
    /// Estimated bytes of those last values.
    pub last_value_bytes: usize,
}

/// The transport of updates between publishers and gateway instances.
pub trait Bus: Send + Sync + 'static {
    /// Sends an update to every instance (this one included).
    fn publish(&self, update: Update) -> BoxFuture<'_, Result<(), BusError>>;

    /// Declares interest in a topic; resolves once updates published from
    /// now on will arrive, which is what a `subscribed` ack promises.
    /// Calls are reference-counted: one [`Bus::unwatch`] per `watch`.
    fn watch(&self, topic: &Topic) -> BoxFuture<'_, Result<(), BusError>>;

    /// Drops one unit of interest in a topic.
    fn unwatch(&self, topic: &Topic);

    /// The last update published on a topic, if known: sent to a new
    /// subscriber first, marked as a snapshot.
    fn last_value(&self, topic: &Topic) -> BoxFuture<'_, Option<Update>>;

    /// Health of the bus's engine.
    fn health(&self) -> DependencyStatus;

    /// Whether the engine is up (not [`DependencyStatus::Down`]), as a value
    /// that changes when it goes up or down: followers (gRPC health) wait
    /// on it instead of polling [`Bus::health`]. The default is an engine
    /// with nothing to be down for: always up, never changing.
    fn up_changes(&self) -> watch::Receiver<bool> {
        watch::channel(true).1
    }

    /// Further named checks for `/health` (e.g. `jetstream`).
    fn extra_checks(&self) -> Vec<(&'static str, DependencyStatus)> {
        Vec::new()
    }

    /// Sizes of the bus's internal state: what a leak would grow.
    fn stats(&self) -> BusStats {
        BusStats::default()
    }

    /// Flushes what is buffered and stops; called once on shutdown.
    fn drain(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Where updates from any bus end: fan-out to this instance's subscribers.
#[derive(Debug, Clone)]
pub struct Deliver {
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
}

impl Deliver {
    /// Delivery into `hub`, counted in `metrics`.
    pub fn new(hub: Arc<Hub>, metrics: Arc<Metrics>) -> Self {
        Self { hub, metrics }
    }

    /// The metrics deliveries are counted in.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Fans an update out to this instance's subscribers.
    pub fn deliver(&self, update: &Update, received_at: Instant) {
        let fanout = self.hub.publish(update, received_at);
        self.metrics.busiest.record(update.vendor());
        if fanout.conflated > 0 {
            self.metrics.conflated.inc_by(fanout.conflated as u64);
        }
        if fanout.overflowed > 0 {
            self.metrics.slow_consumers_closed.inc_by(fanout.overflowed as u64);
        }
    }
}

/// `LAST_VALUE_MAX_BYTES` and `NATS_LAST_VALUE_MAX_BYTES`: a store that
/// cannot hold one largest update (64 KiB) is a mistake, not a setting.
pub fn parse_store_bytes(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|e| format!("{e}"))?;
    if v < 65_536 {
        return Err("must be at least 65536 (bytes)".into());
    }
    Ok(v)
}
