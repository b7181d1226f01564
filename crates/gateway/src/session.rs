//! One client's state machine, written once and driven by every transport.
//!
//! In the manner of quinn-proto, the session does no I/O and never waits:
//! the transport feeds it frames, timer ticks and the results of the
//! dependency calls it asked for ([`Call`]: a rate-limit check, a bus
//! subscribe, a last-value lookup), and it answers by pushing frames into
//! the connection's [`Outbox`], by asking for the next call, or by
//! returning a [`Close`]. The transport drives all of that in one
//! `select!` with its socket, its timers and shutdown, so a dependency
//! that hangs never stops the heartbeat, other traffic or the 1001 on
//! shutdown. Requests are answered in the order they came; while a call is
//! in flight later requests wait in a short queue, and when that is full
//! the transport stops reading (backpressure, not loss).

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use parking_lot::RwLock;
use time::OffsetDateTime;

use crate::audit::{Action, Audit, AuditEvent};
use crate::auth::{Authenticator, Verified};
use crate::bus::{Bus, BusError};
use crate::geo::{AreaError, Areas, Shape, ShapeError, Subscribed};
use crate::hub::{ConnId, Frame, Hub, Outbox, OutboxLimits, Push};
use crate::metrics::Metrics;
use crate::protocol::{
    AreaId, AreaShape, Channel, Close, Codec, Command, Delivery, ErrorCode, Rejection, Request, ServerMessage, Topic,
    Update, UserId, VendorId, encode, type_label,
};
use crate::ratelimit::{Decision, RateLimiter};

/// How the client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket, JSON text frames.
    WebSocket,
    /// WebTransport, length-prefixed MessagePack frames on one stream, plus
    /// datagrams for location subscriptions that ask for them.
    WebTransport,
    /// Server-Sent Events: JSON in `data:` lines, one way. The requests
    /// come from the URL, once, at the start.
    Sse,
}

impl Transport {
    /// Every transport, for metrics and status.
    pub const ALL: [Transport; 3] = [Self::WebSocket, Self::WebTransport, Self::Sse];

    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::WebTransport => "webtransport",
            Self::Sse => "sse",
        }
    }

    fn codec(self) -> Codec {
        match self {
            Self::WebSocket | Self::Sse => Codec::Json,
            Self::WebTransport => Codec::MsgPack,
        }
    }

    fn has_datagrams(self) -> bool {
        matches!(self, Self::WebTransport)
    }

    /// Whether the client can talk back. An SSE client cannot: its silence
    /// is no sign of death (a failed write is), so it has no 4000 timeout.
    fn hears_client(self) -> bool {
        !matches!(self, Self::Sse)
    }
}

/// The location topics a connection wants as datagrams
/// (`"delivery": "datagram"`). The session writes it, the transport's writer
/// reads it per update: the hub stays transport-agnostic and the choice can
/// change with a later subscribe.
#[derive(Debug, Default)]
pub struct DatagramTopics(RwLock<HashSet<Topic>>);

impl DatagramTopics {
    /// Whether updates of `topic` should go as datagrams.
    pub fn contains(&self, topic: &Topic) -> bool {
        let set = self.0.read();
        !set.is_empty() && set.contains(topic)
    }

    fn set(&self, topic: &Topic, datagram: bool) {
        let mut set = self.0.write();
        if datagram {
            set.insert(topic.clone());
        } else {
            set.remove(topic);
        }
    }
}

/// One inbound transport event the session must judge.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// A text frame (JSON).
    Text(&'a [u8]),
    /// A binary WebSocket frame: not part of the JSON protocol.
    Binary,
    /// One WebTransport frame's payload (MessagePack).
    MsgPack(&'a [u8]),
    /// A WebTransport frame header announcing more than
    /// `WS_MAX_MESSAGE_BYTES`: the stream is out of step.
    Oversized {
        /// The announced length.
        len: u64,
    },
    /// The client's WebTransport stream ended inside a frame.
    Truncated,
    /// Transport-level liveness (a WebSocket Ping or Pong frame, a
    /// WebTransport datagram).
    Heartbeat,
}

/// Denied messages in a row (over the budget) before the client is closed
/// as abusive, in units of the per-minute limit.
const ABUSE_FACTOR: u32 = 2;

/// Requests held while a dependency call is in flight; past this the
/// transport stops reading the socket until the session catches up.
pub const MAX_QUEUED_REQUESTS: usize = 16;

/// The limits a session enforces.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Server `ping` interval; two silent intervals close with 4000.
    pub heartbeat: Duration,
    /// Subscriptions per connection.
    pub max_subscriptions: usize,
    /// Client messages per minute (for the abuse close).
    pub rate_limit: u32,
    /// Largest client frame, bytes (for the error text).
    pub max_message_bytes: usize,
    /// The outbound queue's bounds.
    pub outbox: OutboxLimits,
    /// Area subscriptions per connection (`GEO_MAX_AREAS`).
    pub max_areas: usize,
    /// Largest area, km (`GEO_MAX_AREA_KM`).
    pub max_area_km: f64,
}

