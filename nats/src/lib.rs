//! `sluice-nats`: the production call queue, on NATS JetStream.
//!
//! One stream (file storage, work-queue retention) holds every queued call, on the subject
//! `<prefix>.<queue>` of its named queue. Each named queue has one durable pull consumer, shared
//! by every worker that serves the queue, so a call goes to one worker at a time.
//!
//! - **One copy per call id, within the duplicate window.** A call is published with
//!   `Nats-Msg-Id` set to its id, so a second publish of the same id inside the stream's
//!   duplicate window (10 minutes by default) stores nothing and `enqueue` answers `Ok(false)`.
//!   After the window a second publish is stored; the call record, checked by the worker before
//!   each run, keeps a finished call from running again. The gateway answers `202` only after the publish was acked.
//! - **Leases are ack waits.** A delivery must be acked within the consumer's `ack_wait` (the
//!   lease); a worker extends it with in-progress acks while the function runs. A worker that dies
//!   stops extending it and the call is delivered again once the wait runs out.
//! - **Large bodies.** A message can carry at most the server's `max_payload` (1 MiB unless
//!   configured). A call that does not fit puts its body in an object store bucket first and
//!   carries only the object's name; the object is deleted when the call is acked.
//!
//! A message is `u32 big-endian length of the meta JSON | meta JSON | body` (the body absent
//! when it lives in the object store).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::connection::State;
use async_nats::jetstream::consumer::pull::Config as ConsumerConfig;
use async_nats::jetstream::consumer::{AckPolicy, PullConsumer};
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::AckKind;
use async_nats::jetstream::object_store::{self, GetErrorKind, ObjectStore};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};
use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use sluice_core::{
    CallId, CallMeta, CallQueue, CallState, CallStore, Delivery, Lease, QueueError, QueueName,
    QueuedCall,
};
use tokio::io::AsyncReadExt;

/// The header naming the object that holds a call's body when it is too large for a message.
const BODY_OBJECT_HEADER: &str = "Sluice-Body-Object";

/// Room left in a message for its headers when deciding whether the body fits.
const HEADER_ROOM: usize = 4 * 1024;

/// Where the queue lives and how it behaves; plain data.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// NATS server URL(s), comma-separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// The stream holding queued calls.
    pub stream: String,
    /// Calls are published on `<subject_prefix>.<queue>`.
    pub subject_prefix: String,
    /// The object store bucket for bodies too large for one message.
    pub bodies_bucket: String,
    /// The named queue this instance takes calls from (it may publish to any).
    pub queue: QueueName,
    /// How long a delivery is held without an in-progress ack before it goes to another worker.
    pub lease: Duration,
    /// How long a call id is remembered for dropping a second publish of it.
    pub duplicate_window: Duration,
    /// The most calls, and bytes of calls, the stream holds; beyond them `enqueue` fails with
    /// [`QueueError::Full`] rather than dropping anything already queued.
    pub max_calls: i64,
    pub max_bytes: i64,
    /// The most bytes of large bodies kept in the object store.
    pub max_body_store_bytes: i64,
    /// The most calls delivered and not yet acked (running, or waiting out a retry delay), per
    /// named queue.
    pub max_unacked: i64,
    /// How long a publish or an ack waits for JetStream to confirm it.
    pub request_timeout: Duration,
}

impl JetStreamConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "SLUICE_CALLS".into(),
            subject_prefix: "sluice.calls".into(),
            bodies_bucket: "SLUICE_BODIES".into(),
            queue: QueueName::default_queue(),
            lease: Duration::from_secs(30),
            duplicate_window: Duration::from_secs(10 * 60),
            max_calls: 1_000_000,
            max_bytes: 8 * 1024 * 1024 * 1024,
            max_body_store_bytes: 8 * 1024 * 1024 * 1024,
            max_unacked: 50_000,
            request_timeout: Duration::from_secs(5),
        }
    }
}

/// The call queue on JetStream. Cheap to clone.
#[derive(Clone)]
pub struct JetStreamQueue {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: Context,
    /// Created on the first `next`: a gateway only publishes, and must not reset the consumer's
    /// ack wait to its own idea of the lease.
    consumer: tokio::sync::OnceCell<PullConsumer>,
    bodies: ObjectStore,
    config: JetStreamConfig,
}

