//! Per-function request policy: what the gateway checks before a function is called and how
//! many requests a replica takes, from the function's configuration, kept while it is deployed.
//!
//! The registry is the source: a policy is read from it the first time a function is called on
//! this gateway and forgotten whenever the function is deployed, updated or removed (here or, in
//! the cluster form, through another gateway's change seen by the registry sync).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, RwLock};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use sluice_core::{FunctionConfig, FunctionRef};

use crate::AppState;
use crate::error::ApiError;

/// What one function's requests must satisfy.
#[derive(Debug)]
pub(crate) struct Policy {
    /// Its routes need the gateway's credentials (`com.sluice.auth: required`).
    pub(crate) auth_required: bool,
    /// Its requests per second on this gateway (`com.sluice.rate-limit`).
    pub(crate) rate: Option<Rate>,
    /// Requests one replica is sent at once (`com.sluice.concurrency`).
    pub(crate) concurrency: Option<usize>,
    /// The queue its async calls go to (`com.openfaas.queue`).
    pub(crate) queue: Option<sluice_core::QueueName>,
}

/// A rate limit and its bucket.
#[derive(Debug)]
pub(crate) struct Rate {
    pub(crate) per_second: u32,
    limiter: DefaultDirectRateLimiter,
}

impl Rate {
    pub(crate) fn new(per_second: NonZeroU32) -> Self {
        Self {
            per_second: per_second.get(),
            limiter: RateLimiter::direct(Quota::per_second(per_second)),
        }
    }

    /// Takes one request's worth, or says the limit is reached.
    pub(crate) fn check(&self, what: &dyn std::fmt::Display) -> Result<(), ApiError> {
        self.limiter.check().map_err(|_| ApiError::RateLimited {
            what: what.to_string(),
            per_second: self.per_second,
        })
    }
}

impl Policy {
    /// The policy a function's configuration asks for.
    pub(crate) fn of(config: &FunctionConfig) -> Self {
        Self {
            auth_required: config.auth_required,
            rate: config.rate_limit.map(Rate::new),
            concurrency: config.concurrency,
            queue: config.queue.clone(),
        }
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
        let policy = Arc::new(Policy::of(&spec.config));
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
