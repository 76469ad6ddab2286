//! Deploy, update, scale, remove, logs and refusals, call by call.

use futures_util::StreamExt;
use serde_json::{Value, json};
use sluice_core::{Orchestrator, ProviderError, Replicas};

use crate::{NS, echo, not_found, provider, stored};

const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/openfaas-fn/deployments";
const ECHO: &str = "/apis/apps/v1/namespaces/openfaas-fn/deployments/echo";
const ECHO_SERVICE: &str = "/api/v1/namespaces/openfaas-fn/services/echo";

fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

#[tokio::test]
async fn a_new_function_becomes_a_deployment_and_a_service() {
    let (provider, mut api) = provider();
    let mut spec = echo();
    spec.deployment.secrets = vec!["api-key".into()];
    spec.deployment.read_only_root_filesystem = true;
    spec.deployment.limits = Some(sluice_core::FunctionResources {
        memory: "128Mi".into(),
        cpu: "500m".into(),
    });
    let applied = tokio::spawn({
        let (provider, spec) = (provider.clone(), spec.clone());
        async move { provider.apply(&spec).await }
    });

    // The secret is looked up first: its keys become files.
    api.expect("GET", "/api/v1/namespaces/openfaas-fn/secrets/api-key")
        .await
        .reply(
            200,
            &json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                "metadata": {"name": "api-key", "namespace": NS},
                "data": {"api-key": "czNjcjN0"}}),
        );
    api.expect("GET", ECHO)
        .await
        .reply(404, &not_found("deployments.apps", "echo"));
    let create = api.expect("POST", DEPLOYMENTS).await;
    let d = create.body().clone();
    assert_eq!(d["metadata"]["name"], "echo");
    assert_eq!(d["metadata"]["namespace"], NS);
    assert_eq!(d["metadata"]["labels"]["faas_function"], "echo");
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(
        d["spec"]["selector"]["matchLabels"],
        json!({"faas_function": "echo"})
    );
    let template = &d["spec"]["template"];
    assert_eq!(template["metadata"]["labels"]["faas_function"], "echo");
    assert_eq!(
        template["metadata"]["labels"]["com.openfaas.scale.min"],
        "1"
    );
    let c = container(&d);
    assert_eq!(c["image"], "ghcr.io/example/echo:1");
    assert_eq!(
        c["env"],
        json!([{"name": "fprocess", "value": "python3 -u echo.py"},
               {"name": "mode", "value": "http"}])
    );
    assert_eq!(
        c["resources"]["limits"],
        json!({"cpu": "500m", "memory": "128Mi"})
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/_/health");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    // The image's own user unless the operator sets one (OpenFaaS's images name theirs).
    assert_eq!(c["securityContext"]["runAsNonRoot"], Value::Null);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert!(
        mounts
            .iter()
            .any(|m| m["mountPath"] == "/var/openfaas/secrets" && m["readOnly"] == true)
    );
    assert!(mounts.iter().any(|m| m["mountPath"] == "/tmp"));
    let projected = &template["spec"]["volumes"][0]["projected"]["sources"][0]["secret"];
    assert_eq!(projected["name"], "api-key");
    assert_eq!(
        projected["items"],
        json!([{"key": "api-key", "path": "api-key"}])
    );
    assert_eq!(template["spec"]["automountServiceAccountToken"], false);
    // Long enough for the watchdog's drain: 5 s unready, 5 min of in-flight requests, 10 s.
    assert_eq!(template["spec"]["terminationGracePeriodSeconds"], 315);
    create.reply(201, &stored(d, 10));

    api.expect("GET", ECHO_SERVICE)
        .await
        .reply(404, &not_found("services", "echo"));
    let service = api
        .expect("POST", "/api/v1/namespaces/openfaas-fn/services")
        .await;
    let s = service.body().clone();
    assert_eq!(s["spec"]["selector"], json!({"faas_function": "echo"}));
    assert_eq!(s["spec"]["ports"][0]["port"], 8080);
    service.reply(201, &stored(s, 11));

    applied.await.unwrap().unwrap();
    // The gateway that deployed it knows it at once, before any watch event.
    assert_eq!(
        provider.replicas(&spec.function),
        Some(Replicas {
            desired: 1,
            ready: 0
        })
    );
    assert!(provider.shared());
}

