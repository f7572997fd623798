//! The recovery scan of one segment: walks its frames and decides where
//! the valid data ends and what follows it (clean end, torn tail, damage),
//! applying the rules written down in [`super::format`].
//!
//! Pure: it reads a byte slice and reports; the log decides what to write.

use super::format::{
    self, BadFrame, DecodeError, FrameRead, Record, RecordType, FRAME_HEADER_LEN, FRAME_OVERHEAD,
    HEADER_LEN,
};
use super::upgrade;

/// What a scan found after the last valid frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// Zeros to the end of the segment (or the segment is full).
    Clean,
    /// A prefix-shaped tear in the last segment: the `bytes` bytes from
    /// `offset` (to the last non-zero byte) are to be zeroed.
    Torn { offset: usize, bytes: usize },
    /// Anything else. `offset` is where the damage starts (the bad frame,
    /// or the first stray byte after the end of data); `bytes` runs from
    /// there to the last non-zero byte of the segment.
    Damaged {
        offset: usize,
        bytes: usize,
        reason: String,
    },
}

/// Result of scanning one segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentScan {
    /// Offset just after the last valid frame; the records before it are
    /// the segment's records whatever `stop` says.
    pub data_end: usize,
    /// Records handed on: the valid frames, plus for the record-level
    /// scans ([`scan`], [`scan_with_offsets`]) the records upgraded from
    /// version-1 events.
    pub record_count: u64,
    pub stop: ScanStop,
}

/// Scans the record area of `segment` (the whole file's bytes, header
/// already checked: the segment is of format `version`). `is_last` enables
/// the torn-tail rules. Every valid record is decoded and handed to
/// `on_record` in order, each followed by the typed record it stands for
/// if it is a version-1 lifecycle event (see [`super::upgrade`]).
pub fn scan(
    segment: &[u8],
    version: u32,
    is_last: bool,
    on_record: &mut dyn FnMut(Record),
) -> SegmentScan {
    scan_with_offsets(
        segment,
        version,
        is_last,
        TailCheck::Zeros,
        &mut |record, _| on_record(record),
    )
}

/// What a scan checks after the end of data (a zero frame header).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TailCheck {
    /// Every byte to the end of the segment must be zero (recovery).
    Zeros,
    /// Nothing, in the last segment: for the store's owner, whose recovery
    /// checked the tail and whose writer alone has appended since, so the
    /// (up to a segment of) zeros after the data need not be read again.
    /// Other segments are checked as with `Zeros`.
    LastSegmentUnchecked,
}

/// [`scan`], also telling `on_record` the offset just after each record (so
/// a reader can release the pages behind it; an upgraded record gets the
/// offset of the event it comes from).
pub fn scan_with_offsets(
    segment: &[u8],
    version: u32,
    is_last: bool,
    tail_check: TailCheck,
    on_record: &mut dyn FnMut(Record, usize),
) -> SegmentScan {
    let mut upgraded = 0u64;
    let mut scan = scan_frames(
        segment,
        version,
        is_last,
        tail_check,
        &mut |type_code, payload, end| {
            let record = Record::decode_in(version, type_code, payload)?;
            upgraded += upgrade::hand_on(version, record, &mut |r| on_record(r, end));
            Ok(())
        },
    );
    scan.record_count += upgraded;
    scan
}

/// Called with each valid frame's type code, payload and end offset; an
/// error is the frame's damage (it does not decode).
pub type FrameAtVisitor<'a> = dyn FnMut(u8, &[u8], usize) -> Result<(), DecodeError> + 'a;

