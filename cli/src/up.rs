//! `sluice up`: the whole platform in one process on its embedded defaults.
//!
//! Gateway and queue worker share one SQLite database under the data dir (registry, call records
//! and the queue) and one process provider. The data dir is locked, so two instances can never
//! share it; that is also what makes it safe to release every queue lease at start-up.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sluice_gateway::{AppState, GatewayConfig};
use sluice_provider::{ProcessConfig, ProcessProvider};
use sluice_queue_worker::WorkerConfig;
use sluice_store::{SqliteQueue, SqliteStore, open_sqlite};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Everything `sluice up` needs; tests build it directly.
#[derive(Debug, Clone)]
pub struct UpConfig {
    pub data_dir: PathBuf,
    pub gateway: GatewayConfig,
    pub process: ProcessConfig,
    pub worker_concurrency: usize,
    /// How long a queue worker holds a call without renewing its lease.
    pub lease: Duration,
    /// How long in-flight work may take to finish at shutdown.
    pub shutdown_grace: Duration,
    /// Largest function response kept per call, and for how long.
    pub result_max_bytes: usize,
    pub result_retention: Duration,
}

impl UpConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            gateway: GatewayConfig::default(),
            process: ProcessConfig::default(),
            worker_concurrency: 32,
            lease: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            result_max_bytes: 1024 * 1024,
            result_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Holds the data dir for this process; released when dropped (or when the process dies).
#[derive(Debug)]
struct DataDirLock(#[allow(dead_code)] File);

fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<DataDirLock> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the data dir {}", dir.display()))?;
    let path = dir.join("lock");
    let file = File::create(&path).with_context(|| format!("cannot open {}", path.display()))?;
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

/// A data dir that is locked for this process, with its database open and migrated: everything
/// that can fail on bad configuration or a busy data dir, done before any port is bound.
#[derive(Debug)]
pub struct Prepared {
    config: UpConfig,
    _lock: DataDirLock,
    store: SqliteStore,
    queue: SqliteQueue,
}

impl Prepared {
    pub async fn new(config: UpConfig) -> anyhow::Result<Self> {
        let lock = lock_data_dir(&config.data_dir)?;
        let db_path = config.data_dir.join("sluice.db");
        let pool = open_sqlite(&db_path)
            .await
            .with_context(|| format!("cannot open the database {}", db_path.display()))?;
        let store = SqliteStore::new(pool.clone());
        let queue = SqliteQueue::new(pool, config.lease);
        Ok(Self {
            config,
            _lock: lock,
            store,
            queue,
        })
    }

    /// Runs gateway, queue worker and provider on `listener` until `shutdown`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            _lock,
            store,
            queue,
        } = self;
        // This process holds the data dir, so no live worker holds any lease: give them all back.
        let released = queue.release_all_leases().await?;
        let pending = queue.pending().await?;
        let mut process = config.process.clone();
        process.run_dir = Some(config.data_dir.join("run"));
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
        let restored =
            sluice_gateway::restore(&store, &provider, config.gateway.max_replicas_limit)
                .await
                .map_err(|e| anyhow::anyhow!("restoring functions: {e}"))?;
        tracing::info!(restored, pending, released, "state restored");

        // The worker reaches the gateway on the address it listens on (loopback if it listens
        // on all addresses).
        let mut addr = listener.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(if addr.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let gateway_url = format!("http://{addr}");
        let gateway_shutdown = CancellationToken::new();
        let internal_token = uuid::Uuid::new_v4().simple().to_string();
        let mut gateway_config = config.gateway.clone();
        gateway_config.internal_token = Some(internal_token.clone());
        let state = AppState::new(
            Arc::new(provider.clone()),
            Arc::new(store.clone()),
            Arc::new(store.clone()),
            Arc::new(queue.clone()),
            gateway_config,
            gateway_shutdown.clone(),
        );
        let gateway = tokio::spawn(sluice_gateway::serve(listener, state));

        let mut worker_config = WorkerConfig::new(gateway_url);
        worker_config.concurrency = config.worker_concurrency;
        // The gateway may wait for a ready replica, then for the function: the worker waits for both.
        worker_config.invoke_timeout = config.gateway.readiness_wait
            + config.gateway.upstream_timeout
            + Duration::from_secs(5);
        worker_config.max_response_bytes = config.gateway.max_body_bytes;
        worker_config.shutdown_grace = config.shutdown_grace;
        worker_config.internal_token = Some(internal_token);
        worker_config.result_max_bytes = config.result_max_bytes;
        worker_config.result_retention = config.result_retention;
        let worker = tokio::spawn(sluice_queue_worker::run(
            Arc::new(queue),
            Arc::new(store.clone()),
            Arc::new(store),
            worker_config,
            shutdown.clone(),
        ));

        shutdown.cancelled().await;
        tracing::info!("shutting down: finishing in-flight calls");
        // The worker drains first (it needs the gateway and the replicas to finish its calls).
        worker.await.context("queue worker panicked")?;
        gateway_shutdown.cancel();
        match tokio::time::timeout(config.shutdown_grace, gateway).await {
            Ok(joined) => joined.context("gateway panicked")??,
            Err(_) => tracing::warn!("in-flight requests outlived the grace period"),
        }
        provider.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    }
}
