//! Acceptance 2: functions deployed through OpenFaaS's JSON API answer on `/function/<name>`
//! with the right bodies, status codes and headers, for every method, path and query.

use serde_json::Value;

use crate::harness::{Sluice, deploy, eventually, get_json, sample, scale, try_get_json};

#[tokio::test]
async fn openfaas_api_deploys_and_proxies_classic_and_http_functions() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();

    // A classic function exactly as an OpenFaaS user would deploy it: image + envProcess.
    let r = http
        .post(format!("{url}/system/functions"))
        .header("content-type", "application/json")
        .body(r#"{"service":"sha","image":"functions/alpine:latest","envProcess":"sha512sum","labels":{},"annotations":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    deploy(&http, url, &sample("fail", "python3 -u fail.py", true, &[])).await;

    let hashed = http
        .post(format!("{url}/function/sha"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(hashed.status(), 200);
    assert_eq!(
        hashed.text().await.unwrap(),
        "9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca72323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043  -\n"
    );
    let same = http
        .post(format!("{url}/function/sha.openfaas-fn"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert!(same.text().await.unwrap().starts_with("9b71d224"));

    for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = http
            .request(
                m,
                format!("{url}/function/echo.openfaas-fn/items/42?color=blue&x=%20y"),
            )
            .header("X-Custom", "custom-value")
            .header("Content-Type", "application/json")
            .body(format!("{{\"method\":\"{method}\"}}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method}");
        assert_eq!(r.headers()["x-echo-method"], method);
        assert_eq!(r.headers()["x-echo-path"], "/items/42");
        assert_eq!(r.headers()["x-echo-query"], "color=blue&x=%20y");
        assert_eq!(r.headers()["content-type"], "application/json");
        let seen: Value =
            serde_json::from_str(r.headers()["x-echo-headers"].to_str().unwrap()).unwrap();
        assert_eq!(seen["x-custom"], "custom-value");
        assert_eq!(seen["x-forwarded-host"], url.trim_start_matches("http://"));
        assert_eq!(
            r.text().await.unwrap(),
            format!("{{\"method\":\"{method}\"}}")
        );
    }
    let root = http
        .get(format!("{url}/function/echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(root.headers()["x-echo-path"], "/");

    for status in [201u16, 404, 418, 500, 503] {
        let r = http
            .get(format!("{url}/function/fail?status={status}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
        assert!(
            !r.headers().contains_key("x-sluice-error"),
            "function's own error marked as Sluice's"
        );
        assert_eq!(
            r.text().await.unwrap(),
            format!("failing with {status} as asked\n")
        );
    }

    // Management API in OpenFaaS's shapes.
    let list: Vec<Value> = get_json(&http, format!("{url}/system/functions")).await;
    let names: Vec<&str> = list.iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["echo", "fail", "sha"]);
    let sha: Value = get_json(&http, format!("{url}/system/function/sha")).await;
    assert_eq!(sha["envProcess"], "sha512sum");
    assert_eq!(sha["image"], "functions/alpine:latest");
    assert_eq!(sha["namespace"], "openfaas-fn");
    assert_eq!(sha["invocationCount"], 2.0);
    assert_eq!(sha["replicas"], 1);

    scale(&http, url, "echo", 3).await;
    eventually("3 echo replicas ready", || async {
        let f: Value = try_get_json(&http, format!("{url}/system/function/echo")).await?;
        (f["availableReplicas"] == 3 && f["replicas"] == 3).then_some(())
    })
    .await;

    // Update in place with PUT; the new command is what runs.
    let mut changed = sample("sha", "sha256sum", false, &[]);
    changed["image"] = "functions/alpine:next".into();
    let r = http
        .put(format!("{url}/system/functions"))
        .json(&changed)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let hashed = http
        .post(format!("{url}/function/sha"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert!(hashed.text().await.unwrap().starts_with("2cf24dba5fb0a30e"));

    // Logs: a classic function's stderr, as NDJSON in OpenFaaS's shape.
    deploy(
        &http,
        url,
        &sample("noisy", "sh -c 'echo to-the-log >&2; cat'", false, &[]),
    )
    .await;
    http.post(format!("{url}/function/noisy"))
        .body("x")
        .send()
        .await
        .unwrap();
    let logs = http
        .get(format!("{url}/system/logs?name=noisy&tail=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(logs.headers()["content-type"], "application/x-ndjson");
    let text = logs.text().await.unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The classic watchdog's own line comes first, then what the command wrote to stderr.
    assert_eq!(lines[0]["text"], "Forking fprocess.", "{text}");
    let line = &lines[1];
    assert_eq!(line["name"], "noisy");
    assert_eq!(line["namespace"], "openfaas-fn");
    assert_eq!(line["text"], "to-the-log");
    assert!(line["instance"].as_str().unwrap().starts_with("noisy-"));
    assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));

    let ns: Vec<String> = get_json(&http, format!("{url}/system/namespaces")).await;
    assert_eq!(ns, ["openfaas-fn"]);
    let info: Value = get_json(&http, format!("{url}/system/info")).await;
    assert_eq!(info["provider"]["provider"], "sluice");
    assert_eq!(
        http.get(format!("{url}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let r = http
        .delete(format!("{url}/system/functions"))
        .json(&serde_json::json!({"functionName": "noisy"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = http
        .post(format!("{url}/function/noisy"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn metrics_count_invocations_by_function_and_code_in_openfaas_names() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(&http, url, &sample("fail", "python3 -u fail.py", true, &[])).await;
    for status in ["200", "200", "418"] {
        let r = http
            .get(format!("{url}/function/fail?status={status}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_str(), status);
    }
    // Calls to functions that do not exist make no series (their names are anyone's).
    let r = http
        .get(format!("{url}/function/nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let f: Value = get_json(&http, format!("{url}/system/function/fail")).await;
    assert_eq!(f["invocationCount"], 3.0, "{f}");
    let r = http.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = r.text().await.unwrap();
    let has = |line: &str| text.lines().any(|l| l == line);
    for line in [
        r#"gateway_function_invocation_total{function_name="fail.openfaas-fn",code="200"} 2"#,
        r#"gateway_function_invocation_total{function_name="fail.openfaas-fn",code="418"} 1"#,
        r#"gateway_functions_seconds_count{function_name="fail.openfaas-fn",code="200"} 2"#,
        r#"gateway_functions_seconds_bucket{function_name="fail.openfaas-fn",code="418",le="+Inf"} 1"#,
        r#"gateway_service_count{function_name="fail.openfaas-fn"} 1"#,
        r#"sluice_function_ready_replicas{function_name="fail.openfaas-fn"} 1"#,
    ] {
        assert!(has(line), "missing {line:?} in:\n{text}");
    }
    assert!(!text.contains("nope"), "{text}");
}

/// `/system/secrets` is a management route: credentials first, then the body is checked.
#[tokio::test]
async fn the_secrets_api_needs_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let anonymous = reqwest::Client::new();
    let r = anonymous
        .get(format!("{url}/system/secrets"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = anonymous
        .post(format!("{url}/system/secrets"))
        .header("content-type", "application/json")
        .body(r#"{"name":"api-key","value":"s3cr3t"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let http = crate::harness::http();
    for (body, needle) in [
        (r#"{"name":"Bad Name","value":"x"}"#, "secret name"),
        (r#"{"name":"ok"}"#, "needs a value"),
        (r#"{"name":"ok","rawValue":"%%%"}"#, "not base64"),
        (r#"{"name":"ok","value":"x","colour":"red"}"#, "colour"),
    ] {
        let r = http
            .post(format!("{url}/system/secrets"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let error: Value = r.json().await.unwrap();
        assert!(
            error["message"].as_str().unwrap().contains(needle),
            "{body}: {error}"
        );
    }
    let r: Value = get_json(&http, format!("{url}/system/secrets")).await;
    assert_eq!(r, serde_json::json!([]));
}

/// OpenFaaS's `usage` in a function's status: an HTTP-mode function's replicas' resident memory
/// (and CPU) once measured, in both the list and the single status; a classic function (a
/// process per request, not measured) has none.
#[tokio::test]
async fn an_http_functions_status_has_its_replicas_memory_and_a_classic_ones_none() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    deploy(&http, url, &sample("cat", "cat", false, &[])).await;
    // A Python server holds megabytes once it has started (not bytes: the sum is of pages, not
    // a count); just after the spawn it may hold less, so this is waited for.
    eventually("echo's memory in its status", || async {
        let f: Value = try_get_json(&http, format!("{url}/system/function/echo")).await?;
        (f["usage"]["totalMemoryBytes"].as_f64()? > 1_000_000.0).then_some(())
    })
    .await;
    let list: Vec<Value> = get_json(&http, format!("{url}/system/functions")).await;
    let by_name = |name: &str| list.iter().find(|f| f["name"] == name).unwrap().clone();
    assert!(
        by_name("echo")["usage"]["totalMemoryBytes"]
            .as_f64()
            .unwrap()
            > 1_000_000.0,
        "{list:?}"
    );
    let cat = by_name("cat");
    assert!(cat.get("usage").is_none(), "{cat}");
    let cat: Value = get_json(&http, format!("{url}/system/function/cat")).await;
    assert!(cat.get("usage").is_none(), "{cat}");
}
