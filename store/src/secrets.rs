//! Secrets at rest: each value sealed with ChaCha20-Poly1305 (ring's AEAD) under the gateway's
//! secrets key before it reaches the database, so neither SQLite's file nor Postgres holds a
//! value in plain text.
//!
//! A sealed value is `[format version][96-bit random nonce][ciphertext and tag]`, and its
//! namespace and name are its associated data: a value moved to another row does not open.
//! Random nonces are safe under one key for far more values than any registry keeps (the bound
//! is about 2^32 seals per key).

use std::fmt;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use sluice_core::{SecretValue, Secrets, StoreError, Timestamp};

/// The format of sealed values this code writes.
const FORMAT: u8 = 1;
const KEY_LEN: usize = 32;

/// How a secrets key that cannot be used is reported.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("secrets key file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "secrets key {0}: not 32 bytes in base64 (make one with: head -c 32 /dev/urandom | base64)"
    )]
    Malformed(String),
}

/// The key secrets are sealed under. Its `Debug` shows nothing of it.
pub struct SecretsKey {
    key: LessSafeKey,
    rng: SystemRandom,
    /// A key of its own for the web portal's sessions, derived from this one (HMAC-SHA256 of a
    /// fixed label), so every gateway that shares the secrets key signs sessions alike.
    portal: zeroize::Zeroizing<[u8; 32]>,
}

impl fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretsKey(<not shown>)")
    }
}

impl SecretsKey {
    /// A key from its base64 text (32 bytes); `what` names where it came from in errors.
    pub fn from_base64(text: &str, what: &str) -> Result<Self, KeyError> {
        let bytes = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|_| KeyError::Malformed(what.to_owned()))?,
        );
        if bytes.len() != KEY_LEN {
            return Err(KeyError::Malformed(what.to_owned()));
        }
        let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
            .map_err(|_| KeyError::Malformed(what.to_owned()))?;
        let derived = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes),
            b"sluice portal sessions v1",
        );
        let mut portal = zeroize::Zeroizing::new([0u8; 32]);
        portal.copy_from_slice(derived.as_ref());
        Ok(Self {
            portal,
            key: LessSafeKey::new(key),
            rng: SystemRandom::new(),
        })
    }

    /// The secret the web portal signs its sessions with: derived from this key, never the key
    /// itself.
    pub fn portal_secret(&self) -> &[u8; 32] {
        &self.portal
    }

    /// The key in `path`; a new random one written there (readable by this user only) if the
    /// file does not exist. Returns whether it was made.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                return Ok((
                    Self::from_base64(&text, &path.display().to_string())?,
                    false,
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let mut bytes = zeroize::Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut bytes[..])
            .map_err(|_| io(std::io::Error::other("no randomness from the system")))?;
        let text =
            zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*bytes));
        // create_new: two processes starting at once cannot both write a key.
        let mut file = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(f) => f,
            // Made by another process starting at the same time: read, once (a dangling
            // symlink reads as missing, and must not send us round again).
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path).map_err(io)?;
                return Ok((
                    Self::from_base64(&text, &path.display().to_string())?,
                    false,
                ));
            }
            Err(e) => return Err(io(e)),
        };
        writeln!(file, "{}", *text)
            .and_then(|()| file.sync_all())
            .map_err(io)?;
        Ok((Self::from_base64(&text, "generated")?, true))
    }

    fn aad(namespace: &str, name: &str) -> Vec<u8> {
        format!("sluice secret v{FORMAT}\0{namespace}\0{name}").into_bytes()
    }

    /// `value` sealed for the secret `namespace`/`name`.
    pub fn seal(&self, namespace: &str, name: &str, value: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| StoreError::Unavailable("no randomness from the system".into()))?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + value.len() + 16);
        sealed.push(FORMAT);
        sealed.extend_from_slice(&nonce);
        let mut body = zeroize::Zeroizing::new(value.to_vec());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(Self::aad(namespace, name)),
                &mut *body,
            )
            .map_err(|_| StoreError::Unavailable("sealing a secret failed".into()))?;
        sealed.extend_from_slice(&body);
        Ok(sealed)
    }

    /// The value of a sealed secret, or an error if it was sealed under another key (or for
    /// another secret, or changed since).
    pub fn open(
        &self,
        namespace: &str,
        name: &str,
        sealed: &[u8],
    ) -> Result<SecretValue, StoreError> {
        let refused = || {
            StoreError::Unavailable(format!(
                "secret {name} in namespace {namespace} does not open with this gateway's secrets \
                 key (sealed under another key, or changed in the database); every gateway \
                 sharing a database needs the same --secrets-key-file"
            ))
        };
        let (&format, rest) = sealed.split_first().ok_or_else(refused)?;
        if format != FORMAT || rest.len() < NONCE_LEN {
            return Err(refused());
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(Self::aad(namespace, name)), &mut body)
            .map_err(|_| refused())?;
        let value = SecretValue::new(plain.to_vec());
        zeroize::Zeroize::zeroize(&mut body);
        Ok(value)
    }
}

