//! One autoscaler for many gateways, as Knative does it: every gateway counts its own requests
//! and reports them each second over NATS ([`LoadReporter`], the gateway's
//! [`sluice_core::Autoscaler`]); [`SharedAutoscaler`] adds up the reports of all gateways and,
//! while it is the elected leader, runs the same KPA decision as the embedded autoscaler and
//! sets each function's replica count. A request held for a function at zero sends a wake-up
//! at once, so the scale from zero starts within milliseconds, not at the next tick.
//!
//! Subjects (core NATS, not JetStream: a report is worth nothing a second later):
//! - `sluice.autoscaler.load`: a gateway's load, each tick;
//! - `sluice.autoscaler.wake`: a request is held for a function that may be at zero;
//! - `sluice.autoscaler.pin`: a count was set by hand through a gateway;
//! - `sluice.autoscaler.status`: the leader's decisions, for `describe` and `/metrics`.
//!
//! Whoever can publish on these subjects can make functions scale (within their bounds): the
//! NATS server is inside the platform's trust boundary, as it is for the call queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sluice_core::{FunctionRef, FunctionStore, Orchestrator, ScaleStatus, ScalingGuard};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::AutoscalerConfig;
use crate::load::{Loads, Observation};
use crate::scaler::Scaler;

pub const LOAD_SUBJECT: &str = "sluice.autoscaler.load";
pub const WAKE_SUBJECT: &str = "sluice.autoscaler.wake";
pub const PIN_SUBJECT: &str = "sluice.autoscaler.pin";
pub const STATUS_SUBJECT: &str = "sluice.autoscaler.status";

