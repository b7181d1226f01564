//! Topics, subscribers and fan-out, with no transport or I/O knowledge.
//!
//! Publishing takes a read lock only, encodes the update once per codec that
//! has subscribers, and pushes the same `Bytes` into every subscriber's
//! [`Outbox`]; nothing here awaits, so no lock is ever held across `.await`.

mod outbox;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use indexmap::IndexMap;
use parking_lot::RwLock;

pub use outbox::{BATCH_KEEP, Batch, Frame, Outbox, OutboxLimits, Push};

use crate::protocol::{Codec, ServerMessage, Topic, Update, encode};

/// A connection's id, unique within the process.
pub type ConnId = u64;

/// Counts of one fan-out, for metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Fanout {
    /// Frames queued for writing.
    pub queued: usize,
    /// Location updates that replaced an older queued one.
    pub conflated: usize,
    /// Subscribers that overflowed and are being closed with 1013.
    pub overflowed: usize,
}

/// The subscription registry.
#[derive(Debug, Default)]
pub struct Hub {
    // IndexMap: O(1) removal and a dense vector to iterate on publish.
    topics: RwLock<HashMap<Topic, IndexMap<ConnId, Arc<Outbox>>>>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a subscriber; returns false if it was already subscribed
    /// (subscribing twice is idempotent: one delivery per update).
    pub fn subscribe(&self, topic: &Topic, conn: ConnId, outbox: &Arc<Outbox>) -> bool {
        let mut topics = self.topics.write();
        let subs = topics.entry(topic.clone()).or_default();
        if subs.contains_key(&conn) {
            return false;
        }
        subs.insert(conn, Arc::clone(outbox));
        true
    }

    /// Removes a subscriber; returns whether it was subscribed.
    pub fn unsubscribe(&self, topic: &Topic, conn: ConnId) -> bool {
        let mut topics = self.topics.write();
        let Some(subs) = topics.get_mut(topic) else { return false };
        let removed = subs.swap_remove(&conn).is_some();
        if subs.is_empty() {
            topics.remove(topic);
        }
        removed
    }

    /// Delivers an update to every subscriber of its topic.
    pub fn publish(&self, update: &Update, published_at: Instant) -> Fanout {
        let topic = update.topic();
        let msg = ServerMessage::Update(update);
        let mut fanout = Fanout::default();
        let topics = self.topics.read();
        let Some(subs) = topics.get(&topic) else { return fanout };
        // Encoded lazily: a codec nobody on this topic speaks costs nothing.
        let (mut json, mut msgpack) = (None, None);
        for outbox in subs.values() {
            let bytes = match outbox.codec() {
                Codec::Json => json.get_or_insert_with(|| encode(&msg, Codec::Json)).clone(),
                Codec::MsgPack => msgpack.get_or_insert_with(|| encode(&msg, Codec::MsgPack)).clone(),
            };
            let frame =
                Frame { bytes, ty: msg.type_name(), topic: Some(topic.clone()), published_at: Some(published_at) };
            match outbox.push(frame) {
                Push::Queued => fanout.queued += 1,
                Push::Conflated => fanout.conflated += 1,
                Push::Overflow => fanout.overflowed += 1,
                Push::Closed => {}
            }
        }
        fanout
    }

    /// Number of topics with at least one subscriber.
    pub fn topic_count(&self) -> usize {
        self.topics.read().len()
    }

    /// Number of (topic, connection) subscriptions.
    pub fn subscription_count(&self) -> usize {
        self.topics.read().values().map(IndexMap::len).sum()
    }

    /// Queue depth (frames, strict bytes) of every subscribed connection,
    /// for tests and diagnostics; walks every topic, so not for hot paths.
    pub fn queue_depths(&self) -> HashMap<ConnId, (usize, usize)> {
        let topics = self.topics.read();
        let mut out = HashMap::new();
        for subs in topics.values() {
            for (id, outbox) in subs {
                out.entry(*id).or_insert_with(|| outbox.depth());
            }
        }
        out
    }

