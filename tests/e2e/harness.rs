//! What the end-to-end tests share: the real `sluice` binary on a free port, a callback receiver,
//! and polling with a deadline (never a bare sleep).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

pub const PATIENCE: Duration = Duration::from_secs(60);

/// The admin credentials every `sluice` a test starts is given (through the environment, as
/// `SLUICE_ADMIN_USER` / `SLUICE_ADMIN_PASSWORD`), unless it says otherwise.
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "e2e-admin-password";

/// An HTTP client that sends the admin's credentials on every request.
pub fn http() -> reqwest::Client {
    use base64::Engine;
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{ADMIN_USER}:{ADMIN_PASSWORD}"));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Basic {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// Runs the `sluice` command in `dir` as the test admin (credentials from the environment, none
/// stored; its config dir is `dir`), against `gateway` (`SLUICE_URL`) when given, with `stdin`
/// as its input.
pub fn cli(dir: &Path, gateway: Option<&str>, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write;
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("SLUICE_CONFIG_DIR", dir)
        .env("SLUICE_ADMIN_USER", ADMIN_USER)
        .env("SLUICE_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env_remove("SLUICE_URL")
        .env_remove("OPENFAAS_URL")
        .env_remove("SLUICE_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(gateway) = gateway {
        command.env("SLUICE_URL", gateway);
    }
    let mut child = command.spawn().expect("sluice starts");
    // A command that does not read its input closes the pipe early; that is its business.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    child.wait_with_output().unwrap()
}

/// A command's stdout and stderr together, for messages.
pub fn printed(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The directory holding the sample functions.
pub fn functions_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../functions")
        .canonicalize()
        .expect("functions/ exists")
}

/// A running `sluice` (up, gateway or queue-worker), killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Sluice {
    pub url: String,
    child: Child,
}

impl Sluice {
    /// Starts `sluice up` on a free port with its data in `data_dir`; returns once it listens.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Self {
        let mut args = vec!["up", "--listen", "127.0.0.1:0", "--data-dir"];
        let data = data_dir.to_str().expect("a UTF-8 temp path");
        args.push(data);
        args.extend_from_slice(extra_args);
        Self::run(&args, &data_dir.with_extension("log"))
    }

    /// Starts `sluice up` as a new user would: no credentials given, so it makes a password
    /// and keeps it in the data dir.
    pub fn start_as_new_user(data_dir: &Path, extra_args: &[&str]) -> Self {
        let mut args = vec!["up", "--listen", "127.0.0.1:0", "--data-dir"];
        args.push(data_dir.to_str().expect("a UTF-8 temp path"));
        args.extend_from_slice(extra_args);
        Self::run_with_env(
            &args,
            &data_dir.with_extension("log"),
            &[
                ("SLUICE_ADMIN_USER", None),
                ("SLUICE_ADMIN_PASSWORD", None),
                ("SLUICE_API_TOKENS", None),
                ("SLUICE_AUTH_SECRETS_DIR", None),
            ],
        )
    }

    /// Runs `sluice <args>` with its log in `log`, with the test admin's credentials; returns
    /// once it has said it is running (a gateway: where it listens; a queue worker: that it
    /// works; `url` is empty then).
    pub fn run(args: &[&str], log: &Path) -> Self {
        Self::run_with_env(
            args,
            log,
            &[
                ("SLUICE_ADMIN_USER", Some(ADMIN_USER)),
                ("SLUICE_ADMIN_PASSWORD", Some(ADMIN_PASSWORD)),
            ],
        )
    }

    /// As [`Sluice::run`], with these environment variables set (`Some`) or removed (`None`)
    /// instead of the test admin's.
    pub fn run_with_env(args: &[&str], log: &Path, env: &[(&str, Option<&str>)]) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
        command.args(args).env("SLUICE_LOG", "info");
        for (key, value) in env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .expect("sluice starts");
        // The first line says where it listens: it is printed after the port is bound.
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first = String::new();
        stdout.read_line(&mut first).unwrap();
        // Keep reading what else it prints, so its stdout never fills or breaks.
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
        let first = first.trim();
        let url = match first.strip_prefix("sluice listening on ") {
            Some(url) => url.to_owned(),
            None if first == "sluice queue worker running" => String::new(),
            None => panic!("unexpected first line {first:?}; see {}", log.display()),
        };
        Self { url, child }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

impl Drop for Sluice {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` until it yields a value, panicking with `what` after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A deployment body for a sample function, as OpenFaaS's API takes it.
pub fn sample(name: &str, command: &str, http_mode: bool, labels: &[(&str, &str)]) -> Value {
    let mut env = BTreeMap::new();
    if http_mode {
        env.insert("mode", "http");
    }
    json!({
        "service": name,
        "image": format!("sluice/{name}:latest"),
        "envProcess": command,
        "envVars": env,
        "labels": labels.iter().cloned().collect::<BTreeMap<_, _>>(),
        "annotations": { "com.sluice.workdir": functions_dir().display().to_string() },
    })
}

pub async fn deploy(http: &reqwest::Client, url: &str, body: &Value) {
    let r = http
        .post(format!("{url}/system/functions"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        202,
        "deploy failed: {}",
        r.text().await.unwrap()
    );
}

/// One callback as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Callback {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Callback {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// An HTTP server on a free port that records every callback POSTed to it (and can be told to
/// refuse them for a while, as a receiver that is down).
#[derive(Debug, Clone)]
pub struct Receiver {
    pub url: String,
    seen: Arc<Mutex<Vec<Callback>>>,
    refusing: Arc<std::sync::atomic::AtomicUsize>,
    refuse_next: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug, Clone)]
struct ReceiverState {
    seen: Arc<Mutex<Vec<Callback>>>,
    refusing: Arc<std::sync::atomic::AtomicUsize>,
    /// Callbacks still to be refused before taking any (see [`Receiver::refuse_next`]).
    refuse_next: Arc<std::sync::atomic::AtomicUsize>,
}

impl Receiver {
    pub async fn start() -> Self {
        use std::sync::atomic::Ordering;
        let state = ReceiverState {
            seen: Arc::default(),
            refusing: Arc::default(),
            refuse_next: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(
                |State(state): State<ReceiverState>, headers: HeaderMap, body: Bytes| async move {
                    if state.refusing.load(Ordering::SeqCst) > 0 {
                        state.refusing.fetch_add(1, Ordering::SeqCst);
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let counted_down =
                        state
                            .refuse_next
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                    if counted_down.is_ok() {
                        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                    }
                    state.seen.lock().unwrap().push(Callback { headers, body });
                    axum::http::StatusCode::OK
                },
            )
            // Callbacks carry whole responses, up to the gateway's 16 MiB.
            .layer(axum::extract::DefaultBodyLimit::max(32 * 1024 * 1024))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/callback", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url,
            seen: state.seen,
            refusing: state.refusing,
            refuse_next: state.refuse_next,
        }
    }

    /// Answers 503 to the next `n` callbacks, then takes them.
    pub fn refuse_next(&self, n: usize) {
        self.refuse_next
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Answers 503 to every callback until [`Receiver::accept`].
    pub fn refuse(&self) {
        self.refusing.store(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Takes callbacks again; returns how many it refused meanwhile.
    pub fn accept(&self) -> usize {
        self.refusing
            .swap(0, std::sync::atomic::Ordering::SeqCst)
            .saturating_sub(1)
    }

    pub fn received(&self) -> Vec<Callback> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

/// GETs `url` and parses the JSON answer, whatever its status.
pub async fn get_json<T: serde::de::DeserializeOwned>(http: &reqwest::Client, url: String) -> T {
    try_get_json(http, url).await.expect("a JSON answer")
}

/// GETs `url` and parses the JSON answer; `None` if either fails (for polling).
pub async fn try_get_json<T: serde::de::DeserializeOwned>(
    http: &reqwest::Client,
    url: String,
) -> Option<T> {
    http.get(url).send().await.ok()?.json().await.ok()
}

/// Asks the gateway to scale `function` to `replicas`, insisting it accepts.
pub async fn scale(http: &reqwest::Client, url: &str, function: &str, replicas: u32) {
    let r = http
        .post(format!("{url}/system/scale-function/{function}"))
        .json(&json!({"serviceName": function, "replicas": replicas}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "scale failed: {}", r.text().await.unwrap());
}

/// Submits an async call (POST to `target`, an `/async-function/...` URL) with the client's own
/// call id and `receiver` as its callback.
pub async fn submit_async(
    http: &reqwest::Client,
    target: String,
    receiver: &Receiver,
    call_id: impl AsRef<str>,
) -> reqwest::Response {
    http.post(target)
        .header("X-Callback-Url", &receiver.url)
        .header("X-Call-Id", call_id.as_ref())
        .send()
        .await
        .unwrap()
}

/// Submits one async call to `target` with `receiver` (which must have had no callback yet) as
/// its callback, and returns the callback once it came.
pub async fn called_back(
    http: &reqwest::Client,
    target: String,
    receiver: &Receiver,
    call_id: &str,
) -> Callback {
    let r = submit_async(http, target, receiver, call_id).await;
    assert_eq!(r.status(), 202);
    eventually("the callback", || async {
        (receiver.count() == 1).then_some(())
    })
    .await;
    receiver.received().remove(0)
}

/// Postgres and NATS JetStream for the cluster form: a fresh database and a `nats-server` of
/// the test's own.
#[derive(Debug)]
pub struct Shared {
    pub nats: sluice_testkit::NatsServer,
    pub db: sluice_testkit::FreshDatabase,
}

impl Shared {
    pub async fn start() -> Self {
        Self {
            nats: sluice_testkit::NatsServer::start(),
            db: sluice_testkit::FreshDatabase::create().await,
        }
    }

    /// `--nats <url> --database-url <url>`.
    pub fn args(&self) -> Vec<String> {
        vec![
            "--nats".into(),
            self.nats.url(),
            "--database-url".into(),
            self.db.url.clone(),
        ]
    }
}

/// Which backends a test runs Sluice on.
#[derive(Debug)]
pub enum Backend {
    /// SQLite and the embedded queue, in the data dir.
    Embedded,
    /// Postgres and JetStream.
    Shared(Shared),
}

impl Backend {
    pub async fn shared() -> Self {
        Self::Shared(Shared::start().await)
    }

    /// Starts `sluice up` on this backend, with `extra_args`.
    pub fn up(&self, data_dir: &Path, extra_args: &[&str]) -> Sluice {
        let shared = match self {
            Self::Embedded => Vec::new(),
            Self::Shared(shared) => shared.args(),
        };
        let mut args: Vec<&str> = shared.iter().map(String::as_str).collect();
        args.extend_from_slice(extra_args);
        Sluice::start(data_dir, &args)
    }
}

/// A `sluice up` of a test's own (with `extra_args`) with the sample `echo` deployed, and a
/// client with the admin's credentials. Keep the directory alive as long as the Sluice.
pub async fn up_with_echo(extra_args: &[&str]) -> (tempfile::TempDir, Sluice, reqwest::Client) {
    let dir = tempfile::tempdir().unwrap();
    let sluice = Sluice::start(&dir.path().join("data"), extra_args);
    let http = http();
    deploy(
        &http,
        &sluice.url,
        &sample("echo", "python3 -u echo.py", true, &[]),
    )
    .await;
    (dir, sluice, http)
}

/// Waits until `receiver` has had `n` callbacks.
pub async fn callbacks(receiver: &Receiver, n: usize) {
    eventually("the callbacks", || async {
        (receiver.count() >= n).then_some(())
    })
    .await;
}

/// Deploying a function with `label: value` is refused with a 400 that names the label.
pub async fn bad_label_is_refused(http: &reqwest::Client, url: &str, label: &str, value: &str) {
    let bad = sample("bad", "cat", false, &[(label, value)]);
    let r = http
        .post(format!("{url}/system/functions"))
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains(label));
}

impl Sluice {
    /// Runs `sluice <args>` that says nothing when it is up (`sluice autoscaler`), with its log
    /// in `log` and the test admin's credentials; the caller waits for it (its health endpoint).
    pub fn spawn_quiet(args: &[&str], log: &Path) -> Self {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(args)
            .env("SLUICE_LOG", "info")
            .env("SLUICE_ADMIN_USER", ADMIN_USER)
            .env("SLUICE_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("sluice starts");
        Self {
            url: String::new(),
            child,
        }
    }

    /// How it exited, if it has.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}
