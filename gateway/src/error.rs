//! `ApiError`: every error the gateway answers with, as `{"code": ..., "message": ...}`.
//!
//! Every such response carries [`PLATFORM_ERROR_HEADER`] with the code, so a client can tell an
//! error Sluice made from one its function made. 5xx messages never carry internal details; those
//! go to the log.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_core::{NameError, PLATFORM_ERROR_HEADER, ProviderError, QueueError, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    InvalidName(#[from] NameError),
    #[error("{0}")]
    Unauthorized(String),
    #[error("too many failed authentication attempts from this address; try again in {}s", .0.as_secs().max(1))]
    TooManyAttempts(Duration),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    HeadersTooLarge(String),
    #[error("the request's path and query are longer than the gateway's limit of {0} bytes")]
    UriTooLong(usize),
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("{what} is over its rate limit of {per_second} requests a second; try again shortly")]
    RateLimited { what: String, per_second: u32 },
    #[error("{0} not found")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error(
        "the gateway is at its limit of {0} requests of this kind in flight; try again shortly"
    )]
    Overloaded(usize),
    #[error(
        "the gateway is holding its limit of {} MiB of request bodies; try again shortly",
        .0 / (1024 * 1024)
    )]
    BodiesOverBudget(usize),
    #[error("function {0} is not deployed")]
    FunctionNotFound(String),
    /// A function route named something no function can be called: as OpenFaaS clients
    /// expect, a function that is not there (404), not a malformed request.
    #[error("{0}, so no function by that name can be deployed")]
    NoSuchFunction(NameError),
    #[error("{0}")]
    Conflict(String),
    #[error("request body is larger than the gateway's limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("function {0} is scaled to zero replicas; scale it up to call it")]
    ScaledToZero(String),
    #[error("function {function} has no ready replica with room after waiting {waited:?}")]
    NotReady { function: String, waited: Duration },
    /// Its replicas keep exiting and none is ready. The message says how the last one ended,
    /// not what it wrote (its output is the admin's to read, through describe and logs).
    #[error(
        "function {function} is crash-looping: its replica {exit}, {exits} time(s) in a row, \
         and none is ready; see its logs and `sluice describe {function}`"
    )]
    CrashLooping {
        function: String,
        exit: String,
        exits: u32,
    },
    #[error(
        "function {function} already has {limit} requests waiting for a replica; try again shortly"
    )]
    ActivatorFull { function: String, limit: usize },
    #[error("function {0} did not answer within the gateway's upstream timeout")]
    UpstreamTimeout(String),
    #[error("function {0} could not be reached")]
    Upstream(String),
    #[error("the call store is unavailable; try again shortly")]
    StoreUnavailable(String),
    #[error("the call queue is unavailable; the call was not accepted, try again shortly")]
    QueueUnavailable(String),
    #[error("the call queue is full; the call was not accepted, try again later")]
    QueueFull(String),
    #[error("{0}; the call was not accepted, try again later")]
    FunctionQueueFull(String),
    #[error("{0}")]
    NotImplemented(String),
    /// The orchestrator (Kubernetes) refused a change, in its own words.
    #[error("the orchestrator refused: {0}")]
    OrchestratorRefused(String),
    #[error("the orchestrator is unavailable; try again shortly")]
    OrchestratorUnavailable(String),
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) | Self::InvalidName(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::RateLimited { .. } | Self::FunctionQueueFull(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::NotFound(_) | Self::FunctionNotFound(_) | Self::NoSuchFunction(_) => {
                StatusCode::NOT_FOUND
            }
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ScaledToZero(_)
            | Self::Overloaded(_)
            | Self::BodiesOverBudget(_)
            | Self::ActivatorFull { .. }
            | Self::CrashLooping { .. }
            | Self::StoreUnavailable(_)
            | Self::QueueUnavailable(_)
            | Self::QueueFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamTimeout(_) | Self::NotReady { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_) | Self::OrchestratorRefused(_) => StatusCode::BAD_GATEWAY,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::OrchestratorUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable, bounded code for clients, logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::InvalidName(_) => "invalid_name",
            Self::Unauthorized(_) => "unauthorized",
            Self::TooManyAttempts(_) => "too_many_attempts",
            Self::Forbidden(_) => "forbidden",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::UriTooLong(_) => "uri_too_long",
            Self::BodyTimeout(_) => "body_timeout",
            Self::RateLimited { .. } => "rate_limited",
            Self::NotFound(_) => "not_found",
            Self::FunctionNotFound(_) | Self::NoSuchFunction(_) => "function_not_found",
            Self::Conflict(_) => "conflict",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
            Self::Overloaded(_) | Self::BodiesOverBudget(_) => "overloaded",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::ScaledToZero(_) => "scaled_to_zero",
            Self::NotReady { .. } => "no_ready_replica",
            Self::CrashLooping { .. } => "function_crash_looping",
            Self::ActivatorFull { .. } => "activator_full",
            Self::UpstreamTimeout(_) => "upstream_timeout",
            Self::Upstream(_) => "upstream_unreachable",
            Self::StoreUnavailable(_) => "store_unavailable",
            Self::QueueUnavailable(_) => "queue_unavailable",
            Self::QueueFull(_) => "queue_full",
            Self::FunctionQueueFull(_) => "function_queue_full",
            Self::OrchestratorRefused(_) => "orchestrator_refused",
            Self::NotImplemented(_) => "not_implemented",
            Self::OrchestratorUnavailable(_) => "orchestrator_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    fn retry_after(&self) -> Option<u32> {
        match self {
            Self::NotReady { .. }
            | Self::ActivatorFull { .. }
            | Self::Overloaded(_)
            | Self::BodiesOverBudget(_)
            | Self::RateLimited { .. }
            | Self::StoreUnavailable(_)
            | Self::OrchestratorUnavailable(_)
            | Self::QueueUnavailable(_) => Some(1),
            Self::QueueFull(_) | Self::FunctionQueueFull(_) => Some(5),
            Self::TooManyAttempts(wait) => {
                Some(u32::try_from(wait.as_secs().saturating_add(1)).unwrap_or(u32::MAX))
            }
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::StoreUnavailable(detail)
            | Self::QueueUnavailable(detail)
            | Self::QueueFull(detail)
            | Self::OrchestratorUnavailable(detail)
            | Self::Internal(detail) => {
                tracing::error!(code = self.code(), %detail, "request failed");
            }
            _ if status.is_server_error() => {
                tracing::warn!(code = self.code(), error = %self, "request failed")
            }
            _ => tracing::debug!(code = self.code(), error = %self, "request refused"),
        }
        let body = serde_json::json!({ "code": self.code(), "message": self.to_string() });
        let mut response = (status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(PLATFORM_ERROR_HEADER, HeaderValue::from_static(self.code()));
        if matches!(self, Self::Unauthorized(_)) {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="sluice", charset="UTF-8""#),
            );
        }
        if let Some(secs) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<axum::extract::rejection::QueryRejection> for ApiError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        Self::BadRequest(format!("invalid query string: {}", r.body_text()))
    }
}

