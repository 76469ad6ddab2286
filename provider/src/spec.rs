//! How a `FunctionDeployment` becomes something the process provider can run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sluice_core::{FunctionSpec, ProviderError, SecretValue};

pub use sluice_core::config::{
    DEFAULT_MAX_INFLIGHT, Mode, READINESS_PATH_ANNOTATION, WORKDIR_ANNOTATION,
};

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
    /// Bytes of memory each of its processes may take (`limits.memory`): their data limit.
    pub memory_limit: Option<u64>,
    /// The secrets the function names, with their values as they were when it was applied:
    /// each replica gets them as files (`crate::secrets`).
    pub secrets: Vec<(String, SecretValue)>,
}

fn invalid(msg: String) -> ProviderError {
    ProviderError::InvalidSpec(msg)
}

impl RunSpec {
    /// Checks that a function can run here and turns it into a [`RunSpec`], or says exactly
    /// what is wrong. The settings every provider shares come from the spec's configuration;
    /// the command and its directory are this provider's own.
    pub fn from_spec(
        spec: &FunctionSpec,
        default_exec_timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let (d, config) = (&spec.deployment, &spec.config);
        let (field, command) = process(d).ok_or_else(|| {
            invalid(format!(
                "envProcess (or envVars.fprocess) is required: the process provider runs it \
                 locally (image {:?} is recorded but not pulled)",
                d.image
            ))
        })?;
        let argv = shlex::split(command)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| invalid(format!("{field} {command:?} has unbalanced quotes")))?;
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
        Ok(Self {
            mode: config.mode,
            argv,
            env: d.env_vars.clone(),
            workdir,
            exec_timeout: config.exec_timeout.unwrap_or(default_exec_timeout),
            max_inflight: config.max_inflight,
            concurrency: config.concurrency,
            readiness_path: config.readiness_path.clone(),
            memory_limit: config.memory_limit,
            secrets: Vec::new(),
        })
    }
}

/// The function's command and the field it came from: `envProcess`, or when that is empty
/// the `fprocess` environment variable, which is where OpenFaaS's watchdog reads it (faas-netes
/// sets `fprocess` from `envProcess` only when `envProcess` is given).
fn process(d: &sluice_core::FunctionDeployment) -> Option<(&'static str, &str)> {
    given(d.env_process.as_deref())
        .map(|c| ("envProcess", c))
        .or_else(|| {
            given(d.env_vars.get("fprocess").map(String::as_str)).map(|c| ("envVars.fprocess", c))
        })
}

/// A command that is there: not missing, not blank.
fn given(v: Option<&str>) -> Option<&str> {
    v.map(str::trim).filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::FunctionDeployment;

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

    fn run_spec(d: &FunctionDeployment, t: Duration) -> Result<RunSpec, String> {
        let f = sluice_core::FunctionRef::parse("f", None).unwrap();
        let spec = FunctionSpec::new(f, d.clone(), 1, sluice_core::Timestamp::now())
            .map_err(|e| e.to_string())?;
        RunSpec::from_spec(&spec, t).map_err(|e| e.to_string())
    }

    #[test]
    fn modes_and_errors() {
        let t = Duration::from_secs(60);
        let s = run_spec(&deployment("sha512sum", &[]), t).unwrap();
        assert_eq!(
            (s.mode, s.argv.as_slice()),
            (Mode::Classic, &["sha512sum".to_owned()][..])
        );
        let s = run_spec(
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
        // No envProcess: the watchdog's `fprocess` from the environment, as OpenFaaS's
        // watchdog takes it; envProcess wins when both are given, as in faas-netes.
        let s = run_spec(&deployment("", &[("fprocess", "sha512sum -b")]), t).unwrap();
        assert_eq!(s.argv, ["sha512sum", "-b"]);
        let s = run_spec(&deployment("  ", &[("fprocess", "cat")]), t).unwrap();
        assert_eq!(s.argv, ["cat"]);
        let s = run_spec(&deployment("wc -c", &[("fprocess", "cat")]), t).unwrap();
        assert_eq!(s.argv, ["wc", "-c"]);
        for (d, needle) in [
            (
                deployment("", &[]),
                "envProcess (or envVars.fprocess) is required",
            ),
            (
                deployment("", &[("fprocess", " ")]),
                "envProcess (or envVars.fprocess) is required",
            ),
            (
                deployment("", &[("fprocess", "echo 'x")]),
                "envVars.fprocess \"echo 'x\" has unbalanced quotes",
            ),
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
            let err = run_spec(&d, t).unwrap_err();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
    }
}
