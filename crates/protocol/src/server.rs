//! Server → client messages and their encodings.

use bytes::Bytes;
use serde::Serialize;

use super::{Channel, ErrorCode, Update, VendorId};

/// A wire encoding. The hub encodes each update at most once per codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// JSON text (WebSocket).
    Json,
    /// MessagePack maps with the JSON keys (WebTransport).
    MsgPack,
}

/// Everything the gateway sends to a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage<'a> {
    /// A location or vendor update.
    Update(&'a Update),
    /// The last known update of a topic, sent once on subscribe: data as
    /// in [`ServerMessage::Update`] plus `"snapshot": true`.
    Snapshot(&'a Update),
    /// Subscription acknowledged: updates published from now on arrive.
    Subscribed {
        /// The subscription's channel.
        channel: Channel,
        /// The subscription's vendor.
        vendor: &'a VendorId,
        /// The request's id, echoed.
        id: Option<&'a str>,
    },
    /// Unsubscription acknowledged (also when nothing was subscribed).
    Unsubscribed {
        /// The subscription's channel.
        channel: Channel,
        /// The subscription's vendor.
        vendor: &'a VendorId,
        /// The request's id, echoed.
        id: Option<&'a str>,
    },
    /// A refused request; the connection stays open.
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Human-readable detail.
        message: &'a str,
        /// The offending request's type.
        request_type: Option<&'a str>,
        /// For `rate_limited`: when to try again.
        retry_after_ms: Option<u64>,
        /// The request's id, echoed.
        id: Option<&'a str>,
    },
    /// Server heartbeat; clients answer `pong`.
    Ping,
    /// Answer to a client `ping`.
    Pong {
        /// The request's id, echoed.
        id: Option<&'a str>,
    },
    /// A `refresh` was accepted: the connection now lives until the new
    /// token's expiry.
    Refreshed {
        /// When the new token expires (RFC 3339 UTC); `None` while auth is off.
        expires_at: Option<&'a str>,
        /// The request's id, echoed.
        id: Option<&'a str>,
    },
}

impl ServerMessage<'_> {
    /// The message's `type`, also the metrics label.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Update(Update::Location(_)) | Self::Snapshot(Update::Location(_)) => "location_updated",
            Self::Update(Update::Vendor(_)) | Self::Snapshot(Update::Vendor(_)) => "vendor_updated",
            Self::Subscribed { .. } => "subscribed",
            Self::Unsubscribed { .. } => "unsubscribed",
            Self::Error { .. } => "error",
            Self::Ping => "ping",
            Self::Pong { .. } => "pong",
            Self::Refreshed { .. } => "refreshed",
        }
    }
}

#[derive(Serialize)]
struct Envelope<'a, D: Serialize> {
    #[serde(rename = "type")]
    ty: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<D>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

#[derive(Serialize)]
struct Snapshot<'a, T: Serialize> {
    #[serde(flatten)]
    update: &'a T,
    snapshot: bool,
}

#[derive(Serialize)]
struct Ack<'a> {
    channel: Channel,
    #[serde(rename = "vendorId")]
    vendor_id: &'a VendorId,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RefreshedData<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_at: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorData<'a> {
    code: ErrorCode,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_type: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_ms: Option<u64>,
}

fn to_bytes<D: Serialize>(codec: Codec, ty: &'static str, data: Option<D>, id: Option<&str>) -> Bytes {
    let env = Envelope { ty, data, id };
    match codec {
        // Serializing these types cannot fail: string keys, finite floats.
        Codec::Json => Bytes::from(serde_json::to_vec(&env).unwrap_or_default()),
        // Named: maps with the JSON keys, which browser decoders expect.
        Codec::MsgPack => Bytes::from(rmp_serde::to_vec_named(&env).unwrap_or_default()),
    }
}

