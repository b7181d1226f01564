//! One connection's bounded outbound queue, with conflation for slow readers.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::protocol::{Close, Codec, VendorId};

/// One encoded message waiting to be written.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The encoded message, shared by every subscriber of an update.
    pub bytes: Bytes,
    /// The message's `type`, for metrics.
    pub ty: &'static str,
    /// `Some(vendor)` for a location update, which a newer one for the same
    /// vendor may replace while it waits; `None` must be delivered.
    pub conflate_key: Option<VendorId>,
    /// When the update entered the gateway, for the publish→write histogram.
    pub published_at: Option<Instant>,
}

impl Frame {
    /// A frame that is never dropped or conflated (acks, errors, heartbeats).
    pub fn control(bytes: Bytes, ty: &'static str) -> Self {
        Self { bytes, ty, conflate_key: None, published_at: None }
    }
}

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
    /// The outbox is closing; the frame was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Frame>,
    /// Bytes of queued frames without a conflate key.
    strict_bytes: usize,
    close: Option<Close>,
    conflated: u64,
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
        let outcome = {
            let mut st = self.state.lock();
            if st.close.is_some() {
                return Push::Closed;
            }
            if st.queue.len() >= self.limits.max_messages
                && let Some(key) = &frame.conflate_key
                && let Some(old) = st.queue.iter_mut().rev().find(|f| f.conflate_key.as_ref() == Some(key))
            {
                *old = frame;
                st.conflated += 1;
                Push::Conflated
            } else if frame.conflate_key.is_none() && st.strict_bytes + frame.bytes.len() > self.limits.max_bytes {
                st.queue.clear();
                st.strict_bytes = 0;
                st.close = Some(Close::new(Close::TRY_AGAIN_LATER, "slow consumer: outbound queue full"));
                Push::Overflow
            } else {
                if frame.conflate_key.is_none() {
                    st.strict_bytes += frame.bytes.len();
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

    /// Asks the writer to send what is queued, then close. The first close wins.
    pub fn close(&self, close: Close) {
        let mut st = self.state.lock();
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

    /// Moves every queued frame into `out` and returns the pending close, if
    /// any, which the writer sends after the frames.
    pub fn take(&self, out: &mut Vec<Frame>) -> Option<Close> {
        let mut st = self.state.lock();
        out.extend(st.queue.drain(..));
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
    use super::*;

    fn loc(vendor: &str, n: u8) -> Frame {
        Frame {
            bytes: Bytes::from(vec![n]),
            ty: "location_updated",
            conflate_key: VendorId::parse(vendor).ok(),
            published_at: None,
        }
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
        let mut out = Vec::new();
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
        let mut out = Vec::new();
        assert_eq!(ob.take(&mut out).map(|c| c.code), Some(Close::TRY_AGAIN_LATER));
        assert!(out.is_empty());
    }
}
