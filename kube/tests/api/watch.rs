//! The watchers: Deployments, EndpointSlices and pods listed, then watched, feeding the
//! activator with ready pod addresses and `describe` with what stops a function.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use sluice_activator::{Activator, ActivatorConfig, ActivatorError};
use sluice_core::Orchestrator;
use tokio::sync::mpsc;

use crate::{NS, echo, provider, stored};

fn slice(version: u32, endpoints: &[(&str, bool)]) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "echo-x1", "namespace": NS, "resourceVersion": version.to_string(),
                     "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints.iter().map(|(ip, ready)| json!({
            "addresses": [ip], "conditions": {"ready": ready, "terminating": !ready},
        })).collect::<Vec<_>>(),
    })
}

async fn send(tx: &mpsc::Sender<Bytes>, kind: &str, object: Value) {
    let line = serde_json::to_string(&json!({"type": kind, "object": object})).unwrap() + "\n";
    tx.send(Bytes::from(line)).await.unwrap();
}

#[tokio::test]
async fn ready_pods_from_endpoint_slices_feed_the_activator() {
    let (provider, mut api) = provider();
    let started = tokio::spawn({
        let provider = provider.clone();
        async move { provider.start(Duration::from_secs(10)).await }
    });
    let spec = echo();
    let deployment = stored(
        serde_json::to_value(sluice_kube::objects::deployment(&spec, &[], 1)).unwrap(),
        100,
    );
    let stuck_pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "echo-7d9f-abcde", "namespace": NS, "resourceVersion": "102",
                     "labels": {"faas_function": "echo"}},
        "status": {"containerStatuses": [{
            "name": "echo", "image": "ghcr.io/example/echo:1", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff",
                "message": "Back-off pulling image \"ghcr.io/example/echo:1\""}},
        }]},
    });
    let crashing_pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "echo-7d9f-fghij", "namespace": NS, "resourceVersion": "102",
                     "labels": {"faas_function": "echo"}},
        "status": {"containerStatuses": [{
            "name": "echo", "image": "ghcr.io/example/echo:1", "imageID": "", "ready": false,
            "restartCount": 5,
            "state": {"waiting": {"reason": "CrashLoopBackOff",
                "message": "back-off 2m40s restarting failed container=echo"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
        }]},
    });

    // Each watcher lists, then watches from the list's version; their order is their own.
    let (mut deployments, mut slices) = (None, None);
    let mut pods_watch = None;
    for _ in 0..6 {
        let call = api.next().await;
        assert_eq!(call.method.as_str(), "GET");
        let watching = call.query.contains("watch=true");
        let (tx, rx) = mpsc::channel(16);
        match (call.path.as_str(), watching) {
            ("/apis/apps/v1/namespaces/openfaas-fn/deployments", false) => {
                assert!(
                    call.query.contains("labelSelector=faas_function"),
                    "{}",
                    call.query
                );
                call.reply(
                    200,
                    &json!({"apiVersion": "apps/v1", "kind": "DeploymentList",
                    "metadata": {"resourceVersion": "103"}, "items": [deployment.clone()]}),
                );
            }
            ("/apis/discovery.k8s.io/v1/namespaces/openfaas-fn/endpointslices", false) => {
                assert!(
                    call.query
                        .contains("labelSelector=kubernetes.io%2Fservice-name"),
                    "{}",
                    call.query
                );
                call.reply(
                    200,
                    &json!({"apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSliceList", "metadata": {"resourceVersion": "103"},
                    "items": []}),
                );
            }
            ("/api/v1/namespaces/openfaas-fn/pods", false) => {
                call.reply(
                    200,
                    &json!({"apiVersion": "v1", "kind": "PodList",
                    "metadata": {"resourceVersion": "103"}, "items": [stuck_pod.clone(), crashing_pod.clone()]}),
                );
            }
            ("/apis/apps/v1/namespaces/openfaas-fn/deployments", true) => {
                assert!(call.query.contains("resourceVersion=103"), "{}", call.query);
                call.reply_stream(rx);
                deployments = Some(tx);
            }
            ("/apis/discovery.k8s.io/v1/namespaces/openfaas-fn/endpointslices", true) => {
                call.reply_stream(rx);
                slices = Some(tx);
            }
            ("/api/v1/namespaces/openfaas-fn/pods", true) => {
                call.reply_stream(rx);
                pods_watch = Some(tx);
            }
            (path, watching) => panic!("unexpected GET {path} (watch: {watching})"),
        }
    }
    let (deployments, slices) = (deployments.unwrap(), slices.unwrap());
    // Started once every first list is in.
    started.await.unwrap().unwrap();
    let _pods_watch = pods_watch.unwrap();

    // The listed Deployment is known; its pods' troubles are said.
    let f = spec.function.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !provider
        .problem(&f)
        .is_some_and(|p| p.contains("ImagePullBackOff") && p.contains("CrashLoopBackOff"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pods' troubles were not seen: {:?}",
            provider.problem(&f)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let problem = provider.problem(&f).unwrap();
    assert!(
        problem.contains("echo-7d9f-abcde: ImagePullBackOff"),
        "{problem}"
    );
    assert_eq!(provider.replicas(&f).unwrap().desired, 1);
    assert_eq!(provider.functions(), vec![f.clone()]);

    let activator = Activator::new(
        provider.endpoints(),
        Arc::new(sluice_testkit::ManualAutoscaler),
        ActivatorConfig {
            buffer: 10,
            hold_timeout: Duration::from_secs(10),
        },
    );
    // No pod is ready: the request is held until one is.
    let held = tokio::spawn({
        let (activator, f) = (activator.clone(), f.clone());
        async move { activator.endpoint(&f, Some(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!held.is_finished());
    send(&slices, "ADDED", slice(104, &[("10.1.2.3", true)])).await;
    let first = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&*first.url, "http://10.1.2.3:8080");

    // The pod starts terminating while a request is on it: no new request goes there, and a
    // new pod takes the next one.
    send(&slices, "MODIFIED", slice(105, &[("10.1.2.3", false)])).await;
    let next = tokio::spawn({
        let (activator, f) = (activator.clone(), f.clone());
        async move { activator.endpoint(&f, None).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!next.is_finished(), "a terminating pod was given a request");
    send(
        &slices,
        "MODIFIED",
        slice(106, &[("10.1.2.3", false), ("10.1.2.4", true)]),
    )
    .await;
    let second = tokio::time::timeout(Duration::from_secs(10), next)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&*second.url, "http://10.1.2.4:8080");
    drop(first);

    // The function is removed: a held request is told, and the provider forgets it.
    let held = tokio::spawn({
        let (activator, f) = (activator.clone(), f.clone());
        async move { activator.endpoint(&f, Some(1)).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut gone = deployment.clone();
    gone["metadata"]["resourceVersion"] = json!("107");
    send(&deployments, "DELETED", gone).await;
    send(&slices, "DELETED", slice(108, &[])).await;
    let result = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(result, Err(ActivatorError::Gone(_))), "{result:?}");
    assert!(provider.replicas(&f).is_none());
    assert!(provider.functions().is_empty());
    drop(second);
    provider.shutdown();
}

#[tokio::test]
async fn a_watch_the_api_server_refuses_fails_the_start_in_its_words() {
    let (provider, mut api) = provider();
    let started = tokio::spawn({
        let provider = provider.clone();
        async move { provider.start(Duration::from_secs(10)).await }
    });
    let forbidden = "endpointslices.discovery.k8s.io is forbidden: User \"system:serviceaccount:openfaas:sluice-gateway\" cannot list resource \"endpointslices\" in API group \"discovery.k8s.io\" in the namespace \"openfaas-fn\"";
    let mut refused = false;
    while !refused {
        let call = api.next().await;
        if call.query.contains("watch=true") {
            let (_tx, rx) = mpsc::channel(1);
            call.reply_stream(rx);
            continue;
        }
        match call.path.as_str() {
            "/apis/discovery.k8s.io/v1/namespaces/openfaas-fn/endpointslices" => {
                call.refuse(403, "Forbidden", forbidden);
                refused = true;
            }
            _ => call.reply(
                200,
                &json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": "1"}, "items": []}),
            ),
        }
    }
    let result = tokio::time::timeout(Duration::from_secs(10), started)
        .await
        .unwrap()
        .unwrap();
    match result {
        Err(sluice_core::ProviderError::Refused {
            code: 403, message, ..
        }) => {
            assert_eq!(message, forbidden)
        }
        other => panic!("expected the refusal, got {other:?}"),
    }
    provider.shutdown();
}