/// Encodes a message in a codec.
pub fn encode(msg: &ServerMessage<'_>, codec: Codec) -> Bytes {
    let ty = msg.type_name();
    match msg {
        ServerMessage::Update(Update::Location(u)) => to_bytes(codec, ty, Some(u), None),
        ServerMessage::Update(Update::Vendor(u)) => to_bytes(codec, ty, Some(u), None),
        ServerMessage::Snapshot(Update::Location(u)) => {
            to_bytes(codec, ty, Some(Snapshot { update: u, snapshot: true }), None)
        }
        ServerMessage::Snapshot(Update::Vendor(u)) => {
            to_bytes(codec, ty, Some(Snapshot { update: u, snapshot: true }), None)
        }
        ServerMessage::Subscribed { channel, vendor, id } | ServerMessage::Unsubscribed { channel, vendor, id } => {
            to_bytes(codec, ty, Some(Ack { channel: *channel, vendor_id: vendor }), *id)
        }
        ServerMessage::Error { code, message, request_type, retry_after_ms, id } => to_bytes(
            codec,
            ty,
            Some(ErrorData { code: *code, message, request_type: *request_type, retry_after_ms: *retry_after_ms }),
            *id,
        ),
        // Every connection gets one per interval: no allocation for it.
        ServerMessage::Ping if codec == Codec::Json => Bytes::from_static(br#"{"type":"ping"}"#),
        ServerMessage::Ping => to_bytes::<()>(codec, ty, None, None),
        ServerMessage::Pong { id } => to_bytes::<()>(codec, ty, None, *id),
        ServerMessage::Refreshed { expires_at, id } => {
            to_bytes(codec, ty, Some(RefreshedData { expires_at: *expires_at }), *id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Location, LocationUpdate};

    #[test]
    fn encodes_the_seed_shapes() {
        let vendor = VendorId::parse("v1").unwrap_or_else(|_| unreachable!());
        let u = Update::Location(LocationUpdate {
            vendor_id: vendor.clone(),
            location: Location { lat: 1.5, long: -2.0 },
            timestamp: "2026-01-01T00:00:00Z".into(),
        });
        assert_eq!(
            encode(&ServerMessage::Update(&u), Codec::Json),
            &br#"{"type":"location_updated","data":{"vendorId":"v1","location":{"lat":1.5,"long":-2.0},"timestamp":"2026-01-01T00:00:00Z"}}"#[..]
        );
        let ack = ServerMessage::Subscribed { channel: Channel::Vendor, vendor: &vendor, id: Some("x") };
        assert_eq!(
            encode(&ack, Codec::Json),
            &br#"{"type":"subscribed","data":{"channel":"vendor","vendorId":"v1"},"id":"x"}"#[..]
        );
        assert_eq!(encode(&ServerMessage::Ping, Codec::Json), &br#"{"type":"ping"}"#[..]);
    }

    /// Every message decodes from MessagePack to exactly its JSON form.
    #[test]
    fn msgpack_is_the_json_message_as_a_map() {
        let vendor = VendorId::parse("v1").unwrap_or_else(|_| unreachable!());
        let mut fields = serde_json::Map::new();
        fields.insert("name".into(), "Tacos".into());
        fields.insert("n".into(), serde_json::json!([1, -2, 3.5, null, {"k": true}]));
        let loc = Update::Location(LocationUpdate {
            vendor_id: vendor.clone(),
            location: Location { lat: 1.5, long: -2.0 },
            timestamp: "2026-01-01T00:00:00Z".into(),
        });
        let ven = Update::Vendor(crate::VendorUpdate {
            vendor_id: vendor.clone(),
            vendor: fields,
            timestamp: "2026-01-01T00:00:00Z".into(),
        });
        let msgs = [
            ServerMessage::Update(&loc),
            ServerMessage::Update(&ven),
            ServerMessage::Snapshot(&loc),
            ServerMessage::Snapshot(&ven),
            ServerMessage::Subscribed { channel: Channel::Location, vendor: &vendor, id: Some("a") },
            ServerMessage::Unsubscribed { channel: Channel::Vendor, vendor: &vendor, id: None },
            ServerMessage::Error {
                code: ErrorCode::RateLimited,
                message: "slow",
                request_type: Some("ping"),
                retry_after_ms: Some(5),
                id: Some("x"),
            },
            ServerMessage::Ping,
            ServerMessage::Pong { id: Some("p") },
            ServerMessage::Refreshed { expires_at: Some("2026-01-01T00:00:00Z"), id: Some("r") },
        ];
        for msg in &msgs {
            let json: serde_json::Value = serde_json::from_slice(&encode(msg, Codec::Json)).unwrap_or_default();
            let bytes = encode(msg, Codec::MsgPack);
            assert!(matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)), "{msg:?} is not a map");
            let back: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap_or_default();
            assert_eq!(back, json, "{msg:?}");
        }
    }
}
