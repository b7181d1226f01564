//! WebSocket transport (axum): JSON text frames on `/ws/location` and
//! `/ws/vendor`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

use crate::hub::{Frame, Outbox};
use crate::protocol::Close;
use crate::session::{Endpoint, Inbound, Session, Transport};
use crate::state::{Admission, Shared};

/// Initial read buffer per connection. Client frames are small (≤ 4 KiB);
/// tungstenite's 128 KiB default would be resident for every idle client.
const READ_BUFFER: usize = 1024;
/// Bytes buffered by `feed` before tungstenite writes to the socket; a batch
/// of queued frames goes out in one write.
const WRITE_BUFFER: usize = 16 * 1024;
/// How long a closing connection may take to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// `GET /ws/location`.
pub async fn location(
    state: State<Arc<Shared>>,
    remote: ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    upgrade(state, remote, ws, Endpoint::Location)
}

/// `GET /ws/vendor`.
pub async fn vendor(
    state: State<Arc<Shared>>,
    remote: ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    upgrade(state, remote, ws, Endpoint::Vendor)
}

fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    endpoint: Endpoint,
) -> Response {
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
    let max = shared.config.max_message_bytes;
    let admission = shared.try_admit();
    let tracker = shared.tracker.clone();
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .on_upgrade(move |socket| tracker.track_future(serve(socket, shared, endpoint, remote, admission)))
}

async fn serve(
    socket: WebSocket,
    shared: Arc<Shared>,
    endpoint: Endpoint,
    remote: SocketAddr,
    admission: Option<Admission>,
) {
    let (mut sink, stream) = socket.split();
    let Some(_admission) = admission else {
        shared.metrics.connections_rejected.with_label_values(&["max_connections"]).inc();
        let close = Close::new(Close::TRY_AGAIN_LATER, "server at WS_MAX_CONNECTIONS; try again later");
        let _ = sink.send(close_message(&close)).await;
        return;
    };
    let mut session = Session::open(Arc::clone(&shared), Transport::WebSocket, endpoint, remote);
    let outbox = Arc::clone(session.outbox());
    let writer = write_loop(sink, &outbox, &shared);
    tokio::pin!(writer);
    let reader = read_loop(stream, &mut session, &shared);
    let reason = tokio::select! {
        sent = &mut writer => match sent {
            Some(close) => close_reason(&close),
            None => "connection lost".to_owned(),
        },
        end = reader => match end {
            ReadEnd::Close(close) => {
                let reason = close_reason(&close);
                outbox.close(close);
                let _ = tokio::time::timeout(CLOSE_GRACE, &mut writer).await;
                reason
            }
            ReadEnd::ClientClosed => "client closed".to_owned(),
            ReadEnd::Lost => "connection lost".to_owned(),
        }
    };
    session.finish(&reason);
}

/// How the read side ended.
enum ReadEnd {
    /// The session (or shutdown) closes the connection with this.
    Close(Close),
    /// The client sent a Close frame or ended the stream.
    ClientClosed,
    /// The socket failed.
    Lost,
}

/// The audit trail's disconnect reason for a close the server sent.
fn close_reason(close: &Close) -> String {
    format!("{} {}", close.code, close.reason)
}

/// Reads client frames until the client leaves or the session decides to
/// close it.
async fn read_loop(mut stream: SplitStream<WebSocket>, session: &mut Session, shared: &Shared) -> ReadEnd {
    loop {
        let deadline = tokio::time::Instant::from_std(session.next_deadline());
        let inbound = tokio::select! {
            msg = stream.next() => msg,
            () = tokio::time::sleep_until(deadline) => {
                match session.on_timer(Instant::now()) {
                    Some(close) => return ReadEnd::Close(close),
                    None => continue,
                }
            }
            () = shared.shutdown.cancelled() => {
                return ReadEnd::Close(Close::new(Close::GOING_AWAY, "server shutting down"));
            }
        };
        let close = match inbound {
            None | Some(Ok(Message::Close(_))) => return ReadEnd::ClientClosed,
            Some(Ok(Message::Text(text))) => session.on_inbound(Inbound::Text(text.as_bytes())).await,
            Some(Ok(Message::Binary(_))) => session.on_inbound(Inbound::Binary).await,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => session.on_inbound(Inbound::Heartbeat).await,
            Some(Err(e)) => return close_for_error(&e).map_or(ReadEnd::Lost, ReadEnd::Close),
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
    let metrics = &shared.metrics;
    let transport = Transport::WebSocket.as_str();
    let mut batch: Vec<Frame> = Vec::with_capacity(16);
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
        }
        if !batch.is_empty() {
            if sink.flush().await.is_err() {
                return None;
            }
            let now = Instant::now();
            let mut run: Option<(&'static str, u64)> = None;
            for frame in &batch {
                if let Some(at) = frame.published_at {
                    metrics.publish_to_write.observe(now.saturating_duration_since(at).as_secs_f64());
                }
                run = match run {
                    Some((ty, n)) if ty == frame.ty => Some((ty, n + 1)),
                    Some((ty, n)) => {
                        metrics.messages_out(transport, ty, n);
                        Some((frame.ty, 1))
                    }
                    None => Some((frame.ty, 1)),
                };
            }
            if let Some((ty, n)) = run {
                metrics.messages_out(transport, ty, n);
            }
            batch.clear();
        }
        if let Some(close) = close {
            let _ = sink.send(close_message(&close)).await;
            return Some(close);
        }
    }
}

fn close_message(close: &Close) -> Message {
    Message::Close(Some(CloseFrame { code: close.code, reason: Utf8Bytes::from(close.reason.as_ref()) }))
}
