//! The Postgres function registry and call store, for Sluice on more than one machine (the SQL
//! itself is shared with SQLite, in `sql.rs`).

use sluice_core::StoreError;
use std::str::FromStr;

use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{Connection, PgConnection, PgPool, Postgres};

/// Where a Postgres URL points, for messages: server and database, never the password.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    pub host: String,
    pub port: u16,
    pub database: String,
}

impl PgTarget {
    /// Reads `url`, or says why it is not a Postgres URL.
    pub fn of(url: &str) -> Result<Self, PgOpenError> {
        Ok(Self::from_options(&options_of(url)?))
    }

    fn from_options(options: &PgConnectOptions) -> Self {
        Self {
            host: options.get_host().to_owned(),
            port: options.get_port(),
            // Postgres takes the user's name when no database is named.
            database: options
                .get_database()
                .unwrap_or(options.get_username())
                .to_owned(),
        }
    }

    /// `host:port`.
    pub fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl std::fmt::Display for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "database {} on {}:{}",
            self.database, self.host, self.port
        )
    }
}

/// Why [`open_postgres`] failed: callers tell a database that is not there (which waiting
/// will not fix) from a server that is not reachable yet.
#[derive(Debug, thiserror::Error)]
pub enum PgOpenError {
    #[error("the database \"{}\" does not exist on {}", .0.database, .0.server())]
    MissingDatabase(PgTarget),
    #[error("not a Postgres URL: {0}")]
    BadUrl(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn options_of(url: &str) -> Result<PgConnectOptions, PgOpenError> {
    PgConnectOptions::from_str(url).map_err(|e| PgOpenError::BadUrl(e.to_string()))
}

/// Postgres's SQLSTATE for a database that does not exist (`invalid_catalog_name`).
const MISSING_DATABASE: &str = "3D000";

/// Connects to Postgres at `url` and brings the schema up to date. Several Sluice processes may
/// do this at once: sqlx serialises migrations with an advisory lock.
pub async fn open_postgres(url: &str, max_connections: u32) -> Result<PgPool, PgOpenError> {
    let options = options_of(url)?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options.clone())
        .await
        .map_err(|e| match &e {
            sqlx::Error::Database(db) if db.code().as_deref() == Some(MISSING_DATABASE) => {
                PgOpenError::MissingDatabase(PgTarget::from_options(&options))
            }
            _ => StoreError::Unavailable(format!("connecting to Postgres: {e}")).into(),
        })?;
    sqlx::migrate!("./migrations/postgres")
        .run(&pool)
        .await
        .map_err(|e| StoreError::Unavailable(format!("migrating the Postgres schema: {e}")))?;
    Ok(pool)
}

/// Creates the database `url` names unless it exists, connected to the same server's
/// `postgres` database. Returns whether it made it. Several processes may race to do this: the
/// losers find it made.
pub async fn create_database(url: &str) -> Result<bool, PgOpenError> {
    let options = options_of(url)?;
    let target = PgTarget::from_options(&options);
    let unavailable =
        |e: sqlx::Error| StoreError::Unavailable(format!("creating the {target}: {e}"));
    let mut conn = PgConnection::connect_with(&options.clone().database("postgres"))
        .await
        .map_err(unavailable)?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&target.database)
            .fetch_one(&mut conn)
            .await
            .map_err(unavailable)?;
    if exists {
        return Ok(false);
    }
    let create = format!("CREATE DATABASE {}", quote_identifier(&target.database));
    match sqlx::query(&create).execute(&mut conn).await {
        Ok(_) => Ok(true),
        // duplicate_database, or the catalog's unique index when two creates race.
        Err(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("42P04" | "23505")) =>
        {
            Ok(false)
        }
        Err(e) => Err(unavailable(e).into()),
    }
}

/// `name` as a quoted SQL identifier: in double quotes, each double quote doubled.
pub fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Function registry and call records in Postgres.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Runs a write statement; returns the rows it changed.
    async fn write(
        &self,
        query: Query<'static, Postgres, PgArguments>,
    ) -> Result<u64, sqlx::Error> {
        Ok(query.execute(&self.pool).await?.rows_affected())
    }

    /// Inserts the records whose ids are new in one statement; returns their ids. The rows go
    /// as one array per column, so the statement is the same for any number of them and is
    /// prepared once per connection (a `VALUES` list would be a new statement for each count).
    async fn insert_new_calls(
        &self,
        records: &[sluice_core::CallRecord],
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        use sqlx::Row;
        let column = |f: &dyn Fn(&sluice_core::CallRecord) -> Option<String>| {
            records.iter().map(f).collect::<Vec<_>>()
        };
        let rows = sqlx::query(
            "INSERT INTO calls (id, namespace, function, method, path, callback_url, state, \
             attempts, submitted_at, trace_id, request_id) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::text[], $11::text[]) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(column(&|r| Some(r.id.as_str().to_owned())))
        .bind(column(&|r| Some(r.namespace.clone())))
        .bind(column(&|r| Some(r.function.clone())))
        .bind(column(&|r| Some(r.method.clone())))
        .bind(column(&|r| Some(r.path.clone())))
        .bind(column(&|r| r.callback_url.clone()))
        .bind(column(&|r| Some(r.state.as_str().to_owned())))
        .bind(
            records
                .iter()
                .map(|r| i64::from(r.attempts))
                .collect::<Vec<_>>(),
        )
        .bind(
            records
                .iter()
                .map(|r| r.submitted_at.as_millis())
                .collect::<Vec<_>>(),
        )
        .bind(column(&|r| r.trace_id.clone()))
        .bind(column(&|r| r.request_id.clone()))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|row| row.get("id")).collect())
    }

    /// Runs a write statement with `RETURNING`; returns its rows.
    async fn write_fetch_all(
        &self,
        query: Query<'static, Postgres, PgArguments>,
    ) -> Result<Vec<PgRow>, sqlx::Error> {
        query.fetch_all(&self.pool).await
    }

    /// Runs a write statement with `RETURNING`.
    async fn write_returning(
        &self,
        query: Query<'static, Postgres, PgArguments>,
    ) -> Result<Option<PgRow>, sqlx::Error> {
        query.fetch_optional(&self.pool).await
    }
}