/// Functions per message, so a report stays far below NATS's payload limit.
const CHUNK: usize = 1000;
/// A gateway that has not reported for this many ticks is taken to carry no load.
const STALE_TICKS: u32 = 3;
/// A gateway forgets a function it has not seen a request for in this long (the autoscaler
/// keeps counting its idleness from the last report).
const FORGET_IDLE: Duration = Duration::from_secs(600);
/// Wake-ups for one function are sent at most this often by one gateway.
const WAKE_EVERY: Duration = Duration::from_millis(250);
/// The leader sends every status (not only changed ones) this many ticks apart.
const FULL_STATUS_TICKS: u32 = 30;
/// Most functions taken from one report; the rest of a larger one is ignored.
const MAX_REPORT: usize = 5000;
/// Longest reason a pin carries.
const MAX_WHY: usize = 200;
/// How long a wake-up may take to leave this gateway: a NATS server that is away does not
/// hold requests past it (the next report carries the held request's load anyway).
const WAKE_SEND: Duration = Duration::from_millis(100);
/// A function nobody has reported for this long is forgotten by the autoscaler.
const FORGET_UNHEARD: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FunctionLoad {
    name: String,
    namespace: String,
    in_flight: u64,
    peak: u64,
    started: u64,
    idle_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Report {
    gateway: String,
    functions: Vec<FunctionLoad>,
}

#[derive(Debug, Serialize, Deserialize)]
struct WakeMessage {
    name: String,
    namespace: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct PinMessage {
    name: String,
    namespace: String,
    replicas: u32,
    why: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StatusEntry {
    name: String,
    namespace: String,
    target: u32,
    reason: String,
    panic: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct Statuses {
    statuses: Vec<StatusEntry>,
}

fn function(name: &str, namespace: &str) -> Option<FunctionRef> {
    FunctionRef::parse(name, Some(namespace)).ok()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The gateway's side: counts its requests, reports them, sends wake-ups and pins, and keeps
/// the leader's decisions. Cheap to clone.
#[derive(Debug, Clone)]
pub struct LoadReporter {
    inner: Arc<Reporter>,
}

#[derive(Debug)]
struct Reporter {
    nats: async_nats::Client,
    /// This gateway, in its reports.
    gateway: String,
    tick: Duration,
    loads: Loads,
    /// When each function was last woken from here.
    woken: Mutex<HashMap<FunctionRef, Instant>>,
    /// The leader's last decisions, and when each was heard.
    statuses: Mutex<HashMap<FunctionRef, (ScaleStatus, Instant)>>,
}

impl LoadReporter {
    /// A reporter for the gateway `gateway` (any name unique among the gateways).
    pub fn new(nats: async_nats::Client, gateway: impl Into<String>, tick: Duration) -> Self {
        Self {
            inner: Arc::new(Reporter {
                nats,
                gateway: gateway.into(),
                tick,
                loads: Loads::new(Instant::now()),
                woken: Mutex::default(),
                statuses: Mutex::default(),
            }),
        }
    }

    /// Reports every tick, and listens to the leader's decisions, until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut statuses = match self.inner.nats.subscribe(STATUS_SUBJECT).await {
            Ok(s) => Some(s),
            Err(error) => {
                tracing::warn!(%error, "cannot follow the autoscaler's decisions");
                None
            }
        };
        let mut tick = tokio::time::interval(self.inner.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => self.report().await,
                Some(message) = async {
                    match statuses.as_mut() {
                        Some(s) => s.next().await,
                        None => std::future::pending().await,
                    }
                } => self.heard(&message.payload),
            }
        }
    }

    async fn report(&self) {
        let loads: Vec<FunctionLoad> = self
            .inner
            .loads
            .observe_all()
            .into_iter()
            .map(|(f, o)| FunctionLoad {
                name: f.name,
                namespace: f.namespace,
                in_flight: o.in_flight as u64,
                peak: o.peak as u64,
                started: o.started,
                idle_ms: ms(o.idle_for),
            })
            .collect();
        for chunk in loads.chunks(CHUNK) {
            let report = Report {
                gateway: self.inner.gateway.clone(),
                functions: chunk.to_vec(),
            };
            let Ok(payload) = serde_json::to_vec(&report) else {
                continue;
            };
            if let Err(error) = self.inner.nats.publish(LOAD_SUBJECT, payload.into()).await {
                tracing::warn!(%error, "cannot report load to the autoscaler");
            }
        }
        self.inner.loads.retain(None, Some(FORGET_IDLE));
        let horizon = self.inner.tick * FULL_STATUS_TICKS * 10;
        lock(&self.inner.statuses).retain(|_, (_, heard)| heard.elapsed() < horizon);
        lock(&self.inner.woken).retain(|_, at| at.elapsed() < WAKE_EVERY);
    }

    fn heard(&self, payload: &[u8]) {
        let Ok(update) = serde_json::from_slice::<Statuses>(payload) else {
            tracing::debug!("an unreadable status message; ignored");
            return;
        };
        let now = Instant::now();
        let mut statuses = lock(&self.inner.statuses);
        for s in update.statuses {
            if let Some(f) = function(&s.name, &s.namespace) {
                let status = ScaleStatus {
                    target: s.target,
                    reason: s.reason,
                    panic: s.panic,
                };
                statuses.insert(f, (status, now));
            }
        }
    }

    fn publish_later(&self, subject: &'static str, payload: Vec<u8>) {
        let nats = self.inner.nats.clone();
        tokio::spawn(async move {
            if let Err(error) = nats.publish(subject, payload.into()).await {
                tracing::warn!(%error, subject, "cannot reach the autoscaler");
            }
        });
    }
}

#[async_trait]
impl sluice_core::Autoscaler for LoadReporter {
    fn track(&self, function: &FunctionRef) -> sluice_core::Tracked {
        sluice_core::Tracked::new(self.inner.loads.track(function))
    }

    /// Asks the leader to scale `function` from zero now. A lost wake-up is made good by the
    /// next report, which counts the held request.
    async fn wake(&self, function: &FunctionRef) -> bool {
        {
            let mut woken = lock(&self.inner.woken);
            if woken
                .get(function)
                .is_some_and(|at| at.elapsed() < WAKE_EVERY)
            {
                return true;
            }
            woken.insert(function.clone(), Instant::now());
        }
        if self.inner.nats.connection_state() != async_nats::connection::State::Connected {
            lock(&self.inner.woken).remove(function);
            return false;
        }
        let wake = WakeMessage {
            name: function.name.clone(),
            namespace: function.namespace.clone(),
        };
        let Ok(payload) = serde_json::to_vec(&wake) else {
            return false;
        };
        let sent = tokio::time::timeout(WAKE_SEND, async {
            self.inner
                .nats
                .publish(WAKE_SUBJECT, payload.into())
                .await
                .map_err(|e| e.to_string())?;
            // Out now, not with the next batch of writes.
            self.inner.nats.flush().await.map_err(|e| e.to_string())
        })
        .await;
        match sent {
            Ok(Ok(())) => true,
            failed => {
                let error = match failed {
                    Ok(Err(e)) => e,
                    _ => format!("not sent within {WAKE_SEND:?}"),
                };
                tracing::warn!(%function, %error, "cannot ask the autoscaler to wake a function");
                lock(&self.inner.woken).remove(function);
                false
            }
        }
    }

    /// Nothing to hold: counts are the leader's to serialise.
    async fn exclusive(&self) -> ScalingGuard {
        Box::new(())
    }

    fn pin(&self, function: &FunctionRef, replicas: u32, why: &str) {
        let pin = PinMessage {
            name: function.name.clone(),
            namespace: function.namespace.clone(),
            replicas,
            why: why.to_owned(),
        };
        if let Ok(payload) = serde_json::to_vec(&pin) {
            self.publish_later(PIN_SUBJECT, payload);
        }
    }

    fn status(&self, function: &FunctionRef) -> Option<ScaleStatus> {
        lock(&self.inner.statuses)
            .get(function)
            .map(|(s, _)| s.clone())
    }
}

/// What one gateway last said of one function.
#[derive(Debug)]
struct GatewayLoad {
    load: FunctionLoad,
    at: Duration,
}

/// Everything heard of one function.
#[derive(Debug)]
struct Heard {
    gateways: HashMap<String, GatewayLoad>,
    /// Requests started, added up from each gateway's growth between its reports.
    started: u64,
    /// When a request was last in flight on any gateway (the autoscaler's clock).
    last_busy: Duration,
}

/// The gateways' reports, added up.
#[derive(Debug, Default)]
struct Aggregate {
    functions: HashMap<FunctionRef, Heard>,
}

impl Aggregate {
    fn ingest(&mut self, report: Report, now: Duration) {
        for load in report.functions.into_iter().take(MAX_REPORT) {
            let Some(f) = function(&load.name, &load.namespace) else {
                continue;
            };
            let busy_at = if load.in_flight > 0 {
                now
            } else {
                now.saturating_sub(Duration::from_millis(load.idle_ms))
            };
            let heard = self.functions.entry(f).or_insert_with(|| Heard {
                gateways: HashMap::new(),
                started: 0,
                last_busy: busy_at,
            });
            heard.last_busy = heard.last_busy.max(busy_at);
            if let Some(previous) = heard.gateways.get(&report.gateway) {
                heard.started = heard
                    .started
                    .saturating_add(load.started.saturating_sub(previous.load.started));
            }
            heard
                .gateways
                .insert(report.gateway.clone(), GatewayLoad { load, at: now });
        }
    }

    /// Drops what went stale: gateways silent for `stale`, functions unheard of for a day.
    fn prune(&mut self, now: Duration, stale: Duration) {
        self.functions.retain(|_, heard| {
            heard
                .gateways
                .retain(|_, g| now.saturating_sub(g.at) <= stale);
            !heard.gateways.is_empty() || now.saturating_sub(heard.last_busy) < FORGET_UNHEARD
        });
    }

    fn observe(&mut self, function: &FunctionRef, now: Duration, stale: Duration) -> Observation {
        let heard = self
            .functions
            .entry(function.clone())
            .or_insert_with(|| Heard {
                gateways: HashMap::new(),
                started: 0,
                // Never heard of: idle from now.
                last_busy: now,
            });
        heard
            .gateways
            .retain(|_, g| now.saturating_sub(g.at) <= stale);
        let in_flight: u64 = heard.gateways.values().map(|g| g.load.in_flight).sum();
        let peak: u64 = heard.gateways.values().map(|g| g.load.peak).sum();
        Observation {
            in_flight: usize::try_from(in_flight).unwrap_or(usize::MAX),
            peak: usize::try_from(peak.max(in_flight)).unwrap_or(usize::MAX),
            started: heard.started,
            idle_for: if in_flight > 0 {
                Duration::ZERO
            } else {
                now.saturating_sub(heard.last_busy)
            },
        }
    }
}

/// The autoscaler program's side: hears every gateway, and decides while it leads.
#[derive(Debug, Clone)]
pub struct SharedAutoscaler {
    scaler: Arc<Scaler>,
    nats: async_nats::Client,
    heard: Arc<Mutex<Aggregate>>,
    leading: watch::Receiver<bool>,
    /// Functions being woken now: a burst of wake-ups for one makes one scale call.
    waking: Arc<Mutex<std::collections::HashSet<FunctionRef>>>,
}

impl SharedAutoscaler {
    /// Decides for `orchestrator`'s functions while `leading` is `true`; hears the gateways
    /// always, so a standby that takes over knows the recent load.
    pub fn new(
        nats: async_nats::Client,
        orchestrator: Arc<dyn Orchestrator>,
        functions: Arc<dyn FunctionStore>,
        config: AutoscalerConfig,
        leading: watch::Receiver<bool>,
    ) -> Self {
        Self {
            scaler: Arc::new(Scaler::new(orchestrator, functions, config).gated(leading.clone())),
            nats,
            heard: Arc::default(),
            leading,
            waking: Arc::default(),
        }
    }

    fn leads(&self) -> bool {
        *self.leading.borrow()
    }

    /// What was last decided for `function` (while leading).
    pub fn status(&self, function: &FunctionRef) -> Option<ScaleStatus> {
        self.scaler.status(function)
    }

    /// Hears and decides until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), async_nats::SubscribeError> {
        let mut loads = self.nats.subscribe(LOAD_SUBJECT).await?;
        let mut wakes = self.nats.subscribe(WAKE_SUBJECT).await?;
        let mut pins = self.nats.subscribe(PIN_SUBJECT).await?;
        // Subscriptions are in place before anyone is told this one listens.
        let _ = self.nats.flush().await;
        let mut tick = tokio::time::interval(self.scaler.config.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let stale = self.scaler.config.tick * STALE_TICKS;
        let mut published: HashMap<FunctionRef, ScaleStatus> = HashMap::new();
        let mut ticks: u32 = 0;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                Some(m) = loads.next() => match serde_json::from_slice::<Report>(&m.payload) {
                    Ok(report) => lock(&self.heard).ingest(report, self.scaler.now()),
                    Err(error) => tracing::debug!(%error, "an unreadable load report; ignored"),
                },
                Some(m) = wakes.next() => {
                    let Ok(wake) = serde_json::from_slice::<WakeMessage>(&m.payload) else { continue };
                    let Some(f) = function(&wake.name, &wake.namespace) else { continue };
                    if self.leads() && lock(&self.waking).insert(f.clone()) {
                        // Its own task: one slow API call does not hold up other wake-ups.
                        let this = self.clone();
                        tokio::spawn(async move {
                            if this.scaler.wake(&f).await {
                                this.publish(vec![(f.clone(), this.scaler.status(&f))]).await;
                            }
                            lock(&this.waking).remove(&f);
                        });
                    }
                }
                Some(m) = pins.next() => {
                    let Ok(pin) = serde_json::from_slice::<PinMessage>(&m.payload) else { continue };
                    // Only for a function that runs, with a reason of bounded length.
                    if let Some(f) = function(&pin.name, &pin.namespace)
                        .filter(|f| self.scaler.orchestrator.replicas(f).is_some())
                    {
                        let why: String = pin.why.chars().take(MAX_WHY).collect();
                        self.scaler.pin(&f, pin.replicas, &why);
                    }
                }
                _ = tick.tick() => {
                    // Standbys too: what they keep stays bounded.
                    lock(&self.heard).prune(self.scaler.now(), stale);
                    if !self.leads() {
                        continue;
                    }
                    let now = self.scaler.now();
                    let heard = self.heard.clone();
                    match self.scaler.tick(|f| lock(&heard).observe(f, now, stale)).await {
                        Ok(running) => {
                            lock(&self.heard).functions.retain(|f, _| running.contains(f));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "autoscaler: cannot read the function registry");
                            continue;
                        }
                    }
                    ticks = ticks.wrapping_add(1);
                    let full = ticks % FULL_STATUS_TICKS == 1;
                    let mut changed = Vec::new();
                    for (f, s) in self.scaler.statuses() {
                        if full || published.get(&f) != Some(&s) {
                            published.insert(f.clone(), s.clone());
                            changed.push((f, Some(s)));
                        }
                    }
                    published.retain(|f, _| lock(&self.heard).functions.contains_key(f));
                    self.publish(changed).await;
                }
            }
        }
    }

    async fn publish(&self, statuses: Vec<(FunctionRef, Option<ScaleStatus>)>) {
        let entries: Vec<StatusEntry> = statuses
            .into_iter()
            .filter_map(|(f, s)| {
                let s = s?;
                Some(StatusEntry {
                    name: f.name,
                    namespace: f.namespace,
                    target: s.target,
                    reason: s.reason,
                    panic: s.panic,
                })
            })
            .collect();
        for chunk in entries.chunks(CHUNK) {
            let Ok(payload) = serde_json::to_vec(&Statuses {
                statuses: chunk.to_vec(),
            }) else {
                continue;
            };
            if let Err(error) = self.nats.publish(STATUS_SUBJECT, payload.into()).await {
                tracing::warn!(%error, "cannot publish the autoscaler's decisions");
            }
        }
    }
}
