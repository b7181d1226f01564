//! WebSocket transport (axum): JSON text frames on `/ws/location` and
//! `/ws/vendor`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use crate::auth::{self, Verified};
use crate::hub::{Batch, Outbox};
use crate::protocol::{Close, ErrorCode};
use crate::ratelimit::Decision;
use crate::session::{Endpoint, Inbound, Session, Transport};
use crate::state::{Admission, Shared, UserAdmission};

/// Initial read buffer per connection. Client frames are small (a subscribe
/// is ~90 bytes; tungstenite grows the buffer for a larger frame, up to
/// `WS_MAX_MESSAGE_BYTES`); tungstenite's 128 KiB default, or even 1 KiB,
/// would be resident for every idle client.
const READ_BUFFER: usize = 256;
/// Bytes buffered by `feed` before tungstenite writes to the socket; a batch
/// of queued frames goes out in one write.
const WRITE_BUFFER: usize = 16 * 1024;
/// How long a closing connection may take to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What an upgrade request carries besides the socket.
pub struct Handshake {
    remote: SocketAddr,
    query: Option<String>,
    headers: HeaderMap,
}

/// `GET /ws/location`.
pub async fn location(
    state: State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    upgrade(state, Handshake { remote, query, headers }, ws, Endpoint::Location)
}

/// `GET /ws/vendor`.
pub async fn vendor(
    state: State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    upgrade(state, Handshake { remote, query, headers }, ws, Endpoint::Vendor)
}

fn refuse(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({"error": {"code": code, "message": message}}))).into_response()
}

fn upgrade(
    State(shared): State<Arc<Shared>>,
    hs: Handshake,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    endpoint: Endpoint,
) -> Response {
    let remote = hs.remote;
    let Ok(ws) = ws else {
        return (
            StatusCode::UPGRADE_REQUIRED,
            [(header::UPGRADE, "websocket"), (header::CONNECTION, "Upgrade")],
            "this endpoint speaks WebSocket: send an Upgrade request\n",
        )
            .into_response();
    };
    if shared.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let origin = hs.headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("(not ASCII)"));
    if !shared.origin_allowed(origin) {
        shared.metrics.connections_rejected.with_label_values(&["origin"]).inc();
        return refuse(StatusCode::FORBIDDEN, ErrorCode::Forbidden, "origin not in WS_ALLOWED_ORIGINS");
    }
    if let Some(limiter) = &shared.connect_limiter
        && let Decision::Deny { retry_after } = limiter.check_now(&remote.ip().to_string())
    {
        shared.metrics.connections_rejected.with_label_values(&["connect_rate"]).inc();
        let mut resp = refuse(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many connection attempts from this address",
        );
        // Whole seconds, rounded up: retrying at a rounded-down time is refused again.
        let secs = u64::try_from(retry_after.as_millis().div_ceil(1000)).unwrap_or(60).max(1);
        resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        return resp;
    }
    let authorization = hs.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = auth::token_from(hs.query.as_deref(), authorization);
    let user = match shared.auth.verify(token.as_deref()) {
        Ok(user) => user,
        Err(e) => {
            shared.metrics.connections_rejected.with_label_values(&["unauthorized"]).inc();
            return refuse(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, &e.to_string());
        }
    };
    let max = shared.config.max_message_bytes;
    let admission = shared.try_admit().map(|a| (a, user.as_ref().map(|u| shared.try_admit_user(&u.user))));
    let tracker = shared.tracker.clone();
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| {
            // Split here, not inside `serve`: a parameter of an async fn stays
            // in its future for the connection's lifetime (368 bytes here).
            let (sink, stream) = socket.split();
            tracker.track_future(serve((sink, stream), shared, endpoint, remote, user, admission))
        })
}

/// The instance-wide slot, and the per-user slot when authenticated
/// (`Some(None)`: the user is at `WS_MAX_CONNECTIONS_PER_USER`).
type Admissions = Option<(Admission, Option<Option<UserAdmission>>)>;

async fn serve(
    (mut sink, stream): (SplitSink<WebSocket, Message>, SplitStream<WebSocket>),
    shared: Arc<Shared>,
    endpoint: Endpoint,
    remote: SocketAddr,
    user: Option<Verified>,
    admission: Admissions,
) {
    let refusal = match &admission {
        None => Some((
            "max_connections",
            Close::new(Close::TRY_AGAIN_LATER, "server at WS_MAX_CONNECTIONS; try again later"),
        )),
        Some((_, Some(None))) => {
            Some(("max_connections_per_user", Close::new(Close::POLICY, "too many connections for this user")))
        }
        Some(_) => None,
    };
    if let Some((reason, close)) = refusal {
        shared.metrics.connections_rejected.with_label_values(&[reason]).inc();
        let _ = sink.send(close_message(&close)).await;
        return;
    }
    let _admission = admission;
    let now = crate::transport::now();
    let mut session = Session::open(Arc::clone(&shared.sessions), Transport::WebSocket, endpoint, remote, user, now);
    let outbox = Arc::clone(session.outbox());
    let writer = write_loop(sink, &outbox, &shared);
    tokio::pin!(writer);
    let reader = read_loop(stream, &mut session, &shared);
    let reason = tokio::select! {
        sent = &mut writer => match sent {
            Some(close) => crate::transport::close_reason(&close),
            None => "connection lost".to_owned(),
        },
        end = reader => match end {
            ReadEnd::Close(close) => {
                let reason = crate::transport::close_reason(&close);
                outbox.close(close);
                let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
                reason
            }
            ReadEnd::ClientClosed(frame) => {
                // Complete the closing handshake (RFC 6455 §5.5.1): the
                // writer flushes the echo of the client's code that
                // tungstenite queued; browsers then see a clean close.
                let close = Close { code: frame.unwrap_or(Close::NORMAL), reason: "".into() };
                outbox.close_discarding(close);
                let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
                "client closed".to_owned()
            }
            ReadEnd::ClientGone => "client closed".to_owned(),
            ReadEnd::Lost => "connection lost".to_owned(),
        }
    };
    session.finish(&reason);
}

