//! Log-level tests: crash consistency against a model, torn tails on real
//! files, bit flips, full disks, salvage, the lock, the golden v1 and v2
//! stores, version-1 stores and the upgrade of their lifecycle events.
//! Shared helpers for the other modules' tests live here too.

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::format::{self, encode_frame, Record, HEADER_LEN};
use super::storage::{Faults, MemDisk, MemStorage, Storage};
use super::{Log, LogError, LogOptions, RecoveryReport};

/// Small segments: many rollovers in a few records.
pub(crate) const MODEL_OPTS: LogOptions = LogOptions {
    segment_size_bytes: 4096,
    salvage: false,
    sync_commits: true,
};

const SALVAGE_OPTS: LogOptions = LogOptions {
    segment_size_bytes: 4096,
    salvage: true,
    sync_commits: true,
};

/// `HXO_SLOW_TESTS=1` widens the exhaustive loops.
fn slow_tests() -> bool {
    std::env::var("HXO_SLOW_TESTS").is_ok_and(|v| v == "1")
}

pub(crate) fn shard_done_with(plan: u8, leaf_index: u64, attempts: u32) -> Record {
    Record::ShardDone {
        plan_id: [plan; 16],
        leaf_index,
        cas_id: crate::hash::sha256(&leaf_index.to_le_bytes()),
        output_digest: [attempts as u8; 32],
        attempts,
        duration_us: leaf_index * 3,
    }
}

pub(crate) fn shard_done(leaf_index: u64) -> Record {
    shard_done_with(1, leaf_index, 1)
}

pub(crate) fn read_all(log: &mut Log) -> Vec<Record> {
    let mut out = Vec::new();
    log.for_each_record(&mut |r| out.push(r)).unwrap();
    out
}

/// splitmix64: seeded, dependency-free.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A record of a random type; mostly small, sometimes over a kilobyte so
/// that frames straddle where a 4 KiB segment would end.
fn random_record(rng: &mut Rng, seq: u64) -> Record {
    let text = |rng: &mut Rng, max: u64| -> String {
        let len = rng.below(max + 1) as usize;
        (0..len)
            .map(|i| (b'a' + ((seq as usize + i) % 26) as u8) as char)
            .collect()
    };
    let plan_id = [(seq % 3) as u8 + 1; 16];
    match rng.below(10) {
        0..=4 => shard_done_with(plan_id[0], seq, 1 + (seq % 3) as u32),
        5 => Record::ShardFailed {
            plan_id,
            leaf_index: seq,
            cas_id: [7; 32],
            attempts: 2,
            duration_us: seq,
            aborted: seq % 2 == 0,
            error: text(rng, 120),
        },
        6 => Record::ShardSplit {
            plan_id,
            leaf_index: seq,
            pieces: 4,
        },
        7 => Record::SubShardDone {
            plan_id,
            leaf_index: seq,
            piece: 1,
            output_digest: [9; 32],
        },
        8 => Record::Event {
            seq,
            at_ms: seq * 10,
            topic: "hxo.audit".to_owned(),
            payload_json: if rng.below(4) == 0 {
                text(rng, 1500)
            } else {
                text(rng, 60)
            },
        },
        _ => Record::PlanFinished {
            plan_id,
            at_ms: seq,
            tree_size: seq,
            root: [3; 32],
            done_count: seq,
            failed_count: 0,
        },
    }
}

#[derive(Clone, Debug)]
enum Op {
    Append(Record),
    Commit,
}

fn workload(seed: u64, batches: u64) -> Vec<Op> {
    let mut rng = Rng::new(seed);
    let mut ops = Vec::new();
    let mut seq = 0;
    for _ in 0..batches {
        for _ in 0..1 + rng.below(6) {
            ops.push(Op::Append(random_record(&mut rng, seq)));
            seq += 1;
        }
        ops.push(Op::Commit);
    }
    ops
}

/// What a run made durable (acknowledged) and what it appended after that.
#[derive(Default)]
struct Outcome {
    committed: Vec<Record>,
    uncommitted: Vec<Record>,
}

/// Runs `ops` until the first error, like an engine that stops on one.
fn run_until_error(storage: MemStorage, ops: &[Op]) -> Outcome {
    let mut out = Outcome::default();
    let Ok((mut log, _)) = Log::open_with(Box::new(storage), MODEL_OPTS) else {
        return out;
    };
    for op in ops {
        match op {
            Op::Append(r) => {
                if log.append(r).is_err() {
                    return out;
                }
                out.uncommitted.push(r.clone());
            }
            Op::Commit => {
                if log.commit().is_err() {
                    return out;
                }
                out.committed.append(&mut out.uncommitted);
            }
        }
    }
    out
}

/// The model: every committed record exactly once, in order, then nothing
/// but a prefix of the uncommitted ones.
fn check_model(recovered: &[Record], outcome: &Outcome, context: &str) {
    let n = outcome.committed.len();
    assert!(
        recovered.len() >= n,
        "{context}: lost committed records ({} recovered, {n} committed)",
        recovered.len()
    );
    assert!(
        recovered[..n] == outcome.committed[..],
        "{context}: committed records differ"
    );
    let extra = &recovered[n..];
    assert!(
        extra.len() <= outcome.uncommitted.len() && extra[..] == outcome.uncommitted[..extra.len()],
        "{context}: records beyond the committed ones are not a prefix of the uncommitted"
    );
}

fn recover(
    storage: MemStorage,
    opts: LogOptions,
) -> Result<(Log, RecoveryReport, Vec<Record>), LogError> {
    let (mut log, report) = Log::open_with(Box::new(storage), opts)?;
    let records = read_all(&mut log);
    assert_eq!(report.record_count, records.len() as u64);
    Ok((log, report, records))
}

/// After recovery the log takes appends, and they survive a reopen.
fn check_appendable(mut log: Log, recovered: &[Record], disk: &MemDisk, context: &str) {
    let marker = Record::Event {
        seq: u64::MAX,
        at_ms: 0,
        topic: "after-recovery".to_owned(),
        payload_json: String::new(),
    };
    log.append(&marker).unwrap();
    log.commit().unwrap();
    drop(log);
    let (_, _, again) = recover(disk.crash(0), MODEL_OPTS).unwrap();
    assert_eq!(again.len(), recovered.len() + 1, "{context}");
    assert_eq!(&again[..recovered.len()], recovered, "{context}");
    assert_eq!(again.last(), Some(&marker), "{context}");
}

