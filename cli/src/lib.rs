//! `sluice-cli`: the `sluice` command. `sluice up` runs the platform; the other commands talk to a
//! gateway's OpenFaaS-compatible API the way faas-cli does.

pub mod autoscaler;
pub mod calls;
pub mod client;
pub mod commands;
pub mod login;
pub mod new;
pub mod readiness;
pub mod stack;
pub mod telemetry;
pub mod up;
pub mod watchdog;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Sluice: a serverless function gateway. Deploy functions, call them synchronously or
/// asynchronously with a callback, and see what became of every call.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, propagate_version = true)]
pub struct Cli {
    /// How log lines are written to stderr: text, or JSON (one object a line, carrying the
    /// fields of the spans it was logged in: call id, trace id, function).
    #[arg(
        long,
        global = true,
        env = "SLUICE_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: telemetry::LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether the command serves (a gateway, a queue worker or both), so its spans may be
    /// exported.
    pub fn serves(&self) -> bool {
        matches!(
            self.command,
            Command::Up(_) | Command::Gateway(_) | Command::QueueWorker(_)
        )
    }
}

/// Where the client commands find the gateway.
#[derive(Debug, Clone, Args)]
pub struct GatewayArg {
    /// Gateway URL [default: $SLUICE_URL, then $OPENFAAS_URL, then the stack file's
    /// provider.gateway, then http://127.0.0.1:8080]
    #[arg(long, short = 'g', global = true)]
    pub gateway: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run Sluice on this machine: gateway, queue worker and local functions in one process.
    Up(UpArgs),
    /// Run a gateway (with local functions) on Postgres and NATS; run as many as you like.
    Gateway(GatewayArgs),
    /// Run a queue worker on Postgres and NATS; run as many as you like.
    QueueWorker(QueueWorkerArgs),
    /// Run the autoscaler of the Kubernetes form: one leader (elected on a Lease) decides every
    /// function's scale from the load all gateways report.
    Autoscaler(AutoscalerArgs),
    /// Run a function inside its container image: what the image's CMD runs (configured by
    /// the environment, as OpenFaaS's watchdogs are: fprocess, mode, port, ...).
    Watchdog(watchdog::WatchdogArgs),
    /// Start a function from a template (python, node, go, rust, shell): its handler, its own
    /// test and its entry in ./stack.yml.
    New(new::NewArgs),
    /// Deploy functions from a stack file, or one function from flags.
    Deploy(commands::DeployArgs),
    /// List deployed functions.
    #[command(alias = "ls")]
    List(commands::ListArgs),
    /// Show one function.
    Describe(commands::DescribeArgs),
    /// Call a function with stdin as the body (add --async to queue it).
    Invoke(commands::InvokeArgs),
    /// Remove a function.
    #[command(alias = "rm")]
    Remove(commands::NameArgs),
    /// Show a function's logs.
    Logs(commands::LogsArgs),
    /// Set a function's replica count.
    Scale(commands::ScaleArgs),
    /// Show what became of an async call (`call <id>` or `call show <id>`), re-drive a failed
    /// one (`call retry <id>`) or cancel a queued one (`call cancel <id>`).
    Call(calls::CallArgs),
    /// List async calls, newest first.
    Calls(calls::CallsArgs),
    /// The dead-letter queue: list failed calls, re-drive one (`dlq retry <id>`) or all of them
    /// (`dlq retry --all`).
    Dlq(calls::DlqArgs),
    /// Print shell completions for `sluice` to stdout (bash, zsh, fish, elvish, powershell).
    Completion(CompletionArgs),
    /// Check credentials against a gateway and store them for every later command.
    Login(commands::LoginArgs),
    /// Forget the stored credentials for a gateway.
    Logout(GatewayArg),
}