/// Where sealed values are kept: a table in the registry's database.
#[async_trait]
pub(crate) trait SealedRows: Send + Sync + fmt::Debug {
    async fn names(&self, namespace: &str) -> Result<Vec<String>, StoreError>;
    async fn count(&self, namespace: &str) -> Result<u64, StoreError>;
    /// One secret, any: for checking the key.
    async fn any(&self) -> Result<Option<(String, String, Vec<u8>)>, StoreError>;
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    async fn insert(
        &self,
        namespace: &str,
        name: &str,
        sealed: Vec<u8>,
        at: Timestamp,
    ) -> Result<(), StoreError>;
    async fn update(
        &self,
        namespace: &str,
        name: &str,
        sealed: Vec<u8>,
        at: Timestamp,
    ) -> Result<(), StoreError>;
    async fn delete(&self, namespace: &str, name: &str) -> Result<bool, StoreError>;
}

/// Secrets sealed under a [`SecretsKey`], in the registry's database (SQLite or Postgres).
#[derive(Debug, Clone)]
pub struct SealedSecrets {
    rows: Arc<dyn SealedRows>,
    key: Arc<SecretsKey>,
}

impl SealedSecrets {
    /// Secrets in the embedded database.
    pub fn sqlite(store: crate::SqliteStore, key: SecretsKey) -> Self {
        Self {
            rows: Arc::new(store),
            key: Arc::new(key),
        }
    }

    /// Secrets in Postgres: every gateway on it needs the same key.
    pub fn postgres(store: crate::PgStore, key: SecretsKey) -> Self {
        Self {
            rows: Arc::new(store),
            key: Arc::new(key),
        }
    }

    /// Checks that the key opens the secrets already kept (one of them): a gateway given
    /// another key than the one they were sealed under is told at start, not at its first
    /// deploy of a function that names one.
    pub async fn verify(&self) -> Result<(), StoreError> {
        match self.rows.any().await? {
            Some((namespace, name, sealed)) => self.key.open(&namespace, &name, &sealed).map(drop),
            None => Ok(()),
        }
    }

    /// How many secrets `namespace` has.
    pub async fn count(&self, namespace: &str) -> Result<u64, StoreError> {
        self.rows.count(namespace).await
    }
}

#[async_trait]
impl Secrets for SealedSecrets {
    async fn names(&self, namespace: &str) -> Result<Vec<String>, StoreError> {
        self.rows.names(namespace).await
    }

    async fn get(&self, namespace: &str, name: &str) -> Result<Option<SecretValue>, StoreError> {
        match self.rows.get(namespace, name).await? {
            Some(sealed) => self.key.open(namespace, name, &sealed).map(Some),
            None => Ok(None),
        }
    }

    async fn put(
        &self,
        namespace: &str,
        name: &str,
        value: &SecretValue,
        create: bool,
    ) -> Result<(), StoreError> {
        let sealed = self.key.seal(namespace, name, value.expose())?;
        let now = Timestamp::now();
        if create {
            self.rows.insert(namespace, name, sealed, now).await
        } else {
            self.rows.update(namespace, name, sealed, now).await
        }
    }

    async fn delete(&self, namespace: &str, name: &str) -> Result<bool, StoreError> {
        self.rows.delete(namespace, name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretsKey {
        SecretsKey::from_base64(
            &base64::engine::general_purpose::STANDARD.encode([7u8; 32]),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn sealed_values_open_only_as_the_secret_they_were_sealed_for() {
        let k = key();
        let sealed = k.seal("fn", "db-password", b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(
            k.open("fn", "db-password", &sealed).unwrap().expose(),
            b"hunter2"
        );
        // Two seals of one value differ (fresh nonces).
        assert_ne!(sealed, k.seal("fn", "db-password", b"hunter2").unwrap());
        // Moved to another row, tampered with, or opened under another key: refused.
        assert!(k.open("fn", "other", &sealed).is_err());
        assert!(k.open("dev", "db-password", &sealed).is_err());
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(k.open("fn", "db-password", &flipped).is_err());
        let other = SecretsKey::from_base64(
            &base64::engine::general_purpose::STANDARD.encode([8u8; 32]),
            "other",
        )
        .unwrap();
        let err = other
            .open("fn", "db-password", &sealed)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--secrets-key-file"), "{err}");
        assert!(k.open("fn", "db-password", &sealed[..5]).is_err());
        assert!(k.open("fn", "db-password", &[]).is_err());
    }

    #[test]
    fn keys_are_made_once_readable_by_their_owner_only_and_checked() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let (made, created) = SecretsKey::load_or_create(&path).unwrap();
        assert!(created);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = made.seal("fn", "s", b"v").unwrap();
        let (again, created) = SecretsKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(again.open("fn", "s", &sealed).unwrap().expose(), b"v");
        assert!(format!("{again:?}").contains("not shown"));
        std::fs::write(&path, "c2hvcnQ=\n").unwrap();
        let err = SecretsKey::load_or_create(&path).unwrap_err().to_string();
        assert!(err.contains("not 32 bytes in base64"), "{err}");
    }
}
