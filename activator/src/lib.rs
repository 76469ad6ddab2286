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

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Notified (one waiter at a time) whenever a request on any of its replicas ends.
    freed: Arc<Notify>,
    /// Where the round-robin among equally busy replicas starts next.
    next: AtomicUsize,
}

/// One held request; the count goes down when it is dropped.
struct Holding<'a>(&'a AtomicUsize);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Wakes one held request when a request ends; dropped after the request's [`InFlight`], so
/// the slot is free when the waiter looks.
struct Freed(Arc<Notify>);

impl Drop for Freed {
    fn drop(&mut self) {
        self.0.notify_one();
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
        let mut changes = match self.pick(function, &state, limit) {
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
        if state.held.fetch_add(1, Ordering::AcqRel) >= buffer {
            state.held.fetch_sub(1, Ordering::AcqRel);
            return Err(ActivatorError::Full {
                function: function.to_string(),
                limit: buffer,
            });
        }
        let _holding = Holding(&state.held);
        let waited = self.inner.config.hold_timeout;
        let deadline = tokio::time::Instant::now() + waited;
        let mut failed_wakes = 0;
        loop {
            // Seen before looking, so a change or a freed slot after the look wakes us.
            changes.borrow_and_update();
            let freed = state.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            match self.pick(function, &state, limit) {
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

    /// One look at the ready replicas: the least busy with room, round-robin among equals.
    fn pick(&self, function: &FunctionRef, state: &FunctionState, limit: usize) -> Pick {
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
                    guard(in_flight, state.freed.clone()),
                ));
            }
        }
        Pick::Wait
    }
}

/// Dropped in order: the request leaves its replica, then a held request is woken.
fn guard(in_flight: InFlight, freed: Arc<Notify>) -> (InFlight, Freed) {
    (in_flight, Freed(freed))
}
