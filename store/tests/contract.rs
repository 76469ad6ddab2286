//! Contract tests for the stores and the embedded queue, against real databases: SQLite in a
//! temp dir, and a fresh database per test on the machine's Postgres.

mod pg;

use std::time::Duration;

use bytes::Bytes;
use sluice_core::{
    CallFilter, CallId, CallMeta, CallOutcome, CallQueue, CallRecord, CallResult, CallState,
    CallStore, CallbackOutcome, FunctionDeployment, FunctionRef, FunctionSpec, FunctionStore,
    QueueError, QueuedCall, StoreError, Timestamp,
};
use sluice_store::{PgStore, SqliteQueue, SqliteStore, open_sqlite};

async fn db() -> (tempfile::TempDir, sqlx::SqlitePool) {
    let dir = tempfile::tempdir().unwrap();
    let pool = open_sqlite(&dir.path().join("sluice.db")).await.unwrap();
    (dir, pool)
}

#[tokio::test]
async fn sqlite_functions_contract() {
    let (_dir, pool) = db().await;
    functions_contract(&SqliteStore::new(pool)).await;
}

#[tokio::test]
async fn postgres_functions_contract() {
    let db = pg::FreshDatabase::create().await;
    functions_contract(&PgStore::new(db.pool.clone())).await;
}

#[tokio::test]
async fn sqlite_calls_contract() {
    let (_dir, pool) = db().await;
    calls_contract(&SqliteStore::new(pool)).await;
}

#[tokio::test]
async fn postgres_calls_contract() {
    let db = pg::FreshDatabase::create().await;
    calls_contract(&PgStore::new(db.pool.clone())).await;
}

fn call(id: &str, body: &'static [u8]) -> QueuedCall {
    QueuedCall {
        meta: CallMeta {
            id: CallId::parse(id).unwrap(),
            function: FunctionRef::parse("echo", None).unwrap(),
            method: "PUT".into(),
            path: "/a/b".into(),
            query: Some("x=1".into()),
            headers: vec![("content-type".into(), "text/plain".into())],
            callback_url: Some("http://127.0.0.1:1/cb".into()),
            submitted_at: Timestamp::now(),
        },
        body: Bytes::from_static(body),
    }
}

/// The registry contract, for every `FunctionStore`.
async fn functions_contract<S: FunctionStore + CallStore>(store: &S) {
    let f = FunctionRef::parse("echo", None).unwrap();
    let spec = FunctionSpec {
        function: f.clone(),
        deployment: FunctionDeployment {
            service: "echo".into(),
            env_process: Some("cat".into()),
            ..Default::default()
        },
        replicas: 1,
        created_at: Timestamp::now(),
    };
    FunctionStore::create(store, &spec).await.unwrap();
    assert!(matches!(
        FunctionStore::create(store, &spec).await,
        Err(StoreError::Conflict(_))
    ));
    let mut changed = spec.clone();
    changed.deployment.env_process = Some("sha512sum".into());
    store.update(&changed).await.unwrap();
    assert!(store.set_replicas(&f, 3).await.unwrap());
    let got = FunctionStore::get(store, &f).await.unwrap().unwrap();
    assert_eq!(got.deployment.env_process.as_deref(), Some("sha512sum"));
    assert_eq!(got.replicas, 3);
    assert_eq!(store.list().await.unwrap().len(), 1);
    assert!(store.delete(&f).await.unwrap());
    assert!(!store.delete(&f).await.unwrap());
    assert!(matches!(
        store.update(&spec).await,
        Err(StoreError::NotFound(_))
    ));
}

