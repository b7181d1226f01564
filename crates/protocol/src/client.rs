//! Client → server messages: the envelope rules of docs/protocol.md.

use serde::Deserialize as _;
use serde_json::{Map, Value};

use super::{AreaId, Channel, ErrorCode, UserId, VendorId};

/// The shape of an area as the client sent it: numbers checked to be
/// finite, nothing more. Geometry rules (ranges, `south <= north`, a
/// positive radius, the size limit) belong to the geo crate, which judges
/// the shape once for every entry point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AreaShape {
    /// `bbox {south, west, north, east}`; `west > east` crosses the
    /// antimeridian.
    BBox {
        /// Southern latitude.
        south: f64,
        /// Western longitude.
        west: f64,
        /// Northern latitude.
        north: f64,
        /// Eastern longitude.
        east: f64,
    },
    /// `circle {center {lat, long}, radiusM}`.
    Circle {
        /// Centre latitude.
        lat: f64,
        /// Centre longitude.
        long: f64,
        /// Radius in metres.
        radius_m: f64,
    },
}

/// How a location subscription wants its updates (WebTransport only;
/// WebSocket always uses the stream).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// Reliable and ordered, on the connection's stream.
    #[default]
    Stream,
    /// Unreliable datagrams: latest position wins.
    Datagram,
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `subscribe_location` / `subscribe_vendor`.
    Subscribe {
        /// Which channel.
        channel: Channel,
        /// Whose updates.
        vendor: VendorId,
        /// Who is asking (checked against the token when auth is on).
        user: UserId,
        /// Stream or datagram delivery.
        delivery: Delivery,
    },
    /// `unsubscribe_location` / `unsubscribe_vendor`.
    Unsubscribe {
        /// Which channel.
        channel: Channel,
        /// Whose updates.
        vendor: VendorId,
        /// Optional; when given it must be the token's user, like every
        /// `userId` (a client cannot act in another user's name).
        user: Option<UserId>,
    },
    /// `refresh`: a fresh token for the same user, before the connection's
    /// token expires (the connection is closed with 4001 at expiry).
    Refresh {
        /// The new JWT.
        token: String,
    },
    /// `subscribe_area`: follow every vendor inside an area; again with the
    /// same `areaId`, the area moves.
    SubscribeArea {
        /// The client's name for the area.
        area: AreaId,
        /// Who is asking (checked against the token when auth is on).
        user: UserId,
        /// Where.
        shape: AreaShape,
        /// Moves inside the area as datagrams (WebTransport).
        delivery: Delivery,
    },
    /// `unsubscribe_area`.
    UnsubscribeArea {
        /// Which area.
        area: AreaId,
    },
    /// Client heartbeat; answered with `pong`.
    Ping,
    /// Answer to the server's `ping`.
    Pong,
}

impl Command {
    /// The request's `type` as the client spelled it (for `requestType`).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Subscribe { channel: Channel::Location, .. } => "subscribe_location",
            Self::Subscribe { channel: Channel::Vendor, .. } => "subscribe_vendor",
            Self::Unsubscribe { channel: Channel::Location, .. } => "unsubscribe_location",
            Self::Unsubscribe { channel: Channel::Vendor, .. } => "unsubscribe_vendor",
            Self::Refresh { .. } => "refresh",
            Self::SubscribeArea { .. } => "subscribe_area",
            Self::UnsubscribeArea { .. } => "unsubscribe_area",
            Self::Ping => "ping",
            Self::Pong => "pong",
        }
    }
}

/// Every client message type, spelled as on the wire.
pub const CLIENT_TYPES: [&str; 9] = [
    "subscribe_location",
    "subscribe_vendor",
    "unsubscribe_location",
    "unsubscribe_vendor",
    "subscribe_area",
    "unsubscribe_area",
    "refresh",
    "ping",
    "pong",
];

/// A client's `type` as a metrics label: itself when it is a known type,
/// else `"unknown"`. Label values must never be chosen by a client: each
/// distinct one is a series kept for the life of the process.
pub fn type_label(ty: Option<&str>) -> &'static str {
    match ty {
        Some(t) => CLIENT_TYPES.iter().find(|k| **k == t).copied().unwrap_or("unknown"),
        None => "invalid",
    }
}

/// A decoded, validated client message.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Echoed in the answer when given.
    pub id: Option<String>,
    /// What to do.
    pub command: Command,
}

