//! The calls API: what became of async calls, one or many.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use sluice_core::{CallFilter, CallId, CallRecord, CallState, FunctionRef, Timestamp};

use crate::AppState;
use crate::error::{ApiError, ApiPath, ApiQuery};

/// Calls per page when the client asks for none, and the most it may ask for.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

pub(crate) async fn get(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CallRecord>, ApiError> {
    let id = CallId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    state
        .calls
        .get(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("call {id}")))
}

/// `GET /system/calls/<id>/result`: the function's response to a finished call, as it gave it.
pub(crate) async fn result(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::response::Response, ApiError> {
    let id = CallId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let Some(result) = state.calls.result(&id).await? else {
        return Err(match state.calls.get(&id).await? {
            None => ApiError::NotFound(format!("call {id}")),
            Some(call) => ApiError::NotFound(format!(
                "result of call {id} (it is {}; results are kept for finished calls, up to a \
                 size and for a time)",
                call.state.as_str()
            )),
        });
    };
    let mut response = axum::response::Response::builder().status(result.status_code);
    for (k, v) in &result.headers {
        response = response.header(k, v);
    }
    response
        .header(sluice_core::headers::CALL_ID, id.as_str())
        .body(axum::body::Body::from(result.body))
        .map_err(|e| ApiError::Internal(format!("replaying a kept result: {e}")))
}

/// `POST /system/calls/<id>/retry`: re-drives a failed call (after its function was fixed, say).
/// It is queued again with its original request, and its attempts start from zero.
pub(crate) async fn retry(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<axum::response::Response, ApiError> {
    let id = CallId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let submitted_at = redrive(&state, &id).await?;
    crate::invoke::accepted(&id, submitted_at)
}

/// Re-drives a failed call (the API's retry, and the portal's): queued again with its kept
/// request, as a new round. Returns when it was first submitted.
pub(crate) async fn redrive(state: &AppState, id: &CallId) -> Result<Timestamp, ApiError> {
    // In a task of its own: a client that hangs up cannot stop it between taking the kept
    // request and queueing it again (the call would be queued on no queue).
    let (state, id) = (state.clone(), id.clone());
    tokio::spawn(async move { redrive_now(&state, id).await })
        .await
        .map_err(|e| ApiError::Internal(format!("re-drive task: {e}")))?
}

async fn redrive_now(state: &AppState, id: CallId) -> Result<Timestamp, ApiError> {
    let Some(mut call) = state.calls.requeue_failed(&id).await? else {
        return Err(match state.calls.get(&id).await? {
            None => ApiError::NotFound(format!("call {id}")),
            Some(c) if c.state != CallState::Failed => ApiError::Conflict(format!(
                "call {id} is {}; only a failed call can be re-driven",
                c.state.as_str()
            )),
            Some(_) => ApiError::Conflict(format!(
                "call {id} failed, but its request is no longer kept (it outlived the retention)"
            )),
        });
    };
    // A new round: the queue must not take it for a duplicate of the first submission.
    call.meta.redrive += 1;
    if let Err(e) = state.queue.enqueue(&call).await {
        let outcome = sluice_core::CallOutcome {
            state: CallState::Failed,
            status_code: None,
            error: Some("re-drive failed: the queue was unavailable; re-drive it again".into()),
            finished_at: Timestamp::now(),
            duration_ms: 0,
        };
        // Put things back as they were, so the call can be re-driven again.
        let restored = async {
            state.calls.keep_request(&call, Timestamp::now()).await?;
            state.calls.finish(&id, &outcome).await
        };
        if let Err(error) = restored.await {
            tracing::error!(call = %id, %error, "re-drive failed and the call could not be put back as failed");
        }
        return Err(e.into());
    }
    tracing::info!(call = %id, "re-driven");
    Ok(call.meta.submitted_at)
}

/// `DELETE /system/calls/<id>`: cancels a call that is still queued.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<CallRecord>, ApiError> {
    let id = CallId::parse(&id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    cancel_call(&state, &id).await.map(Json)
}

/// Cancels a call that is still queued (the API's, and the portal's).
pub(crate) async fn cancel_call(state: &AppState, id: &CallId) -> Result<CallRecord, ApiError> {
    let record = state
        .calls
        .cancel(id, Timestamp::now())
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("call {id}")))?;
    match record.state {
        CallState::Cancelled => Ok(record),
        other => Err(ApiError::Conflict(format!(
            "call {id} is {}; only a queued call can be cancelled",
            other.as_str()
        ))),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    function: Option<String>,
    namespace: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CallPage {
    calls: Vec<CallRecord>,
    /// Pass as `cursor` for the next page; absent on the last one.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_cursor: Option<String>,
}

/// A cursor is the last call of a page: `<submitted ms>_<call id>`.
pub(crate) fn parse_cursor(cursor: &str) -> Option<(Timestamp, CallId)> {
    let (millis, id) = cursor.split_once('_')?;
    Some((
        Timestamp::from_millis(millis.parse().ok()?),
        CallId::parse(id).ok()?,
    ))
}

pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<CallPage>, ApiError> {
    let function = q
        .function
        .filter(|f| !f.is_empty())
        .map(|f| FunctionRef::parse(&f, q.namespace.as_deref()))
        .transpose()?;
    let status = q
        .status
        .filter(|s| !s.is_empty())
        .map(|s| {
            CallState::parse(&s).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "status {s:?} is not one of queued, running, succeeded, failed, cancelled"
                ))
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    let before = q
        .cursor
        .filter(|c| !c.is_empty())
        .map(|c| {
            parse_cursor(&c).ok_or_else(|| {
                ApiError::BadRequest(format!("cursor {c:?} is not one this API gave out"))
            })
        })
        .transpose()?;
    let filter = CallFilter {
        function,
        state: status,
        limit,
        before,
    };
    let calls = state.calls.list_calls(&filter).await?;
    let next_cursor = (calls.len() == limit as usize)
        .then(|| calls.last())
        .flatten()
        .map(|c| format!("{}_{}", c.submitted_at.as_millis(), c.id));
    Ok(Json(CallPage { calls, next_cursor }))
}
