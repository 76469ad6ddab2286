//! `sluice watchdog`: what a function's container image runs, as OpenFaaS images run their
//! watchdog. One function, one process, configured from the environment.
//!
//! - **classic** (default): each request forks `fprocess` with the same code as a local classic
//!   replica (`watchdog.rs`).
//! - **http** (`mode=http`): `fprocess` is started once as a long-running server, probed until
//!   it answers, and every request is proxied to it (method, path, query, end-to-end headers,
//!   body streamed both ways). If it exits the watchdog exits non-zero, as of-watchdog does, and
//!   Kubernetes restarts the container: a restart loop inside the container would hide a
//!   crashing function behind a pod that looks alive, and the kubelet already restarts with
//!   backoff and counts the restarts where operators look.
//! - `GET /_/health` and `GET /_/ready` answer 200 once the function can take requests (classic:
//!   at once; http: once its server answered) and 503 before, and from SIGTERM on. They are not
//!   passed to the function.
//! - On SIGTERM (the caller's `shutdown`), as of-watchdog: report unhealthy at once, keep serving
//!   for `healthcheck_interval` (so the kubelet sees it and the pod leaves its Service before
//!   connections are refused), stop accepting, give in-flight requests up to `write_timeout`,
//!   then stop the function's server (SIGTERM to its process group, SIGKILL after a grace) and
//!   return.
//!
//! Everything is bounded: connections, requests at once (`max_inflight`), request bodies
//! (`max_body_bytes`), the time a request's head (`read_timeout`) and a whole request
//! (`write_timeout`, `exec_timeout`) may take, and the length of a logged line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use sluice_core::config::{FunctionConfig, Mode};
use sluice_core::headers::is_hop_by_hop;
use sluice_core::retry::parse_go_duration;
use sluice_core::{FunctionDeployment, headers};
use tokio::net::TcpListener;
use tokio::process::Child;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::logs::{LogSink, pump_lines};
use crate::runtime::{describe_exit, free_port, terminate, wait_ready};
use crate::spec::RunSpec;
use crate::sys;
use crate::watchdog::{Classic, concurrency_limited, platform};

/// Connections open at once; more are closed as soon as they are accepted. A function's pod is
/// called by gateways and queue workers, each holding a pool of connections to it.
const MAX_CONNECTIONS: usize = 1024;
/// How long the function's output pumps may take to pass on its last lines once it stopped.
const OUTPUT_FLUSH: Duration = Duration::from_secs(1);
/// Where OpenFaaS's watchdogs listen unless `port` says otherwise.
const DEFAULT_PORT: u16 = 8080;

/// How `sluice watchdog` runs its function. [`WatchdogConfig::from_vars`] reads it from the
/// environment as OpenFaaS's watchdogs read theirs; tests build it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogConfig {
    /// `mode`: `http`, or classic (unset, `classic`, `streaming`, `serializing`), as a
    /// deployment's `envVars.mode` is read.
    pub mode: Mode,
    /// `fprocess`, split as a shell would: the function's command, run in the working directory.
    pub argv: Vec<String>,
    /// Where the watchdog listens: `0.0.0.0:<port>` (`port`, default 8080).
    pub listen: SocketAddr,
    /// HTTP mode, `upstream_url`: where the function's server listens (`http://host:port`, a
    /// path prefix allowed). `None`: on a free loopback port the watchdog picks and passes to
    /// the function as `PORT`.
    pub upstream_url: Option<String>,
    /// HTTP mode, `ready_path`: what the function's server must answer (below 500) before the
    /// watchdog reports ready. Default `/_/health`, as for a local replica.
    pub ready_path: String,
    /// `exec_timeout`: how long one run (classic) or one proxied exchange, response body
    /// included (http), may take. Default 5 minutes, a local function's default.
    pub exec_timeout: Duration,
    /// `read_timeout`: how long a request's head may take to arrive (also how long a kept-alive
    /// connection may stay idle). Default 10 seconds, of-watchdog's.
    pub read_timeout: Duration,
    /// `write_timeout`: how long a request may take from its head to the head of its response;
    /// also how long in-flight requests get to finish once the watchdog stops accepting.
    /// Default: `exec_timeout`.
    pub write_timeout: Duration,
    /// `healthcheck_interval`: how long after SIGTERM the watchdog reports unhealthy while still
    /// serving, before it stops accepting connections. Default 5 seconds; make it at least the
    /// readiness probe's period. (of-watchdog's default is `write_timeout`.)
    pub healthcheck_interval: Duration,
    /// `max_inflight`: requests handled at once in either mode (0: no limit); more are answered
    /// 429. Default 100, as for a local classic replica.
    pub max_inflight: usize,
    /// `max_body_bytes`: the largest request body (413 beyond); in classic mode also the
    /// largest output of one run. Default 16 MiB, the gateway's limit.
    pub max_body_bytes: usize,
    /// How long the function's server gets to exit after SIGTERM before it is killed (5 s).
    pub stop_grace: Duration,
    /// The function's environment: in a container it is the function's own, so the whole of it
    /// is passed on (a local replica gets only a short allow-list of Sluice's).
    pub env: BTreeMap<String, String>,
}

