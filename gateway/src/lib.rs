//! `sluice-gateway`: the HTTP front door.
//!
//! - `/system/*`: OpenFaaS's management API (functions, scale, info, logs, namespaces) and
//!   Sluice's calls API.
//! - `/function/<name>[/path]`: synchronous invocation, proxied to a ready replica.
//! - `/async-function/<name>[/path]`: the call is stored durably on the queue, then `202`.
//!
//! The gateway meets the rest of Sluice only through `sluice-core`'s traits, so the same code
//! serves the single-machine and the cluster form.

mod body;
mod calls;
mod error;
mod functions;
mod invoke;
mod logs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::{any, get, post};
use sluice_core::{CallQueue, CallStore, FunctionRef, FunctionStore, Provider};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ApiError;
pub use functions::restore;

/// Gateway settings; plain data, so tests build it directly.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest request body accepted on any route.
    pub max_body_bytes: usize,
    /// How long a function may take to answer a proxied request.
    pub upstream_timeout: Duration,
    /// How long a request waits for a starting replica to become ready.
    pub readiness_wait: Duration,
    /// Replica ceiling when a function sets no `com.openfaas.scale.max`.
    pub default_max_replicas: u32,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            upstream_timeout: Duration::from_secs(300),
            readiness_wait: Duration::from_secs(30),
            default_max_replicas: 20,
        }
    }
}

/// What the gateway's handlers share. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState {
    pub provider: Arc<dyn Provider>,
    pub functions: Arc<dyn FunctionStore>,
    pub calls: Arc<dyn CallStore>,
    pub queue: Arc<dyn CallQueue>,
    pub config: Arc<GatewayConfig>,
    http: reqwest::Client,
    invocations: Arc<Mutex<HashMap<FunctionRef, u64>>>,
    shutdown: CancellationToken,
}

impl AppState {
    pub fn new(
        provider: Arc<dyn Provider>,
        functions: Arc<dyn FunctionStore>,
        calls: Arc<dyn CallStore>,
        queue: Arc<dyn CallQueue>,
        config: GatewayConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .expect("a reqwest client with static settings builds");
        Self {
            provider,
            functions,
            calls,
            queue,
            config: Arc::new(config),
            http,
            invocations: Arc::default(),
            shutdown,
        }
    }

    fn count_invocation(&self, function: &FunctionRef) {
        let mut counts = self.invocations.lock().unwrap_or_else(|p| p.into_inner());
        *counts.entry(function.clone()).or_default() += 1;
    }

    fn invocation_count(&self, function: &FunctionRef) -> u64 {
        let counts = self.invocations.lock().unwrap_or_else(|p| p.into_inner());
        counts.get(function).copied().unwrap_or(0)
    }
}

/// The gateway's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "OK" }))
        .route("/system/info", get(functions::info))
        .route(
            "/system/functions",
            get(functions::list)
                .post(functions::create)
                .put(functions::update)
                .delete(functions::delete),
        )
        .route("/system/function/{name}", get(functions::describe))
        .route("/system/scale-function/{name}", post(functions::scale))
        .route("/system/namespaces", get(functions::namespaces))
        .route("/system/logs", get(logs::logs))
        .route("/system/calls/{id}", get(calls::get))
        .route("/function/{*target}", any(invoke::sync))
        .route("/async-function/{*target}", any(invoke::submit))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::NotFound(format!("route {}", uri.path()))
        })
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves the gateway on `listener` until `shutdown`, then lets in-flight requests finish.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
