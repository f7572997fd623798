//! The durable checkpoint log (`crate::log::log`): an append-only sequence of
//! typed outcome records in preallocated segment files, read through memory
//! maps and written a batch at a time (see [`storage`] for why not through
//! the maps).
//!
//! What it owns: the bytes of the store directory (`HXO_DB_PATH`), their
//! format ([`format`](mod@format), where the byte layout, the crash cases and the disk
//! assumptions are written down), recovery after a crash, the store lock
//! ([`lock`]), the group-commit writer thread ([`writer`]) and compaction
//! ([`compact`](mod@compact), `hxo gc`). What it does not own: the meaning of records.
//! The engine decides what a `ShardDone` implies; the log keeps records
//! exactly once, in order, and says when they are durable.
//!
//! Invariants it keeps:
//!
//! - A record is durable once [`Log::commit`] (or the writer's
//!   `on_durable`) has returned for it; nothing durable is lost by a crash
//!   at any instant, and nothing appears that was not appended.
//! - Recovery truncates only a torn tail of the last segment. Damage
//!   followed by anything is reported as [`LogError::Corrupt`] with segment
//!   and offset, and the store is left as it is (unless the caller opts in
//!   to `salvage`, which still never rewrites a damaged byte).
//! - After a failed write or sync the log is poisoned: every later call
//!   returns [`LogError::Poisoned`] and nothing is retried (a failed fsync
//!   may have dropped dirty pages, so a retry could report success for data
//!   that is gone). Reopening the store recovers everything committed.
//! - One owner at a time: [`Log::open`] holds the store lock for the log's
//!   lifetime.
//! - Segments of an older format version (see [`format`](mod@format)) are
//!   read, never appended to: the first append after opening such a store
//!   goes to a new segment of this build's version.
//!
//! Module map: [`limits`] (bounds and their relations), [`format`](mod@format) (layout,
//! encoding, versions), [`upgrade`] (version-1 lifecycle events read as
//! typed records), [`segment`] (recovery scan of one segment), [`storage`]
//! (the disk door: [`FsStorage`], [`MemStorage`]), [`read_only`], [`lock`],
//! [`writer`], [`compact`](mod@compact).

#![deny(unsafe_op_in_unsafe_fn)]

pub mod compact;
pub mod format;
pub mod limits;
pub mod lock;
pub mod read_only;
pub mod segment;
pub mod storage;
pub mod upgrade;
pub mod writer;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use self::compact::{compact, CompactReport};
pub use self::format::{PlanId, Record, RunCause};
pub use self::lock::StoreLock;
pub use self::read_only::{read_only_scan, read_only_scan_frames};
pub use self::segment::TailCheck;
pub use self::storage::{Faults, FsStorage, MemDisk, MemStorage, Storage};
pub use self::writer::{spawn_writer, Writer};

use self::format::{
    SegmentHeader, FORMAT_VERSION, FRAME_HEADER_LEN, FRAME_OVERHEAD_BYTES, HEADER_LEN,
    HEADER_LEN_BYTES,
};
use self::limits::{
    PENDING_BYTES_MAX, SEGMENT_COUNT_MAX, SEGMENT_SIZE_ALIGN_BYTES, SEGMENT_SIZE_DEFAULT_BYTES,
    SEGMENT_SIZE_MAX_BYTES, SEGMENT_SIZE_MIN_BYTES,
};
use self::segment::ScanStop;

