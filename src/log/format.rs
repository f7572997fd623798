//! The on-disk format of the checkpoint log: segment header, record frame,
//! record payloads, and the reasoning that makes recovery safe.
//!
//! This module owns the bytes. It encodes and decodes; it does no I/O. The
//! recovery scan that applies the rules below lives in [`super::segment`].
//! Change nothing here without bumping [`FORMAT_VERSION`] and keeping a
//! reader for every older version (the `fixtures/logs/v1` and
//! `fixtures/logs/v2` stores must recover forever).
//!
//! # Versions
//!
//! Every segment header names the version its segment was written in. This
//! build writes [`FORMAT_VERSION`] and reads every version from
//! [`FORMAT_VERSION_OLDEST_READ`] up to it; any other version is refused
//! (never skipped, even when salvaging). Headers and frames are the same in
//! every version; versions differ in the record types they may hold:
//!
//! - **1**: types 1 to 9. Plan lifecycle facts (a plan held, submitted,
//!   started, resumed, certified) are `Event` records whose JSON carries
//!   them; [`super::upgrade`] reads them as the typed records of version 2.
//! - **2**: adds the typed lifecycle records, types 10 to 13, in which a
//!   version-2 writer logs those facts. `Event`s it logs beside them are
//!   for subscribers and are read as they are.
//!
//! A record type newer than its segment's version is corruption (no writer
//! of that version produced it). A store may hold segments of several
//! versions: one written by an older build and then appended to by this one
//! keeps its old segments as they are, and appends go to a new segment of
//! this build's version (never a record of a newer type into an older
//! segment). Compaction rewrites everything in this build's version.
//!
//! # Store
//!
//! A store is a directory (`HXO_DB_PATH`) holding:
//!
//! - `NNNNNNNN.seg`: segments, `NNNNNNNN` the zero-padded decimal segment
//!   index. Indices are consecutive; records are in log order across
//!   segments in index order, and within a segment by offset.
//! - `LOCK`: the store lock (see [`super::lock`]); holds the owner's pid.
//! - `RUNNING` (and `RUNNING.tmp` while it is replaced): the owner's pid and
//!   the plans it runs, for readers in other processes; written by the
//!   store (`crate::store::Store::publish_running`), not part of the log.
//! - `requests/`: requests from other processes to the owner, and its
//!   answers (see `crate::engine::requests`), not part of the log.
//! - transient, while a segment is being created: `NNNNNNNN.seg.tmp`;
//!   while compacting: the directories `compact.tmp/` and `compact.ready/`
//!   (see [`super::compact`](mod@super::compact)). Recovery removes or finishes them.
//!
//! Every segment file is preallocated (`posix_fallocate`) to its full size
//! when it is created, so a full disk fails there, with a clear error, and
//! never as a SIGBUS while writing through the memory map. Creation is
//! atomic: the file is preallocated, its header written and fsynced under
//! the `.tmp` name, then renamed and the directory fsynced. A segment file
//! that exists under its final name therefore always has a valid header and
//! its full size; anything else is damage.
//!
//! # Segment header
//!
//! All integers little-endian. Offsets are from the start of the file.
//!
//! | offset | size | field                                                  |
//! |-------:|-----:|--------------------------------------------------------|
//! | 0      | 8    | magic `b"HXOLOG\0\x01"` ([`MAGIC`])                      |
//! | 8      | 4    | format version, u32 (see *Versions*)                   |
//! | 12     | 4    | header length in bytes, u32 ([`HEADER_LEN`])           |
//! | 16     | 8    | segment index, u64 (equals the file name)              |
//! | 24     | 8    | segment size in bytes, u64 (equals the file length)    |
//! | 32     | 8    | store generation, u64 (bumped by each compaction)      |
//! | 40     | 4    | CRC-32C of bytes 0..40                                 |
//! | 44     | 20   | zero                                                   |
//!
//! Records start at [`HEADER_LEN`] (64). The segment size is per segment
//! (taken from the options when the segment is created), so a store written
//! with one size stays readable under another.
//!
//! # Frame
//!
//! Each record is one frame; frames follow each other with no gap or
//! alignment. Offsets are from the start of the frame:
//!
//! | offset      | size | field                                               |
//! |------------:|-----:|-----------------------------------------------------|
//! | 0           | 4    | `len`: payload length, u32                          |
//! | 4           | 4    | `!len` (bitwise complement)                         |
//! | 8           | 4    | CRC-32C over `len` (4 bytes), `type`, payload       |
//! | 12          | 1    | `type` ([`RecordType`]; 0 is never a type)          |
//! | 13          | len  | payload (layouts below)                             |
//! | 13 + len    | 1    | end marker [`END_MARKER`] (0xA5)                    |
//!
//! The bytes after the last frame of a segment are zero (preallocation
//! gives zeros and nothing else writes there). A zero frame header (13 zero
//! bytes, or fewer than 13 bytes left, all zero) ends the data of a segment;
//! every byte after it, to the end of the segment, must be zero too.
//!
//! The writer packs the frames appended since its last write into one
//! buffer, in log order, and stores the buffer with one positional write
//! (`pwrite`) at commit, or earlier when the buffer reaches its bound. The
//! kernel copies a write into the page cache in ascending order and a fatal
//! signal stops it only between the page-cache folios it copies into (Linux
//! `generic_perform_write`), so a process killed at any instant leaves a
//! prefix of the frame stream: whole frames, then possibly the start of
//! one, which has one of the two tear shapes below and nothing else. (A
//! reader in this process sees a write in progress in any byte order; the
//! CRC and the end marker reject what it has not finished.)
//!
//! # Payloads
//!
//! Fixed-width little-endian integers; `plan_id` 16 bytes (UUID), hashes 32
//! bytes; strings are a u32 byte length then UTF-8 bytes, each bounded by a
//! constant of [`super::limits`]; `bool` is one byte, 0 or 1; a
//! [`RunCause`] is one byte, 0 (start), 1 (resume) or 2 (replay). Fields in
//! the order of the [`Record`] variant. `ShardDone`, written once per
//! shard, is a fixed 100 bytes (114 with framing):
//!
//! | type | record           | payload                                                                                 |
//! |-----:|------------------|-----------------------------------------------------------------------------------------|
//! | 1    | `PlanAccepted`   | plan_id, accepted_at_ms u64, shard_count u64, manifest_json str                         |
//! | 2    | `ShardDone`      | plan_id, leaf_index u64, cas_id, output_digest, attempts u32, duration_us u64           |
//! | 3    | `ShardFailed`    | plan_id, leaf_index u64, cas_id, attempts u32, duration_us u64, aborted bool, error str |
//! | 4    | `ShardSplit`     | plan_id, leaf_index u64, pieces u32                                                     |
//! | 5    | `SubShardDone`   | plan_id, leaf_index u64, piece u32, output_digest                                       |
//! | 6    | `PlanAborted`    | plan_id, at_ms u64, actor str, reason str                                               |
//! | 7    | `PlanReplayed`   | plan_id, at_ms u64, actor str                                                           |
//! | 8    | `PlanFinished`   | plan_id, at_ms u64, tree_size u64, root, done_count u64, failed_count u64               |
//! | 9    | `Event`          | seq u64, at_ms u64, topic str, payload_json str                                         |
//! | 10   | `PlanHeld`       | plan_id, at_ms u64                                                                      |
//! | 11   | `PlanSubmitted`  | plan_id, at_ms u64, actor str                                                           |
//! | 12   | `PlanRunStarted` | plan_id, at_ms u64, cause u8 ([`RunCause`])                                             |
//! | 13   | `PlanCertified`  | plan_id, at_ms u64, tree_size u64, root, certified bool, proofs_checked u32             |
//!
//! Types 1 to 9 exist since version 1, types 10 to 13 since version 2.
//!
//! A decoder must consume the payload exactly; trailing bytes, an unknown
//! type, a type newer than the segment's version, a string over its bound,
//! invalid UTF-8, a bool other than 0/1 or a run cause other than 0/1/2 is
//! corruption (it passed the CRC, so it was written that way: a bug or a
//! newer writer).
//!
//! # Recovery rules
//!
//! Every segment is scanned from [`HEADER_LEN`]. At offset X a frame is
//! valid when `len == !comp`, `len <= PAYLOAD_LEN_MAX`, the frame fits in
//! the segment, the marker at X+13+len is 0xA5, the CRC matches and the
//! payload decodes. At the first frame that is not valid:
//!
//! - In a segment that is not the last, it is corruption.
//! - In the last segment it is a *torn tail* (zeroed from X and synced, the
//!   records before X kept) only if it has the shape of a prefix write:
//!   (a) `len == !comp`, the marker byte at X+13+len is 0 (not yet
//!   written) and every byte after X+14+len is 0; or (b) `len != !comp` and
//!   every byte from X+13 to the end of the segment is 0 (a torn header).
//!   Anything else, for example a fully written frame whose CRC fails, a
//!   marker that is neither 0 nor 0xA5, or non-zero bytes after the frame,
//!   is corruption.
//!
//! Corruption is reported as `LogError::Corrupt { segment, offset, reason }`
//! and the store is not written. With the `salvage` option the records
//! before the damage in that segment are kept, the damaged bytes are
//! reported (never rewritten), scanning goes on with the next segment, and
//! appends go to a new segment.
//!
//! Zeroing a torn tail is itself crash safe: bytes X+13.. are zeroed and
//! synced first, then the frame header; every intermediate state still
//! matches (a), (b) or a clean end of data.
//!
//! # Crash cases and disk assumptions
//!
//! - *Process kill* (panic=abort, SIGKILL, OOM). The page cache survives and
//!   is written back later, so the file holds exactly the bytes the process
//!   stored, which by the write order above is a prefix of the frame stream:
//!   whole frames, then for the frame being stored its header (possibly
//!   partial), then possibly part of its payload, and no marker. A partial header is
//!   inconsistent, because for every legal length the top byte of `!len` is
//!   0xFF ([`PAYLOAD_LEN_MAX`] `< 2^24`, asserted below), so it cannot be
//!   complete until the last complement byte is stored: shape (b). A
//!   complete header with a missing marker is shape (a). Nothing
//!   acknowledged is lost because `commit` returns only after `fdatasync`.
//! - *Power loss*. Everything synced is intact. Pages written since the last
//!   successful `fdatasync` (only the current, unacknowledged batch) may reach
//!   the disk in any subset and order, torn at any byte. If the result looks
//!   like a prefix it is truncated as above; otherwise it is reported as
//!   corruption (for example a hole of zeros followed by a later frame of the
//!   same batch) rather than guessed at. Salvage then keeps the records
//!   before the hole; the dropped ones all belong to the unacknowledged
//!   batch, so salvage loses nothing acknowledged in this case.
//! - *Rollover*. Before a new segment is created the current one is synced to
//!   its end, so a segment that is not the last never has an unsynced tail.
//! - *Disk assumptions*. `fdatasync` (which also persists the
//!   unwritten-to-written extent conversion) returning success means what
//!   was written before it is durable; the device honours flushes; preallocated,
//!   never-written space reads as zeros and the file system never exposes
//!   stale blocks; sector writes need not be atomic. Bit rot is detected
//!   (below), not corrected.
//!
//! # Why one flipped bit is always detected
//!
//! Take a single bit flip inside a written frame at X (all frames there
//! were written completely, e.g. committed):
//!
//! - in `len` or `!len`: the two disagree; the frame's own marker 0xA5 lies
//!   after X+13, so shape (b) fails: corruption.
//! - in the CRC, `type` or the payload: the CRC fails; the marker is 0xA5,
//!   not 0, so shape (a) fails: corruption.
//! - in the marker: 0xA5 has four bits set, so one flip leaves it non-zero
//!   and not 0xA5: corruption.
//! - in a segment header: the header CRC (or the magic) fails: corruption.
//!
//! A flip in the zero area after the data can only create a non-zero byte:
//! inside the 13 bytes at the end of data it reads as a torn header (b) and
//! is zeroed (no record changes); further on it is reported as corruption.
//! In no case does recovery return a record set that differs from the
//! written one other than by dropping a torn, unacknowledged tail.

