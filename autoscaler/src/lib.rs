//! `sluice-autoscaler`: scales every function up, down and to zero from the load it sees.
//!
//! [`EmbeddedAutoscaler`] is the [`sluice_core::Autoscaler`] of a process that runs its own
//! replicas (`sluice up`, `sluice gateway` with local processes). The gateway reports each
//! request to a function (`track`) for as long as it is in flight, held ones included. Once a
//! second the autoscaler samples each function's load, asks [`kpa::decide`] for a replica count
//! and applies it to the orchestrator, logging why. A request for a function at zero wakes it
//! at once (`wake`): concurrent first requests share one scale-up.
//!
//! The autoscaler only changes the provider's replica count. The registry keeps what was
//! deployed or set by hand; a manual scale pins the count for one stable window before the
//! autoscaler takes over again.

pub mod kpa;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sluice_core::{FunctionRef, FunctionStore, Orchestrator, ScaleStatus, ScalingGuard};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use kpa::{Decision, KpaState, Metric, ScaleConfig, decide};

/// Autoscaler settings; plain data.
#[derive(Debug, Clone)]
pub struct AutoscalerConfig {
    /// How often load is sampled and decisions are made.
    pub tick: Duration,
    /// The ceiling on every function's replicas (`com.openfaas.scale.max` is held to it).
    pub max_replicas_limit: u32,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            max_replicas_limit: 64,
        }
    }
}

/// One function's load as the gateway reports it.
#[derive(Debug, Default)]
struct Load {
    in_flight: AtomicUsize,
    /// Most in flight at once since the last sample.
    peak: AtomicUsize,
    /// Requests started, ever.
    started: AtomicU64,
    /// When the last request ended, in ms since the autoscaler's origin.
    last_end_ms: AtomicU64,
}

