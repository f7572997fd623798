//! Running a plan: the run slot that makes a plan `Running`, the steps of
//! one run (initial states, reuse, options, drive, end of run), the
//! `Recorder` that turns the scheduler's outcomes into log records on the
//! workers' threads, the SLO ticker, and background runs.
//!
//! INVARIANT: a plan has at most one [`RunTicket`] at a time, and its slot
//! is registered in the engine's `running` map for exactly as long as the
//! ticket lives (dropping it, a panic included, unregisters it).

use super::{Engine, EngineError, Progress, RunEnd, RunSummary};
use crate::dag::{Dag, LeafIndex};
use crate::events;
use crate::ids::{plan_id_text, PlanId};
use crate::log::{Record, RunCause};
use crate::sched::{self, Control, Initial, OutcomeKind, RunInput, RunOptions, StopReason};
use crate::store::{PlanEntry, SlotState, StoreError};
use serde_json::json;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::compile::{absolute, Compiled};

/// A plan running (or about to run) in this process.
pub(super) struct RunningPlan {
    pub control: Arc<Control>,
    /// This run's recent rate of outcomes, for the ETA.
    pub rate: Arc<RateWindow>,
}

/// How far back the ETA's rate looks.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Samples kept at most (one per 100 ms tick over the window, and some).
const RATE_SAMPLES_MAX: usize = 128;

/// A run's recent rate: (when, shards of the plan with an outcome),
/// sampled every 100 ms while it runs, over the last [`RATE_WINDOW`]. The
/// first sample is taken when the run starts, after reuse, so shards done
/// before the run and reused ones count as done but not as speed.
pub(super) struct RateWindow {
    // INVARIANT: ascending in time; at most RATE_SAMPLES_MAX; the oldest
    // is the last sample at or before the window's start (or the first).
    samples: Mutex<VecDeque<(Instant, u64)>>,
}

impl RateWindow {
    fn new() -> RateWindow {
        RateWindow {
            samples: Mutex::new(VecDeque::with_capacity(RATE_SAMPLES_MAX)),
        }
    }

    fn start(&self, finished: u64) {
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.clear();
        samples.push_back((Instant::now(), finished));
    }

    fn sample(&self, finished: u64) {
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.push_back((now, finished));
        while samples.len() > RATE_SAMPLES_MAX
            || (samples.len() > 2 && now.duration_since(samples[1].0) >= RATE_WINDOW)
        {
            samples.pop_front();
        }
    }

    /// Outcomes per second since the window's oldest sample, given the
    /// plan's count now.
    pub(super) fn per_second(&self, finished_now: u64) -> f64 {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&(since, finished_then)) = samples.front() else {
            return 0.0;
        };
        let elapsed = since.elapsed().as_secs_f64();
        if elapsed > 0.0 {
            finished_now.saturating_sub(finished_then) as f64 / elapsed
        } else {
            0.0
        }
    }
}

/// Shards of the plan with an outcome (durable).
pub(super) fn finished_count(entry: &PlanEntry) -> u64 {
    let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
    plan.shard_count() - plan.pending_count()
}

/// A plan's claim to run in this process, with everything the run needs.
/// While it lives the plan's status is `Running`; [`Engine::run`] runs it
/// in the caller's thread, [`Engine::spawn`] in a thread of its own.
pub struct RunTicket {
    engine: Arc<Engine>,
    plan_id: PlanId,
    compiled: Compiled,
    cause: RunCause,
}

impl RunTicket {
    pub fn plan_id(&self) -> &PlanId {
        &self.plan_id
    }

    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }
}

impl Drop for RunTicket {
    fn drop(&mut self) {
        self.engine
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.plan_id);
        self.engine.publish_running();
    }
}

