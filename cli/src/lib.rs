//! `sluice-cli`: the `sluice` command. `sluice up` runs the platform; the other commands talk to a
//! gateway's OpenFaaS-compatible API the way faas-cli does.

pub mod client;
pub mod commands;
pub mod stack;
pub mod up;

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
    #[command(subcommand)]
    pub command: Command,
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
    /// Deploy functions from a stack file, or one function from flags.
    Deploy(commands::DeployArgs),
    /// List deployed functions.
    #[command(alias = "ls")]
    List(commands::ListArgs),
    /// Show one function.
    Describe(commands::NameArgs),
    /// Call a function with stdin as the body (add --async to queue it).
    Invoke(commands::InvokeArgs),
    /// Remove a function.
    #[command(alias = "rm")]
    Remove(commands::NameArgs),
    /// Show a function's logs.
    Logs(commands::LogsArgs),
    /// Set a function's replica count.
    Scale(commands::ScaleArgs),
    /// Show what became of an async call.
    Call(commands::CallArgs),
    /// List async calls, newest first.
    Calls(commands::CallsArgs),
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed).
    #[arg(long, env = "SLUICE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where Sluice keeps its database (functions, calls, queue).
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = ".sluice")]
    pub data_dir: PathBuf,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "SLUICE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// How long a function may take to answer (e.g. 300s, 5m).
    #[arg(long, env = "SLUICE_FUNCTION_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub function_timeout: Duration,
    /// Async calls worked on at once.
    #[arg(long, env = "SLUICE_WORKER_CONCURRENCY", default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_concurrency: u16,
    /// Hard ceiling on any function's replicas (com.openfaas.scale.max cannot exceed it).
    #[arg(long, env = "SLUICE_MAX_REPLICAS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub max_replicas: u32,
    /// Function requests (sync calls and async submissions) handled at once; more get a 503.
    #[arg(long, env = "SLUICE_MAX_IN_FLIGHT", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// How long a queued call stays leased to a worker without a heartbeat before redelivery.
    #[arg(long, env = "SLUICE_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,
    /// Largest function response kept for GET /system/calls/<id>/result, in bytes.
    #[arg(long, env = "SLUICE_RESULT_MAX_BYTES", default_value_t = 1024 * 1024)]
    pub result_max_bytes: usize,
    /// How long kept results are kept (e.g. 24h).
    #[arg(long, env = "SLUICE_RESULT_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub result_retention: Duration,
    /// How long in-flight work may take to finish when Sluice stops.
    #[arg(long, env = "SLUICE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl UpArgs {
    /// The configuration these flags describe, or which flag is wrong.
    pub fn config(&self) -> anyhow::Result<up::UpConfig> {
        if self.lease < Duration::from_millis(300) {
            anyhow::bail!("--lease must be at least 300ms, got {:?}", self.lease);
        }
        if self.function_timeout.is_zero() {
            anyhow::bail!("--function-timeout must be more than zero");
        }
        let mut config = up::UpConfig::new(self.data_dir.clone());
        config.gateway.max_body_bytes = self.max_body_bytes;
        config.gateway.upstream_timeout = self.function_timeout;
        config.gateway.max_replicas_limit = self.max_replicas;
        config.gateway.default_max_replicas =
            config.gateway.default_max_replicas.min(self.max_replicas);
        config.gateway.max_in_flight = self.max_in_flight as usize;
        config.process.drain_timeout = self.function_timeout;
        config.process.default_exec_timeout = self.function_timeout;
        config.worker_concurrency = usize::from(self.worker_concurrency);
        config.lease = self.lease;
        config.shutdown_grace = self.shutdown_grace;
        config.result_max_bytes = self.result_max_bytes;
        config.result_retention = self.result_retention;
        config.process.stop_grace = self.shutdown_grace;
        Ok(config)
    }
}

/// Runs one `sluice` command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => run_up(args).await,
        Command::Deploy(args) => commands::deploy(args).await,
        Command::List(args) => commands::list(args).await,
        Command::Describe(args) => commands::describe(args).await,
        Command::Invoke(args) => commands::invoke(args).await,
        Command::Remove(args) => commands::remove(args).await,
        Command::Logs(args) => commands::logs(args).await,
        Command::Scale(args) => commands::scale(args).await,
        Command::Call(args) => commands::call(args).await,
        Command::Calls(args) => commands::calls(args).await,
    }
}

async fn run_up(args: UpArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let config = args.config()?;
    let data_dir = config.data_dir.clone();
    let prepared = up::Prepared::new(config).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} (--listen / SLUICE_LISTEN)",
                args.listen
            )
        })?;
    let addr = listener.local_addr()?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    // The first line is for scripts and tests: where to reach us. Whoever reads it may close
    // the pipe afterwards; that must not stop Sluice, so write errors are ignored.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "sluice listening on http://{addr}");
    let _ = writeln!(out, "data in {}", data_dir.display());
    let _ = writeln!(
        out,
        "deploy the sample functions with: sluice deploy -f functions/stack.yml --gateway http://{addr}"
    );
    let _ = out.flush();
    drop(out);
    prepared.serve(listener, shutdown).await
}

async fn stop_on_signal(shutdown: tokio_util::sync::CancellationToken) {
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
