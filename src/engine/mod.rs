//! The engine: the only module that wires plans, partitions, the DAG, the
//! scheduler, the checkpoint store, the Merkle tree and the event bus
//! together. The front-ends (CLI, HTTP) call nothing else to run plans.
//!
//! A run goes: compile ([`mod@compile`]: validate, partition, DAG, executors)
//! -> accept (a durable `PlanAccepted`) -> run ([`run`]: the scheduler on
//! the pools; workers hand outcomes to a recorder that submits them as log
//! records; the store applies them once durable) -> aggregate and certify
//! ([`certify`]: the root re-read from the log files, a seeded sample of
//! inclusion proofs verified) -> finish (a durable `PlanFinished`). The
//! plan's states and the verbs that move it (submit, resume, replay,
//! abort) are [`lifecycle`]'s; merging indexed workers' stores is
//! [`merge`]'s.
//!
//! This file holds the [`Engine`] itself: opening and closing it, finding
//! plans, and what it reports about them.

pub mod certify;
pub mod compile;
pub mod lifecycle;
pub mod merge;
pub mod requests;
pub mod run;

pub use certify::{Certification, Verification};
pub use compile::{check_sliceable, compile, CompileError, Compiled};
pub use lifecycle::{PlanStatus, Verb};
pub use requests::{ask_owner, Answer, Request};
pub use run::RunTicket;

