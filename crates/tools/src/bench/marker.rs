//! What each published update carries so the receiving side can account for
//! it: a per-vendor sequence number in `lat`, the phase (0 = readiness
//! probe, k = k-th step attempt) in `long`, and the send time (nanoseconds)
//! in `timestamp`. The gateway passes all three through unchanged, so no
//! field beyond the contract is needed.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Sequence numbers wrap here: `lat` must stay below 90 with 6 decimals.
pub const SEQ_WRAP: u64 = 90_000_000;

/// Decoded accounting data of one delivered update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// Per-vendor sequence number (modulo [`SEQ_WRAP`]).
    pub seq: u64,
    /// Phase the update was published in.
    pub phase: u32,
    /// Send time, nanoseconds since the Unix epoch.
    pub sent_ns: u64,
}

/// `(lat, long)` carrying `seq` and `phase`.
pub fn encode(seq: u64, phase: u32) -> (f64, f64) {
    ((seq % SEQ_WRAP) as f64 / 1e6, f64::from(phase.min(180)))
}

/// Inverse of [`encode`] plus the timestamp; `None` for anything the bench
/// did not publish.
pub fn decode(lat: f64, long: f64, timestamp: &str) -> Option<Marker> {
    if !(0.0..90.0).contains(&lat) || !(0.0..=180.0).contains(&long) {
        return None;
    }
    let sent_ns = parse_rfc3339(timestamp)?;
    Some(Marker { seq: (lat * 1e6).round() as u64, phase: long.round() as u32, sent_ns })
}

/// Now, in nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// RFC 3339 UTC with nanoseconds, as the gateway passes it on.
pub fn rfc3339(ns: u64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns))
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_owned())
}

/// Nanoseconds since the epoch of an RFC 3339 time (any offset).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_json_numbers() {
        for (seq, phase) in [(0, 0), (1, 1), (123_456, 7), (SEQ_WRAP - 1, 179), (SEQ_WRAP + 5, 3)] {
            let (lat, long) = encode(seq, phase);
            // What the gateway does: JSON number out, f64 in.
            let lat: f64 = serde_json::to_string(&lat).ok().and_then(|s| s.parse().ok()).unwrap_or(f64::NAN);
            let ns = 1_767_323_045_123_456_789;
            let m = decode(lat, long, &rfc3339(ns));
            assert_eq!(m, Some(Marker { seq: seq % SEQ_WRAP, phase, sent_ns: ns }), "{seq} {phase}");
        }
    }

    #[test]
    fn timestamps_keep_nanoseconds_and_accept_offsets() {
        assert_eq!(rfc3339(1_767_323_045_123_456_789), "2026-01-02T03:04:05.123456789Z");
        assert_eq!(parse_rfc3339("2026-01-02T03:04:05.123Z"), Some(1_767_323_045_123_000_000));
        assert_eq!(parse_rfc3339("2026-01-02T04:04:05+01:00"), Some(1_767_323_045_000_000_000));
        assert_eq!(parse_rfc3339("yesterday"), None);
        assert_eq!(decode(-1.0, 0.0, "2026-01-02T03:04:05Z"), None);
    }
}
