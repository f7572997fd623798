//! Compaction (`hxo gc`): rewrites a store without superseded shard
//! outcomes, switching from the old segments to the new ones atomically.
//!
//! Kept: every record except (1) a `ShardDone`/`ShardFailed` that a later
//! outcome of the same `(plan_id, leaf_index)` supersedes, and (2)
//! `ShardSplit`/`SubShardDone` of a shard whose latest outcome is
//! `ShardDone` (the pieces no longer matter once the whole is done). Order
//! is preserved. The engine's view after replaying the compacted log is the
//! same as before.
//!
//! The new store is written in this build's format version. Compaction
//! reads the old one through [`Log::for_each_record`], so a version-1
//! store's lifecycle events come with the typed records they stand for
//! (see [`super::upgrade`]); both are written, and the compacted store
//! keeps its lifecycle facts as typed records as well as its events.
//!
//! # Crash safety
//!
//! Every segment header carries the store's generation; the new store gets
//! the old generation + 1. The steps, each durable before the next:
//!
//! 1. Write the new store into `dir/compact.tmp/` (a fresh `Log` over its
//!    own `FsStorage`; creation syncs each segment, a final commit syncs
//!    the last one).
//! 2. Rename `compact.tmp` to `compact.ready`, fsync `dir`. **Commit
//!    point**: from here on the new store is the store.
//! 3. Remove every `dir/*.seg` (all of the old generation), fsync `dir`.
//! 4. Move each `compact.ready/*.seg` into `dir`, fsync `dir`; remove
//!    `compact.ready`, fsync `dir`.
//!
//! `finish_interrupted`, which every open runs under the lock, undoes a
//! crash before the commit point (deletes `compact.tmp`: the old store was
//! never touched) and redoes steps 3 and 4 after it. Redoing is idempotent:
//! a segment file in `dir` is old unless its header has the new generation
//! (only already-moved new segments do). A crash at any instant thus leaves
//! either the old or the new store readable, never a mix.
//!
//! Compaction holds the store lock throughout.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use super::format::{PlanId, Record, SegmentHeader, HEADER_LEN};
use super::limits::COMPACT_COMMIT_RECORDS_MAX;
use super::lock::StoreLock;
use super::storage::{segment_file_name, sync_dir_path, FsStorage};
use super::{Damage, Log, LogError, LogOptions};

/// Staging directory of a compaction in progress (not yet committed).
pub const STAGING_DIR_NAME: &str = "compact.tmp";
/// Directory of a committed compaction whose switch is not finished.
pub const READY_DIR_NAME: &str = "compact.ready";

/// What a compaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactReport {
    pub records_before: u64,
    pub records_after: u64,
    pub segments_before: u64,
    pub segments_after: u64,
    /// Generation of the new store.
    pub generation: u64,
    /// Damage skipped while reading the old store (salvage mode only); the
    /// new store no longer contains it.
    pub salvaged: Vec<Damage>,
}

/// Compacts the store in `dir`. Takes the store lock, so it fails with
/// `Locked` while a run owns the store.
pub fn compact(dir: &Path, opts: LogOptions) -> Result<CompactReport, LogError> {
    let report = compact_with_crash(dir, opts, None)?;
    Ok(report.expect("runs to the end when no crash is injected"))
}

fn io_err(dir: &Path, op: &str, source: io::Error) -> LogError {
    LogError::Io {
        store: dir.display().to_string(),
        op: op.to_owned(),
        source,
    }
}

/// Counts the steps of a compaction and stops ("crashes") after the one a
/// test asks for.
struct Steps {
    done: u32,
    crash_after: Option<u32>,
}

impl Steps {
    /// Records that a step finished; true when the run must stop now.
    fn stop(&mut self) -> bool {
        self.done += 1;
        self.crash_after.is_some_and(|n| self.done > n)
    }
}