use super::limits::{
    ACTOR_LEN_MAX, ERROR_LEN_MAX, EVENT_PAYLOAD_LEN_MAX, MANIFEST_LEN_MAX, REASON_LEN_MAX,
    SEGMENT_SIZE_DEFAULT_BYTES, SEGMENT_SIZE_MIN_BYTES, TOPIC_LEN_MAX,
};
use crate::hash::Hash;

pub use crate::ids::PlanId;

/// First 8 bytes of every segment.
pub const MAGIC: [u8; 8] = *b"HXOLOG\0\x01";
/// Version of the segments this build writes (see *Versions*).
pub const FORMAT_VERSION: u32 = 2;
/// Oldest version this build reads; it reads every version from this one
/// to [`FORMAT_VERSION`].
pub const FORMAT_VERSION_OLDEST_READ: u32 = 1;
const _: () = assert!(FORMAT_VERSION_OLDEST_READ >= 1);
const _: () = assert!(FORMAT_VERSION_OLDEST_READ <= FORMAT_VERSION);

/// Whether this build reads segments of `version`.
pub fn version_is_read(version: u32) -> bool {
    (FORMAT_VERSION_OLDEST_READ..=FORMAT_VERSION).contains(&version)
}

// Header field offsets (the table above), each derived from the one
// before. Each is named after its field: `HEADER_LEN_OFFSET` is where the
// header's own length is stored, `HEADER_SEGMENT_SIZE_OFFSET` where the
// segment's size is.
/// Offset of the magic number.
pub const HEADER_MAGIC_OFFSET: usize = 0;
/// Offset of the format version.
pub const HEADER_VERSION_OFFSET: usize = HEADER_MAGIC_OFFSET + MAGIC.len();
/// Offset of the header length field (whose value is [`HEADER_LEN`]).
pub const HEADER_LEN_OFFSET: usize = HEADER_VERSION_OFFSET + 4;
/// Offset of the segment index.
pub const HEADER_INDEX_OFFSET: usize = HEADER_LEN_OFFSET + 4;
/// Offset of the segment size field (the segment file's length in bytes).
pub const HEADER_SEGMENT_SIZE_OFFSET: usize = HEADER_INDEX_OFFSET + 8;
/// Offset of the store generation.
pub const HEADER_GENERATION_OFFSET: usize = HEADER_SEGMENT_SIZE_OFFSET + 8;
/// Offset of the header CRC.
pub const HEADER_CRC_OFFSET: usize = HEADER_GENERATION_OFFSET + 8;
/// End of the used header bytes; zero padding follows up to `HEADER_LEN`.
pub const HEADER_USED_END: usize = HEADER_CRC_OFFSET + 4;
/// Length of a segment header in bytes: where the first frame starts.
pub const HEADER_LEN: usize = 64;
/// [`HEADER_LEN`] as a file offset or length.
pub const HEADER_LEN_BYTES: u64 = HEADER_LEN as u64;
const _: () = assert!(HEADER_USED_END <= HEADER_LEN);
// The documented table above; change both together.
const _: () = assert!(HEADER_VERSION_OFFSET == 8 && HEADER_LEN_OFFSET == 12);
const _: () = assert!(HEADER_INDEX_OFFSET == 16 && HEADER_SEGMENT_SIZE_OFFSET == 24);
const _: () = assert!(HEADER_GENERATION_OFFSET == 32 && HEADER_CRC_OFFSET == 40);
const _: () = assert!(HEADER_USED_END == 44);

/// Frame field offsets, from the start of the frame.
pub const FRAME_LEN_OFFSET: usize = 0;
pub const FRAME_LEN_COMPLEMENT_OFFSET: usize = FRAME_LEN_OFFSET + 4;
pub const FRAME_CRC_OFFSET: usize = FRAME_LEN_COMPLEMENT_OFFSET + 4;
pub const FRAME_TYPE_OFFSET: usize = FRAME_CRC_OFFSET + 4;
pub const FRAME_PAYLOAD_OFFSET: usize = FRAME_TYPE_OFFSET + 1;
/// Length of a frame's header: its bytes before the payload (the "13" of
/// the docs).
pub const FRAME_HEADER_LEN: usize = FRAME_PAYLOAD_OFFSET;
/// Bytes a frame adds to its payload: header plus end marker.
pub const FRAME_OVERHEAD: usize = FRAME_HEADER_LEN + 1;
pub const FRAME_OVERHEAD_BYTES: u64 = FRAME_OVERHEAD as u64;
const _: () = assert!(FRAME_LEN_COMPLEMENT_OFFSET == 4 && FRAME_CRC_OFFSET == 8);
const _: () = assert!(FRAME_TYPE_OFFSET == 12 && FRAME_HEADER_LEN == 13);
/// Last byte of every complete frame. Four bits set: one flip never zeroes it.
pub const END_MARKER: u8 = 0xA5;
const _: () = assert!(END_MARKER.count_ones() >= 2);

const PLAN_ID_SIZE: u32 = 16;
const HASH_SIZE: u32 = 32;
const STR_PREFIX_SIZE: u32 = 4;

/// Payload length of `ShardDone`, the record written once per shard.
pub const SHARD_DONE_PAYLOAD_LEN: u32 = PLAN_ID_SIZE + 8 + HASH_SIZE + HASH_SIZE + 4 + 8;
const _: () = assert!(SHARD_DONE_PAYLOAD_LEN == 100);

const fn max_u32(a: u32, b: u32) -> u32 {
    if a > b {
        a
    } else {
        b
    }
}

/// The largest payload any record can have, from the field bounds.
pub const fn payload_len_max() -> u32 {
    let plan_accepted = PLAN_ID_SIZE + 8 + 8 + STR_PREFIX_SIZE + MANIFEST_LEN_MAX;
    let shard_failed = PLAN_ID_SIZE + 8 + HASH_SIZE + 4 + 8 + 1 + STR_PREFIX_SIZE + ERROR_LEN_MAX;
    let shard_split = PLAN_ID_SIZE + 8 + 4;
    let sub_shard_done = PLAN_ID_SIZE + 8 + 4 + HASH_SIZE;
    let plan_aborted =
        PLAN_ID_SIZE + 8 + STR_PREFIX_SIZE + ACTOR_LEN_MAX + STR_PREFIX_SIZE + REASON_LEN_MAX;
    let plan_replayed = PLAN_ID_SIZE + 8 + STR_PREFIX_SIZE + ACTOR_LEN_MAX;
    let plan_finished = PLAN_ID_SIZE + 8 + 8 + HASH_SIZE + 8 + 8;
    let event = 8 + 8 + STR_PREFIX_SIZE + TOPIC_LEN_MAX + STR_PREFIX_SIZE + EVENT_PAYLOAD_LEN_MAX;
    let plan_held = PLAN_ID_SIZE + 8;
    let plan_submitted = PLAN_ID_SIZE + 8 + STR_PREFIX_SIZE + ACTOR_LEN_MAX;
    let plan_run_started = PLAN_ID_SIZE + 8 + 1;
    let plan_certified = PLAN_ID_SIZE + 8 + 8 + HASH_SIZE + 1 + 4;
    let mut m = plan_accepted;
    m = max_u32(m, SHARD_DONE_PAYLOAD_LEN);
    m = max_u32(m, shard_failed);
    m = max_u32(m, shard_split);
    m = max_u32(m, sub_shard_done);
    m = max_u32(m, plan_aborted);
    m = max_u32(m, plan_replayed);
    m = max_u32(m, plan_finished);
    m = max_u32(m, event);
    m = max_u32(m, plan_held);
    m = max_u32(m, plan_submitted);
    m = max_u32(m, plan_run_started);
    max_u32(m, plan_certified)
}

