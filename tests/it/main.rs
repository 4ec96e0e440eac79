//! The integration tests, as one test program: each module was its own
//! program once, and each linked the AWS SDK, arrow and parquet again.
//! Every test runs against LocalStack (S3, SQS) and, for the sinks, real
//! PostgreSQL and ClickHouse; `make test` starts them (see the Makefile).
//! `util` holds what the modules share: per-test buckets and queues, the
//! worker in-process or as a process, wait loops, data builders.
//!
//! # Tests that run alone
//!
//! libtest runs a program's tests on parallel threads, so every module's
//! tests now run beside every other module's. Some tests must not: they
//! measure or bound what a neighbour would skew.
//!
//! - `memory`: peak RSS of worker processes against a fixed bound.
//! - `faults`: processes killed at random moments, connection attempts per
//!   second during an outage, a shutdown's grace period, messages released
//!   within seconds, a 1 GiB file against its visibility timeout.
//! - `group::crash_loop_with_groups_loses_and_doubles_nothing` and
//!   `sink_delta::crash_loop_into_a_delta_table_loses_and_doubles_nothing`:
//!   the same crash loop with small-file groups, and into a Delta table.
//! - `cli::sigterm_stops_receiving_and_releases_what_the_last_long_poll_returns`
//!   (a worker process must exit within 30 s of SIGTERM) and
//!   `cli::a_stalled_stdout_reader_does_not_stall_the_worker` (a worker
//!   process must answer its status endpoints within 10 s).
//!
//! Each of those starts with `let _suite = crate::alone().await;`, every
//! other test with `let _suite = crate::shared().await;` (a plain `#[test]`
//! with `crate::shared_blocking()`): one process-wide reader-writer lock,
//! held for the whole test. Tests holding it shared run side by side; a
//! test holding it alone runs with nothing else of this program. Tokio's
//! lock is fair: once a test waits to run alone, tests that ask later wait
//! behind it, so it is not starved by a stream of shared ones. A test that
//! panics drops its guard while unwinding; the lock does not poison.
//!
//! Why not the `serial_test` crate (`#[serial]`, everything else
//! `#[parallel]`): its `#[parallel]` on an async test requires the test's
//! future to be `UnwindSafe`, and a future holding a `util::Fixture` is
//! not (the AWS SDK clients hold `Arc<dyn ...>` without that bound), so
//! most tests here would not compile; and its lock lets parallel tests
//! keep overtaking a waiting `#[serial]` one. A new test must take
//! one of the guards below; without one it could run beside a test that
//! runs alone.

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

mod cli;
mod contract;
mod contract_sinks;
mod corpus;
mod fanout;
mod faults;
mod group;
mod image;
mod ingest;
mod memory;
mod operate;
mod reconcile;
mod sink_delta;
mod sink_http;
mod sink_postgres;
mod sink_s3_parquet;
mod terraform;
mod trace;
mod util;

static SUITE: RwLock<()> = RwLock::const_new(());

/// For a test that may run beside others; hold it for the whole test.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    SUITE.read().await
}

/// [`shared`] for a plain `#[test]` (no runtime).
pub fn shared_blocking() -> RwLockReadGuard<'static, ()> {
    SUITE.blocking_read()
}

/// For a test that must run with no other test of this program; hold it
/// for the whole test.
pub async fn alone() -> RwLockWriteGuard<'static, ()> {
    SUITE.write().await
}
