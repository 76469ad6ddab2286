//! `sluice-provider`: where functions run: local child processes ([`ProcessProvider`]), and
//! inside a function's own container image, behind `sluice watchdog` ([`run_watchdog`]).
//!
//! A function runs in one of two modes, chosen the way OpenFaaS's of-watchdog chooses:
//! - **classic** (default): `envProcess` is run once per request, the request body on stdin, the
//!   response from stdout, request metadata as `Http_*` environment variables. Each replica is a
//!   small watchdog server inside Sluice on its own loopback port; the command is forked per call.
//! - **http** (`envVars.mode = "http"`): `envProcess` is a long-running server listening on the
//!   port given in `PORT`. Each replica is one child process, sent traffic only after its readiness
//!   probe succeeds and restarted with backoff if it dies.

mod container;
mod logs;
mod process;
mod restarts;
mod runtime;
mod secrets;
mod spec;
mod sys;
mod templates;
mod usage;
mod watchdog;

pub use container::{WatchdogConfig, WatchdogError, run_watchdog};
pub use process::{MAX_SECRETS_PER_NAMESPACE, ProcessConfig, ProcessProvider};
pub use secrets::SECRETS_DIR_ENV;
pub use spec::{
    DEFAULT_MAX_INFLIGHT, Mode, READINESS_PATH_ANNOTATION, RunSpec, WORKDIR_ANNOTATION,
};
pub use templates::names as template_names;