/// Largest payload of any record type (`PlanAccepted` with a full manifest).
pub const PAYLOAD_LEN_MAX: u32 = payload_len_max();
/// Largest frame (payload plus framing) any record can produce.
pub const FRAME_LEN_MAX_BYTES: u64 = FRAME_OVERHEAD_BYTES + PAYLOAD_LEN_MAX as u64;

// A record of every type, at its largest, fits in a default segment after
// the header: the engine never has to split a record.
const _: () = assert!(HEADER_LEN_BYTES + FRAME_LEN_MAX_BYTES <= SEGMENT_SIZE_DEFAULT_BYTES);
// The torn-header argument above needs the top byte of `!len` to be 0xFF
// for every legal length, so that a header whose complement was only partly
// written never looks consistent.
const _: () = assert!(PAYLOAD_LEN_MAX < (1 << 24));
// Every segment, even the smallest, holds its header and a ShardDone frame.
const _: () = assert!(
    HEADER_LEN_BYTES + FRAME_OVERHEAD_BYTES + SHARD_DONE_PAYLOAD_LEN as u64
        <= SEGMENT_SIZE_MIN_BYTES
);

/// One outcome in the log. The engine owns the meaning; the log only keeps
/// the bytes and the order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    PlanAccepted {
        plan_id: PlanId,
        accepted_at_ms: u64,
        shard_count: u64,
        manifest_json: String,
    },
    ShardDone {
        plan_id: PlanId,
        leaf_index: u64,
        cas_id: Hash,
        output_digest: Hash,
        attempts: u32,
        duration_us: u64,
    },
    ShardFailed {
        plan_id: PlanId,
        leaf_index: u64,
        cas_id: Hash,
        attempts: u32,
        duration_us: u64,
        aborted: bool,
        error: String,
    },
    ShardSplit {
        plan_id: PlanId,
        leaf_index: u64,
        pieces: u32,
    },
    SubShardDone {
        plan_id: PlanId,
        leaf_index: u64,
        piece: u32,
        output_digest: Hash,
    },
    PlanAborted {
        plan_id: PlanId,
        at_ms: u64,
        actor: String,
        reason: String,
    },
    PlanReplayed {
        plan_id: PlanId,
        at_ms: u64,
        actor: String,
    },
    PlanFinished {
        plan_id: PlanId,
        at_ms: u64,
        tree_size: u64,
        root: Hash,
        done_count: u64,
        failed_count: u64,
    },
    Event {
        seq: u64,
        at_ms: u64,
        topic: String,
        payload_json: String,
    },
    /// The plan whose `PlanAccepted` came before was accepted as created:
    /// it must not run until a `PlanSubmitted`.
    PlanHeld { plan_id: PlanId, at_ms: u64 },
    /// The plan was submitted to run, by `actor`.
    PlanSubmitted {
        plan_id: PlanId,
        at_ms: u64,
        actor: String,
    },
    /// A run of the plan started, for `cause`.
    PlanRunStarted {
        plan_id: PlanId,
        at_ms: u64,
        cause: RunCause,
    },
    /// The plan's root was recomputed from the log (`certified` when it
    /// matched), with `proofs_checked` inclusion proofs verified.
    PlanCertified {
        plan_id: PlanId,
        at_ms: u64,
        tree_size: u64,
        root: Hash,
        certified: bool,
        proofs_checked: u32,
    },
}

/// Why a run of a plan started. Persisted as one byte: never reuse a value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RunCause {
    /// The plan's first run.
    Start = 0,
    /// A run that picks up an interrupted one.
    Resume = 1,
    /// A run that redoes the plan after a replay.
    Replay = 2,
}

impl RunCause {
    /// The cause's byte as persisted; `None` for any other value.
    pub fn from_code(code: u8) -> Option<RunCause> {
        Some(match code {
            0 => RunCause::Start,
            1 => RunCause::Resume,
            2 => RunCause::Replay,
            _ => return None,
        })
    }

    /// Lowercase name, for output: "start", "resume" or "replay".
    pub fn name(self) -> &'static str {
        match self {
            RunCause::Start => "start",
            RunCause::Resume => "resume",
            RunCause::Replay => "replay",
        }
    }
}

/// The `type` byte of a frame. Codes are persisted: never reuse one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    PlanAccepted = 1,
    ShardDone = 2,
    ShardFailed = 3,
    ShardSplit = 4,
    SubShardDone = 5,
    PlanAborted = 6,
    PlanReplayed = 7,
    PlanFinished = 8,
    Event = 9,
    PlanHeld = 10,
    PlanSubmitted = 11,
    PlanRunStarted = 12,
    PlanCertified = 13,
}

impl RecordType {
    pub fn from_code(code: u8) -> Option<RecordType> {
        Some(match code {
            1 => RecordType::PlanAccepted,
            2 => RecordType::ShardDone,
            3 => RecordType::ShardFailed,
            4 => RecordType::ShardSplit,
            5 => RecordType::SubShardDone,
            6 => RecordType::PlanAborted,
            7 => RecordType::PlanReplayed,
            8 => RecordType::PlanFinished,
            9 => RecordType::Event,
            10 => RecordType::PlanHeld,
            11 => RecordType::PlanSubmitted,
            12 => RecordType::PlanRunStarted,
            13 => RecordType::PlanCertified,
            _ => return None,
        })
    }

    /// The format version that introduced this type: segments of older
    /// versions never hold it.
    pub fn since_version(self) -> u32 {
        match self {
            RecordType::PlanAccepted
            | RecordType::ShardDone
            | RecordType::ShardFailed
            | RecordType::ShardSplit
            | RecordType::SubShardDone
            | RecordType::PlanAborted
            | RecordType::PlanReplayed
            | RecordType::PlanFinished
            | RecordType::Event => 1,
            RecordType::PlanHeld
            | RecordType::PlanSubmitted
            | RecordType::PlanRunStarted
            | RecordType::PlanCertified => 2,
        }
    }

    /// The type of `code` in a segment of `version`: an unknown code, or a
    /// type newer than the version, is an error.
    pub fn from_code_in(code: u8, version: u32) -> Result<RecordType, DecodeError> {
        let record_type = RecordType::from_code(code).ok_or(DecodeError::UnknownType { code })?;
        if record_type.since_version() > version {
            return Err(DecodeError::NewerType { code, version });
        }
        Ok(record_type)
    }
}

/// A string field over its bound; the record is refused before any byte is
/// written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record field {field} is {len_bytes} bytes, over its limit of {max_bytes}")]
pub struct FieldTooLong {
    pub field: &'static str,
    pub len_bytes: u64,
    pub max_bytes: u64,
}

