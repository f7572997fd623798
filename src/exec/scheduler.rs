//! The scheduler: runs a DAG's pending shards on a dedicated rayon pool
//! (CPU-bound executors) and a blocking lane (subprocesses, SQL), and hands
//! every outcome to the caller through one bounded channel.
//!
//! See `src/exec/README.md` for the states, termination, ordering and
//! backpressure rules in prose. In short:
//! - a shard moves PENDING -> CLAIMED -> (running) -> DONE | FAILED, or
//!   PENDING -> BLOCKED when something upstream failed, or to ABANDONED /
//!   aborted when the run stops; every transition out of PENDING is a
//!   compare-and-swap, so each shard gets exactly one outcome;
//! - a shard becomes ready when its shard-level dependency counter and its
//!   stage's barrier counter both reach zero;
//! - outcomes travel in batches over a bounded channel: when the collector
//!   (the log writer) falls behind, workers block and the pool slows down.

use super::{CancelToken, ExecError, Executor, ShardContext};
use crate::dag::{Dag, LeafIndex};
use crate::hash::Hash;
use crate::limits::{OUTCOME_BATCH_MAX, READY_CHUNK_MAX};
use crossbeam_channel::Sender;
use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

const PENDING: u8 = 0;
const CLAIMED: u8 = 1;
const DONE: u8 = 2;
const FAILED: u8 = 3;
const BLOCKED: u8 = 4;
const STOPPED: u8 = 5;

/// A shard's state before the run starts, from the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initial {
    Pending,
    Done,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    Done(Hash),
    Failed {
        error: String,
        aborted: bool,
    },
    /// Not run: something upstream failed.
    Blocked,
    /// Not run or not finished: the run was interrupted (resumable).
    Abandoned,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub leaf: u32,
    pub kind: OutcomeKind,
    pub attempts: u32,
    pub duration_us: u64,
}

/// Why a run stopped early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// `abort`: pending and running shards are failed (aborted).
    Aborted { actor: String },
    /// `constraints.timebox_ms` ran out: like an abort.
    Timeboxed,
    /// Ctrl-C or SIGTERM: nothing more is recorded; the run can resume.
    Interrupted,
}

/// The handle through which a run is stopped and observed while it runs.
#[derive(Default)]
pub struct Control {
    cancel: AtomicBool,
    reason: Mutex<Option<StopReason>>,
    slots: Mutex<Option<Arc<Vec<CachePadded<Slot>>>>>,
}

#[derive(Default)]
struct Slot {
    claimed: AtomicU64,
    started: AtomicU64,
    finished: AtomicU64,
}

impl Control {
    pub fn new() -> Arc<Control> {
        Arc::new(Control::default())
    }

    /// Stops the run; the first reason given wins.
    pub fn stop(&self, reason: StopReason) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        self.cancel.store(true, Ordering::SeqCst);
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn is_stopped(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Shards claimed but not yet started, and shards running now.
    pub fn live_counts(&self) -> (u64, u64) {
        let guard = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slots) = guard.as_ref() else {
            return (0, 0);
        };
        let (mut claimed, mut started, mut finished) = (0u64, 0u64, 0u64);
        for slot in slots.iter() {
            claimed += slot.claimed.load(Ordering::Relaxed);
            started += slot.started.load(Ordering::Relaxed);
            finished += slot.finished.load(Ordering::Relaxed);
        }
        (
            claimed.saturating_sub(started),
            started.saturating_sub(finished),
        )
    }
}

/// Knobs of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub threads: usize,
    pub max_concurrency: usize,
    pub max_attempts: u32,
    pub retry_backoff_ms: u64,
    pub shard_timeout_ms: u64,
    pub dry_run: bool,
    pub artifacts_dir: PathBuf,
    pub timebox: Option<Instant>,
}

/// What the scheduler needs to know about the plan besides the DAG.
pub struct RunInput {
    pub dag: Arc<Dag>,
    /// One executor per stage, in plan order.
    pub executors: Vec<Arc<dyn Executor>>,
    pub stage_ids: Vec<String>,
    pub plan_id: String,
    /// One per shard.
    pub initial: Vec<Initial>,
}

thread_local! {
    static IN_SHARD: Cell<bool> = const { Cell::new(false) };
}

