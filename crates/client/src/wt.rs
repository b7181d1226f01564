//! WebTransport (docs/protocol.md): a session on `https://HOST:WT_PORT/wt/…`,
//! one client-opened bidirectional stream carrying length-prefixed
//! MessagePack frames ([`venta_protocol::frame`]), and datagrams for
//! subscriptions with `"delivery": "datagram"`.
//!
//! [`WtClient`] is the whole client. The pieces it is made of are public for
//! callers that arrange them differently: [`Trust`] and [`endpoint`] (or
//! [`Trust::apply`] on a builder of your own, e.g. one shared endpoint for
//! many sessions), [`open_session`], [`FrameStream`], [`encode`],
//! [`decode_value`], [`session_close`].

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use venta_protocol::frame::{FrameReader, HEADER_LEN, write_frame};
use wtransport::config::ClientConfigBuilder;
use wtransport::config::states::{WantsRootStore, WantsTransportConfigClient};
use wtransport::endpoint::endpoint_side::Client;
use wtransport::error::ConnectionError;
use wtransport::quinn::{Chunk, ReadError};
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

use crate::{Closed, Error, Event, Options, Subscribe, answer, is_ping};

/// At most this much of the stream per read. Chunks are quinn's own
/// buffers: no read buffer lives in each idle client.
pub const READ_MAX: usize = 64 * 1024;

/// `{"type":"pong"}` framed: length 11, fixmap(1), fixstr "type", fixstr
/// "pong". Precomputed: a busy client answers pings without encoding.
pub const PONG_FRAME: [u8; 15] = [0, 0, 0, 11, 0x81, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'o', b'n', b'g'];

/// How the client checks the gateway's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Pin these SHA-256 hashes (a self-signed certificate, as browsers'
    /// `serverCertificateHashes`; during a rotation the current and next).
    Hashes(Vec<Sha256Digest>),
    /// The system's root certificates (a CA-signed `WT_CERT`).
    SystemRoots,
}

impl Trust {
    /// Pins the hashes given as hex (see [`parse_cert_hash`]).
    pub fn hashes<I, S>(hex: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Ok(Self::Hashes(hex.into_iter().map(|h| parse_cert_hash(h.as_ref())).collect::<Result<_, _>>()?))
    }

    /// Applies this trust to a client configuration being built.
    pub fn apply(
        &self,
        builder: ClientConfigBuilder<WantsRootStore>,
    ) -> ClientConfigBuilder<WantsTransportConfigClient> {
        match self {
            Self::Hashes(h) => builder.with_server_certificate_hashes(h.iter().cloned()),
            Self::SystemRoots => builder.with_native_certs(),
        }
    }
}

/// A SHA-256 as 64 hex digits, either case, colons allowed (as browsers
/// display it, and as `/wt/cert-hash` publishes it without them).
pub fn parse_cert_hash(s: &str) -> Result<Sha256Digest, Error> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    let bytes: Option<Vec<u8>> =
        hex.chunks(2).map(|p| std::str::from_utf8(p).ok().and_then(|p| u8::from_str_radix(p, 16).ok())).collect();
    match bytes.map(<[u8; 32]>::try_from) {
        Some(Ok(b)) if hex.len() == 64 => Ok(Sha256Digest::new(b)),
        _ => Err(Error::CertHash(s.to_owned())),
    }
}

/// A client endpoint on `bind` (`None`: any address, dual-stack) with this
/// trust and wtransport's defaults otherwise.
pub fn endpoint(bind: Option<SocketAddr>, trust: &Trust) -> Result<Endpoint<Client>, Error> {
    let builder = ClientConfig::builder();
    let builder = match bind {
        Some(addr) => builder.with_bind_address(addr),
        None => builder.with_bind_default(),
    };
    Endpoint::client(trust.apply(builder).build()).map_err(Error::Endpoint)
}

/// Opens a session on `url` and its bidirectional stream. If the session
/// fails before the stream opens (the gateway refused it: over capacity,
/// shutting down), the error is the close code and reason when they arrive
/// within `close_wait`.
pub async fn open_session(
    endpoint: &Endpoint<Client>,
    url: &str,
    close_wait: Duration,
) -> Result<(Connection, SendStream, RecvStream), Error> {
    let conn = endpoint.connect(url).await?;
    let opened = match conn.open_bi().await {
        Ok(opening) => opening.await.map_err(Error::OpenStream),
        Err(e) => Err(Error::Session(e)),
    };
    match opened {
        Ok((send, recv)) => Ok((conn, send, recv)),
        Err(e) => Err(closed_or(&conn, close_wait, e).await),
    }
}

