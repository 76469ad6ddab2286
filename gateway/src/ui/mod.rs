//! The web portal at `/ui/`: pages rendered on the server from templates compiled into the
//! binary (`maud`), with htmx (vendored, `ui/`) and a little script of our own for live parts.
//!
//! Who may see it: a browser logged in through `/ui/login` with the same credentials as the
//! management API, holding a signed session cookie (`session.rs`). Without one, a page redirects
//! to the login page and everything under `/ui/api/` (what scripts fetch) answers `401`. Every
//! change (any method but GET and HEAD) also needs the session's CSRF token, in the form field
//! `_csrf` or the `X-CSRF-Token` header, and must not come from another origin. A gateway run
//! without authentication (`--insecure-no-auth`) gives every browser a session of its own.
//!
//! The pages read and change what the management API does through the same functions
//! (`crate::functions`, the stores, the intake), so the portal can do nothing the API could not.

mod assets;
mod chart;
mod layout;
mod login;
mod pages;
pub(crate) mod session;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use crate::AppState;
use crate::error::ApiError;
use session::{Session, SessionKey};

/// The portal's share of the gateway's state.
#[derive(Debug)]
pub(crate) struct Portal {
    key: SessionKey,
    /// No credentials are required: every browser gets a session without logging in.
    open: bool,
}

impl Portal {
    /// Sessions signed under a key made of `secret` (random when there is none) and the
    /// credentials' digests: a password that changes ends every session, and a cookie, being a
    /// MAC under a random key, tells nothing of the password.
    pub(crate) fn new(auth: Option<&crate::Credentials>, secret: Option<&[u8]>) -> Self {
        let random: [u8; 32];
        let secret = match secret {
            Some(s) if s.len() >= 32 => s,
            _ => {
                random = rand::random();
                &random
            }
        };
        let credentials = auth
            .map(crate::Credentials::session_secret)
            .unwrap_or_default();
        Self {
            key: SessionKey::derive(secret, &credentials),
            open: auth.is_none(),
        }
    }
}

/// What a page knows of who is looking: put in the request by [`require_session`].
#[derive(Debug, Clone)]
pub(crate) struct Viewer {
    pub(crate) user: String,
    /// When the session ends (seconds since the epoch).
    pub(crate) expires: u64,
    /// The session's CSRF token, for the page's forms and scripts.
    pub(crate) csrf: String,
}

/// The field and header a change carries its CSRF token in.
const CSRF_FIELD: &str = "_csrf";
const CSRF_HEADER: &str = "x-csrf-token";

/// Largest form a page posts (a pasted stack.yml is the largest).
pub(crate) const FORM_LIMIT: usize = 1024 * 1024;

/// The portal's routes.
pub(crate) fn router(state: AppState) -> Router<AppState> {
    let protected = pages::routes()
        .route("/ui/logout", axum::routing::post(login::logout))
        .route("/ui/{*rest}", get(pages::not_found))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_session,
        ));
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/login", get(login::form).post(login::submit))
        .route("/ui/assets/{digest}/{name}", get(assets::serve))
        .merge(protected)
        .layer(axum::middleware::from_fn(protective_headers))
}

/// Headers every portal response carries: only its own scripts and styles, never framed, no
/// referrer sent elsewhere, nothing cached but the versioned files.
async fn protective_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
             object-src 'none'",
        ));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Whether a request came to the gateway over TLS (said by the proxy in front of it).
pub(crate) fn over_tls(headers: &axum::http::HeaderMap) -> bool {
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("proto=https"));
    forwarded_proto || forwarded
}

