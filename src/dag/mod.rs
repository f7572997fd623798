//! The shard DAG: a validated [`Plan`] plus each stage's partitions,
//! compiled into an arena of content-addressed shards.
//!
//! This module is pure: partitions arrive already read from disk.
//!
//! Shards are identified by their [`LeafIndex`]: stages in plan order,
//! shards in partition order. That order is the Merkle tree's leaf order,
//! so it never depends on scheduling.
//!
//! **cas_id.** The full SHA-256 of a canonical, versioned encoding
//! ([`CAS_VERSION`]) of: stage id, kind, executor, the stage config (keys
//! sorted recursively), the partition's inputs (with the content digests of
//! the files it reads) and the sorted digests of what it depends on. A
//! shard-level dependency (pipelined stages, chained depths) contributes the
//! upstream shard's cas_id. A barrier dependency on a whole stage
//! contributes that stage's digest, the SHA-256 of its cas_ids in leaf
//! order (an order fixed by the plan, so no sort is needed): the same
//! information as listing every upstream cas_id, in O(N + M) instead of
//! O(N * M). It is computed only for stages that something joins by barrier. Paths are encoded relative to the partition root, so the
//! same inputs at another location give the same cas_ids.
//!
//! **Joins.** A stage waits for all shards of a stage it depends on (a
//! barrier) unless both stages use the same partitioner and produce the same
//! key sequence; then shard k depends only on upstream shard k, and the
//! stages pipeline.
//!
//! INVARIANTS of [`Dag`]: cas_ids are unique (duplicates within a stage
//! collapse into the first); every shard-level edge points from a lower
//! stage in topological order or from an earlier shard of the same stage,
//! so the graph is acyclic; `dependents_start` is empty (no shard-level
//! edges) or has `shard_count + 1` ascending entries.

use crate::hash::{to_hex, Hash};
use crate::partition::{keys_match, Partition, PartitionInput, Partitioning, Partitions};
use crate::plan::{Plan, StageIndex};
use rayon::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashSet;

/// Version tag of the cas_id encoding; bump it when the encoding changes.
pub const CAS_VERSION: &[u8] = b"hxo.cas.v1\0";

/// A shard's position in canonical (leaf) order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeafIndex(pub u32);

impl LeafIndex {
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DagError {
    #[error("stages[{stage_index}]: {count} shards exceed max_shards {max} (constraints.max_shards or HXO_MAX_SHARDS)")]
    TooManyShards {
        stage_index: usize,
        count: u64,
        max: u64,
    },
}

/// How a stage waits for one of its upstream stages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Join {
    /// Waits for every shard of the upstream stage.
    Barrier,
    /// Shard k waits only for upstream shard k.
    Pipelined,
}

impl Join {
    pub fn name(self) -> &'static str {
        match self {
            Join::Barrier => "barrier",
            Join::Pipelined => "pipelined",
        }
    }
}

#[derive(Clone, Debug)]
pub struct DagStage {
    pub first_leaf: u32,
    pub shard_count: u32,
    /// Upstream stages and how this stage joins each.
    pub upstream: Vec<(StageIndex, Join)>,
    /// Each shard waits for the previous shard of the stage.
    pub chained: bool,
    /// Shards dropped because another shard of the stage had the same cas_id.
    pub collapsed_count: u64,
    /// The stage's partitions, one per shard, in leaf order.
    pub partitions: Partitions,
    /// SHA-256 over the stage's cas_ids in leaf order; all zero for a stage
    /// nothing joins by barrier (it is never needed then).
    pub digest: Hash,
}

impl DagStage {
    pub fn leaves(&self) -> std::ops::Range<u32> {
        self.first_leaf..self.first_leaf + self.shard_count
    }
}