use crate::events::{self, Bus, ShardEvent};
use crate::ids::{plan_id_text, PlanId};
use crate::log::Record;
use crate::report::{self, Live, Report};
use crate::settings::Settings;
use crate::store::{PlanEntry, PlanRecord, SlotState, Store, StoreError};
use run::RunningPlan;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Errors of the engine layer. Which exit code or HTTP status each one
/// gets is the front-ends' to decide, by an exhaustive match.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The plan does not compile (exit 2, HTTP 400).
    #[error(transparent)]
    Invalid(#[from] CompileError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("plan {0} not found")]
    UnknownPlan(String),
    #[error("{cas_id} names no done shard of plan {plan_id}: {reason}")]
    UnknownShard {
        plan_id: String,
        cas_id: String,
        reason: &'static str,
    },
    #[error("plan {plan_id}: its inputs changed since it was accepted (DAG digest {accepted} is now {now}); submit it again as a new plan")]
    InputsChanged {
        plan_id: String,
        accepted: String,
        now: String,
    },
    /// The lifecycle refuses the verb in the plan's state; nothing changed.
    #[error("plan {plan_id} is {status}: {} does not apply", action.name())]
    WrongState {
        plan_id: String,
        status: PlanStatus,
        action: Verb,
    },
    #[error("plan {plan_id} has no failed or aborted shards: nothing to replay")]
    NothingToReplay { plan_id: String },
    #[error("plan {plan_id} is {status}: it has no recorded root yet")]
    NoRoot { plan_id: String, status: PlanStatus },
    #[error("plan {0} is running")]
    Running(String),
    /// As many plans run in this process as it allows.
    #[error("{runs_max} plans are running here already; try again when one ends")]
    AtCapacity { runs_max: usize },
    #[error("merge: {0}")]
    Merge(String),
    #[error("plan {plan_id} cannot be certified: {detail}")]
    Uncertifiable { plan_id: String, detail: String },
    #[error("cannot start a thread for a run")]
    Spawn(#[source] std::io::Error),
    #[error("writing the output")]
    Output(#[source] std::io::Error),
}

impl EngineError {
    /// Whether another process owns the store (holds its lock).
    pub fn is_locked(&self) -> bool {
        matches!(
            self,
            EngineError::Store(StoreError::Log(crate::log::LogError::Locked { .. }))
        )
    }
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

/// What a compaction of the store did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactSummary {
    pub records_before: u64,
    pub records_after: u64,
}

/// Compacts the store of `settings` (`hxo gc`): keeps the latest outcome
/// per shard and every plan-level record. Takes the store lock.
pub fn compact_store(settings: &Settings) -> Result<CompactSummary, EngineError> {
    let report = crate::log::compact(&settings.db_path, crate::log::LogOptions::default())
        .map_err(StoreError::from)?;
    Ok(CompactSummary {
        records_before: report.records_before,
        records_after: report.records_after,
    })
}

/// One line of `plans`: a plan's status fields and when it was accepted.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlanSummary {
    #[serde(flatten)]
    pub status: report::Status,
    pub started_at: String,
}

pub struct Engine {
    pub settings: Settings,
    store: Arc<Store>,
    pub bus: Arc<Bus>,
    // INVARIANT: holds exactly the plans with a live `RunTicket`.
    running: Mutex<HashMap<PlanId, RunningPlan>>,
    /// Most plans running at once (`Engine::set_runs_max`).
    runs_max: AtomicUsize,
    /// Threads of runs started by `Engine::spawn`.
    background: Mutex<Vec<JoinHandle<()>>>,
    /// Background runs that ended interrupted.
    interrupted_runs: AtomicUsize,
    /// For a reader: the plans another live process runs in this store,
    /// and its pid (read once, at open).
    elsewhere: Option<(u32, std::collections::HashSet<PlanId>)>,
    /// Set by `close`: the request watcher ends.
    closed: std::sync::atomic::AtomicBool,
    /// The owner's watcher of requests from other processes, and the
    /// sender whose drop ends it at once.
    watcher: Mutex<Option<(JoinHandle<()>, crossbeam_channel::Sender<()>)>>,
    /// Serialises rewrites of the store's list of running plans.
    running_file: Mutex<()>,
    /// Serialises the lifecycle verbs: a state check and the move it allows
    /// happen under it, so two verbs never both pass the same check.
    verbs: Mutex<()>,
}

impl Engine {
    /// Opens the engine on the store named by the settings, for writing.
    pub fn open(settings: Settings, salvage: bool) -> Result<Arc<Engine>, EngineError> {
        let options = crate::log::LogOptions {
            salvage,
            sync_commits: settings.sync_commits,
            ..crate::log::LogOptions::default()
        };
        let store = Arc::new(Store::open(&settings.db_path, options)?);
        Ok(Engine::with_store(settings, store))
    }

    /// Opens the engine on the store of the settings without taking its
    /// lock: for commands that only look, beside a running owner.
    pub fn open_read_only(settings: Settings, salvage: bool) -> Result<Arc<Engine>, EngineError> {
        let store = Arc::new(Store::open_read_only(&settings.db_path, salvage)?);
        Ok(Engine::with_store(settings, store))
    }

    pub fn with_store(settings: Settings, store: Arc<Store>) -> Arc<Engine> {
        let elsewhere = (!store.is_owner())
            .then(|| store.running_elsewhere())
            .flatten()
            .map(|(pid, plans)| (pid, plans.into_iter().collect()));
        // An owner starts with nothing running: a list a killed owner left
        // is replaced.
        store.publish_running(&[]);
        let bus = Arc::new(Bus::new(settings.genesis_enabled, store.last_event_seq()));
        store.restore_events(&bus);
        let engine = Arc::new(Engine {
            settings,
            store,
            bus,
            running: Mutex::new(HashMap::new()),
            runs_max: AtomicUsize::new(usize::MAX),
            background: Mutex::new(Vec::new()),
            interrupted_runs: AtomicUsize::new(0),
            elsewhere,
            closed: std::sync::atomic::AtomicBool::new(false),
            watcher: Mutex::new(None),
            running_file: Mutex::new(()),
            verbs: Mutex::new(()),
        });
        // Durable events go to the log; per-shard events are published once
        // their records are durable. Weak in both directions: the store and
        // the bus point at each other through these closures, and strong
        // references would keep both alive forever.
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
        if engine.store.is_owner() {
            engine.watch_requests();
        }
        engine
    }

    /// Bounds how many plans may run in this process at once; a start
    /// beyond it is refused with [`EngineError::AtCapacity`].
    pub fn set_runs_max(&self, runs_max: usize) {
        self.runs_max
            .store(runs_max, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn entry(&self, plan_id: &PlanId) -> Result<Arc<PlanEntry>, EngineError> {
        self.store
            .plan(plan_id)
            .ok_or_else(|| EngineError::UnknownPlan(plan_id_text(plan_id)))
    }

    /// A plan by id or unique id prefix.
    pub fn find(&self, text: &str) -> Result<PlanId, EngineError> {
        self.store
            .find(text)
            .map(|entry| entry.plan_id())
            .ok_or_else(|| EngineError::UnknownPlan(text.to_string()))
    }

    /// Every plan's id, in acceptance order.
    pub fn plan_ids(&self) -> Vec<PlanId> {
        self.store
            .plans()
            .iter()
            .map(|entry| entry.plan_id())
            .collect()
    }

    pub fn is_running(&self, plan_id: &PlanId) -> bool {
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(plan_id)
    }

    /// Plans running in this process.
    pub fn running_plans(&self) -> Vec<PlanId> {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        running.keys().copied().collect()
    }

    /// Calls `view` with a plan's record (locked), what its live run here
    /// knows, and its lifecycle status.
    fn view_plan<T>(
        &self,
        entry: &PlanEntry,
        view: impl FnOnce(&PlanRecord, Live, PlanStatus) -> T,
    ) -> T {
        let plan_id = entry.plan_id();
        // Taken before the plan's lock: `live` reads the plan's counts too.
        let live = Live {
            owner_pid: self.owner_pid(&plan_id),
            ..self.live(&plan_id)
        };
        let running = live.running_now || live.owner_pid.is_some();
        let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
        let status = lifecycle::status_of(&plan, running);
        view(&plan, live, status)
    }

    /// For a reader: the pid of the live process that owns the store.
    pub fn owner(&self) -> Option<u32> {
        self.elsewhere.as_ref().map(|(pid, _)| *pid)
    }

    /// The pid of another live process that runs `plan_id` in this store
    /// (seen by a reader, as of its open).
    pub fn owner_pid(&self, plan_id: &PlanId) -> Option<u32> {
        let (pid, plans) = self.elsewhere.as_ref()?;
        plans.contains(plan_id).then_some(*pid)
    }

    /// Rewrites the store's list of the plans running here, for readers in
    /// other processes.
    pub(super) fn publish_running(&self) {
        let _serial = self.running_file.lock().unwrap_or_else(|e| e.into_inner());
        self.store.publish_running(&self.running_plans());
    }

    /// The plan's report (live counts if it runs in this process).
    pub fn report(&self, plan_id: &PlanId) -> Result<Report, EngineError> {
        let entry = self.entry(plan_id)?;
        Ok(self.view_plan(&entry, |plan, live, status| {
            report::build(plan, live, status.name())
        }))
    }

    /// The guide's status fields only: constant time in the plan's size
    /// (no per-shard pass), for pollers (`GET /api/hxo/status`).
    pub fn status(&self, plan_id: &PlanId) -> Result<report::Status, EngineError> {
        let entry = self.entry(plan_id)?;
        Ok(self.view_plan(&entry, |plan, live, status| {
            report::status(plan, live, status.name())
        }))
    }

    /// Every plan's status line, in acceptance order.
    pub fn plans(&self) -> Vec<PlanSummary> {
        let plans = self.store.plans();
        plans
            .iter()
            .map(|entry| {
                self.view_plan(entry, |plan, live, status| PlanSummary {
                    status: report::status(plan, live, status.name()),
                    started_at: report::rfc3339(plan.accepted_at_ms),
                })
            })
            .collect()
    }

    /// What `/metrics` shows: every plan's counts and shard durations.
    pub fn metrics(&self) -> report::Metrics {
        let mut metrics = report::Metrics::default();
        for entry in self.store.plans() {
            self.view_plan(&entry, |plan, _, status| metrics.add(plan, status.name()));
        }
        let (claimed, running) = self.live_counts();
        metrics.set_live(claimed, running);
        metrics
    }

    /// Durable plan-level and audit events, oldest first.
    pub fn durable_events(&self) -> Vec<events::Event> {
        self.store.durable_events()
    }

    /// Claimed and running shards of the plans running in this process.
    pub fn live_counts(&self) -> (u64, u64) {
        self.controls().iter().fold((0, 0), |(c, r), control| {
            let (claimed, running) = control.live_counts();
            (c + claimed, r + running)
        })
    }

    /// What only a live run knows, for a plan running in this process.
    fn live(&self, plan_id: &PlanId) -> Live {
        let running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        let Some(run) = running.get(plan_id) else {
            return Live::default();
        };
        let (control, rate) = (run.control.clone(), run.rate.clone());
        drop(running);
        let (claimed, running) = control.live_counts();
        let finished_now = self
            .store
            .plan(plan_id)
            .map_or(0, |entry| run::finished_count(&entry));
        Live {
            claimed,
            running,
            // The ETA comes from this run's recent rate, not a constant.
            rate_per_second: rate.per_second(finished_now),
            running_now: true,
            owner_pid: None,
        }
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
            let done = slot.state == SlotState::Done;
            line.clear();
            let value = json!({
                "index": index,
                "stage_id": stage,
                "cas_id": known.then(|| crate::hash::to_hex(&slot.cas_id)),
                "output_digest": done.then(|| crate::hash::to_hex(&slot.output_digest)),
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
                return Err(EngineError::Output(error));
            }
        }
        Ok(())
    }

    /// Stops publishing, drains the log writer, syncs and releases the
    /// store. Background runs must have ended ([`Engine::wait_runs`]).
    pub fn close(&self) -> Result<(), EngineError> {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        // A request being applied is answered before the store closes.
        let watcher = self
            .watcher
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some((watcher, stop)) = watcher {
            drop(stop);
            let _ = watcher.join();
        }
        self.bus.close();
        self.store.close()?;
        Ok(())
    }
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

#[cfg(test)]
mod tests;