/// A message the gateway refuses, with everything the `error` reply needs.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// Stable error code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The request's `type`, when it could be read.
    pub request_type: Option<String>,
    /// The request's `id`, when it could be read.
    pub id: Option<String>,
}

impl Rejection {
    /// A rejection with no request context.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), request_type: None, id: None }
    }
}

/// Decodes a JSON text frame. Parsing goes through `Value` on purpose: client
/// messages are rare (rate-limited) and this gives precise error messages.
pub fn decode_json(bytes: &[u8]) -> Result<Request, Rejection> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Rejection::new(ErrorCode::InvalidJson, format!("invalid JSON: {e}")))?;
    decode_value(value)
}

/// Nesting allowed in a MessagePack frame. Client messages are two levels
/// deep; the bound keeps a hostile 4 KiB frame of nested arrays from
/// recursing thousands of levels on a runtime thread's stack.
const MSGPACK_MAX_DEPTH: usize = 32;

/// Decodes one WebTransport frame payload: a single MessagePack map with the
/// same keys as the JSON message. Anything that is not exactly one map
/// (undecodable bytes, trailing bytes, another type, non-string keys, binary
/// strings) is `invalid_frame`; the envelope rules then apply as for JSON.
pub fn decode_msgpack(bytes: &[u8]) -> Result<Request, Rejection> {
    let invalid = |message: String| Rejection::new(ErrorCode::InvalidFrame, message);
    let mut rest = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    de.set_max_depth(MSGPACK_MAX_DEPTH);
    let value = Value::deserialize(&mut de).map_err(|e| invalid(format!("undecodable MessagePack: {e}")))?;
    drop(de);
    if !rest.is_empty() {
        return Err(invalid(format!("{} trailing bytes after the MessagePack value", rest.len())));
    }
    if !value.is_object() {
        return Err(invalid("a frame must hold one MessagePack map".into()));
    }
    decode_value(value)
}

/// Applies the envelope rules to a parsed value; shared by every codec.
pub fn decode_value(value: Value) -> Result<Request, Rejection> {
    let Value::Object(mut obj) = value else {
        return Err(Rejection::new(ErrorCode::InvalidField, "message must be a JSON object"));
    };
    let id = match obj.remove("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.len() <= 128 => Some(s),
        Some(_) => {
            return Err(Rejection::new(ErrorCode::InvalidField, "id must be a string of at most 128 characters"));
        }
    };
    let reject = |code, message: String, request_type: Option<&str>| Rejection {
        code,
        message,
        request_type: request_type.map(str::to_owned),
        id: id.clone(),
    };
    let ty = match obj.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(_) => return Err(reject(ErrorCode::InvalidField, "type must be a string".into(), None)),
        None => return Err(reject(ErrorCode::InvalidField, "missing field type".into(), None)),
    };
    let data = obj.get("data");
    let command = match ty {
        "ping" => Command::Ping,
        "pong" => Command::Pong,
        "subscribe_location" | "subscribe_vendor" => {
            let channel = if ty == "subscribe_location" { Channel::Location } else { Channel::Vendor };
            let data = data_object(data).map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?;
            let vendor = vendor_field(data).map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?;
            let user = user_field(data)
                .map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?
                .ok_or_else(|| reject(ErrorCode::InvalidField, "missing field data.userId".into(), Some(ty)))?;
            let delivery = delivery_field(data).map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?;
            Command::Subscribe { channel, vendor, user, delivery }
        }
        "unsubscribe_location" | "unsubscribe_vendor" => {
            let channel = if ty == "unsubscribe_location" { Channel::Location } else { Channel::Vendor };
            let data = data_object(data).map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?;
            let vendor = vendor_field(data).map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?;
            let user = user_field(data).map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?;
            Command::Unsubscribe { channel, vendor, user }
        }
        "subscribe_area" => {
            let data = data_object(data).map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?;
            let area = area_field(data).map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?;
            let user = user_field(data)
                .map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?
                .ok_or_else(|| reject(ErrorCode::InvalidField, "missing field data.userId".into(), Some(ty)))?;
            let shape = shape_field(data).map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?;
            let delivery = delivery_field(data).map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?;
            Command::SubscribeArea { area, user, shape, delivery }
        }
        "unsubscribe_area" => {
            let data = data_object(data).map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?;
            let area = area_field(data).map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?;
            Command::UnsubscribeArea { area }
        }
        "refresh" => {
            let data = data_object(data).map_err(|m| reject(ErrorCode::InvalidField, m, Some(ty)))?;
            match data.get("token") {
                Some(Value::String(t)) if !t.is_empty() => Command::Refresh { token: t.clone() },
                Some(_) => {
                    return Err(reject(
                        ErrorCode::InvalidField,
                        "data.token must be a non-empty string".into(),
                        Some(ty),
                    ));
                }
                None => return Err(reject(ErrorCode::InvalidField, "missing field data.token".into(), Some(ty))),
            }
        }
        other => {
            return Err(reject(ErrorCode::UnknownType, format!("unknown message type {other:?}"), Some(other)));
        }
    };
    Ok(Request { id, command })
}