impl std::fmt::Debug for JetStreamQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamQueue")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(format!("{what}: {e}"))
}

/// A NATS client as Sluice's processes connect one: named, reconnecting for ever once
/// connected. `url` may list several servers, comma-separated.
pub async fn connect_client(
    url: &str,
    timeout: Duration,
) -> Result<async_nats::Client, QueueError> {
    async_nats::ConnectOptions::new()
        .name("sluice")
        .connection_timeout(timeout)
        .max_reconnects(None)
        .connect(url)
        .await
        .map_err(|e| unavailable(&format!("connecting to NATS at {url}"), e))
}

impl JetStreamQueue {
    /// Connects, and creates the stream and the bucket if they do not exist yet (existing ones
    /// are left as they are, so an operator may tune them, e.g. their replicas).
    ///
    /// Fails if NATS cannot be reached; once connected, the client reconnects by itself after
    /// the server restarts, and operations fail with [`QueueError::Unavailable`] meanwhile.
    pub async fn connect(config: JetStreamConfig) -> Result<Self, QueueError> {
        let client = connect_client(&config.url, config.request_timeout).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(config.request_timeout);

        js.get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            description: Some("Sluice async calls".into()),
            subjects: vec![format!("{}.*", config.subject_prefix)],
            retention: RetentionPolicy::WorkQueue,
            storage: StorageType::File,
            discard: DiscardPolicy::New,
            max_messages: config.max_calls,
            max_bytes: config.max_bytes,
            duplicate_window: config.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(&format!("creating stream {}", config.stream), e))?;
        let bodies = match js.get_object_store(&config.bodies_bucket).await {
            Ok(bucket) => bucket,
            Err(_) => {
                js.create_object_store(object_store::Config {
                    bucket: config.bodies_bucket.clone(),
                    description: Some("Sluice call bodies too large for one message".into()),
                    max_bytes: config.max_body_store_bytes,
                    storage: StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable(&format!("creating bucket {}", config.bodies_bucket), e))?
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                js,
                consumer: tokio::sync::OnceCell::new(),
                bodies,
                config,
            }),
        })
    }

    /// This queue's durable consumer, on first use: created, or updated if its ack wait is
    /// shorter than this lease. The ack wait is thus the longest lease any worker asked for, so
    /// every worker's in-progress acks (every third of its own lease) come within it.
    async fn consumer(&self) -> Result<&PullConsumer, QueueError> {
        let config = &self.inner.config;
        self.inner
            .consumer
            .get_or_try_init(|| async {
                let stream = self
                    .inner
                    .js
                    .get_stream(&config.stream)
                    .await
                    .map_err(|e| unavailable(&format!("opening stream {}", config.stream), e))?;
                let durable = format!("sluice-{}", config.queue);
                if let Ok(existing) = stream.get_consumer::<ConsumerConfig>(&durable).await {
                    let ack_wait = existing.cached_info().config.ack_wait;
                    if ack_wait >= config.lease {
                        if ack_wait > config.lease {
                            tracing::info!(
                                queue = %config.queue,
                                ?ack_wait,
                                lease = ?config.lease,
                                "another worker set a longer lease on this queue; a call of a \
                                 dead worker waits that long before it is redelivered"
                            );
                        }
                        return Ok(existing);
                    }
                }
                stream
                    .create_consumer(ConsumerConfig {
                        durable_name: Some(durable.clone()),
                        description: Some(format!("Sluice workers of queue {}", config.queue)),
                        filter_subject: format!("{}.{}", config.subject_prefix, config.queue),
                        ack_policy: AckPolicy::Explicit,
                        ack_wait: config.lease,
                        // Attempts are counted by the worker, against the function's retry policy.
                        max_deliver: -1,
                        max_ack_pending: config.max_unacked,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| unavailable(&format!("creating consumer {durable}"), e))
            })
            .await
    }

    /// Deletes large-body objects that no queued call can need any more: older than
    /// `older_than`, and belonging to a call that is gone, cancelled, or finished at least
    /// `older_than` ago (its callback tries long over). They are left behind by a publish that
    /// failed after its body was stored, or an ack whose delete did not happen. Returns how many
    /// were deleted.
    pub async fn sweep_bodies(
        &self,
        calls: &dyn CallStore,
        older_than: Duration,
    ) -> Result<u64, QueueError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let before = |unix_secs: i64| {
            u64::try_from(unix_secs)
                .is_ok_and(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s) < cutoff)
        };
        let mut list = self
            .inner
            .bodies
            .list()
            .await
            .map_err(|e| unavailable("listing call bodies", e))?;
        let mut stale = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| unavailable("listing call bodies", e))?;
            let old = info.modified.is_some_and(|m| before(m.unix_timestamp()));
            if !info.deleted && old {
                stale.push(info.name);
            }
        }
        let mut deleted = 0;
        for name in stale {
            let Some(id) = body_owner(&name) else {
                continue;
            };
            let needed = match calls.get(&id).await {
                Ok(None) => false,
                Ok(Some(record)) => match record.state {
                    CallState::Queued | CallState::Running => true,
                    CallState::Cancelled => false,
                    CallState::Succeeded | CallState::Failed => !record
                        .finished_at
                        .is_some_and(|at| before(at.as_millis() / 1000)),
                },
                Err(e) => return Err(unavailable("reading a call record", e)),
            };
            if !needed {
                self.delete_body(&name).await;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    fn subject(&self, queue: Option<&QueueName>) -> String {
        let queue = queue.map_or(QueueName::DEFAULT, QueueName::as_str);
        format!("{}.{queue}", self.inner.config.subject_prefix)
    }

    /// Refuses at once, instead of buffering a publish until NATS is back.
    /// A delivered message as a call; `None` (and the message dealt with) if it cannot be one.
    async fn delivery(&self, message: jetstream::Message) -> Option<Delivery> {
        let delivery_count = message
            .info()
            .map(|i| u32::try_from(i.delivered).unwrap_or(u32::MAX))
            .unwrap_or(1);
        match self.decode(&message).await {
            Ok((call, object)) => Some(Delivery {
                call,
                delivery_count,
                // The calls' records are in Postgres: the worker starts each.
                started: None,
                lease: Box::new(JetStreamLease {
                    queue: self.clone(),
                    message,
                    object,
                }),
            }),
            Err(Undecodable::BodyUnavailable(error)) => {
                // The object store is unavailable for now: try again later.
                tracing::warn!(%error, "cannot read a queued call's body; it will come back");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
                None
            }
            Err(Undecodable::Malformed(error) | Undecodable::BodyMissing(error)) => {
                // A message this version cannot read, or whose body is gone, would come back
                // forever: drop it, loudly.
                tracing::error!(%error, "unreadable queued call; terminating it");
                let _ = message.ack_with(AckKind::Term).await;
                None
            }
        }
    }

    fn ensure_connected(&self) -> Result<(), QueueError> {
        match self.inner.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(QueueError::Unavailable(format!(
                "not connected to NATS ({state:?})"
            ))),
        }
    }

    /// The message id: the call id, and the re-drive round, so a re-drive is not a duplicate.
    fn message_id(meta: &CallMeta) -> String {
        match meta.redrive {
            0 => meta.id.to_string(),
            n => format!("{}#redrive-{n}", meta.id),
        }
    }

    async fn put_body(&self, object: &str, body: &Bytes) -> Result<(), QueueError> {
        let mut reader = body.as_ref();
        self.inner
            .bodies
            .put(object, &mut reader)
            .await
            .map(drop)
            .map_err(|e| unavailable("storing a large body", e))
    }

    async fn delete_body(&self, object: &str) {
        if let Err(error) = self.inner.bodies.delete(object).await {
            tracing::warn!(object, %error, "could not delete a call body from the object store");
        }
    }

    async fn decode(
        &self,
        message: &jetstream::Message,
    ) -> Result<(QueuedCall, Option<String>), Undecodable> {
        let (meta, inline_body) = unframe(&message.payload).map_err(Undecodable::Malformed)?;
        let object = message
            .headers
            .as_ref()
            .and_then(|h| h.get(BODY_OBJECT_HEADER))
            .map(|v| v.as_str().to_owned());
        let body = match &object {
            None => inline_body,
            Some(object) => {
                let mut reader = self.inner.bodies.get(object).await.map_err(|e| {
                    let text = format!("body object {object}: {e}");
                    match e.kind() {
                        GetErrorKind::NotFound => Undecodable::BodyMissing(text),
                        _ => Undecodable::BodyUnavailable(text),
                    }
                })?;
                let mut body = Vec::new();
                reader.read_to_end(&mut body).await.map_err(|e| {
                    Undecodable::BodyUnavailable(format!("reading body object {object}: {e}"))
                })?;
                Bytes::from(body)
            }
        };
        Ok((QueuedCall { meta, body }, object))
    }
}