#[test]
fn crash_at_every_sync_point_and_every_byte_of_the_last_record() {
    let seeds: &[u64] = if slow_tests() {
        &[1, 2, 3, 4, 5, 6]
    } else {
        &[1, 2]
    };
    for &seed in seeds {
        let ops = workload(seed, 32);
        // A run without faults tells how many sync points there are.
        let clean = MemStorage::new();
        let clean_disk = clean.disk();
        let full = run_until_error(clean, &ops);
        assert_eq!(
            full.committed.len(),
            ops.iter().filter(|o| matches!(o, Op::Append(_))).count()
        );
        let sync_points = clean_disk.sync_points();
        assert!(
            sync_points > 30,
            "workload too small: {sync_points} sync points"
        );

        let mut images = 0u64;
        for halt_at in 0..=sync_points {
            let storage = MemStorage::new();
            let disk = storage.disk();
            disk.set_faults(Faults {
                halt_at_sync_point: Some(halt_at),
                ..Faults::default()
            });
            let outcome = run_until_error(storage, &ops);
            let lens = disk.pending_write_lens();
            let pending: u64 = lens.iter().sum();
            // Frames are written in three parts: the last record's bytes are
            // the last three pending writes.
            let last_record: u64 = lens.iter().rev().take(3).sum();
            let mut prefixes: Vec<u64> = (pending - last_record..=pending).collect();
            prefixes.push(0);
            let mut rng = Rng::new(seed ^ halt_at);
            for _ in 0..4 {
                prefixes.push(rng.below(pending + 1));
            }
            for (i, &prefix) in prefixes.iter().enumerate() {
                let context =
                    format!("seed {seed}, halt at sync {halt_at}, prefix {prefix}/{pending}");
                images += 1;
                let image = disk.crash(prefix);
                let image_disk = image.disk();
                let (log, report, recovered) =
                    recover(image, MODEL_OPTS).unwrap_or_else(|e| panic!("{context}: {e}"));
                check_model(&recovered, &outcome, &context);
                assert!(report.salvaged.is_empty());
                if i % 16 == 0 {
                    check_appendable(log, &recovered, &image_disk, &context);
                }
                // A crash while recovery zeroes the torn tail, at each of its
                // syncs, still recovers the same records.
                if report.torn_tail.is_some() && i % 5 == 0 {
                    for recovery_halt in 0..3 {
                        let image = disk.crash(prefix);
                        let image_disk = image.disk();
                        image_disk.set_faults(Faults {
                            halt_at_sync_point: Some(recovery_halt),
                            ..Faults::default()
                        });
                        // Recovery syncs at least twice (the header zeroing and
                        // the recovered segment); a third only for long tails.
                        let opened = Log::open_with(Box::new(image), MODEL_OPTS);
                        assert!(recovery_halt == 2 || opened.is_err(), "{context}");
                        drop(opened);
                        for keep in [0, u64::MAX] {
                            let (_, _, again) = recover(image_disk.crash(keep), MODEL_OPTS)
                                .unwrap_or_else(|e| {
                                    panic!("{context}, recovery halted at {recovery_halt}: {e}")
                                });
                            assert_eq!(
                                again, recovered,
                                "{context}, recovery halted at {recovery_halt}"
                            );
                        }
                    }
                }
            }
        }
        assert!(images > 500, "only {images} crash images");
    }
}

#[test]
fn records_recovered_from_a_killed_process_are_synced_before_new_appends() {
    let storage = MemStorage::new();
    let disk = storage.disk();
    let unsynced = LogOptions {
        sync_commits: false,
        ..MODEL_OPTS
    };
    let (mut log, _) = Log::open_with(Box::new(storage), unsynced).unwrap();
    let mut all = fill(&mut log, 0, 5);
    log.sync_all().unwrap();
    all.extend(fill(&mut log, 5, 5));
    log.commit().unwrap();
    drop(log);
    // Killed after handing the second batch to storage, before syncing it:
    // the next process sees it in the page cache and takes it as part of
    // the log...
    let image = disk.kill(u64::MAX);
    let image_disk = image.disk();
    let (mut log, _, recovered) = recover(image, MODEL_OPTS).unwrap();
    assert_eq!(recovered, all);
    all.extend(fill(&mut log, 10, 5));
    log.commit().unwrap();
    drop(log);
    // ...so a power loss now must not tear a hole before the new records.
    let (_, _, after) = recover(image_disk.crash(0), MODEL_OPTS).unwrap();
    assert_eq!(after, all);
}

#[test]
fn power_loss_reordering_is_recovered_or_reported_never_misread() {
    let ops = workload(7, 30);
    let clean = MemStorage::new();
    let sync_points = {
        let disk = clean.disk();
        run_until_error(clean, &ops);
        disk.sync_points()
    };
    let mut reported = 0;
    for halt_at in 0..=sync_points {
        let storage = MemStorage::new();
        let disk = storage.disk();
        disk.set_faults(Faults {
            halt_at_sync_point: Some(halt_at),
            ..Faults::default()
        });
        let outcome = run_until_error(storage, &ops);
        for seed in 0..8 {
            let context = format!("halt at {halt_at}, reorder seed {seed}");
            match recover(disk.crash_reordered(seed), MODEL_OPTS) {
                Ok((_, _, recovered)) => check_model(&recovered, &outcome, &context),
                Err(LogError::Corrupt { .. }) => {
                    reported += 1;
                    // Salvage keeps the records before the hole; everything
                    // dropped was unacknowledged.
                    let (_, report, recovered) =
                        recover(disk.crash_reordered(seed), SALVAGE_OPTS).unwrap();
                    assert_eq!(report.salvaged.len(), 1, "{context}");
                    check_model(&recovered, &outcome, &context);
                }
                Err(e) => panic!("{context}: {e}"),
            }
        }
    }
    assert!(reported > 0, "no reordering produced a non-prefix shape");
}

#[test]
fn appended_records_are_visible_before_commit_and_lost_only_if_uncommitted() {
    let storage = MemStorage::new();
    let disk = storage.disk();
    let (mut log, report) = Log::open_with(Box::new(storage), MODEL_OPTS).unwrap();
    assert_eq!(report.segment_count, 1);
    assert_eq!(report.record_count, 0);
    log.append(&shard_done(1)).unwrap();
    log.commit().unwrap();
    log.append(&shard_done(2)).unwrap();
    assert_eq!(read_all(&mut log), vec![shard_done(1), shard_done(2)]);
    assert_eq!(log.record_count(), 2);
    drop(log);
    let (_, report, recovered) = recover(disk.crash(0), MODEL_OPTS).unwrap();
    assert_eq!(recovered, vec![shard_done(1)]);
    assert_eq!(report.torn_tail, None);
}

