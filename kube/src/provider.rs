//! [`KubeProvider`]: functions as Deployments and Services through the Kubernetes API.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures_util::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use kube::api::{DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use sluice_core::{
    EndpointSource, FunctionRef, FunctionSpec, LogLine, LogStream, Orchestrator, ProviderError,
    Replicas, Timestamp,
};
use tokio_util::sync::CancellationToken;

use crate::cache::{self, Cache};
use crate::error::{from_kube, is_conflict, is_not_found};
use crate::objects::{self, FUNCTION_LABEL, SecretMount};

/// The label (or annotation, as faas-netes reads it) that opens a namespace to functions.
pub const NAMESPACE_LABEL: &str = "openfaas";
/// The label on the Secrets the secrets API manages, as faas-netes labels them (so secrets made
/// through OpenFaaS are seen, and the other way round); other Secrets are never touched.
pub const SECRET_LABEL: (&str, &str) = ("app.kubernetes.io/managed-by", "openfaas");

/// Where the provider puts functions.
#[derive(Debug, Clone)]
pub struct KubeConfig {
    /// Functions go here unless they name another namespace (default `openfaas-fn`).
    pub namespace: String,
    /// Watch only Deployments (the autoscaler's need), not EndpointSlices and pods.
    pub deployments_only: bool,
    /// How function pods run.
    pub pods: objects::PodOptions,
}

impl Default for KubeConfig {
    fn default() -> Self {
        Self {
            namespace: "openfaas-fn".into(),
            deployments_only: false,
            pods: objects::PodOptions::default(),
        }
    }
}

/// Runs functions as Deployments. Cheap to clone.
#[derive(Debug, Clone)]
pub struct KubeProvider {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: KubeConfig,
    cache: Arc<Cache>,
    /// Namespaces whose functions are watched, once started.
    followed: Mutex<Option<HashSet<String>>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeProvider")
            .field("namespace", &self.config.namespace)
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn invalid(msg: String) -> ProviderError {
    ProviderError::InvalidSpec(msg)
}

/// Whether an object carries the function label naming `name`: Sluice touches no other.
fn is_function(meta: &kube::api::ObjectMeta, name: &str) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(FUNCTION_LABEL))
        .is_some_and(|v| v == name)
}

/// Whether a Service is a function's: labelled as Sluice labels them, or selecting the
/// function's pods as faas-netes's do (they carry no labels), so functions deployed by OpenFaaS
/// are taken over, and nothing else is.
fn is_function_service(service: &Service, name: &str) -> bool {
    let selects_function = service
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .is_some_and(|s| s.len() == 1 && s.get(FUNCTION_LABEL).is_some_and(|v| v == name));
    is_function(&service.metadata, name) || selects_function
}

fn not_a_function(kind: &str, f: &FunctionRef) -> ProviderError {
    ProviderError::Refused {
        code: 409,
        reason: "AlreadyExists".into(),
        message: format!(
            "a {kind} named {} exists in {} and is not a function (it has no \
             {FUNCTION_LABEL} label); Sluice leaves it alone",
            f.name, f.namespace
        ),
    }
}

/// Kubernetes' rule for a label value: at most 63 characters, alphanumerics with `-`, `_`, `.`
/// inside.
fn valid_label_value(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))))
}

/// Kubernetes' rule for a label or annotation key: an optional DNS-subdomain prefix and `/`,
/// then a name as a label value (not empty).
fn valid_key(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                    && !part.starts_with('-')
                    && !part.ends_with('-')
            })
    });
    prefix_ok && !name.is_empty() && valid_label_value(name)
}

/// A resource quantity as Kubernetes writes them (`128Mi`, `0.5`, `250m`, `1e3`).
fn valid_quantity(q: &str) -> bool {
    let number_end = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(number_end);
    let number_ok = number.trim_start_matches(['+', '-']).parse::<f64>().is_ok();
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .is_some_and(|e| e.parse::<i32>().is_ok());
    number_ok && suffix_ok
}

