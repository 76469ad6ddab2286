//! `sluice-queue-worker`: turns queued async calls into invocations and callbacks.
//!
//! For each delivery: mark the call running (the calls taken off the queue together are started
//! in one write), keep its lease alive while the function runs, invoke the function through the
//! gateway's `/function/` route (so the worker needs nothing but HTTP and the queue), record the
//! outcome, POST it to the call's `X-Callback-Url`, and only then ack, recording how the callback
//! went at the same time. A crash anywhere before the ack means the call is delivered again: at
//! least once, never lost.
//!
//! Every delivery continues the call's trace (the submit span's context, stored with the call):
//! a span per attempt, one per callback try, and the time the call waited on the queue; the
//! function and the callback receiver get `traceparent`s of the same trace.

mod callback;
mod invoke;

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sluice_core::trace::{self, SpanTrace, TraceId};
use sluice_core::{
    CallOutcome, CallQueue, CallRecord, CallState, CallStore, CallbackOutcome, Delivery,
    FunctionRef, FunctionStore, QueueError, QueuedCall, RetryPolicy, StoreError, Timestamp,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

/// Queue worker settings; plain data.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Base URL of a gateway, e.g. `http://127.0.0.1:8080`; calls are invoked at its `/function/`.
    pub gateway_url: String,
    /// Calls worked on at once.
    pub concurrency: usize,
    /// Calls of any one function worked on at once. A delivery beyond it goes back on the queue
    /// for a moment, so one slow function cannot take every slot from the others.
    pub function_concurrency: usize,
    /// How long one invocation may take.
    pub invoke_timeout: Duration,
    /// Largest function response kept for the callback.
    pub max_response_bytes: usize,
    /// How long one callback POST may take, and how many tries it gets in all.
    pub callback_timeout: Duration,
    pub callback_attempts: u32,
    /// First wait between callback tries (doubles each time, up to a minute). The call waits
    /// on the queue in between, holding no worker.
    pub callback_backoff: Duration,
    /// At shutdown, how long in-flight calls may take to finish before they are released.
    pub shutdown_grace: Duration,
    /// Largest function response kept for `GET /system/calls/<id>/result`, and for how long.
    pub result_max_bytes: usize,
    pub result_retention: Duration,
    /// How long a finished call's record is kept (then deleted, in batches).
    pub call_retention: Duration,
    /// Sent as `X-Sluice-Internal`: the worker's credential at the gateway, for functions that
    /// require one; its requests are also not counted against the gateway's client in-flight
    /// limit (the worker bounds its own with `concurrency`).
    pub internal_token: Option<String>,
    /// Where callbacks may go.
    pub callbacks: sluice_core::CallbackPolicy,
    /// Signs every callback when set (see `callback::signature`).
    pub callback_signing_key: Option<String>,
}

impl WorkerConfig {
    pub fn new(gateway_url: impl Into<String>) -> Self {
        Self {
            gateway_url: gateway_url.into(),
            concurrency: 32,
            function_concurrency: 24,
            invoke_timeout: Duration::from_secs(300),
            max_response_bytes: 16 * 1024 * 1024,
            callback_timeout: Duration::from_secs(30),
            callback_attempts: 10,
            callback_backoff: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(10),
            result_max_bytes: 1024 * 1024,
            result_retention: Duration::from_secs(24 * 3600),
            call_retention: Duration::from_secs(7 * 24 * 3600),
            internal_token: None,
            callbacks: sluice_core::CallbackPolicy::default(),
            callback_signing_key: None,
        }
    }
}

/// Wait before retrying after the queue or store failed.
const BACKEND_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
struct Worker {
    calls: Arc<dyn CallStore>,
    functions: Arc<dyn FunctionStore>,
    config: Arc<WorkerConfig>,
    http: reqwest::Client,
    /// For callbacks only: resolves through the callback policy.
    callback_http: reqwest::Client,
    /// Cancelled when the shutdown grace is over: in-flight calls give their leases back.
    abandon: CancellationToken,
    /// How often a running call's lease is renewed: a third of the queue's lease.
    heartbeat_every: Duration,
    busy: Arc<FunctionSlots>,
}

