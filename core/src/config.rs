//! A function's configuration, read once from its deployment's labels, annotations and
//! environment: how it scales, how its async calls are retried and queued, how many requests a
//! replica takes, how it is run and probed, and who may call it.
//!
//! Every component reads these settings from [`FunctionConfig`], never from the labels
//! themselves, so one label means the same thing to the gateway, the activator, the autoscaler,
//! the queue worker and every provider. It is parsed when a deployment is checked and again when
//! a stored one is read ([`crate::FunctionSpec::new`]); it depends on nothing but the deployment.

use std::num::NonZeroU32;
use std::time::Duration;

use crate::api::FunctionDeployment;
use crate::call::{QUEUE_ANNOTATION, QueueName};
use crate::retry::{RetryPolicy, parse_go_duration};

pub const SCALE_MIN_LABEL: &str = "com.openfaas.scale.min";
pub const SCALE_MAX_LABEL: &str = "com.openfaas.scale.max";
pub const SCALE_TARGET_LABEL: &str = "com.openfaas.scale.target";
pub const SCALE_TYPE_LABEL: &str = "com.openfaas.scale.type";
pub const SCALE_PROPORTION_LABEL: &str = "com.openfaas.scale.target-proportion";
pub const SCALE_ZERO_LABEL: &str = "com.openfaas.scale.zero";
pub const SCALE_ZERO_DURATION_LABEL: &str = "com.openfaas.scale.zero-duration";
/// Sluice's own: the stable window (the panic window is a tenth of it).
pub const SCALE_WINDOW_LABEL: &str = "com.sluice.scale.window";
/// Sluice's own: requests one replica is sent at once; more wait in the activator.
pub const CONCURRENCY_LABEL: &str = "com.sluice.concurrency";
/// Sluice's own: `required` makes the function's routes need the gateway's credentials.
pub const AUTH_LABEL: &str = "com.sluice.auth";
/// Sluice's own: requests per second to the function on each gateway (sync calls and async
/// submissions together; bursts up to the same number).
pub const RATE_LIMIT_LABEL: &str = "com.sluice.rate-limit";
/// Sluice's own: the path a replica is probed on for readiness (default `/_/health`); any answer
/// below 500 means ready.
pub const READINESS_PATH_ANNOTATION: &str = "com.sluice.readiness-path";

/// A function's `max` replicas when it sets no `com.openfaas.scale.max` (OpenFaaS's default).
pub const DEFAULT_MAX_REPLICAS: u32 = 20;
/// Requests per second one replica is meant to carry when a function sets no
/// `com.openfaas.scale.target` and scales on its request rate (the default): OpenFaaS CE adds
/// replicas once a function takes more than 5 requests a second.
pub const DEFAULT_RPS_TARGET: f64 = 5.0;
/// Requests in flight one replica is meant to carry under `com.openfaas.scale.type: capacity`
/// when no target is set (OpenFaaS Pro's default target).
pub const DEFAULT_CAPACITY_TARGET: f64 = 50.0;
/// Millicores one replica is meant to use under `com.openfaas.scale.type: cpu` when no target is
/// set: half a core. (OpenFaaS Pro documents one default target, 50, for every type; as a CPU
/// target that would scale a function that is merely awake.)
pub const DEFAULT_CPU_TARGET: f64 = 500.0;
/// Share of the target aimed at when `com.openfaas.scale.target-proportion` is not set
/// (OpenFaaS Pro's default).
pub const DEFAULT_TARGET_PROPORTION: f64 = 0.9;
/// Highest `com.openfaas.scale.target` a label may set.
pub const MAX_SCALE_TARGET: f64 = 100_000.0;
/// The stable window of a function that sets no `com.sluice.scale.window`, unless the platform
/// is given another (`--scale-window`).
pub const DEFAULT_STABLE_WINDOW: Duration = Duration::from_secs(60);
/// Shortest stable window a label or the platform may set.
pub const MIN_STABLE_WINDOW: Duration = Duration::from_secs(2);
/// Highest rate limit a label may set.
pub const MAX_RATE_LIMIT: u32 = 1_000_000;
/// Classic mode's cap on concurrent runs per replica when `max_inflight` is not set, so a burst
/// cannot fork without bound.
pub const DEFAULT_MAX_INFLIGHT: usize = 100;
const DEFAULT_READINESS_PATH: &str = "/_/health";
/// Sluice's own: the OpenFaaS template (`lang:` in stack.yml) whose server runs the function's
/// handler; the function's command is then the template's runner, in HTTP mode.
pub const LANG_ANNOTATION: &str = "com.sluice.lang";
/// Sluice's own: the absolute directory a function's command runs in on the machine that runs
/// it as a local process (`sluice deploy -f` sets it from stack.yml's `handler:`); without it,
/// the command runs in Sluice's own directory.
pub const WORKDIR_ANNOTATION: &str = "com.sluice.workdir";

