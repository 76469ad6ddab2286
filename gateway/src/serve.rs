//! Connections: accepting them within a cap, and not letting any of them hang on for ever.
//!
//! `axum::serve` has no connection limit and no header timeout, so a client that opens
//! connections and sends nothing (or a byte now and then) could hold every file descriptor
//! until no one else is served. Here each connection is served by hyper's HTTP/1 server with:
//! - a header read timeout: a request's head must arrive whole within it, and it also closes a
//!   kept-alive connection that stays idle that long;
//! - bounded header count and head size (hyper answers `431` beyond them; the gateway's own,
//!   smaller limits answer first with a JSON error, see `limits.rs`);
//! - a cap on open connections: past it, a new connection is answered `503` with `Retry-After`
//!   at once and closed, and the shedding is logged (at most every few seconds).
//!
//! On shutdown the listener stops accepting and in-flight requests finish (the caller bounds
//! how long it waits); idle connections are closed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connection-level limits; plain data.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections open at once; more are answered `503` and closed.
    pub max_connections: usize,
    /// How long a request's head may take to arrive, and how long a kept-alive connection may
    /// stay idle.
    pub header_read_timeout: Duration,
    /// Header lines per request at most (hyper's own limit, above the gateway's).
    pub max_headers: usize,
    /// Largest request head hyper buffers (above the gateway's own limit). With
    /// `max_connections`, it bounds what request heads can take in memory (1 GiB by default).
    pub max_head_bytes: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            max_headers: 200,
            max_head_bytes: 256 * 1024,
        }
    }
}

/// How often shedding is logged at most.
const SHED_LOG_EVERY: Duration = Duration::from_secs(5);

/// What is written to a connection turned away at the cap.
const TURNED_AWAY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
x-sluice-error: too_many_connections\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 93\r\n\
\r\n\
{\"code\":\"too_many_connections\",\"message\":\"the gateway has too many connections open; retry\"}\n";

/// Counts connections turned away and logs them now and then.
#[derive(Debug, Default)]
struct Shedding {
    count: AtomicU64,
    last_logged: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Shedding {
    fn shed(&self, limit: usize) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_logged.lock().unwrap_or_else(|p| p.into_inner());
        let now = tokio::time::Instant::now();
        if last.is_none_or(|at| now.duration_since(at) >= SHED_LOG_EVERY) {
            *last = Some(now);
            tracing::warn!(
                limit,
                turned_away = n,
                "at the connection limit: new connections are turned away with 503"
            );
        }
    }
}

/// Serves `app` on `listener` until `shutdown`, then waits for in-flight requests.
pub(crate) async fn serve_connections(
    listener: TcpListener,
    gateway: crate::Gateway,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let shedding = Arc::new(Shedding::default());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_headers)
        .max_buf_size(limits.max_head_bytes.max(8192))
        .keep_alive(true);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            turn_away(&stream);
            shedding.shed(limits.max_connections);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let gateway = gateway.clone();
            async move { Ok::<_, std::convert::Infallible>(gateway.handle(request).await) }
        });
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, %peer, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Answers `503` on a connection over the cap without waiting for it (a peer that does not
/// read gets nothing) and closes it.
fn turn_away(stream: &TcpStream) {
    let _ = stream.try_write(TURNED_AWAY);
}

/// Raises this process's open-file limit to its hard limit, so the connection cap (and not
/// the default 1024 descriptors) is what bounds connections; returns the limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => Some(limit),
        Err(error) => {
            tracing::warn!(%error, "cannot raise the open-file limit");
            None
        }
    }
}

/// Descriptors kept free for everything but client connections (function processes, the
/// database, NATS, the queue worker's own connections).
pub const RESERVED_DESCRIPTORS: u64 = 512;

#[cfg(test)]
mod tests {
    #[test]
    fn the_turn_away_answer_is_well_formed() {
        let text = std::str::from_utf8(super::TURNED_AWAY).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(body.len(), length);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["code"], "too_many_connections");
    }

    #[test]
    fn shedding_is_not_logged_more_than_once_every_few_seconds() {
        let shedding = super::Shedding::default();
        shedding.shed(1);
        let first = *shedding.last_logged.lock().unwrap();
        shedding.shed(1);
        assert_eq!(*shedding.last_logged.lock().unwrap(), first);
        assert_eq!(shedding.count.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
