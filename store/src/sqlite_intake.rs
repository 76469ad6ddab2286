//! The single-machine form's intake: the submissions that arrive together are written in one
//! savepoint of the database writer's transaction, which commits every write waiting meanwhile
//! together (group commit): their records in one statement, their queue rows in another, so a
//! batch of submissions costs a few statements and one fsync, and no call is ever recorded
//! without being queued.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use sluice_core::batch::GroupCommit;
use sluice_core::{
    CallIntake, CallRecord, CallStore, QueueError, QueuedCall, StoreError, SubmitError, Submitted,
    Timestamp,
};
use sqlx::{Row, SqliteConnection};

use crate::{SqliteQueue, SqliteStore};

/// Submissions written together at most (nine parameters each in the records' statement, far
/// under SQLite's limit).
const MAX_BATCH: usize = 256;

/// Submissions waiting to be written at most; more wait for room.
const WAITING: usize = 4096;

/// Batches handed to the writer at once: one is gathered while another is written.
const COMMITTERS: usize = 2;

/// Takes async calls into the embedded queue and store.
#[derive(Debug, Clone)]
pub struct SqliteIntake {
    store: SqliteStore,
    batches: GroupCommit<Submission, Result<Step, SubmitError>>,
}

impl SqliteIntake {
    /// An intake writing to `queue` and `store` (the same database) through the queue's writer.
    /// Starts its committers on the current Tokio runtime.
    pub fn new(queue: SqliteQueue, store: SqliteStore) -> Self {
        let batches = GroupCommit::start(WAITING, MAX_BATCH, COMMITTERS, move |batch| {
            let queue = queue.clone();
            async move { commit(queue, batch).await }
        });
        Self { store, batches }
    }
}

/// One submission on its way to the writer.
struct Submission {
    call: QueuedCall,
    /// The call's headers as stored in its queue row.
    meta: String,
    /// Whether the queue's bounds had room for it (then a place is counted for it).
    room: Result<(), QueueError>,
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
        let stopped =
            |_| SubmitError::Store(StoreError::Unavailable("the intake has stopped".into()));
        let submission = Submission {
            // Counted in by the committer, just before the batch is written.
            room: Ok(()),
            call,
            meta,
        };
        match self.batches.submit(submission).await.map_err(stopped)?? {
            Step::Queued => Ok(Submitted::Queued),
            Step::Refused(e) => Err(e),
            Step::Existing => match CallStore::get(&self.store, &id).await? {
                Some(record) => Ok(Submitted::Existing(Box::new(record))),
                None => Err(SubmitError::Store(StoreError::Unavailable(format!(
                    "call {id} was deleted while it was being submitted again"
                )))),
            },
        }
    }
}

/// Writes a batch of submissions in one savepoint; answers each. Each place counted in the
/// queue's bounds for a submission is given back unless its queue row is written.
async fn commit(queue: SqliteQueue, mut batch: Vec<Submission>) -> Vec<Result<Step, SubmitError>> {
    for s in &mut batch {
        s.room = queue.reserve(&s.call.meta.function, s.call.body.len() as u64);
    }
    let held: Arc<[AtomicBool]> = batch
        .iter()
        .map(|s| AtomicBool::new(s.room.is_ok()))
        .collect();
    let batch = Arc::new(batch);
    let (writing, holding, q) = (batch.clone(), held.clone(), queue.clone());
    let written = queue
        .writer()
        .run_atomic(move |conn| Box::pin(async move { write(conn, &q, &holding, &writing).await }))
        .await;
    let give_back = |i: usize| {
        if held[i].swap(false, Ordering::SeqCst) {
            let call = &batch[i].call;
            queue.unreserve(&call.meta.function, call.body.len() as u64);
        }
    };
    match written {
        Ok(steps) => {
            if steps.iter().any(|s| !matches!(s, Step::Refused(_))) {
                queue.wake();
            }
            steps.into_iter().map(Ok).collect()
        }
        Err(e) => {
            // Rolled back: nothing of the batch was written.
            (0..batch.len()).for_each(give_back);
            let e = StoreError::Unavailable(e.to_string());
            batch
                .iter()
                .map(|_| Err(SubmitError::Store(e.clone())))
                .collect()
        }
    }
}

