//! Per-function request policy: what the gateway checks before a function is called, read once
//! from the function's labels and kept while the function is deployed.
//!
//! The registry is the source: a policy is read from it the first time a function is called on
//! this gateway and forgotten whenever the function is deployed, updated or removed (here or, in
//! the cluster form, through another gateway's change seen by the registry sync).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sluice_core::{FunctionDeployment, FunctionRef};

use crate::AppState;
use crate::error::ApiError;

/// What one function's requests must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Its routes need the gateway's credentials (`com.sluice.auth: required`).
    pub(crate) auth_required: bool,
}

impl Policy {
    /// The policy a deployment's labels ask for, or which label is wrong.
    pub(crate) fn from_deployment(d: &FunctionDeployment) -> Result<Self, String> {
        Ok(Self {
            auth_required: crate::auth::function_requires_auth(d.labels.as_ref())?,
        })
    }
}

/// The policies of the functions called on this gateway.
#[derive(Debug, Default)]
pub(crate) struct Policies(RwLock<Known>);

#[derive(Debug, Default)]
struct Known {
    policies: HashMap<FunctionRef, Arc<Policy>>,
    /// Counts forgets, so a read of the registry that raced one is not kept.
    generation: u64,
}

impl Policies {
    /// `function`'s policy, read from the registry if not known yet.
    pub(crate) async fn get(
        &self,
        state: &AppState,
        function: &FunctionRef,
    ) -> Result<Arc<Policy>, ApiError> {
        let generation = {
            let known = self.0.read().unwrap_or_else(|p| p.into_inner());
            if let Some(policy) = known.policies.get(function) {
                return Ok(policy.clone());
            }
            known.generation
        };
        let spec = state
            .functions
            .get(function)
            .await?
            .ok_or_else(|| ApiError::FunctionNotFound(function.to_string()))?;
        let policy =
            Arc::new(Policy::from_deployment(&spec.deployment).map_err(|e| {
                ApiError::Internal(format!("stored deployment of {function}: {e}"))
            })?);
        let mut known = self.0.write().unwrap_or_else(|p| p.into_inner());
        if known.generation == generation {
            known.policies.insert(function.clone(), policy.clone());
        }
        Ok(policy)
    }

    /// Forgets `function`'s policy: it was deployed again, updated or removed.
    pub(crate) fn forget(&self, function: &FunctionRef) {
        let mut known = self.0.write().unwrap_or_else(|p| p.into_inner());
        known.generation += 1;
        known.policies.remove(function);
    }
}
