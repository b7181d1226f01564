//! One audit row, as the hot path makes it, the journal stores it (a JSON
//! line) and the audit API returns it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// What happened to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// A client connected.
    Connect,
    /// A subscription was added (not a repeat of a held one).
    Subscribe,
    /// A subscription was removed (by the client, or at disconnect).
    Unsubscribe,
    /// The connection ended.
    Disconnect,
}

impl Action {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Subscribe => "subscribe",
            Self::Unsubscribe => "unsubscribe",
            Self::Disconnect => "disconnect",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "connect" => Some(Self::Connect),
            "subscribe" => Some(Self::Subscribe),
            "unsubscribe" => Some(Self::Unsubscribe),
            "disconnect" => Some(Self::Disconnect),
            _ => None,
        }
    }
}

/// One audit row. `event_id` is the idempotency key: a row written twice
/// (a journal replayed after a crash) is stored once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuditEvent {
    /// Unique id (UUIDv7: time-ordered, so the primary key index grows at
    /// its end).
    pub event_id: Uuid,
    /// When it happened, UTC, microsecond precision (what both engines keep).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The gateway instance.
    pub instance_id: Arc<str>,
    /// The connection: a UUIDv7, unique across instances and restarts
    /// (an `INSTANCE_ID` is often a stable pod name, so a per-process
    /// counter repeated itself in every run). Rows journaled by versions
    /// that used that counter read back as [`legacy_connection_id`].
    #[serde(deserialize_with = "connection_id")]
    pub connection_id: Uuid,
    /// The last `userId` the connection used (none before its first subscribe).
    pub user_id: Option<String>,
    /// `websocket` (later `webtransport`).
    pub transport: String,
    /// `location` or `vendor` for subscribe/unsubscribe.
    pub channel: Option<String>,
    /// The vendor for subscribe/unsubscribe.
    pub vendor_id: Option<String>,
    /// What happened.
    pub action: Action,
    /// The client's socket address.
    pub client_addr: Option<String>,
    /// Why: `disconnect` for cleanup unsubscribes, the close code and reason
    /// (or `client closed`) for a disconnect.
    pub reason: Option<String>,
}

/// The id a numeric connection id of an older version maps to: its number
/// in the low 64 bits of an otherwise zero (version 0) UUID, so it can never
/// equal a UUIDv7. The database migration converts stored numbers the same
/// way, so a row replayed from an old journal matches its stored siblings.
pub fn legacy_connection_id(n: u64) -> Uuid {
    Uuid::from_u64_pair(0, n)
}

/// A UUID, or the number an older version wrote.
fn connection_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Uuid(Uuid),
        Legacy(u64),
    }
    Ok(match Either::deserialize(d)? {
        Either::Uuid(u) => u,
        Either::Legacy(n) => legacy_connection_id(n),
    })
}

impl AuditEvent {
    /// Reads a stored row. Both SQL dialects keep every column alike but
    /// `event_id`, `connection_id` and `occurred_at` (native types in
    /// PostgreSQL, text in SQLite), which the caller decodes.
    pub(crate) fn from_row<'r, R>(
        row: &'r R,
        event_id: Uuid,
        connection_id: Uuid,
        time: OffsetDateTime,
    ) -> Result<Self, super::AuditError>
    where
        R: sqlx::Row,
        &'static str: sqlx::ColumnIndex<R>,
        String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    {
        let action: String = row.try_get("action")?;
        let instance: String = row.try_get("instance_id")?;
        Ok(Self {
            event_id,
            time,
            instance_id: instance.into(),
            connection_id,
            user_id: row.try_get("user_id")?,
            transport: row.try_get("transport")?,
            channel: row.try_get("channel")?,
            vendor_id: row.try_get("vendor_id")?,
            action: Action::parse(&action).ok_or_else(|| super::AuditError::Corrupt(format!("action {action:?}")))?,
            client_addr: row.try_get("client_addr")?,
            reason: row.try_get("reason")?,
        })
    }
}

/// `t` cut to whole microseconds: both engines store that precision, so a
/// row reads back equal to what was written and cursors compare exactly.
pub fn truncate_to_micros(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(t.nanosecond() / 1000 * 1000).unwrap_or(t)
}

