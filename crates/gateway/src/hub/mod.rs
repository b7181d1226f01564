//! Topics, subscribers and fan-out, with no transport or I/O knowledge.
//!
//! A fan-out holds no lock while it pushes: it clones its topic's current
//! subscriber list (an `Arc`) under two short locks, encodes the update once
//! per codec that has subscribers, and pushes the same `Bytes` into every
//! subscriber's [`Outbox`]. Subscribe, unsubscribe and disconnect therefore
//! never wait behind a 2,000-way fan-out, on its topic or any other.
//!
//! The list is copy-on-write through [`Arc::make_mut`], in chunks of
//! [`CHUNK`]: a change edits it in place (O(1)) unless a fan-out still holds
//! it, and only then copies the chunk index and the one or two chunks it
//! touches (about 100 refcounts for 2,000 subscribers, not 2,000). Building
//! a popular topic in a reconnect storm thus stays linear, and churn on a
//! topic being fanned out flat out costs ~1 µs, not a whole copy. Nothing
//! here awaits, so no lock is ever held across `.await`.
//!
//! Lock order: the topic map, then a topic's state, then an outbox's queue.

mod outbox;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use indexmap::IndexSet;
use parking_lot::{Mutex, RwLock};

pub use outbox::{BATCH_KEEP, Batch, Frame, Outbox, OutboxLimits, Push, Route};

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

/// One (topic, connection) subscription.
#[derive(Debug)]
struct Sub {
    conn: ConnId,
    /// The outbox's codec, copied here: a fan-out reads it before it
    /// touches the outbox, and 10,000 outboxes do not stay in cache (the
    /// load was two thirds of `publish` in an S3 profile). Fits the entry's
    /// padding.
    codec: Codec,
    outbox: Arc<Outbox>,
    /// Cleared by unsubscribe. A fan-out may still hold a list with this
    /// entry; it reads the flag under the outbox's lock, so nothing is queued
    /// for a subscription once `unsubscribe` has returned (an `unsubscribed`
    /// ack is never followed by an update of that topic).
    live: AtomicBool,
}

/// Subscribers per chunk of a topic's list.
const CHUNK: usize = 64;

/// A topic's subscribers in order, as full chunks then one partial chunk
/// (never empty): shared with fan-outs in flight, and copied, chunk by
/// chunk, only where a writer changes it while one is.
#[derive(Debug, Default, Clone)]
struct SubList {
    chunks: Vec<Arc<Vec<Arc<Sub>>>>,
}

impl SubList {
    fn iter(&self) -> impl Iterator<Item = &Arc<Sub>> {
        self.chunks.iter().flat_map(|c| c.iter())
    }

    fn push(&mut self, sub: Arc<Sub>) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => Arc::make_mut(last).push(sub),
            // Grown as needed, not at CHUNK: most topics have a few
            // subscribers, and idle memory per connection counts.
            _ => self.chunks.push(Arc::new(vec![sub])),
        }
    }

    /// Removes the `idx`th subscriber, moving the last one into its place
    /// (as `IndexSet::swap_remove_index` does with the connection ids).
    fn swap_remove(&mut self, idx: usize) -> Option<Arc<Sub>> {
        let last_chunk = Arc::make_mut(self.chunks.last_mut()?);
        let last = last_chunk.pop()?;
        if last_chunk.is_empty() {
            self.chunks.pop();
        }
        match self.chunks.get_mut(idx / CHUNK) {
            Some(chunk) if idx % CHUNK < chunk.len() => {
                Some(std::mem::replace(&mut Arc::make_mut(chunk)[idx % CHUNK], last))
            }
            // `idx` was the last position.
            _ => Some(last),
        }
    }
}

/// What a fan-out iterates.
type Subscribers = Arc<SubList>;

#[derive(Debug, Default)]
struct TopicState {
    /// The subscribed connections, at the same positions as in `subs`
    /// (both use swap-remove), for O(1) membership and removal.
    conns: IndexSet<ConnId>,
    subs: Subscribers,
    /// The topic emptied and left the map: a writer that fetched it before
    /// must fetch the map's current entry instead.
    removed: bool,
}

#[derive(Debug, Default)]
struct TopicEntry {
    state: Mutex<TopicState>,
}

