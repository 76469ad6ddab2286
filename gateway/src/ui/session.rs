//! The portal's sessions: a signed cookie, and the CSRF token bound to it.
//!
//! A session is kept by the browser alone, as `v1.<user>.<expires>.<nonce>.<mac>` (the MAC an
//! HMAC-SHA256 of the rest), so nothing is stored per session. The key is derived from a random
//! secret (the secrets key's, shared by every gateway that shares it; else one of the process's
//! own) and the credentials' digests: changing the password ends every session, and a cookie,
//! a MAC under a random key, cannot be used to guess the password offline. A session ends when it expires (12 hours) or its cookie is
//! dropped at logout; a stolen cookie is good until then, as with any bearer credential, which
//! is why it is `HttpOnly`, `SameSite=Strict`, and `Secure` when served over TLS.
//!
//! The CSRF token is an HMAC of the session's nonce under the same key, so a page can carry it
//! without the server remembering it, and a token is good for its own session only.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "sluice_session";

/// How long a session lasts from login.
pub(crate) const LIFETIME_SECS: u64 = 12 * 60 * 60;

/// Longest user name a session carries (the admin's name is set by the operator).
const MAX_USER: usize = 128;

/// The key sessions are signed with.
#[derive(Clone)]
pub(crate) struct SessionKey([u8; 32]);

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKey(..)")
    }
}

/// A logged-in browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Session {
    pub(crate) user: String,
    /// Seconds since the Unix epoch.
    pub(crate) expires: u64,
    nonce: [u8; 16],
}

impl SessionKey {
    /// The key for sessions under `secret` (random, or derived from the secrets key) and
    /// `credentials` (their digests, so a changed password makes a new key).
    pub(crate) fn derive(secret: &[u8], credentials: &[u8]) -> Self {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(b"sluice portal sessions v1");
        mac.update(credentials);
        Self(mac.finalize().into_bytes().into())
    }

    fn mac(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// A new session for `user`, and its cookie value.
    pub(crate) fn issue(&self, user: &str, now: u64) -> (Session, String) {
        let session = Session {
            user: user.chars().take(MAX_USER).collect(),
            expires: now + LIFETIME_SECS,
            nonce: rand::random(),
        };
        let value = self.seal(&session);
        (session, value)
    }

    fn seal(&self, s: &Session) -> String {
        let user = B64.encode(s.user.as_bytes());
        let expires = s.expires.to_string();
        let nonce = B64.encode(s.nonce);
        let mac = self.mac(&[b"v1", user.as_bytes(), expires.as_bytes(), nonce.as_bytes()]);
        format!("v1.{user}.{expires}.{nonce}.{}", B64.encode(mac))
    }

    /// The session a cookie value holds, if this key made it and it has not expired.
    pub(crate) fn open(&self, value: &str, now: u64) -> Option<Session> {
        if value.len() > 1024 {
            return None;
        }
        let mut parts = value.split('.');
        let (version, user, expires, nonce, mac) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if version != "v1" || parts.next().is_some() {
            return None;
        }
        let offered = B64.decode(mac).ok()?;
        let expected = self.mac(&[b"v1", user.as_bytes(), expires.as_bytes(), nonce.as_bytes()]);
        if !bool::from(offered.ct_eq(&expected)) {
            return None;
        }
        let expires: u64 = expires.parse().ok()?;
        if expires <= now {
            return None;
        }
        Some(Session {
            user: String::from_utf8(B64.decode(user).ok()?).ok()?,
            expires,
            nonce: B64.decode(nonce).ok()?.try_into().ok()?,
        })
    }

    /// The CSRF token of `session`: what its pages send back with every change.
    pub(crate) fn csrf(&self, session: &Session) -> String {
        let mac = self.mac(&[b"csrf", &session.nonce]);
        B64.encode(&mac[..20])
    }

    /// Whether `offered` is `session`'s CSRF token (compared in constant time).
    pub(crate) fn csrf_ok(&self, session: &Session, offered: &str) -> bool {
        self.csrf(session)
            .as_bytes()
            .ct_eq(offered.as_bytes())
            .into()
    }
}

/// The `Set-Cookie` value that gives a browser `value` (or, with `None`, takes it away).
pub(crate) fn set_cookie(value: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match value {
        Some(v) => format!(
            "{COOKIE}={v}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={LIFETIME_SECS}{secure}"
        ),
        None => format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

/// The session cookie's value among a request's `Cookie` headers.
pub(crate) fn cookie_of(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Seconds since the Unix epoch, now.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_opens_with_its_own_key_until_it_expires() {
        let key = SessionKey::derive(&[7; 32], b"digest of the password");
        let (session, cookie) = key.issue("admin", 1_000);
        assert_eq!(key.open(&cookie, 1_001), Some(session.clone()));
        assert_eq!(key.open(&cookie, 1_000 + LIFETIME_SECS), None);
        let other = SessionKey::derive(&[7; 32], b"digest of another password");
        assert_eq!(
            SessionKey::derive(&[8; 32], b"digest of the password").open(&cookie, 1_001),
            None
        );
        assert_eq!(other.open(&cookie, 1_001), None);
    }

    #[test]
    fn a_changed_cookie_is_refused() {
        let key = SessionKey::derive(&[7; 32], b"k");
        let (_, cookie) = key.issue("admin", 1_000);
        // A later expiry, or another user, with the old MAC.
        let parts: Vec<&str> = cookie.split('.').collect();
        let later = format!("v1.{}.{}.{}.{}", parts[1], 99_999_999, parts[3], parts[4]);
        assert_eq!(key.open(&later, 1_001), None);
        let root = format!(
            "v1.{}.{}.{}.{}",
            B64.encode("root"),
            parts[2],
            parts[3],
            parts[4]
        );
        assert_eq!(key.open(&root, 1_001), None);
        for junk in ["", "v1", "v1....", "v2.a.b.c.d", &format!("{cookie}.x")] {
            assert_eq!(key.open(junk, 1_001), None, "{junk}");
        }
    }

    #[test]
    fn a_csrf_token_is_good_for_its_own_session_only() {
        let key = SessionKey::derive(&[7; 32], b"k");
        let (a, _) = key.issue("admin", 1_000);
        let (b, _) = key.issue("admin", 1_000);
        let token = key.csrf(&a);
        assert!(key.csrf_ok(&a, &token));
        assert!(!key.csrf_ok(&b, &token));
        assert!(!key.csrf_ok(&a, ""));
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_strictly() {
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("cookie", "a=1; sluice_session=v1.x; b=2".parse().unwrap());
        assert_eq!(cookie_of(&headers), Some("v1.x"));
        let set = set_cookie(Some("v"), false);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        assert!(!set.contains("Secure"));
        assert!(set_cookie(Some("v"), true).ends_with("; Secure"));
        assert!(set_cookie(None, false).contains("Max-Age=0"));
    }
}
