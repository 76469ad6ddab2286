//! `sluice-activator`: stands between the gateway and a function's replicas.
//!
//! For each request it picks the least busy ready replica with room (a replica takes at most the
//! function's `com.sluice.concurrency` requests at once), round-robin among equals. When no
//! replica has room, the request is held (up to a buffer per function and a hold timeout) and
//! let through as soon as a slot opens or a replica becomes ready; a function at zero is woken
//! through the [`Autoscaler`] first. A request that finds room is not held at all: the activator
//! is only in the path while capacity is short, so there is no mode to flap in and out of.
//!
//! Replicas come from an [`EndpointSource`] (the process provider's local replicas, or pods'
//! addresses from Kubernetes EndpointSlices), so the same code serves both. A function its source
//! reports crash-looping with no replica ready is not waited for: the request fails at once,
//! and requests already held for it are let go with the same error.
//!
//! It also counts, per function, what the gateway's scaling chart shows ([`Activator::sample`]):
//! requests started, the most in flight on replicas at once, the most held at once. A request
//! that finds room at once costs one relaxed atomic add for all of it (and one subtraction when
//! it ends): the counts share one word with the in-flight count.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{
    Autoscaler, CrashLoop, Endpoint, EndpointSource, FunctionRef, InFlight, ReadyReplica,
};
use tokio::sync::Notify;

/// How long and how many requests the activator holds.
#[derive(Debug, Clone)]
pub struct ActivatorConfig {
    /// Requests held per function at most; more are refused at once.
    pub buffer: usize,
    /// How long a request is held for a replica with room before it is refused.
    pub hold_timeout: Duration,
}

impl Default for ActivatorConfig {
    fn default() -> Self {
        Self {
            buffer: 500,
            hold_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a request got no replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivatorError {
    #[error("function {0} is not running here")]
    Gone(String),
    #[error("{limit} requests are already waiting for function {function}")]
    Full { function: String, limit: usize },
    #[error("function {function} had no replica with room after waiting {waited:?}")]
    NotReady { function: String, waited: Duration },
    #[error("function {0} is scaled to zero and could not be woken")]
    ScaledToZero(String),
    /// Its replicas keep exiting and none is ready: waiting would only run out the clock.
    #[error("function {function} is {crash_loop}")]
    CrashLooping {
        function: String,
        crash_loop: Arc<CrashLoop>,
    },
}

/// The activator. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Activator {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    source: Arc<dyn EndpointSource>,
    autoscaler: Arc<dyn Autoscaler>,
    config: ActivatorConfig,
    functions: Mutex<HashMap<FunctionRef, Arc<FunctionState>>>,
}

/// What the activator keeps per function.
#[derive(Debug, Default)]
struct FunctionState {
    /// Requests held now.
    held: AtomicUsize,
    /// The most held at once since the last [`Activator::sample`].
    held_peak: AtomicUsize,
    /// Shared with each of its requests' guards.
    counts: Arc<Counts>,
    /// Where the round-robin among equally busy replicas starts next.
    next: AtomicUsize,
}

/// A function's requests as they start and end: what each request's guard holds.
#[derive(Debug, Default)]
struct Counts {
    /// Notified (one waiter at a time) whenever a request on any of its replicas ends.
    freed: Notify,
    /// Requests started (the high 32 bits, wrapping) and in flight on its replicas (the low 32
    /// bits): one word, so that a request that finds room at once is counted with one add.
    load: AtomicU64,
    /// The most in flight at once since the last [`Activator::sample`].
    in_flight_peak: AtomicU32,
    /// The started count (high half of `load`) at the last [`Activator::sample`].
    sampled: AtomicU32,
}

/// One request started, in [`Counts::load`].
const STARTED: u64 = 1 << 32;
/// One request in flight, in [`Counts::load`].
const IN_FLIGHT: u64 = 1;

impl Counts {
    /// Counts `add` ([`STARTED`] and/or [`IN_FLIGHT`]) and keeps the in-flight peak. Relaxed:
    /// these are statistics, read a few seconds later; nothing is ordered by them.
    fn count(&self, add: u64) {
        let load = self
            .load
            .fetch_add(add, Ordering::Relaxed)
            .wrapping_add(add);
        if add & IN_FLIGHT != 0 {
            let in_flight = load as u32;
            // A load before the read-modify-write: the peak only moves when a new high is met.
            if in_flight > self.in_flight_peak.load(Ordering::Relaxed) {
                self.in_flight_peak.fetch_max(in_flight, Ordering::Relaxed);
            }
        }
    }
}

/// What the activator saw of one function's requests since the previous
/// [`Activator::sample`]: the numbers behind the gateway's scaling chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoadSample {
    /// Requests started: sent to a replica at once, or held for one (requests refused at once,
    /// for a full buffer or a function that is not there, are not counted).
    pub started: u32,
    /// The most requests in flight on its replicas at once (each counted from when it is sent
    /// to a replica until its response has ended); at least as many as are in flight now.
    pub in_flight: u32,
    /// The most requests held at once, waiting for a replica with room; at least as many as
    /// are held now.
    pub held: u32,
}

/// One held request; the count goes down when it is dropped.
struct Holding<'a>(&'a AtomicUsize);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a request out of its function's in-flight requests and wakes one held request when
/// it ends; dropped after the request's [`InFlight`], so the slot is free when the waiter looks.
struct Freed(Arc<Counts>);

