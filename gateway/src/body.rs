//! Reading request bodies with the gateway's limit, and JSON bodies with errors in our format.

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The whole body, or 413 if it is longer than `limit` (checked on `Content-Length` first), or
/// 408 if it does not arrive within `timeout` (a client trickling a body cannot hold a request
/// slot for ever).
pub(crate) async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, ApiError> {
    tokio::time::timeout(timeout, read_within(headers, body, limit))
        .await
        .map_err(|_| ApiError::BodyTimeout(timeout))?
}

async fn read_within(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > limit as u64) {
        // Read what was sent (within reason) before answering, so the client, still writing,
        // sees the 413 instead of a reset connection.
        if n <= DRAIN_MAX {
            drain(body).await;
        }
        return Err(ApiError::PayloadTooLarge { limit });
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("reading the request body failed: {e}"))
        }
    })
}

/// The largest refused body that is still read to its end before the 413 is sent.
const DRAIN_MAX: u64 = 64 * 1024 * 1024;

/// Reads and discards a body, for at most a few seconds.
async fn drain(body: Body) {
    use http_body_util::BodyExt;
    let mut body = body;
    let reading = async { while let Some(Ok(_)) = body.frame().await {} };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), reading).await;
}

/// Reads the whole body within `limit` and parses it as JSON (see [`json`]). The request must
/// say it is JSON: a body sent as `text/plain` or a form (what a web page can send anywhere
/// without asking) is refused with 415 before it is read.
pub(crate) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<T, ApiError> {
    check_json_content_type(headers)?;
    json(&read(headers, body, limit, timeout).await?)
}

/// `Content-Type: application/json` (any parameters), or `application/<x>+json`.
fn check_json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let essence = given
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        return Ok(());
    }
    Err(ApiError::UnsupportedMediaType(match given {
        Some(v) => format!(
            "the body must be sent as Content-Type: application/json, not {:?}",
            v.chars().take(100).collect::<String>()
        ),
        None => "the body must be sent as Content-Type: application/json".into(),
    }))
}

/// Parses a JSON body, naming the problem (missing field, wrong type, syntax) on failure.
fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "request body is empty; a JSON object is required".into(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}
