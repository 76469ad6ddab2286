//! The decision loop both autoscalers share: once a tick, for every function the orchestrator
//! runs, a sample of its load (and, for a function that scales on CPU, its replicas' CPU from
//! `Orchestrator::usage`), the KPA decision, and the new replica count applied; wake-ups
//! from zero; counts pinned when set from outside.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{FunctionRef, FunctionStore, Orchestrator, ScaleStatus, TickReport};
use tokio::time::Instant;

use crate::AutoscalerConfig;
use crate::kpa::{self, KpaState, ScaleConfig};
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
    /// The count this autoscaler last set, and for how many ticks in a row the orchestrator
    /// has said otherwise (a count changed by someone else: `kubectl scale`, a lost pin).
    last_set: Option<u32>,
    differs: u32,
}

/// How long one scale call may take before the autoscaler gives up on it (and moves on to the
/// other functions).
const SCALE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// While it says `false`, nothing is scaled (a shared autoscaler that is not the leader).
    gate: Option<tokio::sync::watch::Receiver<bool>>,
    last_tick: Mutex<TickReport>,
}

/// What is remembered of `function`, made on first sight (the key is cloned only then: a
/// round looks up every function).
fn remembered<'a>(
    memory: &'a mut HashMap<FunctionRef, Memory>,
    function: &FunctionRef,
) -> &'a mut Memory {
    if !memory.contains_key(function) {
        memory.insert(function.clone(), Memory::default());
    }
    memory.get_mut(function).expect("inserted above")
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
            gate: None,
            last_tick: Mutex::default(),
        }
    }

    /// Scales only while `gate` says `true`, checked just before each change.
    pub(crate) fn gated(mut self, gate: tokio::sync::watch::Receiver<bool>) -> Self {
        self.gate = Some(gate);
        self
    }

    fn may_scale(&self) -> bool {
        self.gate.as_ref().is_none_or(|g| *g.borrow())
    }

    /// Sets `function`'s count through the orchestrator, within [`SCALE_TIMEOUT`], if this
    /// autoscaler may scale now; remembers it as its own.
    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<(), String> {
        if !self.may_scale() {
            return Err("not the leader any more".into());
        }
        match tokio::time::timeout(SCALE_TIMEOUT, self.orchestrator.scale(function, replicas)).await
        {
            Ok(Ok(())) => {
                let mut memory = lock(&self.memory);
                let m = remembered(&mut memory, function);
                m.last_set = Some(replicas);
                m.differs = 0;
                Ok(())
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {SCALE_TIMEOUT:?}")),
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
        let started = Instant::now();
        let specs = self.functions.list().await?;
        let now = self.now();
        let mut decided = 0;
        let running: HashSet<FunctionRef> = self.orchestrator.functions().into_iter().collect();
        for spec in specs {
            if !running.contains(&spec.function) {
                continue;
            }
            let config = spec
                .config
                .scale
                .within(self.config.max_replicas_limit)
                .with_default_window(self.config.stable_window);
            let _serial = self.scaling.lock().await;
            let observed = observe(&spec.function);
            self.decide_for(&spec.function, &config, now, observed)
                .await;
            decided += 1;
        }
        // Forget functions that are gone.
        lock(&self.memory).retain(|f, _| running.contains(f));
        let mut last = lock(&self.last_tick);
        *last = TickReport {
            ticks: last.ticks + 1,
            functions: decided,
            took: started.elapsed(),
        };
        Ok(running)
    }

    /// How the last round went.
    pub(crate) fn last_tick(&self) -> TickReport {
        *lock(&self.last_tick)
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
        // Asked of the orchestrator outside the memory lock: it may read /proc.
        let cpu = match config.metric {
            kpa::Metric::Cpu => self.orchestrator.usage(function).map_or(0.0, |u| u.cpu),
            _ => 0.0,
        };
        let (decision, pinned) = {
            let mut memory = lock(&self.memory);
            let m = remembered(&mut memory, function);
            // The first sample of a function has no rate yet: the counter may have grown for a
            // long time before (a standby taking over), not in one tick.
            let requests = match m.last_sample {
                None => 0.0,
                Some(at) => {
                    observed.started.saturating_sub(m.last_started) as f64
                        / now.saturating_sub(at).as_secs_f64().max(0.001)
                }
            };
            m.last_started = observed.started;
            m.last_sample = Some(now);
            m.samples.push_back(kpa::Sample {
                at: now,
                concurrency: observed.peak as f64,
                requests,
                cpu,
            });
            let horizon = now.saturating_sub(config.stable_window);
            while m.samples.front().is_some_and(|s| s.at <= horizon) {
                m.samples.pop_front();
            }
            // A count someone else set (seen twice, so a late watch event is not taken for
            // one) holds for a stable window, as a count set by hand through a gateway does.
            if m.last_set.is_some_and(|set| set != current) {
                m.differs += 1;
                if m.differs >= 2 {
                    m.last_set = Some(current);
                    m.differs = 0;
                    m.pinned_at = Some(now);
                    m.status = Some(ScaleStatus {
                        target: current,
                        reason:
                            "set from outside the autoscaler; it resumes after one stable window"
                                .into(),
                        panic: false,
                    });
                }
            } else {
                m.differs = 0;
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
            let no_load =
                observed.in_flight == 0 && observed.peak == 0 && requests == 0.0 && cpu == 0.0;
            if current == 0 && config.zero && no_load && !pinned {
                m.status = Some(ScaleStatus {
                    target: 0,
                    reason: "at zero; a request wakes it".into(),
                    panic: false,
                });
                return;
            }
            let samples = m.samples.make_contiguous();
            // A pinned function's decision is not applied or shown: no reason to write.
            let (decision, state) = kpa::decide_explained(
                config,
                samples,
                now,
                current,
                observed.idle_for,
                m.state,
                !pinned,
            );
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
        match self.scale(function, decision.desired).await {
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
        match self.scale(function, 1).await {
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
        let m = remembered(&mut memory, function);
        m.pinned_at = Some(now);
        m.last_set = Some(replicas);
        m.differs = 0;
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
