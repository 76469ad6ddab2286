//! Running Sluice: `sluice up`, `sluice gateway` and `sluice queue-worker`.
//!
//! - `sluice up` runs gateway, queue worker and the process provider in one process. On its
//!   embedded default they share one SQLite database under the data dir (registry, call records
//!   and the queue); with `--database-url` and `--nats` they use Postgres and JetStream instead.
//! - `sluice gateway` runs the gateway and the process provider on Postgres and JetStream. Any
//!   number of gateways share them; each runs every function's replicas locally and follows
//!   changes made through the others.
//! - `sluice queue-worker` works a named queue on JetStream, invoking calls through a gateway.
//!
//! A data dir is locked by the process that runs function processes in it, so two instances can
//! never share one; on the embedded default that is also what makes it safe to release every
//! queue lease at start-up.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_autoscaler::shared::LoadReporter;
use sluice_autoscaler::{AutoscalerConfig, EmbeddedAutoscaler};
use sluice_core::{CallIntake, CallQueue, CallStore, FunctionStore, QueueName, Secrets};
use sluice_gateway::{AppState, GatewayConfig};
use sluice_gateway::{BatchedIntake, Platform};
use sluice_nats::{JetStreamConfig, JetStreamQueue};
use sluice_provider::{ProcessConfig, ProcessProvider};
use sluice_queue_worker::WorkerConfig;
use sluice_store::{
    CachedFunctions, PgOpenError, PgStore, PgTarget, SealedSecrets, SecretsKey, SqliteIntake,
    SqliteQueue, SqliteStore, SqliteWriter, create_database, open_postgres, open_sqlite,
};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Postgres and JetStream, shared by every gateway and worker of one installation.
#[derive(Debug, Clone)]
pub struct SharedBackends {
    pub database_url: String,
    pub db_connections: u32,
    /// The JetStream queue; its `queue` field is the default queue.
    pub nats: JetStreamConfig,
    /// How long start-up keeps trying to reach Postgres and NATS (they may be starting too).
    pub connect_timeout: Duration,
    /// Create the database `database_url` names if it does not exist.
    pub create_database: bool,
}

impl SharedBackends {
    /// What this process uses, for its start-up lines and log: server, database, NATS and
    /// stream (never a password).
    pub fn describe(&self) -> anyhow::Result<Vec<String>> {
        let target =
            PgTarget::of(&self.database_url).map_err(|e| anyhow::anyhow!("--database-url: {e}"))?;
        Ok(vec![
            format!(
                "database: Postgres on {}, database {}",
                target.server(),
                target.database
            ),
            format!(
                "queue: NATS JetStream at {}, stream {}",
                without_credentials(&self.nats.url),
                self.nats.stream
            ),
        ])
    }
}

/// NATS URLs (comma-separated) with any user and password taken out.
pub fn without_credentials(urls: &str) -> String {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            let (scheme, rest) = match url.split_once("://") {
                Some((scheme, rest)) => (format!("{scheme}://"), rest),
                None => (String::new(), url),
            };
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}{host}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// An error that waiting will not fix: [`retrying`] gives up on it at once.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct GiveUp(String);

/// Opens the shared database (made first with `--create-database`). A database that does not
/// exist is said plainly, at once, rather than retried until the connect timeout.
async fn open_database(shared: &SharedBackends) -> anyhow::Result<PgStore> {
    let target =
        PgTarget::of(&shared.database_url).map_err(|e| anyhow::anyhow!("--database-url: {e}"))?;
    if shared.create_database {
        let made = retrying(shared.connect_timeout, || async {
            create_database(&shared.database_url)
                .await
                .context("cannot create the database (--create-database)")
        })
        .await?;
        if made {
            tracing::info!(server = %target.server(), database = %target.database, "created the database");
        }
    }
    let pool =
        retrying(shared.connect_timeout, || async {
            match open_postgres(&shared.database_url, shared.db_connections).await {
                Ok(pool) => Ok(pool),
                Err(PgOpenError::MissingDatabase(t)) => Err(GiveUp(format!(
                    "the database \"{}\" does not exist on {}; create it (createdb {}) or pass \
                 --create-database",
                    t.database,
                    t.server(),
                    t.database
                ))
                .into()),
                Err(e) => Err(anyhow::Error::new(e)
                    .context("cannot open the Postgres database (--database-url)")),
            }
        })
        .await?;
    tracing::info!(server = %target.server(), database = %target.database, "using Postgres");
    Ok(PgStore::new(pool))
}

