-- A call's timeline, for GET /system/calls/<id>: its attempts, callback deliveries and
-- re-drives, each a JSON array appended to by the statement that records the step (so the
-- timeline costs no write of its own) and kept to its most recent entries by that statement
-- (50 attempts, 20 callback deliveries, 20 re-drives). `redrives` counts the re-drives, so an
-- attempt's entry can say which one it followed.
ALTER TABLE calls ADD COLUMN attempt_log TEXT NOT NULL DEFAULT '[]';
ALTER TABLE calls ADD COLUMN callback_log TEXT NOT NULL DEFAULT '[]';
ALTER TABLE calls ADD COLUMN redrive_log TEXT NOT NULL DEFAULT '[]';
ALTER TABLE calls ADD COLUMN redrives INTEGER NOT NULL DEFAULT 0;