/// `compact`, returning `Ok(None)` when it stopped after step
/// `crash_after` (a simulated crash: files are left as they are).
pub(crate) fn compact_with_crash(
    dir: &Path,
    opts: LogOptions,
    crash_after: Option<u32>,
) -> Result<Option<CompactReport>, LogError> {
    let mut steps = Steps {
        done: 0,
        crash_after,
    };
    let _lock = StoreLock::acquire(dir)?;
    finish_interrupted(dir)?;
    let storage = FsStorage::open(dir).map_err(|e| io_err(dir, "opening the store", e))?;
    let (mut old, recovery) = Log::open_inner(Box::new(storage), opts.clone(), None, 0)?;
    let keep = records_to_keep(&mut old)?;

    let staging = dir.join(STAGING_DIR_NAME);
    let new_storage =
        FsStorage::open(&staging).map_err(|e| io_err(dir, "creating the staging directory", e))?;
    let new_opts = LogOptions {
        salvage: false,
        ..opts
    };
    let (mut new, _) =
        Log::open_inner(Box::new(new_storage), new_opts, None, old.generation() + 1)?;
    let mut position = 0usize;
    let mut pending = 0usize;
    let mut first_error: Option<LogError> = None;
    old.for_each_record(&mut |record| {
        let kept = keep[position];
        position += 1;
        if !kept || first_error.is_some() {
            return;
        }
        let result = new.append(&record).and_then(|()| {
            pending += 1;
            if pending == COMPACT_COMMIT_RECORDS_MAX {
                pending = 0;
                new.commit()
            } else {
                Ok(())
            }
        });
        if let Err(e) = result {
            first_error = Some(e);
        }
    })?;
    if let Some(e) = first_error {
        return Err(e);
    }
    // Durable before the swap, whatever `sync_commits` says: the old
    // segments are removed once the new ones are in place.
    new.sync_all()?;
    let report = CompactReport {
        records_before: old.record_count(),
        records_after: new.record_count(),
        segments_before: old.segment_count(),
        segments_after: new.segment_count(),
        generation: new.generation(),
        salvaged: recovery.salvaged,
    };
    drop(new);
    drop(old);
    if steps.stop() {
        return Ok(None);
    }

    // The commit point.
    let ready = dir.join(READY_DIR_NAME);
    fs::rename(&staging, &ready).map_err(|e| io_err(dir, "publishing the compacted store", e))?;
    sync_dir_path(dir).map_err(|e| io_err(dir, "syncing the store directory", e))?;
    if steps.stop() {
        return Ok(None);
    }
    if !roll_forward(dir, &mut steps)? {
        return Ok(None);
    }
    Ok(Some(report))
}

/// Per record of `log`, in order, whether compaction keeps it.
fn records_to_keep(log: &mut Log) -> Result<Vec<bool>, LogError> {
    #[derive(Clone, Copy)]
    struct Latest {
        position: usize,
        done: bool,
    }
    let mut latest: HashMap<(PlanId, u64), Latest> = HashMap::new();
    let mut position = 0usize;
    log.for_each_record(&mut |record| {
        match record {
            Record::ShardDone {
                plan_id,
                leaf_index,
                ..
            } => {
                latest.insert(
                    (plan_id, leaf_index),
                    Latest {
                        position,
                        done: true,
                    },
                );
            }
            Record::ShardFailed {
                plan_id,
                leaf_index,
                ..
            } => {
                latest.insert(
                    (plan_id, leaf_index),
                    Latest {
                        position,
                        done: false,
                    },
                );
            }
            _ => {}
        }
        position += 1;
    })?;
    let mut keep = Vec::with_capacity(position);
    log.for_each_record(&mut |record| {
        let position = keep.len();
        let kept = match record {
            Record::ShardDone {
                plan_id,
                leaf_index,
                ..
            }
            | Record::ShardFailed {
                plan_id,
                leaf_index,
                ..
            } => latest
                .get(&(plan_id, leaf_index))
                .is_some_and(|l| l.position == position),
            Record::ShardSplit {
                plan_id,
                leaf_index,
                ..
            }
            | Record::SubShardDone {
                plan_id,
                leaf_index,
                ..
            } => !latest.get(&(plan_id, leaf_index)).is_some_and(|l| l.done),
            _ => true,
        };
        keep.push(kept);
    })?;
    Ok(keep)
}

/// Run by every open, under the lock: discards an uncommitted compaction
/// and finishes a committed one.
pub(crate) fn finish_interrupted(dir: &Path) -> Result<(), LogError> {
    let staging = dir.join(STAGING_DIR_NAME);
    if staging.exists() {
        fs::remove_dir_all(&staging)
            .map_err(|e| io_err(dir, "removing an interrupted compaction", e))?;
        sync_dir_path(dir).map_err(|e| io_err(dir, "syncing the store directory", e))?;
    }
    if dir.join(READY_DIR_NAME).exists() {
        let mut steps = Steps {
            done: 0,
            crash_after: None,
        };
        roll_forward(dir, &mut steps)?;
    }
    Ok(())
}