/// A label, annotation or environment setting the deployment got wrong, named in the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// How a function's replicas serve requests, chosen the way OpenFaaS's of-watchdog chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fork `fprocess` per request, the body on stdin, the response from stdout (classic
    /// watchdog; `mode` unset, `classic`, `streaming` or `serializing`).
    Classic,
    /// Run `fprocess` once; it serves HTTP on `$PORT` (`mode: http`).
    Http,
}

/// What load is measured in (`com.openfaas.scale.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Requests in flight (held ones included), the most at once in each second:
    /// `com.openfaas.scale.type: capacity`.
    Concurrency,
    /// Requests started per second: `com.openfaas.scale.type: rps`, the default.
    Rps,
    /// CPU used by all the function's replicas, in millicores (a thousandth of a core), where
    /// the orchestrator measures it (`Orchestrator::usage`): `com.openfaas.scale.type: cpu`.
    Cpu,
}

/// How one function scales.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleConfig {
    pub min: u32,
    pub max: u32,
    pub metric: Metric,
    /// Load one replica is meant to carry (`com.openfaas.scale.target`).
    pub target: f64,
    /// Share of `target` aimed at, in (0, 1] (`com.openfaas.scale.target-proportion`).
    pub utilization: f64,
    /// Whether the function may go to zero replicas when idle, and after how long.
    pub zero: bool,
    pub zero_after: Duration,
    pub stable_window: Duration,
    pub panic_window: Duration,
    /// Whether the function chose its windows (`com.sluice.scale.window`); if not, the
    /// platform's default applies ([`ScaleConfig::with_default_window`]).
    pub own_window: bool,
    pub panic_threshold: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
}

impl Default for ScaleConfig {
    fn default() -> Self {
        Self {
            min: 1,
            max: DEFAULT_MAX_REPLICAS,
            metric: Metric::Rps,
            target: DEFAULT_RPS_TARGET,
            utilization: DEFAULT_TARGET_PROPORTION,
            zero: false,
            zero_after: Duration::from_secs(15 * 60),
            stable_window: DEFAULT_STABLE_WINDOW,
            panic_window: panic_window(DEFAULT_STABLE_WINDOW),
            own_window: false,
            panic_threshold: 2.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
        }
    }
}

impl ScaleConfig {
    /// The same, with `min` and `max` held to a platform's ceiling (`--max-replicas`).
    pub fn within(&self, limit: u32) -> Self {
        Self {
            min: self.min.min(limit).max(1),
            max: self.max.min(limit).max(1),
            ..self.clone()
        }
    }

    /// The same, with the platform's stable window (and its panic window, a tenth of it)
    /// unless the function chose its own.
    pub fn with_default_window(mut self, window: Duration) -> Self {
        if !self.own_window {
            self.stable_window = window;
            self.panic_window = panic_window(window);
        }
        self
    }

    /// Load one replica is aimed at.
    pub fn per_replica(&self) -> f64 {
        (self.target * self.utilization).max(f64::MIN_POSITIVE)
    }
}

/// The panic window that goes with a stable window: a tenth of it, at least a second.
pub fn panic_window(stable: Duration) -> Duration {
    (stable / 10).max(Duration::from_secs(1))
}

