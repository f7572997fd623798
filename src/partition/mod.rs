//! TEMPORARY contract types; replaced by the partitioner module.
use crate::hash::Hash;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PartitionerKind {
    ByRange,
    ByFilesize,
    ByModule,
    ByAssetBucket,
    ByRouteMap,
    BySqlBatch,
    ByDagDepth,
}
impl PartitionerKind {
    pub const ALL: [Self; 7] = [
        Self::ByRange,
        Self::ByFilesize,
        Self::ByModule,
        Self::ByAssetBucket,
        Self::ByRouteMap,
        Self::BySqlBatch,
        Self::ByDagDepth,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Self::ByRange => "by_range",
            Self::ByFilesize => "by_filesize",
            Self::ByModule => "by_module",
            Self::ByAssetBucket => "by_asset_bucket",
            Self::ByRouteMap => "by_route_map",
            Self::BySqlBatch => "by_sql_batch",
            Self::ByDagDepth => "by_dag_depth",
        }
    }
    pub fn from_name(n: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == n)
    }
    pub fn config_keys(self) -> &'static [&'static str] {
        match self {
            Self::ByRange => &["shards", "items"],
            Self::ByFilesize => &["root", "chunk_size_mb"],
            Self::ByModule => &["root", "modules"],
            Self::ByAssetBucket => &["root", "buckets"],
            Self::ByRouteMap => &["root", "routes"],
            Self::BySqlBatch => &["database", "table", "batch_size", "total_rows"],
            Self::ByDagDepth => &["graph"],
        }
    }
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub rel_path: String,
    pub size_bytes: u64,
    pub content_sha256: Hash,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionInput {
    Range {
        start: u64,
        end: u64,
    },
    Files {
        root: PathBuf,
        files: Vec<FileEntry>,
    },
    Nodes {
        depth: u32,
        nodes: Vec<String>,
    },
}
impl PartitionInput {
    pub fn unit_count(&self) -> u64 {
        match self {
            Self::Range { start, end } => end - start,
            Self::Files { files, .. } => files.len() as u64,
            Self::Nodes { nodes, .. } => nodes.len() as u64,
        }
    }
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    pub key: Option<Box<str>>,
    pub input: PartitionInput,
}
pub struct Partitioning {
    pub partitions: Vec<Partition>,
    pub chained: bool,
}
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("{key}: {message}")]
    Config { key: &'static str, message: String },
    #[error("{count} shards exceed the limit of {max}")]
    TooManyShards { count: u64, max: u64 },
}
pub fn partition(
    kind: PartitionerKind,
    config: &serde_json::Map<String, serde_json::Value>,
    _base: &Path,
    shards_max: u64,
) -> Result<Partitioning, PartitionError> {
    assert_eq!(kind, PartitionerKind::ByRange);
    let shards = config
        .get("shards")
        .and_then(|v| v.as_u64())
        .ok_or(PartitionError::Config {
            key: "shards",
            message: "required".into(),
        })?;
    if shards > shards_max {
        return Err(PartitionError::TooManyShards {
            count: shards,
            max: shards_max,
        });
    }
    let items = config
        .get("items")
        .and_then(|v| v.as_u64())
        .unwrap_or(shards);
    let partitions = (0..shards)
        .map(|i| Partition {
            key: None,
            input: PartitionInput::Range {
                start: i * items / shards,
                end: (i + 1) * items / shards,
            },
        })
        .collect();
    Ok(Partitioning {
        partitions,
        chained: false,
    })
}
pub fn keys_match(a: &[Partition], b: &[Partition]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.key == y.key)
}