// A call's timeline lives in JSONB arrays on its row (`attempt_log`, `callback_log`,
// `redrive_log`), written by the very statements that record each step, so it costs no round
// trip of its own. The bounds below are `sluice_core::TIMELINE_*`; the store's contract tests
// hold them to it. On the right of `SET`, columns are the row's values before the update.

/// `$column = ` its array with `$entry` appended, the oldest entry dropped when it holds `$max`
/// already (entries are appended one at a time, so it never holds more).
macro_rules! append {
    ($column:literal, $max:literal, $entry:literal) => {
        concat!(
            $column,
            " = (CASE WHEN jsonb_array_length(",
            $column,
            ") >= ",
            $max,
            " THEN ",
            $column,
            " - 0 ELSE ",
            $column,
            " END) || jsonb_build_array(",
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
            "jsonb_build_object('attempt', attempts + 1, 'redrive', redrives, \
             'startedAt', $1::bigint)"
        )
    };
}

/// The outcome bound as [`FINISH`] binds it written on the timeline's last attempt, if that is
/// the call's current attempt and has not finished (a finish comes after its start).
macro_rules! log_finish {
    () => {
        "attempt_log = CASE WHEN ((attempt_log -> -1) ->> 'attempt')::bigint = attempts \
         AND ((attempt_log -> -1) -> 'finishedAt') IS NULL \
         THEN jsonb_set(attempt_log, '{-1}', (attempt_log -> -1) || jsonb_build_object(\
         'finishedAt', $4::bigint, 'durationMs', $5::bigint, 'statusCode', $2::bigint, \
         'error', substr($3::text, 1, 500), 'state', $1::text)) \
         ELSE attempt_log END"
    };
}

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

/// Starts attempts of the calls whose ids are the array `$2` at `$1`.
const START_ATTEMPTS: &str = start_calls!("id = ANY($2::text[])");

/// Undoes the start of attempt `$2` of call `$1`, if the call is still running on it: its
/// entry (the timeline's last) is taken off the timeline.
const UNDO_START: &str = "UPDATE calls SET state = 'queued', attempts = attempts - 1, \
     started_at = NULL, attempt_log = CASE WHEN ((attempt_log -> -1) ->> 'attempt')::bigint = \
     attempts THEN attempt_log - (-1) ELSE attempt_log END \
     WHERE id = $1 AND attempts = $2 AND state = 'running'";

/// Records how a call's invocation ended: its outcome in `$1`..`$5` (state, status, error,
/// time, duration), its id in `$6`.
const FINISH: &str = concat!(
    "UPDATE calls SET state = $1, status_code = $2, error = $3, finished_at = $4, \
     duration_ms = $5, ",
    log_finish!(),
    " WHERE id = $6"
);

/// Keeps a call's response (`$6`..`$10`: id, status, headers, body, time) and records its
/// outcome as [`FINISH`] does, in one statement (so one round trip and commit).
const FINISH_WITH_RESULT: &str = concat!(
    "WITH kept AS (INSERT INTO call_results (id, status_code, \
     headers, body, stored_at) VALUES ($6, $7, $8, $9, $10) ON CONFLICT (id) DO UPDATE SET \
     status_code = EXCLUDED.status_code, headers = EXCLUDED.headers, body = EXCLUDED.body, \
     stored_at = EXCLUDED.stored_at RETURNING id) \
     UPDATE calls SET state = $1, status_code = $2, error = $3, finished_at = $4, \
     duration_ms = $5, ",
    log_finish!(),
    " WHERE id = $6 RETURNING id"
);

/// Records how a callback went (`$1`, a `CallbackOutcome` as JSON) on call `$2`.
const RECORD_CALLBACK: &str = concat!(
    "UPDATE calls SET callback = $1, ",
    append!("callback_log", 20, "$1::jsonb"),
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
        "jsonb_build_object('redrive', redrives + 1, 'at', $2::bigint)"
    ),
    " WHERE id = $1 AND state = 'failed'"
);

/// Call ids as one parameter: a text array.
fn id_list<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    ids.into_iter().map(str::to_owned).collect()
}

crate::sql::sql_store!(PgStore, sqlx::postgres::PgRow, sqlx::Postgres, "Postgres");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identifier_is_quoted_whatever_it_holds() {
        assert_eq!(quote_identifier("sluice"), "\"sluice\"");
        assert_eq!(
            quote_identifier("x\"; DROP DATABASE y; --"),
            "\"x\"\"; DROP DATABASE y; --\""
        );
    }

    #[test]
    fn a_target_names_server_and_database_but_never_the_password() {
        let target = PgTarget::of("postgres://sluice:hunter2@db.example:6543/calls").unwrap();
        assert_eq!(target.server(), "db.example:6543");
        assert_eq!(target.database, "calls");
        assert_eq!(target.to_string(), "database calls on db.example:6543");
        assert!(!format!("{target:?}").contains("hunter2"));
        // No database named: Postgres takes the user's name.
        assert_eq!(
            PgTarget::of("postgres://sluice@db").unwrap().database,
            "sluice"
        );
        assert!(PgTarget::of("postgres://db:port/x").is_err());
    }
}
