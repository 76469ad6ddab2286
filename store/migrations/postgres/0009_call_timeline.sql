-- A call's timeline, for GET /system/calls/<id>: its attempts, callback deliveries and
-- re-drives, each a JSON array appended to by the statement that records the step (so the
-- timeline costs no write of its own) and kept to its most recent entries by that statement
-- (50 attempts, 20 callback deliveries, 20 re-drives). `redrives` counts the re-drives, so an
-- attempt's entry can say which one it followed. A constant default: no table rewrite.
ALTER TABLE calls
    ADD COLUMN attempt_log  JSONB  NOT NULL DEFAULT '[]',
    ADD COLUMN callback_log JSONB  NOT NULL DEFAULT '[]',
    ADD COLUMN redrive_log  JSONB  NOT NULL DEFAULT '[]',
    ADD COLUMN redrives     BIGINT NOT NULL DEFAULT 0;