/// Why `sluice watchdog` could not start or stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
    /// A setting is missing or wrong; the message names it.
    #[error("{0}")]
    Config(String),
    /// The function's command could not be started.
    #[error("{0}")]
    Spawn(String),
    /// HTTP mode: the function's server exited. The container should be restarted.
    #[error("the function's server {0}; the watchdog stops with it")]
    FunctionExited(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn bad(msg: String) -> WatchdogError {
    WatchdogError::Config(msg)
}

impl WatchdogConfig {
    /// Reads the settings from this process's environment (variables whose name or value is not
    /// UTF-8 are left out, of the settings and of the function's environment).
    pub fn from_env() -> Result<Self, WatchdogError> {
        Self::from_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// Reads the settings from `vars`, the environment the function is to run with, or says
    /// which one is wrong.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, WatchdogError> {
        let env: BTreeMap<String, String> = vars.into_iter().collect();
        let get = |key: &str| env.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        let command =
            get("fprocess").ok_or_else(|| {
                bad("fprocess is not set: it is the function's command, as for OpenFaaS's watchdog \
                 (e.g. fprocess=\"python3 index.py\")"
                .into())
            })?;
        let argv = shlex::split(command)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad(format!("fprocess {command:?} has unbalanced quotes")))?;
        // `mode`, `exec_timeout` and `max_inflight` mean here what they mean in a deployment's
        // envVars (which is where they come from): one parser for both.
        let deployment = FunctionDeployment {
            env_vars: ["mode", "exec_timeout", "max_inflight"]
                .into_iter()
                .filter_map(|k| Some((k.to_owned(), env.get(k)?.clone())))
                .collect(),
            ..FunctionDeployment::default()
        };
        let function = FunctionConfig::from_deployment(&deployment)
            .map_err(|e| bad(e.0.replacen("envVars.", "", 1)))?;
        let duration = |key: &str, zero_ok: bool| -> Result<Option<Duration>, WatchdogError> {
            get(key)
                .map(|v| {
                    parse_go_duration(v)
                        .filter(|d| zero_ok || !d.is_zero())
                        .ok_or_else(|| {
                            bad(format!(
                                "{key} {v:?} is not a duration such as \"10s\" or \"2m\""
                            ))
                        })
                })
                .transpose()
        };
        let number = |key: &str| -> Result<Option<u64>, WatchdogError> {
            get(key)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| bad(format!("{key} {v:?} is not a whole number")))
                })
                .transpose()
        };
        let port = match number("port")? {
            None => DEFAULT_PORT,
            Some(p) => u16::try_from(p).map_err(|_| bad(format!("port {p} is not a TCP port")))?,
        };
        let upstream_url = get("upstream_url").map(check_upstream).transpose()?;
        let ready_path = get("ready_path").unwrap_or("/_/health").to_owned();
        if !ready_path.starts_with('/') || ready_path.chars().any(char::is_whitespace) {
            return Err(bad(format!(
                "ready_path {ready_path:?} must be a path starting with '/'"
            )));
        }
        let exec_timeout = function.exec_timeout.unwrap_or(Duration::from_secs(300));
        let max_body_bytes = match number("max_body_bytes")? {
            None => crate::watchdog::MAX_IO_BYTES,
            Some(n) => usize::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| bad(format!("max_body_bytes {n} is not a size above zero")))?,
        };
        Ok(Self {
            mode: function.mode,
            argv,
            listen: SocketAddr::from(([0, 0, 0, 0], port)),
            upstream_url,
            ready_path,
            exec_timeout,
            read_timeout: duration("read_timeout", false)?.unwrap_or(Duration::from_secs(10)),
            write_timeout: duration("write_timeout", false)?.unwrap_or(exec_timeout),
            healthcheck_interval: duration("healthcheck_interval", true)?
                .unwrap_or(Duration::from_secs(5)),
            max_inflight: function.max_inflight,
            max_body_bytes,
            stop_grace: Duration::from_secs(5),
            env,
        })
    }

    /// The command as the shared spawning and classic code take it.
    fn run_spec(&self) -> RunSpec {
        RunSpec {
            mode: self.mode,
            argv: self.argv.clone(),
            env: self.env.clone(),
            workdir: None,
            exec_timeout: self.exec_timeout,
            max_inflight: self.max_inflight,
            readiness_path: self.ready_path.clone(),
            concurrency: None,
            // In a container, the orchestrator limits memory and mounts the secrets
            // (/var/openfaas/secrets).
            memory_limit: None,
            secrets: Vec::new(),
        }
    }
}

