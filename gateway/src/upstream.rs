//! The sync path's way to a replica: hyper's pooled HTTP/1 client, and a response body that
//! owns what the request holds until the answer has been streamed to its end.
//!
//! Replicas are plain `http://host:port` on a network Sluice trusts, so the client does no TLS,
//! no redirects, no proxy from the environment and no URL parsing beyond `http::Uri`: each of
//! those showed in profiles of the sync path (reqwest, which did them all, took a third of the
//! gateway's time on it).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::time::{Instant, Sleep};

/// Pooled keep-alive connections to replicas.
pub(crate) type Upstream = Client<HttpConnector, Body>;

/// How long a connection to a replica may stay idle in the pool.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// How long connecting to a replica may take: replicas are local or in-cluster, so a connect
/// that takes longer is to one that has gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) fn client() -> Upstream {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .build(connector)
}

/// A replica's response body, passed through as it comes, that:
/// - owns `guards` (the replica's in-flight slot, the gateway's admission, the autoscaler's
///   load) until it has been streamed to its end or dropped (the client went away);
/// - ends with an error at `deadline`, so a replica that never finishes its answer cannot hold
///   its slot for ever. The timer is only set when a read has to wait: an answer that is
///   already here costs none.
pub(crate) struct Guarded<G> {
    body: Incoming,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    _guards: G,
}

impl<G> Guarded<G> {
    pub(crate) fn new(body: Incoming, deadline: Instant, guards: G) -> Self {
        Self {
            body,
            deadline,
            timer: None,
            _guards: guards,
        }
    }
}

/// The replica did not finish its answer by the deadline.
#[derive(Debug, thiserror::Error)]
#[error("the function's answer did not end within the upstream timeout")]
pub(crate) struct AnswerTimedOut;

impl<G: Unpin + Send + 'static> hyper::body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(Into::into))),
            Poll::Pending => {
                let deadline = this.deadline;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(AnswerTimedOut.into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Set when dropped: stands for the request's guards.
    struct Guard(Arc<AtomicBool>);

    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A replica that writes `answer` to its first request, then holds the connection open,
    /// sending nothing more.
    async fn replica(answer: &'static [u8]) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).await.unwrap();
            stream.write_all(answer).await.unwrap();
            let _ = stream.read(&mut head).await;
        });
        addr
    }

    async fn get(addr: std::net::SocketAddr) -> axum::http::Response<Incoming> {
        let request = axum::http::Request::get(format!("http://{addr}/"))
            .body(Body::empty())
            .unwrap();
        client().request(request).await.unwrap()
    }

    #[tokio::test]
    async fn an_answer_that_stalls_ends_at_the_deadline_and_lets_its_guards_go() {
        // Headers and the first bytes of a longer body, then nothing.
        let addr = replica(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nfirst").await;
        let response = get(addr).await;
        assert_eq!(response.status(), 200);
        let released = Arc::new(AtomicBool::new(false));
        let deadline = Instant::now() + Duration::from_millis(300);
        let mut body = Guarded::new(response.into_body(), deadline, Guard(released.clone()));
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"first");
        let error = body.frame().await.unwrap().unwrap_err();
        assert!(Instant::now() >= deadline);
        assert!(error.is::<AnswerTimedOut>(), "{error}");
        assert!(
            !released.load(Ordering::SeqCst),
            "held while the body lives"
        );
        drop(body);
        assert!(released.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_whole_answer_passes_unchanged() {
        let addr = replica(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nwhole").await;
        let response = get(addr).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let body = Guarded::new(response.into_body(), deadline, ());
        assert_eq!(hyper::body::Body::size_hint(&body).exact(), Some(5));
        let whole = body.collect().await.unwrap().to_bytes();
        assert_eq!(&whole[..], b"whole");
    }
}
