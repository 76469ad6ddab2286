//! `sluice watchdog` as a function's container runs it, configured by the environment: classic
//! mode forks `fprocess` per request, HTTP mode proxies to the function's own server, health
//! tells the kubelet when to send traffic, and SIGTERM drains before the process exits.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::harness::{PATIENCE, eventually, functions_dir};

/// The settings `sluice watchdog` reads; removed from its environment unless a test sets them.
const SETTINGS: &[&str] = &[
    "fprocess",
    "mode",
    "port",
    "upstream_url",
    "ready_path",
    "exec_timeout",
    "read_timeout",
    "write_timeout",
    "healthcheck_interval",
    "max_inflight",
    "max_body_bytes",
    "content_type",
    "SLUICE_WATCHDOG_LISTEN",
];

/// Carried in the watchdog's environment, so its function's processes can be found by it.
const MARKER: &str = "e2e_watchdog_marker";

fn command(env: &[(&str, &str)], marker: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(["watchdog", "--listen", "127.0.0.1:0"])
        .current_dir(functions_dir())
        .env("SLUICE_LOG", "info")
        .env(MARKER, marker)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for key in SETTINGS {
        command.env_remove(key);
    }
    command.envs(env.iter().copied());
    command
}

/// Everything read from `reader`, kept as it arrives.
fn keep(mut reader: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    let kept = Arc::new(Mutex::new(String::new()));
    let into = kept.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
    });
    kept
}

/// A running `sluice watchdog`, killed when dropped.
struct Watchdog {
    url: String,
    child: Child,
    marker: String,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
}