/// Errors of the log layer.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("checkpoint store {} locked by pid {pid}", path.display())]
    Locked { path: PathBuf, pid: u32 },
    #[error("cannot lock checkpoint store {}", path.display())]
    LockIo {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("checkpoint store {store}: {op} failed")]
    Io {
        store: String,
        op: String,
        #[source]
        source: io::Error,
    },
    #[error("checkpoint log corrupt in segment {segment} at offset {offset}: {reason}")]
    Corrupt {
        segment: u64,
        offset: u64,
        reason: String,
    },
    #[error(
        "checkpoint segment {segment} has format version {version}, this build reads versions \
         {} to {}",
        format::FORMAT_VERSION_OLDEST_READ,
        format::FORMAT_VERSION
    )]
    UnsupportedVersion { segment: u64, version: u32 },
    #[error("checkpoint log refuses work after an earlier i/o failure; reopen the store")]
    Poisoned,
    #[error(transparent)]
    FieldTooLong(#[from] format::FieldTooLong),
    #[error("record frame of {frame_len_bytes} bytes does not fit in a segment of {capacity_bytes} usable bytes")]
    RecordTooLarge {
        frame_len_bytes: u64,
        capacity_bytes: u64,
    },
    #[error("batch of {records} records is over the limit of {max_records}")]
    BatchTooLarge { records: u64, max_records: u64 },
    #[error("checkpoint store has {segment_count} segments, the limit is {SEGMENT_COUNT_MAX}")]
    TooManySegments { segment_count: u64 },
    #[error("invalid log options: {reason}")]
    InvalidOptions { reason: String },
    #[error("checkpoint log writer stopped")]
    WriterStopped {
        #[source]
        cause: Arc<LogError>,
    },
    #[error("checkpoint log writer thread is gone")]
    WriterGone,
}

/// How a log is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogOptions {
    /// Size of segments created from now on; existing segments keep the
    /// size in their header. A multiple of 4096 in 4 KiB..=1 GiB.
    pub segment_size_bytes: u64,
    /// Skip damage instead of failing: keep the valid records before it,
    /// report what was dropped, append into a new segment. Damaged bytes
    /// are never rewritten.
    pub salvage: bool,
    /// Sync every commit (the default). Without it a commit only hands the
    /// records to the page cache: a killed process loses nothing, a power
    /// loss may lose the tail. The log is synced when the writer finishes.
    /// For benchmarks and scratch runs (`hxo run --no-sync`).
    pub sync_commits: bool,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            segment_size_bytes: SEGMENT_SIZE_DEFAULT_BYTES,
            salvage: false,
            sync_commits: true,
        }
    }
}

impl LogOptions {
    fn validate(&self) -> Result<(), LogError> {
        let size = self.segment_size_bytes;
        if !(SEGMENT_SIZE_MIN_BYTES..=SEGMENT_SIZE_MAX_BYTES).contains(&size)
            || size % SEGMENT_SIZE_ALIGN_BYTES != 0
        {
            return Err(LogError::InvalidOptions {
                reason: format!(
                    "segment_size_bytes {size} must be a multiple of {SEGMENT_SIZE_ALIGN_BYTES} \
                     in {SEGMENT_SIZE_MIN_BYTES}..={SEGMENT_SIZE_MAX_BYTES}"
                ),
            });
        }
        Ok(())
    }

    /// Bytes of a segment of this size that frames may use.
    pub fn segment_capacity_bytes(&self) -> u64 {
        self.segment_size_bytes - HEADER_LEN_BYTES
    }
}

/// What recovery found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files in the store after recovery.
    pub segment_count: u32,
    /// Records recovered, counted as the record-level reads hand them on
    /// (with the records upgraded from version-1 events); frames, for
    /// [`read_only_scan_frames`].
    pub record_count: u64,
    /// The torn tail that was zeroed, if any.
    pub torn_tail: Option<TornTail>,
    /// Damage skipped in salvage mode (empty otherwise).
    pub salvaged: Vec<Damage>,
}

/// A torn (never acknowledged) tail of the last segment, zeroed by recovery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TornTail {
    pub segment: u64,
    pub offset: u64,
    pub bytes: u64,
}

/// Damage skipped in salvage mode: the bytes from `offset` (to the last
/// non-zero byte) of `segment` were not read; they are still on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Damage {
    pub segment: u64,
    pub offset: u64,
    pub bytes: u64,
    pub reason: String,
}

/// A readable segment of the open store.
#[derive(Clone, Copy, Debug)]
struct Segment {
    index: u64,
    /// Format version of its header: what its frames may hold.
    version: u32,
    size_bytes: u64,
    // INVARIANT: HEADER_LEN <= data_end <= size_bytes; the bytes
    // [HEADER_LEN, data_end) are valid frames, and unless `damaged`, the
    // bytes [data_end, size_bytes) are zero.
    data_end: u64,
    /// Salvaged damage after `data_end`: read up to it, never append.
    damaged: bool,
}