#[test]
fn torn_tail_on_real_files_recovers_a_prefix_at_every_byte() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        segment_size_bytes: 64 * 1024,
        salvage: false,
        sync_commits: true,
    };
    let mut records: Vec<Record> = (0..1300).map(shard_done).collect();
    // The last few records: a failure with text, an event, a ShardDone.
    let mut rng = Rng::new(11);
    let tail_len = if slow_tests() { 8 } else { 3 };
    if slow_tests() {
        records.extend((0..tail_len).map(|i| random_record(&mut rng, 5000 + i)));
    } else {
        records.push(Record::ShardFailed {
            plan_id: [4; 16],
            leaf_index: 77,
            cas_id: [5; 32],
            attempts: 3,
            duration_us: 12,
            aborted: true,
            error: "cancelled".to_owned(),
        });
        records.push(Record::Event {
            seq: 1,
            at_ms: 2,
            topic: "hxo.plan".to_owned(),
            payload_json: "{}".to_owned(),
        });
        records.push(shard_done(9999));
    }
    {
        let (mut log, _) = Log::open(tmp.path(), opts.clone()).unwrap();
        for r in &records {
            log.append(r).unwrap();
        }
        log.commit().unwrap();
        assert!(log.segment_count() >= 3, "want several segments");
    }
    let mut segments: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segments.sort();
    let last_path = segments.last().unwrap().clone();
    let original = fs::read(&last_path).unwrap();
    let data_end =
        super::segment::scan(&original, format::FORMAT_VERSION, true, &mut |_| {}).data_end;
    // Frame ends of the last `tail_len` records, from the encoder.
    let mut frame = Vec::new();
    let tail = &records[records.len() - tail_len as usize..];
    let tail_bytes: usize = tail
        .iter()
        .map(|r| {
            encode_frame(r, &mut frame).unwrap();
            frame.len()
        })
        .sum();
    let tail_start = data_end - tail_bytes;
    let mut frame_ends = Vec::new();
    let mut at = tail_start;
    for r in tail {
        encode_frame(r, &mut frame).unwrap();
        at += frame.len();
        frame_ends.push(at);
    }
    let file = fs::OpenOptions::new().write(true).open(&last_path).unwrap();
    for cut in tail_start..data_end {
        file.write_all_at(&vec![0u8; data_end - cut], cut as u64)
            .unwrap();
        let (mut log, report) = Log::open(tmp.path(), opts.clone()).unwrap();
        let complete = frame_ends.iter().filter(|&&end| end <= cut).count();
        let expected = records.len() - tail.len() + complete;
        let recovered = read_all(&mut log);
        assert_eq!(recovered.len(), expected, "cut at {cut}");
        assert_eq!(recovered[..], records[..expected], "cut at {cut}");
        let frame_start = if complete == 0 {
            tail_start
        } else {
            frame_ends[complete - 1]
        };
        if cut == frame_start {
            assert_eq!(report.torn_tail, None, "cut at a frame boundary {cut}");
        } else {
            let torn = report.torn_tail.unwrap_or_else(|| {
                panic!(
                    "cut at {cut}: no torn tail; frame at {frame_start}: {:?}",
                    &original[frame_start..cut]
                )
            });
            assert_eq!(torn.offset as usize, frame_start, "cut at {cut}");
        }
        drop(log);
        // Recovery zeroed from the torn frame's start: restore all of it.
        file.write_all_at(&original[tail_start..data_end], tail_start as u64)
            .unwrap();
    }
    let (mut log, report) = Log::open(tmp.path(), opts).unwrap();
    assert_eq!(report.torn_tail, None);
    assert_eq!(read_all(&mut log), records);
}

/// Where each committed record's frame lies: (segment, start, end).
fn frame_table(disk: &MemDisk) -> Vec<(u64, usize, usize)> {
    let mut table = Vec::new();
    for index in disk.durable_segments() {
        let bytes = disk.durable_segment(index).unwrap();
        let mut pos = HEADER_LEN;
        while let format::FrameRead::Frame { end, .. } = format::read_frame(&bytes, pos) {
            table.push((index, pos, end));
            pos = end;
        }
    }
    table
}