/// Writes the batch: the records of the calls with room in one statement, the queue rows of
/// those that were new in another; then, one at a time, the rare ones (an id submitted again,
/// a call with no room). `held[i]` says whether a place in the queue's bounds is counted for
/// submission `i`; whatever is not kept is given back.
async fn write(
    conn: &mut SqliteConnection,
    queue: &SqliteQueue,
    held: &[AtomicBool],
    batch: &[Submission],
) -> Result<Vec<Step>, sqlx::Error> {
    let give_back = |i: usize| {
        if held[i].swap(false, Ordering::SeqCst) {
            let call = &batch[i].call;
            queue.unreserve(&call.meta.function, call.body.len() as u64);
        }
    };
    let now = Timestamp::now().as_millis();
    let mut steps: Vec<Option<Step>> = batch.iter().map(|_| None).collect();
    let with_room: Vec<usize> = (0..batch.len())
        .filter(|&i| batch[i].room.is_ok())
        .collect();
    let records: Vec<CallRecord> = with_room
        .iter()
        .map(|&i| CallRecord::queued(&batch[i].call.meta))
        .collect();
    let created = crate::sqlite::insert_new_calls(&mut *conn, records.iter()).await?;
    // The first submission of each new id owns it; a later one in the batch is a resubmission.
    let mut owned = HashSet::with_capacity(created.len());
    let new: Vec<usize> = with_room
        .iter()
        .copied()
        .filter(|&i| {
            let id = batch[i].call.meta.id.as_str();
            created.contains(id) && owned.insert(id)
        })
        .collect();
    let queued = insert_queued(conn, batch, &new, now).await?;
    for &i in &new {
        let call = &batch[i].call;
        steps[i] = Some(if queued.contains(call.meta.id.as_str()) {
            Step::Queued
        } else {
            // The queue holds a call with this id whose record was lost: leave it be.
            give_back(i);
            sqlx::query("DELETE FROM calls WHERE id = ?")
                .bind(call.meta.id.as_str())
                .execute(&mut *conn)
                .await?;
            Step::Refused(SubmitError::Conflict(format!(
                "call id {} is already queued",
                call.meta.id
            )))
        });
    }
    for i in 0..batch.len() {
        if steps[i].is_some() {
            continue;
        }
        let Submission { call, meta, room } = &batch[i];
        give_back(i);
        let found = existing(conn, queue, &held[i], call, meta, now).await?;
        steps[i] = Some(match (found, room) {
            (Some(step), _) => step,
            // A call that exists is answered from its record, however full the queue.
            (None, Err(full)) => Step::Refused(full.clone().into()),
            (None, Ok(())) => Step::Refused(SubmitError::Store(StoreError::Unavailable(format!(
                "call {} is neither new nor recorded",
                call.meta.id
            )))),
        });
    }
    Ok(steps
        .into_iter()
        .map(|s| s.expect("every submission is answered"))
        .collect())
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
        sqlx::query("INSERT INTO queue (call_id, meta, body, available_at) VALUES (?, ?, ?, ?)")
            .bind(id)
            .bind(meta)
            .bind(call.body.as_ref())
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    Ok(Some(Step::Existing))
}

/// Writes the queue rows of `batch[new]` in one statement; returns the ids written (an id the
/// queue holds already is not).
async fn insert_queued(
    conn: &mut SqliteConnection,
    batch: &[Submission],
    new: &[usize],
    now: i64,
) -> Result<HashSet<String>, sqlx::Error> {
    if new.is_empty() {
        return Ok(HashSet::new());
    }
    let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "INSERT INTO queue (call_id, meta, body, available_at) ",
    );
    insert.push_values(new, |mut row, &i| {
        let Submission { call, meta, .. } = &batch[i];
        row.push_bind(call.meta.id.as_str())
            .push_bind(meta.as_str())
            .push_bind(call.body.as_ref())
            .push_bind(now);
    });
    insert.push(" ON CONFLICT (call_id) DO NOTHING RETURNING call_id");
    let rows = insert.build().fetch_all(&mut *conn).await?;
    Ok(rows.iter().map(|row| row.get("call_id")).collect())
}