/// Why a payload that passed its CRC does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown record type {code}")]
    UnknownType { code: u8 },
    #[error("payload ends inside field {field}")]
    Truncated { field: &'static str },
    #[error("payload has {extra_bytes} bytes after its last field")]
    TrailingBytes { extra_bytes: u64 },
    #[error("field {field} is {len_bytes} bytes, over its limit of {max_bytes}")]
    TooLong {
        field: &'static str,
        len_bytes: u64,
        max_bytes: u64,
    },
    #[error("field {field} is not valid utf-8")]
    NotUtf8 { field: &'static str },
    #[error("field {field} is {value}, not a bool")]
    NotBool { field: &'static str, value: u8 },
    #[error("field {field} is {value}, not a run cause")]
    NotRunCause { field: &'static str, value: u8 },
    #[error("record type {code} does not exist in format version {version}")]
    NewerType { code: u8, version: u32 },
}

impl Record {
    pub fn record_type(&self) -> RecordType {
        match self {
            Record::PlanAccepted { .. } => RecordType::PlanAccepted,
            Record::ShardDone { .. } => RecordType::ShardDone,
            Record::ShardFailed { .. } => RecordType::ShardFailed,
            Record::ShardSplit { .. } => RecordType::ShardSplit,
            Record::SubShardDone { .. } => RecordType::SubShardDone,
            Record::PlanAborted { .. } => RecordType::PlanAborted,
            Record::PlanReplayed { .. } => RecordType::PlanReplayed,
            Record::PlanFinished { .. } => RecordType::PlanFinished,
            Record::Event { .. } => RecordType::Event,
            Record::PlanHeld { .. } => RecordType::PlanHeld,
            Record::PlanSubmitted { .. } => RecordType::PlanSubmitted,
            Record::PlanRunStarted { .. } => RecordType::PlanRunStarted,
            Record::PlanCertified { .. } => RecordType::PlanCertified,
        }
    }

    /// Payload length in bytes, after checking every string against its
    /// bound. The result is at most [`PAYLOAD_LEN_MAX`].
    pub fn payload_len(&self) -> Result<u32, FieldTooLong> {
        fn s(field: &'static str, value: &str, max: u32) -> Result<u32, FieldTooLong> {
            let len_bytes = value.len() as u64;
            if len_bytes > u64::from(max) {
                return Err(FieldTooLong {
                    field,
                    len_bytes,
                    max_bytes: u64::from(max),
                });
            }
            // Cannot truncate: len_bytes <= max, a u32.
            Ok(STR_PREFIX_SIZE + len_bytes as u32)
        }
        Ok(match self {
            Record::PlanAccepted { manifest_json, .. } => {
                PLAN_ID_SIZE + 8 + 8 + s("manifest_json", manifest_json, MANIFEST_LEN_MAX)?
            }
            Record::ShardDone { .. } => SHARD_DONE_PAYLOAD_LEN,
            Record::ShardFailed { error, .. } => {
                PLAN_ID_SIZE + 8 + HASH_SIZE + 4 + 8 + 1 + s("error", error, ERROR_LEN_MAX)?
            }
            Record::ShardSplit { .. } => PLAN_ID_SIZE + 8 + 4,
            Record::SubShardDone { .. } => PLAN_ID_SIZE + 8 + 4 + HASH_SIZE,
            Record::PlanAborted { actor, reason, .. } => {
                PLAN_ID_SIZE
                    + 8
                    + s("actor", actor, ACTOR_LEN_MAX)?
                    + s("reason", reason, REASON_LEN_MAX)?
            }
            Record::PlanReplayed { actor, .. } => {
                PLAN_ID_SIZE + 8 + s("actor", actor, ACTOR_LEN_MAX)?
            }
            Record::PlanFinished { .. } => PLAN_ID_SIZE + 8 + 8 + HASH_SIZE + 8 + 8,
            Record::Event {
                topic,
                payload_json,
                ..
            } => {
                8 + 8
                    + s("topic", topic, TOPIC_LEN_MAX)?
                    + s("payload_json", payload_json, EVENT_PAYLOAD_LEN_MAX)?
            }
            Record::PlanHeld { .. } => PLAN_ID_SIZE + 8,
            Record::PlanSubmitted { actor, .. } => {
                PLAN_ID_SIZE + 8 + s("actor", actor, ACTOR_LEN_MAX)?
            }
            Record::PlanRunStarted { .. } => PLAN_ID_SIZE + 8 + 1,
            Record::PlanCertified { .. } => PLAN_ID_SIZE + 8 + 8 + HASH_SIZE + 1 + 4,
        })
    }

    /// Writes a `ShardDone`'s payload into `out` (any other record: a
    /// caller bug). One fixed layout, written field by field into a stack
    /// array: the commonest frame by far, so it is built without the
    /// per-field appends of the other records.
    fn shard_done_payload(&self, out: &mut [u8; SHARD_DONE_PAYLOAD_LEN as usize]) {
        let Record::ShardDone {
            plan_id,
            leaf_index,
            cas_id,
            output_digest,
            attempts,
            duration_us,
        } = self
        else {
            unreachable!("shard_done_payload of a {:?}", self.record_type());
        };
        let (plan, rest) = out.split_at_mut(PLAN_ID_SIZE as usize);
        plan.copy_from_slice(plan_id);
        let (leaf, rest) = rest.split_at_mut(8);
        leaf.copy_from_slice(&leaf_index.to_le_bytes());
        let (cas, rest) = rest.split_at_mut(HASH_SIZE as usize);
        cas.copy_from_slice(cas_id);
        let (output, rest) = rest.split_at_mut(HASH_SIZE as usize);
        output.copy_from_slice(output_digest);
        let (tries, duration) = rest.split_at_mut(4);
        tries.copy_from_slice(&attempts.to_le_bytes());
        duration.copy_from_slice(&duration_us.to_le_bytes());
    }

    /// Appends the payload bytes to `out`. Call `payload_len` first: this
    /// assumes the bounds hold.
    fn encode_payload(&self, out: &mut Vec<u8>) {
        let mut e = Enc(out);
        match self {
            Record::PlanAccepted {
                plan_id,
                accepted_at_ms,
                shard_count,
                manifest_json,
            } => {
                e.bytes(plan_id);
                e.u64(*accepted_at_ms);
                e.u64(*shard_count);
                e.str(manifest_json);
            }
            Record::ShardDone { .. } => {
                let mut payload = [0u8; SHARD_DONE_PAYLOAD_LEN as usize];
                self.shard_done_payload(&mut payload);
                e.bytes(&payload);
            }
            Record::ShardFailed {
                plan_id,
                leaf_index,
                cas_id,
                attempts,
                duration_us,
                aborted,
                error,
            } => {
                e.bytes(plan_id);
                e.u64(*leaf_index);
                e.bytes(cas_id);
                e.u32(*attempts);
                e.u64(*duration_us);
                e.u8(u8::from(*aborted));
                e.str(error);
            }
            Record::ShardSplit {
                plan_id,
                leaf_index,
                pieces,
            } => {
                e.bytes(plan_id);
                e.u64(*leaf_index);
                e.u32(*pieces);
            }
            Record::SubShardDone {
                plan_id,
                leaf_index,
                piece,
                output_digest,
            } => {
                e.bytes(plan_id);
                e.u64(*leaf_index);
                e.u32(*piece);
                e.bytes(output_digest);
            }
            Record::PlanAborted {
                plan_id,
                at_ms,
                actor,
                reason,
            } => {
                e.bytes(plan_id);
                e.u64(*at_ms);
                e.str(actor);
                e.str(reason);
            }
            Record::PlanReplayed {
                plan_id,
                at_ms,
                actor,
            } => {
                e.bytes(plan_id);
                e.u64(*at_ms);
                e.str(actor);
            }
            Record::PlanFinished {
                plan_id,
                at_ms,
                tree_size,
                root,
                done_count,
                failed_count,
            } => {
                e.bytes(plan_id);
                e.u64(*at_ms);
                e.u64(*tree_size);
                e.bytes(root);
                e.u64(*done_count);
                e.u64(*failed_count);
            }
            Record::Event {
                seq,
                at_ms,
                topic,
                payload_json,
            } => {
                e.u64(*seq);
                e.u64(*at_ms);
                e.str(topic);
                e.str(payload_json);
            }
            Record::PlanHeld { plan_id, at_ms } => {
                e.bytes(plan_id);
                e.u64(*at_ms);
            }
            Record::PlanSubmitted {
                plan_id,
                at_ms,
                actor,
            } => {
                e.bytes(plan_id);
                e.u64(*at_ms);
                e.str(actor);
            }
            Record::PlanRunStarted {
                plan_id,
                at_ms,
                cause,
            } => {
                e.bytes(plan_id);
                e.u64(*at_ms);
                e.u8(*cause as u8);
            }
            Record::PlanCertified {
                plan_id,
                at_ms,
                tree_size,
                root,
                certified,
                proofs_checked,
            } => {
                e.bytes(plan_id);
                e.u64(*at_ms);
                e.u64(*tree_size);
                e.bytes(root);
                e.u8(u8::from(*certified));
                e.u32(*proofs_checked);
            }
        }
    }

    /// Decodes a payload of type `code`, consuming it exactly, as this
    /// build's version has it. A frame read from a segment of an older
    /// version must have its type checked first
    /// ([`RecordType::from_code_in`]; the scans of [`super::segment`] do).
    pub fn decode(code: u8, payload: &[u8]) -> Result<Record, DecodeError> {
        Record::decode_in(FORMAT_VERSION, code, payload)
    }

    /// Decodes a payload of type `code` read from a segment of `version`,
    /// consuming it exactly.
    pub fn decode_in(version: u32, code: u8, payload: &[u8]) -> Result<Record, DecodeError> {
        let record_type = RecordType::from_code_in(code, version)?;
        let mut d = Dec { rest: payload };
        let record = match record_type {
            RecordType::PlanAccepted => Record::PlanAccepted {
                plan_id: d.array("plan_id")?,
                accepted_at_ms: d.u64("accepted_at_ms")?,
                shard_count: d.u64("shard_count")?,
                manifest_json: d.str("manifest_json", MANIFEST_LEN_MAX)?,
            },
            RecordType::ShardDone => Record::ShardDone {
                plan_id: d.array("plan_id")?,
                leaf_index: d.u64("leaf_index")?,
                cas_id: d.array("cas_id")?,
                output_digest: d.array("output_digest")?,
                attempts: d.u32("attempts")?,
                duration_us: d.u64("duration_us")?,
            },
            RecordType::ShardFailed => Record::ShardFailed {
                plan_id: d.array("plan_id")?,
                leaf_index: d.u64("leaf_index")?,
                cas_id: d.array("cas_id")?,
                attempts: d.u32("attempts")?,
                duration_us: d.u64("duration_us")?,
                aborted: d.bool("aborted")?,
                error: d.str("error", ERROR_LEN_MAX)?,
            },
            RecordType::ShardSplit => Record::ShardSplit {
                plan_id: d.array("plan_id")?,
                leaf_index: d.u64("leaf_index")?,
                pieces: d.u32("pieces")?,
            },
            RecordType::SubShardDone => Record::SubShardDone {
                plan_id: d.array("plan_id")?,
                leaf_index: d.u64("leaf_index")?,
                piece: d.u32("piece")?,
                output_digest: d.array("output_digest")?,
            },
            RecordType::PlanAborted => Record::PlanAborted {
                plan_id: d.array("plan_id")?,
                at_ms: d.u64("at_ms")?,
                actor: d.str("actor", ACTOR_LEN_MAX)?,
                reason: d.str("reason", REASON_LEN_MAX)?,
            },
            RecordType::PlanReplayed => Record::PlanReplayed {
                plan_id: d.array("plan_id")?,
                at_ms: d.u64("at_ms")?,
                actor: d.str("actor", ACTOR_LEN_MAX)?,
            },
            RecordType::PlanFinished => Record::PlanFinished {
                plan_id: d.array("plan_id")?,
                at_ms: d.u64("at_ms")?,
                tree_size: d.u64("tree_size")?,
                root: d.array("root")?,
                done_count: d.u64("done_count")?,
                failed_count: d.u64("failed_count")?,
            },
            RecordType::Event => Record::Event {
                seq: d.u64("seq")?,
                at_ms: d.u64("at_ms")?,
                topic: d.str("topic", TOPIC_LEN_MAX)?,
                payload_json: d.str("payload_json", EVENT_PAYLOAD_LEN_MAX)?,
            },
            RecordType::PlanHeld => Record::PlanHeld {
                plan_id: d.array("plan_id")?,
                at_ms: d.u64("at_ms")?,
            },
            RecordType::PlanSubmitted => Record::PlanSubmitted {
                plan_id: d.array("plan_id")?,
                at_ms: d.u64("at_ms")?,
                actor: d.str("actor", ACTOR_LEN_MAX)?,
            },
            RecordType::PlanRunStarted => Record::PlanRunStarted {
                plan_id: d.array("plan_id")?,
                at_ms: d.u64("at_ms")?,
                cause: d.run_cause("cause")?,
            },
            RecordType::PlanCertified => Record::PlanCertified {
                plan_id: d.array("plan_id")?,
                at_ms: d.u64("at_ms")?,
                tree_size: d.u64("tree_size")?,
                root: d.array("root")?,
                certified: d.bool("certified")?,
                proofs_checked: d.u32("proofs_checked")?,
            },
        };
        if !d.rest.is_empty() {
            return Err(DecodeError::TrailingBytes {
                extra_bytes: d.rest.len() as u64,
            });
        }
        Ok(record)
    }
}

/// Appends the whole frame of `record` to `out` (cleared first) and returns
/// the payload length. The frame is `FRAME_OVERHEAD + len` bytes.
pub fn encode_frame(record: &Record, out: &mut Vec<u8>) -> Result<u32, FieldTooLong> {
    out.clear();
    append_frame(record, out)
}

/// Appends the frame of `record` to `out`, after whatever it holds (the
/// writer packs a batch of frames into one buffer this way). Returns the
/// payload length; on error `out` is unchanged.
pub fn append_frame(record: &Record, out: &mut Vec<u8>) -> Result<u32, FieldTooLong> {
    let len = record.payload_len()?;
    let start = out.len();
    append_unsealed_frame(record, len, out);
    seal_frames(out, &[start]);
    Ok(len)
}

/// A `ShardDone` payload read in place: its plan, its leaf and its leaf
/// data (`cas_id || output_digest`, adjacent in the layout), without
/// building a [`Record`]. `None` for a payload of another length, which
/// [`Record::decode`] refuses.
pub fn peek_shard_done(payload: &[u8]) -> Option<(&PlanId, u64, &[u8; 64])> {
    const LEAF_AT: usize = PLAN_ID_SIZE as usize;
    const DATA_AT: usize = LEAF_AT + 8;
    let payload: &[u8; SHARD_DONE_PAYLOAD_LEN as usize] = payload.try_into().ok()?;
    let plan_id = payload[..LEAF_AT].try_into().expect("16 bytes");
    let leaf = u64::from_le_bytes(payload[LEAF_AT..DATA_AT].try_into().expect("8 bytes"));
    let data = payload[DATA_AT..DATA_AT + 2 * HASH_SIZE as usize]
        .try_into()
        .expect("64 bytes");
    Some((plan_id, leaf, data))
}

/// [`append_frame`] with the CRC field left zero ([`seal_frames`] fills it
/// in later, for many frames at once), for a record whose
/// [`Record::payload_len`] the caller already has as `len`.
pub fn append_unsealed_frame(record: &Record, len: u32, out: &mut Vec<u8>) {
    if let Record::ShardDone { .. } = record {
        // The commonest frame, appended in one copy.
        const FRAME_LEN: usize = FRAME_OVERHEAD + SHARD_DONE_PAYLOAD_LEN as usize;
        debug_assert_eq!(len, SHARD_DONE_PAYLOAD_LEN);
        let mut frame = [0u8; FRAME_LEN];
        frame[FRAME_LEN_OFFSET..FRAME_LEN_OFFSET + 4]
            .copy_from_slice(&SHARD_DONE_PAYLOAD_LEN.to_le_bytes());
        frame[FRAME_LEN_COMPLEMENT_OFFSET..FRAME_LEN_COMPLEMENT_OFFSET + 4]
            .copy_from_slice(&(!SHARD_DONE_PAYLOAD_LEN).to_le_bytes());
        // CRC left zero, filled in by `seal_frames`.
        frame[FRAME_TYPE_OFFSET] = RecordType::ShardDone as u8;
        let payload = (&mut frame[FRAME_PAYLOAD_OFFSET..FRAME_LEN - 1])
            .try_into()
            .expect("the payload's length");
        record.shard_done_payload(payload);
        frame[FRAME_LEN - 1] = END_MARKER;
        out.extend_from_slice(&frame);
        return;
    }
    let start = out.len();
    out.reserve(FRAME_OVERHEAD + len as usize);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // CRC, filled in by `seal_frames`.
    out.push(record.record_type() as u8);
    record.encode_payload(out);
    // Pair assertion, half one: the encoder wrote exactly the length that
    // the header promises (the reader checks the other half).
    assert_eq!(out.len() - start, FRAME_HEADER_LEN + len as usize);
    out.push(END_MARKER);
}

/// Fills in the CRC field of the frames of `buf` starting at `starts`
/// (written by [`append_unsealed_frame`]), three at a time where the CPU
/// allows: three independent CRC chains keep the CRC-32C unit busy, where
/// one chain waits out each instruction's latency.
pub fn seal_frames(buf: &mut [u8], starts: &[usize]) {
    fn crc_input(buf: &[u8], start: usize) -> (u32, std::ops::Range<usize>) {
        let len = le_u32(&buf[start..], FRAME_LEN_OFFSET);
        (
            len,
            start + FRAME_TYPE_OFFSET..start + FRAME_HEADER_LEN + len as usize,
        )
    }
    fn put(buf: &mut [u8], start: usize, crc: u32) {
        buf[start + FRAME_CRC_OFFSET..start + FRAME_CRC_OFFSET + 4]
            .copy_from_slice(&crc.to_le_bytes());
    }
    let mut single = starts;
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("sse4.2") {
        let triples = starts.chunks_exact(3);
        single = triples.remainder();
        for triple in triples {
            let [a, b, c] = [triple[0], triple[1], triple[2]].map(|start| crc_input(buf, start));
            // SAFETY: the CPU has SSE 4.2, checked just above.
            let crcs = unsafe {
                frame_crc3_sse42(
                    (a.0, &buf[a.1.clone()]),
                    (b.0, &buf[b.1.clone()]),
                    (c.0, &buf[c.1.clone()]),
                )
            };
            for (start, crc) in triple.iter().zip(crcs) {
                put(buf, *start, crc);
            }
        }
    }
    for &start in single {
        let (len, range) = crc_input(buf, start);
        let crc = frame_crc(len, &buf[range]);
        put(buf, start, crc);
    }
}

/// CRC-32C over the length and then `type_and_payload`: the frame's type
/// byte and payload, which lie next to each other in a frame.
pub fn frame_crc(len: u32, type_and_payload: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU has SSE 4.2, checked just above.
        return unsafe { frame_crc_sse42(len, type_and_payload) };
    }
    crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), type_and_payload)
}