/// The compiled plan.
pub struct Dag {
    pub stages: Vec<DagStage>,
    /// Stages in an order where every stage follows its upstream stages.
    pub topo_order: Vec<StageIndex>,
    cas_ids: Vec<Hash>,
    /// For each stage, the stages that join it by barrier.
    barrier_dependents: Vec<Vec<StageIndex>>,
    // INVARIANT: either all three CSR arrays are empty (no shard-level
    // edges), or dependents_start.len() == shard_count + 1, ascending, and
    // dependency_count.len() == shard_count.
    dependents_start: Vec<u32>,
    dependents: Vec<u32>,
    /// Shard-level dependencies of each shard (barriers not counted).
    dependency_count: Vec<u32>,
    /// SHA-256 over every cas_id in leaf order: identifies the DAG.
    pub dag_digest: Hash,
}

impl Dag {
    pub fn shard_count(&self) -> usize {
        self.cas_ids.len()
    }

    pub fn cas_id(&self, leaf: LeafIndex) -> &Hash {
        &self.cas_ids[leaf.get()]
    }

    pub fn cas_ids(&self) -> &[Hash] {
        &self.cas_ids
    }

    /// The stage a shard belongs to (binary search over stage ranges).
    pub fn stage_of(&self, leaf: LeafIndex) -> StageIndex {
        self.stages
            .partition_point(|stage| stage.first_leaf + stage.shard_count <= leaf.0)
    }

    pub fn partition(&self, leaf: LeafIndex) -> Cow<'_, Partition> {
        let stage = &self.stages[self.stage_of(leaf)];
        stage.partitions.get((leaf.0 - stage.first_leaf) as usize)
    }

    /// Shards that wait on `leaf` directly (pipelined or chained edges).
    pub fn dependents(&self, leaf: LeafIndex) -> &[u32] {
        if self.dependents.is_empty() {
            return &[];
        }
        let start = self.dependents_start[leaf.get()] as usize;
        let end = self.dependents_start[leaf.get() + 1] as usize;
        &self.dependents[start..end]
    }

    pub fn dependency_count(&self, leaf: LeafIndex) -> u32 {
        self.dependency_count.get(leaf.get()).copied().unwrap_or(0)
    }

    /// Stages that wait, by barrier, for all of `stage`.
    pub fn barrier_dependents(&self, stage: StageIndex) -> &[StageIndex] {
        &self.barrier_dependents[stage]
    }

    /// Number of barrier-joined upstream stages of `stage`.
    pub fn barrier_count(&self, stage: StageIndex) -> u32 {
        self.stages[stage]
            .upstream
            .iter()
            .filter(|(_, join)| *join == Join::Barrier)
            .count() as u32
    }

    /// Whether `digest_hex` (a manifest's) identifies this DAG: its digest,
    /// or the v1 digest that builds before v2 recorded, so that their
    /// incomplete plans still resume.
    pub fn has_digest(&self, digest_hex: &str) -> bool {
        digest_hex == to_hex(&self.dag_digest)
            || digest_hex == to_hex(&dag_digest_v1(&self.cas_ids))
    }

    pub fn edge_count(&self) -> usize {
        self.dependents.len()
    }

    pub fn find_cas(&self, cas_id: &Hash) -> Option<LeafIndex> {
        self.cas_ids
            .iter()
            .position(|c| c == cas_id)
            .map(|i| LeafIndex(i as u32))
    }

    /// All shards downstream of `roots` (including them), in leaf order.
    pub fn downstream_closure(&self, roots: &[LeafIndex]) -> Vec<LeafIndex> {
        let mut marked = vec![false; self.shard_count()];
        let mut stack: Vec<u32> = roots.iter().map(|l| l.0).collect();
        let mut stage_marked = vec![false; self.stages.len()];
        while let Some(leaf) = stack.pop() {
            if std::mem::replace(&mut marked[leaf as usize], true) {
                continue;
            }
            stack.extend_from_slice(self.dependents(LeafIndex(leaf)));
            let stage = self.stage_of(LeafIndex(leaf));
            for &down in self.barrier_dependents(stage) {
                if !std::mem::replace(&mut stage_marked[down], true) {
                    stack.extend(self.stages[down].leaves());
                }
            }
        }
        (0..self.shard_count() as u32)
            .filter(|&l| marked[l as usize])
            .map(LeafIndex)
            .collect()
    }
}

