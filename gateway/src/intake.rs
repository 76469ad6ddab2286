//! The intake of the cluster form, over any `CallStore` and `CallQueue` (Postgres and
//! JetStream): the records of concurrent submissions are inserted in one statement, then their
//! calls are published together, in a task of their own while the next batch's records go in,
//! and every ack awaited (group commit). A record is written
//! before its call is queued, and deleted again if the call cannot be, so no call runs without
//! a record and no `202` is sent for a call that is not queued.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use sluice_core::batch::GroupCommit;
use sluice_core::{
    CallId, CallIntake, CallQueue, CallRecord, CallState, CallStore, FunctionRef, QueueError,
    QueuedCall, StoreError, SubmitError, Submitted,
};
use tokio::sync::{Semaphore, oneshot};

/// Submissions committed together at most.
const MAX_BATCH: usize = 256;

/// Submissions waiting for a commit at most; more wait for room.
const WAITING: usize = 4096;

/// Batches whose records are inserted at once.
const COMMITTERS: usize = 4;

/// Batches whose calls are being published at once, at most. A committer hands its batch's
/// publishes over and takes the next batch, so inserts and publishes overlap, and a batch
/// whose acks are slow (NATS gone mid-publish, until their timeout) holds no committer: the
/// batches after it are refused at once while NATS is away.
const PUBLISHING: usize = 32;

/// Set in `CallMeta::redrive` of a call published again because the queue took its id for a
/// duplicate (with 30 random bits below it, leaving room for re-drives to count on): its
/// message is a new one, told apart from those of re-drives (counted from 1).
const RESUBMITTED: u32 = 1 << 31;

/// How long a function's count of unfinished calls is trusted while it is well below the
/// bound: counting costs a scan as long as the count, so it is not done for every batch.
const COUNT_TRUSTED_FOR: Duration = Duration::from_secs(1);

/// Functions whose counts are remembered at most; the oldest are forgotten first.
const COUNTS_KEPT: usize = 4096;

/// Takes async calls into a call store and a queue that are separate systems.
#[derive(Debug, Clone)]
pub struct BatchedIntake {
    batches: GroupCommit<QueuedCall, oneshot::Receiver<Result<Submitted, SubmitError>>>,
}

impl BatchedIntake {
    /// An intake over `calls` and `queue` that refuses a call when its function has
    /// `max_unfinished` calls queued or running (see [`Bound`]: gateways submitting at the same
    /// moment may together let a little more past it). Starts its committers on the current
    /// Tokio runtime.
    pub fn new(
        calls: Arc<dyn CallStore>,
        queue: Arc<dyn CallQueue>,
        max_unfinished: Option<u64>,
    ) -> Self {
        let bound = max_unfinished.map(|max| Arc::new(Bound::new(max)));
        let publishing = Arc::new(Semaphore::new(PUBLISHING));
        let batches = GroupCommit::start(WAITING, MAX_BATCH, COMMITTERS, move |batch| {
            let (calls, queue, bound) = (calls.clone(), queue.clone(), bound.clone());
            let publishing = publishing.clone();
            async move { commit(calls, queue, bound.as_deref(), &publishing, batch).await }
        });
        Self { batches }
    }
}

#[async_trait]
impl CallIntake for BatchedIntake {
    async fn submit(&self, call: QueuedCall) -> Result<Submitted, SubmitError> {
        let stopped =
            |e: &dyn std::fmt::Display| SubmitError::Store(StoreError::Unavailable(e.to_string()));
        let answer = self.batches.submit(call).await.map_err(|e| stopped(&e))?;
        answer.await.map_err(|e| stopped(&e))?
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

/// Inserts a batch's records and decides what to do with each call; then hands the publishes
/// to a task of their own and returns where each answer will come.
async fn commit(
    calls: Arc<dyn CallStore>,
    queue: Arc<dyn CallQueue>,
    bound: Option<&Bound>,
    publishing: &Arc<Semaphore>,
    batch: Vec<QueuedCall>,
) -> Vec<oneshot::Receiver<Result<Submitted, SubmitError>>> {
    let (senders, receivers): (Vec<_>, Vec<_>) = batch.iter().map(|_| oneshot::channel()).unzip();
    let answer = |senders: Vec<oneshot::Sender<_>>,
                  answers: Vec<Result<Submitted, SubmitError>>| {
        for (sender, answer) in senders.into_iter().zip(answers) {
            // The client may have gone: what it asked for is done all the same.
            let _ = sender.send(answer);
        }
    };
    let records: Vec<CallRecord> = batch.iter().map(|c| CallRecord::queued(&c.meta)).collect();
    let created = match calls.create_many(&records).await {
        Ok(created) => created,
        Err(e) => {
            answer(
                senders,
                batch.iter().map(|_| Err(e.clone().into())).collect(),
            );
            return receivers;
        }
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
            existing(calls.as_ref(), call).await
        });
    }
    if let Some(bound) = bound {
        bound.refuse_over(calls.as_ref(), &batch, &mut plans).await;
    }
    let permit = publishing
        .clone()
        .acquire_owned()
        .await
        .expect("the semaphore is never closed");
    tokio::spawn(async move {
        let answers = publish(calls.as_ref(), queue.as_ref(), batch, plans, created).await;
        answer(senders, answers);
        drop(permit);
    });
    receivers
}

