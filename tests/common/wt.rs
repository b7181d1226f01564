//! A WebTransport test client (wtransport) that pins the gateway's
//! certificate hash, frames MessagePack as the protocol says, and checks
//! every message it receives — stream frame or datagram — against
//! `schemas/server/any.json` after converting it to a JSON value.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};
use wtransport::endpoint::endpoint_side::Client;
use wtransport::error::{ConnectingError, ConnectionError, StreamReadExactError};
use wtransport::tls::Sha256Digest;
use wtransport::{ClientConfig, Connection, Endpoint, RecvStream, SendStream};

use super::{TIMEOUT, assert_schema};

/// The gateway's `/wt/cert-hash`, checked against its schema.
pub async fn cert_hash(http_base: &str) -> Value {
    let resp = reqwest::get(format!("{http_base}/wt/cert-hash")).await.expect("GET /wt/cert-hash");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers().get("access-control-allow-origin").and_then(|v| v.to_str().ok()),
        Some("*"),
        "pages on other origins must be able to read the hash"
    );
    let v: Value = resp.json().await.expect("cert-hash JSON");
    assert_schema("http/cert_hash.json", &v);
    v
}

pub fn digest(hex: &str) -> Sha256Digest {
    assert_eq!(hex.len(), 64, "{hex}");
    let bytes: Vec<u8> = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    Sha256Digest::new(bytes.try_into().unwrap())
}

/// A client endpoint trusting exactly these certificate hashes.
pub fn client_endpoint(hashes: &[&str]) -> Endpoint<Client> {
    let config = ClientConfig::builder()
        .with_bind_address("127.0.0.1:0".parse().unwrap())
        .with_server_certificate_hashes(hashes.iter().map(|h| digest(h)))
        .build();
    Endpoint::client(config).expect("client endpoint")
}

/// Opens a session (no stream yet).
pub async fn connect(url: &str, hashes: &[&str]) -> Result<(Endpoint<Client>, Connection), ConnectingError> {
    let endpoint = client_endpoint(hashes);
    let conn = tokio::time::timeout(TIMEOUT, endpoint.connect(url)).await.expect("connect timed out")?;
    Ok((endpoint, conn))
}

/// What the client saw next.
#[derive(Debug, PartialEq)]
pub enum WtEvent {
    Msg(Value),
    /// The session closed: application code and reason, if the gateway gave them.
    Closed(Option<u64>, String),
}

/// Decodes one MessagePack value strictly (no trailing bytes) and checks it
/// against the server schema.
pub fn decode_server(bytes: &[u8]) -> Value {
    assert!(matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)), "not a MessagePack map: {bytes:02x?}");
    let mut rest = bytes;
    let v: Value =
        rmp_serde::from_read(&mut rest).unwrap_or_else(|e| panic!("undecodable MessagePack {bytes:02x?}: {e}"));
    assert!(rest.is_empty(), "{} trailing bytes after {v}", rest.len());
    assert_schema("server/any.json", &v);
    v
}

pub fn frame(v: &Value) -> Vec<u8> {
    let payload = rmp_serde::to_vec_named(v).unwrap();
    raw_frame(&payload)
}

pub fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

pub struct WtClient {
    pub endpoint: Endpoint<Client>,
    pub conn: Connection,
    pub send: SendStream,
    pub recv: RecvStream,
    /// Whether to answer server pings with pong and hide them.
    pub auto_pong: bool,
}

impl WtClient {
    /// Connects to a test gateway, pinning the hash it publishes.
    pub async fn connect(gw: &super::TestGateway, path: &str) -> Self {
        let hash = cert_hash(&gw.http("")).await;
        Self::connect_url(&gw.wt_url(path), &[hash["value"].as_str().unwrap()]).await
    }