/// Compiles a plan and its stages' partitions (one [`Partitioning`] per
/// stage, in plan order) into a DAG.
pub fn compile(plan: &Plan, partitionings: Vec<Partitioning>) -> Result<Dag, DagError> {
    assert_eq!(
        plan.stages.len(),
        partitionings.len(),
        "one partitioning per stage"
    );
    let stage_count = plan.stages.len();
    let mut total: u64 = 0;
    for (index, partitioning) in partitionings.iter().enumerate() {
        total += partitioning.partitions.len() as u64;
        if total > plan.shards_max {
            return Err(DagError::TooManyShards {
                stage_index: index,
                count: total,
                max: plan.shards_max,
            });
        }
    }
    let topo_order = topological_order(plan);

    // Per stage, in topological order: cas_ids (collapsing duplicates) and
    // the stage digest, which barrier dependents need.
    let mut stage_cas: Vec<Vec<Hash>> = vec![Vec::new(); stage_count];
    let mut stage_parts: Vec<Option<Partitions>> = Vec::with_capacity(stage_count);
    let mut chained = Vec::with_capacity(stage_count);
    for partitioning in partitionings {
        chained.push(partitioning.chained);
        stage_parts.push(Some(partitioning.partitions));
    }
    let mut joins: Vec<Vec<(StageIndex, Join)>> = vec![Vec::new(); stage_count];
    // Computed on first use by a barrier-joined downstream stage.
    let mut digests: Vec<Option<Hash>> = vec![None; stage_count];
    let mut collapsed = vec![0u64; stage_count];
    let mut partitions_out: Vec<Partitions> = vec![Partitions::Listed(Vec::new()); stage_count];
    for &stage_index in &topo_order {
        let stage = &plan.stages[stage_index];
        let parts = stage_parts[stage_index]
            .take()
            .expect("each stage visited once");
        // Decide joins: pipelined only when keys match and no side collapsed.
        let mut upstream = Vec::new();
        for &up in &stage.dependencies {
            let pipelined = plan.stages[up].partitioner == stage.partitioner
                && collapsed[up] == 0
                && !chained[up]
                && !chained[stage_index]
                && keys_match(&partitions_out[up], &parts);
            upstream.push((
                up,
                if pipelined {
                    Join::Pipelined
                } else {
                    Join::Barrier
                },
            ));
        }
        let prefix = stage_prefix(plan, stage_index);
        let barrier_digests: Vec<Hash> = {
            let mut d: Vec<Hash> = Vec::new();
            for (up, join) in &upstream {
                if *join == Join::Barrier {
                    d.push(*digests[*up].get_or_insert_with(|| stage_digest(&stage_cas[*up])));
                }
            }
            d.sort_unstable();
            d
        };
        let has_shard_edges = upstream.iter().any(|(_, j)| *j == Join::Pipelined);
        let cas_of = |k: usize, part: &Partition, previous: Option<&Hash>| -> Hash {
            if !has_shard_edges && previous.is_none() {
                // The common case: no per-shard allocation.
                return cas_id(&prefix, &part.input, &barrier_digests);
            }
            let mut deps: Vec<Hash> = barrier_digests.clone();
            for (up, join) in &upstream {
                if *join == Join::Pipelined {
                    deps.push(stage_cas[*up][k]);
                }
            }
            if let Some(prev) = previous {
                deps.push(*prev);
            }
            deps.sort_unstable();
            cas_id(&prefix, &part.input, &deps)
        };
        let mut cas: Vec<Hash> = if chained[stage_index] {
            let mut out: Vec<Hash> = Vec::with_capacity(parts.len());
            for (k, part) in parts.iter().enumerate() {
                let previous = out.last().copied();
                out.push(cas_of(k, &part, previous.as_ref()));
            }
            out
        } else {
            (0..parts.len())
                .into_par_iter()
                .map(|k| cas_of(k, &parts.get(k), None))
                .collect()
        };
        let mut parts = parts;
        // Ranges are distinct by construction; other inputs may coincide.
        if parts.may_coincide() {
            let mut seen = HashSet::with_capacity(cas.len());
            let keep: Vec<bool> = cas.iter().map(|c| seen.insert(*c)).collect();
            if keep.iter().any(|k| !k) {
                collapsed[stage_index] = keep.iter().filter(|k| !**k).count() as u64;
                let mut marks = keep.iter();
                cas.retain(|_| *marks.next().expect("one mark per cas_id"));
                parts.retain_marked(&keep);
            }
        }
        joins[stage_index] = upstream;
        stage_cas[stage_index] = cas;
        partitions_out[stage_index] = parts;
    }

    // Lay out the arena in plan order.
    let mut stages = Vec::with_capacity(stage_count);
    let mut first_leaf = 0u32;
    for index in 0..stage_count {
        let count = stage_cas[index].len() as u32;
        stages.push(DagStage {
            first_leaf,
            shard_count: count,
            upstream: std::mem::take(&mut joins[index]),
            chained: chained[index],
            collapsed_count: collapsed[index],
            partitions: std::mem::replace(
                &mut partitions_out[index],
                Partitions::Listed(Vec::new()),
            ),
            digest: digests[index].unwrap_or([0; 32]),
        });
        first_leaf += count;
    }
    let shard_count = first_leaf as usize;
    // The first stage's vector grows into the arena: a one-stage plan's
    // cas_ids are not copied at all.
    let mut stage_cas = stage_cas.into_iter();
    let mut cas_ids = stage_cas.next().unwrap_or_default();
    cas_ids.reserve_exact(shard_count - cas_ids.len());
    for cas in stage_cas {
        cas_ids.extend_from_slice(&cas);
    }

    // Shard-level edges, as (from, to) pairs, then CSR.
    let mut edges: Vec<(u32, u32)> = Vec::new();
    let mut barrier_dependents = vec![Vec::new(); stage_count];
    for (index, stage) in stages.iter().enumerate() {
        for &(up, join) in &stage.upstream {
            match join {
                Join::Barrier => barrier_dependents[up].push(index),
                Join::Pipelined => {
                    let up_first = stages[up].first_leaf;
                    for k in 0..stage.shard_count {
                        edges.push((up_first + k, stage.first_leaf + k));
                    }
                }
            }
        }
        if stage.chained {
            for k in 1..stage.shard_count {
                edges.push((stage.first_leaf + k - 1, stage.first_leaf + k));
            }
        }
    }
    edges.sort_unstable();
    // Without shard-level edges (the common case of barriers only) the CSR
    // arrays stay empty rather than holding a zero per shard.
    let csr_len = if edges.is_empty() { 0 } else { shard_count };
    let mut dependents_start = vec![0u32; csr_len + usize::from(csr_len > 0)];
    let mut dependency_count = vec![0u32; csr_len];
    for &(from, to) in &edges {
        dependents_start[from as usize + 1] += 1;
        dependency_count[to as usize] += 1;
    }
    for i in 0..csr_len {
        dependents_start[i + 1] += dependents_start[i];
    }
    let dependents: Vec<u32> = edges.iter().map(|&(_, to)| to).collect();
    let dag_digest = dag_digest(&cas_ids);
    Ok(Dag {
        stages,
        topo_order,
        cas_ids,
        barrier_dependents,
        dependents_start,
        dependents,
        dependency_count,
        dag_digest,
    })
}

