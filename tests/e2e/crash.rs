//! Functions that do not run: a server that exits at once is reported crash-looping (deploy,
//! describe, list), its calls fail at once with 503 and its async calls end failed after their
//! retries; one that comes up after a few failed starts recovers; a program that is not there
//! is refused at deploy. And `sluice deploy`'s wait: default stack file, progress, `--no-wait`.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{
    Backend, Sluice, deploy, eventually, functions_dir, get_json, http, sample, try_get_json,
};

/// Runs `sluice <args>` in `dir` against `gateway` as the admin (credentials from the
/// environment, none stored).
fn sluice_in(dir: &Path, gateway: &str, args: &[&str]) -> (Output, Duration) {
    let started = Instant::now();
    let out = crate::harness::cli(dir, Some(gateway), args, "");
    (out, started.elapsed())
}

/// Its stdout and stderr together.
fn text(out: &Output) -> String {
    crate::harness::printed(out)
}

/// A server that writes two lines and exits with status 3 at once, retried quickly when called
/// asynchronously. (Both lines to stderr: lines from stdout and stderr are read apart, so
/// their order between the two is not kept.)
const CRASH_STACK: &str = r#"version: 1.0
provider:
  name: openfaas
functions:
  crash:
    image: sluice/crash:latest
    handler: ./
    fprocess: "sh -c 'echo starting >&2; echo boom >&2; exit 3'"
    environment:
      mode: http
    annotations:
      com.openfaas.retry.attempts: "2"
      com.openfaas.retry.min_wait: 100ms
      com.openfaas.retry.max_wait: 200ms
"#;

on_both_backends!(a_server_that_exits_at_once_fails_its_deploy_and_its_calls_at_once);
async fn a_server_that_exits_at_once_fails_its_deploy_and_its_calls_at_once(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let sluice = backend.up(&dir.path().join("data"), &[]);
    let url = sluice.url.as_str();
    let http = http();
    let project = dir.path().join("project");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(project.join("stack.yml"), CRASH_STACK).unwrap();

    // `sluice deploy` with no -f reads ./stack.yml, and fails, naming how the server exited
    // and what it said last, well within 10 s.
    let (out, took) = sluice_in(&project, url, &["deploy"]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {said}");
    assert!(said.contains("Deployed crash."), "{said}");
    assert!(said.contains("crash: starting"), "{said}");
    assert!(said.contains("status 3"), "{said}");
    assert!(said.contains("last log line: boom"), "{said}");

    // A call is refused at once with 503, saying why, not held for 30 s.
    let started = Instant::now();
    let r = http
        .post(format!("{url}/function/crash"))
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-sluice-error"], "function_crash_looping");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "function_crash_looping");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("crash-looping") && message.contains("exited with status 3"),
        "{message}"
    );
    assert!(
        !message.contains("boom"),
        "the output is the admin's: {message}"
    );

    // Describe (API and CLI) and list say so, with the exit and the last lines.
    let status: Value = get_json(&http, format!("{url}/system/function/crash")).await;
    assert_eq!(status["availableReplicas"], 0, "{status}");
    assert_eq!(
        status["crashLoop"]["exit"], "exited with status 3",
        "{status}"
    );
    assert!(
        status["crashLoop"]["exits"].as_u64().unwrap() >= 3,
        "{status}"
    );
    let lines = status["crashLoop"]["lastLines"].as_array().unwrap();
    assert!(
        lines.contains(&json!("boom")) && lines.contains(&json!("starting")),
        "{status}"
    );
    let problem = status["problem"].as_str().unwrap();
    assert!(
        problem.starts_with("crash-looping: exited with status 3"),
        "{problem}"
    );
    let (out, _) = sluice_in(&project, url, &["describe", "crash"]);
    let described = text(&out);
    assert!(out.status.success(), "{described}");
    assert!(
        described.contains("Status:             Crash-looping"),
        "{described}"
    );
    assert!(described.contains("exited with status 3"), "{described}");
    assert!(described.contains("  boom"), "{described}");
    let (out, _) = sluice_in(&project, url, &["list"]);
    let listed = text(&out);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("crash ") && l.contains("Crash-looping")),
        "{listed}"
    );
    assert!(
        listed.contains("crash exited with status 3; last log line: boom"),
        "{listed}"
    );

    // An async call fails its attempts with a retryable 503, and ends failed after its
    // retries (kept for a re-drive).
    let r = http
        .post(format!("{url}/async-function/crash"))
        .header("X-Call-Id", "crash-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let record = eventually("the async call to fail for good", || async {
        let r: Value = try_get_json(&http, format!("{url}/system/calls/crash-1")).await?;
        (r["state"] == "failed").then_some(r)
    })
    .await;
    assert_eq!(record["attempts"], 2, "retried once: {record}");
    assert_eq!(record["statusCode"], 503, "{record}");
    let error = record["error"].as_str().unwrap();
    assert!(error.contains("function_crash_looping"), "{error}");
    let redrive = http
        .post(format!("{url}/system/calls/crash-1/retry"))
        .send()
        .await
        .unwrap();
    assert!(
        redrive.status().is_success(),
        "dead-lettered: its request is kept"
    );

    // A call held while a new function's replica starts is let go once it is seen
    // crash-looping, long before the 30 s hold.
    deploy(
        &http,
        url,
        &sample("crash2", "sh -c 'echo bang >&2; kill -9 $$'", true, &[]),
    )
    .await;
    let started = Instant::now();
    let r = http
        .post(format!("{url}/function/crash2"))
        .send()
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(r.status(), 503);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["code"], "function_crash_looping");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("killed by signal 9"),
        "{body}"
    );
}