/// The subscription registry.
#[derive(Debug, Default)]
pub struct Hub {
    /// Write-locked only to add or remove a topic; read-locked briefly to
    /// find one.
    topics: RwLock<HashMap<Topic, Arc<TopicEntry>>>,
    /// (topic, connection) pairs, kept so metrics do not walk every topic.
    subscriptions: AtomicUsize,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// The topic's entry, created if missing.
    fn entry(&self, topic: &Topic) -> Arc<TopicEntry> {
        if let Some(e) = self.topics.read().get(topic) {
            return Arc::clone(e);
        }
        Arc::clone(self.topics.write().entry(topic.clone()).or_default())
    }

    /// Adds a subscriber; returns false if it was already subscribed
    /// (subscribing twice is idempotent: one delivery per update). An update
    /// published after this returns reaches the subscriber.
    pub fn subscribe(&self, topic: &Topic, conn: ConnId, outbox: &Arc<Outbox>) -> bool {
        loop {
            let entry = self.entry(topic);
            let mut st = entry.state.lock();
            if st.removed {
                // Emptied by an unsubscribe since we fetched it; the map no
                // longer holds it (removed under this lock), so retrying
                // finds or creates the current entry.
                continue;
            }
            if !st.conns.insert(conn) {
                return false;
            }
            let sub =
                Arc::new(Sub { conn, codec: outbox.codec(), outbox: Arc::clone(outbox), live: AtomicBool::new(true) });
            Arc::make_mut(&mut st.subs).push(sub);
            self.subscriptions.fetch_add(1, Ordering::Relaxed);
            return true;
        }
    }

