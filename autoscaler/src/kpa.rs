//! The scaling decision, after Knative's KPA, as a pure function of (samples, replicas, config).
//!
//! - **Stable mode**: the average load over the stable window (60 s) divided by what one replica
//!   should carry (`target × utilization`), rounded up. The load is the function's
//!   [`Metric`]: requests started per second, requests in flight, or millicores of CPU, each
//!   summed over its replicas.
//! - **Panic mode**: when the average over the panic window (6 s) asks for at least
//!   `panic_threshold` (200 %) of the current replicas, that count is used instead, and the
//!   function is never scaled down until the load has stayed below the threshold for a whole
//!   stable window.
//! - **Rates**: one decision multiplies replicas by at most `max_scale_up_rate` and divides them
//!   by at most `max_scale_down_rate`.
//! - **Bounds**: never below `min` (at least one) nor above `max`; to zero only when the function
//!   allows it and nothing came in for `zero_after`.
//!
//! Time is a `Duration` since any fixed origin, so tests drive the clock by hand.

use std::time::Duration;

pub use sluice_core::config::{Metric, ScaleConfig};

/// The load seen in one second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sample {
    pub at: Duration,
    /// Most requests in flight at once during the second (held ones included).
    pub concurrency: f64,
    /// Requests that started during the second.
    pub requests: f64,
    /// Millicores used by all the function's replicas since the last sample, where the
    /// orchestrator measures it (zero where it does not; only read for [`Metric::Cpu`]).
    pub cpu: f64,
}

/// What a decision remembers for the next one.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct KpaState {
    /// Panic mode lasts until then, unless the load panics again.
    pub panic_until: Option<Duration>,
}

/// A decision and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u32,
    pub panic: bool,
    pub reason: String,
}

fn average(samples: &[Sample], since: Duration, metric: Metric) -> f64 {
    let values: Vec<f64> = samples
        .iter()
        .filter(|s| s.at > since)
        .map(|s| match metric {
            Metric::Concurrency => s.concurrency,
            Metric::Rps => s.requests,
            Metric::Cpu => s.cpu,
        })
        .collect();
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

fn replicas_for(load: f64, per_replica: f64) -> u32 {
    let n = (load / per_replica).ceil();
    if n >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        n.max(0.0) as u32
    }
}

/// Decides how many replicas a function should have.
///
/// `samples` are the last seconds' loads, oldest first (older than the stable window are
/// ignored); `current` is how many replicas it has; `idle_for` is how long since the last
/// request ended with none in flight (zero while any is).
pub fn decide(
    config: &ScaleConfig,
    samples: &[Sample],
    now: Duration,
    current: u32,
    idle_for: Duration,
    state: KpaState,
) -> (Decision, KpaState) {
    decide_explained(config, samples, now, current, idle_for, state, true)
}

/// [`decide`], with the decision's reason written out only if `explain` (it is text, and the
/// autoscaler decides for every function every round, mostly without showing it).
pub fn decide_explained(
    config: &ScaleConfig,
    samples: &[Sample],
    now: Duration,
    current: u32,
    idle_for: Duration,
    state: KpaState,
    explain: bool,
) -> (Decision, KpaState) {
    let say = |text: std::fmt::Arguments<'_>| {
        if explain {
            text.to_string()
        } else {
            String::new()
        }
    };
    let per_replica = config.per_replica();
    let unit = match config.metric {
        Metric::Concurrency => "in flight",
        Metric::Rps => "req/s",
        Metric::Cpu => "millicores",
    };
    let stable = average(
        samples,
        now.saturating_sub(config.stable_window),
        config.metric,
    );
    let panic_load = average(
        samples,
        now.saturating_sub(config.panic_window),
        config.metric,
    );
    let want_stable = replicas_for(stable, per_replica);
    let want_panic = replicas_for(panic_load, per_replica);

    let panics_now = f64::from(want_panic) / f64::from(current.max(1)) >= config.panic_threshold;
    let panic_until = if panics_now {
        Some(now + config.stable_window)
    } else {
        state.panic_until.filter(|until| now < *until)
    };
    let panic = panic_until.is_some();
    let (mut desired, mut reason) = if panic {
        // In panic the function never shrinks.
        let d = want_panic.max(want_stable).max(current);
        (
            d,
            say(format_args!(
                "panic: {panic_load:.1} {unit} over {:?} wants {want_panic} at {per_replica:.1} each",
                config.panic_window
            )),
        )
    } else {
        (
            want_stable,
            say(format_args!(
                "stable: {stable:.1} {unit} over {:?} wants {want_stable} at {per_replica:.1} each",
                config.stable_window
            )),
        )
    };

    let up_limit = (f64::from(current.max(1)) * config.max_scale_up_rate).ceil();
    if f64::from(desired) > up_limit {
        desired = up_limit as u32;
        reason.push_str(&say(format_args!(
            "; held to {desired} by the scale-up rate"
        )));
    }
    let down_limit = (f64::from(current) / config.max_scale_down_rate).floor() as u32;
    if desired < down_limit {
        desired = down_limit;
        reason.push_str(&say(format_args!(
            "; held to {desired} by the scale-down rate"
        )));
    }

    let idle = config.zero && idle_for >= config.zero_after && !panic;
    if idle {
        return (
            Decision {
                desired: 0,
                panic: false,
                reason: say(format_args!(
                    "idle for {idle_for:?} (zero after {:?})",
                    config.zero_after
                )),
            },
            KpaState { panic_until: None },
        );
    }
    let floor = config.min.max(1).min(config.max);
    if desired < floor {
        desired = floor;
        reason.push_str(&say(format_args!("; at least {floor} (min)")));
    }
    if desired > config.max {
        desired = config.max;
        reason.push_str(&say(format_args!("; at most {} (max)", config.max)));
    }
    (
        Decision {
            desired,
            panic,
            reason,
        },
        KpaState { panic_until },
    )
}
