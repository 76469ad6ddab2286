//! [`ProcessProvider`]: the embedded default provider, running replicas on this machine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sluice_core::{
    EndpointSource, FunctionRef, FunctionSpec, LogStream, Orchestrator, ProviderError, ReadySet,
    Replicas,
};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::logs::LogBuffer;
use crate::runtime::{FunctionRuntime, RuntimeConfig};
use crate::spec::RunSpec;

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
}

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
}

impl ProcessProvider {
    pub fn new(config: ProcessConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                run_id: uuid::Uuid::new_v4().simple().to_string().into(),
                functions: Mutex::new(HashMap::new()),
                cancel: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// Kills the process groups that a previous, killed, Sluice left running, and prepares the
    /// run dir. Call it before any function starts, while no other Sluice uses the run dir.
    pub fn reap_leftovers(&self) -> std::io::Result<usize> {
        match &self.inner.config.run_dir {
            Some(dir) => crate::sys::reap_leftovers(dir, &self.inner.run_id),
            None => Ok(0),
        }
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
        }
    }
}

#[async_trait]
impl Orchestrator for ProcessProvider {
    fn validate(&self, spec: &FunctionSpec) -> Result<(), ProviderError> {
        RunSpec::from_spec(spec, self.inner.config.default_exec_timeout).map(drop)
    }

    async fn apply(&self, spec: &FunctionSpec) -> Result<(), ProviderError> {
        let run = RunSpec::from_spec(spec, self.inner.config.default_exec_timeout)?;
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

    fn logs(
        &self,
        function: &FunctionRef,
        tail: usize,
        follow: bool,
    ) -> Result<LogStream, ProviderError> {
        Ok(self.runtime(function)?.logs.stream(tail, follow))
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
