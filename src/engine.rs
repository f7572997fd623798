//! The engine: the only module that wires plans, partitions, the DAG, the
//! scheduler, the checkpoint store, the Merkle tree and the event bus
//! together. The front-ends (CLI, HTTP) call nothing else to run plans.
//!
//! A run goes: compile (validate, partition, DAG, executors) -> accept (a
//! durable `PlanAccepted` record) -> execute (scheduler on the pools; the
//! workers hand their outcomes to a `Recorder`, which submits them as log
//! records from the worker's thread; the store applies them once durable)
//! -> aggregate (root over the durable outcomes) -> certify (re-read the
//! plan from the log files, recompute the root, verify a seeded sample of
//! inclusion proofs) -> finish (a durable `PlanFinished`).

use crate::dag::{self, Dag, LeafIndex};
use crate::events::{self, Bus, ShardEvent};
use crate::exec::{self, Executor};
use crate::hash::{to_hex, Hash};
use crate::log::{PlanId, Record};
use crate::merkle;
use crate::partition::{self, PartitionError};
use crate::plan::{
    Manifest, ManifestStage, Plan, PlanDefaults, PlanError, PlanSpec, WorkerSlice, MANIFEST_FORMAT,
};
use crate::report::{self, Live, Report};
use crate::sched::{
    self as scheduler, Control, Initial, OutcomeKind, RunInput, RunOptions, StopReason,
};
use crate::settings::Settings;
use crate::store::{plan_id_text, PlanEntry, PlanRecord, SlotState, Store, StoreError};
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The plan is invalid (exit 2, HTTP 400).
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("plan {0} not found")]
    UnknownPlan(String),
    #[error("cas_id {cas_id} is not a shard of plan {plan_id}")]
    UnknownShard { plan_id: String, cas_id: String },
    #[error("plan {plan_id}: its inputs changed since it was accepted (DAG digest {accepted} is now {now}); submit it again as a new plan")]
    InputsChanged {
        plan_id: String,
        accepted: String,
        now: String,
    },
    #[error("plan {plan_id} is {status}: {action} does not apply")]
    WrongState {
        plan_id: String,
        status: String,
        action: &'static str,
    },
    #[error("plan {0} is running")]
    Running(String),
    #[error("merge: {0}")]
    Merge(String),
    #[error("plan {plan_id} cannot be certified: {detail}")]
    Uncertifiable { plan_id: String, detail: String },
}

impl EngineError {
    /// Whether the caller asked for something invalid (as opposed to the
    /// engine or the disk failing).
    pub fn is_usage(&self) -> bool {
        !matches!(
            self,
            EngineError::Store(_) | EngineError::Uncertifiable { .. }
        )
    }
}

/// A plan ready to run: validated, partitioned, compiled, with executors.
pub struct Compiled {
    pub plan: Plan,
    pub dag: Arc<Dag>,
    pub executors: Vec<Arc<dyn Executor>>,
    pub base_dir: PathBuf,
    /// Run only this worker's slice (DESIGN section 10); `None`: all.
    pub worker: Option<WorkerSlice>,
}

/// How a run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEnd {
    /// Every shard done.
    Succeeded,
    /// Finished with failed (or blocked) shards.
    Failed,
    /// Aborted or timeboxed.
    Aborted,
    /// Interrupted; resumable.
    Interrupted,
}

pub struct RunSummary {
    pub end: RunEnd,
    pub report: Report,
}

/// Per-run hooks for progress display.
pub trait Progress: Send + Sync {
    fn update(&self, done: u64, failed: u64, total: u64);
    fn finish(&self);
}

pub struct Engine {
    pub settings: Settings,
    pub store: Arc<Store>,
    pub bus: Arc<Bus>,
    running: Mutex<HashMap<PlanId, RunningPlan>>,
}

/// A plan running in this process.
struct RunningPlan {
    control: Arc<Control>,
    started: Instant,
    /// Outcomes the plan had when this run started.
    baseline: u64,
}

/// Moves the config key an error names from its message into the JSON
/// path: `stages[0].config` + `root: ...` -> `stages[0].config.root: ...`.
fn config_error(stage_index: usize, key: &str, text: String) -> PlanError {
    let message = text
        .strip_prefix(&format!("config.{key}: "))
        .or_else(|| text.strip_prefix(&format!("{key}: ")))
        .map_or_else(|| text.clone(), str::to_string);
    PlanError {
        path: format!("stages[{stage_index}].config.{key}"),
        message,
    }
}

fn partition_error(stage_index: usize, error: PartitionError) -> PlanError {
    // The plan error carries text only, so the causes go into it.
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    config_error(stage_index, error.key(), text)
}

impl Engine {
    /// Opens the engine on the store named by the settings.
    pub fn open(settings: Settings, salvage: bool) -> Result<Arc<Engine>, EngineError> {
        let options = crate::log::LogOptions {
            salvage,
            sync_commits: settings.sync_commits,
            ..crate::log::LogOptions::default()
        };
        let store = Arc::new(Store::open(&settings.db_path, options)?);
        Ok(Engine::with_store(settings, store))
    }

    pub fn with_store(settings: Settings, store: Arc<Store>) -> Arc<Engine> {
        let bus = Arc::new(Bus::new(settings.genesis_enabled, store.last_event_seq()));
        store.restore_events(&bus);
        let engine = Arc::new(Engine {
            settings,
            store,
            bus,
            running: Mutex::new(HashMap::new()),
        });
        // Durable events go to the log; per-shard events are published once
        // their records are durable.
        // Weak in both directions: the store and the bus point at each
        // other through these closures, and strong references would keep
        // both alive forever.
        let store = Arc::downgrade(&engine.store);
        engine.bus.set_durable_sink(Box::new(move |event| {
            let Some(store) = store.upgrade() else { return };
            let record = Record::Event {
                seq: event.seq,
                at_ms: event.at_ms,
                topic: event.topic.to_string(),
                payload_json: event.data_json().to_string(),
            };
            // A failed writer is reported by the run that needs it.
            let _ = store.submit(vec![record]);
        }));
        let bus = Arc::downgrade(&engine.bus);
        engine.store.set_listener(Box::new(move |group| {
            if let Some(bus) = bus.upgrade() {
                publish_shard_events(&bus, group);
            }
        }));
        engine
    }

    pub fn plan_defaults(&self) -> PlanDefaults {
        PlanDefaults {
            default_slo_ms: self.settings.default_slo_ms,
            max_shards: self.settings.max_shards,
        }
    }

    /// Validates, partitions and compiles a plan; runs nothing.
    pub fn compile(&self, spec: PlanSpec, base_dir: &Path) -> Result<Compiled, EngineError> {
        compile(spec, base_dir, self.plan_defaults())
    }

