//! Acceptance 3: async calls are accepted with 202, run by the queue worker, and their results
//! reach the caller's X-Callback-Url; the calls API says what became of each.
//!
//! Tests marked `on_both_backends!` run twice: on the embedded SQLite queue, and on Postgres
//! with JetStream.

use std::collections::{HashMap, HashSet};

use futures_util::StreamExt;
use serde_json::Value;

use crate::harness::{
    Backend, Receiver, Sluice, deploy, eventually, get_json, sample, scale, submit_async,
    try_get_json,
};

const CALLS: usize = 500;

on_both_backends!(five_hundred_async_calls_each_get_their_callback);
async fn five_hundred_async_calls_each_get_their_callback(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let sluice = backend.up(&dir.path().join("data"), &[]);
    let url = sluice.url.clone();
    let http = crate::harness::http();
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

    // The calls API pages through all of them, newest first.
    let mut listed = HashSet::new();
    let mut cursor = String::new();
    let mut pages = 0;
    loop {
        let page: Value = get_json(
            &http,
            format!("{url}/system/calls?function=echo&status=succeeded&limit=200&cursor={cursor}"),
        )
        .await;
        pages += 1;
        for c in page["calls"].as_array().unwrap() {
            assert!(
                listed.insert(c["id"].as_str().unwrap().to_owned()),
                "listed twice: {c}"
            );
        }
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(listed, expected.keys().cloned().collect::<HashSet<_>>());

    for id in expected.keys() {
        // The callback's outcome is recorded just after the receiver answers.
        let record: Value = eventually("the callback to be recorded", || async {
            let r: Value = try_get_json(&http, format!("{url}/system/calls/{id}")).await?;
            (r["callback"]["delivered"] == true).then_some(r)
        })
        .await;
        assert_eq!(record["state"], "succeeded", "{record}");
        assert_eq!(record["statusCode"], 200);
        assert_eq!(record["attempts"], 1);
        assert_eq!(record["callback"]["delivered"], true);
    }
}

on_both_backends!(async_keeps_method_and_call_id_and_reports_failures);
async fn async_keeps_method_and_call_id_and_reports_failures(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let sluice = backend.up(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
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
    let r = submit_async(
        &http,
        format!("{url}/async-function/fail?status=400"),
        &receiver,
        "doomed-1",
    )
    .await;
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
    assert_eq!(doomed.header("x-function-status"), "400");
    assert_eq!(doomed.header("x-function-name"), "fail");

    let failed: Value = get_json(&http, format!("{url}/system/calls/doomed-1")).await;
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["statusCode"], 400);
    assert_eq!(failed["error"], "function answered 400");
    assert_eq!(failed["attempts"], 1, "a 400 is not retried");
    eventually("the quiet call to finish", || async {
        let r: Value = try_get_json(&http, format!("{url}/system/calls/{quiet}")).await?;
        (r["state"] == "succeeded").then_some(())
    })
    .await;
    // The function's response is kept and replayed as it was given.
    let kept = http
        .get(format!("{url}/system/calls/order-17/result"))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status(), 200);
    assert_eq!(kept.headers()["x-echo-method"], "PUT");
    assert_eq!(kept.headers()["x-call-id"], "order-17");
    assert_eq!(kept.text().await.unwrap(), "kept");
    let kept = http
        .get(format!("{url}/system/calls/doomed-1/result"))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status(), 400);
    assert_eq!(kept.text().await.unwrap(), "failing with 400 as asked\n");
    let none = http
        .get(format!("{url}/system/calls/nothing-here/result"))
        .send()
        .await
        .unwrap();
    assert_eq!(none.status(), 404);
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
    let sluice = Sluice::start(&dir.path().join("data"), &["--hold-timeout", "500ms"]);
    let url = &sluice.url;
    let http = crate::harness::http();
    let receiver = Receiver::start().await;
    // A server that never listens never becomes ready (one that exits at once would be
    // crash-looping after its third start, a 503 of its own: tests/e2e/crash.rs).
    let mut echo = sample(
        "echo",
        "python3 -c 'import time; time.sleep(3600)'",
        true,
        &[],
    );
    echo["annotations"]["com.openfaas.retry.attempts"] = "2".into();
    echo["annotations"]["com.openfaas.retry.min_wait"] = "50ms".into();
    deploy(&http, url, &echo).await;
    let target = format!("{url}/async-function/echo");
    let cb = crate::harness::called_back(&http, target, &receiver, "nobody-home").await;
    assert_eq!(cb.header("x-function-status"), "504");
    assert_eq!(cb.header("x-sluice-error"), "no_ready_replica");
    let record: Value = get_json(&http, format!("{url}/system/calls/nobody-home")).await;
    assert_eq!(record["state"], "failed");
    assert_eq!(record["attempts"], 2);
    assert!(
        record["error"]
            .as_str()
            .unwrap()
            .contains("no_ready_replica"),
        "{record}"
    );
}

