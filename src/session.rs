//! One client's state machine, written once and driven by every transport.
//!
//! The transport feeds it frames and timer ticks; the session answers by
//! pushing frames into the connection's [`Outbox`] and, when the connection
//! must end, by returning a [`Close`]. It knows nothing of sockets.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use time::OffsetDateTime;

use crate::audit::{Action, AuditEvent};
use crate::auth::Verified;
use crate::hub::{ConnId, Frame, Outbox, OutboxLimits, Push};
use crate::protocol::{
    Channel, Close, Codec, Command, Delivery, ErrorCode, Rejection, Request, ServerMessage, Topic, UserId, encode,
    type_label,
};
use crate::ratelimit::Decision;
use crate::state::Shared;

/// The path a client connected on; it names its main interest only, both
/// accept every message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/ws/location`, `/wt/location`.
    Location,
    /// `/ws/vendor`, `/wt/vendor`.
    Vendor,
}

impl Endpoint {
    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Location => "location",
            Self::Vendor => "vendor",
        }
    }
}

/// How the client is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket, JSON text frames.
    WebSocket,
    /// WebTransport, length-prefixed MessagePack frames on one stream, plus
    /// datagrams for location subscriptions that ask for them.
    WebTransport,
}

impl Transport {
    /// Every transport, for metrics and status.
    pub const ALL: [Transport; 2] = [Self::WebSocket, Self::WebTransport];

