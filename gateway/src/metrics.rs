//! `GET /metrics`: Prometheus text exposition of OpenFaaS's gateway metrics, so existing
//! dashboards and alerts keep working.
//!
//! - `gateway_function_invocation_total{function_name,code}`: sync invocations (the queue
//!   worker's included) by status code, the platform's own errors included;
//! - `gateway_functions_seconds{function_name,code}`: their duration up to the response headers,
//!   a histogram;
//! - `gateway_service_count{function_name}`: replicas;
//! - Sluice's own `sluice_function_ready_replicas` and `sluice_function_target_replicas`;
//! - where the autoscaler decides in this process: `autoscaler_ticks_total`, and the last
//!   round's `autoscaler_last_tick_seconds` and `autoscaler_last_tick_functions`.
//!
//! `function_name` is `<name>.<namespace>`, as recent OpenFaaS gateways label it.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use sluice_core::FunctionRef;

use crate::AppState;

/// Prometheus's default buckets, as OpenFaaS's gateway uses them.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

#[derive(Debug, Default, Clone)]
struct Series {
    count: u64,
    sum: f64,
    /// Observations at or below each of [`BUCKETS`].
    buckets: [u64; BUCKETS.len()],
    /// When the last one was made (milliseconds since the epoch), for the portal.
    last_at: i64,
}

/// Invocation counts and durations, by function and status code. The label sets are bounded:
/// deployed functions times the status codes they answered with. Keyed by the function itself,
/// so recording a call (every sync call does) allocates nothing once its series exists.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    series: Mutex<HashMap<FunctionRef, BTreeMap<u16, Series>>>,
}

impl Metrics {
    pub(crate) fn observe(&self, function: &FunctionRef, code: u16, took: Duration) {
        // The clock is read before the lock is taken, so no call waits on another's clock read.
        let now = sluice_core::Timestamp::now().as_millis();
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        if !series.contains_key(function) {
            series.insert(function.clone(), BTreeMap::new());
        }
        let Some(codes) = series.get_mut(function) else {
            return;
        };
        let s = codes.entry(code).or_default();
        let secs = took.as_secs_f64();
        s.count += 1;
        s.sum += secs;
        s.last_at = now;
        for (bucket, bound) in s.buckets.iter_mut().zip(BUCKETS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
    }

    /// Invocations of `function` by any status code, as OpenFaaS's `invocationCount` is.
    pub(crate) fn invocations(&self, function: &FunctionRef) -> u64 {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(function)
            .map_or(0, |codes| codes.values().map(|s| s.count).sum())
    }

    /// What the portal shows of `function`'s calls: how many, how many the function or the
    /// platform answered with a 5xx, and when the last was answered.
    pub(crate) fn summary(&self, function: &FunctionRef) -> CallSummary {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let Some(codes) = series.get(function) else {
            return CallSummary::default();
        };
        CallSummary {
            invocations: codes.values().map(|s| s.count).sum(),
            errors: codes
                .iter()
                .filter(|(code, _)| **code >= 500)
                .map(|(_, s)| s.count)
                .sum(),
            last_at: codes
                .values()
                .map(|s| s.last_at)
                .max()
                .filter(|at| *at > 0)
                .map(sluice_core::Timestamp::from_millis),
        }
    }

    /// Drops the series of a removed function.
    pub(crate) fn forget(&self, function: &FunctionRef) {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(function);
    }

    /// Every series, by label and status code, in order.
    fn snapshot(&self) -> BTreeMap<(String, u16), Series> {
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .flat_map(|(function, codes)| {
                codes
                    .iter()
                    .map(|(code, s)| ((label(function), *code), s.clone()))
            })
            .collect()
    }
}

/// A function's calls in short (see [`Metrics::summary`]).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CallSummary {
    pub(crate) invocations: u64,
    pub(crate) errors: u64,
    pub(crate) last_at: Option<sluice_core::Timestamp>,
}

fn label(function: &FunctionRef) -> String {
    format!("{}.{}", function.name, function.namespace)
}

pub(crate) async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let series = state.metrics.snapshot();
    let mut out = String::new();
    out.push_str("# HELP gateway_function_invocation_total Function invocations by status code.\n");
    out.push_str("# TYPE gateway_function_invocation_total counter\n");
    for ((function, code), s) in &series {
        let _ = writeln!(
            out,
            "gateway_function_invocation_total{{function_name=\"{function}\",code=\"{code}\"}} {}",
            s.count
        );
    }
    out.push_str(
        "# HELP gateway_functions_seconds Function invocation time, to the response headers.\n",
    );
    out.push_str("# TYPE gateway_functions_seconds histogram\n");
    for ((function, code), s) in &series {
        let labels = format!("function_name=\"{function}\",code=\"{code}\"");
        for (bound, n) in BUCKETS.iter().zip(s.buckets) {
            let _ = writeln!(
                out,
                "gateway_functions_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "gateway_functions_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
            s.count
        );
        let _ = writeln!(out, "gateway_functions_seconds_sum{{{labels}}} {}", s.sum);
        let _ = writeln!(
            out,
            "gateway_functions_seconds_count{{{labels}}} {}",
            s.count
        );
    }
    let mut functions = state.orchestrator.functions();
    functions.sort();
    let replicas: Vec<_> = functions
        .iter()
        .filter_map(|f| state.orchestrator.replicas(f).map(|r| (f, r)))
        .collect();
    let per_function = |rows: Vec<(&FunctionRef, u32)>| -> Vec<(String, u32)> {
        rows.into_iter().map(|(f, n)| (label(f), n)).collect()
    };
    gauge(
        &mut out,
        "gateway_service_count",
        "Replicas of each function.",
        per_function(replicas.iter().map(|(f, r)| (*f, r.desired)).collect()),
    );
    gauge(
        &mut out,
        "sluice_function_ready_replicas",
        "Replicas that passed their readiness probe.",
        per_function(replicas.iter().map(|(f, r)| (*f, r.ready)).collect()),
    );
    gauge(
        &mut out,
        "sluice_function_target_replicas",
        "The autoscaler's last decision.",
        per_function(
            replicas
                .iter()
                .filter_map(|(f, _)| Some((*f, state.autoscaler.status(f)?.target)))
                .collect(),
        ),
    );
    if let Some(tick) = state.autoscaler.last_tick() {
        let _ = write!(
            out,
            "# HELP autoscaler_ticks_total Rounds the autoscaler made over every function.\n\
             # TYPE autoscaler_ticks_total counter\n\
             autoscaler_ticks_total {}\n\
             # HELP autoscaler_last_tick_seconds How long the last round took.\n\
             # TYPE autoscaler_last_tick_seconds gauge\n\
             autoscaler_last_tick_seconds {}\n\
             # HELP autoscaler_last_tick_functions Functions the last round decided for.\n\
             # TYPE autoscaler_last_tick_functions gauge\n\
             autoscaler_last_tick_functions {}\n",
            tick.ticks,
            tick.took.as_secs_f64(),
            tick.functions
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

/// Writes one gauge with a value per function.
fn gauge(out: &mut String, name: &str, help: &str, values: Vec<(String, u32)>) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (function, value) in values {
        let _ = writeln!(out, "{name}{{function_name=\"{function}\"}} {value}");
    }
}
