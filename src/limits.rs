//! Every bound HXO keeps, in one place, with the relations between them
//! checked at compile time (TigerBeetle's `constants.zig` habit).
//!
//! A queue, batch, record or plan that is not bounded here is a bug.

/// Largest plan file or HTTP plan body accepted, in bytes.
pub const PLAN_BYTES_MAX: u64 = 4 * 1024 * 1024;

/// Hard ceiling on shards per plan, whatever `HXO_MAX_SHARDS` says: shard
/// indices are `u32` in the DAG arena.
pub const SHARDS_MAX_CEILING: u64 = u32::MAX as u64;

/// Outcomes a worker accumulates before handing them to the engine (which
/// submits them to the log as one batch).
pub const OUTCOME_BATCH_MAX: usize = 256;

/// Durable batches waiting to be applied to the store's index.
pub const APPLY_QUEUE_BATCHES_MAX: usize = 4;

/// Batches (of at most `OUTCOME_BATCH_MAX` records) waiting for the log
/// writer. Small: a deep queue only holds memory, the writer drains it in
/// one group commit anyway.
pub const LOG_QUEUE_BATCHES_MAX: usize = 128;

/// Plans the server runs at once (each has its own thread pools).
pub const HTTP_RUNS_MAX: usize = 16;

/// Records the log writer appends before one group commit: a bound of the
/// log layer, defined there once.
pub use crate::log::limits::COMMIT_RECORDS_MAX;

/// Shards handed to one pool job when many become ready at once.
pub const READY_CHUNK_MAX: usize = 1024;

/// Bytes of an executor's error message kept in the log and reports.
pub const ERROR_TEXT_BYTES_MAX: usize = 2048;

/// Bytes of a subprocess's stdout hashed and kept (beyond it the shard fails).
pub const EXEC_STDOUT_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Per-shard events kept in the in-memory ring.
pub const EVENT_RING_MAX: usize = 16_384;

/// Events buffered per live subscriber before it is dropped as too slow.
pub const SUBSCRIBER_QUEUE_MAX: usize = 4096;

/// Inclusion proofs sampled when certifying a root.
pub const CERTIFY_SAMPLE_PROOFS: usize = 32;

/// Stages per plan.
pub const STAGES_MAX: usize = 1024;

/// Largest retry backoff, however many attempts.
pub const RETRY_BACKOFF_MAX_MS: u64 = 30_000;

const _: () = assert!(OUTCOME_BATCH_MAX <= COMMIT_RECORDS_MAX);
const _: () = assert!(READY_CHUNK_MAX as u64 <= SHARDS_MAX_CEILING);
const _: () = assert!(ERROR_TEXT_BYTES_MAX < PLAN_BYTES_MAX as usize);
// The error text an executor keeps fits the `error` field of a
// `ShardFailed` record, so the log never refuses a failure for its text.
const _: () = assert!(ERROR_TEXT_BYTES_MAX as u64 <= crate::log::limits::ERROR_LEN_MAX as u64);
const _: () = assert!(CERTIFY_SAMPLE_PROOFS > 0);

/// Threads answering HTTP requests at once; more requests wait in a queue.
pub const HTTP_WORKERS: usize = 16;

/// Event streams open at once (each holds a thread); more get 503.
pub const HTTP_EVENT_STREAMS_MAX: usize = 64;

/// Events one `GET /api/genesis/events` returns at most.
pub const HTTP_EVENTS_PAGE_MAX: usize = 1000;

const _: () = assert!(HTTP_WORKERS > 0 && HTTP_EVENT_STREAMS_MAX > 0);
const _: () = assert!(HTTP_EVENTS_PAGE_MAX <= EVENT_RING_MAX);
