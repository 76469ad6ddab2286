//! The traits at Sluice's seams and their error types.
//!
//! - [`Provider`] runs replicas (local processes today, Kubernetes Deployments later).
//! - [`FunctionStore`] remembers what is deployed, so a restart brings it all back.
//! - [`CallStore`] keeps the record of every async call.
//! - [`CallQueue`] carries async calls from the gateway to queue workers, at least once.
//!
//! Every implementation of a trait must pass the same contract tests, so the single-machine and
//! the cluster forms cannot drift apart.

use std::fmt::Debug;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::api::{CrashLoop, FunctionDeployment, FunctionUsage};
use crate::call::{CallId, CallOutcome, CallRecord, CallResult, CallbackOutcome, QueuedCall};
use crate::config::{ConfigError, FunctionConfig};
use crate::name::FunctionRef;
use crate::time::Timestamp;

/// A deployed function as Sluice keeps it: the validated deployment, the configuration read from
/// it, and its replica count.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionSpec {
    pub function: FunctionRef,
    pub deployment: FunctionDeployment,
    /// Read from `deployment` by [`FunctionSpec::new`]; replace both together.
    pub config: Arc<FunctionConfig>,
    pub replicas: u32,
    pub created_at: Timestamp,
}

impl FunctionSpec {
    /// A function's spec, with its configuration read from the deployment (once, here).
    pub fn new(
        function: FunctionRef,
        deployment: FunctionDeployment,
        replicas: u32,
        created_at: Timestamp,
    ) -> Result<Self, ConfigError> {
        let config = Arc::new(FunctionConfig::from_deployment(&deployment)?);
        Ok(Self {
            function,
            deployment,
            config,
            replicas,
            created_at,
        })
    }
}

/// Desired and ready replicas of one function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Replicas {
    pub desired: u32,
    pub ready: u32,
}

/// A ready replica picked for one request. While it is held, the request counts as in flight on
/// that replica, so a replica being scaled away or replaced is drained, not killed under it.
/// Hold it until the response has been read to its end.
pub struct Endpoint {
    /// Base URL of the replica, `http://host:port`.
    pub url: Arc<str>,
    _in_flight: Box<dyn std::any::Any + Send + Sync>,
}

impl Endpoint {
    /// `guard` is dropped when the request is over.
    pub fn new(url: Arc<str>, guard: impl std::any::Any + Send + Sync) -> Self {
        Self {
            url,
            _in_flight: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The top bit of [`ReplicaLoad`]'s count: the replica takes no new requests.
const CLOSED: usize = 1 << (usize::BITS - 1);

/// Requests in flight on one replica. The endpoint source that reports the replica owns it; the
/// activator counts each request it sends there; the source closes it when the replica leaves
/// rotation and waits for it to drain before stopping the replica.
#[derive(Debug, Default)]
pub struct ReplicaLoad {
    /// In-flight count, with [`CLOSED`] set once the replica left rotation.
    state: AtomicUsize,
    idle: Notify,
}

/// One request counted on a replica until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<ReplicaLoad>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.state.fetch_sub(1, Ordering::AcqRel) & !CLOSED == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl ReplicaLoad {
    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.state.load(Ordering::Acquire) & !CLOSED
    }

    /// Counts one more request if fewer than `limit` are in flight and the replica is still in
    /// rotation; else `None`, and the request must go elsewhere. Checked and counted in one
    /// step, so a replica is never sent more than `limit`, nor anything once found drained.
    pub fn begin(self: &Arc<Self>, limit: usize) -> Option<InFlight> {
        self.state
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |s| {
                (s & CLOSED == 0 && s < limit).then_some(s + 1)
            })
            .ok()
            .map(|_| InFlight(self.clone()))
    }

