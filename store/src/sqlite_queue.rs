//! The embedded durable queue: a table in the same SQLite database, claimed with leases.
//!
//! A claim writes a fresh lease token and expiry onto the oldest due row. Ack deletes the row,
//! release clears the lease and sets when it is due again, keep-alive pushes the expiry on; each
//! checks the token, so a worker whose lease ran out (and whose call went to someone else) learns
//! it with [`QueueError::LeaseLost`] instead of acking another worker's delivery.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use sluice_core::{
    CallMeta, CallQueue, Delivery, FunctionRef, Lease, QueueError, QueuedCall, Timestamp,
};
use sqlx::query::Query;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Row, Sqlite, SqlitePool};
use tokio::sync::Notify;

use crate::SqliteWriter;

/// How often an idle consumer looks for calls whose lease ran out or whose delay passed; new
/// calls wake it at once.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// The embedded call queue.
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    inner: Arc<Inner>,
    /// Each claim starts the claimed calls' attempts (see [`Self::starting_calls`]).
    starts_calls: bool,
}

#[derive(Debug)]
struct Inner {
    pool: SqlitePool,
    /// Every write goes through it: claims, acks, releases and new calls share transactions
    /// with each other and with the call store's writes.
    writer: SqliteWriter,
    lease: Duration,
    /// Wakes a waiting consumer when a call is enqueued or released.
    ready: Notify,
    bounds: QueueBounds,
    /// What the queue holds: kept here (this process is the database's only user) so a bound
    /// costs no query. Reserved before a call is written, given back when it is acked.
    held: std::sync::Mutex<Held>,
}

/// How much the embedded queue takes; beyond, `enqueue` refuses and nothing is stored.
#[derive(Debug, Clone, Copy)]
pub struct QueueBounds {
    /// Calls on the queue at most.
    pub max_calls: u64,
    /// Bytes of call bodies on the queue at most.
    pub max_bytes: u64,
    /// Calls of any one function on the queue at most.
    pub max_per_function: u64,
}

impl Default for QueueBounds {
    /// As the cluster form's JetStream stream: a million calls, 8 GiB; and 100,000 per function.
    fn default() -> Self {
        Self {
            max_calls: 1_000_000,
            max_bytes: 8 * 1024 * 1024 * 1024,
            max_per_function: 100_000,
        }
    }
}

#[derive(Debug, Default)]
struct Held {
    calls: u64,
    bytes: u64,
    per_function: HashMap<FunctionRef, u64>,
}

impl Held {
    /// Counts a call in, if it fits `bounds`.
    fn reserve(
        &mut self,
        bounds: &QueueBounds,
        function: &FunctionRef,
        bytes: u64,
    ) -> Result<(), QueueError> {
        let of_function = self.per_function.get(function).copied().unwrap_or(0);
        if of_function >= bounds.max_per_function {
            return Err(QueueError::FunctionFull(format!(
                "function {function} has {of_function} calls queued, the most the queue takes \
                 for one function"
            )));
        }
        if self.calls >= bounds.max_calls || self.bytes + bytes > bounds.max_bytes {
            return Err(QueueError::Full(format!(
                "{} calls, {} bytes queued (bounds: {} calls, {} bytes)",
                self.calls, self.bytes, bounds.max_calls, bounds.max_bytes
            )));
        }
        self.calls += 1;
        self.bytes += bytes;
        *self.per_function.entry(function.clone()).or_default() += 1;
        Ok(())
    }

    /// Counts a call out.
    fn release(&mut self, function: &FunctionRef, bytes: u64) {
        self.calls = self.calls.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(bytes);
        if let Some(n) = self.per_function.get_mut(function) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_function.remove(function);
            }
        }
    }
}

