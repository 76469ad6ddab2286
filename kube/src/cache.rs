//! What the provider knows of the cluster, kept by watchers (list, then watch; never polled):
//! each function's Deployment (desired and ready replicas, and what stops it), its ready pod
//! addresses from its EndpointSlices, and its pods' troubles.
//!
//! The activator reads ready addresses from here for every request ([`EndpointSource`]); each
//! address keeps its [`ReplicaLoad`] while it stays ready, so requests in flight are counted
//! across updates, and an address that leaves its slices is closed to new requests at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use sluice_core::{EndpointSource, FunctionRef, ReadyReplica, ReadySet, ReplicaLoad, Replicas};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::objects::{FUNCTION_LABEL, WATCHDOG_PORT};

/// The label EndpointSlices name their Service by.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Most pods whose troubles are reported for one function.
const MAX_POD_PROBLEMS: usize = 3;
/// Longest problem text kept per object (the API server's messages are bounded, but not short).
const MAX_PROBLEM_CHARS: usize = 512;

/// One function's Deployment, as far as Sluice needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeploymentView {
    pub(crate) desired: u32,
    pub(crate) ready: u32,
    pub(crate) problem: Option<String>,
}

#[derive(Debug)]
struct Entry {
    deployment: Option<DeploymentView>,
    /// Ready addresses per EndpointSlice (a Service may have several).
    slices: BTreeMap<String, Vec<Arc<str>>>,
    /// The load of every ready address, kept while it stays ready.
    loads: HashMap<Arc<str>, Arc<ReplicaLoad>>,
    /// Troubles per pod.
    pods: BTreeMap<String, String>,
    changes: watch::Sender<u64>,
}

impl Entry {
    fn new() -> Self {
        Self {
            deployment: None,
            slices: BTreeMap::new(),
            loads: HashMap::new(),
            pods: BTreeMap::new(),
            changes: watch::channel(0).0,
        }
    }

    fn is_empty(&self) -> bool {
        self.deployment.is_none() && self.slices.is_empty() && self.pods.is_empty()
    }

    /// Recomputes the loads from the slices: new addresses get one, gone ones are closed.
    fn settle_loads(&mut self) {
        let ready: HashSet<&Arc<str>> = self.slices.values().flatten().collect();
        self.loads.retain(|url, load| {
            let keep = ready.contains(url);
            if !keep {
                load.close();
            }
            keep
        });
        for url in ready {
            self.loads.entry(url.clone()).or_default();
        }
    }

    fn bump(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// The watched state of every function namespace the provider follows.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    functions: Mutex<HashMap<FunctionRef, Entry>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn clip(mut s: String) -> String {
    if let Some((at, _)) = s.char_indices().nth(MAX_PROBLEM_CHARS) {
        s.truncate(at);
        s.push('…');
    }
    s
}

impl Cache {
    /// Changes one function's entry, dropping it when nothing is left of it, and wakes whoever
    /// waits on it.
    fn update(&self, function: &FunctionRef, change: impl FnOnce(&mut Entry)) {
        let mut functions = lock(&self.functions);
        let entry = functions.entry(function.clone()).or_insert_with(Entry::new);
        change(entry);
        entry.bump();
        if entry.is_empty() {
            for load in entry.loads.values() {
                load.close();
            }
            functions.remove(function);
        }
    }

    pub(crate) fn set_deployment(&self, function: &FunctionRef, view: Option<DeploymentView>) {
        self.update(function, |e| e.deployment = view);
    }

    pub(crate) fn deployment(&self, function: &FunctionRef) -> Option<DeploymentView> {
        lock(&self.functions).get(function)?.deployment.clone()
    }

    fn set_slice(&self, function: &FunctionRef, slice: &str, urls: Option<Vec<Arc<str>>>) {
        self.update(function, |e| {
            match urls {
                Some(urls) => e.slices.insert(slice.to_owned(), urls),
                None => e.slices.remove(slice),
            };
            e.settle_loads();
        });
    }

    fn set_pod(&self, function: &FunctionRef, pod: &str, problem: Option<String>) {
        self.update(function, |e| {
            match problem {
                Some(p) => e.pods.insert(pod.to_owned(), p),
                None => e.pods.remove(pod),
            };
        });
    }

    pub(crate) fn functions(&self) -> Vec<FunctionRef> {
        lock(&self.functions)
            .iter()
            .filter(|(_, e)| e.deployment.is_some())
            .map(|(f, _)| f.clone())
            .collect()
    }

    pub(crate) fn replicas(&self, function: &FunctionRef) -> Option<Replicas> {
        let d = self.deployment(function)?;
        Some(Replicas {
            desired: d.desired,
            ready: d.ready,
        })
    }

