//! Certification: the root recomputed from the log files (not from
//! memory), a seeded sample of inclusion proofs checked against it, and
//! what `hxo verify` and `hxo proof` give from the same reread.
//!
//! A root is `truth_certified` only when [`reread_tree`] rebuilt it from
//! the durable frames of the log and every sampled proof verified. The
//! reread is here, not in the store: the store is the log and its index,
//! and knows nothing of trees.

use super::lifecycle::{CertifiedFacts, FinishFacts};
use super::{Engine, EngineError};
use crate::events;
use crate::hash::{to_hex, Hash};
use crate::ids::{plan_id_text, PlanId};
use crate::merkle::{self, HashedBlock, InclusionProof, LatestLeaves};
use crate::store::{PlanEntry, PlanRecord, SlotState, Store, StoreError};
use serde_json::json;
use std::time::Instant;

/// Leaves per block of the reread: 2^15, two megabytes of leaf data.
const BLOCK_LOG2: u32 = 15;
/// Blocks handed to the pool and not yet back (bounds the memory when the
/// scan outruns the hashing).
const BLOCKS_IN_FLIGHT_MAX: usize = 4;

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

/// A plan's tree as read back from the log files ([`reread_tree`]).
#[derive(Clone, Debug)]
pub struct RereadTree {
    pub root: Hash,
    /// The sampled leaves' inclusion proofs, ascending, each with the leaf
    /// hash it proves.
    pub proofs: Vec<(InclusionProof, Hash)>,
}

impl RereadTree {
    fn verified_against(&self, root: &Hash) -> usize {
        self.proofs
            .iter()
            .filter(|(proof, leaf)| merkle::verify_inclusion(leaf, proof, root))
            .count()
    }

    /// The leaf of the first proof that does not verify against `root`.
    fn first_failing_proof(&self, root: &Hash) -> Option<u64> {
        self.proofs
            .iter()
            .find(|(proof, leaf)| !merkle::verify_inclusion(leaf, proof, root))
            .map(|(proof, _)| proof.leaf_index)
    }
}

impl Engine {
    /// Aggregates, certifies and records the end of a run. Returns whether
    /// every shard is done.
    pub(super) fn finish(&self, plan_id: &PlanId, entry: &PlanEntry) -> Result<bool, EngineError> {
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
        let root_text = to_hex(&root);
        self.bus.publish(
            events::AGGREGATE_READY,
            json!({"plan_id": plan_text, "root": root_text, "tree_size": tree_size, "complete": all_done}),
        );
        if let Some(certification) = &certification {
            self.bus.publish(
                events::AGGREGATE_CERTIFY,
                json!({"plan_id": plan_text, "root": root_text, "tree_size": tree_size,
                       "truth_certified": certification.certified,
                       "proofs_checked": certification.proofs_checked,
                       "detail": certification.detail}),
            );
        }
        self.record_finished(
            plan_id,
            &FinishFacts {
                root,
                tree_size,
                done,
                failed,
                certified: certification.map(|c| CertifiedFacts {
                    certified: c.certified,
                    proofs_checked: c.proofs_checked as u32,
                }),
            },
        )?;
        self.bus.publish(
            events::AGGREGATE_FINALIZED,
            json!({"plan_id": plan_text, "root": root_text, "tree_size": tree_size,
                   "done_shards": done, "failed_shards": failed}),
        );
        Ok(all_done)
    }

    /// Recomputes the root from the log files (not from memory) and checks
    /// a sample of inclusion proofs, drawn from a seed fixed by the plan,
    /// against it.
    pub fn certify(&self, plan_id: &PlanId, tree_size: u64) -> Result<Certification, EngineError> {
        let Some(tree) = self.reread_sampled(plan_id, tree_size)? else {
            let mut failed = Certification::failed("not every shard is done in the log files");
            failed.log_complete = false;
            return Ok(failed);
        };
        if let Some(leaf) = tree.first_failing_proof(&tree.root) {
            let mut failed =
                Certification::failed(&format!("inclusion proof for leaf {leaf} does not verify"));
            failed.root = tree.root;
            return Ok(failed);
        }
        let proofs_checked = tree.proofs.len();
        Ok(Certification {
            certified: true,
            log_complete: true,
            root: tree.root,
            proofs_checked,
            detail: format!(
                "root recomputed from the log files; {proofs_checked} inclusion proofs verified"
            ),
        })
    }