impl KubeProvider {
    /// A provider on `client`; nothing is watched until [`Self::start`].
    pub fn new(client: Client, config: KubeConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                config,
                cache: Arc::default(),
                followed: Mutex::default(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// A client from a kubeconfig file, or else the usual places (`$KUBECONFIG`,
    /// `~/.kube/config`, then the pod's service account).
    pub async fn client(kubeconfig: Option<&std::path::Path>) -> Result<Client, ProviderError> {
        use kube::config::{KubeConfigOptions, Kubeconfig};
        let config = match kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path).map_err(|e| {
                    ProviderError::Unavailable(format!(
                        "cannot read kubeconfig {}: {e}",
                        path.display()
                    ))
                })?;
                kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                    .await
                    .map_err(|e| ProviderError::Unavailable(e.to_string()))?
            }
            None => kube::Config::infer()
                .await
                .map_err(|e| ProviderError::Unavailable(e.to_string()))?,
        };
        Client::try_from(config).map_err(from_kube)
    }

    /// Starts watching the function namespace (and every other one functions are applied to
    /// from now on), and waits, up to `timeout`, until the first lists are in: a gateway serves
    /// knowing the functions. A list the API server refuses (missing permissions) fails here,
    /// in its words, rather than leaving every request waiting.
    pub async fn start(&self, timeout: std::time::Duration) -> Result<(), ProviderError> {
        self.inner
            .followed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(HashSet::new);
        let watchers = self.follow(&self.inner.config.namespace);
        let synced = async {
            for mut w in watchers {
                let state = w
                    .wait_for(|s| *s != cache::Synced::Pending)
                    .await
                    .map(|s| s.clone())
                    .unwrap_or(cache::Synced::Done);
                if let cache::Synced::Refused(message) = state {
                    return Err(ProviderError::Refused {
                        code: 403,
                        reason: "Forbidden".into(),
                        message,
                    });
                }
            }
            Ok(())
        };
        tokio::time::timeout(timeout, synced).await.map_err(|_| {
            ProviderError::Unavailable(format!(
                "the Kubernetes API did not list namespace {}'s functions within {timeout:?}",
                self.inner.config.namespace
            ))
        })?
    }

    /// Watches `namespace`'s functions too (from now on; not waiting for the first list).
    pub fn follow_namespace(&self, namespace: &str) {
        drop(self.follow(namespace));
    }

    /// Stops the watchers.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
    }

    /// The ready pods of every followed function, for the activator.
    pub fn endpoints(&self) -> Arc<dyn EndpointSource> {
        self.inner.cache.clone()
    }

    /// The function namespace (where functions go by default).
    pub fn namespace(&self) -> &str {
        &self.inner.config.namespace
    }

    fn follow(&self, namespace: &str) -> Vec<tokio::sync::watch::Receiver<cache::Synced>> {
        let mut followed = self
            .inner
            .followed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let Some(followed) = followed.as_mut() else {
            return Vec::new();
        };
        if !followed.insert(namespace.to_owned()) {
            return Vec::new();
        }
        cache::follow(
            self.inner.cache.clone(),
            self.inner.client.clone(),
            namespace,
            self.inner.config.deployments_only,
            self.inner.stop.child_token(),
        )
    }

    fn deployments(&self, namespace: &str) -> Api<Deployment> {
        Api::namespaced(self.inner.client.clone(), namespace)
    }

    fn services(&self, namespace: &str) -> Api<Service> {
        Api::namespaced(self.inner.client.clone(), namespace)
    }

    /// Functions may go to the function namespace, or to one labelled (or annotated)
    /// `openfaas: "1"` as OpenFaaS asks; never to the system's own.
    async fn check_namespace(&self, namespace: &str) -> Result<(), ProviderError> {
        if namespace == self.inner.config.namespace {
            return Ok(());
        }
        let refused = || {
            invalid(format!(
                "namespace {namespace:?} is not open to functions: use {:?}, or label the \
                 namespace openfaas=1",
                self.inner.config.namespace
            ))
        };
        if namespace.starts_with("kube-") {
            return Err(refused());
        }
        let api: Api<Namespace> = Api::all(self.inner.client.clone());
        let ns = api
            .get_opt(namespace)
            .await
            .map_err(from_kube)?
            .ok_or_else(refused)?;
        let marked = |m: Option<&std::collections::BTreeMap<String, String>>| {
            m.and_then(|m| m.get(NAMESPACE_LABEL))
                .is_some_and(|v| v == "1" || v == "true")
        };
        if marked(ns.metadata.labels.as_ref()) || marked(ns.metadata.annotations.as_ref()) {
            drop(self.follow(namespace));
            Ok(())
        } else {
            Err(refused())
        }
    }

    /// The secrets a function names, as they are in its namespace; a missing one is refused
    /// by name before anything is created.
    async fn secret_mounts(&self, spec: &FunctionSpec) -> Result<Vec<SecretMount>, ProviderError> {
        let api: Api<Secret> = Api::namespaced(self.inner.client.clone(), &spec.function.namespace);
        let mut mounts = Vec::new();
        for name in &spec.deployment.secrets {
            let secret = api.get_opt(name).await.map_err(from_kube)?.ok_or_else(|| {
                invalid(format!(
                    "secret {name:?} was not found in namespace {}: create it first \
                     (POST /system/secrets)",
                    spec.function.namespace
                ))
            })?;
            let pull = matches!(
                secret.type_.as_deref(),
                Some("kubernetes.io/dockerconfigjson" | "kubernetes.io/dockercfg")
            );
            let mut keys: Vec<String> = secret
                .data
                .iter()
                .flatten()
                .map(|(k, _)| k.clone())
                .collect();
            keys.extend(secret.string_data.iter().flatten().map(|(k, _)| k.clone()));
            keys.sort();
            keys.dedup();
            mounts.push(SecretMount {
                name: name.clone(),
                keys,
                pull,
            });
        }
        Ok(mounts)
    }

    fn secret_api(&self, namespace: &str) -> Api<Secret> {
        Api::namespaced(self.inner.client.clone(), namespace)
    }

    /// A Secret the secrets API manages; any other is not found, as far as it is concerned.
    async fn managed_secret(&self, namespace: &str, name: &str) -> Result<Secret, ProviderError> {
        let missing = || ProviderError::NotFound(format!("secret {name} in {namespace}"));
        let secret = self
            .secret_api(namespace)
            .get_opt(name)
            .await
            .map_err(from_kube)?
            .ok_or_else(missing)?;
        let managed = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SECRET_LABEL.0))
            .is_some_and(|v| v == SECRET_LABEL.1);
        if managed { Ok(secret) } else { Err(missing()) }
    }

    /// Creates the function's Service, or brings an existing one to what it should be.
    async fn apply_service(&self, spec: &FunctionSpec) -> Result<(), ProviderError> {
        let api = self.services(&spec.function.namespace);
        let mut wanted = objects::service(spec);
        let Some(live) = api.get_opt(&spec.function.name).await.map_err(from_kube)? else {
            return match api.create(&PostParams::default(), &wanted).await {
                Ok(_) => Ok(()),
                // Created meanwhile by another gateway applying the same function.
                Err(e) if is_conflict(&e) => Ok(()),
                Err(e) => Err(from_kube(e)),
            };
        };
        if !is_function_service(&live, &spec.function.name) {
            return Err(not_a_function("service", &spec.function));
        }
        // Annotations others added (tools, meshes) are kept; only Sluice's own must be there.
        let annotations_in_place = wanted
            .metadata
            .annotations
            .iter()
            .flatten()
            .all(|(k, v)| live.metadata.annotations.as_ref().and_then(|a| a.get(k)) == Some(v));
        let spec_in_place = live.spec.as_ref().map(|s| (&s.selector, &s.ports))
            == wanted.spec.as_ref().map(|s| (&s.selector, &s.ports));
        if annotations_in_place && spec_in_place {
            return Ok(());
        }
        let mut annotations = live.metadata.annotations.clone().unwrap_or_default();
        annotations.extend(wanted.metadata.annotations.take().unwrap_or_default());
        wanted.metadata.annotations = Some(annotations);
        wanted.metadata.resource_version = live.metadata.resource_version;
        // The cluster assigns these; a replace must keep them.
        if let (Some(w), Some(l)) = (wanted.spec.as_mut(), live.spec) {
            w.cluster_ip = l.cluster_ip;
            w.cluster_ips = l.cluster_ips;
        }
        api.replace(&spec.function.name, &PostParams::default(), &wanted)
            .await
            .map(drop)
            .map_err(from_kube)
    }

    /// One attempt at bringing the Deployment to `spec`: `Ok(None)` if it lost a race, else
    /// whether it created the Deployment.
    async fn apply_deployment(
        &self,
        spec: &FunctionSpec,
        secrets: &[SecretMount],
    ) -> Result<Option<bool>, ProviderError> {
        let f = &spec.function;
        let api = self.deployments(&f.namespace);
        let live = api.get_opt(&f.name).await.map_err(from_kube)?;
        let created = live.is_none();
        let stored = match live {
            None => {
                let wanted =
                    objects::deployment_with(spec, secrets, spec.replicas, &self.inner.config.pods);
                match api.create(&PostParams::default(), &wanted).await {
                    Ok(d) => d,
                    Err(e) if is_conflict(&e) => return Ok(None),
                    Err(e) => return Err(from_kube(e)),
                }
            }
            Some(live) => {
                if !is_function(&live.metadata, &f.name) {
                    return Err(not_a_function("deployment", f));
                }
                // The replica count is the autoscaler's: kept, within the function's bounds.
                let scale = &spec.config.scale;
                let live_replicas = cache::view(&live).desired;
                let replicas = if live_replicas == 0 && scale.zero {
                    0
                } else {
                    live_replicas.clamp(scale.min, scale.max)
                };
                let wanted =
                    objects::deployment_with(spec, secrets, replicas, &self.inner.config.pods);
                if objects::hash_of(&live) == objects::hash_of(&wanted) && live_replicas == replicas
                {
                    live
                } else {
                    let mut wanted = wanted;
                    wanted.metadata.resource_version = live.metadata.resource_version.clone();
                    match api.replace(&f.name, &PostParams::default(), &wanted).await {
                        Ok(d) => d,
                        Err(e) if is_conflict(&e) => return Ok(None),
                        Err(e) => return Err(from_kube(e)),
                    }
                }
            }
        };
        // Read your writes: this gateway knows the function before its watcher hears of it.
        self.inner
            .cache
            .set_deployment(f, Some(cache::view(&stored)));
        Ok(Some(created))
    }
}