#[tokio::test]
async fn applying_again_changes_nothing_and_an_update_rolls_at_the_live_count() {
    let (provider, mut api) = provider();
    let spec = echo();
    // What the API server holds: the same function, scaled to 4 by the autoscaler.
    let mut live = serde_json::to_value(sluice_kube::objects::deployment(&spec, &[], 4)).unwrap();
    live = stored(live, 20);
    let live_service = stored(
        serde_json::to_value(sluice_kube::objects::service(&spec)).unwrap(),
        21,
    );

    let applied = tokio::spawn({
        let (provider, spec) = (provider.clone(), spec.clone());
        async move { provider.apply(&spec).await }
    });
    api.expect("GET", ECHO).await.reply(200, &live);
    api.expect("GET", ECHO_SERVICE)
        .await
        .reply(200, &live_service);
    applied.await.unwrap().unwrap();
    api.expect_silence().await;
    assert_eq!(provider.replicas(&spec.function).unwrap().desired, 4);

    // A new environment: the Deployment is replaced (a rolling update), its count kept, and a
    // write that lost a race is done again from a fresh read.
    let mut changed = spec.clone();
    changed
        .deployment
        .env_vars
        .insert("version".into(), "2".into());
    let changed =
        sluice_core::FunctionSpec::new(changed.function, changed.deployment, 1, changed.created_at)
            .unwrap();
    let applied = tokio::spawn({
        let (provider, changed) = (provider.clone(), changed.clone());
        async move { provider.apply(&changed).await }
    });
    api.expect("GET", ECHO).await.reply(200, &live);
    let replace = api.expect("PUT", ECHO).await;
    assert_eq!(replace.body()["metadata"]["resourceVersion"], "20");
    replace.refuse(
        409,
        "Conflict",
        "Operation cannot be fulfilled on deployments.apps \"echo\": the object has been modified; please apply your changes to the latest version and try again",
    );
    let mut newer = live.clone();
    newer["metadata"]["resourceVersion"] = json!("22");
    api.expect("GET", ECHO).await.reply(200, &newer);
    let replace = api.expect("PUT", ECHO).await;
    let body = replace.body().clone();
    assert_eq!(body["metadata"]["resourceVersion"], "22");
    assert_eq!(body["spec"]["replicas"], 4, "the live count is kept");
    assert!(
        container(&body)["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "version", "value": "2"}))
    );
    assert_ne!(
        body["metadata"]["annotations"]["com.sluice.template-hash"],
        live["metadata"]["annotations"]["com.sluice.template-hash"]
    );
    replace.reply(200, &stored(body, 23));
    api.expect("GET", ECHO_SERVICE)
        .await
        .reply(200, &live_service);
    applied.await.unwrap().unwrap();
}

#[tokio::test]
async fn scaling_goes_through_the_scale_subresource_to_zero_and_back() {
    let (provider, mut api) = provider();
    let f = echo().function;
    for replicas in [0, 2] {
        let scaled = tokio::spawn({
            let (provider, f) = (provider.clone(), f.clone());
            async move { provider.scale(&f, replicas).await }
        });
        let call = api.expect("PATCH", &format!("{ECHO}/scale")).await;
        assert_eq!(call.body(), &json!({"spec": {"replicas": replicas}}));
        call.reply(
            200,
            &json!({"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": "echo", "namespace": NS, "resourceVersion": "30"},
                "spec": {"replicas": replicas}, "status": {"replicas": 1}}),
        );
        scaled.await.unwrap().unwrap();
    }
    let scaled = tokio::spawn({
        let (provider, f) = (provider.clone(), f.clone());
        async move { provider.scale(&f, 1).await }
    });
    api.expect("PATCH", &format!("{ECHO}/scale"))
        .await
        .reply(404, &not_found("deployments.apps", "echo"));
    assert!(matches!(
        scaled.await.unwrap(),
        Err(ProviderError::NotFound(_))
    ));
}