/// Steps 3 and 4: replace the old segments by the ready ones. Returns false
/// if a simulated crash stopped it.
fn roll_forward(dir: &Path, steps: &mut Steps) -> Result<bool, LogError> {
    let ready = dir.join(READY_DIR_NAME);
    let new_segments = segment_files(&ready)?;
    if let Some(&(first, _)) = new_segments.first() {
        let new_generation = read_header(&ready, first)?
            .map(|h| h.generation)
            .ok_or_else(|| LogError::Corrupt {
                segment: first,
                offset: 0,
                reason: "compacted segment has a bad header".to_owned(),
            })?;
        for (index, _) in segment_files(dir)? {
            let is_new = read_header(dir, index)?.is_some_and(|h| h.generation == new_generation);
            if !is_new {
                fs::remove_file(dir.join(segment_file_name(index)))
                    .map_err(|e| io_err(dir, "removing an old segment", e))?;
                if steps.stop() {
                    return Ok(false);
                }
            }
        }
        sync_dir_path(dir).map_err(|e| io_err(dir, "syncing the store directory", e))?;
        for (index, _) in new_segments {
            let name = segment_file_name(index);
            fs::rename(ready.join(&name), dir.join(&name))
                .map_err(|e| io_err(dir, "moving a compacted segment", e))?;
            if steps.stop() {
                return Ok(false);
            }
        }
        sync_dir_path(dir).map_err(|e| io_err(dir, "syncing the store directory", e))?;
    }
    fs::remove_dir_all(&ready).map_err(|e| io_err(dir, "removing the compaction directory", e))?;
    sync_dir_path(dir).map_err(|e| io_err(dir, "syncing the store directory", e))?;
    Ok(true)
}

/// Segment files directly in `dir`, ascending, with their lengths.
fn segment_files(dir: &Path) -> Result<Vec<(u64, u64)>, LogError> {
    use super::storage::Storage;
    let mut storage = FsStorage::open(dir).map_err(|e| io_err(dir, "listing segments", e))?;
    let indices = storage
        .list_segments()
        .map_err(|e| io_err(dir, "listing segments", e))?;
    indices
        .into_iter()
        .map(|index| {
            let len = fs::metadata(dir.join(segment_file_name(index)))
                .map_err(|e| io_err(dir, "reading segment metadata", e))?
                .len();
            Ok((index, len))
        })
        .collect()
}

/// The header of a segment file, read without mapping it; `None` if it is
/// not a valid header.
fn read_header(dir: &Path, index: u64) -> Result<Option<SegmentHeader>, LogError> {
    let path = dir.join(segment_file_name(index));
    let mut file = File::open(&path).map_err(|e| io_err(dir, "opening a segment", e))?;
    let len = file
        .metadata()
        .map_err(|e| io_err(dir, "reading segment metadata", e))?
        .len();
    let mut bytes = vec![0u8; HEADER_LEN];
    if file.read_exact(&mut bytes).is_err() {
        return Ok(None);
    }
    Ok(SegmentHeader::parse(&bytes, index, len).ok())
}

#[cfg(test)]
mod tests {
    use super::super::tests::{read_all, shard_done_with};
    use super::*;

    const OPTS: LogOptions = LogOptions {
        segment_size_bytes: 4096,
        salvage: false,
        sync_commits: true,
    };

    fn failed(plan: u8, leaf: u64, attempts: u32) -> Record {
        Record::ShardFailed {
            plan_id: [plan; 16],
            leaf_index: leaf,
            cas_id: [leaf as u8; 32],
            attempts,
            duration_us: 10,
            aborted: false,
            error: format!("attempt {attempts} failed"),
        }
    }

    fn split(plan: u8, leaf: u64) -> Record {
        Record::ShardSplit {
            plan_id: [plan; 16],
            leaf_index: leaf,
            pieces: 2,
        }
    }

    fn piece(plan: u8, leaf: u64, piece: u32) -> Record {
        Record::SubShardDone {
            plan_id: [plan; 16],
            leaf_index: leaf,
            piece,
            output_digest: [piece as u8; 32],
        }
    }

    /// A history with retries, splits and two plans; spans many segments.
    fn history() -> Vec<Record> {
        let mut h = vec![Record::PlanAccepted {
            plan_id: [1; 16],
            accepted_at_ms: 5,
            shard_count: 40,
            manifest_json: "{}".to_owned(),
        }];
        for leaf in 0..40u64 {
            match leaf % 5 {
                0 => h.push(shard_done_with(1, leaf, 1)),
                1 => {
                    h.push(failed(1, leaf, 1));
                    h.push(shard_done_with(1, leaf, 2));
                }
                2 => {
                    h.push(shard_done_with(1, leaf, 1));
                    h.push(failed(1, leaf, 2));
                }
                3 => {
                    h.push(split(1, leaf));
                    h.push(piece(1, leaf, 0));
                    h.push(piece(1, leaf, 1));
                    h.push(shard_done_with(1, leaf, 1));
                }
                _ => {
                    h.push(split(1, leaf));
                    h.push(piece(1, leaf, 0));
                    h.push(failed(1, leaf, 3));
                }
            }
            // The same leaf index in another plan is another shard.
            h.push(failed(2, leaf, 1));
        }
        h.push(Record::PlanReplayed {
            plan_id: [1; 16],
            at_ms: 9,
            actor: "admiral".to_owned(),
        });
        h.push(shard_done_with(1, 4, 9));
        h
    }

