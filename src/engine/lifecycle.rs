//! A plan's lifecycle: the states it can be in, the verbs that move it,
//! and the log records that make each move durable.
//!
//! This is the only module that writes lifecycle records (`PlanAccepted`,
//! `PlanHeld`, `PlanSubmitted`, `PlanRunStarted`, `PlanAborted`,
//! `PlanReplayed`, `PlanFinished`, `PlanCertified`) and the only one that
//! turns what the store folded out of them into a [`PlanStatus`]. The
//! front-ends show `PlanStatus::name()` and compare enum values, never
//! strings.
//!
//! # States and transitions
//!
//! ```text
//!   create                          -> CREATED      (accepted, held)
//!   start_new (hxo run, create-and-submit)
//!                                   -> RUNNING      (accepted, slot taken)
//!   CREATED      --submit-->           RUNNING
//!   SUBMITTED    --resume-->           RUNNING      (accepted, never started)
//!   INTERRUPTED  --resume-->           RUNNING      (counted as a rehydration)
//!   FAILED | ABORTED | INTERRUPTED
//!                --replay-->           RUNNING      (only with failed shards)
//!   CREATED | SUBMITTED | RUNNING | INTERRUPTED
//!                --abort-->            ABORTED
//!
//!   RUNNING ends as one of:
//!     FINISHED      every shard done; root certified from the log files
//!     FAILED        some shard failed; a partial root (never certified)
//!     ABORTED       an abort or the timebox stopped shards
//!     INTERRUPTED   a signal, a shutdown or a crash stopped shards
//!     SLICE_FINISHED  a worker's slice, all done (no root: merge)
//!   A stop that finds nothing left to stop is no stop: FINISHED or FAILED.
//! ```
//!
//! The legal verbs per state are [`check`]'s table, and nothing else
//! decides them: an action that does not apply is refused with
//! [`super::EngineError::WrongState`] and changes nothing (HTTP 409, CLI
//! exit 2).
//!
//! INVARIANT: a plan is `Running` exactly while a [`RunTicket`]
//! for it is registered in its engine; every other state is a function of
//! the durable records alone, so a restart reads back the same status.

use super::compile::{manifest_of, Compiled};
use super::run::RunTicket;
use super::{Engine, EngineError};
use crate::events;
use crate::hash::Hash;
use crate::ids::{new_plan_id, plan_id_text, PlanId};
use crate::log::{Record, RunCause};
use crate::plan::Manifest;
use crate::sched::StopReason;
use crate::store::{PlanRecord, SlotState};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Where a plan stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlanStatus {
    /// Accepted and held (`POST /api/hxo/plan`): waits for a submit.
    Created,
    /// Accepted to run, never started (a resume or a server start runs it).
    Submitted,
    /// Running in this process now.
    Running,
    /// Started, stopped before its end (Ctrl-C, shutdown, crash): resumable.
    Interrupted,
    /// Every shard done; the root is recorded.
    Finished,
    /// Ended with failed (or blocked) shards; a partial root is recorded.
    Failed,
    /// Aborted or timeboxed: done shards stay, the rest failed (aborted).
    Aborted,
    /// One worker's slice of an indexed job, all done (`hxo merge` next).
    SliceFinished,
}

impl PlanStatus {
    /// Every status, in the order reports list them.
    pub const ALL: [PlanStatus; 8] = [
        PlanStatus::Created,
        PlanStatus::Submitted,
        PlanStatus::Running,
        PlanStatus::Interrupted,
        PlanStatus::Finished,
        PlanStatus::Failed,
        PlanStatus::Aborted,
        PlanStatus::SliceFinished,
    ];