fn now_ms() -> i64 {
    Timestamp::now().as_millis()
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn unavailable(e: impl std::fmt::Display) -> QueueError {
    QueueError::Unavailable(e.to_string())
}

impl SqliteQueue {
    /// A queue over `pool` whose leases last `lease`, with the default bounds.
    pub async fn new(pool: SqlitePool, lease: Duration) -> Result<Self, QueueError> {
        Self::with_bounds(pool, lease, QueueBounds::default()).await
    }

    /// A queue over `pool` whose leases last `lease`, taking at most `bounds`; counts what the
    /// queue already holds. It has a writer of its own (see [`Self::with_writer`]).
    pub async fn with_bounds(
        pool: SqlitePool,
        lease: Duration,
        bounds: QueueBounds,
    ) -> Result<Self, QueueError> {
        let writer = SqliteWriter::new(pool.clone());
        Self::with_writer(pool, writer, lease, bounds).await
    }

    /// As [`Self::with_bounds`], writing through `writer`: give the store and the intake on
    /// the same database the same writer.
    pub async fn with_writer(
        pool: SqlitePool,
        writer: SqliteWriter,
        lease: Duration,
        bounds: QueueBounds,
    ) -> Result<Self, QueueError> {
        let mut held = Held::default();
        let rows = sqlx::query(
            "SELECT CASE WHEN json_valid(meta) THEN json_extract(meta, '$.function.namespace') END \
                      AS namespace, \
                    CASE WHEN json_valid(meta) THEN json_extract(meta, '$.function.name') END \
                      AS name, \
                    COUNT(*) AS calls, COALESCE(SUM(length(body)), 0) AS bytes \
             FROM queue GROUP BY 1, 2",
        )
        .fetch_all(&pool)
        .await
        .map_err(unavailable)?;
        for row in rows {
            let calls = u64::try_from(row.get::<i64, _>("calls")).unwrap_or(0);
            held.calls += calls;
            held.bytes += u64::try_from(row.get::<i64, _>("bytes")).unwrap_or(0);
            let function = FunctionRef {
                namespace: row
                    .get::<Option<String>, _>("namespace")
                    .unwrap_or_default(),
                name: row.get::<Option<String>, _>("name").unwrap_or_default(),
            };
            *held.per_function.entry(function).or_default() += calls;
        }
        Ok(Self {
            starts_calls: false,
            inner: Arc::new(Inner {
                pool,
                writer,
                lease,
                ready: Notify::new(),
                bounds,
                held: std::sync::Mutex::new(held),
            }),
        })
    }

    /// For a queue whose database also holds the call store's records, written through the
    /// same writer (the single-machine form): each claim also starts the claimed calls'
    /// attempts, in the claim's transaction, and each delivery says which attempt it is on.
    /// That saves the worker a write (and the wait for its commit) before each call runs.
    pub fn starting_calls(mut self) -> Self {
        self.starts_calls = true;
        self
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.inner.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a call in before it is written, if it fits the bounds; give it back with
    /// [`Self::unreserve`] unless the write is committed.
    pub(crate) fn reserve(&self, function: &FunctionRef, bytes: u64) -> Result<(), QueueError> {
        self.held().reserve(&self.inner.bounds, function, bytes)
    }

    pub(crate) fn unreserve(&self, function: &FunctionRef, bytes: u64) {
        self.held().release(function, bytes);
    }

    /// Wakes the consumers waiting for calls.
    pub(crate) fn wake(&self) {
        self.inner.ready.notify_waiters();
        self.inner.ready.notify_one();
    }

    /// Makes every call that a previous process held claimable again at once.
    ///
    /// Only correct when this process is the database's sole user (`sluice up` holds a lock on
    /// its data dir), so no live worker holds any of these leases. Returns how many were released.
    pub async fn release_all_leases(&self) -> Result<u64, QueueError> {
        let done = sqlx::query(
            "UPDATE queue SET lease_token = NULL, lease_until = NULL WHERE lease_token IS NOT NULL",
        )
        .execute(&self.inner.pool)
        .await
        .map_err(unavailable)?;
        self.inner.ready.notify_one();
        Ok(done.rows_affected())
    }

    /// Calls on the queue, leased or not.
    pub async fn pending(&self) -> Result<u64, QueueError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM queue")
            .fetch_one(&self.inner.pool)
            .await
            .map_err(unavailable)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The writer this queue writes through.
    pub fn writer(&self) -> &SqliteWriter {
        &self.inner.writer
    }

    /// Runs a write statement in the writer's next transaction; returns the rows it changed.
    async fn write(
        &self,
        query: Query<'static, Sqlite, SqliteArguments<'static>>,
    ) -> Result<u64, QueueError> {
        self.inner
            .writer
            .run(move |conn| {
                Box::pin(async move { Ok(query.execute(conn).await?.rows_affected()) })
            })
            .await
            .map_err(unavailable)
    }

    /// Runs a write statement with `RETURNING` in the writer's next transaction.
    async fn write_returning(
        &self,
        query: Query<'static, Sqlite, SqliteArguments<'static>>,
    ) -> Result<Option<SqliteRow>, QueueError> {
        self.inner
            .writer
            .run(move |conn| Box::pin(async move { query.fetch_optional(conn).await }))
            .await
            .map_err(unavailable)
    }

    /// Claims up to `max` due calls, oldest first.
    async fn try_claim(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        // Claims are writes, one after another in the writer: two never take the same row.
        // The calls claimed together share a lease token (each lease is its row and the token).
        let token = uuid::Uuid::new_v4().to_string();
        let limit = i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let (lease, claimed_by) = (millis(self.inner.lease), token.clone());
        let starts_calls = self.starts_calls;
        let writer = self.inner.writer.clone();
        let job = claim(claimed_by, lease, limit, starts_calls);
        // All or none when it starts calls: the calls claimed are started, or neither.
        let claim = async move { writer.submit(job, starts_calls).await };
        // The claim runs to its end in a task of its own: a caller that goes away meanwhile (a
        // worker shutting down) does not leave the calls claimed, and started, with nobody to
        // run them; they are given back at once.
        let (answer, claimed) = tokio::sync::oneshot::channel();
        let (queue, token_back) = (self.clone(), token.clone());
        tokio::spawn(async move {
            if let Err(Ok((rows, started))) = answer.send(claim.await) {
                let seqs = rows.iter().map(|r| r.get::<i64, _>("seq"));
                let starts = started
                    .iter()
                    .map(|r| (r.get::<&str, _>("id"), r.get::<i64, _>("attempts")));
                queue.give_back(&token_back, seqs, starts).await;
            }
        });
        let (mut rows, started) = claimed
            .await
            .map_err(|_| unavailable("the claim's task ended without an answer"))?
            .map_err(unavailable)?;
        let mut started: HashMap<String, u32> = started
            .iter()
            .map(|row| {
                let attempts = row.get::<i64, _>("attempts");
                (row.get("id"), u32::try_from(attempts).unwrap_or(u32::MAX))
            })
            .collect();
        rows.sort_by_key(|row| row.get::<i64, _>("seq"));
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in rows {
            let seq: i64 = row.get("seq");
            let lease = Box::new(SqliteLease {
                queue: self.clone(),
                seq,
                token: token.clone(),
            });
            let meta: CallMeta = match serde_json::from_str(row.get::<&str, _>("meta")) {
                Ok(meta) => meta,
                Err(e) => {
                    // A row this version cannot read would block nothing (others are still
                    // claimed in order) but would come back forever; park it far in the future
                    // and say so.
                    tracing::error!(seq, error = %e, "unreadable queued call; parking it");
                    let call_id = row.get::<&str, _>("call_id");
                    if let Some(attempt) = started.remove(call_id) {
                        // Its record, if it has one, is not left running.
                        self.give_back(&token, [], [(call_id, i64::from(attempt))])
                            .await;
                    }
                    if let Err(error) = lease.release(Duration::from_secs(24 * 3600)).await {
                        // Its lease runs out instead; the calls claimed with it go on.
                        tracing::warn!(seq, %error, "could not park an unreadable call");
                    }
                    continue;
                }
            };
            let started = started.remove(meta.id.as_str());
            deliveries.push(Delivery {
                call: QueuedCall {
                    meta,
                    body: Bytes::from(row.get::<Vec<u8>, _>("body")),
                },
                delivery_count: u32::try_from(row.get::<i64, _>("deliveries")).unwrap_or(u32::MAX),
                lease,
                started,
            });
        }
        Ok(deliveries)
    }

    /// Gives back calls claimed with lease `token` that nobody will run: the rows `seqs` are
    /// due again at once, and the calls `started` (by the claim) queued again, their attempt
    /// not counted. Failures are logged; the leases then run out instead.
    async fn give_back<'a>(
        &self,
        token: &str,
        seqs: impl IntoIterator<Item = i64>,
        started: impl IntoIterator<Item = (&'a str, i64)>,
    ) {
        let seqs = serde_json::to_string(&seqs.into_iter().collect::<Vec<_>>())
            .expect("numbers encode as JSON");
        // Each start as [id, attempt]: only the attempt this claim started is undone, as
        // `undo_start` does (a call whose lease ran out may be another worker's by now).
        let started = serde_json::to_string(&started.into_iter().collect::<Vec<_>>())
            .expect("ids and numbers encode as JSON");
        let given = self
            .write(
                sqlx::query(concat!(
                    "UPDATE queue SET lease_token = NULL, lease_until = NULL \
                     WHERE seq IN (SELECT value FROM json_each($1)) AND lease_token = $2; \
                     UPDATE calls SET state = 'queued', attempts = attempts - 1, \
                     started_at = NULL, ",
                    crate::sqlite::log_undo!(),
                    " WHERE state = 'running' AND EXISTS (SELECT 1 FROM json_each($3) AS s \
                     WHERE json_extract(s.value, '$[0]') = calls.id \
                     AND json_extract(s.value, '$[1]') = calls.attempts)",
                ))
                .bind(seqs)
                .bind(token.to_owned())
                .bind(started),
            )
            .await;
        match given {
            Ok(_) => self.inner.ready.notify_one(),
            Err(error) => tracing::warn!(%error, "could not give back claimed calls"),
        }
    }
}

/// Rows claimed and, when they are started too, the records started (ids and attempts).
type Claimed = (Vec<SqliteRow>, Vec<SqliteRow>);

/// The claim of up to `limit` due calls with lease `token` for `lease` ms, as a write for the
/// writer; with `starts_calls`, the claimed calls' attempts are started in it too.
fn claim(
    token: String,
    lease: i64,
    limit: i64,
    starts_calls: bool,
) -> impl for<'c> FnOnce(&'c mut sqlx::SqliteConnection) -> BoxFuture<'c, Result<Claimed, sqlx::Error>>
+ Send
+ 'static {
    move |conn| {
        Box::pin(async move {
            // The time is read when the claim runs, not when it was asked for: it may have
            // waited in the writer's queue.
            let now = now_ms();
            let rows = sqlx::query(
                "UPDATE queue SET lease_token = ?1, lease_until = ?2, \
                 deliveries = deliveries + 1 \
                 WHERE seq IN (SELECT seq FROM queue WHERE available_at <= ?3 \
                 AND (lease_until IS NULL OR lease_until <= ?3) ORDER BY seq LIMIT ?4) \
                 RETURNING seq, call_id, meta, body, deliveries",
            )
            .bind(token)
            .bind(now + lease)
            .bind(now)
            .bind(limit)
            .fetch_all(&mut *conn)
            .await?;
            if !starts_calls || rows.is_empty() {
                return Ok((rows, Vec::new()));
            }
            let ids = crate::sqlite::id_list(rows.iter().map(|r| r.get("call_id")));
            let started = sqlx::query(crate::sqlite::START_ATTEMPTS)
                .bind(now)
                .bind(ids)
                .fetch_all(&mut *conn)
                .await?;
            Ok((rows, started))
        })
    }
}

