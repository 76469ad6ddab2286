//! Contract tests for the stores and the embedded queue, against real databases: SQLite in a
//! temp dir, and a fresh database per test on the machine's Postgres.

use std::time::Duration;

use bytes::Bytes;
use sluice_core::{
    AttemptOutcome, CallFilter, CallId, CallOutcome, CallQueue, CallRecord, CallResult, CallState,
    CallStore, CallTimeline, CallbackDelivery, CallbackOutcome, FunctionDeployment, FunctionRef,
    FunctionSpec, FunctionStore, QueueError, SecretValue, Secrets, StoreError, TIMELINE_ATTEMPTS,
    TIMELINE_CALLBACKS, TIMELINE_ERROR_CHARS, TIMELINE_REDRIVES, Timestamp,
};
use sluice_store::{
    CachedFunctions, PgStore, SealedSecrets, SecretsKey, SqliteQueue, SqliteStore, open_postgres,
    open_sqlite,
};
use sluice_testkit::FreshDatabase;
use sluice_testkit::queue_contract::{self, call};

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
async fn cached_functions_contract() {
    let (_dir, pool) = db().await;
    functions_contract(&CachedFunctions::new(std::sync::Arc::new(
        SqliteStore::new(pool),
    )))
    .await;
}

fn spec_of(name: &str, namespace: &str, created_at: i64) -> FunctionSpec {
    FunctionSpec::new(
        FunctionRef::parse(name, Some(namespace)).unwrap(),
        FunctionDeployment {
            service: name.into(),
            env_process: Some("cat".into()),
            ..Default::default()
        },
        1,
        Timestamp::from_millis(created_at),
    )
    .unwrap()
}

/// Memory answers as the database does, whether it was loaded before the writes or after
/// them: same functions, same order, same creation times, same configuration.
#[tokio::test]
async fn the_cached_registry_answers_as_the_database_does() {
    let (_dir, pool) = db().await;
    let store = std::sync::Arc::new(SqliteStore::new(pool));
    let early = CachedFunctions::new(store.clone());
    // Loaded (empty) before any write: every write must reach memory.
    assert!(early.list().await.unwrap().is_empty());
    for (name, namespace, at) in [("b", "dev", 1), ("a", "prod", 2), ("c", "dev", 3)] {
        early.create(&spec_of(name, namespace, at)).await.unwrap();
    }
    let b = FunctionRef::parse("b", Some("dev")).unwrap();
    let mut changed = spec_of("b", "dev", 99);
    changed.deployment.env_process = Some("sha512sum".into());
    early.update(&changed).await.unwrap();
    assert!(early.set_replicas(&b, 4).await.unwrap());
    assert!(
        early
            .delete(&FunctionRef::parse("c", Some("dev")).unwrap())
            .await
            .unwrap()
    );
    assert!(
        !early
            .set_replicas(&FunctionRef::parse("gone", None).unwrap(), 1)
            .await
            .unwrap()
    );
    // Loaded after the writes, from the database.
    let late = CachedFunctions::new(store.clone());
    let summary = |specs: Vec<FunctionSpec>| -> Vec<(String, String, u32, i64, Option<String>)> {
        specs
            .into_iter()
            .map(|s| {
                (
                    s.function.namespace,
                    s.function.name,
                    s.replicas,
                    s.created_at.as_millis(),
                    s.deployment.env_process,
                )
            })
            .collect()
    };
    let want = summary(store.list().await.unwrap());
    assert_eq!(
        want,
        vec![
            ("dev".into(), "b".into(), 4, 1, Some("sha512sum".into())),
            ("prod".into(), "a".into(), 1, 2, Some("cat".into())),
        ]
    );
    assert_eq!(summary(early.list().await.unwrap()), want);
    assert_eq!(summary(late.list().await.unwrap()), want);
    let got = early.get(&b).await.unwrap().unwrap();
    let stored = FunctionStore::get(store.as_ref(), &b)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.config, stored.config);
    let configs: Vec<FunctionRef> = early
        .configs()
        .await
        .unwrap()
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    let listed: Vec<FunctionRef> = store
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.function)
        .collect();
    assert_eq!(configs, listed);
}