impl From<axum::extract::rejection::PathRejection> for ApiError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        Self::BadRequest(format!("invalid path: {}", r.body_text()))
    }
}

/// `axum::extract::Query` whose rejection is an [`ApiError`].
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub(crate) struct ApiQuery<T>(pub(crate) T);

/// `axum::extract::Path` whose rejection is an [`ApiError`].
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub(crate) struct ApiPath<T>(pub(crate) T);

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => Self::Conflict(format!("{what} already exists")),
            StoreError::NotFound(what) => Self::NotFound(what),
            StoreError::Unavailable(detail) => Self::StoreUnavailable(detail),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::Full(detail) => Self::QueueFull(detail),
            QueueError::FunctionFull(message) => Self::FunctionQueueFull(message),
            other => Self::QueueUnavailable(other.to_string()),
        }
    }
}

impl From<sluice_core::SubmitError> for ApiError {
    fn from(e: sluice_core::SubmitError) -> Self {
        use sluice_core::SubmitError as E;
        match e {
            E::Store(e) => e.into(),
            E::Queue(e) => e.into(),
            E::Conflict(message) => Self::Conflict(message),
        }
    }
}

impl From<sluice_activator::ActivatorError> for ApiError {
    fn from(e: sluice_activator::ActivatorError) -> Self {
        use sluice_activator::ActivatorError as E;
        match e {
            E::Gone(f) => Self::FunctionNotFound(f),
            E::Full { function, limit } => Self::ActivatorFull { function, limit },
            E::NotReady { function, waited } => Self::NotReady { function, waited },
            E::ScaledToZero(f) => Self::ScaledToZero(f),
            E::CrashLooping {
                function,
                crash_loop,
            } => Self::CrashLooping {
                function,
                exit: crash_loop.exit.clone(),
                exits: crash_loop.exits,
            },
        }
    }
}