#[async_trait]
impl Orchestrator for KubeProvider {
    fn validate(&self, spec: &FunctionSpec) -> Result<(), ProviderError> {
        let d = &spec.deployment;
        if spec.config.scale.metric == sluice_core::Metric::Cpu {
            return Err(invalid(format!(
                "label {} cpu is not supported on Kubernetes: Sluice does not measure pods' \
                 CPU; use rps (requests per second per replica) or capacity (requests in \
                 flight per replica)",
                sluice_core::config::SCALE_TYPE_LABEL,
            )));
        }
        if d.image.trim().is_empty() {
            return Err(invalid(
                "image is required: on Kubernetes a function runs its own image".into(),
            ));
        }
        if spec.function.namespace.starts_with("kube-") {
            return Err(invalid(format!(
                "namespace {:?} is the system's, not open to functions",
                spec.function.namespace
            )));
        }
        for (what, map, values) in [
            ("label", d.labels.as_ref(), true),
            ("annotation", d.annotations.as_ref(), false),
        ] {
            for (k, v) in map.into_iter().flatten() {
                if !valid_key(k) {
                    return Err(invalid(format!(
                        "{what} key {k:?} is not a valid Kubernetes {what} key"
                    )));
                }
                if values && !valid_label_value(v) {
                    return Err(invalid(format!(
                        "label {k}: value {v:?} is not a valid Kubernetes label value (at \
                         most 63 letters, digits, '-', '_' or '.')"
                    )));
                }
            }
        }
        for (what, r) in [
            ("limits", d.limits.as_ref()),
            ("requests", d.requests.as_ref()),
        ] {
            for (key, q) in r
                .into_iter()
                .flat_map(|r| [("memory", &r.memory), ("cpu", &r.cpu)])
            {
                if !q.is_empty() && !valid_quantity(q) {
                    return Err(invalid(format!(
                        "{what}.{key} {q:?} is not a Kubernetes quantity such as 128Mi or 250m"
                    )));
                }
            }
        }
        for secret in &d.secrets {
            FunctionRef::parse(secret, None).map_err(|_| {
                invalid(format!(
                    "secret name {secret:?} is not a valid Kubernetes name"
                ))
            })?;
        }
        Ok(())
    }