#[async_trait]
impl CallQueue for JetStreamQueue {
    fn backend(&self) -> &'static str {
        "NATS JetStream"
    }

    async fn ping(&self) -> Result<(), QueueError> {
        self.ensure_connected()?;
        // A round trip to the server: the stream calls go to is there and answers.
        let mut stream = self
            .inner
            .js
            .get_stream(&self.inner.config.stream)
            .await
            .map_err(|e| unavailable("looking up the stream", e))?;
        stream
            .info()
            .await
            .map(drop)
            .map_err(|e| unavailable("reading the stream's state", e))
    }

    async fn enqueue(&self, call: &QueuedCall) -> Result<bool, QueueError> {
        self.ensure_connected()?;
        let meta = serde_json::to_vec(&call.meta).map_err(|e| unavailable("encoding", e))?;
        let meta_len = u32::try_from(meta.len())
            .map_err(|_| QueueError::Unavailable("call headers too large to queue".into()))?;
        let msg_id = Self::message_id(&call.meta);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id.as_str());
        let max_payload = self.inner.client.server_info().max_payload;
        let inline = 4 + meta.len() + call.body.len() + HEADER_ROOM <= max_payload;
        // A fresh name each time, so a duplicate publish never overwrites the body the queued
        // message refers to.
        let object = (!inline).then(|| format!("{msg_id}.{}", uuid::Uuid::new_v4().simple()));
        let payload = frame(meta_len, &meta, inline.then_some(&call.body[..]));
        if let Some(object) = &object {
            self.put_body(object, &call.body).await?;
            headers.insert(BODY_OBJECT_HEADER, object.as_str());
        }
        let published = async {
            self.inner
                .js
                .publish_with_headers(self.subject(call.meta.queue.as_ref()), headers, payload)
                .await?
                .await
        }
        .await;
        let ack = match published {
            Ok(ack) => ack,
            Err(e) => {
                // After a timeout the message may have been stored all the same, and its body
                // must stay; otherwise nothing refers to the body.
                if let (Some(object), false) = (&object, e.kind() == PublishErrorKind::TimedOut) {
                    self.delete_body(object).await;
                }
                let text = e.to_string();
                return Err(match e.kind() {
                    _ if text.contains("maximum messages") || text.contains("maximum bytes") => {
                        QueueError::Full(text)
                    }
                    PublishErrorKind::MaxPayloadExceeded => {
                        QueueError::Unavailable(format!("call too large for NATS: {text}"))
                    }
                    _ => unavailable("publishing the call", text),
                });
            }
        };
        if ack.duplicate {
            if let Some(object) = &object {
                self.delete_body(object).await;
            }
            return Ok(false);
        }
        Ok(true)
    }

    async fn next(&self, max_wait: Duration) -> Result<Option<Delivery>, QueueError> {
        self.ensure_connected()?;
        let mut batch = self
            .consumer()
            .await?
            .batch()
            .max_messages(1)
            .expires(max_wait.max(Duration::from_millis(100)))
            .messages()
            .await
            .map_err(|e| unavailable("asking for a call", e))?;
        let Some(message) = batch.next().await else {
            return Ok(None);
        };
        let message = message.map_err(|e| unavailable("receiving a call", e))?;
        Ok(self.delivery(message).await)
    }

    async fn next_many(&self, max: usize, max_wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        if max <= 1 {
            return Ok(self.next(max_wait).await?.into_iter().collect());
        }
        self.ensure_connected()?;
        // What is there now, without waiting (a pull that expires at once)…
        let mut ready = self
            .consumer()
            .await?
            .fetch()
            .max_messages(max)
            .messages()
            .await
            .map_err(|e| unavailable("asking for calls", e))?;
        let mut deliveries = Vec::new();
        // The server ends a no-wait pull at once; the timeout covers an end that never comes
        // (a reply lost in a reconnect). Calls already taken are handed over, never dropped.
        loop {
            match tokio::time::timeout(FETCH_PATIENCE, ready.next()).await {
                Ok(Some(Ok(message))) => deliveries.extend(self.delivery(message).await),
                Ok(None) => break,
                Ok(Some(Err(e))) if deliveries.is_empty() => {
                    return Err(unavailable("receiving a call", e));
                }
                Ok(Some(Err(error))) => {
                    tracing::warn!(%error, "a pull ended early; handing over the calls it brought");
                    break;
                }
                Err(_) if deliveries.is_empty() => {
                    return Err(QueueError::Unavailable(format!(
                        "a pull for calls got no end within {FETCH_PATIENCE:?}"
                    )));
                }
                Err(_) => break,
            }
        }
        if !deliveries.is_empty() {
            return Ok(deliveries);
        }
        // …else the first to come.
        Ok(self.next(max_wait).await?.into_iter().collect())
    }

    fn lease_duration(&self) -> Duration {
        self.inner.config.lease
    }
}

