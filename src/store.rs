//! The store: the checkpoint log plus the in-memory index of what it says.
//!
//! On open, every record is replayed into a [`PlanRecord`] per plan. While
//! the process runs, the log writer's durability callback applies each
//! durable batch to the same index, so the index never shows an outcome
//! that is not on disk: status, reports, events and the HTTP API all read
//! from here. That is how "a shard is reported DONE only after its record
//! is durable" holds everywhere at once.
//!
//! INVARIANT: a [`PlanRecord`]'s counts always equal the number of its
//! shard slots in each state.

use crate::events::{Bus, Event};
use crate::hash::Hash;
use crate::ids::{parse_plan_id, plan_id_text, PLAN_ID_PREFIX_LEN_MIN};
use crate::log::format::RecordType;
use crate::log::{self, LogError, LogOptions, PlanId, Record, RecoveryReport, RunCause, TailCheck};
use crate::plan::Manifest;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, RwLock};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SlotState {
    Pending,
    Done,
    Failed,
    Aborted,
}

impl SlotState {
    pub fn name(self) -> &'static str {
        match self {
            SlotState::Pending => "pending",
            SlotState::Done => "done",
            SlotState::Failed => "failed",
            SlotState::Aborted => "aborted",
        }
    }
}

/// What the log says about one shard of a plan.
#[derive(Clone, Copy, Debug)]
pub struct ShardSlot {
    /// Zero until the shard has an outcome in the log.
    pub cas_id: Hash,
    pub output_digest: Hash,
    pub duration_us: u64,
    pub attempts: u32,
    pub state: SlotState,
    /// Done by reusing an earlier result with the same cas_id.
    pub reused: bool,
}

impl Default for ShardSlot {
    fn default() -> Self {
        ShardSlot {
            cas_id: [0; 32],
            output_digest: [0; 32],
            duration_us: 0,
            attempts: 0,
            state: SlotState::Pending,
            reused: false,
        }
    }
}

/// `count` default (pending) slots, written by the rayon pool in parallel:
/// a serial `vec!` of 10^6 slots takes 35 ms on 2 cores (the 80 MB are
/// written and faulted in by one thread). Zeroed memory that is touched
/// lazily was measured slower still: a slot read before it is written
/// maps the shared zero page, and the copy-on-write that follows costs a
/// TLB shootdown across the run's threads.
fn pending_slots(count: usize) -> Vec<ShardSlot> {
    use rayon::prelude::*;
    let mut slots = Vec::with_capacity(count);
    (0..count)
        .into_par_iter()
        .map(|_| ShardSlot::default())
        .collect_into_vec(&mut slots);
    slots
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub done: u64,
    pub failed: u64,
    pub aborted: u64,
    pub reused: u64,
}

#[derive(Clone, Debug)]
pub struct Finish {
    pub at_ms: u64,
    pub tree_size: u64,
    pub root: Hash,
    pub done_count: u64,
    pub failed_count: u64,
}

#[derive(Clone, Debug)]
pub struct AbortInfo {
    pub at_ms: u64,
    pub actor: String,
    pub reason: String,
}

/// Everything the log says about one plan.
#[derive(Clone, Debug)]
pub struct PlanRecord {
    pub plan_id: PlanId,
    pub manifest: Manifest,
    pub accepted_at_ms: u64,
    pub shards: Vec<ShardSlot>,
    /// Error text of shards whose latest outcome is a failure.
    pub errors: HashMap<u64, String>,
    // INVARIANT: matches the states in `shards`.
    counts: Counts,
    pub aborted: Option<AbortInfo>,
    pub finished: Option<Finish>,
    pub replays: u32,
    /// Accepted as created (`PlanHeld`) and not submitted since.
    pub held: bool,
    /// Runs started (`PlanRunStarted`), resumes included.
    pub run_starts: u32,
    /// Runs started as resumes of an interrupted plan (rehydrations).
    pub rehydrations: u32,
    /// Hot-shard splits: leaf -> (pieces, piece digests so far).
    pub splits: HashMap<u64, (u32, Vec<Option<Hash>>)>,
    pub last_change_ms: u64,
    /// The root the latest `PlanCertified` record vouched for.
    pub certified_root: Option<Hash>,
}

