//! Partitioners: turn a stage's `config` into the ordered list of
//! [`Partition`]s that become its shards. This layer does I/O (it walks
//! directories, reads files to fingerprint them, queries SQLite) and nothing
//! else: no scheduling, no hashing of cas_ids.
//!
//! Invariants kept by every partitioner:
//! - **Deterministic order.** The same inputs give the same partitions in
//!   the same order, whatever the directory iteration order or the number
//!   of threads.
//! - **Paths stay home.** Every path from the config resolves against the
//!   plan file's directory (`base_dir`) and must stay inside it, lexically
//!   and after following symlinks; otherwise [`PartitionError::EscapesRoot`].
//! - **Bounded.** A partitioner never returns more than `shards_max`
//!   partitions ([`PartitionError::TooManyShards`]); `by_range` checks
//!   before allocating anything.
//! - **Errors name the key** they concern (see [`PartitionError::key`]).
//! - **Zero partitions is a valid answer** for inputs that are empty
//!   (an empty directory, an empty table, no file in any bucket).
//!
//! Codemap:
//! - `config.rs`: typed config accessors and path resolution.
//! - `files.rs`: the one directory walk and file fingerprinting.
//! - `range.rs` (`by_range`), `filesize.rs` (`by_filesize`), `module.rs`
//!   (`by_module`), `asset_bucket.rs` (`by_asset_bucket`), `route_map.rs`
//!   (`by_route_map`), `sql_batch.rs` (`by_sql_batch`), `dag_depth.rs`
//!   (`by_dag_depth`).
//! - `error.rs`: [`PartitionError`].
//!
//! Deliberately absent: fingerprints of SQLite row contents (a migration
//! changes them, and its shards' cas_ids must not move), and a cap on the
//! number of files per partition.

mod asset_bucket;
mod config;
mod dag_depth;
mod error;
mod files;
mod filesize;
mod module;
mod range;
mod route_map;
mod sql_batch;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

pub use error::PartitionError;
pub use range::range_shard_bounds;

use crate::hash::Hash;

/// One file a partition reads. `rel_path` is relative to the partition
/// root, '/'-separated, and the file list of a partition is sorted by
/// rel_path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileEntry {
    pub rel_path: String,
    pub size_bytes: u64,
    pub content_sha256: Hash,
}

/// What one shard covers. Units: items of a Range, files of Files, nodes of
/// Nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartitionInput {
    /// Half-open range of items (by_range) or rowids (by_sql_batch).
    Range { start: u64, end: u64 },
    /// Files under `root` (absolute path), sorted by rel_path.
    Files {
        root: PathBuf,
        files: Vec<FileEntry>,
    },
    /// Graph nodes at one depth of a by_dag_depth graph, sorted.
    Nodes { depth: u32, nodes: Vec<String> },
}

impl PartitionInput {
    /// How many units (items, files, nodes) the input holds: the units that
    /// hot-shard splitting divides.
    ///
    /// For a `by_sql_batch` range this counts rowid *values*, gaps
    /// included, not rows.
    pub fn unit_count(&self) -> u64 {
        match self {
            PartitionInput::Range { start, end } => end - start,
            PartitionInput::Files { files, .. } => files.len() as u64,
            PartitionInput::Nodes { nodes, .. } => nodes.len() as u64,
        }
    }

    /// A human label for unit `unit` (0-based within this input): the item
    /// or rowid number, the file's rel_path, or the node name.
    ///
    /// # Panics
    /// When `unit >= self.unit_count()`: callers iterate
    /// `0..unit_count()`, so anything else is a bug.
    pub fn unit_label(&self, unit: u64) -> String {
        assert!(
            unit < self.unit_count(),
            "unit {unit} out of range 0..{}",
            self.unit_count()
        );
        match self {
            PartitionInput::Range { start, .. } => (start + unit).to_string(),
            // `unit < len`, so the index fits in usize.
            PartitionInput::Files { files, .. } => files[unit as usize].rel_path.clone(),
            PartitionInput::Nodes { nodes, .. } => nodes[unit as usize].clone(),
        }
    }
}

