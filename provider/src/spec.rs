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
    /// Requests one replica is sent at once; more wait in the gateway for a free slot or a new
    /// replica (`None`: no limit). From the label `com.sluice.concurrency`, else `max_inflight`.
    pub concurrency: Option<usize>,
}

/// The label that caps requests in flight per replica.
pub(crate) const CONCURRENCY_LABEL: &str = "com.sluice.concurrency";

fn invalid(msg: String) -> ProviderError {
    ProviderError::InvalidSpec(msg)
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
            Some(v) => sluice_core::retry::parse_go_duration(v)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
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
        let concurrency = match d.label(CONCURRENCY_LABEL) {
            Some(v) => Some(
                v.trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        invalid(format!(
                            "label {CONCURRENCY_LABEL} {v:?} is not a whole number above zero"
                        ))
                    })?,
            ),
            None if d.env_vars.contains_key("max_inflight") && max_inflight > 0 => {
                Some(max_inflight)
            }
            None => None,
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
            concurrency,
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
