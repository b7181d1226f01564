-- Connection ids become UUIDv7s, unique across instances and restarts (a
-- per-process counter gave connection 1 of every run the same id). Rows
-- written before keep their number, as a version-0 UUID holding it in its
-- low 64 bits (42 -> 00000000-0000-0000-0000-00000000002a): the gateway maps
-- a number read from an old journal the same way. Rewrites the table once.
ALTER TABLE audit_events
    ALTER COLUMN connection_id TYPE uuid USING lpad(to_hex(connection_id), 32, '0')::uuid;

-- `GET /api/v1/audit?connectionId=` pages one connection's rows.
CREATE INDEX audit_events_by_connection ON audit_events (connection_id, occurred_at, event_id);