/// `upstream_url` as the proxy uses it: `http://host:port[/prefix]`, without a trailing `/`.
fn check_upstream(raw: &str) -> Result<String, WatchdogError> {
    let url = reqwest::Url::parse(raw)
        .map_err(|e| bad(format!("upstream_url {raw:?} is not a URL: {e}")))?;
    if url.scheme() != "http" || url.host_str().is_none() || url.query().is_some() {
        return Err(bad(format!(
            "upstream_url {raw:?} must be an http:// URL with a host and no query, such as \
             http://127.0.0.1:5000"
        )));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// Whether the function can take requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// HTTP mode: its server has not answered yet.
    Starting,
    Ready,
    /// SIGTERM came: unhealthy, going away.
    Draining,
}

/// Runs the function described by `config`, serving on `listener` until `shutdown` (SIGTERM),
/// then drains and stops it (see the module's documentation). Returns an error if the function
/// cannot be started or, in HTTP mode, its server exits on its own.
pub async fn run_watchdog(
    listener: TcpListener,
    config: WatchdogConfig,
    shutdown: CancellationToken,
) -> Result<(), WatchdogError> {
    let (phase_tx, phase) = watch::channel(Phase::Starting);
    let output = TaskTracker::new();
    let spec = Arc::new(config.run_spec());
    let (function, server) = match config.mode {
        Mode::Classic => {
            phase_tx.send_replace(Phase::Ready);
            let classic = Classic::new(spec, LogSink::Stderr, Vec::new(), config.max_body_bytes);
            (Function::Classic(classic), None)
        }
        Mode::Http => {
            let (server, proxy) = start_server(&config, &spec, &output, phase.clone()).await?;
            (Function::Http(Arc::new(proxy)), Some(server))
        }
    };
    let app = App {
        phase: phase.clone(),
        function,
        max_body_bytes: config.max_body_bytes,
        write_timeout: config.write_timeout,
    };
    let connections = Connections::start(listener, router(app), config.read_timeout);
    tracing::info!(mode = ?config.mode, command = ?config.argv, "watchdog serving");

    // Until SIGTERM: an HTTP-mode function's server is probed until it answers, and watched.
    let mut server = server;
    let died = match &mut server {
        None => {
            shutdown.cancelled().await;
            None
        }
        Some(server) => {
            let ready = async {
                wait_ready(server.probe, &config.ready_path, |msg| {
                    tracing::warn!("{msg}")
                })
                .await;
                phase_tx.send_replace(Phase::Ready);
                tracing::info!("the function's server is ready");
                std::future::pending::<()>().await;
            };
            tokio::select! {
                status = server.child.wait() => Some(describe_exit(status)),
                () = ready => None,
                () = shutdown.cancelled() => None,
            }
        }
    };
    if let Some(how) = died {
        tracing::error!(exit = %how, "the function's server exited; stopping");
        phase_tx.send_replace(Phase::Draining);
        connections.stop(Duration::ZERO).await;
        flush(output).await;
        return Err(WatchdogError::FunctionExited(how));
    }

    phase_tx.send_replace(Phase::Draining);
    tracing::info!(
        healthcheck_interval = ?config.healthcheck_interval,
        "shutting down: unhealthy now, no new connections after the healthcheck interval"
    );
    let waiting = tokio::time::sleep(config.healthcheck_interval);
    match &mut server {
        // A server that exits meanwhile is reaped here and not signalled later.
        Some(server) => {
            tokio::select! {
                () = waiting => {}
                _ = server.child.wait() => {}
            }
        }
        None => waiting.await,
    }
    tracing::info!(grace = ?config.write_timeout, "no new connections; finishing in-flight requests");
    connections.stop(config.write_timeout).await;
    if let Some(mut server) = server {
        terminate(&mut server.child, config.stop_grace).await;
    }
    flush(output).await;
    tracing::info!("stopped");
    Ok(())
}

/// Lets the output pumps pass on the function's last lines.
async fn flush(output: TaskTracker) {
    output.close();
    let _ = tokio::time::timeout(OUTPUT_FLUSH, output.wait()).await;
}

/// HTTP mode: the function's running server.
#[derive(Debug)]
struct Server {
    child: Child,
    /// Where it is probed for readiness.
    probe: SocketAddr,
}

/// Starts the function's server (its output to this process's stdout and stderr) and makes the
/// proxy to it.
async fn start_server(
    config: &WatchdogConfig,
    spec: &RunSpec,
    output: &TaskTracker,
    phase: watch::Receiver<Phase>,
) -> Result<(Server, Proxy), WatchdogError> {
    let mut extra_env = Vec::new();
    let (base, probe) = match &config.upstream_url {
        None => {
            let port = free_port().await?;
            extra_env.push(("PORT".to_owned(), port.to_string()));
            (
                format!("http://127.0.0.1:{port}"),
                SocketAddr::from(([127, 0, 0, 1], port)),
            )
        }
        Some(url) => {
            let parsed = reqwest::Url::parse(url).map_err(|e| bad(format!("upstream_url: {e}")))?;
            let host = parsed
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']']);
            let port = parsed.port_or_known_default().unwrap_or(80);
            let probe = tokio::net::lookup_host((host, port))
                .await
                .ok()
                .and_then(|mut found| found.next())
                .ok_or_else(|| bad(format!("upstream_url {url:?}: {host:?} does not resolve")))?;
            (url.clone(), probe)
        }
    };
    // The whole environment (spec.env is all of it) plus PORT: see `WatchdogConfig::env`.
    let command = sys::command(spec, &extra_env, sys::Lifetime::DiesWithSluice);
    let mut child = sys::spawn(command, &spec.argv[0], None).map_err(WatchdogError::Spawn)?;
    if let Some(out) = child.stdout.take() {
        output.spawn(async move { pump_lines(out, |l| LogSink::Stdout.push(l)).await });
    }
    if let Some(err) = child.stderr.take() {
        output.spawn(async move { pump_lines(err, |l| LogSink::Stderr.push(l)).await });
    }
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| WatchdogError::Io(std::io::Error::other(e)))?;
    let proxy = Proxy {
        client,
        base: base.into(),
        timeout: config.exec_timeout.min(config.write_timeout),
        max_body_bytes: config.max_body_bytes,
        inflight: (config.max_inflight > 0).then(|| Arc::new(Semaphore::new(config.max_inflight))),
        phase,
    };
    Ok((Server { child, probe }, proxy))
}