    /// The reread with the plan's seeded sample of proofs.
    fn reread_sampled(
        &self,
        plan_id: &PlanId,
        tree_size: u64,
    ) -> Result<Option<RereadTree>, EngineError> {
        let sample = sample_indices(
            &crate::hash::sha256(plan_id),
            tree_size,
            crate::limits::CERTIFY_SAMPLE_PROOFS,
        );
        Ok(reread_tree(&self.store, plan_id, tree_size, &sample)?)
    }

    /// Recomputes the root from the log files and checks proofs against
    /// the recorded root (`hxo verify`).
    pub fn verify(&self, plan_id: &PlanId) -> Result<Verification, EngineError> {
        let entry = self.entry(plan_id)?;
        let recorded = entry
            .record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .recorded_root()
            .cloned();
        let Some(finish) = recorded else {
            return Err(EngineError::NoRoot {
                plan_id: plan_id_text(plan_id),
                status: self.plan_status(plan_id)?,
            });
        };
        let recorded_root = to_hex(&finish.root);
        let Some(tree) = self.reread_sampled(plan_id, finish.tree_size)? else {
            return Ok(Verification {
                recorded_root,
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
        let proofs_verified = tree.verified_against(&finish.root);
        let ok = tree.root == finish.root && proofs_verified == tree.proofs.len();
        Ok(Verification {
            recorded_root,
            recomputed_root: to_hex(&tree.root),
            tree_size: finish.tree_size,
            proofs_checked: tree.proofs.len(),
            proofs_verified,
            ok,
            detail: if ok {
                "the log files reproduce the recorded root".into()
            } else {
                "the log files do not reproduce the recorded root".into()
            },
        })
    }

    /// The inclusion proof of a done shard, named by its cas_id or a
    /// unique prefix of its hex (at least 8 digits), against the plan's
    /// recorded root.
    pub fn proof(
        &self,
        plan_id: &PlanId,
        cas_text: &str,
    ) -> Result<serde_json::Value, EngineError> {
        let entry = self.entry(plan_id)?;
        let plan = entry.record.lock().unwrap_or_else(|e| e.into_inner());
        let leaf =
            find_done_shard(&plan, cas_text).map_err(|reason| EngineError::UnknownShard {
                plan_id: plan_id_text(plan_id),
                cas_id: cas_text.to_string(),
                reason,
            })?;
        let Some(finish) = plan.recorded_root().cloned() else {
            drop(plan);
            return Err(EngineError::NoRoot {
                plan_id: plan_id_text(plan_id),
                status: self.plan_status(plan_id)?,
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
}

/// Shortest cas_id prefix accepted by [`Engine::proof`].
pub const CAS_ID_PREFIX_LEN_MIN: usize = 8;

/// The leaf of the one done shard whose cas_id starts with `text`.
fn find_done_shard(plan: &PlanRecord, text: &str) -> Result<usize, &'static str> {
    let text = text.to_ascii_lowercase();
    if text.len() < CAS_ID_PREFIX_LEN_MIN || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("expected a cas_id: 64 hex digits, or a unique prefix of at least 8");
    }
    if text.len() > 64 {
        return Err("a cas_id has 64 hex digits");
    }
    let mut found = None;
    for (leaf, slot) in plan.shards.iter().enumerate() {
        // Only a shard with a result is a leaf anyone can prove.
        if slot.state != SlotState::Done || !to_hex(&slot.cas_id).starts_with(&text) {
            continue;
        }
        if found.is_some_and(|other: usize| plan.shards[other].cas_id != slot.cas_id) {
            return Err("the prefix names more than one shard");
        }
        found.get_or_insert(leaf);
    }
    found.ok_or("no done shard of the plan has that cas_id")
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

/// Distinct leaf indices drawn from a seed, always including the first and
/// last leaf.
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

/// A plan's tree as the log files on disk have it (not as memory has it),
/// for certification and `hxo verify`: the root and the inclusion proofs
/// of the leaves in `sample`. `None` unless every shard's latest outcome in
/// the files is DONE.
///
/// This thread scans ([`Store::scan_outcomes`]), placing each outcome in
/// its aligned block of leaves ([`LatestLeaves`]); a block whose leaves are
/// all done is hashed (leaves and subtree) on the rayon pool while the
/// scan goes on. Memory stays at the few blocks open or being hashed. A
/// block that an outcome reaches after it was handed out (a replay) is
/// read again in a second scan of the same frames.
pub fn reread_tree(
    store: &Store,
    plan_id: &PlanId,
    shard_count: u64,
    sample: &[u64],
) -> Result<Option<RereadTree>, StoreError> {
    let mut stream = LatestLeaves::new(shard_count, BLOCK_LOG2, sample);
    let frames_seen = scan_and_hash_blocks(store, plan_id, shard_count, &mut stream)?;
    let revisits = stream.revisits();
    if !revisits.is_empty()
        && !rehash_revisited(
            store,
            plan_id,
            shard_count,
            frames_seen,
            &mut stream,
            &revisits,
        )?
    {
        return Ok(None);
    }
    Ok(stream
        .finish()
        .map(|(root, proofs)| RereadTree { root, proofs }))
}

/// The first scan: feeds every outcome to `stream` and hashes each block
/// that completes on the pool, at most [`BLOCKS_IN_FLIGHT_MAX`] at once.
/// Returns how many frames it read.
fn scan_and_hash_blocks(
    store: &Store,
    plan_id: &PlanId,
    shard_count: u64,
    stream: &mut LatestLeaves,
) -> Result<u64, StoreError> {
    let (hashed_tx, hashed_rx) = crossbeam_channel::unbounded::<HashedBlock>();
    let mut frames_seen = 0u64;
    let scanned = rayon::in_place_scope(|scope| {
        let mut in_flight = 0usize;
        store.scan_outcomes(
            plan_id,
            shard_count,
            None,
            &mut frames_seen,
            &mut |leaf, data| {
                let Some(full) = stream.update(leaf, data) else {
                    return;
                };
                let hashed_tx = hashed_tx.clone();
                scope.spawn(move |_| {
                    // The receiver outlives the scope.
                    let _ = hashed_tx.send(full.hash());
                });
                in_flight += 1;
                while in_flight > BLOCKS_IN_FLIGHT_MAX {
                    match hashed_rx.try_recv() {
                        Ok(hashed) => {
                            stream.add(hashed);
                            in_flight -= 1;
                        }
                        // On a pool thread (certifying inside a pool), the tasks
                        // may sit in this thread's own queue: run them rather
                        // than wait for them.
                        Err(_) => match rayon::yield_now() {
                            None => {
                                stream.add(hashed_rx.recv().expect("a sender is held here"));
                                in_flight -= 1;
                            }
                            Some(rayon::Yield::Executed) => {}
                            Some(rayon::Yield::Idle) => std::thread::yield_now(),
                        },
                    }
                }
                for hashed in hashed_rx.try_iter() {
                    stream.add(hashed);
                    in_flight -= 1;
                }
            },
        )
    });
    drop(hashed_tx);
    // The scope has waited for every block it handed out.
    for hashed in hashed_rx {
        stream.add(hashed);
    }
    scanned?;
    Ok(frames_seen)
}

/// The second scan, of the frames the first read: the latest leaf hashes
/// of the blocks an outcome reached after they were hashed. Returns false
/// when one of them is not all done.
fn rehash_revisited(
    store: &Store,
    plan_id: &PlanId,
    shard_count: u64,
    frames_seen: u64,
    stream: &mut LatestLeaves,
    revisits: &[usize],
) -> Result<bool, StoreError> {
    let mut latest: Vec<Option<Vec<Option<Hash>>>> =
        (0..stream.block_count()).map(|_| None).collect();
    for &block in revisits {
        let range = stream.block_range(block);
        latest[block] = Some(vec![None; (range.end - range.start) as usize]);
    }
    let mut frames = 0;
    store.scan_outcomes(
        plan_id,
        shard_count,
        Some(frames_seen),
        &mut frames,
        &mut |leaf, data| {
            let block = stream.block_of(leaf);
            if let Some(leaves) = &mut latest[block] {
                let offset = leaf - stream.block_range(block).start;
                leaves[offset as usize] = data.map(|data| merkle::leaf_hash(data));
            }
        },
    )?;
    for (block, leaves) in latest.into_iter().enumerate() {
        if let Some(leaves) = leaves {
            if !stream.rehash(block, &leaves) {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{LogOptions, Record};
    use crate::store::tests::store_of_done_leaves;
    use std::sync::Arc;
    use std::time::Duration;

    fn reread(store: &Store, plan: &PlanId, shards: u64, sample: &[u64]) -> Option<RereadTree> {
        reread_tree(store, plan, shards, sample).unwrap()
    }

    #[test]
    fn the_reread_tree_completes_on_a_pool_thread() {
        const PLAN: PlanId = [3; 16];
        // Ten full blocks of 2^15: more than may be in flight at once, so
        // the scan must wait for hashed blocks while it runs on the only
        // thread of the pool their tasks were queued on.
        let shards = 10 << 15;
        let dir = tempfile::tempdir().unwrap();
        let (store, leaves) = store_of_done_leaves(dir.path(), PLAN, shards);
        let store = Arc::new(store);
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        let pool_store = store.clone();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(1)
                .build()
                .unwrap();
            let tree = pool.install(|| reread_tree(&pool_store, &PLAN, shards, &[7]));
            let _ = done_tx.send(tree.unwrap().map(|tree| tree.root));
        });
        let root = done_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("reread_tree inside a one-thread pool finished");
        assert_eq!(root, Some(crate::merkle::root_of_leaf_hashes(leaves)));
        store.close().unwrap();
    }

    #[test]
    fn the_reread_tree_follows_each_leafs_latest_outcome_in_any_order() {
        const PLAN: PlanId = [9; 16];
        let shards = 70_000u64; // more than two blocks of 2^15
        let data = |leaf: u64, round: u8| -> (Hash, Hash) {
            let cas_id = crate::hash::sha256(&leaf.to_le_bytes());
            (cas_id, [round; 32])
        };
        let done = |leaf: u64, round: u8| {
            let (cas_id, output_digest) = data(leaf, round);
            Record::ShardDone {
                plan_id: PLAN,
                leaf_index: leaf,
                cas_id,
                output_digest,
                attempts: 1,
                duration_us: 0,
            }
        };
        let failed = |leaf: u64| Record::ShardFailed {
            plan_id: PLAN,
            leaf_index: leaf,
            cas_id: data(leaf, 0).0,
            attempts: 1,
            duration_us: 0,
            aborted: false,
            error: "x".into(),
        };
        // Leaves in a scrambled order; every 7th first fails, then is done
        // (a replay); every 11th is done twice, the later outcome winning.
        let mut records = Vec::new();
        let order = (0..shards).map(|i| (i * 7919) % shards);
        for leaf in order.clone() {
            records.push(if leaf % 7 == 0 {
                failed(leaf)
            } else {
                done(leaf, 1)
            });
        }
        for leaf in order {
            if leaf % 7 == 0 || leaf % 11 == 0 {
                records.push(done(leaf, 2));
            }
        }
        let final_round = |leaf: u64| {
            if leaf % 7 == 0 || leaf % 11 == 0 {
                2
            } else {
                1
            }
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), LogOptions::default()).unwrap();
        for batch in records.chunks(crate::log::limits::SUBMIT_BATCH_RECORDS_MAX) {
            store
                .wait_durable(store.submit(batch.to_vec()).unwrap())
                .unwrap();
        }
        let leaves: Vec<Hash> = (0..shards)
            .map(|leaf| {
                let (cas_id, digest) = data(leaf, final_round(leaf));
                crate::merkle::shard_leaf_hash(&cas_id, &digest)
            })
            .collect();
        let sample = [0, 5, 32_767, 32_768, 65_537, shards - 1];
        let (root, proofs) = crate::merkle::root_with_proofs(leaves.clone(), &sample);
        let tree = reread(&store, &PLAN, shards, &sample).unwrap();
        assert_eq!(tree.root, root);
        let got: Vec<_> = tree.proofs.iter().map(|(proof, _)| proof.clone()).collect();
        assert_eq!(got, proofs);
        for (proof, leaf) in &tree.proofs {
            assert_eq!(*leaf, leaves[proof.leaf_index as usize]);
        }
        // A leaf whose latest outcome is a failure: no tree.
        store
            .wait_durable(store.submit(vec![failed(40_000)]).unwrap())
            .unwrap();
        assert!(reread(&store, &PLAN, shards, &sample).is_none());
        store.close().unwrap();
    }
}