/// What this process runs.
#[derive(Debug, Clone)]
pub enum Role {
    /// Gateway, provider and queue worker.
    All,
    /// Gateway and provider.
    Gateway,
    /// A queue worker for `queues`, invoking through the gateway at `gateway_url`.
    QueueWorker {
        gateway_url: String,
        queues: Vec<QueueName>,
    },
}

/// Who may use the management API.
#[derive(Debug, Clone)]
pub enum AuthSetting {
    /// No authentication at all (`--insecure-no-auth`).
    Off,
    /// These credentials (from flags, the environment or secret files).
    Given(sluice_gateway::Credentials),
    /// The admin `user`, with a password kept in the data dir (made on first start).
    DataDir { user: String },
}

/// The file in the data dir holding the admin password Sluice made (OpenFaaS's secret name).
pub const PASSWORD_FILE: &str = "basic-auth-password";

/// The file in the data dir holding the secrets key Sluice made, when none is given.
pub const SECRETS_KEY_FILE: &str = "secrets.key";

/// Everything needed to run; tests build it directly.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub data_dir: PathBuf,
    pub gateway: GatewayConfig,
    pub process: ProcessConfig,
    /// Postgres and JetStream instead of the embedded SQLite database.
    pub shared: Option<SharedBackends>,
    pub worker_concurrency: usize,
    /// Calls of one function a worker runs at once.
    pub function_concurrency: usize,
    /// How long a queue worker holds a call without renewing its lease.
    pub lease: Duration,
    /// How long in-flight work may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Largest function response kept per call, and for how long.
    pub result_max_bytes: usize,
    pub result_retention: Duration,
    /// How long a finished call's record is kept.
    pub call_retention: Duration,
    /// How often a gateway on a shared registry looks for changes made through other gateways
    /// (and an all-in-one process for named queues to serve).
    pub registry_sync: Duration,
    /// Who may use the management API.
    pub auth: AuthSetting,
    /// Signs callbacks when set.
    pub callback_signing_key: Option<String>,
    /// What the embedded queue takes at most.
    pub queue_bounds: sluice_store::QueueBounds,
    /// Functions as Kubernetes Deployments instead of local processes.
    pub kubernetes: Option<KubeSettings>,
    /// A health endpoint (`GET /healthz`) for a queue worker's probes.
    pub health: Option<std::net::SocketAddr>,
    /// The key secrets are sealed under; else `SECRETS_KEY_FILE` in the data dir.
    pub secrets_key_file: Option<PathBuf>,
    /// The stable window of functions that set no `com.sluice.scale.window`.
    pub scale_window: Duration,
}

/// Where functions go on Kubernetes, and how to reach it.
#[derive(Debug, Clone)]
pub struct KubeSettings {
    pub namespace: String,
    /// A kubeconfig file; else the usual places, then the pod's service account.
    pub kubeconfig: Option<PathBuf>,
    /// Functions' pods run as this user (non-root required); else as their images say.
    pub run_as_user: Option<i64>,
}

impl UpConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            gateway: GatewayConfig::default(),
            process: ProcessConfig::default(),
            shared: None,
            worker_concurrency: 32,
            function_concurrency: 32,
            lease: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            result_max_bytes: 1024 * 1024,
            result_retention: Duration::from_secs(24 * 3600),
            call_retention: Duration::from_secs(7 * 24 * 3600),
            registry_sync: Duration::from_secs(2),
            auth: AuthSetting::DataDir {
                user: "admin".to_owned(),
            },
            callback_signing_key: None,
            queue_bounds: sluice_store::QueueBounds::default(),
            kubernetes: None,
            health: None,
            secrets_key_file: None,
            scale_window: sluice_core::config::DEFAULT_STABLE_WINDOW,
        }
    }
}

