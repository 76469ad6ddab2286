//! `/system/secrets`: OpenFaaS's secrets API. Values go in (`value`, or `rawValue` in base64)
//! and are never given back; functions name secrets in their deployment and read them as files
//! (under `/var/openfaas/secrets` in a container, in the directory `SLUICE_SECRETS_DIR` names
//! for a local process). The orchestrator keeps them: Kubernetes Secrets, or for local
//! processes Sluice's own database, sealed.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sluice_core::{FunctionRef, ProviderError};

use crate::AppState;
use crate::error::{ApiError, ApiQuery};
use crate::functions::NamespaceQuery;

/// One entry of `GET /system/secrets`.
#[derive(Debug, Serialize)]
pub(crate) struct SecretRef {
    name: String,
    namespace: String,
}

/// The body of `POST`, `PUT` and `DELETE /system/secrets` (OpenFaaS's `types.Secret`). Its
/// `Debug` leaves the value out.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SecretBody {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    value: Option<String>,
    /// The value in base64, for bytes that are not text; wins over `value`.
    #[serde(default)]
    raw_value: Option<String>,
}

impl std::fmt::Debug for SecretBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretBody")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// The secret a body names, checked as a function name is (a DNS label), in its namespace.
fn target(name: &str, namespace: Option<&str>) -> Result<(String, String), ApiError> {
    let f = FunctionRef::new(name, namespace)
        .map_err(|e| ApiError::BadRequest(format!("secret name: {e}")))?;
    Ok((f.namespace, f.name))
}

fn not_found(e: ProviderError) -> ApiError {
    match e {
        ProviderError::NotFound(what) => ApiError::NotFound(what),
        other => other.into(),
    }
}

pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<Vec<SecretRef>>, ApiError> {
    let (namespace, _) = target("x", q.namespace.as_deref())?;
    let names = state
        .orchestrator
        .secrets(&namespace)
        .await
        .map_err(not_found)?;
    Ok(Json(
        names
            .into_iter()
            .map(|name| SecretRef {
                name,
                namespace: namespace.clone(),
            })
            .collect(),
    ))
}

async fn put(
    state: AppState,
    headers: HeaderMap,
    body: Body,
    create: bool,
) -> Result<StatusCode, ApiError> {
    let body: SecretBody = state.read_json(&headers, body).await?;
    let (namespace, name) = target(&body.name, body.namespace.as_deref())?;
    let value = match (body.raw_value.filter(|r| !r.is_empty()), body.value) {
        (Some(raw), _) => base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .map_err(|_| ApiError::BadRequest("rawValue is not base64".into()))?,
        (None, Some(value)) => value.into_bytes(),
        (None, None) => {
            return Err(ApiError::BadRequest(
                "a secret needs a value (\"value\", or \"rawValue\" in base64)".into(),
            ));
        }
    };
    let value = zeroize::Zeroizing::new(value);
    state
        .orchestrator
        .put_secret(&namespace, &name, &value, create)
        .await
        .map_err(not_found)?;
    // The name only: a secret's value never reaches the logs.
    tracing::info!(%namespace, secret = %name, created = create, "secret stored");
    Ok(StatusCode::ACCEPTED)
}

pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    put(state, headers, body, true).await
}

pub(crate) async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    put(state, headers, body, false).await
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let body: SecretBody = state.read_json(&headers, body).await?;
    let (namespace, name) = target(&body.name, body.namespace.as_deref())?;
    // A function that names it would not start again (a restart, a new replica, a redeploy):
    // it is refused while one does, rather than found missing later.
    let users: Vec<String> = state
        .functions
        .list()
        .await?
        .into_iter()
        .filter(|f| f.function.namespace == namespace && f.deployment.secrets.contains(&name))
        .map(|f| f.function.name)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::Conflict(format!(
            "secret {name} is used by function {}; deploy them without it, or remove them, first",
            users.join(", ")
        )));
    }
    state
        .orchestrator
        .delete_secret(&namespace, &name)
        .await
        .map_err(not_found)?;
    tracing::info!(%namespace, secret = %name, "secret deleted");
    Ok(StatusCode::ACCEPTED)
}
