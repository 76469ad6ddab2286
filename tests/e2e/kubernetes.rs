//! The Kubernetes form end to end: `sluice gateway --provider kubernetes`, `sluice autoscaler`
//! and `sluice queue-worker`, the real binaries, against a fake Kubernetes API server over real
//! HTTP whose "kubelet" runs every pod as a real `sluice watchdog` process on this machine.
//!
//! The fake is a small stateful model of the API server, enough for what Sluice asks of it:
//! Deployments (with their scale subresource), Services, Secrets, pods, EndpointSlices and
//! Leases, listed and watched as kube-rs does it (a list, then newline-delimited events from the
//! list's resourceVersion on), writes checked against `metadata.resourceVersion`, refusals
//! answered with `Status` bodies. Its kubelet gives each Deployment its `spec.replicas` pods: a
//! watchdog with the container's environment, in rotation once its `/_/health` answers. Every pod
//! is 127.0.0.1 on a port of its own, and an EndpointSlice has one port list, so each pod gets a
//! slice of its own (the provider merges a Service's slices).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::{Notify, broadcast};
use tokio::time::Instant;

use crate::harness::{
    PATIENCE, Receiver, Shared, Sluice, eventually, functions_dir, get_json, http, scale,
    try_get_json,
};

/// The namespace functions go to (the gateway's default).
const NS: &str = "openfaas-fn";
/// Where the autoscalers' Lease is, as the chart puts it beside the gateways.
const LEASE_NS: &str = "openfaas";
const LEASE: &str = "sluice-autoscaler";
const IDENTITY: &str = "sluice-autoscaler-0";
const TOKEN: &str = "kubernetes-e2e-internal-token";
/// The service accounts the chart gives the gateways and the autoscaler, each with its token:
/// the fake tells who made each request (and answers 401 to anyone else).
const GATEWAY_USER: &str = "system:serviceaccount:openfaas:sluice-gateway";
const AUTOSCALER_USER: &str = "system:serviceaccount:openfaas:sluice-autoscaler";
const ACCOUNTS: [(&str, &str); 2] = [
    ("gateway-token", GATEWAY_USER),
    ("autoscaler-token", AUTOSCALER_USER),
];

// ---------------------------------------------------------------------------------------------
// The fake API server
// ---------------------------------------------------------------------------------------------

/// The kinds of object the fake keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Kind {
    Deployment,
    Service,
    Secret,
    Pod,
    EndpointSlice,
    Lease,
}

impl Kind {
    /// The kind a URL's group/version and resource name mean.
    fn from_path(group_version: &str, plural: &str) -> Option<Self> {
        Some(match (group_version, plural) {
            ("apps/v1", "deployments") => Self::Deployment,
            ("v1", "services") => Self::Service,
            ("v1", "secrets") => Self::Secret,
            ("v1", "pods") => Self::Pod,
            ("discovery.k8s.io/v1", "endpointslices") => Self::EndpointSlice,
            ("coordination.k8s.io/v1", "leases") => Self::Lease,
            _ => return None,
        })
    }

    fn api_version(self) -> &'static str {
        match self {
            Self::Deployment => "apps/v1",
            Self::Service | Self::Secret | Self::Pod => "v1",
            Self::EndpointSlice => "discovery.k8s.io/v1",
            Self::Lease => "coordination.k8s.io/v1",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Deployment => "Deployment",
            Self::Service => "Service",
            Self::Secret => "Secret",
            Self::Pod => "Pod",
            Self::EndpointSlice => "EndpointSlice",
            Self::Lease => "Lease",
        }
    }

    /// The resource as the API server names it in its messages (`deployments.apps`).
    fn resource(self) -> &'static str {
        match self {
            Self::Deployment => "deployments.apps",
            Self::Service => "services",
            Self::Secret => "secrets",
            Self::Pod => "pods",
            Self::EndpointSlice => "endpointslices.discovery.k8s.io",
            Self::Lease => "leases.coordination.k8s.io",
        }
    }
}

/// A label selector as `labelSelector=` carries it: `k`, `!k`, `k=v`, `k==v`, `k!=v`, joined
/// by commas.
#[derive(Debug, Clone, Default)]
struct Selector(Vec<(String, Requirement)>);

#[derive(Debug, Clone)]
enum Requirement {
    Exists,
    Absent,
    Is(String),
    IsNot(String),
}

impl Selector {
    fn parse(s: Option<&String>) -> Self {
        let terms = s.map(String::as_str).unwrap_or_default().split(',');
        Self(
            terms
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| {
                    if let Some((k, v)) = t.split_once("!=") {
                        (k.to_owned(), Requirement::IsNot(v.to_owned()))
                    } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                        (k.to_owned(), Requirement::Is(v.to_owned()))
                    } else if let Some(k) = t.strip_prefix('!') {
                        (k.to_owned(), Requirement::Absent)
                    } else {
                        (t.to_owned(), Requirement::Exists)
                    }
                })
                .collect(),
        )
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, r)| match r {
            Requirement::Exists => labels.contains_key(k),
            Requirement::Absent => !labels.contains_key(k),
            Requirement::Is(v) => labels.get(k) == Some(v),
            Requirement::IsNot(v) => labels.get(k) != Some(v),
        })
    }
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default()
}

/// One change, as a watch sends it.
#[derive(Debug)]
struct Event {
    version: u64,
    kind: Kind,
    namespace: String,
    labels: BTreeMap<String, String>,
    /// `{"type": ..., "object": ...}` and a newline.
    line: Bytes,
}

