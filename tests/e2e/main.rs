//! End-to-end tests: the real `sluice` binary, real child processes, real sockets.
//!
//! Each test starts its own `sluice up` on a free port with its own data dir.

// Test modules share items with `pub`; nothing here is a public API.
#![allow(unreachable_pub)]

mod api;
mod async_calls;
mod bad_input;
mod cli;
mod durability;
mod harness;
