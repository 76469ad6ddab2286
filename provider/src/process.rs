//! [`ProcessProvider`]: the embedded default provider, running replicas on this machine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sluice_core::{
    EndpointSource, FunctionRef, FunctionSpec, FunctionUsage, LogStream, Metric, Orchestrator,
    ProviderError, ReadySet, Replicas, SecretValue, Secrets, StoreError,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::logs::LogBuffer;
use crate::runtime::{FunctionRuntime, RuntimeConfig};
use crate::spec::{Mode, RunSpec};
use crate::templates::TemplateDirs;
use crate::usage::Meter;

/// Settings of the process provider.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Where each run of the provider records its id, so that processes a killed Sluice left
    /// behind can be found and stopped on the next start ([`ProcessProvider::reap_leftovers`]).
    pub run_dir: Option<std::path::PathBuf>,
    /// Classic mode's `exec_timeout` when a function sets none.
    pub default_exec_timeout: Duration,
    /// Lines of output kept per function for `/system/logs`.
    pub log_lines: usize,
    /// How long a stopping replica may take to finish before it is killed.
    pub stop_grace: Duration,
    /// How long a replica taken out of rotation (scale-down, redeploy, removal) may keep
    /// serving its in-flight requests before it is stopped.
    pub drain_timeout: Duration,
    /// First and longest wait before a crashed HTTP replica is restarted.
    pub restart_backoff_min: Duration,
    pub restart_backoff_max: Duration,
    /// Where the secrets functions name are kept (`/system/secrets`); without it, functions
    /// cannot name secrets.
    pub secrets: Option<Arc<dyn Secrets>>,
}

/// Secrets one namespace may hold at most.
pub const MAX_SECRETS_PER_NAMESPACE: u64 = 1000;

impl Default for ProcessConfig {
    fn default() -> Self {
        Self {
            run_dir: None,
            default_exec_timeout: Duration::from_secs(300),
            log_lines: 2000,
            stop_grace: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(300),
            restart_backoff_min: Duration::from_millis(200),
            restart_backoff_max: Duration::from_secs(30),
            secrets: None,
        }
    }
}

/// Runs functions as local processes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProcessProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ProcessConfig,
    /// Carried in the environment of every process this provider starts.
    run_id: std::sync::Arc<str>,
    functions: Mutex<HashMap<FunctionRef, Arc<FunctionRuntime>>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    /// Runners for OpenFaaS templates, and Python handlers' environments.
    templates: TemplateDirs,
    /// HTTP-mode replicas' CPU and memory.
    meter: Meter,
}

