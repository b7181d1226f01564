-- Area subscriptions ("vendors near me") are audited too: channel `area`,
-- the client's area id in vendor_id, the shape in reason. SQLite cannot
-- change a CHECK constraint, so the table is rebuilt.
CREATE TABLE audit_events_v3 (
    event_id      TEXT    PRIMARY KEY NOT NULL,
    occurred_at   TEXT    NOT NULL,
    instance_id   TEXT    NOT NULL,
    connection_id TEXT    NOT NULL,
    user_id       TEXT,
    transport     TEXT    NOT NULL,
    channel       TEXT    CHECK (channel IN ('location', 'vendor', 'area')),
    vendor_id     TEXT,
    action        TEXT    NOT NULL CHECK (action IN ('connect', 'subscribe', 'unsubscribe', 'disconnect')),
    client_addr   TEXT,
    reason        TEXT
);

INSERT INTO audit_events_v3
    (event_id, occurred_at, instance_id, connection_id, user_id, transport, channel, vendor_id, action, client_addr, reason)
SELECT event_id, occurred_at, instance_id, connection_id, user_id, transport, channel, vendor_id, action, client_addr, reason
FROM audit_events;

DROP TABLE audit_events;
ALTER TABLE audit_events_v3 RENAME TO audit_events;

CREATE INDEX audit_events_by_user ON audit_events (user_id, occurred_at, event_id);
CREATE INDEX audit_events_by_vendor ON audit_events (vendor_id, occurred_at, event_id);
CREATE INDEX audit_events_by_time ON audit_events (occurred_at, event_id);
CREATE INDEX audit_events_by_connection ON audit_events (connection_id, occurred_at, event_id);
