//! The manifest: what the checkpoint log keeps about an accepted plan, so
//! that `resume`, `replay`, `status` and `export` work from the log alone.
//!
//! It holds the plan as submitted, the directory its relative paths resolve
//! against, the layout of stages over leaf indices and the DAG digest, which
//! lets a resume detect that the inputs changed since the plan was accepted.

use super::PlanSpec;
use serde::{Deserialize, Serialize};

/// Version of the manifest's JSON shape.
pub const MANIFEST_FORMAT: u32 = 1;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub spec: PlanSpec,
    /// Absolute directory relative config paths resolve against.
    pub base_dir: String,
    pub stages: Vec<ManifestStage>,
    /// Hex SHA-256 over the cas_ids in leaf order (the DAG's identity).
    pub dag_digest: String,
    pub submitted_by: String,
    pub dry_run: bool,
    /// Set when this store runs one worker's slice of the plan (README,
    /// "Beyond one machine"): the other shards belong to other workers' logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<WorkerSlice>,
}

/// One worker of an indexed job (a Kubernetes Indexed Job, a Slurm or AWS
/// Batch array): worker `index` of `count` runs shard k of every stage when
/// `k % count == index`. Slicing by position within the stage keeps
/// pipelined shard chains (k -> k) on one worker.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerSlice {
    pub index: u32,
    pub count: u32,
}

impl WorkerSlice {
    /// Whether the shard at `position` within its stage is this worker's.
    pub fn owns(&self, position: u64) -> bool {
        position % self.count as u64 == self.index as u64
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ManifestStage {
    pub id: String,
    pub kind: String,
    pub executor: String,
    pub first_leaf: u64,
    pub shard_count: u64,
    pub slo_ms: u64,
}

impl Manifest {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("manifest serialises")
    }

    pub fn from_json(text: &str) -> Result<Manifest, String> {
        serde_json::from_str(text).map_err(|e| e.to_string())
    }

    pub fn shard_count(&self) -> u64 {
        self.stages.iter().map(|s| s.shard_count).sum()
    }

    /// The stage holding `leaf`.
    pub fn stage_of(&self, leaf: u64) -> Option<&ManifestStage> {
        self.stages
            .iter()
            .find(|s| leaf >= s.first_leaf && leaf < s.first_leaf + s.shard_count)
    }
}
