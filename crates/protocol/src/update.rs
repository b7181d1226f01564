//! Updates as publishers send them (HTTP, NATS, gRPC) and as clients get them.

use serde::Serialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{Channel, Topic, VendorId};

/// A publish payload that breaks the contract; `field` names the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// JSON path of the offending field (`location.lat`), or `body`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ValidationError {
    fn new(field: &str, message: impl Into<String>) -> Self {
        Self { field: field.to_owned(), message: message.into() }
    }
}

/// A position on the map.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Location {
    /// Latitude in [-90, 90].
    pub lat: f64,
    /// Longitude in [-180, 180].
    pub long: f64,
}

/// `location_updated` data.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LocationUpdate {
    /// Whose position.
    pub vendor_id: VendorId,
    /// Where.
    pub location: Location,
    /// RFC 3339, passed through as the publisher gave it (or stamped).
    pub timestamp: String,
}

/// `vendor_updated` data. Vendor fields are open-ended: everything the
/// publisher sent passes through untouched.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VendorUpdate {
    /// Whose data.
    pub vendor_id: VendorId,
    /// `name` (required), `description?` and any other fields.
    pub vendor: Map<String, Value>,
    /// RFC 3339, passed through as the publisher gave it (or stamped).
    pub timestamp: String,
}

/// One update for one topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A new position.
    Location(LocationUpdate),
    /// New vendor data.
    Vendor(VendorUpdate),
}

impl Update {
    /// The topic the update belongs to.
    pub fn topic(&self) -> Topic {
        match self {
            Self::Location(u) => Topic::new(Channel::Location, u.vendor_id.clone()),
            Self::Vendor(u) => Topic::new(Channel::Vendor, u.vendor_id.clone()),
        }
    }

    /// The channel of the update.
    pub fn channel(&self) -> Channel {
        match self {
            Self::Location(_) => Channel::Location,
            Self::Vendor(_) => Channel::Vendor,
        }
    }

    /// The vendor the update is about.
    pub fn vendor(&self) -> &VendorId {
        match self {
            Self::Location(u) => &u.vendor_id,
            Self::Vendor(u) => &u.vendor_id,
        }
    }

    /// The publish payload (§1.4), as sent on NATS.
    pub fn to_publish_json(&self) -> Vec<u8> {
        // Serializing these types cannot fail: string keys, finite floats.
        match self {
            Self::Location(u) => serde_json::to_vec(u),
            Self::Vendor(u) => serde_json::to_vec(u),
        }
        .unwrap_or_default()
    }

    /// Parses and validates a publish payload (HTTP body, NATS message).
    /// `subject_vendor` is the vendor named by the NATS subject, if any: the
    /// payload must agree with it. A missing timestamp is stamped with `now`.
    pub fn from_publish_json(
        channel: Channel,
        body: &[u8],
        subject_vendor: Option<&str>,
    ) -> Result<Self, ValidationError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| ValidationError::new("body", format!("invalid JSON: {e}")))?;
        Self::from_publish_value(channel, value, subject_vendor)
    }

    /// As [`Update::from_publish_json`], from a parsed value.
    pub fn from_publish_value(
        channel: Channel,
        value: Value,
        subject_vendor: Option<&str>,
    ) -> Result<Self, ValidationError> {
        let Value::Object(mut obj) = value else {
            return Err(ValidationError::new("body", "must be a JSON object"));
        };
        let vendor_id = match obj.get("vendorId") {
            Some(Value::String(s)) => {
                VendorId::parse(s).map_err(|e| ValidationError::new("vendorId", e.to_string()))?
            }
            Some(_) => return Err(ValidationError::new("vendorId", "must be a string")),
            None => return Err(ValidationError::new("vendorId", "is required")),
        };
        if let Some(expected) = subject_vendor
            && expected != vendor_id.as_str()
        {
            return Err(ValidationError::new(
                "vendorId",
                format!("{vendor_id:?} differs from the subject's {expected:?}"),
            ));
        }
        let timestamp = match obj.remove("timestamp") {
            // Absent, never null: the schemas (and so every client of the
            // specs) say `timestamp` is a string when present; a null that
            // passed here would be a payload no validator accepts.
            None => now_rfc3339(),
            Some(Value::String(s)) => {
                OffsetDateTime::parse(&s, &Rfc3339)
                    .map_err(|e| ValidationError::new("timestamp", format!("must be RFC 3339: {e}")))?;
                s
            }
            Some(_) => return Err(ValidationError::new("timestamp", "must be an RFC 3339 string")),
        };
        match channel {
            Channel::Location => {
                let location = match obj.get("location") {
                    Some(Value::Object(l)) => {
                        Location { lat: coordinate(l, "lat", 90.0)?, long: coordinate(l, "long", 180.0)? }
                    }
                    Some(_) => return Err(ValidationError::new("location", "must be an object")),
                    None => return Err(ValidationError::new("location", "is required")),
                };
                Ok(Self::Location(LocationUpdate { vendor_id, location, timestamp }))
            }
            Channel::Vendor => {
                let vendor = match obj.remove("vendor") {
                    Some(Value::Object(v)) => v,
                    Some(_) => return Err(ValidationError::new("vendor", "must be an object")),
                    None => return Err(ValidationError::new("vendor", "is required")),
                };
                match vendor.get("name") {
                    Some(Value::String(n)) if !n.is_empty() => {}
                    Some(Value::String(_)) => return Err(ValidationError::new("vendor.name", "must not be empty")),
                    Some(_) => return Err(ValidationError::new("vendor.name", "must be a string")),
                    None => return Err(ValidationError::new("vendor.name", "is required")),
                }
                match vendor.get("description") {
                    None | Some(Value::String(_)) => {}
                    Some(_) => return Err(ValidationError::new("vendor.description", "must be a string")),
                }
                Ok(Self::Vendor(VendorUpdate { vendor_id, vendor, timestamp }))
            }
        }
    }
}

