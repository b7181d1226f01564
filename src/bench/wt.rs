//! WebTransport MessagePack client (docs/protocol.md): a session on
//! `https://HOST:WT_PORT/wt/location?token=…`, one bidirectional stream
//! carrying length-prefixed MessagePack frames, `subscribe_location` (with
//! `"delivery": "datagram"` for `--wt-delivery datagram`), the `subscribed`
//! ack, then `location_updated` from the stream or from datagrams. The
//! server's `ping` is answered with `pong` so long runs are not closed with
//! 4000. Decoding is shared with WebSocket ([`super::incoming`]), so the
//! accounting is the same for both transports.
//!
//! All clients leaving from one source address share one QUIC endpoint (one
//! UDP socket, one driver): QUIC demultiplexes by connection id, so 10,000
//! sessions cost no 10,000 sockets and no ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde_json::{Value, json};
use venta_gateway::protocol::frame::{FrameReader, write_frame};
use wtransport::config::{DnsLookupFuture, DnsResolver};
use wtransport::endpoint::endpoint_side::Client;
use wtransport::error::ConnectionError;
use wtransport::quinn::{Chunk, ReadError};
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

use super::args::{BenchArgs, WtDelivery};
use super::incoming::Incoming;
use super::transport::{Conn, Connector, Event, Target};

/// Largest server frame accepted. Updates are ~150 bytes; the bound only
/// keeps a broken stream from announcing gigabytes.
const MAX_FRAME: usize = 1 << 20;
/// At most this much of the stream per read. Chunks are quinn's own
/// buffers: no read buffer lives in each idle connection.
const READ_MAX: usize = 64 * 1024;
/// Requested UDP receive buffer of each endpoint (the kernel caps it at
/// `net.core.rmem_max`): one socket takes every client's packets, so a
/// burst must not overflow the default ~200 KiB into QUIC retransmissions.
const SOCKET_RECV_BUFFER: usize = 8 << 20;
/// QUIC keep-alive, as the gateway's: idle clients (s1) outlive the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// How long to wait for the session's close code once its stream failed.
const CLOSE_WAIT: Duration = Duration::from_secs(1);
/// `{"type":"pong"}` framed: length 11, fixmap(1), fixstr "type", fixstr "pong".
const PONG: [u8; 15] = [0, 0, 0, 11, 0x81, 0xa4, b't', b'y', b'p', b'e', 0xa4, b'p', b'o', b'n', b'g'];

/// How the client checks the gateway's certificate.
enum Trust {
    /// Pin these SHA-256 hashes (self-signed, as browsers' `serverCertificateHashes`).
    Hashes(Vec<Sha256Digest>),
    /// The system's root certificates (a CA-signed `WT_CERT`).
    SystemRoots,
}

/// Opens WebTransport clients against one session URL.
pub struct WtConnector {
    url: String,
    /// One endpoint per `--src-ips` address (`None`: the unspecified address).
    endpoints: Vec<(Option<IpAddr>, Endpoint<Client>)>,
    vendor_prefix: String,
    datagrams: bool,
}

impl WtConnector {
    /// Resolves the URL's host once, settles the certificate trust (fetching
    /// `/wt/cert-hash` from `--http-url` unless told otherwise) and binds the
    /// endpoints; `--jwt` is appended as `?token=`.
    pub async fn new(args: &BenchArgs) -> anyhow::Result<Self> {
        let url = args.session_url();
        let parsed = reqwest::Url::parse(&url).with_context(|| format!("--url {url:?} is not a URL"))?;
        if parsed.scheme() != "https" {
            bail!(
                "--transport webtransport needs an https:// --url (e.g. https://127.0.0.1:5006/wt/location), got {url:?}"
            );
        }
        let host = parsed.host_str().context("--url has no host")?.trim_matches(['[', ']']).to_owned();
        let port = parsed.port_or_known_default().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .collect();
        let trust = trust(args).await?;
        let sources: Vec<Option<IpAddr>> =
            if args.src_ips.is_empty() { vec![None] } else { args.src_ips.iter().copied().map(Some).collect() };
        let mut endpoints = Vec::with_capacity(sources.len());
        for src in sources {
            // Same family as the source; the first address otherwise (as WebSocket).
            let server = src
                .and_then(|s| addrs.iter().find(|a| a.is_ipv4() == s.is_ipv4()))
                .or(addrs.first())
                .copied()
                .with_context(|| format!("{host} resolves to no address"))?;
            let bind = match (src, server) {
                (Some(ip), _) => SocketAddr::new(ip, 0),
                (None, SocketAddr::V4(_)) => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
                (None, SocketAddr::V6(_)) => SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0),
            };
            endpoints.push((src, endpoint(bind, server, &trust).with_context(|| format!("QUIC endpoint on {bind}"))?));
        }
        let url = match &args.jwt {
            Some(t) if url.contains('?') => format!("{url}&token={t}"),
            Some(t) => format!("{url}?token={t}"),
            None => url.to_owned(),
        };
        Ok(Self {
            url,
            endpoints,
            vendor_prefix: args.vendor_prefix.clone(),
            datagrams: args.wt_delivery == WtDelivery::Datagram,
        })
    }

    fn endpoint_for(&self, src: Option<IpAddr>) -> Option<&Endpoint<Client>> {
        self.endpoints.iter().find(|(s, _)| *s == src).or(self.endpoints.first()).map(|(_, e)| e)
    }
}