/// How long a pull of what is queued now may take to end.
const FETCH_PATIENCE: Duration = Duration::from_secs(5);

/// The call a body object belongs to: its name is `<call id>[#redrive-N].<uuid>`.
fn body_owner(object: &str) -> Option<CallId> {
    let (msg_id, _) = object.rsplit_once('.')?;
    let id = msg_id.split_once("#redrive-").map_or(msg_id, |(id, _)| id);
    CallId::parse(id).ok()
}

/// Why a delivered message could not be turned back into a call.
/// A queued call as a message: `u32 meta length (big-endian) | meta JSON | body`, the body
/// left out when it travels in the object store.
pub fn frame(meta_len: u32, meta: &[u8], body: Option<&[u8]>) -> Bytes {
    let body = body.unwrap_or_default();
    let mut payload = BytesMut::with_capacity(4 + meta.len() + body.len());
    payload.put_u32(meta_len);
    payload.put_slice(meta);
    payload.put_slice(body);
    payload.freeze()
}

/// A message's call metadata and the body after it (empty when the body is in the object
/// store); a message this version did not write is an error saying why, never a panic.
pub fn unframe(payload: &Bytes) -> Result<(CallMeta, Bytes), String> {
    let len = payload
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or("message shorter than its frame")?;
    let meta_end = 4usize
        .checked_add(len)
        .filter(|end| *end <= payload.len())
        .ok_or("meta length beyond the message")?;
    let meta: CallMeta =
        serde_json::from_slice(&payload[4..meta_end]).map_err(|e| format!("meta: {e}"))?;
    Ok((meta, payload.slice(meta_end..)))
}