impl Engine {
    /// Takes the run slot of `plan_id`: refused while it runs already, or
    /// while as many plans run here as [`Engine::set_runs_max`] allows.
    pub(super) fn reserve(
        self: &Arc<Self>,
        plan_id: PlanId,
        compiled: Compiled,
        cause: RunCause,
    ) -> Result<RunTicket, EngineError> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.contains_key(&plan_id) {
            return Err(EngineError::Running(plan_id_text(&plan_id)));
        }
        self.capacity_left(running.len())?;
        running.insert(
            plan_id,
            RunningPlan {
                control: Control::new(),
                rate: Arc::new(RateWindow::new()),
            },
        );
        drop(running);
        self.publish_running();
        Ok(RunTicket {
            engine: self.clone(),
            plan_id,
            compiled,
            cause,
        })
    }

    /// Refuses with [`EngineError::AtCapacity`] while every run slot is
    /// taken (a hint: [`Engine::reserve`] decides).
    pub(super) fn check_capacity(&self) -> Result<(), EngineError> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner()).len();
        self.capacity_left(running)
    }

    /// Refuses another run when `running` runs take every slot.
    fn capacity_left(&self, running: usize) -> Result<(), EngineError> {
        let runs_max = self.runs_max.load(Ordering::SeqCst);
        if running >= runs_max {
            return Err(EngineError::AtCapacity { runs_max });
        }
        Ok(())
    }

    /// The run's rate window, started now with `finished` outcomes (done
    /// before the run or reused, so not counted as its speed).
    fn start_clock(&self, plan_id: &PlanId, finished: u64) -> Arc<RateWindow> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let rate = running
            .get(plan_id)
            .expect("the ticket's slot is registered")
            .rate
            .clone();
        drop(running);
        rate.start(finished);
        rate
    }

    /// Runs a ticket's plan in this thread until every shard has an outcome
    /// or the run is stopped. Shards already DONE in the log are skipped;
    /// shards DONE under the same cas_id in any plan of the store are
    /// reused.
    pub fn run(
        &self,
        ticket: RunTicket,
        progress: Option<&dyn Progress>,
    ) -> Result<RunSummary, EngineError> {
        let plan_id = ticket.plan_id;
        let end = self.run_steps(&ticket, progress);
        drop(ticket);
        Ok(RunSummary {
            end: end?,
            report: self.report(&plan_id)?,
        })
    }

    /// Runs a ticket's plan in a thread of its own; [`Engine::wait_runs`]
    /// joins it.
    pub fn spawn(self: &Arc<Self>, ticket: RunTicket) -> Result<(), EngineError> {
        let engine = self.clone();
        let thread = std::thread::Builder::new()
            .name("hxo-run".into())
            .spawn(move || {
                let text = plan_id_text(&ticket.plan_id);
                match engine.run(ticket, None) {
                    Ok(summary) => {
                        if summary.end == RunEnd::Interrupted {
                            engine.interrupted_runs.fetch_add(1, Ordering::SeqCst);
                        }
                        tracing::info!(plan_id = %text, end = ?summary.end,
                            done = summary.report.done_shards, failed = summary.report.failed_shards,
                            "plan run ended")
                    }
                    Err(error) => tracing::error!(plan_id = %text, "plan run failed: {error}"),
                }
            })
            .map_err(EngineError::Spawn)?;
        let mut threads = self.background.lock().unwrap_or_else(|e| e.into_inner());
        threads.retain(|thread| !thread.is_finished());
        threads.push(thread);
        Ok(())
    }

    /// Stops every run of this process as interrupted (resumable).
    pub fn interrupt_all(&self) {
        for control in self.controls() {
            control.stop(StopReason::Interrupted);
        }
    }

    /// Waits for every background run to end; returns how many background
    /// runs have ended interrupted so far.
    pub fn wait_runs(&self) -> usize {
        let threads =
            std::mem::take(&mut *self.background.lock().unwrap_or_else(|e| e.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
        self.interrupted_runs.load(Ordering::SeqCst)
    }

    /// Waits until `plan_id` no longer runs here, at most `timeout`;
    /// returns whether it stopped.
    pub fn wait_stopped(&self, plan_id: &PlanId, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_running(plan_id) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    pub(super) fn controls(&self) -> Vec<Arc<Control>> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| r.control.clone())
            .collect()
    }

    pub(super) fn control(&self, plan_id: &PlanId) -> Option<Arc<Control>> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(plan_id)
            .map(|r| r.control.clone())
    }

    /// The steps of one run, in order.
    fn run_steps(
        &self,
        ticket: &RunTicket,
        progress: Option<&dyn Progress>,
    ) -> Result<RunEnd, EngineError> {
        let plan_id = ticket.plan_id;
        let compiled = &ticket.compiled;
        let control = self
            .control(&plan_id)
            .expect("the ticket's slot is registered");
        let entry = self.entry(&plan_id)?;
        let started = Instant::now();
        self.record_run_started(&plan_id, ticket.cause)?;
        let (mut initial, need_reuse) = initial_states(&entry, &compiled.dag);
        let dry_run = entry
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .manifest
            .dry_run;
        // A dry run proves nothing about a real one: it neither reuses
        // results nor lends its own (see `Store::done_by_cas`).
        let finished_before = finished_count(&entry);
        let (reused_position, reused) = if need_reuse && !dry_run {
            self.reuse(&plan_id, &compiled.dag, &mut initial)?
        } else {
            (0, 0)
        };
        // Counted before the reused records were submitted: they may or may
        // not be durable yet, and count as done from the start either way.
        let rate = self.start_clock(&plan_id, finished_before + reused);
        self.publish_stages(&plan_id, compiled);
        let options = self.run_options(compiled, dry_run, started);
        let input = self.run_input(&plan_id, &entry, compiled, initial);
        let recorder = Arc::new(Recorder::new(
            self,
            &plan_id,
            compiled,
            &input,
            control.clone(),
        ));
        drive(input, options, &control, &recorder, &entry, &rate, progress);
        // `drive` returned, so every outcome went through the recorder.
        if let Some(failure) = recorder
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            return Err(failure.into());
        }
        let position = recorder.position.load(Ordering::SeqCst);
        self.store.wait_durable(position.max(reused_position))?;
        tracing::info!(
            execute_ms = started.elapsed().as_millis() as u64,
            "executed"
        );
        if let Some(progress) = progress {
            show_progress(progress, &entry);
            progress.finish();
        }
        let worker = entry
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .manifest
            .worker;
        self.end_of_run(&plan_id, &entry, &control, worker.is_some())
    }

    /// Marks pending shards done whose cas_id is DONE anywhere in the store,
    /// and records them under this plan too, so that the plan reads back
    /// complete from the log alone. Returns the store position to wait for
    /// and how many shards were reused.
    fn reuse(
        &self,
        plan_id: &PlanId,
        dag: &Dag,
        initial: &mut [Initial],
    ) -> Result<(u64, u64), EngineError> {
        let done = self.store.done_by_cas();
        if done.is_empty() {
            return Ok((0, 0));
        }
        let mut reused: Vec<Record> = Vec::new();
        for (leaf, state) in initial.iter_mut().enumerate() {
            if *state != Initial::Pending {
                continue;
            }
            let cas_id = *dag.cas_id(LeafIndex(leaf as u32));
            if let Some(digest) = done.get(&cas_id) {
                *state = Initial::Done;
                reused.push(Record::ShardDone {
                    plan_id: *plan_id,
                    leaf_index: leaf as u64,
                    cas_id,
                    output_digest: *digest,
                    attempts: 0,
                    duration_us: 0,
                });
            }
        }
        let mut position = 0;
        for chunk in reused.chunks(crate::limits::COMMIT_RECORDS_MAX) {
            position = self.store.submit(chunk.to_vec())?;
        }
        Ok((position, reused.len() as u64))
    }

    fn publish_stages(&self, plan_id: &PlanId, compiled: &Compiled) {
        let plan_text = plan_id_text(plan_id);
        for (index, stage) in compiled.dag.stages.iter().enumerate() {
            self.bus.publish(
                events::SHARD_CREATED,
                json!({"plan_id": plan_text, "stage_id": compiled.plan.stages[index].id,
                       "shards": stage.shard_count, "first_leaf": stage.first_leaf}),
            );
        }
    }

    fn run_options(&self, compiled: &Compiled, dry_run: bool, started: Instant) -> RunOptions {
        RunOptions {
            threads: self.settings.threads,
            max_concurrency: self.settings.max_concurrency,
            max_attempts: self.settings.max_attempts,
            retry_backoff_ms: self.settings.retry_backoff_ms,
            shard_timeout_ms: self.settings.shard_timeout_ms,
            dry_run,
            artifacts_dir: absolute(&self.settings.artifacts_dir),
            timebox: compiled
                .plan
                .timebox_ms
                .map(|ms| started + Duration::from_millis(ms)),
            autosplit: sched::Autosplit {
                p95_ms: self.settings.autosplit_p95_ms,
                factor: self.settings.autosplit_factor,
            },
        }
    }

    fn run_input(
        &self,
        plan_id: &PlanId,
        entry: &PlanEntry,
        compiled: &Compiled,
        initial: Vec<Initial>,
    ) -> RunInput {
        let splits = {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            plan.splits
                .iter()
                .map(|(leaf, (pieces, digests))| (*leaf as u32, (*pieces, digests.clone())))
                .collect()
        };
        let pressure_store = self.store.clone();
        RunInput {
            dag: compiled.dag.clone(),
            executors: compiled.executors.clone(),
            stage_ids: compiled.plan.stages.iter().map(|s| s.id.clone()).collect(),
            plan_id: plan_id_text(plan_id),
            initial,
            schedulers: compiled.plan.stages.iter().map(|s| s.scheduler).collect(),
            splits,
            pressure: Arc::new(move || pressure_store.queue_depth()),
        }
    }

    /// Records how the run ended. A stop that found nothing left to stop
    /// (every shard already had an outcome) does not count: the plan is
    /// finished and certified as if nobody had asked.
    fn end_of_run(
        &self,
        plan_id: &PlanId,
        entry: &PlanEntry,
        control: &Control,
        worker: bool,
    ) -> Result<RunEnd, EngineError> {
        let (stopped_something, failed) = {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            let counts = plan.counts();
            (
                plan.owned_pending_count() > 0 || counts.aborted > 0,
                counts.failed + counts.aborted,
            )
        };
        match control.stop_reason() {
            Some(StopReason::Interrupted) if stopped_something => {
                self.record_interrupted(plan_id);
                Ok(RunEnd::Interrupted)
            }
            Some(StopReason::Aborted { actor }) if stopped_something => {
                self.record_aborted(plan_id, &actor, "aborted")?;
                Ok(RunEnd::Aborted)
            }
            Some(StopReason::Timeboxed) if stopped_something => {
                self.record_aborted(plan_id, "engine", "timebox exceeded")?;
                Ok(RunEnd::Aborted)
            }
            // A worker's slice has no root of its own: `hxo merge` computes
            // the plan's from every worker's log. A slice done is its own
            // end; one with failures records that it ended.
            _ if worker && failed == 0 => Ok(RunEnd::Succeeded),
            _ if worker => {
                self.record_slice_ended(plan_id, entry)?;
                Ok(RunEnd::Failed)
            }
            _ => Ok(if self.finish(plan_id, entry)? {
                RunEnd::Succeeded
            } else {
                RunEnd::Failed
            }),
        }
    }
}

