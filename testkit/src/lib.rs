//! `sluice-testkit`: what Sluice's tests share. Only tests and the benchmark depend on it.
//!
//! - [`NatsServer`]: a real `nats-server -js` per test, on a free port with its own store
//!   directory, that a test can kill and start again.
//! - [`FreshDatabase`]: a fresh database per test on the machine's Postgres, dropped afterwards.
//! - [`ManualAutoscaler`]: an autoscaler that never scales, for tests that scale by hand.
//! - [`queue_contract`]: what every [`sluice_core::CallQueue`] must do, run against each backend.

mod manual;
mod nats;
mod postgres;
pub mod queue_contract;

pub use manual::ManualAutoscaler;
pub use nats::NatsServer;
pub use postgres::FreshDatabase;