/// `sluice completion <shell>`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Gateway flags, shared by `sluice up` and `sluice gateway`.
#[derive(Debug, Args)]
pub struct GatewayFlags {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where Sluice keeps what is local to this machine: function processes, and on the
    /// embedded default its database (functions, calls, queue).
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = ".sluice")]
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Bytes of request bodies held in memory at once, across all requests; a body that
    /// would go over is refused with 503 before it is read (at least --max-body-bytes).
    #[arg(long, env = "SLUICE_MAX_BODY_BUFFER", default_value_t = 256 * 1024 * 1024)]
    pub max_body_buffer: usize,
    /// How long a function may take to answer (e.g. 300s, 5m).
    #[arg(long, env = "SLUICE_FUNCTION_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub function_timeout: Duration,
    /// Hard ceiling on any function's replicas (com.openfaas.scale.max cannot exceed it).
    #[arg(long, env = "SLUICE_MAX_REPLICAS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_replicas: u32,
    /// Stable window of functions that set no com.sluice.scale.window (their panic window is
    /// a tenth of it): the load is averaged over it, and a scale-down waits for it.
    #[arg(long, env = "SLUICE_SCALE_WINDOW", default_value = "60s", value_parser = humantime::parse_duration)]
    pub scale_window: Duration,
    /// Sync function requests handled at once; more get a 503.
    #[arg(long, env = "SLUICE_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Async submissions handled at once (a pool of their own, so they cannot starve sync
    /// calls); more get a 503.
    #[arg(long, env = "SLUICE_MAX_ASYNC_IN_FLIGHT", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_async_in_flight: u32,
    /// How long a request is held for a function with no replica with room (it is woken if at
    /// zero) before it gets a 504.
    #[arg(long, env = "SLUICE_HOLD_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub hold_timeout: Duration,
    /// Requests held per function at most; more get a 503.
    #[arg(long, env = "SLUICE_ACTIVATOR_BUFFER", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..))]
    pub activator_buffer: u32,
    /// Client connections open at once; more are answered 503 at once (the open-file limit
    /// is raised at start, and this is lowered to fit it if need be).
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// How long a request's head may take to arrive, and a kept-alive connection may stay
    /// idle, before the connection is closed.
    #[arg(long, env = "SLUICE_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// Bytes of all of a request's header names and values together at most (then 431).
    #[arg(long, env = "SLUICE_MAX_HEADER_BYTES", default_value_t = 32 * 1024, value_parser = clap::value_parser!(u32).range(1024..=1024 * 1024))]
    pub max_header_bytes: u32,
    /// Async calls of any one function queued or running at most (then 429
    /// function_queue_full).
    #[arg(long, env = "SLUICE_MAX_QUEUED_PER_FUNCTION", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_per_function: u64,
    /// Function requests per second across all functions (sync calls and async submissions);
    /// more get 429 [default: no limit]. A function's own: label com.sluice.rate-limit.
    #[arg(long, env = "SLUICE_RATE_LIMIT", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: Option<u32>,
    /// How long a request body may take to arrive (then 408).
    #[arg(long, env = "SLUICE_BODY_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub body_timeout: Duration,
    /// A file holding the key (32 bytes in base64) that the secrets functions name are sealed
    /// under at rest; every gateway sharing a database needs the same one [default: kept in
    /// the data dir as secrets.key, made on first start]
    #[arg(long, env = "SLUICE_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    #[command(flatten)]
    pub auth: AuthFlags,
}

/// Who may use the management API (`/system/*`) and functions labelled
/// `com.sluice.auth: required`.
#[derive(Debug, Args)]
pub struct AuthFlags {
    /// The admin's user name (HTTP basic auth, as `faas-cli login` sends it).
    #[arg(long, env = "SLUICE_ADMIN_USER", default_value = "admin")]
    pub admin_user: String,
    /// The admin's password [default: from --auth-secrets-dir; else kept in the data dir,
    /// generated on first start]
    #[arg(long, env = "SLUICE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// A directory with OpenFaaS's secret files `basic-auth-password` (and optionally
    /// `basic-auth-user`), e.g. /var/openfaas/secrets.
    #[arg(long, env = "SLUICE_AUTH_SECRETS_DIR")]
    pub auth_secrets_dir: Option<PathBuf>,
    /// A bearer API token as good as the admin's password, for automation (repeatable; the
    /// variable takes a comma-separated list).
    #[arg(
        long = "api-token",
        env = "SLUICE_API_TOKENS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub api_tokens: Vec<String>,
    /// Run with no authentication at all: anyone who can reach the gateway can deploy
    /// functions, that is run commands on this machine as this user.
    #[arg(long, env = "SLUICE_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
}