/// The trust settled from the flags: `--wt-system-roots`, `--wt-cert-hash`,
/// or the hashes the gateway publishes (current and, during a rotation, next).
async fn trust(args: &BenchArgs) -> anyhow::Result<Trust> {
    if args.wt_system_roots {
        return Ok(Trust::SystemRoots);
    }
    if !args.wt_cert_hash.is_empty() {
        let hashes = args.wt_cert_hash.iter().map(|h| parse_hash(h)).collect::<anyhow::Result<_>>()?;
        return Ok(Trust::Hashes(hashes));
    }
    let from = format!("{}/wt/cert-hash", args.to.http_url());
    let hint = "(or pass --wt-cert-hash / --wt-system-roots)";
    let resp = reqwest::Client::new()
        .get(&from)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .with_context(|| format!("fetching the WebTransport certificate hash from {from} {hint}"))?;
    if !resp.status().is_success() {
        bail!("{from} answered HTTP {}: is WebTransport serving there? {hint}", resp.status().as_u16());
    }
    let body: Value = resp.json().await.with_context(|| format!("{from} did not answer JSON"))?;
    let mut hashes = Vec::new();
    for v in [&body["value"], &body["next"]["value"]] {
        if let Some(hex) = v.as_str() {
            hashes.push(parse_hash(hex).with_context(|| from.clone())?);
        }
    }
    if hashes.is_empty() {
        bail!("{from} holds no certificate hash: {body}");
    }
    Ok(Trust::Hashes(hashes))
}

/// A SHA-256 as 64 hex digits, colons allowed (as browsers display it).
fn parse_hash(s: &str) -> anyhow::Result<Sha256Digest> {
    let hex: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    let bytes: Option<Vec<u8>> =
        hex.chunks(2).map(|p| std::str::from_utf8(p).ok().and_then(|p| u8::from_str_radix(p, 16).ok())).collect();
    match bytes.map(<[u8; 32]>::try_from) {
        Some(Ok(b)) if hex.len() == 64 => Ok(Sha256Digest::new(b)),
        _ => bail!("{s:?} is not a SHA-256 (64 hex digits)"),
    }
}

/// A client endpoint bound to `bind` that sends every session to `server`
/// (resolved once, instead of one DNS lookup per connection).
fn endpoint(bind: SocketAddr, server: SocketAddr, trust: &Trust) -> anyhow::Result<Endpoint<Client>> {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(bind), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: without the privilege to exceed rmem_max, the cap applies.
    let _ = socket.set_recv_buffer_size(SOCKET_RECV_BUFFER);
    socket.bind(&bind.into())?;
    let builder = ClientConfig::builder().with_bind_socket(socket.into());
    let builder = match trust {
        Trust::Hashes(h) => builder.with_server_certificate_hashes(h.iter().cloned()),
        Trust::SystemRoots => builder.with_native_certs(),
    };
    let config = builder.keep_alive_interval(Some(KEEP_ALIVE)).dns_resolver(Resolved(server)).build();
    Ok(Endpoint::client(config)?)
}

/// A "resolver" answering the address resolved in [`WtConnector::new`].
#[derive(Debug)]
struct Resolved(SocketAddr);

impl DnsResolver for Resolved {
    fn resolve(&self, _host: &str) -> Pin<Box<dyn DnsLookupFuture>> {
        let addr = self.0;
        Box::pin(async move { Ok(Some(addr)) })
    }
}

/// An open, subscribed WebTransport client.
pub struct WtConn {
    conn: Connection,
    send: SendStream,
    recv: RecvStream,
    frames: FrameReader,
    vendor_prefix: String,
    datagrams: bool,
}

impl Connector for WtConnector {
    type Conn = WtConn;