    /// The filter, written the slow, obvious way.
    fn model(history: &[Record]) -> Vec<Record> {
        let key = |r: &Record| match r {
            Record::ShardDone {
                plan_id,
                leaf_index,
                ..
            }
            | Record::ShardFailed {
                plan_id,
                leaf_index,
                ..
            }
            | Record::ShardSplit {
                plan_id,
                leaf_index,
                ..
            }
            | Record::SubShardDone {
                plan_id,
                leaf_index,
                ..
            } => Some((*plan_id, *leaf_index)),
            _ => None,
        };
        let is_outcome =
            |r: &Record| matches!(r, Record::ShardDone { .. } | Record::ShardFailed { .. });
        history
            .iter()
            .enumerate()
            .filter(|&(i, r)| {
                let Some(k) = key(r) else { return true };
                let last_outcome = history
                    .iter()
                    .rposition(|o| is_outcome(o) && key(o) == Some(k));
                if is_outcome(r) {
                    last_outcome == Some(i)
                } else {
                    !last_outcome.is_some_and(|j| matches!(history[j], Record::ShardDone { .. }))
                }
            })
            .map(|(_, r)| r.clone())
            .collect()
    }

    fn write_store(dir: &Path, records: &[Record]) {
        let (mut log, _) = Log::open(dir, OPTS).unwrap();
        for r in records {
            log.append(r).unwrap();
        }
        log.commit().unwrap();
    }

    #[test]
    fn compaction_keeps_exactly_the_latest_outcomes() {
        let tmp = tempfile::tempdir().unwrap();
        let history = history();
        let expected = model(&history);
        assert!(expected.len() < history.len());
        write_store(tmp.path(), &history);
        let report = compact(tmp.path(), OPTS).unwrap();
        assert_eq!(report.records_before, history.len() as u64);
        assert_eq!(report.records_after, expected.len() as u64);
        assert_eq!(report.generation, 1);
        assert!(report.segments_before > report.segments_after);
        assert!(!tmp.path().join(READY_DIR_NAME).exists());
        assert!(!tmp.path().join(STAGING_DIR_NAME).exists());
        let (mut log, recovery) = Log::open(tmp.path(), OPTS).unwrap();
        assert_eq!(read_all(&mut log), expected);
        assert_eq!(recovery.segment_count as u64, report.segments_after);
        assert_eq!(log.generation(), 1);
        drop(log);
        // Compacting again changes nothing but the generation.
        let again = compact(tmp.path(), OPTS).unwrap();
        assert_eq!(again.records_after, expected.len() as u64);
        assert_eq!(again.generation, 2);
        let (mut log, _) = Log::open(tmp.path(), OPTS).unwrap();
        assert_eq!(read_all(&mut log), expected);
    }

    #[test]
    fn compaction_needs_the_lock() {
        let tmp = tempfile::tempdir().unwrap();
        write_store(tmp.path(), &history());
        let (_log, _) = Log::open(tmp.path(), OPTS).unwrap();
        assert!(matches!(
            compact(tmp.path(), OPTS),
            Err(LogError::Locked { .. })
        ));
    }

    #[test]
    fn a_crash_after_any_step_leaves_the_old_or_the_new_store() {
        let history = history();
        let expected = model(&history);
        let mut saw_old = false;
        let mut saw_new = false;
        let mut step = 0;
        loop {
            let tmp = tempfile::tempdir().unwrap();
            write_store(tmp.path(), &history);
            let finished = compact_with_crash(tmp.path(), OPTS, Some(step)).unwrap();
            // Reopening finishes or discards the interrupted compaction.
            let (mut log, _) = Log::open(tmp.path(), OPTS).unwrap();
            let got = read_all(&mut log);
            if got == history {
                saw_old = true;
            } else {
                assert_eq!(got, expected, "crash after step {step}");
                saw_new = true;
            }
            assert!(!tmp.path().join(READY_DIR_NAME).exists());
            assert!(!tmp.path().join(STAGING_DIR_NAME).exists());
            // The store is usable afterwards.
            log.append(&shard_done_with(7, 0, 1)).unwrap();
            log.commit().unwrap();
            drop(log);
            let (log, _) = Log::open(tmp.path(), OPTS).unwrap();
            assert_eq!(log.record_count(), got.len() as u64 + 1);
            if finished.is_some() {
                break;
            }
            step += 1;
        }
        assert!(saw_old && saw_new);
        assert!(step > 4, "expected many steps, got {step}");
    }
}
