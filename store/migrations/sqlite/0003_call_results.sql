-- The function's response to a finished call, kept up to a size and an age.
CREATE TABLE call_results (
    id           TEXT    PRIMARY KEY,
    status_code  INTEGER NOT NULL,
    headers      TEXT    NOT NULL, -- [[name, value], ...] as JSON
    body         BLOB    NOT NULL,
    stored_at    INTEGER NOT NULL
);
CREATE INDEX call_results_by_age ON call_results (stored_at);