    /// The name shown in reports, `--json` and the REST API.
    pub fn name(self) -> &'static str {
        match self {
            PlanStatus::Created => "created",
            PlanStatus::Submitted => "submitted",
            PlanStatus::Running => "running",
            PlanStatus::Interrupted => "interrupted",
            PlanStatus::Finished => "finished",
            PlanStatus::Failed => "failed",
            PlanStatus::Aborted => "aborted",
            PlanStatus::SliceFinished => "slice_finished",
        }
    }

    /// No run will change it unless someone replays it.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            PlanStatus::Finished
                | PlanStatus::Failed
                | PlanStatus::Aborted
                | PlanStatus::SliceFinished
        )
    }

    /// A plan that a resume (or a server start) runs on its own.
    pub fn is_resumable(self) -> bool {
        matches!(self, PlanStatus::Submitted | PlanStatus::Interrupted)
    }
}

impl std::fmt::Display for PlanStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What someone asks of a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// Start a created plan.
    Submit,
    /// Run what is not durably done of a submitted or interrupted plan.
    Resume,
    /// Re-run the failed shards and everything downstream of them.
    Replay,
    /// Stop it: pending and running shards fail (aborted), done ones stay.
    Abort,
}

impl Verb {
    pub fn name(self) -> &'static str {
        match self {
            Verb::Submit => "submit",
            Verb::Resume => "resume",
            Verb::Replay => "replay",
            Verb::Abort => "abort",
        }
    }
}

/// Whether `verb` applies to a plan in `status`: the transition table.
pub fn check(status: PlanStatus, verb: Verb) -> bool {
    use PlanStatus as S;
    match verb {
        Verb::Submit => status == S::Created,
        Verb::Resume => status.is_resumable(),
        Verb::Replay => matches!(status, S::Failed | S::Aborted | S::Interrupted),
        Verb::Abort => matches!(
            status,
            S::Created | S::Submitted | S::Running | S::Interrupted
        ),
    }
}

/// The status the durable records give, or `Running` while it runs here.
pub fn status_of(plan: &PlanRecord, running_here: bool) -> PlanStatus {
    if running_here {
        PlanStatus::Running
    } else if plan.aborted.is_some() {
        PlanStatus::Aborted
    } else if plan.worker_slice_done() {
        PlanStatus::SliceFinished
    } else if plan.finished.is_some() && plan.manifest.worker.is_some() {
        // A slice that ended with failed shards (it has no root).
        PlanStatus::Failed
    } else if plan.finished.is_some() {
        let counts = plan.counts();
        if counts.failed + counts.aborted > 0 || plan.pending_count() > 0 {
            PlanStatus::Failed
        } else {
            PlanStatus::Finished
        }
    } else if plan.held {
        PlanStatus::Created
    } else if plan.run_starts == 0 && plan.pending_count() == plan.shard_count() {
        // Never started. (Version-1 stores written with events off have no
        // run starts: a plan with outcomes there did start.)
        PlanStatus::Submitted
    } else {
        PlanStatus::Interrupted
    }
}

/// Refuses `verb` unless the table allows it in `status`.
pub(super) fn require(plan_id: &PlanId, status: PlanStatus, verb: Verb) -> Result<(), EngineError> {
    if check(status, verb) {
        Ok(())
    } else {
        Err(EngineError::WrongState {
            plan_id: plan_id_text(plan_id),
            status,
            action: verb,
        })
    }
}

/// The durable moves. Each waits until its records are durable.
impl Engine {
    fn submit_durably(&self, records: Vec<Record>) -> Result<(), EngineError> {
        let position = self.store.submit(records)?;
        self.store.wait_durable(position)?;
        Ok(())
    }

    /// Accepts a plan under a fresh id: `PlanAccepted`, followed by
    /// `PlanHeld` when it is only created.
    pub(super) fn record_accepted(
        &self,
        plan_id: PlanId,
        manifest: &Manifest,
        shard_count: u64,
        held: bool,
    ) -> Result<(), EngineError> {
        let at_ms = events::now_ms();
        let mut records = vec![Record::PlanAccepted {
            plan_id,
            accepted_at_ms: at_ms,
            shard_count,
            manifest_json: manifest.to_json(),
        }];
        if held {
            records.push(Record::PlanHeld { plan_id, at_ms });
        }
        self.submit_durably(records)?;
        self.bus.publish(
            events::PLAN,
            json!({"plan_id": plan_id_text(&plan_id), "name": manifest.spec.name,
                   "status": if held { "created" } else { "submitted" },
                   "total_shards": shard_count, "submitted_by": manifest.submitted_by}),
        );
        Ok(())
    }