    pub async fn connect_url(url: &str, hashes: &[&str]) -> Self {
        let (endpoint, conn) = connect(url, hashes).await.unwrap_or_else(|e| panic!("connect {url}: {e}"));
        let (send, recv) = tokio::time::timeout(TIMEOUT, async { conn.open_bi().await.unwrap().await.unwrap() })
            .await
            .expect("open_bi timed out");
        Self { endpoint, conn, send, recv, auto_pong: true }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_raw(&frame(&v)).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("write");
    }

    /// Next stream message or the session's close.
    pub async fn next_event(&mut self) -> WtEvent {
        loop {
            let mut header = [0u8; 4];
            let read = tokio::time::timeout(TIMEOUT, self.recv.read_exact(&mut header))
                .await
                .expect("no frame within timeout");
            if let Err(e) = read {
                if let StreamReadExactError::FinishedEarly(n) = &e {
                    assert_eq!(*n, 0, "the gateway's stream ended inside a frame header");
                }
                return self.close_reason().await;
            }
            let len = u32::from_be_bytes(header) as usize;
            assert!(len <= 1 << 20, "absurd frame length {len}");
            let mut payload = vec![0u8; len];
            tokio::time::timeout(TIMEOUT, self.recv.read_exact(&mut payload))
                .await
                .expect("frame body timed out")
                .expect("the gateway's stream ended inside a frame");
            let v = decode_server(&payload);
            if self.auto_pong && v["type"] == "ping" {
                self.send_json(json!({"type": "pong"})).await;
                continue;
            }
            return WtEvent::Msg(v);
        }
    }

    async fn close_reason(&self) -> WtEvent {
        match tokio::time::timeout(TIMEOUT, self.conn.closed())
            .await
            .expect("session not closed after its stream ended")
        {
            ConnectionError::ApplicationClosed(c) => {
                WtEvent::Closed(Some(c.code().into_inner()), String::from_utf8_lossy(c.reason()).into_owned())
            }
            other => WtEvent::Closed(None, other.to_string()),
        }
    }

    pub async fn recv(&mut self) -> Value {
        match self.next_event().await {
            WtEvent::Msg(v) => v,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Waits for the close, skipping messages; returns (code, reason).
    pub async fn closed(&mut self) -> (Option<u64>, String) {
        loop {
            if let WtEvent::Closed(code, reason) = self.next_event().await {
                return (code, reason);
            }
        }
    }

    /// The next datagram, decoded and schema-checked.
    pub async fn recv_datagram(&self) -> Value {
        let dg = tokio::time::timeout(TIMEOUT, self.conn.receive_datagram())
            .await
            .expect("no datagram within timeout")
            .expect("datagram");
        decode_server(&dg.payload())
    }

    /// A datagram if one arrives within `wait`.
    pub async fn try_datagram(&self, wait: Duration) -> Option<Value> {
        match tokio::time::timeout(wait, self.conn.receive_datagram()).await {
            Ok(Ok(dg)) => Some(decode_server(&dg.payload())),
            _ => None,
        }
    }

    pub async fn subscribe(&mut self, channel: &str, vendor: &str) {
        self.subscribe_with(channel, vendor, json!({"vendorId": vendor, "userId": "u1"})).await;
    }

    pub async fn subscribe_datagram(&mut self, channel: &str, vendor: &str) {
        self.subscribe_with(channel, vendor, json!({"vendorId": vendor, "userId": "u1", "delivery": "datagram"})).await;
    }

    async fn subscribe_with(&mut self, channel: &str, vendor: &str, data: Value) {
        let id = format!("s-{channel}-{vendor}");
        self.send_json(json!({"type": format!("subscribe_{channel}"), "data": data, "id": id})).await;
        let ack = self.recv().await;
        assert_eq!(ack, json!({"type": "subscribed", "data": {"channel": channel, "vendorId": vendor}, "id": id}));
    }

    /// A round trip on the stream: everything the gateway queued before it
    /// has been read when this returns.
    pub async fn sync(&mut self, id: &str) {
        self.send_json(json!({"type": "ping", "id": id})).await;
        assert_eq!(self.recv().await, json!({"type": "pong", "id": id}));
    }
}
