//! Server → client messages and their encodings.

use bytes::Bytes;
use serde::Serialize;

use super::{AreaId, Channel, ErrorCode, Location, Update, VendorId};

/// A vendor inside an area: an entry of `area_snapshot`, and the body of
/// `vendor_entered` and of an area's `location_updated`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AreaVendor {
    /// Who.
    pub vendor_id: VendorId,
    /// Where.
    pub location: Location,
    /// The position's time (RFC 3339, UTC).
    pub timestamp: String,
}

/// Why a vendor left an area (`vendor_left.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftReason {
    /// It moved out.
    Moved,
    /// No position for `GEO_VENDOR_TTL`.
    Expired,
    /// The client moved the area away from it.
    AreaChanged,
}

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
    /// `subscribed` to an area: `{channel: "area", areaId}`.
    AreaSubscribed {
        /// The area.
        area: &'a AreaId,
        /// The request's id, echoed.
        id: Option<&'a str>,
    },
    /// `unsubscribed` from an area.
    AreaUnsubscribed {
        /// The area.
        area: &'a AreaId,
        /// The request's id, echoed.
        id: Option<&'a str>,
    },
    /// The vendors inside a new area, once, before any live event of it.
    AreaSnapshot {
        /// The area.
        area: &'a AreaId,
        /// Who is inside (at most `GEO_SNAPSHOT_MAX`).
        vendors: &'a [AreaVendor],
        /// More were inside than listed.
        truncated: bool,
    },
    /// A vendor came into an area (or the area moved over it).
    VendorEntered {
        /// The area.
        area: &'a AreaId,
        /// Who and where.
        vendor: &'a AreaVendor,
    },
    /// A vendor inside an area moved and stayed inside: `location_updated`
    /// with `areaId`.
    AreaMoved {
        /// The area.
        area: &'a AreaId,
        /// Who and where.
        vendor: &'a AreaVendor,
    },
    /// A vendor is no longer inside an area.
    VendorLeft {
        /// The area.
        area: &'a AreaId,
        /// Who.
        vendor: &'a VendorId,
        /// Why.
        reason: LeftReason,
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
    /// Every value [`ServerMessage::type_name`] returns: the metrics resolve
    /// their series for these once.
    pub const TYPE_NAMES: &'static [&'static str] = &[
        "location_updated",
        "vendor_updated",
        "subscribed",
        "unsubscribed",
        "area_snapshot",
        "vendor_entered",
        "vendor_left",
        "error",
        "ping",
        "pong",
        "refreshed",
    ];

    /// The message's `type`, also the metrics label.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Update(Update::Location(_)) | Self::Snapshot(Update::Location(_)) => "location_updated",
            Self::Update(Update::Vendor(_)) | Self::Snapshot(Update::Vendor(_)) => "vendor_updated",
            Self::Subscribed { .. } | Self::AreaSubscribed { .. } => "subscribed",
            Self::Unsubscribed { .. } | Self::AreaUnsubscribed { .. } => "unsubscribed",
            Self::AreaSnapshot { .. } => "area_snapshot",
            Self::VendorEntered { .. } => "vendor_entered",
            Self::AreaMoved { .. } => "location_updated",
            Self::VendorLeft { .. } => "vendor_left",
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
struct AreaAck<'a> {
    channel: &'static str,
    area_id: &'a AreaId,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AreaSnapshotData<'a> {
    area_id: &'a AreaId,
    vendors: &'a [AreaVendor],
    truncated: bool,
}