/// Everything Sluice reads from a deployment besides its name, image and command.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionConfig {
    pub scale: ScaleConfig,
    /// How failed async calls are retried (`com.openfaas.retry.*` annotations).
    pub retry: RetryPolicy,
    /// The named queue its async calls go to (`com.openfaas.queue`); `None`: the platform's
    /// default queue.
    pub queue: Option<QueueName>,
    /// Requests one replica is sent at once (`com.sluice.concurrency`, else an explicit
    /// `max_inflight`); `None`: no limit.
    pub concurrency: Option<usize>,
    pub mode: Mode,
    /// Classic mode: how long one run of the command may take (`exec_timeout`); `None`: the
    /// platform's function timeout.
    pub exec_timeout: Option<Duration>,
    /// Classic mode: runs at once per replica (`max_inflight`; 0 = no limit).
    pub max_inflight: usize,
    pub readiness_path: String,
    /// Its routes need the gateway's credentials (`com.sluice.auth: required`).
    pub auth_required: bool,
    /// Its requests per second on each gateway (`com.sluice.rate-limit`).
    pub rate_limit: Option<NonZeroU32>,
    /// Bytes of memory each replica may take (`limits.memory`, a Kubernetes quantity).
    pub memory_limit: Option<u64>,
}

impl Default for FunctionConfig {
    fn default() -> Self {
        Self {
            scale: ScaleConfig::default(),
            retry: RetryPolicy::default(),
            queue: None,
            // Classic mode's replicas run at most `max_inflight` at once.
            concurrency: Some(DEFAULT_MAX_INFLIGHT),
            mode: Mode::Classic,
            exec_timeout: None,
            max_inflight: DEFAULT_MAX_INFLIGHT,
            readiness_path: DEFAULT_READINESS_PATH.to_owned(),
            auth_required: false,
            rate_limit: None,
            memory_limit: None,
        }
    }
}

fn bad(msg: String) -> ConfigError {
    ConfigError(msg)
}

impl FunctionConfig {
    /// Reads a deployment's settings, with defaults for what it leaves out, or says which
    /// setting is wrong.
    pub fn from_deployment(d: &FunctionDeployment) -> Result<Self, ConfigError> {
        let mut c = Self {
            retry: RetryPolicy::from_annotations(d.annotations.as_ref())
                .map_err(|e| bad(e.to_string()))?,
            queue: QueueName::from_annotations(d.annotations.as_ref())
                .map_err(|e| bad(format!("annotation {QUEUE_ANNOTATION}: {e}")))?,
            ..Self::default()
        };
        let template = d.annotation(LANG_ANNOTATION).is_some();
        c.mode = match d.env_vars.get("mode").map(|m| m.trim()) {
            Some("http") => Mode::Http,
            // A template's runner is a long-running server.
            None | Some("") if template => Mode::Http,
            None | Some("" | "classic" | "streaming" | "serializing") => Mode::Classic,
            Some(other) => {
                return Err(bad(format!(
                    "envVars.mode {other:?} is not supported: use \"http\" for a long-running \
                     server, or leave it unset for fork-per-request"
                )));
            }
        };
        if let Some(v) = d.env_vars.get("exec_timeout") {
            c.exec_timeout = Some(parse_go_duration(v).filter(|d| !d.is_zero()).ok_or_else(
                || {
                    bad(format!(
                        "envVars.exec_timeout {v:?} is not a duration such as \"30s\" or \"2m\""
                    ))
                },
            )?);
        }
        let explicit_inflight =
            match d.env_vars.get("max_inflight") {
                None => None,
                Some(v) => Some(v.trim().parse::<usize>().map_err(|_| {
                    bad(format!("envVars.max_inflight {v:?} is not a whole number"))
                })?),
            };
        c.max_inflight = explicit_inflight.unwrap_or(DEFAULT_MAX_INFLIGHT);
        // A classic replica refuses runs beyond its max_inflight itself (429): the activator
        // holds requests at that number instead, whatever else is asked.
        let replica_cap = (c.mode == Mode::Classic && c.max_inflight > 0).then_some(c.max_inflight);
        c.concurrency = match d.label(CONCURRENCY_LABEL) {
            Some(v) => {
                let n = v
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        bad(format!(
                            "label {CONCURRENCY_LABEL} {v:?} is not a whole number above zero"
                        ))
                    })?;
                Some(replica_cap.map_or(n, |cap| n.min(cap)))
            }
            None => explicit_inflight.filter(|n| *n > 0).or(replica_cap),
        };
        let readiness_path = d
            .annotation(READINESS_PATH_ANNOTATION)
            .unwrap_or(DEFAULT_READINESS_PATH);
        if !readiness_path.starts_with('/') || readiness_path.chars().any(char::is_whitespace) {
            return Err(bad(format!(
                "annotation {READINESS_PATH_ANNOTATION} {readiness_path:?} must be a path \
                 starting with '/'"
            )));
        }
        c.readiness_path = readiness_path.to_owned();
        c.auth_required = match d.label(AUTH_LABEL).map(str::trim) {
            None | Some("" | "none") => false,
            Some("required") => true,
            Some(other) => {
                return Err(bad(format!(
                    "label {AUTH_LABEL} must be \"required\" or \"none\", got {other:?}"
                )));
            }
        };
        c.rate_limit = d
            .label(RATE_LIMIT_LABEL)
            .map(|v| {
                v.trim()
                    .parse::<u32>()
                    .ok()
                    .and_then(NonZeroU32::new)
                    .filter(|n| n.get() <= MAX_RATE_LIMIT)
                    .ok_or_else(|| {
                        bad(format!(
                            "label {RATE_LIMIT_LABEL} must be a number of requests per second \
                             from 1 to {MAX_RATE_LIMIT}, got {v:?}"
                        ))
                    })
            })
            .transpose()?;
        c.memory_limit = match d.limits.as_ref().map(|l| l.memory.trim()) {
            None | Some("") => None,
            Some(q) => Some(
                parse_quantity(q)
                    .filter(|&n| n >= MIN_MEMORY_LIMIT)
                    .ok_or_else(|| {
                        bad(format!(
                            "limits.memory {q:?} is not an amount of memory of at least 1Mi, such \
                             as \"128Mi\" or \"1Gi\" (a Kubernetes quantity)"
                        ))
                    })?,
            ),
        };
        c.scale = scale_config(d, c.concurrency)?;
        Ok(c)
    }
}

