//! The scheduler: runs a DAG's pending shards on a dedicated rayon pool
//! (CPU-bound executors) and a blocking lane (subprocesses, SQL), and hands
//! every outcome to the caller's [`OutcomeSink`].
//!
//! See `src/sched/README.md` for the states, termination, ordering and
//! backpressure rules in prose; its "Memory ordering" section says, atomic
//! by atomic, which ordering is used and why it is enough, and its "Panic
//! policy" what a panic does (an executor's fails its shard; any other
//! aborts the process). In short:
//! - a shard moves PENDING -> CLAIMED -> (running) -> DONE | FAILED, or
//!   PENDING -> BLOCKED when something upstream failed, or to STOPPED
//!   (abandoned or aborted) when the run stops; every transition out of
//!   PENDING is a compare-and-swap, so each shard gets exactly one outcome;
//! - a shard becomes ready when its shard-level dependency counter and its
//!   stage's barrier counter both reach zero;
//! - outcomes go in batches to an [`OutcomeSink`] on the worker's thread;
//!   when the sink (the log writer) falls behind, workers block in it and
//!   the pool slows down.

use crate::dag::{Dag, LeafIndex};
use crate::exec::{CancelToken, ExecError, Executor, ShardContext};
use crate::hash::Hash;
use crate::limits::{OUTCOME_BATCH_MAX, READY_CHUNK_MAX};
use crate::plan::SchedulerKind;
use crossbeam_channel::Sender;
use crossbeam_utils::CachePadded;
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, Once};
use std::time::{Duration, Instant};

// A shard's state in `Shared::state` (see "States" in the README). Leaving
// PENDING is always a compare-and-swap; CLAIMED is left by a plain store
// from the job that holds the claim, or by the sweep's compare-and-swap.

/// Not started: waits for its dependencies, or is ready to be claimed.
const PENDING: u8 = 0;
/// Claimed by exactly one job, which runs it (or its split pieces) next.
const CLAIMED: u8 = 1;
/// Succeeded, in this run or before it (from the log); never changes again.
const DONE: u8 = 2;
/// Failed, in this run or before it (from the log); never changes again.
const FAILED: u8 = 3;
/// Never runs this run: a shard it depends on failed or was blocked.
const BLOCKED: u8 = 4;
/// Never finishes this run: the run stopped first (abandoned or aborted).
const STOPPED: u8 = 5;

/// A shard's state before the run starts, from the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Initial {
    Pending,
    Done,
    Failed,
}

/// What happened to a shard in this run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OutcomeKind {
    /// Succeeded with this output digest.
    Done(Hash),
    /// Failed (after its last attempt), or was aborted (`aborted`: the
    /// run was aborted or timeboxed before the shard finished).
    Failed { error: String, aborted: bool },
    /// Not run: something upstream failed.
    Blocked,
    /// Not run or not finished: the run was interrupted (resumable).
    Abandoned,
    /// Not terminal: the shard was split into `pieces` sub-shards because
    /// its stage's p95 shard time (`p95_us`) ran over the threshold.
    Split { pieces: u32, p95_us: u64 },
    /// Not terminal: one sub-shard of a split shard is done.
    Piece { piece: u32, digest: Hash },
}

impl OutcomeKind {
    /// Whether the outcome ends the shard (splits and pieces do not).
    pub fn is_terminal(&self) -> bool {
        !matches!(self, OutcomeKind::Split { .. } | OutcomeKind::Piece { .. })
    }
}

/// One shard's outcome, as handed to the [`OutcomeSink`].
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
    // INVARIANT: false until the first `stop`, true from then on (nothing
    // clears it). Set inside `reason`'s critical section, after `reason`
    // is filled in, so whoever sees it true and then locks `reason` finds
    // `Some`. Executors watch it through their `CancelToken` (which could
    // also set it, with no reason, through `CancelToken::cancel`; no
    // executor does).
    cancel: AtomicBool,
    // INVARIANT: `None` until the first `stop`; then the first reason
    // given, never replaced. Held only for a store or a clone.
    reason: Mutex<Option<StopReason>>,
    // INVARIANT: `None` until `run` starts; then the counters of the run
    // (one slot per pool thread, and one for the waiting thread), which
    // only `live_counts` reads. Held only to swap or to sum.
    slots: Mutex<Option<Arc<Vec<CachePadded<Slot>>>>>,
}

/// Live-count counters of one thread (cache-padded: each thread adds to
/// its own slot, so they never share a cache line). Every access is
/// `Relaxed`: they are statistics that nothing else is derived from.
#[derive(Default)]
struct Slot {
    // INVARIANT: shards this thread handed to a job or kept for its own
    // (each claimed shard is counted once, by whoever dispatched it).
    // Only ever incremented.
    claimed: AtomicU64,
    // INVARIANT: shards whose execution began on this thread (a split
    // shard counts once). Only ever incremented.
    started: AtomicU64,
    // INVARIANT: started shards whose execution ended on this thread (for
    // a split shard, where its last piece ended). Only ever incremented.
    // Summed over the slots: started >= finished once no increment is in
    // flight, and claimed >= started.
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
        // Relaxed: a stop needs to be seen soon, not at once, and the
        // reason is read under its mutex ("Memory ordering", README).
        self.cancel.load(Ordering::Relaxed)
    }

    /// Shards claimed but not yet started, and shards running now.
    pub fn live_counts(&self) -> (u64, u64) {
        let guard = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let Some(slots) = guard.as_ref() else {
            return (0, 0);
        };
        // Relaxed: statistics, off by the transitions in flight at most.
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
    pub autosplit: Autosplit,
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
    /// One per stage.
    pub schedulers: Vec<SchedulerKind>,
    /// Splits recorded in the log before this run: leaf -> (pieces, the
    /// digests of pieces already done). Resume reproduces them.
    pub splits: HashMap<u32, (u32, Vec<Option<Hash>>)>,
    /// How deep the log writer's queue is (for `backpressure_aware`).
    pub pressure: Arc<dyn Fn() -> usize + Send + Sync>,
}