#[tokio::test]
async fn removing_deletes_the_deployment_and_service_and_leaves_others_alone() {
    let (provider, mut api) = provider();
    let spec = echo();
    let live = stored(
        serde_json::to_value(sluice_kube::objects::deployment(&spec, &[], 1)).unwrap(),
        40,
    );
    let removed = tokio::spawn({
        let (provider, f) = (provider.clone(), spec.function.clone());
        async move { provider.remove(&f).await }
    });
    let live_service = stored(
        serde_json::to_value(sluice_kube::objects::service(&spec)).unwrap(),
        41,
    );
    api.expect("GET", ECHO).await.reply(200, &live);
    api.expect("DELETE", ECHO)
        .await
        .reply(200, &crate::status(200, "", ""));
    api.expect("GET", ECHO_SERVICE)
        .await
        .reply(200, &live_service);
    api.expect("DELETE", ECHO_SERVICE)
        .await
        .reply(200, &crate::status(200, "", ""));
    removed.await.unwrap().unwrap();

    // A Deployment of the same name that is not a function is not touched, nor its Service.
    let removed = tokio::spawn({
        let (provider, f) = (provider.clone(), spec.function.clone());
        async move { provider.remove(&f).await }
    });
    let mut foreign = live.clone();
    foreign["metadata"]["labels"] = json!({"app": "echo"});
    api.expect("GET", ECHO).await.reply(200, &foreign);
    assert!(matches!(
        removed.await.unwrap(),
        Err(ProviderError::NotFound(_))
    ));
    api.expect_silence().await;

    // A Service of that name that is not a function's is neither deleted nor taken over.
    let removed = tokio::spawn({
        let (provider, f) = (provider.clone(), spec.function.clone());
        async move { provider.remove(&f).await }
    });
    let mut foreign_service = live_service.clone();
    foreign_service["metadata"]["labels"] = json!({"app": "echo"});
    foreign_service["spec"]["selector"] = json!({"app": "echo"});
    api.expect("GET", ECHO)
        .await
        .reply(404, &not_found("deployments.apps", "echo"));
    api.expect("GET", ECHO_SERVICE)
        .await
        .reply(200, &foreign_service);
    assert!(matches!(
        removed.await.unwrap(),
        Err(ProviderError::NotFound(_))
    ));
    let applied = tokio::spawn({
        let (provider, spec) = (provider.clone(), spec.clone());
        async move { provider.apply(&spec).await }
    });
    api.expect("GET", ECHO)
        .await
        .reply(404, &not_found("deployments.apps", "echo"));
    let create = api.expect("POST", DEPLOYMENTS).await;
    let body = create.body().clone();
    create.reply(201, &stored(body, 42));
    api.expect("GET", ECHO_SERVICE)
        .await
        .reply(200, &foreign_service);
    // The Deployment this deploy made goes again: nothing is left half-made.
    api.expect("DELETE", ECHO)
        .await
        .reply(200, &crate::status(200, "", ""));
    let err = applied.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("a service named echo exists"), "{err}");
    api.expect_silence().await;
}

#[tokio::test]
async fn refusals_are_surfaced_in_the_api_servers_words() {
    let (provider, mut api) = provider();
    let spec = echo();
    let cases = [
        (
            403,
            "Forbidden",
            "deployments.apps is forbidden: User \"system:serviceaccount:openfaas:sluice-gateway\" cannot create resource \"deployments\" in API group \"apps\" in the namespace \"openfaas-fn\"",
        ),
        (
            422,
            "Invalid",
            "Deployment.apps \"echo\" is invalid: spec.template.spec.containers[0].image: Required value",
        ),
        (
            403,
            "Forbidden",
            "deployments.apps \"echo\" is forbidden: exceeded quota: functions, requested: pods=1, used: pods=10, limited: pods=10",
        ),
    ];
    for (code, reason, message) in cases {
        let applied = tokio::spawn({
            let (provider, spec) = (provider.clone(), spec.clone());
            async move { provider.apply(&spec).await }
        });
        api.expect("GET", ECHO)
            .await
            .reply(404, &not_found("deployments.apps", "echo"));
        api.expect("POST", DEPLOYMENTS)
            .await
            .refuse(code, reason, message);
        match applied.await.unwrap() {
            Err(ProviderError::Refused {
                code: c,
                reason: r,
                message: m,
            }) => assert_eq!((c, r.as_str(), m.as_str()), (code, reason, message)),
            other => panic!("expected the refusal, got {other:?}"),
        }
    }

    // A secret that does not exist is named, and nothing is created.
    let mut with_secret = spec.clone();
    with_secret.deployment.secrets = vec!["db-password".into()];
    let applied = tokio::spawn({
        let provider = provider.clone();
        async move { provider.apply(&with_secret).await }
    });
    api.expect("GET", "/api/v1/namespaces/openfaas-fn/secrets/db-password")
        .await
        .reply(404, &not_found("secrets", "db-password"));
    let err = applied.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("secret \"db-password\" was not found"),
        "{err}"
    );
    api.expect_silence().await;

    // A namespace not opened to functions is refused by name.
    let elsewhere = sluice_core::FunctionSpec::new(
        sluice_core::FunctionRef::parse("echo", Some("staging")).unwrap(),
        spec.deployment.clone(),
        1,
        spec.created_at,
    )
    .unwrap();
    let applied = tokio::spawn({
        let provider = provider.clone();
        async move { provider.apply(&elsewhere).await }
    });
    api.expect("GET", "/api/v1/namespaces/staging").await.reply(
        200,
        &json!({"apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": "staging", "labels": {"team": "a"}}}),
    );
    let err = applied.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("not open to functions"), "{err}");
}