/// Installs (once) a panic hook that stays quiet for panics inside shard
/// code, which become shard failures, and reports every other panic.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_SHARD.with(|flag| flag.get()) {
                default(info);
            }
        }));
    });
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}

struct Shared {
    input: RunInput,
    blocking_stage: Vec<bool>,
    options: RunOptions,
    control: Arc<Control>,
    state: Vec<AtomicU8>,
    deps_left: Vec<AtomicU32>,
    barriers_left: Vec<AtomicU32>,
    stage_left: Vec<AtomicU64>,
    stage_failed: Vec<AtomicBool>,
    terminal_left: AtomicU64,
    jobs_in_flight: AtomicUsize,
    sink: Sender<Vec<Outcome>>,
    cpu_pool: rayon::ThreadPool,
    io_pool: Option<rayon::ThreadPool>,
    slots: Arc<Vec<CachePadded<Slot>>>,
    wake: (Mutex<()>, Condvar),
}

/// Shards that became terminal, per stage, not yet applied to the shared
/// counters. Few stages are touched per job, so a small vector will do.
#[derive(Default)]
struct Tally {
    per_stage: Vec<(usize, u64)>,
}

impl Tally {
    fn add(&mut self, stage: usize) {
        match self.per_stage.iter_mut().find(|(s, _)| *s == stage) {
            Some((_, count)) => *count += 1,
            None => self.per_stage.push((stage, 1)),
        }
    }

    fn is_empty(&self) -> bool {
        self.per_stage.is_empty()
    }

    fn take(&mut self) -> Vec<(usize, u64)> {
        std::mem::take(&mut self.per_stage)
    }
}

/// Outcomes on their way to the collector, sent in bounded batches.
struct Batch<'a> {
    outcomes: Vec<Outcome>,
    sink: &'a Sender<Vec<Outcome>>,
}

