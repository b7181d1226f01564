//! The in-process last-value store: the newest update per topic, bounded by
//! bytes, so a flood of distinct vendors costs at most the configured
//! memory. When full, the least recently updated topics go first (one at a
//! time, never the whole store): a snapshot is a convenience, and the
//! vendors that publish least often are the ones a client misses least.

use std::collections::{BTreeMap, HashMap};

use parking_lot::Mutex;
use prometheus::IntCounter;
use serde_json::Value;

use crate::protocol::{Topic, Update};

/// Bookkeeping per entry beyond the update itself: the key (twice, in the
/// map and in the recency index), hash-map and B-tree slots.
const ENTRY_OVERHEAD: usize = 160;

/// The newest update per topic, at most `max_bytes` of them (estimated).
#[derive(Debug)]
pub struct LastValues {
    max_bytes: usize,
    evictions: IntCounter,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<Topic, Entry>,
    /// Update sequence → topic, oldest first: the eviction order.
    by_age: BTreeMap<u64, Topic>,
    next_seq: u64,
    bytes: usize,
}

#[derive(Debug)]
struct Entry {
    update: Update,
    seq: u64,
    bytes: usize,
}

impl LastValues {
    /// A store of at most `max_bytes`; every entry dropped to make room (or
    /// too large to keep) counts in `evictions`.
    pub fn new(max_bytes: usize, evictions: IntCounter) -> Self {
        Self { max_bytes, evictions, state: Mutex::new(State::default()) }
    }

    /// Remembers `update` as its topic's last value.
    pub fn insert(&self, update: &Update) {
        let topic = update.topic();
        let bytes = approx_bytes(update) + topic.vendor.as_str().len() * 2;
        let mut s = self.state.lock();
        if let Some(old) = s.entries.remove(&topic) {
            s.by_age.remove(&old.seq);
            s.bytes -= old.bytes;
        }
        if bytes > self.max_bytes {
            // Kept, it would evict everything else; the stale value it
            // replaces is gone either way (a snapshot must not go back in time).
            self.evictions.inc();
            return;
        }
        while s.bytes + bytes > self.max_bytes {
            let Some((_, oldest)) = s.by_age.pop_first() else { break };
            if let Some(e) = s.entries.remove(&oldest) {
                s.bytes -= e.bytes;
                self.evictions.inc();
            }
        }
        let seq = s.next_seq;
        s.next_seq += 1;
        s.by_age.insert(seq, topic.clone());
        s.entries.insert(topic, Entry { update: update.clone(), seq, bytes });
        s.bytes += bytes;
    }

    /// The last value of `topic`, if held.
    pub fn get(&self, topic: &Topic) -> Option<Update> {
        self.state.lock().entries.get(topic).map(|e| e.update.clone())
    }

    /// Forgets everything (the values are kept elsewhere from now on).
    pub fn clear(&self) {
        let mut s = self.state.lock();
        s.entries = HashMap::new();
        s.by_age = BTreeMap::new();
        s.bytes = 0;
    }

    /// Topics held and their estimated bytes.
    pub fn usage(&self) -> (usize, usize) {
        let s = self.state.lock();
        (s.entries.len(), s.bytes)
    }
}

/// Estimated heap footprint of an update: what it costs to keep, which for
/// open-ended vendor data is more than its JSON size.
pub fn approx_bytes(update: &Update) -> usize {
    let fixed = ENTRY_OVERHEAD + std::mem::size_of::<Update>();
    match update {
        Update::Location(u) => fixed + u.vendor_id.as_str().len() + u.timestamp.len(),
        Update::Vendor(u) => {
            let fields: usize = u.vendor.iter().map(|(k, v)| map_entry_bytes(k, v)).sum();
            fixed + u.vendor_id.as_str().len() + u.timestamp.len() + fields
        }
    }
}

fn map_entry_bytes(key: &str, value: &Value) -> usize {
    // Key string header + bytes, plus the map's per-entry bookkeeping.
    std::mem::size_of::<String>() + key.len() + 16 + value_bytes(value)
}

fn value_bytes(value: &Value) -> usize {
    let own = std::mem::size_of::<Value>();
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => own,
        Value::String(s) => own + s.len(),
        Value::Array(a) => own + a.iter().map(value_bytes).sum::<usize>(),
        Value::Object(m) => own + m.iter().map(|(k, v)| map_entry_bytes(k, v)).sum::<usize>(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::protocol::Channel;

    fn vendor(id: &str, pad: usize) -> Update {
        let body = json!({"vendorId": id, "vendor": {"name": "n", "pad": "x".repeat(pad)}});
        Update::from_publish_value(Channel::Vendor, body, None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn counter() -> IntCounter {
        IntCounter::new("t", "t").unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn full_store_evicts_the_least_recently_updated_one_at_a_time() {
        let one = approx_bytes(&vendor("v00", 1000)) + 6;
        let evictions = counter();
        let store = LastValues::new(one * 10, evictions.clone());
        for i in 0..10 {
            store.insert(&vendor(&format!("v{i:02}"), 1000));
        }
        assert_eq!(store.usage().0, 10);
        // Updating v00 makes it the newest: v01 is now the oldest.
        store.insert(&vendor("v00", 1000));
        store.insert(&vendor("v10", 1000));
        assert_eq!(evictions.get(), 1);
        let topic = |id: &str| vendor(id, 0).topic();
        assert!(store.get(&topic("v01")).is_none(), "the least recently updated went");
        for id in ["v00", "v02", "v09", "v10"] {
            assert!(store.get(&topic(id)).is_some(), "{id} kept: no wipe");
        }
        let (n, bytes) = store.usage();
        assert!(n == 10 && bytes <= one * 10, "{n} entries, {bytes} bytes");
    }

    #[test]
    fn an_update_larger_than_the_store_replaces_the_old_value_with_nothing() {
        let store = LastValues::new(4096, counter());
        store.insert(&vendor("v1", 10));
        store.insert(&vendor("v1", 10_000));
        assert!(store.get(&vendor("v1", 0).topic()).is_none(), "no stale snapshot");
        assert_eq!(store.usage(), (0, 0));
    }
}
