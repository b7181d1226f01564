//! WebSocket JSON client (docs/protocol.md): `subscribe_location`, wait for the
//! `subscribed` ack, then decode `location_updated` frames; the server's
//! app-level `ping` is answered with `pong` so long runs are not closed with
//! 4000 (tungstenite answers protocol-level pings itself).

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context as _, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::incoming::Incoming;
use super::transport::{Conn, Connector, Event, Target};

/// Per-connection read chunk: updates are ~200 bytes, but a busy fan-out
/// queues many; 16 KiB keeps syscalls few at 10,000 connections × 16 KiB.
const READ_BUFFER: usize = 16 * 1024;
const PONG: &str = r#"{"type":"pong"}"#;

/// Opens WebSocket clients against one URL.
pub struct WsConnector {
    url: String,
    addrs: Vec<SocketAddr>,
    vendor_prefix: String,
}

impl WsConnector {
    /// Resolves the URL's host once; `token` is appended as `?token=`.
    pub async fn new(url: &str, token: Option<&str>, vendor_prefix: &str) -> anyhow::Result<Self> {
        if url.starts_with("https://") {
            bail!("--url {url:?} is a WebTransport URL: add --transport webtransport");
        }
        if url.starts_with("wss://") {
            bail!("wss:// is not supported by the bench yet: point --url at a plain ws:// listener");
        }
        let url = match token {
            Some(t) => venta_client::with_token(url, t),
            None => url.to_owned(),
        };
        let req = url.as_str().into_client_request().with_context(|| format!("--url {url:?} is not a ws:// URL"))?;
        let host = req.uri().host().context("--url has no host")?.trim_matches(['[', ']']).to_owned();
        let port = req.uri().port_u16().unwrap_or(80);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .collect();
        if addrs.is_empty() {
            bail!("{host} resolves to no address");
        }
        Ok(Self { url, addrs, vendor_prefix: vendor_prefix.to_owned() })
    }

    /// A fresh WebSocket to the URL (TCP and upgrade, nothing sent yet); the
    /// error is a short, countable reason.
    pub async fn upgrade(&self, src: Option<IpAddr>) -> Result<WebSocketStream<TcpStream>, String> {
        let tcp = tcp_connect(self.addr_for(src), src).await.map_err(|e| format!("tcp: {e}"))?;
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let (ws, _) = tokio_tungstenite::client_async_with_config(self.url.as_str(), tcp, Some(config)).await.map_err(
            |e| match e {
                WsError::Http(resp) => format!("upgrade refused: HTTP {}", resp.status().as_u16()),
                e => format!("upgrade: {e}"),
            },
        )?;
        Ok(ws)
    }

    /// The server address a connection from `src` should use (same family).
    fn addr_for(&self, src: Option<IpAddr>) -> SocketAddr {
        src.and_then(|s| self.addrs.iter().find(|a| a.is_ipv4() == s.is_ipv4()).copied()).unwrap_or(self.addrs[0])
    }
}

async fn tcp_connect(addr: SocketAddr, src: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let stream = match src {
        Some(ip) => {
            let sock = if ip.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(addr).await?
        }
        None => TcpStream::connect(addr).await?,
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// An open, subscribed WebSocket client.
pub struct WsConn {
    ws: WebSocketStream<TcpStream>,
    vendor_prefix: String,
}

impl Connector for WsConnector {
    type Conn = WsConn;

    async fn open(&self, t: &Target) -> Result<WsConn, String> {
        let ws = self.upgrade(t.src).await?;
        let mut conn = WsConn { ws, vendor_prefix: self.vendor_prefix.clone() };
        let sub =
            json!({"type": "subscribe_location", "data": {"vendorId": t.vendor, "userId": t.user}, "id": "bench"});
        conn.ws.send(Message::text(sub.to_string())).await.map_err(|e| format!("send subscribe: {e}"))?;
        conn.await_ack().await?;
        Ok(conn)
    }
}

impl WsConn {
    /// Reads until the `subscribed` ack; an `error` answer is the failure.
    async fn await_ack(&mut self) -> Result<(), String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<Incoming<'_>>(t.as_str()) {
                    Ok(m) if m.ty == "subscribed" => return Ok(()),
                    Ok(m) if m.ty == "error" => return Err(m.data.unwrap_or_default().refusal()),
                    Ok(m) if m.ty == "ping" => self.pong().await?,
                    _ => {}
                },
                Some(Ok(Message::Close(f))) => return Err(format!("closed before the ack: {}", close_reason(f))),
                None => return Err("connection ended before the ack".into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
            }
        }
    }

    async fn pong(&mut self) -> Result<(), String> {
        self.ws.send(Message::text(PONG)).await.map_err(|e| format!("send pong: {e}"))
    }
}

impl Conn for WsConn {
    async fn next_event(&mut self) -> Event {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => match serde_json::from_str::<Incoming<'_>>(t.as_str()) {
                    Ok(m) if m.ty == "location_updated" => match &m.data {
                        Some(d) => return Event::Update(d.delivery(&self.vendor_prefix)),
                        None => return Event::Unparsed,
                    },
                    Ok(m) if m.ty == "ping" => {
                        if let Err(e) = self.pong().await {
                            return Event::Closed(e);
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return Event::Unparsed,
                },
                Some(Ok(Message::Close(f))) => return Event::Closed(format!("closed by server: {}", close_reason(f))),
                None => return Event::Closed("connection ended".into()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Event::Closed(format!("read: {e}")),
            }
        }
    }
}

pub fn close_reason(f: Option<CloseFrame>) -> String {
    match f {
        Some(f) => format!("{} {}", u16::from(f.code), f.reason),
        None => "no close code".into(),
    }
}
