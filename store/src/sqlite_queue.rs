//! The embedded durable queue: a table in the same SQLite database, claimed with leases.
//!
//! A claim writes a fresh lease token and expiry onto the oldest due row. Ack deletes the row,
//! release clears the lease and sets when it is due again, keep-alive pushes the expiry on; each
//! checks the token, so a worker whose lease ran out (and whose call went to someone else) learns
//! it with [`QueueError::LeaseLost`] instead of acking another worker's delivery.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use sluice_core::{CallMeta, CallQueue, Delivery, Lease, QueueError, QueuedCall, Timestamp};
use sqlx::{Row, SqlitePool};
use tokio::sync::{Mutex, Notify};

/// How often an idle consumer looks for calls whose lease ran out or whose delay passed; new
/// calls wake it at once.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// The embedded call queue.
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    pool: SqlitePool,
    lease: Duration,
    /// Wakes a waiting consumer when a call is enqueued or released.
    ready: Notify,
    /// Serialises claims so two consumers never race for the same row.
    claim: Mutex<()>,
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
    /// A queue over `pool` whose leases last `lease`.
    pub fn new(pool: SqlitePool, lease: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                lease,
                ready: Notify::new(),
                claim: Mutex::new(()),
            }),
        }
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

    async fn try_claim(&self) -> Result<Option<Delivery>, QueueError> {
        let _guard = self.inner.claim.lock().await;
        let now = now_ms();
        let token = uuid::Uuid::new_v4().to_string();
        let row = sqlx::query(
            "UPDATE queue SET lease_token = ?1, lease_until = ?2, deliveries = deliveries + 1 \
             WHERE seq = (SELECT seq FROM queue WHERE available_at <= ?3 \
                          AND (lease_until IS NULL OR lease_until <= ?3) ORDER BY seq LIMIT 1) \
             RETURNING seq, meta, body, deliveries",
        )
        .bind(&token)
        .bind(now + millis(self.inner.lease))
        .bind(now)
        .fetch_optional(&self.inner.pool)
        .await
        .map_err(unavailable)?;
        let Some(row) = row else { return Ok(None) };
        let seq: i64 = row.get("seq");
        let meta: String = row.get("meta");
        let body: Vec<u8> = row.get("body");
        let lease = Box::new(SqliteLease {
            queue: self.clone(),
            seq,
            token,
        });
        let meta: CallMeta = match serde_json::from_str(&meta) {
            Ok(meta) => meta,
            Err(e) => {
                // A row this version cannot read would block nothing (others are still claimed
                // in order) but would come back forever; park it far in the future and say so.
                tracing::error!(seq, error = %e, "unreadable queued call; parking it");
                lease.release(Duration::from_secs(24 * 3600)).await?;
                return Ok(None);
            }
        };
        Ok(Some(Delivery {
            call: QueuedCall {
                meta,
                body: Bytes::from(body),
            },
            delivery_count: u32::try_from(row.get::<i64, _>("deliveries")).unwrap_or(u32::MAX),
            lease,
        }))
    }
}

#[async_trait]
impl CallQueue for SqliteQueue {
    async fn enqueue(&self, call: &QueuedCall) -> Result<bool, QueueError> {
        let meta = serde_json::to_string(&call.meta).map_err(unavailable)?;
        let done = sqlx::query(
            "INSERT INTO queue (call_id, meta, body, available_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (call_id) DO NOTHING",
        )
        .bind(call.meta.id.as_str())
        .bind(meta)
        .bind(call.body.as_ref())
        .bind(now_ms())
        .execute(&self.inner.pool)
        .await
        .map_err(unavailable)?;
        self.inner.ready.notify_one();
        Ok(done.rows_affected() == 1)
    }

    async fn next(&self, max_wait: Duration) -> Result<Option<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + max_wait;
        loop {
            if let Some(delivery) = self.try_claim().await? {
                return Ok(Some(delivery));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
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
        let done =
            sqlx::query("UPDATE queue SET lease_until = ? WHERE seq = ? AND lease_token = ?")
                .bind(until)
                .bind(self.seq)
                .bind(&self.token)
                .execute(&self.queue.inner.pool)
                .await
                .map_err(unavailable)?;
        Self::check(done.rows_affected())
    }

    async fn ack(self: Box<Self>) -> Result<(), QueueError> {
        let done = sqlx::query("DELETE FROM queue WHERE seq = ? AND lease_token = ?")
            .bind(self.seq)
            .bind(&self.token)
            .execute(&self.queue.inner.pool)
            .await
            .map_err(unavailable)?;
        Self::check(done.rows_affected())
    }

    async fn release(self: Box<Self>, delay: Duration) -> Result<(), QueueError> {
        let due = Timestamp::from_system_time(SystemTime::now() + delay).as_millis();
        let done = sqlx::query(
            "UPDATE queue SET lease_token = NULL, lease_until = NULL, available_at = ? \
             WHERE seq = ? AND lease_token = ?",
        )
        .bind(due)
        .bind(self.seq)
        .bind(&self.token)
        .execute(&self.queue.inner.pool)
        .await
        .map_err(unavailable)?;
        self.queue.inner.ready.notify_one();
        Self::check(done.rows_affected())
    }
}
