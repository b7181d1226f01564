//! Server-Sent Events: `GET /sse/location`, `/sse/vendor`, `/sse/area`, for
//! clients behind proxies that pass neither UDP nor WebSocket upgrades.
//!
//! A thin edge like the others: the URL's ids become the same subscribe
//! requests a WebSocket client would send, fed to the same [`Session`]
//! (limits, rate limits, audit, metrics, shutdown), and the session's frames
//! become events: `event:` the message type, `data:` the WebSocket JSON
//! object, `id:` a resume id on updates ([`resume`]), the server `ping` a
//! comment line. The body is fed through a channel of one chunk: a reader
//! that stops reading stops the writer, the session's outbox fills and
//! conflates, and the slow-consumer close follows, as on a WebSocket; no
//! event ever waits in an unbounded body buffer.
//!
//! The event format is written here rather than with `axum::response::sse`:
//! a whole outbox batch becomes one chunk (one write), and the resume id
//! needs each update's timestamp, which axum's `Event` cannot see.

pub mod resume;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};

use crate::admission::{self, Admitted, Knock};
use crate::auth;
use crate::hub::{Batch, Frame, Outbox};
use crate::listener::ConnAbort;
use crate::protocol::{Channel, Close, ErrorCode};
use crate::session::{Inbound, Session, Transport};
use crate::state::Shared;
use resume::Seen;

/// How long a closing stream may take to flush its last events.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Chunks between the writer and hyper. One: the writer waits as soon as
/// the client (or its TCP window) does, and the outbox does the queueing.
const CHUNKS: usize = 1;
/// The longest `Last-Event-ID` looked at (a longer one is ignored).
const MAX_LAST_EVENT_ID: usize = 4096;

/// What a stream follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `location_updated` of the listed vendors.
    Location,
    /// `vendor_updated` of the listed vendors.
    Vendor,
    /// Everyone inside one area.
    Area,
}

impl Kind {
    fn endpoint(self) -> Channel {
        match self {
            Self::Location | Self::Area => Channel::Location,
            Self::Vendor => Channel::Vendor,
        }
    }
}

/// `GET /sse/location?vendorId=a,b`.
pub async fn location(
    state: State<Arc<Shared>>,
    remote: ConnectInfo<SocketAddr>,
    abort: Option<Extension<ConnAbort>>,
    req: Parts,
) -> Response {
    open(state, remote, abort, &req, Kind::Location)
}

/// `GET /sse/vendor?vendorId=a,b`.
pub async fn vendor(
    state: State<Arc<Shared>>,
    remote: ConnectInfo<SocketAddr>,
    abort: Option<Extension<ConnAbort>>,
    req: Parts,
) -> Response {
    open(state, remote, abort, &req, Kind::Vendor)
}

/// `GET /sse/area?areaId=a&bbox=s,w,n,e` (or `&lat=&long=&radiusM=`).
pub async fn area(
    state: State<Arc<Shared>>,
    remote: ConnectInfo<SocketAddr>,
    abort: Option<Extension<ConnAbort>>,
    req: Parts,
) -> Response {
    open(state, remote, abort, &req, Kind::Area)
}

/// A refusal with the JSON error body every HTTP refusal has.
fn bad_request(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// The query's parameters that matter, in order; repeated `vendorId`s add up.
#[derive(Debug, Default)]
struct Params {
    ids: Vec<String>,
    user: Option<String>,
    area: Option<String>,
    bbox: Option<String>,
    lat: Option<String>,
    long: Option<String>,
    radius: Option<String>,
    last_event_id: Option<String>,
}

impl Params {
    fn parse(uri: &Uri) -> Result<Self, String> {
        let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(uri).map_err(|e| e.body_text())?;
        let mut p = Self::default();
        for (k, v) in pairs {
            match k.as_str() {
                "vendorId" => p.ids.extend(v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned)),
                "userId" => p.user = Some(v),
                "areaId" => p.area = Some(v),
                "bbox" => p.bbox = Some(v),
                "lat" => p.lat = Some(v),
                "long" => p.long = Some(v),
                "radiusM" => p.radius = Some(v),
                "lastEventId" => p.last_event_id = Some(v),
                _ => {}
            }
        }
        Ok(p)
    }
}

/// The subscribe requests a stream stands for, as WebSocket JSON, and the
/// ids its resume id is about.
struct Plan {
    requests: Vec<Vec<u8>>,
    ids: Vec<String>,
}