impl Event {
    fn for_watch(&self, kind: Kind, namespace: &str, selector: &Selector) -> bool {
        self.kind == kind && self.namespace == namespace && selector.matches(&self.labels)
    }
}

/// One request the fake was sent.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    /// The service account the request was made as.
    who: &'static str,
    method: Method,
    path: String,
    body: Option<Value>,
}

/// A running pod: its `sluice watchdog`.
#[derive(Debug)]
struct PodProcess {
    function: String,
    /// The pod template it was made from (a changed template replaces it).
    template: String,
    /// Made in this order: the newest go first on a scale-down.
    serial: u64,
    child: Child,
}

#[derive(Debug)]
struct ApiState {
    version: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    /// Every change so far, for watches that start from an earlier version.
    history: Vec<Arc<Event>>,
    events: broadcast::Sender<Arc<Event>>,
    seen: Vec<Seen>,
    /// Deployments whose creation is forbidden, as RBAC or an admission policy would.
    forbidden: BTreeSet<String>,
    /// Services whose creation is forbidden.
    forbidden_services: BTreeSet<String>,
    /// Requests the model has no answer for: a test fails on any.
    unexpected: Vec<String>,
    /// What went wrong in the kubelet: a test fails on any.
    kubelet_problems: Vec<String>,
    pods: BTreeMap<String, PodProcess>,
    /// Pods started, not ready yet.
    starting: BTreeMap<String, Child>,
    /// Pods told to stop (SIGTERM), killed at the end if they have not exited.
    stopping: Vec<Child>,
    serial: u64,
    /// Set when the fake goes: a pod started after that is killed at once.
    closed: bool,
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

impl ApiState {
    fn new() -> Self {
        Self {
            version: 100,
            objects: BTreeMap::new(),
            history: Vec::new(),
            events: broadcast::channel(1024).0,
            seen: Vec::new(),
            forbidden: BTreeSet::new(),
            forbidden_services: BTreeSet::new(),
            unexpected: Vec::new(),
            kubelet_problems: Vec::new(),
            pods: BTreeMap::new(),
            starting: BTreeMap::new(),
            stopping: Vec::new(),
            serial: 0,
            closed: false,
        }
    }

    fn get(&self, kind: Kind, namespace: &str, name: &str) -> Option<&Value> {
        self.objects
            .get(&(kind, namespace.to_owned(), name.to_owned()))
    }

    /// Stores `object` at a new resourceVersion and tells the watches; returns it as stored.
    fn store(&mut self, kind: Kind, namespace: &str, mut object: Value, created: bool) -> Value {
        self.version += 1;
        let name = object["metadata"]["name"]
            .as_str()
            .expect("a named object")
            .to_owned();
        object["apiVersion"] = json!(kind.api_version());
        object["kind"] = json!(kind.name());
        object["metadata"]["namespace"] = json!(namespace);
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.emit(
            kind,
            namespace,
            if created { "ADDED" } else { "MODIFIED" },
            &object,
        );
        self.objects
            .insert((kind, namespace.to_owned(), name), object.clone());
        object
    }

    /// Removes an object and tells the watches; returns it, if it was there.
    fn remove(&mut self, kind: Kind, namespace: &str, name: &str) -> Option<Value> {
        let mut object = self
            .objects
            .remove(&(kind, namespace.to_owned(), name.to_owned()))?;
        self.version += 1;
        object["metadata"]["resourceVersion"] = json!(self.version.to_string());
        self.emit(kind, namespace, "DELETED", &object);
        Some(object)
    }

    fn emit(&mut self, kind: Kind, namespace: &str, kind_of_change: &str, object: &Value) {
        let mut line =
            serde_json::to_vec(&json!({"type": kind_of_change, "object": object})).expect("JSON");
        line.push(b'\n');
        let event = Arc::new(Event {
            version: self.version,
            kind,
            namespace: namespace.to_owned(),
            labels: labels_of(object),
            line: line.into(),
        });
        self.history.push(event.clone());
        // No watch open is fine: the history has it.
        let _ = self.events.send(event);
    }

    /// Sets a Deployment's status from its pods, as the Deployment controller would.
    fn settle_status(&mut self, function: &str) {
        let ready = self
            .pods
            .values()
            .filter(|p| p.function == function)
            .count();
        let Some(mut deployment) = self.get(Kind::Deployment, NS, function).cloned() else {
            return;
        };
        // The API server leaves zero counts out.
        let mut status = serde_json::Map::new();
        status.insert(
            "observedGeneration".into(),
            deployment["metadata"]["generation"].clone(),
        );
        if ready > 0 {
            for field in [
                "replicas",
                "updatedReplicas",
                "readyReplicas",
                "availableReplicas",
            ] {
                status.insert(field.into(), json!(ready));
            }
        }
        let status = Value::Object(status);
        if deployment["status"] != status {
            deployment["status"] = status;
            self.store(Kind::Deployment, NS, deployment, false);
        }
    }
}

/// The API server's answer to a refused request.
fn refusal(code: u16, reason: &str, message: String) -> Response {
    reply(
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code,
        }),
    )
}

fn not_found(kind: Kind, name: &str) -> Response {
    refusal(
        404,
        "NotFound",
        format!("{} \"{name}\" not found", kind.resource()),
    )
}

fn reply(code: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(code).expect("a status code"),
        [("content-type", "application/json")],
        serde_json::to_vec(&body).expect("JSON"),
    )
        .into_response()
}

