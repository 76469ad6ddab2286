-- The secrets functions name (OpenFaaS's /system/secrets), for local processes. Each value is
-- sealed (ChaCha20-Poly1305) under the gateway's secrets key: no value is here in plain text.
CREATE TABLE secrets (
    namespace   TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    sealed      BYTEA  NOT NULL, -- format version, nonce, ciphertext and tag
    created_at  BIGINT NOT NULL, -- ms since the epoch
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (namespace, name)
);