/// Calls running per function, bounded by `function_concurrency`.
#[derive(Debug, Default)]
struct FunctionSlots(std::sync::Mutex<HashMap<FunctionRef, Running>>);

/// One function's running calls, and the calls waiting for one of them to end.
#[derive(Debug, Default)]
struct Running {
    calls: usize,
    /// Told each time one of the function's slots is freed (only that function's waiting
    /// calls wake).
    freed: Arc<tokio::sync::Notify>,
}

/// One running call of a function; frees its slot when dropped.
struct FunctionSlot {
    slots: Arc<FunctionSlots>,
    function: FunctionRef,
}

impl FunctionSlots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FunctionRef, Running>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(self: &Arc<Self>, function: &FunctionRef, limit: usize) -> Option<FunctionSlot> {
        self.take_or_wait(function, limit).ok()
    }

    /// A slot of `function`, or (when it is at `limit`) a wake-up registered for its next freed
    /// slot: registered under the lock that frees slots, so none is missed.
    fn take_or_wait(
        self: &Arc<Self>,
        function: &FunctionRef,
        limit: usize,
    ) -> Result<FunctionSlot, Pin<Box<tokio::sync::futures::OwnedNotified>>> {
        let mut running = self.lock();
        let entry = running.entry(function.clone()).or_default();
        if entry.calls >= limit.max(1) {
            let mut freed = Box::pin(entry.freed.clone().notified_owned());
            freed.as_mut().enable();
            return Err(freed);
        }
        entry.calls += 1;
        Ok(FunctionSlot {
            slots: self.clone(),
            function: function.clone(),
        })
    }

    /// A slot of `function` as soon as one is free, or `None` after `patience`.
    async fn wait_for(
        self: &Arc<Self>,
        function: &FunctionRef,
        limit: usize,
        patience: Duration,
    ) -> Option<FunctionSlot> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            match self.take_or_wait(function, limit) {
                Ok(slot) => return Some(slot),
                Err(freed) => tokio::time::timeout_at(deadline, freed).await.ok()?,
            }
        }
    }
}

impl Drop for FunctionSlot {
    fn drop(&mut self) {
        let mut running = self.slots.lock();
        let Some(entry) = running.get_mut(&self.function) else {
            return;
        };
        entry.calls -= 1;
        let freed = entry.freed.clone();
        if entry.calls == 0 {
            running.remove(&self.function);
        }
        drop(running);
        freed.notify_waiters();
    }
}

/// How long a call taken for a function at its concurrency cap waits in the worker for one of
/// the function's calls to end. A function whose calls take less frees a slot within it, so its
/// calls are not cycled through the queue (under load its calls can take tens of milliseconds
/// from start to ack, so a shorter wait sends many back, and the worker's pause after calls
/// put back in a row halves its rate); a slower one's go back, so the worker can take other
/// functions'.
const FUNCTION_BUSY_HOLD: Duration = FUNCTION_BUSY_WAIT;

/// How long a call of a function that is at its concurrency cap waits before it is offered
/// again (plus up to as much again, at random, so they do not come back together).
const FUNCTION_BUSY_WAIT: Duration = Duration::from_millis(500);

/// For each call in a row put back for its function's cap, the worker waits this much longer (up to [`FUNCTION_BUSY_WAIT`]) before taking more, so a
/// backlog of capped functions is not cycled through the queue as fast as the network allows.
const CAPPED_PACE: Duration = Duration::from_millis(20);

