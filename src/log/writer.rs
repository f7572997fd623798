//! The log writer: one dedicated thread that owns the [`Log`] and turns
//! batches of records into durable group commits.
//!
//! Producers call [`Writer::submit`] with a batch (`Vec<Record>`); batches
//! wait in a bounded channel (`queue_capacity_batches`), so a producer that
//! outruns the disk blocks in `submit`: that is the engine's backpressure.
//! The thread blocks for one batch, then drains whatever else is already
//! queued, up to [`COMMIT_RECORDS_MAX`] records (a batch is never split),
//! appends them all, commits ONCE, and only then hands the records to
//! `on_durable`, in log order. So a caller learns that a record is durable
//! only after the sync that made it so; nothing is reported done early.
//! `on_durable` runs on the writer thread: it should hand the records on
//! (to a channel, a counter) and return, since the next commit waits for it.
//!
//! On an I/O failure the thread stops at once: the log is poisoned (no
//! retry), the error is kept, the channel closes, every later `submit`
//! returns [`LogError::WriterStopped`] with the cause, and `on_durable` is
//! never called for the failed group. Batches queued behind the failure are
//! dropped unacknowledged; a resume after reopening the store redoes them.
//!
//! A group is handed on as the batches it was submitted in, not copied
//! into one vector: at `COMMIT_RECORDS_MAX` records that vector would be
//! megabytes, grown and faulted in afresh per commit.
//!
//! Termination: [`Writer::finish`] closes the channel; the thread drains
//! what is queued, commits, and returns the log. Dropping a `Writer` does
//! the same and discards the result.

use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender, TryRecvError};

use super::format::{Record, FRAME_OVERHEAD_BYTES};
use super::limits::{COMMIT_RECORDS_MAX, SUBMIT_BATCH_RECORDS_MAX};
use super::{Log, LogError};

/// Callback told about records once they are durable, in log order.
/// Called with each durable group: its batches, in log order.
pub type OnDurable = Box<dyn FnMut(Vec<Vec<Record>>) + Send>;

/// Handle to the writer thread.
pub struct Writer {
    // INVARIANT: `Some` until `finish` or drop takes them.
    tx: Option<Sender<Vec<Record>>>,
    thread: Option<JoinHandle<WriterExit>>,
    failure: Arc<OnceLock<Arc<LogError>>>,
    /// Usable bytes of a new segment: a record larger than that can never
    /// be appended, so `submit` refuses it up front.
    segment_capacity_bytes: u64,
}

struct WriterExit {
    log: Log,
    failure: Option<Arc<LogError>>,
}

/// Starts the writer thread, which owns `log` until [`Writer::finish`].
/// `queue_capacity_batches` bounds the batches waiting (at least 1). Fails
/// only if the OS refuses a thread (the log is dropped, unlocking the store).
pub fn spawn_writer(
    log: Log,
    queue_capacity_batches: usize,
    on_durable: OnDurable,
) -> Result<Writer, LogError> {
    let (tx, rx) = crossbeam_channel::bounded(queue_capacity_batches.max(1));
    let failure = Arc::new(OnceLock::new());
    let segment_capacity_bytes = log.options().segment_capacity_bytes();
    let store = log.store_name();
    let thread_failure = Arc::clone(&failure);
    let thread = std::thread::Builder::new()
        .name("hxo-log-writer".to_owned())
        .spawn(move || run(log, rx, on_durable, &thread_failure))
        .map_err(|source| LogError::Io {
            store,
            op: "spawning the log writer thread".to_owned(),
            source,
        })?;
    Ok(Writer {
        tx: Some(tx),
        thread: Some(thread),
        failure,
        segment_capacity_bytes,
    })
}

