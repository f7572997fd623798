//! The merge step of an indexed job: the results the workers of one plan
//! recorded in their own stores, unioned into this store as one plan,
//! aggregated and certified. The root is the one a single machine would
//! have computed.
//!
//! Every shard must have a result in some worker's log, workers that ran
//! the same shard must agree on its digest, and every worker must have run
//! the plan the merged shards make up (its DAG digest, v1 or v2).

use super::{Engine, EngineError};
use crate::dag;
use crate::hash::{to_hex, Hash};
use crate::ids::{new_plan_id, PlanId};
use crate::log::Record;
use crate::plan::Manifest;
use crate::store::{PlanRecord, SlotState, Store};
use std::path::{Path, PathBuf};

/// One shard's result as a worker recorded it.
#[derive(Clone, Copy)]
struct ShardResult {
    cas_id: Hash,
    output_digest: Hash,
    attempts: u32,
    duration_us: u64,
}

/// What the workers' stores add up to.
struct Union {
    manifest: Manifest,
    results: Vec<Option<ShardResult>>,
    /// Each worker's store and the DAG digest it recorded.
    worker_digests: Vec<(PathBuf, String)>,
}

fn merge_error(message: String) -> EngineError {
    EngineError::Merge(message)
}

impl Engine {
    /// Unions the workers' stores (`worker_dirs`) into this store as one
    /// plan and certifies it; returns the merged plan's id. Merging the
    /// same results again returns the plan merged before.
    pub fn merge(&self, worker_dirs: &[PathBuf], merged_by: &str) -> Result<PlanId, EngineError> {
        let mut union: Option<Union> = None;
        for dir in worker_dirs {
            add_worker(&mut union, dir)?;
        }
        let Some(Union {
            mut manifest,
            results,
            worker_digests,
        }) = union
        else {
            return Err(merge_error("no worker logs given".into()));
        };
        let missing = results.iter().filter(|r| r.is_none()).count();
        if missing > 0 {
            return Err(merge_error(format!(
                "{missing} of {} shards have no result in the given worker logs (a worker missing or unfinished?)",
                results.len()
            )));
        }
        let results: Vec<ShardResult> = results.into_iter().flatten().collect();
        let cas_ids: Vec<Hash> = results.iter().map(|r| r.cas_id).collect();
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
        if let Some(earlier) = self.earlier_merge(&identifies, &results) {
            return Ok(earlier);
        }
        manifest.dag_digest = digest;
        manifest.worker = None;
        manifest.submitted_by = merged_by.to_string();
        let plan_id = new_plan_id();
        self.record_accepted(plan_id, &manifest, results.len() as u64, false)?;
        self.record_results(&plan_id, &results)?;
        let entry = self.entry(&plan_id)?;
        self.finish(&plan_id, &entry)?;
        Ok(plan_id)
    }

    /// A finished plan of this store with exactly these results.
    fn earlier_merge(
        &self,
        identifies: &dyn Fn(&String) -> bool,
        results: &[ShardResult],
    ) -> Option<PlanId> {
        self.store.plans().into_iter().find_map(|entry| {
            let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
            let same = plan.manifest.worker.is_none()
                && identifies(&plan.manifest.dag_digest)
                && plan.finished.is_some()
                && plan.shards.len() == results.len()
                && plan.shards.iter().zip(results).all(|(slot, result)| {
                    slot.state == SlotState::Done && result.output_digest == slot.output_digest
                });
            same.then_some(plan.plan_id)
        })
    }

    fn record_results(&self, plan_id: &PlanId, results: &[ShardResult]) -> Result<(), EngineError> {
        let mut position = 0;
        for (chunk_index, chunk) in results
            .chunks(crate::limits::COMMIT_RECORDS_MAX)
            .enumerate()
        {
            let first_leaf = chunk_index * crate::limits::COMMIT_RECORDS_MAX;
            let records = chunk
                .iter()
                .enumerate()
                .map(|(offset, result)| Record::ShardDone {
                    plan_id: *plan_id,
                    leaf_index: (first_leaf + offset) as u64,
                    cas_id: result.cas_id,
                    output_digest: result.output_digest,
                    attempts: result.attempts,
                    duration_us: result.duration_us,
                })
                .collect();
            position = self.store.submit(records)?;
        }
        self.store.wait_durable(position)?;
        Ok(())
    }
}

/// Adds one worker's store to the union.
fn add_worker(union: &mut Option<Union>, dir: &Path) -> Result<(), EngineError> {
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
    let union = union.get_or_insert_with(|| Union {
        manifest: plan.manifest.clone(),
        results: vec![None; plan.shard_count() as usize],
        worker_digests: Vec::new(),
    });
    check_same_run(union, dir, &plan)?;
    // Checked against the merged cas_ids once every slice is in: workers
    // of different builds record different digest versions.
    union
        .worker_digests
        .push((dir.to_path_buf(), plan.manifest.dag_digest.clone()));
    for (leaf, slot) in plan.shards.iter().enumerate() {
        if slot.state != SlotState::Done {
            continue;
        }
        match union.results[leaf] {
            Some(result) if result.output_digest != slot.output_digest => {
                return Err(merge_error(format!(
                    "shard {leaf} ({}) has different output digests in different workers' logs: its executor is not deterministic",
                    to_hex(&slot.cas_id)
                )));
            }
            Some(_) => {}
            None => {
                union.results[leaf] = Some(ShardResult {
                    cas_id: slot.cas_id,
                    output_digest: slot.output_digest,
                    attempts: slot.attempts,
                    duration_us: slot.duration_us,
                })
            }
        }
    }
    Ok(())
}

/// Refuses a worker whose run cannot be merged with the first one's.
fn check_same_run(union: &Union, dir: &Path, plan: &PlanRecord) -> Result<(), EngineError> {
    let first = &union.manifest;
    if plan.shard_count() as usize != union.results.len() {
        return Err(merge_error(format!(
            "{}: a different plan ({} shards, not {})",
            dir.display(),
            plan.shard_count(),
            union.results.len()
        )));
    }
    // A dry run's results are not a real run's (sql_migrate digests them in
    // another domain): never mix them.
    if first.dry_run != plan.manifest.dry_run {
        let kind = |dry: bool| if dry { "dry" } else { "real" };
        return Err(merge_error(format!(
            "{}: a {} run, the others are {} runs",
            dir.display(),
            kind(plan.manifest.dry_run),
            kind(first.dry_run)
        )));
    }
    if first.worker.map(|w| w.count) != plan.manifest.worker.map(|w| w.count) {
        return Err(merge_error(format!(
            "{}: run with a different worker count",
            dir.display()
        )));
    }
    Ok(())
}