    /// Subscribers of one topic.
    pub fn subscribers(&self, topic: &Topic) -> usize {
        self.topics.read().get(topic).map_or(0, IndexMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Channel, Location, LocationUpdate, VendorId};

    fn vendor(s: &str) -> VendorId {
        VendorId::parse(s).unwrap_or_else(|_| unreachable!())
    }

    fn update(v: &str) -> Update {
        Update::Location(LocationUpdate {
            vendor_id: vendor(v),
            location: Location { lat: 0.0, long: 0.0 },
            timestamp: "t".into(),
        })
    }

    fn outbox() -> Arc<Outbox> {
        outbox_for(Codec::Json)
    }

    fn outbox_for(codec: Codec) -> Arc<Outbox> {
        Arc::new(Outbox::new(codec, OutboxLimits { max_messages: 8, max_bytes: 1 << 20 }))
    }

    #[test]
    fn each_codec_is_encoded_once_and_only_when_subscribed() {
        let hub = Hub::new();
        let t = Topic::new(Channel::Location, vendor("v1"));
        let (j1, j2, m1, m2) =
            (outbox_for(Codec::Json), outbox_for(Codec::Json), outbox_for(Codec::MsgPack), outbox_for(Codec::MsgPack));
        hub.subscribe(&t, 1, &j1);
        hub.subscribe(&t, 2, &m1);
        hub.subscribe(&t, 3, &j2);
        hub.subscribe(&t, 4, &m2);
        assert_eq!(hub.publish(&update("v1"), Instant::now()).queued, 4);
        let take = |o: &Arc<Outbox>| {
            let mut v = Batch::new();
            o.take(&mut v);
            v.pop_back().map(|f| f.bytes).unwrap_or_default()
        };
        let (bj1, bj2, bm1, bm2) = (take(&j1), take(&j2), take(&m1), take(&m2));
        assert_eq!(bj1.as_ptr(), bj2.as_ptr(), "JSON encoded once");
        assert_eq!(bm1.as_ptr(), bm2.as_ptr(), "MessagePack encoded once");
        assert_eq!(bj1.first(), Some(&b'{'));
        assert!(matches!(bm1.first(), Some(0x80..=0x8f)), "MessagePack map");
        let as_json: serde_json::Value = rmp_serde::from_slice(&bm1).unwrap_or_default();
        assert_eq!(as_json, serde_json::from_slice::<serde_json::Value>(&bj1).unwrap_or_default());
    }

    #[test]
    fn same_bytes_go_to_every_subscriber_of_the_topic_only() {
        let hub = Hub::new();
        let (a, b, c) = (outbox(), outbox(), outbox());
        let t1 = Topic::new(Channel::Location, vendor("v1"));
        let t2 = Topic::new(Channel::Location, vendor("v2"));
        assert!(hub.subscribe(&t1, 1, &a));
        assert!(!hub.subscribe(&t1, 1, &a), "second subscribe is a no-op");
        assert!(hub.subscribe(&t1, 2, &b));
        assert!(hub.subscribe(&t2, 3, &c));
        assert_eq!(hub.publish(&update("v1"), Instant::now()).queued, 2);
        let (mut fa, mut fb, mut fc) = (Batch::new(), Batch::new(), Batch::new());
        a.take(&mut fa);
        b.take(&mut fb);
        c.take(&mut fc);
        assert_eq!(fa.len(), 1);
        assert_eq!(fb.len(), 1);
        assert!(fc.is_empty());
        assert_eq!(fa[0].bytes.as_ptr(), fb[0].bytes.as_ptr(), "encoded once, shared");
        assert!(hub.unsubscribe(&t1, 1));
        assert!(!hub.unsubscribe(&t1, 1));
        assert_eq!((hub.topic_count(), hub.subscription_count()), (2, 2));
        hub.unsubscribe(&t1, 2);
        assert_eq!(hub.topic_count(), 1);
    }
}