    async fn apply(&self, spec: &FunctionSpec) -> Result<(), ProviderError> {
        self.check_namespace(&spec.function.namespace).await?;
        let secrets = self.secret_mounts(spec).await?;
        // A write that raced another gateway's (a stale resourceVersion) is done again from a
        // fresh read, a few times at most.
        let mut applied = None;
        for _ in 0..3 {
            applied = self.apply_deployment(spec, &secrets).await?;
            if applied.is_some() {
                break;
            }
        }
        let Some(created) = applied else {
            return Err(ProviderError::Refused {
                code: 409,
                reason: "Conflict".into(),
                message: format!(
                    "deployment {} kept changing under this update; try again",
                    spec.function
                ),
            });
        };
        let serviced = self.apply_service(spec).await;
        if serviced.is_err() && created {
            // Nothing half-deployed: a Deployment made by this call goes again when its
            // Service cannot be made, or it would run with no way to remove it through Sluice.
            let f = &spec.function;
            if let Err(error) = self
                .deployments(&f.namespace)
                .delete(&f.name, &DeleteParams::background())
                .await
            {
                tracing::warn!(function = %f, %error, "cannot take back a half-made function");
            }
            self.inner.cache.set_deployment(f, None);
        }
        serviced
    }

    async fn remove(&self, function: &FunctionRef) -> Result<(), ProviderError> {
        let gone = || ProviderError::NotFound(function.to_string());
        let api = self.deployments(&function.namespace);
        let mut removed = false;
        if let Some(d) = api.get_opt(&function.name).await.map_err(from_kube)? {
            if !is_function(&d.metadata, &function.name) {
                // Someone else's Deployment (and Service) of that name: not ours to delete.
                return Err(gone());
            }
            match api
                .delete(&function.name, &DeleteParams::background())
                .await
            {
                Ok(_) => removed = true,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(from_kube(e)),
            }
        }
        let services = self.services(&function.namespace);
        if let Some(service) = services.get_opt(&function.name).await.map_err(from_kube)?
            && is_function_service(&service, &function.name)
        {
            match services
                .delete(&function.name, &DeleteParams::background())
                .await
            {
                Ok(_) => removed = true,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(from_kube(e)),
            }
        }
        self.inner.cache.set_deployment(function, None);
        if removed { Ok(()) } else { Err(gone()) }
    }

