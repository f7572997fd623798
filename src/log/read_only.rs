//! Reading a store without owning it: `hxo status`, `report`, `export`
//! and certification read the segment files while another process (or this
//! one's writer) may be appending.
//!
//! Nothing is locked, truncated or synced. A torn tail in the last segment
//! is simply where reading stops (it may be a record being written right
//! now). Damage anywhere else is reported as corruption, as in recovery,
//! including bytes after the end of the last segment's data, unless the
//! caller says the tail needs no check ([`TailCheck`]): the owner of the
//! store, whose recovery checked it and whose writer alone appends there.

use super::format::{DecodeError, HeaderError, SegmentHeader};
use super::segment::{self, ScanStop, TailCheck};
use super::storage::{parse_segment_file_name, segment_file_name};
use super::upgrade;
use super::{Damage, LogError, Record, RecoveryReport};
use memmap2::Mmap;
use std::fs::File;
use std::path::Path;

/// Called with each valid frame's type code and payload, in log order; an
/// error is the frame's damage (it does not decode).
pub type FrameVisitor<'a> = dyn FnMut(u8, &[u8]) -> Result<(), DecodeError> + 'a;

/// Bytes scanned between two releases of the pages behind the scan.
const RELEASE_WINDOW_BYTES: usize = 4 * 1024 * 1024;
const PAGE_BYTES: usize = 4096;

fn io(dir: &Path, op: String, source: std::io::Error) -> LogError {
    LogError::Io {
        store: dir.display().to_string(),
        op,
        source,
    }
}

/// Calls `on_record` for every record of the store in `dir`, in log order,
/// a lifecycle event of a version-1 segment followed by the typed record it
/// stands for (see [`upgrade`]). With `salvage`, damage is skipped (the
/// rest of that segment is dropped and reported) instead of failing, as
/// `Log::open` does with salvage.
pub fn read_only_scan(
    dir: &Path,
    salvage: bool,
    tail_check: TailCheck,
    on_record: &mut dyn FnMut(Record),
) -> Result<RecoveryReport, LogError> {
    let mut upgraded = 0u64;
    let mut report = scan_store(
        dir,
        salvage,
        tail_check,
        &mut |version, type_code, payload| {
            let record = Record::decode_in(version, type_code, payload)?;
            upgraded += upgrade::hand_on(version, record, on_record);
            Ok(())
        },
    )?;
    report.record_count += upgraded;
    Ok(report)
}

/// [`read_only_scan`] for a caller that reads frames itself (see
/// [`segment::scan_frames`]): certification reads `ShardDone` fields in
/// place rather than building a [`Record`] per shard. Frames are handed on
/// as they are, without the upgrade of version-1 events, and the report
/// counts frames. A frame's type is checked against its segment's version
/// first, so `on_frame` may decode with [`Record::decode`].
pub fn read_only_scan_frames(
    dir: &Path,
    salvage: bool,
    tail_check: TailCheck,
    on_frame: &mut FrameVisitor<'_>,
) -> Result<RecoveryReport, LogError> {
    scan_store(dir, salvage, tail_check, &mut |_, type_code, payload| {
        on_frame(type_code, payload)
    })
}

/// Called with each valid frame's segment version, type code and payload.
type VersionedFrameVisitor<'a> = dyn FnMut(u32, u8, &[u8]) -> Result<(), DecodeError> + 'a;

/// The scan behind both: every segment of `dir`, in order.
fn scan_store(
    dir: &Path,
    salvage: bool,
    tail_check: TailCheck,
    on_frame: &mut VersionedFrameVisitor<'_>,
) -> Result<RecoveryReport, LogError> {
    let mut indices = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| io(dir, "listing segments".into(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io(dir, "listing segments".into(), e))?;
        if let Some(index) = entry.file_name().to_str().and_then(parse_segment_file_name) {
            indices.push(index);
        }
    }
    indices.sort_unstable();
    let mut report = RecoveryReport::default();
    for (position, &index) in indices.iter().enumerate() {
        let is_last = position + 1 == indices.len();
        let path = dir.join(segment_file_name(index));
        let file = File::open(&path).map_err(|e| io(dir, format!("opening segment {index}"), e))?;
        let len = file
            .metadata()
            .map_err(|e| io(dir, format!("reading segment {index}"), e))?
            .len();
        // SAFETY: segment files are preallocated and never truncated while
        // the store exists (compaction replaces whole files by rename, which
        // leaves this mapping's pages intact). Another process may append
        // into the zeroed region while we read: such bytes are at worst a
        // torn frame, which the frame's CRC and end marker reject, and
        // reading stops there.
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| io(dir, format!("mapping segment {index}"), e))?;
        let bytes: &[u8] = &map;
        let header = match SegmentHeader::parse(bytes, index, len) {
            Ok(header) => header,
            Err(HeaderError::UnsupportedVersion { version }) => {
                // As in recovery: a newer HXO wrote it, never skip it.
                return Err(LogError::UnsupportedVersion {
                    segment: index,
                    version,
                });
            }
            Err(e) => {
                let reason = format!("bad segment header: {e}");
                if salvage {
                    report.salvaged.push(Damage {
                        segment: index,
                        offset: 0,
                        bytes: len,
                        reason,
                    });
                    continue;
                }
                return Err(LogError::Corrupt {
                    segment: index,
                    offset: 0,
                    reason,
                });
            }
        };
        // Pages already scanned are released as the scan goes, so reading a
        // store costs no more than a window of memory, however large.
        let mut released = 0usize;
        let scan = segment::scan_frames(
            bytes,
            header.version,
            is_last,
            tail_check,
            &mut |code, payload, end| {
                on_frame(header.version, code, payload)?;
                if end - released >= RELEASE_WINDOW_BYTES {
                    let upto = end / PAGE_BYTES * PAGE_BYTES;
                    // SAFETY: MADV_DONTNEED on a read-only shared file mapping
                    // only drops our page-table entries; the next access (there
                    // is none for these bytes) would fault them back from the
                    // file. No reference into the range outlives this call: the
                    // scan has moved past it, and `on_frame` borrows a payload
                    // only for its call.
                    let _ = unsafe {
                        map.unchecked_advise_range(
                            memmap2::UncheckedAdvice::DontNeed,
                            released,
                            upto - released,
                        )
                    };
                    released = upto;
                }
                Ok(())
            },
        );
        report.record_count += scan.record_count;
        report.segment_count += 1;
        match scan.stop {
            ScanStop::Clean | ScanStop::Torn { .. } => {}
            ScanStop::Damaged {
                offset,
                bytes,
                reason,
            } if salvage => report.salvaged.push(Damage {
                segment: index,
                offset: offset as u64,
                bytes: bytes as u64,
                reason,
            }),
            ScanStop::Damaged { offset, reason, .. } => {
                return Err(LogError::Corrupt {
                    segment: index,
                    offset: offset as u64,
                    reason,
                })
            }
        }
    }
    Ok(report)
}
