-- Subscription audit trail (DESIGN §1.7): one row per connect, subscribe,
-- unsubscribe and disconnect. event_id is the idempotency key: the writer
-- inserts with ON CONFLICT (event_id) DO NOTHING, so a replayed row is
-- stored once.
CREATE TABLE audit_events (
    event_id      uuid        PRIMARY KEY,
    occurred_at   timestamptz NOT NULL,
    instance_id   text        NOT NULL,
    connection_id bigint      NOT NULL,
    user_id       text,
    transport     text        NOT NULL,
    channel       text        CHECK (channel IN ('location', 'vendor')),
    vendor_id     text,
    action        text        NOT NULL CHECK (action IN ('connect', 'subscribe', 'unsubscribe', 'disconnect')),
    client_addr   text,
    reason        text
);

-- The audit API pages by (occurred_at, event_id); each filter has an index
-- that ends in that order, so a page is an index range scan.
CREATE INDEX audit_events_by_user ON audit_events (user_id, occurred_at, event_id);
CREATE INDEX audit_events_by_vendor ON audit_events (vendor_id, occurred_at, event_id);
CREATE INDEX audit_events_by_time ON audit_events (occurred_at, event_id);
