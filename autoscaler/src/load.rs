//! Load as a gateway sees it: requests in flight per function (held ones included), the most at
//! once since the last look, requests started, and when the last one ended.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::FunctionRef;
use tokio::time::Instant;

/// One function's load at one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observation {
    pub in_flight: usize,
    /// Most in flight at once since the previous look.
    pub peak: usize,
    /// Requests started, ever (a counter; the rate is its growth).
    pub started: u64,
    /// How long nothing has been in flight (zero while anything is).
    pub idle_for: Duration,
}

#[derive(Debug, Default)]
struct Load {
    in_flight: AtomicUsize,
    peak: AtomicUsize,
    started: AtomicU64,
    /// When the last request ended, in ms since the origin.
    last_end_ms: AtomicU64,
}

/// Counts one request as in flight on its function until dropped.
#[derive(Debug)]
pub(crate) struct Tracked {
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

/// Every function's load on this process.
#[derive(Debug)]
pub(crate) struct Loads {
    origin: Instant,
    map: Mutex<HashMap<FunctionRef, Arc<Load>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Loads {
    pub(crate) fn new(origin: Instant) -> Self {
        Self {
            origin,
            map: Mutex::default(),
        }
    }

    fn load(&self, function: &FunctionRef) -> Arc<Load> {
        lock(&self.map)
            .entry(function.clone())
            .or_insert_with(|| {
                // A function is idle from when it is first seen, not from the process's start.
                Arc::new(Load {
                    last_end_ms: AtomicU64::new(ms_since(self.origin)),
                    ..Load::default()
                })
            })
            .clone()
    }

    pub(crate) fn track(&self, function: &FunctionRef) -> Tracked {
        let load = self.load(function);
        let now = load.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        load.peak.fetch_max(now, Ordering::AcqRel);
        load.started.fetch_add(1, Ordering::AcqRel);
        Tracked {
            load,
            origin: self.origin,
        }
    }

    /// Looks at `function`'s load; the peak starts again from what is in flight now.
    pub(crate) fn observe(&self, function: &FunctionRef) -> Observation {
        observe(&self.load(function), self.origin)
    }

    /// Looks at every function's load.
    pub(crate) fn observe_all(&self) -> Vec<(FunctionRef, Observation)> {
        lock(&self.map)
            .iter()
            .map(|(f, load)| (f.clone(), observe(load, self.origin)))
            .collect()
    }

    /// Forgets functions not in `keep` and functions idle for longer than `idle` (`None`:
    /// never for idleness), unless a request still holds their load.
    pub(crate) fn retain(&self, keep: Option<&HashSet<FunctionRef>>, idle: Option<Duration>) {
        let now = ms_since(self.origin);
        lock(&self.map).retain(|f, load| {
            if Arc::strong_count(load) > 1 {
                return true;
            }
            let kept = keep.is_none_or(|k| k.contains(f));
            let fresh = idle.is_none_or(|idle| {
                let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
                load.in_flight.load(Ordering::Acquire) > 0
                    || now.saturating_sub(load.last_end_ms.load(Ordering::Acquire)) < idle_ms
            });
            kept && fresh
        });
    }
}

fn observe(load: &Load, origin: Instant) -> Observation {
    let in_flight = load.in_flight.load(Ordering::Acquire);
    let peak = load.peak.swap(in_flight, Ordering::AcqRel).max(in_flight);
    let idle_for = if in_flight > 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(
            ms_since(origin).saturating_sub(load.last_end_ms.load(Ordering::Acquire)),
        )
    };
    Observation {
        in_flight,
        peak,
        started: load.started.load(Ordering::Acquire),
        idle_for,
    }
}
