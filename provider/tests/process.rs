//! The process provider against real child processes and real sockets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt;
use std::sync::Arc;

use sluice_activator::{Activator, ActivatorConfig, ActivatorError};
use sluice_core::{
    FunctionDeployment, FunctionRef, FunctionSpec, Orchestrator, ProviderError, Timestamp,
};
use sluice_provider::{ProcessConfig, ProcessProvider, WORKDIR_ANNOTATION};

const WAIT: Duration = Duration::from_secs(20);

fn spec(name: &str, command: &str, env: &[(&str, &str)], replicas: u32) -> FunctionSpec {
    let functions_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../functions");
    let functions_dir = functions_dir.canonicalize().unwrap();
    FunctionSpec::new(
        FunctionRef::parse(name, None).unwrap(),
        FunctionDeployment {
            service: name.into(),
            image: "local".into(),
            env_process: Some(command.into()),
            env_vars: env
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            annotations: Some(BTreeMap::from([(
                WORKDIR_ANNOTATION.to_owned(),
                functions_dir.display().to_string(),
            )])),
            ..Default::default()
        },
        replicas,
        Timestamp::now(),
    )
    .unwrap()
}

/// Picks replicas the way the gateway does, holding a request at most `hold`.
fn activator(p: &ProcessProvider, hold: Duration) -> Activator {
    Activator::new(
        Arc::new(p.clone()),
        Arc::new(sluice_testkit::ManualAutoscaler),
        ActivatorConfig {
            buffer: 1000,
            hold_timeout: hold,
        },
    )
}

fn provider() -> ProcessProvider {
    ProcessProvider::new(ProcessConfig {
        stop_grace: Duration::from_secs(2),
        restart_backoff_min: Duration::from_millis(50),
        restart_backoff_max: Duration::from_millis(400),
        ..Default::default()
    })
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn classic_function_hashes_stdin_and_sees_http_env() {
    let p = provider();
    let a = activator(&p, WAIT);
    let http = reqwest::Client::new();
    let sha = spec("sha", "sha512sum", &[], 1);
    p.apply(&sha).await.unwrap();
    let base = a.endpoint(&sha.function, None).await.unwrap().url;
    let resp = http
        .post(format!("{base}/"))
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let expected = std::process::Command::new("sh")
        .args(["-c", "printf hello | sha512sum"])
        .output()
        .unwrap()
        .stdout;
    assert_eq!(resp.bytes().await.unwrap(), expected);

    let env = spec("env", "env", &[("greeting", "hi")], 1);
    p.apply(&env).await.unwrap();
    let base = a.endpoint(&env.function, None).await.unwrap().url;
    let resp = http
        .put(format!("{base}/a/b?x=1"))
        .header("X-Custom", "yes")
        .header("Method", "DELETE")
        .header("Path", "/forged")
        .header("Query", "forged=1")
        .header("Content-Type", "text/csv")
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/csv");
    let out = resp.text().await.unwrap();
    for line in [
        "Http_Method=PUT",
        "Http_Path=/a/b",
        "Http_Query=x=1",
        "Http_X_Custom=yes",
        "Http_Content_Type=text/csv",
        "Http_ContentLength=3",
        "greeting=hi",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "{line} missing from:\n{out}"
        );
    }
    assert!(
        !out.contains("SLUICE_"),
        "Sluice's own environment leaked:\n{out}"
    );
    p.shutdown().await;
}

#[tokio::test]
async fn classic_failures_and_timeouts() {
    let p = provider();
    let a = activator(&p, WAIT);
    let http = reqwest::Client::new();
    let failing = spec("failing", "sh -c 'echo broken >&2; exit 3'", &[], 1);
    p.apply(&failing).await.unwrap();
    let base = a.endpoint(&failing.function, None).await.unwrap().url;
    let resp = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert!(
        !resp.headers().contains_key("x-sluice-error"),
        "the function's own failure was marked as the platform's"
    );
    let logs: Vec<String> = p
        .logs(&failing.function, 10, false)
        .unwrap()
        .map(|l| l.text)
        .collect()
        .await;
    assert!(
        logs.iter().any(|l| l == "broken"),
        "stderr not in logs: {logs:?}"
    );

    let slow = spec("slow", "sleep 30", &[("exec_timeout", "300ms")], 1);
    p.apply(&slow).await.unwrap();
    let base = a.endpoint(&slow.function, None).await.unwrap().url;
    let started = tokio::time::Instant::now();
    let resp = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
    assert_eq!(resp.headers()["x-sluice-error"], "exec_timeout");
    assert!(started.elapsed() < Duration::from_secs(10));

    // One run at a time: a second concurrent request is refused, not forked.
    let marks = tempfile::tempdir().unwrap();
    let started_mark = marks.path().join("started");
    let single = spec(
        "single",
        &format!("sh -c 'touch {}; sleep 3'", started_mark.display()),
        &[("max_inflight", "1")],
        1,
    );
    p.apply(&single).await.unwrap();
    let base = a.endpoint(&single.function, None).await.unwrap().url;
    let first = tokio::spawn(http.get(format!("{base}/")).send());
    eventually("the first run to start", || async { started_mark.exists() }).await;
    let second = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(second.status(), 429);
    assert_eq!(second.headers()["x-sluice-error"], "concurrency_limit");
    assert_eq!(second.headers()["retry-after"], "1");
    assert_eq!(first.await.unwrap().unwrap().status(), 200);

    let missing = spec("missing", "/no/such/binary", &[], 1);
    p.apply(&missing).await.unwrap();
    let base = a.endpoint(&missing.function, None).await.unwrap().url;
    let resp = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.headers()["x-sluice-error"], "spawn_failed");
    assert!(resp.text().await.unwrap().contains("/no/such/binary"));
    p.shutdown().await;
}

