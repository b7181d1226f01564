//! One WebTransport session: the client's stream in, the outbox out.
//! Same shape as the WebSocket edge: a reader feeding the session, a writer
//! draining the outbox; no rules here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use wtransport::error::SendDatagramError;
use wtransport::{Connection, RecvStream, SendStream, VarInt};

use crate::admission::Admitted;
use crate::hub::{Batch, Frame, Outbox, Route};
use crate::protocol::Channel;
use crate::protocol::Close;
use crate::protocol::frame::{FrameError, FrameReader, write_frame};
use crate::session::{DatagramTopics, Inbound, Session, Transport};
use crate::state::Shared;
use crate::transport::Finished;

/// How long a closing session may take to flush its last frames.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Bytes read from the stream at a time. Lives in every session's future,
/// so kept small; a frame larger than this simply takes several reads.
const READ_CHUNK: usize = 1024;
/// A write buffer grown past this by a burst is released afterwards, so an
/// idle session holds no large allocation.
const KEEP_WRITE_BUFFER: usize = 16 * 1024;

/// Closes the session at once with a code and reason (QUIC application
/// close). Unsent stream data is lost: use only when nothing is queued.
pub(super) fn close_now(conn: &Connection, close: &Close) {
    conn.close(VarInt::from_u32(u32::from(close.code)), close.reason.as_bytes());
}

/// Serves an accepted session until it ends.
pub(super) async fn serve(
    conn: Connection,
    shared: Arc<Shared>,
    endpoint: Channel,
    remote: SocketAddr,
    admitted: Admitted,
) {
    let Admitted { token: user, slots: _slots } = admitted;
    let now = crate::transport::now();
    let mut session = Session::open(Arc::clone(&shared.sessions), Transport::WebTransport, endpoint, remote, user, now);
    // The protocol starts when the client opens its stream; a client that
    // never does is as silent as one that stops answering pings.
    let wait = 2 * shared.config.limits.heartbeat_interval();
    let stream = tokio::select! {
        s = tokio::time::timeout(wait, conn.accept_bi()) => s,
        () = shared.shutdown.cancelled() => {
            let close = Close::new(Close::GOING_AWAY, "server shutting down");
            close_now(&conn, &close);
            session.finish(&crate::transport::close_reason(&close));
            return;
        }
    };
    let (send, recv) = match stream {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::debug!(conn = %session.uid(), error = %e, "WebTransport session ended before its stream");
            session.finish("connection lost before the stream opened");
            return;
        }
        Err(_) => {
            let close = Close::new(Close::HEARTBEAT_TIMEOUT, "heartbeat timeout: no stream opened");
            close_now(&conn, &close);
            session.finish(&crate::transport::close_reason(&close));
            return;
        }
    };
    let outbox = Arc::clone(session.outbox());
    // Always there on WebTransport; an empty set otherwise sends none.
    let datagrams = session.datagram_topics().cloned().unwrap_or_default();
    let writer = write_loop(send, &conn, &outbox, &datagrams, &shared);
    tokio::pin!(writer);
    let finished = {
        let reader = read_loop(recv, &conn, &mut session, &shared);
        tokio::pin!(reader);
        crate::transport::duplex(writer.as_mut(), reader).await
    };
    let reason = match finished {
        Finished::Writer(()) => "closed by the server or connection lost".to_owned(),
        Finished::Reader(close) => match close {
            Some(close) => {
                outbox.close(close.clone());
                if tokio::time::timeout(CLOSE_GRACE, &mut writer).await.is_err() {
                    close_now(&conn, &close);
                }
                crate::transport::close_reason(&close)
            }
            None => "client closed".to_owned(),
        },
    };
    session.finish(&reason);
}

