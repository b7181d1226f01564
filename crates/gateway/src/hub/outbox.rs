//! One connection's bounded outbound queue, with conflation for slow readers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::protocol::{Channel, Close, Codec, Topic};

/// One encoded message waiting to be written.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The encoded message, shared by every subscriber of an update.
    pub bytes: Bytes,
    /// The message's `type`, for metrics.
    pub ty: &'static str,
    /// The update's topic, or what else the frame is. A queued
    /// location update may be replaced by a newer one of the same topic;
    /// everything else must be delivered.
    pub route: Route,
    /// When the update entered the gateway, for the publish→write histogram.
    pub published_at: Option<Instant>,
}

impl Frame {
    /// A frame that is never dropped or conflated (acks, errors, heartbeats).
    pub fn control(bytes: Bytes, ty: &'static str) -> Self {
        Self { bytes, ty, route: Route::Control, published_at: None }
    }

    fn conflatable(&self) -> bool {
        self.topic().is_some_and(|t| t.channel == Channel::Location)
    }

    /// The update's topic, if the frame is a topic's update.
    pub fn topic(&self) -> Option<&Topic> {
        match &self.route {
            Route::Topic(t) => Some(t),
            Route::Control | Route::AreaDatagram => None,
        }
    }
}

/// What a frame is, for conflation and datagram routing. One enum rather
/// than a topic and a flag: a frame stays 88 bytes (the topic's channel
/// leaves room for the other two), and every queued frame counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Acks, errors, heartbeats, snapshots of areas, area events on the
    /// stream: delivered in order, never conflated.
    Control,
    /// An update of this topic (location updates conflate).
    Topic(Topic),
    /// A move inside an area subscribed with `"delivery": "datagram"`.
    AreaDatagram,
}

/// Frames taken from an outbox in one go, in order.
pub type Batch = VecDeque<Frame>;

/// Frames of buffer a writer keeps between bursts (≈ 5.6 KiB at 88 B a
/// frame); a larger burst's buffer is given back, so a connection that once
/// lagged does not keep `max_messages` frames of capacity forever.
pub const BATCH_KEEP: usize = 64;

/// Bounds of one outbox.
#[derive(Debug, Clone, Copy)]
pub struct OutboxLimits {
    /// Queued frames beyond which location updates are conflated.
    pub max_messages: usize,
    /// Bytes of queued non-conflatable frames beyond which the client is
    /// closed with 1013 (`WS_MAX_QUEUE_BYTES`).
    pub max_bytes: usize,
}

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Appended.
    Queued,
    /// Replaced an older queued location update of the same vendor.
    Conflated,
    /// The client cannot keep up: the outbox is now closing with 1013.
    Overflow,
    /// The outbox is closing, or the frame's subscription ended; the frame
    /// was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Frame>,
    /// Bytes of queued frames without a conflate key.
    strict_bytes: usize,
    close: Option<Close>,
    conflated: u64,
    /// Topics awaiting a snapshot, and whether a live update arrived since.
    armed: Vec<(Topic, bool)>,
}

/// A connection's outbound queue: the hub and the session push, the
/// transport's writer drains. Memory is bounded: at most `max_messages`
/// frames plus one location update per subscribed vendor plus `max_bytes` of
/// other frames.
#[derive(Debug)]
pub struct Outbox {
    codec: Codec,
    limits: OutboxLimits,
    state: Mutex<State>,
    notify: Notify,
}

impl Outbox {
    /// An empty outbox for a connection speaking `codec`.
    pub fn new(codec: Codec, limits: OutboxLimits) -> Self {
        Self { codec, limits, state: Mutex::new(State::default()), notify: Notify::new() }
    }

    /// The codec the connection speaks.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Queues a frame, conflating or refusing it when the queue is full.
    pub fn push(&self, frame: Frame) -> Push {
        self.push_gated(frame, None)
    }

