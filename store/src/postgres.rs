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

    /// Runs write statements one after another; returns the rows each changed.
    async fn write_all(
        &self,
        queries: Vec<Query<'static, Postgres, PgArguments>>,
    ) -> Result<Vec<u64>, sqlx::Error> {
        let mut done = Vec::with_capacity(queries.len());
        for query in queries {
            done.push(query.execute(&self.pool).await?.rows_affected());
        }
        Ok(done)
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

    /// Runs a write statement with `RETURNING`.
    async fn write_returning(
        &self,
        query: Query<'static, Postgres, PgArguments>,
    ) -> Result<Option<PgRow>, sqlx::Error> {
        query.fetch_optional(&self.pool).await
    }
}

crate::sql::sql_store!(PgStore, sqlx::postgres::PgRow, sqlx::Postgres);