#[test]
fn any_single_bit_flip_is_detected_and_salvage_continues() {
    let storage = MemStorage::new();
    let disk = storage.disk();
    let (mut log, _) = Log::open_with(Box::new(storage), MODEL_OPTS).unwrap();
    // Every record type, over and over, across several segments.
    let one_set = format::tests::one_of_each();
    let set_len = one_set.len();
    let records: Vec<Record> = (0..15).flat_map(|_| one_set.clone()).collect();
    for r in &records {
        log.append(r).unwrap();
    }
    log.commit().unwrap();
    drop(log);
    let table = frame_table(&disk);
    assert_eq!(table.len(), records.len());
    let segments = disk.durable_segments();
    assert!(
        segments.len() >= 3,
        "want several segments, got {}",
        segments.len()
    );
    let last_segment = *segments.last().unwrap();

    // Which bytes to flip: all of them under HXO_SLOW_TESTS. Else every bit
    // of one record of each type in the first segment and of the last
    // record of each type (the torn-tail rules live at the end of the last
    // segment), the segment headers, the bytes just after each segment's
    // data, and a random sample of the rest.
    let mut rng = Rng::new(3);
    let mut targets: Vec<(u64, usize)> = Vec::new();
    let frame_bytes =
        |&(index, start, end): &(u64, usize, usize)| (start..end).map(move |b| (index, b));
    if !slow_tests() {
        table[..set_len]
            .iter()
            .for_each(|f| targets.extend(frame_bytes(f)));
        table[table.len() - set_len..]
            .iter()
            .for_each(|f| targets.extend(frame_bytes(f)));
    }
    for &index in &segments {
        let bytes = disk.durable_segment(index).unwrap();
        if slow_tests() {
            targets.extend((0..bytes.len()).map(|b| (index, b)));
            continue;
        }
        let data_end = table
            .iter()
            .filter(|f| f.0 == index)
            .map(|f| f.2)
            .max()
            .unwrap_or(HEADER_LEN);
        targets.extend((0..HEADER_LEN).map(|b| (index, b)));
        targets.extend((data_end..(data_end + 32).min(bytes.len())).map(|b| (index, b)));
        for _ in 0..40 {
            targets.push((index, rng.below(bytes.len() as u64) as usize));
        }
    }

    let mut corrupt = 0u64;
    for (n, &(index, byte)) in targets.iter().enumerate() {
        for bit in 0..8u8 {
            let context = format!("segment {index} byte {byte} bit {bit}");
            let in_frame = table
                .iter()
                .position(|f| f.0 == index && (f.1..f.2).contains(&byte));
            match recover(disk.image_with_bit_flipped(index, byte, bit), MODEL_OPTS) {
                Ok((_, _, recovered)) => {
                    // Only a flip outside the written records may go
                    // unreported, and then nothing may change.
                    assert!(
                        in_frame.is_none() && byte >= HEADER_LEN,
                        "{context}: undetected"
                    );
                    assert_eq!(recovered, records, "{context}");
                }
                Err(LogError::Corrupt {
                    segment, offset, ..
                }) => {
                    corrupt += 1;
                    assert_eq!(segment, index, "{context}");
                    assert!(offset as usize <= byte, "{context}: offset {offset}");
                    // Salvage keeps everything but the damaged segment's
                    // records from the damage on.
                    if (n + usize::from(bit)) % 3 != 0 && !slow_tests() {
                        continue;
                    }
                    let image = disk.image_with_bit_flipped(index, byte, bit);
                    let (log, report, recovered) = recover(image, SALVAGE_OPTS).unwrap();
                    assert_eq!(report.salvaged.len(), 1, "{context}");
                    assert_eq!(report.salvaged[0].segment, index);
                    let dropped_from = match in_frame {
                        Some(i) => table.iter().position(|f| f.0 == index && f.1 >= table[i].1),
                        None if byte < HEADER_LEN => table.iter().position(|f| f.0 == index),
                        None => None,
                    };
                    let expected: Vec<Record> = records
                        .iter()
                        .zip(&table)
                        .enumerate()
                        .filter(|(i, (_, f))| {
                            f.0 != index || dropped_from.is_none_or(|from| *i < from)
                        })
                        .map(|(_, (r, _))| r.clone())
                        .collect();
                    assert_eq!(recovered, expected, "{context}");
                    if n % 37 == 0 {
                        // Appends never touch a damaged segment: after damage
                        // in the last one they go to a new segment.
                        let mut log = log;
                        let before = disk.durable_segment(index).unwrap();
                        log.append(&shard_done(999)).unwrap();
                        log.commit().unwrap();
                        let storage = log.into_storage();
                        let mut damaged = before;
                        damaged[byte] ^= 1 << bit;
                        assert_eq!(storage.bytes(index).unwrap(), &damaged[..], "{context}");
                        assert_eq!(
                            storage.bytes(last_segment + 1).is_some(),
                            index == last_segment,
                            "{context}"
                        );
                    }
                }
                Err(e) => panic!("{context}: {e}"),
            }
        }
    }
    assert!(corrupt > 1000, "only {corrupt} flips reported");
}

#[test]
fn salvaged_store_stays_damaged_until_compacted() {
    let tmp = tempfile::tempdir().unwrap();
    let records: Vec<Record> = (0..100).map(shard_done).collect();
    {
        let (mut log, _) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
        for r in &records {
            log.append(r).unwrap();
        }
        log.commit().unwrap();
    }
    // Flip a bit in the middle of segment 1.
    let path = tmp.path().join("00000001.seg");
    let mut bytes = fs::read(&path).unwrap();
    bytes[HEADER_LEN + 500] ^= 0x08;
    fs::write(&path, &bytes).unwrap();
    let err = Log::open(tmp.path(), MODEL_OPTS).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { segment: 1, .. }), "{err}");
    assert!(err
        .to_string()
        .starts_with("checkpoint log corrupt in segment 1 at offset "));
    // Nothing was rewritten.
    assert_eq!(fs::read(&path).unwrap(), bytes);
    let (mut log, report) = Log::open(tmp.path(), SALVAGE_OPTS).unwrap();
    assert_eq!(report.salvaged.len(), 1);
    let kept = read_all(&mut log);
    assert!(kept.len() < records.len());
    log.append(&shard_done(1000)).unwrap();
    log.commit().unwrap();
    drop(log);
    assert_eq!(
        fs::read(&path).unwrap(),
        bytes,
        "salvage never rewrites damage"
    );
    // Without salvage the damage is still reported.
    assert!(matches!(
        Log::open(tmp.path(), MODEL_OPTS),
        Err(LogError::Corrupt { segment: 1, .. })
    ));
    // A salvaging compaction writes a clean store.
    let report = super::compact(tmp.path(), SALVAGE_OPTS).unwrap();
    assert_eq!(report.salvaged.len(), 1);
    let (mut log, report) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
    assert!(report.salvaged.is_empty());
    let mut expected = kept;
    expected.push(shard_done(1000));
    assert_eq!(read_all(&mut log), expected);
}

#[test]
fn a_missing_segment_is_damage() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
        for i in 0..120 {
            log.append(&shard_done(i)).unwrap();
        }
        log.commit().unwrap();
        assert!(log.segment_count() >= 4);
    }
    fs::remove_file(tmp.path().join("00000001.seg")).unwrap();
    assert!(matches!(
        Log::open(tmp.path(), MODEL_OPTS),
        Err(LogError::Corrupt {
            segment: 1,
            offset: 0,
            ..
        })
    ));
    let (log, report) = Log::open(tmp.path(), SALVAGE_OPTS).unwrap();
    assert_eq!(report.salvaged[0].segment, 1);
    assert!(log.record_count() < 120 && log.record_count() > 60);
}

#[test]
fn a_truncated_segment_file_is_damage() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let (mut log, _) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
        for i in 0..80 {
            log.append(&shard_done(i)).unwrap();
        }
        log.commit().unwrap();
    }
    let path = tmp.path().join("00000001.seg");
    for len in [0, 10, 2048] {
        fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len)
            .unwrap();
        let err = Log::open(tmp.path(), MODEL_OPTS).unwrap_err();
        match err {
            LogError::Corrupt {
                segment: 1,
                offset: 0,
                reason,
            } => {
                assert!(reason.starts_with("bad segment header"), "{reason}");
            }
            other => panic!("truncated to {len}: {other}"),
        }
    }
    let (log, report) = Log::open(tmp.path(), SALVAGE_OPTS).unwrap();
    assert_eq!(report.salvaged[0].segment, 1);
    assert!(log.record_count() > 0);
}

