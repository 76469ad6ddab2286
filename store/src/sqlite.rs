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

    /// Runs write statements one after another in the writer's next transaction (not all or
    /// none: a failure leaves those before it, as separate writes would); returns the rows each
    /// changed.
    async fn write_all(
        &self,
        queries: Vec<Query<'static, Sqlite, SqliteArguments<'static>>>,
    ) -> Result<Vec<u64>, sqlx::Error> {
        self.writer
            .run(move |conn| {
                Box::pin(async move {
                    let mut done = Vec::with_capacity(queries.len());
                    for query in queries {
                        done.push(query.execute(&mut *conn).await?.rows_affected());
                    }
                    Ok(done)
                })
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
         attempts, submitted_at) ",
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
            .push_bind(r.submitted_at.as_millis());
    });
    insert.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
    let rows = insert.build().fetch_all(db).await?;
    Ok(rows.iter().map(|row| row.get("id")).collect())
}

crate::sql::sql_store!(SqliteStore, sqlx::sqlite::SqliteRow, sqlx::Sqlite);