    async fn scale(&self, function: &FunctionRef, replicas: u32) -> Result<(), ProviderError> {
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        self.deployments(&function.namespace)
            .patch_scale(
                &function.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(|e| {
                if is_not_found(&e) {
                    ProviderError::NotFound(function.to_string())
                } else {
                    from_kube(e)
                }
            })?;
        if let Some(mut view) = self.inner.cache.deployment(function) {
            view.desired = replicas;
            self.inner.cache.set_deployment(function, Some(view));
        }
        Ok(())
    }

    fn replicas(&self, function: &FunctionRef) -> Option<Replicas> {
        self.inner.cache.replicas(function)
    }

    fn functions(&self) -> Vec<FunctionRef> {
        self.inner.cache.functions()
    }

    fn shared(&self) -> bool {
        true
    }

    fn problem(&self, function: &FunctionRef) -> Option<String> {
        self.inner.cache.problem(function)
    }

    async fn namespaces(&self) -> Result<Option<Vec<String>>, ProviderError> {
        let mut names = vec![self.inner.config.namespace.clone()];
        let api: Api<Namespace> = Api::all(self.inner.client.clone());
        let selector = format!("{NAMESPACE_LABEL}=1");
        match api.list(&ListParams::default().labels(&selector)).await {
            Ok(list) => names.extend(list.items.into_iter().filter_map(|n| n.metadata.name)),
            // Listing namespaces is a cluster-wide permission the chart grants only when asked
            // (rbac.listNamespaces): without it, the function namespace is the one there is.
            Err(kube::Error::Api(s)) if s.is_forbidden() => {
                tracing::debug!("may not list namespaces; only the function namespace is open");
            }
            Err(e) => return Err(from_kube(e)),
        }
        names.sort();
        names.dedup();
        Ok(Some(names))
    }

    async fn secrets(&self, namespace: &str) -> Result<Vec<String>, ProviderError> {
        self.check_namespace(namespace).await?;
        let selector = format!("{}={}", SECRET_LABEL.0, SECRET_LABEL.1);
        let list = self
            .secret_api(namespace)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(from_kube)?;
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Any Secret of the name will do, whoever made it (`kubectl create secret`, too): a pod
    /// mounts it all the same.
    async fn missing_secrets(
        &self,
        namespace: &str,
        names: &[String],
    ) -> Result<Vec<String>, ProviderError> {
        self.check_namespace(namespace).await?;
        let api = self.secret_api(namespace);
        let mut missing = Vec::new();
        for name in names {
            if api.get_opt(name).await.map_err(from_kube)?.is_none() {
                missing.push(name.clone());
            }
        }
        Ok(missing)
    }

    async fn put_secret(
        &self,
        namespace: &str,
        name: &str,
        value: &[u8],
        create: bool,
    ) -> Result<(), ProviderError> {
        self.check_namespace(namespace).await?;
        let api = self.secret_api(namespace);
        let data = std::collections::BTreeMap::from([(
            name.to_owned(),
            k8s_openapi::ByteString(value.to_vec()),
        )]);
        if create {
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.to_owned()),
                    namespace: Some(namespace.to_owned()),
                    labels: Some([(SECRET_LABEL.0.to_owned(), SECRET_LABEL.1.to_owned())].into()),
                    ..Default::default()
                },
                type_: Some("Opaque".into()),
                data: Some(data),
                ..Default::default()
            };
            return api
                .create(&PostParams::default(), &secret)
                .await
                .map(drop)
                .map_err(from_kube);
        }
        let mut secret = self.managed_secret(namespace, name).await?;
        secret.data = Some(data);
        secret.string_data = None;
        api.replace(name, &PostParams::default(), &secret)
            .await
            .map(drop)
            .map_err(from_kube)
    }

    async fn delete_secret(&self, namespace: &str, name: &str) -> Result<(), ProviderError> {
        self.check_namespace(namespace).await?;
        self.managed_secret(namespace, name).await?;
        match self
            .secret_api(namespace)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Err(ProviderError::NotFound(format!(
                "secret {name} in {namespace}"
            ))),
            Err(e) => Err(from_kube(e)),
        }
    }

    fn logs(
        &self,
        function: &FunctionRef,
        tail: usize,
        follow: bool,
    ) -> Result<LogStream, ProviderError> {
        if self.inner.cache.deployment(function).is_none() {
            return Err(ProviderError::NotFound(function.to_string()));
        }
        let pods: Api<Pod> = Api::namespaced(self.inner.client.clone(), &function.namespace);
        let function = function.clone();
        let selector = format!("{FUNCTION_LABEL}={}", function.name);
        let lines = async move {
            let listed = match pods.list(&ListParams::default().labels(&selector)).await {
                Ok(l) => l.items,
                Err(error) => {
                    tracing::warn!(%function, %error, "cannot list the function's pods");
                    Vec::new()
                }
            };
            let params = LogParams {
                follow,
                tail_lines: Some(i64::try_from(tail).unwrap_or(i64::MAX)),
                timestamps: true,
                ..LogParams::default()
            };
            let mut streams = Vec::new();
            for pod in listed {
                let Some(name) = pod.metadata.name.clone() else {
                    continue;
                };
                match pods.log_stream(&name, &params).await {
                    Ok(reader) => {
                        let function = function.clone();
                        let stream = reader
                            .lines()
                            .map_ok(move |line| log_line(&function, &name, &line))
                            .take_while(|r| std::future::ready(r.is_ok()))
                            .filter_map(|r| std::future::ready(r.ok()));
                        streams.push(stream.boxed());
                    }
                    Err(error) => {
                        tracing::warn!(%function, pod = %name, %error, "cannot read the pod's log")
                    }
                }
            }
            futures_util::stream::select_all(streams)
        };
        Ok(futures_util::stream::once(lines).flatten().boxed())
    }
}