/// Each shard's state at the start of a run, from the log, and whether any
/// is pending (so that reuse is worth a look).
fn initial_states(entry: &PlanEntry, dag: &Dag) -> (Vec<Initial>, bool) {
    let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
    let worker = plan.manifest.worker;
    if worker.is_none() && plan.pending_count() == plan.shard_count() {
        // A fresh plan: its slots are not even read (their pages stay
        // untouched until outcomes land).
        return (vec![Initial::Pending; dag.shard_count()], true);
    }
    let mut any_pending = false;
    let initial = plan
        .shards
        .iter()
        .enumerate()
        .map(|(leaf, slot)| {
            let theirs = worker.is_some_and(|worker| {
                let stage = &dag.stages[dag.stage_of(LeafIndex(leaf as u32))];
                !worker.owns(leaf as u64 - stage.first_leaf as u64)
            });
            match slot.state {
                SlotState::Done => Initial::Done,
                SlotState::Failed | SlotState::Aborted => Initial::Failed,
                // Another worker's shard: it neither runs nor blocks
                // anything here, and nothing is recorded for it (its
                // worker's log has it; `hxo merge` unions them).
                SlotState::Pending if theirs => Initial::Done,
                SlotState::Pending => {
                    any_pending = true;
                    Initial::Pending
                }
            }
        })
        .collect();
    (initial, any_pending)
}