impl Drop for Freed {
    fn drop(&mut self) {
        self.0.load.fetch_sub(IN_FLIGHT, Ordering::Relaxed);
        self.0.freed.notify_one();
    }
}

/// What one look at the ready replicas found.
enum Pick {
    Got(Endpoint),
    /// The source does not know the function (any more).
    Unknown,
    /// It is scaled to zero.
    AtZero,
    /// No replica is ready and its replicas keep exiting.
    CrashLooping(Arc<CrashLoop>),
    /// Replicas are starting, or every ready one is full.
    Wait,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Activator {
    pub fn new(
        source: Arc<dyn EndpointSource>,
        autoscaler: Arc<dyn Autoscaler>,
        config: ActivatorConfig,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                source,
                autoscaler,
                config,
                functions: Mutex::default(),
            }),
        }
    }

    pub fn config(&self) -> &ActivatorConfig {
        &self.inner.config
    }

    fn state(&self, function: &FunctionRef) -> Arc<FunctionState> {
        lock(&self.inner.functions)
            .entry(function.clone())
            .or_default()
            .clone()
    }

    /// Forgets a removed function, unless requests are still held for it.
    pub fn forget(&self, function: &FunctionRef) {
        let mut functions = lock(&self.inner.functions);
        if functions
            .get(function)
            .is_some_and(|s| s.held.load(Ordering::Acquire) == 0 && Arc::strong_count(s) == 1)
        {
            functions.remove(function);
        }
    }

    /// Why `function`'s replicas keep exiting, while they do (as its endpoint source says).
    pub fn crash_loop(&self, function: &FunctionRef) -> Option<Arc<CrashLoop>> {
        self.inner.source.ready(function)?.crash_loop
    }

    /// Requests held for `function` now.
    pub fn held(&self, function: &FunctionRef) -> usize {
        lock(&self.inner.functions)
            .get(function)
            .map_or(0, |s| s.held.load(Ordering::Acquire))
    }

    /// What `function`'s requests did since the previous call: how many started, and the most
    /// in flight and held at once (the peaks start again from what is in flight and held now).
    /// Meant for one sampler (the gateway's scaling history): a second caller would split the
    /// counts with it. A function no request has reached yet has nothing to say.
    pub fn sample(&self, function: &FunctionRef) -> LoadSample {
        let functions = lock(&self.inner.functions);
        let Some(state) = functions.get(function) else {
            return LoadSample::default();
        };
        let counts = &state.counts;
        let load = counts.load.load(Ordering::Relaxed);
        let (started, in_flight) = ((load >> 32) as u32, load as u32);
        let since = counts.sampled.swap(started, Ordering::Relaxed);
        let held = state.held.load(Ordering::Relaxed);
        let held_peak = state.held_peak.swap(held, Ordering::Relaxed).max(held);
        LoadSample {
            // Wrapping: the count is 32 bits; fewer than 2^32 start between two samples.
            started: started.wrapping_sub(since),
            in_flight: counts
                .in_flight_peak
                .swap(in_flight, Ordering::Relaxed)
                .max(in_flight),
            held: u32::try_from(held_peak).unwrap_or(u32::MAX),
        }
    }

    /// A replica of `function` with room for one more request (at most `concurrency` at once
    /// per replica), holding the request while there is none. The request must already be
    /// [tracked](Autoscaler::track), so the autoscaler counts it as load while it is held.
    pub async fn endpoint(
        &self,
        function: &FunctionRef,
        concurrency: Option<usize>,
    ) -> Result<Endpoint, ActivatorError> {
        let state = self.state(function);
        let limit = concurrency.unwrap_or(usize::MAX).max(1);
        // Sent at once, the request is counted started and in flight in one add.
        let mut changes = match self.pick(function, &state, limit, STARTED | IN_FLIGHT) {
            Pick::Got(endpoint) => return Ok(endpoint),
            Pick::Unknown => return Err(ActivatorError::Gone(function.to_string())),
            Pick::CrashLooping(crash_loop) => {
                return Err(ActivatorError::CrashLooping {
                    function: function.to_string(),
                    crash_loop,
                });
            }
            Pick::AtZero | Pick::Wait => self
                .inner
                .source
                .changes(function)
                .ok_or_else(|| ActivatorError::Gone(function.to_string()))?,
        };
        let buffer = self.inner.config.buffer;
        let held = state.held.fetch_add(1, Ordering::AcqRel);
        if held >= buffer {
            state.held.fetch_sub(1, Ordering::AcqRel);
            return Err(ActivatorError::Full {
                function: function.to_string(),
                limit: buffer,
            });
        }
        let _holding = Holding(&state.held);
        // Held: started now, in flight when a replica takes it.
        state.held_peak.fetch_max(held + 1, Ordering::Relaxed);
        state.counts.count(STARTED);
        let waited = self.inner.config.hold_timeout;
        let deadline = tokio::time::Instant::now() + waited;
        let mut failed_wakes = 0;
        loop {
            // Seen before looking, so a change or a freed slot after the look wakes us.
            changes.borrow_and_update();
            let freed = state.counts.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.pick(function, &state, limit, IN_FLIGHT) {
                Pick::Got(endpoint) => return Ok(endpoint),
                Pick::Unknown => return Err(ActivatorError::Gone(function.to_string())),
                Pick::CrashLooping(crash_loop) => {
                    return Err(ActivatorError::CrashLooping {
                        function: function.to_string(),
                        crash_loop,
                    });
                }
                Pick::AtZero => {
                    // Bounded by the hold timeout like the rest of the wait.
                    let woke =
                        tokio::time::timeout_at(deadline, self.inner.autoscaler.wake(function))
                            .await;
                    let Ok(woke) = woke else {
                        return Err(ActivatorError::NotReady {
                            function: function.to_string(),
                            waited,
                        });
                    };
                    if woke {
                        tracing::debug!(%function, "woken from zero by a request");
                    } else {
                        // At zero, and the wake-up did not take: look again once (someone else
                        // may have just woken it), then give up rather than spin.
                        failed_wakes += 1;
                        if failed_wakes >= 2 {
                            return Err(ActivatorError::ScaledToZero(function.to_string()));
                        }
                        continue;
                    }
                }
                Pick::Wait => {}
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() {
                    return Err(ActivatorError::Gone(function.to_string()));
                },
                () = &mut freed => {}
                () = tokio::time::sleep_until(deadline) => {
                    return Err(ActivatorError::NotReady { function: function.to_string(), waited });
                }
            }
        }
    }

    /// One look at the ready replicas: the least busy with room, round-robin among equals. A
    /// request sent to one is counted with `add` (see [`Counts::count`]).
    fn pick(&self, function: &FunctionRef, state: &FunctionState, limit: usize, add: u64) -> Pick {
        let Some(set) = self.inner.source.ready(function) else {
            return Pick::Unknown;
        };
        if set.ready.is_empty() {
            return match set.crash_loop {
                Some(crash_loop) => Pick::CrashLooping(crash_loop),
                None if set.desired == 0 => Pick::AtZero,
                None => Pick::Wait,
            };
        }
        let n = set.ready.len();
        let start = state.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<(usize, &ReadyReplica)> = (0..n)
            .map(|k| &set.ready[(start + k) % n])
            .map(|r| (r.load.in_flight(), r))
            .filter(|(busy, _)| *busy < limit)
            .collect();
        // Stable: among equally busy replicas the round-robin order stands.
        order.sort_by_key(|(busy, _)| *busy);
        for (_, replica) in order {
            // Counted only if it still has room and is still in rotation.
            if let Some(in_flight) = replica.load.begin(limit) {
                return Pick::Got(Endpoint::new(
                    replica.url.clone(),
                    guard(in_flight, &state.counts, add),
                ));
            }
        }
        Pick::Wait
    }
}

/// Counts the request (`add`), and returns its guard, dropped in order: the request leaves its
/// replica, then its function's count, and a held request is woken.
fn guard(in_flight: InFlight, counts: &Arc<Counts>, add: u64) -> (InFlight, Freed) {
    counts.count(add);
    (in_flight, Freed(counts.clone()))
}