/// A line of `kubectl logs --timestamps` output as OpenFaaS's log line.
fn log_line(function: &FunctionRef, pod: &str, line: &str) -> LogLine {
    let (timestamp, text) = match line.split_once(' ') {
        Some((ts, text)) => match ts.parse::<k8s_openapi::jiff::Timestamp>() {
            Ok(t) => (Timestamp::from_millis(t.as_millisecond()), text),
            Err(_) => (Timestamp::now(), line),
        },
        None => (Timestamp::now(), line),
    };
    LogLine {
        name: function.name.clone(),
        namespace: function.namespace.clone(),
        instance: pod.to_owned(),
        timestamp,
        text: text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names_and_quantities() {
        for ok in [
            "com.openfaas.scale.min",
            "faas_function",
            "example.com/tier",
            "a",
        ] {
            assert!(valid_key(ok), "{ok}");
        }
        for bad in ["", "-a", "a b", "Example.com/x", "x/", &"a".repeat(64)] {
            assert!(!valid_key(bad), "{bad}");
        }
        for ok in ["", "2", "true", "a-b_c.d"] {
            assert!(valid_label_value(ok), "{ok}");
        }
        for bad in ["two words", "-x", "x-", &"a".repeat(64)] {
            assert!(!valid_label_value(bad), "{bad}");
        }
        for ok in ["128Mi", "0.5", "250m", "1", "1e3", "2Gi"] {
            assert!(valid_quantity(ok), "{ok}");
        }
        for bad in ["lots", "12 Mi", "Mi", "1.2.3", "5x"] {
            assert!(!valid_quantity(bad), "{bad}");
        }
    }
}