/// Counts one request as in flight on its function until dropped.
#[derive(Debug)]
struct Tracked {
    load: Arc<Load>,
    origin: Instant,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let now = ms_since(self.origin);
        self.load.last_end_ms.fetch_max(now, Ordering::AcqRel);
        self.load.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

fn ms_since(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// What the autoscaler last decided for a function.
pub type Status = ScaleStatus;

/// Per-function memory of the decision loop.
#[derive(Debug, Default)]
struct Memory {
    samples: VecDeque<kpa::Sample>,
    last_started: u64,
    last_sample: Option<Duration>,
    state: KpaState,
    /// A count set from outside holds for one stable window from then.
    pinned_at: Option<Duration>,
    status: Option<Status>,
}

/// The embedded autoscaler: decides for the replicas one process runs. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EmbeddedAutoscaler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    provider: Arc<dyn Orchestrator>,
    functions: Arc<dyn FunctionStore>,
    config: AutoscalerConfig,
    origin: Instant,
    loads: Mutex<HashMap<FunctionRef, Arc<Load>>>,
    memory: Mutex<HashMap<FunctionRef, Memory>>,
    /// Serialises every change of a replica count made through the autoscaler (wake-ups,
    /// decisions, [`sluice_core::Autoscaler::exclusive`] holders), across all functions.
    scaling: Arc<tokio::sync::Mutex<()>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl EmbeddedAutoscaler {
    pub fn new(
        provider: Arc<dyn Orchestrator>,
        functions: Arc<dyn FunctionStore>,
        config: AutoscalerConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                provider,
                functions,
                config,
                origin: Instant::now(),
                loads: Mutex::default(),
                memory: Mutex::default(),
                scaling: Arc::default(),
            }),
        }
    }

    fn now(&self) -> Duration {
        self.inner.origin.elapsed()
    }

    fn load(&self, function: &FunctionRef) -> Arc<Load> {
        lock(&self.inner.loads)
            .entry(function.clone())
            .or_insert_with(|| {
                // A function is idle from when it is first seen, not from the gateway's start.
                Arc::new(Load {
                    last_end_ms: AtomicU64::new(ms_since(self.inner.origin)),
                    ..Load::default()
                })
            })
            .clone()
    }

    fn remember(&self, function: &FunctionRef, status: Status) {
        lock(&self.inner.memory)
            .entry(function.clone())
            .or_default()
            .status = Some(status);
    }

    /// Samples and decides every tick until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.inner.config.tick);
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

    /// One round: sample every function the provider runs and apply each decision.
    pub async fn tick(&self) -> Result<(), sluice_core::StoreError> {
        let specs = self.inner.functions.list().await?;
        let now = self.now();
        let running: std::collections::HashSet<FunctionRef> =
            self.inner.provider.functions().into_iter().collect();
        for spec in specs {
            if !running.contains(&spec.function) {
                continue;
            }
            let config = spec
                .config
                .scale
                .within(self.inner.config.max_replicas_limit);
            self.decide_for(&spec.function, &config, now).await;
        }
        // Forget functions that are gone.
        lock(&self.inner.memory).retain(|f, _| running.contains(f));
        // A load still referenced by a request in flight stays: the function may have been
        // applied since the list was taken.
        lock(&self.inner.loads)
            .retain(|f, load| running.contains(f) || Arc::strong_count(load) > 1);
        Ok(())
    }

    async fn decide_for(&self, function: &FunctionRef, config: &ScaleConfig, now: Duration) {
        // Under the lock, so a request woken meanwhile (tracked before it wakes the function) is
        // seen, and the function is not sent back to zero under it.
        let _serial = self.inner.scaling.lock().await;
        let load = self.load(function);
        let in_flight = load.in_flight.load(Ordering::Acquire);
        let peak = load.peak.swap(in_flight, Ordering::AcqRel).max(in_flight);
        let started = load.started.load(Ordering::Acquire);
        let idle_for = if in_flight > 0 {
            Duration::ZERO
        } else {
            now.saturating_sub(Duration::from_millis(
                load.last_end_ms.load(Ordering::Acquire),
            ))
        };
        let Some(replicas) = self.inner.provider.replicas(function) else {
            return;
        };
        let current = replicas.desired;
        let (decision, pinned) = {
            let mut memory = lock(&self.inner.memory);
            let m = memory.entry(function.clone()).or_default();
            let elapsed = m
                .last_sample
                .map_or(self.inner.config.tick, |at| now.saturating_sub(at));
            let requests =
                started.saturating_sub(m.last_started) as f64 / elapsed.as_secs_f64().max(0.001);
            m.last_started = started;
            m.last_sample = Some(now);
            m.samples.push_back(kpa::Sample {
                at: now,
                concurrency: peak as f64,
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
            let samples: Vec<kpa::Sample> = m.samples.iter().copied().collect();
            let (decision, state) = decide(config, &samples, now, current, idle_for, m.state);
            m.state = state;
            if !pinned {
                m.status = Some(Status {
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
        match self.inner.provider.scale(function, decision.desired).await {
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
}

#[async_trait]
impl sluice_core::Autoscaler for EmbeddedAutoscaler {
    fn track(&self, function: &FunctionRef) -> sluice_core::Tracked {
        let load = self.load(function);
        let now = load.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        load.peak.fetch_max(now, Ordering::AcqRel);
        load.started.fetch_add(1, Ordering::AcqRel);
        sluice_core::Tracked::new(Tracked {
            load,
            origin: self.inner.origin,
        })
    }

    /// Scales `function` from zero to one replica now, if it is at zero. The request is already
    /// tracked, so the next decision sees it and keeps the replica.
    async fn wake(&self, function: &FunctionRef) -> bool {
        let _serial = self.inner.scaling.lock().await;
        let at_zero = self
            .inner
            .provider
            .replicas(function)
            .is_some_and(|r| r.desired == 0);
        if !at_zero {
            return false;
        }
        if let Some(memory) = lock(&self.inner.memory).get_mut(function) {
            memory.pinned_at = None;
        }
        match self.inner.provider.scale(function, 1).await {
            Ok(()) => {
                tracing::info!(%function, from = 0, to = 1, reason = "a request is waiting", "scaled");
                self.remember(
                    function,
                    Status {
                        target: 1,
                        reason: "scale from zero: a request is waiting".into(),
                        panic: false,
                    },
                );
                true
            }
            Err(error) => {
                tracing::warn!(%function, %error, "cannot scale from zero");
                false
            }
        }
    }

    async fn exclusive(&self) -> ScalingGuard {
        Box::new(self.inner.scaling.clone().lock_owned().await)
    }

    /// Leaves the count for one stable window, then decides from the load seen meanwhile.
    fn pin(&self, function: &FunctionRef, replicas: u32, why: &str) {
        let now = self.now();
        let mut memory = lock(&self.inner.memory);
        let m = memory.entry(function.clone()).or_default();
        m.pinned_at = Some(now);
        m.status = Some(Status {
            target: replicas,
            reason: format!("{why}; the autoscaler resumes after one stable window"),
            panic: false,
        });
    }

    fn status(&self, function: &FunctionRef) -> Option<Status> {
        lock(&self.inner.memory)
            .get(function)
            .and_then(|m| m.status.clone())
    }
}