/// The session's close, waiting at most `wait` for it; `None` if it is
/// still open by then.
pub async fn session_close(conn: &Connection, wait: Duration) -> Option<Closed> {
    match tokio::time::timeout(wait, conn.closed()).await {
        Ok(ConnectionError::ApplicationClosed(c)) => {
            Some(Closed { code: Some(c.code().into_inner()), reason: String::from_utf8_lossy(c.reason()).into_owned() })
        }
        Ok(e) => Some(Closed { code: None, reason: e.to_string() }),
        Err(_) => None,
    }
}

/// The session's close as the error, or `fallback` if it does not come in time.
async fn closed_or(conn: &Connection, wait: Duration, fallback: Error) -> Error {
    match session_close(conn, wait).await {
        Some(c) => Error::Closed(c),
        None => fallback,
    }
}

/// One message framed for the stream: named-field MessagePack (the field
/// names are the protocol's keys) behind its length.
pub fn encode(message: &Value) -> Result<Vec<u8>, Error> {
    let payload = rmp_serde::to_vec_named(message)?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    write_frame(&payload, &mut out)?;
    Ok(out)
}

/// Decodes one server message strictly: one MessagePack map, no trailing
/// bytes (the gateway sends nothing else; anything else is a fault worth
/// seeing, not something to guess around).
pub fn decode_value(bytes: &[u8]) -> Result<Value, Error> {
    if !matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)) {
        return Err(Error::Decode(format!("not a MessagePack map ({} bytes)", bytes.len())));
    }
    let mut rest = bytes;
    let v: Value = rmp_serde::from_read(&mut rest).map_err(|e| Error::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Error::Decode(format!("{} trailing bytes after a message", rest.len())));
    }
    Ok(v)
}

/// What one wait on the session produced.
enum Read {
    Stream(Result<Option<Chunk>, ReadError>),
    Datagram(Result<wtransport::datagram::Datagram, ConnectionError>),
}

/// The server's side of the stream, cut into frame payloads.
///
/// Bounded: a frame announcing more than the limit is refused at its header
/// ([`FrameReader`]); reads take quinn's chunks, so an idle stream holds no
/// buffer.
#[derive(Debug)]
pub struct FrameStream {
    recv: RecvStream,
    frames: FrameReader,
}

impl FrameStream {
    /// Reads `recv`, refusing frames over `max_frame` bytes.
    pub fn new(recv: RecvStream, max_frame: usize) -> Self {
        Self { recv, frames: FrameReader::new(max_frame) }
    }

    /// The next frame's payload or, with `datagrams`, the next datagram's,
    /// whichever comes first. When the stream ends or fails, the error is
    /// the session's close ([`Error::Closed`]) if it comes within
    /// `close_wait`, else what happened to the stream. A stream that ends
    /// inside a frame, or a frame over the limit, is [`Error::Frame`].
    /// Cancel-safe: nothing read is lost if the future is dropped.
    pub async fn next(&mut self, conn: &Connection, datagrams: bool, close_wait: Duration) -> Result<Bytes, Error> {
        loop {
            if let Some(payload) = self.frames.next_frame()? {
                return Ok(payload);
            }
            let recv = self.recv.quic_stream_mut();
            let read = if datagrams {
                tokio::select! {
                    r = recv.read_chunk(READ_MAX, true) => Read::Stream(r),
                    d = conn.receive_datagram() => Read::Datagram(d),
                }
            } else {
                Read::Stream(recv.read_chunk(READ_MAX, true).await)
            };
            match read {
                Read::Stream(Ok(Some(chunk))) => self.frames.push(&chunk.bytes),
                Read::Stream(Ok(None)) => {
                    self.frames.finish()?;
                    return Err(closed_or(conn, close_wait, Error::StreamFinished).await);
                }
                Read::Stream(Err(e)) => return Err(closed_or(conn, close_wait, Error::Read(e)).await),
                Read::Datagram(Ok(d)) => return Ok(d.payload()),
                Read::Datagram(Err(e)) => return Err(closed_or(conn, close_wait, Error::Datagram(e)).await),
            }
        }
    }
}

/// A WebTransport client: one session, its stream, and datagrams.
pub struct WtClient {
    /// The session, for what this API does not cover (stats, raw datagrams).
    pub conn: Connection,
    /// The client's side of the stream (raw bytes, `finish`).
    pub send: SendStream,
    stream: FrameStream,
    close_wait: Duration,
    /// Whether [`WtClient::next_event`] answers pings and hides them.
    pub auto_pong: bool,
    /// Kept for the session's lifetime: the endpoint owns the UDP socket.
    _endpoint: Endpoint<Client>,
}