/// Works the queue until `shutdown`; then stops taking calls, lets in-flight ones finish within
/// the grace period and releases the rest for redelivery.
pub async fn run(
    queue: Arc<dyn CallQueue>,
    calls: Arc<dyn CallStore>,
    functions: Arc<dyn FunctionStore>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        // The gateway is reached directly: its requests carry the internal token.
        .no_proxy()
        // Idle connections are dropped before the gateway's header-read timeout (10 s by
        // default) closes them, so a call is never sent on a connection being closed.
        .pool_idle_timeout(Duration::from_secs(5))
        .build()
        .expect("a reqwest client with static settings builds");
    let callback_http = callback::client(Arc::new(config.callbacks.clone()));
    let worker = Worker {
        calls,
        functions,
        config: Arc::new(config),
        http,
        callback_http,
        abandon: CancellationToken::new(),
        heartbeat_every: (queue.lease_duration() / 3).max(Duration::from_millis(50)),
        busy: Arc::default(),
    };
    let slots = Arc::new(Semaphore::new(worker.config.concurrency.max(1)));
    let tracker = TaskTracker::new();
    tracker.spawn(purge_results(worker.clone(), shutdown.clone()));
    // Calls in a row put back because their function stayed at its cap.
    let put_back = Arc::new(AtomicU32::new(0));
    loop {
        let in_a_row = put_back.load(Ordering::Relaxed);
        if in_a_row > 0 {
            let pause = CAPPED_PACE.saturating_mul(in_a_row).min(FUNCTION_BUSY_WAIT);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        // As many calls as there are free slots, taken off the queue in one go.
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let next = tokio::select! {
            () = shutdown.cancelled() => break,
            n = queue.next_many(permits.len(), Duration::from_secs(5)) => n,
        };
        let deliveries = match next {
            Ok(deliveries) => deliveries,
            Err(error) => {
                tracing::warn!(%error, "queue unavailable; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(BACKEND_RETRY) => {}
                }
                continue;
            }
        };
        // The calls whose functions have room run now, started together in one write.
        let mut runnable = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let permit = permits.pop().expect("no more deliveries than permits");
            let function = &delivery.call.meta.function;
            let limit = worker.config.function_concurrency;
            if let Some(slot) = worker.busy.take(function, limit) {
                put_back.store(0, Ordering::Relaxed);
                runnable.push((delivery, slot, permit));
                continue;
            }
            // Not an attempt: the call waits a moment for one of its function's calls to end,
            // and if none does it goes back untouched, and this slot takes the next call,
            // which may well be another function's.
            let (worker, put_back) = (worker.clone(), put_back.clone());
            tracker.spawn(async move {
                let mut delivery = delivery;
                let (id, function) = (&delivery.call.meta.id, &delivery.call.meta.function);
                if let Some(attempt) = delivery.started {
                    // Started with its claim, but not running yet: queued again while it
                    // waits (and started anew if it gets a slot).
                    match worker.calls.undo_start(id, attempt).await {
                        Ok(()) => delivery.started = None,
                        Err(error) => {
                            tracing::warn!(call = %id, %error, "could not undo the start of a call held for its function's cap; it counts as an attempt");
                        }
                    }
                }
                match worker.busy.wait_for(function, limit, FUNCTION_BUSY_HOLD).await {
                    Some(slot) => {
                        put_back.store(0, Ordering::Relaxed);
                        worker.handle(delivery).await;
                        drop(slot);
                    }
                    None => {
                        tracing::debug!(call = %id, %function, "function at its concurrency cap; offered again shortly");
                        put_back.fetch_add(1, Ordering::Relaxed);
                        let wait = FUNCTION_BUSY_WAIT.mul_f64(1.0 + rand::random::<f64>());
                        let _ = delivery.lease.release(wait).await;
                    }
                }
                drop(permit);
            });
        }
        if !runnable.is_empty() {
            let (worker, calls) = (worker.clone(), tracker.clone());
            tracker.spawn(async move {
                // Those the queue did not start as it handed them out.
                let ids: Vec<_> = runnable
                    .iter()
                    .filter(|(d, ..)| d.started.is_none())
                    .map(|(d, ..)| d.call.meta.id.clone())
                    .collect();
                let mut started = if ids.is_empty() {
                    HashMap::new()
                } else {
                    // On failure, each call tries again on its own, and is released if it
                    // cannot start.
                    let now = Timestamp::now();
                    worker
                        .calls
                        .start_attempts(&ids, now)
                        .await
                        .unwrap_or_else(|error| {
                            tracing::warn!(%error, calls = ids.len(), "could not start the calls taken together; starting each on its own");
                            HashMap::new()
                        })
                };
                for (mut delivery, slot, permit) in runnable {
                    if delivery.started.is_none() {
                        delivery.started = started.remove(&delivery.call.meta.id);
                    }
                    let worker = worker.clone();
                    calls.spawn(async move {
                        worker.handle(delivery).await;
                        drop((slot, permit));
                    });
                }
            });
        }
    }
    tracker.close();
    if tokio::time::timeout(worker.config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        tracing::info!(
            in_flight = tracker.len(),
            "grace period over; releasing in-flight calls"
        );
        worker.abandon.cancel();
        tracker.wait().await;
    }
}