/// Three [`frame_crc`]s at once, their 8-byte steps interleaved.
///
/// # Safety
/// The CPU must support SSE 4.2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn frame_crc3_sse42(a: (u32, &[u8]), b: (u32, &[u8]), c: (u32, &[u8])) -> [u32; 3] {
    use std::arch::x86_64::{_mm_crc32_u32, _mm_crc32_u64};
    let word = |bytes: &[u8], i: usize| {
        u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    };
    let shared_words = a.1.len().min(b.1.len()).min(c.1.len()) / 8;
    // SAFETY (for the intrinsics below): the caller guarantees SSE 4.2;
    // they read only their register arguments.
    #[allow(unused_unsafe)]
    let states = unsafe {
        let mut states = [
            u64::from(_mm_crc32_u32(!0, a.0)),
            u64::from(_mm_crc32_u32(!0, b.0)),
            u64::from(_mm_crc32_u32(!0, c.0)),
        ];
        for i in 0..shared_words {
            states[0] = _mm_crc32_u64(states[0], word(a.1, i));
            states[1] = _mm_crc32_u64(states[1], word(b.1, i));
            states[2] = _mm_crc32_u64(states[2], word(c.1, i));
        }
        states
    };
    let mut crcs = [0u32; 3];
    for (crc, (state, bytes)) in crcs.iter_mut().zip(states.into_iter().zip([a.1, b.1, c.1])) {
        // SAFETY: as above.
        *crc = unsafe { crc32c_sse42_continue(state as u32, &bytes[shared_words * 8..]) };
    }
    crcs
}

/// Continues a raw (not yet inverted) CRC-32C state over `bytes` and
/// returns the final CRC.
///
/// # Safety
/// The CPU must support SSE 4.2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn crc32c_sse42_continue(state: u32, bytes: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u64, _mm_crc32_u8};
    // SAFETY (for the intrinsics below): the caller guarantees SSE 4.2;
    // they read only their register arguments.
    #[allow(unused_unsafe)]
    unsafe {
        let mut state = u64::from(state);
        let mut words = bytes.chunks_exact(8);
        for word in &mut words {
            state = _mm_crc32_u64(state, u64::from_le_bytes(word.try_into().expect("8 bytes")));
        }
        let mut state = state as u32;
        for &byte in words.remainder() {
            state = _mm_crc32_u8(state, byte);
        }
        !state
    }
}

/// [`frame_crc`] with the CRC-32C instruction in unaligned 8-byte steps:
/// the same value as the `crc32c` crate, whose loop aligns its input with
/// byte-wise prologues and epilogues, most of the work on a ~100-byte
/// frame.
///
/// # Safety
/// The CPU must support SSE 4.2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
unsafe fn frame_crc_sse42(len: u32, type_and_payload: &[u8]) -> u32 {
    use std::arch::x86_64::_mm_crc32_u32;
    // SAFETY: the caller guarantees SSE 4.2; the intrinsic reads only its
    // register arguments.
    #[allow(unused_unsafe)]
    let state = unsafe { _mm_crc32_u32(!0, len) };
    // SAFETY: as above.
    unsafe { crc32c_sse42_continue(state, type_and_payload) }
}

/// What stands at one offset of a segment's record area.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameRead<'a> {
    /// A complete frame whose CRC and marker check; `end` is the offset just
    /// after its marker. The payload is not decoded yet.
    Frame {
        type_code: u8,
        payload: &'a [u8],
        end: usize,
    },
    /// A zero frame header, or fewer than a header's bytes left, all zero.
    EndOfData,
    /// Not a valid frame; the caller decides between torn tail and damage.
    Bad(BadFrame),
}

/// Why the bytes at an offset are not a valid frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadFrame {
    /// Fewer than a frame header's bytes left and not all zero. The writer
    /// never starts a frame that does not fit, so this is never a tear.
    ShortTail,
    /// `len != !comp`: a torn header if everything after the header is zero.
    InconsistentLength { len: u32, complement: u32 },
    /// A consistent length that no writer could produce here.
    LengthOutOfRange { len: u32 },
    /// Consistent header, end marker absent (zero): a torn frame if
    /// everything after the frame is zero.
    MissingMarker { len: u32 },
    /// Marker present (non-zero) but the CRC fails.
    Checksum { len: u32 },
    /// CRC passes but the marker is neither 0 nor 0xA5.
    BadMarker { len: u32, marker: u8 },
}