    /// Takes the replica out of rotation: no request begins on it any more.
    pub fn close(&self) {
        if self.state.fetch_or(CLOSED, Ordering::AcqRel) & !CLOSED == 0 {
            self.idle.notify_waiters();
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Returns once no request is in flight (call it after [`Self::close`]).
    pub async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// A replica ready for traffic, as an [`EndpointSource`] reports it.
#[derive(Debug, Clone)]
pub struct ReadyReplica {
    /// Base URL, `http://host:port`.
    pub url: Arc<str>,
    pub load: Arc<ReplicaLoad>,
}

/// A function's replicas as its endpoint source sees them now.
#[derive(Debug, Clone, Default)]
pub struct ReadySet {
    /// Replicas the function should have; zero means it is scaled to zero.
    pub desired: u32,
    /// The ones ready for traffic (possibly more than `desired` while a new configuration rolls
    /// out beside the old one).
    pub ready: Vec<ReadyReplica>,
    /// Set while the function's replicas keep exiting before they become ready: with no
    /// replica ready, a request for it fails at once rather than waiting for one.
    pub crash_loop: Option<Arc<CrashLoop>>,
}

/// Which replicas of a function are ready, and where: local processes, or pods' addresses from
/// their EndpointSlices. The activator picks among them for each request.
pub trait EndpointSource: Send + Sync + Debug {
    /// The function's replicas now; `None` for a function this source does not know.
    fn ready(&self, function: &FunctionRef) -> Option<ReadySet>;
    /// Changes whenever `function`'s [`ReadySet`] may have changed (and when it is removed);
    /// `None` for a function this source does not know.
    fn changes(&self, function: &FunctionRef) -> Option<watch::Receiver<u64>>;
}

/// One line a replica wrote, in the NDJSON shape of OpenFaaS's `/system/logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub name: String,
    pub namespace: String,
    pub instance: String,
    pub timestamp: Timestamp,
    pub text: String,
}

pub type LogStream = Pin<Box<dyn Stream<Item = LogLine> + Send>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    #[error("function {0} is not deployed")]
    NotFound(String),
    #[error("{0}")]
    InvalidSpec(String),
    /// The orchestrator's API refused the change (permissions, a quota, an invalid object, a
    /// conflicting write); `code` is its HTTP status, `message` its own words.
    #[error("{message}")]
    Refused {
        code: u16,
        reason: String,
        message: String,
    },
    /// The orchestrator's API could not be reached.
    #[error("orchestrator unavailable: {0}")]
    Unavailable(String),
    /// This provider does not do that.
    #[error("{0}")]
    Unsupported(String),
    #[error("provider failure: {0}")]
    Internal(String),
}

/// What runs: starts, updates, scales and removes functions' replicas (local processes, or
/// Kubernetes Deployments). Which replica serves a request is an [`EndpointSource`]'s concern.
#[async_trait]
pub trait Orchestrator: Send + Sync + Debug {
    /// Rejects a function this provider cannot run, before anything is stored.
    fn validate(&self, spec: &FunctionSpec) -> Result<(), ProviderError>;

    /// Starts a function, or replaces a running one's configuration, with `spec.replicas` replicas.
    /// Applying the configuration a function already runs only sets its replica count.
    async fn apply(&self, spec: &FunctionSpec) -> Result<(), ProviderError>;

    /// Stops every replica of a function and forgets it.
    async fn remove(&self, function: &FunctionRef) -> Result<(), ProviderError>;

    /// Sets the number of replicas.
    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<(), ProviderError>;

    /// Desired and ready replicas, or `None` for a function this provider does not run.
    fn replicas(&self, function: &FunctionRef) -> Option<Replicas>;

    /// Every function this provider runs.
    fn functions(&self) -> Vec<FunctionRef>;

    /// Whether every gateway sees the same replicas through this orchestrator (Kubernetes), as
    /// opposed to each running its own (local processes). A shared orchestrator keeps a running
    /// function's replica count when it is applied again (the autoscaler owns the count), and
    /// gateways neither restore nor sync replica counts into it.
    fn shared(&self) -> bool {
        false
    }

