//! The Kubernetes objects a function becomes: a Deployment and a Service, shaped as faas-netes
//! shapes them (so OpenFaaS tools find them by `faas_function`), with a restricted pod security
//! context. Pure functions of the function's spec: the same spec always gives the same objects.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction, KeyToPath,
    LocalObjectReference, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, ResourceRequirements, SeccompProfile, SecretProjection, SecurityContext,
    Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};
use sluice_core::{FunctionResources, FunctionSpec};

/// The label every function's objects and pods carry, as OpenFaaS's do.
pub const FUNCTION_LABEL: &str = sluice_core::FUNCTION_LABEL;
/// Marks the objects Sluice manages (beside `faas_function`, which OpenFaaS tools look for).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "sluice";
/// On a Deployment: a digest of the pod template and Service Sluice generated, so applying an
/// unchanged function is told from a change (which rolls the pods).
pub const TEMPLATE_HASH_ANNOTATION: &str = "com.sluice.template-hash";
/// Where a function's secrets are mounted, one file per key, as in OpenFaaS.
pub const SECRETS_MOUNT: &str = "/var/openfaas/secrets";
/// The port every function image's watchdog listens on.
pub const WATCHDOG_PORT: i32 = 8080;
/// What the watchdog answers readiness on (OpenFaaS's and Sluice's watchdogs alike).
pub const HEALTH_PATH: &str = "/_/health";

/// How function pods run, as the operator set it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodOptions {
    /// Run every function as this numeric user, and require it to be non-root (the restricted
    /// Pod Security Standard). `None`: as the image says; OpenFaaS's templates name a user
    /// (`USER app`) that Kubernetes cannot check to be non-root, so requiring it would refuse
    /// them.
    pub run_as_user: Option<i64>,
}

/// A secret a function names, as found in its namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMount {
    pub name: String,
    /// The keys of its data; each becomes a file under [`SECRETS_MOUNT`].
    pub keys: Vec<String>,
    /// A registry credential (`kubernetes.io/dockerconfigjson`): an image pull secret, not a
    /// file.
    pub pull: bool,
}

fn selector(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(FUNCTION_LABEL.to_owned(), name.to_owned())])
}

fn quantities(r: Option<&FunctionResources>) -> Option<BTreeMap<String, Quantity>> {
    let r = r?;
    let map: BTreeMap<String, Quantity> = [("memory", &r.memory), ("cpu", &r.cpu)]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), Quantity(v.clone())))
        .collect();
    (!map.is_empty()).then_some(map)
}

fn annotations(spec: &FunctionSpec) -> BTreeMap<String, String> {
    let mut a = spec.deployment.annotations.clone().unwrap_or_default();
    a.entry("prometheus.io.scrape".into())
        .or_insert_with(|| "false".into());
    a
}

/// Ready once the watchdog says so, looked at every second so a cold start is seen at once.
fn readiness() -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(HEALTH_PATH.into()),
            port: IntOrString::Int(WATCHDOG_PORT),
            ..Default::default()
        }),
        period_seconds: Some(1),
        timeout_seconds: Some(1),
        success_threshold: Some(1),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// Alive while the watchdog listens: a function that is slow to become ready, or draining, is
/// not restarted for it.
fn liveness() -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::Int(WATCHDOG_PORT),
            ..Default::default()
        }),
        period_seconds: Some(10),
        timeout_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

/// How long a pod may take to stop: the watchdog's drain (`healthcheck_interval`, then in-flight
/// requests within `write_timeout`, then the function's own grace), so Kubernetes does not kill
/// it mid-request. The watchdog's defaults when unset (5 s, `exec_timeout` or 5 min, 5 s).
fn termination_grace(env: &BTreeMap<String, String>) -> i64 {
    let setting = |key: &str| {
        env.get(key)
            .and_then(|v| sluice_core::retry::parse_go_duration(v))
    };
    let interval = setting("healthcheck_interval").unwrap_or(std::time::Duration::from_secs(5));
    let write = setting("write_timeout")
        .or_else(|| setting("exec_timeout"))
        .unwrap_or(std::time::Duration::from_secs(300));
    let total = interval + write + std::time::Duration::from_secs(10);
    i64::try_from(total.as_secs()).unwrap_or(i64::MAX)
}