/// The call store contract, for every `CallStore`.
async fn calls_contract<S: FunctionStore + CallStore>(store: &S) {
    let c = call("c1", b"");
    let rec = CallRecord::queued(&c.meta);
    assert!(CallStore::create(store, &rec).await.unwrap());
    assert!(
        !CallStore::create(store, &rec).await.unwrap(),
        "duplicate id created twice"
    );
    assert_eq!(
        store
            .start_attempt(&c.meta.id, Timestamp::now())
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        store
            .start_attempt(&c.meta.id, Timestamp::now())
            .await
            .unwrap(),
        Some(2)
    );
    let outcome = CallOutcome {
        state: CallState::Succeeded,
        status_code: Some(201),
        error: None,
        finished_at: Timestamp::now(),
        duration_ms: 1500,
    };
    store.finish(&c.meta.id, &outcome).await.unwrap();
    let cb = CallbackOutcome {
        delivered: true,
        status_code: Some(204),
        error: None,
        attempts: 1,
        at: Timestamp::now(),
    };
    store.record_callback(&c.meta.id, &cb).await.unwrap();
    let got = CallStore::get(store, &c.meta.id).await.unwrap().unwrap();
    assert_eq!(got.state, CallState::Succeeded);
    assert_eq!(got.attempts, 2);
    assert_eq!(got.status_code, Some(201));
    assert_eq!(got.duration_seconds, Some(1.5));
    assert_eq!(got.callback, Some(cb));
    let other = call("c2", b"");
    assert!(
        CallStore::create(store, &CallRecord::queued(&other.meta))
            .await
            .unwrap()
    );
    assert!(store.forget(&other.meta.id).await.unwrap());
    assert!(!store.forget(&other.meta.id).await.unwrap());
    assert!(
        CallStore::get(store, &other.meta.id)
            .await
            .unwrap()
            .is_none()
    );
    // Results: kept, replaced, purged by age.
    assert_eq!(store.result(&c.meta.id).await.unwrap(), None);
    let mut kept = CallResult {
        status_code: 201,
        headers: vec![("content-type".into(), "application/octet-stream".into())],
        body: Bytes::from_static(&[0, 159, 146, 150, 255]),
        stored_at: Timestamp::from_millis(5_000),
    };
    store.store_result(&c.meta.id, &kept).await.unwrap();
    assert_eq!(
        store.result(&c.meta.id).await.unwrap().as_ref(),
        Some(&kept)
    );
    kept.status_code = 202;
    store.store_result(&c.meta.id, &kept).await.unwrap();
    assert_eq!(
        store.result(&c.meta.id).await.unwrap().unwrap().status_code,
        202
    );
    assert_eq!(
        store
            .purge_results(Timestamp::from_millis(5_000))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        store
            .purge_results(Timestamp::from_millis(5_001))
            .await
            .unwrap(),
        1
    );
    assert_eq!(store.result(&c.meta.id).await.unwrap(), None);

    // Re-driving: only a failed call whose request was kept; attempts start again.
    let failing = call("redrive-me", b"payload");
    assert!(
        CallStore::create(store, &CallRecord::queued(&failing.meta))
            .await
            .unwrap()
    );
    assert_eq!(store.requeue_failed(&failing.meta.id).await.unwrap(), None);
    store
        .start_attempt(&failing.meta.id, Timestamp::now())
        .await
        .unwrap();
    let gave_up = CallOutcome {
        state: CallState::Failed,
        status_code: Some(500),
        error: Some("gave up".into()),
        finished_at: Timestamp::now(),
        duration_ms: 3,
    };
    store.finish(&failing.meta.id, &gave_up).await.unwrap();
    assert_eq!(
        store.requeue_failed(&failing.meta.id).await.unwrap(),
        None,
        "nothing kept yet"
    );
    store
        .keep_request(&failing, Timestamp::now())
        .await
        .unwrap();
    let back = store
        .requeue_failed(&failing.meta.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.body, failing.body);
    assert_eq!(back.meta.id, failing.meta.id);
    let record = CallStore::get(store, &failing.meta.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (record.state, record.attempts, record.error),
        (CallState::Queued, 0, None)
    );
    assert_eq!(
        store.requeue_failed(&failing.meta.id).await.unwrap(),
        None,
        "re-driven twice"
    );
    assert!(store.forget(&failing.meta.id).await.unwrap());

    // Cancelling: only a queued call; a cancelled one never starts.
    let doomed = call("cancel-me", b"");
    assert!(
        CallStore::create(store, &CallRecord::queued(&doomed.meta))
            .await
            .unwrap()
    );
    let cancelled = store
        .cancel(&doomed.meta.id, Timestamp::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cancelled.state, CallState::Cancelled);
    assert_eq!(
        store
            .start_attempt(&doomed.meta.id, Timestamp::now())
            .await
            .unwrap(),
        None
    );
    let done = store
        .cancel(&c.meta.id, Timestamp::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        done.state,
        CallState::Succeeded,
        "a finished call was cancelled"
    );
    assert!(
        store
            .cancel(&CallId::parse("nope").unwrap(), Timestamp::now())
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.forget(&doomed.meta.id).await.unwrap());

    // Listing: newest first, filtered, paged by (submitted_at, id).
    for i in 0..6 {
        let mut c = call(&format!("l{i}"), b"");
        c.meta.submitted_at = Timestamp::from_millis(1_000 + i / 2); // pairs share a time
        if i % 3 == 0 {
            c.meta.function = FunctionRef::parse("other", None).unwrap();
        }
        assert!(
            CallStore::create(store, &CallRecord::queued(&c.meta))
                .await
                .unwrap()
        );
    }
    store
        .finish(&CallId::parse("l4").unwrap(), &outcome)
        .await
        .unwrap();
    let ids = |calls: Vec<CallRecord>| {
        calls
            .into_iter()
            .map(|c| c.id.to_string())
            .collect::<Vec<_>>()
    };
    let echo = FunctionRef::parse("echo", None).unwrap();
    let mut filter = CallFilter {
        function: Some(echo.clone()),
        limit: 3,
        ..Default::default()
    };
    let page = store.list_calls(&filter).await.unwrap();
    assert_eq!(ids(page.clone()), ["c1", "l5", "l4"]);
    let last = page.last().unwrap();
    filter.before = Some((last.submitted_at, last.id.clone()));
    // l4 and l5 share a submission time: the id breaks the tie, so the page after l4 is exact.
    assert_eq!(ids(store.list_calls(&filter).await.unwrap()), ["l2", "l1"]);
    let succeeded = CallFilter {
        state: Some(CallState::Succeeded),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        ids(store.list_calls(&succeeded).await.unwrap()),
        ["c1", "l4"]
    );
    let other = CallFilter {
        function: Some(FunctionRef::parse("other", None).unwrap()),
        limit: 10,
        ..Default::default()
    };
    assert_eq!(ids(store.list_calls(&other).await.unwrap()), ["l3", "l0"]);
    let missing = CallId::parse("nope").unwrap();
    assert!(matches!(
        store.start_attempt(&missing, Timestamp::now()).await,
        Err(StoreError::NotFound(_))
    ));
}

