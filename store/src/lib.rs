//! `sluice-store`: Sluice's state on a single machine, in one SQLite database through sqlx.
//!
//! [`SqliteStore`] is the function registry and the call store; [`SqliteQueue`] is the durable
//! async queue, living in the same database. Workers claim calls with a lease, so a crash mid-call
//! leads to redelivery, never loss.

mod sqlite;
mod sqlite_queue;

pub use sqlite::{SqliteStore, open_sqlite};
pub use sqlite_queue::SqliteQueue;
