-- The request of a call that failed for good, kept so it can be re-driven.
CREATE TABLE call_requests (
    id         TEXT    PRIMARY KEY,
    meta       TEXT    NOT NULL, -- CallMeta as JSON
    body       BLOB    NOT NULL,
    stored_at  INTEGER NOT NULL
);
CREATE INDEX call_requests_by_age ON call_requests (stored_at);