/// What became of one delivery.
enum Step {
    /// A final outcome was recorded (and the callback attempted): ack, recording how the
    /// callback went (if one was tried) at the same time.
    Done {
        state: CallState,
        callback: Option<CallbackOutcome>,
    },
    /// The attempt failed and will be retried after the delay: release.
    Retry(Duration),
}

impl Step {
    /// Done, with no callback tried.
    fn done(state: CallState) -> Self {
        Self::Done {
            state,
            callback: None,
        }
    }
}

impl Worker {
    /// Works one delivery.
    async fn handle(&self, delivery: Delivery) {
        let Delivery {
            call,
            delivery_count,
            lease,
            started,
        } = delivery;
        let id = call.meta.id.clone();
        let claimed = std::time::SystemTime::now();
        // The trace the call continues (its submit span's context), for the lines logged
        // before the delivery's own span is made.
        let stored = call.meta.trace_parent();
        let trace_id = TraceField(stored.map(|t| t.trace_id));
        // Most deliveries are new calls, started in one write. A call that already finished is
        // back only because its callback is still owed (or a crash came between the callback
        // and the ack): it is not run again.
        let starting = match started {
            Some(attempt) => Ok(Some(attempt)),
            None => self.start(&call.meta).await,
        };
        let (attempt, earlier) = match starting {
            Ok(Some(n)) => (n, None),
            Ok(None) => match self.calls.get(&id).await {
                Ok(Some(record))
                    if matches!(record.state, CallState::Succeeded | CallState::Failed) =>
                {
                    (record.attempts, Some(record))
                }
                Ok(_) => {
                    tracing::info!(call = %id, %trace_id, "cancelled; not run");
                    if let Err(error) = lease.ack().await {
                        tracing::warn!(call = %id, %trace_id, %error, "ack of a cancelled call failed");
                    }
                    return;
                }
                Err(error) => {
                    tracing::warn!(call = %id, %trace_id, %error, "cannot read the call's record; releasing it");
                    let _ = lease.release(BACKEND_RETRY).await;
                    return;
                }
            },
            Err(error) => {
                tracing::warn!(call = %id, %trace_id, %error, "could not record the call as running; releasing it");
                let _ = lease.release(BACKEND_RETRY).await;
                return;
            }
        };
        // The delivery's span, under the submit span: an attempt of the call, or a try of the
        // callback of a call that finished on an earlier delivery.
        let function = &call.meta.function;
        let span = match &earlier {
            None => tracing::info_span!(
                "attempt",
                call_id = %id,
                trace_id = tracing::field::Empty,
                function = %function,
                attempt,
            ),
            Some(record) => tracing::info_span!(
                "callback",
                call_id = %id,
                trace_id = tracing::field::Empty,
                function = %function,
                callback_try = record.callback.as_ref().map_or(0, |c| c.attempts) + 1,
            ),
        };
        let joined = SpanTrace::remote(&span, stored.as_ref());
        span.record("trace_id", tracing::field::display(joined.trace_id()));
        if let (None, 1, Some(stored), true) = (&earlier, attempt, &stored, joined.exported()) {
            // From the submission to this first claim: made now, with the times it had (and
            // only when spans are exported: its attributes are made for it).
            trace::past_span(
                "queue wait",
                stored,
                call.meta.submitted_at.to_system_time(),
                claimed,
                &[
                    ("call_id", id.to_string()),
                    ("trace_id", stored.trace_id.to_string()),
                    ("function", function.to_string()),
                ],
            );
        }
        self.work(call, attempt, earlier, delivery_count, lease, &joined)
            .instrument(span)
            .await;
    }