impl SessionLimits {
    /// The limits of a configuration.
    pub fn from_config(config: &crate::config::LimitsConfig, geo: &crate::config::GeoConfig) -> Self {
        Self {
            heartbeat: config.heartbeat_interval(),
            max_subscriptions: config.max_subscriptions,
            rate_limit: config.rate_limit,
            max_message_bytes: config.max_message_bytes,
            outbox: OutboxLimits { max_messages: config.max_queue_messages, max_bytes: config.max_queue_bytes },
            max_areas: geo.max_areas,
            max_area_km: geo.max_area_km,
        }
    }
}

/// What every session of an instance shares: exactly what a session needs,
/// nothing of the listeners or the configuration at large.
pub struct SessionContext {
    /// Subscriptions and fan-out.
    pub hub: Arc<Hub>,
    /// Only for [`Bus::unwatch`], which never waits; watching goes through
    /// [`Call::Watch`].
    pub bus: Arc<dyn Bus>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The audit trail (never waits).
    pub audit: Arc<Audit>,
    /// Verifies `refresh` tokens (CPU only).
    pub auth: Authenticator,
    /// Area subscriptions; only for releasing them, which never waits
    /// (subscribing goes through [`Call::SubscribeArea`]).
    pub areas: Arc<Areas>,
    /// The limits.
    pub limits: SessionLimits,
    next_conn: AtomicU64,
}

impl SessionContext {
    /// A context for the sessions of one instance.
    pub fn new(
        hub: Arc<Hub>,
        bus: Arc<dyn Bus>,
        metrics: Arc<Metrics>,
        audit: Arc<Audit>,
        auth: Authenticator,
        areas: Arc<Areas>,
        limits: SessionLimits,
    ) -> Self {
        Self { hub, bus, metrics, audit, auth, areas, limits, next_conn: AtomicU64::new(1) }
    }

    fn next_conn_id(&self) -> ConnId {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }
}

/// A dependency call the session needs made; the transport runs it (see
/// [`Deps::start`]) and hands the result back to [`Session::on_completion`].
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// Spend one unit of this rate-limit key's budget.
    Budget(String),
    /// Make the bus deliver this topic to this instance.
    Watch(Topic),
    /// The topic's last known value.
    LastValue(Topic),
    /// Subscribe or move an area: its cells subscribed and read, then the
    /// ack and the snapshot (or difference) queued.
    SubscribeArea(Box<AreaCall>),
}

/// The arguments of [`Call::SubscribeArea`].
#[derive(Clone)]
pub struct AreaCall {
    /// The connection.
    pub conn: ConnId,
    /// Where its frames go.
    pub outbox: Arc<Outbox>,
    /// The client's name for the area.
    pub area: AreaId,
    /// Where.
    pub shape: Shape,
    /// Moves inside as datagrams.
    pub datagram: bool,
    /// The request's id, echoed in the ack.
    pub id: Option<String>,
}

impl std::fmt::Debug for AreaCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AreaCall")
            .field("conn", &self.conn)
            .field("area", &self.area)
            .field("shape", &self.shape)
            .finish()
    }
}

impl PartialEq for AreaCall {
    fn eq(&self, other: &Self) -> bool {
        self.conn == other.conn
            && self.area == other.area
            && self.shape == other.shape
            && self.datagram == other.datagram
            && self.id == other.id
    }
}

/// A finished [`Call`].
#[derive(Debug)]
pub enum Completion {
    /// The rate limiter's answer.
    Budget(Decision),
    /// Whether the bus now delivers the topic.
    Watch(Result<(), BusError>),
    /// The topic's last known value, if any.
    LastValue(Option<Update>),
    /// The area's subscription.
    Area(Result<Subscribed, AreaError>),
}

/// The engines behind [`Call`]s.
#[derive(Clone)]
pub struct Deps {
    /// Client message budgets.
    pub limiter: Arc<dyn RateLimiter>,
    /// Updates between publishers and instances.
    pub bus: Arc<dyn Bus>,
    /// Area subscriptions.
    pub areas: Arc<Areas>,
}

impl Deps {
    /// Starts a call; the future owns what it needs, so the transport can
    /// keep it beside its socket in one `select!`.
    pub fn start(&self, call: Call) -> BoxFuture<'static, Completion> {
        match call {
            Call::Budget(key) => {
                let limiter = Arc::clone(&self.limiter);
                Box::pin(async move { Completion::Budget(limiter.check(&key).await) })
            }
            Call::Watch(topic) => {
                let bus = Arc::clone(&self.bus);
                Box::pin(async move { Completion::Watch(bus.watch(&topic).await) })
            }
            Call::LastValue(topic) => {
                let bus = Arc::clone(&self.bus);
                Box::pin(async move { Completion::LastValue(bus.last_value(&topic).await) })
            }
            Call::SubscribeArea(c) => {
                let areas = Arc::clone(&self.areas);
                Box::pin(async move {
                    Completion::Area(areas.subscribe(c.conn, c.outbox, c.area, c.shape, c.datagram, c.id).await)
                })
            }
        }
    }
}