fn data_object(data: Option<&Value>) -> Result<&Map<String, Value>, String> {
    match data {
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err("data must be an object".into()),
        None => Err("missing field data".into()),
    }
}

/// `data.userId` when present (`None` when absent or null).
fn user_field(data: &Map<String, Value>) -> Result<Option<UserId>, String> {
    match data.get("userId") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => UserId::parse(s).map(Some).map_err(|e| format!("data.userId {e}")),
        Some(_) => Err("data.userId must be a string".into()),
    }
}

fn delivery_field(data: &Map<String, Value>) -> Result<Delivery, String> {
    match data.get("delivery") {
        None | Some(Value::Null) => Ok(Delivery::Stream),
        Some(Value::String(s)) if s == "stream" => Ok(Delivery::Stream),
        Some(Value::String(s)) if s == "datagram" => Ok(Delivery::Datagram),
        Some(_) => Err("data.delivery must be \"stream\" or \"datagram\"".into()),
    }
}

fn area_field(data: &Map<String, Value>) -> Result<AreaId, String> {
    match data.get("areaId") {
        Some(Value::String(s)) => AreaId::parse(s).map_err(|e| format!("data.areaId {e}")),
        Some(_) => Err("data.areaId must be a string".into()),
        None => Err("missing field data.areaId".into()),
    }
}

/// A finite number at `obj[key]`; `path` names it in the error.
fn number(obj: &Map<String, Value>, key: &str, path: &str) -> Result<f64, String> {
    match obj.get(key) {
        Some(Value::Number(n)) => {
            n.as_f64().filter(|v| v.is_finite()).ok_or_else(|| format!("{path} must be a finite number"))
        }
        Some(_) => Err(format!("{path} must be a number")),
        None => Err(format!("missing field {path}")),
    }
}

fn object<'a>(obj: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Map<String, Value>, String> {
    match obj.get(key) {
        Some(Value::Object(m)) => Ok(m),
        Some(_) => Err(format!("{path} must be an object")),
        None => Err(format!("missing field {path}")),
    }
}

/// Exactly one of `bbox` and `circle`.
fn shape_field(data: &Map<String, Value>) -> Result<AreaShape, String> {
    let present = |k: &str| data.get(k).is_some_and(|v| !v.is_null());
    match (present("bbox"), present("circle")) {
        (true, true) => Err("give exactly one of data.bbox and data.circle, not both".into()),
        (false, false) => Err("missing field data.bbox or data.circle".into()),
        (true, false) => {
            let b = object(data, "bbox", "data.bbox")?;
            Ok(AreaShape::BBox {
                south: number(b, "south", "data.bbox.south")?,
                west: number(b, "west", "data.bbox.west")?,
                north: number(b, "north", "data.bbox.north")?,
                east: number(b, "east", "data.bbox.east")?,
            })
        }
        (false, true) => {
            let c = object(data, "circle", "data.circle")?;
            let center = object(c, "center", "data.circle.center")?;
            Ok(AreaShape::Circle {
                lat: number(center, "lat", "data.circle.center.lat")?,
                long: number(center, "long", "data.circle.center.long")?,
                radius_m: number(c, "radiusM", "data.circle.radiusM")?,
            })
        }
    }
}

