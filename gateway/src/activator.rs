//! The activator: holds requests for a function that has no replica with room, wakes it if it
//! is at zero, and lets each request through as soon as a ready replica has room for it.
//!
//! Requests are let through one at a time as slots open (a replica's `com.sluice.concurrency`),
//! to the least busy ready replica, so a crowd held during a cold start is not dropped on the
//! first replica at once. A replica is only ready once the provider's own probe of it has
//! passed. A request that finds a replica with room is not held at all: the activator is only
//! in the path while capacity is short, and there is no mode to flap in and out of.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{Endpoint, FunctionRef, ProviderError};

use crate::AppState;
use crate::error::ApiError;

/// Requests held per function.
#[derive(Debug, Default)]
pub(crate) struct Held(Mutex<HashMap<FunctionRef, Arc<AtomicUsize>>>);

/// One held request; the count goes down when it is dropped.
struct Holding(Arc<AtomicUsize>);

impl Drop for Holding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Held {
    /// Forgets a removed function's count, unless requests are still held for it.
    pub(crate) fn forget(&self, function: &FunctionRef) {
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if held
            .get(function)
            .is_some_and(|n| n.load(Ordering::Acquire) == 0)
        {
            held.remove(function);
        }
    }

    fn hold(&self, function: &FunctionRef, limit: usize) -> Option<Holding> {
        let count = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(function.clone())
            .or_default()
            .clone();
        if count.fetch_add(1, Ordering::AcqRel) >= limit {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Holding(count))
    }
}

/// A replica of `function` with room for one more request, holding the request (up to the
/// gateway's buffer and hold timeout) while there is none. The request must already be
/// [tracked](sluice_autoscaler::Autoscaler::track), so the autoscaler counts it as load.
pub(crate) async fn endpoint(
    state: &AppState,
    function: &FunctionRef,
) -> Result<Endpoint, ApiError> {
    match state.provider.endpoint(function, Duration::ZERO).await {
        Ok(endpoint) => return Ok(endpoint),
        Err(ProviderError::ScaledToZero(_) | ProviderError::NoReadyReplica { .. }) => {}
        Err(other) => return Err(other.into()),
    }
    let limit = state.config.activator_buffer;
    let _holding = state
        .held
        .hold(function, limit)
        .ok_or_else(|| ApiError::ActivatorFull {
            function: function.to_string(),
            limit,
        })?;
    let deadline = tokio::time::Instant::now() + state.config.readiness_wait;
    let mut failed_wakes = 0;
    loop {
        let woke = state.autoscaler.wake(function).await;
        if woke {
            tracing::debug!(%function, "woken from zero by a request");
        }
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        match state.provider.endpoint(function, wait).await {
            Err(ProviderError::ScaledToZero(f)) => {
                // Scaled to zero again while held (by hand, or through the registry): wake it
                // again, while time is left and waking can help.
                let at_zero = state
                    .provider
                    .replicas(function)
                    .is_some_and(|r| r.desired == 0);
                if wait.is_zero() {
                    return Err(ApiError::NotReady {
                        function: f,
                        waited: state.config.readiness_wait,
                    });
                }
                if at_zero && !woke {
                    // Twice at zero with no wake-up taking: it cannot be woken; do not spin.
                    failed_wakes += 1;
                    if failed_wakes >= 2 {
                        return Err(ApiError::ScaledToZero(f));
                    }
                }
            }
            other => return Ok(other?),
        }
    }
}