    /// Metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::WebTransport => "webtransport",
        }
    }

    fn codec(self) -> Codec {
        match self {
            Self::WebSocket => Codec::Json,
            Self::WebTransport => Codec::MsgPack,
        }
    }

    fn has_datagrams(self) -> bool {
        matches!(self, Self::WebTransport)
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

/// One connected client.
pub struct Session {
    id: ConnId,
    /// Globally unique (UUIDv7): the id in logs and the audit trail. `id`
    /// is the hub's compact per-process key and never leaves the process.
    uid: uuid::Uuid,
    shared: Arc<Shared>,
    transport: Transport,
    endpoint: Endpoint,
    remote: SocketAddr,
    outbox: Arc<Outbox>,
    datagram_topics: Arc<DatagramTopics>,
    subscriptions: HashSet<Topic>,
    /// The token's `sub` when auth is on: every `userId` must equal it.
    user: Option<UserId>,
    /// Rate-limit key: the user, or this connection while auth is off.
    budget_key: String,
    denied_in_a_row: u32,
    last_seen: Instant,
    next_ping: Instant,
    interval: Duration,
    /// When the token stops being good (`exp` + leeway): the connection is
    /// closed with 4001 then, unless a `refresh` moved it.
    token_deadline: Option<Instant>,
    /// The audit trail's user: the token's `sub` when auth is on, else the
    /// last `userId` this connection subscribed with.
    audit_user: Option<UserId>,
    /// Time of the last audit row, so rows of one connection never tie.
    audit_clock: Option<OffsetDateTime>,
}

impl Session {
    /// Opens a session; returns it with the outbox its writer drains.
    /// `token` is the connect token's verdict (`None` while auth is off).
    pub fn open(
        shared: Arc<Shared>,
        transport: Transport,
        endpoint: Endpoint,
        remote: SocketAddr,
        token: Option<Verified>,
    ) -> Self {
        let limits =
            OutboxLimits { max_messages: shared.config.max_queue_messages, max_bytes: shared.config.max_queue_bytes };
        let outbox = Arc::new(Outbox::new(transport.codec(), limits));
        let interval = shared.config.heartbeat_interval();
        let now = Instant::now();
        let id = shared.next_conn_id();
        let uid = uuid::Uuid::now_v7();
        let labels = [transport.as_str(), endpoint.as_str()];
        shared.metrics.connections.with_label_values(&labels).inc();
        shared.metrics.connections_total.with_label_values(&labels).inc();
        tracing::debug!(conn = %uid, %remote, transport = transport.as_str(), endpoint = endpoint.as_str(), "connected");
        let token_deadline = token.as_ref().map(|t| deadline_of(t.good_until, now));
        let user = token.map(|t| t.user);
        let budget_key = match &user {
            Some(u) => format!("user:{u}"),
            None => format!("conn:{}:{id}", shared.instance_id),
        };
        let mut session = Self {
            id,
            uid,
            token_deadline,
            audit_user: user.clone(),
            user,
            budget_key,
            shared,
            transport,
            endpoint,
            remote,
            outbox,
            datagram_topics: Arc::default(),
            subscriptions: HashSet::new(),
            denied_in_a_row: 0,
            last_seen: now,
            next_ping: now + interval,
            interval,
            audit_clock: None,
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

    /// Location topics to deliver as datagrams (always empty on transports
    /// without datagrams).
    pub fn datagram_topics(&self) -> &Arc<DatagramTopics> {
        &self.datagram_topics
    }

    /// Topics this session is subscribed to.
    pub fn subscriptions(&self) -> usize {
        self.subscriptions.len()
    }

    /// Handles one inbound event; `Some(close)` ends the connection.
    pub async fn on_inbound(&mut self, inbound: Inbound<'_>) -> Option<Close> {
        self.last_seen = Instant::now();
        // A slow consumer's 1013 is pending while its writer is stuck on a
        // socket the client does not read: end it here, however much the
        // client keeps sending.
        if let Some(close) = self.outbox.pending_close() {
            return Some(close);
        }
        match inbound {
            Inbound::Heartbeat => None,
            Inbound::Binary => {
                self.count_in(Some("binary"));
                self.reject(&Rejection::new(ErrorCode::InvalidJson, "binary frames are not supported; send JSON text"))
            }
            Inbound::Text(bytes) => self.on_decoded(crate::protocol::decode_json(bytes)).await,
            Inbound::MsgPack(bytes) => self.on_decoded(crate::protocol::decode_msgpack(bytes)).await,
            Inbound::Oversized { len } => {
                self.count_in(None);
                let max = self.shared.config.max_message_bytes;
                let msg = format!("frame of {len} bytes exceeds WS_MAX_MESSAGE_BYTES ({max}); closing");
                self.reject(&Rejection::new(ErrorCode::MessageTooLarge, msg));
                Some(Close::new(Close::TOO_BIG, "message too large (WS_MAX_MESSAGE_BYTES)"))
            }
            Inbound::Truncated => {
                self.count_in(None);
                self.reject(&Rejection::new(ErrorCode::InvalidFrame, "stream ended inside a frame; closing"));
                Some(Close::new(Close::INVALID_PAYLOAD, "stream ended inside a frame"))
            }
        }
    }

    async fn on_decoded(&mut self, decoded: Result<Request, Rejection>) -> Option<Close> {
        match decoded {
            Ok(req) => {
                self.count_in(Some(req.command.type_name()));
                self.on_request(req).await
            }
            Err(rej) => {
                self.count_in(rej.request_type.as_deref());
                if let Some(close) = self.spend_budget(rej.request_type.as_deref(), rej.id.as_deref()).await {
                    return close;
                }
                self.reject(&rej)
            }
        }
    }

    /// When [`Session::on_timer`] must next run.
    pub fn next_deadline(&self) -> Instant {
        let heartbeat = self.next_ping.min(self.last_seen + 2 * self.interval);
        self.token_deadline.map_or(heartbeat, |t| heartbeat.min(t))
    }

    /// Sends the heartbeat `ping` when due; closes a client silent for two
    /// intervals with 4000.
    pub fn on_timer(&mut self, now: Instant) -> Option<Close> {
        if let Some(close) = self.outbox.pending_close() {
            return Some(close);
        }
        if self.token_deadline.is_some_and(|t| now >= t) {
            tracing::debug!(conn = %self.uid, "token expired");
            return Some(Close::new(Close::TOKEN_EXPIRED, "token expired"));
        }
        if now >= self.last_seen + 2 * self.interval {
            tracing::debug!(conn = %self.uid, "heartbeat timeout");
            return Some(Close::new(Close::HEARTBEAT_TIMEOUT, "heartbeat timeout"));
        }
        if now >= self.next_ping {
            self.next_ping = now + self.interval;
            return self.send(&ServerMessage::Ping);
        }
        None
    }

    /// Releases every subscription; call once when the connection ends.
    /// `reason` goes into the audit trail: the close code and reason the
    /// server sent (`1001 server shutting down`), or `client closed`.
    pub fn finish(mut self, reason: &str) {
        let mut held: Vec<Topic> = std::mem::take(&mut self.subscriptions).into_iter().collect();
        held.sort();
        for topic in held {
            self.shared.hub.unsubscribe(&topic, self.id);
            self.shared.bus.unwatch(&topic);
            self.audit(Action::Unsubscribe, Some(&topic), Some("disconnect"));
        }
        self.audit(Action::Disconnect, None, Some(reason));
        let labels = [self.transport.as_str(), self.endpoint.as_str()];
        self.shared.metrics.connections.with_label_values(&labels).dec();
        tracing::debug!(conn = %self.uid, remote = %self.remote, "disconnected");
    }

    async fn on_request(&mut self, req: Request) -> Option<Close> {
        let id = req.id.as_deref();
        if !matches!(req.command, Command::Pong)
            && let Some(close) = self.spend_budget(Some(req.command.type_name()), id).await
        {
            return close;
        }
        match &req.command {
            Command::Pong => None,
            Command::Ping => self.send(&ServerMessage::Pong { id }),
            Command::Refresh { token } => self.on_refresh(token, id),
            Command::Subscribe { channel, vendor, user, delivery } => {
                if let Some(sub) = &self.user
                    && sub != user
                {
                    return self.reject(&Rejection {
                        code: ErrorCode::Forbidden,
                        message: "userId differs from the token's user".into(),
                        request_type: Some(req.command.type_name().into()),
                        id: req.id.clone(),
                    });
                }
                let topic = Topic::new(*channel, vendor.clone());
                self.audit_user = Some(user.clone());
                // Datagrams are for location updates (latest position wins);
                // a vendor subscription ignores the field. Set before the hub
                // routes anything, and again on a repeated subscribe, so the
                // latest request decides.
                let datagram =
                    self.transport.has_datagrams() && *channel == Channel::Location && *delivery == Delivery::Datagram;
                if !self.subscriptions.contains(&topic) {
                    if self.subscriptions.len() >= self.shared.config.max_subscriptions {
                        let msg =
                            format!("at most {} subscriptions per connection", self.shared.config.max_subscriptions);
                        return self.reject(&Rejection {
                            code: ErrorCode::TooManySubscriptions,
                            message: msg,
                            request_type: Some(req.command.type_name().into()),
                            id: req.id.clone(),
                        });
                    }
                    self.datagram_topics.set(&topic, datagram);
                    // Hub first, then the bus: an update that arrives while
                    // the bus interest settles is already routed to us.
                    self.outbox.arm_snapshot(&topic);
                    self.shared.hub.subscribe(&topic, self.id, &self.outbox);
                    if let Err(e) = self.shared.bus.watch(&topic).await {
                        self.datagram_topics.set(&topic, false);
                        self.shared.hub.unsubscribe(&topic, self.id);
                        self.shared.bus.unwatch(&topic);
                        self.outbox.push_snapshot(&topic, None);
                        return self.reject(&Rejection {
                            code: ErrorCode::Unavailable,
                            message: e.to_string(),
                            request_type: Some(req.command.type_name().into()),
                            id: req.id.clone(),
                        });
                    }
                    self.subscriptions.insert(topic.clone());
                    self.audit(Action::Subscribe, Some(&topic), None);
                    let close = self.send(&ServerMessage::Subscribed { channel: *channel, vendor, id });
                    // The last known value comes right after the ack, unless
                    // a live update got there first.
                    let last = self.shared.bus.last_value(&topic).await;
                    let frame = last.as_ref().map(|u| {
                        let msg = ServerMessage::Snapshot(u);
                        Frame {
                            bytes: encode(&msg, self.outbox.codec()),
                            ty: msg.type_name(),
                            topic: Some(topic.clone()),
                            published_at: None,
                        }
                    });
                    self.outbox.push_snapshot(&topic, frame);
                    return close;
                }
                self.datagram_topics.set(&topic, datagram);
                self.send(&ServerMessage::Subscribed { channel: *channel, vendor, id })
            }
            Command::Unsubscribe { channel, vendor, user } => {
                if let (Some(sub), Some(user)) = (&self.user, user)
                    && sub != user
                {
                    return self.reject(&Rejection {
                        code: ErrorCode::Forbidden,
                        message: "userId differs from the token's user".into(),
                        request_type: Some(req.command.type_name().into()),
                        id: req.id.clone(),
                    });
                }
                let topic = Topic::new(*channel, vendor.clone());
                self.datagram_topics.set(&topic, false);
                if self.subscriptions.remove(&topic) {
                    self.shared.hub.unsubscribe(&topic, self.id);
                    self.shared.bus.unwatch(&topic);
                    self.audit(Action::Unsubscribe, Some(&topic), None);
                }
                self.send(&ServerMessage::Unsubscribed { channel: *channel, vendor, id })
            }
        }
    }

    /// `refresh`: a valid token of the same user moves the 4001 deadline.
    fn on_refresh(&mut self, token: &str, id: Option<&str>) -> Option<Close> {
        let rejection = |code, message: String| Rejection {
            code,
            message,
            request_type: Some("refresh".into()),
            id: id.map(str::to_owned),
        };
        match self.shared.auth.verify(Some(token)) {
            // Auth off: nothing expires; say so rather than fail a client
            // that refreshes by habit.
            Ok(None) => self.send(&ServerMessage::Refreshed { expires_at: None, id }),
            Ok(Some(v)) if self.user.as_ref() != Some(&v.user) => {
                self.reject(&rejection(ErrorCode::Forbidden, "the new token is for another user".into()))
            }
            Ok(Some(v)) => {
                self.token_deadline = Some(deadline_of(v.good_until, Instant::now()));
                let expires = rfc3339_of(v.expires_at);
                self.send(&ServerMessage::Refreshed { expires_at: expires.as_deref(), id })
            }
            Err(e) => self.reject(&rejection(ErrorCode::Unauthorized, e.to_string())),
        }
    }

    /// Charges one message to the rate budget. `Some(..)` means it was
    /// refused: `Some(None)` after an error reply, `Some(Some(close))` when
    /// the client is far over the limit and must go.
    #[allow(clippy::option_option)]
    async fn spend_budget(&mut self, request_type: Option<&str>, id: Option<&str>) -> Option<Option<Close>> {
        match self.shared.limiter.check(&self.budget_key).await {
            Decision::Allow => {
                self.denied_in_a_row = 0;
                None
            }
            Decision::Deny { retry_after } => {
                self.denied_in_a_row += 1;
                if self.denied_in_a_row > self.shared.config.rate_limit.saturating_mul(ABUSE_FACTOR) {
                    return Some(Some(Close::new(Close::POLICY, "rate limit abuse")));
                }
                let retry_ms = u64::try_from(retry_after.as_millis()).unwrap_or(60_000).clamp(1, 60_000);
                self.shared.metrics.errors.with_label_values(&[ErrorCode::RateLimited.as_str()]).inc();
                Some(self.send(&ServerMessage::Error {
                    code: ErrorCode::RateLimited,
                    message: "too many messages; slow down",
                    request_type,
                    retry_after_ms: Some(retry_ms),
                    id,
                }))
            }
        }
    }

    fn reject(&self, rej: &Rejection) -> Option<Close> {
        self.shared.metrics.errors.with_label_values(&[rej.code.as_str()]).inc();
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
                self.shared.metrics.slow_consumers_closed.inc();
                None // The writer sends the pending 1013 close.
            }
        }
    }

    /// Hands one row to the audit trail; never waits (see [`crate::audit`]).
    fn audit(&mut self, action: Action, topic: Option<&Topic>, reason: Option<&str>) {
        let time = crate::audit::next_time(self.audit_clock);
        self.audit_clock = Some(time);
        self.shared.audit.record(AuditEvent {
            event_id: uuid::Uuid::now_v7(),
            time,
            instance_id: std::sync::Arc::clone(self.shared.audit.instance_id()),
            connection_id: self.uid,
            user_id: self.audit_user.as_ref().map(|u| u.as_str().to_owned()),
            transport: self.transport.as_str().to_owned(),
            channel: topic.map(|t| t.channel.as_str().to_owned()),
            vendor_id: topic.map(|t| t.vendor.as_str().to_owned()),
            action,
            client_addr: Some(self.remote.to_string()),
            reason: reason.map(str::to_owned),
        });
    }

    fn count_in(&self, ty: Option<&str>) {
        self.shared.metrics.message_in(self.transport.as_str(), type_label(ty));
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
