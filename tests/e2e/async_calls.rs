//! Acceptance 3: async calls are accepted with 202, run by the queue worker, and their results
//! reach the caller's X-Callback-Url; the calls API says what became of each.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use serde_json::Value;

use crate::harness::{Receiver, Sluice, deploy, eventually, get_json, sample, scale, try_get_json};

const CALLS: usize = 500;

#[tokio::test]
async fn five_hundred_async_calls_each_get_their_callback() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = sluice.url.clone();
    let http = reqwest::Client::new();
    let receiver = Receiver::start().await;
    deploy(
        &http,
        &url,
        &sample("echo", "python3 -u echo.py", true, &[]),
    )
    .await;

    // Submit concurrently; remember which body went with which call id.
    let submitted: Vec<(String, String)> = futures_util::stream::iter(0..CALLS)
        .map(|i| {
            let (http, url, cb) = (http.clone(), url.clone(), receiver.url.clone());
            async move {
                let body = format!("payload number {i}");
                let r = http
                    .post(format!("{url}/async-function/echo/run?i={i}"))
                    .header("X-Callback-Url", cb)
                    .header("Content-Type", "text/plain")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                assert!(r.headers().contains_key("x-start-time"));
                let id = r.headers()["x-call-id"].to_str().unwrap().to_owned();
                assert_eq!(
                    r.headers()["location"].to_str().unwrap(),
                    format!("/system/calls/{id}")
                );
                (id, body)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let expected: HashMap<String, String> = submitted.into_iter().collect();
    assert_eq!(expected.len(), CALLS, "call ids are not unique");

    eventually("500 callbacks", || async {
        (receiver.count() >= CALLS).then_some(())
    })
    .await;
    let callbacks = receiver.received();
    let mut seen = HashSet::new();
    for cb in &callbacks {
        let id = cb.header("x-call-id");
        let body = expected
            .get(id)
            .unwrap_or_else(|| panic!("callback for unknown call {id:?}"));
        assert_eq!(cb.body, body.as_bytes(), "call {id}");
        assert_eq!(cb.header("x-function-status"), "200");
        assert_eq!(cb.header("x-function-name"), "echo");
        assert_eq!(cb.header("x-echo-method"), "POST");
        assert_eq!(cb.header("x-echo-path"), "/run");
        assert_eq!(cb.header("content-type"), "text/plain");
        assert!(cb.header("x-duration-seconds").parse::<f64>().is_ok());
        assert!(seen.insert(id.to_owned()), "two callbacks for {id}");
    }
    assert_eq!(seen.len(), CALLS);

    for id in expected.keys() {
        let record: Value = get_json(&http, format!("{url}/system/calls/{id}")).await;
        assert_eq!(record["state"], "succeeded", "{record}");
        assert_eq!(record["statusCode"], 200);
        assert_eq!(record["attempts"], 1);
        assert_eq!(record["callback"]["delivered"], true);
    }
}

#[tokio::test]
async fn async_keeps_method_and_call_id_and_reports_failures() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = reqwest::Client::new();
    let receiver = Receiver::start().await;
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    deploy(&http, url, &sample("fail", "python3 -u fail.py", true, &[])).await;

    // The client's own call id and method are kept; resubmitting the same id runs it once.
    for _ in 0..2 {
        let r = http
            .put(format!("{url}/async-function/echo.openfaas-fn/x?y=1"))
            .header("X-Callback-Url", &receiver.url)
            .header("X-Call-Id", "order-17")
            .body("kept")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        assert_eq!(r.headers()["x-call-id"], "order-17");
    }
    let r = http
        .post(format!("{url}/async-function/fail?status=503"))
        .header("X-Callback-Url", &receiver.url)
        .header("X-Call-Id", "doomed-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    // No callback URL: still runs, still recorded.
    let r = http
        .post(format!("{url}/async-function/echo"))
        .body("quiet")
        .send()
        .await
        .unwrap();
    let quiet = r.headers()["x-call-id"].to_str().unwrap().to_owned();

    eventually("both callbacks", || async {
        (receiver.count() >= 2).then_some(())
    })
    .await;
    let by_id: HashMap<String, _> = receiver
        .received()
        .into_iter()
        .map(|cb| (cb.header("x-call-id").to_owned(), cb))
        .collect();
    let order = &by_id["order-17"];
    assert_eq!(order.header("x-echo-method"), "PUT");
    assert_eq!(order.header("x-echo-query"), "y=1");
    assert_eq!(order.body, "kept");
    let doomed = &by_id["doomed-1"];
    assert_eq!(doomed.header("x-function-status"), "503");
    assert_eq!(doomed.header("x-function-name"), "fail");

    let failed: Value = get_json(&http, format!("{url}/system/calls/doomed-1")).await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["statusCode"], 503);
    assert_eq!(failed["error"], "function answered 503");
    eventually("the quiet call to finish", || async {
        let r: Value = try_get_json(&http, format!("{url}/system/calls/{quiet}")).await?;
        (r["state"] == "succeeded").then_some(())
    })
    .await;
    // The duplicate submission was not run a second time.
    let order: Value = get_json(&http, format!("{url}/system/calls/order-17")).await;
    assert_eq!(order["attempts"], 1);
    assert_eq!(
        receiver
            .received()
            .iter()
            .filter(|c| c.header("x-call-id") == "order-17")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_function_that_cannot_be_reached_is_recorded_as_failed() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = reqwest::Client::new();
    let receiver = Receiver::start().await;
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    scale(&http, url, "echo", 0).await;
    let r = http
        .post(format!("{url}/async-function/echo"))
        .header("X-Callback-Url", &receiver.url)
        .header("X-Call-Id", "nobody-home")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eventually("the callback", || async {
        (receiver.count() == 1).then_some(())
    })
    .await;
    let cb = &receiver.received()[0];
    assert_eq!(cb.header("x-function-status"), "503");
    assert_eq!(cb.header("x-sluice-error"), "scaled_to_zero");
    let record: Value = get_json(&http, format!("{url}/system/calls/nobody-home")).await;
    assert_eq!(record["state"], "failed");
    assert!(
        record["error"].as_str().unwrap().contains("scaled_to_zero"),
        "{record}"
    );
}

#[tokio::test]
async fn redeploying_or_scaling_down_does_not_cut_running_calls() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = reqwest::Client::new();
    let receiver = Receiver::start().await;
    let mut sleep = sample("sleep", "python3 -u sleep.py", true, &[]);
    deploy(&http, url, &sleep).await;
    scale(&http, url, "sleep", 2).await;
    for id in ["during-redeploy", "during-scale-down"] {
        let r = http
            .post(format!("{url}/async-function/sleep?seconds=2"))
            .header("X-Callback-Url", &receiver.url)
            .header("X-Call-Id", id)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    for id in ["during-redeploy", "during-scale-down"] {
        eventually("the call to run", || async {
            let r: Value = try_get_json(&http, format!("{url}/system/calls/{id}")).await?;
            (r["state"] == "running").then_some(())
        })
        .await;
    }
    sleep["envVars"]["version"] = "2".into();
    let r = http
        .put(format!("{url}/system/functions"))
        .json(&sleep)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    scale(&http, url, "sleep", 1).await;
    eventually("both callbacks", || async {
        (receiver.count() == 2).then_some(())
    })
    .await;
    for cb in receiver.received() {
        assert_eq!(
            cb.header("x-function-status"),
            "200",
            "{}",
            cb.header("x-call-id")
        );
        assert_eq!(cb.body, "slept 2s\n");
    }
}

#[tokio::test]
async fn one_call_id_is_never_accepted_for_two_functions() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = reqwest::Client::new();
    let receiver = Receiver::start().await;
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    deploy(&http, url, &sample("fail", "python3 -u fail.py", true, &[])).await;
    let submit = |function: &'static str, id: String| {
        http.post(format!("{url}/async-function/{function}?status=200"))
            .header("X-Callback-Url", &receiver.url)
            .header("X-Call-Id", id)
            .send()
    };
    let mut accepted = HashMap::new();
    for i in 0..50 {
        let id = format!("contested-{i}");
        let (a, b) = tokio::join!(submit("echo", id.clone()), submit("fail", id.clone()));
        let (a, b) = (a.unwrap().status().as_u16(), b.unwrap().status().as_u16());
        match (a, b) {
            (202, 409) => accepted.insert(id, "echo"),
            (409, 202) => accepted.insert(id, "fail"),
            other => panic!("{id}: answers {other:?}; exactly one may be accepted"),
        };
    }
    eventually("every accepted call to call back", || async {
        (receiver.count() >= accepted.len()).then_some(())
    })
    .await;
    for cb in receiver.received() {
        let id = cb.header("x-call-id");
        assert_eq!(
            cb.header("x-function-name"),
            accepted[id],
            "{id} ran the other function"
        );
    }
    assert_eq!(receiver.count(), accepted.len());
}