    pub(super) fn record_submitted(
        &self,
        plan_id: &PlanId,
        actor: &str,
    ) -> Result<(), EngineError> {
        self.submit_durably(vec![Record::PlanSubmitted {
            plan_id: *plan_id,
            at_ms: events::now_ms(),
            actor: actor.to_string(),
        }])?;
        self.bus.publish(
            events::PLAN,
            json!({"plan_id": plan_id_text(plan_id), "status": "submitted", "submitted_by": actor}),
        );
        Ok(())
    }

    pub(super) fn record_run_started(
        &self,
        plan_id: &PlanId,
        cause: RunCause,
    ) -> Result<(), EngineError> {
        self.submit_durably(vec![Record::PlanRunStarted {
            plan_id: *plan_id,
            at_ms: events::now_ms(),
            cause,
        }])?;
        let text = plan_id_text(plan_id);
        if cause == RunCause::Resume {
            self.bus.publish(
                events::PLAN,
                json!({"plan_id": text, "status": "rehydrated"}),
            );
        }
        self.bus.publish(
            events::PLAN,
            json!({"plan_id": text, "status": "running", "cause": cause.name()}),
        );
        Ok(())
    }

    pub(super) fn record_interrupted(&self, plan_id: &PlanId) {
        // Nothing to log: a started plan without an end is interrupted.
        self.bus.publish(
            events::PLAN,
            json!({"plan_id": plan_id_text(plan_id), "status": "interrupted"}),
        );
    }

    /// `PlanAborted`, after the `ShardFailed { aborted }` records of the
    /// shards it stops (already submitted, so they are durable first).
    pub(super) fn record_aborted(
        &self,
        plan_id: &PlanId,
        actor: &str,
        reason: &str,
    ) -> Result<(), EngineError> {
        self.submit_durably(vec![Record::PlanAborted {
            plan_id: *plan_id,
            at_ms: events::now_ms(),
            actor: actor.to_string(),
            reason: reason.to_string(),
        }])?;
        self.bus.publish(
            events::PLAN,
            json!({"plan_id": plan_id_text(plan_id), "status": "aborted", "actor": actor, "reason": reason}),
        );
        Ok(())
    }

    pub(super) fn record_replayed(&self, plan_id: &PlanId, actor: &str) -> Result<(), EngineError> {
        self.submit_durably(vec![Record::PlanReplayed {
            plan_id: *plan_id,
            at_ms: events::now_ms(),
            actor: actor.to_string(),
        }])
    }

    /// What certification found, then the end of the run with its root.
    pub(super) fn record_finished(
        &self,
        plan_id: &PlanId,
        end: &FinishFacts,
    ) -> Result<(), EngineError> {
        let at_ms = events::now_ms();
        let mut records = Vec::with_capacity(2);
        if let Some(certified) = &end.certified {
            records.push(Record::PlanCertified {
                plan_id: *plan_id,
                at_ms,
                tree_size: end.tree_size,
                root: end.root,
                certified: certified.certified,
                proofs_checked: certified.proofs_checked,
            });
        }
        records.push(Record::PlanFinished {
            plan_id: *plan_id,
            at_ms,
            tree_size: end.tree_size,
            root: end.root,
            done_count: end.done,
            failed_count: end.failed,
        });
        self.submit_durably(records)
    }

