//! `by_route_map`: one shard per route, in the order `routes` lists them,
//! keyed by the route as written. Route `/a/b` covers the files under
//! `root/a/b` (their rel_paths are relative to that directory); `/` covers
//! all of `root`. Routes may overlap (`/` and `/blog`): a site's routes
//! nest, and each shard stands for one route. A route must start with `/`,
//! must name an existing directory, may not leave `root` (even through a
//! symlink), and may not be listed twice.

use std::collections::HashMap;
use std::path::Path;

use super::config::{canonical_base, missing, required_path, resolve, str_list, Config, Want};
use super::error::check_shard_count;
use super::{files, Partition, PartitionError, PartitionInput};

pub(crate) const CONFIG_KEYS: &[&str] = &["root", "routes"];

pub(crate) fn partition(
    config: &Config,
    base_dir: &Path,
    shards_max: u64,
) -> Result<Vec<Partition>, PartitionError> {
    let base = canonical_base("root", base_dir)?;
    let root = required_path(config, "root", &base, Want::Directory)?;
    let routes = str_list(
        "routes",
        config.get("routes").ok_or_else(|| missing("routes"))?,
    )?;
    if routes.is_empty() {
        return Err(PartitionError::config("routes", "list is empty"));
    }
    check_shard_count("routes", routes.len() as u64, shards_max)?;

    let mut dirs = Vec::with_capacity(routes.len());
    let mut groups = Vec::with_capacity(routes.len());
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(routes.len());
    for (index, route) in routes.iter().enumerate() {
        let key = format!("routes[{index}]");
        let Some(relative) = route.strip_prefix('/') else {
            return Err(PartitionError::config(
                key,
                format!("route {route:?} must start with \"/\""),
            ));
        };
        if let Some(first) = seen.insert(*route, index) {
            return Err(PartitionError::config(
                key,
                format!("route {route:?} is already listed as routes[{first}]"),
            ));
        }
        let relative = if relative.is_empty() { "." } else { relative };
        let dir = resolve(&key, relative, &root, Want::Directory)?;
        groups.push((key.clone(), files::walk(&key, &dir, &base)?));
        dirs.push(dir);
    }
    let fingerprinted = files::fingerprint_groups(groups)?;
    Ok(routes
        .iter()
        .zip(dirs)
        .zip(fingerprinted)
        .map(|((route, root), files)| Partition {
            key: Some((*route).into()),
            input: PartitionInput::Files { root, files },
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

    use super::super::files::tests::keyed_layout as layout;

    #[test]
    fn one_shard_per_route_in_given_order() {
        let (_dir, base) = temp_base();
        write_tree(
            &base,
            &[
                ("site/index.html", b"i"),
                ("site/blog/post/1.html", b"1"),
                ("site/blog/index.html", b"b"),
                ("site/docs/a.html", b"a"),
            ],
        );
        let site = base.join("site");
        let partitions = run(
            &base,
            json!({"root": "site", "routes": ["/docs", "/", "/blog/post"]}),
        )
        .unwrap();
        assert_eq!(
            layout(&partitions),
            [
                ("/docs".into(), site.join("docs"), vec!["a.html".into()]),
                (
                    "/".into(),
                    site.clone(),
                    vec![
                        "blog/index.html".into(),
                        "blog/post/1.html".into(),
                        "docs/a.html".into(),
                        "index.html".into()
                    ]
                ),
                (
                    "/blog/post".into(),
                    site.join("blog/post"),
                    vec!["1.html".into()]
                ),
            ]
        );
    }

    #[test]
    fn output_is_deterministic_and_tracks_content() {
        let (_dir, base) = temp_base();
        write_tree(&base, &[("site/a/x", b"x"), ("site/b/y", b"y")]);
        let config = json!({"root": "site", "routes": ["/a", "/b"]});
        let first = run(&base, config.clone()).unwrap();
        assert_eq!(run(&base, config.clone()).unwrap(), first);
        write_tree(&base, &[("site/b/y", b"changed")]);
        let second = run(&base, config).unwrap();
        assert_eq!(first[0], second[0]);
        assert_ne!(first[1], second[1]);
    }

    #[test]
    fn errors_name_their_key() {
        let (_dir, base) = temp_base();
        write_tree(
            &base,
            &[("site/a/x", b"x"), ("site/file", b"f"), ("other/y", b"y")],
        );
        let cases = [
            (json!({"routes": ["/a"]}), "root"),
            (json!({"root": "site"}), "routes"),
            (json!({"root": "site", "routes": "/a"}), "routes"),
            (json!({"root": "site", "routes": []}), "routes"),
            (json!({"root": "site", "routes": ["/a", 2]}), "routes[1]"),
            (json!({"root": "site", "routes": ["/a", "a"]}), "routes[1]"),
            (
                json!({"root": "site", "routes": ["/a", "/missing"]}),
                "routes[1]",
            ),
            (
                json!({"root": "site", "routes": ["/a", "/file"]}),
                "routes[1]",
            ),
            (json!({"root": "site", "routes": ["/a", "/a"]}), "routes[1]"),
            (
                json!({"root": "site", "routes": ["/../other"]}),
                "routes[0]",
            ),
        ];
        for (config, key) in cases {
            let error = run(&base, config.clone()).unwrap_err();
            assert_eq!(error.key(), key, "{config}: {error}");
        }
        let error = run(&base, json!({"root": "site", "routes": ["/a", "/missing"]})).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "routes[1]: directory \"missing\" does not exist (resolved to {})",
                base.join("site/missing").display()
            )
        );
        let error = run(&base, json!({"root": "site", "routes": ["/../other"]})).unwrap_err();
        assert!(
            matches!(error, PartitionError::EscapesRoot { .. }),
            "{error}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn symlinked_route_leaving_root_is_an_escape() {
        let (_dir, base) = temp_base();
        write_tree(&base, &[("site/a/x", b"x"), ("other/y", b"y")]);
        std::os::unix::fs::symlink(base.join("other"), base.join("site/out")).unwrap();
        let error = run(&base, json!({"root": "site", "routes": ["/out"]})).unwrap_err();
        assert!(
            matches!(error, PartitionError::EscapesRoot { .. }),
            "{error}"
        );
        assert_eq!(error.key(), "routes[0]");
    }

    #[test]
    fn too_many_shards() {
        let (_dir, base) = temp_base();
        write_tree(&base, &[("site/a/x", b"x"), ("site/b/y", b"y")]);
        let config = json!({"root": "site", "routes": ["/a", "/b"]});
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
        assert_eq!(error.key(), "routes");
    }
}
