-- The function registry: what is deployed, so every gateway restores the same functions.
CREATE TABLE functions (
    namespace   TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    deployment  TEXT   NOT NULL, -- FunctionDeployment as JSON
    replicas    BIGINT NOT NULL,
    created_at  BIGINT NOT NULL, -- ms since the epoch
    PRIMARY KEY (namespace, name)
);

-- One row per async call, from acceptance to its terminal state and callback.
CREATE TABLE calls (
    id            TEXT   PRIMARY KEY,
    namespace     TEXT   NOT NULL,
    function      TEXT   NOT NULL,
    method        TEXT   NOT NULL,
    path          TEXT   NOT NULL,
    callback_url  TEXT,
    state         TEXT   NOT NULL,
    attempts      BIGINT NOT NULL DEFAULT 0,
    submitted_at  BIGINT NOT NULL,
    started_at    BIGINT,
    finished_at   BIGINT,
    duration_ms   BIGINT,
    status_code   BIGINT,
    error         TEXT,
    callback      TEXT -- CallbackOutcome as JSON
);
CREATE INDEX calls_by_function ON calls (namespace, function, submitted_at);