/// A Deployment's scale subresource.
fn scale_of(deployment: &Value) -> Value {
    let name = deployment["metadata"]["name"].clone();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": name, "namespace": NS,
            "resourceVersion": deployment["metadata"]["resourceVersion"],
            "uid": deployment["metadata"]["uid"],
            "creationTimestamp": deployment["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": deployment["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": deployment["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": format!("faas_function={}", name.as_str().unwrap_or_default()),
        },
    })
}

/// What the fake API server and its kubelet share.
#[derive(Debug)]
struct Api {
    state: Mutex<ApiState>,
    /// Pokes the kubelet when a Deployment changed.
    kubelet: Notify,
    /// Where pods' logs go.
    logs: PathBuf,
}

impl Api {
    fn lock(&self) -> MutexGuard<'_, ApiState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unexpected(&self, method: &Method, uri: &Uri) -> Response {
        let what = format!("{method} {uri}");
        self.lock().unexpected.push(what.clone());
        refusal(
            405,
            "MethodNotAllowed",
            format!("the fake API server has no answer for {what}"),
        )
    }

    fn list(&self, kind: Kind, namespace: &str, query: &HashMap<String, String>) -> Response {
        let selector = Selector::parse(query.get("labelSelector"));
        let state = self.lock();
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|((k, ns, _), o)| {
                *k == kind && ns == namespace && selector.matches(&labels_of(o))
            })
            .map(|(_, o)| o.clone())
            .collect();
        reply(
            200,
            json!({
                "apiVersion": kind.api_version(), "kind": format!("{}List", kind.name()),
                "metadata": {"resourceVersion": state.version.to_string()},
                "items": items,
            }),
        )
    }

    /// A watch: what changed after the `resourceVersion` asked for, then every change as it
    /// happens, until the client hangs up (or falls too far behind: it then watches again from
    /// its last version).
    fn watch(&self, kind: Kind, namespace: &str, query: &HashMap<String, String>) -> Response {
        let selector = Selector::parse(query.get("labelSelector"));
        let since = query
            .get("resourceVersion")
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|v| *v > 0);
        // Under the lock: nothing is written between the history read and the subscription.
        let (missed, live) = {
            let state = self.lock();
            let missed: Vec<Bytes> = since
                .map(|since| {
                    state
                        .history
                        .iter()
                        .filter(|e| e.version > since && e.for_watch(kind, namespace, &selector))
                        .map(|e| e.line.clone())
                        .collect()
                })
                .unwrap_or_default();
            (missed, state.events.subscribe())
        };
        let namespace = namespace.to_owned();
        let live = futures_util::stream::unfold(live, move |mut live| {
            let (namespace, selector) = (namespace.clone(), selector.clone());
            async move {
                loop {
                    match live.recv().await {
                        Ok(e) if e.for_watch(kind, &namespace, &selector) => {
                            return Some((e.line.clone(), live));
                        }
                        Ok(_) => {}
                        Err(_) => return None,
                    }
                }
            }
        });
        let lines = futures_util::stream::iter(missed)
            .chain(live)
            .map(Ok::<_, Infallible>);
        Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(Body::from_stream(lines))
            .expect("a response")
    }

    fn create(&self, who: &str, kind: Kind, namespace: &str, body: Option<Value>) -> Response {
        let Some(mut object) = body else {
            return refusal(400, "BadRequest", "the request has no body".into());
        };
        let Some(name) = object["metadata"]["name"].as_str().map(str::to_owned) else {
            return refusal(422, "Invalid", "metadata.name: Required value".into());
        };
        let mut state = self.lock();
        if kind == Kind::Deployment && state.forbidden.contains(&name) {
            return refusal(
                403,
                "Forbidden",
                format!(
                    "deployments.apps is forbidden: User \"{who}\" cannot create \
                     resource \"deployments\" in API group \"apps\" in the namespace \
                     \"{namespace}\""
                ),
            );
        }
        if kind == Kind::Service && state.forbidden_services.contains(&name) {
            return refusal(
                403,
                "Forbidden",
                format!(
                    "services is forbidden: User \"{who}\" cannot create resource \"services\" \
                     in API group \"\" in the namespace \"{namespace}\""
                ),
            );
        }
        if state.get(kind, namespace, &name).is_some() {
            return refusal(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", kind.resource()),
            );
        }
        object["metadata"]["uid"] = json!(uuid::Uuid::new_v4().to_string());
        object["metadata"]["creationTimestamp"] = json!(now_rfc3339());
        match kind {
            Kind::Deployment => {
                object["metadata"]["generation"] = json!(1);
                object["status"] = json!({});
            }
            Kind::Service => {
                let ip = format!("10.96.0.{}", state.version % 250 + 2);
                object["spec"]["clusterIP"] = json!(ip);
                object["spec"]["clusterIPs"] = json!([ip]);
            }
            _ => {}
        }
        let stored = state.store(kind, namespace, object, true);
        drop(state);
        if kind == Kind::Deployment {
            self.kubelet.notify_one();
        }
        reply(201, stored)
    }

    fn replace(&self, kind: Kind, namespace: &str, name: &str, body: Option<Value>) -> Response {
        let Some(mut object) = body else {
            return refusal(400, "BadRequest", "the request has no body".into());
        };
        let mut state = self.lock();
        let Some(live) = state.get(kind, namespace, name).cloned() else {
            return not_found(kind, name);
        };
        let asked = object["metadata"]["resourceVersion"].as_str();
        if asked.is_some_and(|v| Some(v) != live["metadata"]["resourceVersion"].as_str()) {
            return refusal(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been \
                     modified; please apply your changes to the latest version and try again",
                    kind.resource()
                ),
            );
        }
        for field in ["uid", "creationTimestamp", "generation"] {
            object["metadata"][field] = live["metadata"][field].clone();
        }
        match kind {
            Kind::Deployment => {
                // The status is the controller's: a replace leaves it as it was.
                object["status"] = live["status"].clone();
                if object["spec"] != live["spec"] {
                    let generation = live["metadata"]["generation"].as_i64().unwrap_or(1);
                    object["metadata"]["generation"] = json!(generation + 1);
                }
            }
            Kind::Service => {
                for field in ["clusterIP", "clusterIPs"] {
                    if object["spec"][field].is_null() {
                        object["spec"][field] = live["spec"][field].clone();
                    }
                }
            }
            _ => {}
        }
        if object["metadata"]["generation"].is_null() {
            object["metadata"]
                .as_object_mut()
                .expect("metadata")
                .remove("generation");
        }
        let stored = state.store(kind, namespace, object, false);
        drop(state);
        if kind == Kind::Deployment {
            self.kubelet.notify_one();
        }
        reply(200, stored)
    }

    fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Response {
        let removed = self.lock().remove(kind, namespace, name);
        let Some(object) = removed else {
            return not_found(kind, name);
        };
        if kind == Kind::Deployment {
            self.kubelet.notify_one();
        }
        reply(200, object)
    }

    /// `PATCH .../deployments/<name>/scale` with a merge patch `{"spec":{"replicas":N}}`.
    fn patch_scale(&self, name: &str, body: Option<Value>) -> Response {
        let Some(replicas) = body
            .as_ref()
            .and_then(|b| b.pointer("/spec/replicas"))
            .and_then(Value::as_i64)
            .filter(|n| *n >= 0)
        else {
            return refusal(
                422,
                "Invalid",
                format!("Scale.autoscaling \"{name}\" is invalid: spec.replicas: Invalid value"),
            );
        };
        let mut state = self.lock();
        let Some(mut deployment) = state.get(Kind::Deployment, NS, name).cloned() else {
            return not_found(Kind::Deployment, name);
        };
        if deployment["spec"]["replicas"].as_i64() != Some(replicas) {
            deployment["spec"]["replicas"] = json!(replicas);
            let generation = deployment["metadata"]["generation"].as_i64().unwrap_or(1);
            deployment["metadata"]["generation"] = json!(generation + 1);
            deployment = state.store(Kind::Deployment, NS, deployment, false);
        }
        drop(state);
        self.kubelet.notify_one();
        reply(200, scale_of(&deployment))
    }
}