/// Kahn's algorithm, taking the lowest ready stage first so the order is
/// deterministic. The plan is acyclic (its invariant).
fn topological_order(plan: &Plan) -> Vec<StageIndex> {
    let count = plan.stages.len();
    let mut indegree: Vec<usize> = plan.stages.iter().map(|s| s.dependencies.len()).collect();
    let mut order = Vec::with_capacity(count);
    let mut done = vec![false; count];
    while order.len() < count {
        let next = (0..count)
            .find(|&i| !done[i] && indegree[i] == 0)
            .expect("validated plans are acyclic");
        done[next] = true;
        order.push(next);
        for (index, stage) in plan.stages.iter().enumerate() {
            if stage.dependencies.contains(&next) {
                indegree[index] -= 1;
            }
        }
    }
    order
}

fn put_str(hasher: &mut Sha256, text: &str) {
    hasher.update((text.len() as u64).to_le_bytes());
    hasher.update(text.as_bytes());
}

/// The hasher state after the stage-wide part of the encoding, cloned per
/// shard so the config is canonicalised once per stage, not per shard.
fn stage_prefix(plan: &Plan, stage_index: StageIndex) -> Sha256 {
    let stage = &plan.stages[stage_index];
    let mut hasher = Sha256::new();
    hasher.update(CAS_VERSION);
    put_str(&mut hasher, &stage.id);
    put_str(&mut hasher, stage.blueprint.kind);
    put_str(&mut hasher, stage.executor.name());
    let mut config = String::new();
    canonical_json(&Value::Object(stage.config.clone()), &mut config);
    put_str(&mut hasher, &config);
    hasher
}