fn fill(log: &mut Log, from: u64, n: u64) -> Vec<Record> {
    let batch: Vec<Record> = (from..from + n).map(shard_done).collect();
    for r in &batch {
        log.append(r).unwrap();
    }
    batch
}

#[test]
fn full_disk_at_sync_poisons_and_a_reopen_keeps_everything_committed() {
    let storage = MemStorage::new();
    let disk = storage.disk();
    let (mut log, _) = Log::open_with(Box::new(storage), MODEL_OPTS).unwrap();
    let mut committed = fill(&mut log, 0, 10);
    log.commit().unwrap();
    // The next sync fails; everything after it is refused, without retry.
    let syncs_so_far = 1;
    disk.set_faults(Faults {
        fail_sync_at: Some(syncs_so_far),
        ..Faults::default()
    });
    let lost = fill(&mut log, 10, 5);
    let err = log.commit().unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    assert!(err.to_string().contains("syncing segment 0"), "{err}");
    assert!(log.is_poisoned());
    assert!(matches!(
        log.append(&shard_done(99)),
        Err(LogError::Poisoned)
    ));
    assert!(matches!(log.commit(), Err(LogError::Poisoned)));
    assert!(matches!(
        log.for_each_record(&mut |_| {}),
        Err(LogError::Poisoned)
    ));
    drop(log);
    let outcome = Outcome {
        committed: committed.clone(),
        uncommitted: lost,
    };
    for prefix in [0, u64::MAX] {
        let (log, _, recovered) = recover(disk.crash(prefix), MODEL_OPTS).unwrap();
        check_model(&recovered, &outcome, "after a failed sync");
        drop(log);
    }
    let image = disk.crash(0);
    let image_disk = image.disk();
    let (mut log, _) = Log::open_with(Box::new(image), MODEL_OPTS).unwrap();
    committed.extend(fill(&mut log, 100, 3));
    log.commit().unwrap();
    drop(log);
    let (_, _, recovered) = recover(image_disk.crash(0), MODEL_OPTS).unwrap();
    assert_eq!(recovered, committed);
}

#[test]
fn full_disk_at_preallocation_is_a_clear_error() {
    let storage = MemStorage::new();
    let disk = storage.disk();
    // Creation 0 is the first segment; creation 1, the rollover, fails.
    disk.set_faults(Faults {
        fail_create_at: Some(1),
        ..Faults::default()
    });
    let (mut log, _) = Log::open_with(Box::new(storage), MODEL_OPTS).unwrap();
    let mut appended = Vec::new();
    let err = loop {
        let r = shard_done(appended.len() as u64);
        match log.append(&r) {
            Ok(()) => appended.push(r),
            Err(e) => break e,
        }
        if appended.len() % 10 == 0 {
            log.commit().unwrap();
        }
    };
    let source = std::error::Error::source(&err).unwrap().to_string();
    assert!(
        err.to_string()
            .contains("preallocating segment 1 (4096 bytes)"),
        "{err}"
    );
    assert!(source.contains("No space left on device"), "{source}");
    assert!(matches!(log.commit(), Err(LogError::Poisoned)));
    drop(log);
    // The rollover synced segment 0 to its end before failing.
    let (mut log, _, recovered) = recover(disk.crash(0), MODEL_OPTS).unwrap();
    assert_eq!(recovered, appended);
    log.append(&shard_done(500)).unwrap();
    log.commit().unwrap();
}

#[test]
fn a_failed_write_poisons() {
    let storage = MemStorage::new();
    let disk = storage.disk();
    let (mut log, _) = Log::open_with(Box::new(storage), MODEL_OPTS).unwrap();
    // Appends are handed to storage in one write per commit: the first
    // commit's write succeeds, the second one's fails.
    disk.set_faults(Faults {
        fail_write_at: Some(1),
        ..Faults::default()
    });
    log.append(&shard_done(0)).unwrap();
    log.commit().unwrap();
    log.append(&shard_done(1)).unwrap();
    assert!(matches!(log.commit(), Err(LogError::Io { .. })));
    assert!(matches!(
        log.append(&shard_done(2)),
        Err(LogError::Poisoned)
    ));
    drop(log);
    let (_, _, recovered) = recover(disk.crash(u64::MAX), MODEL_OPTS).unwrap();
    assert_eq!(recovered, vec![shard_done(0)]);
}

#[test]
fn refused_records_do_not_poison() {
    let (mut log, _) = Log::open_with(Box::new(MemStorage::new()), MODEL_OPTS).unwrap();
    let big = Record::PlanAccepted {
        plan_id: [0; 16],
        accepted_at_ms: 0,
        shard_count: 0,
        manifest_json: "x".repeat(5000),
    };
    assert!(matches!(
        log.append(&big),
        Err(LogError::RecordTooLarge {
            capacity_bytes: 4032,
            ..
        })
    ));
    let long = Record::PlanReplayed {
        plan_id: [0; 16],
        at_ms: 0,
        actor: "x".repeat(300),
    };
    let err = log.append(&long).unwrap_err();
    assert_eq!(
        err.to_string(),
        "record field actor is 300 bytes, over its limit of 256"
    );
    log.append(&shard_done(1)).unwrap();
    log.commit().unwrap();
    assert_eq!(read_all(&mut log), vec![shard_done(1)]);
}

#[test]
fn options_are_validated() {
    for size in [0, 4095, 4097, 2 * 1024 * 1024 * 1024] {
        let opts = LogOptions {
            segment_size_bytes: size,
            salvage: false,
            sync_commits: true,
        };
        assert!(matches!(
            Log::open_with(Box::new(MemStorage::new()), opts),
            Err(LogError::InvalidOptions { .. })
        ));
    }
}

#[test]
fn segment_size_is_per_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let small = MODEL_OPTS;
    let large = LogOptions {
        segment_size_bytes: 16 * 1024,
        salvage: false,
        sync_commits: true,
    };
    let (mut log, _) = Log::open(tmp.path(), small.clone()).unwrap();
    let mut all = fill(&mut log, 0, 50);
    log.commit().unwrap();
    drop(log);
    let (mut log, _) = Log::open(tmp.path(), large.clone()).unwrap();
    all.extend(fill(&mut log, 50, 300));
    log.commit().unwrap();
    drop(log);
    let (mut log, _) = Log::open(tmp.path(), small).unwrap();
    assert_eq!(read_all(&mut log), all);
    let sizes: Vec<u64> = {
        let mut v: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .map(|e| (e.file_name(), e.metadata().unwrap().len()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, len)| len).collect()
    };
    assert!(
        sizes.contains(&4096) && sizes.contains(&(16 * 1024)),
        "{sizes:?}"
    );
}

