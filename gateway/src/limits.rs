//! Limits every request meets before a handler sees it: the size of its head (header count,
//! header bytes, URI length), so an oversized request is a JSON `431`/`414` and never reaches a
//! function (classic functions get headers as environment variables, where a 200 KB header made
//! the spawn fail).

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::AppState;
use crate::error::ApiError;

/// The gateway's request-head limits; plain data.
#[derive(Debug, Clone)]
pub struct HeadLimits {
    /// Header lines per request at most.
    pub max_headers: usize,
    /// Bytes of all header names and values together at most.
    pub max_header_bytes: usize,
    /// Bytes of the path and query at most.
    pub max_uri_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            max_headers: 100,
            max_header_bytes: 32 * 1024,
            max_uri_bytes: 8 * 1024,
        }
    }
}

/// Refuses a request whose head is over the limits.
pub(crate) async fn check_head(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    check(&state.config.head, &request)?;
    Ok(next.run(request).await)
}

pub(crate) fn check(limits: &HeadLimits, request: &Request) -> Result<(), ApiError> {
    let uri = request
        .uri()
        .path_and_query()
        .map_or(0, |pq| pq.as_str().len());
    if uri > limits.max_uri_bytes {
        return Err(ApiError::UriTooLong(limits.max_uri_bytes));
    }
    let headers = request.headers();
    if headers.len() > limits.max_headers {
        return Err(ApiError::HeadersTooLarge(format!(
            "the request has {} header lines; at most {} are taken",
            headers.len(),
            limits.max_headers
        )));
    }
    let bytes: usize = headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if bytes > limits.max_header_bytes {
        return Err(ApiError::HeadersTooLarge(format!(
            "the request's headers are {bytes} bytes; at most {} are taken",
            limits.max_header_bytes
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, String)], uri: &str) -> Request {
        let mut builder = axum::http::Request::builder().uri(uri);
        for (k, v) in headers {
            builder = builder.header(*k, v);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn heads_over_the_limits_are_refused() {
        let limits = HeadLimits::default();
        assert!(check(&limits, &request(&[("x-a", "b".into())], "/function/echo")).is_ok());
        let big = "v".repeat(200 * 1024);
        assert!(matches!(
            check(&limits, &request(&[("x-big", big)], "/function/echo")),
            Err(ApiError::HeadersTooLarge(_))
        ));
        let many: Vec<(&str, String)> = (0..101).map(|i| ("x-n", i.to_string())).collect();
        assert!(matches!(
            check(&limits, &request(&many, "/")),
            Err(ApiError::HeadersTooLarge(_))
        ));
        let long = format!("/function/echo?q={}", "a".repeat(9000));
        assert!(matches!(
            check(&limits, &request(&[], &long)),
            Err(ApiError::UriTooLong(_))
        ));
    }
}