/// Runs the scheduler, with the SLO ticker and the progress display
/// beside it; both end as soon as the scheduler returns.
fn drive(
    input: RunInput,
    options: RunOptions,
    control: &Arc<Control>,
    recorder: &Arc<Recorder>,
    entry: &Arc<PlanEntry>,
    rate: &RateWindow,
    progress: Option<&dyn Progress>,
) {
    // Dropped when the run is over (a panic included): the watching
    // threads below then end at once.
    let (run_over, watch) = crossbeam_channel::bounded::<()>(0);
    let every_100_ms = |watch: &crossbeam_channel::Receiver<()>| {
        matches!(
            watch.recv_timeout(Duration::from_millis(100)),
            Err(crossbeam_channel::RecvTimeoutError::Timeout)
        )
    };
    std::thread::scope(|scope| {
        let slo_recorder = recorder.clone();
        let slo_watch = watch.clone();
        scope.spawn(move || {
            let mut alerted = vec![false; slo_recorder.slos.len()];
            while every_100_ms(&slo_watch) {
                slo_recorder.check_slos(&mut alerted);
                rate.sample(finished_count(entry));
            }
        });
        if let Some(progress) = progress {
            scope.spawn(move || {
                show_progress(progress, entry);
                while every_100_ms(&watch) {
                    show_progress(progress, entry);
                }
            });
        }
        let _run_over = run_over;
        sched::run(input, options, control.clone(), recorder.clone());
    });
}

