//! A WebTransport test client (wtransport) that pins the gateway's
//! certificate hash, frames MessagePack as the protocol says, and checks
//! every message it receives — stream frame or datagram — against
//! `schemas/server/any.json` after converting it to a JSON value. Built on
//! `venta_client::wt` (trust, sessions, framing, bounded stream reads); what
//! is added here is the tests' strictness: timeouts, panics, schema checks.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{Value, json};
use venta_client::wt::{FrameStream, Trust, decode_value, encode, open_session, parse_cert_hash};
use wtransport::endpoint::endpoint_side::Client;
use wtransport::error::ConnectingError;
use wtransport::tls::Sha256Digest;
use wtransport::{Connection, Endpoint, SendStream};

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
    parse_cert_hash(hex).unwrap_or_else(|e| panic!("{e}"))
}

/// A client endpoint trusting exactly these certificate hashes.
pub fn client_endpoint(hashes: &[&str]) -> Endpoint<Client> {
    let trust = Trust::Hashes(hashes.iter().map(|h| digest(h)).collect());
    venta_client::wt::endpoint(Some("127.0.0.1:0".parse().unwrap()), &trust).expect("client endpoint")
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
    let v = decode_value(bytes).unwrap_or_else(|e| panic!("{e}: {bytes:02x?}"));
    assert_schema("server/any.json", &v);
    v
}

pub fn frame(v: &Value) -> Vec<u8> {
    encode(v).unwrap()
}

/// Frames any bytes, valid MessagePack or not.
pub fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    venta_protocol::frame::write_frame(payload, &mut out).unwrap();
    out
}

pub struct WtClient {
    pub endpoint: Endpoint<Client>,
    pub conn: Connection,
    pub send: SendStream,
    stream: FrameStream,
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
        let endpoint = client_endpoint(hashes);
        // The session, then its stream (and, if refused, the close): each step within TIMEOUT.
        let (conn, send, recv) = tokio::time::timeout(3 * TIMEOUT, open_session(&endpoint, url, TIMEOUT))
            .await
            .expect("connect timed out")
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Self { endpoint, conn, send, stream: FrameStream::new(recv, 1 << 20), auto_pong: true }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_raw(&frame(&v)).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.send.write_all(bytes).await.expect("write");
    }

    /// Next stream message or the session's close. A stream that ends
    /// inside a frame, a frame over 1 MiB, or a stream end with no session
    /// close within TIMEOUT fails the test.
    pub async fn next_event(&mut self) -> WtEvent {
        loop {
            // The read, then (if the stream ended) the close: each within TIMEOUT.
            let next = tokio::time::timeout(2 * TIMEOUT, self.stream.next(&self.conn, false, TIMEOUT))
                .await
                .expect("no frame within timeout");
            let v = match next {
                Ok(payload) => decode_server(&payload),
                Err(venta_client::Error::Closed(c)) => return WtEvent::Closed(c.code, c.reason),
                Err(e) => panic!("the gateway's stream: {e}"),
            };
            if self.auto_pong && v["type"] == "ping" {
                self.send_json(json!({"type": "pong"})).await;
                continue;
            }
            return WtEvent::Msg(v);
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