/// [`scan_with_offsets`] for a caller that reads frames itself: `on_frame`
/// gets each valid frame's type code, payload and end offset, and decodes
/// what it needs; a decode error it returns is damage, as in a full scan.
/// A type code that does not exist in `version` is damage before
/// `on_frame` sees it, so `on_frame` may decode with [`Record::decode`].
pub fn scan_frames(
    segment: &[u8],
    version: u32,
    is_last: bool,
    tail_check: TailCheck,
    on_frame: &mut FrameAtVisitor<'_>,
) -> SegmentScan {
    assert!(segment.len() >= HEADER_LEN, "header checked by the caller");
    let mut pos = HEADER_LEN;
    let mut record_count = 0u64;
    loop {
        let stop = match format::read_frame(segment, pos) {
            FrameRead::Frame {
                type_code,
                payload,
                end,
            } => match RecordType::from_code_in(type_code, version)
                .and_then(|_| on_frame(type_code, payload, end))
            {
                Ok(()) => {
                    record_count += 1;
                    pos = end;
                    continue;
                }
                // It passed the CRC, so it was written this way: never a tear.
                Err(e) => damaged(segment, pos, format!("record does not decode: {e}")),
            },
            FrameRead::EndOfData if is_last && tail_check == TailCheck::LastSegmentUnchecked => {
                ScanStop::Clean
            }
            FrameRead::EndOfData => match format::first_non_zero(&segment[pos..]) {
                None => ScanStop::Clean,
                Some(i) => damaged(
                    segment,
                    pos + i,
                    format!("non-zero bytes after the end of data at offset {pos}"),
                ),
            },
            FrameRead::Bad(bad) => {
                let rest_zero_from = match bad {
                    BadFrame::InconsistentLength { .. } => Some(pos + FRAME_HEADER_LEN),
                    BadFrame::MissingMarker { len } => Some(pos + FRAME_OVERHEAD + len as usize),
                    _ => None,
                };
                let torn =
                    is_last && rest_zero_from.is_some_and(|from| format::is_zero(&segment[from..]));
                if torn {
                    ScanStop::Torn {
                        offset: pos,
                        bytes: format::non_zero_end(&segment[pos..]),
                    }
                } else {
                    damaged(segment, pos, bad.to_string())
                }
            }
        };
        return SegmentScan {
            data_end: pos,
            record_count,
            stop,
        };
    }
}