/// One shard's worth of input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Key used to pipeline stages: two stages with the same partitioner
    /// whose partitions have equal key sequences are joined shard k ->
    /// shard k. None means "keyed by ordinal" (by_range, by_filesize chunk
    /// n, by_sql_batch n).
    pub key: Option<Box<str>>,
    pub input: PartitionInput,
}

/// A stage's partitions, one per shard, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partitions {
    /// `count` contiguous ranges over `items` items, as even as possible
    /// ([`range_shard_bounds`]), keyless: what `by_range` makes. Nothing is
    /// stored per shard; each partition is computed when asked for (a
    /// million stored ones would take 72 MB and 25 ms to build).
    EvenRanges { items: u64, count: u64 },
    /// Partitions read from the inputs.
    Listed(Vec<Partition>),
}

impl Partitions {
    pub fn len(&self) -> usize {
        match self {
            Partitions::EvenRanges { count, .. } => *count as usize,
            Partitions::Listed(partitions) => partitions.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Partition `index`.
    ///
    /// # Panics
    /// When `index >= self.len()`.
    pub fn get(&self, index: usize) -> Cow<'_, Partition> {
        match self {
            Partitions::EvenRanges { items, count } => {
                let (start, end) = range_shard_bounds(*items, *count, index as u64);
                Cow::Owned(Partition {
                    key: None,
                    input: PartitionInput::Range { start, end },
                })
            }
            Partitions::Listed(partitions) => Cow::Borrowed(&partitions[index]),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Cow<'_, Partition>> + '_ {
        (0..self.len()).map(|index| self.get(index))
    }

    /// Whether two partitions may have the same inputs (ranges never do).
    pub fn may_coincide(&self) -> bool {
        match self {
            Partitions::EvenRanges { .. } => false,
            Partitions::Listed(partitions) => partitions
                .iter()
                .any(|p| !matches!(p.input, PartitionInput::Range { .. })),
        }
    }

    /// Keeps the partitions whose `keep` entry is true.
    pub fn retain_marked(&mut self, keep: &[bool]) {
        assert_eq!(keep.len(), self.len(), "one mark per partition");
        if keep.iter().all(|k| *k) {
            return;
        }
        let mut partitions: Vec<Partition> =
            match std::mem::replace(self, Partitions::Listed(Vec::new())) {
                Partitions::Listed(partitions) => partitions,
                listed => listed.iter().map(Cow::into_owned).collect(),
            };
        let mut marks = keep.iter();
        partitions.retain(|_| *marks.next().expect("one mark per partition"));
        *self = Partitions::Listed(partitions);
    }
}

impl From<Vec<Partition>> for Partitions {
    fn from(partitions: Vec<Partition>) -> Self {
        Partitions::Listed(partitions)
    }
}

/// A partitioner's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partitioning {
    pub partitions: Partitions,
    /// Each shard depends on the previous shard of the same stage
    /// (by_dag_depth: depth d needs depth d-1 done).
    pub chained: bool,
}

impl Partitioning {
    /// `count` listed one-unit ranges `[i, i + 1)`, not chained: the
    /// partitioning tests build DAGs from.
    #[cfg(test)]
    pub(crate) fn unit_ranges(count: u64) -> Partitioning {
        Partitioning {
            partitions: (0..count)
                .map(|i| Partition {
                    key: None,
                    input: PartitionInput::Range {
                        start: i,
                        end: i + 1,
                    },
                })
                .collect::<Vec<_>>()
                .into(),
            chained: false,
        }
    }
}

/// The partitioners a stage may name.
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
    /// Every partitioner, in the order the design lists them.
    pub const ALL: [Self; 7] = [
        PartitionerKind::ByRange,
        PartitionerKind::ByFilesize,
        PartitionerKind::ByModule,
        PartitionerKind::ByAssetBucket,
        PartitionerKind::ByRouteMap,
        PartitionerKind::BySqlBatch,
        PartitionerKind::ByDagDepth,
    ];

    /// The name plans use (`"by_filesize"`).
    pub fn name(self) -> &'static str {
        match self {
            PartitionerKind::ByRange => "by_range",
            PartitionerKind::ByFilesize => "by_filesize",
            PartitionerKind::ByModule => "by_module",
            PartitionerKind::ByAssetBucket => "by_asset_bucket",
            PartitionerKind::ByRouteMap => "by_route_map",
            PartitionerKind::BySqlBatch => "by_sql_batch",
            PartitionerKind::ByDagDepth => "by_dag_depth",
        }
    }