/// Holds the data dir for this process; released when dropped (or when the process dies).
#[derive(Debug)]
struct DataDirLock(#[allow(dead_code)] File);

/// Creates the data dir readable by this user only (it holds the database, secrets and function
/// output) and locks it.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<DataDirLock> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot make the data dir {} private", dir.display()))?;
    let path = dir.join("lock");
    let file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?
    };
    match file.try_lock() {
        Ok(()) => Ok(DataDirLock(file)),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another sluice is using the data dir {}; stop it or pass a different --data-dir",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// The stores and the default queue, opened.
#[derive(Debug, Clone)]
struct Backends {
    functions: Arc<dyn FunctionStore>,
    calls: Arc<dyn CallStore>,
    queue: Arc<dyn CallQueue>,
    /// Where the gateway's async submissions go.
    intake: Arc<dyn CallIntake>,
    /// Set on the embedded default, which has leases to release at start-up.
    sqlite_queue: Option<SqliteQueue>,
    /// Set on JetStream, whose left-behind bodies the workers sweep.
    jetstream: Option<JetStreamQueue>,
    /// The secrets functions name, when Sluice keeps them (functions run as local processes).
    secrets: Option<Arc<dyn Secrets>>,
}

/// `secrets`, once its key is seen to open the secrets already kept.
async fn checked_secrets(secrets: SealedSecrets) -> anyhow::Result<Arc<dyn Secrets>> {
    secrets
        .verify()
        .await
        .context("the secrets key does not fit the secrets in the database")?;
    Ok(Arc::new(secrets))
}

/// The key secrets are sealed under: the operator's (`--secrets-key-file`), else one kept in
/// the data dir, made on first start.
fn secrets_key(config: &UpConfig) -> anyhow::Result<SecretsKey> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(path) = &config.secrets_key_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --secrets-key-file {}", path.display()))?;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            tracing::warn!(file = %path.display(), "the secrets key file can be read by other users; make it mode 0600");
        }
        return Ok(SecretsKey::from_base64(&text, &path.display().to_string())?);
    }
    let path = config.data_dir.join(SECRETS_KEY_FILE);
    let (key, made) = SecretsKey::load_or_create(&path)?;
    if made {
        tracing::info!(file = %path.display(), "made a secrets key");
        if config.shared.is_some() {
            tracing::warn!(
                file = %path.display(),
                "every gateway sharing this database needs the same secrets key: give each the same --secrets-key-file"
            );
        }
    }
    Ok(key)
}

/// The admin password kept in the data dir: read, or made and written (mode 0600) on first
/// start. Returns it and its file.
fn data_dir_password(dir: &std::path::Path) -> anyhow::Result<(String, PathBuf)> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(PASSWORD_FILE);
    match std::fs::read_to_string(&path) {
        Ok(password) if !password.trim().is_empty() => return Ok((password.trim().into(), path)),
        Ok(_) => anyhow::bail!(
            "{} is empty; delete it to have a new one made",
            path.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
    let password = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "{password}")?;
    file.sync_all()?;
    tracing::info!(file = %path.display(), "made an admin password");
    Ok((password, path))
}

/// A data dir locked for this process (when it runs functions), with its stores and queue open:
/// everything that can fail on bad configuration or a busy data dir, done before any port is
/// bound.
#[derive(Debug)]
pub struct Prepared {
    config: UpConfig,
    role: Role,
    _lock: Option<DataDirLock>,
    backends: Backends,
    /// Where the admin password Sluice keeps is, when it keeps one.
    password_file: Option<PathBuf>,
    /// The Kubernetes provider (not started yet), when functions are Deployments.
    kube: Option<sluice_kube::KubeProvider>,
}