    /// [`Outbox::push`] for a subscription that may be ending: `live` is read
    /// under the queue's lock, so once its owner clears it and calls
    /// [`Outbox::fence`], no frame gated on it is queued any more.
    pub fn push_if(&self, frame: Frame, live: &AtomicBool) -> Push {
        self.push_gated(frame, Some(live))
    }

    /// Waits for a push in progress to finish (see [`Outbox::push_if`]).
    pub fn fence(&self) {
        drop(self.state.lock());
    }

    fn push_gated(&self, frame: Frame, live: Option<&AtomicBool>) -> Push {
        let outcome = {
            let mut st = self.state.lock();
            if st.close.is_some() || live.is_some_and(|l| !l.load(Ordering::Acquire)) {
                return Push::Closed;
            }
            if !st.armed.is_empty()
                && let Some(topic) = frame.topic()
            {
                for (armed, live) in &mut st.armed {
                    *live |= armed == topic;
                }
            }
            if st.queue.len() >= self.limits.max_messages
                && frame.conflatable()
                && let Some(old) = st.queue.iter_mut().rev().find(|f| f.conflatable() && f.route == frame.route)
            {
                *old = frame;
                st.conflated += 1;
                Push::Conflated
            } else if !frame.conflatable() && st.strict_bytes + frame.bytes.len() > self.limits.max_bytes {
                st.queue.clear();
                st.strict_bytes = 0;
                st.close = Some(Close::new(Close::TRY_AGAIN_LATER, "slow consumer: outbound queue full"));
                Push::Overflow
            } else {
                if !frame.conflatable() {
                    st.strict_bytes += frame.bytes.len();
                }
                if st.queue.capacity() == 0 {
                    // One slot, not VecDeque's minimum of four: the buffer
                    // passes to the writer and stays with the connection,
                    // and most wake-ups of a quiet client carry one frame.
                    st.queue.reserve_exact(1);
                }
                st.queue.push_back(frame);
                Push::Queued
            }
        };
        if outcome != Push::Conflated {
            self.notify.notify_one();
        }
        outcome
    }

    /// Starts watching `topic` for live updates, before its snapshot is
    /// fetched: see [`Outbox::push_snapshot`].
    pub fn arm_snapshot(&self, topic: &Topic) {
        self.state.lock().armed.push((topic.clone(), false));
    }

    /// Queues a last-known-value frame unless a live update of the same
    /// topic was pushed since [`Outbox::arm_snapshot`]: a snapshot must never
    /// overtake fresher data. Returns whether it was queued.
    pub fn push_snapshot(&self, topic: &Topic, frame: Option<Frame>) -> bool {
        let live = {
            let mut st = self.state.lock();
            let pos = st.armed.iter().position(|(t, _)| t == topic);
            let live = pos.is_some_and(|i| st.armed.swap_remove(i).1);
            if st.armed.is_empty() {
                // Arming is rare (a subscribe); idle connections hold no slots.
                st.armed = Vec::new();
            }
            live
        };
        match frame {
            Some(frame) if !live => matches!(self.push(frame), Push::Queued | Push::Conflated),
            _ => false,
        }
    }

