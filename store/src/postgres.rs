//! The Postgres function registry and call store, for Sluice on more than one machine (the SQL
//! itself is shared with SQLite, in `sql.rs`).

use sluice_core::StoreError;
use sqlx::postgres::{PgArguments, PgPoolOptions, PgRow};
use sqlx::query::Query;
use sqlx::{PgPool, Postgres};

/// Connects to Postgres at `url` and brings the schema up to date. Several Sluice processes may
/// do this at once: sqlx serialises migrations with an advisory lock.
pub async fn open_postgres(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(url)
        .await
        .map_err(|e| StoreError::Unavailable(format!("connecting to Postgres: {e}")))?;
    sqlx::migrate!("./migrations/postgres")
        .run(&pool)
        .await
        .map_err(|e| StoreError::Unavailable(format!("migrating the Postgres schema: {e}")))?;
    Ok(pool)
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
             attempts, submitted_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
             $6::text[], $7::text[], $8::bigint[], $9::bigint[]) \
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

/// Starts attempts of the calls whose ids are the array `$2` at `$1`.
const START_ATTEMPTS: &str = "UPDATE calls SET state = 'running', attempts = attempts + 1, \
     started_at = $1, finished_at = NULL, duration_ms = NULL, status_code = NULL, error = NULL \
     WHERE id = ANY($2::text[]) AND state IN ('queued', 'running') RETURNING id, attempts";

/// Keeps a call's response (`$6`..`$10`: id, status, headers, body, time) and records its
/// outcome as [`crate::sql::FINISH`] does, in one statement (so one round trip and commit).
const FINISH_WITH_RESULT: &str = "WITH kept AS (INSERT INTO call_results (id, status_code, \
     headers, body, stored_at) VALUES ($6, $7, $8, $9, $10) ON CONFLICT (id) DO UPDATE SET \
     status_code = EXCLUDED.status_code, headers = EXCLUDED.headers, body = EXCLUDED.body, \
     stored_at = EXCLUDED.stored_at RETURNING id) \
     UPDATE calls SET state = $1, status_code = $2, error = $3, finished_at = $4, \
     duration_ms = $5 WHERE id = $6 RETURNING id";

/// Call ids as one parameter: a text array.
fn id_list<'a>(ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    ids.into_iter().map(str::to_owned).collect()
}

crate::sql::sql_store!(PgStore, sqlx::postgres::PgRow, sqlx::Postgres);
