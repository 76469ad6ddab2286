//! The CLI's credentials: `sluice login` stores them per gateway, every command finds them.
//!
//! Where a command looks, first match wins:
//! 1. `SLUICE_TOKEN` (a bearer API token);
//! 2. `SLUICE_ADMIN_PASSWORD` (with `SLUICE_ADMIN_USER`, default `admin`), the variables the
//!    gateway itself reads, so a shell that started Sluice can also drive it;
//! 3. what `sluice login` stored for this gateway, in `auth.json` under `$SLUICE_CONFIG_DIR`
//!    (default `$XDG_CONFIG_HOME/sluice`, then `~/.config/sluice`), a file only its owner can
//!    read (mode 0600);
//! 4. what `faas-cli login` stored for this gateway (`~/.openfaas/config.yml`, or
//!    `$OPENFAAS_CONFIG/config.yml`), so OpenFaaS users need not log in twice.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use base64::Engine;
use serde::{Deserialize, Serialize};

/// What a request to the management API is sent with.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Credentials {
    Basic { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Basic { user, .. } => write!(f, "Basic({user}, <password>)"),
            Self::Token(_) => f.write_str("Token(<token>)"),
        }
    }
}

impl Credentials {
    /// Adds these credentials to a request.
    pub fn apply(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Self::Basic { user, password } => request.basic_auth(user, Some(password)),
            Self::Token(token) => request.bearer_auth(token),
        }
    }
}

/// The stored file: credentials per gateway URL.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Stored {
    #[serde(default)]
    gateways: BTreeMap<String, Credentials>,
}

/// Where `sluice login` keeps credentials.
fn config_dir() -> Option<PathBuf> {
    let from_env = |key: &str| {
        std::env::var_os(key)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    from_env("SLUICE_CONFIG_DIR")
        .or_else(|| from_env("XDG_CONFIG_HOME").map(|d| d.join("sluice")))
        .or_else(|| from_env("HOME").map(|d| d.join(".config").join("sluice")))
}

fn stored_path() -> anyhow::Result<PathBuf> {
    config_dir()
        .map(|d| d.join("auth.json"))
        .context("cannot tell where to keep credentials: set HOME or SLUICE_CONFIG_DIR")
}

fn read_stored() -> anyhow::Result<Stored> {
    let path = stored_path()?;
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a credentials file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stored::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the file whole, readable by its owner only, replacing the old one at once. The
/// directory is made (or kept) private to its owner first, and the new file is a fresh one of
/// an unpredictable name (mode 0600) renamed over the old, so nothing planted there beforehand
/// is written through.
fn write_stored(stored: &Stored) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let path = stored_path()?;
    let dir = path
        .parent()
        .context("a credentials path has a directory")?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| {
        format!(
            "cannot make {} private; it must belong to you to hold credentials",
            dir.display()
        )
    })?;
    let mut file = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    file.write_all(&serde_json::to_vec_pretty(stored)?)?;
    file.as_file().sync_all()?;
    file.persist(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Stores `credentials` for `gateway`; returns the file.
pub fn store(gateway: &str, credentials: Credentials) -> anyhow::Result<PathBuf> {
    let mut stored = read_stored()?;
    stored.gateways.insert(gateway.to_owned(), credentials);
    write_stored(&stored)
}

/// Forgets what was stored for `gateway`; whether there was anything.
pub fn forget(gateway: &str) -> anyhow::Result<bool> {
    let mut stored = read_stored()?;
    let had = stored.gateways.remove(gateway).is_some();
    if had {
        write_stored(&stored)?;
    }
    Ok(had)
}

/// The credentials to use with `gateway`, if any are known (see the module's list). Those in
/// the environment are not tied to a gateway, so they are used only when `env_allowed` (the
/// user named the gateway; it did not come from a stack file someone else wrote).
pub fn find(gateway: &str, env_allowed: bool) -> anyhow::Result<Option<Credentials>> {
    let env = |key: &str| {
        std::env::var(key)
            .ok()
            .filter(|v| env_allowed && !v.is_empty())
    };
    if let Some(token) = env("SLUICE_TOKEN") {
        return Ok(Some(Credentials::Token(token)));
    }
    if let Some(password) = env("SLUICE_ADMIN_PASSWORD") {
        let user = env("SLUICE_ADMIN_USER").unwrap_or_else(|| "admin".to_owned());
        return Ok(Some(Credentials::Basic { user, password }));
    }
    if let Some(found) = read_stored()?.gateways.remove(gateway) {
        return Ok(Some(found));
    }
    Ok(faas_cli(gateway))
}

/// `faas-cli login`'s file: `auths: [{gateway, auth: basic, token: base64(user:password)}]`.
#[derive(Debug, Deserialize)]
struct FaasConfig {
    #[serde(default)]
    auths: Vec<FaasAuth>,
}

#[derive(Debug, Deserialize)]
struct FaasAuth {
    gateway: String,
    auth: String,
    token: String,
}

fn faas_cli(gateway: &str) -> Option<Credentials> {
    let dir = std::env::var_os("OPENFAAS_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".openfaas")))?;
    let text = std::fs::read_to_string(dir.join("config.yml")).ok()?;
    let config: FaasConfig = serde_yaml::from_str(&text).ok()?;
    let entry = config
        .auths
        .into_iter()
        .find(|a| a.gateway.trim_end_matches('/') == gateway)?;
    if entry.auth != "basic" {
        return Some(Credentials::Token(entry.token));
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(entry.token.trim())
        .ok()?;
    let (user, password) = String::from_utf8(decoded)
        .ok()?
        .split_once(':')
        .map(|(u, p)| (u.to_owned(), p.to_owned()))?;
    Some(Credentials::Basic { user, password })
}