#[tokio::test]
async fn a_server_that_fails_its_first_starts_recovers_and_serves() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = sluice.url.as_str();
    let http = http();
    let count = dir.path().join("starts");
    // Fails three starts (crash-looping from the third), then serves.
    let command = format!(
        "sh -c 'n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > {count}; \
         if [ $n -lt 3 ]; then echo \"not yet $n\" >&2; exit 1; fi; exec python3 -u echo.py'",
        count = count.display()
    );
    deploy(&http, url, &sample("late", &command, true, &[])).await;
    let status = eventually("late reported crash-looping", || async {
        let s: Value = try_get_json(&http, format!("{url}/system/function/late")).await?;
        s.get("crashLoop").is_some().then_some(s)
    })
    .await;
    assert_eq!(
        status["crashLoop"]["exit"], "exited with status 1",
        "{status}"
    );
    assert_eq!(status["crashLoop"]["lastLines"][0], "not yet 2", "{status}");
    // Restarts went on; once a replica is ready, the crash loop is over and calls are served.
    let status = eventually("late ready", || async {
        let s: Value = try_get_json(&http, format!("{url}/system/function/late")).await?;
        (s["availableReplicas"] == 1).then_some(s)
    })
    .await;
    assert!(status.get("crashLoop").is_none(), "{status}");
    assert!(status.get("problem").is_none(), "{status}");
    let r = http
        .post(format!("{url}/function/late"))
        .body("back")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "back");
}

#[tokio::test]
async fn a_program_that_is_not_there_is_refused_at_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = sluice.url.as_str();
    let http = http();
    for (command, http_mode, named) in [
        (
            "no-such-program-9f2 --serve",
            true,
            "\"no-such-program-9f2\" was not found",
        ),
        (
            "no-such-program-9f2",
            false,
            "\"no-such-program-9f2\" was not found",
        ),
        // Relative to the function's directory (functions/, where echo.py is).
        (
            "./no-such-server.py",
            true,
            "\"./no-such-server.py\" is not an executable file",
        ),
    ] {
        let r = http
            .post(format!("{url}/system/functions"))
            .json(&sample("missing", command, http_mode, &[]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{command}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["code"], "bad_request");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains(named), "{message}");
    }
    // An interpreter on the PATH with a script in the function's directory is fine.
    assert!(functions_dir().join("echo.py").is_file());
    deploy(&http, url, &sample("echo", "python3 -u echo.py", true, &[])).await;
}

#[tokio::test]
async fn sluice_deploy_waits_for_readiness_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), &[]);
    let url = sluice.url.as_str();

    // No stack file here: both names are named.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (out, _) = sluice_in(&empty, url, &["deploy"]);
    let said = text(&out);
    assert!(!out.status.success());
    assert!(
        said.contains("./stack.yml") && said.contains("./stack.yaml"),
        "{said}"
    );

    // A healthy stack in ./stack.yaml: the CLI says each is ready and succeeds. (A min of 0
    // is read as 1, as OpenFaaS reads it: a function starts with a replica.)
    let healthy = dir.path().join("healthy");
    std::fs::create_dir(&healthy).unwrap();
    let functions = functions_dir();
    std::fs::write(
        healthy.join("stack.yaml"),
        format!(
            r#"version: 1.0
functions:
  echo:
    handler: {dir}
    fprocess: python3 -u echo.py
    environment:
      mode: http
  hash:
    handler: {dir}
    fprocess: sha512sum
    labels:
      com.openfaas.scale.min: "0"
"#,
            dir = functions.display()
        ),
    )
    .unwrap();
    let (out, _) = sluice_in(&healthy, url, &["deploy", "--timeout", "50s"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("echo: ready"), "{said}");
    assert!(said.contains("hash: ready"), "{said}");
    let status: Value = get_json(&http(), format!("{url}/system/function/echo")).await;
    assert!(
        status["availableReplicas"].as_u64().unwrap() >= 1,
        "{status}"
    );

    // --no-wait: back as soon as the gateway has the deployment, crash loop or not.
    let crashing = dir.path().join("crashing");
    std::fs::create_dir(&crashing).unwrap();
    std::fs::write(crashing.join("stack.yml"), CRASH_STACK).unwrap();
    let (out, took) = sluice_in(&crashing, url, &["deploy", "--no-wait"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Deployed crash."), "{said}");
    assert!(!said.contains("starting"), "{said}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}