#[tokio::test]
async fn http_mode_serves_after_readiness_scales_and_restarts() {
    let p = provider();
    let a = activator(&p, WAIT);
    let http = reqwest::Client::new();
    let echo = spec("echo", "python3 -u echo.py", &[("mode", "http")], 1);
    p.apply(&echo).await.unwrap();
    let base = a.endpoint(&echo.function, None).await.unwrap().url;
    let resp = http
        .delete(format!("{base}/x/y?q=2"))
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-echo-method"], "DELETE");
    assert_eq!(resp.headers()["x-echo-path"], "/x/y");
    assert_eq!(resp.headers()["x-echo-query"], "q=2");
    assert_eq!(resp.text().await.unwrap(), "payload");

    p.scale(&echo.function, 3).await.unwrap();
    eventually("3 ready replicas", || async {
        p.replicas(&echo.function).unwrap().ready == 3
    })
    .await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        seen.insert(a.endpoint(&echo.function, None).await.unwrap().url);
    }
    assert_eq!(seen.len(), 3, "not balanced across replicas: {seen:?}");
    p.scale(&echo.function, 0).await.unwrap();
    assert!(matches!(
        a.endpoint(&echo.function, None).await,
        Err(ActivatorError::ScaledToZero(_))
    ));

    // A server that dies at once is restarted with backoff, and never reported ready.
    let crashy = spec(
        "crashy",
        "sh -c 'echo boom >&2; exit 3'",
        &[("mode", "http")],
        1,
    );
    p.apply(&crashy).await.unwrap();
    eventually("two restarts", || async {
        let logs: Vec<String> = p
            .logs(&crashy.function, 100, false)
            .unwrap()
            .map(|l| l.text)
            .collect()
            .await;
        logs.iter().filter(|l| *l == "boom").count() >= 3
    })
    .await;
    assert_eq!(p.replicas(&crashy.function).unwrap().ready, 0);
    // Three quick exits in a row: crash-looping, with how it ended and what it said; a request
    // is refused at once rather than held for a replica that will not come.
    eventually("crashy reported crash-looping", || async {
        p.problem(&crashy.function).is_some()
    })
    .await;
    let problem = p.problem(&crashy.function).unwrap();
    assert!(
        problem.starts_with("crash-looping: exited with status 3") && problem.ends_with("boom"),
        "{problem}"
    );
    let started = tokio::time::Instant::now();
    match activator(&p, WAIT).endpoint(&crashy.function, None).await {
        Err(ActivatorError::CrashLooping { crash_loop, .. }) => {
            assert_eq!(crash_loop.exit, "exited with status 3");
            assert_eq!(crash_loop.last_line(), Some("boom"));
            assert!(crash_loop.exits >= 3, "{crash_loop:?}");
        }
        other => panic!("not refused as crash-looping: {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));

    p.remove(&echo.function).await.unwrap();
    assert!(p.replicas(&echo.function).is_none());
    assert!(matches!(
        p.remove(&echo.function).await,
        Err(ProviderError::NotFound(_))
    ));
    p.shutdown().await;
}

#[tokio::test]
async fn a_crash_loop_ends_when_a_replica_becomes_ready() {
    let p = provider();
    let dir = tempfile::tempdir().unwrap();
    let count = dir.path().join("count");
    // Fails its first four starts (a dependency not up yet, say), then serves.
    let command = format!(
        "sh -c 'n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > {count}; \
         if [ $n -lt 4 ]; then echo \"start $n failed\" >&2; exit 1; fi; exec python3 -u echo.py'",
        count = count.display()
    );
    let late = spec("late", &command, &[("mode", "http")], 1);
    p.apply(&late).await.unwrap();
    eventually("late reported crash-looping", || async {
        p.problem(&late.function).is_some()
    })
    .await;
    let problem = p.problem(&late.function).unwrap();
    assert!(problem.contains("exited with status 1"), "{problem}");
    assert!(problem.contains("failed"), "{problem}");
    // Restarts go on meanwhile; once one run is ready, the crash loop is over.
    eventually("late ready", || async {
        p.replicas(&late.function).unwrap().ready == 1
    })
    .await;
    assert_eq!(p.problem(&late.function), None);
    let a = activator(&p, WAIT);
    a.endpoint(&late.function, None).await.unwrap();
    assert_eq!(a.crash_loop(&late.function), None);
    p.shutdown().await;
}

#[tokio::test]
async fn invalid_deployments_are_refused() {
    let p = provider();
    let mut bad = spec("bad", "cat", &[], 1);
    bad.deployment.env_process = None;
    let err = p.validate(&bad).unwrap_err();
    assert!(
        err.to_string()
            .contains("envProcess (or envVars.fprocess) is required"),
        "{err}"
    );
    bad.deployment.env_process = Some("cat".into());
    bad.deployment
        .annotations
        .as_mut()
        .unwrap()
        .insert(WORKDIR_ANNOTATION.into(), "/definitely/not/here".into());
    assert!(p.validate(&bad).is_err());
    // A program that is not there is named (relative paths from the function's directory).
    for (command, named) in [
        (
            "no-such-program --flag",
            "\"no-such-program\" was not found",
        ),
        (
            "./no-such-server.py",
            "\"./no-such-server.py\" is not an executable file",
        ),
    ] {
        let err = p.validate(&spec("bad", command, &[], 1)).unwrap_err();
        assert!(err.to_string().contains(named), "{err}");
    }
    p.validate(&spec("good", "python3 -u echo.py", &[], 1))
        .unwrap();
}

#[tokio::test]
async fn replicas_leaving_rotation_finish_their_requests_first() {
    let p = provider();
    let a = activator(&p, WAIT);
    let http = reqwest::Client::new();
    let echo = spec("echo", "python3 -u echo.py", &[("mode", "http")], 1);
    p.apply(&echo).await.unwrap();
    let busy = a.endpoint(&echo.function, None).await.unwrap();
    let alive = |url: Arc<str>| {
        let http = http.clone();
        async move { http.get(format!("{url}/_/health")).send().await.is_ok() }
    };

    // Scaled to zero while a request is in flight: out of rotation at once, stopped only after.
    p.scale(&echo.function, 0).await.unwrap();
    assert!(matches!(
        a.endpoint(&echo.function, None).await,
        Err(ActivatorError::ScaledToZero(_))
    ));
    assert!(alive(busy.url.clone()).await, "a busy replica was stopped");
    let old = busy.url.clone();
    drop(busy);
    eventually("the drained replica to stop", || {
        let old = old.clone();
        let alive = &alive;
        async move { !alive(old).await }
    })
    .await;

    // A redeploy starts the new replica first; the old one serves until drained.
    p.scale(&echo.function, 1).await.unwrap();
    let busy = a.endpoint(&echo.function, None).await.unwrap();
    let mut changed = echo.clone();
    changed
        .deployment
        .env_vars
        .insert("version".into(), "2".into());
    p.apply(&changed).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    let fresh = loop {
        let e = a.endpoint(&echo.function, None).await.unwrap();
        if e.url != busy.url {
            break e;
        }
        assert!(tokio::time::Instant::now() < deadline, "no new replica");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(alive(fresh.url.clone()).await);
    assert!(
        alive(busy.url.clone()).await,
        "the old replica was stopped under a request"
    );
    eventually("old replica out of rotation", || async {
        p.replicas(&echo.function).unwrap().desired == 1
    })
    .await;
    let old = busy.url.clone();
    drop(busy);
    eventually("the old replica to stop", || {
        let old = old.clone();
        let alive = &alive;
        async move { !alive(old).await }
    })
    .await;
    p.shutdown().await;
}

#[tokio::test]
async fn scaling_during_a_redeploy_counts_only_the_new_replicas() {
    let p = provider();
    let a = activator(&p, WAIT);
    let echo = spec("echo", "python3 -u echo.py", &[("mode", "http")], 2);
    p.apply(&echo).await.unwrap();
    eventually("2 ready", || async {
        p.replicas(&echo.function).unwrap().ready == 2
    })
    .await;
    let mut changed = echo.clone();
    changed
        .deployment
        .env_vars
        .insert("version".into(), "2".into());
    p.apply(&changed).await.unwrap();
    p.scale(&echo.function, 3).await.unwrap();
    assert_eq!(p.replicas(&echo.function).unwrap().desired, 3);
    eventually("3 new replicas ready, old ones gone", || async {
        if p.replicas(&echo.function).unwrap().ready != 3 {
            return false;
        }
        let mut seen = std::collections::HashSet::new();
        for _ in 0..12 {
            seen.insert(a.endpoint(&echo.function, None).await.unwrap().url);
        }
        seen.len() == 3
    })
    .await;
    p.shutdown().await;
}