/// A clock for one connection's rows: now, but always at least a
/// microsecond after the previous row, so time order is causal order.
pub fn next_time(previous: Option<OffsetDateTime>) -> OffsetDateTime {
    let now = truncate_to_micros(OffsetDateTime::now_utc());
    match previous {
        Some(p) if now <= p => p + time::Duration::microseconds(1),
        _ => now,
    }
}

/// A position in the (time, event id) order of the audit API: the last
/// row of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The row's time.
    pub time: OffsetDateTime,
    /// The row's id.
    pub event_id: Uuid,
}

impl Cursor {
    /// The cursor just after `event`.
    pub fn after(event: &AuditEvent) -> Self {
        Self { time: event.time, event_id: event.event_id }
    }

    /// Opaque text form: `<unix microseconds>.<uuid hex>`.
    pub fn encode(&self) -> String {
        let micros = self.time.unix_timestamp_nanos() / 1000;
        format!("{micros}.{}", self.event_id.simple())
    }

    /// Parses [`Cursor::encode`]'s form.
    pub fn decode(s: &str) -> Option<Self> {
        let (micros, id) = s.split_once('.')?;
        let micros: i128 = micros.parse().ok()?;
        let time = OffsetDateTime::from_unix_timestamp_nanos(micros.checked_mul(1000)?).ok()?;
        let event_id = Uuid::try_parse(id).ok()?;
        Some(Self { time, event_id })
    }
}

/// What the audit API asks for: rows after `after` (or from `since`),
/// optionally of one user or one vendor, in (time, event id) order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only this user's rows.
    pub user_id: Option<String>,
    /// Only this vendor's rows.
    pub vendor_id: Option<String>,
    /// Only this connection's rows.
    pub connection_id: Option<Uuid>,
    /// Only rows at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only rows after this position (paging).
    pub after: Option<Cursor>,
    /// At most this many rows.
    pub limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips() {
        let c = Cursor { time: truncate_to_micros(OffsetDateTime::now_utc()), event_id: Uuid::now_v7() };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "1", "x.y", "1.zz", "99999999999999999999999999999.0"] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_connection_clock_never_repeats_or_goes_back() {
        let mut t = None;
        for _ in 0..1000 {
            let n = next_time(t);
            assert!(t.is_none_or(|p| n > p));
            assert_eq!(n.nanosecond() % 1000, 0);
            t = Some(n);
        }
    }

    #[test]
    fn events_survive_a_json_line() {
        let e = AuditEvent {
            event_id: Uuid::now_v7(),
            time: next_time(None),
            instance_id: Arc::from("i1"),
            connection_id: Uuid::now_v7(),
            user_id: Some("u1".into()),
            transport: "websocket".into(),
            channel: Some("location".into()),
            vendor_id: Some("v1".into()),
            action: Action::Subscribe,
            client_addr: Some("127.0.0.1:5000".into()),
            reason: None,
        };
        let line = serde_json::to_string(&e).unwrap_or_default();
        assert!(line.contains("\"eventId\"") && line.contains("\"action\":\"subscribe\""), "{line}");
        let back: Result<AuditEvent, _> = serde_json::from_str(&line);
        assert_eq!(back.ok(), Some(e));
    }

    /// A line journaled by a version with numeric connection ids.
    #[test]
    fn old_journal_lines_with_numeric_connection_ids_still_read() {
        let line = r#"{"eventId":"0190a5b2-7c1e-7000-8000-000000000001","time":"2026-11-30T10:00:00.000001Z","instanceId":"i1","connectionId":42,"userId":null,"transport":"websocket","channel":null,"vendorId":null,"action":"connect","clientAddr":"127.0.0.1:1","reason":null}"#;
        let e: Result<AuditEvent, _> = serde_json::from_str(line);
        let id = e.map(|e| e.connection_id).ok();
        assert_eq!(id, Some(legacy_connection_id(42)));
        assert_eq!(id.map(|u| u.hyphenated().to_string()).as_deref(), Some("00000000-0000-0000-0000-00000000002a"));
        let bad = line.replace("42", "\"x\"");
        assert!(serde_json::from_str::<AuditEvent>(&bad).is_err());
    }
}