/// A call counted in before it is written: counted out again when dropped, unless it was stored,
/// so an enqueue cut short (its caller went away mid-write) leaves no count behind.
struct Reservation<'a> {
    queue: &'a SqliteQueue,
    function: &'a FunctionRef,
    bytes: u64,
    kept: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.queue.held().release(self.function, self.bytes);
        }
    }
}

#[async_trait]
impl CallQueue for SqliteQueue {
    fn backend(&self) -> &'static str {
        "SQLite"
    }

    async fn enqueue(&self, call: &QueuedCall) -> Result<bool, QueueError> {
        let meta = serde_json::to_string(&call.meta).map_err(unavailable)?;
        let function = &call.meta.function;
        let bytes = call.body.len() as u64;
        let reserved = self.held().reserve(&self.inner.bounds, function, bytes);
        let mut reservation = match reserved {
            Ok(()) => Reservation {
                queue: self,
                function,
                bytes,
                kept: false,
            },
            Err(full) => {
                // A call already on the queue is not refused for being there: it is a
                // duplicate.
                let queued: Option<i64> =
                    sqlx::query_scalar("SELECT seq FROM queue WHERE call_id = ?")
                        .bind(call.meta.id.as_str())
                        .fetch_optional(&self.inner.pool)
                        .await
                        .map_err(unavailable)?;
                return match queued {
                    Some(_) => Ok(false),
                    None => Err(full),
                };
            }
        };
        let done = self
            .write(
                sqlx::query(
                    "INSERT INTO queue (call_id, meta, body, available_at) VALUES (?, ?, ?, ?) \
                     ON CONFLICT (call_id) DO NOTHING",
                )
                .bind(call.meta.id.as_str().to_owned())
                .bind(meta)
                .bind(call.body.to_vec())
                .bind(now_ms()),
            )
            .await;
        let stored = matches!(&done, Ok(1));
        reservation.kept = stored;
        done?;
        self.inner.ready.notify_one();
        Ok(stored)
    }

    async fn next(&self, max_wait: Duration) -> Result<Option<Delivery>, QueueError> {
        Ok(self.next_many(1, max_wait).await?.pop())
    }

    async fn next_many(&self, max: usize, max_wait: Duration) -> Result<Vec<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            let claimed = self.try_claim(max).await?;
            if !claimed.is_empty() {
                return Ok(claimed);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            let nap = IDLE_POLL.min(deadline - now);
            tokio::select! {
                () = self.inner.ready.notified() => {}
                () = tokio::time::sleep(nap) => {}
            }
        }
    }

    fn lease_duration(&self) -> Duration {
        self.inner.lease
    }
}