#[tokio::test]
async fn queue_delivers_in_order_and_ack_removes() {
    let (_dir, pool) = db().await;
    let q = SqliteQueue::new(pool, Duration::from_secs(30));
    assert!(q.enqueue(&call("a", b"first")).await.unwrap());
    assert!(q.enqueue(&call("b", b"second")).await.unwrap());
    assert!(
        !q.enqueue(&call("a", b"dup")).await.unwrap(),
        "same id queued twice"
    );
    let d1 = q.next(Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(
        d1.call,
        call("a", b"first").with_time(d1.call.meta.submitted_at)
    );
    assert_eq!(d1.delivery_count, 1);
    let d2 = q.next(Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(d2.call.meta.id.as_str(), "b");
    assert!(
        q.next(Duration::ZERO).await.unwrap().is_none(),
        "leased calls were handed out again"
    );
    d1.lease.ack().await.unwrap();
    d2.lease.ack().await.unwrap();
    assert_eq!(q.pending().await.unwrap(), 0);
}

#[tokio::test]
async fn expired_lease_redelivers_and_stale_holder_is_told() {
    let (_dir, pool) = db().await;
    let q = SqliteQueue::new(pool, Duration::from_millis(200));
    q.enqueue(&call("a", b"x")).await.unwrap();
    let first = q.next(Duration::ZERO).await.unwrap().unwrap();
    // Nobody keeps the lease alive: it must come back within a bounded time.
    let second = q
        .next(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("not redelivered");
    assert_eq!(second.delivery_count, 2);
    assert_eq!(first.lease.ack().await, Err(QueueError::LeaseLost));
    second.lease.ack().await.unwrap();
}

#[tokio::test]
async fn keep_alive_holds_the_call() {
    let (_dir, pool) = db().await;
    let q = SqliteQueue::new(pool, Duration::from_secs(1));
    q.enqueue(&call("a", b"x")).await.unwrap();
    let d = q.next(Duration::ZERO).await.unwrap().unwrap();
    // Six renewals 250 ms apart outlast the lease one and a half times.
    for _ in 0..6 {
        d.lease.keep_alive().await.unwrap();
        assert!(q.next(Duration::from_millis(250)).await.unwrap().is_none());
    }
    d.lease.ack().await.unwrap();
}

#[tokio::test]
async fn release_with_delay_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.db");
    {
        let q = SqliteQueue::new(open_sqlite(&path).await.unwrap(), Duration::from_secs(60));
        q.enqueue(&call("a", b"x")).await.unwrap();
        let d = q.next(Duration::ZERO).await.unwrap().unwrap();
        d.lease.release(Duration::ZERO).await.unwrap();
        let d = q.next(Duration::ZERO).await.unwrap().unwrap();
        d.lease.release(Duration::from_secs(3600)).await.unwrap();
        assert!(
            q.next(Duration::ZERO).await.unwrap().is_none(),
            "delay not honoured"
        );
        q.enqueue(&call("b", b"y")).await.unwrap();
        // Held when the "process" goes away, with a long lease.
        let held = q.next(Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(held.call.meta.id.as_str(), "b");
        std::mem::forget(held);
    }
    let q = SqliteQueue::new(open_sqlite(&path).await.unwrap(), Duration::from_secs(60));
    assert_eq!(q.release_all_leases().await.unwrap(), 1);
    let d = q.next(Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(d.call.meta.id.as_str(), "b");
    assert_eq!(d.call.body.as_ref(), b"y");
    assert_eq!(q.pending().await.unwrap(), 2);
}

trait WithTime {
    fn with_time(self, t: Timestamp) -> Self;
}

impl WithTime for QueuedCall {
    fn with_time(mut self, t: Timestamp) -> Self {
        self.meta.submitted_at = t;
        self
    }
}