/// Where callbacks may go, and how they are signed.
#[derive(Debug, Args)]
pub struct CallbackFlags {
    /// Hosts (`hooks.example.com`, `.example.com` for subdomains) or address blocks
    /// (`10.0.0.0/8`) callbacks may go to; when given, no others (comma-separated in the
    /// variable). A block also opens private or link-local addresses it covers.
    #[arg(
        long = "callback-allow",
        env = "SLUICE_CALLBACK_ALLOW",
        value_delimiter = ','
    )]
    pub allow: Vec<sluice_core::CallbackRule>,
    /// Hosts or address blocks callbacks may never go to.
    #[arg(
        long = "callback-deny",
        env = "SLUICE_CALLBACK_DENY",
        value_delimiter = ','
    )]
    pub deny: Vec<sluice_core::CallbackRule>,
    /// Whether callbacks may go to loopback and private addresses (RFC 1918, unique local,
    /// CGNAT) [default: true for `sluice up` listening on a loopback address, else false]
    #[arg(
        long = "callback-allow-private",
        env = "SLUICE_CALLBACK_ALLOW_PRIVATE",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub allow_private: Option<bool>,
    /// Signs every callback with HMAC-SHA256 under this key (headers X-Sluice-Timestamp and
    /// X-Sluice-Signature; see the README for checking them).
    #[arg(long, env = "SLUICE_CALLBACK_SIGNING_KEY", hide_env_values = true)]
    pub callback_signing_key: Option<String>,
}

impl CallbackFlags {
    fn apply(&self, config: &mut up::UpConfig, private_by_default: bool) -> anyhow::Result<()> {
        config.gateway.callbacks = sluice_core::CallbackPolicy {
            allow: self.allow.clone(),
            deny: self.deny.clone(),
            allow_private: self.allow_private.unwrap_or(private_by_default),
        };
        config.callback_signing_key = match self.callback_signing_key.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(key) if key.len() < MIN_TOKEN_LEN => {
                anyhow::bail!("--callback-signing-key must be at least {MIN_TOKEN_LEN} characters")
            }
            Some(key) => Some(key.to_owned()),
        };
        Ok(())
    }
}

/// Shortest admin password accepted.
const MIN_PASSWORD_LEN: usize = 8;

/// Shortest API token or internal token accepted.
const MIN_TOKEN_LEN: usize = 16;

impl AuthFlags {
    /// What these flags ask for, with the secret files read; or which setting is wrong.
    fn setting(&self) -> anyhow::Result<up::AuthSetting> {
        use anyhow::Context;
        let user = self.admin_user.trim().to_owned();
        anyhow::ensure!(
            !user.is_empty() && !user.contains(':'),
            "--admin-user must be a name without ':'"
        );
        let tokens: Vec<String> = self
            .api_tokens
            .iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        if let Some(short) = tokens.iter().find(|t| t.len() < MIN_TOKEN_LEN) {
            anyhow::bail!(
                "--api-token: a token must be at least {MIN_TOKEN_LEN} characters (one is {})",
                short.len()
            );
        }
        if self.insecure_no_auth {
            anyhow::ensure!(
                self.admin_password.is_none()
                    && self.auth_secrets_dir.is_none()
                    && tokens.is_empty(),
                "--insecure-no-auth cannot be combined with credentials                  (--admin-password, --auth-secrets-dir, --api-token)"
            );
            return Ok(up::AuthSetting::Off);
        }
        let (user, password) = match (&self.admin_password, &self.auth_secrets_dir) {
            (Some(_), Some(_)) => {
                anyhow::bail!("give either --admin-password or --auth-secrets-dir, not both")
            }
            (Some(password), None) => (user, Some(password.clone())),
            (None, Some(dir)) => {
                let read = |name: &str| {
                    let path = dir.join(name);
                    std::fs::read_to_string(&path)
                        .map(|s| s.trim().to_owned())
                        .with_context(|| {
                            format!("--auth-secrets-dir: cannot read {}", path.display())
                        })
                };
                let user = if dir.join("basic-auth-user").exists() {
                    read("basic-auth-user")?
                } else {
                    user
                };
                (user, Some(read("basic-auth-password")?))
            }
            (None, None) => (user, None),
        };
        match password {
            Some(password) => {
                anyhow::ensure!(
                    password.chars().count() >= MIN_PASSWORD_LEN,
                    "the admin password must be at least {MIN_PASSWORD_LEN} characters"
                );
                let credentials = sluice_gateway::Credentials::admin(&user, &password)
                    .with_tokens(tokens.iter().map(String::as_str));
                Ok(up::AuthSetting::Given(credentials))
            }
            None if !tokens.is_empty() => Ok(up::AuthSetting::Given(
                sluice_gateway::Credentials::default()
                    .with_tokens(tokens.iter().map(String::as_str)),
            )),
            None => Ok(up::AuthSetting::DataDir { user }),
        }
    }
}