/// Lets a request through only with a live session (and, for a change, its CSRF token from the
/// same origin); puts the [`Viewer`] in its extensions.
async fn require_session(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let portal = &state.portal;
    let now = session::now();
    let opened = session::cookie_of(request.headers()).and_then(|c| portal.key.open(c, now));
    let (session, new_cookie): (Session, Option<String>) = match opened {
        Some(session) => (session, None),
        None if portal.open => {
            let (session, cookie) = portal.key.issue("anonymous", now);
            (session, Some(cookie))
        }
        None => return unauthenticated(&request),
    };
    let viewer = Viewer {
        user: session.user.clone(),
        expires: session.expires,
        csrf: portal.key.csrf(&session),
    };
    let secure = over_tls(request.headers());
    let request = if matches!(*request.method(), Method::GET | Method::HEAD) {
        request
    } else {
        match checked_change(&state, &session, request).await {
            Ok(request) => request,
            Err(refused) => return refused.into_response(),
        }
    };
    let mut request = request;
    request.extensions_mut().insert(viewer);
    let mut response = next.run(request).await;
    if let Some(cookie) = new_cookie
        && let Ok(value) = HeaderValue::from_str(&session::set_cookie(Some(&cookie), secure))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// A visitor without a session: pages send it to log in, `/ui/api/` answers `401`.
fn unauthenticated(request: &Request) -> Response {
    let path = request.uri().path();
    // What scripts fetch (and htmx's requests from a page whose session ended) get a 401, which
    // sluice.js turns into a visit to the login page, rather than a login page in a fragment.
    if path.starts_with("/ui/api/") || request.headers().contains_key("hx-request") {
        let mut response =
            ApiError::Unauthorized("log in to the portal first (/ui/login)".into()).into_response();
        // No Basic challenge: the browser would ask for a password in a dialog of its own.
        response.headers_mut().remove(header::WWW_AUTHENTICATE);
        return response;
    }
    let next = request
        .uri()
        .path_and_query()
        .map_or("/ui/", |p| p.as_str());
    Redirect::to(&format!("/ui/login?next={}", login::encode(next))).into_response()
}

/// A change must come from this origin and carry the session's CSRF token (header, or the
/// form's field: the form is read here, within the gateway's body budget, and handed on).
async fn checked_change(
    state: &AppState,
    session: &Session,
    request: Request,
) -> Result<Request, ApiError> {
    crate::auth::check_origin(request.method(), request.headers())?;
    let key = &state.portal.key;
    let in_header = match request.headers().get(CSRF_HEADER) {
        Some(token) if key.csrf_ok(session, token.to_str().unwrap_or_default()) => true,
        Some(_) => return Err(csrf_refused()),
        None => false,
    };
    if !crate::body::is_form(request.headers()) {
        // The portal sends nothing but forms; a change without one has no body to read.
        let empty = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .is_none_or(|n| n.as_bytes() == b"0")
            && !request.headers().contains_key(header::TRANSFER_ENCODING);
        return match (in_header, empty) {
            (true, true) => Ok(request),
            (true, false) => Err(ApiError::UnsupportedMediaType(
                "the portal takes changes as application/x-www-form-urlencoded forms".into(),
            )),
            (false, _) => Err(csrf_refused()),
        };
    }
    // The form is read here, within the body budget, whichever way the token came, and held
    // (counted against the budget) by the handler that takes it as a `HeldForm`.
    let (mut parts, body) = request.into_parts();
    let held = state.read_form(&parts.headers, body, FORM_LIMIT).await?;
    let token = form_urlencoded_value(&held.bytes, CSRF_FIELD);
    if !in_header && !token.is_some_and(|t| key.csrf_ok(session, &t)) {
        return Err(csrf_refused());
    }
    parts.extensions.insert(HeldForm(std::sync::Arc::new(held)));
    Ok(Request::from_parts(parts, axum::body::Body::empty()))
}

/// A change's form, read by the session check within the body budget. It counts against the
/// budget until the handler holding it is done.
#[derive(Debug, Clone)]
pub(crate) struct HeldForm(std::sync::Arc<crate::body::Held>);

impl HeldForm {
    /// The form's fields as `T`.
    pub(crate) fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, ApiError> {
        serde_urlencoded::from_bytes(&self.0.bytes)
            .map_err(|e| ApiError::BadRequest(format!("the form cannot be read: {e}")))
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for HeldForm {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, ApiError> {
        parts.extensions.get::<Self>().cloned().ok_or_else(|| {
            ApiError::UnsupportedMediaType(
                "a form must be sent as application/x-www-form-urlencoded".into(),
            )
        })
    }
}

fn csrf_refused() -> ApiError {
    ApiError::Forbidden(
        "the request did not carry this session's CSRF token; reload the page and try again".into(),
    )
}

/// The first value of `name` in a URL-encoded form.
fn form_urlencoded_value(form: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(form)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// A page for a status, in the portal's frame.
pub(crate) fn status_page(viewer: &Viewer, status: StatusCode, message: &str) -> Response {
    let body = maud::html! {
        p { (message) }
        p { a href="/ui/" { "Back to the overview" } }
    };
    (
        status,
        layout::page(
            viewer,
            layout::Nav::None,
            status.canonical_reason().unwrap_or("Error"),
            body,
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_csrf_field_is_read_from_a_form() {
        assert_eq!(
            form_urlencoded_value(b"a=1&_csrf=x%2By&b=2", "_csrf").as_deref(),
            Some("x+y")
        );
        assert_eq!(form_urlencoded_value(b"a=1", "_csrf"), None);
    }

    #[test]
    fn tls_is_known_from_the_proxy_headers() {
        let mut h = axum::http::HeaderMap::new();
        assert!(!over_tls(&h));
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        assert!(over_tls(&h));
    }
}
