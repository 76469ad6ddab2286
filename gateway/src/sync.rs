//! Keeping this gateway's provider in step with a registry that other gateways also write.
//!
//! In the cluster form every gateway shares one registry (Postgres). A function deployed,
//! updated, scaled or removed through one gateway is applied by that gateway's provider at once;
//! every other gateway notices the change on its next look and applies it to its own provider.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sluice_core::{FunctionDeployment, FunctionRef, ProviderError};

use crate::AppState;

/// Applies registry changes to this gateway's provider every `every`, until shutdown.
pub async fn sync_functions(state: AppState, every: Duration) {
    // What was last seen in the registry for each function this loop applied.
    let mut seen: HashMap<FunctionRef, (FunctionDeployment, u32)> = HashMap::new();
    loop {
        if let Err(error) = sync_once(&state, &mut seen).await {
            tracing::warn!(%error, "cannot read the function registry; will try again");
        }
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Applies `function` from the registry if this gateway's provider does not run it yet; whether
/// it runs now.
pub(crate) async fn apply_from_registry(
    state: &AppState,
    function: &FunctionRef,
) -> Result<bool, crate::ApiError> {
    let _serial = state.lock_function(function).await;
    if state.orchestrator.replicas(function).is_some() {
        return Ok(true);
    }
    let Some(mut spec) = state.functions.get(function).await? else {
        return Ok(false);
    };
    spec.replicas = spec.replicas.min(state.config.max_replicas_limit);
    state.orchestrator.apply(&spec).await?;
    tracing::info!(%function, "applied from the registry on first request");
    Ok(true)
}

async fn sync_once(
    state: &AppState,
    seen: &mut HashMap<FunctionRef, (FunctionDeployment, u32)>,
) -> Result<(), crate::ApiError> {
    let listed = state.functions.list().await?;
    let present: HashSet<FunctionRef> = listed.iter().map(|s| s.function.clone()).collect();
    for spec in listed {
        let replicas = spec.replicas.min(state.config.max_replicas_limit);
        let unchanged = seen.get(&spec.function).is_some_and(|(d, r)| {
            *d == spec.deployment
                && *r == replicas
                && state.orchestrator.replicas(&spec.function).is_some()
        });
        if unchanged {
            continue;
        }
        if state.orchestrator.shared() {
            // Every gateway sees the same Deployments: only what this gateway keeps of a
            // function (its policy) follows a change made through another one.
            if seen
                .get(&spec.function)
                .is_some_and(|(deployment, _)| *deployment != spec.deployment)
            {
                state.policies.forget(&spec.function);
            }
            seen.insert(spec.function.clone(), (spec.deployment, replicas));
            continue;
        }
        // Under the function's lock, from a fresh read: a change made through this gateway
        // meanwhile is already applied and must not be undone by an older read.
        let _serial = state.lock_function(&spec.function).await;
        let Some(mut fresh) = state.functions.get(&spec.function).await? else {
            continue;
        };
        fresh.replicas = fresh.replicas.min(state.config.max_replicas_limit);
        // A new replica count in the registry (scaled through another gateway) holds here
        // too; a function first seen at the count it runs is left to the autoscaler.
        let rescaled = match seen.get(&fresh.function) {
            Some((_, replicas)) => *replicas != fresh.replicas,
            None => state
                .orchestrator
                .replicas(&fresh.function)
                .is_some_and(|r| r.desired != fresh.replicas),
        };
        let _scaling = state.autoscaler.exclusive().await;
        // A new replica count keeps the policy (and its rate bucket); a new deployment not.
        if seen
            .get(&fresh.function)
            .is_none_or(|(deployment, _)| *deployment != fresh.deployment)
        {
            state.policies.forget(&fresh.function);
        }
        match state.orchestrator.apply(&fresh).await {
            Ok(()) => {
                tracing::debug!(function = %fresh.function, replicas = fresh.replicas, "applied from the registry");
                if rescaled {
                    state.autoscaler.pin(
                        &fresh.function,
                        fresh.replicas,
                        "set through the registry",
                    );
                }
                seen.insert(fresh.function.clone(), (fresh.deployment, fresh.replicas));
            }
            Err(error) => {
                tracing::error!(function = %fresh.function, %error, "cannot apply a function from the registry");
            }
        }
    }
    let gone: Vec<FunctionRef> = seen
        .keys()
        .filter(|f| !present.contains(*f))
        .cloned()
        .collect();
    for function in gone {
        let _serial = state.lock_function(&function).await;
        if state.functions.get(&function).await?.is_some() {
            continue;
        }
        if state.orchestrator.shared() {
            // The gateway that removed it removed its Deployment too; removing it again from
            // here could delete one re-created meanwhile through a third gateway.
            state.metrics.forget(&function);
            state.activator.forget(&function);
            state.policies.forget(&function);
            seen.remove(&function);
            continue;
        }
        match state.orchestrator.remove(&function).await {
            Ok(()) | Err(ProviderError::NotFound(_)) => {
                tracing::info!(%function, "removed: no longer in the registry");
                state.metrics.forget(&function);
                state.activator.forget(&function);
                state.policies.forget(&function);
                seen.remove(&function);
            }
            Err(error) => tracing::error!(%function, %error, "cannot remove a function"),
        }
    }
    Ok(())
}