/// Queue worker flags, shared by `sluice up` and `sluice queue-worker`.
#[derive(Debug, Args)]
pub struct WorkerFlags {
    /// Async calls worked on at once (per queue).
    #[arg(long, env = "SLUICE_WORKER_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_concurrency: u16,
    /// Async calls of any one function worked on at once (per queue), so one slow function
    /// cannot take every slot [default: three quarters of --worker-concurrency].
    #[arg(long, env = "SLUICE_FUNCTION_CONCURRENCY", value_parser = clap::value_parser!(u16).range(1..))]
    pub function_concurrency: Option<u16>,
    /// How long a queued call stays leased to a worker without a heartbeat before redelivery.
    #[arg(long, env = "SLUICE_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Largest function response kept for GET /system/calls/<id>/result, in bytes.
    #[arg(long, env = "SLUICE_RESULT_MAX_BYTES", default_value_t = 1024 * 1024)]
    pub result_max_bytes: usize,
    /// How long kept results are kept (e.g. 24h).
    #[arg(long, env = "SLUICE_RESULT_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub result_retention: Duration,
    /// How long a finished call's record is kept (e.g. 7d); then it is deleted.
    #[arg(long, env = "SLUICE_CALL_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub call_retention: Duration,
}

/// Where shared state lives: Postgres and NATS JetStream.
#[derive(Debug, Args)]
pub struct BackendFlags {
    /// Postgres URL for functions and calls, e.g. postgres://sluice@db/sluice.
    #[arg(long, env = "SLUICE_DATABASE_URL")]
    pub database_url: Option<String>,
    /// NATS URL(s) for the call queue (JetStream), e.g. nats://127.0.0.1:4222.
    #[arg(long, env = "SLUICE_NATS_URL")]
    pub nats: Option<String>,
    /// How long start-up keeps trying to reach Postgres and NATS before giving up.
    #[arg(long, env = "SLUICE_CONNECT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
    /// Postgres connections this process opens at most.
    #[arg(long, env = "SLUICE_DB_CONNECTIONS", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_connections: u32,
    /// Shared secret between gateways and queue workers (at least 16 characters): a worker's
    /// requests carrying it may call functions that require credentials and are not counted
    /// against the gateway's --max-in-flight. It grants nothing on the management API.
    #[arg(long, env = "SLUICE_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<String>,
    /// Create the database --database-url names if it does not exist (connecting to the
    /// server's `postgres` database to do so).
    #[arg(long, env = "SLUICE_CREATE_DATABASE")]
    pub create_database: bool,
}