/// A caller that goes away mid-write (a client hanging up on a deploy) does not leave the
/// database changed and memory not: the write finishes on its own.
#[tokio::test]
async fn a_registry_write_abandoned_by_its_caller_reaches_memory_too() {
    let (_dir, pool) = db().await;
    let store = std::sync::Arc::new(SqliteStore::new(pool));
    let cached = CachedFunctions::new(store.clone());
    assert!(cached.list().await.unwrap().is_empty());
    let spec = spec_of("left", "dev", 1);
    {
        // Polled exactly once, then dropped: the write is under way and its caller gone.
        let mut create = std::pin::pin!(cached.create(&spec));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(
            create.as_mut().poll(&mut cx).is_pending(),
            "the write finished within its first poll"
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cached.get(&spec.function).await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "memory never got the function"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        FunctionStore::get(store.as_ref(), &spec.function)
            .await
            .unwrap()
            .is_some()
    );
}

/// A write that fails for want of the database may or may not have reached it: memory is
/// dropped rather than trusted, and reads go to the database again.
#[tokio::test]
async fn a_failed_registry_write_drops_memory() {
    let (_dir, pool) = db().await;
    let cached = CachedFunctions::new(std::sync::Arc::new(SqliteStore::new(pool.clone())));
    cached.create(&spec_of("kept", "dev", 1)).await.unwrap();
    assert_eq!(cached.list().await.unwrap().len(), 1);
    // A refusal is the store's answer, not a failure: memory stays.
    assert!(matches!(
        cached.create(&spec_of("kept", "dev", 1)).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(cached.list().await.unwrap().len(), 1);
    pool.close().await;
    assert!(matches!(
        cached.create(&spec_of("lost", "dev", 2)).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(
        matches!(cached.list().await, Err(StoreError::Unavailable(_))),
        "memory answered after a write that may have reached the database"
    );
}

#[tokio::test]
async fn postgres_functions_contract() {
    let db = FreshDatabase::create().await;
    functions_contract(&pg_store(&db).await).await;
}

#[tokio::test]
async fn sqlite_calls_contract() {
    let (_dir, pool) = db().await;
    calls_contract(&SqliteStore::new(pool)).await;
}

#[tokio::test]
async fn postgres_calls_contract() {
    let db = FreshDatabase::create().await;
    calls_contract(&pg_store(&db).await).await;
}

fn test_key() -> SecretsKey {
    // 32 bytes of 0x2a, in base64.
    SecretsKey::from_base64("KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=", "test").unwrap()
}

#[tokio::test]
async fn sqlite_secrets_contract() {
    let (dir, pool) = db().await;
    secrets_contract(&SealedSecrets::sqlite(
        SqliteStore::new(pool.clone()),
        test_key(),
    ))
    .await;
    // The database holds no value in plain text: not in the main file, not in the WAL.
    pool.close().await;
    let mut read = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        // The WAL and shared-memory files go as the store's writer closes its connection,
        // which may be just now.
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        assert!(
            !bytes.windows(PLAIN.len()).any(|w| w == PLAIN.as_bytes()),
            "a secret's value is in {} in plain text",
            path.display()
        );
        read.push(path.file_name().unwrap().to_owned());
    }
    assert!(read.iter().any(|f| f == "sluice.db"), "{read:?}");
}

#[tokio::test]
async fn postgres_secrets_contract() {
    let db = FreshDatabase::create().await;
    let store = pg_store(&db).await;
    secrets_contract(&SealedSecrets::postgres(store, test_key())).await;
    let pool = open_postgres(&db.url, 1).await.unwrap();
    let rows: Vec<Vec<u8>> = sqlx::query_scalar("SELECT sealed FROM secrets")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(!rows.is_empty());
    for sealed in rows {
        assert!(!sealed.windows(PLAIN.len()).any(|w| w == PLAIN.as_bytes()));
    }
}

/// A value the secrets contract stores, looked for in the database afterwards.
const PLAIN: &str = "correct-horse-battery-staple";

async fn secrets_contract(secrets: &SealedSecrets) {
    let value = |s: &str| SecretValue::new(s.as_bytes().to_vec());
    assert!(secrets.names("fn").await.unwrap().is_empty());
    assert_eq!(secrets.get("fn", "db").await.unwrap(), None);
    secrets
        .put("fn", "db", &value("first"), true)
        .await
        .unwrap();
    secrets
        .put("fn", "api-key", &value(PLAIN), true)
        .await
        .unwrap();
    secrets
        .put("dev", "db", &value("dev's"), true)
        .await
        .unwrap();
    // Creating one that exists is a conflict, and changes nothing.
    assert!(matches!(
        secrets.put("fn", "db", &value("again"), true).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(secrets.names("fn").await.unwrap(), ["api-key", "db"]);
    assert_eq!(secrets.count("fn").await.unwrap(), 2);
    assert_eq!(secrets.get("fn", "db").await.unwrap(), Some(value("first")));
    // Updating replaces the value; updating one that is not there is NotFound.
    secrets
        .put("fn", "db", &value("second"), false)
        .await
        .unwrap();
    assert_eq!(
        secrets.get("fn", "db").await.unwrap(),
        Some(value("second"))
    );
    assert_eq!(
        secrets.get("dev", "db").await.unwrap(),
        Some(value("dev's"))
    );
    assert!(matches!(
        secrets.put("fn", "nope", &value("x"), false).await,
        Err(StoreError::NotFound(_))
    ));
    // Bytes that are not text come back whole.
    let raw = SecretValue::new(vec![0, 255, 10, 13, 0]);
    secrets.put("fn", "raw", &raw, true).await.unwrap();
    assert_eq!(secrets.get("fn", "raw").await.unwrap(), Some(raw));
    assert!(secrets.delete("fn", "raw").await.unwrap());
    assert!(!secrets.delete("fn", "raw").await.unwrap());
    assert_eq!(secrets.get("fn", "raw").await.unwrap(), None);
    assert_eq!(secrets.names("fn").await.unwrap(), ["api-key", "db"]);
}

async fn pg_store(db: &FreshDatabase) -> PgStore {
    PgStore::new(open_postgres(&db.url, 4).await.unwrap())
}

async fn functions_contract<S: FunctionStore + ?Sized>(store: &S) {
    let f = FunctionRef::parse("echo", None).unwrap();
    let spec = FunctionSpec::new(
        f.clone(),
        FunctionDeployment {
            service: "echo".into(),
            env_process: Some("cat".into()),
            ..Default::default()
        },
        1,
        Timestamp::now(),
    )
    .unwrap();
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
    CallStore::ping(store).await.unwrap();
    assert_eq!(
        store.backlog().await.unwrap(),
        sluice_core::Backlog::default()
    );
    let c = traced(call("c1", &b""[..]));
    let rec = CallRecord::queued(&c.meta);
    assert!(CallStore::create(store, &rec).await.unwrap());
    assert_eq!(
        store.backlog().await.unwrap(),
        sluice_core::Backlog {
            queued: 1,
            running: 0,
            oldest_queued: Some(rec.submitted_at),
        }
    );
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
    let backlog = store.backlog().await.unwrap();
    assert_eq!((backlog.queued, backlog.running), (0, 1));
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
    assert_eq!(
        got.trace_id.as_deref(),
        Some(TRACE_ID),
        "kept from the submission"
    );
    assert_eq!(got.request_id.as_deref(), Some("req-17"));
    let other = call("c2", &b""[..]);
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
    let failing = call("redrive-me", &b"payload"[..]);
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
        store
            .start_attempt(&failing.meta.id, Timestamp::now())
            .await
            .unwrap(),
        None,
        "a finished call is not started again"
    );
    assert_eq!(
        store.requeue_failed(&failing.meta.id).await.unwrap(),
        None,
        "nothing kept yet"
    );
    assert_eq!(store.kept_request(&failing.meta.id).await.unwrap(), None);
    store
        .keep_request(&failing, Timestamp::now())
        .await
        .unwrap();
    let kept = store.kept_request(&failing.meta.id).await.unwrap().unwrap();
    assert_eq!((&kept.meta, &kept.body), (&failing.meta, &failing.body));
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
    assert_eq!(
        store.kept_request(&failing.meta.id).await.unwrap(),
        None,
        "a re-drive takes the kept request"
    );
    assert!(store.forget(&failing.meta.id).await.unwrap());

    // Cancelling: only a queued call; a cancelled one never starts.
    let doomed = call("cancel-me", &b""[..]);
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
        let mut c = call(&format!("l{i}"), Bytes::new());
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
    let echo = FunctionRef::parse("echo", None).unwrap();
    let unfinished = store.count_unfinished(&echo, 1000).await.unwrap();
    let queued = call("count-me", &b""[..]);
    assert!(
        CallStore::create(store, &CallRecord::queued(&queued.meta))
            .await
            .unwrap()
    );
    assert_eq!(
        store.count_unfinished(&echo, 1000).await.unwrap(),
        unfinished + 1
    );
    assert_eq!(
        store.count_unfinished(&echo, 1).await.unwrap(),
        1,
        "counts no further"
    );
    let other = FunctionRef::parse("nobody", None).unwrap();
    assert_eq!(store.count_unfinished(&other, 1000).await.unwrap(), 0);
    create_many_contract(store).await;
    finish_with_result_contract(store).await;
    start_attempts_contract(store).await;
    retention_contract(store).await;
    timeline_contract(store).await;
    timeline_bounds_contract(store).await;
}

/// The outcome of an attempt that ended at `ms` after `took` ms, in `state`.
fn ended(state: CallState, status: u16, error: Option<&str>, ms: i64, took: u64) -> CallOutcome {
    CallOutcome {
        state,
        status_code: Some(status),
        error: error.map(str::to_owned),
        finished_at: Timestamp::from_millis(ms),
        duration_ms: took,
    }
}

/// A callback try at `ms`.
fn tried(attempt: u32, status: u16, delivered: bool, ms: i64) -> CallbackOutcome {
    CallbackOutcome {
        delivered,
        status_code: Some(status),
        error: (!delivered).then(|| format!("receiver answered {status}")),
        attempts: attempt,
        at: Timestamp::from_millis(ms),
    }
}

/// An attempt as (attempt, redrive, outcome, status, duration).
type AttemptSummary = (u32, u32, AttemptOutcome, Option<u16>, Option<f64>);

/// The attempts of a timeline, summed up.
fn attempts_of(record: &CallRecord) -> Vec<AttemptSummary> {
    record
        .timeline
        .as_ref()
        .expect("get fills the timeline")
        .attempts
        .iter()
        .map(|a| {
            (
                a.attempt,
                a.redrive,
                a.outcome,
                a.status_code,
                a.duration_seconds,
            )
        })
        .collect()
}

/// A call's timeline: each attempt with how it ended (failed and retried, interrupted by a
/// start that came before its finish, given up on, undone), each callback delivery, each
/// re-drive; written by the statements that record each step, and left out of listings.
async fn timeline_contract<S: CallStore>(store: &S) {
    use AttemptOutcome::{Failed, Interrupted, Running, Succeeded};
    let at = Timestamp::from_millis;
    let c = call("timeline", &b"body"[..]);
    let id = &c.meta.id;
    assert!(
        CallStore::create(store, &CallRecord::queued(&c.meta))
            .await
            .unwrap()
    );
    let get = || async { CallStore::get(store, id).await.unwrap().expect("recorded") };
    assert_eq!(get().await.timeline, Some(CallTimeline::default()));

    // Attempt 1 fails and is retried (the worker records the retry as `queued`).
    assert_eq!(store.start_attempt(id, at(1_000)).await.unwrap(), Some(1));
    assert_eq!(
        attempts_of(&get().await),
        [(1, 0, Running, None, None)],
        "started, not finished"
    );
    let retry = ended(
        CallState::Queued,
        503,
        Some("attempt 1 of 4 failed: function answered 503; retrying in 0.5s"),
        1_250,
        250,
    );
    store.finish(id, &retry).await.unwrap();
    // Attempt 2 is cut short (its worker died): attempt 3 starts without it finishing.
    assert_eq!(store.start_attempt(id, at(2_000)).await.unwrap(), Some(2));
    assert_eq!(store.start_attempt(id, at(3_000)).await.unwrap(), Some(3));
    // Attempt 3 fails for good, its response kept with it.
    let gave_up = ended(
        CallState::Failed,
        500,
        Some("gave up after 3 attempts: function answered 500"),
        3_040,
        40,
    );
    let result = CallResult {
        status_code: 500,
        headers: vec![],
        body: Bytes::from_static(b"no"),
        stored_at: at(3_040),
    };
    store
        .finish_with_result(id, &gave_up, Some(&result))
        .await
        .unwrap();
    // Its callback fails once, then is delivered.
    store
        .record_callback(id, &tried(1, 503, false, 3_100))
        .await
        .unwrap();
    store
        .record_callback(id, &tried(2, 200, true, 4_100))
        .await
        .unwrap();
    let failed = get().await;
    assert_eq!(failed.state, CallState::Failed);
    assert_eq!(
        attempts_of(&failed),
        [
            (1, 0, Failed, Some(503), Some(0.25)),
            (2, 0, Interrupted, None, None),
            (3, 0, Failed, Some(500), Some(0.04)),
        ]
    );
    let timeline = failed.timeline.as_ref().unwrap();
    let first = &timeline.attempts[0];
    assert_eq!(
        (first.started_at, first.finished_at),
        (at(1_000), Some(at(1_250)))
    );
    assert_eq!(first.error, retry.error);
    assert_eq!(timeline.attempts[1].started_at, at(2_000));
    assert_eq!(timeline.attempts[1].finished_at, None);
    assert_eq!(timeline.attempts[2].error, gave_up.error);
    assert_eq!(
        timeline.callbacks,
        [
            CallbackDelivery {
                attempt: 1,
                at: at(3_100),
                delivered: false,
                status_code: Some(503),
                error: Some("receiver answered 503".into()),
            },
            CallbackDelivery {
                attempt: 2,
                at: at(4_100),
                delivered: true,
                status_code: Some(200),
                error: None,
            },
        ]
    );
    assert!(timeline.redrives.is_empty());
    assert_eq!(failed.redrives, 0);

    // Re-driven: the earlier attempts and callbacks stay; the new round's attempts count from
    // one again and say which re-drive they follow.
    store.keep_request(&c, at(5_000)).await.unwrap();
    let before = Timestamp::now();
    assert!(store.requeue_failed(id).await.unwrap().is_some());
    let requeued = get().await;
    assert_eq!((requeued.attempts, requeued.redrives), (0, 1));
    let redrives = &requeued.timeline.as_ref().unwrap().redrives;
    assert_eq!(redrives.len(), 1);
    assert_eq!(redrives[0].redrive, 1);
    assert!(redrives[0].at >= before, "re-driven now");
    // An outcome recorded with no attempt started (a re-drive the queue refused, put back as
    // failed) leaves the earlier attempts as they ended.
    let refused = CallOutcome {
        state: CallState::Failed,
        status_code: None,
        error: Some("re-drive failed".into()),
        finished_at: Timestamp::now(),
        duration_ms: 0,
    };
    store.finish(id, &refused).await.unwrap();
    assert_eq!(attempts_of(&get().await), attempts_of(&failed));
    store.keep_request(&c, at(5_500)).await.unwrap();
    assert!(store.requeue_failed(id).await.unwrap().is_some());
    // Started by a claim and put back untouched: the attempt leaves the timeline.
    assert_eq!(store.start_attempt(id, at(6_000)).await.unwrap(), Some(1));
    store.undo_start(id, 1).await.unwrap();
    assert_eq!(
        attempts_of(&get().await).len(),
        3,
        "the undone start is gone"
    );
    assert_eq!(
        store
            .start_attempts(std::slice::from_ref(id), at(7_000))
            .await
            .unwrap()[id],
        1
    );
    store
        .finish(id, &ended(CallState::Succeeded, 200, None, 7_010, 10))
        .await
        .unwrap();
    let done = get().await;
    assert_eq!(done.state, CallState::Succeeded);
    assert_eq!(
        attempts_of(&done),
        [
            (1, 0, Failed, Some(503), Some(0.25)),
            (2, 0, Interrupted, None, None),
            (3, 0, Failed, Some(500), Some(0.04)),
            (1, 2, Succeeded, Some(200), Some(0.01)),
        ]
    );
    let timeline = done.timeline.as_ref().unwrap();
    assert_eq!(timeline.attempts[3].started_at, at(7_000));
    assert_eq!(
        timeline
            .redrives
            .iter()
            .map(|r| r.redrive)
            .collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(timeline.callbacks.len(), 2, "kept across re-drives");
    assert_eq!(done.redrives, 2);

    // Listings carry no timeline.
    let listed = store
        .list_calls(&CallFilter {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let mine = listed.iter().find(|r| &r.id == id).expect("listed");
    assert_eq!(mine.timeline, None);
    assert_eq!(mine.redrives, 2);
    // The JSON of the record says all of it, in the API's names.
    let json = serde_json::to_value(&done).unwrap();
    assert_eq!(json["redrives"], 2);
    assert_eq!(json["timeline"]["attempts"][1]["outcome"], "interrupted");
    assert_eq!(json["timeline"]["attempts"][0]["durationSeconds"], 0.25);
    assert_eq!(json["timeline"]["attempts"][3]["redrive"], 2);
    assert_eq!(json["timeline"]["callbacks"][0]["statusCode"], 503);
    assert!(store.forget(id).await.unwrap());
}

/// Each part of a timeline keeps only its most recent entries, and errors only so long; the
/// record's own fields are as they were.
async fn timeline_bounds_contract<S: CallStore>(store: &S) {
    let at = Timestamp::from_millis;
    let c = call("timeline-bounds", &b""[..]);
    let id = &c.meta.id;
    assert!(
        CallStore::create(store, &CallRecord::queued(&c.meta))
            .await
            .unwrap()
    );
    let extra = 5;
    let starts = TIMELINE_ATTEMPTS + extra;
    let long_error = "x".repeat(3 * TIMELINE_ERROR_CHARS);
    for n in 1..=starts {
        let ms = i64::try_from(n).unwrap() * 1_000;
        store.start_attempt(id, at(ms)).await.unwrap();
        // Every other attempt is cut short; the last one fails.
        if n % 2 == 1 {
            let retry = ended(CallState::Queued, 503, Some(&long_error), ms + 1, 1);
            store.finish(id, &retry).await.unwrap();
        }
    }
    for n in 1..=TIMELINE_CALLBACKS + extra {
        let mut outcome = tried(u32::try_from(n).unwrap(), 503, false, 100_000);
        outcome.error = Some(long_error.clone());
        store.record_callback(id, &outcome).await.unwrap();
    }
    let record = CallStore::get(store, id).await.unwrap().unwrap();
    assert_eq!(
        record.attempts,
        u32::try_from(starts).unwrap(),
        "the count is not bounded"
    );
    assert_eq!(record.error.as_deref(), Some(long_error.as_str()));
    let timeline = record.timeline.unwrap();
    let numbers: Vec<u32> = timeline.attempts.iter().map(|a| a.attempt).collect();
    let want: Vec<u32> = (extra + 1..=starts)
        .map(|n| u32::try_from(n).unwrap())
        .collect();
    assert_eq!(numbers, want, "the most recent {TIMELINE_ATTEMPTS}");
    let outcomes: Vec<AttemptOutcome> = timeline.attempts.iter().map(|a| a.outcome).collect();
    assert_eq!(
        outcomes[..2],
        [AttemptOutcome::Interrupted, AttemptOutcome::Failed]
    );
    let last = timeline.attempts.last().unwrap();
    assert_eq!(last.outcome, AttemptOutcome::Failed);
    assert_eq!(last.error.as_ref().unwrap().len(), TIMELINE_ERROR_CHARS);
    let tries: Vec<u32> = timeline.callbacks.iter().map(|c| c.attempt).collect();
    let want: Vec<u32> = (extra + 1..=TIMELINE_CALLBACKS + extra)
        .map(|n| u32::try_from(n).unwrap())
        .collect();
    assert_eq!(tries, want, "the most recent {TIMELINE_CALLBACKS}");
    assert_eq!(
        timeline.callbacks[0].error.as_ref().unwrap().len(),
        TIMELINE_ERROR_CHARS
    );
    // Re-drives too.
    let gave_up = ended(CallState::Failed, 500, None, 200_000, 1);
    for _ in 0..TIMELINE_REDRIVES + 2 {
        store.start_attempt(id, at(150_000)).await.unwrap();
        store.finish(id, &gave_up).await.unwrap();
        store.keep_request(&c, at(200_000)).await.unwrap();
        assert!(store.requeue_failed(id).await.unwrap().is_some());
    }
    let record = CallStore::get(store, id).await.unwrap().unwrap();
    let timeline = record.timeline.unwrap();
    let rounds: Vec<u32> = timeline.redrives.iter().map(|r| r.redrive).collect();
    let total = u32::try_from(TIMELINE_REDRIVES + 2).unwrap();
    assert_eq!(rounds, (3..=total).collect::<Vec<_>>());
    assert_eq!(record.redrives, total);
    assert_eq!(timeline.attempts.len(), TIMELINE_ATTEMPTS);
    assert_eq!(timeline.attempts.last().unwrap().redrive, total - 1);
    assert!(store.forget(id).await.unwrap());
}

/// The response kept and the outcome recorded in one go; a call nobody recorded is not found.
async fn finish_with_result_contract<S: CallStore>(store: &S) {
    let c = call("finish-with", &b""[..]);
    assert!(
        CallStore::create(store, &CallRecord::queued(&c.meta))
            .await
            .unwrap()
    );
    let outcome = CallOutcome {
        state: CallState::Succeeded,
        status_code: Some(200),
        error: None,
        finished_at: Timestamp::now(),
        duration_ms: 7,
    };
    let result = CallResult {
        status_code: 200,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: Bytes::from_static(b"answer"),
        stored_at: Timestamp::now(),
    };
    store
        .finish_with_result(&c.meta.id, &outcome, Some(&result))
        .await
        .unwrap();
    let record = CallStore::get(store, &c.meta.id).await.unwrap().unwrap();
    assert_eq!(
        (record.state, record.status_code),
        (CallState::Succeeded, Some(200))
    );
    assert_eq!(
        store.result(&c.meta.id).await.unwrap(),
        Some(result.clone())
    );
    // Kept again (a call that ran again after a crash): the new response replaces the old.
    let again = CallResult {
        body: Bytes::from_static(b"second answer"),
        ..result.clone()
    };
    store
        .finish_with_result(&c.meta.id, &outcome, Some(&again))
        .await
        .unwrap();
    assert_eq!(store.result(&c.meta.id).await.unwrap(), Some(again));
    let nobody = CallId::parse("nobody-recorded").unwrap();
    for kept in [None, Some(&result)] {
        assert!(matches!(
            store.finish_with_result(&nobody, &outcome, kept).await,
            Err(StoreError::NotFound(_))
        ));
    }
}

/// Many calls started in one write, as `start_attempt` starts each: queued and running calls
/// start their next attempt; finished, cancelled and unknown ones are left out, unchanged.
async fn start_attempts_contract<S: CallStore>(store: &S) {
    let new = |id: &str| CallRecord::queued(&call(id, &b""[..]).meta);
    let id = |id: &str| CallId::parse(id).unwrap();
    for name in ["many-new", "many-again", "many-done", "many-cancelled"] {
        assert!(CallStore::create(store, &new(name)).await.unwrap());
    }
    store
        .start_attempt(&id("many-again"), Timestamp::now())
        .await
        .unwrap();
    store
        .start_attempt(&id("many-done"), Timestamp::now())
        .await
        .unwrap();
    let done = CallOutcome {
        state: CallState::Succeeded,
        status_code: Some(200),
        error: None,
        finished_at: Timestamp::now(),
        duration_ms: 1,
    };
    store.finish(&id("many-done"), &done).await.unwrap();
    store
        .cancel(&id("many-cancelled"), Timestamp::now())
        .await
        .unwrap();
    let at = Timestamp::from_millis(1_700_000_000_000);
    let ids = [
        "many-new",
        "many-again",
        "many-done",
        "many-cancelled",
        "many-ghost",
    ]
    .map(id);
    let started = store.start_attempts(&ids, at).await.unwrap();
    assert_eq!(
        started,
        [(id("many-new"), 1), (id("many-again"), 2)]
            .into_iter()
            .collect()
    );
    let got = |name: &str| {
        let id = id(name);
        async move { CallStore::get(store, &id).await.unwrap().expect("recorded") }
    };
    let again = got("many-again").await;
    assert_eq!(
        (again.state, again.attempts, again.started_at),
        (CallState::Running, 2, Some(at))
    );
    assert_eq!(got("many-done").await.state, CallState::Succeeded);
    assert_eq!(got("many-done").await.attempts, 1);
    assert_eq!(got("many-cancelled").await.state, CallState::Cancelled);
    // More than one statement's worth.
    let lots: Vec<CallRecord> = (0..700).map(|i| new(&format!("start-{i}"))).collect();
    store.create_many(&lots).await.unwrap();
    let ids: Vec<CallId> = lots.iter().map(|r| r.id.clone()).collect();
    let started = store.start_attempts(&ids, at).await.unwrap();
    assert_eq!(started.len(), 700);
    assert!(started.values().all(|attempt| *attempt == 1));
    assert!(store.start_attempts(&[], at).await.unwrap().is_empty());
}

/// The trace a test call continues.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// A call as the gateway stores it: with the submit span's `traceparent` and a request id.
fn traced(mut call: sluice_core::QueuedCall) -> sluice_core::QueuedCall {
    use sluice_core::trace::{REQUEST_ID, TRACEPARENT};
    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    call.meta.headers.push((TRACEPARENT.into(), traceparent));
    call.meta.headers.push((REQUEST_ID.into(), "req-17".into()));
    call
}

/// Many records in one statement: each new id created once, by its first record; an id that
/// exists is left as it was.
async fn create_many_contract<S: CallStore>(store: &S) {
    let record = |id: &str| CallRecord::queued(&traced(call(id, &b""[..])).meta);
    assert!(CallStore::create(store, &record("many-0")).await.unwrap());
    store
        .start_attempt(&CallId::parse("many-0").unwrap(), Timestamp::now())
        .await
        .unwrap();
    let batch = ["many-1", "many-0", "many-2", "many-1"].map(record);
    assert_eq!(
        store.create_many(&batch).await.unwrap(),
        [true, false, true, false]
    );
    let got = |id: &str| {
        let id = CallId::parse(id).unwrap();
        async move { CallStore::get(store, &id).await.unwrap().expect("recorded") }
    };
    assert_eq!(
        got("many-0").await.state,
        CallState::Running,
        "left as it was"
    );
    let two = got("many-2").await;
    assert_eq!(
        (two.state, two.method.as_str(), two.path.as_str()),
        (CallState::Queued, "PUT", "/a/b")
    );
    assert_eq!(two.callback_url.as_deref(), Some("http://127.0.0.1:1/cb"));
    assert_eq!(
        (two.trace_id.as_deref(), two.request_id.as_deref()),
        (Some(TRACE_ID), Some("req-17"))
    );
    // More than one statement's worth.
    let lots: Vec<CallRecord> = (0..1200).map(|i| record(&format!("lots-{i}"))).collect();
    let created = store.create_many(&lots).await.unwrap();
    assert_eq!(created.len(), 1200);
    assert!(created.iter().all(|c| *c));
    assert!(store.create_many(&[]).await.unwrap().is_empty());
}

/// Finished calls past their retention go, in bounded batches, with what was kept for them;
/// calls still queued or running stay, however old.
async fn retention_contract<S: CallStore>(store: &S) {
    let at = |ms: i64| Timestamp::from_millis(ms);
    let finish = |state, ms| CallOutcome {
        state,
        status_code: Some(200),
        error: None,
        finished_at: at(ms),
        duration_ms: 1,
    };
    for (id, end) in [
        ("old-1", Some((CallState::Succeeded, 1_000))),
        ("old-2", Some((CallState::Failed, 2_000))),
        ("old-3", Some((CallState::Succeeded, 3_000))),
        ("new-1", Some((CallState::Succeeded, 90_000))),
        ("queued-old", None),
    ] {
        let c = call(id, &b"body"[..]);
        assert!(
            CallStore::create(store, &CallRecord::queued(&c.meta))
                .await
                .unwrap()
        );
        if let Some((state, ms)) = end {
            store.start_attempt(&c.meta.id, at(ms - 1)).await.unwrap();
            store.finish(&c.meta.id, &finish(state, ms)).await.unwrap();
            store.keep_request(&c, at(ms)).await.unwrap();
            let result = CallResult {
                status_code: 200,
                headers: vec![],
                body: Bytes::from_static(b"r"),
                stored_at: at(ms),
            };
            store.store_result(&c.meta.id, &result).await.unwrap();
        }
    }
    let cancelled = call("cancelled-old", &b""[..]);
    assert!(
        CallStore::create(store, &CallRecord::queued(&cancelled.meta))
            .await
            .unwrap()
    );
    store.cancel(&cancelled.meta.id, at(500)).await.unwrap();
    let before = at(50_000);
    // In batches of two: the oldest first.
    assert_eq!(store.purge_calls(before, 2).await.unwrap(), 2);
    assert_eq!(store.purge_calls(before, 2).await.unwrap(), 2);
    assert_eq!(store.purge_calls(before, 2).await.unwrap(), 0);
    for gone in ["old-1", "old-2", "old-3", "cancelled-old"] {
        let id = CallId::parse(gone).unwrap();
        assert_eq!(store.get(&id).await.unwrap(), None, "{gone}");
        assert_eq!(store.result(&id).await.unwrap(), None, "{gone}");
        assert_eq!(store.requeue_failed(&id).await.unwrap(), None, "{gone}");
    }
    for kept in ["new-1", "queued-old"] {
        let id = CallId::parse(kept).unwrap();
        assert!(store.get(&id).await.unwrap().is_some(), "{kept}");
    }
}

async fn sqlite_queue(lease: Duration) -> (tempfile::TempDir, SqliteQueue) {
    let (dir, pool) = db().await;
    (dir, SqliteQueue::new(pool, lease).await.unwrap())
}

#[tokio::test]
async fn sqlite_queue_delivers_whole_once_and_ack_removes() {
    let (_dir, q) = sqlite_queue(Duration::from_secs(30)).await;
    queue_contract::delivers_whole_once_and_ack_removes(&q).await;
    assert_eq!(q.pending().await.unwrap(), 0);
}

#[tokio::test]
async fn sqlite_queue_takes_several_at_once() {
    let (_dir, q) = sqlite_queue(Duration::from_secs(30)).await;
    queue_contract::takes_several_at_once(&q).await;
    assert_eq!(q.pending().await.unwrap(), 0);
}

#[tokio::test]
async fn sqlite_queue_expired_lease_redelivers() {
    let (_dir, q) = sqlite_queue(Duration::from_millis(500)).await;
    queue_contract::expired_lease_redelivers(&q).await;
}

#[tokio::test]
async fn sqlite_queue_keep_alive_holds_the_call() {
    let (_dir, q) = sqlite_queue(Duration::from_secs(1)).await;
    queue_contract::keep_alive_holds_the_call(&q).await;
}

#[tokio::test]
async fn sqlite_queue_release_honours_the_delay() {
    let (_dir, q) = sqlite_queue(Duration::from_secs(30)).await;
    queue_contract::release_honours_the_delay(&q).await;
}

#[tokio::test]
async fn sqlite_queue_large_bodies_and_redrives() {
    let (_dir, q) = sqlite_queue(Duration::from_secs(30)).await;
    queue_contract::large_bodies_and_redrives(&q).await;
}

#[tokio::test]
async fn sqlite_stale_lease_holder_is_told() {
    let (_dir, q) = sqlite_queue(Duration::from_millis(200)).await;
    q.enqueue(&call("a", &b"x"[..])).await.unwrap();
    let first = q.next(Duration::ZERO).await.unwrap().unwrap();
    let second = q
        .next(Duration::from_secs(5))
        .await
        .unwrap()
        .expect("not redelivered");
    assert_eq!(first.lease.ack().await, Err(QueueError::LeaseLost));
    second.lease.ack().await.unwrap();
}

#[tokio::test]
async fn release_with_delay_and_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.db");
    {
        let q = SqliteQueue::new(open_sqlite(&path).await.unwrap(), Duration::from_secs(60))
            .await
            .unwrap();
        q.enqueue(&call("a", &b"x"[..])).await.unwrap();
        let d = q.next(Duration::ZERO).await.unwrap().unwrap();
        d.lease.release(Duration::ZERO).await.unwrap();
        let d = q.next(Duration::ZERO).await.unwrap().unwrap();
        d.lease.release(Duration::from_secs(3600)).await.unwrap();
        assert!(
            q.next(Duration::ZERO).await.unwrap().is_none(),
            "delay not honoured"
        );
        q.enqueue(&call("b", &b"y"[..])).await.unwrap();
        // Held when the "process" goes away, with a long lease.
        let held = q.next(Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(held.call.meta.id.as_str(), "b");
        std::mem::forget(held);
    }
    let q = SqliteQueue::new(open_sqlite(&path).await.unwrap(), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(q.release_all_leases().await.unwrap(), 1);
    let d = q.next(Duration::ZERO).await.unwrap().unwrap();
    assert_eq!(d.call.meta.id.as_str(), "b");
    assert_eq!(d.call.body.as_ref(), b"y");
    assert_eq!(q.pending().await.unwrap(), 2);
}

/// The embedded queue is bounded: per function, in calls and in bytes. A call over a bound is
/// refused (nothing stored), an ack makes room, and what a queue holds is counted again when
/// it is opened anew.
#[tokio::test]
async fn the_sqlite_queue_is_bounded() {
    use sluice_store::QueueBounds;
    let (dir, pool) = db().await;
    let bounds = QueueBounds {
        max_calls: 4,
        max_bytes: 1000,
        max_per_function: 2,
    };
    let lease = Duration::from_secs(30);
    let q = SqliteQueue::with_bounds(pool.clone(), lease, bounds)
        .await
        .unwrap();
    let of = |id: &str, function: &str, size: usize| {
        let mut c = call(id, vec![b'x'; size]);
        c.meta.function = FunctionRef::parse(function, None).unwrap();
        c
    };
    assert!(q.enqueue(&of("a1", "a", 10)).await.unwrap());
    assert!(q.enqueue(&of("a2", "a", 10)).await.unwrap());
    assert!(matches!(
        q.enqueue(&of("a3", "a", 10)).await,
        Err(QueueError::FunctionFull(_))
    ));
    // A duplicate id stores nothing and takes no room.
    assert!(!q.enqueue(&of("a1", "a", 10)).await.unwrap());
    assert!(q.enqueue(&of("b1", "b", 10)).await.unwrap());
    assert!(matches!(
        q.enqueue(&of("c1", "c", 990)).await,
        Err(QueueError::Full(_))
    ));
    assert!(q.enqueue(&of("c1", "c", 10)).await.unwrap());
    assert!(matches!(
        q.enqueue(&of("d1", "d", 1)).await,
        Err(QueueError::Full(_))
    ));
    assert_eq!(q.pending().await.unwrap(), 4);
    // Opened anew (a restart), the queue counts what it holds.
    let again = SqliteQueue::with_bounds(pool, lease, bounds).await.unwrap();
    assert!(matches!(
        again.enqueue(&of("a3", "a", 10)).await,
        Err(QueueError::FunctionFull(_))
    ));
    // An ack makes room for that function again.
    loop {
        let d = again
            .next(Duration::from_secs(1))
            .await
            .unwrap()
            .expect("a call");
        let function = d.call.meta.function.name.clone();
        d.lease.ack().await.unwrap();
        if function == "a" {
            break;
        }
    }
    assert!(again.enqueue(&of("a3", "a", 10)).await.unwrap());
    drop(dir);
}

/// The embedded intake writes a call's record and queue row in one transaction: every call it
/// accepts is both recorded and queued, and every one it refuses is neither.
#[tokio::test]
async fn the_sqlite_intake_records_and_queues_each_call_together() {
    use sluice_core::{CallIntake, SubmitError, Submitted};
    use sluice_store::{QueueBounds, SqliteIntake};
    let (dir, pool) = db().await;
    let bounds = QueueBounds {
        max_calls: 1000,
        max_bytes: 1 << 20,
        max_per_function: 250,
    };
    let queue = SqliteQueue::with_bounds(pool.clone(), Duration::from_secs(30), bounds)
        .await
        .unwrap();
    let store = SqliteStore::new(pool.clone());
    let intake = SqliteIntake::new(queue.clone(), store.clone());
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    // Many at once (committed in shared transactions), all of them whole.
    let submissions: Vec<_> = (0..200)
        .map(|i| {
            let intake = intake.clone();
            tokio::spawn(async move { intake.submit(call(&format!("c{i}"), &b"body"[..])).await })
        })
        .collect();
    for s in submissions {
        assert_eq!(s.await.unwrap(), Ok(Submitted::Queued));
    }
    assert_eq!(
        count("SELECT COUNT(*) FROM calls WHERE state = 'queued'").await,
        200
    );
    assert_eq!(queue.pending().await.unwrap(), 200);

    // The same id again: answered from its record, queued once.
    let again = intake.submit(call("c7", &b"body"[..])).await.unwrap();
    assert!(matches!(again, Submitted::Existing(r) if r.id.as_str() == "c7"));
    assert_eq!(queue.pending().await.unwrap(), 200);

    // A record still queued without its queue row (an earlier version wrote the two one at a
    // time) is queued by its resubmission.
    let lone = call("lone", &b"body"[..]);
    assert!(
        CallStore::create(&store, &CallRecord::queued(&lone.meta))
            .await
            .unwrap()
    );
    assert!(matches!(
        intake.submit(lone).await,
        Ok(Submitted::Existing(_))
    ));
    assert_eq!(queue.pending().await.unwrap(), 201);

    // The id of a call to another function: answered from its record, nothing queued.
    let lone = call("lone-2", &b"body"[..]);
    assert!(
        CallStore::create(&store, &CallRecord::queued(&lone.meta))
            .await
            .unwrap()
    );
    let mut other = lone.clone();
    other.meta.function = FunctionRef::parse("other", None).unwrap();
    let again = intake.submit(other).await.unwrap();
    assert!(matches!(again, Submitted::Existing(r) if r.function == "echo"));
    assert_eq!(queue.pending().await.unwrap(), 201);

    // Over the function's bound (250): refused, and nothing is left of it.
    for i in 0..50 {
        let answer = intake.submit(call(&format!("d{i}"), &b"body"[..])).await;
        if i < 49 {
            assert_eq!(answer, Ok(Submitted::Queued), "d{i}");
        } else {
            assert!(
                matches!(answer, Err(SubmitError::Queue(QueueError::FunctionFull(_)))),
                "{answer:?}"
            );
        }
    }
    let refused = CallId::parse("d49").unwrap();
    assert_eq!(CallStore::get(&store, &refused).await.unwrap(), None);
    // A call already there is still answered from its record when the queue is full.
    assert!(matches!(
        intake.submit(call("d3", &b"body"[..])).await,
        Ok(Submitted::Existing(_))
    ));

    // A queue row whose record is gone: the id is refused, and no record is left behind.
    sqlx::query("DELETE FROM calls WHERE id = 'c1'")
        .execute(&pool)
        .await
        .unwrap();
    let mut elsewhere = call("c1", &b"body"[..]);
    elsewhere.meta.function = FunctionRef::parse("elsewhere", None).unwrap();
    assert!(matches!(
        intake.submit(elsewhere).await,
        Err(SubmitError::Conflict(_))
    ));
    assert_eq!(
        CallStore::get(&store, &CallId::parse("c1").unwrap())
            .await
            .unwrap(),
        None
    );
    assert_eq!(queue.pending().await.unwrap(), 250);
    // 200 (less c1's, deleted by hand) + lone + lone-2 (never queued) + 49.
    assert_eq!(
        count("SELECT COUNT(*) FROM calls WHERE state = 'queued'").await,
        250
    );

    // One new id submitted many times at once (most of them in one batch): one submission
    // queues it, the others are answered from its record.
    let twins: Vec<_> = (0..20)
        .map(|_| {
            let intake = intake.clone();
            let mut twin = call("twin", &b"body"[..]);
            twin.meta.function = FunctionRef::parse("twin", None).unwrap();
            tokio::spawn(async move { intake.submit(twin).await })
        })
        .collect();
    let mut queued = 0;
    for twin in twins {
        match twin.await.unwrap() {
            Ok(Submitted::Queued) => queued += 1,
            Ok(Submitted::Existing(r)) => assert_eq!(r.id.as_str(), "twin"),
            other => panic!("a twin got {other:?}"),
        }
    }
    assert_eq!(queued, 1);
    assert_eq!(queue.pending().await.unwrap(), 251);
    drop(dir);
}

/// A queue over the call store's database starts the calls it hands out, in the claim's own
/// transaction; a call that cannot start (cancelled) comes unstarted; a start undone leaves
/// the call as it was, and only the attempt it names is undone.
#[tokio::test]
async fn the_sqlite_queue_starts_the_calls_it_hands_out() {
    use sluice_core::CallIntake;
    use sluice_store::{QueueBounds, SqliteIntake, SqliteWriter};
    let (_dir, pool) = db().await;
    let writer = SqliteWriter::new(pool.clone());
    let store = SqliteStore::with_writer(pool.clone(), writer.clone());
    let lease = Duration::from_secs(30);
    let queue = SqliteQueue::with_writer(pool, writer, lease, QueueBounds::default())
        .await
        .unwrap()
        .starting_calls();
    let intake = SqliteIntake::new(queue.clone(), store.clone());
    let (run, cancelled) = (call("starts", &b"a"[..]), call("cancelled", &b"b"[..]));
    intake.submit(run.clone()).await.unwrap();
    intake.submit(cancelled.clone()).await.unwrap();
    store
        .cancel(&cancelled.meta.id, Timestamp::now())
        .await
        .unwrap();
    let record = |id: CallId| {
        let store = store.clone();
        async move {
            CallStore::get(&store, &id)
                .await
                .unwrap()
                .expect("recorded")
        }
    };
    let wait = Duration::from_secs(5);
    let mut deliveries = queue.next_many(10, wait).await.unwrap();
    assert_eq!(deliveries.len(), 2);
    deliveries.sort_by(|a, b| a.call.meta.id.cmp(&b.call.meta.id));
    let [cancelled_delivery, started] = <[_; 2]>::try_from(deliveries).unwrap();
    assert_eq!(cancelled_delivery.started, None);
    assert_eq!(
        record(cancelled.meta.id.clone()).await.state,
        CallState::Cancelled
    );
    assert_eq!(started.started, Some(1));
    let running = record(run.meta.id.clone()).await;
    assert_eq!((running.state, running.attempts), (CallState::Running, 1));
    assert!(running.started_at.is_some());
    // On the timeline too, by the claim's own statement.
    let attempts = running.timeline.unwrap().attempts;
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].attempt, attempts[0].outcome),
        (1, AttemptOutcome::Running)
    );
    assert_eq!(Some(attempts[0].started_at), running.started_at);

    // Put back untouched: the start is undone, once.
    store.undo_start(&run.meta.id, 1).await.unwrap();
    let back = record(run.meta.id.clone()).await;
    assert_eq!((back.state, back.attempts), (CallState::Queued, 0));
    assert!(back.timeline.unwrap().attempts.is_empty());
    store.undo_start(&run.meta.id, 1).await.unwrap();
    assert_eq!(
        record(run.meta.id.clone()).await.attempts,
        0,
        "not running: unchanged"
    );
    started.lease.release(Duration::ZERO).await.unwrap();
    cancelled_delivery.lease.ack().await.unwrap();
    let again = queue.next(wait).await.unwrap().expect("the call back");
    assert_eq!(again.started, Some(1), "the first attempt again");
    // An undo naming another attempt changes nothing.
    store.undo_start(&run.meta.id, 2).await.unwrap();
    let running = record(run.meta.id.clone()).await;
    assert_eq!((running.state, running.attempts), (CallState::Running, 1));

    // A queue not told to start calls hands them out unstarted.
    let (_dir, pool) = db().await;
    let plain = SqliteQueue::new(pool.clone(), lease).await.unwrap();
    let intake = SqliteIntake::new(plain.clone(), SqliteStore::new(pool));
    intake.submit(call("plain", &b"c"[..])).await.unwrap();
    assert_eq!(
        plain.next(wait).await.unwrap().expect("a call").started,
        None
    );
}

/// A claim whose caller goes away mid-way (a worker shutting down) gives its calls back at
/// once, their starts undone: the next claim gets them, on their first attempt still, long
/// before their lease would have run out.
#[tokio::test]
async fn a_claim_given_up_mid_way_gives_its_calls_back() {
    use sluice_core::CallIntake;
    use sluice_store::{QueueBounds, SqliteIntake, SqliteWriter};
    use std::future::Future;
    let (_dir, pool) = db().await;
    let writer = SqliteWriter::new(pool.clone());
    let store = SqliteStore::with_writer(pool.clone(), writer.clone());
    let lease = Duration::from_secs(600);
    let queue = SqliteQueue::with_writer(pool, writer, lease, QueueBounds::default())
        .await
        .unwrap()
        .starting_calls();
    let intake = SqliteIntake::new(queue.clone(), store.clone());
    let c = call("given-back", &b"a"[..]);
    intake.submit(c.clone()).await.unwrap();
    // Polled once, so the claim is on its way to the database; then dropped.
    let mut claim = Box::pin(queue.next_many(10, Duration::from_secs(5)));
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(claim.as_mut().poll(&mut cx).is_pending());
    drop(claim);
    let again = queue
        .next(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("the call given back");
    assert_eq!(again.call.meta.id, c.meta.id);
    assert_eq!(
        again.started,
        Some(1),
        "the dropped claim's start was undone"
    );
    let record = CallStore::get(&store, &c.meta.id).await.unwrap().unwrap();
    assert_eq!((record.state, record.attempts), (CallState::Running, 1));
    let attempts = record.timeline.unwrap().attempts;
    assert_eq!(
        attempts.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        [1],
        "the given-back start left the timeline"
    );
}
