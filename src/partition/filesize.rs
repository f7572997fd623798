//! `by_filesize`: every file under `root`, in rel_path order, grouped
//! greedily into shards of at most `chunk_size_mb` MiB (1 MiB = 2^20
//! bytes). A file bigger than a chunk gets a shard of its own. Keys are
//! `None` (chunk n pairs with chunk n).

use std::path::Path;

use super::config::{canonical_base, optional_positive_f64, required_path, Config, Want};
use super::error::check_shard_count;
use super::{files, FileEntry, Partition, PartitionError, PartitionInput};

pub(crate) const CONFIG_KEYS: &[&str] = &["root", "chunk_size_mb"];

const CHUNK_SIZE_MB_DEFAULT: f64 = 10.0;
const BYTES_PER_MB: f64 = (1u64 << 20) as f64;

pub(crate) fn partition(
    config: &Config,
    base_dir: &Path,
    shards_max: u64,
) -> Result<Vec<Partition>, PartitionError> {
    let chunk_size_mb =
        optional_positive_f64(config, "chunk_size_mb")?.unwrap_or(CHUNK_SIZE_MB_DEFAULT);
    // `as` saturates, so an absurdly large chunk size becomes u64::MAX.
    let chunk_size_bytes = (chunk_size_mb * BYTES_PER_MB) as u64;
    if chunk_size_bytes == 0 {
        return Err(PartitionError::config(
            "chunk_size_mb",
            format!("{chunk_size_mb} MiB is less than one byte"),
        ));
    }
    let base = canonical_base("root", base_dir)?;
    let root = required_path(config, "root", &base, Want::Directory)?;
    let entries = files::files_under("root", &root, &base)?;

    let mut chunks: Vec<Vec<FileEntry>> = Vec::new();
    let mut current: Vec<FileEntry> = Vec::new();
    let mut current_bytes: u64 = 0;
    for entry in entries {
        if !current.is_empty() && current_bytes.saturating_add(entry.size_bytes) > chunk_size_bytes
        {
            chunks.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes = current_bytes.saturating_add(entry.size_bytes);
        current.push(entry);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    check_shard_count("chunk_size_mb", chunks.len() as u64, shards_max)?;
    Ok(chunks
        .into_iter()
        .map(|files| Partition {
            key: None,
            input: PartitionInput::Files {
                root: root.clone(),
                files,
            },
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::super::files::tests::{temp_base, write_tree};
    use super::*;
    use serde_json::json;

    fn run(base: &Path, value: serde_json::Value) -> Result<Vec<Partition>, PartitionError> {
        partition(value.as_object().unwrap(), base, 1000)
    }

    /// Each partition's rel_paths.
    fn layout(partitions: &[Partition]) -> Vec<Vec<String>> {
        partitions
            .iter()
            .map(|partition| match &partition.input {
                PartitionInput::Files { files, .. } => {
                    files.iter().map(|file| file.rel_path.clone()).collect()
                }
                _ => unreachable!("by_filesize makes file lists"),
            })
            .collect()
    }

    /// 1 KiB expressed in MiB.
    const KIB_IN_MB: f64 = 1.0 / 1024.0;

    #[test]
    fn groups_greedily_in_path_order() {
        let (_dir, base) = temp_base();
        write_tree(
            &base,
            &[
                ("src/a", &[0; 400]),
                ("src/b/c", &[0; 400]),
                ("src/b/d", &[0; 300]),
                ("src/big", &[0; 5000]),
                ("src/e", &[0; 1024]),
                ("src/f", b""),
            ],
        );
        let partitions = run(&base, json!({"root": "src", "chunk_size_mb": KIB_IN_MB})).unwrap();
        assert_eq!(
            layout(&partitions),
            [vec!["a", "b/c"], vec!["b/d"], vec!["big"], vec!["e", "f"],]
        );
        for partition in &partitions {
            assert_eq!(partition.key, None);
            let PartitionInput::Files { root, .. } = &partition.input else {
                unreachable!()
            };
            assert_eq!(root, &base.join("src"));
        }
    }

    #[test]
    fn default_chunk_holds_small_trees_in_one_shard() {
        let (_dir, base) = temp_base();
        write_tree(&base, &[("src/a", b"a"), ("src/b", b"b")]);
        let partitions = run(&base, json!({"root": "src"})).unwrap();
        assert_eq!(layout(&partitions), [vec!["a", "b"]]);
    }

    #[test]
    fn empty_root_gives_no_partitions() {
        let (_dir, base) = temp_base();
        std::fs::create_dir(base.join("src")).unwrap();
        assert!(run(&base, json!({"root": "src"})).unwrap().is_empty());
    }

    #[test]
    fn output_is_deterministic() {
        let (_dir, base) = temp_base();
        let names: Vec<String> = (0..50)
            .rev()
            .map(|index| format!("src/d{}/f{index}", index % 5))
            .collect();
        let tree: Vec<(&str, &[u8])> = names
            .iter()
            .map(|name| (name.as_str(), &[7u8; 100][..]))
            .collect();
        write_tree(&base, &tree);
        let config = json!({"root": "src", "chunk_size_mb": KIB_IN_MB});
        let first = run(&base, config.clone()).unwrap();
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            assert_eq!(pool.install(|| run(&base, config.clone()).unwrap()), first);
        }
    }

    #[test]
    fn fingerprints_follow_content() {
        let (_dir, base) = temp_base();
        write_tree(&base, &[("src/a", b"one"), ("src/b", b"two")]);
        let before = run(&base, json!({"root": "src"})).unwrap();
        write_tree(&base, &[("src/b", b"TWO")]);
        let after = run(&base, json!({"root": "src"})).unwrap();
        let files = |partitions: &[Partition]| match &partitions[0].input {
            PartitionInput::Files { files, .. } => files.clone(),
            _ => unreachable!(),
        };
        let (before, after) = (files(&before), files(&after));
        assert_eq!(before[0], after[0]);
        assert_eq!(before[1].size_bytes, after[1].size_bytes);
        assert_ne!(before[1].content_sha256, after[1].content_sha256);
        assert_eq!(after[1].content_sha256, crate::hash::sha256(b"TWO"));
    }

    #[test]
    fn config_errors_name_their_key() {
        let (_dir, base) = temp_base();
        write_tree(&base, &[("src/a", b"a"), ("file", b"f")]);
        let cases = [
            (json!({}), "root"),
            (json!({"root": 3}), "root"),
            (json!({"root": "missing"}), "root"),
            (json!({"root": "file"}), "root"),
            (json!({"root": "src", "chunk_size_mb": 0}), "chunk_size_mb"),
            (json!({"root": "src", "chunk_size_mb": -1}), "chunk_size_mb"),
            (
                json!({"root": "src", "chunk_size_mb": "10"}),
                "chunk_size_mb",
            ),
            (
                json!({"root": "src", "chunk_size_mb": 1e-300}),
                "chunk_size_mb",
            ),
        ];
        for (config, key) in cases {
            let error = run(&base, config.clone()).unwrap_err();
            assert_eq!(error.key(), key, "{config}: {error}");
        }
    }

    #[test]
    fn escapes_are_rejected() {
        let (_dir, base) = temp_base();
        write_tree(&base, &[("plan/src/a", b"a"), ("outside/b", b"b")]);
        let plan = base.join("plan");
        let error = run(&plan, json!({"root": "../outside"})).unwrap_err();
        assert!(
            matches!(error, PartitionError::EscapesRoot { .. }),
            "{error}"
        );
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(base.join("outside"), plan.join("link")).unwrap();
            let error = run(&plan, json!({"root": "link"})).unwrap_err();
            assert!(
                matches!(error, PartitionError::EscapesRoot { .. }),
                "{error}"
            );
        }
    }

    #[test]
    fn too_many_shards() {
        let (_dir, base) = temp_base();
        write_tree(
            &base,
            &[
                ("src/a", &[0; 2048]),
                ("src/b", &[0; 2048]),
                ("src/c", &[0; 2048]),
            ],
        );
        let config = json!({"root": "src", "chunk_size_mb": KIB_IN_MB});
        let error = partition(config.as_object().unwrap(), &base, 2).unwrap_err();
        assert!(
            matches!(error, PartitionError::TooManyShards { max: 2, .. }),
            "{error}"
        );
        assert_eq!(
            partition(config.as_object().unwrap(), &base, 3)
                .unwrap()
                .len(),
            3
        );
    }
}