    /// The OpenFaaS templates (`lang:`, annotation [`crate::config::LANG_ANNOTATION`]) this
    /// orchestrator runs a function's handler directory with; none by default (a function then
    /// needs its own command or image).
    fn templates(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// What stops the function's replicas from running, in the orchestrator's words (an image
    /// that cannot be pulled, a container crash-looping, a quota), if anything.
    fn problem(&self, _function: &FunctionRef) -> Option<String> {
        None
    }

    /// CPU and memory used by all the function's replicas, where this orchestrator measures
    /// them; `None` when it does not (the default; Kubernetes, whose usage is the metrics
    /// server's, not Sluice's) or not for this function. `cpu` is in millicores, averaged since
    /// the orchestrator's previous measurement, as in OpenFaaS's `FunctionUsage`. Cheap enough
    /// to call once a second for every function; never called per request.
    fn usage(&self, _function: &FunctionRef) -> Option<FunctionUsage> {
        None
    }

    /// The last `tail` lines the function's replicas wrote, then (with `follow`) new ones as they
    /// come, until the function is removed or the stream is dropped.
    fn logs(
        &self,
        function: &FunctionRef,
        tail: usize,
        follow: bool,
    ) -> Result<LogStream, ProviderError>;

    /// The namespaces functions may go to, if the orchestrator decides that (Kubernetes: the
    /// function namespace and those labelled `openfaas=1`); `None`: any valid name.
    async fn namespaces(&self) -> Result<Option<Vec<String>>, ProviderError> {
        Ok(None)
    }

    /// The secrets functions in `namespace` may name (never their values).
    async fn secrets(&self, _namespace: &str) -> Result<Vec<String>, ProviderError> {
        Err(ProviderError::Unsupported(NO_SECRETS.into()))
    }

    /// Which of `names` no secret in `namespace` has: a deployment naming one is refused. By
    /// default, those [`Self::secrets`] does not list; an orchestrator whose functions may also
    /// name secrets it did not make (Kubernetes) looks each up.
    async fn missing_secrets(
        &self,
        namespace: &str,
        names: &[String],
    ) -> Result<Vec<String>, ProviderError> {
        let held = self.secrets(namespace).await?;
        Ok(names
            .iter()
            .filter(|n| !held.contains(n))
            .cloned()
            .collect())
    }

    /// Stores a secret: creates it (`create`), or replaces the value of an existing one.
    async fn put_secret(
        &self,
        _namespace: &str,
        _name: &str,
        _value: &[u8],
        _create: bool,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported(NO_SECRETS.into()))
    }

    /// Deletes a secret.
    async fn delete_secret(&self, _namespace: &str, _name: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported(NO_SECRETS.into()))
    }
}

const NO_SECRETS: &str = "this provider keeps no secrets";

/// A secret's value in plain text, held only where it is used. Its `Debug` shows none of it,
/// and its memory is wiped when it is dropped.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(zeroize::Zeroizing<Vec<u8>>);

impl SecretValue {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(zeroize::Zeroizing::new(bytes))
    }

    /// The value's bytes, for the one place that needs them (a replica's secret file).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValue(<{} bytes, not shown>)", self.0.len())
    }
}

/// The secrets functions name (OpenFaaS's `/system/secrets`), where Sluice keeps them itself
/// (local processes). Values go in and out in plain text; an implementation keeps them sealed
/// (encrypted and authenticated) at rest, and never logs them.
#[async_trait]
pub trait Secrets: Send + Sync + Debug {
    /// The names of the secrets in `namespace`, sorted.
    async fn names(&self, namespace: &str) -> Result<Vec<String>, StoreError>;
    /// A secret's value; `None` if there is no such secret.
    async fn get(&self, namespace: &str, name: &str) -> Result<Option<SecretValue>, StoreError>;
    /// Creates a secret (`create`: [`StoreError::Conflict`] if it exists) or replaces an
    /// existing one's value ([`StoreError::NotFound`] if there is none).
    async fn put(
        &self,
        namespace: &str,
        name: &str,
        value: &SecretValue,
        create: bool,
    ) -> Result<(), StoreError>;
    /// Deletes a secret; `false` if there was none.
    async fn delete(&self, namespace: &str, name: &str) -> Result<bool, StoreError>;
}

/// How the autoscaler last decided for a function, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaleStatus {
    pub target: u32,
    pub reason: String,
    pub panic: bool,
}

/// Counts one request as load on its function until dropped.
pub struct Tracked {
    _guard: Box<dyn std::any::Any + Send + Sync>,
}

impl Tracked {
    pub fn new(guard: impl std::any::Any + Send + Sync) -> Self {
        Self {
            _guard: Box::new(guard),
        }
    }
}

impl std::fmt::Debug for Tracked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracked").finish_non_exhaustive()
    }
}

/// Held while a replica count is changed from outside the autoscaler.
pub type ScalingGuard = Box<dyn std::any::Any + Send>;