impl PlanRecord {
    fn new(plan_id: PlanId, manifest: Manifest, accepted_at_ms: u64, shard_count: u64) -> Self {
        PlanRecord {
            plan_id,
            manifest,
            accepted_at_ms,
            shards: pending_slots(shard_count as usize),
            errors: HashMap::new(),
            counts: Counts::default(),
            aborted: None,
            finished: None,
            replays: 0,
            held: false,
            run_starts: 0,
            rehydrations: 0,
            splits: HashMap::new(),
            last_change_ms: accepted_at_ms,
            certified_root: None,
        }
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    pub fn shard_count(&self) -> u64 {
        self.shards.len() as u64
    }

    pub fn pending_count(&self) -> u64 {
        self.shard_count() - self.counts.done - self.counts.failed - self.counts.aborted
    }

    /// Finished or aborted, with no replay asked for since.
    pub fn is_complete(&self) -> bool {
        self.finished.is_some() || self.aborted.is_some() || self.worker_slice_done()
    }

    /// A worker's store holds one slice of a plan (README, "Beyond one
    /// machine"): it
    /// is complete when every shard of the slice is done, and has no root
    /// of its own (`hxo merge` computes it from every worker's store).
    pub fn worker_slice_done(&self) -> bool {
        let Some(worker) = self.manifest.worker else {
            return false;
        };
        self.manifest.stages.iter().all(|stage| {
            (0..stage.shard_count)
                .filter(|position| worker.owns(*position))
                .all(|position| {
                    self.shards
                        .get((stage.first_leaf + position) as usize)
                        .is_some_and(|slot| slot.state == SlotState::Done)
                })
        })
    }

    /// The recorded end's root, if the plan has one: a worker's slice
    /// records its end but has no root of its own (`hxo merge` makes it).
    pub fn recorded_root(&self) -> Option<&Finish> {
        self.finished
            .as_ref()
            .filter(|_| self.manifest.worker.is_none())
    }

    /// Shards still without an outcome that this store's run owns: all of
    /// the plan's, or a worker's own slice of them.
    pub fn owned_pending_count(&self) -> u64 {
        let Some(worker) = self.manifest.worker else {
            return self.pending_count();
        };
        let mut pending = 0;
        for stage in &self.manifest.stages {
            for position in (0..stage.shard_count).filter(|p| worker.owns(*p)) {
                let slot = self.shards.get((stage.first_leaf + position) as usize);
                if slot.is_some_and(|slot| slot.state == SlotState::Pending) {
                    pending += 1;
                }
            }
        }
        pending
    }

    /// The latest root is the one a certification vouched for.
    pub fn truth_certified(&self) -> bool {
        match (&self.finished, &self.certified_root) {
            (Some(finish), Some(root)) => finish.root == *root,
            _ => false,
        }
    }

    fn set_state(&mut self, leaf: u64, state: SlotState, reused: bool) {
        let slot = &mut self.shards[leaf as usize];
        match slot.state {
            SlotState::Pending => {}
            SlotState::Done => self.counts.done -= 1,
            SlotState::Failed => self.counts.failed -= 1,
            SlotState::Aborted => self.counts.aborted -= 1,
        }
        if slot.reused {
            self.counts.reused -= 1;
        }
        slot.state = state;
        slot.reused = reused;
        match state {
            SlotState::Pending => {}
            SlotState::Done => self.counts.done += 1,
            SlotState::Failed => self.counts.failed += 1,
            SlotState::Aborted => self.counts.aborted += 1,
        }
        if reused {
            self.counts.reused += 1;
        }
    }

    /// Applies one of this plan's records. Records naming a leaf outside
    /// the plan are ignored (they cannot come from this writer).
    fn apply(&mut self, record: &Record) {
        match record {
            Record::ShardDone {
                leaf_index,
                cas_id,
                output_digest,
                attempts,
                duration_us,
                ..
            } => {
                if *leaf_index >= self.shard_count() {
                    return;
                }
                self.set_state(*leaf_index, SlotState::Done, *attempts == 0);
                let slot = &mut self.shards[*leaf_index as usize];
                slot.cas_id = *cas_id;
                slot.output_digest = *output_digest;
                slot.attempts = *attempts;
                slot.duration_us = *duration_us;
                // Guarded: hashing a million leaf indices into empty maps
                // would cost a reopen tens of milliseconds.
                if !self.errors.is_empty() {
                    self.errors.remove(leaf_index);
                }
                if !self.splits.is_empty() {
                    self.splits.remove(leaf_index);
                }
            }
            Record::ShardFailed {
                leaf_index,
                cas_id,
                attempts,
                duration_us,
                aborted,
                error,
                ..
            } => {
                if *leaf_index >= self.shard_count() {
                    return;
                }
                let state = if *aborted {
                    SlotState::Aborted
                } else {
                    SlotState::Failed
                };
                self.set_state(*leaf_index, state, false);
                let slot = &mut self.shards[*leaf_index as usize];
                slot.cas_id = *cas_id;
                slot.attempts = *attempts;
                slot.duration_us = *duration_us;
                self.errors.insert(*leaf_index, error.clone());
            }
            Record::ShardSplit {
                leaf_index, pieces, ..
            } => {
                self.splits
                    .insert(*leaf_index, (*pieces, vec![None; *pieces as usize]));
            }
            Record::SubShardDone {
                leaf_index,
                piece,
                output_digest,
                ..
            } => {
                if let Some((_, digests)) = self.splits.get_mut(leaf_index) {
                    if let Some(slot) = digests.get_mut(*piece as usize) {
                        *slot = Some(*output_digest);
                    }
                }
            }
            Record::PlanAborted {
                at_ms,
                actor,
                reason,
                ..
            } => {
                self.aborted = Some(AbortInfo {
                    at_ms: *at_ms,
                    actor: actor.clone(),
                    reason: reason.clone(),
                });
            }
            Record::PlanReplayed { .. } => {
                // A replay re-runs failed and aborted shards; the shards
                // downstream of them never ran, so they are pending already.
                // A plan replayed is submitted, whatever it was.
                self.replays += 1;
                self.held = false;
                self.aborted = None;
                self.finished = None;
                for leaf in 0..self.shard_count() {
                    if matches!(
                        self.shards[leaf as usize].state,
                        SlotState::Failed | SlotState::Aborted
                    ) {
                        self.set_state(leaf, SlotState::Pending, false);
                    }
                }
                self.errors.clear();
            }
            Record::PlanFinished {
                at_ms,
                tree_size,
                root,
                done_count,
                failed_count,
                ..
            } => {
                self.finished = Some(Finish {
                    at_ms: *at_ms,
                    tree_size: *tree_size,
                    root: *root,
                    done_count: *done_count,
                    failed_count: *failed_count,
                });
            }
            Record::PlanHeld { .. } => self.held = true,
            Record::PlanSubmitted { .. } => self.held = false,
            Record::PlanRunStarted { cause, .. } => {
                self.held = false;
                self.run_starts += 1;
                if *cause == RunCause::Resume {
                    self.rehydrations += 1;
                }
            }
            Record::PlanCertified {
                root, certified, ..
            } => self.certified_root = certified.then_some(*root),
            Record::PlanAccepted { .. } | Record::Event { .. } => {}
        }
    }
}

pub fn plan_id_of(record: &Record) -> Option<&PlanId> {
    match record {
        Record::PlanAccepted { plan_id, .. }
        | Record::ShardDone { plan_id, .. }
        | Record::ShardFailed { plan_id, .. }
        | Record::ShardSplit { plan_id, .. }
        | Record::SubShardDone { plan_id, .. }
        | Record::PlanAborted { plan_id, .. }
        | Record::PlanReplayed { plan_id, .. }
        | Record::PlanFinished { plan_id, .. }
        | Record::PlanHeld { plan_id, .. }
        | Record::PlanSubmitted { plan_id, .. }
        | Record::PlanRunStarted { plan_id, .. }
        | Record::PlanCertified { plan_id, .. } => Some(plan_id),
        Record::Event { .. } => None,
    }
}

/// Errors of the store layer: the log's, and what the index adds.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("plan {plan_id}: manifest in the log is unreadable: {message}")]
    Manifest { plan_id: String, message: String },
    /// The log writer refused a batch or stopped after a failure; the
    /// cause is the log's error.
    #[error("the checkpoint log writer stopped")]
    WriterStopped(#[source] Arc<LogError>),
    /// The thread that applies durable batches to the index ended.
    #[error("the thread applying durable records to the index stopped")]
    ApplierStopped,
    #[error("the checkpoint store is open read-only")]
    ReadOnly,
    #[error("spawning the index thread")]
    Spawn(#[source] std::io::Error),
}

/// One plan's entry: its record, and a condition variable signalled after
/// every durable batch that touched it.
pub struct PlanEntry {
    pub record: Mutex<PlanRecord>,
    pub changed: Condvar,
}

impl PlanEntry {
    pub fn plan_id(&self) -> PlanId {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .plan_id
    }
}

#[derive(Default)]
struct Index {
    plans: HashMap<PlanId, Arc<PlanEntry>>,
    /// Plans in acceptance order.
    order: Vec<PlanId>,
    /// Durable events, oldest first (plan-level and audit: few).
    events: Vec<Event>,
}

impl Index {
    /// An index of every record `scan` visits, applied in batches.
    fn build<R>(
        scan: impl FnOnce(&mut dyn FnMut(Record)) -> Result<R, LogError>,
    ) -> Result<(Index, R), StoreError> {
        const BATCH: usize = 4096;
        let mut index = Index::default();
        let mut pending = Vec::with_capacity(BATCH);
        let mut failure: Option<StoreError> = None;
        let result = scan(&mut |record| {
            pending.push(record);
            if pending.len() == BATCH {
                if failure.is_none() {
                    if let Err(error) = index.apply(&pending) {
                        failure = Some(error);
                    }
                }
                pending.clear();
            }
        })?;
        if let Some(error) = failure {
            return Err(error);
        }
        index.apply(&pending)?;
        Ok((index, result))
    }

    fn apply(&mut self, records: &[Record]) -> Result<(), StoreError> {
        let mut touched: Vec<Arc<PlanEntry>> = Vec::new();
        let mut position = 0;
        while position < records.len() {
            let record = &records[position];
            match record {
                Record::PlanAccepted {
                    plan_id,
                    accepted_at_ms,
                    shard_count,
                    manifest_json,
                } => {
                    let manifest = Manifest::from_json(manifest_json).map_err(|message| {
                        StoreError::Manifest {
                            plan_id: plan_id_text(plan_id),
                            message,
                        }
                    })?;
                    let entry = Arc::new(PlanEntry {
                        record: Mutex::new(PlanRecord::new(
                            *plan_id,
                            manifest,
                            *accepted_at_ms,
                            *shard_count,
                        )),
                        changed: Condvar::new(),
                    });
                    if self.plans.insert(*plan_id, entry.clone()).is_none() {
                        self.order.push(*plan_id);
                    }
                    touched.push(entry);
                    position += 1;
                }
                Record::Event {
                    seq,
                    at_ms,
                    topic,
                    payload_json,
                } => {
                    position += 1;
                    // Topics this build does not know are kept in the log
                    // but not shown.
                    let Some(topic) = crate::events::topic(topic) else {
                        continue;
                    };
                    let data: serde_json::Value =
                        serde_json::from_str(payload_json).unwrap_or(serde_json::Value::Null);
                    self.events.push(Event {
                        seq: *seq,
                        at_ms: *at_ms,
                        topic,
                        data: crate::events::EventData::Json(data),
                    });
                }
                other => {
                    let plan_id = *plan_id_of(other).expect("every other record names a plan");
                    // The run of consecutive records of this plan, applied
                    // under one lock.
                    let run_end = records[position..]
                        .iter()
                        .position(|r| {
                            matches!(r, Record::PlanAccepted { .. } | Record::Event { .. })
                                || plan_id_of(r) != Some(&plan_id)
                        })
                        .map_or(records.len(), |offset| position + offset);
                    // A plan whose acceptance was lost to salvage has
                    // nothing to attach its records to.
                    if let Some(entry) = self.plans.get(&plan_id) {
                        let mut plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
                        for record in &records[position..run_end] {
                            plan.apply(record);
                        }
                        plan.last_change_ms = crate::events::now_ms();
                        drop(plan);
                        touched.push(entry.clone());
                    }
                    position = run_end;
                }
            }
        }
        for entry in touched {
            entry.changed.notify_all();
        }
        Ok(())
    }
}

/// The file in the store directory listing the plans its owner runs.
pub const RUNNING_FILE_NAME: &str = "RUNNING";

/// Whether a process with this pid exists (signal 0 checks, sends nothing).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill(2) with signal 0 sends nothing; it only reports whether
    // the process exists (EPERM: it does, owned by someone else).
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Called once per durable commit group, with its batches in log order.
type Listener = Box<dyn Fn(&[Vec<Record>]) + Send + Sync>;

/// Counts records made durable, so that a caller can wait for "everything
/// I submitted so far" (records are committed in submission order).
#[derive(Default)]
struct Durability {
    durable_records: Mutex<u64>,
    advanced: Condvar,
}

/// The checkpoint log and its index.
pub struct Store {
    dir: PathBuf,
    index: Arc<RwLock<Index>>,
    /// `None` for a read-only store. The lock also orders submissions, so
    /// positions handed out by `submit` match commit order.
    writer: Mutex<Option<(log::Writer, u64)>>,
    /// Applies durable batches to the index; ends when the writer does.
    applier: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The writer's failure, readable without the `writer` lock (which a
    /// submit blocked on a full queue holds).
    writer_failed: Arc<std::sync::OnceLock<Arc<LogError>>>,
    /// False once the applier thread has ended (or died).
    applier_alive: Arc<std::sync::atomic::AtomicBool>,
    durability: Arc<Durability>,
    listener: Arc<RwLock<Option<Listener>>>,
    /// Read damaged stores past their damage (`--salvage`).
    salvage: bool,
    /// Opened with the store lock (and recovery), not read-only.
    owner: bool,
    pub recovery: RecoveryReport,
}

fn lock_read(index: &RwLock<Index>) -> std::sync::RwLockReadGuard<'_, Index> {
    index.read().unwrap_or_else(|e| e.into_inner())
}

impl Store {
    /// Opens the store for writing: takes the store lock, recovers the log
    /// and starts the log writer.
    pub fn open(dir: &Path, options: LogOptions) -> Result<Store, StoreError> {
        let salvage = options.salvage;
        let (mut log, recovery) = log::Log::open(dir, options)?;
        let (index, ()) = Index::build(|visit| log.for_each_record(visit))?;
        let index = Arc::new(RwLock::new(index));
        let durability = Arc::new(Durability::default());
        let listener: Arc<RwLock<Option<Listener>>> = Arc::new(RwLock::new(None));
        let (sink, durable, listen) = (index.clone(), durability.clone(), listener.clone());
        // Durable batches are applied to the index on a thread of their own,
        // so the writer goes straight on to the next group commit. One FIFO
        // channel keeps them in log order; it is bounded, so a slow applier
        // slows the writer rather than queueing without limit.
        let (applied_tx, applied_rx) =
            crossbeam_channel::bounded::<Vec<Vec<Record>>>(crate::limits::APPLY_QUEUE_BATCHES_MAX);
        let applier_alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let alive = applier_alive.clone();
        let applier = std::thread::Builder::new()
            .name("hxo-applier".into())
            .spawn(move || {
                /// Lowers the flag however the thread ends, a panic included,
                /// so that waiters report it instead of waiting forever.
                struct Lower(Arc<std::sync::atomic::AtomicBool>);
                impl Drop for Lower {
                    fn drop(&mut self) {
                        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                let _lower = Lower(alive);
                for group in applied_rx {
                    {
                        let mut index = sink.write().unwrap_or_else(|e| e.into_inner());
                        for records in &group {
                            // Manifests written by this process were
                            // serialised from a Manifest: they always parse.
                            index
                                .apply(records)
                                .expect("records written by this process apply cleanly");
                        }
                    }
                    if let Some(listener) =
                        listen.read().unwrap_or_else(|e| e.into_inner()).as_ref()
                    {
                        listener(&group);
                    }
                    let mut count = durable
                        .durable_records
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    *count += group
                        .iter()
                        .map(|records| records.len() as u64)
                        .sum::<u64>();
                    durable.advanced.notify_all();
                }
            })
            .map_err(StoreError::Spawn)?;
        let writer = log::spawn_writer(
            log,
            crate::limits::LOG_QUEUE_BATCHES_MAX,
            Box::new(move |group: Vec<Vec<Record>>| {
                // The applier only stops when this sender is dropped.
                let _ = applied_tx.send(group);
            }),
        )?;
        let writer_failed = writer.failure_handle();
        Ok(Store {
            dir: dir.to_path_buf(),
            index,
            writer: Mutex::new(Some((writer, 0))),
            applier: Mutex::new(Some(applier)),
            writer_failed,
            applier_alive,
            durability,
            listener,
            salvage,
            owner: true,
            recovery,
        })
    }

    /// Opens the store for reading only: no lock, no recovery writes. A
    /// torn tail (a run in progress elsewhere) is simply where reading
    /// stops.
    pub fn open_read_only(dir: &Path, salvage: bool) -> Result<Store, StoreError> {
        let (index, recovery) =
            Index::build(|visit| log::read_only_scan(dir, salvage, TailCheck::Zeros, visit))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            index: Arc::new(RwLock::new(index)),
            writer: Mutex::new(None),
            applier: Mutex::new(None),
            writer_failed: Arc::new(std::sync::OnceLock::new()),
            applier_alive: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            durability: Arc::new(Durability::default()),
            listener: Arc::new(RwLock::new(None)),
            salvage,
            owner: false,
            recovery,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Hands records to the log writer; they are applied to the index once
    /// durable. Returns the position to pass to [`Store::wait_durable`].
    pub fn submit(&self, records: Vec<Record>) -> Result<u64, StoreError> {
        let mut guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_mut() {
            Some((writer, submitted)) => {
                let count = records.len() as u64;
                writer
                    .submit(records)
                    .map_err(|e| StoreError::WriterStopped(Arc::new(e)))?;
                *submitted += count;
                Ok(*submitted)
            }
            None => Err(StoreError::ReadOnly),
        }
    }

    /// Waits until every record up to `position` is durable.
    pub fn wait_durable(&self, position: u64) -> Result<(), StoreError> {
        let mut count = self
            .durability
            .durable_records
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while *count < position {
            if let Some(failure) = self.writer_failure() {
                return Err(failure);
            }
            count = self
                .durability
                .advanced
                .wait_timeout(count, std::time::Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Sets the function told about every durable batch (after the index
    /// shows it): the engine publishes per-shard events from here.
    pub fn set_listener(&self, listener: Listener) {
        *self.listener.write().unwrap_or_else(|e| e.into_inner()) = Some(listener);
    }

    /// Why the writer (or the thread applying its batches) stopped, if it
    /// did. Takes no lock a blocked submit may hold.
    pub fn writer_failure(&self) -> Option<StoreError> {
        if let Some(cause) = self.writer_failed.get() {
            return Some(StoreError::WriterStopped(cause.clone()));
        }
        if !self.applier_alive.load(std::sync::atomic::Ordering::SeqCst) {
            return Some(StoreError::ApplierStopped);
        }
        None
    }

    /// Batches waiting for the log writer. A submit blocked on a full queue
    /// holds the writer lock, so a busy lock reads as a full queue.
    pub fn queue_depth(&self) -> usize {
        match self.writer.try_lock() {
            Ok(guard) => guard.as_ref().map_or(0, |(w, _)| w.queue_depth()),
            Err(std::sync::TryLockError::WouldBlock) => crate::limits::LOG_QUEUE_BATCHES_MAX,
            Err(std::sync::TryLockError::Poisoned(e)) => {
                e.into_inner().as_ref().map_or(0, |(w, _)| w.queue_depth())
            }
        }
    }

    pub fn plan(&self, plan_id: &PlanId) -> Option<Arc<PlanEntry>> {
        lock_read(&self.index).plans.get(plan_id).cloned()
    }

    /// A plan by full id or unique prefix of its text form.
    pub fn find(&self, text: &str) -> Option<Arc<PlanEntry>> {
        if let Some(id) = parse_plan_id(text) {
            return self.plan(&id);
        }
        if text.len() < PLAN_ID_PREFIX_LEN_MIN {
            return None;
        }
        let index = lock_read(&self.index);
        let mut matches = index
            .order
            .iter()
            .filter(|id| plan_id_text(id).starts_with(&text.to_ascii_lowercase()));
        let first = matches.next()?;
        if matches.next().is_some() {
            return None;
        }
        index.plans.get(first).cloned()
    }

    /// Every plan, in acceptance order.
    pub fn plans(&self) -> Vec<Arc<PlanEntry>> {
        let index = lock_read(&self.index);
        index
            .order
            .iter()
            .filter_map(|id| index.plans.get(id).cloned())
            .collect()
    }

    pub fn durable_events(&self) -> Vec<Event> {
        lock_read(&self.index).events.clone()
    }

    pub fn last_event_seq(&self) -> u64 {
        lock_read(&self.index)
            .events
            .iter()
            .map(|e| e.seq)
            .max()
            .unwrap_or(0)
    }

    /// Output digests of every DONE shard in the store, by cas_id.
    pub fn done_by_cas(&self) -> HashMap<Hash, Hash> {
        let index = lock_read(&self.index);
        let mut map = HashMap::new();
        for entry in index.plans.values() {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            if plan.manifest.dry_run || plan.counts.done == 0 {
                continue;
            }
            for slot in plan.shards.iter().filter(|s| s.state == SlotState::Done) {
                map.insert(slot.cas_id, slot.output_digest);
            }
        }
        map
    }

    /// Waits until `ready` holds for the plan's record, the writer fails,
    /// or `timeout` passes; returns whether `ready` holds.
    pub fn wait_for(
        &self,
        entry: &PlanEntry,
        timeout: std::time::Duration,
        ready: &mut dyn FnMut(&PlanRecord) -> bool,
    ) -> Result<bool, StoreError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if ready(&plan) {
                return Ok(true);
            }
            drop(plan);
            if let Some(failure) = self.writer_failure() {
                return Err(failure);
            }
            plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(ready(&plan));
            }
            let slice = (deadline - now).min(std::time::Duration::from_millis(50));
            plan = entry
                .changed
                .wait_timeout(plan, slice)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Scans the log files for `plan_id`'s shard outcomes, in log order:
    /// leaf data (`cas_id || output_digest`) for a DONE one, `None` for a
    /// FAILED one (the shard is not done any more). DONE frames are read in
    /// place, not decoded into records: there is one per shard. Counts the
    /// frames read in `frames_seen`; with `frames_max`, frames past that
    /// many are passed over (a second scan reads what the first did).
    pub fn scan_outcomes(
        &self,
        plan_id: &PlanId,
        shard_count: u64,
        frames_max: Option<u64>,
        frames_seen: &mut u64,
        on_update: &mut dyn FnMut(u64, Option<&[u8; 64]>),
    ) -> Result<RecoveryReport, StoreError> {
        // The owner's recovery checked the last segment's tail and only its
        // writer has appended since; a reader without the lock checks it.
        let tail_check = if self.owner {
            TailCheck::LastSegmentUnchecked
        } else {
            TailCheck::Zeros
        };
        let on_frame = &mut |type_code: u8, payload: &[u8]| {
            *frames_seen += 1;
            if frames_max.is_some_and(|max| *frames_seen > max) {
                return Ok(());
            }
            if type_code == RecordType::ShardDone as u8 {
                if let Some((plan, leaf, data)) = log::format::peek_shard_done(payload) {
                    if plan == plan_id && leaf < shard_count {
                        on_update(leaf, Some(data));
                    }
                    return Ok(());
                }
            }
            if let Record::ShardFailed {
                plan_id: plan,
                leaf_index,
                ..
            } = Record::decode(type_code, payload)?
            {
                if &plan == plan_id && leaf_index < shard_count {
                    on_update(leaf_index, None);
                }
            }
            Ok(())
        };
        Ok(log::read_only_scan_frames(
            &self.dir,
            self.salvage,
            tail_check,
            on_frame,
        )?)
    }

    /// Whether this store was opened with the store lock (it may write).
    pub fn is_owner(&self) -> bool {
        self.owner
    }

    /// Tells readers in other processes which plans this owner runs now:
    /// `RUNNING` in the store directory, replaced whole (written beside it,
    /// then renamed). Best effort: a reader that cannot read it sees the
    /// plans as interrupted, which is what a crash leaves too.
    pub fn publish_running(&self, plans: &[PlanId]) {
        if !self.owner {
            return;
        }
        let mut text = format!("{}\n", std::process::id());
        for plan_id in plans {
            text.push_str(&plan_id_text(plan_id));
            text.push('\n');
        }
        let path = self.dir.join(RUNNING_FILE_NAME);
        let staged = self.dir.join(format!("{RUNNING_FILE_NAME}.tmp"));
        let written = std::fs::write(&staged, text).and_then(|()| std::fs::rename(&staged, &path));
        if let Err(error) = written {
            tracing::warn!(
                "cannot publish the running plans in {}: {error}",
                path.display()
            );
        }
    }

    /// The plans another live process runs in this store, and its pid:
    /// read from `RUNNING`, trusted only while its pid is the store lock's
    /// holder's and that process is alive (a killed owner's list is stale).
    pub fn running_elsewhere(&self) -> Option<(u32, Vec<PlanId>)> {
        let text = std::fs::read_to_string(self.dir.join(RUNNING_FILE_NAME)).ok()?;
        let mut lines = text.lines();
        let pid: u32 = lines.next()?.trim().parse().ok()?;
        let holder: u32 = std::fs::read_to_string(self.dir.join(log::lock::LOCK_FILE_NAME))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()?;
        if pid != holder || pid == std::process::id() || !process_alive(pid) {
            return None;
        }
        let plans = lines
            .filter_map(|line| parse_plan_id(line.trim()))
            .collect();
        Some((pid, plans))
    }

    /// Drains the writer, syncs and releases the store lock.
    pub fn close(&self) -> Result<(), StoreError> {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((writer, _)) = writer {
            let finished = writer.finish();
            // The writer's callback (the applier's sender) is gone now, so
            // the applier drains and ends.
            if let Some(applier) = self
                .applier
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
            {
                let _ = applier.join();
            }
            finished?;
        }
        Ok(())
    }

    /// Restores durable events into a bus's ring.
    pub fn restore_events(&self, bus: &Bus) {
        for event in lock_read(&self.index).events.iter() {
            bus.restore(event.clone());
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn pending_slots_are_default_slots() {
        for count in [0, 1, 3, 100_000] {
            let slots = pending_slots(count);
            assert_eq!(slots.len(), count);
            let default = ShardSlot::default();
            assert!(slots.iter().all(|slot| slot.cas_id == default.cas_id
                && slot.output_digest == default.output_digest
                && slot.duration_us == 0
                && slot.attempts == 0
                && slot.state == SlotState::Pending
                && !slot.reused));
        }
    }

    /// A store holding one DONE record per leaf of a `shards`-leaf plan,
    /// in leaf order, and the leaf hashes they give.
    pub(crate) fn store_of_done_leaves(
        dir: &Path,
        plan: PlanId,
        shards: u64,
    ) -> (Store, Vec<Hash>) {
        let store = Store::open(dir, LogOptions::default()).unwrap();
        let records: Vec<Record> = (0..shards)
            .map(|leaf| Record::ShardDone {
                plan_id: plan,
                leaf_index: leaf,
                cas_id: crate::hash::sha256(&leaf.to_le_bytes()),
                output_digest: [leaf as u8; 32],
                attempts: 1,
                duration_us: 0,
            })
            .collect();
        for batch in records.chunks(crate::log::limits::SUBMIT_BATCH_RECORDS_MAX) {
            store
                .wait_durable(store.submit(batch.to_vec()).unwrap())
                .unwrap();
        }
        let leaves = (0..shards)
            .map(|leaf| {
                crate::merkle::shard_leaf_hash(
                    &crate::hash::sha256(&leaf.to_le_bytes()),
                    &[leaf as u8; 32],
                )
            })
            .collect();
        (store, leaves)
    }

    #[test]
    fn a_second_scan_reads_no_frame_past_the_first() {
        const PLAN: PlanId = [4; 16];
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store_of_done_leaves(dir.path(), PLAN, 10);
        let leaves_read = |frames_max: Option<u64>| {
            let (mut seen, mut leaves) = (0, Vec::new());
            store
                .scan_outcomes(&PLAN, 10, frames_max, &mut seen, &mut |leaf, data| {
                    assert!(data.is_some());
                    leaves.push(leaf);
                })
                .unwrap();
            (seen, leaves)
        };
        let (seen, all) = leaves_read(None);
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        // Every frame counts, this plan's outcomes or not (none others here).
        assert_eq!(seen, 10);
        let (seen, first) = leaves_read(Some(4));
        assert_eq!(first, vec![0, 1, 2, 3]);
        assert_eq!(seen, 10, "the scan still reads, and counts, every frame");
        store.close().unwrap();
    }

    #[test]
    fn a_reader_without_the_lock_reports_stray_bytes_after_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), LogOptions::default()).unwrap();
        store
            .wait_durable(store.submit(vec![event(1), event(2)]).unwrap())
            .unwrap();
        store.close().unwrap();
        drop(store);
        // A stray byte well after the end of the data of the last segment.
        let segment = dir.path().join(crate::log::storage::segment_file_name(0));
        let mut bytes = std::fs::read(&segment).unwrap();
        let data_end = bytes.iter().rposition(|b| *b != 0).unwrap() + 1;
        bytes[data_end + 4096] = 1;
        std::fs::write(&segment, &bytes).unwrap();
        match Store::open_read_only(dir.path(), false) {
            Err(StoreError::Log(LogError::Corrupt {
                segment: 0, offset, ..
            })) => {
                assert_eq!(offset, (data_end + 4096) as u64)
            }
            other => panic!("expected corruption, got {:?}", other.map(|_| ())),
        }
    }

    fn event(seq: u64) -> Record {
        Record::Event {
            seq,
            at_ms: 0,
            topic: "hxo.audit".into(),
            payload_json: "{}".into(),
        }
    }

    /// A waiter must not deadlock against a submit blocked on a full writer
    /// queue: the blocked submit holds the writer lock, so a waiter must
    /// never take it while holding the durability lock the applier needs.
    #[test]
    fn wait_durable_does_not_deadlock_with_a_blocked_submit() {
        let dir = tempfile::tempdir().unwrap();
        let options = LogOptions {
            sync_commits: false,
            ..LogOptions::default()
        };
        let store = Arc::new(Store::open(dir.path(), options).unwrap());
        // A slow applier fills the apply queue and then the writer queue.
        store.set_listener(Box::new(|_| std::thread::sleep(Duration::from_millis(2))));
        let done = Arc::new(AtomicBool::new(false));
        let (producer_store, producer_done) = (store.clone(), done.clone());
        let producer = std::thread::spawn(move || {
            let mut seq = 0;
            while !producer_done.load(Ordering::Relaxed) {
                producer_store.submit(vec![event(seq)]).unwrap();
                seq += 1;
            }
        });
        let (waiter_store, waiter_done) = (store.clone(), done.clone());
        let waiter = std::thread::spawn(move || {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(2) {
                let position = waiter_store.submit(vec![event(0)]).unwrap();
                waiter_store.wait_durable(position).unwrap();
            }
            waiter_done.store(true, Ordering::Relaxed);
        });
        let started = Instant::now();
        while !waiter.is_finished() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "wait_durable deadlocked"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        waiter.join().unwrap();
        producer.join().unwrap();
        store.close().unwrap();
    }
}