impl BackendFlags {
    fn shared(&self, required: bool) -> anyhow::Result<Option<up::SharedBackends>> {
        match (&self.database_url, &self.nats) {
            (Some(database_url), Some(nats)) => Ok(Some(up::SharedBackends {
                database_url: database_url.clone(),
                db_connections: self.db_connections,
                nats: sluice_nats::JetStreamConfig::new(nats.clone()),
                connect_timeout: self.connect_timeout,
                create_database: self.create_database,
            })),
            (None, None) if !required => Ok(None),
            _ => anyhow::bail!(
                "the cluster form needs both --database-url (Postgres) and --nats (NATS JetStream)"
            ),
        }
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub gateway: GatewayFlags,
    #[command(flatten)]
    pub worker: WorkerFlags,
    #[command(flatten)]
    pub callbacks: CallbackFlags,
    #[command(flatten)]
    pub backends: BackendFlags,
    /// How long in-flight work may take to finish when Sluice stops.
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Calls the embedded queue holds at most (then 503 queue_full). On JetStream, the
    /// stream's own limits apply.
    #[arg(long, env = "SLUICE_MAX_QUEUED_CALLS", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_calls: u64,
    /// Bytes of call bodies the embedded queue holds at most (then 503 queue_full).
    #[arg(long, env = "SLUICE_MAX_QUEUED_BYTES", default_value_t = 8 * 1024 * 1024 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queued_bytes: u64,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Where functions run: `process` (each gateway runs every function's replicas as local
    /// processes) or `kubernetes` (functions are Deployments in --function-namespace, shared by
    /// every gateway; one `sluice autoscaler` decides their scale).
    #[arg(long, env = "SLUICE_PROVIDER", value_enum, default_value = "process")]
    pub provider: ProviderKind,
    #[command(flatten)]
    pub kubernetes: KubernetesFlags,
    #[command(flatten)]
    pub gateway: GatewayFlags,
    #[command(flatten)]
    pub callbacks: CallbackFlags,
    #[command(flatten)]
    pub backends: BackendFlags,
    /// How long in-flight requests may take to finish when the gateway stops.
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// Where functions run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProviderKind {
    Process,
    Kubernetes,
}

/// How to reach Kubernetes, and where functions go there.
#[derive(Debug, Clone, Args)]
pub struct KubernetesFlags {
    /// The namespace functions go to (others only when labelled openfaas=1).
    #[arg(long, env = "SLUICE_FUNCTION_NAMESPACE", default_value = "openfaas-fn")]
    pub function_namespace: String,
    /// A kubeconfig file, to run outside the cluster [default: $KUBECONFIG, ~/.kube/config,
    /// then the pod's service account].
    #[arg(long, env = "SLUICE_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Run every function's pods as this numeric user, required to be non-root (the restricted
    /// Pod Security Standard) [default: the image's user].
    #[arg(long, env = "SLUICE_FUNCTION_RUN_AS_USER", value_parser = clap::value_parser!(i64).range(1..))]
    pub function_run_as_user: Option<i64>,
}

impl KubernetesFlags {
    fn settings(&self) -> anyhow::Result<up::KubeSettings> {
        sluice_core::FunctionRef::parse("x", Some(&self.function_namespace))
            .map_err(|e| anyhow::anyhow!("--function-namespace: {e}"))?;
        Ok(up::KubeSettings {
            namespace: self.function_namespace.clone(),
            kubeconfig: self.kubeconfig.clone(),
            run_as_user: self.function_run_as_user,
        })
    }
}

/// `sluice autoscaler`: decides the scale of every function for all gateways.
#[derive(Debug, Args)]
pub struct AutoscalerArgs {
    /// Address of the health endpoint (GET /healthz; healthy on standbys too).
    #[arg(long, env = "SLUICE_LISTEN", default_value = "0.0.0.0:8082")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub kubernetes: KubernetesFlags,
    /// The Lease the autoscalers elect their leader on.
    #[arg(long, env = "SLUICE_LEASE_NAME", default_value = "sluice-autoscaler")]
    pub lease_name: String,
    /// The Lease's namespace [default: the pod's, $POD_NAMESPACE].
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: String,
    /// This candidate's name in the election [default: the pod's, $POD_NAME].
    #[arg(long, env = "POD_NAME")]
    pub identity: String,
    /// Ceiling on any function's replicas (com.openfaas.scale.max is held to it).
    #[arg(long, env = "SLUICE_MAX_REPLICAS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_replicas: u32,
    /// Stable window of functions that set no com.sluice.scale.window (their panic window is
    /// a tenth of it): the load is averaged over it, and a scale-down waits for it.
    #[arg(long, env = "SLUICE_SCALE_WINDOW", default_value = "60s", value_parser = humantime::parse_duration)]
    pub scale_window: Duration,
    /// Postgres URL (the function registry), e.g. postgres://sluice@db/sluice.
    #[arg(long, env = "SLUICE_DATABASE_URL")]
    pub database_url: String,
    /// NATS URL(s) the gateways report their load on.
    #[arg(long, env = "SLUICE_NATS_URL")]
    pub nats: String,
    /// How long start-up keeps trying to reach Postgres, NATS and Kubernetes.
    #[arg(long, env = "SLUICE_CONNECT_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct QueueWorkerArgs {
    /// Address of a health endpoint (GET /healthz), for probes; none when unset.
    #[arg(long, env = "SLUICE_WORKER_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// The gateway the worker invokes functions through.
    #[arg(long, env = "SLUICE_GATEWAY_URL")]
    pub gateway_url: String,
    /// Named queues to work (comma-separated); functions choose one with the
    /// com.openfaas.queue annotation.
    #[arg(
        long,
        env = "SLUICE_QUEUE",
        default_value = "default",
        value_delimiter = ','
    )]
    pub queue: Vec<String>,
    #[command(flatten)]
    pub worker: WorkerFlags,
    #[command(flatten)]
    pub callbacks: CallbackFlags,
    #[command(flatten)]
    pub backends: BackendFlags,
    /// Largest function response accepted, in bytes.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// How long one invocation may take, waiting for a replica included.
    #[arg(long, env = "SLUICE_FUNCTION_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub function_timeout: Duration,
    /// How long in-flight calls may take to finish when the worker stops; the rest are
    /// given back to the queue.
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