    /// The end of a worker's slice that has failed shards: a
    /// `PlanFinished` with no root (a slice has none; `hxo merge` computes
    /// the plan's), so that the slice reads back failed, not interrupted.
    pub(super) fn record_slice_ended(
        &self,
        plan_id: &PlanId,
        entry: &super::PlanEntry,
    ) -> Result<(), EngineError> {
        let (tree_size, done, failed) = {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            let counts = plan.counts();
            (
                plan.shard_count(),
                counts.done,
                counts.failed + counts.aborted,
            )
        };
        self.record_finished(
            plan_id,
            &FinishFacts {
                root: [0; 32],
                tree_size,
                done,
                failed,
                certified: None,
            },
        )
    }

    /// A plan's status from its durable records alone, as if nothing ran
    /// here.
    fn durable_status(&self, plan_id: &PlanId) -> Result<PlanStatus, EngineError> {
        let entry = self.entry(plan_id)?;
        let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
        Ok(status_of(&plan, false))
    }

    /// A plan's status now.
    pub fn plan_status(&self, plan_id: &PlanId) -> Result<PlanStatus, EngineError> {
        let entry = self.entry(plan_id)?;
        let running = self.is_running(plan_id) || self.owner_pid(plan_id).is_some();
        let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
        Ok(status_of(&plan, running))
    }
}

/// How an abort went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortOutcome {
    /// The plan is durably aborted.
    Aborted,
    /// It was running here and is still stopping after the wait: it ends
    /// aborted, or finished if the stop reached nothing left to run.
    Stopping,
}

/// The verbs. Each checks the plan's state against [`check`] and makes its
/// move under the engine's verb lock, so two verbs never both pass one
/// check.
impl Engine {
    fn lock_verbs(&self) -> std::sync::MutexGuard<'_, ()> {
        self.verbs.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn audit(&self, actor: &str, verb: &str, plan_id: &PlanId, extra: serde_json::Value) {
        let mut data = json!({"actor": actor, "action": verb, "plan_id": plan_id_text(plan_id),
                              "at_ms": events::now_ms()});
        if let (Some(data), serde_json::Value::Object(extra)) = (data.as_object_mut(), extra) {
            data.extend(extra);
        }
        self.bus.publish(events::AUDIT, data);
    }

    /// Recompiles a plan for `verb`, outside the verb lock (a recompile
    /// reads the plan's inputs): refused early, without reading anything,
    /// when the verb does not apply or no run slot is free. The caller
    /// checks again under the lock.
    fn recompile_for(&self, plan_id: &PlanId, verb: Verb) -> Result<Compiled, EngineError> {
        require(plan_id, self.plan_status(plan_id)?, verb)?;
        self.check_capacity()?;
        self.recompile(plan_id)
    }

    /// Accepts a compiled plan to run now (`hxo run`, `create-and-submit`):
    /// its run slot is taken first, so a plan is acknowledged only when it
    /// can start, and refused with [`EngineError::AtCapacity`] otherwise.
    pub fn start_new(
        self: &Arc<Self>,
        compiled: Compiled,
        actor: &str,
        dry_run: bool,
    ) -> Result<RunTicket, EngineError> {
        let plan_id = new_plan_id();
        let manifest = manifest_of(&compiled, actor, dry_run);
        let shard_count = compiled.dag.shard_count() as u64;
        let ticket = self.reserve(plan_id, compiled, RunCause::Start)?;
        self.record_accepted(plan_id, &manifest, shard_count, false)?;
        self.audit(actor, "create-and-submit", &plan_id, json!({}));
        Ok(ticket)
    }

    /// Accepts a plan as created, not to run until submitted
    /// (`POST /api/hxo/plan`).
    pub fn create(
        &self,
        compiled: &Compiled,
        actor: &str,
        dry_run: bool,
    ) -> Result<PlanId, EngineError> {
        let plan_id = new_plan_id();
        let manifest = manifest_of(compiled, actor, dry_run);
        self.record_accepted(plan_id, &manifest, compiled.dag.shard_count() as u64, true)?;
        self.audit(actor, "create", &plan_id, json!({}));
        Ok(plan_id)
    }