fn cas_id(prefix: &Sha256, input: &PartitionInput, deps: &[Hash]) -> Hash {
    let mut hasher = prefix.clone();
    match input {
        PartitionInput::Range { start, end } => {
            // One update, not three: this runs once per shard of a plan.
            let mut encoded = [1u8; 17];
            encoded[1..9].copy_from_slice(&start.to_le_bytes());
            encoded[9..].copy_from_slice(&end.to_le_bytes());
            hasher.update(encoded);
        }
        PartitionInput::Files { files, .. } => {
            hasher.update([2u8]);
            hasher.update((files.len() as u64).to_le_bytes());
            for file in files {
                put_str(&mut hasher, &file.rel_path);
                hasher.update(file.size_bytes.to_le_bytes());
                hasher.update(file.content_sha256);
            }
        }
        PartitionInput::Nodes { depth, nodes } => {
            hasher.update([3u8]);
            hasher.update(depth.to_le_bytes());
            hasher.update((nodes.len() as u64).to_le_bytes());
            for node in nodes {
                put_str(&mut hasher, node);
            }
        }
    }
    hasher.update((deps.len() as u64).to_le_bytes());
    for dep in deps {
        hasher.update(dep);
    }
    hasher.finalize().into()
}

/// The digests that identify a DAG with these cas_ids in leaf order (what
/// `hxo merge` has of it): the current one, then the v1 digest that older
/// builds recorded.
pub fn digests_of(cas_ids: &[Hash]) -> [Hash; 2] {
    [dag_digest(cas_ids), dag_digest_v1(cas_ids)]
}

/// Identifies a DAG: SHA-256 over a version tag, the shard count and the
/// SHA-256 of each run of `DAG_DIGEST_CHUNK` cas_ids in leaf order. The runs
/// are hashed in parallel (one stream over 10^6 cas_ids took 18 ms alone);
/// identification is all it is for, so no tree is needed.
pub fn dag_digest(cas_ids: &[Hash]) -> Hash {
    const DAG_DIGEST_CHUNK: usize = 32_768;
    let chunk_digests: Vec<Hash> = cas_ids
        .par_chunks(DAG_DIGEST_CHUNK)
        .map(|chunk| Sha256::digest(chunk.as_flattened()).into())
        .collect();
    let mut hasher = Sha256::new();
    hasher.update(b"hxo.dag.v2\0");
    hasher.update((cas_ids.len() as u64).to_le_bytes());
    hasher.update(chunk_digests.as_flattened());
    hasher.finalize().into()
}

/// The DAG digest of builds before v2: one stream over every cas_id.
fn dag_digest_v1(cas_ids: &[Hash]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(b"hxo.dag.v1\0");
    hasher.update((cas_ids.len() as u64).to_le_bytes());
    hasher.update(cas_ids.as_flattened());
    hasher.finalize().into()
}

fn stage_digest(cas: &[Hash]) -> Hash {
    let mut hasher = Sha256::new();
    hasher.update(b"hxo.stage.v1\0");
    hasher.update((cas.len() as u64).to_le_bytes());
    hasher.update(cas.as_flattened());
    hasher.finalize().into()
}

/// JSON with object keys sorted at every level and no whitespace.
pub fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*key).clone()).to_string());
                out.push(':');
                canonical_json(&map[*key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Short human form of a cas_id, for logs.
pub fn short(cas: &Hash) -> String {
    to_hex(cas)[..12].to_string()
}

#[cfg(test)]
mod tests;