/// `--scale-window`, if it is long enough to average over.
fn checked_scale_window(window: Duration) -> anyhow::Result<Duration> {
    let least = sluice_core::config::MIN_STABLE_WINDOW;
    anyhow::ensure!(
        window >= least,
        "--scale-window must be at least {least:?}, got {window:?}"
    );
    Ok(window)
}

impl GatewayFlags {
    fn apply(&self, config: &mut up::UpConfig) -> anyhow::Result<()> {
        if self.function_timeout.is_zero() {
            anyhow::bail!("--function-timeout must be more than zero");
        }
        config.gateway.max_body_bytes = self.max_body_bytes;
        anyhow::ensure!(
            self.max_body_buffer >= self.max_body_bytes,
            "--max-body-buffer ({}) must be at least --max-body-bytes ({}), or the largest \
             body could never be taken",
            self.max_body_buffer,
            self.max_body_bytes
        );
        config.gateway.max_body_buffer = self.max_body_buffer;
        config.gateway.upstream_timeout = self.function_timeout;
        config.gateway.max_replicas_limit = self.max_replicas;
        config.scale_window = checked_scale_window(self.scale_window)?;
        config.gateway.max_in_flight = self.max_in_flight as usize;
        config.gateway.max_async_in_flight = self.max_async_in_flight as usize;
        config.gateway.readiness_wait = self.hold_timeout;
        config.gateway.activator_buffer = self.activator_buffer as usize;
        config.process.drain_timeout = self.function_timeout;
        config.process.default_exec_timeout = self.function_timeout;
        config.auth = self.auth.setting()?;
        config.secrets_key_file = self.secrets_key_file.clone();
        for (flag, value) in [
            ("--header-read-timeout", self.header_read_timeout),
            ("--body-timeout", self.body_timeout),
        ] {
            anyhow::ensure!(!value.is_zero(), "{flag} must be more than zero");
        }
        config.gateway.connections.max_connections = self.max_connections as usize;
        config.gateway.connections.header_read_timeout = self.header_read_timeout;
        config.gateway.head.max_header_bytes = self.max_header_bytes as usize;
        // hyper's own buffer stays well above ours, so ours answers first, in JSON; a head
        // beyond hyper's gets its bare 431.
        config.gateway.connections.max_head_bytes = config
            .gateway
            .connections
            .max_head_bytes
            .max((self.max_header_bytes as usize + config.gateway.head.max_uri_bytes) * 2);
        config.gateway.body_timeout = self.body_timeout;
        config.gateway.rate_limit = self.rate_limit.and_then(std::num::NonZeroU32::new);
        Ok(())
    }
}

/// Checks the internal token a gateway and its workers share.
fn internal_token(token: Option<&String>) -> anyhow::Result<Option<String>> {
    match token.map(|t| t.trim()) {
        None | Some("") => Ok(None),
        Some(t) if t.len() < MIN_TOKEN_LEN => anyhow::bail!(
            "--internal-token must be at least {MIN_TOKEN_LEN} characters: it is a credential"
        ),
        Some(t) => Ok(Some(t.to_owned())),
    }
}