/// Every request to the fake API server.
async fn serve(
    State(api): State<Arc<Api>>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(&(_, who)) = ACCOUNTS.iter().find(|(t, _)| Some(*t) == token) else {
        api.lock()
            .unexpected
            .push(format!("{method} {uri} without a known token"));
        return refusal(401, "Unauthorized", "Unauthorized".into());
    };
    let body: Option<Value> = (!body.is_empty())
        .then(|| serde_json::from_slice(&body).ok())
        .flatten();
    api.lock().seen.push(Seen {
        at: Instant::now(),
        who,
        method: method.clone(),
        path: uri.path().to_owned(),
        body: body.clone(),
    });
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (group_version, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return api.unexpected(&method, &uri),
    };
    match rest {
        // Namespaces are the cluster's: the gateway's account may not read them (the chart's
        // default, rbac.listNamespaces off).
        ["namespaces"] | ["namespaces", _] if group_version == "v1" => refusal(
            403,
            "Forbidden",
            format!(
                "namespaces is forbidden: User \"{who}\" cannot list resource \
                 \"namespaces\" in API group \"\" at the cluster scope"
            ),
        ),
        ["namespaces", namespace, plural, tail @ ..] => {
            let Some(kind) = Kind::from_path(&group_version, plural) else {
                return api.unexpected(&method, &uri);
            };
            match (&method, tail) {
                (&Method::GET, []) if query.get("watch").is_some_and(|w| w == "true") => {
                    api.watch(kind, namespace, &query)
                }
                (&Method::GET, []) => api.list(kind, namespace, &query),
                (&Method::POST, []) => api.create(who, kind, namespace, body),
                (&Method::GET, [name]) => match api.lock().get(kind, namespace, name) {
                    Some(object) => reply(200, object.clone()),
                    None => not_found(kind, name),
                },
                (&Method::PUT, [name]) => api.replace(kind, namespace, name, body),
                (&Method::DELETE, [name]) => api.delete(kind, namespace, name),
                (&Method::GET, [name, "scale"]) if kind == Kind::Deployment && *namespace == NS => {
                    match api.lock().get(kind, namespace, name) {
                        Some(d) => reply(200, scale_of(d)),
                        None => not_found(kind, name),
                    }
                }
                (&Method::PATCH, [name, "scale"])
                    if kind == Kind::Deployment && *namespace == NS =>
                {
                    api.patch_scale(name, body)
                }
                _ => api.unexpected(&method, &uri),
            }
        }
        _ => api.unexpected(&method, &uri),
    }
}

// ---------------------------------------------------------------------------------------------
// The fake kubelet
// ---------------------------------------------------------------------------------------------

/// The pod template of a Deployment, as text: a changed one means new pods.
fn template_of(deployment: &Value) -> String {
    deployment["spec"]["template"].to_string()
}

/// What the kubelet must do to bring the pods to what the Deployments ask.
#[derive(Debug, Default)]
struct Plan {
    stop: Vec<String>,
    start: Vec<(String, Value)>,
}