fn run(
    mut log: Log,
    rx: Receiver<Vec<Record>>,
    mut on_durable: OnDurable,
    failure: &OnceLock<Arc<LogError>>,
) -> WriterExit {
    let mut carried: Option<Vec<Record>> = None;
    loop {
        let first = match carried.take() {
            Some(batch) => batch,
            None => match rx.recv() {
                Ok(batch) => batch,
                // Closed and drained: a clean finish.
                Err(_) => break,
            },
        };
        let mut record_count = first.len();
        let mut group = vec![first];
        while record_count < COMMIT_RECORDS_MAX {
            match rx.try_recv() {
                Ok(batch) if record_count + batch.len() > COMMIT_RECORDS_MAX => {
                    carried = Some(batch);
                    break;
                }
                Ok(batch) => {
                    record_count += batch.len();
                    group.push(batch);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let result = group
            .iter()
            .flatten()
            .try_for_each(|record| log.append(record))
            .and_then(|()| log.commit());
        if let Err(e) = result {
            let e = Arc::new(e);
            let _ = failure.set(Arc::clone(&e));
            // Returning drops `rx`: producers see the channel closed.
            return WriterExit {
                log,
                failure: Some(e),
            };
        }
        on_durable(group);
    }
    // Without per-commit syncs, the end of the run is the sync point.
    if let Err(e) = log.sync_all() {
        let e = Arc::new(e);
        let _ = failure.set(Arc::clone(&e));
        return WriterExit {
            log,
            failure: Some(e),
        };
    }
    WriterExit { log, failure: None }
}

impl Writer {
    /// Queues a batch; blocks while the queue is full. Checks every record's
    /// bounds first, so one bad record is refused here without stopping the
    /// writer. After a writer failure, returns `WriterStopped`.
    pub fn submit(&self, batch: Vec<Record>) -> Result<(), LogError> {
        if let Some(cause) = self.failure.get() {
            return Err(LogError::WriterStopped {
                cause: Arc::clone(cause),
            });
        }
        if batch.len() > SUBMIT_BATCH_RECORDS_MAX {
            return Err(LogError::BatchTooLarge {
                records: batch.len() as u64,
                max_records: SUBMIT_BATCH_RECORDS_MAX as u64,
            });
        }
        for record in &batch {
            let frame_len_bytes = u64::from(record.payload_len()?) + FRAME_OVERHEAD_BYTES;
            if frame_len_bytes > self.segment_capacity_bytes {
                return Err(LogError::RecordTooLarge {
                    frame_len_bytes,
                    capacity_bytes: self.segment_capacity_bytes,
                });
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self.tx.as_ref().expect("INVARIANT: present until finish");
        tx.send(batch).map_err(|_| match self.failure.get() {
            Some(cause) => LogError::WriterStopped {
                cause: Arc::clone(cause),
            },
            None => LogError::WriterGone,
        })
    }

    /// A handle on the writer's failure that can be read without this
    /// `Writer` (so without whatever lock guards it).
    pub fn failure_handle(&self) -> Arc<OnceLock<Arc<LogError>>> {
        Arc::clone(&self.failure)
    }

    /// Why the writer stopped, if it did.
    pub fn failure(&self) -> Option<String> {
        self.failure.get().map(|cause| cause.to_string())
    }

    /// Batches waiting in the queue (not yet picked up by the thread).
    pub fn queue_depth(&self) -> usize {
        self.tx.as_ref().map_or(0, Sender::len)
    }

    /// Drains the queue, commits, stops the thread and returns the log; or
    /// the error that stopped the writer.
    pub fn finish(mut self) -> Result<Log, LogError> {
        let exit = self.join()?;
        match exit.failure {
            None => Ok(exit.log),
            Some(cause) => Err(LogError::WriterStopped { cause }),
        }
    }

    fn join(&mut self) -> Result<WriterExit, LogError> {
        drop(self.tx.take());
        let thread = self.thread.take().ok_or(LogError::WriterGone)?;
        // A panic on the thread can only come from `on_durable` (the log
        // itself returns errors); report it rather than unwinding here.
        thread.join().map_err(|_| LogError::WriterGone)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.thread.is_some() {
            let _ = self.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::storage::{Faults, MemStorage};
    use super::super::tests::{shard_done, MODEL_OPTS};
    use super::super::LogOptions;
    use super::*;
    use std::sync::{Arc, Mutex};

    fn collect() -> (OnDurable, Arc<Mutex<Vec<Vec<Record>>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        (
            // One entry per commit: the group's records in log order.
            Box::new(move |group: Vec<Vec<Record>>| sink.lock().unwrap().push(group.concat())),
            seen,
        )
    }

    #[test]
    fn batches_become_durable_in_order_and_finish_returns_the_log() {
        let storage = MemStorage::new();
        let disk = storage.disk();
        let (log, _) = Log::open_with(Box::new(storage), MODEL_OPTS).unwrap();
        let (on_durable, seen) = collect();
        let writer = spawn_writer(log, 4, on_durable).unwrap();
        let mut expected = Vec::new();
        for b in 0..20u64 {
            let batch: Vec<Record> = (0..7).map(|i| shard_done(b * 7 + i)).collect();
            expected.extend(batch.clone());
            writer.submit(batch).unwrap();
        }
        let log = writer.finish().unwrap();
        let durable: Vec<Record> = seen.lock().unwrap().concat();
        assert_eq!(durable, expected);
        // Everything reported durable survives a crash with nothing unsynced.
        drop(log);
        let (mut recovered, _) = Log::open_with(Box::new(disk.crash(0)), MODEL_OPTS).unwrap();
        let mut got = Vec::new();
        recovered.for_each_record(&mut |r| got.push(r)).unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn queued_batches_are_grouped_into_one_commit() {
        let storage = MemStorage::new();
        let disk = storage.disk();
        let (log, _) = Log::open_with(Box::new(storage), MODEL_OPTS).unwrap();
        let syncs_before = disk.sync_points();
        // Hold the thread inside the first on_durable until all batches are
        // queued, so they must be drained together.
        let (gate_tx, gate_rx) = crossbeam_channel::bounded::<()>(0);
        let groups = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&groups);
        let writer = spawn_writer(
            log,
            16,
            Box::new(move |group: Vec<Vec<Record>>| {
                let first = sink.lock().unwrap().is_empty();
                sink.lock().unwrap().push(group.concat().len());
                if first {
                    let _ = gate_rx.recv();
                }
            }),
        )
        .unwrap();
        writer.submit(vec![shard_done(0)]).unwrap();
        // Wait until the first group is being reported.
        while groups.lock().unwrap().is_empty() {
            std::thread::yield_now();
        }
        for i in 1..=10 {
            writer
                .submit(vec![shard_done(i), shard_done(100 + i)])
                .unwrap();
        }
        assert_eq!(writer.queue_depth(), 10);
        gate_tx.send(()).unwrap();
        writer.finish().unwrap();
        assert_eq!(*groups.lock().unwrap(), vec![1, 20]);
        // Two groups, two syncs (the segment was created before).
        assert_eq!(disk.sync_points() - syncs_before, 2);
    }

    #[test]
    fn a_failed_sync_stops_the_writer_and_nothing_is_reported() {
        let storage = MemStorage::new();
        let disk = storage.disk();
        let (log, _) = Log::open_with(Box::new(storage), MODEL_OPTS).unwrap();
        disk.set_faults(Faults {
            fail_sync_at: Some(1),
            ..Faults::default()
        });
        let (on_durable, seen) = collect();
        let writer = spawn_writer(log, 1, on_durable).unwrap();
        writer.submit(vec![shard_done(0)]).unwrap();
        // Wait for the first group to be durable, so the second one is the
        // one whose sync fails.
        while seen.lock().unwrap().is_empty() {
            std::thread::yield_now();
        }
        writer.submit(vec![shard_done(1)]).unwrap();
        // Eventually the failure is visible to producers.
        let err = loop {
            match writer.submit(vec![shard_done(2)]) {
                Ok(()) => std::thread::yield_now(),
                Err(e) => break e,
            }
        };
        assert!(matches!(err, LogError::WriterStopped { .. }), "{err}");
        let std_err: &dyn std::error::Error = &err;
        assert!(std_err
            .source()
            .unwrap()
            .to_string()
            .contains("syncing segment 0"));
        assert!(matches!(
            writer.finish(),
            Err(LogError::WriterStopped { .. })
        ));
        assert_eq!(seen.lock().unwrap().concat(), vec![shard_done(0)]);
        // Reopening recovers what was acknowledged.
        let (log, _) = Log::open_with(Box::new(disk.crash(0)), MODEL_OPTS).unwrap();
        assert_eq!(log.record_count(), 1);
    }

    #[test]
    fn bad_records_are_refused_at_submit_without_stopping_the_writer() {
        let opts = LogOptions {
            segment_size_bytes: 4096,
            salvage: false,
            sync_commits: true,
        };
        let (log, _) = Log::open_with(Box::new(MemStorage::new()), opts).unwrap();
        let (on_durable, seen) = collect();
        let writer = spawn_writer(log, 2, on_durable).unwrap();
        let too_big = Record::Event {
            seq: 1,
            at_ms: 0,
            topic: "t".to_owned(),
            payload_json: "x".repeat(5000),
        };
        assert!(matches!(
            writer.submit(vec![too_big]),
            Err(LogError::RecordTooLarge { .. })
        ));
        let too_long = Record::Event {
            seq: 1,
            at_ms: 0,
            topic: "t".repeat(1000),
            payload_json: String::new(),
        };
        assert!(matches!(
            writer.submit(vec![too_long]),
            Err(LogError::FieldTooLong(_))
        ));
        let huge: Vec<Record> = (0..SUBMIT_BATCH_RECORDS_MAX as u64 + 1)
            .map(|_| shard_done(0))
            .collect();
        assert!(matches!(
            writer.submit(huge),
            Err(LogError::BatchTooLarge { .. })
        ));
        writer.submit(vec![shard_done(5)]).unwrap();
        let log = writer.finish().unwrap();
        assert_eq!(log.record_count(), 1);
        assert_eq!(seen.lock().unwrap().concat(), vec![shard_done(5)]);
    }
}