impl Batch<'_> {
    fn push(&mut self, outcome: Outcome) {
        self.outcomes.push(outcome);
        if self.outcomes.len() >= OUTCOME_BATCH_MAX {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if !self.outcomes.is_empty() {
            let full = std::mem::replace(&mut self.outcomes, Vec::with_capacity(OUTCOME_BATCH_MAX));
            // A closed channel means the collector stopped (a log failure);
            // the run is being torn down and outcomes have nowhere to go.
            let _ = self.sink.send(full);
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Runs every pending shard of `input` and returns when each has an
/// outcome (sent on `sink`), or when the run was stopped and the rest were
/// swept.
pub fn run(
    input: RunInput,
    options: RunOptions,
    control: Arc<Control>,
    sink: Sender<Vec<Outcome>>,
) {
    install_panic_hook();
    let dag = input.dag.clone();
    let shard_count = dag.shard_count();
    assert_eq!(
        input.initial.len(),
        shard_count,
        "one initial state per shard"
    );
    let stage_count = dag.stages.len();
    let blocking_stage: Vec<bool> = input.executors.iter().map(|e| e.is_blocking()).collect();
    let cpu_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads)
        .thread_name(|i| format!("hxo-cpu-{i}"))
        .build()
        .expect("spawning the worker threads");
    let io_pool = blocking_stage.iter().any(|b| *b).then(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(options.max_concurrency)
            .thread_name(|i| format!("hxo-io-{i}"))
            .build()
            .expect("spawning the blocking-lane threads")
    });
    let slot_count = options.threads + io_pool.as_ref().map_or(0, |_| options.max_concurrency) + 1;
    let slots: Arc<Vec<CachePadded<Slot>>> = Arc::new(
        (0..slot_count)
            .map(|_| CachePadded::new(Slot::default()))
            .collect(),
    );
    *control.slots.lock().unwrap_or_else(|e| e.into_inner()) = Some(slots.clone());

    let state: Vec<AtomicU8> = input
        .initial
        .iter()
        .map(|s| {
            AtomicU8::new(match s {
                Initial::Pending => PENDING,
                Initial::Done => DONE,
                Initial::Failed => FAILED,
            })
        })
        .collect();
    let mut deps_left = vec![0u32; shard_count];
    let mut stage_left = vec![0u64; stage_count];
    let mut stage_failed = vec![false; stage_count];
    for stage_index in 0..stage_count {
        for leaf in dag.stages[stage_index].leaves() {
            match input.initial[leaf as usize] {
                Initial::Done => {}
                Initial::Pending => {
                    stage_left[stage_index] += 1;
                }
                Initial::Failed => stage_failed[stage_index] = true,
            }
            if input.initial[leaf as usize] != Initial::Done {
                for &dependent in dag.dependents(LeafIndex(leaf)) {
                    deps_left[dependent as usize] += 1;
                }
            }
        }
    }
    let barriers_left: Vec<AtomicU32> = (0..stage_count)
        .map(|t| {
            let open = dag.stages[t]
                .upstream
                .iter()
                .filter(|(up, join)| *join == crate::dag::Join::Barrier && stage_left[*up] > 0)
                .count();
            AtomicU32::new(open as u32)
        })
        .collect();
    let terminal_left: u64 = stage_left.iter().sum();
    let shared = Arc::new(Shared {
        blocking_stage,
        options,
        control,
        state,
        deps_left: deps_left.into_iter().map(AtomicU32::new).collect(),
        barriers_left,
        stage_left: stage_left.into_iter().map(AtomicU64::new).collect(),
        stage_failed: stage_failed.iter().map(|f| AtomicBool::new(*f)).collect(),
        terminal_left: AtomicU64::new(terminal_left),
        jobs_in_flight: AtomicUsize::new(0),
        sink,
        cpu_pool,
        io_pool,
        slots,
        wake: (Mutex::new(()), Condvar::new()),
        input,
    });

    // Failures already in the log block what is downstream of them.
    {
        let mut batch = Batch {
            outcomes: Vec::new(),
            sink: &shared.sink,
        };
        let mut stack = Vec::new();
        for stage_index in 0..stage_count {
            if !stage_failed[stage_index] {
                continue;
            }
            for leaf in dag.stages[stage_index].leaves() {
                if shared.input.initial[leaf as usize] == Initial::Failed {
                    for &dependent in dag.dependents(LeafIndex(leaf)) {
                        shared.block(dependent, &mut batch, &mut stack);
                    }
                }
            }
            for &down in dag.barrier_dependents(stage_index) {
                for leaf in dag.stages[down].leaves() {
                    shared.block(leaf, &mut batch, &mut stack);
                }
            }
        }
        let mut ready = Vec::new();
        let mut tally = Tally::default();
        shared.settle(&mut stack, &mut batch, &mut ready, &mut tally);
        shared.flush(&mut stack, &mut batch, &mut ready, &mut tally);
        assert!(ready.is_empty(), "blocking readies nothing");
    }

    let mut ready = Vec::new();
    for stage_index in 0..stage_count {
        if shared.barriers_left[stage_index].load(Ordering::SeqCst) != 0 {
            continue;
        }
        for leaf in dag.stages[stage_index].leaves() {
            if shared.deps_left[leaf as usize].load(Ordering::SeqCst) == 0 && shared.claim(leaf) {
                ready.push(leaf);
            }
        }
    }
    let main_slot = shared.slots.len() - 1;
    shared.dispatch(ready, main_slot);

    // Wait for the end: every shard terminal, or a stop with no job left.
    loop {
        if shared.terminal_left.load(Ordering::SeqCst) == 0 {
            break;
        }
        if let Some(timebox) = shared.options.timebox {
            if Instant::now() >= timebox {
                shared.control.stop(StopReason::Timeboxed);
            }
        }
        if shared.control.is_stopped() && shared.jobs_in_flight.load(Ordering::SeqCst) == 0 {
            shared.sweep();
            break;
        }
        let guard = shared.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = shared
            .wake
            .1
            .wait_timeout(guard, Duration::from_millis(20))
            .unwrap_or_else(|e| e.into_inner());
    }
}

impl Shared {
    fn dag(&self) -> &Dag {
        &self.input.dag
    }

    fn claim(&self, leaf: u32) -> bool {
        self.state[leaf as usize]
            .compare_exchange(PENDING, CLAIMED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }

    fn stop_outcome(&self) -> OutcomeKind {
        match self.control.stop_reason() {
            Some(StopReason::Interrupted) | None => OutcomeKind::Abandoned,
            Some(StopReason::Aborted { .. }) => OutcomeKind::Failed {
                error: "aborted".into(),
                aborted: true,
            },
            Some(StopReason::Timeboxed) => OutcomeKind::Failed {
                error: "aborted: plan timebox exceeded".into(),
                aborted: true,
            },
        }
    }

    /// After a stop, gives every shard that never got an outcome one.
    fn sweep(&self) {
        let mut batch = Batch {
            outcomes: Vec::new(),
            sink: &self.sink,
        };
        let kind = self.stop_outcome();
        for (leaf, state) in self.state.iter().enumerate() {
            for from in [PENDING, CLAIMED] {
                if state
                    .compare_exchange(from, STOPPED, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    self.terminal_left.fetch_sub(1, Ordering::SeqCst);
                    batch.push(Outcome {
                        leaf: leaf as u32,
                        kind: kind.clone(),
                        attempts: 0,
                        duration_us: 0,
                    });
                }
            }
        }
    }

    /// Marks a pending shard BLOCKED and queues it for settling.
    fn block(&self, leaf: u32, batch: &mut Batch<'_>, stack: &mut Vec<(u32, bool)>) {
        if self.state[leaf as usize]
            .compare_exchange(PENDING, BLOCKED, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            batch.push(Outcome {
                leaf,
                kind: OutcomeKind::Blocked,
                attempts: 0,
                duration_us: 0,
            });
            stack.push((leaf, false));
        }
    }

    /// Propagates terminal shards: readies dependents of successes and
    /// blocks dependents of failures. `stack` holds (leaf, succeeded) pairs.
    /// Stage and run counters are only tallied here (they are shared by
    /// every thread: one atomic per shard would bounce their cache lines);
    /// [`Shared::flush`] applies them.
    fn settle(
        &self,
        stack: &mut Vec<(u32, bool)>,
        batch: &mut Batch<'_>,
        ready: &mut Vec<u32>,
        tally: &mut Tally,
    ) {
        let dag = self.dag();
        while let Some((leaf, ok)) = stack.pop() {
            let stage = dag.stage_of(LeafIndex(leaf));
            if ok {
                for &dependent in dag.dependents(LeafIndex(leaf)) {
                    let last =
                        self.deps_left[dependent as usize].fetch_sub(1, Ordering::SeqCst) == 1;
                    let down_stage = dag.stage_of(LeafIndex(dependent));
                    if last
                        && self.barriers_left[down_stage].load(Ordering::SeqCst) == 0
                        && self.claim(dependent)
                    {
                        ready.push(dependent);
                    }
                }
            } else {
                self.stage_failed[stage].store(true, Ordering::SeqCst);
                for &dependent in dag.dependents(LeafIndex(leaf)) {
                    self.block(dependent, batch, stack);
                }
            }
            tally.add(stage);
        }
    }

    /// Applies tallied counts; a stage whose last shard this was opens or
    /// blocks the stages that join it by barrier, which may settle more.
    fn flush(
        &self,
        stack: &mut Vec<(u32, bool)>,
        batch: &mut Batch<'_>,
        ready: &mut Vec<u32>,
        tally: &mut Tally,
    ) {
        let dag = self.dag();
        while !tally.is_empty() {
            for (stage, count) in tally.take() {
                // Failures were marked before this decrement (SeqCst), so the
                // thread that finishes the stage sees them.
                let finished = self.stage_left[stage].fetch_sub(count, Ordering::SeqCst) == count;
                if finished {
                    let failed = self.stage_failed[stage].load(Ordering::SeqCst);
                    for &down in dag.barrier_dependents(stage) {
                        if failed {
                            for next in dag.stages[down].leaves() {
                                self.block(next, batch, stack);
                            }
                        } else if self.barriers_left[down].fetch_sub(1, Ordering::SeqCst) == 1 {
                            for next in dag.stages[down].leaves() {
                                if self.deps_left[next as usize].load(Ordering::SeqCst) == 0
                                    && self.claim(next)
                                {
                                    ready.push(next);
                                }
                            }
                        }
                    }
                }
                // Counted last: the run cannot look finished while a stage's
                // completion is still being propagated.
                self.terminal_left.fetch_sub(count, Ordering::SeqCst);
            }
            self.settle(stack, batch, ready, tally);
        }
    }

    /// Hands claimed shards to the pools, in chunks sized so that every
    /// thread gets several jobs and no job holds more than READY_CHUNK_MAX.
    fn dispatch(self: &Arc<Self>, ready: Vec<u32>, slot: usize) {
        if ready.is_empty() {
            return;
        }
        self.slots[slot]
            .claimed
            .fetch_add(ready.len() as u64, Ordering::Relaxed);
        let dag = self.dag();
        let (mut cpu, mut io): (Vec<u32>, Vec<u32>) = (Vec::new(), Vec::new());
        for leaf in ready {
            if self.blocking_stage[dag.stage_of(LeafIndex(leaf))] {
                io.push(leaf);
            } else {
                cpu.push(leaf);
            }
        }
        // Blocking shards go one per job: each may hold a thread for long.
        for leaf in io {
            self.spawn_job(vec![leaf], true);
        }
        if cpu.is_empty() {
            return;
        }
        let chunk = (cpu.len() / (self.options.threads * 16)).clamp(1, READY_CHUNK_MAX);
        if cpu.len() <= chunk {
            self.spawn_job(cpu, false);
            return;
        }
        for piece in cpu.chunks(chunk) {
            self.spawn_job(piece.to_vec(), false);
        }
    }

    fn spawn_job(self: &Arc<Self>, leaves: Vec<u32>, blocking: bool) {
        self.jobs_in_flight.fetch_add(1, Ordering::SeqCst);
        let shared = self.clone();
        let job = move || {
            shared.run_job(leaves, blocking);
            if shared.jobs_in_flight.fetch_sub(1, Ordering::SeqCst) == 1
                || shared.terminal_left.load(Ordering::SeqCst) == 0
            {
                let _guard = shared.wake.0.lock().unwrap_or_else(|e| e.into_inner());
                shared.wake.1.notify_all();
            }
        };
        match (&self.io_pool, blocking) {
            (Some(pool), true) => pool.spawn(job),
            _ => self.cpu_pool.spawn(job),
        }
    }

    fn slot_index(&self, blocking: bool) -> usize {
        let index = rayon::current_thread_index().unwrap_or(0);
        if blocking {
            self.options.threads + index
        } else {
            index
        }
    }

    fn run_job(self: &Arc<Self>, mut leaves: Vec<u32>, blocking: bool) {
        let slot = &self.slots[self.slot_index(blocking)];
        let mut batch = Batch {
            outcomes: Vec::with_capacity(leaves.len().min(OUTCOME_BATCH_MAX)),
            sink: &self.sink,
        };
        leaves.reverse();
        let mut stack = Vec::new();
        let mut ready = Vec::new();
        let mut tally = Tally::default();
        loop {
            while let Some(leaf) = leaves.pop() {
                let outcome = if self.control.is_stopped() {
                    Outcome {
                        leaf,
                        kind: self.stop_outcome(),
                        attempts: 0,
                        duration_us: 0,
                    }
                } else {
                    slot.started.fetch_add(1, Ordering::Relaxed);
                    let outcome = self.execute(leaf);
                    slot.finished.fetch_add(1, Ordering::Relaxed);
                    outcome
                };
                let ok = matches!(outcome.kind, OutcomeKind::Done(_));
                let stopped = matches!(outcome.kind, OutcomeKind::Abandoned)
                    || matches!(&outcome.kind, OutcomeKind::Failed { aborted: true, .. });
                self.state[leaf as usize].store(
                    if ok {
                        DONE
                    } else if stopped {
                        STOPPED
                    } else {
                        FAILED
                    },
                    Ordering::SeqCst,
                );
                batch.push(outcome);
                if stopped {
                    // A stopped run settles nothing: the sweep accounts for
                    // the rest.
                    self.terminal_left.fetch_sub(1, Ordering::SeqCst);
                    continue;
                }
                stack.push((leaf, ok));
                self.settle(&mut stack, &mut batch, &mut ready, &mut tally);
                self.route(&mut ready, &mut leaves, blocking);
            }
            // Stage counters are applied once per job; finishing a stage may
            // ready a whole downstream stage.
            self.flush(&mut stack, &mut batch, &mut ready, &mut tally);
            self.route(&mut ready, &mut leaves, blocking);
            if leaves.is_empty() {
                break;
            }
        }
    }

    /// Keeps one same-lane successor in this job (a pipeline stays on one
    /// thread, warm in cache) and hands the rest to the pools.
    fn route(self: &Arc<Self>, ready: &mut Vec<u32>, leaves: &mut Vec<u32>, blocking: bool) {
        if ready.is_empty() {
            return;
        }
        let keep = ready
            .iter()
            .position(|&l| self.blocking_stage[self.dag().stage_of(LeafIndex(l))] == blocking);
        if let Some(position) = keep {
            let next = ready.swap_remove(position);
            self.slots[self.slot_index(blocking)]
                .claimed
                .fetch_add(1, Ordering::Relaxed);
            leaves.push(next);
        }
        let rest = std::mem::take(ready);
        self.dispatch(rest, self.slot_index(blocking));
    }

    fn execute(&self, leaf: u32) -> Outcome {
        let dag = self.dag();
        let stage = dag.stage_of(LeafIndex(leaf));
        let executor = &self.input.executors[stage];
        let partition = dag.partition(LeafIndex(leaf));
        let started = Instant::now();
        let timeout = Duration::from_millis(self.options.shard_timeout_ms);
        let mut last_error = String::new();
        let mut attempts = 0;
        for attempt in 1..=self.options.max_attempts {
            attempts = attempt;
            // One clock read per attempt: the first attempt's deadline is
            // measured from the shard's start.
            let attempt_start = if attempt == 1 {
                started
            } else {
                Instant::now()
            };
            let cancel = CancelToken::for_run(&self.control.cancel, Some(attempt_start + timeout));
            let ctx = ShardContext {
                plan_id: &self.input.plan_id,
                stage_id: &self.input.stage_ids[stage],
                leaf_index: leaf as u64,
                cas_id: dag.cas_id(LeafIndex(leaf)),
                input: &partition.input,
                units: 0..partition.input.unit_count(),
                attempt,
                artifacts_dir: &self.options.artifacts_dir,
                cancel: &cancel,
                dry_run: self.options.dry_run,
            };
            IN_SHARD.with(|flag| flag.set(true));
            let result = catch_unwind(AssertUnwindSafe(|| executor.execute(&ctx)));
            IN_SHARD.with(|flag| flag.set(false));
            let elapsed_us = started.elapsed().as_micros() as u64;
            match result {
                Ok(Ok(digest)) => {
                    return Outcome {
                        leaf,
                        kind: OutcomeKind::Done(digest),
                        attempts,
                        duration_us: elapsed_us,
                    }
                }
                Ok(Err(ExecError::Cancelled)) if self.control.is_stopped() => {
                    return Outcome {
                        leaf,
                        kind: self.stop_outcome(),
                        attempts,
                        duration_us: elapsed_us,
                    }
                }
                Ok(Err(ExecError::TimedOut)) => {
                    last_error = format!("timed out after {} ms", self.options.shard_timeout_ms);
                }
                Ok(Err(error)) => last_error = error.to_string(),
                Err(payload) => {
                    last_error = format!("panicked: {}", panic_message(payload.as_ref()))
                }
            }
            if attempt < self.options.max_attempts {
                let backoff_ms = self
                    .options
                    .retry_backoff_ms
                    .saturating_mul(1u64 << (attempt - 1).min(20))
                    .min(crate::limits::RETRY_BACKOFF_MAX_MS);
                let until = Instant::now() + Duration::from_millis(backoff_ms);
                while Instant::now() < until && !self.control.is_stopped() {
                    std::thread::sleep(Duration::from_millis(backoff_ms.min(10)));
                }
                if self.control.is_stopped() {
                    break;
                }
            }
        }
        truncate_utf8(&mut last_error, crate::limits::ERROR_TEXT_BYTES_MAX);
        Outcome {
            leaf,
            kind: OutcomeKind::Failed {
                error: last_error,
                aborted: false,
            },
            attempts,
            duration_us: started.elapsed().as_micros() as u64,
        }
    }
}

/// Cuts `text` to at most `max_bytes` on a character boundary.
pub fn truncate_utf8(text: &mut String, max_bytes: usize) {
    if text.len() > max_bytes {
        let mut cut = max_bytes;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
}
