//! The scaling decision, after Knative's KPA, as a pure function of (samples, replicas, config).
//!
//! - **Stable mode**: the average load over the stable window (60 s) divided by what one replica
//!   should carry (`target × utilization`), rounded up.
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

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_core::FunctionDeployment;
use sluice_core::retry::parse_go_duration;

pub const MIN_LABEL: &str = "com.openfaas.scale.min";
pub const MAX_LABEL: &str = "com.openfaas.scale.max";
pub const TARGET_LABEL: &str = "com.openfaas.scale.target";
pub const TYPE_LABEL: &str = "com.openfaas.scale.type";
pub const PROPORTION_LABEL: &str = "com.openfaas.scale.target-proportion";
pub const ZERO_LABEL: &str = "com.openfaas.scale.zero";
pub const ZERO_DURATION_LABEL: &str = "com.openfaas.scale.zero-duration";
/// Sluice's own: the stable window (the panic window is a tenth of it).
pub const WINDOW_LABEL: &str = "com.sluice.scale.window";
/// Sluice's own: requests one replica is sent at once (see the provider).
pub const CONCURRENCY_LABEL: &str = "com.sluice.concurrency";

/// What load is measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Requests in flight (held ones included): `com.openfaas.scale.type: capacity`, the default.
    Concurrency,
    /// Requests per second: `com.openfaas.scale.type: rps`.
    Rps,
}

/// How one function scales.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleConfig {
    pub min: u32,
    pub max: u32,
    pub metric: Metric,
    /// Load one replica is meant to carry.
    pub target: f64,
    /// Share of `target` aimed at, in (0, 1].
    pub utilization: f64,
    /// Whether the function may go to zero replicas when idle, and after how long.
    pub zero: bool,
    pub zero_after: Duration,
    pub stable_window: Duration,
    pub panic_window: Duration,
    pub panic_threshold: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        Self {
            min: 1,
            max: 20,
            metric: Metric::Concurrency,
            target: 50.0,
            utilization: 1.0,
            zero: false,
            zero_after: Duration::from_secs(15 * 60),
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
        }
    }
}

