-- The W3C trace a call belongs to (32 hex digits) and its submission's X-Request-Id, written
-- with the record when the call is accepted; shown by GET /system/calls/<id>.
ALTER TABLE calls ADD COLUMN trace_id TEXT;
ALTER TABLE calls ADD COLUMN request_id TEXT;