/// The pod template of a function.
fn pod_template(
    spec: &FunctionSpec,
    secrets: &[SecretMount],
    options: &PodOptions,
) -> PodTemplateSpec {
    let d = &spec.deployment;
    let name = &spec.function.name;
    let mut labels = d.labels.clone().unwrap_or_default();
    labels.extend(selector(name));
    let mut env: Vec<EnvVar> = d
        .env_vars
        .iter()
        .map(|(k, v)| EnvVar {
            name: k.clone(),
            value: Some(v.clone()),
            ..Default::default()
        })
        .collect();
    if let Some(fprocess) = d.env_process.as_deref().filter(|p| !p.trim().is_empty()) {
        env.retain(|e| e.name != "fprocess");
        env.push(EnvVar {
            name: "fprocess".into(),
            value: Some(fprocess.into()),
            ..Default::default()
        });
    }
    env.sort_by(|a, b| a.name.cmp(&b.name));

    let mut volumes = Vec::new();
    let mut mounts = Vec::new();
    let files: Vec<&SecretMount> = secrets.iter().filter(|s| !s.pull).collect();
    if !files.is_empty() {
        let volume = format!("{name}-projected-secrets");
        volumes.push(Volume {
            name: volume.clone(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(
                    files
                        .iter()
                        .map(|s| VolumeProjection {
                            secret: Some(SecretProjection {
                                name: s.name.clone(),
                                items: Some(
                                    s.keys
                                        .iter()
                                        .map(|k| KeyToPath {
                                            key: k.clone(),
                                            path: k.clone(),
                                            mode: None,
                                        })
                                        .collect(),
                                ),
                                optional: None,
                            }),
                            ..Default::default()
                        })
                        .collect(),
                ),
                // Readable by the function's user only.
                default_mode: Some(0o400),
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: volume,
            mount_path: SECRETS_MOUNT.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if d.read_only_root_filesystem {
        volumes.push(Volume {
            name: "temp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: "temp".into(),
            mount_path: "/tmp".into(),
            ..Default::default()
        });
    }
    let pull_secrets: Vec<LocalObjectReference> = secrets
        .iter()
        .filter(|s| s.pull)
        .map(|s| LocalObjectReference {
            name: s.name.clone(),
        })
        .collect();
    let annotations = annotations(spec);
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            containers: vec![Container {
                name: name.clone(),
                image: Some(d.image.clone()),
                ports: Some(vec![ContainerPort {
                    name: Some("http".into()),
                    container_port: WATCHDOG_PORT,
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                env: (!env.is_empty()).then_some(env),
                resources: Some(ResourceRequirements {
                    limits: quantities(d.limits.as_ref()),
                    requests: quantities(d.requests.as_ref()),
                    ..Default::default()
                }),
                readiness_probe: Some(readiness()),
                liveness_probe: Some(liveness()),
                // No privilege to gain, no capability, the runtime's seccomp profile; and with
                // a user set, the whole restricted Pod Security Standard.
                security_context: Some(SecurityContext {
                    read_only_root_filesystem: Some(d.read_only_root_filesystem),
                    allow_privilege_escalation: Some(false),
                    run_as_non_root: options.run_as_user.map(|_| true),
                    run_as_user: options.run_as_user,
                    capabilities: Some(Capabilities {
                        drop: Some(vec!["ALL".into()]),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                volume_mounts: (!mounts.is_empty()).then_some(mounts),
                ..Default::default()
            }],
            volumes: (!volumes.is_empty()).then_some(volumes),
            image_pull_secrets: (!pull_secrets.is_empty()).then_some(pull_secrets),
            // Functions get no Kubernetes credentials and no other services' addresses in their
            // environment.
            automount_service_account_token: Some(false),
            termination_grace_period_seconds: Some(termination_grace(&d.env_vars)),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: options.run_as_user.map(|_| true),
                run_as_user: options.run_as_user,
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The function's Service: port 8080 to its pods, selected by `faas_function`.
pub fn service(spec: &FunctionSpec) -> Service {
    let name = &spec.function.name;
    let mut labels = selector(name);
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    Service {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(spec.function.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations(spec)),
            ..Default::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector(name)),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                protocol: Some("TCP".into()),
                port: WATCHDOG_PORT,
                target_port: Some(IntOrString::Int(WATCHDOG_PORT)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The function's Deployment at `replicas`, its template digest in an annotation.
pub fn deployment(spec: &FunctionSpec, secrets: &[SecretMount], replicas: u32) -> Deployment {
    deployment_with(spec, secrets, replicas, &PodOptions::default())
}

/// [`deployment`], with pods run as `options` say.
pub fn deployment_with(
    spec: &FunctionSpec,
    secrets: &[SecretMount],
    replicas: u32,
    options: &PodOptions,
) -> Deployment {
    let name = &spec.function.name;
    let template = pod_template(spec, secrets, options);
    let mut labels = selector(name);
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    let mut annotations = annotations(spec);
    annotations.insert(
        TEMPLATE_HASH_ANNOTATION.into(),
        template_hash(&template, &service(spec)),
    );
    Deployment {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(spec.function.namespace.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(replicas).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector(name)),
                ..Default::default()
            },
            // A new configuration rolls out one pod at a time, never below the current count.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::Int(1)),
                }),
            }),
            revision_history_limit: Some(5),
            template,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn template_hash(template: &PodTemplateSpec, service: &Service) -> String {
    let mut digest = Sha256::new();
    digest.update(serde_json::to_vec(template).unwrap_or_default());
    digest.update(serde_json::to_vec(&service.spec).unwrap_or_default());
    let bytes = digest.finalize();
    bytes[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The template digest a Deployment was generated with, if Sluice generated it.
pub fn hash_of(deployment: &Deployment) -> Option<&str> {
    deployment
        .metadata
        .annotations
        .as_ref()?
        .get(TEMPLATE_HASH_ANNOTATION)
        .map(String::as_str)
}
