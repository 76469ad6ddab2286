//! `sluice-gateway`: the HTTP front door.
//!
//! - `/system/*`: OpenFaaS's management API (functions, scale, info, logs, namespaces) and
//!   Sluice's calls API.
//! - `/function/<name>[/path]`: synchronous invocation, proxied to a ready replica.
//! - `/async-function/<name>[/path]`: the call is stored durably on the queue, then `202`.
//! - `/system/function/<name>/scaling`: the function's scaling chart over the last hour, from
//!   the history the gateway keeps in memory (`scaling.rs`).
//!
//! The gateway meets the rest of Sluice only through `sluice-core`'s traits, so the same code
//! serves the single-machine and the cluster form.

mod auth;
mod body;
mod calls;
mod error;
mod functions;
mod intake;
mod invoke;
mod limits;
mod logs;
mod metrics;
mod policy;
mod scaling;
mod secrets;
mod serve;
mod sync;
mod ui;
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use sluice_activator::{Activator, ActivatorConfig};
use sluice_core::{
    Autoscaler, CallIntake, CallQueue, CallStore, EndpointSource, FunctionRef, FunctionStore,
    Orchestrator,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use auth::Credentials;
pub use error::ApiError;
pub use functions::restore;
pub use intake::BatchedIntake;
pub use limits::HeadLimits;
pub use scaling::{RESOLUTION, SAMPLES, Sample, ScalingHistory, ScalingPoint, ScalingSeries};
pub use serve::{ConnectionLimits, RESERVED_DESCRIPTORS, raise_open_file_limit};
pub use sluice_core::config::AUTH_LABEL;
pub use sync::sync_functions;

/// Gateway settings; plain data, so tests build it directly.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest request body accepted on any route.
    pub max_body_bytes: usize,
    /// How long a function may take to answer a proxied request.
    pub upstream_timeout: Duration,
    /// How long a request is held waiting for a replica with room (a cold start included);
    /// then `504`.
    pub readiness_wait: Duration,
    /// Requests held per function at most; more get `503`.
    pub activator_buffer: usize,
    /// Hard ceiling on any function's replicas, whatever its labels say.
    pub max_replicas_limit: u32,
    /// Sync function requests handled at once; more get a 503.
    pub max_in_flight: usize,
    /// Async submissions handled at once (each waits for its durable write); more get a 503.
    /// Apart from `max_in_flight`, so a flood of submissions cannot starve sync calls.
    pub max_async_in_flight: usize,
    /// The queue worker's credential, sent in `X-Sluice-Internal`: it may call functions that
    /// require credentials, and its requests are not counted against `max_in_flight` (the
    /// worker bounds its own concurrency). It grants nothing on the management API.
    pub internal_token: Option<String>,
    /// Who may use the management API (and functions labelled `com.sluice.auth: required`);
    /// `None` leaves everything open.
    pub auth: Option<Credentials>,
    /// Where callbacks may go; checked at submit.
    pub callbacks: sluice_core::CallbackPolicy,
    /// Limits on connections: how many, how long a request's head may take.
    pub connections: ConnectionLimits,
    /// Limits on a request's head: header count and bytes, URI length.
    pub head: HeadLimits,
    /// How long a request body may take to arrive (then `408`).
    pub body_timeout: Duration,
    /// Calls of one function queued or running at most, checked against the call store at
    /// submit (`429` beyond); `None` where the queue bounds its own (the embedded one).
    pub max_queued_per_function: Option<u64>,
    /// Bytes of request bodies held in memory at once, across all requests; a body that
    /// would go over is refused with `503` before it is read.
    pub max_body_buffer: usize,
    /// What the web portal signs its session cookies with (32 random bytes or more, the same on
    /// every gateway that shares the credentials); `None`: a random key of this process's own,
    /// so sessions last until it stops and are good on this gateway only.
    pub portal_secret: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// Function requests per second across all functions (sync calls and async submissions;
    /// the queue worker's are not counted); `None` for no limit.
    pub rate_limit: Option<std::num::NonZeroU32>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            upstream_timeout: Duration::from_secs(300),
            readiness_wait: Duration::from_secs(30),
            activator_buffer: 500,
            max_replicas_limit: 64,
            max_in_flight: 1024,
            max_async_in_flight: 256,
            internal_token: None,
            auth: None,
            callbacks: sluice_core::CallbackPolicy::default(),
            connections: ConnectionLimits::default(),
            head: HeadLimits::default(),
            body_timeout: Duration::from_secs(60),
            rate_limit: None,
            portal_secret: None,
            max_body_buffer: 256 * 1024 * 1024,
            max_queued_per_function: None,
        }
    }
}

