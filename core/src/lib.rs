//! `sluice-core`: the types every Sluice component speaks and the traits at its seams.
//!
//! Nothing here does I/O. Services meet through these types, HTTP and the queue; they never reach
//! into each other's internals. The traits are object-safe so the wiring can pick an implementation
//! at start-up (`Arc<dyn CallQueue>` and friends).

pub mod api;
pub mod batch;
pub mod call;
pub mod callback;
pub mod config;
pub mod headers;
pub mod name;
pub mod retry;
pub mod seams;
pub mod stack;
pub mod time;
pub mod trace;

pub use api::{
    CrashLoop, DeploymentBounds, FUNCTION_LABEL, FunctionDeployment, FunctionResources,
    FunctionStatus, FunctionUsage,
};
pub use call::{
    AttemptOutcome, CallAttempt, CallId, CallMeta, CallOutcome, CallRecord, CallRedrive,
    CallResult, CallState, CallTimeline, CallbackDelivery, CallbackOutcome, QueueName, QueuedCall,
    TIMELINE_ATTEMPTS, TIMELINE_CALLBACKS, TIMELINE_ERROR_CHARS, TIMELINE_REDRIVES,
    check_function_path,
};
pub use callback::{CallbackPolicy, CallbackRefusal, CallbackRule};
pub use config::{ConfigError, FunctionConfig, Metric, Mode, ScaleConfig};
pub use name::{DEFAULT_NAMESPACE, FunctionRef, NameError, default_namespace};
pub use retry::RetryPolicy;
pub use seams::{
    Autoscaler, Backlog, CallFilter, CallIntake, CallQueue, CallStore, Delivery, Endpoint,
    EndpointSource, FunctionSpec, FunctionStore, InFlight, Lease, LogLine, LogStream, Orchestrator,
    ProviderError, QueueError, ReadyReplica, ReadySet, ReplicaLoad, Replicas, ScaleStatus,
    ScalingGuard, SecretValue, Secrets, StoreError, SubmitError, Submitted, TickReport, Tracked,
};
pub use time::Timestamp;

/// Response header set on every response Sluice makes itself (as opposed to one a function made),
/// so clients can tell a platform error from a function's own error. Its value is the error code.
pub const PLATFORM_ERROR_HEADER: &str = "x-sluice-error";