fn number(name: &str, v: &str) -> Result<f64, String> {
    v.trim().parse::<f64>().map_err(|_| format!("{name} must be a number"))
}

/// Turns the query into requests, refusing what the session would refuse
/// anyway, so a bad URL is a 400 before the stream rather than an event.
fn plan(kind: Kind, p: &Params, user: &str, shared: &Shared) -> Result<Plan, (ErrorCode, String)> {
    let invalid = |m: String| (ErrorCode::InvalidField, m);
    let max = shared.config.limits.max_subscriptions;
    let (requests, ids) = match kind {
        Kind::Location | Kind::Vendor => {
            let mut ids: Vec<String> = Vec::with_capacity(p.ids.len().min(max));
            for id in &p.ids {
                if !ids.contains(id) {
                    if ids.len() == max {
                        let m = format!("at most {max} vendorIds per stream (WS_MAX_SUBSCRIPTIONS)");
                        return Err((ErrorCode::TooManySubscriptions, m));
                    }
                    ids.push(id.clone());
                }
            }
            if ids.is_empty() {
                return Err(invalid("vendorId: give one or more, comma-separated".into()));
            }
            let ty = if kind == Kind::Location { "subscribe_location" } else { "subscribe_vendor" };
            let requests =
                ids.iter().map(|v| serde_json::json!({"type": ty, "data": {"vendorId": v, "userId": user}})).collect();
            (requests, ids)
        }
        Kind::Area => {
            let area = p.area.as_deref().ok_or_else(|| invalid("areaId is required".into()))?;
            let shape = match (&p.bbox, &p.lat, &p.long, &p.radius) {
                (Some(b), None, None, None) => {
                    let parts: Vec<&str> = b.split(',').collect();
                    let [s, w, n, e] = parts[..] else {
                        return Err(invalid("bbox: south,west,north,east".into()));
                    };
                    serde_json::json!({"bbox": {"south": number("bbox.south", s).map_err(invalid)?,
                        "west": number("bbox.west", w).map_err(invalid)?, "north": number("bbox.north", n).map_err(invalid)?,
                        "east": number("bbox.east", e).map_err(invalid)?}})
                }
                (None, Some(lat), Some(long), Some(r)) => serde_json::json!({"circle": {
                    "center": {"lat": number("lat", lat).map_err(invalid)?, "long": number("long", long).map_err(invalid)?},
                    "radiusM": number("radiusM", r).map_err(invalid)?}}),
                _ => return Err(invalid("give bbox=south,west,north,east or lat=&long=&radiusM= (one shape)".into())),
            };
            let mut data = serde_json::json!({"areaId": area, "userId": user});
            if let (Some(d), Some(s)) = (data.as_object_mut(), shape.as_object()) {
                d.extend(s.clone());
            }
            (vec![serde_json::json!({"type": "subscribe_area", "data": data})], Vec::new())
        }
    };
    let mut bytes = Vec::with_capacity(requests.len());
    for req in requests {
        let raw = serde_json::to_vec(&req).map_err(|e| (ErrorCode::Internal, e.to_string()))?;
        // The protocol's own validation: the same ids and shapes a
        // WebSocket client may use, the same messages when not.
        let decoded = crate::protocol::decode_json(&raw).map_err(|rej| (rej.code, rej.message))?;
        if let crate::protocol::Command::SubscribeArea { shape, .. } = &decoded.command {
            let max_km = shared.config.geo.max_area_km;
            crate::geo::shape_of(shape).validate(max_km).map_err(|e| match e {
                crate::geo::ShapeError::TooLarge { message } => {
                    (ErrorCode::AreaTooLarge, format!("{message} (GEO_MAX_AREA_KM); zoom in"))
                }
                crate::geo::ShapeError::Invalid { field, message } => {
                    (ErrorCode::InvalidField, format!("{field}: {message}"))
                }
            })?;
        }
        bytes.push(raw);
    }
    Ok(Plan { requests: bytes, ids })
}

