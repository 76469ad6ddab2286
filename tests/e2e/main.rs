//! End-to-end tests: the real `sluice` binary, real child processes, real sockets.
//!
//! Each test starts its own `sluice up` on a free port with its own data dir.

// Test modules share items with `pub`; nothing here is a public API.
#![allow(unreachable_pub)]

/// Runs the async test `$name(backend: Backend)` on each backend, as `$name::embedded` and
/// `$name::shared` (Postgres and JetStream).
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn embedded() {
                super::$name(crate::harness::Backend::Embedded).await
            }

            #[tokio::test]
            async fn shared() {
                super::$name(crate::harness::Backend::shared().await).await
            }
        }
    };
}

mod api;
mod async_calls;
mod bad_input;
mod browser;
mod cli;
mod cli_calls;
mod cluster;
mod corpus;
mod crash;
mod durability;
mod harness;
mod hostile;
mod kubernetes;
mod portal;
mod portal_browser;
mod portal_deploy;
mod scaling;
mod secrets;
mod security;
mod templates;
mod timeline;
mod traces;
mod watchdog;
mod wire;