/// How the read side ended.
enum ReadEnd {
    /// The session (or shutdown) closes the connection with this.
    Close(Close),
    /// The client sent a Close frame, with this code (answered before the
    /// socket goes).
    ClientClosed(Option<u16>),
    /// The client ended the stream without a Close frame.
    ClientGone,
    /// The socket failed.
    Lost,
}

/// Reads client frames until the client leaves or the session decides to
/// close it. One `select!` over the socket, the session's timers, the
/// dependency call it asked for, and shutdown: none waits for another.
async fn read_loop(mut stream: SplitStream<WebSocket>, session: &mut Session, shared: &Shared) -> ReadEnd {
    use crate::transport::{completion, now, start_call};
    let mut pending: crate::transport::PendingCall = None;
    loop {
        start_call(&mut pending, session, &shared.deps);
        let deadline = tokio::time::Instant::from_std(session.next_deadline());
        let can_read = session.can_read();
        let close = tokio::select! {
            msg = stream.next(), if can_read => match msg {
                None => return ReadEnd::ClientGone,
                Some(Ok(Message::Close(frame))) => return ReadEnd::ClientClosed(frame.map(|f| f.code)),
                Some(Ok(Message::Text(text))) => session.on_inbound(Inbound::Text(text.as_bytes()), now()),
                Some(Ok(Message::Binary(_))) => session.on_inbound(Inbound::Binary, now()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => session.on_inbound(Inbound::Heartbeat, now()),
                Some(Err(e)) => return close_for_error(&e).map_or(ReadEnd::Lost, ReadEnd::Close),
            },
            done = completion(&mut pending) => session.on_completion(done, now()),
            () = tokio::time::sleep_until(deadline) => session.on_timer(now()),
            () = shared.shutdown.cancelled() => {
                return ReadEnd::Close(Close::new(Close::GOING_AWAY, "server shutting down"));
            }
        };
        if let Some(close) = close {
            return ReadEnd::Close(close);
        }
    }
}

/// Maps a read error to the close the protocol asks for; `None` when the
/// connection is simply gone.
fn close_for_error(err: &axum::Error) -> Option<Close> {
    use std::error::Error as _;
    let inner = err.source().and_then(|s| s.downcast_ref::<tungstenite::Error>());
    match inner {
        Some(tungstenite::Error::Capacity(_)) => {
            Some(Close::new(Close::TOO_BIG, "message too large (WS_MAX_MESSAGE_BYTES)"))
        }
        Some(tungstenite::Error::Utf8(_)) => Some(Close::new(Close::INVALID_PAYLOAD, "invalid UTF-8 in text frame")),
        _ => {
            tracing::debug!(error = %err, "websocket read error");
            None
        }
    }
}

/// Drains the outbox into the socket: every frame queued since the last
/// wake-up is fed, then flushed once, so a burst costs one write. Returns
/// the close it sent (e.g. 1013 for a slow consumer), `None` if the socket
/// failed first.
async fn write_loop(mut sink: SplitSink<WebSocket, Message>, outbox: &Outbox, shared: &Shared) -> Option<Close> {
    let transport = Transport::WebSocket.as_str();
    let mut batch = Batch::new();
    loop {
        outbox.ready().await;
        let close = outbox.take(&mut batch);
        for frame in &batch {
            // The hub only produces JSON from serde_json, so this check never
            // fails; it costs a scan of ~100 bytes, not an allocation.
            let Ok(text) = Utf8Bytes::try_from(frame.bytes.clone()) else { continue };
            if sink.feed(Message::Text(text)).await.is_err() {
                return None;
            }
            // Alongside the seed's app-level ping, a protocol-level one:
            // browsers answer it even when the page's JS is throttled.
            if frame.ty == "ping" && sink.feed(Message::Ping(bytes::Bytes::new())).await.is_err() {
                return None;
            }
        }
        if !batch.is_empty() {
            if sink.flush().await.is_err() {
                return None;
            }
            crate::transport::count_written(&batch, shared, transport);
            crate::transport::recycle(&mut batch);
        }
        if let Some(close) = close {
            // After the client's own Close, tungstenite refuses to send
            // another (it queued the echo itself); closing the sink flushes
            // that echo instead.
            if sink.send(close_message(&close)).await.is_err() {
                let _ = sink.close().await;
            }
            return Some(close);
        }
    }
}

fn close_message(close: &Close) -> Message {
    Message::Close(Some(CloseFrame { code: close.code, reason: Utf8Bytes::from(close.reason.as_ref()) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<A, B, C, D, E, G, F: std::future::Future>(_: impl FnOnce(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection holds one `serve` future: its size is most of
    /// a connection's memory after the socket's own buffers (2,016 bytes
    /// before the message handling was boxed and the socket split outside).
    #[test]
    fn connection_future_stays_small() {
        let size = future_size(serve);
        // 1,312 bytes, then +16 for the connection's UUIDv7 and +16 for its
        // token deadline (4001 at expiry): 1,416 in a debug build.
        assert!(size <= 1_440, "serve future grew to {size} bytes (was 1,416 in a debug build)");
    }
}
