//! The client side of a transport, as the bench sees it: open a connection
//! subscribed to one vendor, then yield decoded deliveries. Everything
//! transport-specific (framing, codec, heartbeats) lives behind these two
//! traits; the connect phase and the statistics are written once.
//! WebSocket JSON is [`super::ws`], WebTransport MessagePack
//! [`super::wt`]; `--transport` picks one.

use std::future::Future;
use std::net::IpAddr;

use super::marker::Marker;

/// Who one client is and what it subscribes to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The vendor's number (`vendor` is the prefix plus this).
    pub vendor_index: u32,
    /// The vendor id to subscribe to (location channel).
    pub vendor: String,
    /// `userId` of the subscribe.
    pub user: String,
    /// Local address to connect from, if spreading over several.
    pub src: Option<IpAddr>,
}

/// One location update as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The update's vendor number, `None` if its id is not one of ours.
    pub vendor_index: Option<u32>,
    /// The last known value sent on subscribe (not a live update).
    pub snapshot: bool,
    /// Accounting data; `None` if the update was not published by the bench
    /// (or could not be decoded).
    pub marker: Option<Marker>,
}

/// What a connection yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A location update.
    Update(Delivery),
    /// A frame that should have been an update but could not be decoded.
    Unparsed,
    /// The connection is gone; why (close code and reason, or the error).
    Closed(String),
}

/// An open, subscribed connection.
pub trait Conn: Send + 'static {
    /// The next update, answering heartbeats on the way.
    fn next_event(&mut self) -> impl Future<Output = Event> + Send;
}

/// Opens connections of one transport.
pub trait Connector: Send + Sync + 'static {
    /// Its connections.
    type Conn: Conn;
    /// Connects, subscribes and waits for the `subscribed` ack. The error is
    /// a short, countable reason (`upgrade refused: HTTP 401`).
    fn open(&self, target: &Target) -> impl Future<Output = Result<Self::Conn, String>> + Send;
}