    /// Records the plan as accepted (durably) and submitted, and returns
    /// its id.
    pub fn accept(
        &self,
        compiled: &Compiled,
        submitted_by: &str,
        dry_run: bool,
    ) -> Result<PlanId, EngineError> {
        self.accept_as(compiled, submitted_by, dry_run, "submitted")
    }

    /// Records the plan as accepted but not submitted: a durable `hxo.plan`
    /// event with status `created` says so, until [`Engine::mark_submitted`]
    /// logs `submitted`. A server rehydrates only submitted plans
    /// ([`Engine::is_submitted`]).
    pub fn accept_created(
        &self,
        compiled: &Compiled,
        submitted_by: &str,
        dry_run: bool,
    ) -> Result<PlanId, EngineError> {
        self.accept_as(compiled, submitted_by, dry_run, "created")
    }

    fn accept_as(
        &self,
        compiled: &Compiled,
        submitted_by: &str,
        dry_run: bool,
        status: &str,
    ) -> Result<PlanId, EngineError> {
        let plan_id = self.record_accepted(compiled, submitted_by, dry_run)?;
        let event = json!({"plan_id": plan_id_text(&plan_id), "name": compiled.plan.name,
            "status": status, "total_shards": compiled.dag.shard_count(),
            "submitted_by": submitted_by});
        if status == "created" {
            // The store reads "created" back (rehydration skips such
            // plans), so it is logged even with the bus disabled; a plan
            // without it counts as submitted.
            self.durable_plan_event(event)?;
        } else {
            self.bus.publish(events::PLAN, event);
        }
        Ok(plan_id)
    }

    /// Logs that a created plan was submitted (a durable `hxo.plan` event).
    pub fn mark_submitted(&self, plan_id: &PlanId, submitted_by: &str) -> Result<(), EngineError> {
        let entry = self.entry(plan_id)?;
        let (name, total) = {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            (plan.manifest.spec.name.clone(), plan.shard_count())
        };
        self.durable_plan_event(json!({"plan_id": plan_id_text(plan_id), "name": name,
            "status": "submitted", "total_shards": total, "submitted_by": submitted_by}))
    }

    /// Whether a plan was submitted: false only while the latest durable
    /// `hxo.plan` event of the plan that says `created` or `submitted` says
    /// `created`. Plans accepted by [`Engine::accept`] (the CLI) and plans
    /// from logs older than this notion count as submitted.
    pub fn is_submitted(&self, plan_id: &PlanId) -> bool {
        let text = plan_id_text(plan_id);
        let mut submitted = true;
        for event in self.store.durable_events() {
            if event.topic != events::PLAN || !event.is_for_plan(&text) {
                continue;
            }
            match event.data_json().get("status").and_then(|s| s.as_str()) {
                Some("created") => submitted = false,
                Some("submitted") => submitted = true,
                _ => {}
            }
        }
        submitted
    }

    /// Publishes a plan-level event, or writes it straight to the log when
    /// the bus is disabled, so that the log keeps it either way.
    fn durable_plan_event(&self, data: serde_json::Value) -> Result<(), EngineError> {
        self.durable_event(events::PLAN, data)
    }

    /// Publishes a durable event; with `GENESIS_MODE=disabled` nothing is
    /// published but the record still goes to the log, because the store's
    /// state (certifications, rehydrations, created plans) is read from it.
    fn durable_event(
        &self,
        topic: &'static str,
        data: serde_json::Value,
    ) -> Result<(), EngineError> {
        if self.bus.is_enabled() {
            self.bus.publish(topic, data);
            return Ok(());
        }
        let position = self.store.submit(vec![Record::Event {
            seq: 0,
            at_ms: events::now_ms(),
            topic: topic.to_string(),
            payload_json: data.to_string(),
        }])?;
        self.store.wait_durable(position)?;
        Ok(())
    }

    fn record_accepted(
        &self,
        compiled: &Compiled,
        submitted_by: &str,
        dry_run: bool,
    ) -> Result<PlanId, EngineError> {
        let plan_id = *uuid::Uuid::new_v4().as_bytes();
        let manifest = manifest_of(compiled, submitted_by, dry_run);
        let position = self.store.submit(vec![Record::PlanAccepted {
            plan_id,
            accepted_at_ms: events::now_ms(),
            shard_count: compiled.dag.shard_count() as u64,
            manifest_json: manifest.to_json(),
        }])?;
        self.store.wait_durable(position)?;
        Ok(plan_id)
    }

    fn entry(&self, plan_id: &PlanId) -> Result<Arc<PlanEntry>, EngineError> {
        self.store
            .plan(plan_id)
            .ok_or_else(|| EngineError::UnknownPlan(plan_id_text(plan_id)))
    }

    /// A plan by id or unique id prefix.
    pub fn find(&self, text: &str) -> Result<PlanId, EngineError> {
        self.store
            .find(text)
            .map(|entry| {
                entry
                    .record
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .plan_id
            })
            .ok_or_else(|| EngineError::UnknownPlan(text.to_string()))
    }

