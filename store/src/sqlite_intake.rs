//! The single-machine form's intake: each call's record and its queue row are written in one
//! savepoint of the database writer's transaction, which commits every write waiting meanwhile
//! together (group commit): a batch of submissions costs one fsync, and no call is ever recorded
//! without being queued.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use sluice_core::{
    CallIntake, CallRecord, CallStore, QueueError, QueuedCall, StoreError, SubmitError, Submitted,
    Timestamp,
};
use sqlx::{Row, SqliteConnection};

use crate::{SqliteQueue, SqliteStore};

/// Takes async calls into the embedded queue and store.
#[derive(Debug, Clone)]
pub struct SqliteIntake {
    queue: SqliteQueue,
    store: SqliteStore,
}

impl SqliteIntake {
    /// An intake writing to `queue` and `store` (the same database) through the queue's writer.
    pub fn new(queue: SqliteQueue, store: SqliteStore) -> Self {
        Self { queue, store }
    }
}

/// What a submission came to, once written.
enum Step {
    Queued,
    Existing,
    Refused(SubmitError),
}

#[async_trait]
impl CallIntake for SqliteIntake {
    async fn submit(&self, call: QueuedCall) -> Result<Submitted, SubmitError> {
        let meta = serde_json::to_string(&call.meta)
            .map_err(|e| QueueError::Unavailable(format!("encoding the call: {e}")))?;
        let id = call.meta.id.clone();
        let (function, bytes) = (call.meta.function.clone(), call.body.len() as u64);
        // Counted in before it is written; given back unless the write keeps it.
        let room = self.queue.reserve(&function, bytes);
        let held = Arc::new(AtomicBool::new(room.is_ok()));
        let (queue, holding) = (self.queue.clone(), held.clone());
        let written = self
            .queue
            .writer()
            .run_atomic(move |conn| {
                Box::pin(async move { write(conn, &queue, &holding, room, &call, &meta).await })
            })
            .await;
        let step = match written {
            Ok(step) => step,
            Err(e) => {
                if held.load(Ordering::SeqCst) {
                    self.queue.unreserve(&function, bytes);
                }
                return Err(SubmitError::Store(StoreError::Unavailable(e.to_string())));
            }
        };
        match step {
            Step::Queued => {
                self.queue.wake();
                Ok(Submitted::Queued)
            }
            Step::Refused(e) => Err(e),
            Step::Existing => {
                self.queue.wake();
                match CallStore::get(&self.store, &id).await? {
                    Some(record) => Ok(Submitted::Existing(Box::new(record))),
                    None => Err(SubmitError::Store(StoreError::Unavailable(format!(
                        "call {id} was deleted while it was being submitted again"
                    )))),
                }
            }
        }
    }
}

/// Writes one submission (inside its own savepoint of the writer's transaction). `held` says
/// whether a place in the queue's bounds is counted for it; whatever is not kept is given back.
async fn write(
    conn: &mut SqliteConnection,
    queue: &SqliteQueue,
    held: &AtomicBool,
    room: Result<(), QueueError>,
    call: &QueuedCall,
    meta: &str,
) -> Result<Step, sqlx::Error> {
    let give_back = || {
        if held.swap(false, Ordering::SeqCst) {
            queue.unreserve(&call.meta.function, call.body.len() as u64);
        }
    };
    let now = Timestamp::now().as_millis();
    if let Err(full) = room {
        // A call that exists is answered from its record, however full the queue.
        return Ok(match existing(conn, queue, held, call, meta, now).await? {
            Some(step) => step,
            None => Step::Refused(full.into()),
        });
    }
    if insert_record(conn, &CallRecord::queued(&call.meta)).await? {
        if insert_queued(conn, call, meta, now).await? {
            return Ok(Step::Queued);
        }
        // The queue holds a call with this id whose record was lost: leave it be.
        give_back();
        sqlx::query("DELETE FROM calls WHERE id = ?")
            .bind(call.meta.id.as_str())
            .execute(&mut *conn)
            .await?;
        return Ok(Step::Refused(SubmitError::Conflict(format!(
            "call id {} is already queued",
            call.meta.id
        ))));
    }
    give_back();
    Ok(existing(conn, queue, held, call, meta, now)
        .await?
        .unwrap_or_else(|| {
            Step::Refused(SubmitError::Store(StoreError::Unavailable(format!(
                "call {} is neither new nor recorded",
                call.meta.id
            ))))
        }))
}

/// A submission of an id that already has a record: the call is queued again if it is a call
/// to the same function still queued whose queue row is missing (written by a version that
/// wrote record and queue row one at a time, and died in between). `None` if there is no
/// record, or the row is missing and the queue has no room for it.
async fn existing(
    conn: &mut SqliteConnection,
    queue: &SqliteQueue,
    held: &AtomicBool,
    call: &QueuedCall,
    meta: &str,
    now: i64,
) -> Result<Option<Step>, sqlx::Error> {
    let id = call.meta.id.as_str();
    let Some(row) = sqlx::query("SELECT namespace, function, state FROM calls WHERE id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let same = row.get::<String, _>("namespace") == call.meta.function.namespace
        && row.get::<String, _>("function") == call.meta.function.name;
    if !same || row.get::<String, _>("state") != "queued" {
        return Ok(Some(Step::Existing));
    }
    let on_queue: Option<i64> = sqlx::query_scalar("SELECT seq FROM queue WHERE call_id = ?")
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?;
    if on_queue.is_none() {
        if queue
            .reserve(&call.meta.function, call.body.len() as u64)
            .is_err()
        {
            return Ok(None);
        }
        held.store(true, Ordering::SeqCst);
        insert_queued(conn, call, meta, now).await?;
    }
    Ok(Some(Step::Existing))
}

async fn insert_record(conn: &mut SqliteConnection, r: &CallRecord) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(crate::sql::INSERT_CALL)
        .bind(r.id.as_str())
        .bind(&r.namespace)
        .bind(&r.function)
        .bind(&r.method)
        .bind(&r.path)
        .bind(&r.callback_url)
        .bind(r.state.as_str())
        .bind(i64::from(r.attempts))
        .bind(r.submitted_at.as_millis())
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

async fn insert_queued(
    conn: &mut SqliteConnection,
    call: &QueuedCall,
    meta: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO queue (call_id, meta, body, available_at) VALUES (?, ?, ?, ?) \
         ON CONFLICT (call_id) DO NOTHING",
    )
    .bind(call.meta.id.as_str())
    .bind(meta)
    .bind(call.body.as_ref())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