impl Watchdog {
    /// Starts it in `functions/` with `env`; returns once it listens.
    fn start(env: &[(&str, &str)]) -> Self {
        let marker = uuid::Uuid::new_v4().simple().to_string();
        let mut child = command(env, &marker).spawn().expect("sluice starts");
        let stderr = keep(child.stderr.take().unwrap());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        let Some(url) = first
            .trim()
            .strip_prefix("sluice watchdog listening on ")
            .map(str::to_owned)
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "unexpected first line {first:?}; stderr:\n{}",
                stderr.lock().unwrap()
            );
        };
        Self {
            url,
            child,
            marker,
            stdout: keep(stdout),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    /// The function's processes: those carrying the watchdog's marker, the watchdog aside.
    fn function_processes(&self) -> Vec<u32> {
        let entry = format!("{MARKER}={}", self.marker);
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != self.child.id())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
            })
            .collect()
    }

    fn terminate(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success());
    }

    /// Waits for it to exit, at most `patience`.
    async fn exited(&mut self, patience: Duration) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the watchdog did not exit within {patience:?}; stderr:\n{}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn status(&self, http: &reqwest::Client, path: &str) -> u16 {
        http.get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// SHA-512 of `data` in hex, by Python's hashlib (not the `sha512sum` the watchdog runs).
fn sha512_hex(data: &[u8]) -> String {
    use std::io::Write;
    let mut python = Command::new("python3")
        .args([
            "-c",
            "import hashlib, sys; print(hashlib.sha512(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    python.stdin.take().unwrap().write_all(data).unwrap();
    let out = python.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn classic_mode_forks_fprocess_per_request() {
    let wd = Watchdog::start(&[("fprocess", "sha512sum"), ("max_body_bytes", "65536")]);
    let http = client();
    // Nothing to wait for: classic mode is ready as soon as it listens.
    assert_eq!(wd.status(&http, "/_/health").await, 200);
    assert_eq!(wd.status(&http, "/_/ready").await, 200);

    let r = http.post(&wd.url).body("abc").send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-duration-seconds"));
    assert_eq!(
        r.text().await.unwrap(),
        "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
         2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f  -\n"
    );
    // The run is in the container's log in the classic watchdog's words (132 bytes: the hash,
    // two spaces, `-` and a newline).
    let logged = eventually("the run's lines in the watchdog's stderr", || async {
        let stderr = wd.stderr();
        stderr
            .contains("Wrote 132 Bytes - Duration: ")
            .then_some(stderr)
    })
    .await;
    let forked = logged.find("Forking fprocess.\n").expect("a fork line");
    assert!(forked < logged.find("Wrote 132 Bytes").unwrap(), "{logged}");
    // Requests at once each get their own run.
    let bodies: Vec<Vec<u8>> = (0..8u8)
        .map(|i| (0..50_000u32).map(|j| (j % 251) as u8 ^ i).collect())
        .collect();
    let answers = futures_util::future::join_all(bodies.iter().map(|body| {
        let (http, url) = (http.clone(), wd.url.clone());
        async move {
            let r = http
                .post(format!("{url}/any/path"))
                .body(body.clone())
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        }
    }))
    .await;
    for (body, answer) in bodies.iter().zip(answers) {
        assert_eq!(answer, format!("{}  -\n", sha512_hex(body)));
    }

    // A body over max_body_bytes is refused, marked as the watchdog's own answer.
    let r = http
        .post(&wd.url)
        .body(vec![b'x'; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(r.headers()["x-sluice-error"], "body_too_large");
    // The health paths are the watchdog's, never the function's.
    let r = http
        .post(format!("{}/_/health", wd.url))
        .body("abc")
        .send()
        .await
        .unwrap();
    assert_ne!(r.status(), 200);
}

#[tokio::test]
async fn classic_mode_passes_the_request_and_the_environment() {
    let wd = Watchdog::start(&[("fprocess", "env")]);
    let http = client();
    let r = http
        .put(format!("{}/some/path?x=1&y=two", wd.url))
        .header("x-custom", "yes")
        .body("ignored")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let env = r.text().await.unwrap();
    for line in [
        "Http_Method=PUT",
        "Http_Path=/some/path",
        "Http_Query=x=1&y=two",
        "Http_X_Custom=yes",
        "Http_ContentLength=7",
        "fprocess=env",
        // In a container the whole environment is the function's: it is passed on.
        &format!("{MARKER}={}", wd.marker),
    ] {
        assert!(env.lines().any(|l| l == line), "{line:?} not in:\n{env}");
    }

    // A command that fails is the function's 500; its stderr is in the container's log.
    let failing = Watchdog::start(&[(
        "fprocess",
        "sh -c 'echo oops-from-the-function >&2; exit 3'",
    )]);
    let r = http.post(&failing.url).body("x").send().await.unwrap();
    assert_eq!(r.status(), 500);
    assert!(!r.headers().contains_key("x-sluice-error"));
    eventually("the function's stderr in the watchdog's", || async {
        failing
            .stderr()
            .lines()
            .any(|l| l == "oops-from-the-function")
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn http_mode_proxies_to_the_function_once_ready() {
    // A server that takes two seconds to come up: the watchdog is unhealthy until it answers.
    let wd = Watchdog::start(&[
        ("mode", "http"),
        ("fprocess", "sh -c 'sleep 2 && exec python3 -u echo.py'"),
    ]);
    let http = client();
    assert_eq!(wd.status(&http, "/_/health").await, 503);
    assert_eq!(wd.status(&http, "/_/ready").await, 503);

    // A request sent meanwhile waits for the server.
    let r = http
        .put(format!("{}/a/b?x=1&y=two", wd.url))
        .header("x-custom", "yes")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo-method"], "PUT");
    assert_eq!(r.headers()["x-echo-path"], "/a/b");
    assert_eq!(r.headers()["x-echo-query"], "x=1&y=two");
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert!(r.headers().contains_key("x-duration-seconds"));
    let seen: serde_json::Value =
        serde_json::from_str(r.headers()["x-echo-headers"].to_str().unwrap()).unwrap();
    assert_eq!(seen["x-custom"], "yes");
    assert_eq!(seen["content-length"], "5");
    assert_eq!(r.text().await.unwrap(), "hello");
    assert_eq!(wd.status(&http, "/_/health").await, 200);
    assert_eq!(wd.status(&http, "/_/ready").await, 200);

    // A large body goes through and back unchanged.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let r = http
        .post(format!("{}/big", wd.url))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), big);

    // The function's output is the container's log; it runs with the container's environment.
    eventually("the function's stderr in the watchdog's", || async {
        wd.stderr()
            .contains("listening on 127.0.0.1:")
            .then_some(())
    })
    .await;
    assert_eq!(wd.function_processes().len(), 1, "one server, started once");
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("slow.py");
    std::fs::write(
        &script,
        r#"import sys, time
from sluice_http import serve

def slow(method, path, query, headers, body):
    print("request started", flush=True)
    time.sleep(float(query.partition("=")[2] or "0"))
    return 200, {"Content-Type": "text/plain"}, b"done\n"

serve(slow)
"#,
    )
    .unwrap();
    let fprocess = format!("python3 -u {}", script.display());
    let python_path = functions_dir().display().to_string();
    let mut wd = Watchdog::start(&[
        ("mode", "http"),
        ("fprocess", &fprocess),
        ("PYTHONPATH", &python_path),
        ("healthcheck_interval", "3s"),
    ]);
    let http = client();
    eventually("the watchdog ready", || async {
        (wd.status(&http, "/_/health").await == 200).then_some(())
    })
    .await;
    let slow = tokio::spawn({
        let (http, url) = (http.clone(), wd.url.clone());
        async move {
            let r = http.get(format!("{url}/?seconds=5")).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    });
    // The function says (on its stdout, which is the watchdog's) when the request reached it.
    eventually("the slow request in flight", || async {
        wd.stdout().contains("request started").then_some(())
    })
    .await;

    wd.terminate();
    // Unhealthy at once, while still serving (new requests too) for the healthcheck interval.
    let started = tokio::time::Instant::now();
    loop {
        let status = http
            .get(format!("{}/_/health", wd.url))
            .send()
            .await
            .expect("the watchdog keeps listening through the healthcheck interval")
            .status();
        if status == 503 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "still healthy after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = http
        .get(format!("{}/?seconds=0", wd.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The request in flight finishes, then the watchdog exits cleanly, its function with it.
    assert_eq!(slow.await.unwrap(), (200, "done\n".to_owned()));
    let status = wd.exited(PATIENCE).await;
    assert!(
        status.success(),
        "exited with {status}; stderr:\n{}",
        wd.stderr()
    );
    assert!(
        wd.function_processes().is_empty(),
        "the function's server outlived the watchdog"
    );
}

#[tokio::test]
async fn http_mode_exits_when_the_function_does() {
    let mut wd = Watchdog::start(&[
        ("mode", "http"),
        ("fprocess", "python3 -c 'import sys; sys.exit(3)'"),
    ]);
    let status = wd.exited(PATIENCE).await;
    assert!(!status.success());
    let stderr = wd.stderr();
    assert!(stderr.contains("exited with status 3"), "{stderr}");
}

#[tokio::test]
async fn bad_configuration_is_refused_before_listening() {
    for (env, needle) in [
        (vec![], "fprocess is not set"),
        (
            vec![("fprocess", "cat"), ("mode", "afterburner")],
            "mode \"afterburner\"",
        ),
        (
            vec![("fprocess", "cat"), ("exec_timeout", "soon")],
            "exec_timeout",
        ),
    ] {
        let out = command(&env, "none").output().unwrap();
        assert!(!out.status.success());
        assert!(out.stdout.is_empty(), "it listened: {:?}", out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{stderr:?} lacks {needle:?}");
    }
}