impl Prepared {
    pub async fn new(config: UpConfig, role: Role) -> anyhow::Result<Self> {
        let mut config = config;
        let runs_functions = !matches!(role, Role::QueueWorker { .. });
        let lock = runs_functions
            .then(|| lock_data_dir(&config.data_dir))
            .transpose()?;
        let mut password_file = None;
        config.gateway.auth = match (&config.auth, runs_functions) {
            (_, false) | (AuthSetting::Off, _) => None,
            (AuthSetting::Given(credentials), _) => Some(credentials.clone()),
            (AuthSetting::DataDir { user }, true) => {
                let (password, file) = data_dir_password(&config.data_dir)?;
                password_file = Some(file);
                Some(sluice_gateway::Credentials::admin(user, &password))
            }
        };
        // Sluice keeps the secrets of functions it runs as processes; Kubernetes keeps its own.
        let secrets_key = (runs_functions && config.kubernetes.is_none())
            .then(|| secrets_key(&config))
            .transpose()?;
        // The portal signs its sessions with a key derived from the secrets key, so every
        // gateway sharing it accepts them; on Kubernetes each gateway has a key of its own.
        if let Some(key) = &secrets_key {
            config.gateway.portal_secret =
                Some(zeroize::Zeroizing::new(key.portal_secret().to_vec()));
        }
        let backends = match &config.shared {
            None => {
                let db_path = config.data_dir.join("sluice.db");
                let pool = open_sqlite(&db_path)
                    .await
                    .with_context(|| format!("cannot open the database {}", db_path.display()))?;
                // One writer for the store and the queue: their writes share transactions.
                let writer = SqliteWriter::new(pool.clone());
                let store = SqliteStore::with_writer(pool.clone(), writer.clone());
                // The calls' records are in the queue's database: each claim starts them.
                let queue =
                    SqliteQueue::with_writer(pool, writer, config.lease, config.queue_bounds)
                        .await
                        .context("cannot open the embedded queue")?
                        .starting_calls();
                // The process that holds the data dir is the registry's only writer: it
                // answers reads from memory. Any other (a separate queue worker) reads the
                // database.
                let functions: Arc<dyn FunctionStore> = if runs_functions {
                    Arc::new(CachedFunctions::new(Arc::new(store.clone())))
                } else {
                    Arc::new(store.clone())
                };
                Backends {
                    functions,
                    calls: Arc::new(store.clone()),
                    queue: Arc::new(queue.clone()),
                    secrets: match secrets_key {
                        Some(key) => {
                            Some(checked_secrets(SealedSecrets::sqlite(store.clone(), key)).await?)
                        }
                        None => None,
                    },
                    intake: Arc::new(SqliteIntake::new(queue.clone(), store)),
                    sqlite_queue: Some(queue),
                    jetstream: None,
                }
            }
            Some(shared) => {
                let store = open_database(shared).await?;
                let queue = retrying(shared.connect_timeout, || {
                    connect_queue(shared, &config, None)
                })
                .await?;
                tracing::info!(
                    nats = %without_credentials(&shared.nats.url),
                    stream = %shared.nats.stream,
                    "using NATS JetStream"
                );
                let calls: Arc<dyn CallStore> = Arc::new(store.clone());
                let queued: Arc<dyn CallQueue> = Arc::new(queue.clone());
                let bound = config.gateway.max_queued_per_function;
                Backends {
                    secrets: match secrets_key {
                        Some(key) => Some(
                            checked_secrets(SealedSecrets::postgres(store.clone(), key)).await?,
                        ),
                        None => None,
                    },
                    functions: Arc::new(store),
                    intake: Arc::new(BatchedIntake::new(calls.clone(), queued.clone(), bound)),
                    calls,
                    queue: queued,
                    sqlite_queue: None,
                    jetstream: Some(queue),
                }
            }
        };
        let kube = match (&config.kubernetes, runs_functions) {
            (Some(settings), true) => {
                let client = sluice_kube::KubeProvider::client(settings.kubeconfig.as_deref())
                    .await
                    .context("cannot reach Kubernetes")?;
                Some(sluice_kube::KubeProvider::new(
                    client,
                    sluice_kube::KubeConfig {
                        namespace: settings.namespace.clone(),
                        pods: sluice_kube::objects::PodOptions {
                            run_as_user: settings.run_as_user,
                        },
                        ..sluice_kube::KubeConfig::default()
                    },
                ))
            }
            _ => None,
        };
        Ok(Self {
            config,
            role,
            _lock: lock,
            backends,
            password_file,
            kube,
        })
    }

