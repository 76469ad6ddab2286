//! `GET /system/logs`: replica output as NDJSON, in OpenFaaS's shape.

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use sluice_core::{FunctionRef, Timestamp};

use crate::AppState;
use crate::error::{ApiError, ApiQuery};

/// Lines sent when the client gives no `tail`: everything the provider kept.
const ALL: usize = usize::MAX;

#[derive(Debug, Deserialize)]
pub(crate) struct LogQuery {
    name: Option<String>,
    namespace: Option<String>,
    tail: Option<i64>,
    follow: Option<bool>,
    since: Option<String>,
}

pub(crate) async fn logs(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<LogQuery>,
) -> Result<Response, ApiError> {
    let name = q.name.filter(|n| !n.is_empty()).ok_or_else(|| {
        ApiError::BadRequest("query parameter name (the function) is required".into())
    })?;
    let function = FunctionRef::parse(&name, q.namespace.as_deref())?;
    let since = q
        .since
        .map(|s| {
            humantime::parse_rfc3339_weak(&s)
                .map(Timestamp::from_system_time)
                .map_err(|e| {
                    ApiError::BadRequest(format!("since {s:?} is not an RFC 3339 time: {e}"))
                })
        })
        .transpose()?;
    let tail = match q.tail {
        None => ALL,
        Some(n) if n < 0 => ALL,
        Some(n) => usize::try_from(n).unwrap_or(ALL),
    };
    let lines = state
        .orchestrator
        .logs(&function, tail, q.follow.unwrap_or(false))?;
    let shutdown = state.shutdown.clone();
    let ndjson = lines
        .filter(move |l| std::future::ready(since.is_none_or(|s| l.timestamp >= s)))
        .map(|line| {
            let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
            bytes.push(b'\n');
            Ok::<_, std::io::Error>(bytes)
        })
        // A follower must not hold the server open at shutdown.
        .take_until(shutdown.cancelled_owned());
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(ndjson),
    )
        .into_response())
}
