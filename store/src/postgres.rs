//! The Postgres function registry and call store, for Sluice on more than one machine (the SQL
//! itself is shared with SQLite, in `sql.rs`).

use sluice_core::StoreError;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

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
}

crate::sql::sql_store!(PgStore, sqlx::postgres::PgRow);