    /// Which shared backends this process uses, for its start-up lines (none on the embedded
    /// default).
    pub fn backend_lines(&self) -> Vec<String> {
        self.config
            .shared
            .as_ref()
            .and_then(|shared| shared.describe().ok())
            .unwrap_or_default()
    }

    /// How to log in, for the start-up message: the command when Sluice keeps the password,
    /// a warning when nothing is required.
    pub fn login_hint(&self, gateway_url: &str) -> Option<String> {
        if matches!(self.role, Role::QueueWorker { .. }) {
            return None;
        }
        match (&self.config.gateway.auth, &self.password_file) {
            (None, _) => Some(
                "WARNING: no authentication (--insecure-no-auth): anyone who can reach this \
                 gateway can run commands on this machine"
                    .to_owned(),
            ),
            (Some(credentials), Some(file)) => Some(format!(
                "log in with: sluice login --gateway {gateway_url} --password-stdin < {file}\n\
                 portal: {gateway_url}/ui/ (user {user}, the password in {file})",
                file = file.display(),
                user = credentials.admin_user().unwrap_or("admin"),
            )),
            (Some(_), None) => Some(format!(
                "portal: {gateway_url}/ui/ (log in with the admin's user name and password)"
            )),
        }
    }

    /// Runs what the role says on `listener` (unused by a queue worker) until `shutdown`.
    pub async fn serve(
        self,
        listener: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let Self {
            mut config,
            role,
            _lock,
            backends,
            password_file: _,
            kube,
        } = self;
        if let Role::QueueWorker {
            gateway_url,
            queues,
        } = &role
        {
            let mut worker_config = worker_config(&config, gateway_url.clone());
            worker_config.internal_token = config.gateway.internal_token.clone();
            let mut workers = JoinSet::new();
            for queue in queues {
                let q = match &config.shared {
                    Some(shared) => Arc::new(
                        retrying(shared.connect_timeout, || {
                            connect_queue(shared, &config, Some(queue))
                        })
                        .await?,
                    ) as Arc<dyn CallQueue>,
                    None => backends.queue.clone(),
                };
                workers.spawn(sluice_queue_worker::run(
                    q,
                    backends.calls.clone(),
                    backends.functions.clone(),
                    worker_config.clone(),
                    shutdown.clone(),
                ));
            }
            spawn_body_sweeper(&backends, shutdown.clone());
            if let Some(addr) = config.health {
                serve_health(addr, shutdown.clone()).await?;
            }
            tracing::info!(queues = ?queues, "queue worker started");
            while let Some(joined) = workers.join_next().await {
                joined.context("queue worker panicked")?;
            }
            tracing::info!("stopped");
            return Ok(());
        }
        let listener = listener.context("a gateway needs a listener")?;

        let mut pending = None;
        let mut released = 0;
        if let Some(queue) = &backends.sqlite_queue {
            // This process holds the data dir, so no live worker holds any lease.
            released = queue.release_all_leases().await?;
            pending = Some(queue.pending().await?);
        }
        let gateway_shutdown = CancellationToken::new();
        let (platform, runtime) = match (&config.kubernetes, kube) {
            (Some(_), Some(provider)) => {
                let shared = config
                    .shared
                    .as_ref()
                    .context("the Kubernetes provider needs --database-url and --nats")?;
                kubernetes_platform(provider, shared).await?
            }
            _ => process_platform(&config, &backends)?,
        };
        let restored = sluice_gateway::restore(
            backends.functions.as_ref(),
            &platform,
            config.gateway.max_replicas_limit,
        )
        .await
        .map_err(|e| anyhow::anyhow!("restoring functions: {e}"))?;
        tracing::info!(restored, ?pending, released, "state restored");

        // Connections, not the default 1024 descriptors, should be what runs out first.
        if let Some(limit) = sluice_gateway::raise_open_file_limit() {
            let fits = usize::try_from(limit.saturating_sub(sluice_gateway::RESERVED_DESCRIPTORS))
                .unwrap_or(usize::MAX)
                .max(1);
            let wanted = &mut config.gateway.connections.max_connections;
            if *wanted > fits {
                tracing::warn!(
                    open_file_limit = limit,
                    max_connections = fits,
                    "the open-file limit is low: fewer client connections are taken than asked"
                );
                *wanted = fits;
            }
        }
        if matches!(role, Role::Gateway) && config.gateway.internal_token.is_none() {
            tracing::warn!(
                "no --internal-token: queue workers' calls count against --max-in-flight and \
                 rate limits, and cannot call functions that require credentials"
            );
        }
        let gateway_url = loopback_url(&listener)?;
        let mut gateway_config = config.gateway.clone();
        if matches!(role, Role::All) && gateway_config.internal_token.is_none() {
            gateway_config.internal_token = Some(uuid::Uuid::new_v4().simple().to_string());
        }
        runtime.start(gateway_shutdown.clone());
        let state = AppState::new(
            platform,
            backends.functions.clone(),
            backends.calls.clone(),
            backends.queue.clone(),
            backends.intake.clone(),
            gateway_config.clone(),
            gateway_shutdown.clone(),
        );
        if config.shared.is_some() {
            tokio::spawn(sluice_gateway::sync_functions(
                state.clone(),
                config.registry_sync,
            ));
        }
        let gateway = tokio::spawn(sluice_gateway::serve(listener, state));

        let worker = matches!(role, Role::All).then(|| {
            let mut worker_config = worker_config(&config, gateway_url);
            worker_config.internal_token = gateway_config.internal_token.clone();
            tokio::spawn(run_workers(
                config.clone(),
                backends.clone(),
                worker_config,
                shutdown.clone(),
            ))
        });

        shutdown.cancelled().await;
        tracing::info!("shutting down: finishing in-flight calls");
        // The worker drains first (it needs the gateway and the replicas to finish its calls).
        if let Some(worker) = worker {
            worker.await.context("queue worker panicked")??;
        }
        gateway_shutdown.cancel();
        match tokio::time::timeout(config.shutdown_grace, gateway).await {
            Ok(joined) => joined.context("gateway panicked")??,
            Err(_) => tracing::warn!("in-flight requests outlived the grace period"),
        }
        runtime.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// What runs beside the gateway for its platform, started after the registry is restored.
enum Runtime {
    /// Local processes, scaled by the embedded autoscaler.
    Process {
        provider: ProcessProvider,
        autoscaler: EmbeddedAutoscaler,
    },
    /// Kubernetes: this gateway reports its load to the shared autoscaler.
    Kubernetes {
        provider: sluice_kube::KubeProvider,
        reporter: LoadReporter,
    },
}

impl Runtime {
    fn start(&self, shutdown: CancellationToken) {
        match self {
            Self::Process { autoscaler, .. } => {
                tokio::spawn(autoscaler.clone().run(shutdown));
            }
            Self::Kubernetes { reporter, .. } => {
                tokio::spawn(reporter.clone().run(shutdown));
            }
        }
    }

    async fn shutdown(self) {
        match self {
            Self::Process { provider, .. } => provider.shutdown().await,
            Self::Kubernetes { provider, .. } => provider.shutdown(),
        }
    }
}

/// Local processes: the process provider (its leftovers from a killed run stopped first) and
/// the embedded autoscaler.
fn process_platform(config: &UpConfig, backends: &Backends) -> anyhow::Result<(Platform, Runtime)> {
    let mut process = config.process.clone();
    process.run_dir = Some(config.data_dir.join("run"));
    process.secrets = backends.secrets.clone();
    let provider = ProcessProvider::new(process);
    let reaped = provider
        .reap_leftovers()
        .context("preparing the run dir for function processes")?;
    if reaped > 0 {
        tracing::warn!(
            reaped,
            "stopped function processes a previous run left behind"
        );
    }
    let shared = Arc::new(provider.clone());
    let autoscaler = EmbeddedAutoscaler::new(
        shared.clone(),
        backends.functions.clone(),
        AutoscalerConfig {
            max_replicas_limit: config.gateway.max_replicas_limit,
            stable_window: config.scale_window,
            ..AutoscalerConfig::default()
        },
    );
    let platform = Platform {
        orchestrator: shared.clone(),
        endpoints: shared,
        autoscaler: Arc::new(autoscaler.clone()),
    };
    Ok((
        platform,
        Runtime::Process {
            provider,
            autoscaler,
        },
    ))
}

/// Kubernetes: Deployments through the API server (watched from now on), ready pods from their
/// EndpointSlices, and load reported over NATS to `sluice autoscaler`.
async fn kubernetes_platform(
    provider: sluice_kube::KubeProvider,
    shared: &SharedBackends,
) -> anyhow::Result<(Platform, Runtime)> {
    provider
        .start(shared.connect_timeout)
        .await
        .context("cannot follow the function namespace")?;
    let nats = retrying(shared.connect_timeout, || async {
        sluice_nats::connect_client(&shared.nats.url, shared.connect_timeout)
            .await
            .context("cannot reach NATS (--nats)")
    })
    .await?;
    let gateway = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("gateway-{}", uuid::Uuid::new_v4().simple()));
    let reporter = LoadReporter::new(nats, gateway, Duration::from_secs(1));
    let platform = Platform {
        orchestrator: Arc::new(provider.clone()),
        endpoints: provider.endpoints(),
        autoscaler: Arc::new(reporter.clone()),
    };
    Ok((platform, Runtime::Kubernetes { provider, reporter }))
}

/// Answers `GET /healthz` on `addr` until `shutdown`, for a process's probes.
pub async fn serve_health(
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for health checks"))?;
    let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "OK" }));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
    });
    Ok(())
}