enum Undecodable {
    /// Not a message this version wrote.
    Malformed(String),
    /// Its body object does not exist.
    BodyMissing(String),
    /// Its body object could not be read just now.
    BodyUnavailable(String),
}

/// A worker's hold on one delivered message.
struct JetStreamLease {
    queue: JetStreamQueue,
    message: jetstream::Message,
    object: Option<String>,
}

impl std::fmt::Debug for JetStreamLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamLease")
            .field("subject", &self.message.subject)
            .field("object", &self.object)
            .finish_non_exhaustive()
    }
}

fn ack_failed(e: impl std::fmt::Display) -> QueueError {
    unavailable("acknowledging", e)
}

#[async_trait]
impl Lease for JetStreamLease {
    async fn keep_alive(&self) -> Result<(), QueueError> {
        self.message
            .double_ack_with(AckKind::Progress)
            .await
            .map_err(ack_failed)
    }

    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        self.message.double_ack().await.map_err(ack_failed)?;
        if let Some(object) = &self.object {
            self.queue.delete_body(object).await;
        }
        Ok(())
    }

    async fn release(self: Box<Self>, delay: Duration) -> Result<(), QueueError> {
        let delay = (!delay.is_zero()).then_some(delay);
        self.message
            .double_ack_with(AckKind::Nak(delay))
            .await
            .map_err(ack_failed)
    }
}