/// Shows a plan's durable counts on a progress display.
fn show_progress(progress: &dyn Progress, entry: &PlanEntry) {
    let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
    let counts = plan.counts();
    progress.update(
        counts.done,
        counts.failed + counts.aborted,
        plan.shard_count(),
    );
}

/// Records outcomes as the workers hand them over, on their threads: the
/// records go to the log from there, and per-stage counts feed the SLO
/// watch.
struct Recorder {
    store: Arc<crate::store::Store>,
    bus: Arc<events::Bus>,
    dag: Arc<Dag>,
    plan_id: PlanId,
    plan_text: String,
    /// (stage id, SLO in ms) per stage.
    slos: Vec<(String, u64)>,
    control: Arc<Control>,
    /// Terminal outcomes per stage, those before this run included.
    stage_outcomes: Vec<AtomicU64>,
    /// When each stage's first shard started, as its first outcome tells.
    stage_started: Vec<OnceLock<Instant>>,
    split_signalled: Vec<AtomicBool>,
    /// The store position after the last batch submitted.
    position: AtomicU64,
    /// The first failure to record: the run stops, the rest is dropped.
    failure: Mutex<Option<StoreError>>,
    failure_log: FailureLog,
}

/// Shard failures logged at debug level, at most `FAILURE_LOG_LINES_MAX`
/// lines per second, so a plan of a million failures logs a few lines a
/// second and a count of the rest, not a million lines.
struct FailureLog {
    /// (when the current second began, lines logged in it, lines dropped
    /// since the last report of them).
    window: Mutex<(Instant, u32, u64)>,
}

