//! Secrets (`/system/secrets` on Kubernetes Secrets) and the namespaces open to functions.

use serde_json::json;
use sluice_core::{Orchestrator, ProviderError};

use crate::{NS, not_found, provider, stored};

const SECRETS: &str = "/api/v1/namespaces/openfaas-fn/secrets";

fn managed(name: &str, value_b64: &str) -> serde_json::Value {
    stored(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": NS,
                         "labels": {"app.kubernetes.io/managed-by": "openfaas"}},
            "data": {name: value_b64}}),
        70,
    )
}

#[tokio::test]
async fn secrets_are_kubernetes_secrets_and_only_managed_ones_are_touched() {
    let (provider, mut api) = provider();

    // Create: an Opaque Secret, labelled as faas-netes labels them, the value under its name.
    let created = tokio::spawn({
        let provider = provider.clone();
        async move { provider.put_secret(NS, "api-key", b"s3cr3t", true).await }
    });
    let call = api.expect("POST", SECRETS).await;
    let body = call.body().clone();
    assert_eq!(body["type"], "Opaque");
    assert_eq!(body["metadata"]["name"], "api-key");
    assert_eq!(
        body["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "openfaas"
    );
    assert_eq!(body["data"], json!({"api-key": "czNjcjN0"}));
    call.reply(201, &stored(body, 70));
    created.await.unwrap().unwrap();

    // Again: the API server says it exists, and so does the provider.
    let again = tokio::spawn({
        let provider = provider.clone();
        async move { provider.put_secret(NS, "api-key", b"x", true).await }
    });
    api.expect("POST", SECRETS).await.refuse(
        409,
        "AlreadyExists",
        "secrets \"api-key\" already exists",
    );
    assert!(matches!(
        again.await.unwrap(),
        Err(ProviderError::Refused { code: 409, .. })
    ));

    // List: only the managed ones, by name, never their values.
    let listed = tokio::spawn({
        let provider = provider.clone();
        async move { provider.secrets(NS).await }
    });
    let call = api.expect("GET", SECRETS).await;
    assert!(
        call.query
            .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dopenfaas"),
        "{}",
        call.query
    );
    call.reply(
        200,
        &json!({"apiVersion": "v1", "kind": "SecretList", "metadata": {"resourceVersion": "71"},
            "items": [managed("db-password", "eA=="), managed("api-key", "eA==")]}),
    );
    assert_eq!(
        listed.await.unwrap().unwrap(),
        ["api-key".to_owned(), "db-password".to_owned()]
    );

    // Update: the new value replaces the old, at the version read.
    let updated = tokio::spawn({
        let provider = provider.clone();
        async move { provider.put_secret(NS, "api-key", b"new", false).await }
    });
    api.expect("GET", &format!("{SECRETS}/api-key"))
        .await
        .reply(200, &managed("api-key", "czNjcjN0"));
    let call = api.expect("PUT", &format!("{SECRETS}/api-key")).await;
    assert_eq!(call.body()["data"], json!({"api-key": "bmV3"}));
    assert_eq!(call.body()["metadata"]["resourceVersion"], "70");
    let body = call.body().clone();
    call.reply(200, &body);
    updated.await.unwrap().unwrap();

    // A Secret the API did not make (a service account token, say) is not there for it.
    let foreign = tokio::spawn({
        let provider = provider.clone();
        async move { provider.delete_secret(NS, "default-token").await }
    });
    let mut token = managed("default-token", "eA==");
    token["metadata"]["labels"] = json!({});
    api.expect("GET", &format!("{SECRETS}/default-token"))
        .await
        .reply(200, &token);
    assert!(matches!(
        foreign.await.unwrap(),
        Err(ProviderError::NotFound(_))
    ));
    api.expect_silence().await;

    // Delete a managed one.
    let deleted = tokio::spawn({
        let provider = provider.clone();
        async move { provider.delete_secret(NS, "api-key").await }
    });
    api.expect("GET", &format!("{SECRETS}/api-key"))
        .await
        .reply(200, &managed("api-key", "eA=="));
    api.expect("DELETE", &format!("{SECRETS}/api-key"))
        .await
        .reply(200, &crate::status(200, "", ""));
    deleted.await.unwrap().unwrap();

    // Missing entirely.
    let missing = tokio::spawn({
        let provider = provider.clone();
        async move { provider.delete_secret(NS, "nope").await }
    });
    api.expect("GET", &format!("{SECRETS}/nope"))
        .await
        .reply(404, &not_found("secrets", "nope"));
    assert!(matches!(
        missing.await.unwrap(),
        Err(ProviderError::NotFound(_))
    ));
}

#[tokio::test]
async fn namespaces_open_to_functions_are_the_labelled_ones() {
    let (provider, mut api) = provider();
    let listed = tokio::spawn({
        let provider = provider.clone();
        async move { provider.namespaces().await }
    });
    let call = api.expect("GET", "/api/v1/namespaces").await;
    assert!(
        call.query.contains("labelSelector=openfaas%3D1"),
        "{}",
        call.query
    );
    call.reply(
        200,
        &json!({"apiVersion": "v1", "kind": "NamespaceList", "metadata": {"resourceVersion": "80"},
            "items": [{"metadata": {"name": "staging-fn", "labels": {"openfaas": "1"}}}]}),
    );
    assert_eq!(
        listed.await.unwrap().unwrap(),
        Some(vec!["openfaas-fn".to_owned(), "staging-fn".to_owned()])
    );

    // Without the cluster-wide permission, the function namespace is the one there is.
    let listed = tokio::spawn({
        let provider = provider.clone();
        async move { provider.namespaces().await }
    });
    api.expect("GET", "/api/v1/namespaces").await.refuse(
        403,
        "Forbidden",
        "namespaces is forbidden: User \"system:serviceaccount:openfaas:sluice-gateway\" cannot list resource \"namespaces\" in API group \"\" at the cluster scope",
    );
    assert_eq!(
        listed.await.unwrap().unwrap(),
        Some(vec!["openfaas-fn".to_owned()])
    );
}

/// A deployment may name any Secret in the namespace, whoever made it: each is looked up by
/// name, and only those the API server does not have are missing.
#[tokio::test]
async fn secrets_a_deployment_names_are_looked_up_whoever_made_them() {
    let (provider, mut api) = provider();
    let looked_up = tokio::spawn({
        let provider = provider.clone();
        async move {
            provider
                .missing_secrets(NS, &["made-by-kubectl".to_owned(), "nope".to_owned()])
                .await
        }
    });
    // Made with kubectl: no label of ours, still a Secret the pod can mount.
    api.expect("GET", &format!("{SECRETS}/made-by-kubectl"))
        .await
        .reply(
            200,
            &stored(
                json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "made-by-kubectl", "namespace": NS},
                    "data": {"made-by-kubectl": "eA=="}}),
                80,
            ),
        );
    api.expect("GET", &format!("{SECRETS}/nope"))
        .await
        .reply(404, &not_found("secrets", "nope"));
    assert_eq!(looked_up.await.unwrap().unwrap(), ["nope".to_owned()]);
    api.expect_silence().await;
}
