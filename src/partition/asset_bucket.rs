//! `by_asset_bucket`: the files under `root` grouped by extension into
//! named buckets; one shard per non-empty bucket, in bucket-name byte order,
//! keyed by the bucket name. Files whose extension is in no bucket (or that
//! have none, like `Makefile` or `.gitignore`) are skipped.
//!
//! `buckets` maps a bucket name to its extensions; without it the buckets
//! are `fonts`, `images`, `scripts` and `styles` (see [`DEFAULT_BUCKETS`]).
//! Extensions match the last `.`-separated part of a file name, ASCII
//! case-insensitively (`LOGO.PNG` is an image), and may be written with or
//! without the leading dot. An extension may belong to one bucket only.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use super::config::{canonical_base, describe, required_path, Config, Want};
use super::error::check_shard_count;
use super::files::{self, WalkedFile};
use super::{Partition, PartitionError, PartitionInput};

pub(crate) const CONFIG_KEYS: &[&str] = &["root", "buckets"];

/// The buckets used when `buckets` is absent.
pub(crate) const DEFAULT_BUCKETS: &[(&str, &[&str])] = &[
    (
        "images",
        &["png", "jpg", "jpeg", "gif", "svg", "webp", "ico"],
    ),
    ("scripts", &["js", "mjs", "ts"]),
    ("styles", &["css", "scss"]),
    ("fonts", &["woff", "woff2", "ttf", "otf"]),
];

/// Buckets sorted by name, and which bucket each extension belongs to.
struct Buckets {
    names: Vec<String>,
    /// Lowercase extension -> index into `names`.
    by_extension: HashMap<String, usize>,
}

pub(crate) fn partition(
    config: &Config,
    base_dir: &Path,
    shards_max: u64,
) -> Result<Vec<Partition>, PartitionError> {
    let buckets = match config.get("buckets") {
        None => default_buckets(),
        Some(value) => parse_buckets(value)?,
    };
    let base = canonical_base("root", base_dir)?;
    let root = required_path(config, "root", &base, Want::Directory)?;

    let mut grouped: Vec<Vec<WalkedFile>> = vec![Vec::new(); buckets.names.len()];
    for file in files::walk("root", &root, &base)? {
        let extension = Path::new(&file.rel_path)
            .extension()
            .and_then(|extension| extension.to_str())
            .map(|extension| extension.to_ascii_lowercase());
        if let Some(&bucket) = extension.and_then(|extension| buckets.by_extension.get(&extension))
        {
            grouped[bucket].push(file);
        }
    }
    let (names, groups): (Vec<String>, Vec<(String, Vec<WalkedFile>)>) = buckets
        .names
        .into_iter()
        .zip(grouped)
        .filter(|(_, files)| !files.is_empty())
        .map(|(name, files)| (name, ("root".to_owned(), files)))
        .unzip();
    check_shard_count("buckets", names.len() as u64, shards_max)?;
    let fingerprinted = files::fingerprint_groups(groups)?;
    Ok(names
        .into_iter()
        .zip(fingerprinted)
        .map(|(name, files)| Partition {
            key: Some(name.into_boxed_str()),
            input: PartitionInput::Files {
                root: root.clone(),
                files,
            },
        })
        .collect())
}

fn default_buckets() -> Buckets {
    let mut sorted: Vec<_> = DEFAULT_BUCKETS.to_vec();
    sorted.sort_unstable_by_key(|(name, _)| *name);
    let mut by_extension = HashMap::new();
    for (index, (_, extensions)) in sorted.iter().enumerate() {
        for extension in *extensions {
            let previous = by_extension.insert((*extension).to_owned(), index);
            assert!(previous.is_none(), "default buckets share an extension");
        }
    }
    Buckets {
        names: sorted
            .into_iter()
            .map(|(name, _)| name.to_owned())
            .collect(),
        by_extension,
    }
}

fn parse_buckets(value: &Value) -> Result<Buckets, PartitionError> {
    let Value::Object(map) = value else {
        return Err(PartitionError::config(
            "buckets",
            format!(
                "expected an object of bucket name to extensions, got {}",
                describe(value)
            ),
        ));
    };
    if map.is_empty() {
        return Err(PartitionError::config(
            "buckets",
            "needs at least one bucket",
        ));
    }
    let mut entries: Vec<(&String, &Value)> = map.iter().collect();
    entries.sort_unstable_by_key(|(name, _)| *name);
    let mut names = Vec::with_capacity(entries.len());
    let mut by_extension: HashMap<String, usize> = HashMap::new();
    for (index, (name, extensions)) in entries.into_iter().enumerate() {
        let key = format!("buckets.{name}");
        if name.is_empty() {
            return Err(PartitionError::config("buckets", "a bucket name is empty"));
        }
        let Value::Array(extensions) = extensions else {
            return Err(PartitionError::config(
                key,
                format!(
                    "expected an array of extensions, got {}",
                    describe(extensions)
                ),
            ));
        };
        if extensions.is_empty() {
            return Err(PartitionError::config(key, "list of extensions is empty"));
        }
        for (position, extension) in extensions.iter().enumerate() {
            let element_key = format!("{key}[{position}]");
            let extension = normalize_extension(&element_key, extension)?;
            match by_extension.get(&extension) {
                None => {
                    by_extension.insert(extension, index);
                }
                Some(&owner) if owner == index => {}
                Some(&owner) => {
                    return Err(PartitionError::config(
                        element_key,
                        format!(
                            "extension {extension:?} is already in bucket {:?}",
                            names[owner]
                        ),
                    ));
                }
            }
        }
        names.push(name.clone());
    }
    Ok(Buckets {
        names,
        by_extension,
    })
}