/// Where a gateway's functions run and how their traffic is steered: the three seams a
/// provider fills (the process provider fills the first two itself).
#[derive(Debug, Clone)]
pub struct Platform {
    /// What runs: apply, scale, remove, logs.
    pub orchestrator: Arc<dyn Orchestrator>,
    /// Which replicas are ready, and where.
    pub endpoints: Arc<dyn EndpointSource>,
    /// Told of every request; wakes functions at zero.
    pub autoscaler: Arc<dyn Autoscaler>,
}

/// What the gateway's handlers share. Cheap to clone: one reference count (every request
/// clones it a few times on its way through the router).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What an [`AppState`] holds.
#[derive(Debug)]
pub struct Shared {
    pub orchestrator: Arc<dyn Orchestrator>,
    pub functions: Arc<dyn FunctionStore>,
    pub calls: Arc<dyn CallStore>,
    pub queue: Arc<dyn CallQueue>,
    /// Where async submissions go: their records and queued calls, committed together.
    pub intake: Arc<dyn CallIntake>,
    pub config: Arc<GatewayConfig>,
    /// Pooled connections to replicas, for the sync path.
    upstream: upstream::Upstream,
    /// Serialises management changes to one function (registry write + provider apply), striped
    /// so the number of locks is fixed.
    function_locks: Arc<[tokio::sync::Mutex<()>]>,
    in_flight: Arc<tokio::sync::Semaphore>,
    async_in_flight: Arc<tokio::sync::Semaphore>,
    /// Counts the load and wakes functions at zero.
    pub autoscaler: Arc<dyn Autoscaler>,
    /// Holds requests while no replica has room, and picks one when there is.
    activator: Activator,
    failures: Arc<auth::Failures>,
    policies: Arc<policy::Policies>,
    /// What request bodies may hold in memory at once.
    bodies: body::BodyBudget,
    /// The gateway-wide rate limit, if any.
    rate: Option<Arc<policy::Rate>>,
    metrics: Arc<metrics::Metrics>,
    /// The web portal's sessions.
    portal: ui::Portal,
    /// Every function's scaling chart over the last hour, sampled by [`serve`].
    scaling_history: scaling::ScalingHistory,
    shutdown: CancellationToken,
}

/// Largest body of a management request (a deployment, a scale): far below a function's.
const MANAGEMENT_BODY_LIMIT: usize = 1024 * 1024;

/// How many locks management changes are striped over.
const FUNCTION_LOCK_STRIPES: usize = 64;

