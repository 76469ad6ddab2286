//! The small servers the benchmark needs: the echo function Sluice runs, a server that spawns a
//! command per request (classic mode's baseline), and the receiver callbacks are sent to.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Notify;

type Answer = Response<Full<Bytes>>;

/// Serves `handle` on `listener`, one task per connection, for ever.
pub(crate) async fn serve<H, F>(listener: TcpListener, handle: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Answer> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = handle(req);
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(status: StatusCode, body: Bytes) -> Answer {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
}

/// `sluice-bench echo`: the function under test, in HTTP mode (a long-running server on
/// `$PORT`). Answers every request with its body; `/sleep?ms=N` first waits N ms.
pub(crate) async fn echo() -> anyhow::Result<()> {
    let port: u16 = std::env::var("PORT")
        .map_err(|_| {
            anyhow::anyhow!("PORT is not set: Sluice sets it for a function in HTTP mode")
        })?
        .parse()?;
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    serve(listener, echo_handler).await;
    Ok(())
}

async fn echo_handler(req: Request<Incoming>) -> Answer {
    if req.uri().path() == "/sleep" {
        let ms = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("ms="))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    match req.into_body().collect().await {
        Ok(body) => answer(StatusCode::OK, body.to_bytes()),
        Err(_) => answer(StatusCode::BAD_REQUEST, Bytes::new()),
    }
}

/// A server that runs `command` once per request, body on its stdin, its stdout the answer:
/// what classic mode does, with nothing else in the way.
pub(crate) async fn spawn_per_request(command: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, move |req: Request<Incoming>| async move {
        let Ok(body) = req.into_body().collect().await else {
            return answer(StatusCode::BAD_REQUEST, Bytes::new());
        };
        match run_once(command, body.to_bytes()).await {
            Ok(out) => answer(StatusCode::OK, out),
            Err(_) => answer(StatusCode::INTERNAL_SERVER_ERROR, Bytes::new()),
        }
    }));
    Ok(addr)
}

async fn run_once(command: &str, input: Bytes) -> std::io::Result<Bytes> {
    let mut child = tokio::process::Command::new(command)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let write = async move {
        stdin.write_all(&input).await?;
        drop(stdin);
        Ok::<_, std::io::Error>(())
    };
    let (written, out) = tokio::join!(write, child.wait_with_output());
    written?;
    Ok(out?.stdout.into())
}

/// Where callbacks arrive: counts distinct call ids.
#[derive(Debug, Default)]
pub(crate) struct Callbacks {
    seen: Mutex<HashSet<String>>,
    arrived: Notify,
}

impl Callbacks {
    /// Starts a receiver on a free port; returns it and its URL.
    pub(crate) async fn start() -> anyhow::Result<(Arc<Self>, String)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/callback", listener.local_addr()?);
        let this = Arc::new(Self::default());
        let receiver = this.clone();
        tokio::spawn(serve(listener, move |req: Request<Incoming>| {
            let receiver = receiver.clone();
            async move {
                let id = req
                    .headers()
                    .get("x-call-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let _ = req.into_body().collect().await;
                if let Some(id) = id {
                    receiver.seen.lock().expect("not poisoned").insert(id);
                    receiver.arrived.notify_waiters();
                }
                answer(StatusCode::OK, Bytes::new())
            }
        }));
        Ok((this, url))
    }

    pub(crate) fn count(&self) -> usize {
        self.seen.lock().expect("not poisoned").len()
    }

    /// Waits until `n` distinct calls have called back, or nothing new arrived for `quiet`;
    /// returns how many did.
    pub(crate) async fn wait_for(&self, n: usize, quiet: Duration) -> usize {
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let count = self.count();
            if count >= n {
                return count;
            }
            if tokio::time::timeout(quiet, arrived).await.is_err() {
                return self.count();
            }
        }
    }
}

/// `sluice-bench proxy`: a bare HTTP/1 proxy on `$PORT` to the server at `$UPSTREAM`, bodies
/// streamed both ways over pooled keep-alive connections, and nothing else: no admission, no
/// limits, no metrics. What it costs is what any proxy in the way costs on this machine, the
/// floor under the gateway's sync figure.
pub(crate) async fn proxy() -> anyhow::Result<()> {
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    let port: u16 = std::env::var("PORT")?.parse()?;
    let upstream: SocketAddr = std::env::var("UPSTREAM")?.parse()?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    parts.uri = match format!("http://{upstream}{path}").parse() {
                        Ok(uri) => uri,
                        Err(e) => return Err(std::io::Error::other(e)),
                    };
                    client
                        .request(Request::from_parts(parts, body))
                        .await
                        .map_err(std::io::Error::other)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