/// A worker's hold on one row of the queue.
#[derive(Debug)]
struct SqliteLease {
    queue: SqliteQueue,
    seq: i64,
    token: String,
}

impl SqliteLease {
    fn check(rows: u64) -> Result<(), QueueError> {
        if rows == 0 {
            Err(QueueError::LeaseLost)
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Lease for SqliteLease {
    async fn keep_alive(&self) -> Result<(), QueueError> {
        let until = now_ms() + millis(self.queue.inner.lease);
        let done = self
            .queue
            .write(
                sqlx::query("UPDATE queue SET lease_until = ? WHERE seq = ? AND lease_token = ?")
                    .bind(until)
                    .bind(self.seq)
                    .bind(self.token.clone()),
            )
            .await?;
        Self::check(done)
    }

    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        let gone = self
            .queue
            .write_returning(
                sqlx::query(
                    "DELETE FROM queue WHERE seq = ? AND lease_token = ? \
                     RETURNING json_extract(meta, '$.function.namespace') AS namespace, \
                     json_extract(meta, '$.function.name') AS name, length(body) AS bytes",
                )
                .bind(self.seq)
                .bind(self.token.clone()),
            )
            .await?;
        let Some(row) = gone else {
            return Self::check(0);
        };
        let function = FunctionRef {
            namespace: row
                .get::<Option<String>, _>("namespace")
                .unwrap_or_default(),
            name: row.get::<Option<String>, _>("name").unwrap_or_default(),
        };
        let bytes = u64::try_from(row.get::<i64, _>("bytes")).unwrap_or(0);
        self.queue.held().release(&function, bytes);
        Ok(())
    }

    async fn release(self: Box<Self>, delay: Duration) -> Result<(), QueueError> {
        let due = Timestamp::from_system_time(SystemTime::now() + delay).as_millis();
        let done = self
            .queue
            .write(
                sqlx::query(
                    "UPDATE queue SET lease_token = NULL, lease_until = NULL, available_at = ? \
                     WHERE seq = ? AND lease_token = ?",
                )
                .bind(due)
                .bind(self.seq)
                .bind(self.token.clone()),
            )
            .await?;
        self.queue.inner.ready.notify_one();
        Self::check(done)
    }
}