    /// The kind named `name`, exactly as [`Self::name`] spells it.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The config keys this partitioner reads. A stage's config holds its
    /// partitioner's keys and its executor's; a key in neither list is
    /// unknown. The partitioner itself ignores keys it does not read.
    pub fn config_keys(self) -> &'static [&'static str] {
        match self {
            PartitionerKind::ByRange => range::CONFIG_KEYS,
            PartitionerKind::ByFilesize => filesize::CONFIG_KEYS,
            PartitionerKind::ByModule => module::CONFIG_KEYS,
            PartitionerKind::ByAssetBucket => asset_bucket::CONFIG_KEYS,
            PartitionerKind::ByRouteMap => route_map::CONFIG_KEYS,
            PartitionerKind::BySqlBatch => sql_batch::CONFIG_KEYS,
            PartitionerKind::ByDagDepth => dag_depth::CONFIG_KEYS,
        }
    }
}

/// Runs partitioner `kind` over `config`. Relative paths resolve against
/// `base_dir` (the plan file's directory) and may not leave it; more than
/// `shards_max` partitions is an error.
pub fn partition(
    kind: PartitionerKind,
    config: &Map<String, Value>,
    base_dir: &Path,
    shards_max: u64,
) -> Result<Partitioning, PartitionError> {
    let partitions = match kind {
        PartitionerKind::ByRange => range::partition(config, shards_max)?,
        PartitionerKind::ByFilesize => filesize::partition(config, base_dir, shards_max)?.into(),
        PartitionerKind::ByModule => module::partition(config, base_dir, shards_max)?.into(),
        PartitionerKind::ByAssetBucket => {
            asset_bucket::partition(config, base_dir, shards_max)?.into()
        }
        PartitionerKind::ByRouteMap => route_map::partition(config, base_dir, shards_max)?.into(),
        PartitionerKind::BySqlBatch => sql_batch::partition(config, base_dir, shards_max)?.into(),
        PartitionerKind::ByDagDepth => dag_depth::partition(config, shards_max)?.into(),
    };
    assert!(
        partitions.len() as u64 <= shards_max,
        "partitioner ignored shards_max"
    );
    Ok(Partitioning {
        partitions,
        chained: kind == PartitionerKind::ByDagDepth,
    })
}