impl std::fmt::Display for BadFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BadFrame::ShortTail => write!(f, "non-zero bytes too short for a frame header"),
            BadFrame::InconsistentLength { len, complement } => write!(
                f,
                "frame length {len:#x} disagrees with its complement {complement:#x}"
            ),
            BadFrame::LengthOutOfRange { len } => {
                write!(f, "frame length {len} does not fit in the segment")
            }
            BadFrame::MissingMarker { len } => {
                write!(f, "frame of {len} bytes has no end marker")
            }
            BadFrame::Checksum { len } => write!(f, "frame of {len} bytes fails its crc"),
            BadFrame::BadMarker { len, marker } => {
                write!(f, "frame of {len} bytes has end marker {marker:#04x}")
            }
        }
    }
}

/// Reads the frame at `pos` of `segment` (the whole segment's bytes).
pub fn read_frame(segment: &[u8], pos: usize) -> FrameRead<'_> {
    assert!(pos >= HEADER_LEN && pos <= segment.len());
    let rest = &segment[pos..];
    if rest.len() < FRAME_HEADER_LEN {
        return if is_zero(rest) {
            FrameRead::EndOfData
        } else {
            FrameRead::Bad(BadFrame::ShortTail)
        };
    }
    let header = &rest[..FRAME_HEADER_LEN];
    if is_zero(header) {
        return FrameRead::EndOfData;
    }
    let len = le_u32(header, FRAME_LEN_OFFSET);
    let complement = le_u32(header, FRAME_LEN_COMPLEMENT_OFFSET);
    if len != !complement {
        return FrameRead::Bad(BadFrame::InconsistentLength { len, complement });
    }
    if len > PAYLOAD_LEN_MAX || len as usize + FRAME_OVERHEAD > rest.len() {
        return FrameRead::Bad(BadFrame::LengthOutOfRange { len });
    }
    let payload_end = FRAME_HEADER_LEN + len as usize;
    let marker = rest[payload_end];
    if marker == 0 {
        return FrameRead::Bad(BadFrame::MissingMarker { len });
    }
    let type_code = header[FRAME_TYPE_OFFSET];
    let payload = &rest[FRAME_PAYLOAD_OFFSET..payload_end];
    if frame_crc(len, &rest[FRAME_TYPE_OFFSET..payload_end]) != le_u32(header, FRAME_CRC_OFFSET) {
        return FrameRead::Bad(BadFrame::Checksum { len });
    }
    if marker != END_MARKER {
        return FrameRead::Bad(BadFrame::BadMarker { len, marker });
    }
    FrameRead::Frame {
        type_code,
        payload,
        end: pos + payload_end + 1,
    }
}

/// The decoded fixed fields of a segment header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// The format version the segment is written in; one this build reads.
    pub version: u32,
    pub index: u64,
    pub size_bytes: u64,
    pub generation: u64,
}

impl SegmentHeader {
    /// The header of a segment this build creates: [`FORMAT_VERSION`].
    pub fn new(index: u64, size_bytes: u64, generation: u64) -> SegmentHeader {
        SegmentHeader {
            version: FORMAT_VERSION,
            index,
            size_bytes,
            generation,
        }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        // Tests write older versions; nothing writes one this build cannot read.
        assert!(version_is_read(self.version), "version {}", self.version);
        let mut out = [0u8; HEADER_LEN];
        out[HEADER_MAGIC_OFFSET..HEADER_VERSION_OFFSET].copy_from_slice(&MAGIC);
        out[HEADER_VERSION_OFFSET..HEADER_LEN_OFFSET].copy_from_slice(&self.version.to_le_bytes());
        out[HEADER_LEN_OFFSET..HEADER_INDEX_OFFSET]
            .copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        out[HEADER_INDEX_OFFSET..HEADER_SEGMENT_SIZE_OFFSET]
            .copy_from_slice(&self.index.to_le_bytes());
        out[HEADER_SEGMENT_SIZE_OFFSET..HEADER_GENERATION_OFFSET]
            .copy_from_slice(&self.size_bytes.to_le_bytes());
        out[HEADER_GENERATION_OFFSET..HEADER_CRC_OFFSET]
            .copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32c::crc32c(&out[..HEADER_CRC_OFFSET]);
        out[HEADER_CRC_OFFSET..HEADER_USED_END].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses and checks a header against what the file says about itself
    /// (its name and length).
    pub fn parse(
        segment: &[u8],
        index: u64,
        file_len_bytes: u64,
    ) -> Result<SegmentHeader, HeaderError> {
        if segment.len() < HEADER_LEN {
            return Err(HeaderError::TooShort {
                len_bytes: segment.len() as u64,
            });
        }
        let h = &segment[..HEADER_LEN];
        if h[HEADER_MAGIC_OFFSET..HEADER_VERSION_OFFSET] != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let crc = le_u32(h, HEADER_CRC_OFFSET);
        if crc32c::crc32c(&h[..HEADER_CRC_OFFSET]) != crc {
            return Err(HeaderError::Checksum);
        }
        let version = le_u32(h, HEADER_VERSION_OFFSET);
        if !version_is_read(version) {
            return Err(HeaderError::UnsupportedVersion { version });
        }
        let header_len = le_u32(h, HEADER_LEN_OFFSET);
        if header_len as usize != HEADER_LEN {
            return Err(HeaderError::BadHeaderLen { header_len });
        }
        if !is_zero(&h[HEADER_USED_END..]) {
            return Err(HeaderError::NonZeroPadding);
        }
        let header = SegmentHeader {
            version,
            index: le_u64(h, HEADER_INDEX_OFFSET),
            size_bytes: le_u64(h, HEADER_SEGMENT_SIZE_OFFSET),
            generation: le_u64(h, HEADER_GENERATION_OFFSET),
        };
        if header.index != index {
            return Err(HeaderError::IndexMismatch {
                found: header.index,
            });
        }
        if header.size_bytes != file_len_bytes {
            return Err(HeaderError::SizeMismatch {
                header_bytes: header.size_bytes,
                file_bytes: file_len_bytes,
            });
        }
        Ok(header)
    }
}

/// Why a segment header is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("segment is only {len_bytes} bytes, shorter than a header")]
    TooShort { len_bytes: u64 },
    #[error("bad magic number")]
    BadMagic,
    #[error("header fails its crc")]
    Checksum,
    #[error(
        "format version {version}, this build reads versions \
         {FORMAT_VERSION_OLDEST_READ} to {FORMAT_VERSION}"
    )]
    UnsupportedVersion { version: u32 },
    #[error("header length {header_len}, expected {HEADER_LEN}")]
    BadHeaderLen { header_len: u32 },
    #[error("non-zero header padding")]
    NonZeroPadding,
    #[error("header names segment {found}")]
    IndexMismatch { found: u64 },
    #[error("header says {header_bytes} bytes, the file has {file_bytes}")]
    SizeMismatch { header_bytes: u64, file_bytes: u64 },
}

/// True when every byte is zero. Word-at-a-time, since recovery runs it over
/// the whole preallocated tail of the last segment.
pub fn is_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    let words_zero = chunks.by_ref().all(|c| {
        // Four 16-byte words OR-ed: few operations per byte even unoptimised
        // (tests run recovery tens of thousands of times in debug builds).
        let word = |i: usize| {
            let mut w = [0u8; 16];
            w.copy_from_slice(&c[i * 16..i * 16 + 16]);
            u128::from_ne_bytes(w)
        };
        (word(0) | word(1) | word(2) | word(3)) == 0
    });
    words_zero && chunks.remainder().iter().all(|&b| b == 0)
}

/// Offset of the first non-zero byte, if any.
pub fn first_non_zero(bytes: &[u8]) -> Option<usize> {
    let mut base = 0;
    for chunk in bytes.chunks(64) {
        if !is_zero(chunk) {
            return chunk.iter().position(|&b| b != 0).map(|i| base + i);
        }
        base += chunk.len();
    }
    None
}

/// One past the offset of the last non-zero byte (0 when all are zero).
pub fn non_zero_end(bytes: &[u8]) -> usize {
    let mut end = bytes.len();
    while end > 0 {
        let start = end.saturating_sub(64);
        let chunk = &bytes[start..end];
        if !is_zero(chunk) {
            // A non-zero byte exists, so rposition finds one.
            return start + chunk.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        }
        end = start;
    }
    0
}

fn le_u32(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(b)
}

struct Enc<'a>(&'a mut Vec<u8>);

impl Enc<'_> {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.0.extend_from_slice(v);
    }
    fn str(&mut self, v: &str) {
        // Bounded by `payload_len`, which the caller ran first.
        let len = u32::try_from(v.len()).expect("string bounded by payload_len");
        self.u32(len);
        self.bytes(v.as_bytes());
    }
}