    async fn open(&self, t: &Target) -> Result<WtConn, String> {
        let endpoint = self.endpoint_for(t.src).ok_or("no QUIC endpoint")?;
        let conn = endpoint.connect(self.url.as_str()).await.map_err(|e| format!("connect: {e}"))?;
        let opened = match conn.open_bi().await {
            Ok(opening) => opening.await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let (send, recv) = match opened {
            Ok(s) => s,
            Err(e) => return Err(format!("closed before the ack: {}", close_reason(&conn, e).await)),
        };
        let mut c = WtConn {
            conn,
            send,
            recv,
            frames: FrameReader::new(MAX_FRAME),
            vendor_prefix: self.vendor_prefix.clone(),
            datagrams: self.datagrams,
        };
        let data = if self.datagrams {
            json!({"vendorId": t.vendor, "userId": t.user, "delivery": "datagram"})
        } else {
            json!({"vendorId": t.vendor, "userId": t.user})
        };
        let sub = json!({"type": "subscribe_location", "data": data, "id": "bench"});
        let payload = rmp_serde::to_vec_named(&sub).map_err(|e| format!("encode subscribe: {e}"))?;
        let mut frame = Vec::new();
        write_frame(&payload, &mut frame).map_err(|e| format!("frame subscribe: {e}"))?;
        c.send.write_all(&frame).await.map_err(|e| format!("send subscribe: {e}"))?;
        c.await_ack().await?;
        Ok(c)
    }
}

/// What one wait on the session produced.
enum Read {
    Stream(Result<Option<Chunk>, ReadError>),
    Datagram(Result<wtransport::datagram::Datagram, ConnectionError>),
}

impl WtConn {
    /// Reads until the `subscribed` ack; an `error` answer is the failure.
    async fn await_ack(&mut self) -> Result<(), String> {
        loop {
            let payload = self.next_message().await.map_err(|e| format!("closed before the ack: {e}"))?;
            match rmp_serde::from_slice::<Incoming<'_>>(&payload) {
                Ok(m) if m.ty == "subscribed" => return Ok(()),
                Ok(m) if m.ty == "error" => return Err(m.data.unwrap_or_default().refusal()),
                Ok(m) if m.ty == "ping" => self.pong().await?,
                _ => {}
            }
        }
    }

    async fn pong(&mut self) -> Result<(), String> {
        self.send.write_all(&PONG).await.map_err(|e| format!("send pong: {e}"))
    }

    /// The next MessagePack value: a whole stream frame or, with datagram
    /// delivery, a datagram. The error says why the session ended.
    async fn next_message(&mut self) -> Result<Bytes, String> {
        loop {
            match self.frames.next_frame() {
                Ok(Some(payload)) => return Ok(payload),
                Ok(None) => {}
                Err(e) => return Err(format!("stream out of step: {e}")),
            }
            let recv = self.recv.quic_stream_mut();
            let read = if self.datagrams {
                tokio::select! {
                    r = recv.read_chunk(READ_MAX, true) => Read::Stream(r),
                    d = self.conn.receive_datagram() => Read::Datagram(d),
                }
            } else {
                Read::Stream(recv.read_chunk(READ_MAX, true).await)
            };
            match read {
                Read::Stream(Ok(Some(chunk))) => self.frames.push(&chunk.bytes),
                Read::Stream(Ok(None)) => return Err(close_reason(&self.conn, "server finished its stream").await),
                Read::Stream(Err(e)) => return Err(close_reason(&self.conn, format!("read: {e}")).await),
                Read::Datagram(Ok(d)) => return Ok(d.payload()),
                Read::Datagram(Err(e)) => return Err(close_reason(&self.conn, format!("datagram: {e}")).await),
            }
        }
    }
}

impl Conn for WtConn {
    async fn next_event(&mut self) -> Event {
        loop {
            let payload = match self.next_message().await {
                Ok(p) => p,
                Err(why) => return Event::Closed(why),
            };
            match rmp_serde::from_slice::<Incoming<'_>>(&payload) {
                Ok(m) if m.ty == "location_updated" => {
                    return match &m.data {
                        Some(d) => Event::Update(d.delivery(&self.vendor_prefix)),
                        None => Event::Unparsed,
                    };
                }
                Ok(m) if m.ty == "ping" => {
                    if let Err(e) = self.pong().await {
                        return Event::Closed(e);
                    }
                }
                Ok(_) => {}
                Err(_) => return Event::Unparsed,
            }
        }
    }
}

/// The session's close code and reason (`1013 …`, as WebSocket close codes
/// are reported), waiting briefly for it; `fallback` if none comes.
async fn close_reason(conn: &Connection, fallback: impl Into<String>) -> String {
    match tokio::time::timeout(CLOSE_WAIT, conn.closed()).await {
        Ok(ConnectionError::ApplicationClosed(c)) => {
            format!("closed by server: {} {}", c.code().into_inner(), String::from_utf8_lossy(c.reason()))
        }
        Ok(e) => format!("connection lost: {e}"),
        Err(_) => fallback.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong_is_a_framed_messagepack_map() {
        let payload = rmp_serde::to_vec_named(&json!({"type": "pong"})).unwrap_or_default();
        let mut framed = Vec::new();
        assert!(write_frame(&payload, &mut framed).is_ok());
        assert_eq!(framed, PONG);
    }

    #[test]
    fn hashes_parse_plain_or_dotted() {
        let hex = "0123456789abcdef".repeat(4);
        let plain = parse_hash(&hex).ok();
        assert!(plain.is_some());
        let dotted: Vec<String> = hex.as_bytes().chunks(2).map(|p| String::from_utf8_lossy(p).into_owned()).collect();
        assert_eq!(parse_hash(&dotted.join(":")).ok(), plain);
        assert_eq!(parse_hash(&hex.to_uppercase()).ok(), plain);
        for bad in ["", "00", &"0".repeat(63), &"0".repeat(66), &"zz".repeat(32), &"é".repeat(32)] {
            assert!(parse_hash(bad).is_err(), "{bad:?} accepted");
        }
    }
}