/// What a gateway needs of the autoscaler: its load counted, functions at zero woken, and counts
/// set by hand respected. Embedded (one process decides for the replicas it runs) or shared (the
/// gateway reports its load to one autoscaler that decides for every gateway).
#[async_trait]
pub trait Autoscaler: Send + Sync + Debug {
    /// Counts a request to `function` as load (in flight, held ones included) until the guard
    /// is dropped. Call it before [`Self::wake`], and hold it until the response has ended, so a
    /// function with a request in flight or held is never idle.
    fn track(&self, function: &FunctionRef) -> Tracked;
    /// A request is held for `function`, which may be at zero: scale it to one now. Returns
    /// whether this call started a scale-up.
    async fn wake(&self, function: &FunctionRef) -> bool;
    /// Hold while changing a replica count from outside (by hand, from the registry), so a
    /// decision made before the change is not applied after it.
    async fn exclusive(&self) -> ScalingGuard;
    /// The replica count was set from outside: leave it for one stable window.
    fn pin(&self, function: &FunctionRef, replicas: u32, why: &str);
    /// What was last decided for `function`.
    fn status(&self, function: &FunctionRef) -> Option<ScaleStatus>;
    /// How this autoscaler's last round over every function went, if it decides here.
    fn last_tick(&self) -> Option<TickReport> {
        None
    }
}

/// The autoscaler's rounds: how many, and the last one's size and duration (for `/metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TickReport {
    pub ticks: u64,
    /// Functions the last round decided for.
    pub functions: usize,
    pub took: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The function registry.
#[async_trait]
pub trait FunctionStore: Send + Sync + Debug {
    /// Records a new function; [`StoreError::Conflict`] if it exists.
    async fn create(&self, spec: &FunctionSpec) -> Result<(), StoreError>;
    /// Replaces an existing function's deployment and replicas; [`StoreError::NotFound`] if absent.
    async fn update(&self, spec: &FunctionSpec) -> Result<(), StoreError>;
    async fn get(&self, function: &FunctionRef) -> Result<Option<FunctionSpec>, StoreError>;
    async fn list(&self) -> Result<Vec<FunctionSpec>, StoreError>;
    /// Every function's configuration, in [`Self::list`]'s order: what the autoscaler reads
    /// each round, without copying every deployment.
    async fn configs(&self) -> Result<Vec<(FunctionRef, Arc<FunctionConfig>)>, StoreError> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .map(|spec| (spec.function, spec.config))
            .collect())
    }
    /// Forgets a function; `false` if there was none.
    async fn delete(&self, function: &FunctionRef) -> Result<bool, StoreError>;
    /// Records a new replica count; `false` if there is no such function.
    async fn set_replicas(&self, function: &FunctionRef, replicas: u32)
    -> Result<bool, StoreError>;
}

/// Calls not yet finished (see [`CallStore::backlog`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub queued: u64,
    pub running: u64,
    /// When the oldest call still queued was submitted.
    pub oldest_queued: Option<Timestamp>,
}

/// Which calls [`CallStore::list_calls`] returns: newest first, at most `limit`, older than `before`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallFilter {
    pub function: Option<FunctionRef>,
    pub state: Option<crate::call::CallState>,
    pub limit: u32,
    /// Continue after this call (a page's last): its submission time and id.
    pub before: Option<(Timestamp, CallId)>,
}