/// A client message waiting its turn.
#[derive(Debug)]
enum Item {
    Request(Request),
    /// Refused while decoding; still charged to the budget.
    Rejected(Rejection),
}

impl Item {
    fn request_type(&self) -> Option<&str> {
        match self {
            Self::Request(r) => Some(r.command.type_name()),
            Self::Rejected(r) => r.request_type.as_deref(),
        }
    }

    fn id(&self) -> Option<&str> {
        match self {
            Self::Request(r) => r.id.as_deref(),
            Self::Rejected(r) => r.id.as_deref(),
        }
    }
}

/// What the call in flight is for.
#[derive(Debug)]
enum Waiting {
    /// The budget check of this message.
    Budget(Item),
    /// The bus subscribe of a new subscription (already in the hub).
    Watch { topic: Topic, channel: Channel, vendor: VendorId, id: Option<String>, request_type: &'static str },
    /// The snapshot after a `subscribed` ack.
    LastValue(Topic),
    /// An area's subscription (the ack comes with its snapshot).
    Area { area: AreaId, shape: AreaShape, id: Option<String> },
}

/// Messages waiting behind the call in flight: 8 bytes on the many
/// connections that never pipeline requests (a `VecDeque` is 32 inline).
// A thin pointer on purpose, as `AreaSet`.
#[allow(clippy::box_collection)]
#[derive(Default)]
struct Queue(Option<Box<VecDeque<Item>>>);

impl Queue {
    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |q| q.len())
    }

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn push_back(&mut self, item: Item) {
        self.0.get_or_insert_default().push_back(item);
    }

    /// The oldest message; a queue that empties gives back its buffer (it
    /// would stay with every idle connection, a few hundred bytes each).
    fn pop_front(&mut self) -> Option<Item> {
        let item = self.0.as_mut()?.pop_front();
        if self.is_empty() {
            self.0 = None;
        }
        item
    }
}

/// A connection's area ids: 8 bytes on the many connections that hold
/// none, a short list (at most `GEO_MAX_AREAS`) on the others.
// A thin pointer on purpose: 8 bytes on every connection, where a `Vec`
// (24) or a boxed slice (16) would cost the many that hold no area.
#[allow(clippy::box_collection)]
#[derive(Debug, Default)]
struct AreaSet(Option<Box<Vec<AreaId>>>);

impl AreaSet {
    fn contains(&self, area: &AreaId) -> bool {
        self.0.as_ref().is_some_and(|v| v.contains(area))
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |v| v.len())
    }

    fn insert(&mut self, area: &AreaId) {
        if !self.contains(area) {
            self.0.get_or_insert_default().push(area.clone());
        }
    }

    fn remove(&mut self, area: &AreaId) -> bool {
        let Some(v) = self.0.as_mut() else { return false };
        let Some(i) = v.iter().position(|a| a == area) else { return false };
        v.swap_remove(i);
        if v.is_empty() {
            self.0 = None;
        }
        true
    }

    fn take(&mut self) -> Vec<AreaId> {
        self.0.take().map(|v| *v).unwrap_or_default()
    }
}

/// One connected client.
pub struct Session {
    id: ConnId,
    /// Globally unique (UUIDv7): the id in logs and the audit trail. `id`
    /// is the hub's compact per-process key and never leaves the process.
    uid: uuid::Uuid,
    ctx: Arc<SessionContext>,
    transport: Transport,
    /// The path's channel (`/ws/location`: location): the client's main
    /// interest, for metrics; every path accepts every message.
    endpoint: Channel,
    remote: SocketAddr,
    outbox: Arc<Outbox>,
    /// Only on transports with datagrams: on the others it would be one
    /// allocation per connection (72 bytes) that is never read.
    datagram_topics: Option<Arc<DatagramTopics>>,
    subscriptions: HashSet<Topic>,
    /// The areas subscribed (or being subscribed): a few at most
    /// (`GEO_MAX_AREAS`), and every idle connection carries the field.
    areas: AreaSet,
    /// The token's `sub` when auth is on: every `userId` must equal it.
    user: Option<UserId>,
    denied_in_a_row: u32,
    last_seen: Instant,
    next_ping: Instant,
    /// When the token stops being good (`exp` + leeway): the connection is
    /// closed with 4001 then, unless a `refresh` moved it.
    token_deadline: Option<Instant>,
    /// The audit trail's user: the token's `sub` when auth is on, else the
    /// last `userId` this connection subscribed with.
    audit_user: Option<UserId>,
    /// Time of the last audit row, so rows of one connection never tie.
    audit_clock: Option<OffsetDateTime>,
    /// Messages waiting behind the call in flight, in arrival order.
    queued: Queue,
    /// The call in flight, if any. Boxed: 104 bytes inline in every
    /// connection's future, used for a few milliseconds per request.
    waiting: Option<Box<Waiting>>,
    /// A call asked for and not yet taken by the transport.
    call: Option<Call>,
    finished: bool,
}

