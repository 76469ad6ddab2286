//! `sluice-store`: where Sluice keeps its state, through sqlx.
//!
//! - [`SqliteStore`] (function registry and call store) and [`SqliteQueue`] (the durable async
//!   queue) share one SQLite database: the single-machine form. Workers claim calls with a lease,
//!   so a crash mid-call leads to redelivery, never loss. [`SqliteIntake`] writes the records
//!   and queue rows of the calls submitted together in one savepoint. Every write of calls' progress goes
//!   through one [`SqliteWriter`], which commits the writes that arrive together in one
//!   transaction (group commit).
//! - [`CachedFunctions`] keeps the registry in memory in front of a store this process alone
//!   writes (`sluice up`'s).
//! - [`PgStore`] is the same registry and call store on Postgres, for the cluster form.
//! - [`SealedSecrets`] keeps the secrets functions name in either database, each value sealed
//!   (encrypted and authenticated) under a [`SecretsKey`].

mod cached;
mod postgres;
mod secrets;
mod sql;
mod sqlite;
mod sqlite_intake;
mod sqlite_queue;
mod sqlite_writer;
mod timeline;

pub use cached::CachedFunctions;
pub use postgres::{
    PgOpenError, PgStore, PgTarget, create_database, open_postgres, quote_identifier,
};
pub use secrets::{KeyError, SealedSecrets, SecretsKey};
pub use sqlite::{SqliteStore, open_sqlite};
pub use sqlite_intake::SqliteIntake;
pub use sqlite_queue::{QueueBounds, SqliteQueue};
pub use sqlite_writer::SqliteWriter;
