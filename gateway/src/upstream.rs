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