    pub fn control(&self, plan_id: &PlanId) -> Option<Arc<Control>> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(plan_id)
            .map(|r| r.control.clone())
    }

    pub fn is_running(&self, plan_id: &PlanId) -> bool {
        self.control(plan_id).is_some()
    }

    /// Recompiles an accepted plan from its manifest and checks that its
    /// inputs still compile to the same DAG.
    pub fn recompile(&self, plan_id: &PlanId) -> Result<Compiled, EngineError> {
        let entry = self.entry(plan_id)?;
        let manifest = entry
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .manifest
            .clone();
        let compiled = compile(
            manifest.spec.clone(),
            Path::new(&manifest.base_dir),
            self.plan_defaults(),
        )?;
        if !compiled.dag.has_digest(&manifest.dag_digest) {
            return Err(EngineError::InputsChanged {
                plan_id: plan_id_text(plan_id),
                accepted: manifest.dag_digest,
                now: to_hex(&compiled.dag.dag_digest),
            });
        }
        Ok(compiled)
    }

    /// Runs an accepted plan until every shard has an outcome, or it is
    /// stopped through `control`. Shards already DONE in the log are
    /// skipped; shards DONE under the same cas_id in any plan of the store
    /// are reused.
    pub fn execute(
        self: &Arc<Self>,
        plan_id: PlanId,
        compiled: &Compiled,
        control: Arc<Control>,
        progress: Option<&dyn Progress>,
    ) -> Result<RunSummary, EngineError> {
        {
            let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
            if running.contains_key(&plan_id) {
                return Err(EngineError::Running(plan_id_text(&plan_id)));
            }
            let baseline = self.store.plan(&plan_id).map_or(0, |entry| {
                let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
                plan.shard_count() - plan.pending_count()
            });
            running.insert(
                plan_id,
                RunningPlan {
                    control: control.clone(),
                    started: Instant::now(),
                    baseline,
                },
            );
        }
        /// Unregisters the run however it ends, a panic included.
        struct Unregister<'a>(&'a Engine, PlanId);
        impl Drop for Unregister<'_> {
            fn drop(&mut self) {
                self.0
                    .running
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&self.1);
            }
        }
        let unregister = Unregister(self, plan_id);
        let result = self.execute_registered(plan_id, compiled, control, progress);
        drop(unregister);
        let end = result?;
        Ok(RunSummary {
            end,
            report: self.report(&plan_id)?,
        })
    }

    fn execute_registered(
        self: &Arc<Self>,
        plan_id: PlanId,
        compiled: &Compiled,
        control: Arc<Control>,
        progress: Option<&dyn Progress>,
    ) -> Result<RunEnd, EngineError> {
        let entry = self.entry(&plan_id)?;
        let dag = compiled.dag.clone();
        let plan_text = plan_id_text(&plan_id);
        let started = Instant::now();

        // Initial states from the log, then reuse by cas_id.
        let mut initial = Vec::with_capacity(dag.shard_count());
        let mut need_reuse = false;
        let worker = entry
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .manifest
            .worker;
        {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            if worker.is_none() && plan.pending_count() == plan.shard_count() {
                // A fresh plan: its slots are not even read (their pages
                // stay untouched until outcomes land).
                initial.resize(dag.shard_count(), Initial::Pending);
                need_reuse = true;
            } else {
                for (leaf, slot) in plan.shards.iter().enumerate() {
                    let theirs = worker.is_some_and(|worker| {
                        let stage = &dag.stages[dag.stage_of(LeafIndex(leaf as u32))];
                        !worker.owns(leaf as u64 - stage.first_leaf as u64)
                    });
                    initial.push(match slot.state {
                        SlotState::Done => Initial::Done,
                        SlotState::Failed | SlotState::Aborted => Initial::Failed,
                        // Another worker's shard: it neither runs nor blocks
                        // anything here, and nothing is recorded for it (its
                        // worker's log has it; `hxo merge` unions them).
                        SlotState::Pending if theirs => Initial::Done,
                        SlotState::Pending => {
                            need_reuse = true;
                            Initial::Pending
                        }
                    });
                }
            }
        }
        let mut reused: Vec<Record> = Vec::new();
        // A dry run proves nothing about a real one: it neither reuses
        // results nor lends its own (see `Store::done_by_cas`).
        let dry_run = entry
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .manifest
            .dry_run;
        if need_reuse && !dry_run {
            let done = self.store.done_by_cas();
            if !done.is_empty() {
                for (leaf, state) in initial.iter_mut().enumerate() {
                    if *state != Initial::Pending {
                        continue;
                    }
                    let cas_id = *dag.cas_id(LeafIndex(leaf as u32));
                    if let Some(digest) = done.get(&cas_id) {
                        *state = Initial::Done;
                        reused.push(Record::ShardDone {
                            plan_id,
                            leaf_index: leaf as u64,
                            cas_id,
                            output_digest: *digest,
                            attempts: 0,
                            duration_us: 0,
                        });
                    }
                }
            }
        }
        // Reused results are recorded under this plan too, so that the plan
        // reads back complete from the log alone.
        let mut reused_position = 0;
        for chunk in reused.chunks(crate::limits::COMMIT_RECORDS_MAX) {
            reused_position = self.store.submit(chunk.to_vec())?;
        }
        drop(reused);
        self.bus.publish(
            events::PLAN,
            json!({"plan_id": plan_text, "status": "running"}),
        );
        for (index, stage) in dag.stages.iter().enumerate() {
            self.bus.publish(
                events::SHARD_CREATED,
                json!({"plan_id": plan_text, "stage_id": compiled.plan.stages[index].id,
                       "shards": stage.shard_count, "first_leaf": stage.first_leaf}),
            );
        }

        let options = RunOptions {
            threads: self.settings.threads,
            max_concurrency: self.settings.max_concurrency,
            max_attempts: self.settings.max_attempts,
            retry_backoff_ms: self.settings.retry_backoff_ms,
            shard_timeout_ms: self.settings.shard_timeout_ms,
            dry_run: entry
                .record
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .manifest
                .dry_run,
            artifacts_dir: absolute(&self.settings.artifacts_dir),
            timebox: compiled
                .plan
                .timebox_ms
                .map(|ms| started + Duration::from_millis(ms)),
            autosplit: scheduler::Autosplit {
                p95_ms: self.settings.autosplit_p95_ms,
                factor: self.settings.autosplit_factor,
            },
        };
        let splits = {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            plan.splits
                .iter()
                .map(|(leaf, (pieces, digests))| (*leaf as u32, (*pieces, digests.clone())))
                .collect()
        };
        let pressure_store = self.store.clone();
        let input = RunInput {
            dag: dag.clone(),
            executors: compiled.executors.clone(),
            stage_ids: compiled.plan.stages.iter().map(|s| s.id.clone()).collect(),
            plan_id: plan_text.clone(),
            initial,
            schedulers: compiled.plan.stages.iter().map(|s| s.scheduler).collect(),
            splits,
            pressure: Arc::new(move || pressure_store.queue_depth()),
        };
        // Shards with an outcome before this run count towards their
        // stage, or a mostly-reused stage would look late forever.
        let settled: Vec<u64> = dag
            .stages
            .iter()
            .map(|stage| {
                stage
                    .leaves()
                    .filter(|leaf| input.initial[*leaf as usize] != Initial::Pending)
                    .count() as u64
            })
            .collect();
        let recorder = Arc::new(Recorder {
            store: self.store.clone(),
            bus: self.bus.clone(),
            dag: dag.clone(),
            plan_id,
            plan_text: plan_text.clone(),
            slos: compiled
                .plan
                .stages
                .iter()
                .map(|s| (s.id.clone(), s.slo_ms))
                .collect(),
            control: control.clone(),
            stage_outcomes: settled.into_iter().map(AtomicU64::new).collect(),
            stage_started: dag.stages.iter().map(|_| OnceLock::new()).collect(),
            split_signalled: dag.stages.iter().map(|_| AtomicBool::new(false)).collect(),
            position: AtomicU64::new(0),
            failure: Mutex::new(None),
        });
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
                }
            });
            if let Some(progress) = progress {
                let entry = entry.clone();
                scope.spawn(move || {
                    show_progress(progress, &entry);
                    while every_100_ms(&watch) {
                        show_progress(progress, &entry);
                    }
                });
            }
            let _run_over = run_over;
            scheduler::run(input, options, control.clone(), recorder.clone());
        });
        // `run` returned, so every outcome went through the recorder.
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

        let end = match control.stop_reason() {
            Some(StopReason::Interrupted) => {
                self.bus.publish(
                    events::PLAN,
                    json!({"plan_id": plan_text, "status": "interrupted"}),
                );
                RunEnd::Interrupted
            }
            Some(StopReason::Aborted { actor }) => {
                self.record_abort(&plan_id, &actor, "aborted")?;
                RunEnd::Aborted
            }
            Some(StopReason::Timeboxed) => {
                self.record_abort(&plan_id, "engine", "timebox exceeded")?;
                RunEnd::Aborted
            }
            // A worker's slice has no root of its own: `hxo merge` computes
            // the plan's from every worker's log.
            None if worker.is_some() => {
                let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
                if plan.counts().failed + plan.counts().aborted == 0 {
                    RunEnd::Succeeded
                } else {
                    RunEnd::Failed
                }
            }
            None => {
                let all_done = self.finish(&plan_id, &entry)?;
                if all_done {
                    RunEnd::Succeeded
                } else {
                    RunEnd::Failed
                }
            }
        };
        Ok(end)
    }

    fn record_abort(&self, plan_id: &PlanId, actor: &str, reason: &str) -> Result<(), EngineError> {
        let position = self.store.submit(vec![Record::PlanAborted {
            plan_id: *plan_id,
            at_ms: events::now_ms(),
            actor: actor.to_string(),
            reason: reason.to_string(),
        }])?;
        self.store.wait_durable(position)?;
        self.bus.publish(
            events::PLAN,
            json!({"plan_id": plan_id_text(plan_id), "status": "aborted", "actor": actor, "reason": reason}),
        );
        Ok(())
    }

    /// Aggregates, certifies and records the end of a run. Returns whether
    /// every shard is done.
    fn finish(&self, plan_id: &PlanId, entry: &PlanEntry) -> Result<bool, EngineError> {
        let plan_text = plan_id_text(plan_id);
        let (all_done, done, failed, tree_size) = {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            let counts = plan.counts();
            (
                counts.done == plan.shard_count(),
                counts.done,
                counts.failed + counts.aborted,
                plan.shard_count(),
            )
        };
        let aggregate_started = Instant::now();
        // A complete plan's root is computed once, from the log files (that
        // is what certification means); a partial one from memory.
        let (root, certification) = if all_done {
            let certification = self.certify(plan_id, tree_size)?;
            if !certification.log_complete {
                // Memory says every shard is done but the log files do not:
                // a bug or tampering. Record no root rather than a wrong one.
                return Err(EngineError::Uncertifiable {
                    plan_id: plan_text,
                    detail: certification.detail,
                });
            }
            (certification.root, Some(certification))
        } else {
            let leaves = leaf_hashes(&entry.record.lock().unwrap_or_else(|e| e.into_inner()));
            (merkle::root_of_leaf_hashes(leaves), None)
        };
        tracing::info!(
            aggregate_ms = aggregate_started.elapsed().as_millis() as u64,
            "root computed"
        );
        self.bus.publish(
            events::AGGREGATE_READY,
            json!({"plan_id": plan_text, "root": to_hex(&root), "tree_size": tree_size, "complete": all_done}),
        );
        if let Some(certification) = &certification {
            // Durable even with the bus disabled: the store reads
            // `truth_certified` from this event.
            self.durable_event(
                events::AGGREGATE_CERTIFY,
                json!({"plan_id": plan_text, "root": to_hex(&root), "tree_size": tree_size,
                       "truth_certified": certification.certified,
                       "proofs_checked": certification.proofs_checked,
                       "detail": certification.detail}),
            )?;
        }
        let position = self.store.submit(vec![Record::PlanFinished {
            plan_id: *plan_id,
            at_ms: events::now_ms(),
            tree_size,
            root,
            done_count: done,
            failed_count: failed,
        }])?;
        self.store.wait_durable(position)?;
        self.bus.publish(
            events::AGGREGATE_FINALIZED,
            json!({"plan_id": plan_text, "root": to_hex(&root), "tree_size": tree_size,
                   "done_shards": done, "failed_shards": failed}),
        );
        Ok(all_done)
    }

    /// Recomputes the root from the log files (not from memory) and checks
    /// a sample of inclusion proofs, drawn from a seed fixed by the plan,
    /// against it (DESIGN section 3).
    pub fn certify(&self, plan_id: &PlanId, tree_size: u64) -> Result<Certification, EngineError> {
        let Some(recomputed) = self.recompute_from_log(plan_id, tree_size)? else {
            let mut failed = Certification::failed("not every shard is done in the log files");
            failed.log_complete = false;
            return Ok(failed);
        };
        let root = recomputed.root;
        if let Some(leaf) = recomputed.first_failing_proof(&root) {
            let mut failed =
                Certification::failed(&format!("inclusion proof for leaf {leaf} does not verify"));
            failed.root = root;
            return Ok(failed);
        }
        let proofs_checked = recomputed.proofs.len();
        Ok(Certification {
            certified: true,
            log_complete: true,
            root,
            proofs_checked,
            detail: format!(
                "root recomputed from the log files; {proofs_checked} inclusion proofs verified"
            ),
        })
    }

    /// The root over the plan's leaves as the log files have them, with the
    /// inclusion proofs of a sample drawn from a seed fixed by the plan;
    /// `None` unless every shard is done in the files.
    fn recompute_from_log(
        &self,
        plan_id: &PlanId,
        tree_size: u64,
    ) -> Result<Option<Recomputed>, EngineError> {
        let sample = sample_indices(
            &crate::hash::sha256(plan_id),
            tree_size,
            crate::limits::CERTIFY_SAMPLE_PROOFS,
        );
        let Some(tree) = self.store.reread_tree(plan_id, tree_size, &sample)? else {
            return Ok(None);
        };
        let (proofs, sampled_leaves) = tree.proofs.into_iter().unzip();
        Ok(Some(Recomputed {
            root: tree.root,
            proofs,
            sampled_leaves,
        }))
    }

    /// The plan's report (live counts if it runs in this process).
    pub fn report(&self, plan_id: &PlanId) -> Result<Report, EngineError> {
        let entry = self.entry(plan_id)?;
        let running = self.running_info(plan_id);
        let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
        let live = live_of(&plan, running);
        Ok(report::build(&plan, live))
    }

    /// The guide's status fields only: constant time in the plan's size
    /// (no per-shard pass), for pollers (`GET /api/hxo/status`).
    pub fn status(&self, plan_id: &PlanId) -> Result<report::Status, EngineError> {
        let entry = self.entry(plan_id)?;
        let running = self.running_info(plan_id);
        let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
        let live = live_of(&plan, running);
        Ok(report::status(&plan, live))
    }

    /// Claimed and running shards of the plans running in this process.
    pub fn live_counts(&self) -> (u64, u64) {
        let controls: Vec<Arc<Control>> = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|r| r.control.clone())
            .collect();
        controls.iter().fold((0, 0), |(c, r), control| {
            let (claimed, running) = control.live_counts();
            (c + claimed, r + running)
        })
    }

    fn running_info(&self, plan_id: &PlanId) -> Option<(Arc<Control>, Instant, u64)> {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(plan_id)
            .map(|r| (r.control.clone(), r.started, r.baseline))
    }

    /// Builds the inclusion proof of a shard from the durable log.
    pub fn proof(
        &self,
        plan_id: &PlanId,
        cas_text: &str,
    ) -> Result<serde_json::Value, EngineError> {
        let entry = self.entry(plan_id)?;
        let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
        let unknown = || EngineError::UnknownShard {
            plan_id: plan_id_text(plan_id),
            cas_id: cas_text.to_string(),
        };
        let cas_id = crate::hash::from_hex(cas_text).ok_or_else(unknown)?;
        // Only a shard with a result is a leaf anyone can prove.
        let leaf = plan
            .shards
            .iter()
            .position(|s| s.state == SlotState::Done && s.cas_id == cas_id)
            .ok_or_else(unknown)?;
        let Some(finish) = plan.finished.clone() else {
            return Err(EngineError::WrongState {
                plan_id: plan_id_text(plan_id),
                status: plan.status().into(),
                action: "a proof",
            });
        };
        let leaves = leaf_hashes(&plan);
        let slot = plan.shards[leaf];
        drop(plan);
        let (_, mut proofs) = merkle::root_with_proofs(leaves, &[leaf as u64]);
        let proof = proofs.pop().expect("one proof per index");
        Ok(json!({
            "cas_id": to_hex(&slot.cas_id),
            "output_digest": to_hex(&slot.output_digest),
            "leaf_index": leaf,
            "tree_size": proof.tree_size,
            "audit_path": proof.audit_path.iter().map(to_hex).collect::<Vec<_>>(),
            "root": to_hex(&finish.root),
        }))
    }

    /// Recomputes the root from the log files and checks proofs against
    /// the recorded root (`hxo verify`).
    pub fn verify(&self, plan_id: &PlanId) -> Result<Verification, EngineError> {
        let entry = self.entry(plan_id)?;
        let (recorded, status) = {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            (plan.finished.clone(), plan.status())
        };
        let Some(finish) = recorded else {
            return Err(EngineError::WrongState {
                plan_id: plan_id_text(plan_id),
                status: status.into(),
                action: "verify",
            });
        };
        let Some(recomputed) = self.recompute_from_log(plan_id, finish.tree_size)? else {
            return Ok(Verification {
                recorded_root: to_hex(&finish.root),
                recomputed_root: String::new(),
                tree_size: finish.tree_size,
                proofs_checked: 0,
                proofs_verified: 0,
                ok: false,
                detail: "not every shard is done in the log files, so the recorded root \
                         (a partial one) cannot be recomputed and certified"
                    .into(),
            });
        };
        // Proofs are checked against the *recorded* root: a log that no
        // longer produces it fails them.
        let proofs_verified = recomputed.verified_against(&finish.root);
        let proofs = &recomputed.proofs;
        let recomputed = recomputed.root;
        let ok = recomputed == finish.root && proofs_verified == proofs.len();
        Ok(Verification {
            recorded_root: to_hex(&finish.root),
            recomputed_root: to_hex(&recomputed),
            tree_size: finish.tree_size,
            proofs_checked: proofs.len(),
            proofs_verified,
            ok,
            detail: if ok {
                "the log files reproduce the recorded root".into()
            } else {
                "the log files do not reproduce the recorded root".into()
            },
        })
    }

    /// Export lines (leaf order) for `hxo export`.
    pub fn export(
        &self,
        plan_id: &PlanId,
        out: &mut dyn std::io::Write,
    ) -> Result<(), EngineError> {
        let entry = self.entry(plan_id)?;
        let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
        let mut line = String::with_capacity(256);
        for (index, slot) in plan.shards.iter().enumerate() {
            let stage = plan
                .manifest
                .stage_of(index as u64)
                .map_or("", |s| s.id.as_str());
            // Shards that never ran (pending, blocked, aborted before they
            // started) have no cas_id in the log.
            let known = slot.cas_id != [0; 32];
            line.clear();
            let value = json!({
                "index": index,
                "stage_id": stage,
                "cas_id": if known { Some(to_hex(&slot.cas_id)) } else { None },
                "output_digest": if slot.state == SlotState::Done { Some(to_hex(&slot.output_digest)) } else { None },
                "state": slot.state.name(),
                "attempts": slot.attempts,
                "duration_ms": slot.duration_us as f64 / 1000.0,
            });
            line.push_str(&value.to_string());
            line.push('\n');
            if let Err(error) = out.write_all(line.as_bytes()) {
                if error.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(EngineError::Store(StoreError::WriterStopped(format!(
                    "writing the export: {error}"
                ))));
            }
        }
        Ok(())
    }

    /// Marks an incomplete plan aborted: pending shards fail (aborted), done
    /// shards stay. A plan running in this process is stopped at once.
    pub fn abort(&self, plan_id: &PlanId, actor: &str) -> Result<(), EngineError> {
        let entry = self.entry(plan_id)?;
        self.bus.publish(
            events::AUDIT,
            json!({"actor": actor, "action": "abort", "plan_id": plan_id_text(plan_id), "at_ms": events::now_ms()}),
        );
        if let Some(control) = self.control(plan_id) {
            control.stop(StopReason::Aborted {
                actor: actor.to_string(),
            });
            return Ok(());
        }
        let records: Vec<Record> = {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            if plan.is_complete() {
                return Err(EngineError::WrongState {
                    plan_id: plan_id_text(plan_id),
                    status: plan.status().into(),
                    action: "abort",
                });
            }
            plan.shards
                .iter()
                .enumerate()
                .filter(|(_, s)| s.state == SlotState::Pending)
                .map(|(leaf, slot)| Record::ShardFailed {
                    plan_id: *plan_id,
                    leaf_index: leaf as u64,
                    cas_id: slot.cas_id,
                    attempts: 0,
                    duration_us: 0,
                    aborted: true,
                    error: "aborted".into(),
                })
                .collect()
        };
        for chunk in records.chunks(crate::limits::COMMIT_RECORDS_MAX) {
            self.store.submit(chunk.to_vec())?;
        }
        self.record_abort(plan_id, actor, "aborted")
    }

    /// Prepares a replay: forgets the failed and aborted outcomes of the
    /// plan so that the next `execute` re-runs them and everything
    /// downstream of them (blocked shards have no outcome yet), nothing
    /// else. Returns how many shards will run.
    pub fn prepare_replay(
        &self,
        plan_id: &PlanId,
        compiled: &Compiled,
        actor: &str,
    ) -> Result<u64, EngineError> {
        if self.is_running(plan_id) {
            return Err(EngineError::Running(plan_id_text(plan_id)));
        }
        let entry = self.entry(plan_id)?;
        let failed: Vec<LeafIndex> = {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            plan.shards
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s.state, SlotState::Failed | SlotState::Aborted))
                .map(|(leaf, _)| LeafIndex(leaf as u32))
                .collect()
        };
        let closure = compiled.dag.downstream_closure(&failed);
        let position = self.store.submit(vec![Record::PlanReplayed {
            plan_id: *plan_id,
            at_ms: events::now_ms(),
            actor: actor.to_string(),
        }])?;
        self.store.wait_durable(position)?;
        // Applying the replay record made the failed and aborted shards
        // pending again; with the never-run shards downstream of them, that
        // is the closure.
        let to_run = {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            closure
                .iter()
                .filter(|leaf| plan.shards[leaf.get()].state == SlotState::Pending)
                .count() as u64
        };
        self.bus.publish(
            events::AUDIT,
            json!({"actor": actor, "action": "replay", "plan_id": plan_id_text(plan_id),
                   "shards": to_run, "at_ms": events::now_ms()}),
        );
        Ok(to_run)
    }

    /// Notes a resume (rehydration) in the log, as a durable `hxo.plan`
    /// event, written directly when the bus is disabled.
    pub fn note_resume(&self, plan_id: &PlanId) -> Result<(), EngineError> {
        self.durable_plan_event(json!({"plan_id": plan_id_text(plan_id), "status": "rehydrated"}))
    }

    /// Whether a plan can run sliced across workers: every worker must be
    /// able to run its shards without another worker's, so no stage may
    /// wait at a barrier for a whole upstream stage, or depth by depth.
    pub fn check_sliceable(compiled: &Compiled) -> Result<(), PlanError> {
        for (index, (stage, dag_stage)) in compiled
            .plan
            .stages
            .iter()
            .zip(&compiled.dag.stages)
            .enumerate()
        {
            if dag_stage.chained {
                return Err(PlanError {
                    path: format!("stages[{index}].partitioner"),
                    message: format!(
                        "stage {} runs depth after depth, which cannot be split across workers (run it with one worker)",
                        stage.id
                    ),
                });
            }
            if let Some((up, _)) = dag_stage
                .upstream
                .iter()
                .find(|(_, join)| *join == dag::Join::Barrier)
            {
                return Err(PlanError {
                    path: format!("stages[{index}].dependencies"),
                    message: format!(
                        "stage {} waits for all of stage {}, which cannot be split across workers: run one array job per stage, chained by the job engine",
                        stage.id, compiled.plan.stages[*up].id
                    ),
                });
            }
        }
        Ok(())
    }

    /// The merge step of an indexed job (DESIGN section 10): unions the
    /// results that the workers of one plan recorded in their own stores
    /// (`worker_dirs`), records them in this store as one plan, and
    /// aggregates and certifies it: the root is the one a single machine
    /// would have computed. Every shard must have a result in some worker's
    /// log, and workers that ran the same shard must agree on its digest.
    pub fn merge(&self, worker_dirs: &[PathBuf], merged_by: &str) -> Result<PlanId, EngineError> {
        let merge_error = |message: String| EngineError::Merge(message);
        let mut manifest: Option<Manifest> = None;
        let mut results: Vec<Option<(Hash, Hash, u32, u64)>> = Vec::new();
        let mut worker_digests: Vec<(PathBuf, String)> = Vec::new();
        for dir in worker_dirs {
            let store = Store::open_read_only(dir, false)?;
            let workers: Vec<_> = store
                .plans()
                .into_iter()
                .filter(|entry| {
                    entry
                        .record
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .manifest
                        .worker
                        .is_some()
                })
                .collect();
            let [entry] = workers.as_slice() else {
                return Err(merge_error(format!(
                    "{}: expected the log of one worker run, found {} worker plans",
                    dir.display(),
                    workers.len()
                )));
            };
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            // Checked against the merged cas_ids once every slice is in:
            // workers of different builds record different digest versions.
            worker_digests.push((dir.clone(), plan.manifest.dag_digest.clone()));
            match &manifest {
                None => {
                    manifest = Some(plan.manifest.clone());
                    results = vec![None; plan.shard_count() as usize];
                }
                Some(_) if plan.shard_count() as usize != results.len() => {
                    return Err(merge_error(format!(
                        "{}: a different plan ({} shards, not {})",
                        dir.display(),
                        plan.shard_count(),
                        results.len()
                    )));
                }
                // A dry run's results are not a real run's (sql_migrate
                // digests them in another domain): never mix them.
                Some(first) if first.dry_run != plan.manifest.dry_run => {
                    return Err(merge_error(format!(
                        "{}: a {} run, the others are {} runs",
                        dir.display(),
                        if plan.manifest.dry_run { "dry" } else { "real" },
                        if first.dry_run { "dry" } else { "real" }
                    )));
                }
                Some(first)
                    if first.worker.map(|w| w.count) != plan.manifest.worker.map(|w| w.count) =>
                {
                    return Err(merge_error(format!(
                        "{}: run with a different worker count",
                        dir.display()
                    )));
                }
                Some(_) => {}
            }
            for (leaf, slot) in plan.shards.iter().enumerate() {
                if slot.state != SlotState::Done {
                    continue;
                }
                let result = (
                    slot.cas_id,
                    slot.output_digest,
                    slot.attempts,
                    slot.duration_us,
                );
                match results[leaf] {
                    Some((_, digest, _, _)) if digest != slot.output_digest => {
                        return Err(merge_error(format!(
                            "shard {leaf} ({}) has different output digests in different workers' logs: its executor is not deterministic",
                            to_hex(&slot.cas_id)
                        )));
                    }
                    Some(_) => {}
                    None => results[leaf] = Some(result),
                }
            }
        }
        let Some(mut manifest) = manifest else {
            return Err(merge_error("no worker logs given".into()));
        };
        let missing = results.iter().filter(|r| r.is_none()).count();
        if missing > 0 {
            return Err(merge_error(format!(
                "{missing} of {} shards have no result in the given worker logs (a worker missing or unfinished?)",
                results.len()
            )));
        }
        // Every worker ran the plan whose DAG the merged shards make up.
        let cas_ids: Vec<Hash> = results
            .iter()
            .map(|result| result.expect("checked above").0)
            .collect();
        let [digest, digest_v1] = dag::digests_of(&cas_ids).map(|d| to_hex(&d));
        let identifies = |recorded: &String| *recorded == digest || *recorded == digest_v1;
        for (dir, recorded) in &worker_digests {
            if !identifies(recorded) {
                return Err(merge_error(format!(
                    "{}: a different plan (its DAG digest {recorded} is not the merged shards' {digest})",
                    dir.display(),
                )));
            }
        }
        // Merging the same results again gives back the plan merged before.
        for entry in self.store.plans() {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            let same = plan.manifest.worker.is_none()
                && identifies(&plan.manifest.dag_digest)
                && plan.finished.is_some()
                && plan.shards.len() == results.len()
                && plan.shards.iter().zip(&results).all(|(slot, result)| {
                    slot.state == SlotState::Done
                        && result.is_some_and(|(_, digest, _, _)| digest == slot.output_digest)
                });
            if same {
                return Ok(plan.plan_id);
            }
        }
        manifest.dag_digest = digest;
        manifest.worker = None;
        manifest.submitted_by = merged_by.to_string();
        let plan_id = *uuid::Uuid::new_v4().as_bytes();
        let mut records = vec![Record::PlanAccepted {
            plan_id,
            accepted_at_ms: events::now_ms(),
            shard_count: results.len() as u64,
            manifest_json: manifest.to_json(),
        }];
        let mut position = 0;
        for (leaf, result) in results.into_iter().enumerate() {
            let (cas_id, output_digest, attempts, duration_us) = result.expect("checked above");
            records.push(Record::ShardDone {
                plan_id,
                leaf_index: leaf as u64,
                cas_id,
                output_digest,
                attempts,
                duration_us,
            });
            if records.len() == crate::limits::COMMIT_RECORDS_MAX {
                position = self.store.submit(std::mem::take(&mut records))?;
            }
        }
        if !records.is_empty() {
            position = self.store.submit(records)?;
        }
        self.store.wait_durable(position)?;
        let entry = self.entry(&plan_id)?;
        self.finish(&plan_id, &entry)?;
        Ok(plan_id)
    }

    /// Plans that are neither finished nor aborted (the rehydrator's list).
    pub fn incomplete_plans(&self) -> Vec<PlanId> {
        self.store
            .plans()
            .iter()
            .filter_map(|entry| {
                let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
                (!plan.is_complete()).then_some(plan.plan_id)
            })
            .collect()
    }

    pub fn close(&self) -> Result<(), EngineError> {
        self.bus.close();
        self.store.close()?;
        Ok(())
    }
}