impl From<ProviderError> for ApiError {
    fn from(e: ProviderError) -> Self {
        match e {
            ProviderError::NotFound(f) => Self::FunctionNotFound(f),
            ProviderError::InvalidSpec(msg) => Self::BadRequest(msg),
            // The object was invalid: the deployment's fault, in the API server's words.
            ProviderError::Refused {
                code: 400 | 422,
                message,
                ..
            } => Self::BadRequest(message),
            ProviderError::Refused {
                code: 409, message, ..
            } => Self::Conflict(message),
            // Permissions, quotas, admission webhooks: the platform's, not the caller's.
            ProviderError::Refused { message, .. } => Self::OrchestratorRefused(message),
            ProviderError::Unavailable(detail) => Self::OrchestratorUnavailable(detail),
            ProviderError::Unsupported(what) => Self::NotImplemented(what),
            ProviderError::Internal(detail) => Self::Internal(detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn render(e: ApiError) -> (StatusCode, Option<String>, Option<String>, String) {
        let r = e.into_response();
        let header = |name: &str| {
            r.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
        };
        let (marker, retry) = (header(PLATFORM_ERROR_HEADER), header("retry-after"));
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1024).await.unwrap();
        (
            status,
            marker,
            retry,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    #[tokio::test]
    async fn errors_render_as_json_with_the_platform_marker() {
        let (status, marker, retry, body) = render(ApiError::FunctionNotFound("echo".into())).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(marker.as_deref(), Some("function_not_found"));
        assert_eq!(retry, None);
        assert_eq!(
            body,
            r#"{"code":"function_not_found","message":"function echo is not deployed"}"#
        );
    }

    #[tokio::test]
    async fn a_crash_loop_is_a_503_saying_how_without_the_functions_output() {
        let crash_loop = sluice_core::CrashLoop::new(
            "exited with status 3".into(),
            3,
            ["password=hunter2".to_owned()],
        );
        let error: ApiError = sluice_activator::ActivatorError::CrashLooping {
            function: "crash.openfaas-fn".into(),
            crash_loop: std::sync::Arc::new(crash_loop),
        }
        .into();
        let (status, marker, retry, body) = render(error).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(marker.as_deref(), Some("function_crash_looping"));
        assert_eq!(retry, None);
        assert_eq!(
            body,
            r#"{"code":"function_crash_looping","message":"function crash.openfaas-fn is crash-looping: its replica exited with status 3, 3 time(s) in a row, and none is ready; see its logs and `sluice describe crash.openfaas-fn`"}"#
        );
    }

    #[tokio::test]
    async fn server_errors_do_not_leak_internals() {
        let (status, _, retry, body) = render(ApiError::StoreUnavailable(
            "disk I/O error at /var/lib/x".into(),
        ))
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("1"));
        assert!(!body.contains("/var/lib"), "{body}");
        let (_, _, _, body) = render(ApiError::Internal("secret detail".into())).await;
        assert_eq!(body, r#"{"code":"internal","message":"internal error"}"#);
    }

    #[tokio::test]
    async fn orchestrator_refusals_keep_their_words_and_their_kind() {
        let refused = |code: u16, reason: &str, message: &str| ProviderError::Refused {
            code,
            reason: reason.into(),
            message: message.into(),
        };
        let forbidden = "deployments.apps is forbidden: User \"system:serviceaccount:openfaas:gw\" cannot create resource \"deployments\"";
        for (error, status, code, words) in [
            (
                refused(403, "Forbidden", forbidden),
                StatusCode::BAD_GATEWAY,
                "orchestrator_refused",
                forbidden,
            ),
            (
                refused(403, "Forbidden", "exceeded quota: functions"),
                StatusCode::BAD_GATEWAY,
                "orchestrator_refused",
                "exceeded quota",
            ),
            (
                refused(422, "Invalid", "Deployment.apps \"x\" is invalid: spec"),
                StatusCode::BAD_REQUEST,
                "bad_request",
                "is invalid",
            ),
            (
                refused(409, "Conflict", "the object has been modified"),
                StatusCode::CONFLICT,
                "conflict",
                "has been modified",
            ),
            (
                ProviderError::Unsupported("no secrets here".into()),
                StatusCode::NOT_IMPLEMENTED,
                "not_implemented",
                "no secrets here",
            ),
        ] {
            let (s, marker, _, body) = render(error.into()).await;
            assert_eq!((s, marker.as_deref()), (status, Some(code)), "{body}");
            let body: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(body["message"].as_str().unwrap().contains(words), "{body}");
        }
        // Unreachable: a 503 to retry, without the transport's details.
        let (s, _, retry, body) =
            render(ProviderError::Unavailable("tcp connect error 10.0.0.1:443".into()).into())
                .await;
        assert_eq!(
            (s, retry.as_deref()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("1"))
        );
        assert!(!body.contains("10.0.0.1"), "{body}");
    }
}
