-- The function registry: what is deployed, so a restart brings it back.
CREATE TABLE functions (
    namespace   TEXT    NOT NULL,
    name        TEXT    NOT NULL,
    deployment  TEXT    NOT NULL, -- FunctionDeployment as JSON
    replicas    INTEGER NOT NULL,
    created_at  INTEGER NOT NULL, -- ms since the epoch
    PRIMARY KEY (namespace, name)
);

-- One row per async call, from acceptance to its terminal state and callback.
CREATE TABLE calls (
    id            TEXT    PRIMARY KEY,
    namespace     TEXT    NOT NULL,
    function      TEXT    NOT NULL,
    method        TEXT    NOT NULL,
    path          TEXT    NOT NULL,
    callback_url  TEXT,
    state         TEXT    NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    submitted_at  INTEGER NOT NULL,
    started_at    INTEGER,
    finished_at   INTEGER,
    duration_ms   INTEGER,
    status_code   INTEGER,
    error         TEXT,
    callback      TEXT -- CallbackOutcome as JSON
);
CREATE INDEX calls_by_function ON calls (namespace, function, submitted_at);

-- The embedded queue. A row is a call not yet acked. A worker claims it by writing a lease
-- token and expiry; an expired lease makes the row claimable again (redelivery after a crash).
CREATE TABLE queue (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id       TEXT    NOT NULL UNIQUE,
    meta          TEXT    NOT NULL, -- CallMeta as JSON
    body          BLOB    NOT NULL,
    available_at  INTEGER NOT NULL,
    lease_token   TEXT,
    lease_until   INTEGER,
    deliveries    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX queue_due ON queue (available_at, seq);