/// How often, and past what age, large-body objects no call needs any more are deleted.
const BODY_SWEEP_EVERY: Duration = Duration::from_secs(600);
const BODY_SWEEP_AGE: Duration = Duration::from_secs(3600);

/// On JetStream, deletes left-behind body objects now and then, until shutdown.
fn spawn_body_sweeper(backends: &Backends, shutdown: CancellationToken) {
    let (Some(queue), calls) = (backends.jetstream.clone(), backends.calls.clone()) else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(BODY_SWEEP_EVERY) => {}
            }
            match queue.sweep_bodies(calls.as_ref(), BODY_SWEEP_AGE).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "deleted call bodies no call needs"),
                Err(error) => tracing::warn!(%error, "could not sweep call bodies"),
            }
        }
    });
}

/// The URL a worker in this process reaches the gateway on (loopback if it listens on all
/// addresses).
fn loopback_url(listener: &TcpListener) -> anyhow::Result<String> {
    let mut addr = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(format!("http://{addr}"))
}

/// Runs `attempt` until it succeeds or `timeout` has passed, waiting a little longer after each
/// failure and saying why; the last error is returned.
pub(crate) async fn retrying<T, F, Fut>(timeout: Duration, mut attempt: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut wait = Duration::from_millis(500);
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(error) if error.is::<GiveUp>() => return Err(error),
            Err(error) if tokio::time::Instant::now() + wait < deadline => {
                tracing::warn!(error = %format!("{error:#}"), ?wait, "not ready yet; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error),
        }
    }
}

