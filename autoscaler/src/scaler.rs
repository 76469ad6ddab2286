//! The decision loop both autoscalers share: once a tick, for every function the orchestrator
//! runs, a sample of its load, the KPA decision, and the new replica count applied; wake-ups
//! from zero; counts pinned when set from outside.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{FunctionRef, FunctionStore, Orchestrator, ScaleStatus};
use tokio::time::Instant;

use crate::AutoscalerConfig;
use crate::kpa::{self, KpaState, ScaleConfig, decide};
use crate::load::Observation;

/// Per-function memory of the decision loop.
#[derive(Debug, Default)]
struct Memory {
    samples: VecDeque<kpa::Sample>,
    last_started: u64,
    last_sample: Option<Duration>,
    state: KpaState,
    /// A count set from outside holds for one stable window from then.
    pinned_at: Option<Duration>,
    status: Option<ScaleStatus>,
}

#[derive(Debug)]
pub(crate) struct Scaler {
    pub(crate) orchestrator: Arc<dyn Orchestrator>,
    functions: Arc<dyn FunctionStore>,
    pub(crate) config: AutoscalerConfig,
    pub(crate) origin: Instant,
    memory: Mutex<HashMap<FunctionRef, Memory>>,
    /// Serialises every change of a replica count made through the autoscaler (wake-ups,
    /// decisions, [`sluice_core::Autoscaler::exclusive`] holders), across all functions.
    pub(crate) scaling: Arc<tokio::sync::Mutex<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Scaler {
    pub(crate) fn new(
        orchestrator: Arc<dyn Orchestrator>,
        functions: Arc<dyn FunctionStore>,
        config: AutoscalerConfig,
    ) -> Self {
        Self {
            orchestrator,
            functions,
            config,
            origin: Instant::now(),
            memory: Mutex::default(),
            scaling: Arc::default(),
        }
    }

    pub(crate) fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// One round: every function the orchestrator runs is observed (under the scaling lock,
    /// so a request woken meanwhile is seen) and scaled as decided. Returns the functions it
    /// runs.
    pub(crate) async fn tick(
        &self,
        observe: impl Fn(&FunctionRef) -> Observation,
    ) -> Result<HashSet<FunctionRef>, sluice_core::StoreError> {
        let specs = self.functions.list().await?;
        let now = self.now();
        let running: HashSet<FunctionRef> = self.orchestrator.functions().into_iter().collect();
        for spec in specs {
            if !running.contains(&spec.function) {
                continue;
            }
            let config = spec.config.scale.within(self.config.max_replicas_limit);
            let _serial = self.scaling.lock().await;
            let observed = observe(&spec.function);
            self.decide_for(&spec.function, &config, now, observed)
                .await;
        }
        // Forget functions that are gone.
        lock(&self.memory).retain(|f, _| running.contains(f));
        Ok(running)
    }

    async fn decide_for(
        &self,
        function: &FunctionRef,
        config: &ScaleConfig,
        now: Duration,
        observed: Observation,
    ) {
        let Some(replicas) = self.orchestrator.replicas(function) else {
            return;
        };
        let current = replicas.desired;
        let (decision, pinned) = {
            let mut memory = lock(&self.memory);
            let m = memory.entry(function.clone()).or_default();
            let elapsed = m
                .last_sample
                .map_or(self.config.tick, |at| now.saturating_sub(at));
            let requests = observed.started.saturating_sub(m.last_started) as f64
                / elapsed.as_secs_f64().max(0.001);
            m.last_started = observed.started;
            m.last_sample = Some(now);
            m.samples.push_back(kpa::Sample {
                at: now,
                concurrency: observed.peak as f64,
                requests,
            });
            let horizon = now.saturating_sub(config.stable_window);
            while m.samples.front().is_some_and(|s| s.at <= horizon) {
                m.samples.pop_front();
            }
            let pinned = m
                .pinned_at
                .is_some_and(|at| now < at + config.stable_window);
            if !pinned {
                m.pinned_at = None;
            }
            // A function found at zero that may stay there is left there until a request
            // comes (a wake-up, or load in a sample): an autoscaler that starts, or takes
            // over, does not wake every idle function.
            let no_load = observed.in_flight == 0 && observed.peak == 0 && requests == 0.0;
            if current == 0 && config.zero && no_load && !pinned {
                m.status = Some(ScaleStatus {
                    target: 0,
                    reason: "at zero; a request wakes it".into(),
                    panic: false,
                });
                return;
            }
            let samples: Vec<kpa::Sample> = m.samples.iter().copied().collect();
            let (decision, state) =
                decide(config, &samples, now, current, observed.idle_for, m.state);
            m.state = state;
            if !pinned {
                m.status = Some(ScaleStatus {
                    target: decision.desired,
                    reason: decision.reason.clone(),
                    panic: decision.panic,
                });
            }
            (decision, pinned)
        };
        if pinned || decision.desired == current {
            return;
        }
        match self.orchestrator.scale(function, decision.desired).await {
            Ok(()) => tracing::info!(
                %function,
                from = current,
                to = decision.desired,
                panic = decision.panic,
                reason = %decision.reason,
                "scaled"
            ),
            Err(error) => tracing::warn!(%function, %error, "cannot scale"),
        }
    }

    /// Scales `function` from zero to one replica now, if it is at zero. Returns whether this
    /// call started the scale-up.
    pub(crate) async fn wake(&self, function: &FunctionRef) -> bool {
        let _serial = self.scaling.lock().await;
        let at_zero = self
            .orchestrator
            .replicas(function)
            .is_some_and(|r| r.desired == 0);
        if !at_zero {
            return false;
        }
        if let Some(memory) = lock(&self.memory).get_mut(function) {
            memory.pinned_at = None;
        }
        match self.orchestrator.scale(function, 1).await {
            Ok(()) => {
                tracing::info!(%function, from = 0, to = 1, reason = "a request is waiting", "scaled");
                lock(&self.memory)
                    .entry(function.clone())
                    .or_default()
                    .status = Some(ScaleStatus {
                    target: 1,
                    reason: "scale from zero: a request is waiting".into(),
                    panic: false,
                });
                true
            }
            Err(error) => {
                tracing::warn!(%function, %error, "cannot scale from zero");
                false
            }
        }
    }

    /// Leaves the count for one stable window, then decides from the load seen meanwhile.
    pub(crate) fn pin(&self, function: &FunctionRef, replicas: u32, why: &str) {
        let now = self.now();
        let mut memory = lock(&self.memory);
        let m = memory.entry(function.clone()).or_default();
        m.pinned_at = Some(now);
        m.status = Some(ScaleStatus {
            target: replicas,
            reason: format!("{why}; the autoscaler resumes after one stable window"),
            panic: false,
        });
    }

    pub(crate) fn status(&self, function: &FunctionRef) -> Option<ScaleStatus> {
        lock(&self.memory)
            .get(function)
            .and_then(|m| m.status.clone())
    }

    /// Every function's last decision.
    pub(crate) fn statuses(&self) -> Vec<(FunctionRef, ScaleStatus)> {
        lock(&self.memory)
            .iter()
            .filter_map(|(f, m)| Some((f.clone(), m.status.clone()?)))
            .collect()
    }
}