impl ProcessProvider {
    pub fn new(config: ProcessConfig) -> Self {
        let run_id: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let templates = TemplateDirs::new(&match &config.run_dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join(format!("sluice-{run_id}")),
        });
        Self {
            inner: Arc::new(Inner {
                config,
                templates,
                run_id,
                functions: Mutex::new(HashMap::new()),
                cancel: CancellationToken::new(),
                tracker: TaskTracker::new(),
                meter: Meter::default(),
            }),
        }
    }

    /// Kills the process groups that a previous, killed, Sluice left running, and prepares the
    /// run dir. Call it before any function starts, while no other Sluice uses the run dir.
    pub fn reap_leftovers(&self) -> std::io::Result<usize> {
        let Some(dir) = &self.inner.config.run_dir else {
            return Ok(0);
        };
        let reaped = crate::sys::reap_leftovers(dir, &self.inner.run_id)?;
        // Secrets written for replicas that are gone.
        match std::fs::remove_dir_all(dir.join(SECRETS_SUBDIR)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(reaped)
    }

    /// Stops every replica and waits for them (each gets the stop grace, then is killed).
    pub async fn shutdown(&self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
        if let Some(dir) = &self.inner.config.run_dir {
            // Everything stopped: nothing of this run is left to find.
            let _ = std::fs::remove_file(dir.join(&*self.inner.run_id));
        }
    }

    fn runtime(&self, function: &FunctionRef) -> Result<Arc<FunctionRuntime>, ProviderError> {
        self.inner
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(function)
            .cloned()
            .ok_or_else(|| ProviderError::NotFound(function.to_string()))
    }

    fn runtime_config(&self) -> RuntimeConfig {
        RuntimeConfig {
            run_id: self.inner.run_id.clone(),
            stop_grace: self.inner.config.stop_grace,
            drain_timeout: self.inner.config.drain_timeout,
            restart_backoff_min: self.inner.config.restart_backoff_min,
            restart_backoff_max: self.inner.config.restart_backoff_max,
            secrets_root: self
                .inner
                .config
                .run_dir
                .as_ref()
                .map(|d| d.join(SECRETS_SUBDIR)),
        }
    }

    /// How `spec` runs here: its own command, or its template's runner.
    fn run_spec(&self, spec: &FunctionSpec) -> Result<RunSpec, ProviderError> {
        let expanded = self.inner.templates.expand(spec)?;
        RunSpec::from_spec(
            expanded.as_ref().unwrap_or(spec),
            self.inner.config.default_exec_timeout,
        )
    }

    fn secrets(&self) -> Result<&Arc<dyn Secrets>, ProviderError> {
        self.inner.config.secrets.as_ref().ok_or_else(|| {
            ProviderError::Unsupported("this gateway keeps no secrets (no secrets store)".into())
        })
    }

    /// The values of the secrets `spec` names, as they are now.
    async fn secret_values(
        &self,
        spec: &FunctionSpec,
    ) -> Result<Vec<(String, SecretValue)>, ProviderError> {
        let names = &spec.deployment.secrets;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let secrets = self.secrets()?;
        if self.inner.config.run_dir.is_none() {
            return Err(ProviderError::InvalidSpec(
                "this provider has no run dir to give replicas their secrets in".into(),
            ));
        }
        let namespace = &spec.function.namespace;
        let mut values = Vec::with_capacity(names.len());
        for name in names {
            match secrets.get(namespace, name).await.map_err(secret_error)? {
                Some(value) => values.push((name.clone(), value)),
                None => {
                    return Err(ProviderError::InvalidSpec(format!(
                        "secret {name} does not exist in namespace {namespace}"
                    )));
                }
            }
        }
        Ok(values)
    }
}

/// Under the run dir: replicas' secrets directories.
const SECRETS_SUBDIR: &str = "secrets";

fn secret_error(e: StoreError) -> ProviderError {
    match e {
        StoreError::NotFound(what) => ProviderError::NotFound(what),
        StoreError::Conflict(what) => ProviderError::Refused {
            code: 409,
            reason: "AlreadyExists".into(),
            message: format!("{what} already exists; change its value with PUT /system/secrets"),
        },
        StoreError::Unavailable(detail) => ProviderError::Unavailable(detail),
    }
}

#[async_trait]
impl Orchestrator for ProcessProvider {
    /// Also refuses a command whose program is not there. Only here, at deploy time: a function
    /// restored whose program has gone since is started all the same, and crash-loops, saying
    /// why.
    /// CPU is measured only for HTTP-mode replicas, so only they scale on it.
    fn validate(&self, spec: &FunctionSpec) -> Result<(), ProviderError> {
        let run = self.run_spec(spec)?;
        if spec.config.scale.metric == Metric::Cpu && run.mode != Mode::Http {
            return Err(ProviderError::InvalidSpec(format!(
                "label {} cpu needs an HTTP-mode function (envVars.mode: http, or a template): \
                 a classic function runs a process per request, whose CPU is not measured; \
                 use rps or capacity",
                sluice_core::config::SCALE_TYPE_LABEL
            )));
        }
        crate::sys::check_program(&run).map_err(ProviderError::InvalidSpec)
    }