async fn connect_queue(
    shared: &SharedBackends,
    config: &UpConfig,
    queue: Option<&QueueName>,
) -> anyhow::Result<JetStreamQueue> {
    let mut nats = shared.nats.clone();
    nats.lease = config.lease;
    if let Some(queue) = queue {
        nats.queue = queue.clone();
    }
    let name = nats.queue.clone();
    JetStreamQueue::connect(nats)
        .await
        .with_context(|| format!("cannot open queue {name} on NATS (--nats)"))
}

fn worker_config(config: &UpConfig, gateway_url: String) -> WorkerConfig {
    let mut worker = WorkerConfig::new(gateway_url);
    worker.concurrency = config.worker_concurrency;
    worker.function_concurrency = config.function_concurrency;
    // The gateway may wait for a ready replica, then for the function: the worker waits for both.
    worker.invoke_timeout =
        config.gateway.readiness_wait + config.gateway.upstream_timeout + Duration::from_secs(5);
    worker.max_response_bytes = config.gateway.max_body_bytes;
    worker.shutdown_grace = config.shutdown_grace;
    worker.result_max_bytes = config.result_max_bytes;
    worker.result_retention = config.result_retention;
    worker.call_retention = config.call_retention;
    worker.callbacks = config.gateway.callbacks.clone();
    worker.callback_signing_key = config.callback_signing_key.clone();
    worker
}