fn coordinate(l: &Map<String, Value>, key: &str, bound: f64) -> Result<f64, ValidationError> {
    let field = format!("location.{key}");
    let v = match l.get(key) {
        Some(Value::Number(n)) => n.as_f64().ok_or_else(|| ValidationError::new(&field, "must be a number"))?,
        Some(_) => return Err(ValidationError::new(&field, "must be a number")),
        None => return Err(ValidationError::new(&field, "is required")),
    };
    if !v.is_finite() || v < -bound || v > bound {
        return Err(ValidationError::new(&field, format!("must be within [-{bound}, {bound}]")));
    }
    Ok(v)
}

/// The current time as an RFC 3339 UTC string with millisecond precision.
pub fn now_rfc3339() -> String {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(now.millisecond() as u32 * 1_000_000).unwrap_or(now);
    now.format(&Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(body: &str) -> Result<Update, ValidationError> {
        Update::from_publish_json(Channel::Location, body.as_bytes(), None)
    }

    #[test]
    fn location_rules() {
        assert!(loc(r#"{"vendorId":"v1","location":{"lat":1.5,"long":-2}}"#).is_ok());
        assert!(loc(r#"{"vendorId":"v1","location":{"lat":90,"long":180},"timestamp":"2026-01-02T03:04:05.123456789+02:00"}"#).is_ok());
        for (body, field) in [
            (r#"{"vendorId":"v1","location":{"lat":91,"long":0}}"#, "location.lat"),
            (r#"{"vendorId":"v1","location":{"lat":0,"long":-180.5}}"#, "location.long"),
            (r#"{"vendorId":"v1","location":{"lat":"1","long":0}}"#, "location.lat"),
            (r#"{"vendorId":"v1"}"#, "location"),
            (r#"{"vendorId":"v.1","location":{"lat":0,"long":0}}"#, "vendorId"),
            (r#"{"vendorId":"v1","location":{"lat":0,"long":0},"timestamp":"yesterday"}"#, "timestamp"),
            ("[]", "body"),
            ("{", "body"),
        ] {
            assert_eq!(loc(body).map_err(|e| e.field), Err(field.to_owned()), "{body}");
        }
    }

    #[test]
    fn stamps_missing_timestamp_and_keeps_given_one() {
        let Ok(Update::Location(u)) = loc(r#"{"vendorId":"v1","location":{"lat":0,"long":0}}"#) else { panic!() };
        assert!(OffsetDateTime::parse(&u.timestamp, &Rfc3339).is_ok());
        let ts = "2026-01-02T03:04:05.123456789Z";
        let body = format!(r#"{{"vendorId":"v1","location":{{"lat":0,"long":0}},"timestamp":"{ts}"}}"#);
        let Ok(Update::Location(u)) = loc(&body) else { panic!() };
        assert_eq!(u.timestamp, ts);
        let null = loc(r#"{"vendorId":"v1","location":{"lat":0,"long":0},"timestamp":null}"#);
        assert_eq!(null.map_err(|e| e.field), Err("timestamp".to_owned()));
    }

    #[test]
    fn vendor_fields_pass_through_and_subject_must_agree() {
        let body = br#"{"vendorId":"v1","vendor":{"name":"Tacos","open":true,"menu":[1,2]}}"#;
        let Ok(Update::Vendor(u)) = Update::from_publish_json(Channel::Vendor, body, Some("v1")) else { panic!() };
        assert_eq!(u.vendor.get("open"), Some(&Value::Bool(true)));
        let wrong = Update::from_publish_json(Channel::Vendor, body, Some("v2"));
        assert_eq!(wrong.map_err(|e| e.field), Err("vendorId".to_owned()));
        let nameless = Update::from_publish_json(Channel::Vendor, br#"{"vendorId":"v1","vendor":{}}"#, None);
        assert_eq!(nameless.map_err(|e| e.field), Err("vendor.name".to_owned()));
    }
}
