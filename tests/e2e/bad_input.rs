//! Acceptance 5: bad input gets a 4xx JSON error naming the problem; nothing panics, nothing 5xx,
//! nothing already there is lost.

use serde_json::{Value, json};

use crate::harness::{Sluice, deploy, get_json, sample};

/// Sends a request and checks it was refused with `status` and the error `code`, in our format.
async fn refused(request: reqwest::RequestBuilder, status: u16, code: &str) -> String {
    let r = request.send().await.unwrap();
    let got = r.status().as_u16();
    let marker = r
        .headers()
        .get("x-sluice-error")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{body}");
    assert_eq!(marker.as_deref(), Some(code));
    let message = body["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty());
    message
}

#[tokio::test]
async fn bad_input_gets_json_errors_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &["--max-body-bytes", "1024"]);
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    let post_fn = |body: &str| {
        http.post(format!("{url}/system/functions"))
            .header("content-type", "application/json")
            .body(body.to_owned())
    };

    // Deployments.
    let m = refused(post_fn("{not json"), 400, "bad_request").await;
    assert!(m.contains("invalid JSON"), "{m}");
    let m = refused(
        post_fn(r#"{"image":"x","envProcess":"cat"}"#),
        400,
        "bad_request",
    )
    .await;
    assert!(m.contains("service"), "{m}");
    refused(post_fn(""), 400, "bad_request").await;
    refused(post_fn(r#"{"service": 12}"#), 400, "bad_request").await;
    let m = refused(
        post_fn(r#"{"service":"Bad_Name","envProcess":"cat"}"#),
        400,
        "invalid_name",
    )
    .await;
    assert!(m.contains("Bad_Name"), "{m}");
    refused(
        post_fn(r#"{"service":"ok","namespace":"Nope!","envProcess":"cat"}"#),
        400,
        "invalid_name",
    )
    .await;
    let m = refused(
        post_fn(r#"{"service":"noproc","image":"alpine"}"#),
        400,
        "bad_request",
    )
    .await;
    assert!(m.contains("envProcess"), "{m}");
    refused(
        post_fn(r#"{"service":"m","envProcess":"cat","envVars":{"mode":"warp"}}"#),
        400,
        "bad_request",
    )
    .await;
    refused(
        post_fn(r#"{"service":"l","envProcess":"cat","labels":{"com.openfaas.scale.min":"lots"}}"#),
        400,
        "bad_request",
    )
    .await;
    let m = refused(
        post_fn(&sample("echo", "cat", false, &[]).to_string()),
        409,
        "conflict",
    )
    .await;
    assert!(m.contains("PUT"), "{m}");
    refused(
        http.put(format!("{url}/system/functions"))
            .json(&sample("ghost", "cat", false, &[])),
        404,
        "function_not_found",
    )
    .await;
    refused(post_fn(&"x".repeat(4096)), 413, "payload_too_large").await;

    // Unknown functions, on every route.
    refused(
        http.get(format!("{url}/function/ghost")),
        404,
        "function_not_found",
    )
    .await;
    refused(
        http.post(format!("{url}/async-function/ghost")),
        404,
        "function_not_found",
    )
    .await;
    refused(
        http.get(format!("{url}/system/function/ghost")),
        404,
        "function_not_found",
    )
    .await;
    refused(
        http.post(format!("{url}/system/scale-function/ghost"))
            .json(&json!({"replicas": 1})),
        404,
        "function_not_found",
    )
    .await;
    refused(
        http.delete(format!("{url}/system/functions"))
            .json(&json!({"functionName": "ghost"})),
        404,
        "function_not_found",
    )
    .await;
    refused(
        http.get(format!("{url}/system/logs?name=ghost")),
        404,
        "function_not_found",
    )
    .await;
    refused(
        http.get(format!("{url}/system/calls/no-such-call")),
        404,
        "not_found",
    )
    .await;
    refused(http.get(format!("{url}/nowhere")), 404, "not_found").await;

    // Invalid names and values in requests. A function route with a name no function can have
    // is a 404, as OpenFaaS clients expect for a function that is not there.
    refused(
        http.get(format!("{url}/function/Echo")),
        404,
        "function_not_found",
    )
    .await;
    refused(
        http.post(format!("{url}/async-function/ECHO")),
        404,
        "function_not_found",
    )
    .await;
    refused(http.get(format!("{url}/function/")), 404, "not_found").await;
    refused(
        http.delete(format!("{url}/system/functions"))
            .header("content-type", "application/json")
            .body(r#"{"name":"echo"}"#),
        400,
        "bad_request",
    )
    .await;
    refused(http.get(format!("{url}/system/logs")), 400, "bad_request").await;
    refused(
        http.get(format!("{url}/system/logs?name=echo&follow=yes")),
        400,
        "bad_request",
    )
    .await;
    refused(
        http.get(format!("{url}/system/logs?name=echo&tail=many")),
        400,
        "bad_request",
    )
    .await;
    refused(
        http.patch(format!("{url}/system/functions")),
        405,
        "method_not_allowed",
    )
    .await;
    refused(
        http.delete(format!("{url}/system/info")),
        405,
        "method_not_allowed",
    )
    .await;
    let m = refused(
        post_fn(
            r#"{"service":"big","envProcess":"cat","labels":{"com.openfaas.scale.max":"100000"}}"#,
        ),
        400,
        "bad_request",
    )
    .await;
    assert!(m.contains("limit"), "{m}");
    refused(
        http.get(format!("{url}/system/logs?name=echo&since=yesterday")),
        400,
        "bad_request",
    )
    .await;
    for replicas in [json!(-1), json!(21), json!("two")] {
        refused(
            http.post(format!("{url}/system/scale-function/echo"))
                .json(&json!({"replicas": replicas})),
            400,
            "bad_request",
        )
        .await;
    }
    refused(
        http.get(format!("{url}/system/calls/bad%20id")),
        400,
        "bad_request",
    )
    .await;

    // Async submissions that cannot be accepted are refused before anything is stored.
    let m = refused(
        http.post(format!("{url}/async-function/echo"))
            .header("X-Callback-Url", "not a url"),
        400,
        "bad_request",
    )
    .await;
    assert!(m.contains("X-Callback-Url"), "{m}");
    refused(
        http.post(format!("{url}/async-function/echo"))
            .header("X-Callback-Url", "ftp://example/x"),
        400,
        "bad_request",
    )
    .await;
    refused(
        http.post(format!("{url}/async-function/echo"))
            .header("X-Call-Id", "has spaces"),
        400,
        "bad_request",
    )
    .await;
    refused(
        http.post(format!("{url}/async-function/echo"))
            .header("X-Call-Id", "too-big")
            .body("y".repeat(2048)),
        413,
        "payload_too_large",
    )
    .await;
    refused(
        http.get(format!("{url}/system/calls/too-big")),
        404,
        "not_found",
    )
    .await;
    refused(
        http.post(format!("{url}/function/echo"))
            .body("z".repeat(2048)),
        413,
        "payload_too_large",
    )
    .await;

    // Everything that was there still is, and still works.
    let list: Vec<Value> = get_json(&http, format!("{url}/system/functions")).await;
    assert_eq!(list.len(), 1);
    let r = http
        .post(format!("{url}/function/echo"))
        .body("still here")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "still here");
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_get_503_not_a_queue() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &["--max-in-flight", "1"]);
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(
        &http,
        url,
        &sample("sleep", "python3 -u sleep.py", true, &[]),
    )
    .await;
    // Warm: the first request may wait for the replica to start.
    http.get(format!("{url}/function/sleep?seconds=0"))
        .send()
        .await
        .unwrap();
    // Five at once against a limit of one: one runs, the others are turned away at once.
    let calls = (0..5).map(|_| http.get(format!("{url}/function/sleep?seconds=1")).send());
    let answers = futures_util::future::join_all(calls).await;
    let mut ok = 0;
    for answer in answers {
        let r = answer.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(r.headers()["x-sluice-error"], "overloaded");
                assert_eq!(r.headers()["retry-after"], "1");
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok, 1);

    // An accepted async call is not turned away by the limit: the worker's own requests are
    // not counted, even while a client's request holds the only slot.
    // (The last slot frees a moment after its response is complete: ask until it has.)
    crate::harness::eventually("the async call to be accepted", || async {
        let r = http
            .post(format!("{url}/async-function/sleep?seconds=0.1"))
            .header("X-Call-Id", "under-load")
            .send()
            .await
            .ok()?;
        (r.status() == 202).then_some(())
    })
    .await;
    let hog = http
        .get(format!("{url}/function/sleep?seconds=2"))
        .send()
        .await
        .unwrap();
    assert_eq!(hog.status(), 200);
    let record: Value =
        crate::harness::get_json(&http, format!("{url}/system/calls/under-load")).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    // Management calls are not counted against the limit.
    assert_eq!(
        http.get(format!("{url}/system/functions"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
