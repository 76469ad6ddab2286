//! `sluice-autoscaler`: scales every function up, down and to zero from the load it sees.
//!
//! Two [`sluice_core::Autoscaler`]s share one decision loop (KPA, [`kpa::decide`]):
//! - [`EmbeddedAutoscaler`]: a process that runs its own replicas (`sluice up`, `sluice
//!   gateway` with local processes) counts its requests (`track`), samples each function's
//!   load once a second, decides, and sets the orchestrator's replica count, logging why. A
//!   request for a function at zero wakes it at once (`wake`): concurrent first requests share
//!   one scale-up.
//! - [`shared`]: where several gateways share one set of replicas (Kubernetes), each gateway
//!   reports its load over NATS ([`shared::LoadReporter`]) and one autoscaler, elected leader,
//!   decides for all of them ([`shared::SharedAutoscaler`]), as Knative's does.
//!
//! The autoscaler only changes the orchestrator's replica count. The registry keeps what was
//! deployed or set by hand; a manual scale pins the count for one stable window before the
//! autoscaler takes over again.

pub mod kpa;
mod load;
mod scaler;
pub mod shared;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sluice_core::{FunctionRef, FunctionStore, Orchestrator, ScaleStatus, ScalingGuard};
use tokio_util::sync::CancellationToken;

pub use kpa::{Decision, KpaState, Metric, ScaleConfig, decide};
pub use load::Observation;

use crate::load::Loads;
use crate::scaler::Scaler;

/// Autoscaler settings; plain data.
#[derive(Debug, Clone)]
pub struct AutoscalerConfig {
    /// How often load is sampled and decisions are made.
    pub tick: Duration,
    /// The ceiling on every function's replicas (`com.openfaas.scale.max` is held to it).
    pub max_replicas_limit: u32,
    /// The stable window of functions that set none (`com.sluice.scale.window`); their panic
    /// window is a tenth of it.
    pub stable_window: Duration,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            max_replicas_limit: 64,
            stable_window: sluice_core::config::DEFAULT_STABLE_WINDOW,
        }
    }
}

/// What the autoscaler last decided for a function.
pub type Status = ScaleStatus;

/// The embedded autoscaler: decides for the replicas one process runs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EmbeddedAutoscaler {
    scaler: Arc<Scaler>,
    loads: Arc<Loads>,
}

impl EmbeddedAutoscaler {
    pub fn new(
        orchestrator: Arc<dyn Orchestrator>,
        functions: Arc<dyn FunctionStore>,
        config: AutoscalerConfig,
    ) -> Self {
        let scaler = Scaler::new(orchestrator, functions, config);
        let loads = Loads::new(scaler.origin);
        Self {
            scaler: Arc::new(scaler),
            loads: Arc::new(loads),
        }
    }

    /// Samples and decides every tick until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.scaler.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(error) = self.tick().await {
                tracing::warn!(%error, "autoscaler: cannot read the function registry");
            }
        }
    }

    /// One round: sample every function the orchestrator runs and apply each decision.
    pub async fn tick(&self) -> Result<(), sluice_core::StoreError> {
        let running = self.scaler.tick(|f| self.loads.observe(f)).await?;
        // A load still referenced by a request in flight stays: the function may have been
        // applied since the list was taken.
        self.loads.retain(Some(&running), None);
        Ok(())
    }
}

#[async_trait]
impl sluice_core::Autoscaler for EmbeddedAutoscaler {
    fn track(&self, function: &FunctionRef) -> sluice_core::Tracked {
        sluice_core::Tracked::new(self.loads.track(function))
    }

    /// Scales `function` from zero to one replica now, if it is at zero. The request is already
    /// tracked, so the next decision sees it and keeps the replica.
    async fn wake(&self, function: &FunctionRef) -> bool {
        self.scaler.wake(function).await
    }

    async fn exclusive(&self) -> ScalingGuard {
        Box::new(self.scaler.scaling.clone().lock_owned().await)
    }

    fn pin(&self, function: &FunctionRef, replicas: u32, why: &str) {
        self.scaler.pin(function, replicas, why);
    }

    fn status(&self, function: &FunctionRef) -> Option<Status> {
        self.scaler.status(function)
    }

    fn last_tick(&self) -> Option<sluice_core::TickReport> {
        Some(self.scaler.last_tick())
    }
}