/// The checkpoint log: exclusive owner of one store.
pub struct Log {
    storage: Box<dyn Storage>,
    opts: LogOptions,
    /// Generation of every segment of this store (see `compact`).
    generation: u64,
    // INVARIANT: non-empty, ascending indices; appends go to the last one,
    // which is never `damaged`, and only once it is of FORMAT_VERSION (the
    // first append after recovering an older last segment rolls over).
    segments: Vec<Segment>,
    /// Index the next created segment gets (one past the highest on disk,
    /// readable or not).
    next_index: u64,
    /// Lowest segment index of the store, for the segment count bound.
    first_index: u64,
    // INVARIANT: HEADER_LEN <= synced_end <= last segment's data_end -
    // pending.len(); the last segment's bytes before synced_end are
    // durable, and so are all earlier segments (synced when the next one
    // was created).
    synced_end: u64,
    record_count: u64,
    poisoned: bool,
    // INVARIANT: frames appended to the last segment and not yet handed to
    // storage, in log order, ending at its `data_end`; at most
    // PENDING_BYTES_MAX plus one frame.
    pending: Vec<u8>,
    /// Offsets in `pending` of frames whose CRC is not filled in yet (they
    /// are sealed together, just before `pending` is written).
    unsealed: Vec<usize>,
    // Declared last: dropped after the maps, so nothing is mapped unlocked.
    _lock: Option<StoreLock>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("store", &self.storage.describe())
            .field("segments", &self.segments.len())
            .field("record_count", &self.record_count)
            .field("poisoned", &self.poisoned)
            .finish()
    }
}

impl Log {
    /// Opens (creating if needed) the store in `dir`: takes the store lock,
    /// finishes or discards an interrupted compaction, recovers.
    pub fn open(dir: &Path, opts: LogOptions) -> Result<(Log, RecoveryReport), LogError> {
        opts.validate()?;
        let lock = StoreLock::acquire(dir)?;
        compact::finish_interrupted(dir)?;
        let storage = FsStorage::open(dir).map_err(|source| LogError::Io {
            store: dir.display().to_string(),
            op: "opening the store directory".to_owned(),
            source,
        })?;
        Self::open_inner(Box::new(storage), opts, Some(lock), 0)
    }

    /// Opens a store behind any storage (tests inject faults this way). No
    /// lock is taken: the caller guarantees exclusive access.
    pub fn open_with(
        storage: Box<dyn Storage>,
        opts: LogOptions,
    ) -> Result<(Log, RecoveryReport), LogError> {
        Self::open_inner(storage, opts, None, 0)
    }

    /// `new_generation` is used only if the storage holds no segment yet.
    pub(crate) fn open_inner(
        storage: Box<dyn Storage>,
        opts: LogOptions,
        lock: Option<StoreLock>,
        new_generation: u64,
    ) -> Result<(Log, RecoveryReport), LogError> {
        opts.validate()?;
        let mut log = Log {
            storage,
            opts,
            generation: new_generation,
            segments: Vec::new(),
            next_index: 0,
            first_index: 0,
            synced_end: HEADER_LEN_BYTES,
            record_count: 0,
            poisoned: false,
            pending: Vec::new(),
            unsealed: Vec::new(),
            _lock: lock,
        };
        let report = log.recover()?;
        Ok((log, report))
    }

    fn io(&self, op: String, source: io::Error) -> LogError {
        LogError::Io {
            store: self.storage.describe(),
            op,
            source,
        }
    }

    /// Marks the log unusable and returns the error that caused it.
    fn poison(&mut self, op: String, source: io::Error) -> LogError {
        self.poisoned = true;
        self.io(op, source)
    }