/// Failure lines logged per second at most.
const FAILURE_LOG_LINES_MAX: u32 = 10;

impl FailureLog {
    fn new() -> FailureLog {
        FailureLog {
            window: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    fn note(&self, stage_id: &str, leaf_index: u64, attempts: u32, error: &str) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let (started, logged, dropped) = &mut *window;
        if started.elapsed() >= Duration::from_secs(1) {
            if *dropped > 0 {
                tracing::debug!(
                    dropped = *dropped,
                    "shard failures not logged in the last second"
                );
            }
            *started = Instant::now();
            *logged = 0;
            *dropped = 0;
        }
        if *logged < FAILURE_LOG_LINES_MAX {
            *logged += 1;
            tracing::debug!(stage_id, leaf_index, attempts, error, "shard failed");
        } else {
            *dropped += 1;
        }
    }
}

impl Recorder {
    fn new(
        engine: &Engine,
        plan_id: &PlanId,
        compiled: &Compiled,
        input: &RunInput,
        control: Arc<Control>,
    ) -> Recorder {
        let dag = &compiled.dag;
        // Shards with an outcome before this run count towards their
        // stage, or a mostly-reused stage would look late forever.
        let settled = dag.stages.iter().map(|stage| {
            let count = stage
                .leaves()
                .filter(|leaf| input.initial[*leaf as usize] != Initial::Pending)
                .count();
            AtomicU64::new(count as u64)
        });
        Recorder {
            store: engine.store.clone(),
            bus: engine.bus.clone(),
            dag: dag.clone(),
            plan_id: *plan_id,
            plan_text: plan_id_text(plan_id),
            slos: compiled
                .plan
                .stages
                .iter()
                .map(|s| (s.id.clone(), s.slo_ms))
                .collect(),
            control,
            stage_outcomes: settled.collect(),
            stage_started: dag.stages.iter().map(|_| OnceLock::new()).collect(),
            split_signalled: dag.stages.iter().map(|_| AtomicBool::new(false)).collect(),
            position: AtomicU64::new(0),
            failure: Mutex::new(None),
            failure_log: FailureLog::new(),
        }
    }

    /// The log record an outcome stands for, if any.
    fn record_of(&self, stage: usize, outcome: sched::Outcome) -> Option<Record> {
        let plan_id = self.plan_id;
        let leaf_index = outcome.leaf as u64;
        let cas_id = *self.dag.cas_id(LeafIndex(outcome.leaf));
        Some(match outcome.kind {
            OutcomeKind::Done(output_digest) => Record::ShardDone {
                plan_id,
                leaf_index,
                cas_id,
                output_digest,
                attempts: outcome.attempts,
                duration_us: outcome.duration_us,
            },
            OutcomeKind::Failed { error, aborted } => {
                if !aborted {
                    self.failure_log.note(
                        &self.slos[stage].0,
                        leaf_index,
                        outcome.attempts,
                        &error,
                    );
                }
                Record::ShardFailed {
                    plan_id,
                    leaf_index,
                    cas_id,
                    attempts: outcome.attempts,
                    duration_us: outcome.duration_us,
                    aborted,
                    error,
                }
            }
            OutcomeKind::Split { pieces, p95_us } => {
                if !self.split_signalled[stage].swap(true, Ordering::SeqCst) {
                    self.bus.publish(
                        events::AUTOTUNE_SIGNAL,
                        json!({"plan_id": self.plan_text, "stage_id": self.slos[stage].0,
                               "p95_ms": p95_us as f64 / 1000.0, "action": "split",
                               "factor": pieces}),
                    );
                }
                Record::ShardSplit {
                    plan_id,
                    leaf_index,
                    pieces,
                }
            }
            OutcomeKind::Piece { piece, digest } => Record::SubShardDone {
                plan_id,
                leaf_index,
                piece,
                output_digest: digest,
            },
            OutcomeKind::Blocked | OutcomeKind::Abandoned => return None,
        })
    }

