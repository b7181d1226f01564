//! The in-process bus: publishing is delivering. Used when no `NATS_URL` is
//! set, so a single gateway is useful on its own.

use std::collections::HashMap;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use parking_lot::Mutex;

use super::{Bus, BusError, Deliver, DependencyStatus};
use crate::protocol::{Topic, Update};

/// Topics whose last value is remembered; past this, the cache is cleared
/// rather than grown (a snapshot is a convenience, not a store).
const MAX_LAST_VALUES: usize = 100_000;

/// A bus that only reaches this process.
#[derive(Debug)]
pub struct LocalBus {
    deliver: Deliver,
    last: Mutex<HashMap<Topic, Update>>,
}

impl LocalBus {
    /// A bus delivering straight into this instance's hub.
    pub fn new(deliver: Deliver) -> Self {
        Self { deliver, last: Mutex::new(HashMap::new()) }
    }
}

impl Bus for LocalBus {
    fn publish(&self, update: Update) -> BoxFuture<'_, Result<(), BusError>> {
        let received = Instant::now();
        {
            let mut last = self.last.lock();
            if last.len() >= MAX_LAST_VALUES && !last.contains_key(&update.topic()) {
                last.clear();
            }
            last.insert(update.topic(), update.clone());
        }
        self.deliver.deliver(&update, received);
        futures_util::future::ready(Ok(())).boxed()
    }

    fn watch(&self, _topic: &Topic) -> BoxFuture<'_, Result<(), BusError>> {
        // The hub already holds the subscription; nothing else to wait for.
        futures_util::future::ready(Ok(())).boxed()
    }

    fn unwatch(&self, _topic: &Topic) {}

    fn last_value(&self, topic: &Topic) -> BoxFuture<'_, Option<Update>> {
        futures_util::future::ready(self.last.lock().get(topic).cloned()).boxed()
    }

    fn health(&self) -> DependencyStatus {
        DependencyStatus::Disabled
    }
}