    async fn apply(&self, spec: &FunctionSpec) -> Result<(), ProviderError> {
        let mut run = self.run_spec(spec)?;
        run.secrets = self.secret_values(spec).await?;
        let mut functions = self
            .inner
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match functions.get(&spec.function) {
            // Applying what already runs only sets the replica count, as applying an unchanged
            // Deployment does on Kubernetes: nothing is restarted.
            Some(rt) if rt.runs(&run) => rt.scale(spec.replicas),
            Some(rt) => rt.replace(run, spec.replicas),
            None => {
                let logs = Arc::new(LogBuffer::new(
                    spec.function.clone(),
                    self.inner.config.log_lines,
                ));
                let rt = FunctionRuntime::new(
                    spec.function.clone(),
                    run,
                    logs,
                    self.inner.cancel.child_token(),
                    self.inner.tracker.clone(),
                    self.runtime_config(),
                );
                rt.scale(spec.replicas);
                functions.insert(spec.function.clone(), rt);
            }
        }
        Ok(())
    }

    fn functions(&self) -> Vec<FunctionRef> {
        let functions = self
            .inner
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        functions.keys().cloned().collect()
    }

    async fn remove(&self, function: &FunctionRef) -> Result<(), ProviderError> {
        let rt = self
            .inner
            .functions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(function)
            .ok_or_else(|| ProviderError::NotFound(function.to_string()))?;
        rt.stop();
        Ok(())
    }

    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<(), ProviderError> {
        self.runtime(function)?.scale(replicas);
        Ok(())
    }

    fn replicas(&self, function: &FunctionRef) -> Option<Replicas> {
        self.runtime(function).ok().map(|rt| rt.counts())
    }

    /// An HTTP-mode function's replicas' CPU and resident memory, each summed over the
    /// replica's process group; `None` for a classic-mode function (a process per request).
    /// One measurement of every HTTP-mode function at a time, at most one per half second.
    fn templates(&self) -> Vec<&'static str> {
        crate::templates::names()
    }

    fn usage(&self, function: &FunctionRef) -> Option<FunctionUsage> {
        self.runtime(function).ok()?.process_groups()?;
        self.inner.meter.usage(function, || {
            let functions = self
                .inner
                .functions
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            functions
                .iter()
                .filter_map(|(f, rt)| Some((f.clone(), rt.process_groups()?)))
                .collect()
        })
    }

    /// A function whose replicas keep exiting: how the last run ended, and its last lines.
    fn problem(&self, function: &FunctionRef) -> Option<String> {
        Some(self.runtime(function).ok()?.crash_loop()?.to_string())
    }

    fn logs(
        &self,
        function: &FunctionRef,
        tail: usize,
        follow: bool,
    ) -> Result<LogStream, ProviderError> {
        Ok(self.runtime(function)?.logs.stream(tail, follow))
    }

    async fn secrets(&self, namespace: &str) -> Result<Vec<String>, ProviderError> {
        self.secrets()?.names(namespace).await.map_err(secret_error)
    }

    async fn put_secret(
        &self,
        namespace: &str,
        name: &str,
        value: &[u8],
        create: bool,
    ) -> Result<(), ProviderError> {
        let secrets = self.secrets()?;
        if create {
            let held = secrets.names(namespace).await.map_err(secret_error)?.len();
            if held as u64 >= MAX_SECRETS_PER_NAMESPACE {
                return Err(ProviderError::Refused {
                    code: 400,
                    reason: "TooManySecrets".into(),
                    message: format!(
                        "namespace {namespace} has {held} secrets, the most it may keep; \
                         remove one first"
                    ),
                });
            }
        }
        let value = SecretValue::new(value.to_vec());
        secrets
            .put(namespace, name, &value, create)
            .await
            .map_err(secret_error)
    }

    async fn delete_secret(&self, namespace: &str, name: &str) -> Result<(), ProviderError> {
        if self
            .secrets()?
            .delete(namespace, name)
            .await
            .map_err(secret_error)?
        {
            Ok(())
        } else {
            Err(ProviderError::NotFound(format!("secret {name}")))
        }
    }
}

/// Ready replicas are the provider's own: each answers on a loopback port once probed.
impl EndpointSource for ProcessProvider {
    fn ready(&self, function: &FunctionRef) -> Option<ReadySet> {
        self.runtime(function).ok()?.ready_set()
    }

    fn changes(&self, function: &FunctionRef) -> Option<tokio::sync::watch::Receiver<u64>> {
        Some(self.runtime(function).ok()?.changes())
    }
}
