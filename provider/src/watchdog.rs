//! The classic watchdog: one replica of a fork-per-request function, served from inside Sluice.
//!
//! Follows OpenFaaS's classic watchdog: the request body goes to the command's stdin, stdout is
//! the response body, request metadata arrives as `Http_Method`, `Http_Path`, `Http_Query`,
//! `Http_ContentLength` and one `Http_<Header>` per header (Go-canonical name, `-` as `_`). A
//! non-zero exit is a 500 (stderr goes to the logs), running past `exec_timeout` a 504, and more
//! than `max_inflight` runs at once a 429.

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

use crate::logs::{LogBuffer, pump_lines};
use crate::spec::RunSpec;
use crate::sys;

/// Largest request body or stdout one classic run takes (the gateway's default body limit).
const MAX_IO_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
struct Watchdog {
    spec: Arc<RunSpec>,
    logs: Arc<LogBuffer>,
    instance: Arc<str>,
    inflight: Option<Arc<Semaphore>>,
    run_id: Arc<str>,
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
    let inflight = (spec.max_inflight > 0).then(|| Arc::new(Semaphore::new(spec.max_inflight)));
    let state = Watchdog {
        spec,
        logs,
        instance: instance.into(),
        inflight,
        run_id,
    };
    let app = axum::Router::new().fallback(handle).with_state(state);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
    {
        tracing::warn!(error = %e, "classic watchdog stopped with an error");
    }
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
fn platform(status: StatusCode, code: &'static str, body: String) -> Response {
    let mut r = text(status, body);
    r.headers_mut()
        .insert(PLATFORM_ERROR_HEADER, HeaderValue::from_static(code));
    r
}

async fn handle(State(wd): State<Watchdog>, req: Request) -> Response {
    let _permit = match &wd.inflight {
        None => None,
        Some(sem) => match sem.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                let mut response = platform(
                    StatusCode::TOO_MANY_REQUESTS,
                    "concurrency_limit",
                    "Concurrent request limit exceeded.\n".into(),
                );
                // A slot frees as soon as one run ends: ask the client (or the queue
                // worker's retry) to come back shortly.
                response.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    HeaderValue::from_static("1"),
                );
                return response;
            }
        },
    };
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_IO_BYTES).await {
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
    env.push((sys::RUN_MARKER.into(), wd.run_id.to_string()));
    let started = tokio::time::Instant::now();
    let outcome = run(&wd, &env, body).await;
    let seconds = started.elapsed().as_secs_f64();
    let mut response = match outcome {
        Ok(stdout) => {
            let mut r = Response::new(Body::from(stdout));
            let content_type = wd
                .spec
                .env
                .get("content_type")
                .and_then(|v| HeaderValue::from_str(v).ok())
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
        Err(RunError::Failed(msg)) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{msg}\n")),
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

enum RunError {
    /// Ran past `exec_timeout` and was killed.
    Timeout(Duration),
    /// The command could not be started.
    Spawn(String),
    /// The command failed (non-zero exit, unreadable output).
    Failed(String),
}

async fn run(
    wd: &Watchdog,
    env: &[(String, String)],
    body: bytes::Bytes,
) -> Result<Vec<u8>, RunError> {
    let spec = &wd.spec;
    let mut cmd = sys::command(spec, env);
    cmd.stdin(std::process::Stdio::piped());
    let mut child = sys::spawn(cmd, &spec.argv[0], spec.workdir.as_deref()).map_err(|msg| {
        wd.logs.push(&wd.instance, msg.clone());
        RunError::Spawn(msg)
    })?;
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
    let instance = wd.instance.clone();
    let drain_err = async move {
        if let Some(stderr) = stderr {
            pump_lines(stderr, |line| logs.push(&instance, line)).await;
        }
    };
    let collect = async move {
        let mut out = Vec::new();
        if let Some(stdout) = stdout {
            let mut limited = stdout.take(MAX_IO_BYTES as u64 + 1);
            limited
                .read_to_end(&mut out)
                .await
                .map_err(|e| e.to_string())?;
        }
        if out.len() > MAX_IO_BYTES {
            return Err(format!(
                "function wrote more than {MAX_IO_BYTES} bytes to stdout"
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
            wd.logs.push(&wd.instance, msg.clone());
            return Err(RunError::Failed(msg));
        }
        Err(_) => {
            sys::signal_group(&child, libc::SIGKILL);
            let _ = child.kill().await;
            wd.logs.push(
                &wd.instance,
                format!("killed after exec_timeout of {:?}", spec.exec_timeout),
            );
            return Err(RunError::Timeout(spec.exec_timeout));
        }
    };
    if status.success() {
        Ok(stdout)
    } else {
        let msg = format!("{} exited with {status}", spec.argv[0]);
        wd.logs.push(&wd.instance, msg.clone());
        Err(RunError::Failed(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::canonical_header;

    #[test]
    fn headers_are_canonicalised_like_go() {
        assert_eq!(canonical_header("x-call-id"), "X-Call-Id");
        assert_eq!(canonical_header("content-type"), "Content-Type");
        assert_eq!(canonical_header("ACCEPT"), "Accept");
    }
}