impl fmt::Debug for WtClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WtClient").field("remote", &self.conn.remote_address()).finish_non_exhaustive()
    }
}

impl WtClient {
    /// Connects to `url` (`https://…/wt/location` or `/wt/vendor`) with its
    /// own endpoint, adding the token, and opens the stream.
    pub async fn connect(url: &str, options: &Options) -> Result<Self, Error> {
        let endpoint = endpoint(options.bind, &options.trust)?;
        let (conn, send, recv) = open_session(&endpoint, &options.url(url), options.close_wait).await?;
        Ok(Self {
            conn,
            send,
            stream: FrameStream::new(recv, options.max_message_bytes),
            close_wait: options.close_wait,
            auto_pong: options.auto_pong,
            _endpoint: endpoint,
        })
    }

    /// Sends one message as a MessagePack frame.
    pub async fn send(&mut self, message: &Value) -> Result<(), Error> {
        self.send_raw(&encode(message)?).await
    }

    /// Writes bytes to the stream as they are (already framed, or not).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        Ok(self.send.write_all(bytes).await?)
    }

    /// The next message on the stream, or the session's close.
    pub async fn next_event(&mut self) -> Result<Event, Error> {
        loop {
            let payload = match self.stream.next(&self.conn, false, self.close_wait).await {
                Ok(p) => p,
                Err(Error::Closed(c)) => return Ok(Event::Closed(c)),
                Err(e) => return Err(e),
            };
            let v = decode_value(&payload)?;
            if self.auto_pong && is_ping(&v) {
                self.send_raw(&PONG_FRAME).await?;
                continue;
            }
            return Ok(Event::Message(v));
        }
    }

    /// The next datagram, decoded.
    pub async fn recv_datagram(&self) -> Result<Value, Error> {
        let dg = self.conn.receive_datagram().await.map_err(Error::Datagram)?;
        decode_value(&dg.payload())
    }

    /// Subscribes and returns the `subscribed` ack (an `error` answer is
    /// [`Error::Rejected`]). With [`Subscribe::datagrams`] the updates then
    /// come from [`WtClient::recv_datagram`].
    pub async fn subscribe(&mut self, subscribe: &Subscribe<'_>) -> Result<Value, Error> {
        self.send(&subscribe.message()).await?;
        loop {
            if let Some(r) = answer(self.next_event().await?, "subscribed") {
                return r;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pong_is_a_framed_messagepack_map() {
        assert!(matches!(encode(&json!({"type": "pong"})), Ok(f) if f == PONG_FRAME));
    }

    #[test]
    fn frames_round_trip_through_the_reader_in_any_pieces() {
        let messages =
            [json!({"type": "ping", "id": "1"}), json!({"type": "location_updated", "data": {"x": [1, 2.5]}})];
        let wire: Vec<u8> = messages.iter().flat_map(|m| encode(m).unwrap_or_default()).collect();
        for piece in [1, 3, 7, wire.len()] {
            let mut reader = FrameReader::new(1024);
            let mut got = Vec::new();
            for chunk in wire.chunks(piece) {
                reader.push(chunk);
                while let Ok(Some(p)) = reader.next_frame() {
                    got.push(decode_value(&p).ok());
                }
            }
            assert_eq!(got, messages.iter().cloned().map(Some).collect::<Vec<_>>(), "pieces of {piece}");
        }
    }

    #[test]
    fn decoding_is_strict() {
        let mut trailing = rmp_serde::to_vec_named(&json!({"type": "ping"})).unwrap_or_default();
        trailing.push(0xc0);
        for bad in [&[][..], &[0xc1], &[0x91, 0x01], &[0xa1, b'x'], trailing.as_slice(), &[0x81, 0xa4]] {
            assert!(matches!(decode_value(bad), Err(Error::Decode(_))), "{bad:02x?} accepted");
        }
    }

    #[test]
    fn hashes_parse_plain_or_dotted() {
        let hex = "0123456789abcdef".repeat(4);
        let plain = parse_cert_hash(&hex).ok();
        assert!(plain.is_some());
        let dotted: Vec<String> = hex.as_bytes().chunks(2).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        assert_eq!(parse_cert_hash(&dotted.join(":")).ok(), plain);
        assert_eq!(parse_cert_hash(&hex.to_uppercase()).ok(), plain);
        for bad in ["", "00", &"0".repeat(63), &"0".repeat(66), &"zz".repeat(32), &"é".repeat(32)] {
            assert!(parse_cert_hash(bad).is_err(), "{bad:?} accepted");
        }
        assert!(matches!(Trust::hashes([hex.as_str()]), Ok(Trust::Hashes(h)) if h.len() == 1));
        assert!(Trust::hashes(["nope"]).is_err());
    }
}