    /// Runs a delivery once it is started, in its span: the attempt (or the callback owed),
    /// with the lease kept alive meanwhile, then ack or release.
    async fn work(
        &self,
        call: QueuedCall,
        attempt: u32,
        earlier: Option<CallRecord>,
        delivery_count: u32,
        lease: Box<dyn sluice_core::Lease>,
        joined: &SpanTrace,
    ) {
        let id = call.meta.id.clone();
        tracing::debug!(call = %id, attempt, delivery_count, "delivered");

        // In-progress acks while the call runs, so a long call is not redelivered elsewhere.
        let lost = CancellationToken::new();
        let heartbeat = async {
            loop {
                tokio::time::sleep(self.heartbeat_every).await;
                match lease.keep_alive().await {
                    Ok(()) => {}
                    Err(QueueError::LeaseLost) => {
                        lost.cancel();
                        return;
                    }
                    Err(error) => tracing::warn!(call = %id, %error, "in-progress ack failed"),
                }
            }
        };
        let work = async {
            match &earlier {
                Some(record) => self.owe_callback(&call, record, joined).await,
                None => self.run_call(&call, attempt, joined).await,
            }
        };
        let finished = tokio::select! {
            r = work => Some(r),
            () = heartbeat => None,
            () = lost.cancelled() => None,
            () = self.abandon.cancelled() => None,
        };
        match finished {
            Some(Ok(Step::Done { state, callback })) => {
                tracing::info!(call = %id, state = state.as_str(), attempt, "call finished");
                // The call's last two writes go together (with the embedded queue, into one
                // transaction): the callback's record cannot change what is done. Should it
                // fail, the record lacks how the callback went, and the call is done anyway
                // (not called back again).
                let recorded = async {
                    match &callback {
                        Some(outcome) => self.calls.record_callback(&id, outcome).await,
                        None => Ok(()),
                    }
                };
                let (recorded, acked) = tokio::join!(recorded, lease.ack());
                if let Err(error) = recorded {
                    tracing::warn!(call = %id, %error, "could not record how the callback went");
                }
                if let Err(error) = acked {
                    tracing::warn!(call = %id, %error, "ack failed; the call may be delivered again");
                }
            }
            Some(Ok(Step::Retry(delay))) => {
                tracing::info!(call = %id, attempt, ?delay, "not done yet; back on the queue");
                if let Err(error) = lease.release(delay).await {
                    tracing::warn!(call = %id, %error, "could not schedule the retry; the lease will run out instead");
                }
            }
            Some(Err(error)) => {
                tracing::warn!(call = %id, %error, "could not record the outcome; the call will be delivered again");
                let _ = lease.release(BACKEND_RETRY).await;
            }
            None if lost.is_cancelled() => {
                tracing::warn!(call = %id, "lease lost while running; another worker has the call");
            }
            None => {
                tracing::info!(call = %id, "released at shutdown; it will run again");
                let _ = lease.release(Duration::ZERO).await;
            }
        }
    }

