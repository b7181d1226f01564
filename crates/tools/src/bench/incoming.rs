//! The parts of a server message the bench looks at, shared by both codecs:
//! WebSocket JSON and WebTransport MessagePack carry the same message object
//! (docs/protocol.md), so one set of serde types decodes both and the accounting
//! cannot differ between transports.

use std::borrow::Cow;

use serde::Deserialize;

use super::marker;
use super::transport::Delivery;

/// A server message: its type and, if any, its data.
#[derive(Deserialize)]
pub struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    pub ty: Cow<'a, str>,
    #[serde(borrow)]
    pub data: Option<Data<'a>>,
}

/// The `data` fields of `location_updated` and `error`.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Data<'a> {
    // Plain `&str`: borrowed, no allocation per update (ids and timestamps
    // never contain escapes; one that did would count as unparsed).
    pub vendor_id: Option<&'a str>,
    pub location: Option<Location>,
    pub timestamp: Option<&'a str>,
    #[serde(default)]
    pub snapshot: bool,
    #[serde(borrow)]
    pub code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub message: Option<Cow<'a, str>>,
}

/// `location` of an update.
#[derive(Deserialize)]
pub struct Location {
    pub lat: f64,
    pub long: f64,
}

impl Data<'_> {
    /// The update as the statistics count it; vendor ids are
    /// `vendor_prefix` plus a number.
    pub fn delivery(&self, vendor_prefix: &str) -> Delivery {
        let vendor_index =
            self.vendor_id.and_then(|v| v.strip_prefix(vendor_prefix)).and_then(|n| n.parse::<u32>().ok());
        let marker = match (&self.location, self.timestamp) {
            (Some(l), Some(ts)) => marker::decode(l.lat, l.long, ts),
            _ => None,
        };
        Delivery { vendor_index, snapshot: self.snapshot, marker }
    }

    /// An `error` answer to the subscribe, as a countable reason.
    pub fn refusal(&self) -> String {
        format!(
            "subscribe refused: {} ({})",
            self.code.as_deref().unwrap_or_default(),
            self.message.as_deref().unwrap_or_default()
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn decodes_what_the_gateway_sends() {
        let frame = r#"{"type":"location_updated","data":{"vendorId":"v42","location":{"lat":0.000123,"long":3},"timestamp":"2026-01-02T03:04:05.123456789Z"}}"#;
        let m: Incoming<'_> = serde_json::from_str(frame).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.ty, "location_updated");
        let d = m.data.unwrap_or_default().delivery("v");
        assert_eq!(d.vendor_index, Some(42));
        assert_eq!(d.marker.map(|m| (m.seq, m.phase, m.sent_ns)), Some((123, 3, 1_767_323_045_123_456_789)));
        let snap = r#"{"type":"location_updated","data":{"vendorId":"v1","location":{"lat":1,"long":0},"timestamp":"2026-01-02T03:04:05Z","snapshot":true}}"#;
        let m: Incoming<'_> = serde_json::from_str(snap).unwrap_or_else(|e| panic!("{e}"));
        assert!(m.data.is_some_and(|d| d.snapshot));
        let err = r#"{"type":"error","data":{"code":"forbidden","message":"userId \"x\" differs"},"id":"bench"}"#;
        let m: Incoming<'_> = serde_json::from_str(err).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.data.map(|d| d.refusal()).as_deref(), Some("subscribe refused: forbidden (userId \"x\" differs)"));
    }

    /// The same message as MessagePack (what the WebTransport edge sends:
    /// `to_vec_named`, integers where the JSON number was whole) gives the
    /// same delivery.
    #[test]
    fn messagepack_decodes_like_json() {
        let v: Value = json!({"type": "location_updated", "data": {"vendorId": "v42",
            "location": {"lat": 0.000123, "long": 3}, "timestamp": "2026-01-02T03:04:05.123456789Z"}});
        let bytes = rmp_serde::to_vec_named(&v).unwrap_or_else(|e| panic!("{e}"));
        let m: Incoming<'_> = rmp_serde::from_slice(&bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(m.ty, "location_updated");
        let text = v.to_string();
        let j: Incoming<'_> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let (a, b) = (m.data.unwrap_or_default().delivery("v"), j.data.unwrap_or_default().delivery("v"));
        assert_eq!(a, b);
        assert!(a.marker.is_some());
    }
}
