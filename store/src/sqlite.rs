//! The SQLite function registry and call store (the SQL itself is shared, in `sql.rs`).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sluice_core::StoreError;
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Sqlite, SqlitePool};

use crate::SqliteWriter;
use crate::sql::unavailable;

/// Opens (creating if needed) the database at `path` and brings its schema up to date.
///
/// Writes are fsynced before a statement returns (`synchronous = FULL`), which is what lets the
/// gateway promise that a `202` means the call is on disk.
pub async fn open_sqlite(path: &Path) -> Result<SqlitePool, StoreError> {
    private_files(path)?;
    let options = SqliteConnectOptions::from_str("sqlite://")
        .map_err(unavailable)?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        // After a burst of large bodies the WAL is cut back to this size at each checkpoint,
        // rather than keeping its largest size for ever.
        .pragma("journal_size_limit", (64 * 1024 * 1024).to_string())
        .foreign_keys(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .map_err(unavailable)?;
    sqlx::migrate!("./migrations/sqlite")
        .run(&pool)
        .await
        .map_err(|e| StoreError::Unavailable(format!("migrating {}: {e}", path.display())))?;
    Ok(pool)
}

/// Makes the database readable by its owner only: created with mode 0600 before SQLite opens
/// it (SQLite gives its `-wal` and `-shm` files the database's mode), and any of the three
/// left by an earlier version made so too. The database holds deployments' environments and
/// calls' bodies.
fn private_files(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let cannot = |e: std::io::Error| unavailable(format!("making {} private: {e}", path.display()));
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(cannot)?;
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(cannot(e)),
            _ => {}
        }
    }
    Ok(())
}

/// Function registry and call records in SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Where the writes of calls go (the registry's rare writes, re-drives and `create_many`
    /// use the pool).
    writer: SqliteWriter,
}

impl SqliteStore {
    /// A store over `pool` with a writer of its own (see [`Self::with_writer`]).
    pub fn new(pool: SqlitePool) -> Self {
        let writer = SqliteWriter::new(pool.clone());
        Self { pool, writer }
    }

    /// A store over `pool` writing through `writer`: give the queue and the intake on the same
    /// database the same writer, so their writes share transactions instead of contending.
    pub fn with_writer(pool: SqlitePool, writer: SqliteWriter) -> Self {
        Self { pool, writer }
    }

    pub fn writer(&self) -> &SqliteWriter {
        &self.writer
    }

    /// Runs a write statement in the writer's next transaction; returns the rows it changed.
    async fn write(
        &self,
        query: Query<'static, Sqlite, SqliteArguments<'static>>,
    ) -> Result<u64, sqlx::Error> {
        self.writer
            .run(move |conn| {
                Box::pin(async move { Ok(query.execute(conn).await?.rows_affected()) })
            })
            .await
    }

    /// Inserts the records whose ids are new in one statement; returns their ids.
    async fn insert_new_calls(
        &self,
        records: &[sluice_core::CallRecord],
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        insert_new_calls(&self.pool, records.iter()).await
    }

    /// Runs write statements with `RETURNING` in the writer's next transaction; returns
    /// their rows.
    async fn write_fetch_all(
        &self,
        query: Query<'static, Sqlite, SqliteArguments<'static>>,
    ) -> Result<Vec<SqliteRow>, sqlx::Error> {
        self.writer
            .run(move |conn| Box::pin(async move { query.fetch_all(conn).await }))
            .await
    }

    /// Runs a write statement with `RETURNING` in the writer's next transaction.
    async fn write_returning(
        &self,
        query: Query<'static, Sqlite, SqliteArguments<'static>>,
    ) -> Result<Option<SqliteRow>, sqlx::Error> {
        self.writer
            .run(move |conn| Box::pin(async move { query.fetch_optional(conn).await }))
            .await
    }
}

/// Inserts the records whose ids are new, in one statement on `db`; returns their ids (an id
/// given twice is inserted once).
pub(crate) async fn insert_new_calls<'c, 'r>(
    db: impl sqlx::Executor<'c, Database = Sqlite>,
    records: impl ExactSizeIterator<Item = &'r sluice_core::CallRecord>,
) -> Result<std::collections::HashSet<String>, sqlx::Error> {
    use sqlx::Row;
    if records.len() == 0 {
        return Ok(std::collections::HashSet::new());
    }
    let mut insert = sqlx::QueryBuilder::<Sqlite>::new(
        "INSERT INTO calls (id, namespace, function, method, path, callback_url, state, \
         attempts, submitted_at, trace_id, request_id) ",
    );
    insert.push_values(records, |mut row, r| {
        row.push_bind(r.id.as_str().to_owned())
            .push_bind(r.namespace.clone())
            .push_bind(r.function.clone())
            .push_bind(r.method.clone())
            .push_bind(r.path.clone())
            .push_bind(r.callback_url.clone())
            .push_bind(r.state.as_str())
            .push_bind(i64::from(r.attempts))
            .push_bind(r.submitted_at.as_millis())
            .push_bind(r.trace_id.clone())
            .push_bind(r.request_id.clone());
    });
    insert.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
    let rows = insert.build().fetch_all(db).await?;
    Ok(rows.iter().map(|row| row.get("id")).collect())
}

// A call's timeline lives in JSON arrays on its row (`attempt_log`, `callback_log`,
// `redrive_log`), written by the very statements that record each step, so it costs no round
// trip of its own. The bounds below are `sluice_core::TIMELINE_*`; the store's contract tests
// hold them to it. On the right of `SET`, columns are the row's values before the update.

