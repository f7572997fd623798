//! Plans running in the background: one thread per running plan, each
//! calling [`Engine::execute`] with a [`Control`] kept here, so that abort
//! and shutdown can stop it.
//!
//! Rehydration (on start): every incomplete plan that was submitted
//! ([`Engine::is_submitted`]: a plan made by `POST /api/hxo/plan` and never
//! submitted stays as it is) is recompiled, noted as resumed and executed
//! again; shards already done are skipped. A plan whose inputs changed is
//! left alone and counted as a failed rehydration.
//!
//! Shutdown stops every run as interrupted (resumable), then waits for the
//! threads; the caller closes the engine after.

use crate::engine::{Compiled, Engine, RunEnd};
use crate::log::PlanId;
use crate::sched::{Control, StopReason};
use crate::store::plan_id_text;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

struct Run {
    control: Arc<Control>,
    thread: Option<JoinHandle<()>>,
}

pub struct Runs {
    engine: Arc<Engine>,
    active: Mutex<HashMap<PlanId, Run>>,
    /// Plans accepted by `POST /api/hxo/plan` and not submitted yet.
    created: Mutex<HashSet<PlanId>>,
    /// Runs that ended interrupted (by shutdown).
    interrupted: AtomicU64,
    pub rehydration_failures: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Runs {
    pub fn new(engine: Arc<Engine>) -> Arc<Runs> {
        Arc::new(Runs {
            engine,
            active: Mutex::new(HashMap::new()),
            created: Mutex::new(HashSet::new()),
            interrupted: AtomicU64::new(0),
            rehydration_failures: AtomicU64::new(0),
        })
    }

    pub fn is_active(&self, plan_id: &PlanId) -> bool {
        lock(&self.active).contains_key(plan_id)
    }

    pub fn active_plans(&self) -> Vec<PlanId> {
        lock(&self.active).keys().copied().collect()
    }

    pub fn control(&self, plan_id: &PlanId) -> Option<Arc<Control>> {
        lock(&self.active).get(plan_id).map(|r| r.control.clone())
    }

    pub fn note_created(&self, plan_id: PlanId) {
        lock(&self.created).insert(plan_id);
    }

    pub fn is_created(&self, plan_id: &PlanId) -> bool {
        lock(&self.created).contains(plan_id)
    }

    /// Takes a plan out of the created set; false if it was not in it.
    pub fn take_created(&self, plan_id: &PlanId) -> bool {
        lock(&self.created).remove(plan_id)
    }

    /// Whether as many plans run here as may (`HTTP_RUNS_MAX`).
    pub fn is_full(&self) -> bool {
        lock(&self.active).len() >= crate::limits::HTTP_RUNS_MAX
    }

    /// Starts executing an accepted plan in the background. Returns false
    /// (and starts nothing) if it already runs here.
    pub fn start(self: &Arc<Self>, plan_id: PlanId, compiled: Compiled, why: &'static str) -> bool {
        let mut active = lock(&self.active);
        if active.contains_key(&plan_id) {
            return false;
        }
        // Each run has pools of its own: bound how many run at once.
        if active.len() >= crate::limits::HTTP_RUNS_MAX {
            tracing::warn!(
                "not starting plan {}: {} plans already run here",
                plan_id_text(&plan_id),
                active.len()
            );
            return false;
        }
        let control = Control::new();
        let runs = self.clone();
        let run_control = control.clone();
        let spawned = std::thread::Builder::new()
            .name("hxo-run".into())
            .spawn(move || runs.run(plan_id, compiled, run_control, why));
        match spawned {
            Ok(thread) => {
                active.insert(
                    plan_id,
                    Run {
                        control,
                        thread: Some(thread),
                    },
                );
                true
            }
            Err(error) => {
                tracing::error!(
                    "cannot start a thread for plan {}: {error}",
                    plan_id_text(&plan_id)
                );
                false
            }
        }
    }

    fn run(&self, plan_id: PlanId, compiled: Compiled, control: Arc<Control>, why: &str) {
        /// Forgets the run however the thread ends, a panic included, so a
        /// failed run never stays "running".
        struct Forget<'a>(&'a Runs, PlanId);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                lock(&self.0.active).remove(&self.1);
            }
        }
        let _forget = Forget(self, plan_id);
        let text = plan_id_text(&plan_id);
        tracing::info!(plan_id = %text, why, "plan running");
        match self.engine.execute(plan_id, &compiled, control, None) {
            Ok(summary) => {
                if summary.end == RunEnd::Interrupted {
                    self.interrupted.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(plan_id = %text, end = ?summary.end,
                    done = summary.report.done_shards, failed = summary.report.failed_shards,
                    "plan run ended");
            }
            Err(error) => tracing::error!(plan_id = %text, "plan run failed: {error}"),
        }
        // Dropping the handle (in `_forget`) detaches this finishing thread.
    }

    /// Waits until the plan no longer runs here, at most `timeout`.
    pub fn wait(&self, plan_id: &PlanId, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_active(plan_id) {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Resumes the submitted incomplete plans of the store; notes the
    /// created ones. Returns how many runs started.
    pub fn rehydrate(self: &Arc<Self>) -> usize {
        let mut started = 0;
        for plan_id in self.engine.incomplete_plans() {
            let text = plan_id_text(&plan_id);
            if !self.engine.is_submitted(&plan_id) {
                self.note_created(plan_id);
                continue;
            }
            let resumed = self.engine.recompile(&plan_id).and_then(|compiled| {
                self.engine.note_resume(&plan_id)?;
                Ok(compiled)
            });
            match resumed {
                Ok(compiled) => {
                    eprintln!("hxo: rehydrating plan {text}");
                    if self.start(plan_id, compiled, "rehydrated") {
                        started += 1;
                    }
                }
                Err(error) => {
                    self.rehydration_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(plan_id = %text, "cannot rehydrate: {error}");
                    eprintln!("hxo: cannot rehydrate plan {text}: {error}");
                }
            }
        }
        started
    }

    /// Stops every run as interrupted and waits for them. Returns how many
    /// runs ended interrupted over this server's life.
    pub fn stop_all(&self) -> u64 {
        let runs: Vec<Run> = lock(&self.active).drain().map(|(_, run)| run).collect();
        for run in &runs {
            run.control.stop(StopReason::Interrupted);
        }
        for mut run in runs {
            if let Some(thread) = run.thread.take() {
                let _ = thread.join();
            }
        }
        self.interrupted.load(Ordering::Relaxed)
    }
}