/// The all-in-one process's workers: the default queue, and on JetStream one more for every
/// named queue a deployed function uses, started as such functions appear.
async fn run_workers(
    config: UpConfig,
    backends: Backends,
    worker_config: WorkerConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    spawn_body_sweeper(&backends, shutdown.clone());
    let mut workers = JoinSet::new();
    workers.spawn(sluice_queue_worker::run(
        backends.queue.clone(),
        backends.calls.clone(),
        backends.functions.clone(),
        worker_config.clone(),
        shutdown.clone(),
    ));
    if let Some(shared) = &config.shared {
        let mut serving = std::collections::HashSet::from([shared.nats.queue.clone()]);
        loop {
            match backends.functions.list().await {
                Ok(specs) => {
                    let named = specs.iter().filter_map(|s| s.config.queue.clone());
                    for queue in named.collect::<Vec<_>>() {
                        if serving.contains(&queue) {
                            continue;
                        }
                        match connect_queue(shared, &config, Some(&queue)).await {
                            Ok(q) => {
                                tracing::info!(%queue, "serving a named queue");
                                serving.insert(queue);
                                workers.spawn(sluice_queue_worker::run(
                                    Arc::new(q),
                                    backends.calls.clone(),
                                    backends.functions.clone(),
                                    worker_config.clone(),
                                    shutdown.clone(),
                                ));
                            }
                            Err(error) => {
                                tracing::warn!(%queue, error = %format!("{error:#}"), "cannot serve a named queue yet")
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "cannot list functions for their queues"),
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(config.registry_sync) => {}
            }
        }
    }
    while let Some(joined) = workers.join_next().await {
        joined.context("queue worker panicked")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_urls_are_shown_without_credentials() {
        assert_eq!(
            without_credentials("nats://user:secret@10.0.0.1:4222, nats://10.0.0.2:4222"),
            "nats://10.0.0.1:4222,nats://10.0.0.2:4222"
        );
        assert_eq!(without_credentials("token@host:4222"), "host:4222");
    }

    #[test]
    fn the_backends_are_described_without_a_password() {
        let shared = SharedBackends {
            database_url: "postgres://sluice:hunter2@db.example:5432/calls".into(),
            db_connections: 4,
            nats: JetStreamConfig::new("nats://u:p@127.0.0.1:4222"),
            connect_timeout: Duration::from_secs(1),
            create_database: false,
        };
        let lines = shared.describe().unwrap();
        assert_eq!(
            lines,
            [
                "database: Postgres on db.example:5432, database calls",
                "queue: NATS JetStream at nats://127.0.0.1:4222, stream SLUICE_CALLS",
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retrying_gives_up_at_once_on_what_waiting_cannot_fix() {
        let mut tries = 0;
        let error = retrying(Duration::from_secs(60), || {
            tries += 1;
            async { Err::<(), _>(GiveUp("the database \"x\" does not exist".into()).into()) }
        })
        .await
        .unwrap_err();
        assert_eq!(tries, 1);
        assert_eq!(error.to_string(), "the database \"x\" does not exist");
    }
}