/// Whether two stages' partitions join shard k -> shard k: the same length
/// and the same key sequence. `None` keys stand for the ordinal, so two
/// keyless sequences of equal length match.
pub fn keys_match(a: &Partitions, b: &Partitions) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b.iter())
            .all(|(left, right)| left.key == right.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for kind in PartitionerKind::ALL {
            assert_eq!(PartitionerKind::from_name(kind.name()), Some(kind));
            assert!(!kind.config_keys().is_empty());
        }
        assert_eq!(PartitionerKind::from_name("by_nothing"), None);
        assert_eq!(PartitionerKind::from_name("BY_RANGE"), None);
    }

    #[test]
    fn config_keys_are_listed() {
        assert_eq!(PartitionerKind::ByRange.config_keys(), ["shards", "items"]);
        assert_eq!(
            PartitionerKind::BySqlBatch.config_keys(),
            ["database", "table", "batch_size", "total_rows"]
        );
    }

    fn keyed(key: Option<&str>) -> Partition {
        Partition {
            key: key.map(Into::into),
            input: PartitionInput::Range { start: 0, end: 1 },
        }
    }

    #[test]
    fn keys_match_by_sequence() {
        let listed = |keys: &[Option<&str>]| -> Partitions {
            keys.iter()
                .map(|key| keyed(*key))
                .collect::<Vec<_>>()
                .into()
        };
        let none2 = listed(&[None, None]);
        let none3 = listed(&[None, None, None]);
        let ab = listed(&[Some("a"), Some("b")]);
        let ba = listed(&[Some("b"), Some("a")]);
        let even2 = Partitions::EvenRanges {
            items: 10,
            count: 2,
        };
        assert!(keys_match(&none2, &none2));
        assert!(!keys_match(&none2, &none3));
        assert!(keys_match(&ab, &ab.clone()));
        assert!(!keys_match(&ab, &ba));
        assert!(!keys_match(&ab, &none2));
        assert!(keys_match(&listed(&[]), &listed(&[])));
        assert!(keys_match(&even2, &none2));
        assert!(!keys_match(&even2, &ab));
    }

    #[test]
    fn even_ranges_are_computed_like_listed_ones() {
        let even = Partitions::EvenRanges {
            items: 10,
            count: 4,
        };
        let listed: Partitions = even.iter().map(Cow::into_owned).collect::<Vec<_>>().into();
        assert_eq!(even.len(), 4);
        assert!(!even.may_coincide());
        assert_eq!(
            listed.get(1).into_owned(),
            Partition {
                key: None,
                input: PartitionInput::Range { start: 3, end: 6 },
            }
        );
        for index in 0..4 {
            assert_eq!(even.get(index), listed.get(index));
        }
        // Retaining turns them into a list of the kept ones.
        let mut kept = even.clone();
        kept.retain_marked(&[true, false, true, true]);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept.get(1), even.get(2));
    }

    #[test]
    fn unit_counts_and_labels() {
        let range = PartitionInput::Range { start: 10, end: 13 };
        assert_eq!(range.unit_count(), 3);
        assert_eq!(range.unit_label(2), "12");
        let files = PartitionInput::Files {
            root: PathBuf::from("/r"),
            files: vec![FileEntry {
                rel_path: "a/b".into(),
                size_bytes: 0,
                content_sha256: [0; 32],
            }],
        };
        assert_eq!(files.unit_count(), 1);
        assert_eq!(files.unit_label(0), "a/b");
        let nodes = PartitionInput::Nodes {
            depth: 0,
            nodes: vec!["x".into(), "y".into()],
        };
        assert_eq!(nodes.unit_count(), 2);
        assert_eq!(nodes.unit_label(1), "y");
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn unit_label_out_of_range_is_a_bug() {
        PartitionInput::Range { start: 0, end: 1 }.unit_label(1);
    }

    #[test]
    fn partition_dispatches_every_kind() {
        use serde_json::json;
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        for (rel_path, content) in [("site/a/x.css", "x"), ("site/b/y.js", "y")] {
            let path = base.join(rel_path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, content).unwrap();
        }
        let cases = [
            (PartitionerKind::ByRange, json!({"shards": 2}), 2),
            (PartitionerKind::ByFilesize, json!({"root": "site"}), 1),
            (PartitionerKind::ByModule, json!({"root": "site"}), 2),
            (PartitionerKind::ByAssetBucket, json!({"root": "site"}), 2),
            (
                PartitionerKind::ByRouteMap,
                json!({"root": "site", "routes": ["/"]}),
                1,
            ),
            (
                PartitionerKind::BySqlBatch,
                json!({"total_rows": 10, "batch_size": 4}),
                3,
            ),
            (
                PartitionerKind::ByDagDepth,
                json!({"graph": {"a": [], "b": ["a"]}}),
                2,
            ),
        ];
        for (kind, config, count) in cases {
            // Keys of other layers (the executor's) are ignored here.
            let mut config = config.as_object().unwrap().clone();
            config.insert("command".into(), json!("true"));
            let partitioning = partition(kind, &config, base, 100).unwrap();
            assert_eq!(partitioning.partitions.len(), count, "{}", kind.name());
            assert_eq!(partitioning.chained, kind == PartitionerKind::ByDagDepth);
        }
    }

    #[test]
    fn errors_can_cross_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<PartitionError>();
    }

    #[test]
    fn partition_size_stays_small() {
        // Listed partitioners store one of these per shard, so a growth of
        // the enum is worth noticing.
        assert!(std::mem::size_of::<Partition>() <= 72);
    }
}
