//! WebSocket: one JSON text frame per message (docs/protocol.md).

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{Closed, Error, Event, Options, Subscribe, answer, is_ping};

/// `{"type":"pong"}`, the answer to the server's heartbeat.
const PONG: &str = r#"{"type":"pong"}"#;

/// A WebSocket client.
#[derive(Debug)]
pub struct WsClient {
    /// The socket, for what this API does not cover (raw frames, close).
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Whether [`WsClient::next_event`] answers pings and hides them.
    pub auto_pong: bool,
}

impl WsClient {
    /// Connects to `url` (`ws://`; `wss://` where tokio-tungstenite has
    /// TLS), adding the token. Messages and frames over
    /// `options.max_message_bytes` are refused by tungstenite as they arrive.
    pub async fn connect(url: &str, options: &Options) -> Result<Self, Error> {
        let limit = Some(options.max_message_bytes);
        let config = WebSocketConfig::default().max_message_size(limit).max_frame_size(limit);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(options.url(url), Some(config), true)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => Error::Refused(resp.status().as_u16()),
                e => Error::WebSocket(e),
            })?;
        Ok(Self { ws, auto_pong: options.auto_pong })
    }

    /// Sends one message as a JSON text frame.
    pub async fn send(&mut self, message: &Value) -> Result<(), Error> {
        Ok(self.ws.send(Message::text(message.to_string())).await?)
    }

    /// The next JSON message, or the close. A text frame that is not JSON is
    /// an error; binary frames and protocol pings are skipped (tungstenite
    /// answers the pings).
    pub async fn next_event(&mut self) -> Result<Event, Error> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).map_err(|e| Error::Decode(e.to_string()))?;
                    if self.auto_pong && is_ping(&v) {
                        self.ws.send(Message::text(PONG)).await?;
                        continue;
                    }
                    return Ok(Event::Message(v));
                }
                Some(Ok(Message::Close(frame))) => {
                    let closed = match frame {
                        Some(f) => Closed { code: Some(u16::from(f.code).into()), reason: f.reason.to_string() },
                        None => Closed { code: None, reason: "no close code".into() },
                    };
                    return Ok(Event::Closed(closed));
                }
                None => return Ok(Event::Closed(Closed { code: None, reason: "connection ended".into() })),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Subscribes and returns the `subscribed` ack (an `error` answer is
    /// [`Error::Rejected`]).
    pub async fn subscribe(&mut self, subscribe: &Subscribe<'_>) -> Result<Value, Error> {
        self.send(&subscribe.message()).await?;
        loop {
            if let Some(r) = answer(self.next_event().await?, "subscribed") {
                return r;
            }
        }
    }
}
