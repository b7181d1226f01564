-- Subscription audit trail, embedded engine (same columns as PostgreSQL).
-- Times are RFC 3339 UTC text with exactly six fractional digits, so text
-- order is time order; event ids are hyphenated lower-case UUIDs.
CREATE TABLE audit_events (
    event_id      TEXT    PRIMARY KEY NOT NULL,
    occurred_at   TEXT    NOT NULL,
    instance_id   TEXT    NOT NULL,
    connection_id INTEGER NOT NULL,
    user_id       TEXT,
    transport     TEXT    NOT NULL,
    channel       TEXT    CHECK (channel IN ('location', 'vendor')),
    vendor_id     TEXT,
    action        TEXT    NOT NULL CHECK (action IN ('connect', 'subscribe', 'unsubscribe', 'disconnect')),
    client_addr   TEXT,
    reason        TEXT
);

CREATE INDEX audit_events_by_user ON audit_events (user_id, occurred_at, event_id);
CREATE INDEX audit_events_by_vendor ON audit_events (vendor_id, occurred_at, event_id);
CREATE INDEX audit_events_by_time ON audit_events (occurred_at, event_id);