impl AppState {
    pub fn new(
        platform: Platform,
        functions: Arc<dyn FunctionStore>,
        calls: Arc<dyn CallStore>,
        queue: Arc<dyn CallQueue>,
        intake: Arc<dyn CallIntake>,
        config: GatewayConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let activator = Activator::new(
            platform.endpoints,
            platform.autoscaler.clone(),
            ActivatorConfig {
                buffer: config.activator_buffer,
                hold_timeout: config.readiness_wait,
            },
        );
        Self(Arc::new(Shared {
            orchestrator: platform.orchestrator,
            functions,
            autoscaler: platform.autoscaler,
            activator,
            failures: Arc::default(),
            policies: Arc::default(),
            rate: config.rate_limit.map(|n| Arc::new(policy::Rate::new(n))),
            bodies: body::BodyBudget::new(config.max_body_buffer),
            metrics: Arc::default(),
            portal: ui::Portal::new(
                config.auth.as_ref(),
                config.portal_secret.as_deref().map(|s| s.as_slice()),
            ),
            scaling_history: scaling::ScalingHistory::new(),
            calls,
            queue,
            intake,
            in_flight: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1))),
            async_in_flight: Arc::new(tokio::sync::Semaphore::new(
                config.max_async_in_flight.max(1),
            )),
            config: Arc::new(config),
            upstream: upstream::client(),
            function_locks: (0..FUNCTION_LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            shutdown,
        }))
    }

    /// `function`'s scaling chart: a point every [`RESOLUTION`] over the last hour, after
    /// `since` (milliseconds since the Unix epoch) if given, oldest first; `None` if this
    /// gateway does not run the function. A function deployed since the last sample has no
    /// points yet.
    pub fn scaling(&self, function: &FunctionRef, since: Option<u64>) -> Option<Vec<ScalingPoint>> {
        self.orchestrator.replicas(function)?;
        Some(
            self.scaling_history
                .points(function, since)
                .unwrap_or_default(),
        )
    }

    /// Held while a management change to `function` runs, so changes to one function apply in
    /// the order they were made.
    async fn lock_function(&self, function: &FunctionRef) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
        let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(function);
        let stripe = usize::try_from(hash % FUNCTION_LOCK_STRIPES as u64).unwrap_or(0);
        self.function_locks[stripe].lock().await
    }

    /// Whether a request carries the queue worker's internal token (compared in constant time).
    fn is_internal(&self, headers: &axum::http::HeaderMap) -> bool {
        use subtle::ConstantTimeEq;
        let Some(token) = self.config.internal_token.as_deref() else {
            return false;
        };
        headers
            .get(sluice_core::headers::INTERNAL)
            .is_some_and(|v| bool::from(v.as_bytes().ct_eq(token.as_bytes())))
    }

    /// A slot for one sync function request, or 503 when the gateway is at its limit. The
    /// queue worker's own requests need none.
    fn admit(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<Option<tokio::sync::OwnedSemaphorePermit>, ApiError> {
        if self.is_internal(headers) {
            return Ok(None);
        }
        self.in_flight
            .clone()
            .try_acquire_owned()
            .map(Some)
            .map_err(|_| ApiError::Overloaded(self.config.max_in_flight))
    }

    /// Takes one request's worth of the gateway's and `policy`'s rate limits, or `429`. The
    /// queue worker's requests replay calls already counted when they were submitted.
    fn check_rates(
        &self,
        headers: &axum::http::HeaderMap,
        function: &FunctionRef,
        policy: &policy::Policy,
    ) -> Result<(), ApiError> {
        if self.is_internal(headers) {
            return Ok(());
        }
        if let Some(rate) = &policy.rate {
            rate.check(&format_args!("function {function}"))?;
        }
        if let Some(rate) = &self.rate {
            rate.check(&"the gateway")?;
        }
        Ok(())
    }

    /// A slot for one async submission, from a pool of its own, or 503.
    fn admit_async(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.async_in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded(self.config.max_async_in_flight))
    }

    /// A function request's whole body, within the gateway's limits; it counts against the
    /// body budget until the returned value is dropped.
    async fn read_body(
        &self,
        headers: &axum::http::HeaderMap,
        body: axum::body::Body,
    ) -> Result<body::Held, ApiError> {
        body::read(
            headers,
            body,
            self.config.max_body_bytes,
            self.config.body_timeout,
            &self.bodies,
        )
        .await
    }

    /// A management request's JSON body, within the management limit.
    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        headers: &axum::http::HeaderMap,
        body: axum::body::Body,
    ) -> Result<T, ApiError> {
        body::read_json(
            headers,
            body,
            MANAGEMENT_BODY_LIMIT.min(self.config.max_body_bytes),
            self.config.body_timeout,
            &self.bodies,
        )
        .await
    }
}

impl AppState {
    /// A portal form's body (URL-encoded), within the form limit and the body budget.
    async fn read_form(
        &self,
        headers: &axum::http::HeaderMap,
        body: axum::body::Body,
        limit: usize,
    ) -> Result<body::Held, ApiError> {
        if !body::is_form(headers) {
            return Err(ApiError::UnsupportedMediaType(
                "a form must be sent as application/x-www-form-urlencoded".into(),
            ));
        }
        body::read(
            headers,
            body,
            limit.min(self.config.max_body_bytes),
            self.config.body_timeout,
            &self.bodies,
        )
        .await
    }
}

