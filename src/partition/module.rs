//! `by_module`: one shard per module, keyed by the module's name.
//!
//! Two ways to name modules (exactly one must be given):
//! - `root`: each top-level directory of `root` is a module, keyed by its
//!   directory name. Files directly in `root` form one more module keyed
//!   `"."` (present only when there are such files), so that every file
//!   under `root` is in exactly one shard: a deploy that silently dropped
//!   the top-level `Cargo.toml` or `package.json` would be worse than one
//!   more shard. The `"."` shard holds only those top-level files
//!   (`rel_path` is the bare file name, its root is `root`). Shards are in
//!   key byte order. A module with no files still gets its (empty) shard,
//!   so the key sequence follows the directory layout, not the contents.
//!   Top-level symlinks to directories are not modules (the walk never
//!   follows directory symlinks).
//! - `modules`: a list of directories relative to the plan's directory,
//!   each keyed by the string as written, in the order written. Two
//!   entries may not name the same directory, nor may one lie inside
//!   another (their files would be counted twice).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::config::{canonical_base, required_path, resolve, str_list, Config, Want};
use super::error::check_shard_count;
use super::files::{self, EntryKind, WalkedFile};
use super::{Partition, PartitionError, PartitionInput};

pub(crate) const CONFIG_KEYS: &[&str] = &["root", "modules"];

/// The key of the module made of `root`'s top-level files.
const TOP_LEVEL_KEY: &str = ".";

/// A module found but not yet fingerprinted.
struct Module {
    key: String,
    /// Canonical directory the files' rel_paths are relative to.
    root: PathBuf,
    /// The config key that read errors name.
    error_key: String,
    files: Vec<WalkedFile>,
}

pub(crate) fn partition(
    config: &Config,
    base_dir: &Path,
    shards_max: u64,
) -> Result<Vec<Partition>, PartitionError> {
    let modules = match (config.get("root"), config.get("modules")) {
        (Some(_), Some(_)) => {
            return Err(PartitionError::config(
                "modules",
                "cannot be combined with root (give one of them)",
            ))
        }
        (None, None) => {
            return Err(PartitionError::config(
                "root",
                "required key is missing (give root, or modules)",
            ))
        }
        (Some(_), None) => modules_of_root(config, base_dir, shards_max)?,
        (None, Some(list)) => listed_modules(list, base_dir, shards_max)?,
    };
    let mut heads = Vec::with_capacity(modules.len());
    let mut groups = Vec::with_capacity(modules.len());
    for module in modules {
        heads.push((module.key, module.root));
        groups.push((module.error_key, module.files));
    }
    let fingerprinted = files::fingerprint_groups(groups)?;
    Ok(heads
        .into_iter()
        .zip(fingerprinted)
        .map(|((key, root), files)| Partition {
            key: Some(key.into_boxed_str()),
            input: PartitionInput::Files { root, files },
        })
        .collect())
}

fn modules_of_root(
    config: &Config,
    base_dir: &Path,
    shards_max: u64,
) -> Result<Vec<Module>, PartitionError> {
    let base = canonical_base("root", base_dir)?;
    let root = required_path(config, "root", &base, Want::Directory)?;
    let entries = files::list_dir("root", &root, &base)?;
    let has_top_level_files = entries.iter().any(|entry| entry.kind == EntryKind::File);
    let directory_count = entries
        .iter()
        .filter(|entry| entry.kind == EntryKind::Directory)
        .count();
    let count = directory_count as u64 + u64::from(has_top_level_files);
    check_shard_count("root", count, shards_max)?;

    let mut modules = Vec::with_capacity(count as usize);
    let mut top_level_files = Vec::new();
    for entry in entries {
        match entry.kind {
            EntryKind::Directory => modules.push(Module {
                files: files::walk("root", &entry.path, &base)?,
                key: entry.name,
                root: entry.path,
                error_key: "root".to_owned(),
            }),
            EntryKind::File => top_level_files.push(WalkedFile {
                rel_path: entry.name,
                path: entry.path,
            }),
        }
    }
    if has_top_level_files {
        modules.push(Module {
            key: TOP_LEVEL_KEY.to_owned(),
            root,
            error_key: "root".to_owned(),
            files: top_level_files,
        });
    }
    modules.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    Ok(modules)
}

