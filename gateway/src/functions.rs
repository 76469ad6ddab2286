//! The management API: deploy, update, list, describe, remove and scale functions.
//!
//! The registry ([`FunctionStore`]) is the record of what should run; the provider runs it. Each
//! change is written to the registry first, so a restart restores exactly what was acknowledged.

use std::collections::BTreeSet;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use sluice_core::{
    FUNCTION_LABEL, FunctionDeployment, FunctionRef, FunctionSpec, FunctionStatus, FunctionStore,
    Timestamp,
};

use crate::AppState;
use crate::error::{ApiError, ApiPath, ApiQuery};

use sluice_core::config::{SCALE_MAX_LABEL, SCALE_MIN_LABEL};

#[derive(Debug, Deserialize)]
pub(crate) struct NamespaceQuery {
    pub(crate) namespace: Option<String>,
}

/// Brings back every function in the registry at start-up, with at most `max_replicas` each.
/// What was restored keeps its count until the autoscaler has seen a window of load. A
/// function the orchestrator can no longer run (its directory is gone, say) is logged and left
/// in the registry for the operator.
pub async fn restore(
    functions: &dyn FunctionStore,
    platform: &crate::Platform,
    max_replicas: u32,
) -> Result<usize, ApiError> {
    // A shared orchestrator (Kubernetes) keeps what was deployed itself; a function missing
    // there is applied from the registry when it is first called.
    if platform.orchestrator.shared() {
        return Ok(0);
    }
    let specs = functions.list().await?;
    let mut restored = 0;
    for mut spec in specs {
        spec.replicas = spec.replicas.min(max_replicas);
        match platform.orchestrator.apply(&spec).await {
            Ok(()) => {
                platform
                    .autoscaler
                    .pin(&spec.function, spec.replicas, "restored at start-up");
                restored += 1;
            }
            Err(error) => {
                tracing::error!(function = %spec.function, %error, "could not restore function")
            }
        }
    }
    Ok(restored)
}

/// At deploy time, replica labels above this gateway's ceiling are refused (a function deployed
/// under a higher ceiling is still scaled, within the current one).
fn check_replica_labels(state: &AppState, spec: &FunctionSpec) -> Result<(), ApiError> {
    let limit = state.config.max_replicas_limit;
    let scale = &spec.config.scale;
    for (key, n) in [(SCALE_MIN_LABEL, scale.min), (SCALE_MAX_LABEL, scale.max)] {
        if spec.deployment.label(key).is_some() && n > limit {
            return Err(ApiError::BadRequest(format!(
                "label {key} ({n}) is above this gateway's limit of {limit} replicas"
            )));
        }
    }
    Ok(())
}

/// Checks a deployment body, reads its configuration, and names the function it is for. The
/// spec returned has no replicas yet.
fn checked(state: &AppState, mut d: FunctionDeployment) -> Result<FunctionSpec, ApiError> {
    if d.service.is_empty() {
        return Err(ApiError::BadRequest(
            "field service (the function's name) is required".into(),
        ));
    }
    let function = FunctionRef::parse(&d.service, d.namespace.as_deref())?;
    d.check_bounds().map_err(ApiError::BadRequest)?;
    platform_label(&mut d, &function)?;
    d.service = function.name.clone();
    d.namespace = Some(function.namespace.clone());
    let spec = FunctionSpec::new(function, d, 0, Timestamp::now())
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    state.orchestrator.validate(&spec)?;
    check_replica_labels(state, &spec)?;
    Ok(spec)
}

/// Refuses a deployment that names secrets its namespace does not have, as OpenFaaS does, so
/// that it fails here, named, rather than as replicas that never start.
async fn check_secrets(state: &AppState, spec: &FunctionSpec) -> Result<(), ApiError> {
    let named = &spec.deployment.secrets;
    if named.is_empty() {
        return Ok(());
    }
    let namespace = &spec.function.namespace;
    let missing = state.orchestrator.missing_secrets(namespace, named).await?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(ApiError::BadRequest(format!(
        "function {} names secrets that do not exist in namespace {namespace}: {}; create them \
         first (faas-cli secret create, or POST /system/secrets)",
        spec.function,
        missing.join(", ")
    )))
}

