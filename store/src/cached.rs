//! The function registry kept in memory, in front of a store that this process alone writes.
//!
//! Reading the registry from the database meant copying every row and parsing every stored
//! deployment on each `list`: with 10,000 functions that was most of a listing and most of an
//! autoscaler round (profiled in BENCHMARKS.md). In the single-machine form the process that
//! holds the data dir's lock is the registry's only writer, so it can answer reads from memory:
//! every write goes to the store first and, once stored, to memory, so memory never holds what
//! the store does not. A process that shares its registry with others (the cluster form, or a
//! separate queue worker reading the embedded database) must not use this.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use sluice_core::config::FunctionConfig;
use sluice_core::{FunctionRef, FunctionSpec, FunctionStore, StoreError};
use tokio::sync::Mutex;

type Specs = BTreeMap<(String, String), FunctionSpec>;

fn key(function: &FunctionRef) -> (String, String) {
    (function.namespace.clone(), function.name.clone())
}

/// A [`FunctionStore`] answered from memory; see the module's note on who may use it.
#[derive(Debug)]
pub struct CachedFunctions {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn FunctionStore>,
    /// Every function, by namespace and name (the store's order for `list`); `None` until
    /// first read.
    specs: RwLock<Option<Specs>>,
    /// Held by each write (store, then memory) and by the first load, so memory applies the
    /// writes in the order the store did, and a load cannot miss one made meanwhile.
    writes: Mutex<()>,
}

impl CachedFunctions {
    /// Reads through to `store` until the first read loads it whole.
    pub fn new(store: Arc<dyn FunctionStore>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                specs: RwLock::new(None),
                writes: Mutex::new(()),
            }),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Option<Specs>> {
        self.inner.specs.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `write` (to the store, then to memory) in a task of its own, under the write lock:
    /// a caller that goes away mid-write (a client hanging up on a deploy) cannot leave the
    /// store changed and memory not. A write that fails other than by the store's refusal (a
    /// conflict, a function not found), or that panics, may or may not have reached the store:
    /// memory is dropped, and the next read loads it afresh.
    async fn write<T, F>(&self, write: impl FnOnce(Arc<Inner>) -> F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, StoreError>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let work = write(inner.clone());
        let done = tokio::spawn(async move {
            let _writes = inner.writes.lock().await;
            let done = work.await;
            if matches!(done, Err(StoreError::Unavailable(_))) {
                inner.forget();
            }
            done
        })
        .await;
        done.unwrap_or_else(|e| {
            self.inner.forget();
            Err(StoreError::Unavailable(format!(
                "a registry write did not finish: {e}"
            )))
        })
    }

    /// Loads the registry into memory if it is not yet there.
    async fn load(&self) -> Result<(), StoreError> {
        if self.read().is_some() {
            return Ok(());
        }
        let _writes = self.inner.writes.lock().await;
        if self.read().is_some() {
            return Ok(());
        }
        let listed = self.inner.store.list().await?;
        let specs = listed
            .into_iter()
            .map(|spec| (key(&spec.function), spec))
            .collect();
        *self.inner.specs.write().unwrap_or_else(|p| p.into_inner()) = Some(specs);
        Ok(())
    }
}

impl Inner {
    /// Drops memory: the next read loads the registry from the store.
    fn forget(&self) {
        *self.specs.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Changes memory, if it is loaded (else the first read loads the change from the store).
    fn change(&self, change: impl FnOnce(&mut Specs)) {
        let mut specs = self.specs.write().unwrap_or_else(|p| p.into_inner());
        if let Some(specs) = specs.as_mut() {
            change(specs);
        }
    }
}

#[async_trait]
impl FunctionStore for CachedFunctions {
    async fn create(&self, spec: &FunctionSpec) -> Result<(), StoreError> {
        let spec = spec.clone();
        self.write(|inner| async move {
            inner.store.create(&spec).await?;
            inner.change(|specs| {
                specs.insert(key(&spec.function), spec.clone());
            });
            Ok(())
        })
        .await
    }

    async fn update(&self, spec: &FunctionSpec) -> Result<(), StoreError> {
        let spec = spec.clone();
        self.write(|inner| async move {
            inner.store.update(&spec).await?;
            // As the store does: deployment and replicas change, the creation time stays.
            inner.change(|specs| {
                if let Some(kept) = specs.get_mut(&key(&spec.function)) {
                    kept.deployment = spec.deployment.clone();
                    kept.config = spec.config.clone();
                    kept.replicas = spec.replicas;
                }
            });
            Ok(())
        })
        .await
    }

    async fn get(&self, function: &FunctionRef) -> Result<Option<FunctionSpec>, StoreError> {
        self.load().await?;
        Ok(self
            .read()
            .as_ref()
            .and_then(|specs| specs.get(&key(function)).cloned()))
    }

    async fn list(&self) -> Result<Vec<FunctionSpec>, StoreError> {
        self.load().await?;
        Ok(self
            .read()
            .as_ref()
            .map(|specs| specs.values().cloned().collect())
            .unwrap_or_default())
    }

    async fn configs(&self) -> Result<Vec<(FunctionRef, Arc<FunctionConfig>)>, StoreError> {
        self.load().await?;
        Ok(self
            .read()
            .as_ref()
            .map(|specs| {
                specs
                    .values()
                    .map(|spec| (spec.function.clone(), spec.config.clone()))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn delete(&self, function: &FunctionRef) -> Result<bool, StoreError> {
        let function = function.clone();
        self.write(|inner| async move {
            let deleted = inner.store.delete(&function).await?;
            inner.change(|specs| {
                specs.remove(&key(&function));
            });
            Ok(deleted)
        })
        .await
    }

    async fn set_replicas(
        &self,
        function: &FunctionRef,
        replicas: u32,
    ) -> Result<bool, StoreError> {
        let function = function.clone();
        self.write(move |inner| async move {
            let set = inner.store.set_replicas(&function, replicas).await?;
            inner.change(|specs| {
                if let Some(kept) = specs.get_mut(&key(&function)) {
                    kept.replicas = replicas;
                }
            });
            Ok(set)
        })
        .await
    }
}