    pub(crate) fn problem(&self, function: &FunctionRef) -> Option<String> {
        let functions = lock(&self.functions);
        let e = functions.get(function)?;
        let mut problems: Vec<String> = e
            .deployment
            .as_ref()
            .and_then(|d| d.problem.clone())
            .into_iter()
            .collect();
        problems.extend(e.pods.values().take(MAX_POD_PROBLEMS).cloned());
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// Everything of `namespace` not in `seen` (a relist found it gone), for one kind.
    fn retain_seen(
        &self,
        namespace: &str,
        seen: &HashSet<(FunctionRef, String)>,
        kind: Kind,
    ) -> Vec<(FunctionRef, String)> {
        let functions = lock(&self.functions);
        let mut gone = Vec::new();
        for (f, e) in functions.iter().filter(|(f, _)| f.namespace == namespace) {
            let names: Vec<String> = match kind {
                Kind::Deployment => e
                    .deployment
                    .as_ref()
                    .map(|_| f.name.clone())
                    .into_iter()
                    .collect(),
                Kind::Slice => e.slices.keys().cloned().collect(),
                Kind::Pod => e.pods.keys().cloned().collect(),
            };
            for name in names {
                if !seen.contains(&(f.clone(), name.clone())) {
                    gone.push((f.clone(), name));
                }
            }
        }
        gone
    }
}

impl EndpointSource for Cache {
    fn ready(&self, function: &FunctionRef) -> Option<ReadySet> {
        let functions = lock(&self.functions);
        let e = functions.get(function)?;
        let desired = e.deployment.as_ref()?.desired;
        let ready = e
            .loads
            .iter()
            .map(|(url, load)| ReadyReplica {
                url: url.clone(),
                load: load.clone(),
            })
            .collect();
        Some(ReadySet {
            desired,
            ready,
            crash_loop: None,
        })
    }

    fn changes(&self, function: &FunctionRef) -> Option<watch::Receiver<u64>> {
        Some(lock(&self.functions).get(function)?.changes.subscribe())
    }
}

/// What a Deployment says of its function.
pub(crate) fn view(d: &Deployment) -> DeploymentView {
    let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let status = d.status.as_ref();
    let ready = status.and_then(|s| s.ready_replicas).unwrap_or(0);
    // A quota or admission refusal shows as ReplicaFailure; a rollout that cannot finish as
    // Progressing=False.
    let problem = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| {
            (c.type_ == "ReplicaFailure" && c.status == "True")
                || (c.type_ == "Progressing" && c.status == "False")
        })
        .map(|c| {
            clip(format!(
                "{}: {}",
                c.reason.as_deref().unwrap_or(&c.type_),
                c.message.as_deref().unwrap_or("")
            ))
        });
    DeploymentView {
        desired: u32::try_from(spec_replicas).unwrap_or(0),
        ready: u32::try_from(ready).unwrap_or(0),
        problem,
    }
}

/// Container states that mean the pod will not serve until someone acts.
const STUCK_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// What stops a pod from serving, if anything.
pub(crate) fn pod_problem(pod: &Pod) -> Option<String> {
    let name = pod.name_any();
    let status = pod.status.as_ref()?;
    for c in status.container_statuses.iter().flatten() {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if !STUCK_REASONS.contains(&reason) {
            continue;
        }
        let mut text = format!("pod {name}: {reason}");
        if let Some(message) = waiting.message.as_deref().filter(|m| !m.is_empty()) {
            text.push_str(&format!(": {message}"));
        }
        let exited = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
        if let Some(t) = exited {
            text.push_str(&format!(
                " (last exit code {}{})",
                t.exit_code,
                t.reason
                    .as_deref()
                    .map(|r| format!(", {r}"))
                    .unwrap_or_default()
            ));
        }
        return Some(clip(text));
    }
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| {
            clip(format!(
                "pod {name}: {}: {}",
                c.reason.as_deref().unwrap_or("Unschedulable"),
                c.message.as_deref().unwrap_or("")
            ))
        })
}

/// The ready addresses an EndpointSlice lists for its Service.
pub(crate) fn slice_urls(slice: &EndpointSlice) -> Vec<Arc<str>> {
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .or_else(|| slice.ports.iter().flatten().next())
        .and_then(|p| p.port)
        .unwrap_or(WATCHDOG_PORT);
    let v6 = slice.address_type == "IPv6";
    let mut urls: Vec<Arc<str>> = slice
        .endpoints
        .iter()
        // An unknown readiness means ready (the API's convention); terminating pods are not.
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter())
        .map(|a| {
            if v6 {
                format!("http://[{a}]:{port}")
            } else {
                format!("http://{a}:{port}")
            }
            .into()
        })
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Deployment,
    Slice,
    Pod,
}

/// The function an object belongs to, by its label.
fn function_of<K: Resource>(object: &K, label: &str) -> Option<(FunctionRef, String)> {
    let name = object.labels().get(label)?;
    let namespace = object.meta().namespace.clone()?;
    Some((
        FunctionRef {
            name: name.clone(),
            namespace,
        },
        object.meta().name.clone()?,
    ))
}

/// How a watcher's first list went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Synced {
    Pending,
    Done,
    /// The API server refused the list (permissions, most likely), in its words.
    Refused(String),
}