/// `faas_function` is Sluice's label, the function's name on every status: a deployment sent
/// back as it was described carries it, and it is dropped here rather than stored as the
/// function's own; any other value is refused, as it would not be what the status says.
fn platform_label(d: &mut FunctionDeployment, function: &FunctionRef) -> Result<(), ApiError> {
    let Some(labels) = d.labels.as_mut() else {
        return Ok(());
    };
    match labels.remove(FUNCTION_LABEL) {
        Some(value) if value != function.name => Err(ApiError::BadRequest(format!(
            "label {FUNCTION_LABEL} is set by Sluice to the function's name ({:?}), not {:?}",
            function.name,
            truncated(&value)
        ))),
        _ => Ok(()),
    }
}

/// At most the first 100 characters of a value a client sent, for an error message.
fn truncated(s: &str) -> &str {
    s.char_indices().nth(100).map_or(s, |(i, _)| &s[..i])
}

pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let body = state.read_json(&headers, body).await?;
    deploy(&state, body).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Deploys a new function (`POST /system/functions`, and the portal's deploy form).
pub(crate) async fn deploy(
    state: &AppState,
    deployment: FunctionDeployment,
) -> Result<FunctionRef, ApiError> {
    let mut spec = checked(state, deployment)?;
    check_secrets(state, &spec).await?;
    spec.replicas = spec
        .config
        .scale
        .within(state.config.max_replicas_limit)
        .min;
    let _serial = state.lock_function(&spec.function).await;
    state.functions.create(&spec).await.map_err(|e| match e {
        sluice_core::StoreError::Conflict(_) => ApiError::Conflict(format!(
            "function {} already exists; update it with PUT /system/functions",
            spec.function
        )),
        other => other.into(),
    })?;
    if let Err(e) = state.orchestrator.apply(&spec).await {
        // Nothing half-deployed: the registry forgets what the provider could not start.
        let _ = state.functions.delete(&spec.function).await;
        return Err(e.into());
    }
    state.policies.forget(&spec.function);
    tracing::info!(function = %spec.function, replicas = spec.replicas, "deployed");
    Ok(spec.function)
}

pub(crate) async fn update(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let body = state.read_json(&headers, body).await?;
    redeploy(&state, body).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Changes a deployed function (`PUT /system/functions`, and the portal's deploy form).
pub(crate) async fn redeploy(
    state: &AppState,
    deployment: FunctionDeployment,
) -> Result<FunctionRef, ApiError> {
    let mut spec = checked(state, deployment)?;
    let _serial = state.lock_function(&spec.function).await;
    let Some(existing) = state.functions.get(&spec.function).await? else {
        return Err(ApiError::FunctionNotFound(spec.function.to_string()));
    };
    check_secrets(state, &spec).await?;
    let scale = spec.config.scale.within(state.config.max_replicas_limit);
    spec.replicas = existing.replicas.clamp(scale.min, scale.max);
    spec.created_at = existing.created_at;
    state.functions.update(&spec).await?;
    state.policies.forget(&spec.function);
    state.orchestrator.apply(&spec).await?;
    tracing::info!(function = %spec.function, replicas = spec.replicas, "updated");
    Ok(spec.function)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeleteRequest {
    function_name: String,
    #[serde(default)]
    namespace: Option<String>,
}

pub(crate) async fn delete(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let req: DeleteRequest = state.read_json(&headers, body).await?;
    let ns = req.namespace.as_deref().or(q.namespace.as_deref());
    let function = FunctionRef::parse(&req.function_name, ns)?;
    remove(&state, &function).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Removes a function (`DELETE /system/functions`, and the portal).
pub(crate) async fn remove(state: &AppState, function: &FunctionRef) -> Result<(), ApiError> {
    let _serial = state.lock_function(function).await;
    if !state.functions.delete(function).await? {
        return Err(ApiError::FunctionNotFound(function.to_string()));
    }
    state.metrics.forget(function);
    state.activator.forget(function);
    state.policies.forget(function);
    match state.orchestrator.remove(function).await {
        Ok(()) | Err(sluice_core::ProviderError::NotFound(_)) => {}
        Err(e) => return Err(e.into()),
    }
    tracing::info!(%function, "removed");
    Ok(())
}

pub(crate) fn status_of(state: &AppState, spec: FunctionSpec) -> FunctionStatus {
    let replicas = state
        .orchestrator
        .replicas(&spec.function)
        .unwrap_or_default();
    let invocations = state.metrics.invocations(&spec.function);
    let scaling = state.autoscaler.status(&spec.function);
    let problem = state.orchestrator.problem(&spec.function);
    // Left out when the orchestrator does not measure it, or measures nothing (no replica).
    let usage = state
        .orchestrator
        .usage(&spec.function)
        .filter(|u| *u != sluice_core::FunctionUsage::default());
    let crash_loop = state
        .activator
        .crash_loop(&spec.function)
        .map(|c| (*c).clone());
    let d = spec.deployment;
    // The label OpenFaaS tools select on, beside the function's own.
    let mut labels = d.labels.unwrap_or_default();
    labels.insert(FUNCTION_LABEL.to_owned(), spec.function.name.clone());
    FunctionStatus {
        name: spec.function.name,
        image: d.image,
        namespace: Some(spec.function.namespace),
        env_process: d.env_process,
        env_vars: d.env_vars,
        constraints: d.constraints,
        secrets: d.secrets,
        labels: Some(labels),
        annotations: d.annotations,
        limits: d.limits,
        requests: d.requests,
        read_only_root_filesystem: d.read_only_root_filesystem,
        invocation_count: invocations as f64,
        replicas: u64::from(replicas.desired),
        available_replicas: u64::from(replicas.ready),
        created_at: Some(spec.created_at),
        usage,
        target_replicas: scaling.as_ref().map(|s| u64::from(s.target)),
        scale_reason: scaling.map(|s| s.reason),
        problem,
        crash_loop,
    }
}

pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<Vec<FunctionStatus>>, ApiError> {
    let namespace = q
        .namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .unwrap_or(sluice_core::default_namespace());
    sluice_core::name::validate_label("namespace", namespace)?;
    let specs = state.functions.list().await?;
    Ok(Json(
        specs
            .into_iter()
            .filter(|s| s.function.namespace == namespace)
            .map(|s| status_of(&state, s))
            .collect(),
    ))
}

pub(crate) async fn describe(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
) -> Result<Json<FunctionStatus>, ApiError> {
    let function = FunctionRef::parse(&name, q.namespace.as_deref())?;
    let spec = state
        .functions
        .get(&function)
        .await?
        .ok_or_else(|| ApiError::FunctionNotFound(function.to_string()))?;
    Ok(Json(status_of(&state, spec)))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScaleRequest {
    replicas: i64,
    #[serde(default)]
    namespace: Option<String>,
}

pub(crate) async fn scale(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<NamespaceQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode, ApiError> {
    let req: ScaleRequest = state.read_json(&headers, body).await?;
    let function = FunctionRef::parse(&name, req.namespace.as_deref().or(q.namespace.as_deref()))?;
    scale_to(&state, &function, req.replicas).await?;
    Ok(StatusCode::ACCEPTED)
}

/// Sets a function's replica count by hand (`POST /system/scale-function`, and the portal); the
/// autoscaler leaves it for one window.
pub(crate) async fn scale_to(
    state: &AppState,
    function: &FunctionRef,
    replicas: i64,
) -> Result<u32, ApiError> {
    let _serial = state.lock_function(function).await;
    let spec = state
        .functions
        .get(function)
        .await?
        .ok_or_else(|| ApiError::FunctionNotFound(function.to_string()))?;
    let max = spec
        .config
        .scale
        .within(state.config.max_replicas_limit)
        .max;
    let count = u32::try_from(replicas)
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "replicas must be between 0 and {max} (the function's {SCALE_MAX_LABEL}), got \
                 {replicas}"
            ))
        })?;
    if !state.functions.set_replicas(function, count).await? {
        return Err(ApiError::FunctionNotFound(function.to_string()));
    }
    {
        let _scaling = state.autoscaler.exclusive().await;
        state.orchestrator.scale(function, count).await?;
        state.autoscaler.pin(function, count, "set by hand");
    }
    tracing::info!(%function, replicas = count, "scaled by hand");
    Ok(count)
}

pub(crate) async fn namespaces(
    State(state): State<AppState>,
) -> Result<Json<Vec<String>>, ApiError> {
    // Kubernetes says which namespaces are open to functions.
    if let Some(names) = state.orchestrator.namespaces().await? {
        return Ok(Json(names));
    }
    let mut names: BTreeSet<String> = state
        .functions
        .list()
        .await?
        .into_iter()
        .map(|s| s.function.namespace)
        .collect();
    names.insert(sluice_core::default_namespace().to_owned());
    Ok(Json(names.into_iter().collect()))
}

/// What `GET /system/info` says of the gateway's build: its release, the git commit it was
/// built from ("unknown" outside a checkout), that commit's subject line, and the build date
/// (set by `build.rs`).
const VERSION: VersionInfo = VersionInfo {
    release: env!("CARGO_PKG_VERSION"),
    sha: env!("SLUICE_GIT_SHA"),
    commit_message: env!("SLUICE_GIT_MESSAGE"),
    build_date: env!("SLUICE_BUILD_DATE"),
};

/// OpenFaaS's `VersionInfo` (faas-provider), with the build date beside it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct VersionInfo {
    sha: &'static str,
    release: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    commit_message: &'static str,
    build_date: &'static str,
}

/// OpenFaaS's `GatewayInfo`: the gateway's version, the provider's, and the architecture.
#[derive(Debug, serde::Serialize)]
pub(crate) struct GatewayInfo {
    provider: ProviderInfo,
    version: VersionInfo,
    arch: &'static str,
}

/// faas-provider's `ProviderInfo`. The provider is built into the gateway, so its version is
/// the gateway's.
#[derive(Debug, serde::Serialize)]
struct ProviderInfo {
    provider: &'static str,
    orchestration: &'static str,
    version: VersionInfo,
}

pub(crate) async fn info(State(state): State<AppState>) -> Json<GatewayInfo> {
    Json(GatewayInfo {
        provider: ProviderInfo {
            provider: "sluice",
            orchestration: if state.orchestrator.shared() {
                "kubernetes"
            } else {
                "process"
            },
            version: VersionInfo {
                commit_message: "",
                ..VERSION
            },
        },
        version: VERSION,
        arch: go_arch(std::env::consts::ARCH),
    })
}

/// An architecture in the names OpenFaaS's gateway reports (Go's and Docker's `TARGETARCH`:
/// `amd64`, `arm64`), from Rust's.
fn go_arch(rust: &'static str) -> &'static str {
    match rust {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_labels(labels: &[(&str, &str)]) -> FunctionDeployment {
        FunctionDeployment {
            service: "echo".into(),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).into(), (*v).into()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn architectures_are_named_as_openfaas_names_them() {
        assert_eq!(go_arch("x86_64"), "amd64");
        assert_eq!(go_arch("aarch64"), "arm64");
        assert_eq!(go_arch("riscv64"), "riscv64");
    }

    #[test]
    fn the_platform_label_is_dropped_when_it_names_the_function_and_refused_otherwise() {
        let echo = FunctionRef::parse("echo", None).unwrap();
        let mut d = with_labels(&[(FUNCTION_LABEL, "echo"), ("team", "a")]);
        platform_label(&mut d, &echo).unwrap();
        assert_eq!(d.label(FUNCTION_LABEL), None);
        assert_eq!(d.label("team"), Some("a"));
        let mut d = with_labels(&[(FUNCTION_LABEL, "other")]);
        let e = platform_label(&mut d, &echo).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("faas_function"), "{e}");
        let mut d = FunctionDeployment::default();
        platform_label(&mut d, &echo).unwrap();
        assert_eq!(d.labels, None);
    }
}