impl ScaleConfig {
    /// Reads the OpenFaaS scaling labels; `max` defaults to `default_max` and is held to `limit`.
    pub fn from_labels(
        labels: Option<&BTreeMap<String, String>>,
        default_max: u32,
        limit: u32,
    ) -> Result<Self, String> {
        let get = |key: &str| labels.and_then(|l| l.get(key)).map(|v| v.trim());
        let whole = |key: &str| -> Result<Option<u32>, String> {
            get(key)
                .map(|v| {
                    v.parse::<u32>()
                        .map_err(|_| format!("label {key} must be a whole number, got {v:?}"))
                })
                .transpose()
        };
        let positive = |key: &str| -> Result<Option<f64>, String> {
            get(key)
                .map(|v| match v.parse::<f64>() {
                    Ok(x) if x > 0.0 && x.is_finite() => Ok(x),
                    _ => Err(format!(
                        "label {key} must be a number above zero, got {v:?}"
                    )),
                })
                .transpose()
        };
        let duration = |key: &str| -> Result<Option<Duration>, String> {
            get(key)
                .map(|v| {
                    parse_go_duration(v).ok_or_else(|| {
                        format!("label {key} must be a duration such as 30s or 15m, got {v:?}")
                    })
                })
                .transpose()
        };
        let mut c = Self {
            max: whole(MAX_LABEL)?.unwrap_or(default_max).min(limit),
            min: whole(MIN_LABEL)?.unwrap_or(1).min(limit).max(1),
            ..Self::default()
        };
        if c.min > c.max {
            return Err(format!(
                "label {MIN_LABEL} ({}) is above {MAX_LABEL} ({})",
                c.min, c.max
            ));
        }
        c.metric = match get(TYPE_LABEL) {
            None | Some("capacity") => Metric::Concurrency,
            Some("rps") => Metric::Rps,
            Some(other) => {
                return Err(format!(
                    "label {TYPE_LABEL} must be capacity or rps, got {other:?}"
                ));
            }
        };
        if let Some(t) = positive(TARGET_LABEL)? {
            c.target = t;
        }
        if let Some(p) = positive(PROPORTION_LABEL)? {
            if p > 1.0 {
                return Err(format!(
                    "label {PROPORTION_LABEL} must be at most 1, got {p}"
                ));
            }
            c.utilization = p;
        }
        c.zero = match get(ZERO_LABEL) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(format!(
                    "label {ZERO_LABEL} must be true or false, got {other:?}"
                ));
            }
        };
        if let Some(d) = duration(ZERO_DURATION_LABEL)? {
            if d < Duration::from_secs(1) {
                return Err(format!(
                    "label {ZERO_DURATION_LABEL} must be at least 1s, got {d:?}"
                ));
            }
            c.zero_after = d;
        }
        if let Some(w) = duration(WINDOW_LABEL)? {
            if w < Duration::from_secs(2) {
                return Err(format!(
                    "label {WINDOW_LABEL} must be at least 2s, got {w:?}"
                ));
            }
            c.stable_window = w;
            c.panic_window = (w / 10).max(Duration::from_secs(1));
        }
        Ok(c)
    }

    /// The labels of a deployment, with the concurrency target held to what one replica is
    /// allowed at once (label `com.sluice.concurrency`, else an explicit `max_inflight`): a
    /// replica cannot carry more than it is sent.
    pub fn for_deployment(
        d: &FunctionDeployment,
        default_max: u32,
        limit: u32,
    ) -> Result<Self, String> {
        let mut c = Self::from_labels(d.labels.as_ref(), default_max, limit)?;
        let cap = d
            .label(CONCURRENCY_LABEL)
            .or_else(|| d.env_vars.get("max_inflight").map(String::as_str))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|n| *n > 0);
        if let (Some(cap), Metric::Concurrency) = (cap, c.metric) {
            c.target = c.target.min(f64::from(cap));
        }
        Ok(c)
    }

    /// Load one replica is aimed at.
    fn per_replica(&self) -> f64 {
        (self.target * self.utilization).max(f64::MIN_POSITIVE)
    }
}

/// The load seen in one second.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: Duration,
    /// Most requests in flight at once during the second (held ones included).
    pub concurrency: f64,
    /// Requests that started during the second.
    pub requests: f64,
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
    let per_replica = config.per_replica();
    let unit = match config.metric {
        Metric::Concurrency => "in flight",
        Metric::Rps => "req/s",
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
            format!(
                "panic: {panic_load:.1} {unit} over {:?} wants {want_panic} at {per_replica:.1} each",
                config.panic_window
            ),
        )
    } else {
        (
            want_stable,
            format!(
                "stable: {stable:.1} {unit} over {:?} wants {want_stable} at {per_replica:.1} each",
                config.stable_window
            ),
        )
    };

    let up_limit = (f64::from(current.max(1)) * config.max_scale_up_rate).ceil();
    if f64::from(desired) > up_limit {
        desired = up_limit as u32;
        reason.push_str(&format!("; held to {desired} by the scale-up rate"));
    }
    let down_limit = (f64::from(current) / config.max_scale_down_rate).floor() as u32;
    if desired < down_limit {
        desired = down_limit;
        reason.push_str(&format!("; held to {desired} by the scale-down rate"));
    }

    let idle = config.zero && idle_for >= config.zero_after && !panic;
    if idle {
        return (
            Decision {
                desired: 0,
                panic: false,
                reason: format!("idle for {idle_for:?} (zero after {:?})", config.zero_after),
            },
            KpaState { panic_until: None },
        );
    }
    let floor = config.min.max(1).min(config.max);
    if desired < floor {
        desired = floor;
        reason.push_str(&format!("; at least {floor} (min)"));
    }
    if desired > config.max {
        desired = config.max;
        reason.push_str(&format!("; at most {} (max)", config.max));
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