fn open(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    abort: Option<Extension<ConnAbort>>,
    req: &Parts,
    kind: Kind,
) -> Response {
    let (uri, headers) = (&req.uri, &req.headers);
    // On HTTP/2 a stalled stream is bounded by flow control and the
    // connection serves others; only an HTTP/1.1 connection is dropped.
    let abort = abort.filter(|_| req.version <= Version::HTTP_11).map(|Extension(a)| a);
    let origin = headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("(not ASCII)"));
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = auth::token_from(uri.query(), authorization);
    // The one gate, as for a WebSocket upgrade; capacity refusals too are
    // statuses here, since an EventSource has no close code to read.
    let admitted = match admission::admit(&shared, Knock { remote: remote.ip(), origin, token: token.as_deref() }) {
        Ok(a) => a,
        Err(refusal) => return super::ws::refuse(&refusal),
    };
    let params = match Params::parse(uri) {
        Ok(p) => p,
        Err(e) => return bad_request(StatusCode::BAD_REQUEST, ErrorCode::InvalidField, &e),
    };
    let sub = admitted.token.as_ref().map(|t| t.user.as_str().to_owned());
    let user = match (&sub, params.user.as_deref()) {
        (Some(sub), Some(given)) if sub != given => {
            return bad_request(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "userId differs from the token's user");
        }
        (Some(sub), _) => sub.clone(),
        (None, Some(given)) => given.to_owned(),
        (None, None) => {
            let m = "userId is required while auth is off (with a token it is the token's sub)";
            return bad_request(StatusCode::BAD_REQUEST, ErrorCode::InvalidField, m);
        }
    };
    let plan = match plan(kind, &params, &user, &shared) {
        Ok(p) => p,
        Err((code, message)) => return bad_request(StatusCode::BAD_REQUEST, code, &message),
    };
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(params.last_event_id.as_deref())
        .filter(|id| id.len() <= MAX_LAST_EVENT_ID);
    let seen = Seen::resume(&plan.ids, last_event_id);
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS);
    // Dropped with the body, i.e. once hyper has sent all of it (or the
    // client left): `serve` learns whether the stream really drained.
    let (body_alive, body_gone) = oneshot::channel::<()>();
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |chunk| {
        let _alive = &body_alive;
        Ok::<_, Infallible>(chunk)
    });
    let edge = Edge { tx, body_gone, abort };
    shared.tracker.spawn(serve(edge, Arc::clone(&shared), kind, remote, Box::new(admitted), plan, seen));
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx and friends buffer responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    // The gate let this origin in (WS_ALLOWED_ORIGINS); a page there may
    // read the stream.
    if let Some(o) = headers.get(header::ORIGIN) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
        h.insert(header::VARY, HeaderValue::from_static("origin"));
    }
    resp
}

/// The stream's end of the HTTP response.
struct Edge {
    /// Chunks to the body.
    tx: mpsc::Sender<Bytes>,
    /// Resolves when the body is gone.
    body_gone: oneshot::Receiver<()>,
    /// Drops the HTTP/1.1 connection.
    abort: Option<ConnAbort>,
}

async fn serve(
    Edge { tx, body_gone, abort }: Edge,
    shared: Arc<Shared>,
    kind: Kind,
    remote: SocketAddr,
    admitted: Box<Admitted>,
    plan: Plan,
    seen: Seen,
) {
    let Admitted { token, slots: _slots } = *admitted;
    let Plan { requests, ids } = plan;
    let now = crate::transport::now();
    let mut session = Session::open(Arc::clone(&shared.sessions), Transport::Sse, kind.endpoint(), remote, token, now);
    let outbox = Arc::clone(session.outbox());
    let reason = {
        let writer = write_loop(tx.clone(), &outbox, &shared, Resume { channel: kind.endpoint(), ids, seen });
        tokio::pin!(writer);
        let driver = drive(&mut session, requests, &tx, &shared);
        tokio::select! {
            sent = &mut writer => match sent {
                Some(close) => crate::transport::close_reason(&close),
                None => "client closed".to_owned(),
            },
            end = driver => match end {
                DriveEnd::Close(close) => {
                    let reason = crate::transport::close_reason(&close);
                    outbox.close(close);
                    let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
                    reason
                }
                DriveEnd::ClientGone => "client closed".to_owned(),
            }
        }
    };
    session.finish(&reason);
    // The body ends once hyper has written what it holds. A client that
    // stopped reading never lets it: its connection is dropped, as a
    // WebSocket's socket is when its session ends.
    drop(tx);
    if tokio::time::timeout(CLOSE_GRACE, body_gone).await.is_err()
        && let Some(abort) = abort
    {
        abort.abort();
    }
}

enum DriveEnd {
    /// The session (or shutdown) ends the stream with this.
    Close(Close),
    /// The client went away (hyper dropped the body).
    ClientGone,
}

