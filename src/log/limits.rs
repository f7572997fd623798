//! Bounds of the checkpoint log: record fields, segments, commits and the
//! writer's queue.
//!
//! Every bound that the on-disk format or the writer relies on lives here,
//! and the relations between them are checked at compile time, so that a
//! change to one of them cannot silently break another. This module
//! depends on nothing: the sizes that follow from the byte layout (header
//! and frame lengths, the largest payload and frame) are derived in
//! [`super::format`], which imports these bounds and asserts the relations
//! that mix both.

/// Largest `manifest_json` of a `PlanAccepted` record (the compiled plan).
pub const MANIFEST_LEN_MAX: u32 = 4 * 1024 * 1024;
/// Largest `error` text of a `ShardFailed` record.
pub const ERROR_LEN_MAX: u32 = 4 * 1024;
/// Largest `actor` of an audit record (`PlanAborted`, `PlanReplayed`,
/// `PlanSubmitted`).
pub const ACTOR_LEN_MAX: u32 = 256;
/// Largest `reason` of a `PlanAborted` record.
pub const REASON_LEN_MAX: u32 = 4 * 1024;
/// Largest `topic` of an `Event` record.
pub const TOPIC_LEN_MAX: u32 = 256;
/// Largest `payload_json` of an `Event` record.
pub const EVENT_PAYLOAD_LEN_MAX: u32 = 64 * 1024;

/// Segment size used when the caller has no reason to pick another.
pub const SEGMENT_SIZE_DEFAULT_BYTES: u64 = 64 * 1024 * 1024;
/// Smallest segment accepted (tests use it to force many rollovers).
pub const SEGMENT_SIZE_MIN_BYTES: u64 = 4096;
/// Largest segment accepted: bounds the zero scan of recovery and the
/// address space one map takes.
pub const SEGMENT_SIZE_MAX_BYTES: u64 = 1024 * 1024 * 1024;
/// Segments are a whole number of these, so that page-granular maps and
/// madvise never reach past the end of a file.
pub const SEGMENT_SIZE_ALIGN_BYTES: u64 = 4096;
/// Most segments one store may hold (4 TiB at the default size).
pub const SEGMENT_COUNT_MAX: u64 = 65_536;

/// Bytes of appended frames the log buffers before it hands them to the
/// segment file in one write (commits hand them over sooner).
pub const PENDING_BYTES_MAX: usize = 1024 * 1024;
/// Most records the writer appends before one commit (group commit bound).
pub const COMMIT_RECORDS_MAX: usize = 65_536;
/// Most records in one batch handed to the writer; a batch is never split
/// across commits, so it must fit in one.
pub const SUBMIT_BATCH_RECORDS_MAX: usize = COMMIT_RECORDS_MAX;
/// Most records `compact` appends between two commits of the new store.
pub const COMPACT_COMMIT_RECORDS_MAX: usize = 16_384;

const _: () = assert!(SEGMENT_SIZE_MIN_BYTES % SEGMENT_SIZE_ALIGN_BYTES == 0);
const _: () = assert!(SEGMENT_SIZE_DEFAULT_BYTES % SEGMENT_SIZE_ALIGN_BYTES == 0);
const _: () = assert!(SEGMENT_SIZE_MAX_BYTES % SEGMENT_SIZE_ALIGN_BYTES == 0);
const _: () = assert!(SEGMENT_SIZE_MIN_BYTES <= SEGMENT_SIZE_DEFAULT_BYTES);
const _: () = assert!(SEGMENT_SIZE_DEFAULT_BYTES <= SEGMENT_SIZE_MAX_BYTES);
// Frame lengths are u32 on disk; a segment-sized frame must be expressible.
const _: () = assert!(SEGMENT_SIZE_MAX_BYTES <= u32::MAX as u64);
const _: () = assert!(SUBMIT_BATCH_RECORDS_MAX <= COMMIT_RECORDS_MAX);
const _: () = assert!(COMPACT_COMMIT_RECORDS_MAX <= COMMIT_RECORDS_MAX);