/// Publishes the calls the plans say to queue, all at once, and awaits every ack; forgets the
/// records of the new calls that were not queued. Answers each submission.
async fn publish(
    calls: &dyn CallStore,
    queue: &dyn CallQueue,
    batch: Vec<QueuedCall>,
    plans: Vec<Plan>,
    created: Vec<bool>,
) -> Vec<Result<Submitted, SubmitError>> {
    let sends = plans.iter().zip(&batch).map(|(plan, call)| async move {
        match plan {
            Plan::Queue | Plan::Existing { requeue: true, .. } => Some(queue.enqueue(call).await),
            _ => None,
        }
    });
    let mut sent = join_all(sends).await;
    // A new record whose id the queue knows already: an earlier submission of it whose publish
    // seemed to fail (a timeout, NATS going away) was stored after all, and its record was
    // deleted. That message may since have been taken and dropped for want of a record, so
    // the call is published again as a new message; if both are there, whichever is taken
    // second finds the call started (at least once, as every delivery).
    let again = plans
        .iter()
        .zip(&batch)
        .zip(&mut sent)
        .map(|((plan, call), sent)| async move {
            if matches!(plan, Plan::Queue) && matches!(sent, Some(Ok(false))) {
                let mut anew = call.clone();
                anew.meta.redrive =
                    RESUBMITTED | (uuid::Uuid::new_v4().as_u128() as u32 & 0x3fff_ffff);
                *sent = Some(queue.enqueue(&anew).await);
            }
        });
    join_all(again).await;
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

/// The bound on a function's unfinished calls, with the last count of each function.
///
/// A count is taken from the store for every batch while a function is near its bound (above
/// nine tenths of it) and at least once a second otherwise; in between, the calls this intake
/// accepted are added to the last count. Other gateways' calls are seen at the next count, so
/// together they can pass the bound by what they accept in a second while it looked far off.
struct Bound {
    max: u64,
    counts: Mutex<HashMap<FunctionRef, Counted>>,
}

#[derive(Clone, Copy)]
struct Counted {
    unfinished: u64,
    at: Instant,
}

impl Bound {
    fn new(max: u64) -> Self {
        Self {
            max,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// The function's unfinished calls with `new` more, without asking the store when the last
    /// count says that is well below the bound.
    fn estimate(&self, function: &FunctionRef, new: u64) -> Option<u64> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let last = counts.get(function)?;
        let estimate = last.unfinished + new;
        (last.at.elapsed() < COUNT_TRUSTED_FOR && estimate <= self.max - self.max / 10)
            .then_some(estimate)
    }

    /// Remembers `unfinished` as the function's count (`counted` when it was read from the
    /// store, else an estimate that keeps the last count's time).
    fn remember(&self, function: &FunctionRef, unfinished: u64, counted: bool) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if counts.len() >= COUNTS_KEPT && !counts.contains_key(function) {
            counts.retain(|_, c| c.at.elapsed() < COUNT_TRUSTED_FOR);
            if counts.len() >= COUNTS_KEPT {
                counts.clear();
            }
        }
        let at = match counts.get(function) {
            Some(last) if !counted => last.at,
            _ => Instant::now(),
        };
        counts.insert(function.clone(), Counted { unfinished, at });
    }

    /// Refuses the newest of the batch's new calls to a function beyond the bound (their own
    /// records are already in the store).
    async fn refuse_over(&self, calls: &dyn CallStore, batch: &[QueuedCall], plans: &mut [Plan]) {
        let max = self.max;
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
            let count = new.len() as u64;
            if let Some(estimate) = self.estimate(function, count) {
                self.remember(function, estimate, false);
                continue;
            }
            let (refused, excess) = match calls.count_unfinished(function, max + count).await {
                Ok(n) if n > max => {
                    self.remember(function, max, true);
                    let full = QueueError::FunctionFull(format!(
                        "function {function} has {max} calls queued or running, the most taken \
                         for one function"
                    ));
                    (full.into(), usize::try_from(n - max).unwrap_or(usize::MAX))
                }
                Ok(n) => {
                    self.remember(function, n, true);
                    continue;
                }
                Err(e) => (SubmitError::Store(e), new.len()),
            };
            for &i in new.iter().rev().take(excess) {
                plans[i] = Plan::Answered(Err(refused.clone()));
            }
        }
    }
}
