//! `sluice-store`: where Sluice keeps its state, through sqlx.
//!
//! - [`SqliteStore`] (function registry and call store) and [`SqliteQueue`] (the durable async
//!   queue) share one SQLite database: the single-machine form. Workers claim calls with a lease,
//!   so a crash mid-call leads to redelivery, never loss.
//! - [`PgStore`] is the same registry and call store on Postgres, for the cluster form.

mod postgres;
mod sql;
mod sqlite;
mod sqlite_queue;

pub use postgres::{PgStore, open_postgres};
pub use sqlite::{SqliteStore, open_sqlite};
pub use sqlite_queue::{QueueBounds, SqliteQueue};
