//! The `sluice` command against a running `sluice up`: the README's quickstart, step by step.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::harness::{Receiver, Sluice, eventually, functions_dir};

/// Runs the `sluice` command as a user whose stored credentials are in `config` (and who has no
/// credentials in the environment).
fn sluice_as(config: &Path, gateway: &str, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .env("SLUICE_URL", gateway)
        .env("SLUICE_CONFIG_DIR", config)
        .env("HOME", config)
        .env_remove("OPENFAAS_URL")
        .env_remove("OPENFAAS_CONFIG")
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_ADMIN_USER")
        .env_remove("SLUICE_ADMIN_PASSWORD")
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
    let data = dir.path().join("data");
    let running = Sluice::start_as_new_user(&data, &[]);
    let gw = running.url.as_str();
    let config = dir.path().join("config");
    let sluice = |gw: &str, args: &[&str], stdin: &str| sluice_as(&config, gw, args, stdin);

    // Nothing works before logging in, and the error says what to do.
    let refused = sluice(gw, &["list"], "");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("sluice login"), "{stderr}");
    // A wrong password is refused and nothing is stored.
    let wrong = sluice(gw, &["login", "--password-stdin"], "not-it\n");
    assert!(!wrong.status.success());
    assert!(!config.join("auth.json").exists());
    // Log in as the start-up message says: with the password Sluice made in its data dir.
    let password = std::fs::read_to_string(data.join("basic-auth-password")).unwrap();
    let out = ok(sluice(gw, &["login", "--password-stdin"], &password));
    assert!(out.contains("Credentials saved"), "{out}");
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

    // A function that requires credentials gets them from `sluice invoke`; one that only
    // pretends to (Sluice's 401, faked) does not.
    let fprocess = |code: &str| {
        format!(
            "python3 -u -c 'import sys; from sluice_http import serve; \
             serve(lambda m, p, q, h, b: (print(\"auth:\", h.get(\"Authorization\"), \
             file=sys.stderr), ({code}))[1])'"
        )
    };
    let workdir = format!("com.sluice.workdir={}", functions_dir().display());
    let private = fprocess("200, {}, b\"private ok\"");
    ok(sluice(
        gw,
        &[
            "deploy",
            "--name",
            "private",
            "--fprocess",
            &private,
            "-e",
            "mode=http",
        ]
        .into_iter()
        .chain(["--annotation", &workdir, "-l", "com.sluice.auth=required"])
        .collect::<Vec<_>>(),
        "",
    ));
    assert_eq!(ok(sluice(gw, &["invoke", "private"], "")), "private ok");
    let forger = fprocess("401, {\"X-Sluice-Error\": \"unauthorized\"}, b\"nope\"");
    ok(sluice(
        gw,
        &[
            "deploy",
            "--name",
            "forger",
            "--fprocess",
            &forger,
            "-e",
            "mode=http",
            "--annotation",
            &workdir,
        ],
        "",
    ));
    assert!(!sluice(gw, &["invoke", "forger"], "").status.success());
    let seen = ok(sluice(gw, &["logs", "forger"], ""));
    assert!(seen.contains("auth: None"), "{seen}");
    assert!(!seen.contains("Basic"), "{seen}");

    // A gateway that is not there is named, with what to do.
    let down = sluice("http://127.0.0.1:9", &["list"], "");
    let stderr = String::from_utf8_lossy(&down.stderr);
    assert!(
        stderr.starts_with("error: cannot reach the gateway at http://127.0.0.1:9: ")
            && stderr.contains("(is sluice up running? set --gateway or SLUICE_URL)")
            && stderr.lines().count() == 1,
        "{stderr}"
    );
}