impl WorkerFlags {
    fn apply(&self, config: &mut up::UpConfig) -> anyhow::Result<()> {
        if self.lease < Duration::from_millis(300) {
            anyhow::bail!("--lease must be at least 300ms, got {:?}", self.lease);
        }
        let concurrency = usize::from(self.worker_concurrency);
        config.worker_concurrency = concurrency;
        config.function_concurrency = self
            .function_concurrency
            .map_or((concurrency * 3).div_ceil(4), usize::from);
        config.lease = self.lease;
        config.result_max_bytes = self.result_max_bytes;
        config.result_retention = self.result_retention;
        config.call_retention = self.call_retention;
        Ok(())
    }
}

impl UpArgs {
    /// The configuration these flags describe, or which flag is wrong.
    pub fn config(&self) -> anyhow::Result<up::UpConfig> {
        let mut config = up::UpConfig::new(self.gateway.data_dir.clone());
        self.gateway.apply(&mut config)?;
        self.worker.apply(&mut config)?;
        // On a laptop (listening on loopback) callbacks may go to 127.0.0.1; a Sluice others
        // can reach must not let them make it call into its own network.
        self.callbacks
            .apply(&mut config, self.gateway.listen.ip().is_loopback())?;
        config.shared = self.backends.shared(false)?;
        config.queue_bounds = sluice_store::QueueBounds {
            max_calls: self.max_queued_calls,
            max_bytes: self.max_queued_bytes,
            max_per_function: self.gateway.max_queued_per_function,
        };
        if config.shared.is_some() {
            config.gateway.max_queued_per_function = Some(self.gateway.max_queued_per_function);
        }
        config.gateway.internal_token = internal_token(self.backends.internal_token.as_ref())?;
        config.shutdown_grace = self.shutdown_grace;
        config.process.stop_grace = self.shutdown_grace;
        Ok(config)
    }
}

impl GatewayArgs {
    pub fn config(&self) -> anyhow::Result<up::UpConfig> {
        let mut config = up::UpConfig::new(self.gateway.data_dir.clone());
        self.gateway.apply(&mut config)?;
        self.callbacks.apply(&mut config, false)?;
        let listen = self.gateway.listen;
        if matches!(config.auth, up::AuthSetting::DataDir { .. }) && !listen.ip().is_loopback() {
            anyhow::bail!(
                "sluice gateway would listen on {listen}, which other machines can reach, with no \
                 credentials set: anyone could deploy functions, that is run commands here. Give \
                 --admin-password (or SLUICE_ADMIN_PASSWORD, --auth-secrets-dir, --api-token), \
                 the same on every gateway; or --insecure-no-auth if you really mean it"
            );
        }
        config.shared = self.backends.shared(true)?;
        if self.provider == ProviderKind::Kubernetes {
            let settings = self.kubernetes.settings()?;
            // Functions that name no namespace go to the function namespace.
            if !sluice_core::name::set_default_namespace(&settings.namespace)
                && sluice_core::default_namespace() != settings.namespace
            {
                anyhow::bail!(
                    "--function-namespace {:?} cannot be used",
                    settings.namespace
                );
            }
            config.kubernetes = Some(settings);
        }
        config.gateway.internal_token = internal_token(self.backends.internal_token.as_ref())?;
        if config.gateway.internal_token.is_none() && config.gateway.rate_limit.is_some() {
            anyhow::bail!(
                "--rate-limit needs --internal-token (shared with the queue workers): without it \
                 the workers' replays of accepted calls would be rate-limited too"
            );
        }
        config.gateway.max_queued_per_function = Some(self.gateway.max_queued_per_function);
        config.shutdown_grace = self.shutdown_grace;
        config.process.stop_grace = self.shutdown_grace;
        Ok(config)
    }
}

