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

use crate::admission::{self, Admitted, Knock, Refusal};
use crate::auth;
use crate::hub::{Batch, Outbox};
use crate::protocol::Channel;
use crate::protocol::Close;
use crate::session::{Inbound, Session, Transport};
use crate::state::Shared;
use crate::transport::Finished;

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
    upgrade(state, Handshake { remote, query, headers }, ws, Channel::Location)
}

/// `GET /ws/vendor`.
pub async fn vendor(
    state: State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    upgrade(state, Handshake { remote, query, headers }, ws, Channel::Vendor)
}

/// An HTTP refusal: status, the JSON error body, `Retry-After` when known
/// (also SSE's, so both refuse alike).
pub(crate) fn refuse(refusal: &Refusal) -> Response {
    let body = serde_json::json!({"error": {"code": refusal.code(), "message": refusal.message()}});
    let mut resp = (refusal.status(), axum::Json(body)).into_response();
    if let Some(secs) = refusal.retry_after_secs() {
        resp.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    resp
}

fn upgrade(
    State(shared): State<Arc<Shared>>,
    hs: Handshake,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    endpoint: Channel,
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
    let origin = hs.headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("(not ASCII)"));
    let authorization = hs.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let token = auth::token_from(hs.query.as_deref(), authorization);
    let verdict = admission::admit(&shared, Knock { remote: remote.ip(), origin, token: token.as_deref() });
    if let Err(refusal) = &verdict
        && !refusal.after_handshake()
    {
        return refuse(refusal);
    }
    let max = shared.config.limits.max_message_bytes;
    let tracker = shared.tracker.clone();
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| {
            // Split here, not inside `serve`: a parameter of an async fn stays
            // in its future for the connection's lifetime (368 bytes here).
            let (sink, stream) = socket.split();
            // Boxed: the verdict is read once, and an async fn's parameter
            // would otherwise occupy the connection's future for good.
            tracker.track_future(serve((sink, stream), shared, endpoint, remote, Box::new(verdict)))
        })
}

async fn serve(
    (mut sink, stream): (SplitSink<WebSocket, Message>, SplitStream<WebSocket>),
    shared: Arc<Shared>,
    endpoint: Channel,
    remote: SocketAddr,
    verdict: Box<Result<Admitted, Refusal>>,
) {
    let Admitted { token: user, slots: _slots } = match *verdict {
        Ok(admitted) => admitted,
        // Capacity: the client learns it from the close code.
        Err(refusal) => {
            let _ = sink.send(close_message(&refusal.close())).await;
            return;
        }
    };
    let now = crate::transport::now();
    let mut session = Session::open(Arc::clone(&shared.sessions), Transport::WebSocket, endpoint, remote, user, now);
    let outbox = Arc::clone(session.outbox());
    let writer = write_loop(sink, &outbox, &shared);
    tokio::pin!(writer);
    let finished = {
        let reader = read_loop(stream, &mut session, &shared);
        tokio::pin!(reader);
        crate::transport::duplex(writer.as_mut(), reader).await
    };
    let reason = match finished {
        Finished::Writer(sent) => match sent {
            Some(close) => crate::transport::close_reason(&close),
            None => "connection lost".to_owned(),
        },
        Finished::Reader(end) => match end {
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
        },
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

    fn future_size<A, B, C, D, E, F: std::future::Future>(_: impl FnOnce(A, B, C, D, E) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every idle connection holds one `serve` future: its size is most of
    /// a connection's memory after the socket's own buffers (2,016 bytes
    /// before the message handling was boxed and the socket split outside).
    #[test]
    fn connection_future_stays_small() {
        let size = future_size(serve);
        // 1,312 bytes, then +32 for the connection's UUIDv7 and its token
        // deadline (1,416), then 1,392 in a debug build once the session
        // stopped doing I/O (no boxed message futures; the verdict boxed),
        // 1,416 with area subscriptions (8 bytes of area ids per session),
        // 1,288 once the call in flight and the request queue were boxed.
        assert!(size <= 1_288, "serve future grew to {size} bytes (was 1,288 in a debug build)");
    }
}
