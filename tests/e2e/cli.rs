//! The `sluice` command against a running `sluice up`: the README's quickstart, step by step.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use crate::harness::{Receiver, Sluice, eventually, functions_dir};

fn sluice(gateway: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_URL", gateway)
        .env_remove("OPENFAAS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn quickstart_with_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let running = Sluice::start(&dir.path().join("data"), &[]);
    let gw = running.url.as_str();
    let stack = functions_dir().join("stack.yml");
    let stack = stack.to_str().unwrap();

    let out = ok(sluice(gw, &["deploy", "-f", stack], ""));
    for f in ["echo", "fail", "sha512sum", "sleep"] {
        assert!(out.contains(&format!("Deployed {f}.")), "{out}");
    }
    // Deploying again updates in place.
    assert!(
        ok(sluice(gw, &["deploy", "-f", stack, "--filter", "echo"], "")).contains("Updated echo.")
    );

    let hashed = ok(sluice(gw, &["invoke", "sha512sum"], "hello"));
    assert!(hashed.starts_with("9b71d224bd62f378"), "{hashed}");
    let echoed = ok(sluice(
        gw,
        &[
            "invoke",
            "echo",
            "--method",
            "PUT",
            "--path",
            "/a",
            "-q",
            "k=v",
            "-H",
            "X-Thing: 1",
        ],
        "round trip",
    ));
    assert_eq!(echoed, "round trip");
    let failed = sluice(gw, &["invoke", "fail", "-q", "status=502"], "");
    assert!(!failed.status.success());
    assert!(String::from_utf8_lossy(&failed.stderr).contains("502"));

    let receiver = Receiver::start().await;
    let out = ok(sluice(
        gw,
        &[
            "invoke",
            "sleep",
            "--async",
            "--callback-url",
            &receiver.url,
            "-q",
            "seconds=0.1",
        ],
        "",
    ));
    assert!(out.contains("Function submitted asynchronously."), "{out}");
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("Call id: "))
        .unwrap()
        .to_owned();
    eventually("the callback", || async {
        (receiver.count() == 1).then_some(())
    })
    .await;
    assert_eq!(receiver.received()[0].header("x-call-id"), id);
    let listed = ok(sluice(gw, &["calls", "--function", "sleep"], ""));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&id) && l.contains("succeeded")),
        "{listed}"
    );
    assert_eq!(
        ok(sluice(gw, &["call", &id, "--result"], "")),
        "slept 0.1s\n"
    );
    // The callback's outcome is recorded just after the receiver answers.
    let call = eventually("the callback to be recorded", || async {
        let call = ok(sluice(gw, &["call", &id], ""));
        call.contains("delivered").then_some(call)
    })
    .await;
    assert!(call.contains("State:     succeeded"), "{call}");

    eventually("sleep's two replicas listed as ready", || async {
        let list = ok(sluice(gw, &["list"], ""));
        list.lines()
            .any(|l| l.starts_with("sleep") && l.contains("2/2"))
            .then_some(())
    })
    .await;
    let described = ok(sluice(gw, &["describe", "echo"], ""));
    assert!(described.contains("mode: http"), "{described}");
    ok(sluice(gw, &["scale", "echo", "--replicas", "2"], ""));
    let logs = ok(sluice(gw, &["logs", "echo", "--tail", "5"], ""));
    assert!(logs.contains("listening on 127.0.0.1:"), "{logs}");
    assert!(ok(sluice(gw, &["remove", "fail"], "")).contains("Removed fail."));
    let err = sluice(gw, &["describe", "fail"], "");
    assert!(String::from_utf8_lossy(&err.stderr).contains("function fail is not deployed"));

    // A gateway that is not there is named, with what to do.
    let down = sluice("http://127.0.0.1:9", &["list"], "");
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(stderr.contains("is `sluice up` running?"), "{stderr}");
}