/// What serves the function's requests.
#[derive(Debug, Clone)]
enum Function {
    Classic(Classic),
    Http(Arc<Proxy>),
}

#[derive(Debug, Clone)]
struct App {
    phase: watch::Receiver<Phase>,
    function: Function,
    max_body_bytes: usize,
    write_timeout: Duration,
}

fn router(app: App) -> axum::Router {
    axum::Router::new()
        .route("/_/health", axum::routing::get(health))
        .route("/_/ready", axum::routing::get(health))
        .fallback(invoke)
        .with_state(app)
}

async fn health(State(app): State<App>) -> Response {
    let phase = *app.phase.borrow();
    match phase {
        Phase::Ready => (StatusCode::OK, "OK\n").into_response(),
        Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response(),
        Phase::Draining => (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response(),
    }
}

fn too_large(limit: usize) -> Response {
    platform(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request body is larger than max_body_bytes ({limit})\n"),
    )
}

async fn invoke(State(app): State<App>, req: Request) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_body_bytes as u64) {
        return too_large(app.max_body_bytes);
    }
    let handled = async {
        match &app.function {
            Function::Classic(classic) => classic.handle(req).await,
            Function::Http(proxy) => proxy.handle(req).await,
        }
    };
    match tokio::time::timeout(app.write_timeout, handled).await {
        Ok(response) => response,
        Err(_) => platform(
            StatusCode::GATEWAY_TIMEOUT,
            "write_timeout",
            format!(
                "no response within write_timeout of {:?}\n",
                app.write_timeout
            ),
        ),
    }
}