    /// Notes when a stage's first shard started.
    fn note_stage_start(&self, stage: usize, duration_us: u64) {
        if self.stage_started[stage].get().is_none() {
            let now = Instant::now();
            let _ = self.stage_started[stage].set(
                now.checked_sub(Duration::from_micros(duration_us))
                    .unwrap_or(now),
            );
        }
    }

    /// Hands records to the log; on the first failure the run stops
    /// (running more shards would only repeat side effects nobody can
    /// record) and ends with that error.
    fn submit(&self, records: Vec<Record>) {
        if self
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
        {
            return;
        }
        match self.store.submit(records) {
            Ok(position) => {
                self.position.fetch_max(position, Ordering::SeqCst);
            }
            Err(error) => {
                self.control.stop(StopReason::Interrupted);
                self.failure
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(error);
            }
        }
    }

    /// Publishes an `slo_overrun` alert, once per stage, for each stage
    /// running longer than its SLO with shards still to go.
    fn check_slos(&self, alerted: &mut [bool]) {
        for (stage, (stage_id, slo_ms)) in self.slos.iter().enumerate() {
            let Some(start) = self.stage_started[stage].get() else {
                continue;
            };
            if alerted[stage] {
                continue;
            }
            let elapsed_ms = start.elapsed().as_millis() as u64;
            let shard_count = self.dag.stages[stage].shard_count as u64;
            let outcomes = self.stage_outcomes[stage].load(Ordering::SeqCst);
            if elapsed_ms > *slo_ms && outcomes < shard_count {
                alerted[stage] = true;
                self.bus.publish(
                    events::ALERT,
                    json!({"plan_id": self.plan_text, "stage_id": stage_id, "alert": "slo_overrun",
                           "slo_ms": slo_ms, "elapsed_ms": elapsed_ms,
                           "shards_left": shard_count - outcomes}),
                );
            }
        }
    }
}

impl sched::OutcomeSink for Recorder {
    fn accept(&self, batch: Vec<sched::Outcome>) {
        let mut records = Vec::with_capacity(batch.len());
        // Per-stage counts of this batch: a batch rarely spans stages.
        let mut terminal: Vec<(usize, u64)> = Vec::new();
        for outcome in batch {
            let stage = self.dag.stage_of(LeafIndex(outcome.leaf));
            if outcome.kind.is_terminal() {
                match terminal.iter_mut().find(|(s, _)| *s == stage) {
                    Some((_, count)) => *count += 1,
                    None => terminal.push((stage, 1)),
                }
            }
            self.note_stage_start(stage, outcome.duration_us);
            records.extend(self.record_of(stage, outcome));
        }
        for (stage, count) in terminal {
            self.stage_outcomes[stage].fetch_add(count, Ordering::SeqCst);
        }
        if !records.is_empty() {
            self.submit(records);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_counts_only_outcomes_after_the_start() {
        let window = RateWindow::new();
        assert_eq!(window.per_second(5), 0.0, "no sample, no rate");
        // 900 shards done before the run (or reused): not speed.
        window.start(900);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(window.per_second(900), 0.0);
        let rate = window.per_second(910);
        assert!(rate > 0.0, "{rate}");
        // At most 10 outcomes over at least 20 ms.
        assert!(rate <= 10.0 / 0.020, "{rate}");
    }

    #[test]
    fn the_window_is_bounded_and_keeps_its_order() {
        let window = RateWindow::new();
        window.start(0);
        for finished in 1..=(RATE_SAMPLES_MAX as u64 * 3) {
            window.sample(finished);
        }
        let samples = window.samples.lock().unwrap();
        assert!(samples.len() <= RATE_SAMPLES_MAX);
        assert!(samples
            .iter()
            .zip(samples.iter().skip(1))
            .all(|(a, b)| a.0 <= b.0 && a.1 < b.1));
        // The oldest kept sample is a recent one, not the start.
        assert!(samples.front().unwrap().1 > RATE_SAMPLES_MAX as u64);
    }
}
