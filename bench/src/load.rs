//! The load generator: many keep-alive HTTP/1.1 connections, each sending its next request as
//! soon as the last is answered (a closed loop, as `wrk` does), every latency recorded.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The request every connection sends, again and again.
#[derive(Debug, Clone)]
pub(crate) struct Shot {
    pub method: Method,
    /// Path and query, e.g. `/function/echo`.
    pub path: String,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub body: Bytes,
    /// The answer that counts as a success.
    pub expect: StatusCode,
}

impl Shot {
    pub(crate) fn post(path: impl Into<String>, body: Bytes, expect: StatusCode) -> Self {
        Self {
            method: Method::POST,
            path: path.into(),
            headers: Vec::new(),
            body,
            expect,
        }
    }

    pub(crate) fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((
            HeaderName::from_static(name),
            HeaderValue::from_str(value).expect("a valid header value"),
        ));
        self
    }
}

/// When a run stops.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Until {
    /// After this long.
    Elapsed(Duration),
    /// After this many requests in all.
    Sent(u64),
}

/// What a run saw.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub ok: u64,
    /// Answers other than the expected one, by status.
    pub other: BTreeMap<u16, u64>,
    /// Requests that got no answer (connection refused, reset, closed).
    pub failed: u64,
    pub elapsed: Duration,
    /// Microseconds from send to the end of the answer's body, of the successful requests.
    latencies: Vec<u32>,
}

impl Outcome {
    /// Successful requests per second.
    pub(crate) fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `p`th percentile latency (0–100), in milliseconds.
    pub(crate) fn percentile_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p) as f64 / 1000.0
    }

    /// The answers that were not the expected one, e.g. `3 × 503, 1 no answer`; empty if none.
    pub(crate) fn problems(&self) -> String {
        let mut parts: Vec<String> = self
            .other
            .iter()
            .map(|(code, n)| format!("{n} × {code}"))
            .collect();
        if self.failed > 0 {
            parts.push(format!("{} no answer", self.failed));
        }
        parts.join(", ")
    }

    /// An outcome of `latencies.len()` successes.
    pub(crate) fn from_latencies(latencies: Vec<u32>, elapsed: Duration) -> Self {
        Self {
            ok: latencies.len() as u64,
            elapsed,
            latencies,
            ..Self::default()
        }
    }

    fn merge(&mut self, other: Outcome) {
        self.ok += other.ok;
        self.failed += other.failed;
        for (code, n) in other.other {
            *self.other.entry(code).or_default() += n;
        }
        self.latencies.extend(other.latencies);
    }
}

/// The `p`th percentile of `values` (sorted in place), nearest rank; 0 if empty.
pub(crate) fn percentile(values: &[u32], p: f64) -> u32 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Sends `shot` to `addr` over `connections` connections until `until`.
pub(crate) async fn run(
    addr: SocketAddr,
    connections: usize,
    shot: Shot,
    until: Until,
) -> anyhow::Result<Outcome> {
    let shot = Arc::new(shot);
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = match until {
        Until::Elapsed(d) => Some(started + d),
        Until::Sent(_) => None,
    };
    let budget = match until {
        Until::Sent(n) => n,
        Until::Elapsed(_) => u64::MAX,
    };
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (shot, sent) = (shot.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            connection(addr, &shot, deadline, &sent, budget).await
        }));
    }
    let mut outcome = Outcome::default();
    for task in tasks {
        outcome.merge(task.await.context("a load connection panicked")??);
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// Consecutive failed connects after which a connection gives up.
const CONNECT_TRIES: u32 = 50;

/// One connection's closed loop; reconnects when the server closes it.
async fn connection(
    addr: SocketAddr,
    shot: &Shot,
    deadline: Option<Instant>,
    sent: &AtomicU64,
    budget: u64,
) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let host = HeaderValue::from_str(&addr.to_string())?;
    let mut sender = None;
    let mut failed_connects = 0;
    loop {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let mut ready = match sender.take() {
            Some(s) => s,
            None => match connect(addr).await {
                Ok(s) => {
                    failed_connects = 0;
                    s
                }
                Err(e) => {
                    failed_connects += 1;
                    if failed_connects >= CONNECT_TRIES {
                        return Err(e.context(format!("connecting to {addr}")));
                    }
                    tokio::task::yield_now().await;
                    continue;
                }
            },
        };
        // A connection the server closed while idle is replaced, not counted as a failure.
        if ready.ready().await.is_err() {
            continue;
        }
        if sent.fetch_add(1, Ordering::Relaxed) >= budget {
            break;
        }
        let mut request = http::Request::builder()
            .method(shot.method.clone())
            .uri(&shot.path)
            .header(http::header::HOST, host.clone());
        for (k, v) in &shot.headers {
            request = request.header(k, v);
        }
        let request = request.body(Full::new(shot.body.clone()))?;
        let start = Instant::now();
        let answer = async {
            let response = ready.send_request(request).await?;
            let status = response.status();
            response.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        match answer {
            Ok(status) if status == shot.expect => {
                outcome.ok += 1;
                let micros = start.elapsed().as_micros();
                outcome
                    .latencies
                    .push(u32::try_from(micros).unwrap_or(u32::MAX));
                sender = Some(ready);
            }
            Ok(status) => {
                *outcome.other.entry(status.as_u16()).or_default() += 1;
                sender = Some(ready);
            }
            Err(_) => outcome.failed += 1,
        }
    }
    Ok(outcome)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> anyhow::Result<Sender> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile(&values, 0.0), 1);
        assert_eq!(percentile(&values, 50.0), 51);
        assert_eq!(percentile(&values, 99.0), 99);
        assert_eq!(percentile(&values, 100.0), 100);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[tokio::test]
    async fn a_run_counts_answers_by_status_and_stops_at_its_budget() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(crate::servers::serve(
            listener,
            |req: hyper::Request<hyper::body::Incoming>| async move {
                let status = if req.uri().path() == "/ok" { 200 } else { 404 };
                let mut answer = hyper::Response::new(Full::new(Bytes::new()));
                *answer.status_mut() = StatusCode::from_u16(status).unwrap();
                answer
            },
        ));
        let ok = Shot::post("/ok", Bytes::from_static(b"x"), StatusCode::OK);
        let o = run(addr, 4, ok, Until::Sent(50)).await.unwrap();
        assert_eq!((o.ok, o.failed, o.problems()), (50, 0, String::new()));
        let missing = Shot::post("/missing", Bytes::new(), StatusCode::OK);
        let o = run(addr, 2, missing, Until::Sent(7)).await.unwrap();
        assert_eq!((o.ok, o.problems()), (0, "7 × 404".to_owned()));
    }
}
