//! The pool of CPU threads that lets one large object use every core:
//! Parquet column chunks are encoded on it in parallel (see
//! `sink::parquet_encoder`), and a large CSV object's chunks decoded
//! (see `decode/csv/parallel.rs`). One pool for the process, sized once by
//! `[worker] cpu_threads` (default: the cores the task has; Rust reads
//! the cgroup's CPU quota, so on ECS the task's vCPUs), so objects in
//! flight at once share the cores instead of multiplying threads.

use std::num::NonZeroUsize;

/// Sizes the process's pool. The first call decides: later calls (tests
/// that build several workers in one process) keep the pool as it is.
pub fn init_pool(threads: Option<NonZeroUsize>) {
    let mut builder =
        rayon::ThreadPoolBuilder::new().thread_name(|index| format!("s3-ingest-cpu-{index}"));
    if let Some(threads) = threads {
        builder = builder.num_threads(threads.get());
    }
    match builder.build_global() {
        Ok(()) => tracing::debug!(threads = rayon::current_num_threads(), "CPU pool ready"),
        Err(err) => tracing::debug!(error = %err, "CPU pool already set up"),
    }
}

/// Threads in the pool: with one, objects are decoded and encoded as one
/// stream each, with no hand-offs.
pub fn threads() -> usize {
    rayon::current_num_threads()
}
