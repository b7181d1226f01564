//! The client against minimal in-process servers speaking the gateway's
//! wire (a wtransport endpoint with a self-signed certificate; a
//! tokio-tungstenite listener): framing both ways, pings answered, acks,
//! closes, the token on the URL, and the read bounds.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use venta_client::wt::{Trust, encode};
use venta_client::{Channel, Client, Closed, Error, Event, Options, Subscribe};
use venta_protocol::frame::FrameReader;
use wtransport::{Endpoint, Identity, RecvStream, ServerConfig, VarInt};

/// Bounds every await of a test: a hang fails instead of blocking the suite.
const TIMEOUT: Duration = Duration::from_secs(10);

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f).await.unwrap_or_else(|_| panic!("timed out"))
}

/// A one-session WebTransport server; `serve` gets the session and its stream.
async fn wt_server<F, Fut>(serve: F) -> (String, Trust, tokio::task::JoinHandle<()>)
where
    F: FnOnce(wtransport::Connection, wtransport::SendStream, RecvStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let identity = Identity::self_signed(["localhost", "127.0.0.1"]).unwrap_or_else(|e| panic!("{e}"));
    let trust = Trust::Hashes(identity.certificate_chain().as_slice().iter().map(|c| c.hash()).collect());
    let config = ServerConfig::builder()
        .with_bind_address("127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")))
        .with_identity(identity)
        .build();
    let server = Endpoint::server(config).unwrap_or_else(|e| panic!("{e}"));
    let port = server.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
    let task = tokio::spawn(async move {
        let request = server.accept().await.await.unwrap_or_else(|e| panic!("{e}"));
        let conn = request.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let (send, recv) = conn.accept_bi().await.unwrap_or_else(|e| panic!("{e}"));
        serve(conn, send, recv).await;
    });
    (format!("https://127.0.0.1:{port}/wt/location"), trust, task)
}

