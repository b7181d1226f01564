-- Connection ids become UUIDv7s (hyphenated lower-case text), unique across
-- instances and restarts. SQLite cannot change a column's type, so the
-- table is rebuilt; rows written before keep their number as a version-0
-- UUID holding it in its low 64 bits (42 -> 00000000-0000-0000-0000-00000000002a),
-- the same mapping the gateway applies to a number read from an old journal.
CREATE TABLE audit_events_v2 (
    event_id      TEXT    PRIMARY KEY NOT NULL,
    occurred_at   TEXT    NOT NULL,
    instance_id   TEXT    NOT NULL,
    connection_id TEXT    NOT NULL,
    user_id       TEXT,
    transport     TEXT    NOT NULL,
    channel       TEXT    CHECK (channel IN ('location', 'vendor')),
    vendor_id     TEXT,
    action        TEXT    NOT NULL CHECK (action IN ('connect', 'subscribe', 'unsubscribe', 'disconnect')),
    client_addr   TEXT,
    reason        TEXT
);

INSERT INTO audit_events_v2
    (event_id, occurred_at, instance_id, connection_id, user_id, transport, channel, vendor_id, action, client_addr, reason)
SELECT event_id, occurred_at, instance_id,
       printf('00000000-0000-0000-%04x-%012x', (connection_id >> 48) & 65535, connection_id & 281474976710655),
       user_id, transport, channel, vendor_id, action, client_addr, reason
FROM audit_events;

DROP TABLE audit_events;
ALTER TABLE audit_events_v2 RENAME TO audit_events;

CREATE INDEX audit_events_by_user ON audit_events (user_id, occurred_at, event_id);
CREATE INDEX audit_events_by_vendor ON audit_events (vendor_id, occurred_at, event_id);
CREATE INDEX audit_events_by_time ON audit_events (occurred_at, event_id);
CREATE INDEX audit_events_by_connection ON audit_events (connection_id, occurred_at, event_id);
