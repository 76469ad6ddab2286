//! The classic watchdog: a fork-per-request function's requests, served from inside Sluice (a
//! local replica) or by `sluice watchdog` in the function's container (`container.rs`).
//!
//! Follows OpenFaaS's classic watchdog: the request body goes to the command's stdin, stdout is
//! the response body, request metadata arrives as `Http_Method`, `Http_Path`, `Http_Query`,
//! `Http_ContentLength` and one `Http_<Header>` per header (Go-canonical name, `-` as `_`). A
//! non-zero exit is a 500 (stderr goes to the logs), running past `exec_timeout` a 504, and more
//! than `max_inflight` runs at once a 429. Each run is logged as the classic watchdog logs it:
//! `Forking fprocess.` as it starts, `Wrote N Bytes - Duration: S.SSSSSSs` when it succeeded.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sluice_core::PLATFORM_ERROR_HEADER;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::logs::{LogBuffer, LogSink, pump_lines};
use crate::spec::RunSpec;
use crate::sys;

/// Largest request body or stdout one classic run of a local replica takes (the gateway's
/// default body limit).
pub(crate) const MAX_IO_BYTES: usize = 16 * 1024 * 1024;

/// A classic function's request handler: each request forks the command. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Classic {
    spec: Arc<RunSpec>,
    /// Where the command's stderr and the watchdog's words about a run go.
    logs: LogSink,
    inflight: Option<Arc<Semaphore>>,
    /// Set in every run's environment after the request's own variables (a local replica's:
    /// the provider's run marker).
    extra_env: Arc<[(String, String)]>,
    /// Largest request body one run takes, and largest output it may write.
    max_io_bytes: usize,
    /// `content_type` from the function's environment: the type of every response.
    content_type: Option<HeaderValue>,
}

impl Classic {
    pub(crate) fn new(
        spec: Arc<RunSpec>,
        logs: LogSink,
        extra_env: Vec<(String, String)>,
        max_io_bytes: usize,
    ) -> Self {
        // The program's path, found once: every run is then a `posix_spawn` of a path.
        let spec = match sys::resolve_program(&spec) {
            Some(program) => {
                let mut resolved = RunSpec::clone(&spec);
                resolved.argv[0] = program;
                Arc::new(resolved)
            }
            None => spec,
        };
        let inflight = (spec.max_inflight > 0).then(|| Arc::new(Semaphore::new(spec.max_inflight)));
        let content_type = spec
            .env
            .get("content_type")
            .and_then(|v| HeaderValue::from_str(v).ok());
        Self {
            spec,
            logs,
            inflight,
            extra_env: extra_env.into(),
            max_io_bytes,
            content_type,
        }
    }
}

/// Serves one classic replica on `listener` until `cancel`, then finishes in-flight runs.
pub(crate) async fn serve(
    listener: TcpListener,
    spec: Arc<RunSpec>,
    logs: Arc<LogBuffer>,
    instance: String,
    run_id: Arc<str>,
    cancel: CancellationToken,
) {
    let logs = LogSink::Ring {
        buffer: logs,
        instance: instance.into(),
    };
    let marker = vec![(sys::RUN_MARKER.to_owned(), run_id.to_string())];
    let classic = Classic::new(spec, logs, marker, MAX_IO_BYTES);
    let app = axum::Router::new().fallback(handle).with_state(classic);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "classic watchdog stopped with an error");
    }
}

async fn handle(State(classic): State<Classic>, req: Request) -> Response {
    classic.handle(req).await
}

/// Go's `CanonicalMIMEHeaderKey`: `x-call-id` → `X-Call-Id`.
fn canonical_header(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

fn text(status: StatusCode, body: String) -> Response {
    (status, body).into_response()
}

/// A response the watchdog makes itself (not the function's output), marked as the platform's.
pub(crate) fn platform(status: StatusCode, code: &'static str, body: String) -> Response {
    let mut r = text(status, body);
    r.headers_mut()
        .insert(PLATFORM_ERROR_HEADER, HeaderValue::from_static(code));
    r
}

/// The answer past `max_inflight` requests at once.
pub(crate) fn concurrency_limited() -> Response {
    let mut response = platform(
        StatusCode::TOO_MANY_REQUESTS,
        "concurrency_limit",
        "Concurrent request limit exceeded.\n".into(),
    );
    // A slot frees as soon as one run ends: ask the client (or the queue worker's retry) to
    // come back shortly.
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

impl Classic {
    /// Runs the command for one request and makes its response.
    pub(crate) async fn handle(&self, req: Request) -> Response {
        let _permit = match &self.inflight {
            None => None,
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return concurrency_limited(),
            },
        };
        let (parts, body) = req.into_parts();
        let body = match axum::body::to_bytes(body, self.max_io_bytes).await {
            Ok(b) => b,
            Err(e) => {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("reading request body: {e}\n"),
                );
            }
        };
        // Headers first, then the request's own variables, so a header named `Method` or `Path`
        // cannot forge `Http_Method` or `Http_Path` (the last value set wins, as in OpenFaaS).
        let mut env: Vec<(String, String)> = Vec::with_capacity(parts.headers.len() + 4);
        for name in parts.headers.keys() {
            if let Some(v) = parts.headers.get(name) {
                let key = format!("Http_{}", canonical_header(name.as_str()).replace('-', "_"));
                env.push((key, String::from_utf8_lossy(v.as_bytes()).into_owned()));
            }
        }
        env.push(("Http_Method".into(), parts.method.to_string()));
        env.push(("Http_Path".into(), parts.uri.path().to_owned()));
        env.push(("Http_ContentLength".into(), body.len().to_string()));
        env.push((
            "Http_Query".into(),
            parts.uri.query().unwrap_or_default().to_owned(),
        ));
        env.extend(self.extra_env.iter().cloned());
        let started = tokio::time::Instant::now();
        // The classic watchdog's own lines, which people grep a function's logs for.
        self.logs.push(FORKING.to_owned());
        let outcome = run(self, &env, body).await;
        let seconds = started.elapsed().as_secs_f64();
        let mut response = match outcome {
            Ok(stdout) => {
                self.logs.push(wrote(stdout.len(), seconds));
                let mut r = Response::new(Body::from(stdout));
                let content_type = self
                    .content_type
                    .clone()
                    .or_else(|| parts.headers.get(header::CONTENT_TYPE).cloned());
                if let Some(ct) = content_type {
                    r.headers_mut().insert(header::CONTENT_TYPE, ct);
                }
                r
            }
            Err(RunError::Timeout(t)) => platform(
                StatusCode::GATEWAY_TIMEOUT,
                "exec_timeout",
                format!("function exceeded its exec_timeout of {t:?}\n"),
            ),
            Err(RunError::Failed(msg)) => {
                text(StatusCode::INTERNAL_SERVER_ERROR, format!("{msg}\n"))
            }
            Err(RunError::Spawn(msg)) => platform(
                StatusCode::INTERNAL_SERVER_ERROR,
                "spawn_failed",
                format!("{msg}\n"),
            ),
        };
        if let Ok(v) = HeaderValue::from_str(&format!("{seconds:.6}")) {
            response.headers_mut().insert("x-duration-seconds", v);
        }
        response
    }
}