/// Reads client frames until the client leaves (`None`) or the session
/// decides to close it. One `select!` over the stream, datagrams, the
/// session's timers, the dependency call it asked for, and shutdown.
async fn read_loop(mut recv: RecvStream, conn: &Connection, session: &mut Session, shared: &Shared) -> Option<Close> {
    use crate::transport::{completion, now, start_call};
    let mut frames = FrameReader::new(shared.config.limits.max_message_bytes);
    let mut chunk = [0u8; READ_CHUNK];
    let mut pending: crate::transport::PendingCall = None;
    // The client finished its side at a frame boundary: a goodbye, once
    // what it sent before has been answered.
    let mut finished = false;
    loop {
        // Frames already buffered go first, as far as the session takes them.
        while session.can_read() {
            let close = match frames.next_frame() {
                Ok(Some(payload)) => session.on_inbound(Inbound::MsgPack(&payload), now()),
                Ok(None) => break,
                Err(FrameError::TooLarge { len, .. }) => session.on_inbound(Inbound::Oversized { len }, now()),
                Err(FrameError::Truncated { .. }) => session.on_inbound(Inbound::Truncated, now()),
            };
            if close.is_some() {
                return close;
            }
        }
        start_call(&mut pending, session, &shared.deps);
        if finished && pending.is_none() && session.is_idle() {
            return Some(Close::new(Close::NORMAL, "client finished its stream"));
        }
        let deadline = tokio::time::Instant::from_std(session.next_deadline());
        let can_read = session.can_read() && !finished;
        let close = tokio::select! {
            read = recv.read(&mut chunk), if can_read => match read {
                Ok(Some(n)) => {
                    frames.push(chunk.get(..n).unwrap_or_default());
                    None
                }
                // Inside a frame the stream was cut.
                Ok(None) => match frames.finish() {
                    Ok(()) => {
                        finished = true;
                        None
                    }
                    Err(_) => session.on_inbound(Inbound::Truncated, now()),
                },
                Err(e) => {
                    tracing::debug!(conn = %session.uid(), error = %e, "WebTransport read ended");
                    return None;
                }
            },
            datagram = conn.receive_datagram() => {
                // Client datagrams carry no requests; they only show life.
                if datagram.is_err() {
                    return None;
                }
                session.on_inbound(Inbound::Heartbeat, now())
            }
            done = completion(&mut pending) => session.on_completion(done, now()),
            () = tokio::time::sleep_until(deadline) => session.on_timer(now()),
            () = shared.shutdown.cancelled() => {
                return Some(Close::new(Close::GOING_AWAY, "server shutting down"));
            }
        };
        if close.is_some() {
            return close;
        }
    }
}

/// Drains the outbox: live location updates of datagram topics go as
/// datagrams (falling back to the stream when too large); everything else is
/// framed into one buffer and written with one call per wake-up.
async fn write_loop(
    mut send: SendStream,
    conn: &Connection,
    outbox: &Outbox,
    datagrams: &DatagramTopics,
    shared: &Shared,
) {
    let metrics = &shared.metrics;
    let transport = Transport::WebTransport.as_str();
    let mut batch = Batch::new();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        outbox.ready().await;
        let close = outbox.take(&mut batch);
        for frame in &batch {
            if wants_datagram(frame, datagrams) {
                // Sized by quinn's own check (`TooLarge`) rather than
                // `max_datagram_size()`, whose subtraction can underflow
                // when a peer advertises a tiny datagram limit.
                match conn.send_datagram(&frame.bytes) {
                    Ok(()) => {
                        metrics.datagrams.with_label_values(&["sent"]).inc();
                        continue;
                    }
                    Err(SendDatagramError::TooLarge | SendDatagramError::UnsupportedByPeer) => {
                        metrics.datagrams.with_label_values(&["stream_fallback"]).inc();
                    }
                    Err(SendDatagramError::NotConnected) => return,
                }
            }
            // Only payloads over 4 GiB fail to frame; the gateway makes none.
            let _ = write_frame(&frame.bytes, &mut buf);
        }
        if !buf.is_empty() {
            if send.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
            if buf.capacity() > KEEP_WRITE_BUFFER {
                buf = Vec::new();
            }
        }
        if !batch.is_empty() {
            crate::transport::count_written(&batch, shared, transport);
            crate::transport::recycle(&mut batch);
        }
        if let Some(close) = close {
            // QUIC drops unsent stream data when the connection closes: end
            // the stream, wait until the client acknowledged all of it (or
            // the grace ran out), then close with the code and reason.
            let _ = send.finish().await;
            let _ = tokio::time::timeout(CLOSE_GRACE, send.stopped()).await;
            close_now(conn, &close);
            return;
        }
    }
}

/// Live location updates (not snapshots: those follow the ack reliably) of
/// a topic subscribed with `"delivery": "datagram"`.
fn wants_datagram(frame: &Frame, datagrams: &DatagramTopics) -> bool {
    frame.published_at.is_some()
        && match &frame.route {
            Route::AreaDatagram => true,
            Route::Topic(t) => datagrams.contains(t),
            Route::Control => false,
        }
}