impl Session {
    /// Opens a session; returns it with the outbox its writer drains.
    /// `token` is the connect token's verdict (`None` while auth is off).
    pub fn open(
        ctx: Arc<SessionContext>,
        transport: Transport,
        endpoint: Channel,
        remote: SocketAddr,
        token: Option<Verified>,
        now: Instant,
    ) -> Self {
        let outbox = Arc::new(Outbox::new(transport.codec(), ctx.limits.outbox));
        let id = ctx.next_conn_id();
        let uid = uuid::Uuid::now_v7();
        let labels = [transport.as_str(), endpoint.as_str()];
        ctx.metrics.connections.with_label_values(&labels).inc();
        ctx.metrics.connections_total.with_label_values(&labels).inc();
        tracing::debug!(conn = %uid, %remote, transport = transport.as_str(), endpoint = endpoint.as_str(), "connected");
        let token_deadline = token.as_ref().map(|t| deadline_of(t.good_until, now));
        let user = token.map(|t| t.user);
        let next_ping = now + ctx.limits.heartbeat;
        let mut session = Self {
            id,
            uid,
            token_deadline,
            audit_user: user.clone(),
            user,
            ctx,
            transport,
            endpoint,
            remote,
            outbox,
            datagram_topics: transport.has_datagrams().then(Arc::default),
            subscriptions: HashSet::new(),
            areas: AreaSet::default(),
            denied_in_a_row: 0,
            last_seen: now,
            next_ping,
            audit_clock: None,
            queued: Queue::default(),
            waiting: None,
            call: None,
            finished: false,
        };
        session.audit(Action::Connect, None, None);
        session
    }

    /// The connection's id in the hub (per process).
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The connection's globally unique id (logs, audit trail).
    pub fn uid(&self) -> uuid::Uuid {
        self.uid
    }

    /// The queue the transport's writer drains.
    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    /// Location topics to deliver as datagrams (`None` on transports
    /// without datagrams).
    pub fn datagram_topics(&self) -> Option<&Arc<DatagramTopics>> {
        self.datagram_topics.as_ref()
    }

    fn set_datagram(&self, topic: &Topic, datagram: bool) {
        if let Some(topics) = &self.datagram_topics {
            topics.set(topic, datagram);
        }
    }