fn listed_modules(
    list: &Value,
    base_dir: &Path,
    shards_max: u64,
) -> Result<Vec<Module>, PartitionError> {
    let given = str_list("modules", list)?;
    if given.is_empty() {
        return Err(PartitionError::config("modules", "list is empty"));
    }
    check_shard_count("modules", given.len() as u64, shards_max)?;
    let base = canonical_base("modules", base_dir)?;
    let mut roots = Vec::with_capacity(given.len());
    for (index, path) in given.iter().enumerate() {
        roots.push(resolve(
            &format!("modules[{index}]"),
            path,
            &base,
            Want::Directory,
        )?);
    }
    check_disjoint(&roots)?;
    given
        .iter()
        .zip(roots)
        .enumerate()
        .map(|(index, (key, root))| {
            let error_key = format!("modules[{index}]");
            Ok(Module {
                files: files::walk(&error_key, &root, &base)?,
                key: (*key).to_owned(),
                root,
                error_key,
            })
        })
        .collect()
}

/// Fails when two module directories are the same or nested.
fn check_disjoint(roots: &[PathBuf]) -> Result<(), PartitionError> {
    // Sorting by path components puts every directory right before its
    // descendants (`a`, `a/b`, `a/c`, `a-b`), so one pass that remembers
    // the last non-nested directory finds every overlap.
    let mut order: Vec<usize> = (0..roots.len()).collect();
    order.sort_by(|&a, &b| roots[a].cmp(&roots[b]).then(a.cmp(&b)));
    let mut outer: Option<usize> = None;
    for index in order {
        if let Some(outer) = outer.filter(|&outer| roots[index].starts_with(&roots[outer])) {
            let (first, second) = (outer.min(index), outer.max(index));
            let how = if roots[first] == roots[second] {
                "names the same directory as"
            } else {
                "overlaps"
            };
            return Err(PartitionError::config(
                format!("modules[{second}]"),
                format!("{} {how} modules[{first}]", roots[second].display()),
            ));
        }
        outer = Some(index);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::files::tests::{temp_base, write_tree};
    use super::*;
    use serde_json::json;

    fn run(base: &Path, value: serde_json::Value) -> Result<Vec<Partition>, PartitionError> {
        partition(value.as_object().unwrap(), base, 1000)
    }

    use super::super::files::tests::keyed_layout as layout;

    #[test]
    fn root_makes_one_shard_per_top_level_directory() {
        let (_dir, base) = temp_base();
        write_tree(
            &base,
            &[
                ("src/web/index.js", b"w"),
                ("src/api/main.rs", b"m"),
                ("src/api/lib/db.rs", b"d"),
                ("src/README", b"r"),
                ("src/Cargo.toml", b"c"),
                ("src/.git/HEAD", b"h"),
            ],
        );
        std::fs::create_dir(base.join("src/empty")).unwrap();
        let src = base.join("src");
        let partitions = run(&base, json!({"root": "src"})).unwrap();
        assert_eq!(
            layout(&partitions),
            [
                (
                    ".".into(),
                    src.clone(),
                    vec!["Cargo.toml".into(), "README".into()]
                ),
                (
                    "api".into(),
                    src.join("api"),
                    vec!["lib/db.rs".into(), "main.rs".into()]
                ),
                ("empty".into(), src.join("empty"), vec![]),
                ("web".into(), src.join("web"), vec!["index.js".into()]),
            ]
        );
    }

    #[test]
    fn no_top_level_files_means_no_dot_module() {
        let (_dir, base) = temp_base();
        write_tree(&base, &[("src/a/x", b"x")]);
        let partitions = run(&base, json!({"root": "src"})).unwrap();
        assert_eq!(partitions.len(), 1);
        assert_eq!(partitions[0].key.as_deref(), Some("a"));
    }

    #[test]
    fn modules_list_keeps_given_order_and_names() {
        let (_dir, base) = temp_base();
        write_tree(
            &base,
            &[("svc/web/a", b"a"), ("svc/api/b", b"b"), ("lib/c", b"c")],
        );
        let partitions = run(&base, json!({"modules": ["svc/web", "lib", "./svc/api"]})).unwrap();
        let got = layout(&partitions);
        let keys: Vec<&str> = got.iter().map(|(key, _, _)| key.as_str()).collect();
        assert_eq!(keys, ["svc/web", "lib", "./svc/api"]);
        assert_eq!(got[2].1, base.join("svc/api"));
        assert_eq!(got[2].2, ["b"]);
    }

    #[test]
    fn output_is_deterministic_and_tracks_content() {
        let (_dir, base) = temp_base();
        write_tree(
            &base,
            &[("src/z/1", b"1"), ("src/a/2", b"2"), ("src/m/3", b"3")],
        );
        let first = run(&base, json!({"root": "src"})).unwrap();
        assert_eq!(run(&base, json!({"root": "src"})).unwrap(), first);
        write_tree(&base, &[("src/m/3", b"three")]);
        let second = run(&base, json!({"root": "src"})).unwrap();
        assert_eq!(first[0], second[0]);
        assert_ne!(first[1], second[1]);
        assert_eq!(first[2], second[2]);
    }

    #[test]
    fn errors_name_their_key() {
        let (_dir, base) = temp_base();
        write_tree(&base, &[("a/x", b"x"), ("a/b/y", b"y"), ("c/z", b"z")]);
        let cases = [
            (json!({}), "root"),
            (json!({"root": "a", "modules": ["c"]}), "modules"),
            (json!({"root": 1}), "root"),
            (json!({"root": "missing"}), "root"),
            (json!({"modules": "a"}), "modules"),
            (json!({"modules": []}), "modules"),
            (json!({"modules": ["a", 3]}), "modules[1]"),
            (json!({"modules": ["a", "missing"]}), "modules[1]"),
            (json!({"modules": ["c", "../x"]}), "modules[1]"),
            (json!({"modules": ["a", "c", "a/b"]}), "modules[2]"),
            (json!({"modules": ["a/b", "c", "a"]}), "modules[2]"),
            (json!({"modules": ["c", "./c"]}), "modules[1]"),
        ];
        for (config, key) in cases {
            let error = run(&base, config.clone()).unwrap_err();
            assert_eq!(error.key(), key, "{config}: {error}");
        }
        let error = run(&base, json!({"modules": ["c", "./c"]})).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("names the same directory as modules[0]"),
            "{error}"
        );
    }

    #[test]
    fn disjoint_check_handles_siblings_with_common_prefixes() {
        let roots: Vec<PathBuf> = ["/p/a", "/p/a-b", "/p/ab", "/p/b"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert!(check_disjoint(&roots).is_ok());
        let roots: Vec<PathBuf> = ["/p/a", "/p/a-b", "/p/a/c"]
            .iter()
            .map(PathBuf::from)
            .collect();
        assert_eq!(check_disjoint(&roots).unwrap_err().key(), "modules[2]");
    }

    #[test]
    fn escapes_are_rejected() {
        let (_dir, base) = temp_base();
        write_tree(&base, &[("plan/src/a/x", b"x"), ("outside/y", b"y")]);
        let plan = base.join("plan");
        let error = run(&plan, json!({"root": "../outside"})).unwrap_err();
        assert!(
            matches!(error, PartitionError::EscapesRoot { .. }),
            "{error}"
        );
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(base.join("outside"), plan.join("link")).unwrap();
            let error = run(&plan, json!({"modules": ["src/a", "link"]})).unwrap_err();
            assert!(
                matches!(error, PartitionError::EscapesRoot { .. }),
                "{error}"
            );
            assert_eq!(error.key(), "modules[1]");
        }
    }

    #[test]
    fn too_many_shards() {
        let (_dir, base) = temp_base();
        write_tree(
            &base,
            &[("src/a/x", b"x"), ("src/b/y", b"y"), ("src/top", b"t")],
        );
        let config = json!({"root": "src"});
        let error = partition(config.as_object().unwrap(), &base, 2).unwrap_err();
        assert!(
            matches!(
                error,
                PartitionError::TooManyShards {
                    count: 3,
                    max: 2,
                    ..
                }
            ),
            "{error}"
        );
        let config = json!({"modules": ["src/a", "src/b"]});
        let error = partition(config.as_object().unwrap(), &base, 1).unwrap_err();
        assert_eq!(error.key(), "modules");
    }
}
