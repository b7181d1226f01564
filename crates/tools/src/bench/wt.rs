//! WebTransport MessagePack client (docs/protocol.md): a session on
//! `https://HOST:WT_PORT/wt/location?token=…`, one bidirectional stream
//! carrying length-prefixed MessagePack frames, `subscribe_location` (with
//! `"delivery": "datagram"` for `--wt-delivery datagram`), the `subscribed`
//! ack, then `location_updated` from the stream or from datagrams. The
//! server's `ping` is answered with `pong` so long runs are not closed with
//! 4000. Decoding is shared with WebSocket ([`super::incoming`]), so the
//! accounting is the same for both transports; certificate trust, sessions,
//! framing and stream reads are [`venta_client::wt`]'s.
//!
//! All clients leaving from one source address share one QUIC endpoint (one
//! UDP socket, one driver): QUIC demultiplexes by connection id, so 10,000
//! sessions cost no 10,000 sockets and no ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde_json::Value;
use venta_client::wt::{FrameStream, PONG_FRAME, Trust, encode, open_session, parse_cert_hash};
use venta_client::{Channel, Subscribe, with_token};
use wtransport::config::{DnsLookupFuture, DnsResolver};
use wtransport::endpoint::endpoint_side::Client;
use wtransport::{ClientConfig, Connection, Endpoint, SendStream};

use super::args::{BenchArgs, WtDelivery};
use super::incoming::Incoming;
use super::transport::{Conn, Connector, Event, Target};

/// Largest server frame accepted. Updates are ~150 bytes; the bound only
/// keeps a broken stream from announcing gigabytes.
const MAX_FRAME: usize = 1 << 20;
/// Requested UDP receive buffer of each endpoint (the kernel caps it at
/// `net.core.rmem_max`): one socket takes every client's packets, so a
/// burst must not overflow the default ~200 KiB into QUIC retransmissions.
const SOCKET_RECV_BUFFER: usize = 8 << 20;
/// QUIC keep-alive, as the gateway's: idle clients (s1) outlive the idle timeout.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// How long to wait for the session's close code once its stream failed.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

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
            Some(t) => with_token(&url, t),
            None => url,
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
    trust_from(args.wt_system_roots, &args.wt_cert_hash, &args.to.http_url()).await
}

/// [`trust`] from the flags' values (`venta sub` has the same three), with
/// `http_url` the gateway's HTTP base that serves `/wt/cert-hash`.
pub async fn trust_from(system_roots: bool, cert_hashes: &[String], http_url: &str) -> anyhow::Result<Trust> {
    if system_roots {
        return Ok(Trust::SystemRoots);
    }
    if !cert_hashes.is_empty() {
        return Ok(Trust::hashes(cert_hashes)?);
    }
    let from = format!("{http_url}/wt/cert-hash");
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
            hashes.push(parse_cert_hash(hex).with_context(|| from.clone())?);
        }
    }
    if hashes.is_empty() {
        bail!("{from} holds no certificate hash: {body}");
    }
    Ok(Trust::Hashes(hashes))
}

/// A client endpoint bound to `bind` that sends every session to `server`
/// (resolved once, instead of one DNS lookup per connection).
fn endpoint(bind: SocketAddr, server: SocketAddr, trust: &Trust) -> anyhow::Result<Endpoint<Client>> {
    let socket =
        socket2::Socket::new(socket2::Domain::for_address(bind), socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: without the privilege to exceed rmem_max, the cap applies.
    let _ = socket.set_recv_buffer_size(SOCKET_RECV_BUFFER);
    socket.bind(&bind.into())?;
    let builder = trust.apply(ClientConfig::builder().with_bind_socket(socket.into()));
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
    stream: FrameStream,
    vendor_prefix: String,
    datagrams: bool,
}

impl Connector for WtConnector {
    type Conn = WtConn;

    async fn open(&self, t: &Target) -> Result<WtConn, String> {
        let endpoint = self.endpoint_for(t.src).ok_or("no QUIC endpoint")?;
        let (conn, send, recv) = open_session(endpoint, &self.url, CLOSE_WAIT).await.map_err(|e| match e {
            venta_client::Error::Connect(_) => e.to_string(),
            e => format!("closed before the ack: {e}"),
        })?;
        let mut c = WtConn {
            conn,
            send,
            stream: FrameStream::new(recv, MAX_FRAME),
            vendor_prefix: self.vendor_prefix.clone(),
            datagrams: self.datagrams,
        };
        let mut sub = Subscribe::new(Channel::Location, &t.vendor, &t.user).id("bench");
        sub.datagrams = self.datagrams;
        let frame = encode(&sub.message()).map_err(|e| format!("encode subscribe: {e}"))?;
        c.send.write_all(&frame).await.map_err(|e| format!("send subscribe: {e}"))?;
        c.await_ack().await?;
        Ok(c)
    }
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
        self.send.write_all(&PONG_FRAME).await.map_err(|e| format!("send pong: {e}"))
    }

    /// The next MessagePack value: a whole stream frame or, with datagram
    /// delivery, a datagram. The error says why the session ended.
    async fn next_message(&mut self) -> Result<Bytes, String> {
        self.stream.next(&self.conn, self.datagrams, CLOSE_WAIT).await.map_err(|e| e.to_string())
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
