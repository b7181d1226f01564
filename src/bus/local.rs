//! The in-process bus: publishing is delivering. Used when no `NATS_URL` is
//! set, so a single gateway is useful on its own.

use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use super::{Bus, BusError, Deliver, DependencyStatus};
use crate::protocol::{Topic, Update};

/// A bus that only reaches this process.
#[derive(Debug)]
pub struct LocalBus {
    deliver: Deliver,
}

impl LocalBus {
    /// A bus delivering straight into this instance's hub.
    pub fn new(deliver: Deliver) -> Self {
        Self { deliver }
    }
}

impl Bus for LocalBus {
    fn publish(&self, update: Update) -> BoxFuture<'_, Result<(), BusError>> {
        self.deliver.deliver(&update, Instant::now());
        futures_util::future::ready(Ok(())).boxed()
    }

    fn watch(&self, _topic: &Topic) -> BoxFuture<'_, Result<(), BusError>> {
        // The hub already holds the subscription; nothing else to wait for.
        futures_util::future::ready(Ok(())).boxed()
    }

    fn unwatch(&self, _topic: &Topic) {}

    fn health(&self) -> DependencyStatus {
        DependencyStatus::Disabled
    }
}
