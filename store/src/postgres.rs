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

    /// Runs a write statement with `RETURNING`.
    async fn write_returning(
        &self,
        query: Query<'static, Postgres, PgArguments>,
    ) -> Result<Option<PgRow>, sqlx::Error> {
        query.fetch_optional(&self.pool).await
    }
}

crate::sql::sql_store!(PgStore, sqlx::postgres::PgRow, sqlx::Postgres);