#[derive(Clone, Debug)]
pub struct Certification {
    pub certified: bool,
    /// The log files hold a result for every shard.
    pub log_complete: bool,
    /// The root recomputed from the log files (zero when they lack results).
    pub root: Hash,
    pub proofs_checked: usize,
    pub detail: String,
}

impl Certification {
    fn failed(detail: &str) -> Certification {
        Certification {
            certified: false,
            log_complete: true,
            root: [0; 32],
            proofs_checked: 0,
            detail: detail.to_string(),
        }
    }
}

/// A root recomputed from the log files, with sampled proofs.
struct Recomputed {
    root: Hash,
    proofs: Vec<merkle::InclusionProof>,
    /// The leaf hash each proof is for.
    sampled_leaves: Vec<Hash>,
}

impl Recomputed {
    fn verified_against(&self, root: &Hash) -> usize {
        self.proofs
            .iter()
            .zip(&self.sampled_leaves)
            .filter(|(proof, leaf)| merkle::verify_inclusion(leaf, proof, root))
            .count()
    }

    /// The leaf of the first proof that does not verify against `root`.
    fn first_failing_proof(&self, root: &Hash) -> Option<u64> {
        self.proofs
            .iter()
            .zip(&self.sampled_leaves)
            .find(|(proof, leaf)| !merkle::verify_inclusion(leaf, proof, root))
            .map(|(proof, _)| proof.leaf_index)
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Verification {
    pub recorded_root: String,
    pub recomputed_root: String,
    pub tree_size: u64,
    pub proofs_checked: usize,
    pub proofs_verified: usize,
    pub ok: bool,
    pub detail: String,
}

/// Leaf hashes of a plan's shards in leaf order. A shard without a result
/// contributes an all-zero output digest, so a partial root is defined;
/// only a plan with every shard done is certified.
pub fn leaf_hashes(plan: &PlanRecord) -> Vec<Hash> {
    use rayon::prelude::*;
    const NO_RESULT: Hash = [0; 32];
    plan.shards
        .par_iter()
        .map(|slot| {
            let digest = if slot.state == SlotState::Done {
                &slot.output_digest
            } else {
                &NO_RESULT
            };
            merkle::shard_leaf_hash(&slot.cas_id, digest)
        })
        .collect()
}

/// Distinct leaf indices drawn from a seed (the root), always including the
/// first and last leaf.
pub fn sample_indices(seed: &Hash, tree_size: u64, count: usize) -> Vec<u64> {
    if tree_size == 0 {
        return Vec::new();
    }
    let mut picked = vec![0, tree_size - 1];
    let mut state = *seed;
    while picked.len() < count.min(tree_size as usize) {
        state = crate::hash::sha256(&state);
        let draw = u64::from_le_bytes(state[..8].try_into().expect("8 bytes")) % tree_size;
        if !picked.contains(&draw) {
            picked.push(draw);
        }
    }
    picked.sort_unstable();
    picked.dedup();
    picked
}

/// What only a live run knows, for a plan running in this process
/// (`running`: its control, start and outcomes at start).
fn live_of(plan: &PlanRecord, running: Option<(Arc<Control>, Instant, u64)>) -> Live {
    match running {
        Some((control, started, baseline)) => {
            let (claimed, running) = control.live_counts();
            // ETA from the rate observed in this run, not a constant.
            let finished_now = plan.shard_count() - plan.pending_count();
            let elapsed = started.elapsed().as_secs_f64();
            let rate = if elapsed > 0.0 {
                finished_now.saturating_sub(baseline) as f64 / elapsed
            } else {
                0.0
            };
            Live {
                claimed,
                running,
                rate_per_second: rate,
                running_now: true,
            }
        }
        None => Live::default(),
    }
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir().map_or_else(|_| path.to_path_buf(), |cwd| cwd.join(path))
    }
}

/// Validates, partitions and compiles a plan (no store needed).
pub fn compile(
    spec: PlanSpec,
    base_dir: &Path,
    defaults: PlanDefaults,
) -> Result<Compiled, EngineError> {
    let started = Instant::now();
    let plan = Plan::validate(spec, defaults)?;
    let base_dir = absolute(base_dir);
    let mut partitionings = Vec::with_capacity(plan.stages.len());
    for (index, stage) in plan.stages.iter().enumerate() {
        let partitioning =
            partition::partition(stage.partitioner, &stage.config, &base_dir, plan.shards_max)
                .map_err(|e| partition_error(index, e))?;
        partitionings.push(partitioning);
    }
    let mut executors = Vec::with_capacity(plan.stages.len());
    for (index, stage) in plan.stages.iter().enumerate() {
        let executor = exec::build(stage, &base_dir)
            .map_err(|e| config_error(index, e.key(), e.to_string()))?;
        executors.push(executor);
    }
    let partitioned = Instant::now();
    let dag = dag::compile(&plan, partitionings).map_err(|e| match e {
        dag::DagError::TooManyShards {
            stage_index,
            count,
            max,
        } => PlanError {
            path: if plan
                .spec
                .constraints
                .as_ref()
                .and_then(|c| c.max_shards)
                .is_some()
            {
                "constraints.max_shards".to_string()
            } else {
                format!("stages[{stage_index}]")
            },
            message: format!(
                "{count} shards exceed max_shards {max} (constraints.max_shards or HXO_MAX_SHARDS)"
            ),
        },
    })?;
    tracing::info!(
        shards = dag.shard_count(),
        partition_ms = (partitioned - started).as_millis() as u64,
        dag_ms = partitioned.elapsed().as_millis() as u64,
        "compiled"
    );
    Ok(Compiled {
        plan,
        dag: Arc::new(dag),
        executors,
        base_dir,
        worker: None,
    })
}

fn manifest_of(compiled: &Compiled, submitted_by: &str, dry_run: bool) -> Manifest {
    Manifest {
        format: MANIFEST_FORMAT,
        spec: compiled.plan.spec.clone(),
        base_dir: compiled.base_dir.display().to_string(),
        stages: compiled
            .plan
            .stages
            .iter()
            .zip(&compiled.dag.stages)
            .map(|(stage, dag_stage)| ManifestStage {
                id: stage.id.clone(),
                kind: stage.blueprint.kind.to_string(),
                executor: stage.executor.name().to_string(),
                first_leaf: dag_stage.first_leaf as u64,
                shard_count: dag_stage.shard_count as u64,
                slo_ms: stage.slo_ms,
            })
            .collect(),
        dag_digest: to_hex(&compiled.dag.dag_digest),
        submitted_by: submitted_by.to_string(),
        dry_run,
        worker: compiled.worker,
    }
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

fn publish_shard_events(bus: &Bus, group: &[Vec<Record>]) {
    if !bus.wants_shard_events() {
        return;
    }
    let mut events = Vec::with_capacity(group.iter().map(Vec::len).sum());
    for record in group.iter().flatten() {
        match record {
            Record::ShardDone {
                plan_id,
                leaf_index,
                cas_id,
                output_digest,
                attempts,
                duration_us,
            } => events.push((
                events::SHARD_DONE,
                ShardEvent {
                    plan_id: *plan_id,
                    leaf_index: *leaf_index,
                    cas_id: *cas_id,
                    output_digest: Some(*output_digest),
                    attempts: *attempts,
                    duration_us: *duration_us,
                    error: None,
                },
            )),
            Record::ShardFailed {
                plan_id,
                leaf_index,
                cas_id,
                attempts,
                duration_us,
                error,
                ..
            } => events.push((
                events::SHARD_FAILED,
                ShardEvent {
                    plan_id: *plan_id,
                    leaf_index: *leaf_index,
                    cas_id: *cas_id,
                    output_digest: None,
                    attempts: *attempts,
                    duration_us: *duration_us,
                    error: Some(error.as_str().into()),
                },
            )),
            _ => {}
        }
    }
    bus.publish_shards(events);
}

/// Records outcomes as the workers hand them over, on their threads: the
/// records go to the log from there, and per-stage counts feed the SLO
/// watch. (One collector thread used to do this for every shard; on two
/// cores it was a twentieth of a no-op run's CPU.)
struct Recorder {
    store: Arc<Store>,
    bus: Arc<Bus>,
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
}

impl scheduler::OutcomeSink for Recorder {
    fn accept(&self, batch: Vec<scheduler::Outcome>) {
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
            if self.stage_started[stage].get().is_none() {
                let now = Instant::now();
                let _ = self.stage_started[stage].set(
                    now.checked_sub(Duration::from_micros(outcome.duration_us))
                        .unwrap_or(now),
                );
            }
            let plan_id = self.plan_id;
            let cas_id = *self.dag.cas_id(LeafIndex(outcome.leaf));
            match outcome.kind {
                OutcomeKind::Done(output_digest) => records.push(Record::ShardDone {
                    plan_id,
                    leaf_index: outcome.leaf as u64,
                    cas_id,
                    output_digest,
                    attempts: outcome.attempts,
                    duration_us: outcome.duration_us,
                }),
                OutcomeKind::Failed { error, aborted } => records.push(Record::ShardFailed {
                    plan_id,
                    leaf_index: outcome.leaf as u64,
                    cas_id,
                    attempts: outcome.attempts,
                    duration_us: outcome.duration_us,
                    aborted,
                    error,
                }),
                OutcomeKind::Split { pieces, p95_us } => {
                    if !self.split_signalled[stage].swap(true, Ordering::SeqCst) {
                        self.bus.publish(
                            events::AUTOTUNE_SIGNAL,
                            json!({"plan_id": self.plan_text, "stage_id": self.slos[stage].0,
                                   "p95_ms": p95_us as f64 / 1000.0, "action": "split",
                                   "factor": pieces}),
                        );
                    }
                    records.push(Record::ShardSplit {
                        plan_id,
                        leaf_index: outcome.leaf as u64,
                        pieces,
                    });
                }
                OutcomeKind::Piece { piece, digest } => records.push(Record::SubShardDone {
                    plan_id,
                    leaf_index: outcome.leaf as u64,
                    piece,
                    output_digest: digest,
                }),
                OutcomeKind::Blocked | OutcomeKind::Abandoned => {}
            }
        }
        for (stage, count) in terminal {
            self.stage_outcomes[stage].fetch_add(count, Ordering::SeqCst);
        }
        if records.is_empty() {
            return;
        }
        let mut failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if failure.is_some() {
            return;
        }
        drop(failure);
        match self.store.submit(records) {
            Ok(position) => {
                self.position.fetch_max(position, Ordering::SeqCst);
            }
            // Nothing more can be recorded: stop the run now (running more
            // shards would only repeat side effects nobody can record); the
            // run ends with the first error.
            Err(error) => {
                self.control.stop(StopReason::Interrupted);
                failure = self.failure.lock().unwrap_or_else(|e| e.into_inner());
                failure.get_or_insert(error);
            }
        }
    }
}

impl Recorder {
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