#[tokio::test]
async fn redeploying_or_scaling_down_does_not_cut_running_calls() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    let receiver = Receiver::start().await;
    let mut sleep = sample("sleep", "python3 -u sleep.py", true, &[]);
    deploy(&http, url, &sleep).await;
    scale(&http, url, "sleep", 2).await;
    for id in ["during-redeploy", "during-scale-down"] {
        let r = submit_async(
            &http,
            format!("{url}/async-function/sleep?seconds=2"),
            &receiver,
            id,
        )
        .await;
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

on_both_backends!(one_call_id_is_never_accepted_for_two_functions);
async fn one_call_id_is_never_accepted_for_two_functions(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let sluice = backend.up(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
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

on_both_backends!(failed_attempts_are_retried_with_backoff_then_given_up);
async fn failed_attempts_are_retried_with_backoff_then_given_up(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let sluice = backend.up(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    let receiver = Receiver::start().await;
    // flaky.py counts calls per key in its own process: one replica sees every attempt (a
    // burst of submissions and retries can otherwise scale it out on its request rate).
    let mut flaky = sample(
        "flaky",
        "python3 -u flaky.py",
        true,
        &[("com.openfaas.scale.max", "1")],
    );
    for (k, v) in [
        ("attempts", "4"),
        ("min_wait", "100ms"),
        ("max_wait", "400ms"),
    ] {
        flaky["annotations"][format!("com.openfaas.retry.{k}")] = v.into();
    }
    deploy(&http, url, &flaky).await;
    let submit = |id: &'static str, query: &'static str| {
        http.post(format!("{url}/async-function/flaky?{query}"))
            .header("X-Callback-Url", &receiver.url)
            .header("X-Call-Id", id)
            .send()
    };
    // 503 twice (once with Retry-After), then 200: one callback, with the 200.
    assert_eq!(
        submit("recovers", "key=a&fail=2&retry_after=1")
            .await
            .unwrap()
            .status(),
        202
    );
    // Always 500: given up after 4 attempts, one callback with the last 500.
    assert_eq!(
        submit("hopeless", "key=b&fail=99&status=500")
            .await
            .unwrap()
            .status(),
        202
    );
    // 404 is not a retried code: one attempt.
    assert_eq!(
        submit("not-retried", "key=c&fail=99&status=404")
            .await
            .unwrap()
            .status(),
        202
    );
    // Fails all 4 attempts, then works once re-driven ("after a fix").
    assert_eq!(
        submit("fixed-later", "key=d&fail=4")
            .await
            .unwrap()
            .status(),
        202
    );

    eventually("four callbacks", || async {
        (receiver.count() >= 4).then_some(())
    })
    .await;
    let by_id: HashMap<String, _> = receiver
        .received()
        .into_iter()
        .map(|cb| (cb.header("x-call-id").to_owned(), cb))
        .collect();
    let all: Vec<String> = receiver
        .received()
        .iter()
        .map(|c| {
            format!(
                "{}={}",
                c.header("x-call-id"),
                c.header("x-function-status")
            )
        })
        .collect();
    assert_eq!(by_id.len(), 4, "a call called back more than once: {all:?}");
    assert_eq!(by_id["fixed-later"].header("x-function-status"), "503");
    let recovers = &by_id["recovers"];
    assert_eq!(recovers.header("x-function-status"), "200");
    assert_eq!(recovers.body, "call 3 for 'a' succeeds\n");
    assert_eq!(
        (recovers.header("x-retry"), recovers.header("x-retry-max")),
        ("2", "3")
    );
    let hopeless = &by_id["hopeless"];
    assert_eq!(hopeless.header("x-function-status"), "500");
    assert_eq!(
        (hopeless.header("x-retry"), hopeless.header("x-retry-max")),
        ("3", "3")
    );
    let not_retried = &by_id["not-retried"];
    assert_eq!(not_retried.header("x-function-status"), "404");
    assert_eq!(not_retried.header("x-retry"), "");

    let record = |id: &'static str| get_json::<Value>(&http, format!("{url}/system/calls/{id}"));
    let r = record("recovers").await;
    assert_eq!(
        (r["state"].as_str(), r["attempts"].as_u64()),
        (Some("succeeded"), Some(3))
    );
    let r = record("hopeless").await;
    assert_eq!(
        (r["state"].as_str(), r["attempts"].as_u64()),
        (Some("failed"), Some(4))
    );
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .starts_with("gave up after 4 attempts"),
        "{r}"
    );
    let r = record("not-retried").await;
    assert_eq!(
        (r["state"].as_str(), r["attempts"].as_u64()),
        (Some("failed"), Some(1))
    );

    // Re-driving: the failed call runs again from its kept request and calls back again.
    let retry = |id: &'static str| http.post(format!("{url}/system/calls/{id}/retry")).send();
    assert_eq!(retry("fixed-later").await.unwrap().status(), 202);
    assert_eq!(
        retry("recovers").await.unwrap().status(),
        409,
        "a succeeded call re-driven"
    );
    assert_eq!(retry("never-was").await.unwrap().status(), 404);
    eventually("the re-driven call's callback", || async {
        (receiver.count() >= 5).then_some(())
    })
    .await;
    let last = receiver.received().pop().unwrap();
    assert_eq!(last.header("x-call-id"), "fixed-later");
    assert_eq!(last.header("x-function-status"), "200");
    assert_eq!(last.body, "call 5 for 'd' succeeds\n");
    let r = record("fixed-later").await;
    assert_eq!(
        (r["state"].as_str(), r["attempts"].as_u64()),
        (Some("succeeded"), Some(1))
    );

    // Bad retry annotations are refused at deploy.
    let mut bad = sample("badretry", "cat", false, &[]);
    bad["annotations"]["com.openfaas.retry.attempts"] = "lots".into();
    let r = http
        .post(format!("{url}/system/functions"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

on_both_backends!(a_queued_call_can_be_cancelled_and_never_runs);
async fn a_queued_call_can_be_cancelled_and_never_runs(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    // One call at a time, so the second waits in the queue behind the first.
    let sluice = backend.up(&dir.path().join("data"), &["--worker-concurrency", "1"]);
    let url = &sluice.url;
    let http = crate::harness::http();
    let receiver = Receiver::start().await;
    deploy(
        &http,
        url,
        &sample("sleep", "python3 -u sleep.py", true, &[]),
    )
    .await;
    for id in ["first", "second"] {
        let r = submit_async(
            &http,
            format!("{url}/async-function/sleep?seconds=1"),
            &receiver,
            id,
        )
        .await;
        assert_eq!(r.status(), 202);
    }
    eventually("the first call to run", || async {
        let r: Value = try_get_json(&http, format!("{url}/system/calls/first")).await?;
        (r["state"] == "running").then_some(())
    })
    .await;
    let r = http
        .delete(format!("{url}/system/calls/first"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409, "a running call was cancelled");
    for _ in 0..2 {
        let r = http
            .delete(format!("{url}/system/calls/second"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let record: Value = r.json().await.unwrap();
        assert_eq!(record["state"], "cancelled");
    }
    let r = http
        .delete(format!("{url}/system/calls/unknown"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    eventually("the first call's callback", || async {
        (receiver.count() == 1).then_some(())
    })
    .await;
    // The worker takes the cancelled call next and drops it: wait until the queue is empty by
    // sending a third call and seeing it through.
    let r = submit_async(
        &http,
        format!("{url}/async-function/sleep?seconds=0"),
        &receiver,
        "third",
    )
    .await;
    assert_eq!(r.status(), 202);
    eventually("the third call's callback", || async {
        (receiver.count() == 2).then_some(())
    })
    .await;
    let ids: Vec<String> = receiver
        .received()
        .iter()
        .map(|c| c.header("x-call-id").to_owned())
        .collect();
    assert_eq!(ids, ["first", "third"]);
    let second: Value = get_json(&http, format!("{url}/system/calls/second")).await;
    assert_eq!(
        (second["state"].as_str(), second["attempts"].as_u64()),
        (Some("cancelled"), Some(0))
    );
}

on_both_backends!(calls_held_for_their_functions_cap_count_one_attempt_each);
/// A function at its cap in the worker: its other calls are taken off the queue, held for a
/// moment, and put back, again and again while its running call lasts. Each still runs once,
/// and is recorded as one attempt (on the embedded queue, whose claims start calls, the start
/// of a call held back is undone).
async fn calls_held_for_their_functions_cap_count_one_attempt_each(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    // Room for four calls, one per function: the waiting calls keep being taken and held.
    let sluice = backend.up(
        &dir.path().join("data"),
        &["--worker-concurrency", "4", "--function-concurrency", "1"],
    );
    let url = &sluice.url;
    let http = crate::harness::http();
    let receiver = Receiver::start().await;
    deploy(
        &http,
        url,
        &sample("sleep", "python3 -u sleep.py", true, &[]),
    )
    .await;
    let ids = ["held-0", "held-1", "held-2"];
    for id in ids {
        // Each runs for two seconds, four times a hold: the others are put back meanwhile.
        let target = format!("{url}/async-function/sleep?seconds=2");
        let r = submit_async(&http, target, &receiver, id).await;
        assert_eq!(r.status(), 202);
    }
    eventually("every callback", || async {
        (receiver.count() == ids.len()).then_some(())
    })
    .await;
    for id in ids {
        let record: Value = get_json(&http, format!("{url}/system/calls/{id}")).await;
        assert_eq!(
            (record["state"].as_str(), record["attempts"].as_u64()),
            (Some("succeeded"), Some(1)),
            "{id}: {record}"
        );
    }
}

on_both_backends!(callbacks_wait_for_a_receiver_that_is_down_without_running_the_function_again);
async fn callbacks_wait_for_a_receiver_that_is_down_without_running_the_function_again(
    backend: Backend,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut sluice = backend.up(&data, &[]);
    let url = &sluice.url.clone();
    let http = crate::harness::http();
    let receiver = Receiver::start().await;
    deploy(
        &http,
        url,
        &sample("flaky", "python3 -u flaky.py", true, &[]),
    )
    .await;
    receiver.refuse();
    for i in 0..3 {
        let r = http
            .post(format!("{url}/async-function/flaky?key=k{i}"))
            .header("X-Callback-Url", &receiver.url)
            .header("X-Call-Id", format!("patient-{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    // Every call has run and been refused its callback at least once.
    eventually("the callbacks to be refused", || async {
        for i in 0..3 {
            let r: Value = try_get_json(&http, format!("{url}/system/calls/patient-{i}")).await?;
            (r["callback"]["delivered"] == false && r["callback"]["attempts"].as_u64()? >= 1)
                .then_some(())?;
        }
        Some(())
    })
    .await;
    // Sluice dies with the callbacks still owed; the next start owes them still, and does not
    // run the functions again for them (attempts stay at 1).
    sluice.kill();
    let sluice = backend.up(&data, &[]);
    let url = &sluice.url;
    assert!(receiver.accept() >= 3);
    eventually("every callback", || async {
        (receiver.count() == 3).then_some(())
    })
    .await;
    for cb in receiver.received() {
        let key = cb.header("x-call-id").replace("patient-", "k");
        assert_eq!(cb.body, format!("call 1 for '{key}' succeeds\n"));
    }
    for i in 0..3 {
        // The record is written just after the receiver answers.
        let r: Value = eventually("the callback to be recorded", || async {
            let r: Value = try_get_json(&http, format!("{url}/system/calls/patient-{i}")).await?;
            (r["callback"]["delivered"] == true).then_some(r)
        })
        .await;
        assert_eq!(r["attempts"], 1, "the function ran again: {r}");
        assert!(r["callback"]["attempts"].as_u64().unwrap() >= 2, "{r}");
    }
}

/// Call records are not kept for ever: a finished call is deleted after `--call-retention`,
/// with its kept result.
#[tokio::test]
async fn finished_calls_are_deleted_after_their_retention() {
    let (_dir, sluice, http) = crate::harness::up_with_echo(&["--call-retention", "2s"]).await;
    let url = &sluice.url;
    let receiver = crate::harness::Receiver::start().await;
    crate::harness::called_back(
        &http,
        format!("{url}/async-function/echo"),
        &receiver,
        "short-lived",
    )
    .await;
    let record: serde_json::Value =
        crate::harness::get_json(&http, format!("{url}/system/calls/short-lived")).await;
    assert_eq!(record["state"], "succeeded", "{record}");
    crate::harness::eventually("the call to be deleted", || async {
        let r = http
            .get(format!("{url}/system/calls/short-lived"))
            .send()
            .await
            .ok()?;
        (r.status() == 404).then_some(())
    })
    .await;
    let r = http
        .get(format!("{url}/system/calls/short-lived/result"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

on_both_backends!(clients_cut_off_mid_submit_leave_no_call_stuck_queued);
/// Clients that hang up mid-submission (before, while and after the call is stored) leave no
/// record behind that nothing will run: every call recorded as queued is on the queue, and runs.
async fn clients_cut_off_mid_submit_leave_no_call_stuck_queued(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let sluice = backend.up(&dir.path().join("data"), &[]);
    let url = sluice.url.clone();
    let http = crate::harness::http();
    deploy(
        &http,
        &url,
        &sample("echo", "python3 -u echo.py", true, &[]),
    )
    .await;

    let impatient = reqwest::Client::new();
    let outcomes: Vec<bool> = futures_util::stream::iter(0..400u64)
        .map(|i| {
            let (impatient, url) = (impatient.clone(), url.clone());
            async move {
                impatient
                    .post(format!("{url}/async-function/echo"))
                    .header("X-Call-Id", format!("cut-{i}"))
                    .body(vec![b'x'; 64 * 1024])
                    // Cut off somewhere between sending and the answer.
                    .timeout(std::time::Duration::from_millis(1 + i * 7 % 25))
                    .send()
                    .await
                    .is_ok()
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let cut = outcomes.iter().filter(|ok| !**ok).count();
    assert!(cut > 0, "no client was cut off: the test tested nothing");

    // Whatever was recorded runs to its end: nothing stays queued (or running) for ever.
    eventually("no call left queued or running", || async {
        let mut open = 0;
        for status in ["queued", "running"] {
            let page: Value = try_get_json(
                &http,
                format!("{url}/system/calls?status={status}&limit=1000"),
            )
            .await?;
            open += page["calls"].as_array()?.len();
        }
        (open == 0).then_some(())
    })
    .await;
}