impl QueueWorkerArgs {
    pub fn config(&self) -> anyhow::Result<(up::UpConfig, up::Role)> {
        let mut config = up::UpConfig::new(PathBuf::new());
        self.worker.apply(&mut config)?;
        self.callbacks.apply(&mut config, false)?;
        config.shared = self.backends.shared(true)?;
        config.gateway.internal_token = internal_token(self.backends.internal_token.as_ref())?;
        config.gateway.max_body_bytes = self.max_body_bytes;
        config.gateway.upstream_timeout = self.function_timeout;
        config.shutdown_grace = self.shutdown_grace;
        let queues = self
            .queue
            .iter()
            .map(|q| sluice_core::QueueName::parse(q.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("--queue: {e}"))?;
        if queues.is_empty() {
            anyhow::bail!("--queue names no queue");
        }
        config.health = self.listen;
        let role = up::Role::QueueWorker {
            gateway_url: self.gateway_url.trim_end_matches('/').to_owned(),
            queues,
        };
        Ok((config, role))
    }
}

/// An error as the `sluice` command prints it: its message and causes on one line (no debug
/// output, no JSON), so a script can take it as it is.
pub fn error_line(error: &anyhow::Error) -> String {
    client::one_line(&format!("{error:#}"))
}

/// Runs one `sluice` command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => {
            let config = args.config()?;
            serve(config, up::Role::All, Some(args.gateway.listen)).await
        }
        Command::Gateway(args) => {
            let config = args.config()?;
            serve(config, up::Role::Gateway, Some(args.gateway.listen)).await
        }
        Command::QueueWorker(args) => {
            let (config, role) = args.config()?;
            serve(config, role, None).await
        }
        Command::Watchdog(args) => args.run().await,
        Command::Autoscaler(args) => autoscaler::run(args).await,
        Command::New(args) => new::run(args),
        Command::Deploy(args) => commands::deploy(args).await,
        Command::List(args) => commands::list(args).await,
        Command::Describe(args) => commands::describe(args).await,
        Command::Invoke(args) => commands::invoke(args).await,
        Command::Remove(args) => commands::remove(args).await,
        Command::Logs(args) => commands::logs(args).await,
        Command::Scale(args) => commands::scale(args).await,
        Command::Call(args) => calls::call(args).await,
        Command::Calls(args) => calls::calls(args).await,
        Command::Dlq(args) => calls::dlq(args).await,
        Command::Completion(args) => {
            use clap::CommandFactory;
            // Made whole first: clap_complete panics on a write error (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(args.shell, &mut Cli::command(), "sluice", &mut script);
            let mut out = std::io::stdout().lock();
            out.write_all(&script)?;
            out.flush()?;
            Ok(())
        }
        Command::Login(args) => commands::login(args).await,
        Command::Logout(args) => commands::logout(args).await,
    }
}

async fn serve(
    config: up::UpConfig,
    role: up::Role,
    listen: Option<SocketAddr>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let data_dir = config.data_dir.clone();
    let embedded = config.shared.is_none();
    let prepared = up::Prepared::new(config, role).await?;
    let backends = prepared.backend_lines();
    let listener = match listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--listen / SLUICE_LISTEN)"))?,
        ),
        None => None,
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    // The first line is for scripts and tests: where to reach us. Whoever reads it may close
    // the pipe afterwards; that must not stop Sluice, so write errors are ignored.
    let mut out = std::io::stdout().lock();
    match &listener {
        Some(listener) => {
            let addr = listener.local_addr()?;
            let _ = writeln!(out, "sluice listening on http://{addr}");
            for line in &backends {
                let _ = writeln!(out, "{line}");
            }
            if embedded {
                let _ = writeln!(out, "data in {}", data_dir.display());
            }
            if let Some(hint) = prepared.login_hint(&format!("http://{addr}")) {
                let _ = writeln!(out, "{hint}");
            }
            let _ = writeln!(
                out,
                "deploy the sample functions with: sluice deploy -f functions/stack.yml --gateway http://{addr}"
            );
        }
        None => {
            let _ = writeln!(out, "sluice queue worker running");
            for line in &backends {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    let _ = out.flush();
    drop(out);
    prepared.serve(listener, shutdown).await
}

pub(crate) async fn stop_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot listen for SIGTERM/SIGINT; stop Sluice with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    shutdown.cancel();
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn an_error_is_printed_on_one_line() {
        let error = anyhow::anyhow!("the gateway answered 502:\n<html>\n  oops</html>")
            .context("listing functions");
        assert_eq!(
            error_line(&error),
            "listing functions: the gateway answered 502: <html> oops</html>"
        );
    }

    #[test]
    fn bash_completions_name_the_subcommands() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "sluice",
            &mut out,
        );
        let script = String::from_utf8(out).unwrap();
        for subcommand in ["deploy", "invoke", "dlq", "completion", "cancel"] {
            assert!(script.contains(subcommand), "{subcommand}");
        }
    }
}
