//! The calls API: what became of an async call.

use axum::Json;
use axum::extract::State;
use sluice_core::{CallId, CallRecord};

use crate::AppState;
use crate::error::{ApiError, ApiPath};

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
