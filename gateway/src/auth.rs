//! Who may call what.
//!
//! - The management API (`/system/*`) needs the admin's credentials: HTTP basic auth, as
//!   OpenFaaS's gateway and `faas-cli login` use it, or a bearer API token for automation.
//! - Function routes are open, as in OpenFaaS, unless the function's `com.sluice.auth` label is
//!   `required`; then the same credentials are needed, or the queue worker's internal token.
//! - A state-changing management request that a browser sent from another origin is refused, so
//!   a web page cannot drive a Sluice on the visitor's machine.
//!
//! Secrets are compared as SHA-256 digests in constant time, never logged, and never passed on
//! to a function. Failed attempts are limited per client address: past the limit, every attempt
//! from that address is refused unchecked until it has waited, so guessing stays slow.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// A secret kept only as its digest, so comparisons take the same time whatever it is.
#[derive(Clone, PartialEq, Eq)]
struct Secret([u8; 32]);

impl Secret {
    fn new(value: &str) -> Self {
        Self(Sha256::digest(value.as_bytes()).into())
    }

    fn matches(&self, offered: &str) -> bool {
        let offered: [u8; 32] = Sha256::digest(offered.as_bytes()).into();
        self.0.ct_eq(&offered).into()
    }
}

/// Who may use the management API and functions that require credentials.
#[derive(Clone, Default)]
pub struct Credentials {
    admin: Option<(String, Secret)>,
    tokens: Vec<Secret>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("admin", &self.admin.as_ref().map(|(user, _)| user))
            .field("tokens", &self.tokens.len())
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// The admin's user name and password (HTTP basic auth).
    pub fn admin(user: &str, password: &str) -> Self {
        Self {
            admin: Some((user.to_owned(), Secret::new(password))),
            tokens: Vec::new(),
        }
    }

    /// Adds bearer tokens that are as good as the admin's password.
    pub fn with_tokens<'a>(mut self, tokens: impl IntoIterator<Item = &'a str>) -> Self {
        self.tokens.extend(tokens.into_iter().map(Secret::new));
        self
    }

    /// The admin's user name, if there is an admin.
    pub fn admin_user(&self) -> Option<&str> {
        self.admin.as_ref().map(|(user, _)| user.as_str())
    }

    /// Whether a login with `user` and `password` is good: the admin's, or (with any user
    /// name) an API token in the password field. Checked as the `Authorization` header is.
    pub(crate) fn login_ok(&self, user: &str, password: &str) -> bool {
        let basic = self.accepts(&Offered::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        });
        let token = self.accepts(&Offered::Bearer(password.to_owned()));
        basic | token
    }

    /// What the portal's session key is derived from: the digests of the admin password and
    /// the tokens, so a change to any of them ends every session.
    pub(crate) fn session_secret(&self) -> Vec<u8> {
        let mut secret = Vec::new();
        if let Some((user, password)) = &self.admin {
            secret.extend_from_slice(&Sha256::digest(user.as_bytes()));
            secret.extend_from_slice(&password.0);
        }
        for token in &self.tokens {
            secret.extend_from_slice(&token.0);
        }
        secret
    }

    /// Whether `offered` is an `Authorization` header value these credentials accept.
    fn accepts(&self, offered: &Offered) -> bool {
        match offered {
            Offered::Basic { user, password } => {
                self.admin.as_ref().is_some_and(|(u, p)| {
                    // Both compared, whatever the first says, so the time taken tells nothing.
                    let user_ok = Secret::new(u).matches(user);
                    let password_ok = p.matches(password);
                    user_ok & password_ok
                })
            }
            Offered::Bearer(token) => self
                .tokens
                .iter()
                .fold(false, |any, t| any | t.matches(token)),
        }
    }
}

/// Credentials a request offers.
enum Offered {
    Basic { user: String, password: String },
    Bearer(String),
}

/// The credentials in an `Authorization` header: `None` when it offers none (absent, or the empty
/// `Bearer` that faas-cli sends before `faas-cli login`), an error when it cannot be read.
fn offered(headers: &HeaderMap) -> Result<Option<Offered>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let malformed = || ApiError::Unauthorized("the Authorization header cannot be read".into());
    let value = value.to_str().map_err(|_| malformed())?.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return Ok((!rest.is_empty()).then(|| Offered::Bearer(rest.to_owned())));
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| malformed())?;
        let decoded = String::from_utf8(decoded).map_err(|_| malformed())?;
        let (user, password) = decoded.split_once(':').ok_or_else(malformed)?;
        return Ok(Some(Offered::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        }));
    }
    Err(ApiError::Unauthorized(
        "the Authorization header must use the Basic or Bearer scheme".into(),
    ))
}