    /// Submits a created plan and takes its run slot.
    pub fn submit(
        self: &Arc<Self>,
        plan_id: &PlanId,
        actor: &str,
    ) -> Result<RunTicket, EngineError> {
        let compiled = self.recompile_for(plan_id, Verb::Submit)?;
        let _verbs = self.lock_verbs();
        require(plan_id, self.plan_status(plan_id)?, Verb::Submit)?;
        let ticket = self.reserve(*plan_id, compiled, RunCause::Start)?;
        self.record_submitted(plan_id, actor)?;
        self.audit(actor, "submit", plan_id, json!({}));
        Ok(ticket)
    }

    /// Takes the run slot of a submitted or interrupted plan, to run what
    /// is not durably done (a resume, or a rehydration by a server).
    pub fn resume(self: &Arc<Self>, plan_id: &PlanId) -> Result<RunTicket, EngineError> {
        let compiled = self.recompile_for(plan_id, Verb::Resume)?;
        let _verbs = self.lock_verbs();
        let status = self.plan_status(plan_id)?;
        require(plan_id, status, Verb::Resume)?;
        let cause = if status == PlanStatus::Interrupted {
            RunCause::Resume
        } else {
            RunCause::Start
        };
        self.reserve(*plan_id, compiled, cause)
    }

    /// Prepares a replay: the failed and aborted outcomes are forgotten
    /// (durably), so the run re-runs them and everything downstream of them
    /// (blocked shards have no outcome yet), nothing else. Returns the run
    /// slot and how many shards will run.
    pub fn replay(
        self: &Arc<Self>,
        plan_id: &PlanId,
        actor: &str,
    ) -> Result<(RunTicket, u64), EngineError> {
        let compiled = self.recompile_for(plan_id, Verb::Replay)?;
        let _verbs = self.lock_verbs();
        require(plan_id, self.plan_status(plan_id)?, Verb::Replay)?;
        let entry = self.entry(plan_id)?;
        let failed: Vec<crate::dag::LeafIndex> = {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            plan.shards
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s.state, SlotState::Failed | SlotState::Aborted))
                .map(|(leaf, _)| crate::dag::LeafIndex(leaf as u32))
                .collect()
        };
        if failed.is_empty() {
            return Err(EngineError::NothingToReplay {
                plan_id: plan_id_text(plan_id),
            });
        }
        let closure = compiled.dag.downstream_closure(&failed);
        let ticket = self.reserve(*plan_id, compiled, RunCause::Replay)?;
        self.record_replayed(plan_id, actor)?;
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
        self.audit(actor, "replay", plan_id, json!({"shards": to_run}));
        Ok((ticket, to_run))
    }

    /// Aborts a plan: pending shards fail (aborted), done shards stay. A
    /// plan running here is stopped, and the answer waits up to `wait` for
    /// it to end. A run that ends finished before the abort reaches it
    /// makes the abort a refusal: the plan stays finished.
    pub fn abort(
        &self,
        plan_id: &PlanId,
        actor: &str,
        wait: Duration,
    ) -> Result<AbortOutcome, EngineError> {
        let verbs = self.lock_verbs();
        // The run's control first: a run may end at any moment (it takes
        // no verb lock), but nothing starts one without this lock, so a plan
        // without a control here stays not running while we hold it.
        let Some(control) = self.control(plan_id) else {
            let status = self.durable_status(plan_id)?;
            require(plan_id, status, Verb::Abort)?;
            self.abort_not_running(plan_id, actor)?;
            self.audit(actor, "abort", plan_id, json!({}));
            return Ok(AbortOutcome::Aborted);
        };
        control.stop(StopReason::Aborted {
            actor: actor.to_string(),
        });
        drop(verbs);
        if !self.wait_stopped(plan_id, wait) {
            self.audit(actor, "abort", plan_id, json!({}));
            return Ok(AbortOutcome::Stopping);
        }
        // The run decided: aborted, or finished before the stop reached
        // anything (then the abort did not apply).
        let status = self.plan_status(plan_id)?;
        if status != PlanStatus::Aborted {
            return Err(EngineError::WrongState {
                plan_id: plan_id_text(plan_id),
                status,
                action: Verb::Abort,
            });
        }
        self.audit(actor, "abort", plan_id, json!({}));
        Ok(AbortOutcome::Aborted)
    }

    /// Aborts a plan that does not run here: its pending shards fail
    /// (aborted), then `PlanAborted`.
    fn abort_not_running(&self, plan_id: &PlanId, actor: &str) -> Result<(), EngineError> {
        let entry = self.entry(plan_id)?;
        let records: Vec<Record> = {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            // Belt and braces: the table already refuses a plan with a root.
            assert!(
                plan.finished.is_none(),
                "abort of a plan with a recorded end"
            );
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
        self.record_aborted(plan_id, actor, "aborted")
    }

    /// Plans that a resume runs on its own: submitted or interrupted, not
    /// running here, in acceptance order.
    pub fn resumable_plans(&self) -> Vec<PlanId> {
        self.plan_ids()
            .into_iter()
            .filter(|id| self.plan_status(id).is_ok_and(PlanStatus::is_resumable))
            .collect()
    }
}

