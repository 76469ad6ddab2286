//! The `sluice` command managing async calls (show, retry, cancel, the dead-letter queue), its
//! shell completions, how it finds the gateway and how it says what went wrong; and
//! `sluice gateway` / `sluice queue-worker` on a database that does not exist.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use crate::harness::{ADMIN_PASSWORD, Sluice, deploy, eventually, http, sample};

/// Runs `sluice <args>` as the test admin (credentials from the environment, nothing stored
/// in `home`), with no gateway in the environment: each call says which one.
fn sluice(home: &Path, args: &[&str]) -> Output {
    crate::harness::cli(home, None, args, "")
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

fn json(out: Output) -> Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A failed command's stderr, which must be one line starting `error: `.
fn one_line_error(out: &Output) -> String {
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr.trim_end().to_owned()
}

fn ids(list: &Value) -> Vec<String> {
    list["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Submits an async call with `sluice invoke --async` and these query parameters (`k=v`);
/// returns its id.
fn submit(home: &Path, gw: &str, function: &str, query: &[&str]) -> String {
    let mut args = vec!["invoke", function, "--async", "-g", gw];
    for pair in query {
        args.extend(["-q", pair]);
    }
    let out = ok(sluice(home, &args));
    out.lines()
        .find_map(|l| l.strip_prefix("Call id: "))
        .unwrap_or_else(|| panic!("no call id in {out}"))
        .to_owned()
}

async fn state_of(home: &Path, gw: &str, id: &str) -> String {
    let call = json(sluice(home, &["call", "show", id, "--json", "-g", gw]));
    call["state"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn failed_calls_are_listed_and_re_driven_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let running = Sluice::start(&dir.path().join("data"), &[]);
    let home = dir.path();
    // The gateway given without a scheme: http:// is assumed.
    let gw = running.url.strip_prefix("http://").unwrap().to_owned();
    let gw = gw.as_str();
    // flaky fails a key's first call and succeeds after; one attempt, so a call dead-letters
    // at once. One replica, which keeps the count.
    let mut flaky = sample(
        "flaky",
        "python3 -u flaky.py",
        true,
        &[("com.openfaas.scale.max", "1")],
    );
    flaky["annotations"]["com.openfaas.retry.attempts"] = "1".into();
    deploy(&http(), &running.url, &flaky).await;

    let calls: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|key| submit(home, gw, "flaky", &[&format!("key={key}"), "fail=1"]))
        .collect();
    let listed = eventually("three dead-lettered calls", || async {
        let list = json(sluice(home, &["dlq", "--json", "-g", gw]));
        (ids(&list).len() == 3).then_some(list)
    })
    .await;
    // Newest first, each failed with flaky's 503.
    let newest_first: Vec<String> = calls.iter().rev().cloned().collect();
    assert_eq!(ids(&listed), newest_first);
    assert_eq!(listed["truncated"], false);
    for call in listed["calls"].as_array().unwrap() {
        assert_eq!(call["state"], "failed");
        assert_eq!(call["statusCode"], 503);
    }
    // Paged through the gateway two at a time, the list is the same; --limit bounds it.
    let paged = json(sluice(
        home,
        &["dlq", "--json", "--page-size", "2", "-g", gw],
    ));
    assert_eq!(ids(&paged), newest_first);
    let bounded = json(sluice(
        home,
        &[
            "dlq",
            "--json",
            "--limit",
            "2",
            "--page-size",
            "1",
            "-g",
            gw,
        ],
    ));
    assert_eq!(ids(&bounded), newest_first[..2]);
    assert_eq!(bounded["truncated"], true);
    let plain = ok(sluice(home, &["dlq", "--function", "flaky", "-g", gw]));
    assert!(plain.starts_with("Call "), "{plain}");
    assert_eq!(plain.lines().filter(|l| l.contains(" failed ")).count(), 3);

    // One call shown, in both forms, then re-driven: it succeeds the second time.
    let [a, b, c] = [&calls[0], &calls[1], &calls[2]];
    let shown = ok(sluice(home, &["call", a, "-g", gw]));
    assert!(shown.contains("State:     failed"), "{shown}");
    assert_eq!(state_of(home, gw, a).await, "failed");
    let out = ok(sluice(home, &["call", "retry", a, "-g", gw]));
    assert!(out.contains(&format!("re-driven {a}")), "{out}");
    eventually("the re-driven call to succeed", || async {
        (state_of(home, gw, a).await == "succeeded").then_some(())
    })
    .await;

    // dlq retry of one, in JSON.
    let report = json(sluice(home, &["dlq", "retry", b, "--json", "-g", gw]));
    assert_eq!(report["retried"], 1);
    assert_eq!(report["failed"], 0);
    assert_eq!(report["calls"][0]["id"], b.as_str());
    // A call that did not fail cannot be re-driven: said per call, and the exit is non-zero.
    let refused = sluice(home, &["dlq", "retry", a, "--json", "-g", gw]);
    assert!(!refused.status.success());
    let report: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(
        (report["retried"].clone(), report["failed"].clone()),
        (0.into(), 1.into())
    );
    let why = report["calls"][0]["error"].as_str().unwrap();
    assert!(why.contains("only a failed call can be re-driven"), "{why}");
    eventually("b to succeed", || async {
        (state_of(home, gw, b).await == "succeeded").then_some(())
    })
    .await;

    // What is left (c) re-driven with --all, each outcome reported.
    let report = json(sluice(
        home,
        &[
            "dlq",
            "retry",
            "--all",
            "--function",
            "flaky",
            "--json",
            "-g",
            gw,
        ],
    ));
    assert_eq!(report["retried"], 1, "{report}");
    assert_eq!(report["failed"], 0);
    assert_eq!(report["calls"][0]["id"], c.as_str());
    assert_eq!(report["calls"][0]["function"], "flaky.openfaas-fn");
    eventually("c to succeed", || async {
        (state_of(home, gw, c).await == "succeeded").then_some(())
    })
    .await;
    let empty = json(sluice(home, &["dlq", "--json", "-g", gw]));
    assert_eq!(ids(&empty), Vec::<String>::new());
    let none = ok(sluice(home, &["dlq", "retry", "--all", "-g", gw]));
    assert!(none.contains("0 re-driven, 0 not"), "{none}");
}

#[tokio::test]
async fn a_queued_call_is_cancelled_and_a_running_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    // One call of a function at a time: a second one waits in the queue.
    let running = Sluice::start(&dir.path().join("data"), &["--function-concurrency", "1"]);
    let home = dir.path();
    let gw = running.url.as_str();
    deploy(
        &http(),
        gw,
        &sample("sleep", "python3 -u sleep.py", true, &[]),
    )
    .await;
    let slow = submit(home, gw, "sleep", &["seconds=60"]);
    eventually("the first call to run", || async {
        (state_of(home, gw, &slow).await == "running").then_some(())
    })
    .await;
    let waiting = submit(home, gw, "sleep", &["seconds=1"]);
    // The worker may hold the waiting call for a moment before giving it back to the queue.
    let cancelled = eventually("the queued call to be cancelled", || async {
        let out = sluice(home, &["call", "cancel", &waiting, "--json", "-g", gw]);
        out.status
            .success()
            .then(|| serde_json::from_slice::<Value>(&out.stdout).unwrap())
    })
    .await;
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(state_of(home, gw, &waiting).await, "cancelled");
    // The running one cannot be cancelled: the gateway's 409, in one line.
    let refused = sluice(home, &["call", "cancel", &slow, "-g", gw]);
    assert_eq!(
        one_line_error(&refused),
        format!("error: call {slow} is running; only a queued call can be cancelled")
    );
    let plain = ok(sluice(
        home,
        &["calls", "--function", "sleep", "--json", "-g", gw],
    ));
    let page: Value = serde_json::from_str(&plain).unwrap();
    assert_eq!(ids(&page), [waiting.clone(), slow.clone()]);
}

#[tokio::test]
async fn read_commands_speak_json_and_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let running = Sluice::start(&dir.path().join("data"), &[]);
    let home = dir.path();
    let gw = running.url.as_str();
    deploy(
        &http(),
        gw,
        &sample("echo", "python3 -u echo.py", true, &[]),
    )
    .await;
    // --gateway host:port, without a scheme, works.
    let bare = gw.strip_prefix("http://").unwrap();
    let list = json(sluice(home, &["list", "--json", "--gateway", bare]));
    assert_eq!(list[0]["name"], "echo");
    let described = json(sluice(home, &["describe", "echo", "--json", "-g", gw]));
    assert_eq!(described["envProcess"], "python3 -u echo.py");
    assert_eq!(ok(sluice(home, &["invoke", "echo", "-g", bare])), "");
    eventually("a log line", || async {
        let out = ok(sluice(home, &["logs", "echo", "--json", "-g", gw]));
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        lines
            .iter()
            .any(|l| {
                l["text"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("listening on")
            })
            .then_some(())
    })
    .await;

    // The gateway's error, as its message on one line.
    let nope = sluice(home, &["invoke", "nope", "-g", gw]);
    assert_eq!(
        one_line_error(&nope),
        "error: function nope is not deployed"
    );
    let nope = sluice(home, &["call", "show", "no-such-call", "-g", gw]);
    assert_eq!(one_line_error(&nope), "error: call no-such-call not found");
    // A gateway that is not there, named with what to do.
    let down = sluice(home, &["calls", "-g", "127.0.0.1:9"]);
    let said = one_line_error(&down);
    assert!(
        said.starts_with("error: cannot reach the gateway at http://127.0.0.1:9: ")
            && said.ends_with("(is sluice up running? set --gateway or SLUICE_URL)"),
        "{said}"
    );
    // A malformed URL, named by where it came from.
    let bad = sluice(home, &["list", "-g", "http://127.0.0.1:99999"]);
    assert_eq!(
        one_line_error(&bad),
        "error: --gateway \"http://127.0.0.1:99999\" is not a gateway URL: invalid port number"
    );
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    let bad = command
        .args(["dlq"])
        .env("HOME", home)
        .env("SLUICE_CONFIG_DIR", home)
        .env("SLUICE_URL", "ftp://127.0.0.1")
        .output()
        .unwrap();
    assert_eq!(
        one_line_error(&bad),
        "error: SLUICE_URL \"ftp://127.0.0.1\" is not a gateway URL: the scheme is \"ftp\"; use \
         http:// or https://"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    let home = tempfile::tempdir().unwrap();
    let bash = ok(sluice(home.path(), &["completion", "bash"]));
    assert!(bash.contains("complete -F _sluice"), "{bash}");
    for word in [
        "deploy",
        "invoke",
        "calls",
        "dlq",
        "retry",
        "cancel",
        "completion",
    ] {
        assert!(bash.contains(word), "{word} missing");
    }
    assert!(ok(sluice(home.path(), &["completion", "zsh"])).starts_with("#compdef sluice"));
    let fish = ok(sluice(home.path(), &["completion", "fish"]));
    assert!(fish.contains("complete -c sluice"), "{fish}");
    assert!(
        !sluice(home.path(), &["completion", "tcsh"])
            .status
            .success()
    );
}

/// A database name of the test's own, that needs quoting in SQL, dropped when the test ends.
struct ScratchDatabase {
    name: String,
}

fn admin_url() -> String {
    std::env::var("SLUICE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl ScratchDatabase {
    fn new() -> Self {
        Self {
            name: format!("Sluice-CLI-{}", uuid::Uuid::new_v4().simple()),
        }
    }

    fn url(&self) -> String {
        let admin = admin_url();
        let (server, _) = admin.rsplit_once('/').unwrap();
        format!("{server}/{}", self.name)
    }

    async fn exists(&self) -> bool {
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin_url()).await.unwrap();
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&self.name)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    }
}

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        let drop = format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.name.replace('"', "\"\"")
        );
        let _ = std::thread::spawn(move || {
            use sqlx::Connection;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(&drop).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

#[tokio::test]
async fn a_missing_database_is_said_plainly_and_can_be_created() {
    let nats = sluice_testkit::NatsServer::start();
    let db = ScratchDatabase::new();
    let url = db.url();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let nats_url = nats.url();
    let gateway = |extra: &[&str]| {
        let mut args = vec![
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data,
            "--database-url",
            &url,
            "--nats",
            &nats_url,
            // Far longer than the test waits: the answer must not come from the timeout.
            "--connect-timeout",
            "10m",
        ];
        args.extend_from_slice(extra);
        args.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let expected = format!(
        "error: the database \"{0}\" does not exist on 127.0.0.1:5432; create it (createdb {0}) \
         or pass --create-database",
        db.name
    );
    let missing = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(gateway(&[]))
        .env("SLUICE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.lines().last(), Some(expected.as_str()), "{stderr}");
    assert!(missing.stdout.is_empty());
    let worker = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "queue-worker",
            "--gateway-url",
            "http://127.0.0.1:9",
            "--database-url",
            &url,
            "--nats",
            &nats_url,
            "--connect-timeout",
            "10m",
        ])
        .output()
        .unwrap();
    assert!(!worker.status.success());
    let stderr = String::from_utf8_lossy(&worker.stderr);
    assert_eq!(stderr.lines().last(), Some(expected.as_str()), "{stderr}");
    assert!(!db.exists().await);

    // --create-database makes it (its name quoted), and the start lines say what is used.
    let args = gateway(&["--create-database"]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(&args)
        .env("SLUICE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..3 {
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        lines.push(line.trim_end().to_owned());
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines[0].starts_with("sluice listening on http://127.0.0.1:"),
        "{lines:?}"
    );
    assert_eq!(
        lines[1],
        format!("database: Postgres on 127.0.0.1:5432, database {}", db.name)
    );
    assert_eq!(
        lines[2],
        format!("queue: NATS JetStream at {nats_url}, stream SLUICE_CALLS")
    );
    assert!(db.exists().await);
    // A second start finds it made, and a worker says what it uses too.
    let worker = Sluice::run(
        &[
            "queue-worker",
            "--gateway-url",
            "http://127.0.0.1:9",
            "--database-url",
            &url,
            "--nats",
            &nats_url,
            "--create-database",
        ],
        &dir.path().join("worker.log"),
    );
    drop(worker);
}
