//! The one writer of a SQLite database: every write (call records, the queue, the intake) runs
//! on its connection, and the writes that arrive while one transaction commits go into the next
//! together (group commit), so concurrent writers share fsyncs instead of queueing for SQLite's
//! write lock one transaction at a time (and sleeping in its busy handler while they wait).
//!
//! A write of several statements runs inside a savepoint of the batch's transaction, so one
//! that fails is rolled back alone; a single statement that fails is undone by SQLite. Either
//! way its caller gets the error and the others commit. A caller is answered only once its
//! write is committed (`synchronous = FULL`: on disk).

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use sluice_core::batch::GroupCommit;
use sqlx::{ConnectOptions, Connection, SqliteConnection, SqlitePool};

/// Writes committed in one transaction at most.
const MAX_BATCH: usize = 512;

/// Writes waiting for a commit at most; more wait for room.
const WAITING: usize = 8192;

/// One write: runs its statements on the connection, keeps its own result, and says whether
/// it succeeded.
type Write = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, bool> + Send>;

struct Job {
    write: Write,
    /// Several statements, all or none: run in a savepoint, rolled back to it on failure. A
    /// single statement that fails is undone by SQLite itself.
    atomic: bool,
}

/// Runs writes on one connection of the database, many to a transaction. Cheap to clone.
#[derive(Clone)]
pub struct SqliteWriter {
    batches: GroupCommit<Job, Result<(), String>>,
}

impl std::fmt::Debug for SqliteWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteWriter").finish_non_exhaustive()
    }
}

impl SqliteWriter {
    /// The writer of the database behind `pool`; its committer runs on the current Tokio
    /// runtime, on a connection of its own opened with the pool's settings when it first
    /// commits (and again after a transaction failed). It stops writing when `pool` is closed;
    /// its connection is closed at its first write after that, or with the writer (when its
    /// last handle is dropped).
    pub fn new(pool: SqlitePool) -> Self {
        let conn = Arc::new(tokio::sync::Mutex::new(None));
        let batches = GroupCommit::start(WAITING, MAX_BATCH, 1, move |jobs: Vec<Job>| {
            let (pool, conn) = (pool.clone(), conn.clone());
            async move { commit(&pool, &mut *conn.lock().await, jobs).await }
        });
        Self { batches }
    }

    /// Runs `write`, one statement, in the next transaction and returns its result once that
    /// has committed.
    pub(crate) async fn run<T, F>(&self, write: F) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>
            + Send
            + 'static,
    {
        self.submit(write, false).await
    }

    /// Runs `write`, several statements, all or none, in the next transaction and returns its
    /// result once that has committed.
    pub(crate) async fn run_atomic<T, F>(&self, write: F) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>
            + Send
            + 'static,
    {
        self.submit(write, true).await
    }

    /// [`Self::run_atomic`] when `atomic`, else [`Self::run`].
    pub(crate) async fn submit<T, F>(&self, write: F, atomic: bool) -> Result<T, sqlx::Error>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, sqlx::Error>>
            + Send
            + 'static,
    {
        let slot: Arc<Mutex<Option<Result<T, sqlx::Error>>>> = Arc::default();
        let kept = slot.clone();
        let job = Job {
            write: Box::new(move |conn| {
                Box::pin(async move {
                    let result = write(conn).await;
                    let ok = result.is_ok();
                    *kept.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
                    ok
                })
            }),
            atomic,
        };
        self.batches
            .submit(job)
            .await
            .map_err(|_| sqlx::Error::WorkerCrashed)?
            .map_err(|e| sqlx::Error::Protocol(format!("committing: {e}")))?;
        let result = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        result.unwrap_or_else(|| Err(sqlx::Error::Protocol("a write did not run".into())))
    }
}

/// Runs a batch in as few transactions as it can: one, unless a single-statement write fails
/// (then what ran so far is committed, and the rest go into another), on the writer's
/// connection `conn` (opened here if there is none). Answers each write.
async fn commit(
    pool: &SqlitePool,
    conn: &mut Option<SqliteConnection>,
    jobs: Vec<Job>,
) -> Vec<Result<(), String>> {
    let mut answers = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter().peekable();
    while jobs.peek().is_some() {
        let mut ran = 0;
        let committed = match connection(pool, conn).await {
            Ok(c) => transaction(c, &mut jobs, &mut ran).await,
            Err(e) => Err(e),
        };
        if committed.is_err() {
            // The connection may be what failed: the next transaction opens another.
            *conn = None;
        }
        let answer = committed.map_err(|e| e.to_string());
        if ran == 0 {
            // No transaction could be begun (the database is unavailable): every write left
            // fails with it, rather than being tried again at once for ever.
            answers.extend(jobs.by_ref().map(|_| answer.clone()));
            break;
        }
        answers.extend(std::iter::repeat_n(answer, ran));
    }
    answers
}

