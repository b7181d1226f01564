-- Area subscriptions ("vendors near me") are audited too: channel `area`,
-- the client's area id in vendor_id, the shape in reason.
ALTER TABLE audit_events DROP CONSTRAINT IF EXISTS audit_events_channel_check;
ALTER TABLE audit_events ADD CONSTRAINT audit_events_channel_check CHECK (channel IN ('location', 'vendor', 'area'));