/// The next client frame, decoded.
async fn read_frame(recv: &mut RecvStream, frames: &mut FrameReader) -> Value {
    loop {
        if let Some(p) = frames.next_frame().unwrap_or_else(|e| panic!("{e}")) {
            return rmp_serde::from_slice(&p).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut buf = [0u8; 64];
        let n = recv.read(&mut buf).await.unwrap_or_else(|e| panic!("{e}")).unwrap_or_else(|| panic!("stream ended"));
        frames.push(&buf[..n]);
    }
}

#[tokio::test]
async fn webtransport_frames_in_pieces_pings_acks_and_the_close_code() {
    let sub = Subscribe::new(Channel::Location, "v1", "u1");
    let expected_sub = sub.message();
    let (url, trust, server) = wt_server(move |conn, mut send, mut recv| async move {
        let mut frames = FrameReader::new(4096);
        assert_eq!(read_frame(&mut recv, &mut frames).await, expected_sub);
        let mut wire = Vec::new();
        for m in [
            json!({"type": "ping"}),
            json!({"type": "subscribed", "data": {"channel": "location", "vendorId": "v1"}, "id": "s-location-v1"}),
            json!({"type": "location_updated", "data": {"vendorId": "v1", "lat": 1.5}}),
        ] {
            wire.extend(encode(&m).unwrap_or_else(|e| panic!("{e}")));
        }
        // A byte at a time: frame boundaries are the reader's business.
        for b in &wire {
            send.write_all(std::slice::from_ref(b)).await.unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(read_frame(&mut recv, &mut frames).await, json!({"type": "pong"}));
        conn.close(VarInt::from_u32(4000), b"heartbeat");
        conn.closed().await;
    })
    .await;
    let mut client =
        within(Client::connect(&url, &Options::default().trust(trust))).await.unwrap_or_else(|e| panic!("{e}"));
    let ack = within(client.subscribe(&sub)).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ack["data"]["vendorId"], "v1");
    let update = within(client.next_event()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(update, Event::Message(json!({"type": "location_updated", "data": {"vendorId": "v1", "lat": 1.5}})));
    let closed = within(client.next_event()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(closed, Event::Closed(Closed { code: Some(4000), reason: "heartbeat".into() }));
    within(server).await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn webtransport_refuses_an_oversized_frame_at_its_header() {
    let (url, trust, server) = wt_server(|conn, mut send, _recv| async move {
        // Only the header: a client that allocated first would wait for 1 GiB.
        send.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap_or_else(|e| panic!("{e}"));
        conn.closed().await;
    })
    .await;
    let options = Options::default().trust(trust).max_message_bytes(100);
    let mut client = within(Client::connect(&url, &options)).await.unwrap_or_else(|e| panic!("{e}"));
    within(client.send(&json!({"type": "ping"}))).await.unwrap_or_else(|e| panic!("{e}"));
    let err = within(client.next_event()).await.err();
    assert!(
        matches!(err, Some(Error::Frame(venta_protocol::frame::FrameError::TooLarge { len, max: 100 })) if len == 1 << 30),
        "{err:?}"
    );
    drop(client);
    within(server).await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn webtransport_with_the_wrong_hash_does_not_connect() {
    let (url, _trust, server) = wt_server(|_, _, _| async {}).await;
    let wrong = Trust::hashes(["00".repeat(32)]).unwrap_or_else(|e| panic!("{e}"));
    let r = within(Client::connect(&url, &Options::default().trust(wrong))).await;
    assert!(matches!(r, Err(Error::Connect(_))), "{r:?}");
    server.abort();
}

// The header callback's error type is tungstenite's, not ours.
#[allow(clippy::result_large_err)]
#[tokio::test]
async fn websocket_token_json_pings_acks_and_the_close_code() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let mut uri = String::new();
        let mut ws = tokio_tungstenite::accept_hdr_async(tcp, |req: &Request, resp: Response| {
            uri = req.uri().to_string();
            Ok(resp)
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(uri, "/ws/vendor?token=a%20b.c");
        let sub = ws.next().await.and_then(Result::ok).and_then(|m| m.into_text().ok()).unwrap_or_default();
        let sub: Value = serde_json::from_str(&sub).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sub["type"], "subscribe_vendor");
        for m in [
            json!({"type": "ping"}),
            json!({"type": "subscribed", "data": {"channel": "vendor", "vendorId": "v2"}, "id": "s-vendor-v2"}),
        ] {
            ws.send(Message::text(m.to_string())).await.unwrap_or_else(|e| panic!("{e}"));
        }
        let pong = ws.next().await.and_then(Result::ok).and_then(|m| m.into_text().ok()).unwrap_or_default();
        assert_eq!(pong.as_str(), r#"{"type":"pong"}"#);
        let close = CloseFrame { code: CloseCode::from(4000), reason: "heartbeat".into() };
        ws.send(Message::Close(Some(close))).await.unwrap_or_else(|e| panic!("{e}"));
    });
    let url = format!("ws://127.0.0.1:{port}/ws/vendor");
    let mut client =
        within(Client::connect(&url, &Options::default().token("a b.c"))).await.unwrap_or_else(|e| panic!("{e}"));
    let ack =
        within(client.subscribe(&Subscribe::new(Channel::Vendor, "v2", "u1"))).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ack["id"], "s-vendor-v2");
    let closed = within(client.next_event()).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(closed, Event::Closed(Closed { code: Some(4000), reason: "heartbeat".into() }));
    assert!(matches!(client.recv_datagram().await, Err(Error::Unsupported(_))));
    within(server).await.unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn websocket_refuses_a_message_over_the_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("{e}"));
    let port = listener.local_addr().unwrap_or_else(|e| panic!("{e}")).port();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap_or_else(|e| panic!("{e}"));
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap_or_else(|e| panic!("{e}"));
        let big = json!({"type": "location_updated", "data": "x".repeat(500)});
        // The client may already have dropped the connection: ignore.
        let _ = ws.send(Message::text(big.to_string())).await;
    });
    let url = format!("ws://127.0.0.1:{port}/ws/location");
    let mut client = within(Client::connect(&url, &Options::default().max_message_bytes(100)))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let err = within(client.next_event()).await.err();
    assert!(matches!(err, Some(Error::WebSocket(_))), "{err:?}");
    within(server).await.unwrap_or_else(|e| panic!("{e}"));
}
