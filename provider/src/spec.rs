//! How a `FunctionDeployment` becomes something the process provider can run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sluice_core::{FunctionDeployment, ProviderError};

/// Annotation naming the directory the function's command runs in. `sluice deploy -f stack.yml`
/// sets it to the function's `handler` directory; without it the command runs in Sluice's own.
pub const WORKDIR_ANNOTATION: &str = "com.sluice.workdir";

/// Annotation naming the path an HTTP-mode replica is probed on (default `/_/health`). Any answer
/// below 500 means ready.
pub const READINESS_PATH_ANNOTATION: &str = "com.sluice.readiness-path";

const DEFAULT_READINESS_PATH: &str = "/_/health";

/// Classic mode's cap on concurrent runs per replica when `max_inflight` is not set, so a burst
/// cannot fork without bound.
pub const DEFAULT_MAX_INFLIGHT: usize = 100;

/// How a function's replicas serve requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fork the command per request (classic watchdog).
    Classic,
    /// Run the command once; it serves HTTP on `$PORT` (of-watchdog `mode=http`).
    Http,
}

/// Everything needed to start a function's replicas, parsed and checked once at deploy time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    pub mode: Mode,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<PathBuf>,
    /// Classic mode: how long one run of the command may take (`exec_timeout`).
    pub exec_timeout: Duration,
    /// Classic mode: how many runs at once per replica (`max_inflight`; 0 = no limit).
    pub max_inflight: usize,
    pub readiness_path: String,
}

fn invalid(msg: String) -> ProviderError {
    ProviderError::InvalidSpec(msg)
}

/// Parses a Go-style duration as the watchdogs take it (`10s`, `1m30s`, `500ms`) or bare seconds.
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (num, tail) = rest.split_at(split);
        let value: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(tail.len());
        let (unit, next) = tail.split_at(unit_len);
        let scale = match unit {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += Duration::try_from_secs_f64(value * scale).ok()?;
        rest = next;
    }
    (!s.is_empty()).then_some(total)
}

impl RunSpec {
    /// Checks a deployment and turns it into a [`RunSpec`], or says exactly what is wrong.
    pub fn from_deployment(
        d: &FunctionDeployment,
        default_exec_timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let command = d.env_process.as_deref().map(str::trim).unwrap_or_default();
        if command.is_empty() {
            return Err(invalid(format!(
                "envProcess is required: the process provider runs it locally \
                 (image {:?} is recorded but not pulled)",
                d.image
            )));
        }
        let argv = shlex::split(command)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid(format!("envProcess {command:?} has unbalanced quotes")))?;
        let mode = match d.env_vars.get("mode").map(String::as_str) {
            Some("http") => Mode::Http,
            None | Some("" | "classic" | "streaming" | "serializing") => Mode::Classic,
            Some(other) => {
                return Err(invalid(format!(
                    "envVars.mode {other:?} is not supported: use \"http\" for a long-running \
                     server, or leave it unset for fork-per-request"
                )));
            }
        };
        let exec_timeout = match d.env_vars.get("exec_timeout") {
            None => default_exec_timeout,
            Some(v) => parse_duration(v).filter(|d| !d.is_zero()).ok_or_else(|| {
                invalid(format!(
                    "envVars.exec_timeout {v:?} is not a duration such as \"30s\" or \"2m\""
                ))
            })?,
        };
        let max_inflight = match d.env_vars.get("max_inflight") {
            None => DEFAULT_MAX_INFLIGHT,
            Some(v) => v.parse().map_err(|_| {
                invalid(format!("envVars.max_inflight {v:?} is not a whole number"))
            })?,
        };
        let workdir = match d.annotation(WORKDIR_ANNOTATION) {
            None => None,
            Some(dir) => {
                let path = PathBuf::from(dir);
                if !path.is_absolute() || !path.is_dir() {
                    return Err(invalid(format!(
                        "annotation {WORKDIR_ANNOTATION} {dir:?} is not an existing absolute \
                         directory on the Sluice host"
                    )));
                }
                Some(path)
            }
        };
        let readiness_path = d
            .annotation(READINESS_PATH_ANNOTATION)
            .unwrap_or(DEFAULT_READINESS_PATH);
        if !readiness_path.starts_with('/') || readiness_path.chars().any(char::is_whitespace) {
            return Err(invalid(format!(
                "annotation {READINESS_PATH_ANNOTATION} {readiness_path:?} must be a path starting with '/'"
            )));
        }
        Ok(Self {
            mode,
            argv,
            env: d.env_vars.clone(),
            workdir,
            exec_timeout,
            max_inflight,
            readiness_path: readiness_path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(cmd: &str, env: &[(&str, &str)]) -> FunctionDeployment {
        FunctionDeployment {
            service: "f".into(),
            env_process: Some(cmd.into()),
            env_vars: env
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("10x"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn modes_and_errors() {
        let t = Duration::from_secs(60);
        let s = RunSpec::from_deployment(&deployment("sha512sum", &[]), t).unwrap();
        assert_eq!(
            (s.mode, s.argv.as_slice()),
            (Mode::Classic, &["sha512sum".to_owned()][..])
        );
        let s = RunSpec::from_deployment(
            &deployment(
                "python3 'my server.py'",
                &[("mode", "http"), ("exec_timeout", "2m")],
            ),
            t,
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Http);
        assert_eq!(s.argv, ["python3", "my server.py"]);
        assert_eq!(s.exec_timeout, Duration::from_secs(120));
        for (d, needle) in [
            (deployment("", &[]), "envProcess is required"),
            (deployment("echo 'x", &[]), "unbalanced quotes"),
            (
                deployment("cat", &[("mode", "afterburner")]),
                "not supported",
            ),
            (
                deployment("cat", &[("exec_timeout", "soon")]),
                "not a duration",
            ),
            (deployment("cat", &[("max_inflight", "-1")]), "whole number"),
        ] {
            let err = RunSpec::from_deployment(&d, t).unwrap_err().to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
    }
}
