//! Acceptance 4: a SIGKILL of `sluice up` loses nothing. Every accepted call reaches a terminal
//! state and calls back at least once after a restart on the same data dir, and every function
//! comes back with its replica count.

use std::collections::HashSet;

use futures_util::StreamExt;
use serde_json::Value;

use crate::harness::{
    Receiver, Sluice, deploy, eventually, get_json, sample, scale, submit_async, try_get_json,
};

const CALLS: usize = 200;

#[tokio::test]
async fn calls_and_functions_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut sluice = Sluice::start(&data, &["--worker-concurrency", "8"]);
    let url = sluice.url.clone();
    let http = crate::harness::http();
    let receiver = Receiver::start().await;
    deploy(
        &http,
        &url,
        &sample(
            "sleep",
            "python3 -u sleep.py",
            true,
            &[("com.openfaas.scale.min", "2")],
        ),
    )
    .await;

    let ids: Vec<String> = futures_util::stream::iter(0..CALLS)
        .map(|_| {
            let (http, url, cb) = (http.clone(), url.clone(), receiver.url.clone());
            async move {
                let r = http
                    .post(format!("{url}/async-function/sleep?seconds=0.2"))
                    .header("X-Callback-Url", cb)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                r.headers()["x-call-id"].to_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    // Kill it while most calls are still queued or running.
    eventually("the first callbacks", || async {
        (receiver.count() >= 5).then_some(())
    })
    .await;
    sluice.kill();
    let before = receiver.count();
    assert!(
        before < CALLS,
        "all calls finished before the kill; the test proves nothing"
    );

    let sluice = Sluice::start(&data, &["--worker-concurrency", "8"]);
    let url = sluice.url.clone();
    eventually("every call to call back", || async {
        let delivered: HashSet<String> = receiver
            .received()
            .iter()
            .map(|c| c.header("x-call-id").to_owned())
            .collect();
        ids.iter().all(|id| delivered.contains(id)).then_some(())
    })
    .await;
    for id in &ids {
        let record: Value = get_json(&http, format!("{url}/system/calls/{id}")).await;
        assert_eq!(record["state"], "succeeded", "{record}");
    }
    for cb in receiver.received() {
        assert_eq!(cb.header("x-function-status"), "200");
        assert_eq!(cb.body, "slept 0.2s\n");
    }
    let f: Value = get_json(&http, format!("{url}/system/function/sleep")).await;
    assert_eq!(f["replicas"], 2, "replica count not restored: {f}");
    eprintln!(
        "{before} of {CALLS} callbacks before the kill; {} after the restart",
        receiver.count()
    );
}

#[tokio::test]
async fn graceful_stop_and_restart_keeps_functions_and_scale() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sluice = Sluice::start(&data, &[]);
    let url = sluice.url.clone();
    let http = crate::harness::http();
    deploy(
        &http,
        &url,
        &sample("echo", "python3 -u echo.py", true, &[]),
    )
    .await;
    scale(&http, &url, "echo", 2).await;
    assert!(
        sluice.stop().success(),
        "sluice up did not exit cleanly on SIGTERM"
    );

    let sluice = Sluice::start(&data, &[]);
    let url = &sluice.url;
    let r = http
        .post(format!("{url}/function/echo"))
        .body("back")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "back");
    eventually("2 ready replicas", || async {
        let f: Value = try_get_json(&http, format!("{url}/system/function/echo")).await?;
        (f["availableReplicas"] == 2).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_second_sluice_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let _first = Sluice::start(&data, &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["up", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("another sluice is using the data dir"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_call_still_running_at_shutdown_is_released_and_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--shutdown-grace", "300ms"];
    let sluice = Sluice::start(&data, &args);
    let url = sluice.url.clone();
    let http = crate::harness::http();
    let receiver = Receiver::start().await;
    deploy(
        &http,
        &url,
        &sample("sleep", "python3 -u sleep.py", true, &[]),
    )
    .await;
    let r = submit_async(
        &http,
        format!("{url}/async-function/sleep?seconds=3"),
        &receiver,
        "long-one",
    )
    .await;
    assert_eq!(r.status(), 202);
    eventually("the call to be running", || async {
        let r: Value = try_get_json(&http, format!("{url}/system/calls/long-one")).await?;
        (r["state"] == "running").then_some(())
    })
    .await;
    assert!(
        sluice.stop().success(),
        "sluice up did not exit cleanly on SIGTERM"
    );
    assert_eq!(
        receiver.count(),
        0,
        "the call finished; the test proves nothing"
    );

    let sluice = Sluice::start(&data, &args);
    let url = &sluice.url;
    eventually("the callback", || async {
        (receiver.count() == 1).then_some(())
    })
    .await;
    assert_eq!(receiver.received()[0].header("x-function-status"), "200");
    let record: Value = get_json(&http, format!("{url}/system/calls/long-one")).await;
    assert_eq!(record["state"], "succeeded");
    assert_eq!(record["attempts"], 2, "{record}");
}

/// The pids of processes whose command line contains `token`.
fn pids_with(token: &str) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", token])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn processes_a_killed_sluice_left_behind_are_stopped_on_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut sluice = Sluice::start(&data, &[]);
    let url = sluice.url.clone();
    let http = crate::harness::http();
    // The replica's own child: it outlives a SIGKILL of Sluice (only direct children die with it).
    let token = format!("leftover-{}", std::process::id());
    let command = format!(
        "sh -c \"python3 -c 'import time; time.sleep(600)' {token} & exec python3 -u echo.py\""
    );
    deploy(&http, &url, &sample("echo", &command, true, &[])).await;
    let r = http
        .post(format!("{url}/function/echo"))
        .body("up")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    sluice.kill();
    let left = pids_with(&token);
    assert!(
        !left.is_empty(),
        "nothing was left behind; the test proves nothing"
    );

    // The next start stops them (and starts the function afresh, with a child of its own).
    let sluice = Sluice::start(&data, &[]);
    eventually("the leftovers to be stopped", || async {
        let now = pids_with(&token);
        left.iter().all(|pid| !now.contains(pid)).then_some(())
    })
    .await;
    // A graceful stop takes the whole process group down with it.
    assert!(sluice.stop().success());
    eventually("no process left", || async {
        pids_with(&token).is_empty().then_some(())
    })
    .await;
}