/// `$column = ` its JSON array with `$entry` appended, the oldest entry dropped when it holds
/// `$max` already (entries are appended one at a time, so it never holds more).
macro_rules! append {
    ($column:literal, $max:literal, $entry:literal) => {
        concat!(
            $column,
            " = json_insert(CASE WHEN json_array_length(",
            $column,
            ") >= ",
            $max,
            " THEN json_remove(",
            $column,
            ", '$[0]') ELSE ",
            $column,
            " END, '$[#]', ",
            $entry,
            ")"
        )
    };
}

/// The attempt started at `$1` added to the timeline.
macro_rules! log_start {
    () => {
        append!(
            "attempt_log",
            50,
            "json_object('attempt', attempts + 1, 'redrive', redrives, 'startedAt', $1)"
        )
    };
}

/// The outcome bound as [`FINISH`] binds it written on the timeline's last attempt, if that is
/// the call's current attempt and has not finished (a finish comes after its start).
macro_rules! log_finish {
    () => {
        "attempt_log = CASE WHEN json_extract(attempt_log, '$[#-1].attempt') = attempts \
         AND json_type(attempt_log, '$[#-1].finishedAt') IS NULL \
         THEN json_set(attempt_log, '$[#-1].finishedAt', $4, '$[#-1].durationMs', $5, \
         '$[#-1].statusCode', $2, '$[#-1].error', substr($3, 1, 500), '$[#-1].state', $1) \
         ELSE attempt_log END"
    };
}

/// The call's current attempt taken off the timeline, its start undone.
macro_rules! log_undo {
    () => {
        "attempt_log = CASE WHEN json_extract(attempt_log, '$[#-1].attempt') = attempts \
         THEN json_remove(attempt_log, '$[#-1]') ELSE attempt_log END"
    };
}

pub(crate) use log_undo;

/// Starts attempts at `$1` of the queued or running calls that `$where` picks, as
/// `start_attempt` starts one; returns their ids and attempt numbers.
macro_rules! start_calls {
    ($where:literal) => {
        concat!(
            "UPDATE calls SET state = 'running', attempts = attempts + 1, started_at = $1, \
             finished_at = NULL, duration_ms = NULL, status_code = NULL, error = NULL, ",
            log_start!(),
            " WHERE ",
            $where,
            " AND state IN ('queued', 'running') RETURNING id, attempts"
        )
    };
}

/// Starts an attempt of the call whose id is `$2`.
const START_ATTEMPT: &str = start_calls!("id = $2");

/// Starts attempts of the calls whose ids are the JSON array `$2` (see [`id_list`]).
pub(crate) const START_ATTEMPTS: &str = start_calls!("id IN (SELECT value FROM json_each($2))");

/// Undoes the start of attempt `$2` of call `$1`, if the call is still running on it.
const UNDO_START: &str = concat!(
    "UPDATE calls SET state = 'queued', attempts = attempts - 1, started_at = NULL, ",
    log_undo!(),
    " WHERE id = $1 AND attempts = $2 AND state = 'running'"
);

/// Records how a call's invocation ended: its outcome in `$1`..`$5` (state, status, error,
/// time, duration), its id in `$6`.
const FINISH: &str = concat!(
    "UPDATE calls SET state = $1, status_code = $2, error = $3, finished_at = $4, \
     duration_ms = $5, ",
    log_finish!(),
    " WHERE id = $6"
);

/// Keeps a call's response (`$6`..`$10`: id, status, headers, body, time), then records its
/// outcome as [`FINISH`] does: two statements, sent to SQLite in one go.
const FINISH_WITH_RESULT: &str = concat!(
    "INSERT INTO call_results (id, status_code, headers, body, \
     stored_at) VALUES ($6, $7, $8, $9, $10) ON CONFLICT (id) DO UPDATE SET \
     status_code = EXCLUDED.status_code, headers = EXCLUDED.headers, body = EXCLUDED.body, \
     stored_at = EXCLUDED.stored_at; \
     UPDATE calls SET state = $1, status_code = $2, error = $3, finished_at = $4, \
     duration_ms = $5, ",
    log_finish!(),
    " WHERE id = $6 RETURNING id"
);

/// Records how a callback went (`$1`, a `CallbackOutcome` as JSON) on call `$2`.
const RECORD_CALLBACK: &str = concat!(
    "UPDATE calls SET callback = $1, ",
    append!("callback_log", 20, "json($1)"),
    " WHERE id = $2"
);

/// Makes failed call `$1` queued again, re-driven at `$2`.
const REQUEUE_FAILED: &str = concat!(
    "UPDATE calls SET state = 'queued', attempts = 0, started_at = NULL, finished_at = NULL, \
     duration_ms = NULL, status_code = NULL, error = NULL, callback = NULL, \
     redrives = redrives + 1, ",
    append!(
        "redrive_log",
        20,
        "json_object('redrive', redrives + 1, 'at', $2)"
    ),
    " WHERE id = $1 AND state = 'failed'"
);

/// Call ids as one parameter: a JSON array, for `json_each`.
pub(crate) fn id_list<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    serde_json::to_string(&ids.into_iter().collect::<Vec<_>>()).expect("strings encode as JSON")
}

crate::sql::sql_store!(SqliteStore, sqlx::sqlite::SqliteRow, sqlx::Sqlite, "SQLite");
