-- Counting a function's queued and running calls (its bound at submit) without reading its
-- finished ones.
CREATE INDEX calls_unfinished ON calls (namespace, function) WHERE state IN ('queued', 'running');