/// The end of a run as [`Engine::record_finished`] logs it.
pub(super) struct FinishFacts {
    pub root: Hash,
    pub tree_size: u64,
    pub done: u64,
    pub failed: u64,
    /// What certification found; `None` for a partial root, which is
    /// never certified.
    pub certified: Option<CertifiedFacts>,
}

/// What a certification of a complete plan found.
pub(super) struct CertifiedFacts {
    pub certified: bool,
    pub proofs_checked: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use PlanStatus as S;

    /// The table, written out once more by hand: every pair is checked.
    #[test]
    fn every_transition_is_legal_or_refused_as_the_table_says() {
        let legal: &[(PlanStatus, Verb)] = &[
            (S::Created, Verb::Submit),
            (S::Created, Verb::Abort),
            (S::Submitted, Verb::Resume),
            (S::Submitted, Verb::Abort),
            (S::Running, Verb::Abort),
            (S::Interrupted, Verb::Resume),
            (S::Interrupted, Verb::Replay),
            (S::Interrupted, Verb::Abort),
            (S::Failed, Verb::Replay),
            (S::Aborted, Verb::Replay),
        ];
        let verbs = [Verb::Submit, Verb::Resume, Verb::Replay, Verb::Abort];
        let mut refused = 0;
        for status in PlanStatus::ALL {
            for verb in verbs {
                let expected = legal.contains(&(status, verb));
                assert_eq!(check(status, verb), expected, "{status} {}", verb.name());
                if !expected {
                    refused += 1;
                    let error = require(&[7; 16], status, verb).unwrap_err();
                    assert!(
                        matches!(error, EngineError::WrongState { status: s, action: v, .. } if s == status && v == verb)
                    );
                    assert!(error.to_string().contains(status.name()), "{error}");
                }
            }
        }
        assert_eq!(refused, PlanStatus::ALL.len() * verbs.len() - legal.len());
    }

    #[test]
    fn nothing_settled_can_be_aborted_or_resumed() {
        for status in PlanStatus::ALL.into_iter().filter(|s| s.is_settled()) {
            assert!(!check(status, Verb::Abort), "{status}");
            assert!(!check(status, Verb::Resume), "{status}");
            assert!(!check(status, Verb::Submit), "{status}");
        }
        assert!(
            !check(S::Finished, Verb::Replay),
            "a finished plan has nothing to replay"
        );
    }

    #[test]
    fn names_are_distinct_and_stable() {
        let names: Vec<_> = PlanStatus::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "created",
                "submitted",
                "running",
                "interrupted",
                "finished",
                "failed",
                "aborted",
                "slice_finished"
            ]
        );
    }
}