    fn recover(&mut self) -> Result<RecoveryReport, LogError> {
        let salvage = self.opts.salvage;
        let mut report = RecoveryReport::default();
        let indices = self
            .storage
            .list_segments()
            .map_err(|e| self.io("listing segments".to_owned(), e))?;
        let (Some(&first), Some(&last)) = (indices.first(), indices.last()) else {
            self.create_segment(0).map_err(|(op, e)| self.io(op, e))?;
            report.segment_count = 1;
            return Ok(report);
        };
        if last - first >= SEGMENT_COUNT_MAX {
            return Err(LogError::TooManySegments {
                segment_count: last - first + 1,
            });
        }
        self.first_index = first;
        self.next_index = last + 1;
        let damage = |report: &mut RecoveryReport, d: Damage| -> Result<(), LogError> {
            if !salvage {
                return Err(LogError::Corrupt {
                    segment: d.segment,
                    offset: d.offset,
                    reason: d.reason,
                });
            }
            report.salvaged.push(d);
            Ok(())
        };
        let mut generation: Option<u64> = None;
        let mut expected = first;
        for (position, &index) in indices.iter().enumerate() {
            let is_last = position + 1 == indices.len();
            if index != expected {
                // A hole in the numbering: segments were deleted by hand.
                damage(
                    &mut report,
                    Damage {
                        segment: expected,
                        offset: 0,
                        bytes: 0,
                        reason: format!("segment files {expected}..{index} are missing"),
                    },
                )?;
            }
            expected = index + 1;
            let len = self
                .storage
                .open_segment(index)
                .map_err(|e| self.io(format!("opening segment {index}"), e))?;
            let bytes = self
                .storage
                .bytes(index)
                .expect("a segment just opened is readable");
            let header = match SegmentHeader::parse(bytes, index, len) {
                Ok(header) => header,
                Err(format::HeaderError::UnsupportedVersion { version }) => {
                    // Not damage: a newer HXO wrote it. Never skip it.
                    return Err(LogError::UnsupportedVersion {
                        segment: index,
                        version,
                    });
                }
                Err(e) => {
                    damage(
                        &mut report,
                        Damage {
                            segment: index,
                            offset: 0,
                            bytes: len,
                            reason: format!("bad segment header: {e}"),
                        },
                    )?;
                    continue;
                }
            };
            match generation {
                None => generation = Some(header.generation),
                Some(g) if g != header.generation => {
                    damage(
                        &mut report,
                        Damage {
                            segment: index,
                            offset: 0,
                            bytes: len,
                            reason: format!(
                                "segment of generation {}, the store is generation {g}",
                                header.generation
                            ),
                        },
                    )?;
                    continue;
                }
                Some(_) => {}
            }
            let scan = segment::scan(bytes, header.version, is_last, &mut |_| {});
            report.record_count += scan.record_count;
            let mut segment = Segment {
                index,
                version: header.version,
                size_bytes: len,
                data_end: scan.data_end as u64,
                damaged: false,
            };
            match scan.stop {
                ScanStop::Clean => {}
                ScanStop::Torn { offset, bytes } => {
                    assert!(is_last, "tears are recognised only in the last segment");
                    self.zero_torn_tail(index, offset, bytes)?;
                    report.torn_tail = Some(TornTail {
                        segment: index,
                        offset: offset as u64,
                        bytes: bytes as u64,
                    });
                }
                ScanStop::Damaged {
                    offset,
                    bytes,
                    reason,
                } => {
                    damage(
                        &mut report,
                        Damage {
                            segment: index,
                            offset: offset as u64,
                            bytes: bytes as u64,
                            reason,
                        },
                    )?;
                    segment.damaged = true;
                }
            }
            self.storage.release(index, 0, len);
            self.segments.push(segment);
        }
        if let Some(g) = generation {
            self.generation = g;
        }
        self.record_count = report.record_count;
        match self.segments.last().copied() {
            Some(last) if !last.damaged && last.index + 1 == self.next_index => {
                // The previous owner may have died before syncing its last
                // batch; those records are part of the log now, so make them
                // durable before anything is appended after them.
                let len = last.data_end - HEADER_LEN_BYTES;
                self.storage
                    .sync_range(last.index, HEADER_LEN_BYTES, len)
                    .map_err(|e| self.io(format!("syncing recovered segment {}", last.index), e))?;
                self.synced_end = last.data_end;
            }
            _ => {
                // The last segment file is damaged or unreadable: never
                // append to it, start a new one.
                let index = self.next_index;
                self.create_segment(index)
                    .map_err(|(op, e)| self.io(op, e))?;
            }
        }
        report.segment_count = u32::try_from(self.next_index - self.first_index)
            .expect("bounded by SEGMENT_COUNT_MAX");
        Ok(report)
    }