/// The gateway as one service: function calls, sync and async, go straight from the connection
/// to their handler (through the same head limits); everything else goes through the router.
/// Function calls are most of the traffic, and the router's layers of boxed services and
/// middleware showed in profiles of the sync path.
#[derive(Debug, Clone)]
pub(crate) struct Gateway {
    state: AppState,
    router: Router,
}

/// A function call, as the path says.
enum Call {
    Sync,
    Async,
}

impl Gateway {
    fn new(state: AppState) -> Self {
        Self {
            router: router(state.clone()),
            state,
        }
    }

    pub(crate) async fn handle(
        self,
        request: axum::http::Request<hyper::body::Incoming>,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        use tower::ServiceExt;
        let path = request.uri().path();
        let below = |prefix: &str| path.strip_prefix(prefix).is_some_and(|r| !r.is_empty());
        let call = if below("/function/") {
            Some(Call::Sync)
        } else if below("/async-function/") {
            Some(Call::Async)
        } else {
            None
        };
        let request = request.map(axum::body::Body::new);
        let Some(call) = call else {
            return match self.router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
        };
        if let Err(refused) = limits::check(&self.state.config.head, &request) {
            return refused.into_response();
        }
        let state = axum::extract::State(self.state);
        match call {
            Call::Sync => invoke::sync(state, request).await,
            Call::Async => invoke::submit(state, request).await,
        }
    }
}

/// The gateway's routes but function calls (see [`Gateway`]).
fn router(state: AppState) -> Router {
    // The management API: the admin's credentials, and same-origin changes only.
    let system = Router::new()
        .route("/system/info", get(functions::info))
        .route(
            "/system/functions",
            get(functions::list)
                .post(functions::create)
                .put(functions::update)
                .delete(functions::delete),
        )
        .route("/system/function/{name}", get(functions::describe))
        .route("/system/function/{name}/scaling", get(scaling::chart))
        .route("/system/scale-function/{name}", post(functions::scale))
        .route("/system/namespaces", get(functions::namespaces))
        .route(
            "/system/secrets",
            get(secrets::list)
                .post(secrets::create)
                .put(secrets::update)
                .delete(secrets::delete),
        )
        .route("/system/logs", get(logs::logs))
        .route("/system/calls", get(calls::list))
        .route("/system/calls/{id}", get(calls::get).delete(calls::cancel))
        .route("/system/calls/{id}/result", get(calls::result))
        .route("/system/calls/{id}/retry", post(calls::retry))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::management,
        ));
    Router::new()
        .route("/healthz", get(|| async { "OK" }))
        .route("/metrics", get(metrics::metrics))
        .merge(system)
        .merge(ui::router(state.clone()))
        .fallback(|uri: axum::http::Uri| async move {
            ApiError::NotFound(format!("route {}", uri.path()))
        })
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                ApiError::MethodNotAllowed {
                    method: method.to_string(),
                    path: uri.path().to_owned(),
                }
            },
        )
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::check_head,
        ))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Serves the gateway on `listener` until `shutdown`, then lets in-flight requests finish.
/// Samples every function's scaling history meanwhile.
pub async fn serve(listener: TcpListener, state: AppState) -> std::io::Result<()> {
    let shutdown = state.shutdown.clone();
    let limits = state.config.connections.clone();
    // Stopped with the gateway, even when serving ends without a shutdown (an error).
    let sampling = shutdown.child_token();
    let sampler = tokio::spawn({
        let (state, sampling) = (state.clone(), sampling.clone());
        async move {
            scaling::sample_every(&state.scaling_history, || scaling::read(&state), sampling).await;
        }
    });
    let served = serve::serve_connections(listener, Gateway::new(state), limits, shutdown).await;
    sampling.cancel();
    if let Err(error) = sampler.await {
        tracing::error!(%error, "the scaling sampler failed");
    }
    served
}