    /// Removes a subscriber; returns whether it was subscribed. Once this
    /// returns, no fan-out queues anything more for the subscription.
    pub fn unsubscribe(&self, topic: &Topic, conn: ConnId) -> bool {
        let Some(entry) = self.topics.read().get(topic).cloned() else { return false };
        let mut st = entry.state.lock();
        let Some(idx) = st.conns.get_index_of(&conn) else { return false };
        st.conns.swap_remove_index(idx);
        let Some(sub) = Arc::make_mut(&mut st.subs).swap_remove(idx) else { return false };
        sub.live.store(false, Ordering::Release);
        // A fan-out that read the flag as set did so under the outbox's
        // lock: taking that lock once waits for its push to finish.
        sub.outbox.fence();
        self.subscriptions.fetch_sub(1, Ordering::Relaxed);
        let emptied = st.conns.is_empty();
        drop(st);
        if emptied {
            // Map before topic state (the lock order); re-checked, as a
            // subscribe may have refilled it in between.
            let mut topics = self.topics.write();
            let mut st = entry.state.lock();
            if st.conns.is_empty() && !st.removed && topics.get(topic).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                st.removed = true;
                st.subs = Subscribers::default();
                topics.remove(topic);
            }
        }
        true
    }

    /// The topic's current subscribers, shared with any other fan-out.
    fn snapshot(&self, topic: &Topic) -> Option<Subscribers> {
        let topics = self.topics.read();
        let entry = topics.get(topic)?;
        let subs = Arc::clone(&entry.state.lock().subs);
        Some(subs)
    }

    /// Delivers an update to every subscriber of its topic, holding no hub
    /// lock while it pushes.
    pub fn publish(&self, update: &Update, published_at: Instant) -> Fanout {
        let topic = update.topic();
        let msg = ServerMessage::Update(update);
        let mut fanout = Fanout::default();
        let Some(subs) = self.snapshot(&topic) else { return fanout };
        // Encoded lazily: a codec nobody on this topic speaks costs nothing.
        let (mut json, mut msgpack) = (None, None);
        for sub in subs.iter() {
            let bytes = match sub.codec {
                Codec::Json => json.get_or_insert_with(|| encode(&msg, Codec::Json)).clone(),
                Codec::MsgPack => msgpack.get_or_insert_with(|| encode(&msg, Codec::MsgPack)).clone(),
            };
            let frame = Frame {
                bytes,
                ty: msg.type_name(),
                route: Route::Topic(topic.clone()),
                published_at: Some(published_at),
            };
            match sub.outbox.push_if(frame, &sub.live) {
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
        self.subscriptions.load(Ordering::Relaxed)
    }

    /// Queue depth (frames, strict bytes) of every subscribed connection,
    /// for tests and diagnostics; walks every topic, so not for hot paths.
    pub fn queue_depths(&self) -> HashMap<ConnId, (usize, usize)> {
        let topics = self.topics.read();
        let mut out = HashMap::new();
        for entry in topics.values() {
            let subs = Arc::clone(&entry.state.lock().subs);
            for sub in subs.iter() {
                out.entry(sub.conn).or_insert_with(|| sub.outbox.depth());
            }
        }
        out
    }

    /// Subscribers of one topic.
    pub fn subscribers(&self, topic: &Topic) -> usize {
        self.topics.read().get(topic).map_or(0, |e| e.state.lock().conns.len())
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

    /// Spins (yielding) until `cond` holds; false after 10 s.
    fn spin_until(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while !cond() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    fn located(v: &str, lat: f64) -> Update {
        Update::Location(LocationUpdate {
            vendor_id: vendor(v),
            location: Location { lat, long: 0.0 },
            timestamp: "t".into(),
        })
    }

    fn roomy() -> Arc<Outbox> {
        Arc::new(Outbox::new(Codec::Json, OutboxLimits { max_messages: 1 << 20, max_bytes: 1 << 30 }))
    }

    fn drain(o: &Outbox) -> Batch {
        let mut b = Batch::new();
        o.take(&mut b);
        b
    }

    #[test]
    fn the_chunked_list_removes_like_a_vec_and_leaves_held_copies_alone() {
        let subs: Vec<Arc<Sub>> = (0..300)
            .map(|conn| Arc::new(Sub { conn, codec: Codec::Json, outbox: outbox(), live: AtomicBool::new(true) }))
            .collect();
        let mut list = Subscribers::default();
        let mut model: Vec<ConnId> = Vec::new();
        for s in &subs {
            Arc::make_mut(&mut list).push(Arc::clone(s));
            model.push(s.conn);
        }
        // Positions at a chunk's start, end, the last one, and others.
        for (round, idx) in [0, 63, 64, usize::MAX, 130, 5, 127, 200, usize::MAX, 0].into_iter().enumerate() {
            let idx = idx.min(model.len() - 1);
            let held = Arc::clone(&list);
            let before: Vec<ConnId> = held.iter().map(|s| s.conn).collect();
            let removed = Arc::make_mut(&mut list).swap_remove(idx).map(|s| s.conn);
            assert_eq!(removed, Some(model.swap_remove(idx)), "round {round}");
            assert_eq!(list.iter().map(|s| s.conn).collect::<Vec<_>>(), model, "round {round}");
            assert_eq!(held.iter().map(|s| s.conn).collect::<Vec<_>>(), before, "a fan-out's copy changed");
        }
        while !model.is_empty() {
            let last = model.len() - 1;
            assert_eq!(Arc::make_mut(&mut list).swap_remove(last).map(|s| s.conn), model.pop());
        }
        assert!(list.chunks.is_empty());
        assert!(Arc::make_mut(&mut list).swap_remove(0).is_none());
    }

    #[test]
    fn subscribe_and_unsubscribe_do_not_wait_for_a_fan_out_in_progress() {
        let hub = Arc::new(Hub::new());
        let t = Topic::new(Channel::Location, vendor("big"));
        let other = Topic::new(Channel::Location, vendor("small"));
        let outboxes: Vec<_> = (0..20_000).map(|_| outbox()).collect();
        for (i, o) in outboxes.iter().enumerate() {
            hub.subscribe(&t, i as ConnId, o);
        }
        let (first, last) = (Arc::clone(&outboxes[0]), Arc::clone(&outboxes[outboxes.len() - 1]));
        let probe = outbox();
        // A slow scheduler may let the fan-out finish before we act: a few
        // tries. Under the old map-wide lock no try can ever succeed.
        let overtook = (0..5).any(|_| {
            for o in &outboxes {
                drain(o);
            }
            let publisher = {
                let hub = Arc::clone(&hub);
                std::thread::spawn(move || hub.publish(&update("big"), Instant::now()))
            };
            assert!(spin_until(|| first.depth().0 == 1), "fan-out never started");
            let a = hub.subscribe(&other, u64::MAX, &probe) && hub.unsubscribe(&other, u64::MAX);
            let b = hub.subscribe(&t, u64::MAX, &probe) && hub.unsubscribe(&t, u64::MAX);
            let mid_fan_out = last.depth().0 == 0;
            let fanout = publisher.join().unwrap_or_default();
            assert!(a && b);
            assert!(fanout.queued >= 20_000, "{fanout:?}");
            mid_fan_out
        });
        assert!(overtook, "subscribe/unsubscribe waited for the whole fan-out");
        assert_eq!((hub.topic_count(), hub.subscription_count()), (1, 20_000));
    }

    #[test]
    fn a_subscriber_that_stays_gets_every_update_once_in_order_under_churn() {
        const N: usize = 2_000;
        let hub = Arc::new(Hub::new());
        let t = Topic::new(Channel::Location, vendor("v1"));
        let u = Topic::new(Channel::Location, vendor("v2"));
        let stays = roomy();
        assert!(hub.subscribe(&t, 1, &stays));
        let done = Arc::new(AtomicBool::new(false));
        let churner = {
            let (hub, done, t, u) = (Arc::clone(&hub), Arc::clone(&done), t.clone(), u.clone());
            std::thread::spawn(move || {
                let ob = roomy();
                let mut rounds = 0u64;
                while !done.load(Ordering::Relaxed) || rounds < 100 {
                    let id = 100 + rounds % 8;
                    // Same topic, and a topic that empties (and leaves the map) each round.
                    hub.subscribe(&t, id, &ob);
                    hub.subscribe(&t, id, &ob);
                    hub.subscribe(&u, id, &ob);
                    hub.unsubscribe(&t, id);
                    hub.unsubscribe(&u, id);
                    drain(&ob);
                    rounds += 1;
                }
                rounds
            })
        };
        for i in 0..N {
            hub.publish(&located("v1", i as f64 / 1e4), Instant::now());
            hub.publish(&located("v2", i as f64 / 1e4), Instant::now());
        }
        done.store(true, Ordering::Relaxed);
        assert!(churner.join().unwrap_or_default() >= 100);
        let lats: Vec<f64> = drain(&stays)
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_slice(&f.bytes).unwrap_or_default();
                v["data"]["location"]["lat"].as_f64().unwrap_or(-1.0)
            })
            .collect();
        let want: Vec<f64> = (0..N).map(|i| i as f64 / 1e4).collect();
        assert_eq!(lats, want, "each update exactly once, in order");
        assert_eq!((hub.topic_count(), hub.subscription_count()), (1, 1));
    }

    #[test]
    fn a_subscribe_racing_the_topics_removal_is_not_lost() {
        let hub = Arc::new(Hub::new());
        let u = Topic::new(Channel::Location, vendor("v2"));
        let done = Arc::new(AtomicBool::new(false));
        let churner = {
            let (hub, done, u) = (Arc::clone(&hub), Arc::clone(&done), u.clone());
            std::thread::spawn(move || {
                let ob = roomy();
                while !done.load(Ordering::Relaxed) {
                    hub.subscribe(&u, 7, &ob);
                    hub.unsubscribe(&u, 7);
                    drain(&ob);
                }
            })
        };
        let me = roomy();
        for i in 0..3_000 {
            assert!(hub.subscribe(&u, 1, &me));
            hub.publish(&update("v2"), Instant::now());
            assert_eq!(drain(&me).len(), 1, "round {i}: a live subscription missed an update");
            assert!(hub.unsubscribe(&u, 1));
        }
        done.store(true, Ordering::Relaxed);
        assert!(churner.join().is_ok());
        assert_eq!((hub.topic_count(), hub.subscription_count()), (0, 0));
    }

    #[test]
    fn nothing_is_queued_once_unsubscribe_has_returned() {
        let hub = Arc::new(Hub::new());
        let t = Topic::new(Channel::Location, vendor("v1"));
        // Enough subscribers that a fan-out is often in flight.
        let keep: Vec<_> = (0..200).map(|_| outbox()).collect();
        for (i, o) in keep.iter().enumerate() {
            hub.subscribe(&t, 1_000 + i as ConnId, o);
        }
        let done = Arc::new(AtomicBool::new(false));
        let published = Arc::new(AtomicUsize::new(0));
        let publisher = {
            let (hub, done, published) = (Arc::clone(&hub), Arc::clone(&done), Arc::clone(&published));
            std::thread::spawn(move || {
                while !done.load(Ordering::Relaxed) {
                    hub.publish(&update("v1"), Instant::now());
                    published.fetch_add(1, Ordering::Release);
                }
            })
        };
        let me = roomy();
        let mut stray = 0;
        for _ in 0..300 {
            hub.subscribe(&t, 1, &me);
            let n = published.load(Ordering::Acquire);
            assert!(spin_until(|| published.load(Ordering::Acquire) > n));
            hub.unsubscribe(&t, 1);
            drain(&me);
            // The fan-out in flight ends, and one more starts and ends.
            let n = published.load(Ordering::Acquire);
            assert!(spin_until(|| published.load(Ordering::Acquire) >= n + 2));
            stray += drain(&me).len();
        }
        done.store(true, Ordering::Relaxed);
        assert!(publisher.join().is_ok());
        assert_eq!(stray, 0, "updates queued after unsubscribe returned");
    }
}
