//! A small client for venta-gateway (docs/protocol.md), for Rust backends,
//! the gateway's tests and its load generator.
//!
//! One API over both transports: [`Client::connect`] picks WebSocket for a
//! `ws://` URL (JSON text frames) and WebTransport for an `https://` URL
//! (length-prefixed MessagePack frames on one client-opened bidirectional
//! stream, plus datagrams). Messages go in and come out as
//! [`serde_json::Value`]s, whatever the codec on the wire; the server's
//! heartbeat `ping` is answered with `pong` (unless told otherwise) so a long
//! session is not closed with 4000.
//!
//! Reads are bounded: a message or frame over [`Options::max_message_bytes`]
//! ends the session with an error instead of an allocation the server
//! chooses, and nothing the server sends can make the client panic.
//!
//! The pieces the WebTransport side is built from ([`wt::Trust`],
//! [`wt::FrameStream`], [`wt::open_session`], …) are public, so a caller
//! with its own needs (the bench shares one QUIC endpoint among thousands of
//! sessions and decodes without building `Value`s) reuses them rather than
//! copying them.
//!
//! # Example
//!
//! ```no_run
//! use venta_client::{Channel, Client, Event, Options, Subscribe};
//!
//! # async fn run() -> Result<(), venta_client::Error> {
//! // For WebTransport: "https://gw:5006/wt/location" and
//! // `.trust(Trust::Hashes(…))` with the hash from `/wt/cert-hash`.
//! let options = Options::default().token("eyJhbGciOi…");
//! let mut client = Client::connect("ws://127.0.0.1:5005/ws/location", &options).await?;
//! client.subscribe(&Subscribe::new(Channel::Location, "vendor-1", "user-1")).await?;
//! loop {
//!     match client.next_event().await? {
//!         Event::Message(update) => println!("{update}"),
//!         Event::Closed(close) => break println!("{close}"),
//!     }
//! }
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};

pub use venta_protocol::Channel;

pub mod ws;
pub mod wt;

