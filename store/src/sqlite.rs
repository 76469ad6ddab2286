//! The SQLite function registry and call store (the SQL itself is shared, in `sql.rs`).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sluice_core::StoreError;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use crate::sql::unavailable;

/// Opens (creating if needed) the database at `path` and brings its schema up to date.
///
/// Writes are fsynced before a statement returns (`synchronous = FULL`), which is what lets the
/// gateway promise that a `202` means the call is on disk.
pub async fn open_sqlite(path: &Path) -> Result<SqlitePool, StoreError> {
    let options = SqliteConnectOptions::from_str("sqlite://")
        .map_err(unavailable)?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
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

/// Function registry and call records in SQLite.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

crate::sql::sql_store!(SqliteStore, sqlx::sqlite::SqliteRow);
