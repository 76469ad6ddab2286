//! Reading request bodies with the gateway's limit, and JSON bodies with errors in our format.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::HeaderMap;
use bytes::BytesMut;
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// How many bytes of request bodies the gateway holds in memory at once, across all requests:
/// a body is admitted (its declared length, or chunk by chunk when none is declared) before it
/// is read, and held against the budget until its request is done, so many large bodies at
/// once are refused with `503` instead of growing the gateway without bound.
#[derive(Debug, Clone)]
pub(crate) struct BodyBudget {
    kib: Arc<Semaphore>,
    bytes: usize,
}

impl BodyBudget {
    pub(crate) fn new(bytes: usize) -> Self {
        Self {
            kib: Arc::new(Semaphore::new(kib(bytes).max(1))),
            bytes,
        }
    }

    /// Takes `more` KiB on top of `held`, or says the budget is spent.
    fn take(&self, held: &mut Option<OwnedSemaphorePermit>, more: usize) -> Result<(), ApiError> {
        if more == 0 {
            return Ok(());
        }
        let more = u32::try_from(more).map_err(|_| ApiError::BodiesOverBudget(self.bytes))?;
        let permit = self
            .kib
            .clone()
            .try_acquire_many_owned(more)
            .map_err(|_| ApiError::BodiesOverBudget(self.bytes))?;
        match held {
            Some(h) => h.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }
}

/// Whole KiB needed to hold `bytes`.
fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024)
}

/// A body read into memory, and its share of the [`BodyBudget`], given back when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    pub(crate) bytes: Bytes,
    _budget: Option<OwnedSemaphorePermit>,
}

/// The whole body, or 413 if it is longer than `limit` (checked on `Content-Length` first), or
/// 408 if it does not arrive within `timeout` (a client trickling a body cannot hold a request
/// slot for ever), or 503 if the gateway holds its budget of bodies already.
pub(crate) async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
    budget: &BodyBudget,
) -> Result<Held, ApiError> {
    tokio::time::timeout(timeout, read_within(headers, body, limit, budget))
        .await
        .map_err(|_| ApiError::BodyTimeout(timeout))?
}

async fn read_within(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    budget: &BodyBudget,
) -> Result<Held, ApiError> {
    use http_body_util::BodyExt;
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
    let mut held = None;
    let declared = declared.and_then(|n| usize::try_from(n).ok());
    // Admitted before a byte is read: all of a declared length at once, else as it comes. A
    // refused body is read and dropped (a chunk at a time, within bounds) before the answer,
    // so the client, still writing, sees the 503 instead of a reset connection.
    if let Some(n) = declared
        && let Err(refused) = budget.take(&mut held, kib(n))
    {
        drain(body).await;
        return Err(refused);
    }
    let mut buffer = BytesMut::with_capacity(declared.unwrap_or(0));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| ApiError::BadRequest(format!("reading the request body failed: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let size = buffer.len() + data.len();
        let refused = if size > limit {
            Err(ApiError::PayloadTooLarge { limit })
        } else if declared.is_none() {
            budget.take(&mut held, kib(size) - kib(buffer.len()))
        } else {
            Ok(())
        };
        if let Err(refused) = refused {
            drop(buffer);
            drain(body).await;
            return Err(refused);
        }
        buffer.extend_from_slice(&data);
    }
    Ok(Held {
        bytes: buffer.freeze(),
        _budget: held,
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

/// Whether a request says its body is a URL-encoded form (what the portal's pages send).
pub(crate) fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// Reads the whole body within `limit` and parses it as JSON (see [`json`]). The request must
/// say it is JSON: a body sent as `text/plain` or a form (what a web page can send anywhere
/// without asking) is refused with 415 before it is read.
pub(crate) async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: std::time::Duration,
    budget: &BodyBudget,
) -> Result<T, ApiError> {
    check_json_content_type(headers)?;
    json(&read(headers, body, limit, timeout, budget).await?.bytes)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(length: Option<usize>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(n) = length {
            h.insert(axum::http::header::CONTENT_LENGTH, n.into());
        }
        h
    }

    fn chunked(chunks: usize, size: usize) -> Body {
        let stream = futures_util::stream::iter(
            (0..chunks).map(move |_| Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size]))),
        );
        Body::from_stream(stream)
    }

    const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

    #[tokio::test]
    async fn bodies_are_held_against_the_budget_until_dropped() {
        let budget = BodyBudget::new(100 * 1024);
        let first = read(
            &headers(Some(60 * 1024)),
            Body::from(vec![1u8; 60 * 1024]),
            1 << 20,
            WAIT,
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(first.bytes.len(), 60 * 1024);
        // 60 KiB held: another 60 KiB, declared or not, does not fit.
        let second = read(
            &headers(Some(60 * 1024)),
            Body::from(vec![1u8; 60 * 1024]),
            1 << 20,
            WAIT,
            &budget,
        )
        .await;
        assert!(matches!(second, Err(ApiError::BodiesOverBudget(_))));
        let third = read(
            &headers(None),
            chunked(6, 10 * 1024),
            1 << 20,
            WAIT,
            &budget,
        )
        .await;
        assert!(matches!(third, Err(ApiError::BodiesOverBudget(_))));
        // Given back when the first is done.
        drop(first);
        let again = read(
            &headers(None),
            chunked(6, 10 * 1024),
            1 << 20,
            WAIT,
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(again.bytes.len(), 60 * 1024);
    }

    #[tokio::test]
    async fn the_size_limit_holds_with_or_without_a_declared_length() {
        let budget = BodyBudget::new(1 << 30);
        let over = read(&headers(None), chunked(3, 1000), 2500, WAIT, &budget).await;
        assert!(matches!(
            over,
            Err(ApiError::PayloadTooLarge { limit: 2500 })
        ));
        let declared = read(
            &headers(Some(3000)),
            Body::from(vec![0u8; 3000]),
            2500,
            WAIT,
            &budget,
        )
        .await;
        assert!(matches!(
            declared,
            Err(ApiError::PayloadTooLarge { limit: 2500 })
        ));
        let exact = read(&headers(None), chunked(5, 500), 2500, WAIT, &budget)
            .await
            .unwrap();
        assert_eq!(exact.bytes.len(), 2500);
    }
}