#[test]
fn an_unknown_format_version_is_refused_even_when_salvaging() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut log, _) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
    fill(&mut log, 0, 3);
    log.commit().unwrap();
    drop(log);
    let path = tmp.path().join("00000000.seg");
    let bytes = fs::read(&path).unwrap();
    for version in [0, format::FORMAT_VERSION + 1] {
        let mut header = format::SegmentHeader::parse(&bytes, 0, 4096)
            .unwrap()
            .encode();
        header[format::HEADER_VERSION_OFFSET..format::HEADER_LEN_OFFSET]
            .copy_from_slice(&version.to_le_bytes());
        let crc = crc32c::crc32c(&header[..format::HEADER_CRC_OFFSET]);
        header[format::HEADER_CRC_OFFSET..format::HEADER_USED_END]
            .copy_from_slice(&crc.to_le_bytes());
        let mut image = disk_image(&bytes);
        image.write_at(0, 0, &header).unwrap();
        let err = Log::open_with(Box::new(image), SALVAGE_OPTS).unwrap_err();
        assert!(
            matches!(err, LogError::UnsupportedVersion { segment: 0, version: v } if v == version),
            "{err}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "checkpoint segment 0 has format version {version}, this build reads versions 1 to 2"
            )
        );
        // A reader without the lock refuses it too.
        fs::write(&path, [&header[..], &bytes[format::HEADER_LEN..]].concat()).unwrap();
        let err = super::read_only_scan(tmp.path(), true, super::TailCheck::Zeros, &mut |_| {})
            .unwrap_err();
        assert!(
            matches!(err, LogError::UnsupportedVersion { segment: 0, version: v } if v == version),
            "{err}"
        );
    }
}

/// A storage holding one segment, `bytes`, as it was on disk.
fn disk_image(bytes: &[u8]) -> MemStorage {
    let mut storage = MemStorage::new();
    storage
        .create_segment(0, bytes.len() as u64, bytes)
        .unwrap();
    storage
}

#[test]
fn a_second_open_of_the_store_fails_naming_this_pid() {
    let tmp = tempfile::tempdir().unwrap();
    let (_log, _) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
    let err = Log::open(tmp.path(), MODEL_OPTS).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "checkpoint store {} locked by pid {}",
            tmp.path().display(),
            std::process::id()
        )
    );
}

// ---- Golden stores -----------------------------------------------------

/// The golden store written by a version-1 build: kept byte for byte.
const GOLDEN_V1_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/logs/v1");
/// The golden store written by this build's version.
const GOLDEN_V2_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/logs/v2");

/// The records of the golden v1 store: one of each version-1 type, then
/// enough `ShardDone`s to roll over into a second 4 KiB segment.
fn golden_v1_records() -> Vec<Record> {
    let mut records = format::tests::one_of_each_v1();
    records.extend((0..40).map(|i| shard_done_with(5, i, 1)));
    records
}

/// What this build reads from the golden v1 store: its records, each
/// followed by the typed record its upgrade yields (none: it holds no
/// lifecycle event, which the golden v1 test checks too).
fn golden_v1_read() -> Vec<Record> {
    golden_v1_records()
        .into_iter()
        .flat_map(|r| {
            let typed = super::upgrade::upgrade(1, &r);
            std::iter::once(r).chain(typed)
        })
        .collect()
}

/// The records of the golden v2 store: one of every type, then the same
/// `ShardDone`s as in v1.
fn golden_v2_records() -> Vec<Record> {
    let mut records = format::tests::one_of_each();
    records.extend((0..40).map(|i| shard_done_with(5, i, 1)));
    records
}

fn golden_files(dir: &str) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// A copy of a golden store in a fresh directory (the fixture is never
/// opened for writing).
fn golden_copy(dir: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for (name, bytes) in golden_files(dir) {
        fs::write(tmp.path().join(name), bytes).unwrap();
    }
    tmp
}

/// Writes the golden store of this build's version. Run once per format
/// version, by hand: `HXO_REGEN_GOLDEN=1 cargo test golden_v2`, then commit
/// the files. A golden store of an older version is never rewritten.
fn regenerate_golden_v2(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for entry in fs::read_dir(dir).unwrap() {
        fs::remove_file(entry.unwrap().path()).unwrap();
    }
    {
        let (mut log, _) = Log::open(dir, MODEL_OPTS).unwrap();
        for r in golden_v2_records() {
            log.append(&r).unwrap();
        }
        log.commit().unwrap();
    }
    fs::remove_file(dir.join(super::lock::LOCK_FILE_NAME)).unwrap();
}

/// Header versions of the segment files of `dir`, in index order.
fn segment_versions(dir: &Path) -> Vec<u32> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let bytes = fs::read(p).unwrap();
            u32::from_le_bytes(
                bytes[format::HEADER_VERSION_OFFSET..format::HEADER_LEN_OFFSET]
                    .try_into()
                    .unwrap(),
            )
        })
        .collect()
}

#[test]
fn golden_v1_store_still_recovers() {
    let files = golden_files(GOLDEN_V1_DIR);
    assert_eq!(files.len(), 2, "the golden v1 store has two segments");
    let tmp = golden_copy(GOLDEN_V1_DIR);
    assert_eq!(segment_versions(tmp.path()), [1, 1]);
    let (mut log, report) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
    assert_eq!(report.torn_tail, None);
    assert!(report.salvaged.is_empty());
    assert_eq!(report.segment_count, 2);
    let expected = golden_v1_read();
    assert_eq!(expected, golden_v1_records(), "no lifecycle event in it");
    assert_eq!(report.record_count, expected.len() as u64);
    assert_eq!(read_all(&mut log), expected);
    drop(log);
    let mut read = Vec::new();
    super::read_only_scan(tmp.path(), false, super::TailCheck::Zeros, &mut |r| {
        read.push(r)
    })
    .unwrap();
    assert_eq!(read, expected);
    // Opening and reading wrote nothing.
    assert_eq!(golden_files(tmp.path().to_str().unwrap()), files);
}