fn damaged(segment: &[u8], offset: usize, reason: String) -> ScanStop {
    ScanStop::Damaged {
        offset,
        bytes: format::non_zero_end(&segment[offset..]).max(1),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::{encode_frame, tests::one_of_each, SegmentHeader, FORMAT_VERSION};
    use super::*;

    fn segment_of(records: &[Record], size: usize) -> (Vec<u8>, Vec<usize>) {
        let mut s = SegmentHeader::new(0, size as u64, 0).encode().to_vec();
        let mut starts = Vec::new();
        let mut frame = Vec::new();
        for r in records {
            starts.push(s.len());
            encode_frame(r, &mut frame).unwrap();
            s.extend_from_slice(&frame);
        }
        starts.push(s.len());
        s.resize(size, 0);
        (s, starts)
    }

    fn count(segment: &[u8], is_last: bool) -> SegmentScan {
        scan(segment, FORMAT_VERSION, is_last, &mut |_| {})
    }

    #[test]
    fn an_unchecked_tail_is_not_read_in_the_last_segment_only() {
        let records = one_of_each();
        let (mut s, starts) = segment_of(&records, 4096);
        let data_end = *starts.last().unwrap();
        s[data_end + 100] = 7;
        let unchecked = |is_last| {
            scan_with_offsets(
                &s,
                FORMAT_VERSION,
                is_last,
                TailCheck::LastSegmentUnchecked,
                &mut |_, _| {},
            )
        };
        let live = unchecked(true);
        assert_eq!(live.stop, ScanStop::Clean);
        assert_eq!(live.record_count, records.len() as u64);
        assert!(
            matches!(unchecked(false).stop, ScanStop::Damaged { offset, .. } if offset == data_end + 100)
        );
        assert!(
            matches!(count(&s, true).stop, ScanStop::Damaged { offset, .. } if offset == data_end + 100)
        );
    }

    #[test]
    fn clean_segment_yields_every_record() {
        let records = one_of_each();
        let (s, starts) = segment_of(&records, 4096);
        let mut seen = Vec::new();
        let result = scan(&s, FORMAT_VERSION, true, &mut |r| seen.push(r));
        assert_eq!(seen, records);
        assert_eq!(result.stop, ScanStop::Clean);
        assert_eq!(result.data_end, *starts.last().unwrap());
    }

    #[test]
    fn prefix_of_the_last_frame_is_a_tear_only_in_the_last_segment() {
        let records = one_of_each();
        let (full, starts) = segment_of(&records, 4096);
        let last_start = starts[starts.len() - 2];
        let end = starts[starts.len() - 1];
        for cut in last_start + 1..end {
            let mut s = full.clone();
            s[cut..end].fill(0);
            let r = count(&s, true);
            assert_eq!(r.record_count, records.len() as u64 - 1, "cut {cut}");
            assert_eq!(
                r.stop,
                ScanStop::Torn {
                    offset: last_start,
                    bytes: format::non_zero_end(&s[last_start..])
                },
                "cut {cut}"
            );
            assert!(matches!(count(&s, false).stop, ScanStop::Damaged { .. }));
        }
    }

    #[test]
    fn damage_followed_by_data_is_never_a_tear() {
        let records = one_of_each();
        let (full, starts) = segment_of(&records, 4096);
        // A hole of zeros in the middle of the frame stream.
        let mut s = full.clone();
        s[starts[3]..starts[4]].fill(0);
        let r = count(&s, true);
        assert_eq!(r.record_count, 3);
        assert!(
            matches!(r.stop, ScanStop::Damaged { offset, .. } if offset == starts[4]),
            "{r:?}"
        );
        // A stray byte far past the end of data.
        let mut s = full.clone();
        s[4000] = 1;
        let r = count(&s, true);
        assert_eq!(r.record_count, records.len() as u64);
        assert_eq!(
            r.stop,
            ScanStop::Damaged {
                offset: 4000,
                bytes: 1,
                reason: format!(
                    "non-zero bytes after the end of data at offset {}",
                    starts.last().unwrap()
                )
            }
        );
        // The last frame torn but a stray byte after it.
        let mut s = full;
        let last_start = starts[starts.len() - 2];
        s[last_start + 20..*starts.last().unwrap()].fill(0);
        s[4000] = 1;
        assert!(matches!(count(&s, true).stop, ScanStop::Damaged { .. }));
    }

    #[test]
    fn a_type_newer_than_the_segment_is_damage() {
        let records = one_of_each();
        let first_v2 = records
            .iter()
            .position(|r| r.record_type().since_version() == 2)
            .unwrap();
        // The same bytes under a version-1 header: the frames of version 1
        // types read, the first newer one is damage, at every scan level.
        let (mut s, starts) = segment_of(&records, 4096);
        let v1 = SegmentHeader {
            version: 1,
            ..SegmentHeader::new(0, 4096, 0)
        };
        s[..HEADER_LEN].copy_from_slice(&v1.encode());
        let mut seen = Vec::new();
        let r = scan(&s, 1, true, &mut |r| seen.push(r));
        assert_eq!(seen, records[..first_v2]);
        assert_eq!(r.data_end, starts[first_v2]);
        let ScanStop::Damaged { offset, reason, .. } = r.stop else {
            panic!("{r:?}");
        };
        assert_eq!(offset, starts[first_v2]);
        assert_eq!(
            reason,
            "record does not decode: record type 10 does not exist in format version 1"
        );
        let mut frames = 0;
        let r = scan_frames(&s, 1, true, TailCheck::Zeros, &mut |_, _, _| {
            frames += 1;
            Ok(())
        });
        assert_eq!(frames, first_v2);
        assert!(matches!(r.stop, ScanStop::Damaged { .. }));
        // Read as version 2, everything is there.
        assert_eq!(count(&s, true).record_count, records.len() as u64);
    }

    #[test]
    fn undecodable_payload_with_good_crc_is_damage() {
        let (mut s, starts) = segment_of(&one_of_each()[..1], 4096);
        // Change the type to ShardDone and fix the CRC: a bug, not a tear.
        let at = starts[0];
        s[at + format::FRAME_TYPE_OFFSET] = format::RecordType::ShardDone as u8;
        let len = u32::from_le_bytes(s[at..at + 4].try_into().unwrap());
        let crc = format::frame_crc(
            len,
            &s[at + format::FRAME_TYPE_OFFSET..at + FRAME_HEADER_LEN + len as usize],
        );
        s[at + format::FRAME_CRC_OFFSET..at + format::FRAME_CRC_OFFSET + 4]
            .copy_from_slice(&crc.to_le_bytes());
        let r = count(&s, true);
        assert_eq!(r.record_count, 0);
        assert!(
            matches!(r.stop, ScanStop::Damaged { ref reason, .. } if reason.contains("decode"))
        );
    }
}