fn vendor_field(data: &Map<String, Value>) -> Result<VendorId, String> {
    match data.get("vendorId") {
        Some(Value::String(s)) => VendorId::parse(s).map_err(|e| format!("data.vendorId {e}")),
        Some(_) => Err("data.vendorId must be a string".into()),
        None => Err("missing field data.vendorId".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(s: &str) -> ErrorCode {
        decode_json(s.as_bytes()).map(|_| ()).err().map(|r| r.code).unwrap_or(ErrorCode::Internal)
    }

    #[test]
    fn decodes_every_type() {
        let r = decode_json(br#"{"type":"subscribe_location","data":{"vendorId":"v1","userId":"u1"},"id":"a"}"#);
        let Ok(Request { id, command: Command::Subscribe { channel, vendor, .. } }) = r else { panic!("{r:?}") };
        assert_eq!((id.as_deref(), channel, vendor.as_str()), (Some("a"), Channel::Location, "v1"));
        assert!(matches!(
            decode_json(br#"{"type":"unsubscribe_vendor","data":{"vendorId":"v1"}}"#).map(|r| r.command),
            Ok(Command::Unsubscribe { channel: Channel::Vendor, .. })
        ));
        assert_eq!(decode_json(br#"{"type":"ping"}"#).map(|r| r.command), Ok(Command::Ping));
        assert_eq!(decode_json(br#"{"type":"pong","data":{}}"#).map(|r| r.command), Ok(Command::Pong));
    }

    #[test]
    fn envelope_errors_have_their_codes() {
        assert_eq!(code("{"), ErrorCode::InvalidJson);
        assert_eq!(code("[1]"), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"data":{}}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"type":5}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code(r#"{"type":"subscribe_location","data":{"vendorId":"v.1","userId":"u"}}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(code(r#"{"type":"subscribe_location","data":{"vendorId":"v1"}}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"type":"subscribe_vendor"}"#), ErrorCode::InvalidField);
    }

    fn mp(v: &Value) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap_or_else(|e| panic!("{e}"))
    }

    fn mp_code(bytes: &[u8]) -> ErrorCode {
        decode_msgpack(bytes).map(|_| ()).err().map(|r| r.code).unwrap_or(ErrorCode::Internal)
    }

    #[test]
    fn msgpack_follows_the_json_envelope_rules() {
        let sub = serde_json::json!({"type": "subscribe_location", "id": "1",
            "data": {"vendorId": "v1", "userId": "u1", "delivery": "datagram"}});
        let r = decode_msgpack(&mp(&sub));
        let Ok(Request { id, command: Command::Subscribe { delivery, .. } }) = r else { panic!("{r:?}") };
        assert_eq!((id.as_deref(), delivery), (Some("1"), Delivery::Datagram));
        assert_eq!(mp_code(&mp(&serde_json::json!({"type": "dance"}))), ErrorCode::UnknownType);
        assert_eq!(mp_code(&mp(&serde_json::json!({"type": 5}))), ErrorCode::InvalidField);
        let bad_vendor = serde_json::json!({"type": "subscribe_vendor", "data": {"vendorId": "a.b", "userId": "u"}});
        assert_eq!(mp_code(&mp(&bad_vendor)), ErrorCode::InvalidField);
    }

    #[test]
    fn msgpack_frame_errors_are_invalid_frame() {
        let ping = mp(&serde_json::json!({"type": "ping"}));
        let mut trailing = ping.clone();
        trailing.push(0xc0);
        let mut int_key = vec![0x81, 0x01]; // {1: "ping"}
        int_key.extend(mp(&serde_json::json!("ping")));
        let binary = [0x81, 0xa4, b't', b'y', b'p', b'e', 0xc4, 0x01, b'x']; // {"type": bin}
        let deep: Vec<u8> = std::iter::repeat_n(0x91u8, 4000).chain([0x80]).collect();
        let array_bomb: Vec<u8> = std::iter::repeat_n([0xdd, 0xff, 0xff, 0xff, 0xff], 800).flatten().collect();
        for (what, bytes) in [
            ("empty", &[][..]),
            ("garbage", &[0xc1][..]),
            ("cut short", &ping[..ping.len() - 1]),
            ("trailing byte", &trailing[..]),
            ("array", &mp(&serde_json::json!(["ping"]))[..]),
            ("string", &mp(&serde_json::json!("ping"))[..]),
            ("nil", &[0xc0][..]),
            ("integer key", &int_key[..]),
            ("binary value", &binary[..]),
            ("deep nesting", &deep[..]),
            ("huge claimed array", &array_bomb[..]),
        ] {
            assert_eq!(mp_code(bytes), ErrorCode::InvalidFrame, "{what}");
        }
        assert_eq!(decode_msgpack(&ping).map(|r| r.command), Ok(Command::Ping));
    }

    #[test]
    fn metric_labels_are_never_the_clients_words() {
        assert_eq!(type_label(Some("subscribe_vendor")), "subscribe_vendor");
        assert_eq!(type_label(Some("dance")), "unknown");
        assert_eq!(type_label(Some("")), "unknown");
        assert_eq!(type_label(None), "invalid");
        for ty in CLIENT_TYPES {
            assert_eq!(type_label(Some(ty)), ty);
        }
    }

    #[test]
    fn unsubscribe_may_name_the_user_and_refresh_needs_a_token() {
        let r = decode_json(br#"{"type":"unsubscribe_location","data":{"vendorId":"v1","userId":"u2"}}"#);
        let Ok(Request { command: Command::Unsubscribe { user, .. }, .. }) = r else { panic!("{r:?}") };
        assert_eq!(user.as_ref().map(UserId::as_str), Some("u2"));
        assert_eq!(
            code(r#"{"type":"unsubscribe_location","data":{"vendorId":"v1","userId":"a.b"}}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            decode_json(br#"{"type":"refresh","data":{"token":"t"}}"#).map(|r| r.command),
            Ok(Command::Refresh { token: "t".into() })
        );
        assert_eq!(code(r#"{"type":"refresh","data":{"token":""}}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"type":"refresh","data":{}}"#), ErrorCode::InvalidField);
    }

    #[test]
    fn area_messages_decode_with_exactly_one_shape() {
        let r = decode_json(
            br#"{"type":"subscribe_area","id":"1","data":{"areaId":"map","userId":"u1","bbox":{"south":40.4,"west":-3.72,"north":40.43,"east":-3.68}}}"#,
        );
        let Ok(Request { command: Command::SubscribeArea { area, shape, delivery, .. }, .. }) = r else {
            panic!("{r:?}")
        };
        assert_eq!(area.as_str(), "map");
        assert_eq!(shape, AreaShape::BBox { south: 40.4, west: -3.72, north: 40.43, east: -3.68 });
        assert_eq!(delivery, Delivery::Stream);
        let r = decode_json(
            br#"{"type":"subscribe_area","data":{"areaId":"c","userId":"u1","circle":{"center":{"lat":1,"long":2},"radiusM":500},"delivery":"datagram"}}"#,
        );
        let Ok(Request { command: Command::SubscribeArea { shape, delivery, .. }, .. }) = r else { panic!("{r:?}") };
        assert_eq!(shape, AreaShape::Circle { lat: 1.0, long: 2.0, radius_m: 500.0 });
        assert_eq!(delivery, Delivery::Datagram);
        assert!(matches!(
            decode_json(br#"{"type":"unsubscribe_area","data":{"areaId":"c"}}"#).map(|r| r.command),
            Ok(Command::UnsubscribeArea { .. })
        ));
        for bad in [
            r#"{"type":"subscribe_area","data":{"areaId":"a","userId":"u"}}"#,
            r#"{"type":"subscribe_area","data":{"areaId":"a","userId":"u","bbox":{"south":1,"west":1,"north":2,"east":2},"circle":{"center":{"lat":1,"long":2},"radiusM":5}}}"#,
            r#"{"type":"subscribe_area","data":{"areaId":"a","userId":"u","bbox":{"south":"1","west":1,"north":2,"east":2}}}"#,
            r#"{"type":"subscribe_area","data":{"areaId":"a","userId":"u","bbox":{"west":1,"north":2,"east":2}}}"#,
            r#"{"type":"subscribe_area","data":{"areaId":"a","userId":"u","circle":{"center":{"lat":1},"radiusM":5}}}"#,
            r#"{"type":"subscribe_area","data":{"areaId":"a","userId":"u","circle":[1,2]}}"#,
            r#"{"type":"subscribe_area","data":{"areaId":"a.b","userId":"u","circle":{"center":{"lat":1,"long":2},"radiusM":5}}}"#,
            r#"{"type":"subscribe_area","data":{"userId":"u","circle":{"center":{"lat":1,"long":2},"radiusM":5}}}"#,
            r#"{"type":"subscribe_area","data":{"areaId":"a","circle":{"center":{"lat":1,"long":2},"radiusM":5}}}"#,
            r#"{"type":"unsubscribe_area","data":{}}"#,
        ] {
            assert_eq!(code(bad), ErrorCode::InvalidField, "{bad}");
        }
    }

    #[test]
    fn rejections_keep_id_and_type() {
        let r = decode_json(br#"{"type":"subscribe_vendor","id":"7","data":{"vendorId":"*"}}"#);
        let Err(rej) = r else { panic!("{r:?}") };
        assert_eq!(rej.id.as_deref(), Some("7"));
        assert_eq!(rej.request_type.as_deref(), Some("subscribe_vendor"));
    }
}