    /// Zeroes a torn tail so appends can reuse the space: first everything
    /// after the frame header, synced, then the header, synced, so a crash
    /// in between still leaves a tail recovery classifies as torn or clean.
    fn zero_torn_tail(&mut self, index: u64, offset: usize, bytes: usize) -> Result<(), LogError> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        let end = offset + bytes;
        let mid = (offset + FRAME_HEADER_LEN).min(end);
        for (from, to) in [(mid, end), (offset, mid)] {
            let mut at = from;
            while at < to {
                let n = (to - at).min(ZEROS.len());
                self.storage
                    .write_at(index, at as u64, &ZEROS[..n])
                    .map_err(|e| self.io(format!("zeroing the torn tail of segment {index}"), e))?;
                at += n;
            }
            if to > from {
                self.storage
                    .sync_range(index, from as u64, (to - from) as u64)
                    .map_err(|e| self.io(format!("syncing the torn tail of segment {index}"), e))?;
            }
        }
        Ok(())
    }

    /// Creates segment `index` with the options' size and makes it the
    /// append target. Errors carry the step for the caller to wrap.
    fn create_segment(&mut self, index: u64) -> Result<(), (String, io::Error)> {
        let size_bytes = self.opts.segment_size_bytes;
        let header = SegmentHeader::new(index, size_bytes, self.generation).encode();
        self.storage
            .create_segment(index, size_bytes, &header)
            .map_err(|e| {
                (
                    format!("preallocating segment {index} ({size_bytes} bytes)"),
                    e,
                )
            })?;
        if self.segments.is_empty() {
            self.first_index = index;
        }
        self.segments.push(Segment {
            index,
            version: FORMAT_VERSION,
            size_bytes,
            data_end: HEADER_LEN_BYTES,
            damaged: false,
        });
        self.next_index = index + 1;
        self.synced_end = HEADER_LEN_BYTES;
        Ok(())
    }

    /// Appends a record. It is handed to storage at the next commit (or
    /// once `PENDING_BYTES_MAX` bytes are waiting) and durable only after
    /// [`Log::commit`]. A record over its field bounds or too large for a
    /// segment is refused with nothing written; an I/O failure poisons the
    /// log.
    pub fn append(&mut self, record: &Record) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        let len = record.payload_len()?;
        let frame_len = FRAME_OVERHEAD_BYTES + u64::from(len);
        let last = *self.segments.last().expect("INVARIANT: non-empty");
        // A segment of an older version is never appended to: its version
        // promises readers which record types it holds.
        if last.data_end + frame_len > last.size_bytes || last.version != FORMAT_VERSION {
            let capacity_bytes = self.opts.segment_capacity_bytes();
            if frame_len > capacity_bytes {
                return Err(LogError::RecordTooLarge {
                    frame_len_bytes: frame_len,
                    capacity_bytes,
                });
            }
            self.roll_over()?;
        }
        self.unsealed.push(self.pending.len());
        format::append_unsealed_frame(record, len, &mut self.pending);
        let last = self.segments.last_mut().expect("INVARIANT: non-empty");
        last.data_end += frame_len;
        self.record_count += 1;
        if self.pending.len() >= PENDING_BYTES_MAX {
            self.write_pending()?;
        }
        Ok(())
    }

    /// Hands the pending frames to storage with one write (see `format` for
    /// why one write in log order leaves only prefix-shaped tears).
    fn write_pending(&mut self) -> Result<(), LogError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        format::seal_frames(&mut self.pending, &self.unsealed);
        self.unsealed.clear();
        let last = *self.segments.last().expect("INVARIANT: non-empty");
        let at = last.data_end - self.pending.len() as u64;
        if let Err(e) = self.storage.write_at(last.index, at, &self.pending) {
            return Err(self.poison(format!("writing segment {} at offset {at}", last.index), e));
        }
        self.pending.clear();
        Ok(())
    }

    /// Finishes the current segment (synced to its end) and starts the next.
    fn roll_over(&mut self) -> Result<(), LogError> {
        if self.next_index - self.first_index >= SEGMENT_COUNT_MAX {
            return Err(LogError::TooManySegments {
                segment_count: self.next_index - self.first_index + 1,
            });
        }
        // A segment that is not the last never has an unsynced tail, so a
        // torn tail can only be in the last one.
        self.sync_all()?;
        let index = self.next_index;
        self.create_segment(index)
            .map_err(|(op, e)| self.poison(op, e))
    }

    /// Hands everything appended so far to storage and makes it durable
    /// (fdatasync). Without `sync_commits` only the first half: a killed
    /// process then loses nothing, a power loss may. On failure the log is
    /// poisoned: never retry, reopen the store instead.
    pub fn commit(&mut self) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        if !self.opts.sync_commits {
            return self.write_pending();
        }
        self.sync_all()
    }

    /// Syncs everything appended so far, whatever `sync_commits` says.
    pub fn sync_all(&mut self) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        self.write_pending()?;
        let last = *self.segments.last().expect("INVARIANT: non-empty");
        if last.data_end > self.synced_end {
            if let Err(e) = self.storage.sync_range(
                last.index,
                self.synced_end,
                last.data_end - self.synced_end,
            ) {
                return Err(self.poison(format!("syncing segment {}", last.index), e));
            }
            self.synced_end = last.data_end;
        }
        Ok(())
    }

    /// Calls `f` with every record, recovered and appended, in log order,
    /// decoding from the maps. A lifecycle event of a version-1 segment is
    /// followed by the typed record it stands for (see [`upgrade`]).
    pub fn for_each_record(&mut self, f: &mut dyn FnMut(Record)) -> Result<(), LogError> {
        if self.poisoned {
            return Err(LogError::Poisoned);
        }
        // Pending frames are read back from the segment like the others.
        self.write_pending()?;
        for segment in &self.segments {
            let bytes = self
                .storage
                .bytes(segment.index)
                .expect("INVARIANT: every listed segment is open");
            let data_end = segment.data_end as usize;
            let mut pos = HEADER_LEN;
            while pos < data_end {
                let corrupt = |reason: String| LogError::Corrupt {
                    segment: segment.index,
                    offset: pos as u64,
                    reason,
                };
                match format::read_frame(&bytes[..data_end], pos) {
                    format::FrameRead::Frame {
                        type_code,
                        payload,
                        end,
                    } => {
                        let record = Record::decode_in(segment.version, type_code, payload)
                            .map_err(|e| corrupt(format!("changed since recovery: {e}")))?;
                        upgrade::hand_on(segment.version, record, f);
                        pos = end;
                    }
                    other => {
                        return Err(corrupt(format!("changed since recovery: {other:?}")));
                    }
                }
            }
            self.storage.release(segment.index, 0, segment.data_end);
        }
        Ok(())
    }

    /// Records recovered plus appended (committed or not): as many as
    /// [`Log::for_each_record`] hands on, upgraded records included.
    pub fn record_count(&self) -> u64 {
        self.record_count
    }

    /// Segment files of the store, readable or not.
    pub fn segment_count(&self) -> u64 {
        self.next_index - self.first_index
    }

    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// Where the store lives, for messages.
    pub fn store_name(&self) -> String {
        self.storage.describe()
    }

    pub fn options(&self) -> &LogOptions {
        &self.opts
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Hands the storage back (tests inspect a `MemStorage` this way).
    pub fn into_storage(self) -> Box<dyn Storage> {
        self.storage
    }
}