/// Feeds the URL's requests to the session, then runs its calls and timers
/// until it, shutdown or the client ends the stream.
async fn drive(session: &mut Session, requests: Vec<Vec<u8>>, tx: &mpsc::Sender<Bytes>, shared: &Shared) -> DriveEnd {
    use crate::transport::{completion, now, start_call};
    let mut pending: crate::transport::PendingCall = None;
    let mut requests = requests.into_iter();
    loop {
        while session.can_read() {
            let Some(req) = requests.next() else { break };
            if let Some(close) = session.on_inbound(Inbound::Text(&req), now()) {
                return DriveEnd::Close(close);
            }
        }
        start_call(&mut pending, session, &shared.deps);
        let deadline = tokio::time::Instant::from_std(session.next_deadline());
        let close = tokio::select! {
            done = completion(&mut pending) => session.on_completion(done, now()),
            () = tokio::time::sleep_until(deadline) => session.on_timer(now()),
            () = shared.shutdown.cancelled() => {
                return DriveEnd::Close(Close::new(Close::GOING_AWAY, "server shutting down"));
            }
            () = tx.closed() => return DriveEnd::ClientGone,
        };
        if let Some(close) = close {
            return DriveEnd::Close(close);
        }
    }
}

/// What the writer needs for resume ids.
struct Resume {
    channel: Channel,
    ids: Vec<String>,
    seen: Seen,
}

impl Resume {
    /// Whether to send `frame`, and the id to send with it: updates carry
    /// one; a snapshot the client has already seen (same timestamp) is
    /// skipped.
    fn judge(&mut self, frame: &Frame) -> Option<Option<String>> {
        let Some(topic) = frame.topic().filter(|t| t.channel == self.channel) else { return Some(None) };
        let Some(i) = self.ids.iter().position(|v| v == topic.vendor.as_str()) else { return Some(None) };
        let Some(ts) = timestamp_of(&frame.bytes) else { return Some(None) };
        let snapshot = frame.published_at.is_none();
        if snapshot && self.seen.get(i) == Some(ts) {
            return None;
        }
        self.seen.set(i, ts);
        Some(Some(self.seen.encode()))
    }
}

/// An update's `data.timestamp`, as Unix nanoseconds.
fn timestamp_of(json: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Message<'a> {
        #[serde(borrow)]
        data: Option<Stamp<'a>>,
    }
    #[derive(serde::Deserialize)]
    struct Stamp<'a> {
        #[serde(borrow)]
        timestamp: Option<std::borrow::Cow<'a, str>>,
    }
    let msg: Message<'_> = serde_json::from_slice(json).ok()?;
    crate::geo::ts_of(&msg.data?.timestamp?)
}

/// One event: `event:`, `id:` when given, `data:` (one line: the gateway's
/// JSON never holds a raw newline).
fn put_event(out: &mut BytesMut, ty: &str, id: Option<&str>, data: &[u8]) {
    out.put_slice(b"event: ");
    out.put_slice(ty.as_bytes());
    if let Some(id) = id {
        out.put_slice(b"\nid: ");
        out.put_slice(id.as_bytes());
    }
    out.put_slice(b"\ndata: ");
    out.put_slice(data);
    out.put_slice(b"\n\n");
}

/// Drains the outbox into the body: every frame queued since the last
/// wake-up becomes one chunk. Returns the close it sent, `None` if the
/// client went first.
async fn write_loop(tx: mpsc::Sender<Bytes>, outbox: &Outbox, shared: &Shared, mut resume: Resume) -> Option<Close> {
    let transport = Transport::Sse.as_str();
    let mut batch = Batch::new();
    // A first line at once: the client (and any proxy) sees the stream is
    // live before the first update.
    if tx.send(Bytes::from_static(b": venta-gateway\n\n")).await.is_err() {
        return None;
    }
    loop {
        outbox.ready().await;
        let close = outbox.take(&mut batch);
        let mut chunk = BytesMut::new();
        for frame in &batch {
            match frame.ty {
                "ping" => chunk.put_slice(b": ping\n\n"),
                "pong" => {}
                ty => {
                    if let Some(id) = resume.judge(frame) {
                        put_event(&mut chunk, ty, id.as_deref(), &frame.bytes);
                    }
                }
            }
        }
        if let Some(close) = &close {
            let data = serde_json::json!({"type": "close", "code": close.code, "reason": close.reason});
            put_event(&mut chunk, "close", None, data.to_string().as_bytes());
        }
        if !chunk.is_empty() && tx.send(chunk.freeze()).await.is_err() {
            return None;
        }
        if !batch.is_empty() {
            crate::transport::count_written(&batch, shared, transport);
            crate::transport::recycle(&mut batch);
        }
        if close.is_some() {
            return close;
        }
    }
}