/// HTTP mode: requests to the function's server.
#[derive(Debug)]
struct Proxy {
    client: reqwest::Client,
    /// `upstream_url`, without a trailing `/`.
    base: Arc<str>,
    /// For the whole exchange, response body included.
    timeout: Duration,
    max_body_bytes: usize,
    inflight: Option<Arc<Semaphore>>,
    phase: watch::Receiver<Phase>,
}

/// Headers that go on to the function, and back: end-to-end ones. `Content-Length` too, since
/// the body streams through unchanged (and servers that read only `Content-Length` bodies, as
/// Python's `http.server`, need it); `Expect` stays here, where it was answered.
fn end_to_end(name: &HeaderName) -> bool {
    let name = name.as_str();
    (!is_hop_by_hop(name) || name == "content-length") && name != "expect"
}

impl Proxy {
    async fn handle(&self, req: Request) -> Response {
        let _permit = match &self.inflight {
            None => None,
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return concurrency_limited(),
            },
        };
        // A request before the server first answered waits for it (within write_timeout).
        let mut phase = self.phase.clone();
        if phase.wait_for(|p| *p != Phase::Starting).await.is_err() {
            return platform(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the function's server is not running\n".into(),
            );
        }
        let (parts, body) = req.into_parts();
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let url = format!("{}{target}", self.base);
        // Counted as it streams: a body without Content-Length (chunked) is held to the limit too.
        let over = Arc::new(AtomicBool::new(false));
        let (limit, flag) = (self.max_body_bytes, over.clone());
        let mut seen = 0usize;
        let body = body.into_data_stream().map(move |chunk| {
            let chunk = chunk.map_err(std::io::Error::other)?;
            seen = seen.saturating_add(chunk.len());
            if seen > limit {
                flag.store(true, Ordering::Relaxed);
                return Err(std::io::Error::other("request body over max_body_bytes"));
            }
            Ok(chunk)
        });
        let mut upstream = self
            .client
            .request(parts.method, url)
            .timeout(self.timeout)
            .body(reqwest::Body::wrap_stream(body));
        for (name, value) in parts.headers.iter().filter(|(k, _)| end_to_end(k)) {
            upstream = upstream.header(name, value);
        }
        let started = tokio::time::Instant::now();
        let response = match upstream.send().await {
            Ok(response) => response,
            Err(_) if over.load(Ordering::Relaxed) => return too_large(limit),
            Err(e) if e.is_timeout() => {
                return platform(
                    StatusCode::GATEWAY_TIMEOUT,
                    "exec_timeout",
                    format!("function exceeded its exec_timeout of {:?}\n", self.timeout),
                );
            }
            Err(e) => {
                // Without the URL: its query string is the client's.
                tracing::warn!(error = %e.without_url(), "the function's server cannot be reached");
                return platform(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreachable",
                    "the function's server cannot be reached\n".into(),
                );
            }
        };
        let mut out = Response::builder().status(response.status());
        for (name, value) in response.headers().iter().filter(|(k, _)| end_to_end(k)) {
            out = out.header(name, value);
        }
        if let Ok(v) = HeaderValue::from_str(&format!("{:.6}", started.elapsed().as_secs_f64())) {
            out = out.header(headers::DURATION_SECONDS, v);
        }
        out.body(Body::from_stream(response.bytes_stream()))
            .unwrap_or_else(|e| {
                platform(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unreadable",
                    format!("the function's response cannot be passed on: {e}\n"),
                )
            })
    }
}