    /// Topics this session is subscribed to.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.len()
    }

    /// Areas this session holds.
    pub fn areas(&self) -> usize {
        self.areas.len()
    }

    /// Whether the transport may read another frame: false while
    /// [`MAX_QUEUED_REQUESTS`] messages wait behind a dependency call.
    pub fn can_read(&self) -> bool {
        self.queued.len() < MAX_QUEUED_REQUESTS
    }

    /// Whether every message received so far has been answered.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_none() && self.queued.is_empty() && self.call.is_none()
    }

    /// The next dependency call to make, if one is due; the transport runs
    /// it and returns its result to [`Session::on_completion`].
    pub fn next_call(&mut self) -> Option<Call> {
        self.call.take()
    }

    /// Handles one inbound event; `Some(close)` ends the connection.
    pub fn on_inbound(&mut self, inbound: Inbound<'_>, now: Instant) -> Option<Close> {
        self.last_seen = now;
        // A slow consumer's 1013 is pending while its writer is stuck on a
        // socket the client does not read: end it here, however much the
        // client keeps sending.
        if let Some(close) = self.outbox.pending_close() {
            return Some(close);
        }
        let item = match inbound {
            Inbound::Heartbeat => return None,
            Inbound::Binary => {
                self.count_in(Some("binary"));
                return self.reject(&Rejection::new(
                    ErrorCode::InvalidJson,
                    "binary frames are not supported; send JSON text",
                ));
            }
            Inbound::Text(bytes) => crate::protocol::decode_json(bytes),
            Inbound::MsgPack(bytes) => crate::protocol::decode_msgpack(bytes),
            Inbound::Oversized { len } => {
                self.count_in(None);
                let max = self.ctx.limits.max_message_bytes;
                let msg = format!("frame of {len} bytes exceeds WS_MAX_MESSAGE_BYTES ({max}); closing");
                self.reject(&Rejection::new(ErrorCode::MessageTooLarge, msg));
                return Some(Close::new(Close::TOO_BIG, "message too large (WS_MAX_MESSAGE_BYTES)"));
            }
            Inbound::Truncated => {
                self.count_in(None);
                self.reject(&Rejection::new(ErrorCode::InvalidFrame, "stream ended inside a frame; closing"));
                return Some(Close::new(Close::INVALID_PAYLOAD, "stream ended inside a frame"));
            }
        };
        let item = match item {
            Ok(req) => {
                self.count_in(Some(req.command.type_name()));
                // A pong is free and answers nothing: no budget, no queue.
                if matches!(req.command, Command::Pong) {
                    return None;
                }
                Item::Request(req)
            }
            Err(rej) => {
                self.count_in(rej.request_type.as_deref());
                Item::Rejected(rej)
            }
        };
        if self.waiting.is_none() && self.queued.is_empty() {
            // Nothing ahead of it: no queue (an idle connection then holds
            // no queue buffer at all).
            return self.start(item);
        }
        if self.queued.len() >= MAX_QUEUED_REQUESTS {
            // The transport stops reading at this depth; a frame past it
            // means a transport that ignored `can_read`.
            return Some(Close::new(Close::POLICY, "too many requests in flight"));
        }
        self.queued.push_back(item);
        self.advance()
    }

    /// Handles the result of the call from [`Session::next_call`].
    pub fn on_completion(&mut self, done: Completion, now: Instant) -> Option<Close> {
        let close = match (self.waiting.take().map(|w| *w), done) {
            (Some(Waiting::Budget(item)), Completion::Budget(decision)) => self.on_budget(item, decision, now),
            (Some(Waiting::Watch { topic, channel, vendor, id, request_type }), Completion::Watch(result)) => {
                self.on_watched(topic, channel, &vendor, id.as_deref(), request_type, result)
            }
            (Some(Waiting::LastValue(topic)), Completion::LastValue(last)) => {
                self.on_last_value(&topic, last.as_ref());
                None
            }
            (Some(Waiting::Area { area, shape, id }), Completion::Area(result)) => {
                self.on_area(area, &shape, id.as_deref(), result)
            }
            (waiting, done) => {
                // A transport bug; say so rather than guess.
                tracing::error!(conn = %self.uid, ?waiting, ?done, "session got a completion it did not ask for");
                return Some(Close::new(Close::INTERNAL, "internal error"));
            }
        };
        if close.is_some() {
            return close;
        }
        self.advance()
    }

    /// When [`Session::on_timer`] must next run.
    pub fn next_deadline(&self) -> Instant {
        let heartbeat = if self.transport.hears_client() {
            self.next_ping.min(self.last_seen + 2 * self.ctx.limits.heartbeat)
        } else {
            self.next_ping
        };
        self.token_deadline.map_or(heartbeat, |t| heartbeat.min(t))
    }

    /// Sends the heartbeat `ping` when due; closes a client silent for two
    /// intervals with 4000, and one whose token expired with 4001.
    pub fn on_timer(&mut self, now: Instant) -> Option<Close> {
        if let Some(close) = self.outbox.pending_close() {
            return Some(close);
        }
        if self.token_deadline.is_some_and(|t| now >= t) {
            tracing::debug!(conn = %self.uid, "token expired");
            return Some(Close::new(Close::TOKEN_EXPIRED, "token expired"));
        }
        let interval = self.ctx.limits.heartbeat;
        if !self.can_read() {
            // The transport is not reading because we are behind: the
            // client's silence is ours, not its.
            self.last_seen = now;
        }
        if self.transport.hears_client() && now >= self.last_seen + 2 * interval {
            tracing::debug!(conn = %self.uid, "heartbeat timeout");
            return Some(Close::new(Close::HEARTBEAT_TIMEOUT, "heartbeat timeout"));
        }
        if now >= self.next_ping {
            self.next_ping = now + interval;
            return self.send(&ServerMessage::Ping);
        }
        None
    }

    /// Releases every subscription; call once when the connection ends.
    /// `reason` goes into the audit trail: the close code and reason the
    /// server sent (`1001 server shutting down`), or `client closed`.
    pub fn finish(mut self, reason: &str) {
        self.release("disconnect");
        self.audit(Action::Disconnect, None, Some(reason));
        self.finished = true;
    }

    /// Gives back the hub and bus interest of every subscription, including
    /// one whose bus subscribe was in flight (its future was dropped).
    fn release(&mut self, why: &str) {
        if let Some(Waiting::Watch { topic, .. }) = self.waiting.as_deref() {
            self.ctx.hub.unsubscribe(topic, self.id);
            self.set_datagram(topic, false);
        }
        // An area whose subscribe was in flight never got its row.
        let pending = match self.waiting.take().map(|w| *w) {
            Some(Waiting::Area { area, .. }) => Some(area),
            _ => None,
        };
        let mut areas = self.areas.take();
        if !areas.is_empty() {
            self.ctx.areas.release(self.id);
            areas.sort();
            for area in areas.iter().filter(|a| Some(*a) != pending.as_ref()) {
                self.audit_area(Action::Unsubscribe, area, Some(why));
            }
        }
        let mut held: Vec<Topic> = std::mem::take(&mut self.subscriptions).into_iter().collect();
        held.sort();
        for topic in held {
            self.ctx.hub.unsubscribe(&topic, self.id);
            self.ctx.bus.unwatch(&topic);
            self.audit(Action::Unsubscribe, Some(&topic), Some(why));
        }
    }

    /// Starts the next queued message's budget check, unless a call is in
    /// flight.
    fn advance(&mut self) -> Option<Close> {
        if self.waiting.is_some() {
            return None;
        }
        let item = self.queued.pop_front()?;
        self.start(item)
    }

    /// The rate-limit key: the user, or this connection while auth is off.
    /// Made per request rather than kept: it is copied into every call
    /// anyway, and kept it was 48 bytes on every connection.
    fn budget_key(&self) -> String {
        match &self.user {
            Some(u) => format!("user:{u}"),
            // The UUIDv7 is unique across instances and restarts by itself.
            None => format!("conn:{}", self.uid.simple()),
        }
    }

    /// Asks for `item`'s budget check.
    fn start(&mut self, item: Item) -> Option<Close> {
        self.call = Some(Call::Budget(self.budget_key()));
        self.waiting = Some(Box::new(Waiting::Budget(item)));
        None
    }

    fn on_budget(&mut self, item: Item, decision: Decision, now: Instant) -> Option<Close> {
        match decision {
            Decision::Allow => {
                self.denied_in_a_row = 0;
                match item {
                    Item::Rejected(rej) => self.reject(&rej),
                    Item::Request(req) => self.on_request(req, now),
                }
            }
            Decision::Deny { retry_after } => {
                self.denied_in_a_row += 1;
                if self.denied_in_a_row > self.ctx.limits.rate_limit.saturating_mul(ABUSE_FACTOR) {
                    return Some(Close::new(Close::POLICY, "rate limit abuse"));
                }
                let retry_ms = u64::try_from(retry_after.as_millis()).unwrap_or(60_000).clamp(1, 60_000);
                self.ctx.metrics.errors.with_label_values(&[ErrorCode::RateLimited.as_str()]).inc();
                self.send(&ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    message: "too many messages; slow down",
                    request_type: item.request_type(),
                    retry_after_ms: Some(retry_ms),
                    id: item.id(),
                })
            }
        }
    }

    fn forbidden(&self, req: &Request) -> Option<Close> {
        self.reject(&Rejection {
            code: ErrorCode::Forbidden,
            message: "userId differs from the token's user".into(),
            request_type: Some(req.command.type_name().into()),
            id: req.id.clone(),
        })
    }

    /// Whether `user` may act on this connection (always while auth is off).
    fn acts_as_self(&self, user: Option<&UserId>) -> bool {
        match (&self.user, user) {
            (Some(sub), Some(user)) => sub == user,
            _ => true,
        }
    }

    fn on_request(&mut self, req: Request, now: Instant) -> Option<Close> {
        let id = req.id.as_deref();
        match &req.command {
            Command::Pong => None,
            Command::Ping => self.send(&ServerMessage::Pong { id }),
            Command::Refresh { token } => self.on_refresh(token, id, now),
            Command::Subscribe { user, .. } if !self.acts_as_self(Some(user)) => self.forbidden(&req),
            Command::Unsubscribe { user, .. } if !self.acts_as_self(user.as_ref()) => self.forbidden(&req),
            Command::Subscribe { channel, vendor, user, delivery } => {
                let topic = Topic::new(*channel, vendor.clone());
                self.audit_user = Some(user.clone());
                // Datagrams are for location updates (latest position wins);
                // a vendor subscription ignores the field. Set before the hub
                // routes anything, and again on a repeated subscribe, so the
                // latest request decides.
                let datagram =
                    self.transport.has_datagrams() && *channel == Channel::Location && *delivery == Delivery::Datagram;
                if self.subscriptions.contains(&topic) {
                    self.set_datagram(&topic, datagram);
                    return self.send(&ServerMessage::Subscribed { channel: *channel, vendor, id });
                }
                if self.subscriptions.len() >= self.ctx.limits.max_subscriptions {
                    let msg = format!("at most {} subscriptions per connection", self.ctx.limits.max_subscriptions);
                    return self.reject(&Rejection {
                        code: ErrorCode::TooManySubscriptions,
                        message: msg,
                        request_type: Some(req.command.type_name().into()),
                        id: req.id.clone(),
                    });
                }
                self.set_datagram(&topic, datagram);
                // Hub first, then the bus: an update that arrives while the
                // bus interest settles is already routed to us.
                self.outbox.arm_snapshot(&topic);
                self.ctx.hub.subscribe(&topic, self.id, &self.outbox);
                self.call = Some(Call::Watch(topic.clone()));
                self.waiting = Some(Box::new(Waiting::Watch {
                    topic,
                    channel: *channel,
                    vendor: vendor.clone(),
                    id: req.id.clone(),
                    request_type: req.command.type_name(),
                }));
                None
            }
            Command::SubscribeArea { user, .. } if !self.acts_as_self(Some(user)) => self.forbidden(&req),
            Command::SubscribeArea { area, user, shape, delivery } => {
                self.audit_user = Some(user.clone());
                let rejection = |code, message: String| Rejection {
                    code,
                    message,
                    request_type: Some("subscribe_area".into()),
                    id: req.id.clone(),
                };
                let geometry = crate::geo::shape_of(shape);
                match geometry.validate(self.ctx.limits.max_area_km) {
                    Ok(()) => {}
                    Err(ShapeError::Invalid { field, message }) => {
                        return self.reject(&rejection(ErrorCode::InvalidField, format!("data.{field}: {message}")));
                    }
                    Err(ShapeError::TooLarge { message }) => {
                        let msg = format!("{message} (GEO_MAX_AREA_KM); zoom in");
                        return self.reject(&rejection(ErrorCode::AreaTooLarge, msg));
                    }
                }
                if !self.areas.contains(area) && self.areas.len() >= self.ctx.limits.max_areas {
                    let msg = format!("at most {} areas per connection (GEO_MAX_AREAS)", self.ctx.limits.max_areas);
                    return self.reject(&rejection(ErrorCode::TooManySubscriptions, msg));
                }
                self.areas.insert(area);
                self.call = Some(Call::SubscribeArea(Box::new(AreaCall {
                    conn: self.id,
                    outbox: Arc::clone(&self.outbox),
                    area: area.clone(),
                    shape: geometry,
                    datagram: self.transport.has_datagrams() && *delivery == Delivery::Datagram,
                    id: req.id.clone(),
                })));
                self.waiting = Some(Box::new(Waiting::Area { area: area.clone(), shape: *shape, id: req.id.clone() }));
                None
            }
            Command::UnsubscribeArea { area } => {
                if self.areas.remove(area) {
                    self.ctx.areas.unsubscribe(self.id, area);
                    self.audit_area(Action::Unsubscribe, area, None);
                }
                self.send(&ServerMessage::AreaUnsubscribed { area, id })
            }
            Command::Unsubscribe { channel, vendor, .. } => {
                let topic = Topic::new(*channel, vendor.clone());
                self.set_datagram(&topic, false);
                if self.subscriptions.remove(&topic) {
                    self.ctx.hub.unsubscribe(&topic, self.id);
                    self.ctx.bus.unwatch(&topic);
                    self.audit(Action::Unsubscribe, Some(&topic), None);
                }
                self.send(&ServerMessage::Unsubscribed { channel: *channel, vendor, id })
            }
        }
    }

    fn on_watched(
        &mut self,
        topic: Topic,
        channel: Channel,
        vendor: &VendorId,
        id: Option<&str>,
        request_type: &str,
        result: Result<(), BusError>,
    ) -> Option<Close> {
        if let Err(e) = result {
            self.set_datagram(&topic, false);
            self.ctx.hub.unsubscribe(&topic, self.id);
            self.ctx.bus.unwatch(&topic);
            self.outbox.push_snapshot(&topic, None);
            return self.reject(&Rejection {
                code: ErrorCode::Unavailable,
                message: e.to_string(),
                request_type: Some(request_type.into()),
                id: id.map(str::to_owned),
            });
        }
        self.subscriptions.insert(topic.clone());
        self.audit(Action::Subscribe, Some(&topic), None);
        let close = self.send(&ServerMessage::Subscribed { channel, vendor, id });
        // The last known value comes right after the ack, unless a live
        // update got there first.
        self.call = Some(Call::LastValue(topic.clone()));
        self.waiting = Some(Box::new(Waiting::LastValue(topic)));
        close
    }

    fn on_area(
        &mut self,
        area: AreaId,
        shape: &AreaShape,
        id: Option<&str>,
        result: Result<Subscribed, AreaError>,
    ) -> Option<Close> {
        match result {
            // The ack and the snapshot are queued already, in order.
            Ok(outcome) => {
                let detail = crate::geo::describe(shape);
                let what = if outcome == Subscribed::New { detail } else { format!("moved to {detail}") };
                self.audit_area(Action::Subscribe, &area, Some(&what));
                None
            }
            Err(e) => {
                // The area is gone on every failure; the client may retry.
                self.areas.remove(&area);
                let code = match &e {
                    AreaError::Shape(ShapeError::TooLarge { .. }) => ErrorCode::AreaTooLarge,
                    AreaError::Shape(ShapeError::Invalid { .. }) => ErrorCode::InvalidField,
                    AreaError::Bus(_) => ErrorCode::Unavailable,
                };
                self.reject(&Rejection {
                    code,
                    message: e.to_string(),
                    request_type: Some("subscribe_area".into()),
                    id: id.map(str::to_owned),
                })
            }
        }
    }

    fn on_last_value(&mut self, topic: &Topic, last: Option<&Update>) {
        let frame = last.map(|u| {
            let msg = ServerMessage::Snapshot(u);
            Frame {
                bytes: encode(&msg, self.outbox.codec()),
                ty: msg.type_name(),
                route: crate::hub::Route::Topic(topic.clone()),
                published_at: None,
            }
        });
        self.outbox.push_snapshot(topic, frame);
    }

    /// `refresh`: a valid token of the same user moves the 4001 deadline.
    fn on_refresh(&mut self, token: &str, id: Option<&str>, now: Instant) -> Option<Close> {
        let rejection = |code, message: String| Rejection {
            code,
            message,
            request_type: Some("refresh".into()),
            id: id.map(str::to_owned),
        };
        match self.ctx.auth.verify(Some(token)) {
            // Auth off: nothing expires; say so rather than fail a client
            // that refreshes by habit.
            Ok(None) => self.send(&ServerMessage::Refreshed { expires_at: None, id }),
            Ok(Some(v)) if self.user.as_ref() != Some(&v.user) => {
                self.reject(&rejection(ErrorCode::Forbidden, "the new token is for another user".into()))
            }
            Ok(Some(v)) => {
                self.token_deadline = Some(deadline_of(v.good_until, now));
                let expires = rfc3339_of(v.expires_at);
                self.send(&ServerMessage::Refreshed { expires_at: expires.as_deref(), id })
            }
            Err(e) => self.reject(&rejection(ErrorCode::Unauthorized, e.to_string())),
        }
    }

    fn reject(&self, rej: &Rejection) -> Option<Close> {
        self.ctx.metrics.errors.with_label_values(&[rej.code.as_str()]).inc();
        self.send(&ServerMessage::Error {
            code: rej.code,
            message: &rej.message,
            request_type: rej.request_type.as_deref(),
            retry_after_ms: None,
            id: rej.id.as_deref(),
        })
    }

    fn send(&self, msg: &ServerMessage<'_>) -> Option<Close> {
        let frame = Frame::control(encode(msg, self.outbox.codec()), msg.type_name());
        match self.outbox.push(frame) {
            Push::Queued | Push::Conflated | Push::Closed => None,
            Push::Overflow => {
                self.ctx.metrics.slow_consumers_closed.inc();
                None // The writer sends the pending 1013 close.
            }
        }
    }

    /// Hands one row to the audit trail; never waits (see [`crate::audit`]).
    fn audit(&mut self, action: Action, topic: Option<&Topic>, reason: Option<&str>) {
        self.audit_row(action, topic.map(|t| (t.channel.as_str(), t.vendor.as_str())), reason);
    }

    /// An area's row: channel `area`, the area id in the subscription
    /// column, the shape (or why it ended) as the reason.
    fn audit_area(&mut self, action: Action, area: &AreaId, reason: Option<&str>) {
        self.audit_row(action, Some(("area", area.as_str())), reason);
    }

    fn audit_row(&mut self, action: Action, subscription: Option<(&str, &str)>, reason: Option<&str>) {
        let time = crate::audit::next_time(self.audit_clock);
        self.audit_clock = Some(time);
        self.ctx.audit.record(AuditEvent {
            event_id: uuid::Uuid::now_v7(),
            time,
            instance_id: Arc::clone(self.ctx.audit.instance_id()),
            connection_id: self.uid,
            user_id: self.audit_user.as_ref().map(|u| u.as_str().to_owned()),
            transport: self.transport.as_str().to_owned(),
            channel: subscription.map(|(c, _)| c.to_owned()),
            vendor_id: subscription.map(|(_, v)| v.to_owned()),
            action,
            client_addr: Some(self.remote.to_string()),
            reason: reason.map(str::to_owned),
        });
    }

    fn count_in(&self, ty: Option<&str>) {
        self.ctx.metrics.message_in(self.transport.as_str(), type_label(ty));
    }
}