/// Runs writes from `jobs` in one transaction until they are all done or a single-statement
/// one failed, counting them in `ran`; then commits. A failed statement may have ended the
/// whole transaction (a full disk does): the commit then fails, and so does every write in it,
/// none of which was kept.
async fn transaction(
    conn: &mut SqliteConnection,
    jobs: &mut impl Iterator<Item = Job>,
    ran: &mut usize,
) -> Result<(), sqlx::Error> {
    // Immediate: the write lock is taken at the start, so no write in the batch can fail to
    // upgrade a read into a write later.
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    for job in jobs.by_ref() {
        *ran += 1;
        if job.atomic {
            sqlx::query("SAVEPOINT job").execute(&mut *tx).await?;
            if (job.write)(&mut tx).await {
                sqlx::query("RELEASE job").execute(&mut *tx).await?;
            } else {
                sqlx::query("ROLLBACK TO job").execute(&mut *tx).await?;
                sqlx::query("RELEASE job").execute(&mut *tx).await?;
            }
        } else if !(job.write)(&mut tx).await {
            break;
        }
    }
    tx.commit().await
}

/// The writer's connection: the one it has, or a new one with the pool's settings. None once
/// the pool is closed (the database is being shut).
async fn connection<'c>(
    pool: &SqlitePool,
    conn: &'c mut Option<SqliteConnection>,
) -> Result<&'c mut SqliteConnection, sqlx::Error> {
    if pool.is_closed() {
        *conn = None;
        return Err(sqlx::Error::PoolClosed);
    }
    if conn.is_none() {
        *conn = Some(pool.connect_options().connect().await?);
    }
    Ok(conn.as_mut().expect("opened above"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn insert(conn: &mut SqliteConnection, x: i64) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO t (x) VALUES (?)")
            .bind(x)
            .execute(conn)
            .await
            .map(|_| ())
    }

    /// A database the writer cannot reach fails every write waiting, at once: none is tried
    /// again for ever, none is left unanswered.
    #[tokio::test]
    async fn writes_fail_when_no_transaction_can_begin() {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::open_sqlite(&dir.path().join("db")).await.unwrap();
        let writer = SqliteWriter::new(pool.clone());
        pool.close().await;
        let writes: Vec<_> = (0..3)
            .map(|x| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    writer
                        .run(move |conn| Box::pin(async move { insert(conn, x).await }))
                        .await
                })
            })
            .collect();
        for write in writes {
            let answered = tokio::time::timeout(std::time::Duration::from_secs(10), write).await;
            assert!(answered.expect("answered").unwrap().is_err());
        }
    }

    /// Writes committed in one transaction stay apart: one that fails is undone whole, and the
    /// others commit.
    #[tokio::test]
    async fn a_failed_write_in_a_batch_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let pool = crate::open_sqlite(&dir.path().join("db")).await.unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER UNIQUE)")
            .execute(&pool)
            .await
            .unwrap();
        let writer = SqliteWriter::new(pool.clone());
        // The first write holds the batch open until the others wait behind it, so they are
        // committed together in the next.
        let (go, gate) = tokio::sync::watch::channel(false);
        let running = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let first = tokio::spawn({
            let (writer, running) = (writer.clone(), running.clone());
            async move {
                writer
                    .run(move |conn| {
                        let mut gate = gate.clone();
                        Box::pin(async move {
                            running.store(true, std::sync::atomic::Ordering::SeqCst);
                            let _ = gate.wait_for(|g| *g).await;
                            insert(conn, 0).await
                        })
                    })
                    .await
            }
        });
        let write = |xs: &'static [i64]| {
            let writer = writer.clone();
            tokio::spawn(async move {
                writer
                    .run_atomic(move |conn| {
                        Box::pin(async move {
                            for x in xs {
                                insert(&mut *conn, *x).await?;
                            }
                            Ok(())
                        })
                    })
                    .await
            })
        };
        while !running.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::task::yield_now().await;
        }
        let a = write(&[1, 2]);
        let b = write(&[3, 1]);
        let c = write(&[4]);
        // A single statement that fails, between others: undone alone too.
        let d = tokio::spawn({
            let writer = writer.clone();
            async move {
                writer
                    .run(move |conn| Box::pin(async move { insert(conn, 2).await }))
                    .await
            }
        });
        let e = tokio::spawn({
            let writer = writer.clone();
            async move {
                writer
                    .run(move |conn| Box::pin(async move { insert(conn, 5).await }))
                    .await
            }
        });
        while writer.batches.waiting() < 5 {
            tokio::task::yield_now().await;
        }
        go.send(true).unwrap();
        assert!(first.await.unwrap().is_ok());
        assert!(a.await.unwrap().is_ok());
        assert!(b.await.unwrap().is_err(), "1 is taken");
        assert!(c.await.unwrap().is_ok());
        assert!(d.await.unwrap().is_err(), "2 is taken");
        assert!(e.await.unwrap().is_ok());
        let xs: Vec<i64> = sqlx::query_scalar("SELECT x FROM t ORDER BY x")
            .fetch_all(&pool)
            .await
            .unwrap();
        assert_eq!(xs, [0, 1, 2, 4, 5], "b's 3 went with its failed 1");
    }
}