/// The watchdog's listener and connections, stopped in two steps: no new connections, then
/// in-flight requests given a grace.
#[derive(Debug)]
struct Connections {
    stop_accepting: CancellationToken,
    accepting: tokio::task::JoinHandle<hyper_util::server::graceful::GracefulShutdown>,
    /// Cancelled once the grace is over: connections still open are dropped.
    abort: CancellationToken,
}

impl Connections {
    /// Serves `app` on `listener`: each connection with hyper's HTTP/1 server, its request heads
    /// within `read_timeout`, at most [`MAX_CONNECTIONS`] at once.
    fn start(listener: TcpListener, app: axum::Router, read_timeout: Duration) -> Self {
        let stop_accepting = CancellationToken::new();
        let abort = CancellationToken::new();
        let (stop, kill) = (stop_accepting.clone(), abort.clone());
        let accepting = tokio::spawn(async move {
            let graceful = hyper_util::server::graceful::GracefulShutdown::new();
            let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(read_timeout)
                .keep_alive(true);
            loop {
                let stream = tokio::select! {
                    () = stop.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(error) => {
                            // Out of file descriptors, say: wait a moment rather than spin.
                            tracing::warn!(%error, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(
                        limit = MAX_CONNECTIONS,
                        "too many connections; closing a new one"
                    );
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let app = app.clone();
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    app.clone().oneshot(request)
                });
                let connection =
                    graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                let kill = kill.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        result = connection => if let Err(error) = result {
                            tracing::debug!(%error, "connection ended with an error");
                        },
                        () = kill.cancelled() => {}
                    }
                    drop(slot);
                });
            }
            graceful
        });
        Self {
            stop_accepting,
            accepting,
            abort,
        }
    }

    /// Stops accepting, lets in-flight requests finish within `grace` (idle connections are
    /// closed at once), then drops what is left.
    async fn stop(self, grace: Duration) {
        self.stop_accepting.cancel();
        if let Ok(graceful) = self.accepting.await
            && tokio::time::timeout(grace, graceful.shutdown())
                .await
                .is_err()
        {
            tracing::warn!(
                ?grace,
                "in-flight requests did not finish in time; cutting them off"
            );
        }
        self.abort.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<WatchdogConfig, String> {
        WatchdogConfig::from_vars(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_openfaas_like() {
        let c = config(&[("fprocess", "sha512sum"), ("PATH", "/bin")]).unwrap();
        assert_eq!(c.mode, Mode::Classic);
        assert_eq!(c.argv, ["sha512sum"]);
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.upstream_url, None);
        assert_eq!(c.ready_path, "/_/health");
        assert_eq!(c.exec_timeout, Duration::from_secs(300));
        assert_eq!(c.write_timeout, c.exec_timeout);
        assert_eq!(c.read_timeout, Duration::from_secs(10));
        assert_eq!(c.healthcheck_interval, Duration::from_secs(5));
        assert_eq!(c.max_inflight, sluice_core::config::DEFAULT_MAX_INFLIGHT);
        assert_eq!(c.max_body_bytes, 16 * 1024 * 1024);
        // The function gets the whole environment, settings included.
        assert_eq!(c.env.get("PATH").map(String::as_str), Some("/bin"));
        assert_eq!(c.env.get("fprocess").map(String::as_str), Some("sha512sum"));
    }

    #[test]
    fn settings_are_read() {
        let c = config(&[
            ("fprocess", "python3 -u 'my server.py'"),
            ("mode", "http"),
            ("port", "9000"),
            ("upstream_url", "http://127.0.0.1:5000/"),
            ("ready_path", "/ready"),
            ("exec_timeout", "2m"),
            ("read_timeout", "3s"),
            ("write_timeout", "1m30s"),
            ("healthcheck_interval", "0s"),
            ("max_inflight", "0"),
            ("max_body_bytes", "1024"),
        ])
        .unwrap();
        assert_eq!(c.mode, Mode::Http);
        assert_eq!(c.argv, ["python3", "-u", "my server.py"]);
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.upstream_url.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(c.ready_path, "/ready");
        assert_eq!(c.exec_timeout, Duration::from_secs(120));
        assert_eq!(c.read_timeout, Duration::from_secs(3));
        assert_eq!(c.write_timeout, Duration::from_secs(90));
        assert_eq!(c.healthcheck_interval, Duration::ZERO);
        assert_eq!(c.max_inflight, 0);
        assert_eq!(c.max_body_bytes, 1024);
        for streaming in ["streaming", "serializing", "classic", ""] {
            let c = config(&[("fprocess", "cat"), ("mode", streaming)]).unwrap();
            assert_eq!(c.mode, Mode::Classic, "{streaming:?}");
        }
    }

    #[test]
    fn wrong_settings_are_named() {
        for (vars, needle) in [
            (vec![], "fprocess is not set"),
            (vec![("fprocess", "  ")], "fprocess is not set"),
            (vec![("fprocess", "echo 'x")], "unbalanced quotes"),
            (
                vec![("mode", "afterburner")],
                "mode \"afterburner\" is not supported",
            ),
            (vec![("exec_timeout", "soon")], "exec_timeout \"soon\""),
            (vec![("max_inflight", "-1")], "max_inflight \"-1\""),
            (vec![("port", "70000")], "port 70000"),
            (vec![("port", "http")], "port \"http\""),
            (vec![("read_timeout", "0s")], "read_timeout \"0s\""),
            (vec![("write_timeout", "1 minute")], "write_timeout"),
            (vec![("healthcheck_interval", "x")], "healthcheck_interval"),
            (vec![("max_body_bytes", "0")], "max_body_bytes 0"),
            (vec![("upstream_url", "127.0.0.1:5000")], "upstream_url"),
            (
                vec![("upstream_url", "https://example.com")],
                "must be an http:// URL",
            ),
            (vec![("ready_path", "health")], "ready_path"),
        ] {
            let mut vars = vars;
            if !vars.iter().any(|(k, _)| *k == "fprocess") && needle != "fprocess is not set" {
                vars.push(("fprocess", "cat"));
            }
            let err = config(&vars).unwrap_err();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn only_end_to_end_headers_cross() {
        for (name, crosses) in [
            ("content-type", true),
            ("content-length", true),
            ("x-call-id", true),
            ("connection", false),
            ("transfer-encoding", false),
            ("host", false),
            ("expect", false),
        ] {
            assert_eq!(
                end_to_end(&HeaderName::from_static(name)),
                crosses,
                "{name}"
            );
        }
    }
}