/// Default bound on one received message or frame: updates are a few
/// hundred bytes; the bound only stops a broken peer announcing gigabytes.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Default wait for a WebTransport session's close code once its stream ended.
pub const DEFAULT_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Everything that can go wrong. The `Display` texts are short and stable
/// enough to be counted (the bench groups failures by them).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Not a `ws://`, `wss://` or `https://` URL.
    #[error("{0:?} is not a gateway URL (ws://, wss:// or https://)")]
    Url(String),
    /// A certificate hash that is not 64 hex digits.
    #[error("{0:?} is not a SHA-256 (64 hex digits)")]
    CertHash(String),
    /// The local QUIC endpoint could not be created.
    #[error("QUIC endpoint: {0}")]
    Endpoint(#[source] std::io::Error),
    /// The WebTransport session was not established.
    #[error("connect: {0}")]
    Connect(#[from] wtransport::error::ConnectingError),
    /// The session failed before its stream could be opened.
    #[error("{0}")]
    Session(#[source] wtransport::error::ConnectionError),
    /// The stream could not be opened.
    #[error("{0}")]
    OpenStream(#[from] wtransport::error::StreamOpeningError),
    /// The WebSocket upgrade was answered with this HTTP status.
    #[error("upgrade refused: HTTP {0}")]
    Refused(u16),
    /// A WebSocket error (I/O, protocol, or a message over the limit).
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The server's stream can no longer be read in step (a frame over the
    /// limit, or the stream ended inside a frame).
    #[error("stream out of step: {0}")]
    Frame(#[from] venta_protocol::frame::FrameError),
    /// The server finished its stream and no session close followed in time.
    #[error("server finished its stream")]
    StreamFinished,
    /// Reading the stream failed and no session close followed in time.
    #[error("read: {0}")]
    Read(#[source] wtransport::quinn::ReadError),
    /// Receiving a datagram failed and no session close followed in time.
    #[error("datagram: {0}")]
    Datagram(#[source] wtransport::error::ConnectionError),
    /// Writing to the stream failed.
    #[error("write: {0}")]
    Write(#[from] wtransport::error::StreamWriteError),
    /// The session or connection closed.
    #[error("{0}")]
    Closed(Closed),
    /// A server message that is not one MessagePack map (or not JSON).
    #[error("undecodable server message: {0}")]
    Decode(String),
    /// A message that could not be encoded (MessagePack).
    #[error("encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The gateway answered a request with an `error` message.
    #[error("refused by the gateway: {0}")]
    Rejected(Value),
    /// Asked of a transport that has no such thing (datagrams on WebSocket).
    #[error("{0} is not available over WebSocket")]
    Unsupported(&'static str),
}

/// How a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The close code (WebSocket close code, or WebTransport application
    /// code) if the server gave one; `None` if the connection was lost.
    pub code: Option<u64>,
    /// The server's reason, or why the connection was lost.
    pub reason: String,
}

impl fmt::Display for Closed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code {
            Some(code) => write!(f, "closed by server: {code} {}", self.reason),
            None => write!(f, "connection lost: {}", self.reason),
        }
    }
}

/// What the client received next.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A server message.
    Message(Value),
    /// The session closed; no further events follow.
    Closed(Closed),
}

/// How to connect. Built with [`Options::default`] and the setters.
#[derive(Debug, Clone)]
pub struct Options {
    /// A JWT appended to the URL as `?token=` (percent-encoded).
    pub token: Option<String>,
    /// How a WebTransport client checks the gateway's certificate.
    pub trust: wt::Trust,
    /// Largest message (WebSocket) or frame payload (WebTransport) accepted.
    pub max_message_bytes: usize,
    /// How long to wait for a WebTransport session's close code once its
    /// stream ended, before reporting the stream's end itself.
    pub close_wait: Duration,
    /// Whether [`Client::next_event`] answers the server's `ping` with
    /// `pong` and hides it.
    pub auto_pong: bool,
    /// Local address of the WebTransport client's QUIC endpoint (`None`:
    /// any address, dual-stack).
    pub bind: Option<std::net::SocketAddr>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            token: None,
            trust: wt::Trust::SystemRoots,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            close_wait: DEFAULT_CLOSE_WAIT,
            auto_pong: true,
            bind: None,
        }
    }
}

impl Options {
    /// Sends this JWT as `?token=`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Checks the WebTransport certificate this way.
    pub fn trust(mut self, trust: wt::Trust) -> Self {
        self.trust = trust;
        self
    }

    /// Bounds received messages to this many bytes.
    pub fn max_message_bytes(mut self, max: usize) -> Self {
        self.max_message_bytes = max;
        self
    }

    /// Waits this long for a close code after the stream ended.
    pub fn close_wait(mut self, wait: Duration) -> Self {
        self.close_wait = wait;
        self
    }

    /// Answers pings automatically (default) or hands them to the caller.
    pub fn auto_pong(mut self, on: bool) -> Self {
        self.auto_pong = on;
        self
    }

    /// Binds the WebTransport endpoint to this local address.
    pub fn bind(mut self, addr: std::net::SocketAddr) -> Self {
        self.bind = Some(addr);
        self
    }

    /// The URL with the token, if any, appended.
    fn url(&self, url: &str) -> String {
        match &self.token {
            Some(t) => with_token(url, t),
            None => url.to_owned(),
        }
    }
}

/// Everything but RFC 3986's unreserved characters.
const URL_UNSAFE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// `url` with `token=…` added to its query (before any `#fragment`). The
/// token is percent-encoded outside the URL-safe characters, which leaves a
/// JWT (base64url and dots) unchanged.
pub fn with_token(url: &str, token: &str) -> String {
    let (base, fragment) = match url.find('#') {
        Some(i) => url.split_at(i),
        None => (url, ""),
    };
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut out = String::with_capacity(url.len() + token.len() + 7);
    out.push_str(base);
    out.push(sep);
    out.push_str("token=");
    out.extend(percent_encoding::utf8_percent_encode(token, URL_UNSAFE));
    out.push_str(fragment);
    out
}

/// A `subscribe_*` request (docs/protocol.md).
#[derive(Debug, Clone)]
pub struct Subscribe<'a> {
    /// The channel.
    pub channel: Channel,
    /// `vendorId`.
    pub vendor_id: &'a str,
    /// `userId`.
    pub user_id: &'a str,
    /// WebTransport only: updates as datagrams (`"delivery": "datagram"`).
    pub datagrams: bool,
    /// The request id echoed in the ack (`s-{channel}-{vendor}` by default).
    pub id: Option<&'a str>,
}

impl<'a> Subscribe<'a> {
    /// A stream-delivered subscription with the default id.
    pub fn new(channel: Channel, vendor_id: &'a str, user_id: &'a str) -> Self {
        Self { channel, vendor_id, user_id, datagrams: false, id: None }
    }

    /// Delivery by datagram (WebTransport).
    pub fn datagrams(mut self) -> Self {
        self.datagrams = true;
        self
    }

    /// This request id.
    pub fn id(mut self, id: &'a str) -> Self {
        self.id = Some(id);
        self
    }

    /// The message to send.
    pub fn message(&self) -> Value {
        let mut data = json!({"vendorId": self.vendor_id, "userId": self.user_id});
        if self.datagrams {
            data["delivery"] = json!("datagram");
        }
        let id = match self.id {
            Some(id) => id.to_owned(),
            None => format!("s-{}-{}", self.channel.as_str(), self.vendor_id),
        };
        json!({"type": format!("subscribe_{}", self.channel.as_str()), "data": data, "id": id})
    }
}

/// What an event means to a caller waiting for a request's answer: `None`
/// to keep reading, else the `subscribed` ack or why there is none.
fn answer(event: Event, ack_type: &str) -> Option<Result<Value, Error>> {
    match event {
        Event::Message(m) if m["type"] == ack_type => Some(Ok(m)),
        Event::Message(m) if m["type"] == "error" => Some(Err(Error::Rejected(m))),
        Event::Message(_) => None,
        Event::Closed(c) => Some(Err(Error::Closed(c))),
    }
}

/// Whether a decoded message is the server's heartbeat.
fn is_ping(v: &Value) -> bool {
    v["type"] == "ping"
}

/// A connected client on either transport.
#[derive(Debug)]
pub enum Client {
    /// `ws://` or `wss://`: JSON text frames.
    WebSocket(ws::WsClient),
    /// `https://`: MessagePack frames on one stream, and datagrams.
    WebTransport(wt::WtClient),
}

impl Client {
    /// Connects, choosing the transport by the URL's scheme.
    pub async fn connect(url: &str, options: &Options) -> Result<Self, Error> {
        if url.starts_with("ws://") || url.starts_with("wss://") {
            Ok(Self::WebSocket(ws::WsClient::connect(url, options).await?))
        } else if url.starts_with("https://") {
            Ok(Self::WebTransport(wt::WtClient::connect(url, options).await?))
        } else {
            Err(Error::Url(url.to_owned()))
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, message: &Value) -> Result<(), Error> {
        match self {
            Self::WebSocket(c) => c.send(message).await,
            Self::WebTransport(c) => c.send(message).await,
        }
    }

    /// The next server message (stream, not datagrams) or the close.
    pub async fn next_event(&mut self) -> Result<Event, Error> {
        match self {
            Self::WebSocket(c) => c.next_event().await,
            Self::WebTransport(c) => c.next_event().await,
        }
    }

    /// Subscribes and returns the `subscribed` ack.
    pub async fn subscribe(&mut self, subscribe: &Subscribe<'_>) -> Result<Value, Error> {
        match self {
            Self::WebSocket(c) => c.subscribe(subscribe).await,
            Self::WebTransport(c) => c.subscribe(subscribe).await,
        }
    }

    /// The next datagram (WebTransport with datagram delivery).
    pub async fn recv_datagram(&mut self) -> Result<Value, Error> {
        match self {
            Self::WebSocket(_) => Err(Error::Unsupported("datagrams")),
            Self::WebTransport(c) => c.recv_datagram().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_joins_the_query_encoded() {
        assert_eq!(with_token("ws://h/ws/location", "a.b-c_d"), "ws://h/ws/location?token=a.b-c_d");
        assert_eq!(with_token("https://h/wt?x=1", "t"), "https://h/wt?x=1&token=t");
        assert_eq!(with_token("ws://h/p#frag", "t"), "ws://h/p?token=t#frag");
        assert_eq!(with_token("ws://h/p", "a b&c=d"), "ws://h/p?token=a%20b%26c%3Dd");
        assert_eq!(Options::default().url("ws://h/p"), "ws://h/p");
        assert_eq!(Options::default().token("x").url("ws://h/p"), "ws://h/p?token=x");
    }

    #[test]
    fn subscribe_messages_follow_the_protocol() {
        let s = Subscribe::new(Channel::Vendor, "v1", "u1");
        assert_eq!(
            s.message(),
            json!({"type": "subscribe_vendor", "data": {"vendorId": "v1", "userId": "u1"}, "id": "s-vendor-v1"})
        );
        assert_eq!(
            Subscribe::new(Channel::Location, "v2", "u2").datagrams().id("b").message(),
            json!({"type": "subscribe_location", "data": {"vendorId": "v2", "userId": "u2", "delivery": "datagram"}, "id": "b"})
        );
    }

    #[test]
    fn answers_are_acks_errors_or_closes() {
        let ack = json!({"type": "subscribed", "data": {}});
        assert!(matches!(answer(Event::Message(ack.clone()), "subscribed"), Some(Ok(v)) if v == ack));
        assert!(answer(Event::Message(json!({"type": "location_updated"})), "subscribed").is_none());
        let err = json!({"type": "error", "data": {"code": "rate_limited"}});
        assert!(matches!(answer(Event::Message(err), "subscribed"), Some(Err(Error::Rejected(_)))));
        let closed = Closed { code: Some(4000), reason: "heartbeat".into() };
        assert_eq!(closed.to_string(), "closed by server: 4000 heartbeat");
        assert!(matches!(answer(Event::Closed(closed), "subscribed"), Some(Err(Error::Closed(_)))));
        assert_eq!(Closed { code: None, reason: "reset".into() }.to_string(), "connection lost: reset");
    }

    #[test]
    fn other_schemes_are_refused_before_any_io() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
        let Ok(rt) = rt else { return };
        let r = rt.block_on(Client::connect("http://h/ws", &Options::default()));
        assert!(matches!(r, Err(Error::Url(_))));
    }
}