    /// Runs one attempt of the call (in its span, `joined`) and records what came of it.
    async fn run_call(
        &self,
        call: &QueuedCall,
        attempt: u32,
        joined: &SpanTrace,
    ) -> Result<Step, StoreError> {
        let id = &call.meta.id;
        let result = invoke::invoke(&self.http, &self.config, call, joined.context()).await;
        let mut outcome = result.outcome();
        // The retry policy matters only to a failure or a retry: a first attempt that succeeds
        // does not read the registry for it.
        let policy = if outcome.state == CallState::Failed || attempt > 1 {
            self.policy(&call.meta.function).await
        } else {
            RetryPolicy::default()
        };
        let status = outcome.status_code;
        if outcome.state == CallState::Failed {
            let reason = outcome.error.clone().unwrap_or_default();
            if policy.retries(status) && attempt < policy.attempts {
                let retry_after = result.retry_after();
                let delay = policy.backoff(attempt, retry_after, rand::random::<f64>());
                outcome.state = CallState::Queued;
                outcome.error = Some(format!(
                    "attempt {attempt} of {} failed: {reason}; retrying in {:.1}s",
                    policy.attempts,
                    delay.as_secs_f64()
                ));
                self.calls.finish(id, &outcome).await?;
                return Ok(Step::Retry(delay));
            }
            if attempt > 1 {
                outcome.error = Some(format!("gave up after {attempt} attempts: {reason}"));
            }
            // Kept first, so a failed call can always be re-driven.
            self.calls.keep_request(call, Timestamp::now()).await?;
        }
        let owes_callback = call.meta.callback_url.is_some();
        let kept = self.result_to_keep(&result, owes_callback);
        self.calls
            .finish_with_result(id, &outcome, kept.as_ref())
            .await?;
        let Some(url) = call.meta.callback_url.as_deref() else {
            return Ok(Step::done(outcome.state));
        };
        let payload = callback::Payload::from_invocation(&result, retried(attempt, &policy));
        // The callback's own span, under the attempt's.
        let span = tracing::info_span!(
            "callback",
            call_id = %id,
            trace_id = %joined.trace_id(),
            function = %call.meta.function,
            callback_try = 1,
        );
        let sent = SpanTrace::local(&span, joined);
        self.callback(call, &payload, url, 0, outcome.state, &sent)
            .instrument(span)
            .await
    }

    /// Tries again the callback of a call that finished on an earlier delivery (in the
    /// delivery's callback span, `joined`).
    async fn owe_callback(
        &self,
        call: &QueuedCall,
        record: &CallRecord,
        joined: &SpanTrace,
    ) -> Result<Step, StoreError> {
        let (Some(url), false) = (
            call.meta.callback_url.as_deref(),
            record.callback.as_ref().is_some_and(|c| c.delivered),
        ) else {
            return Ok(Step::done(record.state));
        };
        let tried = record.callback.as_ref().map_or(0, |c| c.attempts);
        if tried >= self.config.callback_attempts {
            return Ok(Step::done(record.state));
        }
        let policy = self.policy(&call.meta.function).await;
        let payload = callback::Payload::from_kept(
            self.calls.result(&call.meta.id).await?,
            record.error.as_deref(),
            record.duration_seconds.unwrap_or_default(),
            retried(record.attempts, &policy),
        );
        self.callback(call, &payload, url, tried, record.state, joined)
            .await
    }

    /// One try of the callback, in its span (`joined`). Asks for another delivery if it failed
    /// and tries are left (recording this one first); else the call is done, and how the
    /// callback went is recorded as it is acked.
    async fn callback(
        &self,
        call: &QueuedCall,
        payload: &callback::Payload,
        url: &str,
        tried: u32,
        state: CallState,
        joined: &SpanTrace,
    ) -> Result<Step, StoreError> {
        let id = &call.meta.id;
        let attempts = tried + 1;
        let sent = callback::send(
            &self.callback_http,
            &self.config,
            &call.meta,
            payload,
            url,
            joined.context(),
        )
        .await;
        let outcome = CallbackOutcome {
            delivered: sent.is_ok(),
            status_code: match &sent {
                Ok(code) => Some(*code),
                Err(failure) => failure.status,
            },
            error: sent.as_ref().err().map(|f| f.reason.clone()),
            attempts,
            at: Timestamp::now(),
        };
        let done = Step::Done {
            state,
            callback: Some(outcome.clone()),
        };
        match sent {
            Ok(_) => {
                if payload.body.len() > self.config.result_max_bytes {
                    // Kept only to call back: no longer needed. The callback went: failing
                    // to forget must not send it again (the retention sweep removes it).
                    if let Err(error) = self.calls.forget_result(id).await {
                        tracing::warn!(call = %id, %error, "could not forget an oversized result");
                    }
                }
                Ok(done)
            }
            Err(failure) if failure.refused => {
                let error = failure.reason;
                tracing::warn!(call = %id, %error, "callback refused by the policy; not trying again");
                Ok(done)
            }
            Err(callback::Failure { reason: error, .. })
                if attempts < self.config.callback_attempts =>
            {
                let delay = self
                    .config
                    .callback_backoff
                    .saturating_mul(1 << (attempts - 1).min(16))
                    .min(CALLBACK_BACKOFF_MAX);
                tracing::warn!(call = %id, %error, attempts, ?delay, "callback failed; will try again");
                // Recorded before the call goes back: the next try counts this one.
                self.calls.record_callback(id, &outcome).await?;
                Ok(Step::Retry(delay))
            }
            Err(callback::Failure { reason: error, .. }) => {
                tracing::warn!(call = %id, %error, attempts, "callback failed; giving up");
                Ok(done)
            }
        }
    }