    /// Asks the writer to send what is queued, then close. The first close wins.
    pub fn close(&self, close: Close) {
        let mut st = self.state.lock();
        if st.close.is_none() {
            st.close = Some(close);
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Drops everything queued and asks the writer to close at once: for a
    /// client that already sent its own close (a closing WebSocket accepts no
    /// more data frames). The first close still wins.
    pub fn close_discarding(&self, close: Close) {
        let mut st = self.state.lock();
        st.queue.clear();
        st.strict_bytes = 0;
        if st.close.is_none() {
            st.close = Some(close);
        }
        drop(st);
        self.notify.notify_one();
    }

    /// Whether a close is pending.
    pub fn is_closing(&self) -> bool {
        self.state.lock().close.is_some()
    }

    /// The pending close, if any: the reader side checks it, because a
    /// writer stuck on a client that stopped reading never gets to send it.
    pub fn pending_close(&self) -> Option<Close> {
        self.state.lock().close.clone()
    }

    /// Moves every queued frame into `out` and returns the pending close, if
    /// any, which the writer sends after the frames. An empty `out` is
    /// swapped with the queue (no copy): the writer's drained buffer becomes
    /// the queue, so a connection holds two buffers, each only as large as
    /// its bursts (see [`Batch`]'s shrinking in the writers).
    pub fn take(&self, out: &mut Batch) -> Option<Close> {
        let mut st = self.state.lock();
        if out.is_empty() {
            std::mem::swap(&mut st.queue, out);
        } else {
            out.extend(st.queue.drain(..));
        }
        st.strict_bytes = 0;
        st.close.clone()
    }

    /// Waits until something was pushed or a close requested. A push that
    /// happened before the wait is not missed (`Notify` keeps one permit).
    pub async fn ready(&self) {
        self.notify.notified().await;
    }

    /// Queued frames and bytes of non-conflatable ones (for tests and metrics).
    pub fn depth(&self) -> (usize, usize) {
        let st = self.state.lock();
        (st.queue.len(), st.strict_bytes)
    }

    /// Location updates replaced by newer ones so far.
    pub fn conflated(&self) -> u64 {
        self.state.lock().conflated
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_frame_stays_88_bytes() {
        assert_eq!(std::mem::size_of::<super::Frame>(), 88);
    }

    use super::*;

    use crate::protocol::VendorId;

    fn topic(vendor: &str) -> Topic {
        Topic::new(Channel::Location, VendorId::parse(vendor).unwrap_or_else(|_| unreachable!()))
    }

    fn loc(vendor: &str, n: u8) -> Frame {
        Frame {
            bytes: Bytes::from(vec![n]),
            ty: "location_updated",
            route: Route::Topic(topic(vendor)),
            published_at: None,
        }
    }

    #[test]
    fn snapshot_never_overtakes_a_live_update() {
        let ob = Outbox::new(Codec::Json, OutboxLimits { max_messages: 8, max_bytes: 100 });
        ob.arm_snapshot(&topic("a"));
        assert!(ob.push_snapshot(&topic("a"), Some(loc("a", 1))), "no live update: snapshot queued");
        ob.arm_snapshot(&topic("b"));
        ob.push(loc("b", 2));
        assert!(!ob.push_snapshot(&topic("b"), Some(loc("b", 1))), "live update first: snapshot dropped");
        let mut out = Batch::new();
        ob.take(&mut out);
        assert_eq!(out.iter().map(|f| f.bytes[0]).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn full_queue_conflates_locations_per_vendor() {
        let ob = Outbox::new(Codec::Json, OutboxLimits { max_messages: 2, max_bytes: 100 });
        assert_eq!(ob.push(loc("a", 1)), Push::Queued);
        assert_eq!(ob.push(loc("b", 1)), Push::Queued);
        assert_eq!(ob.push(loc("a", 2)), Push::Conflated);
        assert_eq!(ob.push(loc("a", 3)), Push::Conflated);
        // A vendor with nothing queued still gets its one slot.
        assert_eq!(ob.push(loc("c", 1)), Push::Queued);
        let mut out = Batch::new();
        assert_eq!(ob.take(&mut out), None);
        let got: Vec<u8> = out.iter().map(|f| f.bytes[0]).collect();
        assert_eq!(got, vec![3, 1, 1]);
        assert_eq!(ob.conflated(), 2);
    }

    #[test]
    fn strict_frames_over_budget_close_with_1013() {
        let ob = Outbox::new(Codec::Json, OutboxLimits { max_messages: 10, max_bytes: 5 });
        assert_eq!(ob.push(Frame::control(Bytes::from_static(b"1234"), "x")), Push::Queued);
        assert_eq!(ob.push(Frame::control(Bytes::from_static(b"12"), "x")), Push::Overflow);
        assert_eq!(ob.push(Frame::control(Bytes::from_static(b"1"), "x")), Push::Closed);
        let mut out = Batch::new();
        assert_eq!(ob.take(&mut out).map(|c| c.code), Some(Close::TRY_AGAIN_LATER));
        assert!(out.is_empty());
    }
}