/// `vendor_entered` puts `areaId` first, `location_updated` last (as an
/// addition to the per-vendor message's fields).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AreaVendorData<'a> {
    area_id: &'a AreaId,
    #[serde(flatten)]
    vendor: &'a AreaVendor,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AreaMovedData<'a> {
    #[serde(flatten)]
    vendor: &'a AreaVendor,
    area_id: &'a AreaId,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct VendorLeftData<'a> {
    area_id: &'a AreaId,
    vendor_id: &'a VendorId,
    reason: LeftReason,
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
        ServerMessage::AreaSubscribed { area, id } | ServerMessage::AreaUnsubscribed { area, id } => {
            to_bytes(codec, ty, Some(AreaAck { channel: "area", area_id: area }), *id)
        }
        ServerMessage::AreaSnapshot { area, vendors, truncated } => {
            to_bytes(codec, ty, Some(AreaSnapshotData { area_id: area, vendors, truncated: *truncated }), None)
        }
        ServerMessage::VendorEntered { area, vendor } => {
            to_bytes(codec, ty, Some(AreaVendorData { area_id: area, vendor }), None)
        }
        ServerMessage::AreaMoved { area, vendor } => {
            to_bytes(codec, ty, Some(AreaMovedData { vendor, area_id: area }), None)
        }
        ServerMessage::VendorLeft { area, vendor, reason } => {
            to_bytes(codec, ty, Some(VendorLeftData { area_id: area, vendor_id: vendor, reason: *reason }), None)
        }
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

    /// The seed's location update of `vendor`.
    fn located(vendor: &VendorId) -> Update {
        Update::Location(LocationUpdate {
            vendor_id: vendor.clone(),
            location: Location { lat: 1.5, long: -2.0 },
            timestamp: "2026-01-01T00:00:00Z".into(),
        })
    }

    #[test]
    fn encodes_the_seed_shapes() {
        let vendor = VendorId::parse("v1").unwrap_or_else(|_| unreachable!());
        let u = located(&vendor);
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

    #[test]
    fn type_names_lists_every_type_once() {
        let vendor = VendorId::parse("v1").unwrap_or_else(|_| unreachable!());
        let area = AreaId::parse("map").unwrap_or_else(|_| unreachable!());
        let u = located(&vendor);
        let inside = AreaVendor {
            vendor_id: vendor.clone(),
            location: Location { lat: 1.5, long: -2.0 },
            timestamp: "t".into(),
        };
        let msgs = [
            ServerMessage::Update(&u),
            ServerMessage::Snapshot(&u),
            ServerMessage::Subscribed { channel: Channel::Location, vendor: &vendor, id: None },
            ServerMessage::Unsubscribed { channel: Channel::Location, vendor: &vendor, id: None },
            ServerMessage::Error {
                code: ErrorCode::InvalidField,
                message: "m",
                request_type: None,
                retry_after_ms: None,
                id: None,
            },
            ServerMessage::AreaSubscribed { area: &area, id: None },
            ServerMessage::AreaUnsubscribed { area: &area, id: None },
            ServerMessage::AreaSnapshot { area: &area, vendors: &[], truncated: false },
            ServerMessage::VendorEntered { area: &area, vendor: &inside },
            ServerMessage::AreaMoved { area: &area, vendor: &inside },
            ServerMessage::VendorLeft { area: &area, vendor: &vendor, reason: LeftReason::Moved },
            ServerMessage::Ping,
            ServerMessage::Pong { id: None },
            ServerMessage::Refreshed { expires_at: None, id: None },
        ];
        for m in &msgs {
            // A new variant fails to compile here until it is listed above.
            match m {
                ServerMessage::Update(_)
                | ServerMessage::Snapshot(_)
                | ServerMessage::Subscribed { .. }
                | ServerMessage::Unsubscribed { .. }
                | ServerMessage::Error { .. }
                | ServerMessage::AreaSubscribed { .. }
                | ServerMessage::AreaUnsubscribed { .. }
                | ServerMessage::AreaSnapshot { .. }
                | ServerMessage::VendorEntered { .. }
                | ServerMessage::AreaMoved { .. }
                | ServerMessage::VendorLeft { .. }
                | ServerMessage::Ping
                | ServerMessage::Pong { .. }
                | ServerMessage::Refreshed { .. } => {}
            }
            assert!(ServerMessage::TYPE_NAMES.contains(&m.type_name()), "{}", m.type_name());
        }
        let mut names = ServerMessage::TYPE_NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ServerMessage::TYPE_NAMES.len(), "no duplicates");
    }

    #[test]
    fn encodes_the_area_messages() {
        let area = AreaId::parse("map").unwrap_or_else(|_| unreachable!());
        let vendor = VendorId::parse("v1").unwrap_or_else(|_| unreachable!());
        let inside = AreaVendor {
            vendor_id: vendor.clone(),
            location: Location { lat: 1.5, long: -2.0 },
            timestamp: "2026-01-01T00:00:00Z".into(),
        };
        let json = |m: &ServerMessage<'_>| String::from_utf8(encode(m, Codec::Json).to_vec()).unwrap_or_default();
        assert_eq!(
            json(&ServerMessage::AreaSubscribed { area: &area, id: Some("1") }),
            r#"{"type":"subscribed","data":{"channel":"area","areaId":"map"},"id":"1"}"#
        );
        assert_eq!(
            json(&ServerMessage::AreaSnapshot { area: &area, vendors: std::slice::from_ref(&inside), truncated: true }),
            r#"{"type":"area_snapshot","data":{"areaId":"map","vendors":[{"vendorId":"v1","location":{"lat":1.5,"long":-2.0},"timestamp":"2026-01-01T00:00:00Z"}],"truncated":true}}"#
        );
        assert_eq!(
            json(&ServerMessage::VendorEntered { area: &area, vendor: &inside }),
            r#"{"type":"vendor_entered","data":{"areaId":"map","vendorId":"v1","location":{"lat":1.5,"long":-2.0},"timestamp":"2026-01-01T00:00:00Z"}}"#
        );
        assert_eq!(
            json(&ServerMessage::AreaMoved { area: &area, vendor: &inside }),
            r#"{"type":"location_updated","data":{"vendorId":"v1","location":{"lat":1.5,"long":-2.0},"timestamp":"2026-01-01T00:00:00Z","areaId":"map"}}"#
        );
        assert_eq!(
            json(&ServerMessage::VendorLeft { area: &area, vendor: &vendor, reason: LeftReason::Expired }),
            r#"{"type":"vendor_left","data":{"areaId":"map","vendorId":"v1","reason":"expired"}}"#
        );
    }

    /// Every message decodes from MessagePack to exactly its JSON form.
    #[test]
    fn msgpack_is_the_json_message_as_a_map() {
        let vendor = VendorId::parse("v1").unwrap_or_else(|_| unreachable!());
        let mut fields = serde_json::Map::new();
        fields.insert("name".into(), "Tacos".into());
        fields.insert("n".into(), serde_json::json!([1, -2, 3.5, null, {"k": true}]));
        let loc = located(&vendor);
        let ven = Update::Vendor(crate::VendorUpdate {
            vendor_id: vendor.clone(),
            vendor: fields,
            timestamp: "2026-01-01T00:00:00Z".into(),
        });
        let area = AreaId::parse("map").unwrap_or_else(|_| unreachable!());
        let inside = AreaVendor {
            vendor_id: vendor.clone(),
            location: Location { lat: 1.5, long: -2.0 },
            timestamp: "2026-01-01T00:00:00Z".into(),
        };
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
            ServerMessage::AreaSubscribed { area: &area, id: Some("a") },
            ServerMessage::AreaUnsubscribed { area: &area, id: None },
            ServerMessage::AreaSnapshot { area: &area, vendors: std::slice::from_ref(&inside), truncated: false },
            ServerMessage::VendorEntered { area: &area, vendor: &inside },
            ServerMessage::AreaMoved { area: &area, vendor: &inside },
            ServerMessage::VendorLeft { area: &area, vendor: &vendor, reason: LeftReason::AreaChanged },
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