#[test]
fn golden_v2_store_still_recovers() {
    if std::env::var("HXO_REGEN_GOLDEN").is_ok_and(|v| v == "1") {
        regenerate_golden_v2(Path::new(GOLDEN_V2_DIR));
    }
    let files = golden_files(GOLDEN_V2_DIR);
    assert_eq!(files.len(), 2, "the golden v2 store has two segments");
    let tmp = golden_copy(GOLDEN_V2_DIR);
    assert_eq!(segment_versions(tmp.path()), [2, 2]);
    let (mut log, report) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
    assert_eq!(report.torn_tail, None);
    assert!(report.salvaged.is_empty());
    assert_eq!(report.segment_count, 2);
    assert_eq!(read_all(&mut log), golden_v2_records());
}

#[test]
fn this_writer_still_writes_v2_bytes() {
    // Bump FORMAT_VERSION and this test changes on purpose (a new golden
    // store); the golden tests above must keep passing forever.
    let storage = MemStorage::new();
    let disk = storage.disk();
    let (mut log, _) = Log::open_with(Box::new(storage), MODEL_OPTS).unwrap();
    for r in golden_v2_records() {
        log.append(&r).unwrap();
    }
    log.commit().unwrap();
    let written: Vec<Vec<u8>> = disk
        .durable_segments()
        .into_iter()
        .map(|i| disk.durable_segment(i).unwrap())
        .collect();
    let golden: Vec<Vec<u8>> = golden_files(GOLDEN_V2_DIR)
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    assert!(
        written == golden,
        "the writer's bytes differ from fixtures/logs/v2"
    );
}

#[test]
fn appends_to_a_v1_store_go_to_a_new_v2_segment() {
    let tmp = golden_copy(GOLDEN_V1_DIR);
    let v1_files = golden_files(GOLDEN_V1_DIR);
    let mut expected = golden_v1_read();
    let (mut log, _) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
    // Opening alone creates nothing.
    assert_eq!(log.segment_count(), 2);
    let appended = [
        shard_done_with(6, 0, 1),
        Record::PlanHeld {
            plan_id: [6; 16],
            at_ms: 7,
        },
    ];
    for r in &appended {
        log.append(r).unwrap();
    }
    log.commit().unwrap();
    expected.extend(appended.iter().cloned());
    assert_eq!(log.segment_count(), 3);
    assert_eq!(read_all(&mut log), expected);
    drop(log);
    // The v1 segments are untouched, though the last one had room.
    assert_eq!(segment_versions(tmp.path()), [1, 1, 2]);
    let now = golden_files(tmp.path().to_str().unwrap());
    assert_eq!(now[..2], v1_files[..]);
    let (mut log, report) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
    assert_eq!(report.record_count, expected.len() as u64);
    assert_eq!(read_all(&mut log), expected);
    // Later appends stay in the v2 segment.
    log.append(&shard_done_with(6, 1, 1)).unwrap();
    log.commit().unwrap();
    assert_eq!(log.segment_count(), 3);
}

// ---- Version-1 stores and the lifecycle upgrade -------------------------

/// Writes `segments` into `dir` as a version-1 build wrote them: one 4 KiB
/// segment file per slice, generation 0. Frames of types 1 to 9 are the
/// same bytes in both versions (the golden stores show it), so only the
/// header differs from what this build writes.
fn write_v1_store(dir: &Path, segments: &[&[Record]]) {
    for (index, records) in segments.iter().enumerate() {
        let header = format::SegmentHeader {
            version: 1,
            ..format::SegmentHeader::new(index as u64, 4096, 0)
        };
        let mut bytes = header.encode().to_vec();
        let mut frame = Vec::new();
        for r in *records {
            encode_frame(r, &mut frame).unwrap();
            bytes.extend_from_slice(&frame);
        }
        assert!(bytes.len() <= 4096, "segment {index} overflows");
        bytes.resize(4096, 0);
        fs::write(
            dir.join(super::storage::segment_file_name(index as u64)),
            bytes,
        )
        .unwrap();
    }
}

const LIFECYCLE_PLAN: &str = "0c0ffee0-1234-4abc-8def-0123456789ab";

fn lifecycle_plan_id() -> format::PlanId {
    uuid::Uuid::parse_str(LIFECYCLE_PLAN).unwrap().into_bytes()
}

/// A `ShardDone` of the lifecycle plan.
fn lifecycle_done(leaf_index: u64) -> Record {
    let Record::ShardDone {
        cas_id,
        output_digest,
        attempts,
        duration_us,
        ..
    } = shard_done(leaf_index)
    else {
        unreachable!()
    };
    Record::ShardDone {
        plan_id: lifecycle_plan_id(),
        leaf_index,
        cas_id,
        output_digest,
        attempts,
        duration_us,
    }
}

fn plan_event(seq: u64, payload_json: String) -> Record {
    Record::Event {
        seq,
        at_ms: 1000 + seq,
        topic: "hxo.plan".to_owned(),
        payload_json,
    }
}

fn status_event(seq: u64, status: &str) -> Record {
    plan_event(
        seq,
        format!(
            r#"{{"plan_id":"{LIFECYCLE_PLAN}","status":"{status}","submitted_by":"ops","total_shards":2}}"#
        ),
    )
}