    /// The function's response to keep: for `GET /system/calls/<id>/result` if it is small
    /// enough, and whatever its size while a callback may still need it.
    fn result_to_keep(
        &self,
        invocation: &invoke::Invocation,
        owes_callback: bool,
    ) -> Option<sluice_core::CallResult> {
        let response = invocation.response.as_ref()?;
        if response.body.len() > self.config.result_max_bytes && !owes_callback {
            return None;
        }
        Some(sluice_core::CallResult {
            status_code: response.status,
            headers: response
                .headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                .collect(),
            body: response.body.clone(),
            stored_at: Timestamp::now(),
        })
    }

    /// The function's retry policy; the default if it cannot be read (the function may be gone).
    async fn policy(&self, function: &sluice_core::FunctionRef) -> RetryPolicy {
        match self.functions.get(function).await {
            Ok(Some(spec)) => spec.config.retry.clone(),
            Ok(None) => RetryPolicy::default(),
            Err(error) => {
                tracing::warn!(%function, %error, "cannot read the retry policy; using the default");
                RetryPolicy::default()
            }
        }
    }

    /// Marks the call running, re-creating its record if the store lost it; `None` if the call
    /// must not run (cancelled, finished, or purged after it finished).
    async fn start(&self, meta: &sluice_core::CallMeta) -> Result<Option<u32>, StoreError> {
        match self.calls.start_attempt(&meta.id, Timestamp::now()).await {
            Err(StoreError::NotFound(_)) if self.past_retention(meta) => {
                // A record can only be purged once its call finished (or was cancelled) and
                // its retention passed: this is such a call, delivered once more. Not run.
                tracing::warn!(call = %meta.id, "its record was purged after it finished; not run again");
                Ok(None)
            }
            Err(StoreError::NotFound(_)) => {
                self.calls.create(&CallRecord::queued(meta)).await?;
                self.calls.start_attempt(&meta.id, Timestamp::now()).await
            }
            other => other,
        }
    }

    /// Whether a call was submitted longer ago than finished calls are kept.
    fn past_retention(&self, meta: &sluice_core::CallMeta) -> bool {
        meta.submitted_at.as_millis() < ago(self.config.call_retention).as_millis()
    }
}

/// A trace id in a log line, empty for a call stored without one (by an older gateway).
struct TraceField(Option<TraceId>);

impl std::fmt::Display for TraceField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => id.fmt(f),
            None => Ok(()),
        }
    }
}

/// Longest wait between two tries of a callback.
const CALLBACK_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Retries made and allowed, for the callback's `X-Retry` headers, when there were retries.
fn retried(attempt: u32, policy: &RetryPolicy) -> Option<(u32, u32)> {
    (attempt > 1).then(|| (attempt - 1, policy.attempts.saturating_sub(1)))
}

/// How often kept results past their retention are dropped.
const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Drops kept results past their retention, now and then, until shutdown.
/// The time `d` ago (the epoch if that is before it: a retention of centuries keeps all).
fn ago(d: Duration) -> Timestamp {
    let now = std::time::SystemTime::now();
    Timestamp::from_system_time(now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH))
}