/// The least `limits.memory` taken: less is a unit mistake (`128` for `128Mi`).
const MIN_MEMORY_LIMIT: u64 = 1024 * 1024;

/// A Kubernetes quantity of bytes (`128Mi`, `1G`, `1.5Gi`, `500000`), if it is one.
pub fn parse_quantity(q: &str) -> Option<u64> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "Pi" => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "Ei" => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    if number.is_empty() || number.starts_with('.') || number.matches('.').count() > 1 {
        return None;
    }
    let bytes = number.parse::<f64>().ok()? * multiplier;
    (bytes.is_finite() && bytes < u64::MAX as f64).then(|| bytes.ceil() as u64)
}

/// The OpenFaaS scaling labels, with the concurrency target held to what one replica is sent at
/// once: a replica cannot carry more than it is given.
fn scale_config(
    d: &FunctionDeployment,
    concurrency: Option<usize>,
) -> Result<ScaleConfig, ConfigError> {
    let get = |key: &str| d.label(key).map(str::trim);
    let whole = |key: &str| -> Result<Option<u32>, ConfigError> {
        get(key)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| bad(format!("label {key} must be a whole number, got {v:?}")))
            })
            .transpose()
    };
    let duration = |key: &str| -> Result<Option<Duration>, ConfigError> {
        get(key)
            .map(|v| {
                parse_go_duration(v).ok_or_else(|| {
                    bad(format!(
                        "label {key} must be a duration such as 30s or 15m, got {v:?}"
                    ))
                })
            })
            .transpose()
    };
    let mut c = ScaleConfig {
        max: whole(SCALE_MAX_LABEL)?.unwrap_or(DEFAULT_MAX_REPLICAS),
        min: whole(SCALE_MIN_LABEL)?.unwrap_or(1).max(1),
        ..ScaleConfig::default()
    };
    if c.max == 0 {
        return Err(bad(format!("label {SCALE_MAX_LABEL} must be at least 1")));
    }
    if c.min > c.max {
        return Err(bad(format!(
            "label {SCALE_MIN_LABEL} ({}) is above {SCALE_MAX_LABEL} ({})",
            c.min, c.max
        )));
    }
    c.metric = match get(SCALE_TYPE_LABEL) {
        None | Some("rps") => Metric::Rps,
        Some("capacity") => Metric::Concurrency,
        // Whether the replicas' CPU is measured is the orchestrator's to say
        // (`Orchestrator::validate`).
        Some("cpu") => Metric::Cpu,
        Some(other) => {
            return Err(bad(format!(
                "label {SCALE_TYPE_LABEL} must be rps, capacity or cpu, got {other:?}"
            )));
        }
    };
    c.target = match get(SCALE_TARGET_LABEL) {
        Some(v) => match v.parse::<f64>() {
            Ok(t) if t > 0.0 && t <= MAX_SCALE_TARGET => t,
            _ => {
                return Err(bad(format!(
                    "label {SCALE_TARGET_LABEL} must be a number above 0 and at most \
                     {MAX_SCALE_TARGET} (load per replica: requests per second for rps, requests \
                     in flight for capacity, millicores for cpu), got {v:?}"
                )));
            }
        },
        None => match c.metric {
            Metric::Rps => DEFAULT_RPS_TARGET,
            Metric::Concurrency => DEFAULT_CAPACITY_TARGET,
            Metric::Cpu => DEFAULT_CPU_TARGET,
        },
    };
    if let Some(v) = get(SCALE_PROPORTION_LABEL) {
        c.utilization = match v.parse::<f64>() {
            Ok(p) if p > 0.0 && p <= 1.0 => p,
            _ => {
                return Err(bad(format!(
                    "label {SCALE_PROPORTION_LABEL} must be a share of the target above 0 and \
                     at most 1 (0.9 scales at 90 % of it), got {v:?}"
                )));
            }
        };
    }
    c.zero = match get(SCALE_ZERO_LABEL) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(bad(format!(
                "label {SCALE_ZERO_LABEL} must be true or false, got {other:?}"
            )));
        }
    };
    if let Some(z) = duration(SCALE_ZERO_DURATION_LABEL)? {
        if z < Duration::from_secs(1) {
            return Err(bad(format!(
                "label {SCALE_ZERO_DURATION_LABEL} must be at least 1s, got {z:?}"
            )));
        }
        c.zero_after = z;
    }
    if let Some(w) = duration(SCALE_WINDOW_LABEL)? {
        if w < MIN_STABLE_WINDOW {
            return Err(bad(format!(
                "label {SCALE_WINDOW_LABEL} must be at least {MIN_STABLE_WINDOW:?}, got {w:?}"
            )));
        }
        c.stable_window = w;
        c.panic_window = panic_window(w);
        c.own_window = true;
    }
    if let (Some(cap), Metric::Concurrency) = (concurrency, c.metric) {
        c.target = c.target.min(cap as f64);
    }
    Ok(c)
}