/// Hot-shard splitting settings (`HXO_AUTOSPLIT_P95_MS`,
/// `HXO_AUTOSPLIT_FACTOR`).
#[derive(Clone, Copy, Debug)]
pub struct Autosplit {
    pub p95_ms: u64,
    pub factor: u32,
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

/// Aborts the process if dropped while its thread unwinds. The waiting
/// thread holds one while jobs may be running, so that a bug on it aborts
/// instead of unwinding out of `run` under them ("Panic policy" in the
/// README; rayon-core's `unwind::AbortIfPanic` is the model).
struct AbortOnUnwind;

impl Drop for AbortOnUnwind {
    fn drop(&mut self) {
        if std::thread::panicking() {
            crate::note!("hxo: the scheduler panicked while shards were running; aborting");
            std::process::abort();
        }
    }
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

/// The state of one run, shared by the waiting thread and every job.
struct Shared {
    input: RunInput,
    /// Per stage: whether its executor runs on the blocking lane.
    blocking_stage: Vec<bool>,
    options: RunOptions,
    control: Arc<Control>,
    // INVARIANT: one per shard, one of the state constants above, moving
    // only along the README's "States" diagram: PENDING -> CLAIMED |
    // BLOCKED | STOPPED by compare-and-swap (so one thread wins each
    // shard), CLAIMED -> DONE | FAILED | STOPPED. Each shard pending at
    // the start leaves PENDING once and gets one terminal outcome.
    state: Vec<AtomicU8>,
    // INVARIANT: per shard, its shard-level upstream shards (pipelined or
    // chained edges) not DONE: set at the start, decremented once when
    // such a shard becomes DONE, never incremented. It reaches zero only
    // if every one of them succeeded (a failure blocks the shard instead).
    deps_left: Vec<AtomicU32>,
    // INVARIANT: per stage, the upstream stages joined by barrier that had
    // pending shards at the start and have not yet finished without a
    // failure; decremented once per such stage, never incremented.
    barriers_left: Vec<AtomicU32>,
    // INVARIANT: per stage, shards pending at the start whose terminal
    // outcome has not been applied yet (jobs tally and apply per job, so
    // it runs behind the states, never ahead). Stopped shards are never
    // applied. Whoever brings it to zero propagates the stage's end.
    stage_left: Vec<AtomicU64>,
    // INVARIANT: per stage, true once a shard of the stage failed or was
    // blocked (or had failed before the run), never reset; stored before
    // that shard's count is applied to `stage_left`.
    stage_failed: Vec<AtomicBool>,
    // INVARIANT: shards pending at the start with no terminal outcome
    // applied yet: their stage's tallies are applied after the stage's end
    // is propagated, stopped shards are counted one by one. Zero only when
    // every shard has its outcome.
    terminal_left: AtomicU64,
    // INVARIANT: jobs spawned and not yet ended. Incremented before each
    // spawn, by a job that is itself counted or by the waiting thread
    // before it starts waiting, so once the start jobs are spawned and it
    // reads zero, it stays zero. A job decrements it last, after handing
    // over its outcomes.
    jobs_in_flight: AtomicUsize,
    sink: Arc<dyn OutcomeSink>,
    cpu_pool: rayon::ThreadPool,
    io_pool: Option<rayon::ThreadPool>,
    slots: Arc<Vec<CachePadded<Slot>>>,
    // INVARIANT: the mutex guards no data: the waiting thread checks its
    // exit conditions (`terminal_left`, `jobs_in_flight`, the stop) only
    // while holding it, and `job_done` notifies while holding it, so a
    // notification cannot fall between a check and the wait.
    wake: (Mutex<()>, Condvar),
    /// Recent shard durations of stages that may split (bounded).
    // INVARIANT: per stage, at most DURATION_SAMPLES_MAX durations (µs) of
    // its latest DONE shards; only `hot_shard_splitter` stages ever get
    // any, and none once the stage is hot.
    durations: Vec<Mutex<VecDeque<u64>>>,
    /// Stages whose p95 ran over the threshold: their pending shards split.
    // INVARIANT: per stage, false until its p95 runs over the threshold,
    // then true for the rest of the run; stored after `hot_p95_us`.
    hot: Vec<AtomicBool>,
    /// Per stage: the p95 (µs) that made it hot.
    // INVARIANT: per stage, zero until the stage is hot, then a p95 over
    // the threshold (of two notes racing, either one's).
    hot_p95_us: Vec<AtomicU64>,
}

/// Shards remembered for p95 per splitting stage.
const DURATION_SAMPLES_MAX: usize = 256;
/// Shards a stage must finish before its p95 means anything.
const DURATION_SAMPLES_MIN: usize = 3;

/// A split shard in flight: its pieces run as separate jobs and the last
/// one to finish combines their digests into the shard's.
struct SplitState {
    /// The pieces' unit ranges (`merkle::split_ranges`), in unit order.
    ranges: Vec<std::ops::Range<u64>>,
    unit_count: u64,
    // INVARIANT: one per piece, `Some` once the piece is done (before this
    // run or in it); each `None` is filled in only by its piece's job,
    // before that job decrements `remaining`.
    digests: Mutex<Vec<Option<Hash>>>,
    // INVARIANT: pieces of this run not yet ended; each piece's job
    // decrements it once, and the one that brings it to zero (exactly
    // one) combines the pieces and completes the shard.
    remaining: AtomicU32,
    // INVARIANT: the first piece error (message, attempts), if any; set
    // before the failing piece decrements `remaining`.
    failure: Mutex<Option<(String, u32)>>,
    // INVARIANT: the most attempts any ended piece took; raised before
    // that piece decrements `remaining`.
    attempts: AtomicU32,
    started: Instant,
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

/// Where outcomes go: in batches of at most `OUTCOME_BATCH_MAX`, on the
/// thread that produced them, so recording them is spread over the pool.
/// `accept` may block (that is the engine's backpressure).
pub trait OutcomeSink: Send + Sync {
    fn accept(&self, batch: Vec<Outcome>);
}

/// A channel is a sink: whoever receives gets the batches.
impl OutcomeSink for Sender<Vec<Outcome>> {
    fn accept(&self, batch: Vec<Outcome>) {
        // A closed channel means the receiver is gone (the run is being
        // torn down): the outcomes have nowhere to go.
        let _ = self.send(batch);
    }
}

/// How long the outcomes of fast shards wait in a worker's batch at most
/// before they are handed to the sink, and how long a shard must take for
/// its outcome to go over on its own, at once.
const HANDOVER_DELAY: Duration = Duration::from_millis(2);
const HANDOVER_ALONE_US: u64 = 1_000;

/// Outcomes on their way to the sink, handed over in bounded batches: at
/// `OUTCOME_BATCH_MAX` outcomes, or once the oldest waited
/// `HANDOVER_DELAY` (checked when an outcome is added), or at once for a
/// shard that took `HANDOVER_ALONE_US` or more, or when the job ends.
struct Batch<'a> {
    outcomes: Vec<Outcome>,
    // INVARIANT: `Some` only while `outcomes` holds an outcome batched by
    // `push_timed`: when the oldest of those ended, plus HANDOVER_DELAY.
    hand_over_at: Option<Instant>,
    sink: &'a dyn OutcomeSink,
}

impl<'a> Batch<'a> {
    fn new(capacity: usize, sink: &'a dyn OutcomeSink) -> Batch<'a> {
        Batch {
            outcomes: Vec::with_capacity(capacity),
            hand_over_at: None,
            sink,
        }
    }

    /// Returns whether a full batch was sent (which may have waited in
    /// the sink).
    fn push(&mut self, outcome: Outcome) -> bool {
        self.outcomes.push(outcome);
        self.outcomes.len() >= OUTCOME_BATCH_MAX && self.flush()
    }

    /// Batches the outcome of a shard that ended at `ended` (`None`: not
    /// known without a clock read, taken only when the batch has older
    /// outcomes). Returns whether the batch was sent.
    #[inline]
    fn push_timed(&mut self, outcome: Outcome, ended: Option<Instant>) -> bool {
        let slow = outcome.duration_us >= HANDOVER_ALONE_US;
        self.outcomes.push(outcome);
        if slow || self.outcomes.len() >= OUTCOME_BATCH_MAX {
            return self.flush();
        }
        match self.hand_over_at {
            None => {
                self.hand_over_at = Some(ended.unwrap_or_else(Instant::now) + HANDOVER_DELAY);
                false
            }
            // One comparison of instants per outcome, no duration built.
            Some(due) => ended.unwrap_or_else(Instant::now) >= due && self.flush(),
        }
    }

    /// Sends what is batched; returns whether anything was sent.
    fn flush(&mut self) -> bool {
        if self.outcomes.is_empty() {
            return false;
        }
        self.hand_over_at = None;
        let full = std::mem::replace(&mut self.outcomes, Vec::with_capacity(OUTCOME_BATCH_MAX));
        self.sink.accept(full);
        true
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Runs every pending shard of `input` and returns when each has an
/// outcome (handed to `sink`), or when the run was stopped and the rest were
/// swept.
pub fn run(
    input: RunInput,
    options: RunOptions,
    control: Arc<Control>,
    sink: Arc<dyn OutcomeSink>,
) {
    install_panic_hook();
    assert_eq!(
        input.initial.len(),
        input.dag.shard_count(),
        "one initial state per shard"
    );
    let shared = Arc::new(Shared::new(input, options, control, sink));
    // From here until `run` returns, jobs may be running (and the sink is
    // called): a panic on this thread aborts.
    let _abort_on_unwind = AbortOnUnwind;
    shared.block_below_logged_failures();
    shared.spawn_start_jobs();
    if shared.wait_for_end() == End::Stopped {
        shared.sweep();
    }
}

/// Builds the CPU pool and, if some stage blocks, the blocking lane.
fn build_pools(
    options: &RunOptions,
    any_blocking: bool,
) -> (rayon::ThreadPool, Option<rayon::ThreadPool>) {
    // No `panic_handler`: a panic that escapes a job (a bug here, in the
    // sink or in the pressure callback; executors' panics are caught)
    // makes rayon abort the process ("Panic policy" in the README).
    let cpu_pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads)
        .thread_name(|i| format!("hxo-cpu-{i}"))
        .build()
        .expect("spawning the worker threads");
    let io_pool = any_blocking.then(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(options.max_concurrency)
            .thread_name(|i| format!("hxo-io-{i}"))
            .build()
            .expect("spawning the blocking-lane threads")
    });
    (cpu_pool, io_pool)
}

/// The counters before any job runs, from the shards' initial states.
struct InitialCounts {
    deps_left: Vec<u32>,
    stage_left: Vec<u64>,
    stage_failed: Vec<bool>,
    barriers_left: Vec<AtomicU32>,
}

impl InitialCounts {
    fn of(dag: &Dag, initial: &[Initial]) -> InitialCounts {
        let stage_count = dag.stages.len();
        let mut deps_left = vec![0u32; dag.shard_count()];
        let mut stage_left = vec![0u64; stage_count];
        let mut stage_failed = vec![false; stage_count];
        for stage_index in 0..stage_count {
            for leaf in dag.stages[stage_index].leaves() {
                match initial[leaf as usize] {
                    Initial::Done => {}
                    Initial::Pending => {
                        stage_left[stage_index] += 1;
                    }
                    Initial::Failed => stage_failed[stage_index] = true,
                }
                if initial[leaf as usize] != Initial::Done {
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
        InitialCounts {
            deps_left,
            stage_left,
            stage_failed,
            barriers_left,
        }
    }
}

/// How the wait for a run's end ended.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Every shard has its outcome and every job has ended.
    Finished,
    /// The run was stopped and every job has ended: the sweep is due.
    Stopped,
}

impl Shared {
    /// The run's state before any job: the pools, the live-count slots
    /// (handed to `control`) and the counters.
    fn new(
        input: RunInput,
        options: RunOptions,
        control: Arc<Control>,
        sink: Arc<dyn OutcomeSink>,
    ) -> Shared {
        let stage_count = input.dag.stages.len();
        let blocking_stage: Vec<bool> = input.executors.iter().map(|e| e.is_blocking()).collect();
        let (cpu_pool, io_pool) = build_pools(&options, blocking_stage.iter().any(|b| *b));
        let slot_count =
            options.threads + io_pool.as_ref().map_or(0, |_| options.max_concurrency) + 1;
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
        let counts = InitialCounts::of(&input.dag, &input.initial);
        let terminal_left: u64 = counts.stage_left.iter().sum();
        Shared {
            blocking_stage,
            options,
            control,
            state,
            deps_left: counts.deps_left.into_iter().map(AtomicU32::new).collect(),
            barriers_left: counts.barriers_left,
            stage_left: counts.stage_left.into_iter().map(AtomicU64::new).collect(),
            stage_failed: counts
                .stage_failed
                .iter()
                .map(|f| AtomicBool::new(*f))
                .collect(),
            terminal_left: AtomicU64::new(terminal_left),
            jobs_in_flight: AtomicUsize::new(0),
            sink,
            cpu_pool,
            io_pool,
            slots,
            wake: (Mutex::new(()), Condvar::new()),
            durations: (0..stage_count)
                .map(|_| Mutex::new(VecDeque::new()))
                .collect(),
            hot: (0..stage_count).map(|_| AtomicBool::new(false)).collect(),
            hot_p95_us: (0..stage_count).map(|_| AtomicU64::new(0)).collect(),
            input,
        }
    }

    /// Failures already in the log block what is downstream of them. Runs
    /// before any job, on the waiting thread.
    fn block_below_logged_failures(self: &Arc<Self>) {
        let dag = self.dag();
        let mut batch = Batch::new(0, &*self.sink);
        let mut stack = Vec::new();
        // Nothing but the log has marked a stage failed yet: `block` only
        // stacks the shards it blocks, and they settle after the loop.
        let failed_stages =
            (0..dag.stages.len()).filter(|&stage| self.stage_failed[stage].load(Ordering::SeqCst));
        for stage_index in failed_stages {
            for leaf in dag.stages[stage_index].leaves() {
                if self.input.initial[leaf as usize] == Initial::Failed {
                    for &dependent in dag.dependents(LeafIndex(leaf)) {
                        self.block(dependent, &mut batch, &mut stack);
                    }
                }
            }
            for &down in dag.barrier_dependents(stage_index) {
                for leaf in dag.stages[down].leaves() {
                    self.block(leaf, &mut batch, &mut stack);
                }
            }
        }
        let mut ready = Vec::new();
        let mut tally = Tally::default();
        self.settle(&mut stack, &mut batch, &mut ready, &mut tally);
        self.flush(&mut stack, &mut batch, &mut ready, &mut tally);
        assert!(ready.is_empty(), "blocking readies nothing");
    }

    /// Spawns the jobs that start the run. The ready shards of blocking
    /// stages go one per job; those of CPU stages are claimed by the pool
    /// itself, a range of leaves per job ([`Shared::spawn_start_ranges`]),
    /// so no thread walks a million leaves before the first shard runs.
    fn spawn_start_jobs(self: &Arc<Self>) {
        let dag = self.dag();
        let mut ready = Vec::new();
        let mut cpu_stages = Vec::new();
        for stage_index in 0..dag.stages.len() {
            if self.barriers_left[stage_index].load(Ordering::SeqCst) != 0 {
                continue;
            }
            if self.blocking_stage[stage_index] {
                ready.extend(dag.stages[stage_index].leaves().filter(|&leaf| {
                    self.deps_left[leaf as usize].load(Ordering::SeqCst) == 0 && self.claim(leaf)
                }));
            } else {
                cpu_stages.push(stage_index);
            }
        }
        let main_slot = self.slots.len() - 1;
        self.dispatch(ready, main_slot);
        self.spawn_start_ranges(&cpu_stages);
    }

    /// Spawns one start job per range of leaves of `cpu_stages` (ranges of
    /// stages that share out fairly alternate). Ranges are cut by leaves,
    /// so that there are several per thread; the shards a range finds
    /// ready are cut by the pending count, so that pending shards bunched
    /// in one range (a resume) still spread. No range at all when nothing
    /// is pending (a resume of a finished plan).
    fn spawn_start_ranges(self: &Arc<Self>, cpu_stages: &[usize]) {
        let dag = self.dag();
        let leaf_total: usize = cpu_stages
            .iter()
            .map(|&stage| dag.stages[stage].shard_count as usize)
            .sum();
        // Read while blocking-lane jobs may already settle shards: the
        // count only sizes the jobs.
        let pending_total: usize = cpu_stages
            .iter()
            .map(|&stage| self.stage_left[stage].load(Ordering::SeqCst) as usize)
            .sum();
        if pending_total == 0 {
            return;
        }
        let range_len = self.job_len(leaf_total) as u32;
        let piece_len = self.job_len(pending_total);
        let mut ranges: Vec<_> = cpu_stages
            .iter()
            .map(|&stage| {
                let leaves = dag.stages[stage].leaves();
                (leaves.start..leaves.end)
                    .step_by(range_len as usize)
                    .map(move |start| start..start.saturating_add(range_len).min(leaves.end))
            })
            .collect();
        let fair = cpu_stages
            .iter()
            .any(|&stage| self.input.schedulers[stage] == SchedulerKind::FairRoundRobin);
        if fair {
            // One range of each stage in turn.
            let mut any = true;
            while any {
                any = false;
                for stage_ranges in &mut ranges {
                    if let Some(range) = stage_ranges.next() {
                        self.spawn_ready_range(range, piece_len);
                        any = true;
                    }
                }
            }
        } else {
            for range in ranges.into_iter().flatten() {
                self.spawn_ready_range(range, piece_len);
            }
        }
    }

    /// Waits, on the caller's thread, for the end: every shard terminal and
    /// every job ended, or a stop with no job left. Stops the run when its
    /// timebox runs out.
    fn wait_for_end(&self) -> End {
        // Conditions are checked under the lock `job_done` notifies under,
        // so no wakeup is lost (the timeout only paces the timebox check).
        let wait = |guard| {
            self.wake
                .1
                .wait_timeout(guard, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0
        };
        let mut guard = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if self.terminal_left.load(Ordering::SeqCst) == 0 {
                break;
            }
            if let Some(timebox) = self.options.timebox {
                if Instant::now() >= timebox {
                    self.control.stop(StopReason::Timeboxed);
                }
            }
            if self.control.is_stopped() && self.jobs_in_flight.load(Ordering::SeqCst) == 0 {
                return End::Stopped;
            }
            guard = wait(guard);
        }
        // Every job hands its last outcomes to the sink before it ends:
        // once none is left, the sink has them all.
        while self.jobs_in_flight.load(Ordering::SeqCst) != 0 {
            guard = wait(guard);
        }
        End::Finished
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
        let mut batch = Batch::new(0, &*self.sink);
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
                // SeqCst, not just acquire-release: with `flush`'s barrier
                // decrement and `deps_left` load this is a store-buffering
                // pattern, and one of the two threads must see both zeros
                // ("Memory ordering" in the README).
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
                            // SeqCst: the other half of `settle`'s pattern.
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
        let cpu = self.interleave(cpu);
        let chunk = self.job_len(cpu.len());
        if cpu.len() <= chunk {
            self.spawn_job(cpu, false);
            return;
        }
        for piece in cpu.chunks(chunk) {
            self.spawn_job(piece.to_vec(), false);
        }
    }

    /// How many of `count` ready shards (or leaves to look through) one
    /// job takes: enough jobs that every thread gets several, none over
    /// `READY_CHUNK_MAX`.
    fn job_len(&self, count: usize) -> usize {
        (count / (self.options.threads * 16)).clamp(1, READY_CHUNK_MAX)
    }

    /// `fair_round_robin`: when shards of several stages become ready
    /// together, hand them out one stage after another rather than stage by
    /// stage, so no stage (or executor) waits behind another's backlog.
    fn interleave(&self, ready: Vec<u32>) -> Vec<u32> {
        let dag = self.dag();
        let first_stage = dag.stage_of(LeafIndex(ready[0]));
        let mixed = ready
            .iter()
            .any(|&l| dag.stage_of(LeafIndex(l)) != first_stage);
        if !mixed {
            return ready;
        }
        let mut by_stage: Vec<(usize, VecDeque<u32>)> = Vec::new();
        for leaf in ready {
            let stage = dag.stage_of(LeafIndex(leaf));
            match by_stage.iter_mut().find(|(s, _)| *s == stage) {
                Some((_, queue)) => queue.push_back(leaf),
                None => by_stage.push((stage, VecDeque::from([leaf]))),
            }
        }
        if !by_stage
            .iter()
            .any(|(stage, _)| self.input.schedulers[*stage] == SchedulerKind::FairRoundRobin)
        {
            return by_stage.into_iter().flat_map(|(_, q)| q).collect();
        }
        let mut out = Vec::new();
        while !by_stage.is_empty() {
            by_stage.retain_mut(|(_, queue)| match queue.pop_front() {
                Some(leaf) => {
                    out.push(leaf);
                    true
                }
                None => false,
            });
        }
        out
    }

    fn spawn_job(self: &Arc<Self>, leaves: Vec<u32>, blocking: bool) {
        self.jobs_in_flight.fetch_add(1, Ordering::SeqCst);
        let shared = self.clone();
        let job = move || {
            shared.run_job(leaves, blocking);
            shared.job_done();
        };
        match (&self.io_pool, blocking) {
            (Some(pool), true) => pool.spawn(job),
            _ => self.cpu_pool.spawn(job),
        }
    }

    /// A CPU-pool job that claims the ready shards among `leaves` (of one
    /// non-blocking stage) and runs them, handing all but the first
    /// `piece_len` to other jobs.
    fn spawn_ready_range(self: &Arc<Self>, leaves: std::ops::Range<u32>, piece_len: usize) {
        self.jobs_in_flight.fetch_add(1, Ordering::SeqCst);
        let shared = self.clone();
        self.cpu_pool.spawn(move || {
            let mut ready: Vec<u32> = leaves
                .filter(|&leaf| {
                    shared.deps_left[leaf as usize].load(Ordering::SeqCst) == 0
                        && shared.claim(leaf)
                })
                .collect();
            if !ready.is_empty() {
                shared.slots[shared.slot_index(false)]
                    .claimed
                    .fetch_add(ready.len() as u64, Ordering::Relaxed);
                for piece in ready.get(piece_len..).unwrap_or(&[]).chunks(piece_len) {
                    shared.spawn_job(piece.to_vec(), false);
                }
                ready.truncate(piece_len);
                shared.run_job(ready, false);
            }
            shared.job_done();
        });
    }

    fn slot_index(&self, blocking: bool) -> usize {
        let index = rayon::current_thread_index().unwrap_or(0);
        if blocking {
            self.options.threads + index
        } else {
            index
        }
    }

    fn run_job(self: &Arc<Self>, leaves: Vec<u32>, blocking: bool) {
        self.work(leaves, None, blocking);
    }

    /// Runs `leaves` (and the successors they ready on this lane), after
    /// first completing `finished` when a split shard's last piece ends.
    fn work(self: &Arc<Self>, mut leaves: Vec<u32>, mut finished: Option<Outcome>, blocking: bool) {
        let slot = &self.slots[self.slot_index(blocking)];
        let mut batch = Batch::new(leaves.len().clamp(1, OUTCOME_BATCH_MAX), &*self.sink);
        leaves.reverse();
        let mut stack = Vec::new();
        let mut ready = Vec::new();
        let mut tally = Tally::default();
        // When the last shard on this worker ended: the next one starts
        // then, unless something that may wait (a send) came in between:
        // one clock read per shard, not two.
        let mut clock: Option<Instant> = None;
        loop {
            loop {
                let outcome = match finished.take() {
                    Some(outcome) => outcome,
                    None => {
                        let Some(leaf) = leaves.pop() else { break };
                        match self.run_shard(leaf, slot, &mut batch, &mut clock, blocking) {
                            Some(outcome) => outcome,
                            // Split: the pieces finish the shard later,
                            // elsewhere.
                            None => continue,
                        }
                    }
                };
                let leaf = outcome.leaf;
                let Some(ok) = self.record(outcome, &mut batch, &mut clock) else {
                    continue;
                };
                stack.push((leaf, ok));
                self.settle(&mut stack, &mut batch, &mut ready, &mut tally);
                self.route(&mut ready, &mut leaves, blocking);
            }
            // Stage counters are applied once per pass; finishing a stage
            // may ready a whole downstream stage.
            self.flush(&mut stack, &mut batch, &mut ready, &mut tally);
            clock = None;
            self.route(&mut ready, &mut leaves, blocking);
            if leaves.is_empty() {
                break;
            }
        }
    }

    /// Runs `leaf`, claimed by this job, or gives it the stop outcome if
    /// the run is stopped. Returns `None` when it was split instead (its
    /// pieces complete it later). `clock` is when the previous shard on this
    /// worker ended, unless something that may wait came since.
    #[inline]
    fn run_shard(
        self: &Arc<Self>,
        leaf: u32,
        slot: &Slot,
        batch: &mut Batch<'_>,
        clock: &mut Option<Instant>,
        blocking: bool,
    ) -> Option<Outcome> {
        if self.control.is_stopped() {
            return Some(Outcome {
                leaf,
                kind: self.stop_outcome(),
                attempts: 0,
                duration_us: 0,
            });
        }
        if self.wait_for_log(leaf) {
            *clock = None;
        }
        slot.started.fetch_add(1, Ordering::Relaxed);
        if let Some(pieces) = self.split_pieces(leaf) {
            self.start_split(leaf, pieces, batch, blocking);
            *clock = None;
            return None;
        }
        let started = clock.take().unwrap_or_else(Instant::now);
        let (outcome, ended) = self.execute(leaf, started);
        *clock = ended;
        slot.finished.fetch_add(1, Ordering::Relaxed);
        Some(outcome)
    }

    /// Gives `outcome`'s shard its terminal state and batches the outcome.
    /// Returns whether the shard succeeded, to be settled; `None` for a
    /// stop outcome, which settles nothing (the sweep accounts for the
    /// rest of a stopped run).
    #[inline]
    fn record(
        &self,
        outcome: Outcome,
        batch: &mut Batch<'_>,
        clock: &mut Option<Instant>,
    ) -> Option<bool> {
        let leaf = outcome.leaf;
        let ok = matches!(outcome.kind, OutcomeKind::Done(_));
        let stopped = matches!(outcome.kind, OutcomeKind::Abandoned)
            || matches!(&outcome.kind, OutcomeKind::Failed { aborted: true, .. });
        if ok {
            self.note_duration(leaf, outcome.duration_us);
        }
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
        // `clock` is when this outcome's shard ended (if it ran here).
        if batch.push_timed(outcome, *clock) {
            *clock = None;
        }
        if stopped {
            self.terminal_left.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(ok)
    }

    /// `backpressure_aware` stages wait while the log writer's queue is
    /// more than half full, rather than piling up outcomes behind it.
    /// Returns whether it may have waited.
    fn wait_for_log(&self, leaf: u32) -> bool {
        let stage = self.dag().stage_of(LeafIndex(leaf));
        if self.input.schedulers[stage] != SchedulerKind::BackpressureAware {
            return false;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while (self.input.pressure)() > crate::limits::LOG_QUEUE_BATCHES_MAX / 2
            && !self.control.is_stopped()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Records a finished shard's duration for its stage's p95 and marks
    /// the stage hot when the p95 runs over the threshold.
    fn note_duration(&self, leaf: u32, duration_us: u64) {
        let stage = self.dag().stage_of(LeafIndex(leaf));
        if self.input.schedulers[stage] != SchedulerKind::HotShardSplitter
            // Relaxed: only an early-out; a stale false samples once more.
            || self.hot[stage].load(Ordering::Relaxed)
        {
            return;
        }
        let mut samples = self.durations[stage]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if samples.len() == DURATION_SAMPLES_MAX {
            samples.pop_front();
        }
        samples.push_back(duration_us);
        if samples.len() < DURATION_SAMPLES_MIN {
            return;
        }
        let mut sorted: Vec<u64> = samples.iter().copied().collect();
        let p95 = crate::report::percentile_us(&mut sorted, 95.0);
        if p95 > self.options.autosplit.p95_ms * 1000 {
            // The p95 first, then the flag (a release store), which
            // `split_pieces` loads with acquire.
            self.hot_p95_us[stage].store(p95, Ordering::Relaxed);
            self.hot[stage].store(true, Ordering::SeqCst);
        }
    }

    /// How many pieces `leaf` runs as: a split recorded before (resume
    /// reproduces it), or a new one when its stage is hot.
    fn split_pieces(&self, leaf: u32) -> Option<u32> {
        if let Some((pieces, _)) = self.input.splits.get(&leaf) {
            return Some(*pieces);
        }
        let dag = self.dag();
        let stage = dag.stage_of(LeafIndex(leaf));
        // Acquire: pairs with `note_duration`'s store, so that
        // `start_split` sees the p95 that made the stage hot.
        if !self.hot[stage].load(Ordering::Acquire) || !self.input.executors[stage].is_splittable()
        {
            return None;
        }
        let units = dag.partition(LeafIndex(leaf)).input.unit_count();
        (units >= 2).then(|| {
            crate::merkle::split_ranges(units, self.options.autosplit.factor as u64).len() as u32
        })
    }

    /// Splits `leaf` into `pieces` sub-shards at the RFC 6962 tree's own
    /// boundaries (so their digests recombine to the unsplit digest) and
    /// hands the pieces not yet done to the pool.
    fn start_split(
        self: &Arc<Self>,
        leaf: u32,
        pieces: u32,
        batch: &mut Batch<'_>,
        blocking: bool,
    ) {
        let units = self.dag().partition(LeafIndex(leaf)).input.unit_count();
        let ranges = crate::merkle::split_ranges(units, pieces as u64);
        let done: Vec<Option<Hash>> = match self.input.splits.get(&leaf) {
            Some((recorded, digests)) if *recorded as usize == ranges.len() => digests.clone(),
            _ => {
                let stage = self.dag().stage_of(LeafIndex(leaf));
                batch.push(Outcome {
                    leaf,
                    kind: OutcomeKind::Split {
                        pieces: ranges.len() as u32,
                        p95_us: self.hot_p95_us[stage].load(Ordering::Relaxed),
                    },
                    attempts: 0,
                    duration_us: 0,
                });
                vec![None; ranges.len()]
            }
        };
        let missing: Vec<u32> = (0..ranges.len() as u32)
            .filter(|&p| done[p as usize].is_none())
            .collect();
        let state = Arc::new(SplitState {
            ranges,
            unit_count: units,
            remaining: AtomicU32::new(missing.len() as u32),
            digests: Mutex::new(done),
            failure: Mutex::new(None),
            attempts: AtomicU32::new(0),
            started: Instant::now(),
        });
        if missing.is_empty() {
            // Every piece was done before a crash: just combine.
            let outcome = self.combine(leaf, &state);
            batch.flush();
            self.spawn_finish(outcome, blocking);
            return;
        }
        batch.flush();
        for piece in missing {
            let shared = self.clone();
            let state = state.clone();
            self.jobs_in_flight.fetch_add(1, Ordering::SeqCst);
            let job = move || {
                shared.run_piece(leaf, piece, &state, blocking);
                shared.job_done();
            };
            match (&self.io_pool, blocking) {
                (Some(pool), true) => pool.spawn(job),
                _ => self.cpu_pool.spawn(job),
            }
        }
    }

    fn spawn_finish(self: &Arc<Self>, outcome: Outcome, blocking: bool) {
        let shared = self.clone();
        self.jobs_in_flight.fetch_add(1, Ordering::SeqCst);
        let job = move || {
            shared.work(Vec::new(), Some(outcome), blocking);
            shared.job_done();
        };
        match (&self.io_pool, blocking) {
            (Some(pool), true) => pool.spawn(job),
            _ => self.cpu_pool.spawn(job),
        }
    }

    fn run_piece(self: &Arc<Self>, leaf: u32, piece: u32, state: &SplitState, blocking: bool) {
        let range = state.ranges[piece as usize].clone();
        let result = if self.control.is_stopped() {
            Err(("stopped".to_string(), 0))
        } else {
            self.execute_units(leaf, Some(range), Instant::now())
                .map(|(digest, attempts, _, _)| (digest, attempts))
        };
        let mut batch = Batch::new(0, &*self.sink);
        match result {
            Ok((digest, attempts)) => {
                state.attempts.fetch_max(attempts, Ordering::Relaxed);
                state.digests.lock().unwrap_or_else(|e| e.into_inner())[piece as usize] =
                    Some(digest);
                batch.push(Outcome {
                    leaf,
                    kind: OutcomeKind::Piece { piece, digest },
                    attempts,
                    duration_us: 0,
                });
            }
            Err((error, attempts)) => {
                state.attempts.fetch_max(attempts, Ordering::Relaxed);
                let mut failure = state.failure.lock().unwrap_or_else(|e| e.into_inner());
                failure.get_or_insert((format!("piece {piece}: {error}"), attempts));
            }
        }
        batch.flush();
        drop(batch);
        // At least acquire-release: the piece that combines must see every
        // piece's `attempts`, raised (Relaxed) before its decrement.
        if state.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
            let outcome = self.combine(leaf, state);
            self.slots[self.slot_index(blocking)]
                .finished
                .fetch_add(1, Ordering::Relaxed);
            self.work(Vec::new(), Some(outcome), blocking);
        }
    }

    /// The shard outcome of a split shard whose pieces have all ended.
    fn combine(&self, leaf: u32, state: &SplitState) -> Outcome {
        let duration_us = state.started.elapsed().as_micros() as u64;
        let attempts = state.attempts.load(Ordering::Relaxed).max(1);
        if self.control.is_stopped() {
            return Outcome {
                leaf,
                kind: self.stop_outcome(),
                attempts,
                duration_us,
            };
        }
        if let Some((error, attempts)) = state
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Outcome {
                leaf,
                kind: OutcomeKind::Failed {
                    error,
                    aborted: false,
                },
                attempts,
                duration_us,
            };
        }
        let digests = state.digests.lock().unwrap_or_else(|e| e.into_inner());
        let parts: Vec<(std::ops::Range<u64>, Hash)> = state
            .ranges
            .iter()
            .cloned()
            .zip(digests.iter().map(|d| d.expect("every piece is done")))
            .collect();
        let kind = match crate::merkle::combine_ranges(state.unit_count, &parts) {
            Some(digest) => OutcomeKind::Done(digest),
            None => OutcomeKind::Failed {
                error: "split pieces do not recombine (a bug)".into(),
                aborted: false,
            },
        };
        Outcome {
            leaf,
            kind,
            attempts,
            duration_us,
        }
    }

    fn job_done(&self) {
        if self.jobs_in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            || self.terminal_left.load(Ordering::SeqCst) == 0
        {
            let _guard = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            self.wake.1.notify_all();
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

    /// Runs `leaf`, which started at `started`; also returns when it ended
    /// if it is done.
    fn execute(&self, leaf: u32, started: Instant) -> (Outcome, Option<Instant>) {
        let outcome = match self.execute_units(leaf, None, started) {
            Ok((digest, attempts, duration_us, ended)) => {
                let outcome = Outcome {
                    leaf,
                    kind: OutcomeKind::Done(digest),
                    attempts,
                    duration_us,
                };
                return (outcome, Some(ended));
            }
            Err((error, attempts)) if error.is_empty() => Outcome {
                leaf,
                kind: self.stop_outcome(),
                attempts,
                duration_us: 0,
            },
            Err((error, attempts)) => Outcome {
                leaf,
                kind: OutcomeKind::Failed {
                    error,
                    aborted: false,
                },
                attempts,
                duration_us: 0,
            },
        };
        (outcome, None)
    }

    /// Runs `units` of `leaf` (all of them if `None`), which started at
    /// `started` (its duration and its first attempt's timeout count from
    /// then), with retries and the shard timeout. Returns (digest,
    /// attempts, duration, end) or (error, attempts); an empty error means
    /// the run was stopped.
    fn execute_units(
        &self,
        leaf: u32,
        units: Option<std::ops::Range<u64>>,
        started: Instant,
    ) -> Result<(Hash, u32, u64, Instant), (String, u32)> {
        let dag = self.dag();
        let stage = dag.stage_of(LeafIndex(leaf));
        let executor = &self.input.executors[stage];
        let partition = dag.partition(LeafIndex(leaf));
        let units = units.unwrap_or_else(|| 0..partition.input.unit_count());
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
                units: units.clone(),
                attempt,
                artifacts_dir: &self.options.artifacts_dir,
                cancel: &cancel,
                dry_run: self.options.dry_run,
            };
            IN_SHARD.with(|flag| flag.set(true));
            let result = catch_unwind(AssertUnwindSafe(|| executor.execute(&ctx)));
            IN_SHARD.with(|flag| flag.set(false));
            match result {
                Ok(Ok(digest)) => {
                    let ended = Instant::now();
                    // An executor that ignored its token and ran past the
                    // deadline did not finish in time: its result is not
                    // kept (the same clock read serves the duration).
                    if ended < attempt_start + timeout {
                        let duration_us = (ended - started).as_micros() as u64;
                        return Ok((digest, attempts, duration_us, ended));
                    }
                    last_error = format!("timed out after {} ms", self.options.shard_timeout_ms);
                }
                Ok(Err(ExecError::Cancelled)) if self.control.is_stopped() => {
                    return Err((String::new(), attempts));
                }
                Ok(Err(ExecError::TimedOut)) => {
                    last_error = format!("timed out after {} ms", self.options.shard_timeout_ms);
                }
                Ok(Err(error)) => last_error = error.to_string(),
                Err(payload) => {
                    last_error = format!("panicked: {}", panic_message(payload.as_ref()))
                }
            }
            if attempt < self.options.max_attempts && self.back_off(attempt) {
                return Err((String::new(), attempts));
            }
        }
        truncate_utf8(&mut last_error, crate::limits::ERROR_TEXT_BYTES_MAX);
        if last_error.is_empty() {
            last_error = "failed".into();
        }
        Err((last_error, attempts))
    }

    /// Sleeps the backoff after failed attempt `attempt` (exponential from
    /// `retry_backoff_ms`, capped), waking early on a stop. Returns whether
    /// the run was stopped.
    fn back_off(&self, attempt: u32) -> bool {
        let backoff_ms = self
            .options
            .retry_backoff_ms
            .saturating_mul(1u64 << (attempt - 1).min(20))
            .min(crate::limits::RETRY_BACKOFF_MAX_MS);
        let until = Instant::now() + Duration::from_millis(backoff_ms);
        while Instant::now() < until && !self.control.is_stopped() {
            std::thread::sleep(Duration::from_millis(backoff_ms.min(10)));
        }
        self.control.is_stopped()
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

#[cfg(test)]
mod tests;
