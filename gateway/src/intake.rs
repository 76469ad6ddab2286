//! The intake of the cluster form, over any `CallStore` and `CallQueue` (Postgres and
//! JetStream): the records of concurrent submissions are inserted in one statement, then their
//! calls are published together and every ack awaited (group commit). A record is written
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

/// Submissions committed together at most.
const MAX_BATCH: usize = 256;

/// Submissions waiting for a commit at most; more wait for room.
const WAITING: usize = 4096;

/// Batches in flight at once: one's records are inserted while another's calls are published.
const COMMITTERS: usize = 4;

/// How long a function's count of unfinished calls is trusted while it is well below the
/// bound: counting costs a scan as long as the count, so it is not done for every batch.
const COUNT_TRUSTED_FOR: Duration = Duration::from_secs(1);

/// Functions whose counts are remembered at most; the oldest are forgotten first.
const COUNTS_KEPT: usize = 4096;

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
        let bound = max_unfinished.map(|max| Arc::new(Bound::new(max)));
        let batches = GroupCommit::start(WAITING, MAX_BATCH, COMMITTERS, move |batch| {
            let (calls, queue, bound) = (calls.clone(), queue.clone(), bound.clone());
            async move { commit(calls.as_ref(), queue.as_ref(), bound.as_deref(), batch).await }
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
    bound: Option<&Bound>,
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
    if let Some(bound) = bound {
        bound.refuse_over(calls, &batch, &mut plans).await;
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
