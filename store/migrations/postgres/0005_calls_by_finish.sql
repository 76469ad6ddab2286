-- Deleting finished calls past their retention, oldest first.
CREATE INDEX calls_by_finish ON calls (finished_at);
