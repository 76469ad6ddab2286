//! OpenFaaS's wire details, as `curl` and faas-cli meet them over plain HTTP: `fprocess` from
//! the environment, `name.namespace` split at the last dot, the status's `faas_function` label,
//! `/system/info`'s build facts, 404 for names no function can have, the sync path's
//! `X-Call-Id` / `X-Start-Time` / `X-Duration-Seconds`, and the classic watchdog's log lines.

use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::harness::{Sluice, deploy, get_json, sample};

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", r.headers()))
        .to_str()
        .unwrap()
}

/// A JSON error in our format, with its marker: `(status, code, message)`.
async fn error_of(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let marker = r.headers().get("x-sluice-error").cloned();
    let body: Value = r.json().await.unwrap();
    let code = body["code"].as_str().unwrap().to_owned();
    assert_eq!(marker.unwrap(), code.as_str());
    (status, code, body["message"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn fprocess_in_the_environment_is_the_command_when_envprocess_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    // As a client that knows only the watchdog's variable sends it: no envProcess, or an
    // empty one.
    for (name, body) in [
        (
            "wc",
            r#"{"service":"wc","image":"functions/alpine:latest","envVars":{"fprocess":"wc -c"}}"#,
        ),
        (
            "wc2",
            r#"{"service":"wc2","image":"x","envProcess":"","envVars":{"fprocess":"wc -c"}}"#,
        ),
    ] {
        let r = http
            .post(format!("{url}/system/functions"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{name}: {}", r.text().await.unwrap());
        let r = http
            .post(format!("{url}/function/{name}"))
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        assert_eq!(r.text().await.unwrap().trim(), "5", "{name}");
    }
    // envProcess, when given, is the command (as faas-netes sets fprocess from it).
    let r = http
        .post(format!("{url}/system/functions"))
        .json(&json!({"service": "both", "envProcess": "cat", "envVars": {"fprocess": "wc -c"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let r = http
        .post(format!("{url}/function/both"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello");
    // Neither: refused, naming both places a command may be.
    let r = http
        .post(format!("{url}/system/functions"))
        .json(&json!({"service": "none", "envVars": {"fprocess": "  "}}))
        .send()
        .await
        .unwrap();
    let (status, _, message) = error_of(r).await;
    assert_eq!(status, 400);
    assert!(message.contains("envVars.fprocess"), "{message}");

    // faas-cli's stack.yml: `environment: {fprocess: ...}` and no `fprocess` of its own.
    let stack = dir.path().join("stack.yml");
    std::fs::write(
        &stack,
        "version: 1.0\nfunctions:\n  from-env:\n    image: functions/alpine:latest\n    \
         environment:\n      fprocess: wc -c\n",
    )
    .unwrap();
    let out = crate::harness::cli(
        dir.path(),
        Some(url),
        &["deploy", "-f", stack.to_str().unwrap()],
        "",
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && printed.contains("Deployed from-env."),
        "{printed}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = http
        .post(format!("{url}/function/from-env"))
        .body("hello!")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap().trim(), "6");
    let described: Value = get_json(&http, format!("{url}/system/function/from-env")).await;
    assert!(described.get("envProcess").is_none(), "{described}");
    assert_eq!(described["envVars"]["fprocess"], "wc -c");
}

#[tokio::test]
async fn qualified_names_split_at_the_last_dot() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(&http, url, &sample("cat", "cat", false, &[])).await;
    // `cat.openfaas-fn` is the function; in `cat.x.openfaas-fn` the namespace is the last
    // label, so it is the name `cat.x` that is wrong (the first dot would have blamed the
    // namespace `x.openfaas-fn`).
    let found: Value = get_json(&http, format!("{url}/system/function/cat.openfaas-fn")).await;
    assert_eq!(found["name"], "cat");
    let r = http
        .get(format!("{url}/system/function/cat.x.openfaas-fn"))
        .send()
        .await
        .unwrap();
    let (status, code, message) = error_of(r).await;
    assert_eq!((status, code.as_str()), (400, "invalid_name"));
    assert!(message.contains(r#"function name "cat.x""#), "{message}");
    let r = http
        .post(format!("{url}/function/cat.x.openfaas-fn"))
        .body("x")
        .send()
        .await
        .unwrap();
    let (status, _, message) = error_of(r).await;
    assert_eq!(status, 404);
    assert!(message.contains(r#"function name "cat.x""#), "{message}");
}

#[tokio::test]
async fn function_status_carries_faas_function_and_openfaas_fields() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    let before = SystemTime::now();
    deploy(&http, url, &sample("cat", "cat", false, &[("team", "a")])).await;
    let mut bare = sample("bare", "cat", false, &[]);
    bare.as_object_mut().unwrap().remove("labels");
    bare.as_object_mut().unwrap().remove("annotations");
    deploy(&http, url, &bare).await;

    crate::harness::eventually("cat's replica ready", || async {
        let f: Value =
            crate::harness::try_get_json(&http, format!("{url}/system/function/cat")).await?;
        (f["availableReplicas"] == 1).then_some(())
    })
    .await;
    let list: Vec<Value> = get_json(&http, format!("{url}/system/functions")).await;
    let described: Value = get_json(&http, format!("{url}/system/function/cat")).await;
    let listed = list.iter().find(|f| f["name"] == "cat").unwrap();
    for f in [listed, &described] {
        // Selecting by `faas_function=cat`, as OpenFaaS tools do, finds it.
        assert_eq!(f["labels"]["faas_function"], "cat", "{f}");
        assert_eq!(f["labels"]["team"], "a", "{f}");
        assert_eq!(f["replicas"], 1, "{f}");
        assert_eq!(f["availableReplicas"], 1, "{f}");
        assert_eq!(f["namespace"], "openfaas-fn");
        assert!(f["annotations"]["com.sluice.workdir"].is_string(), "{f}");
        let created = humantime::parse_rfc3339(f["createdAt"].as_str().unwrap()).unwrap();
        assert!(created + Duration::from_secs(1) >= before, "{f}");
        assert!(f["invocationCount"].is_number(), "{f}");
        // No usage is measured, so none is claimed (faas-provider leaves it out too).
        assert!(f.get("usage").is_none(), "{f}");
    }
    // A function deployed with no labels at all still carries the selector.
    let bare = list.iter().find(|f| f["name"] == "bare").unwrap();
    assert_eq!(bare["labels"], json!({"faas_function": "bare"}));

    // What was described can be sent back as it is (the label is Sluice's, not stored as the
    // function's own) ...
    let r = http
        .put(format!("{url}/system/functions"))
        .json(&json!({
            "service": "cat",
            "envProcess": "wc -c",
            "labels": described["labels"],
            "annotations": described["annotations"],
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let updated: Value = get_json(&http, format!("{url}/system/function/cat")).await;
    assert_eq!(
        updated["labels"],
        json!({"faas_function": "cat", "team": "a"})
    );
    assert_eq!(updated["envProcess"], "wc -c");
    // ... but it cannot be made to say another name.
    let r = http
        .put(format!("{url}/system/functions"))
        .json(&json!({"service": "cat", "envProcess": "cat", "labels": {"faas_function": "dog"}}))
        .send()
        .await
        .unwrap();
    let (status, _, message) = error_of(r).await;
    assert_eq!(status, 400);
    assert!(message.contains("faas_function"), "{message}");
}

/// `git <args>` in this checkout, or `None` outside one.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(String::from_utf8(out.stdout).ok()?.trim().to_owned())
}

#[tokio::test]
async fn system_info_reports_the_build_in_openfaas_gateway_info_shape() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let http = crate::harness::http();
    let info: Value = get_json(&http, format!("{}/system/info", sluice.url)).await;
    // The binary was built from this checkout by the same cargo run as this test.
    let sha = git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let version = &info["version"];
    assert_eq!(version["sha"], sha.as_str(), "{info}");
    assert_eq!(version["release"], env!("CARGO_PKG_VERSION"), "{info}");
    if sha != "unknown" {
        let subject = git(&["log", "-1", "--format=%s"]).unwrap();
        assert_eq!(version["commit_message"], subject.as_str(), "{info}");
    }
    let date = version["build_date"].as_str().unwrap();
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| git(&["log", "-1", "--format=%ct"]));
    match epoch.and_then(|e| e.parse::<u64>().ok()) {
        Some(secs) => assert_eq!(
            humantime::parse_rfc3339(date).unwrap(),
            UNIX_EPOCH + Duration::from_secs(secs),
            "{info}"
        ),
        None => assert_eq!(date, "unknown"),
    }
    let provider = &info["provider"];
    assert_eq!(provider["provider"], "sluice");
    assert_eq!(provider["orchestration"], "process");
    assert_eq!(provider["version"]["sha"], sha.as_str());
    assert_eq!(provider["version"]["release"], env!("CARGO_PKG_VERSION"));
    let arch = info["arch"].as_str().unwrap();
    if cfg!(target_arch = "x86_64") {
        assert_eq!(arch, "amd64");
    } else {
        assert!(!arch.is_empty());
    }
}

#[tokio::test]
async fn names_no_function_can_have_are_404_on_function_routes() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(&http, url, &sample("cat", "cat", false, &[])).await;
    for route in ["function", "async-function"] {
        for name in [".x", ".cat", "Cat", "cat.", "-cat", "c_t"] {
            for target in [
                format!("{url}/{route}/{name}"),
                format!("{url}/{route}/{name}/a"),
            ] {
                let r = http.post(&target).body("x").send().await.unwrap();
                let (status, code, message) = error_of(r).await;
                assert_eq!(
                    (status, code.as_str()),
                    (404, "function_not_found"),
                    "{target}: {message}"
                );
            }
        }
        // No name at all.
        let r = http
            .post(format!("{url}/{route}/"))
            .body("x")
            .send()
            .await
            .unwrap();
        let (status, _, _) = error_of(r).await;
        assert_eq!(status, 404, "/{route}/");
    }
    // The function itself still answers.
    let r = http
        .post(format!("{url}/function/cat"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "x");
}

#[tokio::test]
async fn sync_answers_carry_call_id_start_time_and_duration() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
    deploy(
        &http,
        url,
        &sample("sleep", "python3 -u sleep.py", true, &[]),
    )
    .await;
    deploy(&http, url, &sample("cat", "cat", false, &[])).await;

    let mut ids = Vec::new();
    for _ in 0..2 {
        let before = now_nanos();
        let r = http
            .post(format!("{url}/function/echo"))
            .body("hi")
            .send()
            .await
            .unwrap();
        let after = now_nanos();
        assert_eq!(r.status(), 200);
        let id = header(&r, "x-call-id").to_owned();
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4);
        let start: u128 = header(&r, "x-start-time").parse().unwrap();
        assert!(
            (before..=after).contains(&start),
            "{before} {start} {after}"
        );
        let duration = header(&r, "x-duration-seconds").to_owned();
        assert_eq!(duration.split_once('.').unwrap().1.len(), 6, "{duration}");
        let seconds: f64 = duration.parse().unwrap();
        assert!(
            seconds > 0.0 && seconds <= (after - before) as f64 / 1e9,
            "{duration}"
        );
        // The function was sent the same id and start.
        let seen: Value = serde_json::from_str(header(&r, "x-echo-headers")).unwrap();
        assert_eq!(seen["x-call-id"], id.as_str());
        assert_eq!(seen["x-start-time"], start.to_string());
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "a fresh id per call");

    // The caller's own id, when it is a valid one, is the call's.
    let r = http
        .post(format!("{url}/function/echo"))
        .header("X-Call-Id", "order-42:retry.1")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-call-id"), "order-42:retry.1");
    let seen: Value = serde_json::from_str(header(&r, "x-echo-headers")).unwrap();
    assert_eq!(seen["x-call-id"], "order-42:retry.1");
    // One that is not (a space, a slash) is replaced, for the function too.
    let r = http
        .post(format!("{url}/function/echo"))
        .header("X-Call-Id", "not/a valid id")
        .send()
        .await
        .unwrap();
    let id = header(&r, "x-call-id").to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let seen: Value = serde_json::from_str(header(&r, "x-echo-headers")).unwrap();
    assert_eq!(seen["x-call-id"], id.as_str());

    // The duration is the time to the answer's head: a function that takes 0.4 s to answer.
    let r = http
        .get(format!("{url}/function/sleep?seconds=0.4"))
        .send()
        .await
        .unwrap();
    let seconds: f64 = header(&r, "x-duration-seconds").parse().unwrap();
    assert!((0.4..30.0).contains(&seconds), "{seconds}");
    // A classic function's answer carries one duration, the gateway's.
    let r = http
        .post(format!("{url}/function/cat"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers().get_all("x-duration-seconds").iter().count(), 1);
    // The gateway's own answers name the call too.
    let r = http
        .post(format!("{url}/function/ghost"))
        .header("X-Call-Id", "lost-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(header(&r, "x-call-id"), "lost-1");
    assert!(header(&r, "x-start-time").parse::<u128>().is_ok());
}

#[tokio::test]
async fn classic_runs_are_logged_in_the_classic_watchdogs_words() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = &sluice.url;
    let http = crate::harness::http();
    deploy(&http, url, &sample("cat", "cat", false, &[])).await;
    deploy(
        &http,
        url,
        &sample("fails", "sh -c 'echo broken >&2; exit 3'", false, &[]),
    )
    .await;
    for body in ["hello", "hello, world"] {
        let r = http
            .post(format!("{url}/function/cat"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.text().await.unwrap(), body);
    }
    let r = http
        .post(format!("{url}/function/fails"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 500);

    let texts = |name: &str| {
        let http = http.clone();
        let target = format!("{url}/system/logs?name={name}&tail=100");
        async move {
            let text = http.get(target).send().await.unwrap().text().await.unwrap();
            text.lines()
                .map(|l| {
                    serde_json::from_str::<Value>(l).unwrap()["text"]
                        .as_str()
                        .unwrap()
                        .to_owned()
                })
                .collect::<Vec<String>>()
        }
    };
    // The lines are written before the answer is sent: they are there now.
    let lines = texts("cat").await;
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (pair, bytes) in lines.chunks(2).zip([5, 12]) {
        assert_eq!(pair[0], "Forking fprocess.");
        let prefix = format!("Wrote {bytes} Bytes - Duration: ");
        let seconds = pair[1]
            .strip_prefix(&prefix)
            .and_then(|s| s.strip_suffix('s'))
            .unwrap_or_else(|| panic!("{:?} is not {prefix:?}S.SSSSSSs", pair[1]));
        assert_eq!(seconds.split_once('.').unwrap().1.len(), 6, "{seconds}");
        assert!(seconds.parse::<f64>().unwrap() > 0.0);
    }
    // A run that fails forks as every run does, and writes no bytes.
    let lines = texts("fails").await;
    assert_eq!(lines[0], "Forking fprocess.", "{lines:?}");
    assert!(lines.iter().any(|l| l == "broken"), "{lines:?}");
    assert!(!lines.iter().any(|l| l.starts_with("Wrote")), "{lines:?}");
}