/// What OpenFaaS's classic watchdog logs as it starts the command for a request.
const FORKING: &str = "Forking fprocess.";

/// What OpenFaaS's classic watchdog logs once a run succeeded: its output's size and how long it
/// took (Go's `%f`: six decimals).
fn wrote(bytes: usize, seconds: f64) -> String {
    format!("Wrote {bytes} Bytes - Duration: {seconds:.6}s")
}

enum RunError {
    /// Ran past `exec_timeout` and was killed.
    Timeout(Duration),
    /// The command could not be started.
    Spawn(String),
    /// The command failed (non-zero exit, unreadable output).
    Failed(String),
}

async fn run(
    wd: &Classic,
    env: &[(String, String)],
    body: bytes::Bytes,
) -> Result<Vec<u8>, RunError> {
    let spec = &wd.spec;
    let mut cmd = sys::command(spec, env, sys::Lifetime::PerRequest);
    cmd.stdin(std::process::Stdio::piped());
    let mut child = sys::spawn(cmd, &spec.argv[0], spec.workdir.as_deref()).map_err(|msg| {
        wd.logs.push(msg.clone());
        RunError::Spawn(msg)
    })?;
    if let Err(msg) = sys::limit_memory(&child, spec) {
        wd.logs.push(msg.clone());
        sys::signal_group(&child, libc::SIGKILL);
        return Err(RunError::Spawn(msg));
    }
    let stdin = child.stdin.take();
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input closes the pipe early; that is its business.
            let _ = stdin.write_all(&body).await;
        }
    };
    let logs = wd.logs.clone();
    let drain_err = async move {
        if let Some(stderr) = stderr {
            pump_lines(stderr, |line| logs.push(line)).await;
        }
    };
    let max_out = wd.max_io_bytes;
    let collect = async move {
        let mut out = Vec::new();
        if let Some(stdout) = stdout {
            let mut limited = stdout.take(max_out as u64 + 1);
            limited
                .read_to_end(&mut out)
                .await
                .map_err(|e| e.to_string())?;
        }
        if out.len() > max_out {
            return Err(format!(
                "function wrote more than {max_out} bytes to stdout"
            ));
        }
        Ok(out)
    };
    let work = async {
        let out = tokio::join!(feed, drain_err, collect).2;
        let status = child.wait().await.map_err(|e| e.to_string());
        (out, status)
    };
    let (stdout, status) = match tokio::time::timeout(spec.exec_timeout, work).await {
        Ok((Ok(out), Ok(status))) => (out, status),
        Ok((Err(msg), _) | (_, Err(msg))) => {
            sys::signal_group(&child, libc::SIGKILL);
            let _ = child.kill().await;
            wd.logs.push(msg.clone());
            return Err(RunError::Failed(msg));
        }
        Err(_) => {
            sys::signal_group(&child, libc::SIGKILL);
            let _ = child.kill().await;
            wd.logs.push(format!(
                "killed after exec_timeout of {:?}",
                spec.exec_timeout
            ));
            return Err(RunError::Timeout(spec.exec_timeout));
        }
    };
    if status.success() {
        Ok(stdout)
    } else {
        let msg = format!("{} exited with {status}", spec.argv[0]);
        wd.logs.push(msg.clone());
        Err(RunError::Failed(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::{canonical_header, wrote};

    #[test]
    fn runs_are_logged_in_the_classic_watchdogs_words() {
        assert_eq!(wrote(12, 0.004423), "Wrote 12 Bytes - Duration: 0.004423s");
        assert_eq!(wrote(0, 1.5), "Wrote 0 Bytes - Duration: 1.500000s");
    }

    #[test]
    fn headers_are_canonicalised_like_go() {
        assert_eq!(canonical_header("x-call-id"), "X-Call-Id");
        assert_eq!(canonical_header("content-type"), "Content-Type");
        assert_eq!(canonical_header("ACCEPT"), "Accept");
    }
}
