//! `sluice watchdog`: what a function's container image runs (its `CMD`). The function's settings
//! come from the environment, as OpenFaaS's watchdogs read theirs (`fprocess`, `mode`, `port`,
//! ...; see `sluice_provider::WatchdogConfig`); the work is `sluice_provider::run_watchdog`.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;

/// `sluice watchdog` flags. The function is configured by the environment (`fprocess`, `mode`,
/// `port`, `upstream_url`, `exec_timeout`, `read_timeout`, `write_timeout`,
/// `healthcheck_interval`, `max_inflight`, `max_body_bytes`, `ready_path`).
#[derive(Debug, Args)]
pub struct WatchdogArgs {
    /// Address to listen on instead of 0.0.0.0:$port (port 0 picks a free port; the address
    /// is printed).
    #[arg(long, env = "SLUICE_WATCHDOG_LISTEN")]
    pub listen: Option<SocketAddr>,
}

impl WatchdogArgs {
    /// Runs the function until SIGTERM or SIGINT, then drains and exits; an error if it cannot
    /// start, or if its server (HTTP mode) exits on its own.
    pub async fn run(self) -> anyhow::Result<()> {
        let mut config = sluice_provider::WatchdogConfig::from_env()?;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (port / --listen)", config.listen))?;
        let shutdown = tokio_util::sync::CancellationToken::new();
        tokio::spawn(crate::stop_on_signal(shutdown.clone()));
        // The first line is for scripts and tests, as `sluice up` prints it.
        let addr = listener.local_addr()?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "sluice watchdog listening on http://{addr}");
        let _ = out.flush();
        drop(out);
        Ok(sluice_provider::run_watchdog(listener, config, shutdown).await?)
    }
}