impl Drop for Session {
    /// A safety net: a session dropped without [`Session::finish`] (a
    /// panicking or cancelled transport task) still leaves no subscriber
    /// in the hub and no bus interest behind.
    fn drop(&mut self) {
        if !self.finished {
            self.release("dropped");
            self.audit(Action::Disconnect, None, Some("connection task ended"));
        }
        let labels = [self.transport.as_str(), self.endpoint.as_str()];
        self.ctx.metrics.connections.with_label_values(&labels).dec();
        tracing::debug!(conn = %self.uid, remote = %self.remote, "disconnected");
    }
}

/// The instant a Unix time (seconds) falls on, by the system clock now.
fn deadline_of(unix_secs: u64, now: Instant) -> Instant {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let left = Duration::from_secs(unix_secs).saturating_sub(since_epoch);
    now.checked_add(left).unwrap_or(now + Duration::from_secs(86_400 * 365))
}

/// A Unix time as RFC 3339 UTC, for `refreshed.expiresAt`.
fn rfc3339_of(unix_secs: u64) -> Option<String> {
    let t = OffsetDateTime::from_unix_timestamp(i64::try_from(unix_secs).ok()?).ok()?;
    t.format(&time::format_description::well_known::Rfc3339).ok()
}

#[cfg(test)]
mod tests;