struct Dec<'a> {
    rest: &'a [u8],
}

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated { field });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }
    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }
    fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::NotBool { field, value }),
        }
    }
    fn run_cause(&mut self, field: &'static str) -> Result<RunCause, DecodeError> {
        let value = self.u8(field)?;
        RunCause::from_code(value).ok_or(DecodeError::NotRunCause { field, value })
    }
    fn str(&mut self, field: &'static str, max: u32) -> Result<String, DecodeError> {
        let len = self.u32(field)?;
        if len > max {
            return Err(DecodeError::TooLong {
                field,
                len_bytes: u64::from(len),
                max_bytes: u64::from(max),
            });
        }
        let bytes = self.take(len as usize, field)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError::NotUtf8 { field }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn sealing_many_frames_at_once_gives_the_frames_sealed_one_by_one() {
        let records = one_of_each();
        for count in 0..=records.len() * 2 {
            // Records of every type, so the frames differ in length.
            let chosen: Vec<&Record> = records.iter().cycle().skip(count % 3).take(count).collect();
            let mut one_by_one = Vec::new();
            for record in &chosen {
                append_frame(record, &mut one_by_one).unwrap();
            }
            let mut batched = Vec::new();
            let mut starts = Vec::new();
            for record in &chosen {
                starts.push(batched.len());
                append_unsealed_frame(record, record.payload_len().unwrap(), &mut batched);
            }
            seal_frames(&mut batched, &starts);
            assert_eq!(batched, one_by_one, "{count} frames");
        }
    }

    #[test]
    fn frame_crc_matches_the_crc32c_crate_at_every_length() {
        let data: Vec<u8> = (0..600u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for start in 0..8 {
            for end in start..data.len() {
                let bytes = &data[start..end];
                let len = end as u32 * 7919;
                let expected = crc32c::crc32c_append(crc32c::crc32c(&len.to_le_bytes()), bytes);
                assert_eq!(frame_crc(len, bytes), expected, "bytes {start}..{end}");
            }
        }
    }
    use crate::hash::sha256;

    /// One record of every type, with every field distinct and non-zero:
    /// those of version 1, then those version 2 added.
    pub(crate) fn one_of_each() -> Vec<Record> {
        let plan_id: PlanId = *b"0123456789abcdef";
        let mut records = one_of_each_v1();
        records.extend([
            Record::PlanHeld {
                plan_id,
                at_ms: 1_700_000_001_100,
            },
            Record::PlanSubmitted {
                plan_id,
                at_ms: 1_700_000_001_200,
                actor: "ensign «ü»".to_owned(),
            },
            Record::PlanRunStarted {
                plan_id,
                at_ms: 1_700_000_001_300,
                cause: RunCause::Resume,
            },
            Record::PlanCertified {
                plan_id,
                at_ms: 1_700_000_001_400,
                tree_size: 3,
                root: sha256(b"certified root"),
                certified: true,
                proofs_checked: 17,
            },
        ]);
        records
    }

    /// One record of every type of version 1 (the golden v1 store's).
    pub(crate) fn one_of_each_v1() -> Vec<Record> {
        let plan_id: PlanId = *b"0123456789abcdef";
        vec![
            Record::PlanAccepted {
                plan_id,
                accepted_at_ms: 1_700_000_000_000,
                shard_count: 3,
                manifest_json: r#"{"name":"golden","stages":[]}"#.to_owned(),
            },
            Record::ShardDone {
                plan_id,
                leaf_index: 0,
                cas_id: sha256(b"cas 0"),
                output_digest: sha256(b"out 0"),
                attempts: 1,
                duration_us: 1234,
            },
            Record::ShardFailed {
                plan_id,
                leaf_index: 1,
                cas_id: sha256(b"cas 1"),
                attempts: 3,
                duration_us: 99_000,
                aborted: false,
                error: "exit status 2: no such file — «é»".to_owned(),
            },
            Record::ShardSplit {
                plan_id,
                leaf_index: 2,
                pieces: 4,
            },
            Record::SubShardDone {
                plan_id,
                leaf_index: 2,
                piece: 3,
                output_digest: sha256(b"piece 3"),
            },
            Record::PlanAborted {
                plan_id,
                at_ms: 1_700_000_000_500,
                actor: "admiral".to_owned(),
                reason: "timebox".to_owned(),
            },
            Record::PlanReplayed {
                plan_id,
                at_ms: 1_700_000_000_900,
                actor: "captain".to_owned(),
            },
            Record::PlanFinished {
                plan_id,
                at_ms: 1_700_000_001_000,
                tree_size: 3,
                root: sha256(b"root"),
                done_count: 2,
                failed_count: 1,
            },
            Record::Event {
                seq: 42,
                at_ms: 1_700_000_001_001,
                topic: "hxo.audit".to_owned(),
                payload_json: r#"{"who":"admiral"}"#.to_owned(),
            },
        ]
    }

    fn decode_frame(frame: &[u8]) -> Record {
        let mut segment = vec![0u8; HEADER_LEN];
        segment.extend_from_slice(frame);
        match read_frame(&segment, HEADER_LEN) {
            FrameRead::Frame {
                type_code,
                payload,
                end,
            } => {
                assert_eq!(end, segment.len());
                Record::decode(type_code, payload).unwrap()
            }
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn every_record_type_round_trips() {
        let records = one_of_each();
        let mut seen = std::collections::HashSet::new();
        let mut frame = Vec::new();
        for record in &records {
            seen.insert(record.record_type() as u8);
            let len = encode_frame(record, &mut frame).unwrap();
            // Pair assertion: the encoded frame has the promised shape...
            assert_eq!(frame.len(), FRAME_OVERHEAD + len as usize);
            assert_eq!(le_u32(&frame, 0), len);
            assert_eq!(le_u32(&frame, 4), !len);
            assert_eq!(frame[FRAME_TYPE_OFFSET], record.record_type() as u8);
            assert_eq!(*frame.last().unwrap(), END_MARKER);
            // ...and reads back to the same record.
            assert_eq!(&decode_frame(&frame), record);
        }
        assert_eq!(seen.len(), 13, "one_of_each must cover every type");
        assert!((1..=13).all(|code| RecordType::from_code(code).is_some()));
        assert_eq!(RecordType::from_code(14), None);
    }

    #[test]
    fn shard_done_is_compact() {
        let mut frame = Vec::new();
        encode_frame(&one_of_each()[1], &mut frame).unwrap();
        assert_eq!(frame.len(), 114);
    }

    #[test]
    fn a_shard_done_frame_has_the_documented_layout() {
        let record = Record::ShardDone {
            plan_id: [1; 16],
            leaf_index: 0x0203_0405_0607_0809,
            cas_id: [0xCA; 32],
            output_digest: [0x0D; 32],
            attempts: 0x1112_1314,
            duration_us: 0x2122_2324_2526_2728,
        };
        // Built by hand from the layout in the module docs, the CRC left
        // zero as an unsealed frame has it.
        let mut want = Vec::new();
        want.extend_from_slice(&100u32.to_le_bytes());
        want.extend_from_slice(&(!100u32).to_le_bytes());
        want.extend_from_slice(&[0; 4]);
        want.push(2);
        want.extend_from_slice(&[1; 16]);
        want.extend_from_slice(&0x0203_0405_0607_0809u64.to_le_bytes());
        want.extend_from_slice(&[0xCA; 32]);
        want.extend_from_slice(&[0x0D; 32]);
        want.extend_from_slice(&0x1112_1314u32.to_le_bytes());
        want.extend_from_slice(&0x2122_2324_2526_2728u64.to_le_bytes());
        want.push(END_MARKER);
        let mut got = vec![7u8; 3]; // appends after what is there
        append_unsealed_frame(&record, 100, &mut got);
        assert_eq!(&got[..3], &[7, 7, 7]);
        assert_eq!(got[3..], want[..]);
        // Read in place, its plan, leaf and leaf data are the record's.
        let payload = &got[3 + FRAME_PAYLOAD_OFFSET..got.len() - 1];
        let (plan_id, leaf, data) = peek_shard_done(payload).unwrap();
        assert_eq!((plan_id, leaf), (&[1; 16], 0x0203_0405_0607_0809));
        assert_eq!(data[..32], [0xCA; 32]);
        assert_eq!(data[32..], [0x0D; 32]);
        assert!(peek_shard_done(&payload[1..]).is_none());
        // Sealed, it decodes to the record.
        seal_frames(&mut got, &[3]);
        let mut sealed = Vec::new();
        encode_frame(&record, &mut sealed).unwrap();
        assert_eq!(got[3..], sealed[..]);
    }

    #[test]
    fn fields_over_their_limit_are_refused() {
        let record = Record::ShardFailed {
            plan_id: [1; 16],
            leaf_index: 0,
            cas_id: [2; 32],
            attempts: 1,
            duration_us: 0,
            aborted: true,
            error: "x".repeat(ERROR_LEN_MAX as usize + 1),
        };
        let err = encode_frame(&record, &mut Vec::new()).unwrap_err();
        assert_eq!(err.field, "error");
        assert_eq!(err.max_bytes, u64::from(ERROR_LEN_MAX));
        let at_limit = Record::PlanAccepted {
            plan_id: [1; 16],
            accepted_at_ms: 0,
            shard_count: 0,
            manifest_json: "m".repeat(MANIFEST_LEN_MAX as usize),
        };
        let len = encode_frame(&at_limit, &mut Vec::new()).unwrap();
        assert_eq!(len, payload_len_max());
    }

    #[test]
    fn decoder_rejects_what_no_writer_produces() {
        let mut payload = Vec::new();
        one_of_each()[2].encode_payload(&mut payload);
        let code = RecordType::ShardFailed as u8;
        assert!(Record::decode(code, &payload).is_ok());
        assert_eq!(
            Record::decode(0, &payload),
            Err(DecodeError::UnknownType { code: 0 })
        );
        assert_eq!(
            Record::decode(14, &payload),
            Err(DecodeError::UnknownType { code: 14 })
        );
        let mut trailing = payload.clone();
        trailing.push(0);
        assert_eq!(
            Record::decode(code, &trailing),
            Err(DecodeError::TrailingBytes { extra_bytes: 1 })
        );
        assert!(matches!(
            Record::decode(code, &payload[..payload.len() - 1]),
            Err(DecodeError::Truncated { field: "error" })
        ));
        // The aborted flag sits after plan_id, leaf_index, cas_id, attempts,
        // duration_us.
        let bool_at = 16 + 8 + 32 + 4 + 8;
        let mut bad_bool = payload.clone();
        bad_bool[bool_at] = 2;
        assert_eq!(
            Record::decode(code, &bad_bool),
            Err(DecodeError::NotBool {
                field: "aborted",
                value: 2
            })
        );
        let mut bad_utf8 = payload.clone();
        let last = bad_utf8.len() - 1;
        bad_utf8[last] = 0xff;
        assert_eq!(
            Record::decode(code, &bad_utf8),
            Err(DecodeError::NotUtf8 { field: "error" })
        );
        let mut too_long = payload;
        too_long[bool_at + 1..bool_at + 5].copy_from_slice(&(ERROR_LEN_MAX + 1).to_le_bytes());
        assert!(matches!(
            Record::decode(code, &too_long),
            Err(DecodeError::TooLong { field: "error", .. })
        ));
    }

    #[test]
    fn the_new_records_have_the_documented_layout() {
        // Built by hand from the payload table of the module docs.
        let plan_id = [3u8; 16];
        let at = 0x0102_0304_0506_0708u64.to_le_bytes();
        let mut held = plan_id.to_vec();
        held.extend_from_slice(&at);
        let mut submitted = held.clone();
        submitted.extend_from_slice(&2u32.to_le_bytes());
        submitted.extend_from_slice(b"me");
        let mut started = held.clone();
        started.push(2);
        let mut certified = held.clone();
        certified.extend_from_slice(&9u64.to_le_bytes());
        certified.extend_from_slice(&[0xEE; 32]);
        certified.push(1);
        certified.extend_from_slice(&0x1122_3344u32.to_le_bytes());
        let at_ms = u64::from_le_bytes(at);
        let cases = [
            (10, held, Record::PlanHeld { plan_id, at_ms }),
            (
                11,
                submitted,
                Record::PlanSubmitted {
                    plan_id,
                    at_ms,
                    actor: "me".to_owned(),
                },
            ),
            (
                12,
                started,
                Record::PlanRunStarted {
                    plan_id,
                    at_ms,
                    cause: RunCause::Replay,
                },
            ),
            (
                13,
                certified,
                Record::PlanCertified {
                    plan_id,
                    at_ms,
                    tree_size: 9,
                    root: [0xEE; 32],
                    certified: true,
                    proofs_checked: 0x1122_3344,
                },
            ),
        ];
        for (code, payload, record) in cases {
            assert_eq!(record.record_type() as u8, code);
            assert_eq!(record.payload_len().unwrap() as usize, payload.len());
            let mut encoded = Vec::new();
            record.encode_payload(&mut encoded);
            assert_eq!(encoded, payload, "type {code}");
            assert_eq!(Record::decode(code, &payload), Ok(record.clone()));
            assert_eq!(Record::decode_in(2, code, &payload), Ok(record));
            // A version-1 segment never holds these types.
            assert_eq!(
                Record::decode_in(1, code, &payload),
                Err(DecodeError::NewerType { code, version: 1 })
            );
        }
    }

    #[test]
    fn run_causes_are_one_byte_and_nothing_else_decodes() {
        for (cause, code, name) in [
            (RunCause::Start, 0, "start"),
            (RunCause::Resume, 1, "resume"),
            (RunCause::Replay, 2, "replay"),
        ] {
            assert_eq!(cause as u8, code);
            assert_eq!(RunCause::from_code(code), Some(cause));
            assert_eq!(cause.name(), name);
        }
        let record = Record::PlanRunStarted {
            plan_id: [1; 16],
            at_ms: 5,
            cause: RunCause::Start,
        };
        let mut payload = Vec::new();
        record.encode_payload(&mut payload);
        let code = RecordType::PlanRunStarted as u8;
        for value in 3..=u8::MAX {
            *payload.last_mut().unwrap() = value;
            assert_eq!(
                Record::decode(code, &payload),
                Err(DecodeError::NotRunCause {
                    field: "cause",
                    value
                })
            );
        }
        // The certified flag is a bool like the others.
        let mut certified = Vec::new();
        one_of_each()[12].encode_payload(&mut certified);
        let flag_at = certified.len() - 5;
        certified[flag_at] = 2;
        assert_eq!(
            Record::decode(RecordType::PlanCertified as u8, &certified),
            Err(DecodeError::NotBool {
                field: "certified",
                value: 2
            })
        );
    }

    #[test]
    fn each_version_reads_the_types_it_had() {
        for code in 0..=u8::MAX {
            for version in FORMAT_VERSION_OLDEST_READ..=FORMAT_VERSION {
                let got = RecordType::from_code_in(code, version);
                match (code, version) {
                    (1..=9, _) | (10..=13, 2) => {
                        assert_eq!(got.map(|t| t as u8), Ok(code), "{code} in v{version}")
                    }
                    (10..=13, 1) => {
                        assert_eq!(got, Err(DecodeError::NewerType { code, version }))
                    }
                    _ => assert_eq!(got, Err(DecodeError::UnknownType { code })),
                }
            }
        }
        assert_eq!(
            DecodeError::NewerType {
                code: 10,
                version: 1
            }
            .to_string(),
            "record type 10 does not exist in format version 1"
        );
    }

    #[test]
    fn frame_reader_classifies_tears_and_damage() {
        let mut frame = Vec::new();
        encode_frame(&one_of_each()[1], &mut frame).unwrap();
        let segment_with = |frame: &[u8]| {
            let mut s = vec![0u8; HEADER_LEN];
            s.extend_from_slice(frame);
            s.resize(HEADER_LEN + 512, 0);
            s
        };
        let s = segment_with(&frame);
        assert!(matches!(
            read_frame(&s, HEADER_LEN),
            FrameRead::Frame { .. }
        ));
        assert_eq!(
            read_frame(&s, HEADER_LEN + frame.len()),
            FrameRead::EndOfData
        );
        // Marker not yet written.
        let mut torn = frame.clone();
        *torn.last_mut().unwrap() = 0;
        assert_eq!(
            read_frame(&segment_with(&torn), HEADER_LEN),
            FrameRead::Bad(BadFrame::MissingMarker { len: 100 })
        );
        // Only part of the complement written.
        let s = segment_with(&frame[..6]);
        assert!(matches!(
            read_frame(&s, HEADER_LEN),
            FrameRead::Bad(BadFrame::InconsistentLength { .. })
        ));
        let mut flipped = frame.clone();
        flipped[FRAME_PAYLOAD_OFFSET + 7] ^= 0x10;
        assert_eq!(
            read_frame(&segment_with(&flipped), HEADER_LEN),
            FrameRead::Bad(BadFrame::Checksum { len: 100 })
        );
        let mut marker = frame.clone();
        *marker.last_mut().unwrap() ^= 0x01;
        assert_eq!(
            read_frame(&segment_with(&marker), HEADER_LEN),
            FrameRead::Bad(BadFrame::BadMarker {
                len: 100,
                marker: 0xA4
            })
        );
        // A consistent length past the end of the segment.
        let mut s = vec![0u8; HEADER_LEN + 20];
        s[HEADER_LEN..HEADER_LEN + 4].copy_from_slice(&100u32.to_le_bytes());
        s[HEADER_LEN + 4..HEADER_LEN + 8].copy_from_slice(&(!100u32).to_le_bytes());
        assert_eq!(
            read_frame(&s, HEADER_LEN),
            FrameRead::Bad(BadFrame::LengthOutOfRange { len: 100 })
        );
        let mut short = vec![0u8; HEADER_LEN + 5];
        assert_eq!(read_frame(&short, HEADER_LEN), FrameRead::EndOfData);
        short[HEADER_LEN + 4] = 1;
        assert_eq!(
            read_frame(&short, HEADER_LEN),
            FrameRead::Bad(BadFrame::ShortTail)
        );
    }

    #[test]
    fn header_round_trips_and_every_bit_flip_is_refused() {
        let header = SegmentHeader::new(7, 65536, 2);
        assert_eq!(header.version, FORMAT_VERSION);
        let bytes = header.encode();
        assert_eq!(SegmentHeader::parse(&bytes, 7, 65536), Ok(header));
        // Every version this build reads round-trips; the ones around
        // them are refused, with a message that names the range.
        let at_version = |version: u32| {
            let mut bytes = bytes;
            bytes[HEADER_VERSION_OFFSET..HEADER_LEN_OFFSET].copy_from_slice(&version.to_le_bytes());
            let crc = crc32c::crc32c(&bytes[..HEADER_CRC_OFFSET]);
            bytes[HEADER_CRC_OFFSET..HEADER_USED_END].copy_from_slice(&crc.to_le_bytes());
            SegmentHeader::parse(&bytes, 7, 65536)
        };
        for version in FORMAT_VERSION_OLDEST_READ..=FORMAT_VERSION {
            let old = SegmentHeader { version, ..header };
            assert_eq!(at_version(version), Ok(old));
            assert_eq!(
                at_version(version),
                SegmentHeader::parse(&old.encode(), 7, 65536)
            );
        }
        for version in [0, FORMAT_VERSION + 1, u32::MAX] {
            assert_eq!(
                at_version(version),
                Err(HeaderError::UnsupportedVersion { version })
            );
        }
        assert_eq!(
            HeaderError::UnsupportedVersion { version: 3 }.to_string(),
            "format version 3, this build reads versions 1 to 2"
        );
        assert_eq!(
            SegmentHeader::parse(&bytes, 8, 65536),
            Err(HeaderError::IndexMismatch { found: 7 })
        );
        assert!(matches!(
            SegmentHeader::parse(&bytes, 7, 4096),
            Err(HeaderError::SizeMismatch { .. })
        ));
        for bit in 0..HEADER_LEN * 8 {
            let mut flipped = bytes;
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(
                SegmentHeader::parse(&flipped, 7, 65536).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
    }

    #[test]
    fn zero_helpers_agree_with_the_naive_versions() {
        for len in [0usize, 1, 63, 64, 65, 200] {
            for at in 0..len {
                let mut v = vec![0u8; len];
                v[at] = 9;
                assert!(!is_zero(&v));
                assert_eq!(first_non_zero(&v), Some(at));
                assert_eq!(non_zero_end(&v), at + 1);
            }
            let v = vec![0u8; len];
            assert!(is_zero(&v));
            assert_eq!(first_non_zero(&v), None);
            assert_eq!(non_zero_end(&v), 0);
        }
    }
}
