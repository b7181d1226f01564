//! The in-process bus: publishing is delivering. Used when no `NATS_URL` is
//! set, so a single gateway is useful on its own.

use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::last::LastValues;
use super::{Bus, BusError, BusStats, Deliver, DependencyStatus};
use crate::geo::local::LocalGeo;
use crate::protocol::{Topic, Update};

/// A bus that only reaches this process.
#[derive(Debug)]
pub struct LocalBus {
    deliver: Deliver,
    last: LastValues,
    /// Indexes every location for area subscriptions.
    geo: Option<Arc<LocalGeo>>,
}

impl LocalBus {
    /// A bus delivering straight into this instance's hub, keeping at most
    /// `last_value_max_bytes` of last values.
    pub fn new(deliver: Deliver, last_value_max_bytes: usize) -> Self {
        let metrics = deliver.metrics();
        // Always connected: a 0 here would read as an outage on dashboards.
        metrics.bus_connected.set(1);
        let last = LastValues::new(last_value_max_bytes, metrics.last_value_evictions.clone());
        Self { deliver, last, geo: None }
    }

    /// Also index every location published for area subscriptions.
    pub fn with_geo(mut self, geo: Arc<LocalGeo>) -> Self {
        self.geo = Some(geo);
        self
    }
}

impl Bus for LocalBus {
    fn publish(&self, update: Update) -> BoxFuture<'_, Result<(), BusError>> {
        let received = Instant::now();
        self.last.insert(&update);
        self.deliver.deliver(&update, received);
        if let (Some(geo), Update::Location(loc)) = (&self.geo, &update) {
            geo.index(loc, received);
        }
        futures_util::future::ready(Ok(())).boxed()
    }

    fn watch(&self, _topic: &Topic) -> BoxFuture<'_, Result<(), BusError>> {
        // The hub already holds the subscription; nothing else to wait for.
        futures_util::future::ready(Ok(())).boxed()
    }

    fn unwatch(&self, _topic: &Topic) {}

    fn last_value(&self, topic: &Topic) -> BoxFuture<'_, Option<Update>> {
        futures_util::future::ready(self.last.get(topic)).boxed()
    }

    fn health(&self) -> DependencyStatus {
        DependencyStatus::Disabled
    }

    fn stats(&self) -> BusStats {
        let (last_values, last_value_bytes) = self.last.usage();
        BusStats { last_values, last_value_bytes, ..BusStats::default() }
    }
}