impl Plan {
    fn is_empty(&self) -> bool {
        self.stop.is_empty() && self.start.is_empty()
    }
}

impl Api {
    fn plan(&self) -> Plan {
        let state = self.lock();
        let mut plan = Plan::default();
        let deployments: BTreeMap<&str, &Value> = state
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == Kind::Deployment && ns == NS)
            .map(|((_, _, name), d)| (name.as_str(), d))
            .collect();
        for (name, pod) in &state.pods {
            match deployments.get(pod.function.as_str()) {
                Some(d) if template_of(d) == pod.template => {}
                _ => plan.stop.push(name.clone()),
            }
        }
        for (function, d) in deployments {
            let desired = usize::try_from(d["spec"]["replicas"].as_i64().unwrap_or(1)).unwrap_or(0);
            let template = template_of(d);
            let mut current: Vec<(&u64, &String)> = state
                .pods
                .iter()
                .filter(|(_, p)| p.function == function && p.template == template)
                .map(|(name, p)| (&p.serial, name))
                .collect();
            current.sort();
            if current.len() > desired {
                plan.stop
                    .extend(current[desired..].iter().map(|(_, name)| (*name).clone()));
            }
            for _ in current.len()..desired {
                plan.start.push((function.to_owned(), (*d).clone()));
            }
        }
        plan
    }

    /// Takes a pod out of rotation (its slice and pod object go), then stops it as Kubernetes
    /// does: SIGTERM, the watchdog drains.
    fn stop_pod(&self, name: &str) {
        let child = {
            let mut state = self.lock();
            let Some(pod) = state.pods.remove(name) else {
                return;
            };
            state.remove(Kind::EndpointSlice, NS, name);
            state.remove(Kind::Pod, NS, name);
            state.settle_status(&pod.function);
            pod.child
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        self.lock().stopping.push(child);
    }

    /// Starts one pod of `deployment`; `false` if it could not be made ready.
    async fn start_pod(self: &Arc<Self>, function: String, deployment: Value) -> bool {
        let serial = {
            let mut state = self.lock();
            state.serial += 1;
            state.serial
        };
        let name = format!("{function}-{serial}");
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        let env: Vec<(String, String)> = container["env"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| {
                Some((
                    e["name"].as_str()?.to_owned(),
                    e["value"].as_str()?.to_owned(),
                ))
            })
            .collect();
        let log = self.logs.join(format!("{name}.log"));
        let started = {
            let (api, name, log) = (self.clone(), name.clone(), log.clone());
            tokio::task::spawn_blocking(move || start_watchdog(&api, &name, &env, &log))
                .await
                .expect("the watchdog start did not panic")
        };
        let fail = |problem: String| {
            let mut state = self.lock();
            if let Some(mut child) = state.starting.remove(&name) {
                let _ = child.kill();
                state.stopping.push(child);
            }
            state
                .kubelet_problems
                .push(format!("pod {name}: {problem}; see {}", log.display()));
            false
        };
        let port = match started {
            Ok(port) => port,
            Err(problem) => return fail(problem),
        };
        // The readiness probe: in rotation once the watchdog says the function is ready.
        let probe = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .expect("a client");
        let deadline = Instant::now() + Duration::from_secs(30);
        let health = format!("http://127.0.0.1:{port}/_/health");
        loop {
            if let Ok(r) = probe.get(&health).send().await
                && r.status().is_success()
            {
                break;
            }
            let exited = self
                .lock()
                .starting
                .get_mut(&name)
                .and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                return fail(format!("the watchdog exited ({status})"));
            }
            if Instant::now() > deadline {
                return fail("never ready".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut state = self.lock();
        let Some(mut child) = state.starting.remove(&name) else {
            return true;
        };
        let wanted = state
            .get(Kind::Deployment, NS, &function)
            .is_some_and(|d| template_of(d) == template_of(&deployment));
        if !wanted {
            // Changed or removed while it started: the next round sees to it.
            let _ = child.kill();
            state.stopping.push(child);
            return true;
        }
        let image = container["image"].clone();
        let pod = json!({
            "metadata": {
                "name": name, "uid": uuid::Uuid::new_v4().to_string(),
                "creationTimestamp": now_rfc3339(),
                "labels": deployment["spec"]["template"]["metadata"]["labels"],
            },
            "spec": {"containers": [{"name": function, "image": image}]},
            "status": {
                "phase": "Running", "podIP": "127.0.0.1",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{
                    "name": function, "image": image, "imageID": "", "ready": true,
                    "started": true, "restartCount": 0, "state": {"running": {}},
                }],
            },
        });
        let slice = json!({
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/service-name": function,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{
                "addresses": ["127.0.0.1"],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "name": name, "namespace": NS},
            }],
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        });
        state.pods.insert(
            name,
            PodProcess {
                function: function.clone(),
                template: template_of(&deployment),
                serial,
                child,
            },
        );
        state.store(Kind::Pod, NS, pod, true);
        state.store(Kind::EndpointSlice, NS, slice, true);
        state.settle_status(&function);
        true
    }
}