/// Follows one namespace's function Deployments, EndpointSlices and pods (or Deployments only)
/// until `stop`. Returns each watcher's first-list state.
pub(crate) fn follow(
    cache: Arc<Cache>,
    client: Client,
    namespace: &str,
    deployments_only: bool,
    stop: CancellationToken,
) -> Vec<watch::Receiver<Synced>> {
    let mut synced = Vec::new();
    let mut state = || {
        let (tx, rx) = watch::channel(Synced::Pending);
        synced.push(rx);
        tx
    };
    let functions = watcher::Config::default().labels(FUNCTION_LABEL);
    let slices = watcher::Config::default().labels(SERVICE_NAME_LABEL);
    tokio::spawn(run(
        cache.clone(),
        Api::<Deployment>::namespaced(client.clone(), namespace),
        functions.clone(),
        namespace.to_owned(),
        Kind::Deployment,
        stop.clone(),
        state(),
    ));
    if deployments_only {
        return synced;
    }
    tokio::spawn(run(
        cache.clone(),
        Api::<EndpointSlice>::namespaced(client.clone(), namespace),
        slices,
        namespace.to_owned(),
        Kind::Slice,
        stop.clone(),
        state(),
    ));
    tokio::spawn(run(
        cache,
        Api::<Pod>::namespaced(client, namespace),
        functions,
        namespace.to_owned(),
        Kind::Pod,
        stop,
        state(),
    ));
    synced
}

/// What one watched object means for the cache.
trait Watched: Resource + Clone + std::fmt::Debug + Send + 'static {
    /// Its function and own name, if it belongs to one.
    fn owner(&self) -> Option<(FunctionRef, String)>;
    fn apply(&self, cache: &Cache);
    fn forget(cache: &Cache, function: &FunctionRef, name: &str);
}

impl Watched for Deployment {
    fn owner(&self) -> Option<(FunctionRef, String)> {
        // A function's Deployment is named after it.
        function_of(self, FUNCTION_LABEL).filter(|(f, name)| f.name == *name)
    }
    fn apply(&self, cache: &Cache) {
        if let Some((f, _)) = self.owner() {
            cache.set_deployment(&f, Some(view(self)));
        }
    }
    fn forget(cache: &Cache, function: &FunctionRef, _: &str) {
        cache.set_deployment(function, None);
    }
}

impl Watched for EndpointSlice {
    fn owner(&self) -> Option<(FunctionRef, String)> {
        function_of(self, SERVICE_NAME_LABEL)
    }
    fn apply(&self, cache: &Cache) {
        if let Some((f, name)) = self.owner() {
            cache.set_slice(&f, &name, Some(slice_urls(self)));
        }
    }
    fn forget(cache: &Cache, function: &FunctionRef, name: &str) {
        cache.set_slice(function, name, None);
    }
}

impl Watched for Pod {
    fn owner(&self) -> Option<(FunctionRef, String)> {
        function_of(self, FUNCTION_LABEL)
    }
    fn apply(&self, cache: &Cache) {
        if let Some((f, name)) = self.owner() {
            cache.set_pod(&f, &name, pod_problem(self));
        }
    }
    fn forget(cache: &Cache, function: &FunctionRef, name: &str) {
        cache.set_pod(function, name, None);
    }
}

async fn run<K>(
    cache: Arc<Cache>,
    api: Api<K>,
    config: watcher::Config,
    namespace: String,
    kind: Kind,
    stop: CancellationToken,
    synced: watch::Sender<Synced>,
) where
    K: Watched + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let mut events = watcher(api, config).default_backoff().boxed();
    // What a relist has seen so far: at its end, the rest is gone.
    let mut relisting: Option<HashSet<(FunctionRef, String)>> = None;
    loop {
        let event = tokio::select! {
            () = stop.cancelled() => return,
            event = events.next() => event,
        };
        let Some(event) = event else { return };
        match event {
            Ok(watcher::Event::Init) => relisting = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(object)) => {
                if let (Some(seen), Some(owner)) = (relisting.as_mut(), object.owner()) {
                    seen.insert(owner);
                }
                object.apply(&cache);
            }
            Ok(watcher::Event::InitDone) => {
                synced.send_if_modified(|s| std::mem::replace(s, Synced::Done) != Synced::Done);
                let seen = relisting.take().unwrap_or_default();
                for (f, name) in cache.retain_seen(&namespace, &seen, kind) {
                    K::forget(&cache, &f, &name);
                }
            }
            Ok(watcher::Event::Apply(object)) => object.apply(&cache),
            Ok(watcher::Event::Delete(object)) => {
                if let Some((f, name)) = object.owner() {
                    K::forget(&cache, &f, &name);
                }
            }
            Err(error) => {
                if let watcher::Error::InitialListFailed(kube::Error::Api(status)) = &error
                    && status.is_forbidden()
                {
                    let refused = Synced::Refused(status.message.clone());
                    synced.send_if_modified(|s| std::mem::replace(s, refused.clone()) != refused);
                }
                tracing::warn!(%namespace, ?kind, %error, "watch failed; it is retried with backoff");
            }
        }
    }
}