#[tokio::test]
async fn deployments_kubernetes_would_refuse_are_refused_before_any_call() {
    let (provider, mut api) = provider();
    let mut bad = echo();
    bad.deployment.image = String::new();
    assert!(
        provider
            .validate(&bad)
            .unwrap_err()
            .to_string()
            .contains("image is required")
    );
    let mut bad = echo();
    bad.deployment.labels = Some([("tier".to_owned(), "two words".to_owned())].into());
    assert!(
        provider
            .validate(&bad)
            .unwrap_err()
            .to_string()
            .contains("label tier")
    );
    let mut bad = echo();
    bad.deployment.requests = Some(sluice_core::FunctionResources {
        memory: "lots".into(),
        cpu: String::new(),
    });
    assert!(
        provider
            .validate(&bad)
            .unwrap_err()
            .to_string()
            .contains("requests.memory")
    );
    // Pods' CPU is not measured here: a function cannot scale on it.
    let mut bad = echo();
    let mut config = (*bad.config).clone();
    config.scale.metric = sluice_core::Metric::Cpu;
    bad.config = std::sync::Arc::new(config);
    let err = provider.validate(&bad).unwrap_err().to_string();
    assert!(
        err.contains("com.openfaas.scale.type cpu is not supported on Kubernetes"),
        "{err}"
    );
    assert!(provider.validate(&echo()).is_ok());
    api.expect_silence().await;
}

#[tokio::test]
async fn logs_come_from_every_pod_of_the_function() {
    let (provider, mut api) = provider();
    let spec = echo();
    // Known to the provider first (as after a deploy).
    let applied = tokio::spawn({
        let (provider, spec) = (provider.clone(), spec.clone());
        async move { provider.apply(&spec).await }
    });
    let live = stored(
        serde_json::to_value(sluice_kube::objects::deployment(&spec, &[], 2)).unwrap(),
        50,
    );
    api.expect("GET", ECHO).await.reply(200, &live);
    api.expect("GET", ECHO_SERVICE).await.reply(
        200,
        &stored(
            serde_json::to_value(sluice_kube::objects::service(&spec)).unwrap(),
            51,
        ),
    );
    applied.await.unwrap().unwrap();

    let stream = provider.logs(&spec.function, 10, false).unwrap();
    let collected = tokio::spawn(stream.collect::<Vec<_>>());
    let list = api
        .expect("GET", "/api/v1/namespaces/openfaas-fn/pods")
        .await;
    assert!(
        list.query.contains("labelSelector=faas_function%3Decho"),
        "{}",
        list.query
    );
    list.reply(
        200,
        &json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "60"},
        "items": [
            {"metadata": {"name": "echo-a", "namespace": NS}},
            {"metadata": {"name": "echo-b", "namespace": NS}},
        ]}),
    );
    for (pod, line) in [("echo-a", "hello from a"), ("echo-b", "hello from b")] {
        let call = api
            .expect(
                "GET",
                &format!("/api/v1/namespaces/openfaas-fn/pods/{pod}/log"),
            )
            .await;
        assert!(call.query.contains("tailLines=10"), "{}", call.query);
        assert!(call.query.contains("timestamps=true"), "{}", call.query);
        assert!(!call.query.contains("follow=true"), "{}", call.query);
        call.reply_raw(
            200,
            "text/plain",
            format!("2026-12-02T10:00:00.5Z {line}\n").into_bytes(),
        );
    }
    let lines = tokio::time::timeout(std::time::Duration::from_secs(10), collected)
        .await
        .unwrap()
        .unwrap();
    let mut seen: Vec<(String, String, i64)> = lines
        .iter()
        .map(|l| (l.instance.clone(), l.text.clone(), l.timestamp.as_millis()))
        .collect();
    seen.sort();
    let at = 1_796_205_600_500; // 2026-12-02T10:00:00.5Z
    assert_eq!(
        seen,
        [
            ("echo-a".to_owned(), "hello from a".to_owned(), at),
            ("echo-b".to_owned(), "hello from b".to_owned(), at),
        ]
    );
    assert!(lines.iter().all(|l| l.name == "echo" && l.namespace == NS));
}