/// Records of async calls.
#[async_trait]
pub trait CallStore: Send + Sync + Debug {
    /// Calls matching `filter`, newest first, without their timelines (`timeline` is `None`:
    /// a page of calls reads no history).
    async fn list_calls(&self, filter: &CallFilter) -> Result<Vec<CallRecord>, StoreError>;
    /// Records a newly accepted call; `false` (and no change) if a call with that id exists.
    async fn create(&self, record: &CallRecord) -> Result<bool, StoreError>;
    /// [`Self::create`] for many calls in one statement: whether each was created.
    async fn create_many(&self, records: &[CallRecord]) -> Result<Vec<bool>, StoreError> {
        let mut created = Vec::with_capacity(records.len());
        for record in records {
            created.push(self.create(record).await?);
        }
        Ok(created)
    }
    /// The call's record with its timeline (`timeline` is `Some`): each attempt started (and
    /// not undone) with how it ended, each callback delivery recorded, each re-drive; the most
    /// recent of each, up to [`crate::TIMELINE_ATTEMPTS`], [`crate::TIMELINE_CALLBACKS`] and
    /// [`crate::TIMELINE_REDRIVES`]. The timeline is written by the same statements that
    /// record starts, outcomes, callbacks and re-drives.
    async fn get(&self, id: &CallId) -> Result<Option<CallRecord>, StoreError>;
    /// Deletes a call's record: only for a call whose submission failed (it was never queued).
    async fn forget(&self, id: &CallId) -> Result<bool, StoreError>;
    /// Marks a queued (or running: its last attempt was cut short) call running and counts an
    /// attempt; returns the attempt number (1-based), or `None` if the call must not run: it
    /// was cancelled, or it has finished.
    async fn start_attempt(&self, id: &CallId, at: Timestamp) -> Result<Option<u32>, StoreError>;
    /// [`Self::start_attempt`] for many calls in one write (one per few hundred calls): the
    /// attempt number of each call started. A call left out was not started (it was cancelled or has finished, or its
    /// record is gone); [`Self::start_attempt`] tells which.
    async fn start_attempts(
        &self,
        ids: &[CallId],
        at: Timestamp,
    ) -> Result<std::collections::HashMap<CallId, u32>, StoreError> {
        let mut started = std::collections::HashMap::with_capacity(ids.len());
        for id in ids {
            match self.start_attempt(id, at).await {
                Ok(Some(attempt)) => {
                    started.insert(id.clone(), attempt);
                }
                Ok(None) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(started)
    }
    /// Undoes [`Self::start_attempt`] for a call that was started but did not run after all
    /// (it goes back on the queue untouched): queued again, `attempt` not counted. Nothing
    /// changes unless the call is still running on `attempt`. What the start cleared (the
    /// last attempt's outcome, on a call waiting for a retry) is not brought back; the
    /// attempt leaves the timeline.
    async fn undo_start(&self, id: &CallId, attempt: u32) -> Result<(), StoreError>;
    /// Cancels a call that is still queued. Returns the record as it now is, `None` if there is
    /// no such call; a call past `queued` is returned unchanged.
    async fn cancel(&self, id: &CallId, at: Timestamp) -> Result<Option<CallRecord>, StoreError>;
    /// Records how the invocation ended, on the record and on the timeline's current attempt
    /// (a retry is an outcome whose state is `queued`: the attempt failed).
    async fn finish(&self, id: &CallId, outcome: &CallOutcome) -> Result<(), StoreError>;
    /// Keeps the response (if any), then records how the invocation ended: a finished call
    /// always has the response it was meant to keep.
    async fn finish_with_result(
        &self,
        id: &CallId,
        outcome: &CallOutcome,
        result: Option<&CallResult>,
    ) -> Result<(), StoreError> {
        if let Some(result) = result {
            self.store_result(id, result).await?;
        }
        self.finish(id, outcome).await
    }
    /// Keeps the function's response to a finished call (replacing any kept before).
    async fn store_result(&self, id: &CallId, result: &CallResult) -> Result<(), StoreError>;
    /// Drops a kept response.
    async fn forget_result(&self, id: &CallId) -> Result<(), StoreError>;
    /// The kept response, if there is one.
    async fn result(&self, id: &CallId) -> Result<Option<CallResult>, StoreError>;
    /// Drops responses and requests kept since before `before`; returns how many.
    async fn purge_results(&self, before: Timestamp) -> Result<u64, StoreError>;
    /// How many of `function`'s calls are queued or running, counting no further than `up_to`
    /// (so the answer costs at most that much however deep the backlog).
    async fn count_unfinished(&self, function: &FunctionRef, up_to: u64)
    -> Result<u64, StoreError>;
    /// Deletes at most `batch` calls that finished (succeeded, failed or were cancelled) before
    /// `before`, with their kept results and requests; returns how many. Queued and running
    /// calls are never deleted, however old.
    async fn purge_calls(&self, before: Timestamp, batch: u32) -> Result<u64, StoreError>;
    /// Keeps the request of a call that failed for good, so it can be re-driven.
    async fn keep_request(&self, call: &QueuedCall, at: Timestamp) -> Result<(), StoreError>;
    /// How many calls wait and run, and since when the oldest waiting one has waited.
    async fn backlog(&self) -> Result<Backlog, StoreError>;
    /// What the store is, in a word or two, for the portal's overview.
    fn backend(&self) -> &'static str {
        "store"
    }
    /// Whether the store's database answers now (a round trip).
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// The request kept for a call that failed for good (see [`Self::keep_request`]), to be
    /// looked at before it is re-driven; `None` when none is kept.
    async fn kept_request(&self, id: &CallId) -> Result<Option<QueuedCall>, StoreError>;
    /// Makes a failed call queued again for a re-drive (attempts start again from zero) and
    /// hands back its kept request. `None` (and no change) unless the call is `failed` with its
    /// request kept. The timeline keeps the earlier attempts and callbacks, and gains the
    /// re-drive.
    async fn requeue_failed(&self, id: &CallId) -> Result<Option<QueuedCall>, StoreError>;
    /// Records how the callback went: the record's `callback`, and a delivery on the timeline.
    async fn record_callback(
        &self,
        id: &CallId,
        outcome: &CallbackOutcome,
    ) -> Result<(), StoreError>;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    #[error("queue unavailable: {0}")]
    Unavailable(String),
    /// The queue holds as much as it is configured to; nothing was stored.
    #[error("queue full: {0}")]
    Full(String),
    /// The queue holds as many calls of this call's function as it takes; nothing was stored.
    #[error("{0}")]
    FunctionFull(String),
    #[error("the call's lease was lost (it will be redelivered)")]
    LeaseLost,
}

/// A call taken off the queue. Until it is acked or released, nobody else gets it; if the worker
/// dies, the lease runs out and the call is delivered again.
#[derive(Debug)]
pub struct Delivery {
    pub call: QueuedCall,
    /// How many times this call has been handed out, this time included.
    pub delivery_count: u32,
    pub lease: Box<dyn Lease>,
    /// The attempt the call is on, once it was started in the call store (see
    /// [`CallStore::start_attempt`]). The embedded queue, whose database holds the calls'
    /// records, starts the calls it hands out in the claim's own transaction; from any other
    /// queue a delivery comes with `None`, and the worker starts it.
    pub started: Option<u32>,
}

/// A worker's hold on one delivered call.
#[async_trait]
pub trait Lease: Send + Sync + Debug {
    /// Extends the lease while the call is still being worked on (an in-progress ack).
    async fn keep_alive(&self) -> Result<(), QueueError>;
    /// The call is done: remove it from the queue.
    async fn ack(self: Box<Self>) -> Result<(), QueueError>;
    /// Give the call back, to be delivered again after `delay`.
    async fn release(self: Box<Self>, delay: Duration) -> Result<(), QueueError>;
}

/// What became of a submitted call.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    /// Its record and its queued call are stored: it will run.
    Queued,
    /// The call id already belongs to this call. If it is a call to the same function and is
    /// still queued, it has been queued again (the queue keeps one call per id), so it runs;
    /// nothing is queued for a call to another function.
    Existing(Box<CallRecord>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The call id is taken in a way that cannot be answered from its record (the queue holds
    /// a call with this id whose record is gone); nothing was stored.
    #[error("{0}")]
    Conflict(String),
}

/// Takes accepted async calls. When [`CallIntake::submit`] returns `Ok`, the call's record
/// (state `queued`) and its queued call are both durable, so it will run; when it returns an
/// error, neither is left behind. Concurrent submissions are committed together (group
/// commit), and a submission whose caller goes away mid-way still completes or leaves nothing.
#[async_trait]
pub trait CallIntake: Send + Sync + Debug {
    async fn submit(&self, call: QueuedCall) -> Result<Submitted, SubmitError>;
}

/// The durable queue of async calls.
#[async_trait]
pub trait CallQueue: Send + Sync + Debug {
    /// Stores the call durably; when this returns `Ok` the call will be delivered at least once.
    /// `Ok(false)` means a call with this id is already on the queue and nothing was stored.
    async fn enqueue(&self, call: &QueuedCall) -> Result<bool, QueueError>;
    /// The next call that is due, waiting up to `max_wait` for one.
    async fn next(&self, max_wait: Duration) -> Result<Option<Delivery>, QueueError>;
    /// Up to `max` calls that are due now, in one go; if none is, the first to come within
    /// `max_wait`. A worker with room for several calls takes them together.
    async fn next_many(&self, max: usize, max_wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let _ = max;
        Ok(self.next(max_wait).await?.into_iter().collect())
    }
    /// How long a lease lasts without [`Lease::keep_alive`].
    fn lease_duration(&self) -> Duration;
    /// What the queue is, in a word or two, for the portal's overview.
    fn backend(&self) -> &'static str {
        "queue"
    }
    /// Whether the queue's server answers now (a round trip where there is a server).
    async fn ping(&self) -> Result<(), QueueError> {
        Ok(())
    }
}