/// Failed attempts allowed per client address: a burst, then one per this long.
const FAILURE_BURST: u32 = 10;
const FAILURE_REFILL: Duration = Duration::from_secs(6);
/// Addresses remembered at most. Past this many addresses over their limit at once, every
/// attempt is refused until some have waited out their time: failing closed, so a guesser with
/// very many addresses cannot outgrow the table.
const FAILURE_ADDRESSES: usize = 100_000;

/// Counts failed attempts per client address.
#[derive(Debug)]
pub(crate) struct Failures {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses over the limit, and until when they must wait.
    blocked: std::sync::Mutex<std::collections::HashMap<IpAddr, tokio::time::Instant>>,
}

impl Default for Failures {
    fn default() -> Self {
        let quota = Quota::with_period(FAILURE_REFILL)
            .expect("a non-zero period")
            .allow_burst(NonZeroU32::new(FAILURE_BURST).expect("non-zero"));
        Self {
            limiter: RateLimiter::keyed(quota),
            blocked: std::sync::Mutex::default(),
        }
    }
}

impl Failures {
    /// `Err` with how long to wait while `client` is over its limit.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), ApiError> {
        let client = key_of(client);
        let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        if blocked.len() >= FAILURE_ADDRESSES {
            blocked.retain(|_, until| *until > now);
            if blocked.len() >= FAILURE_ADDRESSES {
                return Err(ApiError::TooManyAttempts(FAILURE_REFILL));
            }
        }
        match blocked.get(&client) {
            Some(until) if *until > now => Err(ApiError::TooManyAttempts(*until - now)),
            Some(_) => {
                blocked.remove(&client);
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Records a failed attempt from `client`.
    pub(crate) fn failed(&self, client: IpAddr) {
        let client = key_of(client);
        if self.limiter.len() > FAILURE_ADDRESSES {
            self.limiter.retain_recent();
        }
        if let Err(not_until) = self.limiter.check_key(&client) {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(self.limiter.clock()));
            let mut blocked = self.blocked.lock().unwrap_or_else(|p| p.into_inner());
            if blocked.len() >= FAILURE_ADDRESSES {
                let now = tokio::time::Instant::now();
                blocked.retain(|_, until| *until > now);
            }
            blocked.insert(client, tokio::time::Instant::now() + wait);
            tracing::warn!(%client, "too many failed authentication attempts; refusing for a while");
        }
    }
}

/// The key failures are counted under: an IPv4 address, or an IPv6 address's /64 (one host
/// is usually given a whole /64, and could otherwise try from a fresh address each time).
fn key_of(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// The address a request came from (unspecified when the server was not told).
pub(crate) fn client_of(request_extensions: &axum::http::Extensions) -> IpAddr {
    request_extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.0.ip())
}

/// Marks a request the gateway made itself for someone it already authenticated (the portal's
/// invoke panel, for a browser with a session).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Authenticated;

/// Checks that a request carries credentials `state` accepts (or `internal_ok` and the queue
/// worker's token). Open when the gateway runs without authentication.
pub(crate) fn check(
    state: &AppState,
    headers: &HeaderMap,
    extensions: &axum::http::Extensions,
    internal_ok: bool,
) -> Result<(), ApiError> {
    let Some(credentials) = &state.config.auth else {
        return Ok(());
    };
    // Made by the portal for a logged-in browser, which proved itself with the same
    // credentials; a client cannot put this in a request.
    if extensions.get::<Authenticated>().is_some() {
        return Ok(());
    }
    let client = client_of(extensions);
    if internal_ok && headers.contains_key(sluice_core::headers::INTERNAL) {
        // The queue worker's token: counted like any credential when it is wrong. The right
        // one is not held back by failures from its address (others' on the same host).
        if state.is_internal(headers) {
            return Ok(());
        }
        state.failures.check(client)?;
        state.failures.failed(client);
        return Err(ApiError::Unauthorized(
            "the credentials are not valid".into(),
        ));
    }
    state.failures.check(client)?;
    let offered = match offered(headers) {
        Ok(Some(offered)) => offered,
        Ok(None) => return Err(ApiError::Unauthorized("credentials are required".into())),
        Err(e) => {
            state.failures.failed(client);
            return Err(e);
        }
    };
    if credentials.accepts(&offered) {
        return Ok(());
    }
    state.failures.failed(client);
    Err(ApiError::Unauthorized(
        "the credentials are not valid".into(),
    ))
}

/// Middleware for the management API: same-origin for changes, then the admin's credentials.
pub(crate) async fn management(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check_origin(request.method(), request.headers())?;
    check(&state, request.headers(), request.extensions(), false)?;
    Ok(next.run(request).await)
}

/// A state-changing request a browser sent from a page of another origin is refused: browsers
/// send `Origin` on every cross-origin request that is not a GET or HEAD. (A browser may keep
/// the admin's basic credentials and send them along with such a request.)
pub(crate) fn check_origin(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let forbidden = || {
        ApiError::Forbidden(format!(
            "requests from origin {:?} may not change this gateway",
            String::from_utf8_lossy(origin.as_bytes())
        ))
    };
    let origin = origin.to_str().map_err(|_| forbidden())?;
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .ok_or_else(forbidden)?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .ok_or_else(forbidden)?;
    if authority.eq_ignore_ascii_case(host) {
        Ok(())
    } else {
        Err(forbidden())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    v.parse().unwrap(),
                )
            })
            .collect()
    }

    fn basic(user: &str, password: &str) -> String {
        let raw = format!("{user}:{password}");
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }

    fn accepts(credentials: &Credentials, authorization: &str) -> bool {
        match offered(&headers(&[("authorization", authorization)])) {
            Ok(Some(o)) => credentials.accepts(&o),
            _ => false,
        }
    }

    #[test]
    fn basic_and_bearer_credentials_are_checked() {
        let c = Credentials::admin("admin", "s3cret:with colon").with_tokens(["tok-1", "tok-2"]);
        assert!(accepts(&c, &basic("admin", "s3cret:with colon")));
        assert!(!accepts(&c, &basic("admin", "s3cret")));
        assert!(!accepts(&c, &basic("root", "s3cret:with colon")));
        assert!(accepts(&c, "Bearer tok-2"));
        assert!(accepts(&c, "bearer  tok-1"));
        assert!(!accepts(&c, "Bearer tok-3"));
        assert!(!accepts(&c, "Basic !!!"));
        let no_tokens = Credentials::admin("admin", "pw");
        assert!(!accepts(&no_tokens, "Bearer "));
    }

    #[test]
    fn an_empty_bearer_offers_nothing_and_other_schemes_are_refused() {
        assert!(matches!(offered(&headers(&[])), Ok(None)));
        assert!(matches!(
            offered(&headers(&[("authorization", "Bearer")])),
            Ok(None)
        ));
        assert!(matches!(
            offered(&headers(&[("authorization", "Bearer ")])),
            Ok(None)
        ));
        assert!(offered(&headers(&[("authorization", "Digest x")])).is_err());
    }

    #[test]
    fn the_debug_form_never_shows_secrets() {
        let c = Credentials::admin("admin", "hunter2").with_tokens(["tok"]);
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("tok\""),
            "{shown}"
        );
    }

    #[test]
    fn changes_from_another_origin_are_refused() {
        let same = headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080"),
        ]);
        assert!(check_origin(&Method::POST, &same).is_ok());
        let foreign = headers(&[
            ("origin", "http://evil.example"),
            ("host", "127.0.0.1:8080"),
        ]);
        assert!(check_origin(&Method::POST, &foreign).is_err());
        assert!(check_origin(&Method::DELETE, &foreign).is_err());
        assert!(check_origin(&Method::GET, &foreign).is_ok());
        let null = headers(&[("origin", "null"), ("host", "127.0.0.1:8080")]);
        assert!(check_origin(&Method::PUT, &null).is_err());
        assert!(check_origin(&Method::POST, &headers(&[("host", "x")])).is_ok());
    }

    #[test]
    fn past_the_burst_an_address_waits_even_with_good_credentials() {
        let failures = Failures::default();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        for _ in 0..FAILURE_BURST {
            assert!(failures.check(client).is_ok());
            failures.failed(client);
        }
        failures.failed(client);
        assert!(matches!(
            failures.check(client),
            Err(ApiError::TooManyAttempts(_))
        ));
        assert!(failures.check(other).is_ok());
        // An IPv6 client is counted by its /64: a fresh address in it is no fresh start.
        let v6 = |s: &str| -> IpAddr { s.parse().unwrap() };
        for i in 0..=FAILURE_BURST {
            failures.failed(v6(&format!("2001:db8:1:2::{i:x}")));
        }
        assert!(failures.check(v6("2001:db8:1:2:ffff::1")).is_err());
        assert!(failures.check(v6("2001:db8:1:3::1")).is_ok());
    }
}
