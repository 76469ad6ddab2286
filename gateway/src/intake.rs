//! The intake of the cluster form, over any `CallStore` and `CallQueue` (Postgres and
//! JetStream): the records of concurrent submissions are inserted in one statement, then their
//! calls are published together and every ack awaited (group commit). A record is written
//! before its call is queued, and deleted again if the call cannot be, so no call runs without
//! a record and no `202` is sent for a call that is not queued.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::join_all;
use sluice_core::batch::GroupCommit;
use sluice_core::{
    CallId, CallIntake, CallQueue, CallRecord, CallState, CallStore, FunctionRef, QueueError,
    QueuedCall, StoreError, SubmitError, Submitted,
};

/// Submissions committed together at most.
const MAX_BATCH: usize = 256;

/// Submissions waiting for a commit at most; more wait for room.
const WAITING: usize = 4096;

/// Batches in flight at once: one's records are inserted while another's calls are published.
const COMMITTERS: usize = 4;

/// Takes async calls into a call store and a queue that are separate systems.
#[derive(Debug, Clone)]
pub struct BatchedIntake {
    batches: GroupCommit<QueuedCall, Result<Submitted, SubmitError>>,
}

impl BatchedIntake {
    /// An intake over `calls` and `queue` that refuses a call when its function has
    /// `max_unfinished` calls queued or running (checked once per function per batch, so
    /// gateways submitting at the same moment may each let one batch past it). Starts its
    /// committers on the current Tokio runtime.
    pub fn new(
        calls: Arc<dyn CallStore>,
        queue: Arc<dyn CallQueue>,
        max_unfinished: Option<u64>,
    ) -> Self {
        let batches = GroupCommit::start(WAITING, MAX_BATCH, COMMITTERS, move |batch| {
            let (calls, queue) = (calls.clone(), queue.clone());
            async move { commit(calls.as_ref(), queue.as_ref(), max_unfinished, batch).await }
        });
        Self { batches }
    }
}

#[async_trait]
impl CallIntake for BatchedIntake {
    async fn submit(&self, call: QueuedCall) -> Result<Submitted, SubmitError> {
        self.batches
            .submit(call)
            .await
            .map_err(|e| SubmitError::Store(StoreError::Unavailable(e.to_string())))?
    }
}

/// What is to be done with one submission once the records are in.
enum Plan {
    /// New: queue it.
    Queue,
    /// Its id had a record already; queue it again if `requeue`.
    Existing {
        record: Box<CallRecord>,
        requeue: bool,
    },
    Answered(Result<Submitted, SubmitError>),
}

async fn commit(
    calls: &dyn CallStore,
    queue: &dyn CallQueue,
    max_unfinished: Option<u64>,
    batch: Vec<QueuedCall>,
) -> Vec<Result<Submitted, SubmitError>> {
    let records: Vec<CallRecord> = batch.iter().map(|c| CallRecord::queued(&c.meta)).collect();
    let created = match calls.create_many(&records).await {
        Ok(created) => created,
        Err(e) => return batch.iter().map(|_| Err(e.clone().into())).collect(),
    };
    let mut plans = Vec::with_capacity(batch.len());
    let mut seen = std::collections::HashSet::with_capacity(batch.len());
    for (call, created) in batch.iter().zip(&created) {
        plans.push(if !seen.insert(&call.meta.id) {
            // The same id twice in one batch: the first decides; this one learns the outcome
            // by asking again (its record may yet be deleted, if the first is refused).
            Plan::Answered(Err(SubmitError::Conflict(format!(
                "call id {} is being submitted; submit it again for its state",
                call.meta.id
            ))))
        } else if *created {
            Plan::Queue
        } else {
            existing(calls, call).await
        });
    }
    if let Some(max) = max_unfinished {
        over_the_bound(calls, &batch, &mut plans, max).await;
    }
    let sends = plans.iter().zip(&batch).map(|(plan, call)| async move {
        match plan {
            Plan::Queue | Plan::Existing { requeue: true, .. } => Some(queue.enqueue(call).await),
            _ => None,
        }
    });
    let sent = join_all(sends).await;
    let mut answers = Vec::with_capacity(batch.len());
    let mut unqueued: Vec<&CallId> = Vec::new();
    for (((plan, sent), call), created) in plans.into_iter().zip(sent).zip(&batch).zip(created) {
        let id = &call.meta.id;
        answers.push(match (plan, sent) {
            (Plan::Answered(answer), _) => {
                if answer.is_err() && created {
                    unqueued.push(id);
                }
                answer
            }
            (Plan::Queue, Some(Ok(true))) => Ok(Submitted::Queued),
            (Plan::Queue, Some(Ok(false))) => {
                // The queue holds a call with this id whose record was lost: leave it be.
                unqueued.push(id);
                Err(SubmitError::Conflict(format!(
                    "call id {id} is already queued"
                )))
            }
            (Plan::Queue, Some(Err(e))) => {
                // Not queued, so not accepted: the client may submit the id again.
                unqueued.push(id);
                Err(e.into())
            }
            (Plan::Existing { record, .. }, None | Some(Ok(_))) => Ok(Submitted::Existing(record)),
            (Plan::Existing { .. }, Some(Err(e))) => Err(e.into()),
            (Plan::Queue, None) => unreachable!("every new call is sent"),
        });
    }
    for id in unqueued {
        if let Err(error) = calls.forget(id).await {
            tracing::error!(call = %id, %error, "could not forget an unqueued call");
        }
    }
    answers
}

/// A submission whose id has a record: answered from it, and queued again if it is a call to
/// the same function still queued (its first submission may have died between record and
/// queue, or be on its way; the queue keeps one call per id).
async fn existing(calls: &dyn CallStore, call: &QueuedCall) -> Plan {
    match calls.get(&call.meta.id).await {
        Ok(Some(record)) => {
            let requeue = record.state == CallState::Queued
                && record.function == call.meta.function.name
                && record.namespace == call.meta.function.namespace;
            Plan::Existing {
                record: Box::new(record),
                requeue,
            }
        }
        Ok(None) => Plan::Answered(Err(SubmitError::Conflict(format!(
            "call id {} is being submitted",
            call.meta.id
        )))),
        Err(e) => Plan::Answered(Err(e.into())),
    }
}

/// Refuses the newest of the batch's new calls to a function beyond its bound (their own
/// records are already counted).
async fn over_the_bound(calls: &dyn CallStore, batch: &[QueuedCall], plans: &mut [Plan], max: u64) {
    let mut by_function: HashMap<&FunctionRef, Vec<usize>> = HashMap::new();
    for (i, plan) in plans.iter().enumerate() {
        if matches!(plan, Plan::Queue) {
            by_function
                .entry(&batch[i].meta.function)
                .or_default()
                .push(i);
        }
    }
    for (function, new) in by_function {
        let counted = calls
            .count_unfinished(function, max + new.len() as u64)
            .await;
        let (refused, excess) = match counted {
            Ok(n) if n > max => {
                let full = QueueError::FunctionFull(format!(
                    "function {function} has {max} calls queued or running, the most taken for \
                     one function"
                ));
                (full.into(), usize::try_from(n - max).unwrap_or(usize::MAX))
            }
            Ok(_) => continue,
            Err(e) => (SubmitError::Store(e), new.len()),
        };
        for &i in new.iter().rev().take(excess) {
            plans[i] = Plan::Answered(Err(refused.clone()));
        }
    }
}
