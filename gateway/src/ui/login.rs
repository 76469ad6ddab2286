//! Logging in and out of the portal.
//!
//! The login form takes the admin's user name and password (or an API token as the password),
//! checked as the management API checks them, with failures counted against the client's
//! address by the same limiter. A good login sets the session cookie and goes on to the page the
//! visitor first asked for, if that is a portal page (never another site).

use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::layout::bare_page;
use super::session;
use crate::AppState;
use crate::error::ApiError;

/// Largest login form: anyone may send one, before logging in.
const LOGIN_FORM_LIMIT: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    next: Option<String>,
}

/// Where to go after logging in: a portal page the visitor asked for, or the overview. Anything
/// else (another host, a scheme, `//`, a backslash) is ignored, so the login page cannot be used
/// to send someone elsewhere.
fn next_page(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/ui/")
                && !n.starts_with("/ui//")
                && !n.contains(['\\', '\r', '\n'])
                && n.len() <= 2048 =>
        {
            n.to_owned()
        }
        _ => "/ui/".to_owned(),
    }
}

/// Percent-encodes a path for a query parameter.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn login_page(state: &AppState, next: &str, user: &str, error: Option<&str>) -> maud::Markup {
    let open = state.portal.open;
    bare_page(
        "Log in",
        html! {
            div.login {
                h1 { "Log in to Sluice" }
                @if let Some(error) = error {
                    div.notice.bad role="alert" #login-error { (error) }
                }
                @if open {
                    p { "This gateway asks for no credentials. " a href="/ui/" { "Go to the portal" } }
                } @else {
                    form.stack method="post" action="/ui/login" {
                        input type="hidden" name="next" value=(next);
                        div.field {
                            label for="user" { "User name" }
                            input #user type="text" name="user" value=(user) autocomplete="username" required autofocus;
                        }
                        div.field {
                            label for="password" { "Password" }
                            input #password type="password" name="password" autocomplete="current-password" required aria-describedby="password-hint";
                            span.hint #password-hint { "The admin password `sluice up` printed where to find, or an API token." }
                        }
                        div { button type="submit" { "Log in" } }
                    }
                }
            }
        },
    )
}

/// `GET /ui/login`.
pub(crate) async fn form(
    State(state): State<AppState>,
    Query(q): Query<NextQuery>,
) -> impl IntoResponse {
    login_page(&state, &next_page(q.next.as_deref()), "admin", None)
}

/// `POST /ui/login`.
pub(crate) async fn submit(
    State(state): State<AppState>,
    headers: HeaderMap,
    extensions: axum::http::Extensions,
    body: axum::body::Body,
) -> Response {
    if let Err(refused) = crate::auth::check_origin(&axum::http::Method::POST, &headers) {
        return refused.into_response();
    }
    let form: LoginForm = match state
        .read_form(&headers, body, LOGIN_FORM_LIMIT)
        .await
        .and_then(|held| {
            serde_urlencoded::from_bytes(&held.bytes)
                .map_err(|e| ApiError::BadRequest(format!("the login form cannot be read: {e}")))
        }) {
        Ok(form) => form,
        Err(refused) => return refused.into_response(),
    };
    let next = next_page(form.next.as_deref());
    let Some(credentials) = &state.config.auth else {
        return Redirect::to(&next).into_response();
    };
    let client = crate::auth::client_of(&extensions);
    if let Err(ApiError::TooManyAttempts(wait)) = state.failures.check(client) {
        let message = format!(
            "Too many failed attempts from your address; try again in {} s.",
            wait.as_secs() + 1
        );
        return (
            StatusCode::TOO_MANY_REQUESTS,
            login_page(&state, &next, &form.user, Some(&message)),
        )
            .into_response();
    }
    if !credentials.login_ok(&form.user, &form.password) {
        state.failures.failed(client);
        tracing::info!(%client, "portal login refused");
        return (
            StatusCode::UNAUTHORIZED,
            login_page(
                &state,
                &next,
                &form.user,
                Some("The user name or password is not right."),
            ),
        )
            .into_response();
    }
    let (_, cookie) = state.portal.key.issue(&form.user, session::now());
    let mut response = Redirect::to(&next).into_response();
    if let Ok(value) = HeaderValue::from_str(&session::set_cookie(
        Some(&cookie),
        super::over_tls(&headers),
    )) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    tracing::info!(%client, "portal login");
    response
}

/// `POST /ui/logout`: the cookie is dropped (the session itself lapses when it expires).
pub(crate) async fn logout(headers: HeaderMap) -> Response {
    let mut response = Redirect::to("/ui/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&session::set_cookie(None, super::over_tls(&headers)))
    {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_portal_pages_are_gone_to_after_login() {
        assert_eq!(
            next_page(Some("/ui/calls?state=failed")),
            "/ui/calls?state=failed"
        );
        for elsewhere in [
            "https://evil.example/",
            "//evil.example/ui/",
            "/ui//evil.example",
            "/system/functions",
            "/ui/\\evil",
            "",
        ] {
            assert_eq!(next_page(Some(elsewhere)), "/ui/", "{elsewhere}");
        }
        assert_eq!(next_page(None), "/ui/");
        assert_eq!(encode("/ui/calls?a=b c"), "/ui/calls%3Fa%3Db%20c");
    }
}