/// A version-1 history with an event of every lifecycle status (and some
/// that stand for nothing), over two segments, and what a reader of this
/// build sees: each lifecycle event followed by its typed record.
fn v1_lifecycle_history() -> (Vec<Record>, Vec<Record>, Vec<Record>) {
    let plan_id = lifecycle_plan_id();
    let root = crate::hash::sha256(b"lifecycle root");
    let accepted = Record::PlanAccepted {
        plan_id,
        accepted_at_ms: 999,
        shard_count: 2,
        manifest_json: "{}".to_owned(),
    };
    let certify = Record::Event {
        seq: 9,
        at_ms: 1009,
        topic: "hxo.aggregate.certify".to_owned(),
        payload_json: format!(
            r#"{{"plan_id":"{LIFECYCLE_PLAN}","root":"{}","tree_size":2,"truth_certified":true,"proofs_checked":2}}"#,
            crate::hash::to_hex(&root)
        ),
    };
    let first = vec![
        accepted.clone(),
        status_event(1, "created"),
        status_event(2, "submitted"),
        status_event(3, "running"),
        lifecycle_done(0),
        status_event(4, "interrupted"),
        plan_event(5, "not json".to_owned()),
    ];
    let second = vec![
        status_event(6, "rehydrated"),
        lifecycle_done(1),
        certify.clone(),
        Record::PlanFinished {
            plan_id,
            at_ms: 1010,
            tree_size: 2,
            root,
            done_count: 2,
            failed_count: 0,
        },
    ];
    let at = |seq: u64| 1000 + seq;
    let expected = vec![
        accepted,
        status_event(1, "created"),
        Record::PlanHeld {
            plan_id,
            at_ms: at(1),
        },
        status_event(2, "submitted"),
        Record::PlanSubmitted {
            plan_id,
            at_ms: at(2),
            actor: "ops".to_owned(),
        },
        status_event(3, "running"),
        Record::PlanRunStarted {
            plan_id,
            at_ms: at(3),
            cause: format::RunCause::Start,
        },
        lifecycle_done(0),
        status_event(4, "interrupted"),
        plan_event(5, "not json".to_owned()),
        status_event(6, "rehydrated"),
        Record::PlanRunStarted {
            plan_id,
            at_ms: at(6),
            cause: format::RunCause::Resume,
        },
        lifecycle_done(1),
        certify,
        Record::PlanCertified {
            plan_id,
            at_ms: at(9),
            tree_size: 2,
            root,
            certified: true,
            proofs_checked: 2,
        },
        second[3].clone(),
    ];
    (first, second, expected)
}

fn read_only_all(dir: &Path) -> (RecoveryReport, Vec<Record>) {
    let mut records = Vec::new();
    let report = super::read_only_scan(dir, false, super::TailCheck::Zeros, &mut |r| {
        records.push(r)
    })
    .unwrap();
    (report, records)
}

#[test]
fn a_v1_store_reads_back_its_lifecycle_events_as_typed_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second, expected) = v1_lifecycle_history();
    write_v1_store(tmp.path(), &[&first, &second]);
    // Every record-level read: the owner's recovery and for_each_record...
    let (mut log, report) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
    assert_eq!(report.record_count, expected.len() as u64);
    assert_eq!(log.record_count(), expected.len() as u64);
    assert_eq!(read_all(&mut log), expected);
    drop(log);
    // ...and a reader without the lock.
    let (report, read) = read_only_all(tmp.path());
    assert_eq!(read, expected);
    assert_eq!(report.record_count, expected.len() as u64);
    // Frame-level scans see the frames as written.
    let mut frames = 0u64;
    let report =
        super::read_only_scan_frames(tmp.path(), false, super::TailCheck::Zeros, &mut |_, _| {
            frames += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(frames, (first.len() + second.len()) as u64);
    assert_eq!(report.record_count, frames);
}

#[test]
fn v2_events_are_never_upgraded() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, second, _) = v1_lifecycle_history();
    let (mut log, _) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
    for r in first.iter().chain(&second) {
        log.append(r).unwrap();
    }
    log.commit().unwrap();
    let written: Vec<Record> = first.iter().chain(&second).cloned().collect();
    assert_eq!(read_all(&mut log), written);
    drop(log);
    assert_eq!(read_only_all(tmp.path()).1, written);
    let (mut log, _) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
    assert_eq!(read_all(&mut log), written);
}

#[test]
fn a_v2_record_type_in_a_v1_segment_is_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let held = Record::PlanHeld {
        plan_id: [1; 16],
        at_ms: 2,
    };
    write_v1_store(tmp.path(), &[&[shard_done(0), held]]);
    let offset = (format::HEADER_LEN
        + format::FRAME_OVERHEAD
        + format::SHARD_DONE_PAYLOAD_LEN as usize) as u64;
    let check = |err: LogError| match err {
        LogError::Corrupt {
            segment: 0,
            offset: at,
            reason,
        } => {
            assert_eq!(at, offset);
            assert!(
                reason.contains("record type 10 does not exist in format version 1"),
                "{reason}"
            );
        }
        other => panic!("{other}"),
    };
    check(Log::open(tmp.path(), MODEL_OPTS).unwrap_err());
    check(
        super::read_only_scan(tmp.path(), false, super::TailCheck::Zeros, &mut |_| {}).unwrap_err(),
    );
    check(
        super::read_only_scan_frames(tmp.path(), false, super::TailCheck::Zeros, &mut |_, _| {
            Ok(())
        })
        .unwrap_err(),
    );
    // Salvage keeps the record before it and appends to a new v2 segment.
    let (mut log, report) = Log::open(tmp.path(), SALVAGE_OPTS).unwrap();
    assert_eq!(report.salvaged.len(), 1);
    assert_eq!(read_all(&mut log), vec![shard_done(0)]);
}

#[test]
fn compacting_a_v1_store_keeps_its_lifecycle_as_typed_records_in_v2() {
    let tmp = tempfile::tempdir().unwrap();
    let (first, mut second, mut expected) = v1_lifecycle_history();
    // A superseded outcome, so that compaction has something to drop.
    let plan_id = lifecycle_plan_id();
    let superseded = Record::ShardFailed {
        plan_id,
        leaf_index: 1,
        cas_id: [1; 32],
        attempts: 1,
        duration_us: 5,
        aborted: false,
        error: "first try".to_owned(),
    };
    second.insert(0, superseded.clone());
    write_v1_store(tmp.path(), &[&first, &second]);
    let (mut log, _) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
    let before = read_all(&mut log);
    drop(log);
    assert!(before.contains(&superseded));
    let report = super::compact(tmp.path(), MODEL_OPTS).unwrap();
    assert_eq!(report.records_before, before.len() as u64);
    assert_eq!(report.records_after, expected.len() as u64);
    assert!(segment_versions(tmp.path()).iter().all(|&v| v == 2));
    // The compacted store holds the events and their typed records as
    // written records, read once (version 2 is never upgraded again).
    let (mut log, recovery) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
    assert_eq!(recovery.record_count, expected.len() as u64);
    assert_eq!(read_all(&mut log), expected);
    drop(log);
    assert_eq!(read_only_all(tmp.path()).1, expected);
    let mut frames = 0usize;
    super::read_only_scan_frames(tmp.path(), false, super::TailCheck::Zeros, &mut |_, _| {
        frames += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(frames, expected.len());
    // And it takes appends like any store.
    let (mut log, _) = Log::open(tmp.path(), MODEL_OPTS).unwrap();
    log.append(&shard_done(7)).unwrap();
    log.commit().unwrap();
    expected.push(shard_done(7));
    assert_eq!(read_all(&mut log), expected);
}