/// Starts `sluice watchdog` as a function's container runs it: in the image's working directory
/// (the sample functions), with the image's environment and then the container's. It is kept
/// as pod `name` (starting) from the moment it runs; returns the port it listens on.
fn start_watchdog(
    api: &Api,
    name: &str,
    env: &[(String, String)],
    log: &Path,
) -> Result<u16, String> {
    let log_file = std::fs::File::create(log).map_err(|e| e.to_string())?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["watchdog", "--listen", "127.0.0.1:0"])
        .current_dir(functions_dir())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // functions/Dockerfile's ENV.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("SLUICE_LOG", "info")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("cannot start sluice watchdog: {e}"))?;
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    {
        let mut state = api.lock();
        if state.closed {
            let _ = child.kill();
            let _ = child.wait();
            return Err("the fake is gone".into());
        }
        state.starting.insert(name.to_owned(), child);
    }
    let mut first = String::new();
    let _ = stdout.read_line(&mut first);
    // The function's own output goes on; keep reading it so its pipe never fills.
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    first
        .trim()
        .strip_prefix("sluice watchdog listening on http://")
        .and_then(|addr| addr.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .ok_or_else(|| format!("unexpected first line {first:?}"))
}

/// Brings the pods to what the Deployments ask, each time one changes.
async fn kubelet(api: Arc<Api>) {
    loop {
        api.kubelet.notified().await;
        loop {
            let plan = api.plan();
            if plan.is_empty() {
                break;
            }
            for pod in &plan.stop {
                api.stop_pod(pod);
            }
            let started = futures_util::future::join_all(
                plan.start
                    .into_iter()
                    .map(|(function, deployment)| api.start_pod(function, deployment)),
            )
            .await;
            if started.contains(&false) {
                // As a kubelet backs off a pod that does not start.
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The fake API server on a free port, its kubelet, and a kubeconfig pointing at it for each
/// service account. Every pod it started is killed when it is dropped.
#[derive(Debug)]
struct FakeKube {
    api: Arc<Api>,
    /// The gateway's kubeconfig, then the autoscaler's.
    kubeconfigs: [PathBuf; 2],
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A kubeconfig for `server` as a user with `token`, as one made from a service account's.
fn kubeconfig(server: std::net::SocketAddr, token: &str) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: fake\n  cluster:\n    server: http://{server}\n\
         contexts:\n\
         - name: fake\n  context:\n    cluster: fake\n    user: sluice\n    namespace: {NS}\n\
         current-context: fake\n\
         users:\n\
         - name: sluice\n  user:\n    token: {token}\n"
    )
}

impl FakeKube {
    async fn start(dir: &Path) -> Self {
        let logs = dir.join("pods");
        std::fs::create_dir_all(&logs).unwrap();
        let api = Arc::new(Api {
            state: Mutex::new(ApiState::new()),
            kubelet: Notify::new(),
            logs,
        });
        let app = axum::Router::new().fallback(serve).with_state(api.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = listener.local_addr().unwrap();
        let kubeconfigs = ACCOUNTS.map(|(token, _)| {
            let path = dir.join(format!("{token}.kubeconfig"));
            std::fs::write(&path, kubeconfig(server, token)).unwrap();
            path
        });
        let tasks = vec![
            tokio::spawn(async move { axum::serve(listener, app).await.unwrap() }),
            tokio::spawn(kubelet(api.clone())),
        ];
        Self {
            api,
            kubeconfigs,
            tasks,
        }
    }

    fn object(&self, kind: Kind, name: &str) -> Option<Value> {
        self.api.lock().get(kind, NS, name).cloned()
    }

    /// The pods running for `function` (ready: a pod is only kept once it is).
    fn pods(&self, function: &str) -> usize {
        self.api
            .lock()
            .pods
            .values()
            .filter(|p| p.function == function)
            .count()
    }

    /// Requests of `method` to `path`, in order.
    fn seen(&self, method: Method, path: &str) -> Vec<Seen> {
        self.api
            .lock()
            .seen
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .cloned()
            .collect()
    }

    fn forbid_creating(&self, deployment: &str) {
        self.api.lock().forbidden.insert(deployment.to_owned());
    }

    fn forbid_creating_service(&self, service: &str) {
        self.api
            .lock()
            .forbidden_services
            .insert(service.to_owned());
    }

    fn lease_holder(&self) -> Option<String> {
        let state = self.api.lock();
        let lease = state.get(Kind::Lease, LEASE_NS, LEASE)?;
        lease["spec"]["holderIdentity"].as_str().map(str::to_owned)
    }

    /// Every request had an answer, and every pod started.
    fn check(&self) {
        let state = self.api.lock();
        assert!(
            state.unexpected.is_empty(),
            "requests the fake API server did not expect: {:?}",
            state.unexpected
        );
        assert!(
            state.kubelet_problems.is_empty(),
            "the kubelet's troubles: {:?}",
            state.kubelet_problems
        );
    }
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let mut state = self.api.lock();
        state.closed = true;
        let pods = std::mem::take(&mut state.pods);
        let starting = std::mem::take(&mut state.starting);
        for mut child in pods
            .into_values()
            .map(|p| p.child)
            .chain(starting.into_values())
            .chain(state.stopping.drain(..))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Kubernetes form: gateway, autoscaler, queue worker
// ---------------------------------------------------------------------------------------------

/// A gateway on the fake cluster (Postgres and NATS of its own), and what a test adds to it.
/// Fields drop in order: Sluice's processes, then the pods, then NATS and the database.
struct Cluster {
    gateway: Sluice,
    worker: Option<Sluice>,
    autoscaler: Option<Sluice>,
    kube: FakeKube,
    shared: Shared,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let shared = Shared::start().await;
        let kube = FakeKube::start(dir.path()).await;
        let data = dir.path().join("gateway");
        let mut args: Vec<String> = [
            "gateway",
            "--provider",
            "kubernetes",
            "--kubeconfig",
            kube.kubeconfigs[0].to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--db-connections",
            "6",
            "--internal-token",
            TOKEN,
            "--callback-allow-private",
        ]
        .map(str::to_owned)
        .into();
        args.extend(shared.args());
        let log = dir.path().join("gateway.log");
        // It blocks until the gateway listens, while the fake API server answers it.
        let gateway = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Sluice::run(&args, &log)
        })
        .await
        .unwrap();
        Self {
            gateway,
            worker: None,
            autoscaler: None,
            kube,
            shared,
            http: http(),
            dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.url)
    }

    /// Starts `sluice autoscaler` and waits until it is healthy and leads.
    async fn start_autoscaler(&mut self) {
        let health = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut args: Vec<String> = [
            "autoscaler",
            "--listen",
            &health.to_string(),
            "--kubeconfig",
            self.kube.kubeconfigs[1].to_str().unwrap(),
            "--lease-namespace",
            LEASE_NS,
            "--lease-name",
            LEASE,
            "--identity",
            IDENTITY,
        ]
        .map(str::to_owned)
        .into();
        args.extend(self.shared.args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = self.dir.path().join("autoscaler.log");
        let autoscaler = self.autoscaler.insert(Sluice::spawn_quiet(&args, &log));
        // It prints nothing when it is up: its health endpoint says so.
        let health = format!("http://{health}/healthz");
        let probe = reqwest::Client::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = autoscaler.exited() {
                panic!("sluice autoscaler exited ({status}); see {}", log.display());
            }
            if let Ok(r) = probe.get(&health).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sluice autoscaler never became healthy; see {}",
                log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eventually("the autoscaler to take the Lease", || async {
            (self.kube.lease_holder().as_deref() == Some(IDENTITY)).then_some(())
        })
        .await;
    }

    /// Starts a `sluice queue-worker` on this gateway.
    fn start_worker(&mut self) {
        let mut args: Vec<String> = [
            "queue-worker",
            "--gateway-url",
            &self.gateway.url,
            "--db-connections",
            "4",
            "--internal-token",
            TOKEN,
            "--callback-allow-private",
        ]
        .map(str::to_owned)
        .into();
        args.extend(self.shared.args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.worker = Some(Sluice::run(&args, &self.dir.path().join("worker.log")));
    }

    /// Deploys a function as `faas-cli deploy` sends it.
    async fn deploy(&self, name: &str, labels: Value) -> reqwest::Response {
        self.http
            .post(self.url("/system/functions"))
            .json(&json!({
                "service": name,
                "image": format!("ghcr.io/sluice-dev/{name}:0.1.0"),
                "envProcess": "python3 -u echo.py",
                "envVars": {"mode": "http"},
                "constraints": [],
                "secrets": [],
                "labels": labels,
                "annotations": {},
                "limits": null,
                "requests": null,
                "readOnlyRootFilesystem": false,
            }))
            .send()
            .await
            .unwrap()
    }

    async fn call(&self, function: &str, body: &'static str) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/function/{function}")))
            .body(body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .unwrap()
    }

    /// Waits until the gateway says `function` has `available` ready replicas of `replicas`.
    async fn replicas(&self, function: &str, replicas: u64, available: u64) -> Value {
        let url = self.url(&format!("/system/function/{function}"));
        eventually(
            &format!("{function} at {available}/{replicas} on the gateway"),
            || async {
                let f: Value = try_get_json(&self.http, url.clone()).await?;
                (f["replicas"] == replicas && f["availableReplicas"] == available).then_some(f)
            },
        )
        .await
    }

    /// The gateway's log, for failure messages.
    fn gateway_log(&self) -> String {
        self.log("gateway")
    }

    fn log(&self, process: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{process}.log"))).unwrap_or_default()
    }

    /// The fake had an answer for everything, and every watch read what it was sent (a watch
    /// that fails, on an object it cannot read say, is retried and logged).
    fn check(&self) {
        self.kube.check();
        for process in ["gateway", "autoscaler"] {
            let log = self.log(process);
            assert!(!log.contains("watch failed"), "{process}:\n{log}");
        }
    }
}

fn env_of(deployment: &Value) -> BTreeMap<String, String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploy_invoke_async_and_remove_through_the_api_server() {
    let mut c = Cluster::start().await;
    c.start_worker();

    // Deploy as faas-cli does: the API server is given a Deployment running the function's
    // command in HTTP mode, and a Service.
    let r = c.deploy("echo", json!({})).await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let deployment = c
        .kube
        .object(Kind::Deployment, "echo")
        .expect("a Deployment");
    let env = env_of(&deployment);
    assert_eq!(
        env.get("fprocess").map(String::as_str),
        Some("python3 -u echo.py")
    );
    assert_eq!(env.get("mode").map(String::as_str), Some("http"));
    assert_eq!(deployment["spec"]["replicas"], 1);
    let service = c.kube.object(Kind::Service, "echo").expect("a Service");
    assert_eq!(service["spec"]["selector"]["faas_function"], "echo");

    // The first call is held until the pod is ready, then goes gateway → activator → the
    // address in the EndpointSlice → watchdog → function.
    let r = c.call("echo", "hello through the pod").await;
    assert_eq!(r.status(), 200, "{}", c.gateway_log());
    assert_eq!(r.headers()["x-echo-method"], "POST");
    assert_eq!(r.text().await.unwrap(), "hello through the pod");
    assert_eq!(c.kube.pods("echo"), 1);

    // Listed with its replicas as the Deployment's status says (the kubelet's doing).
    let echo = eventually("echo listed with its ready replica", || async {
        let listed: Vec<Value> = try_get_json(&c.http, c.url("/system/functions")).await?;
        let echo = listed.into_iter().find(|f| f["name"] == "echo")?;
        (echo["availableReplicas"] == 1).then_some(echo)
    })
    .await;
    assert_eq!(echo["namespace"], NS);
    assert_eq!(echo["replicas"], 1);
    assert_eq!(echo["image"], "ghcr.io/sluice-dev/echo:0.1.0");
    assert_eq!(echo["envProcess"], "python3 -u echo.py");
    let info: Value = get_json(&c.http, c.url("/system/info")).await;
    assert_eq!(info["provider"]["orchestration"], "kubernetes");

    // Asynchronously: queued, run by the worker through the gateway, called back.
    let receiver = Receiver::start().await;
    let r = c
        .http
        .post(c.url("/async-function/echo"))
        .header("X-Callback-Url", &receiver.url)
        .body("hello later")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let call_id = r.headers()["x-call-id"].to_str().unwrap().to_owned();
    crate::harness::callbacks(&receiver, 1).await;
    let callback = receiver.received().remove(0);
    assert_eq!(callback.header("X-Call-Id"), call_id);
    assert_eq!(callback.header("X-Function-Status"), "200");
    assert_eq!(&callback.body[..], b"hello later");

    // Removed: its Deployment and Service are gone, so are its pods, and it is not found.
    let r = c
        .http
        .delete(c.url("/system/functions"))
        .json(&json!({"functionName": "echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    assert!(c.kube.object(Kind::Deployment, "echo").is_none());
    assert!(c.kube.object(Kind::Service, "echo").is_none());
    eventually("echo's pod to stop", || async {
        (c.kube.pods("echo") == 0).then_some(())
    })
    .await;
    let r = c.call("echo", "anyone there?").await;
    assert_eq!(r.status(), 404);
    c.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_function_at_zero_is_woken_by_the_elected_autoscaler() {
    let mut c = Cluster::start().await;
    c.start_autoscaler().await;
    let scale_path = format!("/apis/apps/v1/namespaces/{NS}/deployments/sleepy/scale");
    let scaled_to = |replicas: i64| {
        c.kube
            .seen(Method::PATCH, &scale_path)
            .into_iter()
            .filter(move |s| {
                s.body.as_ref().and_then(|b| b.pointer("/spec/replicas")) == Some(&json!(replicas))
            })
            .collect::<Vec<_>>()
    };

    let r = c
        .deploy("sleepy", json!({"com.openfaas.scale.zero": "true"}))
        .await;
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    c.replicas("sleepy", 1, 1).await;

    // To zero by hand: the scale subresource is patched, the pod stops.
    scale(&c.http, &c.gateway.url, "sleepy", 0).await;
    let to_zero = scaled_to(0);
    assert_eq!(to_zero.len(), 1, "the gateway patched the scale to 0");
    assert_eq!(to_zero[0].who, GATEWAY_USER);
    eventually("sleepy's pod to stop", || async {
        (c.kube.pods("sleepy") == 0).then_some(())
    })
    .await;
    c.replicas("sleepy", 0, 0).await;
    assert!(scaled_to(1).is_empty());

    // A call is held; the gateway asks for a wake-up over NATS; the leader patches the scale to
    // 1; the kubelet starts the pod; the call is answered.
    let sent = Instant::now();
    let r = c.call("sleepy", "wake up").await;
    let answered = sent.elapsed();
    assert_eq!(r.status(), 200, "{}", c.gateway_log());
    assert_eq!(r.text().await.unwrap(), "wake up");
    let wakes = scaled_to(1);
    assert_eq!(wakes.len(), 1, "one scale-up from zero: {wakes:?}");
    assert_eq!(
        wakes[0].who, AUTOSCALER_USER,
        "the leader scaled it, not the gateway"
    );
    let patched = wakes[0].at.duration_since(sent);
    assert!(wakes[0].at > sent);
    println!(
        "woken from zero: scale patched {patched:?} after the request, answered after {answered:?}"
    );
    assert_eq!(c.kube.pods("sleepy"), 1);
    c.check();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deployment_the_api_server_refuses_is_reported_in_its_words_and_not_kept() {
    let c = Cluster::start().await;
    c.kube.forbid_creating("forbidden");

    let r = c.deploy("forbidden", json!({})).await;
    assert_eq!(r.status(), 502);
    let error: Value = r.json().await.unwrap();
    assert_eq!(error["code"], "orchestrator_refused", "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "User \"{GATEWAY_USER}\" cannot create resource \"deployments\""
        )),
        "{message}"
    );

    let r = c
        .http
        .get(c.url("/system/function/forbidden"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the registry forgot it");
    assert!(c.kube.object(Kind::Deployment, "forbidden").is_none());
    assert!(c.kube.object(Kind::Service, "forbidden").is_none());

    // Its Service refused after its Deployment was made: the Deployment goes again, so
    // nothing runs that Sluice could not remove.
    c.kube.forbid_creating_service("halfway");
    let r = c.deploy("halfway", json!({})).await;
    assert_eq!(r.status(), 502);
    let error: Value = r.json().await.unwrap();
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("cannot create resource \"services\""),
        "{error}"
    );
    assert!(c.kube.object(Kind::Deployment, "halfway").is_none());
    assert!(c.kube.object(Kind::Service, "halfway").is_none());
    c.check();
}
