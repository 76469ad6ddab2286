-- Listing calls newest first, across functions.
CREATE INDEX calls_by_time ON calls (submitted_at, id);