#[cfg(test)]
mod quantity_tests {
    use super::parse_quantity;

    #[test]
    fn kubernetes_quantities_of_bytes() {
        for (q, bytes) in [
            ("128Mi", Some(128 << 20)),
            ("1Gi", Some(1 << 30)),
            ("1.5Gi", Some(3 << 29)),
            ("500M", Some(500_000_000)),
            ("64k", Some(64_000)),
            ("4096", Some(4096)),
            ("128MB", None),
            ("12m", None),
            ("Mi", None),
            (".5Gi", None),
            ("1.2.3", None),
            ("-1Mi", None),
            ("", None),
        ] {
            assert_eq!(parse_quantity(q), bytes, "{q}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn deployment(labels: &[(&str, &str)], env: &[(&str, &str)]) -> FunctionDeployment {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        FunctionDeployment {
            service: "f".into(),
            labels: Some(map(labels)),
            env_vars: map(env),
            ..Default::default()
        }
    }

    #[test]
    fn a_classic_replica_is_sent_no_more_than_it_runs_at_once() {
        let c = FunctionConfig::from_deployment(&FunctionDeployment::default()).unwrap();
        assert_eq!(c.concurrency, Some(DEFAULT_MAX_INFLIGHT));
        let d = deployment(&[(CONCURRENCY_LABEL, "500")], &[("max_inflight", "20")]);
        assert_eq!(
            FunctionConfig::from_deployment(&d).unwrap().concurrency,
            Some(20)
        );
        // An HTTP server limits itself, if at all: no limit unless one is asked for.
        let d = deployment(&[], &[("mode", "http")]);
        assert_eq!(
            FunctionConfig::from_deployment(&d).unwrap().concurrency,
            None
        );
        let d = deployment(&[(CONCURRENCY_LABEL, "500")], &[("mode", "http")]);
        assert_eq!(
            FunctionConfig::from_deployment(&d).unwrap().concurrency,
            Some(500)
        );
    }

    #[test]
    fn defaults_when_nothing_is_set() {
        let c = FunctionConfig::from_deployment(&FunctionDeployment::default()).unwrap();
        assert_eq!(c, FunctionConfig::default());
        assert_eq!(c.queue, None);
        assert_eq!(c.scale.max, DEFAULT_MAX_REPLICAS);
    }

    #[test]
    fn reads_every_setting_once() {
        let d = deployment(
            &[
                (SCALE_MIN_LABEL, "2"),
                (SCALE_MAX_LABEL, "8"),
                (SCALE_TYPE_LABEL, "capacity"),
                (SCALE_TARGET_LABEL, "10"),
                (CONCURRENCY_LABEL, "4"),
                (AUTH_LABEL, "required"),
                (RATE_LIMIT_LABEL, "50"),
            ],
            &[
                ("mode", "http"),
                ("exec_timeout", "2m"),
                ("max_inflight", "7"),
            ],
        );
        let c = FunctionConfig::from_deployment(&d).unwrap();
        assert_eq!((c.scale.min, c.scale.max), (2, 8));
        // The target is held to what one replica is sent at once.
        assert_eq!(c.scale.target, 4.0);
        assert_eq!(c.concurrency, Some(4));
        assert_eq!(c.max_inflight, 7);
        assert_eq!(c.mode, Mode::Http);
        assert_eq!(c.exec_timeout, Some(Duration::from_secs(120)));
        assert!(c.auth_required);
        assert_eq!(c.rate_limit.map(NonZeroU32::get), Some(50));
        // An explicit max_inflight caps concurrency when the label is absent.
        let d = deployment(&[], &[("max_inflight", "3")]);
        assert_eq!(
            FunctionConfig::from_deployment(&d).unwrap().concurrency,
            Some(3)
        );
    }

    #[test]
    fn the_scale_type_chooses_the_metric_and_its_default_target() {
        let scale = |labels: &[(&str, &str)]| {
            FunctionConfig::from_deployment(&deployment(labels, &[]))
                .unwrap()
                .scale
        };
        // No scaling labels: request rate, 5 a second per replica, aimed at 90 % of it.
        let none = scale(&[]);
        assert_eq!(none.metric, Metric::Rps);
        assert_eq!(none.target, DEFAULT_RPS_TARGET);
        assert_eq!(none.utilization, DEFAULT_TARGET_PROPORTION);
        assert_eq!(none.per_replica(), 4.5);
        let capacity = scale(&[(SCALE_TYPE_LABEL, "capacity")]);
        assert_eq!(capacity.metric, Metric::Concurrency);
        assert_eq!(capacity.target, DEFAULT_CAPACITY_TARGET);
        let cpu = scale(&[(SCALE_TYPE_LABEL, "cpu")]);
        assert_eq!((cpu.metric, cpu.target), (Metric::Cpu, DEFAULT_CPU_TARGET));
        let cpu = scale(&[(SCALE_TYPE_LABEL, "cpu"), (SCALE_TARGET_LABEL, "100")]);
        assert_eq!(cpu.per_replica(), 90.0);
        let rps = scale(&[
            (SCALE_TYPE_LABEL, " rps "),
            (SCALE_TARGET_LABEL, "20"),
            (SCALE_PROPORTION_LABEL, "0.5"),
        ]);
        assert_eq!(
            (rps.metric, rps.target, rps.per_replica()),
            (Metric::Rps, 20.0, 10.0)
        );
        // A replica's concurrency cap bounds a capacity target, not a rate.
        let d = deployment(&[(SCALE_TARGET_LABEL, "20")], &[("max_inflight", "4")]);
        assert_eq!(
            FunctionConfig::from_deployment(&d).unwrap().scale.target,
            20.0
        );
    }

    #[test]
    fn the_platform_window_applies_unless_the_function_chose_one() {
        let scale = |labels: &[(&str, &str)]| {
            FunctionConfig::from_deployment(&deployment(labels, &[]))
                .unwrap()
                .scale
                .with_default_window(Duration::from_secs(20))
        };
        let platform = scale(&[]);
        assert_eq!(platform.stable_window, Duration::from_secs(20));
        assert_eq!(platform.panic_window, Duration::from_secs(2));
        let own = scale(&[(SCALE_WINDOW_LABEL, "30s")]);
        assert_eq!(own.stable_window, Duration::from_secs(30));
        assert_eq!(own.panic_window, Duration::from_secs(3));
    }

    #[test]
    fn within_holds_bounds_to_the_ceiling() {
        let d = deployment(&[(SCALE_MIN_LABEL, "5"), (SCALE_MAX_LABEL, "50")], &[]);
        let c = FunctionConfig::from_deployment(&d).unwrap().scale.within(4);
        assert_eq!((c.min, c.max), (4, 4));
    }

    #[test]
    fn each_bad_setting_is_named() {
        for (labels, env, needle) in [
            (
                vec![(SCALE_MIN_LABEL, "3"), (SCALE_MAX_LABEL, "2")],
                vec![],
                "is above",
            ),
            (vec![(SCALE_MAX_LABEL, "0")], vec![], SCALE_MAX_LABEL),
            (
                vec![(SCALE_TYPE_LABEL, "memory")],
                vec![],
                "rps, capacity or cpu",
            ),
            (vec![(SCALE_TARGET_LABEL, "0")], vec![], SCALE_TARGET_LABEL),
            (vec![(SCALE_TARGET_LABEL, "1e9")], vec![], "at most"),
            (
                vec![(SCALE_TARGET_LABEL, "NaN")],
                vec![],
                SCALE_TARGET_LABEL,
            ),
            (
                vec![(SCALE_PROPORTION_LABEL, "0")],
                vec![],
                SCALE_PROPORTION_LABEL,
            ),
            (vec![(SCALE_PROPORTION_LABEL, "1.1")], vec![], "at most 1"),
            (vec![(SCALE_WINDOW_LABEL, "1s")], vec![], SCALE_WINDOW_LABEL),
            (vec![(CONCURRENCY_LABEL, "0")], vec![], CONCURRENCY_LABEL),
            (vec![(AUTH_LABEL, "yes")], vec![], AUTH_LABEL),
            (vec![(RATE_LIMIT_LABEL, "0")], vec![], RATE_LIMIT_LABEL),
            (vec![], vec![("mode", "afterburner")], "envVars.mode"),
            (
                vec![],
                vec![("exec_timeout", "soon")],
                "envVars.exec_timeout",
            ),
            (vec![], vec![("max_inflight", "-1")], "envVars.max_inflight"),
        ] {
            let err = FunctionConfig::from_deployment(&deployment(&labels, &env))
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
        let mut d = FunctionDeployment {
            annotations: Some(BTreeMap::from([(
                READINESS_PATH_ANNOTATION.to_owned(),
                "health".to_owned(),
            )])),
            ..Default::default()
        };
        assert!(FunctionConfig::from_deployment(&d).is_err());
        d.annotations = Some(BTreeMap::from([(
            QUEUE_ANNOTATION.to_owned(),
            "a b".to_owned(),
        )]));
        let err = FunctionConfig::from_deployment(&d).unwrap_err().to_string();
        assert!(err.contains(QUEUE_ANNOTATION), "{err}");
    }
}