/// `".PNG"` -> `"png"`; rejects what could never match a file's extension.
fn normalize_extension(key: &str, value: &Value) -> Result<String, PartitionError> {
    let Value::String(text) = value else {
        return Err(PartitionError::config(
            key,
            format!("expected an extension string, got {}", describe(value)),
        ));
    };
    let bare = text.strip_prefix('.').unwrap_or(text);
    if bare.is_empty() || bare.contains(['.', '/', '\\']) {
        return Err(PartitionError::config(
            key,
            format!("{text:?} is not a file extension (one name part, like \"png\")"),
        ));
    }
    Ok(bare.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::super::files::tests::{temp_base, write_tree};
    use super::*;
    use serde_json::json;

    fn run(base: &Path, value: serde_json::Value) -> Result<Vec<Partition>, PartitionError> {
        partition(value.as_object().unwrap(), base, 1000)
    }

    fn layout(partitions: &[Partition]) -> Vec<(String, Vec<String>)> {
        partitions
            .iter()
            .map(|partition| match &partition.input {
                PartitionInput::Files { files, .. } => (
                    partition.key.as_deref().unwrap().to_owned(),
                    files.iter().map(|file| file.rel_path.clone()).collect(),
                ),
                _ => unreachable!("by_asset_bucket makes file lists"),
            })
            .collect()
    }

    fn owned(layout: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        layout
            .iter()
            .map(|(key, files)| {
                (
                    key.to_string(),
                    files.iter().map(|file| file.to_string()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn default_buckets_skip_empty_and_unknown() {
        let (_dir, base) = temp_base();
        write_tree(
            &base,
            &[
                ("assets/img/logo.PNG", b"p"),
                ("assets/app.js", b"j"),
                ("assets/lib/x.d.ts", b"t"),
                ("assets/a.jpg", b"j"),
                ("assets/README.md", b"r"),
                ("assets/Makefile", b"m"),
                ("assets/.png", b"hidden, no extension"),
            ],
        );
        let partitions = run(&base, json!({"root": "assets"})).unwrap();
        assert_eq!(
            layout(&partitions),
            owned(&[
                ("images", &["a.jpg", "img/logo.PNG"]),
                ("scripts", &["app.js", "lib/x.d.ts"]),
            ])
        );
        let PartitionInput::Files { root, .. } = &partitions[0].input else {
            unreachable!()
        };
        assert_eq!(root, &base.join("assets"));
    }

    #[test]
    fn custom_buckets_in_name_order() {
        let (_dir, base) = temp_base();
        write_tree(
            &base,
            &[("r/a.md", b"a"), ("r/b.txt", b"b"), ("r/c.rs", b"c")],
        );
        let config = json!({"root": "r", "buckets": {"text": [".md", "TXT"], "code": ["rs"]}});
        let partitions = run(&base, config).unwrap();
        assert_eq!(
            layout(&partitions),
            owned(&[("code", &["c.rs"]), ("text", &["a.md", "b.txt"])])
        );
    }

    #[test]
    fn output_is_deterministic_and_tracks_content() {
        let (_dir, base) = temp_base();
        write_tree(&base, &[("r/a.css", b"a"), ("r/b.js", b"b")]);
        let first = run(&base, json!({"root": "r"})).unwrap();
        assert_eq!(run(&base, json!({"root": "r"})).unwrap(), first);
        write_tree(&base, &[("r/a.css", b"changed")]);
        let second = run(&base, json!({"root": "r"})).unwrap();
        assert_eq!(first[0], second[0]); // scripts
        assert_ne!(first[1], second[1]); // styles
    }

    #[test]
    fn errors_name_their_key() {
        let (_dir, base) = temp_base();
        write_tree(&base, &[("r/a.css", b"a")]);
        let cases = [
            (json!({}), "root"),
            (json!({"root": "../r"}), "root"),
            (json!({"root": "r", "buckets": []}), "buckets"),
            (json!({"root": "r", "buckets": {}}), "buckets"),
            (json!({"root": "r", "buckets": {"a": "png"}}), "buckets.a"),
            (json!({"root": "r", "buckets": {"a": []}}), "buckets.a"),
            (
                json!({"root": "r", "buckets": {"a": ["png", 1]}}),
                "buckets.a[1]",
            ),
            (
                json!({"root": "r", "buckets": {"a": ["tar.gz"]}}),
                "buckets.a[0]",
            ),
            (
                json!({"root": "r", "buckets": {"a": ["."]}}),
                "buckets.a[0]",
            ),
            (
                json!({"root": "r", "buckets": {"b": ["png"], "a": ["x", "PNG"]}}),
                "buckets.b[0]",
            ),
        ];
        for (config, key) in cases {
            let error = run(&base, config.clone()).unwrap_err();
            assert_eq!(error.key(), key, "{config}: {error}");
        }
        let error = run(
            &base,
            json!({"root": "r", "buckets": {"b": ["png"], "a": ["PNG"]}}),
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "buckets.b[0]: extension \"png\" is already in bucket \"a\""
        );
    }

    #[test]
    fn too_many_shards() {
        let (_dir, base) = temp_base();
        write_tree(
            &base,
            &[("r/a.css", b"a"), ("r/b.js", b"b"), ("r/c.txt", b"c")],
        );
        let config = json!({"root": "r"});
        let error = partition(config.as_object().unwrap(), &base, 1).unwrap_err();
        assert!(
            matches!(
                error,
                PartitionError::TooManyShards {
                    count: 2,
                    max: 1,
                    ..
                }
            ),
            "{error}"
        );
    }
}