/// How often old results and calls are looked for: every [`PURGE_EVERY`], or a quarter of a
/// shorter retention (at least a second), so nothing outlives its retention by much.
fn purge_every(config: &WorkerConfig) -> Duration {
    (config.result_retention.min(config.call_retention) / 4)
        .clamp(Duration::from_secs(1), PURGE_EVERY)
}

/// Calls deleted per transaction when their retention is over, so the database is never held
/// long by the purge.
const PURGE_BATCH: u32 = 500;

async fn purge_results(worker: Worker, shutdown: CancellationToken) {
    loop {
        let before = ago(worker.config.result_retention);
        match worker.calls.purge_results(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "dropped kept results past their retention"),
            Err(error) => tracing::warn!(%error, "could not drop old results"),
        }
        let before = ago(worker.config.call_retention);
        let mut purged = 0;
        loop {
            match worker.calls.purge_calls(before, PURGE_BATCH).await {
                Ok(n) => {
                    purged += n;
                    if n < u64::from(PURGE_BATCH) || shutdown.is_cancelled() {
                        break;
                    }
                    // Let other writers in between batches.
                    tokio::task::yield_now().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "could not delete old calls");
                    break;
                }
            }
        }
        if purged > 0 {
            tracing::info!(purged, "deleted finished calls past their retention");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(purge_every(&worker.config)) => {}
        }
    }
}

/// Whether a status code counts as success for the call's record.
fn succeeded(status: u16) -> bool {
    (200..400).contains(&status)
}

impl invoke::Invocation {
    fn outcome(&self) -> CallOutcome {
        let (state, error) = match (&self.response, &self.error) {
            (Some(r), _) if succeeded(r.status) => (CallState::Succeeded, None),
            (Some(r), _) => (CallState::Failed, Some(r.describe_failure())),
            (None, Some(e)) => (CallState::Failed, Some(e.clone())),
            (None, None) => (CallState::Failed, Some("no response".into())),
        };
        CallOutcome {
            state,
            status_code: self.response.as_ref().map(|r| r.status),
            error,
            finished_at: self.finished_at,
            duration_ms: u64::try_from(self.duration.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// A server on a free port that answers one request `200` and hands back its head, in lower
/// case: what the worker sent, as a receiver or the gateway sees it.
#[cfg(test)]
pub(crate) async fn one_request() -> (u16, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let head = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the request ended before its head did");
            head.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await
            .unwrap();
        String::from_utf8_lossy(&head).to_lowercase()
    });
    (port, head)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_call_held_for_its_function_takes_the_first_slot_freed() {
        let slots = Arc::new(FunctionSlots::default());
        let name = |n: &str| FunctionRef::new(n, None).expect("a valid name");
        let (echo, other) = (name("echo"), name("other"));
        let running = slots.take(&echo, 1).expect("a free slot");
        assert!(slots.take(&echo, 1).is_none(), "the cap holds");
        // Another function's slot coming and going frees none of echo's.
        drop(slots.take(&other, 1).expect("other's own slot"));
        let patience = Duration::from_secs(30);
        let waiter = tokio::spawn({
            let (slots, echo) = (slots.clone(), echo.clone());
            async move { slots.wait_for(&echo, 1, patience).await.is_some() }
        });
        tokio::task::yield_now().await;
        drop(running);
        assert!(waiter.await.unwrap(), "the held call got the freed slot");
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_call_gives_up_when_no_slot_frees_in_time() {
        let slots = Arc::new(FunctionSlots::default());
        let echo = FunctionRef::new("echo", None).expect("a valid name");
        let _running = slots.take(&echo, 1).expect("a free slot");
        let started = tokio::time::Instant::now();
        assert!(slots.wait_for(&echo, 1, FUNCTION_BUSY_HOLD).await.is_none());
        assert_eq!(started.elapsed(), FUNCTION_BUSY_HOLD);
    }
}
